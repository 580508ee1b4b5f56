"""Temperature scaling edge cases: test-split names, custom ECE grid, accuracy unchanged, bad input."""
import pytest
import torch

from cfl_timm.metrics import CalibrationMeter, fit_temperature, is_test_split


def test_test_split_names():
    assert all(is_test_split(name) for name in ('test', 'TEST', ' test ', 'test2017', 'testing'))
    assert not any(is_test_split(name) for name in ('val', 'validation', 'train', 'holdout'))


def test_grid_picks_lowest_ece_of_a_custom_grid_and_keeps_accuracy():
    generator = torch.Generator().manual_seed(1)
    true_logits = torch.randn(5000, 5, generator=generator, dtype=torch.float64) * 2
    target = torch.multinomial(true_logits.softmax(1), 1, generator=generator).squeeze(1)
    logits = true_logits * 3.0
    grid = [1.0, 2.0, 3.0, 4.0]
    eces = []
    for temperature in grid:
        meter = CalibrationMeter(5)
        meter.update(logits / temperature, target)
        eces.append(meter.compute()['ece'])
    chosen = fit_temperature(logits, target, method='grid-ece', grid=grid)
    assert chosen == grid[eces.index(min(eces))] == 3.0
    before, after = CalibrationMeter(5), CalibrationMeter(5)
    before.update(logits, target)
    after.update(logits / fit_temperature(logits, target), target)
    assert after.compute()['top1'] == before.compute()['top1']


def test_bad_input():
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    with pytest.raises(ValueError, match='NaN or infinite'):
        fit_temperature(torch.full((8, 3), float('nan')), target)
    with pytest.raises(ValueError, match=r'logits must have shape \(N, K\)'):
        fit_temperature(logits[:, 0], target)
    with pytest.raises(ValueError, match='grid must be non-empty and positive'):
        fit_temperature(logits, target, method='grid-ece', grid=[0.0, 1.0])
    with pytest.raises(ValueError, match="Refusing to fit the temperature on the 'TEST' split"):
        fit_temperature(logits, target, split='TEST')
