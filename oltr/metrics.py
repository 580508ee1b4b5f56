"""OLTR evaluation: overall top-1, many/medium/few-shot accuracy, closed-set macro F1, open-set F-measure.

Benchmarks: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", https://arxiv.org/abs/1904.05160
"""
from collections.abc import Sequence
from typing import Optional

import numpy as np

from cfl_timm.data.subsets import SHOT_GROUPS, SHOT_RULES, shot_groups

__all__ = ['SHOT_RULES', 'OPEN_THRESHOLD', 'shot_groups', 'shot_accuracies', 'macro_f1',
           'open_set_predictions', 'open_set_f_measure']

OPEN_THRESHOLD = 0.1


def shot_accuracies(preds: Sequence[int], labels: Sequence[int], train_counts: Sequence[int], *,
                    rule: str = 'code') -> dict[str, float]:
    """Overall top-1 and the many/medium/few-shot accuracies (mean of per-class accuracies in each group).

    Classes absent from ``labels`` are left out of their group; an empty group scores NaN.
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.ndim != 1 or preds.size == 0:
        raise ValueError(f'preds and labels must be non-empty 1-D arrays of equal length, got {preds.shape}, '
                         f'{labels.shape}')
    num_classes = len(train_counts)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f'closed-set labels must lie in [0, {num_classes})')
    correct = preds == labels
    per_class_total = np.bincount(labels, minlength=num_classes)
    per_class_correct = np.bincount(labels, weights=correct, minlength=num_classes)
    groups = shot_groups(train_counts, rule=rule)
    result = {'overall': float(correct.mean())}
    for index, name in enumerate(SHOT_GROUPS):
        members = (groups == index) & (per_class_total > 0)
        accs = per_class_correct[members] / per_class_total[members]
        result[name] = float(accs.mean()) if accs.size else float('nan')
    return result


def macro_f1(preds: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """Closed-set macro F1: the unweighted mean over classes present in labels or preds of 2TP / (2TP + FP + FN)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = np.bincount(labels[preds == labels], minlength=num_classes).astype(float)
    pred_count = np.bincount(preds[(preds >= 0) & (preds < num_classes)], minlength=num_classes)
    label_count = np.bincount(labels, minlength=num_classes)
    denom = pred_count + label_count  # = 2TP + FP + FN
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present]))


def open_set_predictions(probs: np.ndarray, threshold: float = OPEN_THRESHOLD) -> np.ndarray:
    """Argmax predictions, with -1 ("unknown") where the max softmax probability is below ``threshold``."""
    probs = np.asarray(probs)
    preds = probs.argmax(axis=1)
    return np.where(probs.max(axis=1) < threshold, -1, preds)


def open_set_f_measure(preds: Sequence[int], labels: Sequence[int]) -> Optional[float]:
    """OLTR's open-set F-measure over known (label >= 0) and open (label -1) images.

    TP: known image predicted correctly; FP: known image predicted wrongly (an "unknown" prediction included);
    FN: open image predicted as a known class. F = 2PR / (P + R), 0 when TP = 0.
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    known = labels >= 0
    tp = int(np.sum(known & (preds == labels)))
    fp = int(np.sum(known & (preds != labels)))
    fn = int(np.sum(~known & (preds >= 0)))
    if tp == 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)
