"""The one object that owns the cyclical position: timm's LR scheduler composed with the cyclical schedules.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 and
"General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835

timm's training loop moves its LR scheduler with ``step(epoch + 1, metric)`` after each epoch and
``step_update(num_updates)`` after each optimizer update. :class:`CyclicalScheduler` takes those same calls,
forwards them unchanged to timm's LR scheduler and moves the cyclical weight decay, softmax temperature,
gradient-clip threshold and the loss eta with them, so a loop of timm's own shape needs nothing else.
``timm.scheduler.create_scheduler_v2`` returns one when given cyclical arguments (see ``scheduler_registry``).
"""
import copy
from typing import Any, Optional

import torch
import torch.nn as nn

from ..loss._base import is_integer, is_real
from .cyclical_value import check_cyclical_range, check_timing, cyclical_eta, cyclical_value
from .cyclical_weight_decay import CyclicalWeightDecayScheduler

__all__ = ['CYCLICAL_VALUE_NAMES', 'CyclicalScheduler', 'check_cyclical_arguments', 'scheduled_clip_args']

# The values a CyclicalScheduler reports (None where off): summary.csv columns of train.py.
CYCLICAL_VALUE_NAMES = ('eta', 'weight_decay', 'temperature', 'clip_grad')
# Named by the published flags (train.py's, and the patched timm train.py's), which users meet first.
_RANGE_NAMES = {
    'weight_decay': 'weight decay (--wd_min, --wd_max)',
    'temperature': 'softmax temperature (--T_min, --T_max)',
    'clip_grad': 'gradient clipping (--clip_min, --clip_max)',
}


def check_cyclical_arguments(
        *,
        num_epochs: int,
        cyclical_factor: float = 2.0,
        wd_min: float = 0.0,
        wd_max: float = 1e-3,
        t_min: float = 0.0,
        t_max: float = 2.0,
        clip_min: float = 0.0,
        clip_max: float = 100.0,
        updates_per_epoch: int = 1,
) -> None:
    """Raise a clear ValueError for cyclical arguments out of range (a schedule whose min is 0 is off).

    The same checks :class:`CyclicalScheduler` runs when it is built; callable early (before any data or model
    is built) with the number of epochs the schedules will span.
    """
    check_timing(num_epochs, cyclical_factor, updates_per_epoch)
    for key, (low, high) in {'weight_decay': (wd_min, wd_max), 'temperature': (t_min, t_max),
                             'clip_grad': (clip_min, clip_max)}.items():
        if not is_real(low) or low != 0:  # a tensor or string min is checked (and refused), not compared
            check_cyclical_range(_RANGE_NAMES[key], low, high)


