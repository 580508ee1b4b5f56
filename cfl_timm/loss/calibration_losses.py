"""Calibration-aware classification losses: Brier, CE + Brier, MMCE, FLSD-53, Dual focal, AdaFocal, MbLS,
confidence penalty, FCL and SA-FCL.

Papers:
- G. W. Brier, "Verification of forecasts expressed in terms of probability", Monthly Weather Review 1950.
- A. Kumar, S. Sarawagi, U. Jain, "Trainable Calibration Measures for Neural Networks from Kernel Mean
  Embeddings" (MMCE), ICML 2018.
- J. Mukhoti, V. Kulharia, A. Sanyal, S. Golodetz, P. Torr, P. Dokania, "Calibrating Deep Neural Networks using
  Focal Loss" (FLSD-53), NeurIPS 2020, https://arxiv.org/abs/2002.09437
- L. Tao, Y. Dong, C. Xu, "Dual Focal Loss for Calibration", ICML 2023, https://arxiv.org/abs/2305.13665
- A. Ghosh, T. Schaaf, M. Gormley, "AdaFocal: Calibration-aware Adaptive Focal Loss", NeurIPS 2022,
  https://arxiv.org/abs/2211.11838
- B. Liu, I. Ben Ayed, A. Galdran, J. Dolz, "The Devil is in the Margin: Margin-based Label Smoothing for Network
  Calibration" (MbLS), CVPR 2022, https://arxiv.org/abs/2111.15430
- G. Pereyra, G. Tucker, J. Chorowski, L. Kaiser, G. Hinton, "Regularizing Neural Networks by Penalizing Confident
  Output Distributions", ICLR workshop 2017, https://arxiv.org/abs/1701.06548
- FCL: Liang et al., "Focal Calibration Loss", https://arxiv.org/abs/2410.18321; SA-FCL as defined by the code of
  the EagleAdelaide/Focal-Calibration-Loss-FCL repository (no paper).

This module imports torch and its sibling ``_base`` (reductions and argument checks) only, so the two can be
copied into ``timm/loss/`` of an existing timm checkout and work there unchanged.

Notation: z logits (N, K), logp = log_softmax(z), p = exp(logp), y the target class, e = onehot(y) (or a soft
target q), r = max_k p_k the top-label confidence, c = [argmax p == y], sg[.] stop-gradient,
CE = -logp_y, FL_g = -(1 - p_y)^g logp_y.

Every loss computes its gradient analytically in the forward pass (a few in-place passes over (N, K), about the cost
of cross-entropy) and ``loss.backward()`` only scales it. Under ``torch.compile`` (no host read, one graph) most
losses compile another path, measured faster there (docs/speed.md): ``mbls`` and ``confidence-penalty`` compute
their rows as the formula with plain differentiable ops (``_formula_rows``), which the inductor differentiates and
fuses; ``brier``, ``ce-brier``, MMCE and Dual focal, for hard targets, compute their rows from a few row reductions
and save (N,) row coefficients, and the backward rebuilds the gradient from the logits in one pass (``_row_form``),
instead of writing an (N, K) gradient in the forward and reading it back. ``flsd``, ``adafocal`` and the
focal-calibration losses (FCL, SA-FCL) compile their analytic path. Every path gives the same value and gradient.
Half precision inputs are computed in float32 and the loss is float32. Reductions: 'mean' over the batch (default),
'sum' = N x the mean form (the protocol of the focal-calibration, AdaFocal and Dual-focal code, which sum over the
batch), 'none' the per-sample values (not for the MMCE losses, whose penalty is a batch statistic). Soft (Mixup /
CutMix) targets (N, K) are accepted by ``brier``, ``ce-brier``, ``mbls`` and ``confidence-penalty`` only (e becomes
q, CE becomes -sum_k q_k logp_k); label smoothing only by ``ce-brier`` (on its CE term, as timm's
``LabelSmoothingCrossEntropy``).
"""
import inspect
import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import (
    check_choice,
    check_number,
    check_reduction,
    check_soft_targets,
    check_target_indices,
    log_softmax,
)

__all__ = [
    'CALIBRATION_LOSS_TYPES', 'CALIBRATION_LOSS_DEFAULTS', 'SOFT_TARGET_LOSSES',
    'BrierLoss', 'CEBrierLoss', 'MMCEMLoss', 'MMCEWLoss', 'FLSDLoss', 'DualFocalLoss', 'AdaFocalLoss', 'MbLSLoss',
    'ConfidencePenaltyLoss', 'FocalCalibrationLoss', 'SAFCLoss', 'SAFCLNoDetachLoss', 'create_calibration_loss',
]

MMCE_KERNEL_WIDTH = 0.4


# ---------------------------------------------------------------------------------------------------------------
# Shared numerical pieces
# ---------------------------------------------------------------------------------------------------------------

