"""Streaming classification and calibration metrics: top-k, NLL, Brier, ECE, MCE, adaptive, classwise and smooth ECE.

References: C. Guo et al., "On Calibration of Modern Neural Networks", https://arxiv.org/abs/1706.04599 (ECE, MCE);
J. Nixon et al., "Measuring Calibration in Deep Learning", https://arxiv.org/abs/1904.01685 (adaptive and
classwise ECE); J. Mukhoti et al., "Calibrating Deep Neural Networks using Focal Loss",
https://arxiv.org/abs/2002.09437; J. Blasiok and P. Nakkiran, "Smooth ECE", https://arxiv.org/abs/2309.12236.
"""
import math
from collections.abc import Mapping
from typing import Optional

import torch
import torch.distributed as dist

from .checks import check_count, check_index_dtype
from .smooth_ece import smooth_ece

__all__ = ['CalibrationMeter', 'bin_indices', 'coinciding_ece_note', 'METRIC_KEYS']

METRIC_KEYS = ('top1', 'top5', 'nll', 'brier', 'ece', 'adaptive_ece', 'classwise_ece', 'mce', 'smooth_ece')


def bin_indices(confidence: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Equal-width bin of each confidence: bin i holds [i / B, (i + 1) / B); a confidence of exactly 1.0 belongs to
    the last bin (not to a bin B + 1 that would drop it).

    Args:
        confidence: Floating-point tensor (any shape) of values in [0, 1].
        num_bins: Number of bins B (>= 1).

    Returns:
        int64 bin indices in [0, B), the shape of ``confidence``.
    """
    num_bins = check_count(num_bins, 'num_bins')
    if not isinstance(confidence, torch.Tensor) or not confidence.is_floating_point():
        raise ValueError(f'confidence must be a floating-point torch.Tensor, got '
                         f'{confidence.dtype if isinstance(confidence, torch.Tensor) else type(confidence).__name__}.')
    if not bool(((confidence >= 0) & (confidence <= 1)).all()):  # NaN fails both comparisons
        raise ValueError('confidence must hold values in [0, 1] (no NaN).')
    return _bin_indices(confidence, num_bins)


def _bin_indices(confidence: torch.Tensor, num_bins: int) -> torch.Tensor:
    """:func:`bin_indices` without its checks (no host sync), for callers whose confidences are probabilities of
    checked logits and whose ``num_bins`` is checked."""
    boundaries = torch.linspace(0, 1, num_bins + 1, dtype=confidence.dtype, device=confidence.device)
    return (torch.bucketize(confidence.contiguous(), boundaries, right=True) - 1).clamp_(0, num_bins - 1)


def _equal_mass_bins(confidence: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Equal-mass bin of each sample: sorted confidences split into min(B, N) parts whose sizes differ by at most one
    (ties broken by position, so the split is deterministic)."""
    count = confidence.numel()
    order = confidence.argsort(stable=True)
    bins = torch.empty_like(order)
    bins[order] = (torch.arange(count, device=confidence.device) * min(num_bins, count)) // count
    return bins


class CalibrationMeter:
    """Accumulates logits batch by batch and computes classification and calibration metrics.

    With p = softmax(logits) (computed in float64), confidence c = max_k p_k, prediction argmax, y the label,
    N samples and B bins:

    - ``top1`` / ``top5``: accuracy in **percent** (timm's ``accuracy`` and summary convention).
    - ``nll``: mean of -log p_y. ``brier``: mean over samples of sum_k (p_k - [k == y])^2.
    - ``ece``: sum over equal-width bins of |bin| / N * |acc(bin) - conf(bin)|, bins [i/B, (i+1)/B) with a
      confidence of exactly 1.0 in the last bin; ``mce``: the largest of those gaps over non-empty bins.
    - ``adaptive_ece``: the same over B equal-mass bins (samples sorted by confidence, split into B near-equal parts).
    - ``classwise_ece``: for each class k the equal-width ECE of p_k against [y == k] over all N samples, averaged
      over the K classes.
    - ``smooth_ece``: Blasiok & Nakkiran's smECE of (c, [prediction == y]) with the fixed-point bandwidth.

    All calibration metrics, NLL and Brier are fractions / nats, not percent. Equal-width statistics (top-label and
    classwise) are kept as additive per-bin sums; adaptive and smooth ECE need every sample's confidence and
    correctness, which are kept (9 bytes a sample) and gathered by :meth:`all_reduce`.

    Args:
        num_classes: Number of classes K (>= 2).
        num_bins: Number of bins B (>= 1, 15 by default) for every binned metric.
    """

    def __init__(self, num_classes: int, num_bins: int = 15) -> None:
        self.num_classes = check_count(num_classes, 'num_classes', 2)
        self.num_bins = check_count(num_bins, 'num_bins')
        self.reset()

    def reset(self) -> None:
        """Forget every sample."""
        self._sums: Optional[torch.Tensor] = None  # count, top1 hits, top5 hits, nll sum, brier sum
        self._bins: Optional[torch.Tensor] = None  # (3, B): count, confidence sum, hit sum
        self._class_bins: Optional[torch.Tensor] = None  # (3, K, B): count, p_k sum, [y == k] sum
        self._confidence: list[torch.Tensor] = []
        self._correct: list[torch.Tensor] = []
        self._reduced = False

    def _allocate(self, device: torch.device) -> None:
        self._sums = torch.zeros(5, dtype=torch.float64, device=device)
        self._bins = torch.zeros(3, self.num_bins, dtype=torch.float64, device=device)
        self._class_bins = torch.zeros(3, self.num_classes, self.num_bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: logits (N, K) of any float dtype, target (N,) class indices."""
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f'logits must be a torch.Tensor of shape (N, {self.num_classes}), got '
                             f'{type(logits).__name__}.')
        check_index_dtype(target, 'target')
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f'logits must have shape (N, {self.num_classes}), got {tuple(logits.shape)}.')
        if target.shape != logits.shape[:1]:
            raise ValueError(f'target must have shape ({logits.shape[0]},), got {tuple(target.shape)}.')
        if self._reduced:
            raise RuntimeError('CalibrationMeter.update() after all_reduce(); call reset() to start again.')
        if not logits.is_floating_point():
            raise ValueError(f'logits must be a floating-point tensor, got {logits.dtype}.')
        if target.numel() == 0:
            return
        target = target.detach().to(logits.device, torch.long)
        if int(target.min()) < 0 or int(target.max()) >= self.num_classes:
            raise ValueError(f'target class indices must lie in [0, {self.num_classes}).')
        logp = torch.log_softmax(logits.detach().double(), dim=1)
        if not bool(torch.isfinite(logp).all()):
            raise ValueError('logits contain NaN or infinite values.')
        if self._sums is None:
            self._allocate(logp.device)
        probs = logp.exp()
        confidence, prediction = probs.max(dim=1)
        correct = prediction == target
        in_top5 = probs.topk(min(5, self.num_classes), dim=1).indices.eq(target[:, None]).any(dim=1)
        one_hot = torch.nn.functional.one_hot(target, self.num_classes).double()
        batch = torch.stack([
            torch.tensor(float(target.numel()), dtype=torch.float64, device=logp.device),
            correct.double().sum(), in_top5.double().sum(),
            -logp.gather(1, target[:, None]).sum(), ((probs - one_hot) ** 2).sum()])
        self._sums += batch
        bins = _bin_indices(confidence, self.num_bins)
        self._bins.index_put_((torch.zeros_like(bins), bins), torch.ones_like(confidence), accumulate=True)
        self._bins.index_put_((torch.ones_like(bins), bins), confidence, accumulate=True)
        self._bins.index_put_((torch.full_like(bins, 2), bins), correct.double(), accumulate=True)
        # Classwise: flat index k * B + bin(p_k) for every (sample, class) pair.
        flat = (_bin_indices(probs, self.num_bins)
                + torch.arange(self.num_classes, device=logp.device)[None] * self.num_bins).view(-1)
        class_bins = self._class_bins.view(3, -1)
        class_bins[0].index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
        class_bins[1].index_add_(0, flat, probs.reshape(-1))
        class_bins[2].index_add_(0, flat, one_hot.view(-1))
        self._confidence.append(confidence)
        self._correct.append(correct)

    def all_reduce(self, group: Optional[object] = None) -> None:
        """Combine every rank's statistics onto every rank (a no-op outside ``torch.distributed``).

        Call once, after the last :meth:`update` on every rank; sums are all-reduced and per-sample confidences
        gathered (with the ``nccl`` backend on the current CUDA device, otherwise on the CPU, e.g. ``gloo``).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._reduced:
            raise RuntimeError('CalibrationMeter.all_reduce() called twice without reset().')
        device = (torch.device('cuda', torch.cuda.current_device()) if dist.get_backend(group) == 'nccl'
                  else torch.device('cpu'))
        if self._sums is None:
            self._allocate(device)
        confidence, correct = self._samples()
        packed = torch.cat([self._sums.to(device), self._bins.to(device).view(-1),
                            self._class_bins.to(device).view(-1)])
        dist.all_reduce(packed, group=group)
        sums, rest = packed.split([5, packed.numel() - 5])
        bins, class_bins = rest.split([self._bins.numel(), self._class_bins.numel()])
        self._sums, self._bins = sums.clone(), bins.view_as(self._bins).clone()
        self._class_bins = class_bins.view_as(self._class_bins).clone()
        local = torch.stack([confidence.to(device), correct.to(device).double()])
        sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size(group))]
        dist.all_gather(sizes, torch.tensor([local.shape[1]], device=device), group=group)
        longest = max(int(size) for size in sizes)
        padded = torch.zeros(2, longest, dtype=torch.float64, device=device)
        padded[:, :local.shape[1]] = local
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded, group=group)
        samples = torch.cat([part[:, :int(size)] for part, size in zip(gathered, sizes)], dim=1)
        self._confidence, self._correct = [samples[0]], [samples[1].bool()]
        self._reduced = True

    def _samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._confidence:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
        return torch.cat(self._confidence), torch.cat(self._correct)

    def reliability(self) -> dict[str, list[float]]:
        """Equal-width reliability data: bin edges (B + 1), and per bin the count, mean confidence and accuracy
        (NaN for empty bins)."""
        if self._sums is None or self._sums[0] == 0:
            raise ValueError('CalibrationMeter.reliability() called before any update().')
        count, conf_sum, hit_sum = self._bins.cpu()
        nan = torch.full_like(count, float('nan'))
        return {
            'edges': torch.linspace(0, 1, self.num_bins + 1, dtype=torch.float64).tolist(),
            'count': count.tolist(),
            'confidence': torch.where(count > 0, conf_sum / count.clamp_min(1), nan).tolist(),
            'accuracy': torch.where(count > 0, hit_sum / count.clamp_min(1), nan).tolist(),
        }

    def compute(self) -> dict[str, float]:
        """All metrics over the samples seen (after :meth:`all_reduce` when distributed); keys in ``METRIC_KEYS``."""
        if self._sums is None or self._sums[0] == 0:
            raise ValueError('CalibrationMeter.compute() called before any update() with a sample.')
        count, top1, top5, nll, brier = self._sums.cpu().tolist()
        bin_count, conf_sum, hit_sum = self._bins.cpu()
        gap = (hit_sum - conf_sum).abs()
        _, prob_sum, label_sum = self._class_bins.cpu()  # |bin| * |acc - conf| = |sum [y=k] - sum p_k|
        confidence, correct = (tensor.cpu() for tensor in self._samples())
        mass_bins = _equal_mass_bins(confidence, self.num_bins)
        mass_gap = (torch.zeros(self.num_bins, dtype=torch.float64).index_add_(0, mass_bins, confidence)
                    - torch.zeros(self.num_bins, dtype=torch.float64).index_add_(0, mass_bins, correct.double())).abs()
        return {
            'top1': 100.0 * top1 / count,
            'top5': 100.0 * top5 / count,
            'nll': nll / count,
            'brier': brier / count,
            'ece': float(gap.sum() / count),
            'adaptive_ece': float(mass_gap.sum() / count),
            'classwise_ece': float((label_sum - prob_sum).abs().sum() / count / self.num_classes),
            'mce': float((gap[bin_count > 0] / bin_count[bin_count > 0]).max()),
            'smooth_ece': smooth_ece(confidence, correct),
        }


