"""Training-time evidence: top-1 on the training batches and the per-sample terms of the focal calibration losses.

The self-adaptive focal calibration loss (SA-FCL) code of the FCL authors plots, per epoch, the mean focal term, the
Brier term, the gate w, the gated Brier w * B and the target probability p_t (Liang et al., "Focal Calibration
Loss", arXiv 2410.18321). This module computes those terms from the logits and targets the training loss receives
and the loss's public hyper-parameters only (it never calls into the loss's private code), so that the recorded
terms are an independent check: for the Brier family they recombine into the loss value (tested).

:class:`TrainingEvidence` is a forward hook on the training loss: it sees exactly the logits the loss sees (after a
cyclical temperature pre-hook) and accumulates its sums on the device, so training runs no extra forward pass and
no host synchronisation per batch; the sums are all-reduced once per epoch.
"""
from collections.abc import Mapping
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from cfl_timm import FocalLoss

__all__ = ['EVIDENCE_KEYS', 'TrainingEvidence', 'evidence_columns', 'evidence_keys', 'loss_evidence',
           'recombine_loss']

# Per-sample evidence terms, in summary.csv as ``evidence_<key>`` (epoch means over the training samples).
EVIDENCE_KEYS = ('focal', 'brier', 'gate', 'gated_brier', 'p_t')
_BRIER_FAMILY = {'fcl-ungated': False, 'safcl': True, 'safcl-nodetach': True}  # name -> gated
_FOCAL_KEYS = ('focal', 'p_t')


def _loss_kind(criterion: Any) -> Optional[str]:
    """'brier' (FCL, SA-FCL, SA-FCL no-detach), 'focal' (FL-gamma, FLSD, AdaFocal, dual focal) or None."""
    name = getattr(criterion, 'name', None)
    if name in _BRIER_FAMILY:
        return 'brier'
    if name in ('flsd', 'adafocal', 'dual-focal'):
        return 'focal'
    if isinstance(criterion, FocalLoss) and criterion.eps == 0:  # --focal_loss sym without smoothing: FL-gamma
        return 'focal'
    return None


def evidence_keys(criterion: Any) -> tuple[str, ...]:
    """The evidence terms ``criterion`` has: all of :data:`EVIDENCE_KEYS` for the Brier family, the focal term and
    p_t for the focal losses, none for any other loss."""
    kind = _loss_kind(criterion)
    return EVIDENCE_KEYS if kind == 'brier' else _FOCAL_KEYS if kind == 'focal' else ()


def evidence_columns(criterion: Any) -> tuple[str, ...]:
    """summary.csv columns of the evidence terms of ``criterion`` (``evidence_focal``, ...)."""
    return tuple(f'evidence_{key}' for key in evidence_keys(criterion))


def loss_evidence(criterion: Any, logits: torch.Tensor, target: torch.Tensor) -> Optional[dict[str, torch.Tensor]]:
    """Per-sample evidence terms (each (N,)) of ``criterion`` on hard targets; None for a loss without evidence or
    for soft (Mixup / CutMix) targets.

    With p = softmax(z), p_t = p_y and B = sum_k (p_k - [k == y])^2:

    - Brier family (``fcl-ungated``, ``safcl``, ``safcl-nodetach``): ``focal`` = -(1 - p_t)^gf log p_t, ``brier`` =
      B, ``gate`` w = (1 - p_t)^gc (1 for ``fcl-ungated``), ``gated_brier`` = w * B; the loss is
      focal + lambda * gated_brier per sample (:func:`recombine_loss`).
    - ``flsd``, ``adafocal``: the loss's per-sample exponent (its public ``sample_gamma``), AdaFocal's inverse branch
      -(1 + p_t)^|g| log p_t for g < 0; ``dual-focal``: -(1 - p_t + p_j)^g log p_t with p_j the largest probability
      strictly below p_t (0 if none); ``sym`` FL-gamma: -(1 - p_t)^g log p_t. ``focal`` is then the loss itself.

    Computed without gradient, in float32 (float64 for float64 logits).

    Args:
        criterion: The training loss.
        logits: (N, K) logits as the loss receives them.
        target: (N,) class indices.
    """
    kind = _loss_kind(criterion)
    if kind is None or logits.dim() != 2 or target.dim() != 1 or target.is_floating_point() \
            or target.shape[0] != logits.shape[0]:
        return None
    with torch.no_grad():
        logits = logits.detach()
        logits = logits if logits.dtype == torch.float64 else logits.float()
        logp = F.log_softmax(logits, dim=1)
        column = target.long().unsqueeze(1)
        logp_t = logp.gather(1, column).squeeze(1)
        p_t = logp_t.exp()
        one_minus_pt = -torch.expm1(logp_t)  # 1 - p_t without cancellation near p_t = 1
        name = getattr(criterion, 'name', None)
        if kind == 'brier':
            p = logp.exp()
            brier = (p * p).sum(1) - 2.0 * p_t + 1.0
            gate = one_minus_pt.pow(criterion.gamma_cal) if _BRIER_FAMILY[name] else torch.ones_like(p_t)
            focal = one_minus_pt.pow(criterion.gamma) * -logp_t
            return {'focal': focal, 'brier': brier, 'gate': gate, 'gated_brier': gate * brier, 'p_t': p_t}
        if name in ('flsd', 'adafocal'):
            gamma = criterion.sample_gamma(p_t)
            base = torch.where(gamma >= 0, one_minus_pt, 1.0 + p_t) + (criterion.EPS if name == 'adafocal' else 0.0)
            focal = base.pow(gamma.abs()) * -logp_t
        elif name == 'dual-focal':
            p = logp.exp()
            p_j = p.masked_fill(p >= p_t.unsqueeze(1), 0.0).amax(1)  # the target itself is masked (p_t >= p_t)
            focal = (one_minus_pt + p_j).pow(criterion.gamma) * -logp_t
        else:
            focal = one_minus_pt.pow(criterion.gamma) * -logp_t
        return {'focal': focal, 'p_t': p_t}


