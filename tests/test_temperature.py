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
