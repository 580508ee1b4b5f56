"""Cyclical focal loss, asymmetric single-label focal loss and symmetric focal loss.

Paper: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978
Focal loss: T.-Y. Lin et al., "Focal Loss for Dense Object Detection", https://arxiv.org/abs/1708.02002

This module imports torch and its sibling ``_base`` (reductions and argument checks) only, so the two can be
copied into ``timm/loss/`` of an existing timm checkout and work there unchanged.

Notation: z logits (N, K), logp = log_softmax(z), p = exp(logp), t the target class, eps the label
smoothing, eta in [0, 1] the cyclical schedule (see :func:`cyclical_eta`). Per sample::

    w_t = (1 - eta) * (1 - p_t)^gamma_pos + eta * (1 + p_t)^gamma_hc     target class
    w_j = (1 - eta) * p_j^gamma_neg       + eta                           every other class j
    y_j = (1 - eps) * [j == t] + eps / K
    loss = - sum_j y_j * w_j * logp_j

Gradients flow through the weights (nothing is detached). The gradient is derived analytically and
computed in the same pass as the loss: with c_j = y_j * (w_j + p_j * logp_j * dw_j/dp_j),
d loss / d z_k = p_k * sum_j c_j - c_k. It is exact (checked with ``torch.autograd.gradcheck``) and
finite for any finite logits, including p_t -> 0 and p_t -> 1. The losses are once differentiable: a second
derivative (``create_graph=True`` then differentiating again, ``gradgradcheck``) raises a clear RuntimeError
instead of being silently zero. ``torch.func.grad`` / ``vmap`` work (``vmap`` with ``check_finite=False``: the
check reads a value).

``FOCAL_LOSS_CLASSES`` maps each loss type name to its class; the name checks and defaults live in the one
factory, ``cfl_timm.create_loss`` (``cfl_timm/loss/cfl_loss_factory.py``).
"""
import inspect
import math
from typing import Optional

import torch
import torch.nn as nn

from ._base import (
    check_choice,
    check_flag,
    check_number,
    check_reduction,
    check_soft_targets,
    check_target_indices,
    check_target_kind,
    is_integer,
    is_real,
    log_softmax,
)

__all__ = [
    'FOCAL_LOSS_TYPES', 'SOFT_TARGET_MODES', 'cyclical_eta',
    'FocalLoss', 'AsymmetricFocalLoss', 'CyclicalFocalLoss', 'FOCAL_LOSS_CLASSES',
]

FOCAL_LOSS_TYPES = ('sym', 'asym', 'asym-cyclical')
SOFT_TARGET_MODES = ('distribution', 'argmax')
SECOND_DERIVATIVE_ERROR = ('The focal losses are once differentiable (their gradient is analytic): a second derivative '
                           '(create_graph=True then differentiating again, gradgradcheck, hessian) is not supported.')


def cyclical_eta(epoch: float, epochs: int, factor: float) -> float:
    """The cyclical schedule eta shared by the loss and the cyclical weight decay / temperature / clipping.

    Paper form with n = epochs - 1, the index of the last epoch::

        eta(e) = 1 - f * e / n               if f * e <= n
               = (f * e / n - 1) / (f - 1)   otherwise

    clamped to [0, 1]. eta is 1 at the start ("easy"), 0 at e = n / f ("hard") and back to 1 at e = n.
    f = 1 falls linearly from 1 to 0 over the run and stays at 0. With a single scheduled epoch
    (epochs = 1) eta stays 1. At integer epochs with ``epochs = --epochs + --cooldown-epochs`` and one
    cooldown epoch this equals the published code's values exactly.

    Args:
        epoch: 0-based epoch, fractional values allowed (epoch + i / updates_per_epoch per update).
        epochs: Number of epochs the schedule spans (timm's num_epochs, cooldown included), >= 1.
        factor: Cyclical factor f >= 1: where the minimum lies (at a fraction 1 / f of the run).

    Returns:
        eta in [0, 1].
    """
    if not is_integer(epochs) or epochs < 1:
        raise ValueError(f'epochs must be an integer >= 1, got {epochs!r}.')
    if not is_real(factor) or factor < 1:
        raise ValueError(f'cyclical factor must be a finite number >= 1, got {factor!r}.')
    if not is_real(epoch) or epoch < 0:
        raise ValueError(f'epoch must be a finite number >= 0, got {epoch!r}.')
    last = epochs - 1
    if last == 0:
        return 1.0
    progress = factor * epoch / last
    if progress <= 1:
        eta = 1.0 - progress
    elif factor > 1:
        eta = (progress - 1.0) / (factor - 1.0)
    else:
        eta = 0.0
    return min(1.0, max(0.0, eta))