def coinciding_ece_note(metrics: Mapping[str, float], rel_tol: float = 1e-9) -> Optional[str]:
    """A one-line explanation when ECE, adaptive ECE and smooth ECE agree (to ``rel_tol``), else None.

    Each of the three sums |sum of (confidence - correct)| over bins (or, for smooth ECE, over kernel-smoothed
    positions). When that sum has one sign everywhere (a model under-confident, or over-confident, at every
    confidence) the absolute values add up to the absolute value of the total, |mean confidence - accuracy|,
    whatever the bins or the bandwidth: the three coincide up to rounding. See docs/metrics-notes.md.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f'metrics must be a mapping of metric names to values, got {type(metrics).__name__}.')
    values = [metrics.get(key) for key in ('ece', 'adaptive_ece', 'smooth_ece')]
    for key, value in zip(('ece', 'adaptive_ece', 'smooth_ece'), values):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"metrics['{key}'] must be a finite number >= 0, got {value!r}.")
    if any(v is None for v in values) or max(values) <= 0:
        return None
    if max(values) - min(values) > rel_tol * max(values):
        return None
    return (f'ECE, adaptive ECE and smooth ECE coincide ({values[0]:.6f}): the gap between accuracy and confidence '
            'has one sign at every confidence, so each equals |accuracy - mean confidence| (docs/metrics-notes.md).')
