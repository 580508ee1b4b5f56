"""Direction of miscalibration: ECE split into its over-confident and under-confident parts, and signed ECE.

Reference: C. Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, https://arxiv.org/abs/1706.04599
(equal-width ECE, whose bins are reused here unchanged).
"""
from dataclasses import dataclass

import torch

from .calibration import bin_indices
from .checks import check_count, check_logits, check_targets

__all__ = ['CalibrationDirection', 'calibration_direction']


@dataclass(frozen=True)
class CalibrationDirection:
    """The parts of equal-width ECE, all fractions (not percent).

    Attributes:
        over: sum_b w_b max(conf_b - acc_b, 0), the over-confident part.
        under: sum_b w_b max(acc_b - conf_b, 0), the under-confident part.
        ece: over + under, equal to :class:`CalibrationMeter`'s ``ece`` with the same number of bins.
        signed: over - under (> 0: over-confident on balance).
        bin_gap: (B,) float64 conf_b - acc_b per bin, NaN for an empty bin.
        bin_count: (B,) int64 samples per bin.
    """
    over: float
    under: float
    ece: float
    signed: float
    bin_gap: torch.Tensor
    bin_count: torch.Tensor


def calibration_direction(logits: torch.Tensor, targets: torch.Tensor, num_bins: int = 15) -> CalibrationDirection:
    """Split ECE into over- and under-confidence over equal-width bins weighted by w_b = n_b / N.

    With c = max_k softmax(z)_k and bins [i / B, (i + 1) / B) (a confidence of 1.0 in the last bin, as
    :func:`bin_indices`), conf_b and acc_b are the mean confidence and accuracy of bin b.

    Args:
        logits: (N, K) logits.
        targets: (N,) integer class indices.
        num_bins: Number of equal-width bins B (>= 1).
    """
    num_bins = check_count(num_bins, 'num_bins')
    logits = check_logits(logits)
    targets = check_targets(targets, logits.shape[0], logits.shape[1])
    confidence, prediction = torch.softmax(logits, dim=1).max(dim=1)
    bins = bin_indices(confidence, num_bins)
    count = torch.bincount(bins, minlength=num_bins)
    confidence_sum = torch.bincount(bins, weights=confidence, minlength=num_bins)
    hit_sum = torch.bincount(bins, weights=(prediction == targets).double(), minlength=num_bins)
    # (conf_b - acc_b) * n_b / N = (confidence sum - hit sum) / N: no division by an empty bin.
    weighted_gap = (confidence_sum - hit_sum) / confidence.numel()
    over = float(weighted_gap.clamp(min=0).sum())
    under = float((-weighted_gap).clamp(min=0).sum())
    bin_gap = torch.where(count > 0, (confidence_sum - hit_sum) / count.clamp(min=1), torch.nan)
    return CalibrationDirection(over=over, under=under, ece=over + under, signed=over - under, bin_gap=bin_gap,
                                bin_count=count)
