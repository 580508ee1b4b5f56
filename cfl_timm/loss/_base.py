"""What every cfl-timm loss module shares: the reductions, the checks of constructor arguments and of targets, with
one message form (``<loss>: <argument> must be ...`` / ``<loss>: unknown <argument> ..., expected one of ...``).

torch and the standard library only, so ``patches/apply.py`` can copy it into ``timm/loss/`` with the loss modules
that import it (relative imports among the copied files work in both layouts).
"""
import math
import numbers
from typing import Any

import torch

__all__ = ['REDUCTIONS', 'SOFT_TARGET_ATOL', 'check_choice', 'check_flag', 'check_number', 'check_reduction',
           'check_soft_targets', 'check_target_indices', 'check_target_kind', 'is_integer', 'is_real', 'log_softmax']

# Soft targets (Mixup / CutMix) must sum to 1 over classes within this tolerance.
SOFT_TARGET_ATOL = 1e-3

# How a loss reduces its per-sample values over the batch.
REDUCTIONS = ('none', 'mean', 'sum')


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite real number (Python or numpy; not a bool, not a tensor)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a whole number: an int, or a finite float such as 4.0 (not a bool)."""
    return is_real(value) and int(value) == value


def check_flag(owner: str, name: str, value: Any) -> bool:
    """``value``, or a ValueError unless it is a bool (a string such as 'no' would count as True)."""
    if not isinstance(value, bool):
        raise ValueError(f'{owner}: {name} must be True or False, got {value!r}.')
    return value


def check_number(owner: str, name: str, value: Any, low: float = 0.0) -> float:
    """``value`` as a float, or a ValueError unless it is a real number (not a bool), finite and >= ``low``.

    Args:
        owner: Who takes the argument (a loss type or class name), the start of the message.
        name: The argument's name as the caller spells it.
        value: The given value.
        low: The smallest valid value (``-math.inf`` for any finite number).
    """
    if not is_real(value) or value < low:
        raise ValueError(f'{owner}: {name} must be a finite number >= {low:g}, got {value!r}.')
    return float(value)


def check_choice(owner: str, name: str, value: Any, choices: tuple) -> Any:
    """``value``, or a ValueError naming the valid ``choices`` unless it is one of them."""
    if value not in choices:
        raise ValueError(f'{owner}: unknown {name} {value!r}, expected one of {choices}.')
    return value


def check_reduction(owner: str, reduction: Any) -> str:
    """``reduction``, or a ValueError unless it is one of :data:`REDUCTIONS`."""
    return check_choice(owner, 'reduction', reduction, REDUCTIONS)


def check_target_kind(owner: str, target: torch.Tensor) -> None:
    """Hard targets are integer class indices: a bool or complex tensor is refused (it would pass as 0 / 1), and so
    is anything that is not a tensor."""
    if not isinstance(target, torch.Tensor):
        raise ValueError(f'{owner}: target must be a torch.Tensor of class indices or soft targets, got '
                         f'{type(target).__name__}.')
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f'{owner}: target must hold integer class indices (e.g. torch.int64) or float soft '
                         f'targets, got {target.dtype}.')


def check_target_indices(owner: str, index: torch.Tensor, num_classes: int) -> None:
    """Class indices in [0, K): a ValueError on the CPU, an asynchronous assert on the GPU and when compiling (no
    host read: none on the GPU, no graph break compiled)."""
    message = f'{owner}: target class indices must lie in [0, {num_classes})'
    if index.numel() == 0:
        return
    if index.is_cuda or torch.compiler.is_compiling():
        torch._assert_async(((index >= 0) & (index < num_classes)).all(), message)
        return
    low, high = (int(v) for v in torch.aminmax(index))
    if low < 0 or high >= num_classes:
        raise ValueError(f'{message}, got values in [{low}, {high}].')


def check_soft_targets(owner: str, dist: torch.Tensor) -> None:
    """Soft targets (N, K) are finite, non-negative and sum to 1 over classes (within :data:`SOFT_TARGET_ATOL`);
    a ValueError on the CPU, an asynchronous assert on the GPU and when compiling. NaN fails both tests."""
    message = (f'{owner}: soft targets must be non-negative and sum to 1 over classes '
               f'(tolerance {SOFT_TARGET_ATOL:g})')
    if dist.numel() == 0:
        return
    ok = (dist.amin() >= 0) & ((dist.sum(1) - 1).abs().amax() <= SOFT_TARGET_ATOL)
    if dist.is_cuda or torch.compiler.is_compiling():
        torch._assert_async(ok, message)
    elif not bool(ok):
        raise ValueError(f'{message}; got minimum {float(dist.amin()):g} and row sums in '
                         f'[{float(dist.sum(1).amin()):g}, {float(dist.sum(1).amax()):g}].')


# Rows shorter than this many classes take ATen's slow CPU log-softmax path (see log_softmax).
_SHORT_ROW_CLASSES = 16
_SHORT_ROW_MIN_ROWS = 32


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits, dim=1)`` of (N, K) logits, the same values.

    On the CPU a row shorter than one vector register (K < 16, e.g. CIFAR-10) makes ATen's row kernel compute
    exp and log one element at a time: 33 us at 256 x 10 on one thread, where the kernel over dim 0 of the
    transpose, vectorised across rows, takes 5 us (and 0.52 ms against 0.06 ms at 4096 x 10). Such logits go
    that way; the result is then a class-major view (strides (1, N)), which elementwise ops and the row
    reductions take as it is. Compiled code and other devices use the plain kernel.
    """
    num_rows, num_classes = logits.shape[0], logits.shape[1]
    if (logits.dim() == 2 and num_classes < _SHORT_ROW_CLASSES and num_rows >= _SHORT_ROW_MIN_ROWS
            and logits.device.type == 'cpu' and not torch.compiler.is_compiling()):
        return torch.log_softmax(logits.t(), 0).t()
    return torch.log_softmax(logits, 1)
