"""CalibrationMeter on synthetic logits with known answers and against torchmetrics' CalibrationError."""
import math

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from cfl_timm.metrics import METRIC_KEYS, CalibrationMeter, bin_indices, coinciding_ece_note


def logits_with_confidence(confidence: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax puts `confidence` on `predicted` and spreads the rest evenly."""
    rest = (1 - confidence) / (num_classes - 1)
    probs = rest[:, None].repeat(1, num_classes)
    probs[torch.arange(len(predicted)), predicted] = confidence
    return probs.log()


def test_perfectly_calibrated_and_overconfident():
    # 10 samples at confidence 0.8 of which 8 right: ECE 0. Same samples claimed at 0.95: ECE 0.15.
    target = torch.zeros(10, dtype=torch.long)
    predicted = torch.tensor([0] * 8 + [1, 2])
    for claimed, expected in ((0.8, 0.0), (0.95, 0.15)):
        meter = CalibrationMeter(3)
        meter.update(logits_with_confidence(torch.full((10,), claimed, dtype=torch.float64), predicted, 3), target)
        metrics = meter.compute()
        assert metrics['ece'] == pytest.approx(expected, abs=1e-12)
        assert metrics['mce'] == pytest.approx(expected, abs=1e-12)
        assert metrics['top1'] == pytest.approx(80.0)
        rest = (1 - claimed) / 2
        nll = -(8 * math.log(claimed) + 2 * math.log(rest)) / 10
        assert metrics['nll'] == pytest.approx(nll, rel=1e-12)
        brier_right = (1 - claimed) ** 2 + 2 * rest ** 2
        brier_wrong = claimed ** 2 + (rest - 1) ** 2 + rest ** 2
        assert metrics['brier'] == pytest.approx((8 * brier_right + 2 * brier_wrong) / 10, rel=1e-12)


def test_adaptive_ece_uses_equal_mass_bins():
    confidence = torch.tensor([0.9, 0.6, 0.8, 0.7], dtype=torch.float64)
    predicted = torch.tensor([0, 1, 0, 0])  # the 0.6 sample is wrong
    meter = CalibrationMeter(3, num_bins=2)
    meter.update(logits_with_confidence(confidence, predicted, 3), torch.zeros(4, dtype=torch.long))
    # Bins {0.6, 0.7}: acc 0.5, conf 0.65; {0.8, 0.9}: acc 1, conf 0.85 -> 0.5 * 0.15 + 0.5 * 0.15.
    assert meter.compute()['adaptive_ece'] == pytest.approx(0.15, abs=1e-12)


def test_one_bin_and_confidence_exactly_one():
    assert bin_indices(torch.tensor([0.0, 0.5, 0.999, 1.0]), 15).tolist() == [0, 7, 14, 14]
    meter = CalibrationMeter(2, num_bins=1)
    logits = torch.tensor([[0.0, -1e4], [0.0, -1e4], [3.0, 0.0]], dtype=torch.float64)  # p = 1.0, 1.0, 0.95
    meter.update(logits, torch.tensor([0, 1, 0]))
    metrics = meter.compute()
    confidence = torch.softmax(logits, 1).max(1).values
    assert confidence[0] == 1.0
    assert metrics['ece'] == pytest.approx(abs(2 / 3 - confidence.mean().item()), abs=1e-12)  # one bin: |acc - conf|


def test_classwise_ece_definition():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]], dtype=torch.float64)
    target = torch.tensor([0, 1, 0, 2])
    meter = CalibrationMeter(3, num_bins=5)
    meter.update(probs.log(), target)
    expected = 0.0
    for k in range(3):
        bins = bin_indices(probs[:, k], 5)
        for b in range(5):
            mask = bins == b
            if mask.any():
                expected += mask.sum() / 4 * abs((target[mask] == k).double().mean() - probs[mask, k].mean()) / 3
    assert meter.compute()['classwise_ece'] == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize('num_bins', [5, 15, 30])
def test_agrees_with_torchmetrics_and_streams(num_bins):
    generator = torch.Generator().manual_seed(num_bins)
    logits = torch.randn(2000, 10, generator=generator) * 2
    target = torch.randint(0, 10, (2000,), generator=generator)
    one_shot = CalibrationMeter(10, num_bins=num_bins)
    one_shot.update(logits, target)
    streamed = CalibrationMeter(10, num_bins=num_bins)
    for start in range(0, 2000, 300):
        streamed.update(logits[start:start + 300], target[start:start + 300])
    metrics = one_shot.compute()
    assert streamed.compute() == pytest.approx(metrics, rel=1e-12, abs=1e-15)  # sums in another order only
    for norm, key in (('l1', 'ece'), ('max', 'mce')):
        reference = MulticlassCalibrationError(num_classes=10, n_bins=num_bins, norm=norm)(logits.softmax(1), target)
        assert metrics[key] == pytest.approx(reference.item(), abs=1e-6)


def test_bad_input():
    meter = CalibrationMeter(3)
    with pytest.raises(ValueError, match=r'logits must have shape \(N, 3\)'):
        meter.update(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r'target class indices must lie in \[0, 3\)'):
        meter.update(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match='before any update'):
        meter.compute()


def test_half_precision_logits_are_computed_in_float64():
    logits = (torch.randn(300, 7, generator=torch.Generator().manual_seed(2)) * 3).bfloat16()
    target = torch.arange(300) % 7
    low, exact = CalibrationMeter(7), CalibrationMeter(7)
    low.update(logits, target)
    exact.update(logits.double(), target)  # the same values, upcast first
    assert low.compute() == exact.compute()
    assert set(low.compute()) == set(METRIC_KEYS)


def _miscalibrated(shift: float, n: int = 5000, k: int = 10):
    """Logits and targets whose top-label accuracy is confidence + shift at every confidence (in expectation)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, k, dtype=torch.float64, generator=generator) * 1.5
    predicted = logits.argmax(1)
    confidence = logits.softmax(1).max(1).values
    hit = torch.rand(n, dtype=torch.float64, generator=generator) < (confidence + shift).clamp(0, 1)
    wrong = (predicted + 1 + torch.randint(0, k - 1, (n,), generator=generator)) % k
    target = torch.where(hit, predicted, wrong)
    meter = CalibrationMeter(k, 15)
    meter.update(logits, target)
    return meter.compute(), abs((predicted == target).double().mean() - confidence.mean()).item()


@pytest.mark.parametrize('shift', [0.25, -0.1])
def test_ece_adaptive_and_smooth_ece_coincide_when_the_gap_has_one_sign(shift):
    # Under-confident (+) or over-confident (-) at every confidence: each metric's sum of |bin gaps| is |sum of
    # gaps| = |accuracy - mean confidence|, whatever the bins or the kernel bandwidth.
    metrics, gap = _miscalibrated(shift)
    for key in ('ece', 'adaptive_ece', 'smooth_ece'):
        assert metrics[key] == pytest.approx(gap, rel=1e-12, abs=0), key
    note = coinciding_ece_note(metrics)
    assert note is not None and f'{metrics["ece"]:.6f}' in note and '|accuracy - mean confidence|' in note


def test_ece_adaptive_and_smooth_ece_differ_when_the_gap_changes_sign():
    metrics, gap = _miscalibrated(0.0)  # calibrated in expectation: the noise gives gaps of both signs
    assert len({round(metrics[key], 9) for key in ('ece', 'adaptive_ece', 'smooth_ece')}) == 3
    assert metrics['ece'] > gap and coinciding_ece_note(metrics) is None
    assert coinciding_ece_note({'ece': 0.0, 'adaptive_ece': 0.0, 'smooth_ece': 0.0}) is None