class CyclicalScheduler:
    """timm's LR scheduler plus the cyclical schedules of one run, all at one position in training.

    The position is a 0-based, possibly fractional epoch e, moved only by timm's calls:

    - ``step(epoch, metric)``: after each epoch (timm's ``step(epoch + 1)``) and on resume
      (``step(start_epoch)``): e = epoch, in either stepping mode (an epoch boundary);
    - ``step_update(num_updates, metric)``: after each optimizer update: e = num_updates / updates_per_epoch
      with per-update stepping, the epoch that update count lies in with per-epoch stepping.

    Both calls are forwarded unchanged to the LR scheduler (None for timm's ``sched='none'``). With
    eta = cyclical_eta(e, num_epochs, cyclical_factor)::

        weight decay (decayed groups) = (1 - eta) * wd_max   + eta * wd_min
        softmax temperature T         = (1 - eta) * t_max    + eta * t_min      training loss sees logits / T
        gradient-clip threshold       = (1 - eta) * clip_max + eta * clip_min

    A schedule is off when its min is 0 (the published convention). Every value is a pure function of e, so
    ``step(start_epoch)`` after a restart, or :meth:`load_state_dict`, restores them exactly. The training loss
    attached with :meth:`attach_loss` follows the same position (``loss.set_epoch(e)`` for the cyclical focal
    loss, whose eta must span the same ``num_epochs``) and sees the training logits divided by T.

    Args:
        lr_scheduler: timm's LR scheduler (None: the optimizer's learning rate is left as it is).
        optimizer: The optimizer (needed when the weight-decay schedule is on).
        num_epochs: Number of epochs the schedules and the loss eta span (timm's ``num_epochs``, cooldown
            included), >= 1.
        cyclical_factor: Cyclical factor f >= 1 of eta.
        wd_min: Weight decay at the start and end (0 = off: the configured weight decay stays constant).
        wd_max: Weight decay at the minimum of eta.
        t_min: Softmax temperature at the start and end (0 = off).
        t_max: Softmax temperature at the minimum of eta.
        clip_min: Gradient-clip threshold at the start and end (0 = off).
        clip_max: Gradient-clip threshold at the minimum of eta.
        step_per_update: Move after every optimizer update (fractional epochs) instead of once per epoch.
        updates_per_epoch: Optimizer updates per epoch (0 = unknown; required with ``step_per_update``).
    """

    def __init__(
            self,
            lr_scheduler: Optional[Any],
            optimizer: Optional[torch.optim.Optimizer] = None,
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
            updates_per_epoch: int = 0,
    ) -> None:
        if not isinstance(step_per_update, bool):
            raise ValueError(f'step_per_update must be True or False, got {step_per_update!r}.')
        if not is_integer(updates_per_epoch) or updates_per_epoch < 0:
            raise ValueError(f'updates_per_epoch must be an integer >= 0 (0: unknown), got {updates_per_epoch!r}.')
        if step_per_update and not updates_per_epoch:
            raise ValueError('Per-update cyclical stepping needs updates_per_epoch >= 1 (the optimizer updates '
                             'per epoch).')
        check_cyclical_arguments(
            num_epochs=num_epochs, cyclical_factor=cyclical_factor, wd_min=wd_min, wd_max=wd_max, t_min=t_min,
            t_max=t_max, clip_min=clip_min, clip_max=clip_max, updates_per_epoch=updates_per_epoch or 1)
        self.lr_scheduler = lr_scheduler
        self.num_epochs = int(num_epochs)
        self.cyclical_factor = float(cyclical_factor)
        self.step_per_update = bool(step_per_update)
        self.updates_per_epoch = int(updates_per_epoch)
        self.ranges = {'temperature': (t_min, t_max) if t_min != 0 else None,
                       'clip_grad': (clip_min, clip_max) if clip_min != 0 else None}
        self.weight_decay_scheduler = None
        if wd_min != 0:
            if optimizer is None:
                raise ValueError('The cyclical weight-decay schedule (wd_min > 0) needs the optimizer.')
            self.weight_decay_scheduler = CyclicalWeightDecayScheduler(
                optimizer, wd_min=wd_min, wd_max=wd_max, num_epochs=num_epochs, cyclical_factor=cyclical_factor)
        self.loss: Optional[nn.Module] = None
        self._hook = None
        # The temperature the pre-hook divides by, as a 0-dim tensor updated in place: a compiled loss then takes
        # it as a graph input and one graph serves every epoch (a Python float would recompile per value).
        self._temperature_tensor = torch.ones((), dtype=torch.float64)
        self._epoch_values: dict[int, dict[str, Optional[float]]] = {}
        self.epoch = 0.0
        self.set_epoch(0.0)

    # -- the position ------------------------------------------------------------------------------------------

    def step(self, epoch: int, metric: Optional[float] = None) -> None:
        """timm's ``step``: forwarded to the LR scheduler; the cyclical position moves to ``epoch``."""
        if self.lr_scheduler is not None:
            self.lr_scheduler.step(epoch, metric)
        self.set_epoch(epoch)

    def step_update(self, num_updates: int, metric: Optional[float] = None) -> None:
        """timm's ``step_update``: forwarded to the LR scheduler; the cyclical position follows the update count."""
        if not is_integer(num_updates) or num_updates < 0:
            raise ValueError(f'num_updates must be an integer >= 0, got {num_updates!r}.')
        if self.lr_scheduler is not None:
            self.lr_scheduler.step_update(num_updates, metric)
        if self.step_per_update:
            self.set_epoch(num_updates / self.updates_per_epoch)
        elif self.updates_per_epoch:
            self.set_epoch(num_updates // self.updates_per_epoch)

    def set_epoch(self, epoch: float) -> None:
        """Put every cyclical value at the 0-based (fractional) ``epoch`` (``step`` and ``step_update`` call it)."""
        cyclical_eta(epoch, self.num_epochs, self.cyclical_factor)  # validates epoch
        self.epoch = float(epoch)
        if self.weight_decay_scheduler is not None:
            self.weight_decay_scheduler.set_epoch(self.epoch)
        if self.loss is not None and hasattr(self.loss, 'set_epoch'):
            self.loss.set_epoch(self.epoch)
        if self.ranges['temperature'] is not None:
            self._temperature_tensor.fill_(self.temperature)
        if self.epoch.is_integer():
            self._epoch_values[int(self.epoch)] = self.values()
            for old in sorted(self._epoch_values)[:-2]:
                del self._epoch_values[old]

    # -- the values at the position ----------------------------------------------------------------------------

    def _value(self, name: str) -> Optional[float]:
        value_range = self.ranges[name]
        if value_range is None:
            return None
        return cyclical_value(self.epoch, min_value=value_range[0], max_value=value_range[1],
                              num_epochs=self.num_epochs, cyclical_factor=self.cyclical_factor)

    @property
    def eta(self) -> float:
        """The cyclical schedule eta at the position."""
        return cyclical_eta(self.epoch, self.num_epochs, self.cyclical_factor)

    @property
    def weight_decay(self) -> Optional[float]:
        """Weight decay of the decayed parameter groups (None when the schedule is off)."""
        if self.weight_decay_scheduler is None:
            return None
        return self.weight_decay_scheduler.value_at(self.epoch)

    @property
    def temperature(self) -> Optional[float]:
        """Softmax temperature dividing the attached loss's logits (None when the schedule is off)."""
        return self._value('temperature')

    @property
    def clip_grad(self) -> Optional[float]:
        """Gradient-clip threshold (None when the schedule is off: the loop keeps its own ``--clip-grad``)."""
        return self._value('clip_grad')

    def values(self) -> dict[str, Optional[float]]:
        """``eta`` (the attached loss's, None without one), ``weight_decay``, ``temperature``, ``clip_grad`` now."""
        return {'eta': getattr(self.loss, 'eta', None), 'weight_decay': self.weight_decay,
                'temperature': self.temperature, 'clip_grad': self.clip_grad}

    def epoch_values(self, epoch: int) -> dict[str, Optional[float]]:
        """The values in force at the start of ``epoch`` (summary columns), whichever calls moved the position since."""
        if not is_integer(epoch):
            raise ValueError(f'epoch must be an integer (the start of an epoch), got {epoch!r}.')
        if epoch not in self._epoch_values:
            raise ValueError(f'The cyclical position has not been at the start of epoch {epoch} recently; '
                             f'recorded epochs: {sorted(self._epoch_values)}.')
        return dict(self._epoch_values[epoch])

    # -- the training loss -------------------------------------------------------------------------------------

    def attach_loss(self, loss: nn.Module) -> nn.Module:
        """Make the training loss follow this scheduler; returns it.

        A loss with ``set_epoch`` (the cyclical focal loss) is put at the position after every move, and its eta
        spans this scheduler's ``num_epochs`` (its ``epochs`` is set to it: timm's factory decides the run length,
        cooldown, cycles and warm-up prefix included; a different ``cyclical_factor`` is an error). With the
        temperature schedule on, a forward pre-hook divides the loss's first input (the logits) by the current
        temperature, so the model output and the evaluation stay unscaled.
        """
        if self.loss is not None:
            raise ValueError('A training loss is attached to this scheduler already.')
        if not isinstance(loss, nn.Module):
            raise ValueError(f'attach_loss needs the training loss module, got {type(loss).__name__}.')
        if hasattr(loss, 'set_epoch') and getattr(loss, 'epochs', None) is not None:
            factor = getattr(loss, 'cyclical_factor', self.cyclical_factor)
            if factor != self.cyclical_factor:
                raise ValueError(f'The loss has cyclical_factor {factor} but the scheduler '
                                 f'{self.cyclical_factor}: one factor drives both (--cyclical_factor).')
            loss.epochs = self.num_epochs
        self.loss = loss
        if self.ranges['temperature'] is not None:
            self._hook = loss.register_forward_pre_hook(self._divide_logits)
        self.set_epoch(self.epoch)
        return loss

    def _divide_logits(self, module: nn.Module, inputs: tuple) -> tuple:
        logits, *rest = inputs
        return (logits / self._temperature_tensor, *rest)

    # -- checkpoints -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position and the LR scheduler's own state."""
        return {'epoch': self.epoch,
                'lr_scheduler': None if self.lr_scheduler is None else self.lr_scheduler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the LR scheduler's state and put every cyclical value back at the saved position."""
        if not isinstance(state_dict, dict) or 'epoch' not in state_dict:
            raise ValueError('Not a CyclicalScheduler state: expected a dict with the key "epoch".')
        if self.lr_scheduler is not None and state_dict.get('lr_scheduler') is not None:
            self.lr_scheduler.load_state_dict(state_dict['lr_scheduler'])
        self.set_epoch(state_dict['epoch'])

    @property
    def t_in_epochs(self) -> bool:
        """Whether the LR steps per epoch (timm's attribute; without an LR scheduler: the cyclical stepping)."""
        if self.lr_scheduler is not None:
            return self.lr_scheduler.t_in_epochs
        return not self.step_per_update

    def __getattr__(self, name: str) -> Any:
        # Anything else a timm loop reads from its scheduler (e.g. get_cycle_length) is the LR scheduler's.
        lr_scheduler = self.__dict__.get('lr_scheduler')
        if lr_scheduler is None or name.startswith('__'):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        return getattr(lr_scheduler, name)

    def __repr__(self) -> str:
        on = [name for name in ('weight_decay', 'temperature', 'clip_grad')
              if (self.weight_decay_scheduler if name == 'weight_decay' else self.ranges[name]) is not None]
        return (f'{type(self).__name__}(lr_scheduler={type(self.lr_scheduler).__name__}, num_epochs={self.num_epochs}, '
                f'cyclical_factor={self.cyclical_factor}, schedules={on}, step_per_update={self.step_per_update}, '
                f'epoch={self.epoch})')


def scheduled_clip_args(args: Any, lr_scheduler: Any) -> Any:
    """``args``, or a copy of it with ``clip_grad`` replaced by the scheduled clip threshold when that schedule is on.

    For training loops that read the clip threshold from their argparse namespace (timm's ``train_one_epoch``);
    the caller's namespace is never modified.
    """
    clip_grad = getattr(lr_scheduler, 'clip_grad', None)
    if clip_grad is None:
        return args
    scheduled = copy.copy(args)
    scheduled.clip_grad = clip_grad
    return scheduled
