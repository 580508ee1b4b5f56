"""Cyclical weight decay as a timm scheduler on the optimizer's ``weight_decay`` field.

Paper: L. N. Smith, "General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835
"""
from typing import Union

import torch
from timm.scheduler.scheduler import Scheduler

from .cyclical_value import check_cyclical_range, check_timing, cyclical_value

__all__ = ['CyclicalWeightDecayScheduler']


class CyclicalWeightDecayScheduler(Scheduler):
    """Cyclical weight decay: wd(e) = (1 - eta(e)) * wd_max + eta(e) * wd_min on the decayed groups only.

    eta is :func:`cfl_timm.cyclical_eta` (e, num_epochs, cyclical_factor), so the weight decay is wd_min at
    the start and end of training and wd_max at the minimum of eta. The decayed parameter groups are the
    ones configured with a weight decay > 0 (``initial_weight_decay``, recorded when the scheduler is built),
    never selected by index; no-decay groups (biases, norms) stay at 0 whatever their number or order, and the
    value is not multiplied by a layer-decay ``lr_scale`` (timm's base class would do that for any field).
    The value is a pure function of the epoch / update count, so ``step(start_epoch)`` on resume restores it.

    Args:
        optimizer: The optimizer whose decayed groups are scheduled.
        wd_min: Weight decay at the start and end of training, >= 0.
        wd_max: Weight decay at the minimum of eta, >= wd_min.
        num_epochs: Number of scheduled epochs (cooldown included), >= 1.
        cyclical_factor: Cyclical factor f >= 1.
        t_in_epochs: Step once per epoch (True, as published) or once per optimizer update (False).
        updates_per_epoch: Optimizer updates per epoch (per-update stepping only).
    """

    def __init__(
            self,
            optimizer: torch.optim.Optimizer,
            *,
            wd_min: float,
            wd_max: float,
            num_epochs: int,
            cyclical_factor: float,
            t_in_epochs: bool = True,
            updates_per_epoch: int = 1,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f'CyclicalWeightDecayScheduler: optimizer must be a torch.optim.Optimizer, got '
                             f'{type(optimizer).__name__}.')
        check_cyclical_range('weight decay', wd_min, wd_max)
        check_timing(num_epochs, cyclical_factor, updates_per_epoch)
        for index, group in enumerate(optimizer.param_groups):
            if 'weight_decay' not in group:
                raise KeyError(f'weight_decay missing from param_groups[{index}]')
        self.wd_min = float(wd_min)
        self.wd_max = float(wd_max)
        self.num_epochs = int(num_epochs)
        self.cyclical_factor = float(cyclical_factor)
        self.updates_per_epoch = int(updates_per_epoch)
        super().__init__(optimizer, param_group_field='weight_decay', t_in_epochs=t_in_epochs)
        if not self.decayed_groups():
            raise ValueError(
                'Cyclical weight decay needs at least one parameter group configured with weight decay > 0 '
                '(e.g. --weight-decay > 0); every group has weight decay 0.')
        self.update_groups(self._get_lr(0))

    def decayed_groups(self) -> list[dict]:
        """The parameter groups configured with weight decay > 0."""
        return [group for group in self.optimizer.param_groups if group[self._initial_param_group_field] > 0]

    def value_at(self, epoch: float) -> float:
        """The weight decay of the decayed groups at a (fractional) 0-based epoch."""
        return cyclical_value(
            epoch, min_value=self.wd_min, max_value=self.wd_max, num_epochs=self.num_epochs,
            cyclical_factor=self.cyclical_factor)

    def set_epoch(self, epoch: float) -> None:
        """Set the decayed groups to the value at ``epoch``, whatever the stepping mode (used on resume)."""
        self.update_groups(self.value_at(epoch))

    def _get_lr(self, t: int) -> list[float]:
        epoch = t if self.t_in_epochs else t / self.updates_per_epoch
        return [self.value_at(epoch)] * len(self.optimizer.param_groups)

    def update_groups(self, values: Union[float, list[float]]) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * len(self.optimizer.param_groups)
        for group, value in zip(self.optimizer.param_groups, values):
            if group[self._initial_param_group_field] > 0:
                group[self.param_group_field] = value

    @property
    def value(self) -> float:
        """The weight decay currently set on the decayed groups."""
        return self.decayed_groups()[0][self.param_group_field]