def _check_eps(eps: float) -> float:
    if not is_real(eps) or not 0 <= eps < 1:
        raise ValueError(f'eps (label smoothing) must lie in [0, 1), got {eps!r}.')
    return float(eps)


def _is_zero(value) -> bool:
    """Whether ``value`` is known to be 0: a float equal to 0; never a tensor (the compiled path's eta), whose terms
    are then computed (they vanish at 0)."""
    return not isinstance(value, torch.Tensor) and value == 0


def _add_scaled_(x: torch.Tensor, y: torch.Tensor, a) -> torch.Tensor:
    """x += a * y in place, a a float (one fused pass) or a 0-dim tensor."""
    return x.add_(y * a) if isinstance(a, torch.Tensor) else x.add_(y, alpha=a)


def _addcmul_(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, a) -> torch.Tensor:
    """x += a * y * z in place, a a float (one fused pass) or a 0-dim tensor."""
    return x.add_(y * z * a) if isinstance(a, torch.Tensor) else x.addcmul_(y, z, value=a)


def _power(p: torch.Tensor, logp: torch.Tensor, gamma: float) -> torch.Tensor:
    """A new tensor p ** gamma for p = exp(logp): in-place multiplications for integer gamma (the common 1 to 4,
    several times faster than pow or exp on CPU), exp(gamma * logp) otherwise."""
    if gamma == int(gamma) and 1 <= gamma <= 16:
        exponent, base, result = int(gamma), p, None
        while exponent:
            if exponent & 1:
                if result is None:
                    result = base.clone() if base is p else base  # never alias the caller's p
                else:
                    result.mul_(base)
            exponent >>= 1
            if exponent:
                base = base * base
        return result
    return torch.mul(logp, gamma).exp_()


