"""Calibration under distribution shift: top-1, ECE, NLL and the MSP AUROC of clean vs corrupted images, per
corruption and severity, with the mean per severity and over all.

The report of Y. Ovadia et al., "Can You Trust Your Model's Uncertainty? Evaluating Predictive Uncertainty Under
Dataset Shift", NeurIPS 2019, https://arxiv.org/abs/1906.02530, on the corruptions of D. Hendrycks and
T. Dietterich, ICLR 2019, https://arxiv.org/abs/1903.12261 (CIFAR-10-C).
"""
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from .calibration import CalibrationMeter
from .checks import check_logits, check_same_classes, check_targets
from .ood import msp_auroc

__all__ = ['SHIFT_METRIC_KEYS', 'shift_cell_metrics', 'shift_report']

SHIFT_METRIC_KEYS = ('top1', 'ece', 'nll', 'msp_auroc')


def _calibration(logits: torch.Tensor, targets: torch.Tensor, num_bins: int) -> dict[str, float]:
    meter = CalibrationMeter(logits.shape[1], num_bins)
    meter.update(logits, targets)
    metrics = meter.compute()
    return {key: metrics[key] for key in ('top1', 'ece', 'nll')}


def shift_cell_metrics(clean_logits: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                       num_bins: int = 15) -> dict[str, float]:
    """Metrics of one corrupted set: ``top1`` (percent), ``ece``, ``nll`` (:class:`CalibrationMeter`'s) and
    ``msp_auroc``, the AUROC of telling the clean images (positive) from these by max softmax probability (0.5:
    the model's confidence does not react to the corruption)."""
    logits = check_logits(logits, 'corrupted logits')
    check_same_classes(check_logits(clean_logits, 'clean logits'), logits, 'clean logits', 'corrupted logits')
    targets = check_targets(targets, logits.shape[0], logits.shape[1], 'corrupted targets')
    return {**_calibration(logits, targets, num_bins), 'msp_auroc': msp_auroc(clean_logits, logits)}


def _mean(cells: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(cell[key] for cell in cells) / len(cells) for key in SHIFT_METRIC_KEYS}


def shift_report(clean_logits: torch.Tensor, clean_targets: torch.Tensor,
                 shifted: Mapping[str, Mapping[int, tuple[torch.Tensor, torch.Tensor]]],
                 num_bins: int = 15) -> dict[str, Any]:
    """The shift report as a JSON-ready dict.

    Layout: ``clean`` (``top1``, ``ece``, ``nll`` of the clean set), ``corruptions[name][severity]`` (the
    :data:`SHIFT_METRIC_KEYS`, severities as strings), ``mean_per_severity[severity]`` (each metric averaged over the
    corruptions evaluated at that severity, with ``num_corruptions``) and ``mean`` (averaged over every
    (corruption, severity) cell, with ``num_cells``). Means are unweighted: every cell counts once, whatever its size.

    Args:
        clean_logits: (N, K) logits of the clean images.
        clean_targets: (N,) their labels.
        shifted: ``{corruption: {severity (int): (logits (M, K), targets (M,))}}``.
        num_bins: Equal-width bins of ECE.
    """
    clean_logits = check_logits(clean_logits, 'clean logits')
    clean_targets = check_targets(clean_targets, clean_logits.shape[0], clean_logits.shape[1], 'clean targets')
    if not isinstance(shifted, Mapping) or not shifted or not all(
            isinstance(severities, Mapping) and severities for severities in shifted.values()):
        raise ValueError('shift_report needs at least one corrupted set per corruption: {name: {severity: '
                         '(logits, targets)}}.')
    for name, severities in shifted.items():
        for severity, pair in severities.items():
            if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
                raise ValueError(f'{name}: severity {severity!r} must be an integer.')
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f'{name} severity {severity}: expected a (logits, targets) pair, got '
                                 f'{type(pair).__name__}.')
            logits = check_logits(pair[0], f'{name} severity {severity} logits')
            if logits.shape[-1] != clean_logits.shape[1]:
                raise ValueError(f'{name} severity {severity}: K = {logits.shape[-1]} classes, the clean logits '
                                 f'K = {clean_logits.shape[1]}.')
    corruptions = {name: {str(severity): shift_cell_metrics(clean_logits, logits, targets, num_bins)
                          for severity, (logits, targets) in sorted(severities.items())}
                   for name, severities in shifted.items()}
    severities = sorted({severity for cells in corruptions.values() for severity in cells}, key=int)
    per_severity = {}
    for severity in severities:
        cells = [cells[severity] for cells in corruptions.values() if severity in cells]
        per_severity[severity] = {**_mean(cells), 'num_corruptions': len(cells)}
    every_cell = [cell for cells in corruptions.values() for cell in cells.values()]
    return {'clean': _calibration(clean_logits, clean_targets, num_bins), 'num_bins': num_bins,
            'corruptions': corruptions, 'mean_per_severity': per_severity,
            'mean': {**_mean(every_cell), 'num_cells': len(every_cell)}}
