"""Streaming classification and calibration metrics: top-k, NLL, Brier, ECE, adaptive ECE, classwise ECE, MCE.

References: C. Guo et al., "On Calibration of Modern Neural Networks", https://arxiv.org/abs/1706.04599 (ECE, MCE);
J. Nixon et al., "Measuring Calibration in Deep Learning", https://arxiv.org/abs/1904.01685 (adaptive and
classwise ECE); J. Mukhoti et al., "Calibrating Deep Neural Networks using Focal Loss",
https://arxiv.org/abs/2002.09437.
"""
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ['CalibrationMeter', 'bin_indices']


def bin_indices(confidence: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Equal-width bin of each confidence: bin i holds [i / B, (i + 1) / B); a confidence of exactly 1.0 belongs to
    the last bin (not to a bin B + 1 that would drop it)."""
    boundaries = torch.linspace(0, 1, num_bins + 1, dtype=confidence.dtype, device=confidence.device)
    return (torch.bucketize(confidence.contiguous(), boundaries, right=True) - 1).clamp_(0, num_bins - 1)


def _binned_gap(confidence: torch.Tensor, hit: torch.Tensor, bins: torch.Tensor, num_bins: int):
    """Per-bin counts and |accuracy - confidence| gaps."""
    count = torch.zeros(num_bins, dtype=torch.float64, device=confidence.device).index_add_(0, bins, torch.ones_like(
        confidence, dtype=torch.float64))
    conf_sum = torch.zeros_like(count).index_add_(0, bins, confidence.double())
    hit_sum = torch.zeros_like(count).index_add_(0, bins, hit.double())
    gap = (hit_sum - conf_sum).abs() / count.clamp_min(1)
    return count, gap


class CalibrationMeter:
    """Accumulates logits batch by batch and computes classification and calibration metrics.

    With p = softmax(logits), confidence c = max_k p_k, prediction argmax, y the label, N samples, B bins:

    - ``top1`` / ``top5``: accuracy in percent (timm's convention).
    - ``nll``: mean of -log p_y. ``brier``: mean over samples of sum_k (p_k - [k == y])^2.
    - ``ece``: sum over equal-width bins of |bin| / N * |acc(bin) - conf(bin)| (bins [i/B, (i+1)/B), c = 1.0 in the
      last bin); ``mce``: the largest of those gaps over non-empty bins.
    - ``adaptive_ece``: the same with B equal-mass bins (samples sorted by confidence, split into B near-equal parts).
    - ``classwise_ece``: for each class k the equal-width ECE of p_k against [y == k] over all samples, averaged.

    Calibration metrics are fractions in [0, 1]. Per-sample values are kept so that the metrics are exact for the
    whole set; :meth:`all_reduce` gathers them across ``torch.distributed`` ranks.

    Args:
        num_classes: Number of classes K.
        num_bins: Number of bins B (15 by default).
    """

    def __init__(self, num_classes: int, num_bins: int = 15) -> None:
        if num_classes < 2:
            raise ValueError(f'num_classes must be >= 2, got {num_classes}.')
        if num_bins < 1:
            raise ValueError(f'num_bins must be >= 1, got {num_bins}.')
        self.num_classes = num_classes
        self.num_bins = num_bins
        self._logp: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: logits (N, K) of any float dtype, target (N,) class indices."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f'logits must have shape (N, {self.num_classes}), got {tuple(logits.shape)}.')
        if target.shape != logits.shape[:1]:
            raise ValueError(f'target must have shape ({logits.shape[0]},), got {tuple(target.shape)}.')
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(f'target class indices must lie in [0, {self.num_classes}).')
        self._logp.append(torch.log_softmax(logits.detach().double(), dim=1).cpu())
        self._targets.append(target.detach().long().cpu())

    def all_reduce(self, group: Optional[object] = None) -> None:
        """Gather every rank's samples onto every rank (no-op outside torch.distributed)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        local = (self._stacked_logp(), self._stacked_targets())
        gathered: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        self._logp = [logp for logp, _ in gathered]
        self._targets = [target for _, target in gathered]

    def _stacked_logp(self) -> torch.Tensor:
        if not self._logp:
            return torch.zeros(0, self.num_classes, dtype=torch.float64)
        return torch.cat(self._logp)

    def _stacked_targets(self) -> torch.Tensor:
        return torch.cat(self._targets) if self._targets else torch.zeros(0, dtype=torch.long)

    def compute(self) -> dict[str, float]:
        """All metrics over the samples seen (after :meth:`all_reduce` when distributed)."""
        logp, target = self._stacked_logp(), self._stacked_targets()
        count = target.numel()
        if count == 0:
            raise ValueError('CalibrationMeter.compute() called before any update().')
        probs = logp.exp()
        confidence, prediction = probs.max(dim=1)
        hit = prediction == target
        top5 = probs.topk(min(5, self.num_classes), dim=1).indices.eq(target[:, None]).any(dim=1)
        one_hot = torch.nn.functional.one_hot(target, self.num_classes).double()
        bin_count, gap = _binned_gap(confidence, hit, bin_indices(confidence, self.num_bins), self.num_bins)
        # Equal-mass bins: sorted confidences split into B parts whose sizes differ by at most one.
        order = confidence.argsort()
        mass_bins = torch.empty_like(order)
        mass_bins[order] = (torch.arange(count) * min(self.num_bins, count)) // count
        mass_count, mass_gap = _binned_gap(confidence, hit, mass_bins, self.num_bins)
        classwise = []
        for k in range(self.num_classes):
            k_count, k_gap = _binned_gap(probs[:, k], one_hot[:, k], bin_indices(probs[:, k], self.num_bins),
                                         self.num_bins)
            classwise.append(float((k_count * k_gap).sum() / count))
        return {
            'top1': 100.0 * hit.double().mean().item(),
            'top5': 100.0 * top5.double().mean().item(),
            'nll': float(-logp.gather(1, target[:, None]).mean()),
            'brier': float(((probs - one_hot) ** 2).sum(dim=1).mean()),
            'ece': float((bin_count * gap).sum() / count),
            'mce': float(gap[bin_count > 0].max()),
            'adaptive_ece': float((mass_count * mass_gap).sum() / count),
            'classwise_ece': sum(classwise) / self.num_classes,
        }
