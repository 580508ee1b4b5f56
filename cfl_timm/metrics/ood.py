"""Out-of-distribution detection: scores from logits and the AUROC / AUPR-In / AUPR-Out / FPR95 of separating them.

In-distribution is the positive class and every score is "higher = more in-distribution":

- ``msp``: max_k softmax(z)_k (D. Hendrycks and K. Gimpel, "A Baseline for Detecting Misclassified and
  Out-of-Distribution Examples in Neural Networks", ICLR 2017, https://arxiv.org/abs/1610.02136);
- ``max_logit``: max_k z_k;
- ``energy``: logsumexp_k z_k, the negative free energy at T = 1 (W. Liu et al., "Energy-based Out-of-distribution
  Detection", NeurIPS 2020, https://arxiv.org/abs/2010.03759);
- ``neg_entropy``: sum_k p_k log p_k, the negative predictive entropy.
"""
from collections.abc import Callable

import torch

from .checks import check_logits, check_same_classes, check_scores

__all__ = ['OOD_METRIC_KEYS', 'OOD_SCORES', 'aupr_in', 'aupr_out', 'auroc', 'energy', 'fpr_at_95_tpr', 'max_logit',
           'max_softmax_probability', 'msp', 'msp_auroc', 'neg_entropy', 'ood_metrics']

OOD_METRIC_KEYS = ('auroc', 'aupr_in', 'aupr_out', 'fpr95')


def max_softmax_probability(logits: torch.Tensor) -> torch.Tensor:
    """max_k softmax(z)_k per row, computed in float64."""
    return torch.softmax(check_logits(logits), dim=1).max(dim=1).values


msp = max_softmax_probability


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """max_k z_k per row, in float64."""
    return check_logits(logits).max(dim=1).values


def energy(logits: torch.Tensor) -> torch.Tensor:
    """Energy score logsumexp_k z_k per row (the negative free energy at temperature 1), in float64."""
    return torch.logsumexp(check_logits(logits), dim=1)


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Negative predictive entropy sum_k p_k log p_k per row, in float64 (0 log 0 counts as 0)."""
    log_probs = torch.log_softmax(check_logits(logits), dim=1)
    return torch.special.xlogy(log_probs.exp(), log_probs.exp()).sum(dim=1)


OOD_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'msp': msp, 'max_logit': max_logit, 'energy': energy, 'neg_entropy': neg_entropy}


def auroc(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> float:
    """Area under the ROC curve: P(s_pos > s_neg) + 0.5 P(s_pos = s_neg) (the Mann-Whitney U statistic / (n_p n_n)).

    Ties count one half, so equal score distributions give 0.5 exactly; computed from average ranks in float64.
    """
    positive_scores = check_scores(positive_scores, 'positive_scores')  # 1-D: a flattened (N, K) would be no score
    negative_scores = check_scores(negative_scores, 'negative_scores')
    scores = torch.cat([positive_scores, negative_scores])
    unique, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: (first rank + last rank) / 2.
    last_rank = counts.cumsum(0).double()
    average_rank = last_rank - (counts.double() - 1) / 2
    rank_sum = average_rank[inverse[:positive_scores.numel()]].sum().item()
    num_pos, num_neg = positive_scores.numel(), negative_scores.numel()
    return (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def _average_precision(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first (scikit-learn's
    ``average_precision_score``: no interpolation; tied scores enter together as one threshold)."""
    scores = torch.cat([positive_scores, negative_scores])
    labels = torch.cat([torch.ones_like(positive_scores), torch.zeros_like(negative_scores)])
    order = scores.argsort(descending=True)
    scores, labels = scores[order], labels[order]
    # Last position of each run of equal scores = one threshold.
    is_last = torch.ones_like(scores, dtype=torch.bool)
    is_last[:-1] = scores[1:] != scores[:-1]
    true_pos = labels.cumsum(0)[is_last]
    selected = (torch.arange(scores.numel(), dtype=torch.float64) + 1)[is_last]
    precision = true_pos / selected
    recall = true_pos / positive_scores.numel()
    recall_step = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_step * precision).sum())


def aupr_in(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Area under the precision-recall curve with in-distribution positive and score s (average precision)."""
    return _average_precision(check_scores(in_scores, 'in_scores'), check_scores(out_scores, 'out_scores'))


def aupr_out(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Area under the precision-recall curve with out-of-distribution positive and score -s (average precision)."""
    return _average_precision(-check_scores(out_scores, 'out_scores'), -check_scores(in_scores, 'in_scores'))


def _percentile(values: torch.Tensor, q: float) -> float:
    """The q-th percentile (0 <= q <= 100) with linear interpolation between order statistics, numpy's default
    (``method='linear'``): position q / 100 * (N - 1) in the ascending sort."""
    ordered = values.sort().values
    position = q / 100 * (ordered.numel() - 1)
    low = int(position)
    high = min(low + 1, ordered.numel() - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def fpr_at_95_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """False-positive rate at 95% true-positive rate: the fraction of OOD samples with s >= t, where t is the 5th
    percentile of the in-distribution scores, taken with linear interpolation as ``numpy.percentile(in_scores, 5)``
    (default ``method='linear'``), so about 95% of the in-distribution samples have s >= t."""
    in_scores, out_scores = check_scores(in_scores, 'in_scores'), check_scores(out_scores, 'out_scores')
    threshold = _percentile(in_scores, 5.0)
    return float((out_scores >= threshold).double().mean())


def ood_metrics(in_logits: torch.Tensor, out_logits: torch.Tensor) -> dict[str, dict[str, float]]:
    """Every score of :data:`OOD_SCORES` under every metric: ``{score: {'auroc', 'aupr_in', 'aupr_out', 'fpr95'}}``.

    Args:
        in_logits: (N_in, K) logits of the in-distribution samples.
        out_logits: (N_out, K) logits of the out-of-distribution samples (same K).
    """
    in_logits, out_logits = check_logits(in_logits, 'in_logits'), check_logits(out_logits, 'out_logits')
    check_same_classes(in_logits, out_logits, 'in_logits', 'out_logits')
    results = {}
    for name, score in OOD_SCORES.items():
        in_scores, out_scores = score(in_logits), score(out_logits)
        results[name] = {'auroc': auroc(in_scores, out_scores), 'aupr_in': aupr_in(in_scores, out_scores),
                         'aupr_out': aupr_out(in_scores, out_scores), 'fpr95': fpr_at_95_tpr(in_scores, out_scores)}
    return results


def msp_auroc(in_logits: torch.Tensor, out_logits: torch.Tensor) -> float:
    """AUROC of separating in-distribution (positive) from out-of-distribution samples by max softmax probability.

    Both sets must have the same classes K (the MSP of different label spaces is no common score).
    """
    in_logits, out_logits = check_logits(in_logits, 'in_logits'), check_logits(out_logits, 'out_logits')
    check_same_classes(in_logits, out_logits, 'in_logits', 'out_logits')
    return auroc(max_softmax_probability(in_logits), max_softmax_probability(out_logits))
