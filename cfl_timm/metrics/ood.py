"""Out-of-distribution detection AUROC with the maximum softmax probability as the in-distribution score.

Reference: D. Hendrycks and K. Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in
Neural Networks", ICLR 2017, https://arxiv.org/abs/1610.02136.
"""
import torch

__all__ = ['auroc', 'max_softmax_probability', 'msp_auroc']


def max_softmax_probability(logits: torch.Tensor) -> torch.Tensor:
    """max_k softmax(z)_k per row, computed in float64."""
    return torch.softmax(logits.detach().double(), dim=1).max(dim=1).values


def auroc(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> float:
    """Area under the ROC curve: P(s_pos > s_neg) + 0.5 P(s_pos = s_neg) (the Mann-Whitney U statistic / (n_p n_n)).

    Ties count one half, so equal score distributions give 0.5 exactly; computed from average ranks in float64.
    """
    positive_scores = positive_scores.detach().double().cpu().reshape(-1)
    negative_scores = negative_scores.detach().double().cpu().reshape(-1)
    if positive_scores.numel() == 0 or negative_scores.numel() == 0:
        raise ValueError('AUROC needs at least one in-distribution and one out-of-distribution score.')
    if not (torch.isfinite(positive_scores).all() and torch.isfinite(negative_scores).all()):
        raise ValueError('AUROC scores contain NaN or infinite values.')
    scores = torch.cat([positive_scores, negative_scores])
    unique, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: (first rank + last rank) / 2.
    last_rank = counts.cumsum(0).double()
    average_rank = last_rank - (counts.double() - 1) / 2
    rank_sum = average_rank[inverse[:positive_scores.numel()]].sum().item()
    num_pos, num_neg = positive_scores.numel(), negative_scores.numel()
    return (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def msp_auroc(in_logits: torch.Tensor, out_logits: torch.Tensor) -> float:
    """AUROC of separating in-distribution (positive) from out-of-distribution samples by max softmax probability."""
    return auroc(max_softmax_probability(in_logits), max_softmax_probability(out_logits))
