"""The cyclical value shared by weight decay, softmax temperature and gradient-clip threshold, and its checks.

Paper: L. N. Smith, "General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835

This module and its siblings in ``cfl_timm/scheduler/`` are copied verbatim into a timm checkout by
``patches/apply.py`` (as ``timm/scheduler/...``); they import torch, timm, the standard library and the cyclical
focal loss module only.
"""
# eta's one definition, beside the loss that follows it, and the loss modules' number checks; the same relative
# paths in cfl_timm (cfl_timm/loss/) and in a checkout patched by patches/apply.py (timm/loss/).
from ..loss._base import is_integer, is_real
from ..loss.cyclical_focal_loss import cyclical_eta

__all__ = ['cyclical_eta', 'cyclical_value', 'check_cyclical_range', 'check_timing']


def cyclical_value(
        epoch: float, *, min_value: float, max_value: float, num_epochs: int, cyclical_factor: float,
) -> float:
    """``(1 - eta) * max_value + eta * min_value`` with eta = cyclical_eta(epoch, num_epochs, cyclical_factor).

    The value is ``min_value`` at the start and the end of training and ``max_value`` at the minimum of eta.

    Args:
        epoch: 0-based epoch, fractional values allowed (``num_updates / updates_per_epoch`` per update).
        min_value: Value where eta = 1.
        max_value: Value where eta = 0.
        num_epochs: Number of epochs the schedule spans (cooldown included), >= 1.
        cyclical_factor: Cyclical factor f >= 1.
    """
    for name, value in (('min_value', min_value), ('max_value', max_value)):
        if not is_real(value):
            raise ValueError(f'cyclical_value: {name} must be a finite number, got {value!r}.')
    eta = cyclical_eta(epoch, num_epochs, cyclical_factor)
    return (1.0 - eta) * max_value + eta * min_value


def check_cyclical_range(name: str, min_value: float, max_value: float) -> None:
    """Raise a clear ValueError unless 0 <= min_value <= max_value, both finite."""
    if not (is_real(min_value) and is_real(max_value)) or min_value < 0 or max_value < 0:
        raise ValueError(f'{name}: min and max must be finite and >= 0, got min={min_value}, max={max_value}.')
    if min_value > max_value:
        raise ValueError(f'{name}: min must not exceed max, got min={min_value} > max={max_value}.')


def check_timing(num_epochs: int, cyclical_factor: float, updates_per_epoch: int) -> None:
    """Raise a clear ValueError for a schedule length, factor or update count that is out of range."""
    cyclical_eta(0, num_epochs, cyclical_factor)
    if not is_integer(updates_per_epoch) or updates_per_epoch < 1:
        raise ValueError(f'updates_per_epoch must be an integer >= 1, got {updates_per_epoch!r}.')