def recombine_loss(criterion: Any, evidence: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The loss value rebuilt from its evidence terms and reduced as ``criterion.reduction`` does: focal + lambda *
    gated_brier (Brier family) or focal (focal losses)."""
    rows = evidence['focal']
    if 'gated_brier' in evidence:
        rows = rows + criterion.lam * evidence['gated_brier']
    reduction = getattr(criterion, 'reduction', 'mean')
    return rows.mean() if reduction == 'mean' else rows.sum() if reduction == 'sum' else rows


class TrainingEvidence:
    """Per-epoch top-1 on the training batches and the loss's evidence terms, from a forward hook on the loss.

    The hook is registered once, for the whole run (a compiled loss then sees one fixed set of hooks), and runs
    eagerly (``torch.compiler.disable``). Per batch it adds, on the device: the samples with hard targets and
    their correct top-1 predictions, and the sums of the evidence terms. A batch with soft targets (Mixup /
    CutMix) or whose logits are not one row per target (JSD's augmentation splits) is not counted, so the
    epoch's ``train_top1`` is empty when no batch had hard targets. Top-1 is measured on the logits of the
    training step (the model in train mode, on augmented images, before the step's update), as timm's and the
    seeds' training accuracy.

    Args:
        criterion: The training loss (an ``nn.Module``; any other callable records nothing).
        device: Where the sums live (the training device).
    """

    def __init__(self, criterion: Any, device: torch.device) -> None:
        self.keys = evidence_keys(criterion)
        self.criterion = criterion
        self.device = torch.device(device)
        self._handle = criterion.register_forward_hook(self._record) if isinstance(criterion, nn.Module) else None
        self.reset()

    def columns(self) -> tuple[str, ...]:
        """summary.csv columns this recorder fills: ``train_top1`` and the loss's evidence columns."""
        return ('train_top1', *(f'evidence_{key}' for key in self.keys))

    def reset(self) -> None:
        """Start a new epoch: [hard-target samples, top-1 hits, evidence samples, evidence sums...]."""
        self._sums = torch.zeros(3 + len(self.keys), dtype=torch.float64, device=self.device)

    @torch.compiler.disable
    def _record(self, module: nn.Module, args: tuple, output: Any) -> None:
        if len(args) < 2 or not isinstance(args[0], torch.Tensor) or not isinstance(args[1], torch.Tensor):
            return
        logits, target = args[0], args[1]
        if logits.dim() != 2 or target.dim() != 1 or target.is_floating_point() or target.shape[0] != logits.shape[0]:
            return
        with torch.no_grad():
            sums = self._sums
            sums[0] += target.shape[0]
            sums[1] += (logits.detach().argmax(1) == target).sum()
            evidence = loss_evidence(self.criterion, logits, target) if self.keys else None
            if evidence is not None:
                sums[2] += target.shape[0]
                sums[3:] += torch.stack([evidence[key].double().sum() for key in self.keys]).to(sums.device)

    def compute(self) -> dict[str, Optional[float]]:
        """The epoch's values over all ranks (call on every rank): ``train_top1`` in percent and ``evidence_<key>``
        means; None where no batch counted."""
        sums = self._sums
        if dist.is_available() and dist.is_initialized():
            sums = sums.clone()
            dist.all_reduce(sums)
        values = sums.tolist()
        top1 = 100.0 * values[1] / values[0] if values[0] else None
        count = values[2]
        result: dict[str, Optional[float]] = {'train_top1': top1}
        for key, total in zip(self.keys, values[3:]):
            result[f'evidence_{key}'] = total / count if count else None
        return result

    def close(self) -> None:
        """Remove the hook from the loss."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
