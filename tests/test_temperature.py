"""Temperature scaling recovers a planted temperature and refuses the test split."""
import pytest
import torch

from cfl_timm.metrics import CalibrationMeter, fit_temperature


def planted(temperature: float, count: int = 20000, classes: int = 10, seed: int = 0):
    """Labels drawn from softmax(z) of true logits z; the model reports z * temperature (miscalibrated)."""
    generator = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(count, classes, generator=generator, dtype=torch.float64) * 2
    target = torch.multinomial(true_logits.softmax(1), 1, generator=generator).squeeze(1)
    return true_logits * temperature, target


@pytest.mark.parametrize('temperature', [0.5, 2.5])
def test_nll_fit_recovers_planted_temperature(temperature):
    logits, target = planted(temperature)
    fitted = fit_temperature(logits, target)
    assert fitted == pytest.approx(temperature, rel=0.01)
    before, after = CalibrationMeter(10), CalibrationMeter(10)
    before.update(logits, target)
    after.update(logits / fitted, target)
    assert after.compute()['ece'] < before.compute()['ece']
    assert after.compute()['nll'] < before.compute()['nll']


def test_grid_ece_option_and_errors():
    logits, target = planted(2.0)
    fitted = fit_temperature(logits, target, method='grid-ece')
    assert fitted == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError, match="Refusing to fit the temperature on the 'test' split"):
        fit_temperature(logits, target, split='test')
    assert fit_temperature(logits, target, split='test', allow_test_split=True) == pytest.approx(2.0, rel=0.01)
    with pytest.raises(ValueError, match=r"expected one of \('nll', 'grid-ece'\)"):
        fit_temperature(logits, target, method='ece')


def test_nll_fit_is_the_minimum_of_a_dense_scan():
    logits, target = planted(1.7, count=3000, seed=3)
    fitted = fit_temperature(logits, target)
    scan = torch.linspace(0.5, 5.0, 4501, dtype=torch.float64)
    nll = torch.stack([torch.nn.functional.cross_entropy(logits / t, target) for t in scan])
    assert fitted == pytest.approx(float(scan[nll.argmin()]), abs=1.5e-3)


def test_nll_fit_is_bounded_with_a_warning():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=generator, dtype=torch.float64)
    worst_labels = logits.argmin(1)  # every label on the lowest logit: the NLL falls all the way to T -> inf
    with pytest.warns(UserWarning, match='beyond the upper bound'):
        assert fit_temperature(logits, worst_labels) == 100.0
    separable = torch.eye(10, dtype=torch.float64).repeat(20, 1) * 5
    with pytest.warns(UserWarning, match='beyond the lower bound'):
        assert fit_temperature(separable, torch.arange(10).repeat(20), bounds=(0.5, 10.0)) == 0.5
    for bad in [(0.0, 1.0), (2.0, 1.0), (1.0, float('inf'))]:
        with pytest.raises(ValueError, match='bounds must satisfy 0 < lo < hi < inf'):
            fit_temperature(logits, worst_labels, bounds=bad)
