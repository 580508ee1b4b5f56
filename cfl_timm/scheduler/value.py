"""Cyclical value schedule for quantities outside the optimizer: softmax temperature and gradient-clip threshold.

Paper: L. N. Smith, "General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835
"""
import math
from typing import Optional

from ..cyclical_focal_loss import cyclical_eta

__all__ = ['cyclical_value', 'CyclicalValueScheduler']


def cyclical_value(
        epoch: float, *, min_value: float, max_value: float, num_epochs: int, cyclical_factor: float,
) -> float:
    """``(1 - eta) * max_value + eta * min_value`` with eta = cyclical_eta(epoch, num_epochs, cyclical_factor).

    The value is ``min_value`` at the start and the end of training and ``max_value`` at the minimum of eta.
    """
    eta = cyclical_eta(epoch, num_epochs, cyclical_factor)
    return (1.0 - eta) * max_value + eta * min_value


def check_cyclical_range(name: str, min_value: float, max_value: float) -> None:
    """Raise a clear ValueError unless 0 <= min_value <= max_value, both finite."""
    if not (math.isfinite(min_value) and math.isfinite(max_value)) or min_value < 0 or max_value < 0:
        raise ValueError(f'{name}: min and max must be finite and >= 0, got min={min_value}, max={max_value}.')
    if min_value > max_value:
        raise ValueError(f'{name}: min must not exceed max, got min={min_value} > max={max_value}.')


def check_timing(num_epochs: int, cyclical_factor: float, updates_per_epoch: int) -> None:
    """Raise a clear ValueError for a schedule length, factor or update count that is out of range."""
    cyclical_eta(0, num_epochs, cyclical_factor)
    if isinstance(updates_per_epoch, bool) or int(updates_per_epoch) != updates_per_epoch or updates_per_epoch < 1:
        raise ValueError(f'updates_per_epoch must be an integer >= 1, got {updates_per_epoch!r}.')


class CyclicalValueScheduler:
    """A cyclical schedule of one scalar, with timm's scheduler interface (``step`` / ``step_update``).

    value(e) = (1 - eta(e)) * max_value + eta(e) * min_value, eta = :func:`cyclical_eta` (e, num_epochs,
    cyclical_factor). With ``t_in_epochs=True`` :meth:`step` (epoch) sets the value for that 0-based epoch
    (timm calls ``step(epoch + 1)`` after each epoch and ``step(start_epoch)`` on resume); with
    ``t_in_epochs=False`` :meth:`step_update` (num_updates) sets it for the fractional epoch
    ``num_updates / updates_per_epoch``. The value is a pure function of that position, so resuming restores
    it exactly.

    Args:
        min_value: Value at the start and end of training (eta = 1).
        max_value: Value at the minimum of eta.
        num_epochs: Number of scheduled epochs (cooldown included), >= 1.
        cyclical_factor: Cyclical factor f >= 1.
        t_in_epochs: Step once per epoch (True, as published) or once per optimizer update (False).
        updates_per_epoch: Optimizer updates per epoch (per-update stepping only).
        name: What is scheduled, for error messages.
    """

    def __init__(
            self,
            min_value: float,
            max_value: float,
            *,
            num_epochs: int,
            cyclical_factor: float,
            t_in_epochs: bool = True,
            updates_per_epoch: int = 1,
            name: str = 'cyclical value',
    ) -> None:
        check_cyclical_range(name, min_value, max_value)
        check_timing(num_epochs, cyclical_factor, updates_per_epoch)
        self.min_value = float(min_value)
        self.max_value = float(max_value)
        self.num_epochs = int(num_epochs)
        self.cyclical_factor = float(cyclical_factor)
        self.t_in_epochs = t_in_epochs
        self.updates_per_epoch = int(updates_per_epoch)
        self.value = self.value_at(0.0)

    def value_at(self, epoch: float) -> float:
        """The scheduled value at a (fractional) 0-based epoch."""
        return cyclical_value(
            epoch, min_value=self.min_value, max_value=self.max_value, num_epochs=self.num_epochs,
            cyclical_factor=self.cyclical_factor)

    def step(self, epoch: int, metric: Optional[float] = None) -> None:
        """Set the value for 0-based epoch ``epoch`` (per-epoch stepping only)."""
        if self.t_in_epochs:
            self.value = self.value_at(epoch)

    def step_update(self, num_updates: int, metric: Optional[float] = None) -> None:
        """Set the value after ``num_updates`` optimizer updates (per-update stepping only)."""
        if not self.t_in_epochs:
            self.value = self.value_at(num_updates / self.updates_per_epoch)