def _one_minus_exp(logp: torch.Tensor) -> torch.Tensor:
    """1 - exp(logp) as a new tensor, accurate as p -> 1."""
    return torch.expm1(logp).neg_()


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den in place on num, den clamped at the smallest normal number: finite where den = 0 (the limits used
    here have num -> 0 there too)."""
    return num.div_(den.clamp_min(torch.finfo(den.dtype).tiny))


def _focal_terms(logp_t: torch.Tensor, gamma):
    """Focal weight w = (1 - p)^gamma and s = -p dL/dp for L = -w logp, i.e. s = w - gamma w p logp / (1 - p).

    ``gamma`` is a float or a per-row tensor. d L / d z = s (p - e), so s is the row coefficient of the gradient.
    """
    one_minus_p = _one_minus_exp(logp_t)
    weight = one_minus_p.pow(gamma)
    ratio = _safe_div(logp_t.exp().mul_(logp_t), one_minus_p)  # p logp / (1 - p), -> -1 as p -> 1
    grad_coef = ratio.mul_(weight).mul_(gamma).neg_().add_(weight)
    return weight, grad_coef


_BOUNDS: dict = {}


def _clamp_bounds(eps: float, dtype: torch.dtype) -> tuple:
    """(eps, 1 - eps, the largest number below eps) as the dtype holds them, as Python floats (cached per dtype).

    ``F.threshold(x, below, 0)`` keeps x > below, i.e. x >= eps, in one pass.
    """
    key = (eps, dtype)
    if key not in _BOUNDS:
        low, high = torch.tensor([eps, 1 - eps], dtype=dtype).unbind()
        below = torch.nextafter(low, torch.tensor(-math.inf, dtype=dtype))
        _BOUNDS[key] = (float(low), float(high), float(below))
    return _BOUNDS[key]


def _target_grad(p: torch.Tensor, index: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """coef * (p - e) in place on p: the gradient of any loss that depends on the logits through p_y only."""
    grad = p.mul_(coef.unsqueeze(1))
    return grad.scatter_add_(1, index.unsqueeze(1), coef.neg().unsqueeze(1))


def _brier_parts(p: torch.Tensor, index: Optional[torch.Tensor], dist: Optional[torch.Tensor],
                 one_minus_pt: Optional[torch.Tensor]):
    """d = p - e (in place on p for hard targets), B = sum_k d_k^2 and a = sum_k p_k d_k.

    For hard targets the target entry of d is set from the accurate 1 - p_y, and a = B - (1 - p_y); no (N, K)
    temporary is allocated. For soft targets d is a new tensor.
    """
    if dist is None:
        d = p.scatter_(1, index.unsqueeze(1), one_minus_pt.neg().unsqueeze(1))
        brier = torch.linalg.vector_norm(d, dim=1).square_()
        return d, brier, brier - one_minus_pt
    d = p - dist
    brier = torch.linalg.vector_norm(d, dim=1).square_()
    return d, brier, torch.linalg.vecdot(p, d)


def _brier_family_grad(d, a, index, p_t, one_minus_pt, coef, beta, dist=None, p=None):
    """Gradient of coef * CE-like term + beta * B / 2-scaled Brier: rows of ``coef (p - e) + beta p (d - a)``.

    With d = p - e and a = sum_k p_k d_k, d B / d z = 2 p (d - a), so ``beta`` = 2 x the Brier weight (per row or
    float). Hard targets: built in place on d. Soft targets: ``p`` must be given (d = p - q is not invertible
    without it) and the CE-like term is ``coef (p - q)``.
    """
    if dist is None:
        # k != y: p_k = d_k, so coef d_k + beta d_k (d_k - a) = d_k (coef + beta (d_k - a)); k = y separately.
        d_t = one_minus_pt.neg()
        grad_t = coef * d_t + beta * p_t * (d_t - a)
        grad = torch.sub(d, a.unsqueeze(1)).mul_(_as_column(beta)).add_(_as_column(coef)).mul_(d)
        return grad.scatter_(1, index.unsqueeze(1), grad_t.unsqueeze(1))
    grad = torch.sub(d, a.unsqueeze(1)).mul_(p).mul_(_as_column(beta))
    return grad.add_(d.mul_(_as_column(coef)))


def _as_column(value):
    return value.unsqueeze(1) if isinstance(value, torch.Tensor) else value


# Compiled path (``_formula_rows``): the formula with plain, out-of-place differentiable ops. The target entry is
# read with ``nll_loss`` and maxima with ``amax``, not ``gather`` or ``max(dim)``, whose backward scatters into a
# new zero (N, K) tensor (extra passes the inductor does not fuse; nll_loss's and amax's backward are masks).

def _formula_ce(logp: torch.Tensor, index: Optional[torch.Tensor], dist: Optional[torch.Tensor]) -> torch.Tensor:
    """-logp_y, or -sum_k q_k logp_k for soft targets."""
    if dist is None:
        return F.nll_loss(logp, index, reduction='none')
    return (dist * logp).sum(1).neg()


def _laplacian_kernel_sums(r: torch.Tensor, v: torch.Tensor, width: float):
    """(K v, S v) for K_ij = exp(-|r_i - r_j| / width), S_ij = sign(r_i - r_j) K_ij, v of shape (N, m).

    O(N log N) and O(N m) memory instead of the (N, N) kernel matrix: after sorting r, the rows split into
    r_j <= r_i, where K_ij = exp(r_j / w) / exp(r_i / w), and r_j > r_i, where K_ij = exp(r_i / w) exp(-r_j / w), so
    both sums are prefix sums (the upper ones as reversed cumulative sums, so nothing cancels). Ties (r_j = r_i:
    K = 1, sign 0) are exact via two binary searches. r lies in [0, 1], so the factors stay within exp(+-1 / w)
    and float32 is accurate to its own rounding.
    """
    sorted_r, order = torch.sort(r)
    sorted_v = v[order]
    up = torch.exp(sorted_r / width).unsqueeze(1)
    zero = v.new_zeros(1, v.shape[1])
    below = torch.cat([zero, torch.cumsum(sorted_v * up, 0)])  # below[i]: sum over the i smallest r_j
    above = torch.cat([torch.cumsum((sorted_v / up).flip(0), 0).flip(0), zero])  # above[i]: over sorted j >= i
    less = torch.searchsorted(sorted_r, r)  # number of r_j < r_i
    less_equal = torch.searchsorted(sorted_r, r, right=True)  # number of r_j <= r_i
    scale = torch.exp(r / width).unsqueeze(1)
    greater = above[less_equal] * scale
    kernel_sum = below[less_equal] / scale + greater
    sign_sum = below[less] / scale - greater
    return kernel_sum, sign_sum


class _CalibrationLossFunction(torch.autograd.Function):
    """Runs ``loss._rows_and_grad`` (loss rows and the pre-scaled analytic gradient) and scales in backward.

    Returns the per-row losses (scale None) or scale * their sum (1 for 'sum', 1 / N for 'mean'). Once
    differentiable: a second derivative (``create_graph=True``) raises instead of being silently wrong.
    """

    @staticmethod
    def forward(ctx, logits, index, dist, loss, scale):
        need_grad = ctx.needs_input_grad[0]
        rows, grad = loss._rows_and_grad(logits, index, dist, 1.0 if scale is None else scale, need_grad)
        ctx.save_for_backward(grad)
        ctx.per_row = scale is None
        return rows if scale is None else rows.sum() * scale

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():  # create_graph=True: the saved gradient has no graph to differentiate
            raise RuntimeError('The calibration losses are once differentiable: a second derivative '
                               '(create_graph=True) is not supported.')
        (grad,) = ctx.saved_tensors
        if ctx.per_row:
            grad = grad * grad_output.unsqueeze(1)
        elif grad_output.is_cuda or torch.compiler.is_compiling() or float(grad_output) != 1.0:
            grad = grad * grad_output
        return grad, None, None, None, None


class _RowGradient(NamedTuple):
    """A gradient over (N, K) given by (N,) row vectors (the compiled path's saved state, see ``_RowFormFunction``).

    ``grad[i, k] = base_i + p_ik (linear_i + square_i p_ik) + [k = y_i] target_i + [k = other_index_i] other_i``
    with p = exp(z - lse). ``base``, ``square`` and ``other_index`` / ``other`` may be None (0).
    """

    lse: torch.Tensor
    linear: torch.Tensor
    target: torch.Tensor
    base: Optional[torch.Tensor] = None
    square: Optional[torch.Tensor] = None
    other_index: Optional[torch.Tensor] = None
    other: Optional[torch.Tensor] = None


class _RowFormFunction(torch.autograd.Function):
    """The compiled path of the losses with a ``_row_form``: the forward computes the rows from a few row
    reductions of the logits and saves (N,) row vectors, the backward rebuilds the gradient from the logits in one
    elementwise pass. Compiled, that is one forward kernel of about CE's passes and one backward kernel like CE's,
    where the analytic path writes an (N, K) gradient in the forward and reads it back (docs/speed.md).
    """

    @staticmethod
    def forward(ctx, logits, index, loss, scale):
        rows, form = loss._row_form(logits, index, 1.0 if scale is None else scale)
        ctx.save_for_backward(logits, index, *form)
        ctx.per_row = scale is None
        return rows if scale is None else rows.sum() * scale

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            raise RuntimeError('The calibration losses are once differentiable: a second derivative '
                               '(create_graph=True) is not supported.')
        logits, index, *saved = ctx.saved_tensors
        form = _RowGradient(*saved)
        scale = grad_output if ctx.per_row else grad_output.expand(logits.shape[0])
        p = torch.exp(logits - form.lse.unsqueeze(1))
        slope = (form.linear * scale).unsqueeze(1)
        if form.square is not None:
            slope = slope + (form.square * scale).unsqueeze(1) * p
        grad = p * slope
        if form.base is not None:
            grad = grad + (form.base * scale).unsqueeze(1)
        classes = torch.arange(logits.shape[1], device=logits.device)
        grad = grad + torch.where(classes == index.unsqueeze(1), (form.target * scale).unsqueeze(1), 0.0)
        if form.other is not None:
            grad = grad + torch.where(classes == form.other_index.unsqueeze(1), (form.other * scale).unsqueeze(1), 0.0)
        return grad, None, None, None


def _target_row_stats(logits: torch.Tensor, index: torch.Tensor, squares: bool = False):
    """(lse, logp_y, sum_{k != y} p_k^2 or None) from one max and one fused pass of exps over the logits."""
    top = logits.amax(1, keepdim=True)
    shifted = torch.exp(logits - top)
    total = shifted.sum(1)
    lse = total.log() + top.squeeze(1)
    logp_t = logits.gather(1, index.unsqueeze(1)).squeeze(1) - lse
    if not squares:
        return lse, logp_t, None
    classes = torch.arange(logits.shape[1], device=logits.device)
    others = torch.where(classes == index.unsqueeze(1), 0.0, shifted * shifted).sum(1)
    return lse, logp_t, others / (total * total)


def _brier_row_form(logits, index):
    """(lse, logp_y, p_y, 1 - p_y, B, a) of the Brier score for hard targets: B = sum_{k != y} p_k^2 + (1 - p_y)^2,
    a = sum_k p_k d_k = sum_{k != y} p_k^2 - p_y (1 - p_y)."""
    lse, logp_t, others = _target_row_stats(logits, index, squares=True)
    p_t, one_minus_pt = logp_t.exp(), _one_minus_exp(logp_t)
    return lse, logp_t, p_t, one_minus_pt, others + one_minus_pt.square(), others - p_t * one_minus_pt


def _brier_family_row_gradient(lse, p_t, a, coef, beta) -> _RowGradient:
    """``_brier_family_grad`` as a row form: coef (p - e) + beta p (d - a) = p (coef - beta a + beta p) at k != y,
    minus coef + beta p_y at k = y."""
    coef, beta = (torch.as_tensor(value, dtype=lse.dtype, device=lse.device) for value in (coef, beta))
    return _RowGradient(lse=lse, linear=coef - beta * a, square=beta.expand_as(lse), target=-(coef + beta * p_t))


# ---------------------------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------------------------

class _CalibrationLoss(nn.Module):
    """Shared input handling: validation, float32 compute for half precision, targets and reduction.

    Subclasses set ``name`` (the factory name), ``factory_keywords`` (factory keyword -> constructor argument),
    ``soft_targets`` and ``batch_statistic``, and implement ``_rows_and_grad``.
    """

    name = ''
    factory_keywords: dict = {}
    soft_targets = False
    batch_statistic = False

    def __init__(self, reduction: str = 'mean') -> None:
        super().__init__()
        self.reduction = check_reduction(self.name, reduction)
        if self.batch_statistic and reduction == 'none':
            raise ValueError(f"{self.name}: reduction 'none' is not defined, the penalty is a batch statistic; "
                             f"use one of ('mean', 'sum').")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: (N, K) float logits, K >= 2. Half precision is computed in float32.
            target: Class indices (N,) in [0, K), or for losses accepting them soft targets (N, K), non-negative
                and summing to 1 over classes.

        Returns:
            The loss reduced by ``self.reduction`` ('none': shape (N,)), float32 (float64 for float64 logits).
            NaN / inf logits are not checked (no host sync per step): they give a non-finite loss and gradient,
            as cross-entropy does, so a GradScaler skips the step.
        """
        logits, index, dist = self._check_inputs(logits, target)
        scale = {'none': None, 'sum': 1.0, 'mean': 1.0 / logits.shape[0]}[self.reduction]
        if torch.compiler.is_compiling():
            if self._formula_rows is not None:
                rows = self._formula_rows(logits, index, dist)
                return rows if scale is None else rows.sum() * scale
            if self._row_form is not None and dist is None:
                return _RowFormFunction.apply(logits, index, self, scale)
        return _CalibrationLossFunction.apply(logits, index, dist, self, scale)

    def _check_inputs(self, logits, target):
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise ValueError(f'{self.name}: logits must be a floating-point tensor, got '
                             f'{getattr(logits, "dtype", type(logits).__name__)}.')
        if logits.dim() != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
            raise ValueError(f'{self.name}: logits must have shape (N, K) with N >= 1 and K >= 2 classes, got '
                             f'{tuple(logits.shape)}.')
        if logits.dtype != torch.float64:
            logits = logits.float()
        num_rows, num_classes = logits.shape
        if not isinstance(target, torch.Tensor):
            raise ValueError(f'{self.name}: target must be a tensor, got {type(target).__name__}.')
        if target.is_floating_point() and target.shape == logits.shape:
            if not self.soft_targets:
                raise ValueError(f'{self.name}: soft targets (Mixup / CutMix) are not supported, this loss needs the '
                                 f'target class; losses accepting soft targets: {SOFT_TARGET_LOSSES}.')
            dist = target.to(logits.dtype)
            check_soft_targets(self.name, dist)
            return logits, None, dist
        if target.shape == (num_rows,) and not target.is_floating_point() and target.dtype != torch.bool \
                and not target.is_complex():
            index = target.long()
            check_target_indices(self.name, index, num_classes)
            return logits, index, None
        allowed = f' or soft targets of shape {tuple(logits.shape)}' if self.soft_targets else ''
        raise ValueError(f'{self.name}: target must hold integer class indices of shape ({num_rows},){allowed}, '
                         f'got shape {tuple(target.shape)} ({target.dtype}).')

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        """(Per-row loss (N,), gradient of scale * sum(rows) w.r.t. logits or None)."""
        raise NotImplementedError

    # Compiled path (None: the loss compiles its eager analytic path): ``_formula_rows(logits, index, dist)``, the
    # per-row loss (N,) written with plain differentiable ops, same value and gradient as ``_rows_and_grad``.
    _formula_rows = None
    # Compiled path for hard targets (None: the analytic path): ``_row_form(logits, index, scale)``, the per-row
    # loss (N,) and the gradient of scale * sum(rows) as a ``_RowGradient``, same value and gradient.
    _row_form = None

    def extra_repr(self) -> str:
        parts = [f'{arg}={getattr(self, arg)!r}' for arg in self.factory_keywords.values()]
        return ', '.join(parts + [f'reduction={self.reduction!r}'])


# ---------------------------------------------------------------------------------------------------------------
# Brier family
# ---------------------------------------------------------------------------------------------------------------

class BrierLoss(_CalibrationLoss):
    """Brier score as a loss, ``brier`` (Brier 1950; focal-calibration code ``Losses/brier_score.py``).

    ``loss = sum_k (p_k - e_k)^2`` in [0, 2]; soft targets replace e by q. No parameters. Gradient:
    d loss / d z = 2 p (d - a) with d = p - e, a = sum_k p_k d_k.

    Args:
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'brier'
    soft_targets = True

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        logp = log_softmax(logits)
        p_t = one_minus_pt = None
        if index is not None:
            logp_t = logp.gather(1, index.unsqueeze(1)).squeeze(1)
            p_t, one_minus_pt = logp_t.exp(), _one_minus_exp(logp_t)
        p = logp.exp_()
        d, brier, a = _brier_parts(p, index, dist, one_minus_pt)
        if not need_grad:
            return brier, None
        return brier, _brier_family_grad(d, a, index, p_t, one_minus_pt, 0.0, 2.0 * scale, dist, p)

    def _row_form(self, logits, index, scale):
        lse, _, p_t, _, brier, a = _brier_row_form(logits, index)
        return brier, _brier_family_row_gradient(lse, p_t, a, 0.0, 2.0 * scale)


class CEBrierLoss(_CalibrationLoss):
    """Cross-entropy plus weighted Brier score, ``ce-brier`` (the "CE+0.1*Brier" of the FCL multi-loss code).

    ``loss = -sum_k y_k logp_k + lambda * sum_k (p_k - e_k)^2`` with the CE target y = (1 - eps) e + eps / K
    (timm's ``LabelSmoothingCrossEntropy``; eps = ``smoothing``, 0 by default) and the unsmoothed e (or soft
    target q) in the Brier term. lambda = 0 is (label-smoothed) cross-entropy.

    Args:
        brier_weight: lambda >= 0, default 0.1.
        smoothing: Label smoothing eps of the CE term, in [0, 1).
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'ce-brier'
    factory_keywords = {'brier_weight': 'brier_weight'}
    soft_targets = True

    def __init__(self, brier_weight: float = 0.1, smoothing: float = 0.0, reduction: str = 'mean') -> None:
        super().__init__(reduction)
        self.brier_weight = check_number(self.name, 'brier_weight', brier_weight)
        self.smoothing = check_number(self.name, 'smoothing', smoothing)
        if self.smoothing >= 1:
            raise ValueError(f'{self.name}: smoothing must lie in [0, 1), got {smoothing!r}.')

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        eps, num_classes = self.smoothing, logits.shape[1]
        logp = log_softmax(logits)
        if dist is None:
            logp_t = logp.gather(1, index.unsqueeze(1)).squeeze(1)
            ce = logp_t.neg()
            p_t, one_minus_pt = logp_t.exp(), _one_minus_exp(logp_t)
        else:
            ce = torch.linalg.vecdot(dist, logp).neg_()
            p_t = one_minus_pt = None
        if eps:
            ce.mul_(1 - eps).sub_(logp.sum(1), alpha=eps / num_classes)
        p = logp.exp_()
        d, brier, a = _brier_parts(p, index, dist, one_minus_pt)
        rows = torch.add(ce, brier, alpha=self.brier_weight)
        if not need_grad:
            return rows, None
        # CE gradient p - y = (1 - eps)(p - e) + eps (p - 1 / K): the (p - e) part joins the Brier term.
        coef = (1 - eps) * scale
        grad = _brier_family_grad(d, a, index, p_t, one_minus_pt, coef, 2.0 * self.brier_weight * scale, dist, p)
        if eps:
            # Hard targets turned p into d in place; recompute it (only when smoothing).
            p_again = log_softmax(logits).exp_() if dist is None else p
            grad.add_(p_again - 1.0 / num_classes, alpha=eps * scale)
        return rows, grad

    def _row_form(self, logits, index, scale):
        eps, num_classes = self.smoothing, logits.shape[1]
        lse, logp_t, p_t, _, brier, a = _brier_row_form(logits, index)
        ce = logp_t.neg()
        if eps:  # sum_k logp_k = sum_k z_k - K lse
            ce = ce * (1 - eps) - (logits.sum(1) - num_classes * lse) * (eps / num_classes)
        rows = ce + self.brier_weight * brier
        form = _brier_family_row_gradient(lse, p_t, a, (1 - eps) * scale, 2.0 * self.brier_weight * scale)
        if eps:  # + eps (p - 1 / K)
            form = form._replace(linear=form.linear + eps * scale,
                                 base=torch.full_like(lse, -eps * scale / num_classes))
        return rows, form


class _FocalBrierBase(_CalibrationLoss):
    """FL_gf + lambda * G * B with B = sum_k (p_k - e_k)^2 and the gate G = 1, sg[(1 - p_y)^gc] or (1 - p_y)^gc."""

    gated = False
    detach_gate = True

    def __init__(self, gamma: float, lam: float, gamma_cal: float, reduction: str) -> None:
        super().__init__(reduction)
        self.gamma = check_number(self.name, 'fcl_gamma', gamma)
        self.lam = check_number(self.name, 'fcl_lambda', lam)
        self.gamma_cal = check_number(self.name, 'safcl_gamma_cal', gamma_cal)

    def _rows_and_coefs(self, logp_t, p_t, one_minus_pt, brier, scale):
        """(rows, coef, beta): the rows and the row coefficients of ``_brier_family_grad``."""
        focal_weight, focal_coef = _focal_terms(logp_t, self.gamma)
        gate = one_minus_pt.pow(self.gamma_cal) if self.gated else None
        weighted_brier = brier * self.lam if gate is None else brier * gate * self.lam
        rows = focal_weight.mul_(logp_t).neg_().add_(weighted_brier)
        beta = 2.0 * self.lam * scale if gate is None else gate * (2.0 * self.lam * scale)
        coef = focal_coef.mul_(scale)
        if self.gated and not self.detach_gate and self.gamma_cal:
            # d gate / d z = gamma_c (1 - p_y)^(gamma_c - 1) p_y (p - e): adds lambda B gamma_c gate p_y / (1 - p_y).
            gate_coef = _safe_div(gate * p_t, one_minus_pt).mul_(brier).mul_(self.gamma_cal * self.lam * scale)
            coef = coef.add_(gate_coef)
        return rows, coef, beta

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        logp = log_softmax(logits)
        logp_t = logp.gather(1, index.unsqueeze(1)).squeeze(1)
        one_minus_pt = _one_minus_exp(logp_t)
        p_t = logp_t.exp()
        p = logp.exp_()
        d, brier, a = _brier_parts(p, index, None, one_minus_pt)
        rows, coef, beta = self._rows_and_coefs(logp_t, p_t, one_minus_pt, brier, scale)
        if not need_grad:
            return rows, None
        return rows, _brier_family_grad(d, a, index, p_t, one_minus_pt, coef, beta)

    # No row form: compiled, the inductor recomputed the focal and gate terms (pow, expm1) of the row coefficients
    # once per element in the backward's loop, which measured slower than the analytic path (docs/speed.md).


class FocalCalibrationLoss(_FocalBrierBase):
    """Focal calibration loss without a gate, ``fcl-ungated`` (Liang et al., arXiv 2410.18321; SA-FCL code).

    ``loss = FL_gf + lambda * B`` with FL_gf = -(1 - p_y)^gf logp_y and B = sum_k (p_k - e_k)^2. lambda = 0 is
    FL_gf, gf = lambda = 0 is cross-entropy.

    Args:
        gamma: Focal exponent gf >= 0 (factory ``fcl_gamma``), default 2.
        lam: Brier weight lambda >= 0 (factory ``fcl_lambda``), default 1.
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'fcl-ungated'
    factory_keywords = {'fcl_gamma': 'gamma', 'fcl_lambda': 'lam'}

    def __init__(self, gamma: float = 2.0, lam: float = 1.0, reduction: str = 'mean') -> None:
        super().__init__(gamma, lam, 0.0, reduction)


class SAFCLoss(_FocalBrierBase):
    """Self-adaptive focal calibration loss, ``safcl`` (SA-FCL code ``src/losses/safcl.py``).

    ``loss = FL_gf + lambda * sg[(1 - p_y)^gc] * B``: the gate is detached (a constant weight). lambda = 0 is
    FL_gf; gc = 0 is ``fcl-ungated``.

    Args:
        gamma: Focal exponent gf >= 0 (factory ``fcl_gamma``), default 2.
        lam: Brier weight lambda >= 0 (factory ``fcl_lambda``), default 1.
        gamma_cal: Gate exponent gc >= 0 (factory ``safcl_gamma_cal``), default 2.
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'safcl'
    factory_keywords = {'fcl_gamma': 'gamma', 'fcl_lambda': 'lam', 'safcl_gamma_cal': 'gamma_cal'}
    gated = True
    detach_gate = True

    def __init__(self, gamma: float = 2.0, lam: float = 1.0, gamma_cal: float = 2.0, reduction: str = 'mean') -> None:
        super().__init__(gamma, lam, gamma_cal, reduction)


class SAFCLNoDetachLoss(SAFCLoss):
    """SA-FCL with the gate differentiated, ``safcl-nodetach``: ``loss = FL_gf + lambda * (1 - p_y)^gc * B``.

    Same value as ``safcl``; the gradient gains lambda * B * d (1 - p_y)^gc / dz.

    Args:
        gamma: Focal exponent gf >= 0 (factory ``fcl_gamma``), default 2.
        lam: Brier weight lambda >= 0 (factory ``fcl_lambda``), default 1.
        gamma_cal: Gate exponent gc >= 0 (factory ``safcl_gamma_cal``), default 2.
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'safcl-nodetach'
    detach_gate = False


# ---------------------------------------------------------------------------------------------------------------
# MMCE
# ---------------------------------------------------------------------------------------------------------------

class _MMCEBase(_CalibrationLoss):
    """Mean CE plus lambda x an MMCE penalty of (r, c) over the batch; rows are CE_i + lambda * penalty."""

    batch_statistic = True

    def __init__(self, weight: float, reduction: str) -> None:
        super().__init__(reduction)
        self.weight = check_number(self.name, 'mmce_weight', weight)

    def _penalty(self, r: torch.Tensor, correct: torch.Tensor, need_grad: bool):
        """(penalty (scalar tensor), d penalty / d r (N,) or None), in r's dtype."""
        raise NotImplementedError

    def _rows_and_coef(self, ce, r, predicted, index, scale, need_grad):
        """(rows, coef_r or None): scale * sum(rows) = scale * (sum CE + N lambda penalty), and coef_r the row
        coefficient of d r_i / d z_i = r_i (e_argmax - p_i) in its gradient."""
        penalty, d_penalty = self._penalty(r, predicted == index, need_grad)
        rows = ce.add_(penalty.to(ce.dtype) * self.weight)
        if not need_grad:
            return rows, None
        return rows, d_penalty.to(r.dtype).mul_(r).mul_(r.shape[0] * self.weight * scale)

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        logp = log_softmax(logits)
        ce = logp.gather(1, index.unsqueeze(1)).squeeze(1).neg_()
        p = logp.exp_()
        r, predicted = p.max(1)
        rows, coef_r = self._rows_and_coef(ce, r, predicted, index, scale, need_grad)
        if not need_grad:
            return rows, None
        grad = p.mul_((scale - coef_r).unsqueeze(1))
        grad.scatter_add_(1, index.unsqueeze(1), torch.full_like(r, -scale).unsqueeze(1))
        return rows, grad.scatter_add_(1, predicted.unsqueeze(1), coef_r.unsqueeze(1))

    def _row_form(self, logits, index, scale):
        top, predicted = logits.max(1)
        total = torch.exp(logits - top.unsqueeze(1)).sum(1)
        lse = total.log() + top
        ce = lse - logits.gather(1, index.unsqueeze(1)).squeeze(1)
        rows, coef_r = self._rows_and_coef(ce, total.reciprocal(), predicted, index, scale, True)  # r = 1 / total
        return rows, _RowGradient(lse=lse, linear=scale - coef_r, target=torch.full_like(lse, -scale),
                                  other_index=predicted, other=coef_r)


class MMCEMLoss(_MMCEBase):
    """MMCE (unweighted) plus cross-entropy, ``mmce-m`` (Kumar et al., ICML 2018; focal-calibration ``MMCE``).

    With the Laplacian kernel k(a, b) = exp(-|a - b| / 0.4) over the batch::

        loss = mean_i CE_i + lambda * (1 / N^2) sum_{i,j} (c_i - r_i)(c_j - r_j) k(r_i, r_j)

    (MMCE_m squared, no square root). c is a constant; r flows through the residual and the kernel. The kernel
    sums are computed in O(N log N) (sorted prefix sums), not with the (N, N) matrix. Under DDP the penalty is
    per rank, on the local batch (the focal-calibration code used DataParallel, i.e. the whole batch).
    ``'sum'`` = N x the mean form (the code's N (mean CE + lambda MMCE)); ``'none'`` is not defined.

    Args:
        weight: lambda >= 0 (factory ``mmce_weight``), default 1.
        reduction: 'mean' or 'sum'.
    """

    name = 'mmce-m'
    factory_keywords = {'mmce_weight': 'weight'}

    def __init__(self, weight: float = 1.0, reduction: str = 'mean') -> None:
        super().__init__(weight, reduction)

    def _penalty(self, r, correct, need_grad):
        num_rows = r.shape[0]
        residual = correct.to(r.dtype) - r
        kernel_sum, sign_sum = _laplacian_kernel_sums(r, residual.unsqueeze(1), MMCE_KERNEL_WIDTH)
        kernel_sum, sign_sum = kernel_sum.squeeze(1), sign_sum.squeeze(1)
        penalty = torch.dot(residual, kernel_sum) / num_rows**2
        if not need_grad:
            return penalty, None
        # d/dr_i sum_ab d_a d_b K_ab = -2 (K d)_i - (2 / w) d_i (S d)_i, with d = c - r.
        d_penalty = torch.addcmul(kernel_sum, residual, sign_sum, value=1.0 / MMCE_KERNEL_WIDTH)
        return penalty, d_penalty.mul_(-2.0 / num_rows**2)


class MMCEWLoss(_MMCEBase):
    """Weighted MMCE plus cross-entropy, ``mmce-w`` (Kumar et al., ICML 2018; Kumar's and the focal-calibration
    ``MMCE_weighted`` code).

    m, n count the correct and incorrect samples, k(a, b) = exp(-|a - b| / 0.4)::

        S_cc = sum_{i,j correct} (1 - r_i)(1 - r_j) k(r_i, r_j)
        S_ii = sum_{i,j incorrect} r_i r_j k(r_i, r_j)
        S_ci = sum_{i correct, j incorrect} (1 - r_i) r_j k(r_i, r_j)
        'code':  D = S_cc / (m^2 (m^2 + 1e-5)) + S_ii / (n^2 (n^2 + 1e-5)) - 2 S_ci / (mn (mn + 1e-5))
        'paper': D = S_cc / m^2 + S_ii / n^2 - 2 S_ci / (mn)
        loss = mean_i CE_i + lambda * sg[m > 0 and n > 0] * sqrt(D + 1e-10)

    'code' (default) normalises every term twice, as Kumar's code (copied by the focal-calibration and MbLS code);
    'paper' once (netcal's ``MMCEPenalty``). c and the indicator are constants, r flows through the weights and
    the kernel. D >= 0 mathematically (the kernel is positive definite); it is clamped at 0 against rounding.
    The penalty is per rank under DDP; ``'none'`` is not defined.

    Args:
        weight: lambda >= 0 (factory ``mmce_weight``), default 2 (the focal-calibration training scripts).
        norm: 'code' or 'paper' (factory ``mmce_norm``).
        reduction: 'mean' or 'sum'.
    """

    name = 'mmce-w'
    factory_keywords = {'mmce_weight': 'weight', 'mmce_norm': 'norm'}
    NORMS = ('code', 'paper')

    def __init__(self, weight: float = 2.0, norm: str = 'code', reduction: str = 'mean') -> None:
        super().__init__(weight, reduction)
        self.norm = check_choice(self.name, 'mmce_norm', norm, self.NORMS)

    def _normalisers(self, m, n) -> tuple:
        """(f_cc, f_ii, f_ci) for the counts m, n (floats, or tensors on the compiled path)."""
        if self.norm == 'code':
            return 1 / (m * m * (m * m + 1e-5)), 1 / (n * n * (n * n + 1e-5)), 1 / (m * n * (m * n + 1e-5))
        return 1 / (m * m), 1 / (n * n), 1 / (m * n)

    @staticmethod
    def _quadratic_form(r, cc, form):
        """(W, K W F, S W F, D) for F = ``form``, the 2 x 2 matrix [[f_cc, -f_ci], [-f_ci, f_ii]].

        W = [a, b] with a_i = (1 - r_i) c_i, b_i = r_i (1 - c_i); the kernel being symmetric,
        D = sum_i W_i . (K W F)_i, and dD/dr_i = 2 W'_i . (K W F)_i - (2 / w) W_i . (S W F)_i with
        W' = dW/dr = [-c, 1 - c]: a few (N, 2) operations instead of one line per term (at small N the number of
        operator calls is the cost).
        """
        rc = r * cc
        weights = torch.stack([cc - rc, r - rc], dim=1)
        kernel_sum, sign_sum = _laplacian_kernel_sums(r, weights, MMCE_KERNEL_WIDTH)
        kernel_form = kernel_sum @ form
        return weights, kernel_form, sign_sum @ form, torch.linalg.vecdot(weights.flatten(), kernel_form.flatten())

    def _tensor_penalty(self, r, cc, need_grad):
        """``_penalty`` without a host read (compiled): the indicator sg[m > 0 and n > 0] and the sign of D as
        tensors. Counts clamped at 1 keep every term finite when one is 0 (the weights of the empty group are then
        all 0), and torch.where selects the penalty (its gradient) or 0."""
        m = cc.sum()
        n = r.shape[0] - m
        valid = (m > 0) & (n > 0)
        f_cc, f_ii, f_ci = self._normalisers(m.clamp_min(1), n.clamp_min(1))
        form = torch.stack([f_cc, -f_ci, -f_ci, f_ii]).view(2, 2)
        weights, kernel_form, sign_form, d = self._quadratic_form(r, cc, form)
        penalty = torch.where(valid, torch.sqrt(d.clamp_min(0) + 1e-10), 0.0)
        if not need_grad:
            return penalty, None
        d_penalty = self._d_penalty(cc, weights, kernel_form, sign_form, penalty)
        return penalty, torch.where(valid & (d >= 0), d_penalty, 0.0)

    @staticmethod
    def _d_penalty(cc, weights, kernel_form, sign_form, penalty):
        """d penalty / d r = (dD/dr) / (2 sqrt(D + 1e-10)) (see ``_quadratic_form``)."""
        slopes = torch.stack([cc.neg(), 1 - cc], dim=1)
        d_d = torch.linalg.vecdot(slopes, kernel_form).sub_(
            torch.linalg.vecdot(weights, sign_form), alpha=1 / MMCE_KERNEL_WIDTH)
        return d_d.div_(penalty)

    def _penalty(self, r, correct, need_grad):
        cc = correct.to(r.dtype)
        if torch.compiler.is_compiling():
            return self._tensor_penalty(r, cc, need_grad)
        m = float(cc.sum())
        n = r.shape[0] - m
        if m == 0 or n == 0:
            return r.new_zeros(()), (r.new_zeros(r.shape) if need_grad else None)
        f_cc, f_ii, f_ci = self._normalisers(m, n)
        form = r.new_tensor([[f_cc, -f_ci], [-f_ci, f_ii]])
        weights, kernel_form, sign_form, d = self._quadratic_form(r, cc, form)
        penalty = torch.sqrt(d.clamp_min(0) + 1e-10)
        if not need_grad:
            return penalty, None
        if float(d) < 0:
            return penalty, torch.zeros_like(r)
        return penalty, self._d_penalty(cc, weights, kernel_form, sign_form, penalty)


# ---------------------------------------------------------------------------------------------------------------
# Focal variants
# ---------------------------------------------------------------------------------------------------------------

class FLSDLoss(_CalibrationLoss):
    """Sample-dependent focal loss FLSD-53, ``flsd`` (Mukhoti et al., NeurIPS 2020; ``focal_loss_adaptive_gamma``).

    ``loss = -(1 - p_y)^g(p_y) logp_y`` with g(p) = 5 if p < 0.2, 3 if 0.2 <= p < 0.5, ``gamma`` if p >= 0.5.
    g is chosen from sg[p_y] (a constant per sample); only the focal weight is differentiated.

    Args:
        gamma: Exponent for p_y >= 0.5 (factory ``flsd_gamma``), default 3 (FLSD-53; 2 gives FLSD-532).
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'flsd'
    factory_keywords = {'flsd_gamma': 'gamma'}

    def __init__(self, gamma: float = 3.0, reduction: str = 'mean') -> None:
        super().__init__(reduction)
        self.gamma = check_number(self.name, 'flsd_gamma', gamma)

    def sample_gamma(self, p_t: torch.Tensor) -> torch.Tensor:
        """g(p) per sample: 5 below 0.2, 3 in [0.2, 0.5), ``gamma`` from 0.5."""
        return torch.where(p_t < 0.2, 5.0, torch.where(p_t < 0.5, 3.0, self.gamma)).to(p_t.dtype)

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        logp = log_softmax(logits)
        logp_t = logp.gather(1, index.unsqueeze(1)).squeeze(1)
        gamma = self.sample_gamma(logp_t.exp())
        weight, coef = _focal_terms(logp_t, gamma)
        rows = weight.mul_(logp_t).neg_()
        if not need_grad:
            return rows, None
        return rows, _target_grad(logp.exp_(), index, coef.mul_(scale))


class DualFocalLoss(_CalibrationLoss):
    """Dual focal loss, ``dual-focal`` (Tao, Dong & Xu, ICML 2023; official ``DualFocalLoss``).

    ``loss = -(1 - p_y + p_j)^gamma logp_y`` with p_j = max{p_k : p_k < p_y} (strict; 0 if none): the largest
    probability below the target's, not necessarily the top non-target class. The mask is a constant but p_j is
    not detached: with b = 1 - p_y + p_j, w = b^gamma, u = gamma b^(gamma - 1) logp_y,
    d loss / d z = (w - u p_y)(p - e_y) + u p_j (p - e_j). gamma = 0 is cross-entropy.

    Args:
        gamma: gamma >= 0 (factory ``dual_gamma``), default 5 (the official README's CIFAR-10 ResNet-50 value; the
            class default 0 is plain CE).
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'dual-focal'
    factory_keywords = {'dual_gamma': 'gamma'}

    def __init__(self, gamma: float = 5.0, reduction: str = 'mean') -> None:
        super().__init__(reduction)
        self.gamma = check_number(self.name, 'dual_gamma', gamma)

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        logp = log_softmax(logits)
        column = index.unsqueeze(1)
        logp_t = logp.gather(1, column).squeeze(1)
        p = logp.exp_()
        p_t = p.gather(1, column)
        # j = argmax{p_k : p_k < p_y} = argmin_k 1 / (p_k - p_y): the candidates are the negative differences and
        # the reciprocal is decreasing there, while p_k >= p_y (the target itself included: +0 -> +inf) maps to
        # >= 0. Three fast passes instead of a (slow on CPU) masked fill; p_j is read back from p at j.
        smallest, j = torch.sub(p, p_t).reciprocal_().min(1)
        p_j = p.gather(1, j.unsqueeze(1)).squeeze(1).masked_fill_(smallest >= 0, 0.0)
        rows, coef_t, coef_j = self._rows_and_coefs(logp_t, p_t.squeeze(1), p_j, scale, need_grad)
        if not need_grad:
            return rows, None
        grad = p.mul_((coef_t + coef_j).unsqueeze(1))
        grad.scatter_add_(1, column, coef_t.neg_().unsqueeze(1))
        return rows, grad.scatter_add_(1, j.unsqueeze(1), coef_j.neg_().unsqueeze(1))

    def _rows_and_coefs(self, logp_t, p_t, p_j, scale, need_grad):
        """(rows, coef_t, coef_j): the gradient is coef_t (p - e_y) + coef_j (p - e_j)."""
        gamma = self.gamma
        base = _one_minus_exp(logp_t).add_(p_j)
        weight = base.pow(gamma)
        rows = torch.mul(weight, logp_t).neg_()
        if not need_grad:
            return rows, None, None
        u = _safe_div(weight * logp_t, base).mul_(gamma * scale)  # gamma b^(gamma-1) logp_y, scaled
        coef_t = torch.addcmul(weight.mul_(scale), u, p_t, value=-1.0)
        return rows, coef_t, u.mul_(p_j)

    def _row_form(self, logits, index, scale):
        lse, logp_t, _ = _target_row_stats(logits, index)
        p = torch.exp(logits - lse.unsqueeze(1))
        p_t = logp_t.exp()
        below, j = torch.where(p < p_t.unsqueeze(1), p, -1.0).max(1)  # p_j = max{p_k : p_k < p_y}, -1 if none
        rows, coef_t, coef_j = self._rows_and_coefs(logp_t, p_t, below.clamp_min(0.0), scale, True)
        return rows, _RowGradient(lse=lse, linear=coef_t + coef_j, target=-coef_t, other_index=j, other=-coef_j)


class AdaFocalLoss(_CalibrationLoss):
    """AdaFocal, ``adafocal`` (Ghosh, Schaaf & Gormley, NeurIPS 2022; official ``AdaFocal``).

    The confidence range is cut into M bins with per-bin gamma_b (constants). With b the bin holding p_y (bin 0 if
    p_y < edges[1], bin M - 1 if p_y >= edges[M - 1], else edges[b] <= p_y < edges[b + 1])::

        gamma_b >= 0:  loss = -(1 - p_y + 1e-20)^gamma_b logp_y          (focal)
        gamma_b <  0:  loss = -(1 + p_y + 1e-20)^|gamma_b| logp_y        (inverse focal)

    After each epoch (``update_every`` = -1) or every k batches, :meth:`update_from_validation` moves the edges and
    gammas from the top-label confidences r and correctness c of a held-out, unaugmented split (never the test
    set): equal-mass edges, per-bin gap E_b = mean r - mean c, gamma_b <- gamma_b exp(+-lambda E_b), a switch to
    the other branch when |gamma_b| < S, then a clip to [gamma_min, gamma_max].

    The state (``gammas`` (M,), ``edges`` (M + 1,), ``num_updates``) is held in buffers, so it is part of
    ``state_dict()``, moves with ``.to()`` and resumes exactly. Under DDP the *caller* must all-gather r and c over
    the ranks before :meth:`update_from_validation` (this module does no communication), so that every rank holds
    identical gammas.

    Args:
        num_bins: M >= 1 (factory ``adafocal_bins``), default 15.
        lam: Update rate lambda >= 0 (factory ``adafocal_lambda``), default 1.
        gamma_init: Initial gamma_0 in [gamma_min, gamma_max] (factory ``adafocal_gamma_init``), default 1.
        gamma_max: Upper clip (factory ``adafocal_gamma_max``), default 20.
        gamma_min: Lower clip (factory ``adafocal_gamma_min``), default -2.
        switch: S >= 0, the |gamma| below which the branch switches (factory ``adafocal_switch``), default 0.2.
        update_every: -1 to update after every epoch, k >= 1 to re-validate every k batches (factory
            ``adafocal_update_every``); read by the training loop, not by the loss.
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'adafocal'
    factory_keywords = {
        'adafocal_bins': 'num_bins', 'adafocal_lambda': 'lam', 'adafocal_gamma_init': 'gamma_init',
        'adafocal_gamma_max': 'gamma_max', 'adafocal_gamma_min': 'gamma_min', 'adafocal_switch': 'switch',
        'adafocal_update_every': 'update_every',
    }
    EPS = 1e-20

    def __init__(
            self,
            num_bins: int = 15,
            lam: float = 1.0,
            gamma_init: float = 1.0,
            gamma_max: float = 20.0,
            gamma_min: float = -2.0,
            switch: float = 0.2,
            update_every: int = -1,
            reduction: str = 'mean',
    ) -> None:
        super().__init__(reduction)
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f'{self.name}: adafocal_bins must be an integer >= 1, got {num_bins!r}.')
        if isinstance(update_every, bool) or not isinstance(update_every, int) or not (
                update_every == -1 or update_every >= 1):
            raise ValueError(f'{self.name}: adafocal_update_every must be -1 (every epoch) or an integer >= 1 '
                             f'(every k batches), got {update_every!r}.')
        self.num_bins = num_bins
        self.lam = check_number(self.name, 'adafocal_lambda', lam)
        self.gamma_max = check_number(self.name, 'adafocal_gamma_max', gamma_max, low=-math.inf)
        self.gamma_min = check_number(self.name, 'adafocal_gamma_min', gamma_min, low=-math.inf)
        if self.gamma_min > self.gamma_max:
            raise ValueError(f'{self.name}: adafocal_gamma_min ({gamma_min!r}) must be <= adafocal_gamma_max '
                             f'({gamma_max!r}).')
        self.gamma_init = check_number(self.name, 'adafocal_gamma_init', gamma_init, low=-math.inf)
        if not self.gamma_min <= self.gamma_init <= self.gamma_max:
            raise ValueError(f'{self.name}: adafocal_gamma_init must lie in [adafocal_gamma_min, adafocal_gamma_max]'
                             f' = [{self.gamma_min:g}, {self.gamma_max:g}], got {gamma_init!r}.')
        self.switch = check_number(self.name, 'adafocal_switch', switch)
        self.update_every = update_every
        self.register_buffer('gammas', torch.full((num_bins,), self.gamma_init, dtype=torch.float64))
        self.register_buffer('edges', torch.linspace(0, 1, num_bins + 1, dtype=torch.float64))
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.int64))

    def sample_gamma(self, p_t: torch.Tensor) -> torch.Tensor:
        """gamma of the bin holding each p_y (first and last bins open-ended), in p_t's dtype."""
        inner = self.edges[1:-1].to(device=p_t.device, dtype=p_t.dtype)
        bins = torch.searchsorted(inner, p_t.contiguous(), right=True)
        return self.gammas.to(device=p_t.device, dtype=p_t.dtype)[bins]

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        logp = log_softmax(logits)
        logp_t = logp.gather(1, index.unsqueeze(1)).squeeze(1)
        p_t = logp_t.exp()
        gamma = self.sample_gamma(p_t)
        focal = gamma >= 0
        # base = 1 - p + 1e-20 (focal) or 1 + p + 1e-20 (inverse); w = base^|gamma|;
        # s = -p dL/dp = w + sigma |gamma| w p logp / base with sigma = -1 (focal) or +1 (inverse).
        base = torch.where(focal, _one_minus_exp(logp_t), p_t + 1.0).add_(self.EPS)
        exponent = gamma.abs()
        weight = base.pow(exponent)
        rows = torch.mul(weight, logp_t).neg_()
        if not need_grad:
            return rows, None
        signed = torch.where(focal, exponent.neg(), exponent)
        coef = p_t.mul_(logp_t).div_(base).mul_(weight).mul_(signed).add_(weight).mul_(scale)
        return rows, _target_grad(logp.exp_(), index, coef)

    @torch.no_grad()
    def update_from_validation(self, confidences: torch.Tensor, correct: torch.Tensor) -> dict:
        """Update the bin edges and gammas from held-out predictions (all ranks' predictions, gathered by the caller).

        1. Equal-mass edges: interp(linspace(0, V, M + 1), arange(V), sort(r)) (so edges[0] = min r, edges[M] =
           max r); bins are (lo, hi], so the minimum-confidence sample falls in no bin (as the official code).
        2. E_b = mean r - mean c over bin b (0 for an empty bin).
        3. gamma_b <- gamma_b exp(lambda E_b) if gamma_b > 0, else gamma_b exp(-lambda E_b).
        4. If |gamma_b| < S: gamma_b <- -S if gamma_b > 0, else +S.
        5. gamma_b clipped to [gamma_min, gamma_max]; the new edges become the training edges.

        Args:
            confidences: Top-label confidences r (V,), V >= 1, values in [0, 1].
            correct: Correctness c (V,): bool, or numbers equal to 0 or 1.

        Returns:
            The statistics of this update, JSON-able: ``{'update': index (1-based), 'bins': [{'lo', 'hi', 'count',
            'conf', 'acc', 'gap', 'gamma'} per bin]}`` ('gamma' after the update; conf/acc/gap 0 for empty bins).
        """
        r, c = self._check_validation(confidences, correct)
        num_bins = self.num_bins
        sorted_r = torch.sort(r).values
        positions = torch.linspace(0, r.numel(), num_bins + 1, dtype=torch.float64)
        edges = _interp(positions, sorted_r)
        lower, upper = edges[:-1].unsqueeze(1), edges[1:].unsqueeze(1)
        member = (r.unsqueeze(0) > lower) & (r.unsqueeze(0) <= upper)  # (M, V)
        counts = member.sum(1)
        denom = counts.clamp_min(1).double()
        conf = (member * r).sum(1) / denom
        acc = (member * c).sum(1) / denom
        gap = torch.where(counts > 0, conf - acc, 0.0)
        gammas = self.gammas.detach().to('cpu', torch.float64)
        gammas = torch.where(gammas > 0, gammas * torch.exp(self.lam * gap), gammas * torch.exp(-self.lam * gap))
        switched = torch.full_like(gammas, self.switch).masked_fill_(gammas > 0, -self.switch)
        gammas = torch.where(gammas.abs() < self.switch, switched, gammas)
        gammas = gammas.clamp(self.gamma_min, self.gamma_max)
        self.gammas.copy_(gammas)
        self.edges.copy_(edges)
        self.num_updates.add_(1)
        bins = [
            dict(lo=float(edges[b]), hi=float(edges[b + 1]), count=int(counts[b]), conf=float(conf[b]),
                 acc=float(acc[b]), gap=float(gap[b]), gamma=float(gammas[b]))
            for b in range(num_bins)
        ]
        return {'update': int(self.num_updates), 'bins': bins}

    def _check_validation(self, confidences, correct):
        name = f'{self.name}.update_from_validation'
        if not isinstance(confidences, torch.Tensor) or not confidences.is_floating_point() \
                or confidences.dim() != 1 or confidences.numel() < 1:
            raise ValueError(f'{name}: confidences must be a non-empty 1-D floating-point tensor, got '
                             f'{getattr(confidences, "shape", type(confidences).__name__)}.')
        if not isinstance(correct, torch.Tensor) or correct.shape != confidences.shape:
            raise ValueError(f'{name}: correct must be a tensor of shape {tuple(confidences.shape)}, got '
                             f'{getattr(correct, "shape", type(correct).__name__)}.')
        r = confidences.detach().to('cpu', torch.float64)
        if correct.is_complex():
            raise ValueError(f'{name}: correct must hold only 0/1 (or bool) values, got {correct.dtype}.')
        c = correct.detach().to('cpu', torch.float64)
        if not bool(torch.isfinite(r).all()) or float(r.amin()) < 0 or float(r.amax()) > 1:
            raise ValueError(f'{name}: confidences must lie in [0, 1].')
        if not bool(((c == 0) | (c == 1)).all()):
            raise ValueError(f'{name}: correct must hold only 0/1 (or bool) values.')
        return r, c


def _interp(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """numpy.interp(x, arange(V), values) for x >= 0: linear between neighbours, values[-1] beyond V - 1."""
    last = values.numel() - 1
    low = x.floor().clamp(max=max(last - 1, 0)).long()
    high = (low + 1).clamp(max=last)
    frac = (x - low.double()).clamp(max=1.0)
    result = values[low] + frac * (values[high] - values[low])
    return torch.where(x >= last, values[last], result)


# ---------------------------------------------------------------------------------------------------------------
# Margin and entropy penalties
# ---------------------------------------------------------------------------------------------------------------

class MbLSLoss(_CalibrationLoss):
    """Margin-based label smoothing, ``mbls`` (Liu et al., CVPR 2022; official ``LogitMarginL1``).

    ``loss = CE + alpha * (1 / K) sum_k max(0, max_j z_j - z_k - m)`` (``norm='mean'``, the code: a mean over
    N x K) or without the 1 / K (``norm='sum'``, the paper). The max logit is not detached: the arg-max logit
    receives +alpha x (number of active hinges) (/ K). Soft targets replace CE by -sum_k q_k logp_k.

    Args:
        margin: m >= 0 (factory ``mbls_margin``), default 10.
        alpha: alpha >= 0 (factory ``mbls_alpha``), default 0.1.
        norm: 'mean' or 'sum' (factory ``mbls_norm``).
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'mbls'
    factory_keywords = {'mbls_margin': 'margin', 'mbls_alpha': 'alpha', 'mbls_norm': 'norm'}
    soft_targets = True
    NORMS = ('mean', 'sum')

    def __init__(self, margin: float = 10.0, alpha: float = 0.1, norm: str = 'mean', reduction: str = 'mean') -> None:
        super().__init__(reduction)
        self.margin = check_number(self.name, 'mbls_margin', margin)
        self.alpha = check_number(self.name, 'mbls_alpha', alpha)
        self.norm = check_choice(self.name, 'mbls_norm', norm, self.NORMS)

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        weight = self.alpha / logits.shape[1] if self.norm == 'mean' else self.alpha
        logp = log_softmax(logits)
        if dist is None:
            ce = logp.gather(1, index.unsqueeze(1)).squeeze(1).neg_()
        else:
            ce = torch.linalg.vecdot(dist, logp).neg_()
        top, argmax = logits.detach().max(1)
        hinge = torch.sub((top - self.margin).unsqueeze(1), logits.detach()).clamp_min_(0)
        rows = ce.add_(hinge.sum(1), alpha=weight)
        if not need_grad:
            return rows, None
        active = hinge.gt_(0)  # 1.0 where the hinge is active
        count = active.sum(1)
        # grad = scale (p - q) - w scale A + w scale |A| e_argmax, A the active-hinge indicator.
        grad = logp.exp_()
        if scale != 1.0:
            grad.mul_(scale)
        grad.add_(active, alpha=-weight * scale)
        if dist is None:
            grad.scatter_add_(1, index.unsqueeze(1), torch.full_like(count, -scale).unsqueeze(1))
        else:
            grad.sub_(dist, alpha=scale)
        return rows, grad.scatter_add_(1, argmax.unsqueeze(1), count.mul_(weight * scale).unsqueeze(1))

    def _formula_rows(self, logits, index, dist):
        weight = self.alpha / logits.shape[1] if self.norm == 'mean' else self.alpha
        # The max logit is not detached; at an exact tie of the top logits amax splits its gradient among them (a
        # subgradient; the eager path gives it to the first).
        hinge = F.relu((logits.amax(1, keepdim=True) - self.margin) - logits)
        return _formula_ce(log_softmax(logits), index, dist) + weight * hinge.sum(1)


class ConfidencePenaltyLoss(_CalibrationLoss):
    """Entropy confidence penalty, ``confidence-penalty`` (Pereyra et al. 2017; MbLS ``penalty_ent``).

    ``loss = CE - alpha * H~`` with, for ``norm='classes'`` (MbLS code, default),
    H~ = (1 / K) sum_k -p^_k log p^_k, p^ = clamp(p, 1e-10, 1 - 1e-10) (no gradient where clamped), and for
    ``norm='sample'`` (Pereyra) H~ = sum_k -p_k logp_k. Soft targets replace CE by -sum_k q_k logp_k.

    Args:
        alpha: alpha >= 0 (factory ``cp_alpha``), default 0.1.
        norm: 'classes' or 'sample' (factory ``cp_norm``).
        reduction: 'none', 'mean' or 'sum'.
    """

    name = 'confidence-penalty'
    factory_keywords = {'cp_alpha': 'alpha', 'cp_norm': 'norm'}
    soft_targets = True
    NORMS = ('classes', 'sample')
    CLAMP = 1e-10

    def __init__(self, alpha: float = 0.1, norm: str = 'classes', reduction: str = 'mean') -> None:
        super().__init__(reduction)
        self.alpha = check_number(self.name, 'cp_alpha', alpha)
        self.norm = check_choice(self.name, 'cp_norm', norm, self.NORMS)
        for dtype in (torch.float32, torch.float64):  # fill the cache here: computing it would break a compiled graph
            _clamp_bounds(self.CLAMP, dtype)

    def _rows_and_grad(self, logits, index, dist, scale, need_grad):
        alpha = self.alpha
        logp = log_softmax(logits)
        if dist is None:
            ce = logp.gather(1, index.unsqueeze(1)).squeeze(1).neg_()
        else:
            ce = torch.linalg.vecdot(dist, logp).neg_()
        if self.norm == 'sample':
            p = logp.exp()
            entropy = torch.linalg.vecdot(p, logp).neg_()
            rows = ce.add_(entropy, alpha=-alpha)
            if not need_grad:
                return rows, None
            # d(-alpha H)/dz = alpha p (logp + H); with CE: grad = p (1 + alpha (logp + H)) - q.
            grad = logp.add_(entropy.unsqueeze(1)).mul_(alpha * scale).add_(scale).mul_(p)
        else:
            weight = alpha / logits.shape[1]
            p = logp.exp()
            low, high, below_low = _clamp_bounds(self.CLAMP, p.dtype)
            if not logp.is_cuda and not torch.compiler.is_compiling() and _within(logp, math.log(low), math.log(high)):
                # Nothing is clamped (one read pass and a host read to know: eager CPU only, where passes over (N, K)
                # dominate; compiled, the threshold branch traces without a graph break):
                # c = p (logp + 1) and sum p logp = sum c - sum p.
                c = torch.addcmul(p, p, logp, out=logp)
                c_sum = c.sum(1)
                plogp_sum = c_sum - p.sum(1)
            else:
                # c_k = p_k (logp_k + 1) where p is not clamped, else 0 (no gradient through a clamped p), built over
                # logp from the kept p (the others zeroed in one threshold pass: bool masks are slow on the CPU);
                # sum_k p^_k log p^_k = sum_k (c_k - kept_k) + (number clamped low) lo log lo (+ hi log hi).
                kept = F.threshold(p, below_low, 0.0)
                over = None
                if high < 1:  # float64: a p within 1e-10 of 1 is clamped too (in float32 1 - 1e-10 is 1)
                    top, top_index = kept.max(1)
                    over = (top > high).to(p.dtype)
                    kept.scatter_(1, top_index.unsqueeze(1), top.mul(1 - over).unsqueeze(1))
                c = torch.addcmul(kept, kept, logp, out=logp)
                c_sum = c.sum(1)
                plogp_sum = c_sum - kept.sum(1)
                # sign(kept) is 1 where kept (p >= lo > 0) and 0 where zeroed, here the high-clamped entry too.
                num_low = torch.sign(kept, out=kept).sum(1).sub_(logits.shape[1]).neg_()
                if over is not None:
                    num_low.sub_(over)
                    plogp_sum.add_(over, alpha=high * math.log(high))
                plogp_sum.add_(num_low, alpha=low * math.log(low))
            rows = ce.add_(plogp_sum, alpha=weight)  # CE - (alpha / K) H~
            if not need_grad:
                return rows, None
            # d(-alpha H~)/dz = (alpha / K)(c - p sum_k c_k); with CE: p (1 - (alpha / K) sum c) + (alpha / K) c - q.
            column = (1 - weight * c_sum).mul_(scale).unsqueeze(1)
            grad = p.mul_(column).add_(c, alpha=weight * scale)
        if dist is None:
            return rows, grad.scatter_add_(1, index.unsqueeze(1), torch.full_like(ce, -scale).unsqueeze(1))
        return rows, grad.sub_(dist, alpha=scale)

    def _formula_rows(self, logits, index, dist):
        logp = log_softmax(logits)
        ce = _formula_ce(logp, index, dist)
        p = logp.exp()
        if self.norm == 'sample':
            return ce + self.alpha * (p * logp).sum(1)
        # p^ log p^ = p logp where lo <= p <= hi, else the constant lo log lo (hi log hi): no gradient where clamped.
        low, high, _ = _clamp_bounds(self.CLAMP, p.dtype)
        plogp = torch.where(p < low, low * math.log(low), torch.where(p > high, high * math.log(high), p * logp))
        return ce + (self.alpha / logits.shape[1]) * plogp.sum(1)


def _within(values: torch.Tensor, low: float, high: float) -> bool:
    smallest, largest = torch.aminmax(values)
    return low <= float(smallest) and float(largest) <= high


# ---------------------------------------------------------------------------------------------------------------
# Registry and factory
# ---------------------------------------------------------------------------------------------------------------

_LOSS_CLASSES = {
    cls.name: cls for cls in (
        BrierLoss, CEBrierLoss, MMCEMLoss, MMCEWLoss, FLSDLoss, DualFocalLoss, AdaFocalLoss, MbLSLoss,
        ConfidencePenaltyLoss, FocalCalibrationLoss, SAFCLoss, SAFCLNoDetachLoss)
}

CALIBRATION_LOSS_TYPES = tuple(_LOSS_CLASSES)
"""The factory names of the calibration losses."""

CALIBRATION_LOSS_DEFAULTS = {
    name: {keyword: inspect.signature(cls).parameters[arg].default for keyword, arg in cls.factory_keywords.items()}
    for name, cls in _LOSS_CLASSES.items()
}
"""name -> {factory keyword: official default} (``smoothing`` and ``reduction`` excluded)."""

SOFT_TARGET_LOSSES = tuple(name for name, cls in _LOSS_CLASSES.items() if cls.soft_targets)
"""The losses accepting soft (Mixup / CutMix) targets (N, K)."""


def create_calibration_loss(name: str, *, reduction: str = 'mean', smoothing: float = 0.0, **kwargs) -> nn.Module:
    """Create a calibration loss by its factory name with the spec's keyword names.

    Args:
        name: One of :data:`CALIBRATION_LOSS_TYPES`.
        reduction: 'mean', 'sum' (N x the mean form) or 'none' (not for 'mmce-m' / 'mmce-w').
        smoothing: Label smoothing; only 'ce-brier' accepts a non-zero value (on its CE term).
        **kwargs: The keywords of :data:`CALIBRATION_LOSS_DEFAULTS` [name]; any other keyword is an error.

    Returns:
        The loss module.
    """
    if not isinstance(name, str) or name not in _LOSS_CLASSES:
        raise ValueError(f'Unknown calibration loss {name!r}, expected one of {CALIBRATION_LOSS_TYPES}.')
    cls = _LOSS_CLASSES[name]
    unknown = sorted(set(kwargs) - set(cls.factory_keywords))
    if unknown:
        valid = tuple(cls.factory_keywords) or '(none)'
        raise ValueError(f'{name}: keyword argument(s) {unknown} do not apply to this loss; valid keywords: {valid}.')
    constructor = {cls.factory_keywords[keyword]: value for keyword, value in kwargs.items()}
    if 'smoothing' in inspect.signature(cls).parameters:
        constructor['smoothing'] = smoothing
    elif smoothing != 0:
        raise ValueError(f'{name}: label smoothing must be 0 for this loss (got {smoothing!r}); only ce-brier '
                         f'smooths (its CE term).')
    return cls(**constructor, reduction=reduction)
