"""Factory for the cyclical weight-decay, softmax-temperature and gradient-clipping schedules.

Paper: L. N. Smith, "General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835

All three share one eta (:func:`cfl_timm.cyclical_eta`) and one epoch count, may run together, and are pure
functions of the epoch / update count, so resuming restores them exactly.
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .value import CyclicalValueScheduler, check_timing
from .weight_decay import CyclicalWeightDecayScheduler

__all__ = [
    'CyclicalSchedules', 'CyclicalValueScheduler', 'CyclicalWeightDecayScheduler',
    'create_cyclical_schedules', 'cyclical_schedule_kwargs',
]


@dataclass
class CyclicalSchedules:
    """The cyclical schedules of one training run; each is None when switched off.

    Attributes:
        weight_decay: Weight decay of the decayed parameter groups.
        temperature: Softmax temperature dividing the training logits (never the evaluation logits).
        clip_grad: Gradient-clipping threshold.
    """

    weight_decay: Optional[CyclicalWeightDecayScheduler] = None
    temperature: Optional[CyclicalValueScheduler] = None
    clip_grad: Optional[CyclicalValueScheduler] = None

    def _active(self) -> list:
        return [s for s in (self.weight_decay, self.temperature, self.clip_grad) if s is not None]

    def step(self, epoch: int, metric: Optional[float] = None) -> None:
        """Set every schedule for 0-based epoch ``epoch`` (timm's ``step(epoch + 1)`` after each epoch)."""
        for schedule in self._active():
            schedule.step(epoch, metric)

    def step_update(self, num_updates: int, metric: Optional[float] = None) -> None:
        """Set every per-update schedule after ``num_updates`` optimizer updates."""
        for schedule in self._active():
            schedule.step_update(num_updates, metric)

    def current(self) -> dict[str, Optional[float]]:
        """The values in force now, None for schedules that are off."""
        return {
            'weight_decay': None if self.weight_decay is None else self.weight_decay.value,
            'temperature': None if self.temperature is None else self.temperature.value,
            'clip_grad': None if self.clip_grad is None else self.clip_grad.value,
        }


def create_cyclical_schedules(
        optimizer: Optional[torch.optim.Optimizer],
        *,
        num_epochs: int,
        cyclical_factor: float = 2.0,
        wd_min: float = 0.0,
        wd_max: float = 1e-3,
        t_min: float = 0.0,
        t_max: float = 2.0,
        clip_min: float = 0.0,
        clip_max: float = 100.0,
        step_per_update: bool = False,
        updates_per_epoch: int = 1,
) -> CyclicalSchedules:
    """Create the cyclical schedules; a schedule is off when its min is 0 (the published convention).

    Args:
        optimizer: The optimizer (needed only when the weight-decay schedule is on).
        num_epochs: Number of scheduled epochs, cooldown included (timm's num_epochs), >= 1.
        cyclical_factor: Cyclical factor f >= 1 of the shared eta.
        wd_min: Weight decay at the start and end (``--wd_min``; 0 = off, constant ``--weight-decay``).
        wd_max: Weight decay at the minimum of eta (``--wd_max``).
        t_min: Softmax temperature at the start and end (``--T_min``; 0 = off).
        t_max: Softmax temperature at the minimum of eta (``--T_max``).
        clip_min: Gradient-clip threshold at the start and end (``--clip_min``; 0 = off).
        clip_max: Gradient-clip threshold at the minimum of eta (``--clip_max``).
        step_per_update: Step after every optimizer update (fractional epochs) instead of once per epoch.
        updates_per_epoch: Optimizer updates per epoch (per-update stepping).
    """
    check_timing(num_epochs, cyclical_factor, updates_per_epoch)
    timing: dict[str, Any] = dict(
        num_epochs=num_epochs, cyclical_factor=cyclical_factor, t_in_epochs=not step_per_update,
        updates_per_epoch=updates_per_epoch)
    schedules = CyclicalSchedules()
    if wd_min != 0:
        if optimizer is None:
            raise ValueError('The cyclical weight-decay schedule needs the optimizer.')
        schedules.weight_decay = CyclicalWeightDecayScheduler(optimizer, wd_min=wd_min, wd_max=wd_max, **timing)
    if t_min != 0:
        schedules.temperature = CyclicalValueScheduler(t_min, t_max, name='softmax temperature (T_min, T_max)',
                                                       **timing)
    if clip_min != 0:
        schedules.clip_grad = CyclicalValueScheduler(clip_min, clip_max, name='gradient clipping (clip_min, clip_max)',
                                                     **timing)
    return schedules


def cyclical_schedule_kwargs(args: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`create_cyclical_schedules` (all but optimizer, num_epochs, updates_per_epoch).

    Reads ``cyclical_factor``, ``wd_min``, ``wd_max``, ``T_min``, ``T_max``, ``clip_min``, ``clip_max`` and
    ``cyclical_step_per_update`` from an argparse namespace (or any object); absent attributes keep defaults.
    """
    names = {'cyclical_factor': 'cyclical_factor', 'wd_min': 'wd_min', 'wd_max': 'wd_max', 't_min': 'T_min',
             't_max': 'T_max', 'clip_min': 'clip_min', 'clip_max': 'clip_max',
             'step_per_update': 'cyclical_step_per_update'}
    return {key: getattr(args, attr) for key, attr in names.items() if getattr(args, attr, None) is not None}