def _probabilities(logits: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """softmax(logits) as a new tensor, exp(logp): one elementwise pass, where the softmax kernel makes three (max,
    exp and sum, scale); on one CPU thread at 128 x 21843 it is 0.9 ms against 2.3 ms (bench/loss_speed.py)."""
    return logp.exp()


def _negative_terms(logp: torch.Tensor, eta: float, gamma_neg: float):
    """Per-class loss term A = w_neg * logp and gradient term B = w_neg + p * logp * dw_neg/dp (negatives)."""
    if gamma_neg == 0:
        return logp, torch.ones_like(logp)  # w = 1, dw/dp = 0
    p_pow = _power(logp.exp(), logp, gamma_neg)
    weight = p_pow.mul(1 - eta).add_(eta)
    loss_term = weight * logp
    grad_term = p_pow.mul_((1 - eta) * gamma_neg).mul_(logp).add_(weight)
    return loss_term, grad_term


def _positive_terms(logp: torch.Tensor, eta: float, gamma_pos: float, gamma_hc: float):
    """Per-class loss term A = w_pos * logp and gradient term B = w_pos + p * logp * dw_pos/dp (targets).

    With the focal part F = (1 - p)^gamma_pos and the high-confidence part H = (1 + p)^gamma_hc,
    w_pos = lerp(F, H, eta) and B = lerp(F - gamma_pos F p logp / (1 - p), H + gamma_hc H p logp / (1 + p), eta).
    Written with few fused kernels and no tensor-times-Python-float product (on a float32 tensor each such
    product first copies the float into a float32 tensor): on the (M,) target column the cost is the number
    of launches.
    """
    p = logp.exp()
    one_minus_p = torch.expm1(logp).neg_()  # accurate as p -> 1
    p_logp = p * logp
    focal = one_minus_p.pow(gamma_pos)
    if gamma_pos != 0:
        # (1 - p)^(gamma_pos - 1) * p * logp = (1 - p)^gamma_pos * p * logp / (1 - p); at p = 1 the focal factor
        # is 0 and the clamped ratio finite, giving the limit 0.
        ratio = p_logp.div(one_minus_p.clamp_min_(torch.finfo(logp.dtype).tiny))
        focal_grad = torch.addcmul(focal, focal, ratio, value=-gamma_pos)
    else:
        focal_grad = focal
    if _is_zero(eta):
        return focal.mul(logp), focal_grad
    if isinstance(eta, torch.Tensor):  # the compiled path's 0-dim eta: lerp takes a weight of the inputs' dtype
        eta = eta.to(logp.dtype)
    one_plus_p = p.add_(1.0)
    hard = one_plus_p.pow(gamma_hc)
    hard_grad = torch.addcmul(hard, hard, p_logp.div_(one_plus_p), value=gamma_hc) if gamma_hc != 0 else hard
    return torch.lerp(focal, hard, eta).mul_(logp), torch.lerp(focal_grad, hard_grad, eta)


def _hard_target_loss(logits, logp, target_index, eta, gamma_hc, gamma_pos, gamma_neg, eps, scale, need_grad):
    """Loss rows and (scaled) gradient for class-index targets.

    The target column takes the positive weight and the smoothing mass eps / K of the other classes the
    negative weight. Sums over classes come from row reductions (sum logp, sum p^g, sum p^g * logp), and the
    gradient is built in place, so the whole loss costs about as many passes over (M, K) as cross-entropy.
    """
    num_classes = logp.shape[1]
    smooth = eps / num_classes
    target_mass = 1 - eps + smooth
    index = target_index.unsqueeze(1)
    logp_t = logp.gather(1, index).squeeze(1)
    pos_loss, pos_grad = _positive_terms(logp_t, eta, gamma_pos, gamma_hc)
    if eps == 0:
        if not need_grad:
            return pos_loss, None
        row_sum = pos_grad.mul_(scale)
        grad = _probabilities(logits, logp).mul_(row_sum.unsqueeze(1))
        return pos_loss, grad.scatter_add_(1, index, row_sum.neg_().unsqueeze(1))

    # Negative weight w_j = (1 - eta) * p_j^g + eta summed against logp_j over every class, then the target's
    # own negative term taken out (it carries the positive weight instead). The target column's terms are added
    # as products with the row vectors (alpha / value arguments), never as tensor-times-float products, which on
    # a float32 tensor first copy the float into a tensor.
    p = _probabilities(logits, logp) if need_grad or gamma_neg != 0 else None
    sum_logp = logp.sum(1)
    if gamma_neg == 0:
        p_pow = None
        loss = torch.mul(sum_logp, smooth)
        loss.add_(logp_t, alpha=-smooth)
    else:
        p_pow = _power(p, logp, gamma_neg)
        p_pow_t = p_pow.gather(1, index).squeeze(1)
        sum_pow = p_pow.sum(1)
        if need_grad:
            # Gradient term p^g + g * p^g * logp in place; its row sum sum_b also yields sum p^g * logp =
            # (sum_b - sum p^g) / g, so no (M, K) temporary is allocated (on CPU each new large tensor costs page
            # faults).
            grad_pow = p_pow.addcmul_(p_pow, logp, value=gamma_neg)
            sum_b = grad_pow.sum(1)
            loss = torch.sub(sum_b, sum_pow).mul_(smooth * (1 - eta) / gamma_neg)
        else:
            loss = torch.linalg.vecdot(p_pow, logp).mul_(smooth * (1 - eta))
        _add_scaled_(loss, sum_logp, smooth * eta)
        _addcmul_(loss, p_pow_t, logp_t, -smooth * (1 - eta))
        _add_scaled_(loss, logp_t, -smooth * eta)
    loss.add_(pos_loss, alpha=target_mass)
    if not need_grad:
        return loss, None

    # c_j = smooth * B_j with B_j = w_j + p_j * logp_j * dw_j/dp_j = (1 - eta) * (p_j^g + g * p_j^g * logp_j) + eta
    # for j != t, c_t = target_mass * B_pos; grad = p * sum_j c_j - c (all scaled by the reduction).
    p_t = p.gather(1, index).squeeze(1)
    if p_pow is None:
        row_sum = torch.full_like(logp_t, scale * smooth * (num_classes - 1))
    else:
        row_sum = sum_b.mul_(scale * smooth * (1 - eta)).add_(scale * smooth * (num_classes - 1) * eta)
        _add_scaled_(row_sum, p_pow_t, -scale * smooth * (1 - eta))
        _addcmul_(row_sum, p_pow_t, logp_t, -scale * smooth * (1 - eta) * gamma_neg)
    row_sum.add_(pos_grad, alpha=scale * target_mass)
    target_grad = torch.mul(p_t, row_sum).add_(pos_grad, alpha=-scale * target_mass)
    shift = smooth * scale if p_pow is None else smooth * scale * eta
    if _is_zero(shift):
        grad = p.mul_(row_sum.unsqueeze(1))
    else:  # p * row_sum - shift in one pass (a 0-dim input broadcasts), written over p
        shift = shift.to(p.dtype) if isinstance(shift, torch.Tensor) else p.new_full((), shift)
        grad = torch.addcmul(shift.neg(), p, row_sum.unsqueeze(1), out=p)
    if p_pow is not None:
        _add_scaled_(grad, grad_pow, -smooth * scale * (1 - eta))
    return loss, grad.scatter_(1, index, target_grad.unsqueeze(1))


def _general_loss(logp, target_dist, eta, gamma_hc, gamma_pos, gamma_neg, eps, symmetric, scale, need_grad):
    """Loss rows and (scaled) gradient for soft targets, or for the symmetric loss with smoothing.

    Each class j is weighted by its target mass q_j: w_j = q_j * w_pos(p_j) + (1 - q_j) * w_neg(p_j)
    (w_pos for every class in the symmetric loss), y_j = (1 - eps) * q_j + eps / K.
    """
    y = target_dist * (1 - eps) + eps / logp.shape[1]
    pos_loss, pos_grad = _positive_terms(logp, eta, gamma_pos, gamma_hc)
    if symmetric:
        mixed_loss, mixed_grad = pos_loss, pos_grad
    else:
        neg_loss, neg_grad = _negative_terms(logp, eta, gamma_neg)
        mixed_loss = torch.lerp(neg_loss, pos_loss, target_dist)
        mixed_grad = torch.lerp(neg_grad, pos_grad, target_dist)
    loss = torch.linalg.vecdot(y, mixed_loss)
    if not need_grad:
        return loss, None
    c = y.mul_(mixed_grad).mul_(scale)
    return loss, logp.exp_().mul_(c.sum(1, keepdim=True)).sub_(c)


class _FocalLossFunction(torch.autograd.Function):
    """Focal-family loss of (M, K) float logits with its analytic gradient, computed in the forward pass.

    ``forward`` returns the per-row losses (scale None) or scale * their sum (scale 1 for 'sum', 1 / M for
    'mean'), and the gradient pre-scaled so that the usual ``loss.backward()`` costs no extra pass. The loss is
    once differentiable: differentiating its gradient again raises ``SECOND_DERIVATIVE_ERROR`` instead of
    returning a silently wrong second derivative.
    ``setup_context`` is separate from ``forward`` and the vmap rule is generated, so ``torch.func.grad`` /
    ``vmap`` / ``jacrev`` work.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*inputs):
        # One variadic parameter: with a separate setup_context, torch binds the arguments to forward's signature
        # on every call, and inspecting eleven named parameters cost about 35 us a call (a third of the loss at
        # 256 x 10).
        (logits, target_index, target_dist, eta, gamma_hc, gamma_pos, gamma_neg, symmetric, eps, scale,
         need_grad) = inputs
        logp = log_softmax(logits)
        row_scale = 1.0 if scale is None else scale
        if target_dist is None and (eps == 0 or not symmetric):
            loss, grad = _hard_target_loss(
                logits, logp, target_index, eta, gamma_hc, gamma_pos, gamma_neg, eps, row_scale, need_grad)
        else:
            if target_dist is None:
                target_dist = torch.zeros_like(logp).scatter_(1, target_index.unsqueeze(1), 1.0)
            loss, grad = _general_loss(
                logp, target_dist, eta, gamma_hc, gamma_pos, gamma_neg, eps, symmetric, row_scale, need_grad)
        if grad is None:
            grad = logits.new_zeros(())  # placeholder output: no gradient was asked for
        return (-loss if scale is None else -scale * loss.sum()), grad

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, grad = output
        ctx.save_for_backward(grad)
        ctx.per_row = inputs[9] is None
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_output, grad_of_grad):
        # The gradient output is differentiable only so that differentiating it (a second derivative) reaches
        # this node and fails clearly instead of being silently zero.
        if grad_of_grad is not None:
            raise RuntimeError(SECOND_DERIVATIVE_ERROR)
        if grad_output is None:
            return (None,) * 11
        (grad,) = ctx.saved_tensors
        if ctx.per_row:
            grad = grad * grad_output.unsqueeze(1)
        elif torch.is_grad_enabled() or grad_output.is_cuda or not _is_one(grad_output):
            grad = grad * grad_output  # the common loss.backward() on CPU skips this pass (the gradient is ready)
        return grad, None, None, None, None, None, None, None, None, None, None


# With a separate setup_context, torch binds apply()'s arguments to forward's signature on every call, reading it
# with inspect.signature, which returns a precomputed __signature__ as it is: 10 to 20 us less per call at 256 x 10.
_FocalLossFunction.forward.__signature__ = inspect.signature(_FocalLossFunction.forward)


def _is_one(value: torch.Tensor) -> bool:
    """Whether a scalar tensor is exactly 1 (False when its value cannot be read, e.g. under ``vmap``)."""
    try:
        return float(value) == 1.0
    except RuntimeError:
        return False


class _FocalLossBase(nn.Module):
    """Shared input handling: shapes, dtypes, targets, validation and reduction."""

    def __init__(self, eps: float, reduction: str, soft_target_mode: str, check_finite: bool) -> None:
        super().__init__()
        self.eps = _check_eps(eps)
        self.reduction = check_reduction(type(self).__name__, reduction)
        self.soft_target_mode = check_choice(type(self).__name__, 'soft_target_mode', soft_target_mode,
                                             SOFT_TARGET_MODES)
        self.check_finite = check_flag(type(self).__name__, 'check_finite', check_finite)

    def _loss_params(self):
        """(eta, gamma_hc, gamma_pos, gamma_neg, symmetric) for the current state."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: (N, K) or dense (N, K, d1, ...) logits, classes over dim 1. Half precision inputs are
                computed in float32.
            target: Class indices (N,) / (N, d1, ...) in [0, K), or soft targets (Mixup / CutMix) with the
                same shape as ``logits``, non-negative and summing to 1 over dim 1.

        Returns:
            The loss reduced by ``self.reduction`` ('none' keeps shape (N, d1, ...)). A batch without samples
            (N = 0) gives 0 for 'mean' and 'sum'.
        """
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise ValueError(f'{type(self).__name__}: logits must be a floating-point tensor, got '
                             f'{logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__}.')
        if logits.dim() < 2 or logits.shape[1] < 2:
            raise ValueError(f'logits must have shape (N, K) or (N, K, ...) with K >= 2 classes, got '
                             f'{tuple(logits.shape)}.')
        num_classes = logits.shape[1]
        out_shape = logits.shape[:1] + logits.shape[2:]
        if logits.dtype != torch.float64:
            logits = logits.float()
        flat_logits = logits.movedim(1, -1).reshape(-1, num_classes) if logits.dim() > 2 else logits
        target_index, target_dist = None, None
        check_target_kind(type(self).__name__, target)
        if target.shape == logits.shape and target.is_floating_point():
            flat_target = target.movedim(1, -1).reshape(-1, num_classes) if target.dim() > 2 else target
            check_soft_targets(type(self).__name__, flat_target)
            if self.soft_target_mode == 'argmax':
                target_index = flat_target.argmax(1)
            else:
                target_dist = flat_target.to(flat_logits.dtype)
        elif target.shape == out_shape and not target.is_floating_point():
            target_index = target.reshape(-1).long()
        else:
            raise ValueError(
                f'target must hold class indices of shape {tuple(out_shape)} or soft targets of shape '
                f'{tuple(logits.shape)}, got {tuple(target.shape)} ({target.dtype}).')
        if self.check_finite:
            _check_finite(flat_logits)
        scale = {'none': None, 'sum': 1.0, 'mean': 1.0 / max(flat_logits.shape[0], 1)}[self.reduction]
        need_grad = torch.is_grad_enabled() and flat_logits.requires_grad
        inputs = (flat_logits, target_index, target_dist, *self._loss_params(), self.eps, scale, need_grad)
        if torch.compiler.is_compiling():
            # A try block breaks a compiled graph; the clear out-of-range message is an eager-mode nicety.
            loss, _ = _FocalLossFunction.apply(*inputs)
            return loss.reshape(out_shape) if scale is None else loss
        try:
            loss, _ = _FocalLossFunction.apply(*inputs)
        except RuntimeError:
            # On the CPU gather/scatter reject out-of-range indices; turn that into a clear error. (On CUDA an
            # out-of-range index is a device-side assert, as in torch's cross-entropy.)
            if target_index is not None and not target_index.is_cuda:
                check_target_indices(type(self).__name__, target_index, num_classes)
            raise
        return loss.reshape(out_shape) if scale is None else loss


def _check_finite(logits: torch.Tensor) -> None:
    """Raise ValueError when ``logits`` hold NaN or inf: one reduction and one host sync.

    The sum of finite logits is finite (short of |z| ~ 1e38 / K), and any NaN or inf makes it NaN or inf. (A
    -inf logit can leave the loss itself finite, so the input is checked.)
    """
    if not math.isfinite(float(logits.detach().sum())):
        raise ValueError('logits contain NaN or inf values; check the model, learning rate and AMP settings '
                         '(in a training loop under a GradScaler, build the loss with check_finite=False so that '
                         'the scaler skips the step as it does for cross-entropy).')


class FocalLoss(_FocalLossBase):
    """Symmetric (standard softmax) focal loss, ``--focal_loss sym``.

    ``loss = - sum_j y_j * (1 - p_j)^gamma * logp_j`` with ``y_j = (1 - eps) * [j == t] + eps / K``; for
    eps = 0 and hard targets this is the focal loss of Lin et al., ``-(1 - p_t)^gamma * log p_t``, and
    gamma = 0 gives (label-smoothed) cross-entropy.

    Args:
        gamma: Focusing parameter >= 0.
        eps: Label smoothing in [0, 1).
        reduction: 'none', 'mean' (over samples / positions) or 'sum'.
        soft_target_mode: 'distribution' uses soft targets as they are; 'argmax' collapses them to hard labels.
        check_finite: Raise a clear ValueError when the logits hold NaN or inf (one host sync per call). A
            training loop under a GradScaler passes False: non-finite logits then give a non-finite loss and
            gradient, and the scaler skips the step exactly as it does for cross-entropy.
    """

    def __init__(
            self,
            gamma: float = 2.0,
            eps: float = 0.0,
            reduction: str = 'mean',
            soft_target_mode: str = 'distribution',
            check_finite: bool = True,
    ) -> None:
        super().__init__(eps, reduction, soft_target_mode, check_finite)
        self.gamma = check_number(type(self).__name__, 'gamma', gamma)

    def _loss_params(self):
        return 0.0, 0.0, self.gamma, 0.0, True

    def extra_repr(self) -> str:
        return f'gamma={self.gamma}, eps={self.eps}, reduction={self.reduction!r}'


class CyclicalFocalLoss(_FocalLossBase):
    """Cyclical focal loss, ``--focal_loss asym-cyclical`` (Smith, arXiv 2202.08978).

    With eta = :func:`cyclical_eta` (epoch, epochs, cyclical_factor)::

        w_t = (1 - eta) * (1 - p_t)^gamma_pos + eta * (1 + p_t)^gamma_hc     target class
        w_j = (1 - eta) * p_j^gamma_neg       + eta                           other classes
        y_j = (1 - eps) * [j == t] + eps / K
        loss = - sum_j y_j * w_j * logp_j

    eta = 0 is timm's ``AsymmetricLossSingleLabel(gamma_pos, gamma_neg, eps)``; gamma_neg only weights the
    smoothing mass eps / K of the other classes. Soft targets q (Mixup / CutMix) replace the one-hot target:
    y_j = (1 - eps) * q_j + eps / K and each class is weighted by its target mass,
    w_j = q_j * w_pos(p_j) + (1 - q_j) * w_neg(p_j); ``soft_target_mode='argmax'`` instead collapses soft
    targets to hard labels as the published code did.

    The position in training is explicit state: call :meth:`set_epoch` with the (fractional) epoch before
    the forward passes of that epoch / update. The epoch is saved in ``state_dict()`` so resuming restores it.

    Args:
        gamma_hc: Exponent of the high-confidence term (1 + p_t)^gamma_hc, >= 0.
        gamma_pos: Focal exponent of the target class, >= 0.
        gamma_neg: Exponent of the other classes' weight p_j^gamma_neg, >= 0.
        cyclical_factor: Cyclical factor f >= 1 of :func:`cyclical_eta`.
        epochs: Number of epochs the schedule spans (timm's num_epochs, cooldown included), >= 1. Required:
            a default would freeze eta at 1.
        eps: Label smoothing in [0, 1), 0.1 as published.
        reduction: 'none', 'mean' (over samples / positions) or 'sum'.
        soft_target_mode: 'distribution' (default) or 'argmax' (published behaviour).
        check_finite: Raise a clear ValueError when the logits hold NaN or inf (one host sync per call). A
            training loop under a GradScaler passes False: non-finite logits then give a non-finite loss and
            gradient, and the scaler skips the step exactly as it does for cross-entropy.
    """

    def __init__(
            self,
            gamma_hc: float = 0.0,
            gamma_pos: float = 0.0,
            gamma_neg: float = 4.0,
            cyclical_factor: float = 2.0,
            epochs: Optional[int] = None,
            eps: float = 0.1,
            reduction: str = 'mean',
            soft_target_mode: str = 'distribution',
            check_finite: bool = True,
    ) -> None:
        super().__init__(eps, reduction, soft_target_mode, check_finite)
        self.gamma_hc = check_number(type(self).__name__, 'gamma_hc', gamma_hc)
        self.gamma_pos = check_number(type(self).__name__, 'gamma_pos', gamma_pos)
        self.gamma_neg = check_number(type(self).__name__, 'gamma_neg', gamma_neg)
        if epochs is None:
            raise ValueError('CyclicalFocalLoss needs epochs, the number of epochs the cyclical schedule spans '
                             "(timm's num_epochs: --epochs plus --cooldown-epochs); there is no default.")
        cyclical_eta(0, epochs, cyclical_factor)  # validates epochs and factor eagerly
        self.cyclical_factor = float(cyclical_factor)
        self._epochs = int(epochs)
        self.epoch = 0.0
        # eta as a 0-dim tensor for the compiled path: updated in place, so one graph serves every epoch (a Python
        # float would be a constant of the graph and recompile it for each value). Not saved: it follows the epoch.
        self.register_buffer('eta_tensor', torch.tensor(self.eta, dtype=torch.float64), persistent=False)

    @property
    def epochs(self) -> int:
        """Number of epochs the schedule spans (the cyclical scheduler sets it to its own ``num_epochs``)."""
        return self._epochs

    @epochs.setter
    def epochs(self, epochs: int) -> None:
        cyclical_eta(0, epochs, self.cyclical_factor)  # validates epochs
        self._epochs = int(epochs)
        self.set_epoch(self.epoch)

    def set_epoch(self, epoch: float) -> None:
        """Set the 0-based (fractional) training epoch that the following forward passes belong to."""
        cyclical_eta(epoch, self.epochs, self.cyclical_factor)  # validates epoch
        self.epoch = float(epoch)
        if 'eta_tensor' in self._buffers:
            with torch.no_grad():
                self.eta_tensor.fill_(self.eta)

    @property
    def eta(self) -> float:
        """The current value of the cyclical schedule."""
        return cyclical_eta(self.epoch, self.epochs, self.cyclical_factor)

    def get_extra_state(self) -> dict:
        return {'epoch': self.epoch}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or 'epoch' not in state:
            raise ValueError(f'CyclicalFocalLoss: extra state must be a dict with the key "epoch", got {state!r}.')
        self.set_epoch(state['epoch'])

    def _loss_params(self):
        # Eager: the float (fused scalar kernels). Compiled: the tensor, an input of the graph, not a constant.
        eta = self.eta_tensor if torch.compiler.is_compiling() else self.eta
        return eta, self.gamma_hc, self.gamma_pos, self.gamma_neg, False

    def extra_repr(self) -> str:
        return (f'gamma_hc={self.gamma_hc}, gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, '
                f'cyclical_factor={self.cyclical_factor}, epochs={self.epochs}, eps={self.eps}, '
                f'epoch={self.epoch}, reduction={self.reduction!r}')


class AsymmetricFocalLoss(_FocalLossBase):
    """Asymmetric single-label focal loss, ``--focal_loss asym``: the cyclical loss's formula at eta = 0.

    ``loss = - sum_j y_j * w_j * logp_j`` with ``w_t = (1 - p_t)^gamma_pos``, ``w_j = p_j^gamma_neg``,
    ``y_j = (1 - eps) * [j == t] + eps / K``; numerically equal to timm's ``AsymmetricLossSingleLabel``.
    Soft targets as in :class:`CyclicalFocalLoss`.

    Args:
        gamma_pos: Focal exponent of the target class, >= 0.
        gamma_neg: Exponent of the other classes' weight, >= 0.
        eps: Label smoothing in [0, 1), 0.1 as published.
        reduction: 'none', 'mean' (over samples / positions) or 'sum'.
        soft_target_mode: 'distribution' (default) or 'argmax' (published behaviour).
        check_finite: Raise a clear ValueError when the logits hold NaN or inf (one host sync per call). A
            training loop under a GradScaler passes False (see :class:`FocalLoss`).
    """

    def __init__(
            self,
            gamma_pos: float = 0.0,
            gamma_neg: float = 4.0,
            eps: float = 0.1,
            reduction: str = 'mean',
            soft_target_mode: str = 'distribution',
            check_finite: bool = True,
    ) -> None:
        super().__init__(eps, reduction, soft_target_mode, check_finite)
        self.gamma_pos = check_number(type(self).__name__, 'gamma_pos', gamma_pos)
        self.gamma_neg = check_number(type(self).__name__, 'gamma_neg', gamma_neg)

    @property
    def eta(self) -> float:
        """Fixed at 0."""
        return 0.0

    def _loss_params(self):
        return 0.0, 0.0, self.gamma_pos, self.gamma_neg, False

    def extra_repr(self) -> str:
        return f'gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, eps={self.eps}, reduction={self.reduction!r}'


FOCAL_LOSS_CLASSES = {'sym': FocalLoss, 'asym': AsymmetricFocalLoss, 'asym-cyclical': CyclicalFocalLoss}
