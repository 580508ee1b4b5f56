"""Cyclical training hooks for timm's train.py: loss choice, weight decay, softmax temperature, clip threshold.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 and
"General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835

Copied into a timm checkout by cfl-timm's ``patches/apply.py`` together with ``timm/loss/cyclical_focal_loss.py``;
the patched train.py calls the functions below so that the lines added to it stay few. Every cyclical quantity
follows the loss's schedule eta = ``cyclical_eta(epoch, num_epochs, cyclical_factor)``::

    value(epoch) = (1 - eta) * value_max + eta * value_min

so it is value_min at the start and end of training and value_max at the minimum of eta. A schedule is off
while its minimum is 0 (the published convention). Values are a pure function of the (fractional) epoch, so a
resumed run recomputes them from its start epoch.
"""
import argparse
import copy
from typing import Any, Optional

import torch
import torch.nn as nn
from timm.loss.cfl_loss_factory import create_loss
from timm.loss.cyclical_focal_loss import FOCAL_LOSS_TYPES, SOFT_TARGET_MODES, CyclicalFocalLoss, cyclical_eta

__all__ = [
    'TemperatureScaledLoss', 'CyclicalTraining', 'cyclical_value', 'add_cyclical_args', 'check_cyclical_args',
    'create_cyclical_train_loss',
]

# (flag suffix, human name) of the three cyclical schedules; the flags are --<name>_min / --<name>_max.
_SCHEDULES = (('wd', 'weight decay'), ('T', 'softmax temperature'), ('clip', 'gradient-clip threshold'))


def cyclical_value(epoch: float, *, min_value: float, max_value: float, num_epochs: int,
                   cyclical_factor: float) -> float:
    """(1 - eta) * max_value + eta * min_value with eta = cyclical_eta(epoch, num_epochs, cyclical_factor)."""
    eta = cyclical_eta(epoch, num_epochs, cyclical_factor)
    return (1.0 - eta) * max_value + eta * min_value


class TemperatureScaledLoss(nn.Module):
    """Training criterion on temperature-scaled logits: ``criterion(logits / T, target)``.

    Only the training criterion is wrapped, so validation and the saved model see unscaled logits.

    Args:
        criterion: The training loss.
    """

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.criterion = criterion
        self.temperature = 1.0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits / self.temperature, target)

    def extra_repr(self) -> str:
        return f'temperature={self.temperature}'


class CyclicalTraining:
    """Puts the loss eta and the cyclical schedules at the current (fractional) epoch of a timm train.py run.

    Weight decay is set on the parameter groups configured with weight decay > 0 (``initial_weight_decay``,
    recorded on the group as timm's schedulers do), whatever their number or order; no-decay groups stay at 0
    and a layer-decay ``lr_scale`` is not applied to it. The clip threshold reaches timm's loop as a copy of
    ``args`` with ``clip_grad`` replaced; the caller's namespace is never modified.

    Args:
        optimizer: The training optimizer.
        criterion: The training criterion (a TemperatureScaledLoss when the temperature schedule is on).
        num_epochs: Number of scheduled epochs (timm's num_epochs from create_scheduler_v2).
        cyclical_factor: Cyclical factor f >= 1 shared by the loss and all schedules.
        weight_decay: (min, max) of the weight decay schedule, or None when off.
        temperature: (min, max) of the temperature schedule, or None when off.
        clip_grad: (min, max) of the clip threshold schedule, or None when off.
        step_per_update: Step after every optimizer update (fractional epochs) instead of once per epoch.
        updates_per_epoch: Optimizer updates per epoch.
    """

    def __init__(
            self,
            optimizer: torch.optim.Optimizer,
            criterion: nn.Module,
            *,
            num_epochs: int,
            cyclical_factor: float,
            weight_decay: Optional[tuple[float, float]] = None,
            temperature: Optional[tuple[float, float]] = None,
            clip_grad: Optional[tuple[float, float]] = None,
            step_per_update: bool = False,
            updates_per_epoch: int = 1,
    ) -> None:
        cyclical_eta(0, num_epochs, cyclical_factor)  # validates num_epochs and the factor
        if updates_per_epoch < 1:
            raise ValueError(f'updates_per_epoch must be >= 1, got {updates_per_epoch}.')
        self.num_epochs = int(num_epochs)
        self.cyclical_factor = float(cyclical_factor)
        self.ranges = {'weight_decay': weight_decay, 'temperature': temperature, 'clip_grad': clip_grad}
        self.step_per_update = step_per_update
        self.updates_per_epoch = int(updates_per_epoch)
        self.temperature_loss = criterion if isinstance(criterion, TemperatureScaledLoss) else None
        if temperature is not None and self.temperature_loss is None:
            raise ValueError('The temperature schedule needs the training criterion wrapped in TemperatureScaledLoss.')
        self.loss = criterion.criterion if self.temperature_loss is not None else criterion
        if type(self.loss) is CyclicalFocalLoss and self.loss.epochs != num_epochs:
            # The LR schedule decides the run length (cycles, warmup prefix): the loss eta spans all of it.
            self.loss.epochs = self.num_epochs
        self.decayed_groups = []
        if weight_decay is not None:
            for group in optimizer.param_groups:
                group.setdefault('initial_weight_decay', group['weight_decay'])
            self.decayed_groups = [g for g in optimizer.param_groups if g['initial_weight_decay'] > 0]
            if not self.decayed_groups:
                raise ValueError('Cyclical weight decay (--wd_min > 0) needs a parameter group with weight decay > 0 '
                                 '(--weight-decay > 0); every group has weight decay 0.')
        self.values: dict[str, float] = {}
        self.epoch_values: dict[str, float] = {}

    @classmethod
    def from_args(cls, args: Any, optimizer: torch.optim.Optimizer, criterion: nn.Module, *, num_epochs: int,
                  updates_per_epoch: int) -> 'CyclicalTraining':
        """Build from train.py's arguments (see :func:`add_cyclical_args`)."""
        def schedule_range(prefix: str) -> Optional[tuple[float, float]]:
            low, high = getattr(args, f'{prefix}_min'), getattr(args, f'{prefix}_max')
            return (low, high) if low > 0 else None

        return cls(
            optimizer, criterion, num_epochs=num_epochs, cyclical_factor=args.cyclical_factor,
            weight_decay=schedule_range('wd'), temperature=schedule_range('T'), clip_grad=schedule_range('clip'),
            step_per_update=args.cyclical_step_per_update, updates_per_epoch=updates_per_epoch)

    def set_epoch(self, epoch: float) -> dict[str, float]:
        """Put the loss and every active schedule at the 0-based (fractional) ``epoch``; returns the values."""
        values = {}
        if hasattr(self.loss, 'set_epoch'):
            self.loss.set_epoch(epoch)
            if type(self.loss) is CyclicalFocalLoss:  # asym / sym have a fixed eta
                values['eta'] = self.loss.eta
        for name, value_range in self.ranges.items():
            if value_range is not None:
                values[name] = cyclical_value(
                    epoch, min_value=value_range[0], max_value=value_range[1], num_epochs=self.num_epochs,
                    cyclical_factor=self.cyclical_factor)
        if 'weight_decay' in values:
            for group in self.decayed_groups:
                group['weight_decay'] = values['weight_decay']
        if 'temperature' in values:
            self.temperature_loss.temperature = values['temperature']
        self.values = values
        return values

    def _with_clip(self, args: Any) -> Any:
        if 'clip_grad' not in self.values:
            return args
        args = copy.copy(args)
        args.clip_grad = self.values['clip_grad']
        return args

    def begin_epoch(self, epoch: int, args: Any) -> Any:
        """Schedules at the start of ``epoch``; returns ``args``, a copy with the scheduled clip threshold if on."""
        self.epoch_values = self.set_epoch(epoch)
        return self._with_clip(args)

    def step_update(self, num_updates: int, args: Any) -> Any:
        """After an optimizer update: per-update stepping moves to epoch num_updates / updates_per_epoch."""
        if self.step_per_update:
            self.set_epoch(num_updates / self.updates_per_epoch)
        return self._with_clip(args)

    def epoch_summary(self) -> dict[str, float]:
        """The cyclical values in force at the start of the epoch (summary.csv columns train_eta, ...)."""
        return dict(self.epoch_values)


def _flag(parser_or_group: Any, name: str, **kwargs: Any) -> None:
    # The published underscore spelling (--wd_min) plus timm's dash spelling (--wd-min).
    flags = [f'--{name}'] + ([f'--{name.replace("_", "-")}'] if '_' in name else [])
    parser_or_group.add_argument(*flags, dest=name, **kwargs)


def add_cyclical_args(parser: argparse.ArgumentParser) -> None:
    """Add the cyclical focal loss and cyclical training flags (published spellings) to train.py's parser."""
    group = parser.add_argument_group('Cyclical focal loss (arXiv 2202.08978), added by cfl-timm')
    _flag(group, 'focal_loss', default=None, choices=FOCAL_LOSS_TYPES,
          help='focal-family training loss replacing the default one (default: None = timm\'s loss); label '
               'smoothing is --smoothing')
    _flag(group, 'gamma', type=float, default=2.0, help="focusing parameter of 'sym' (default: 2.0)")
    _flag(group, 'gamma_hc', type=float, default=0.0, help='high-confidence exponent of asym-cyclical (default: 0)')
    _flag(group, 'gamma_pos', type=float, default=0.0, help='focal exponent of the target class (default: 0)')
    _flag(group, 'gamma_neg', type=float, default=4.0, help='exponent of the other classes\' weight (default: 4)')
    _flag(group, 'cyclical_factor', type=float, default=2.0,
          help='cyclical factor f >= 1 of eta, shared by the loss and the schedules (default: 2.0)')
    _flag(group, 'soft_target_mode', default='distribution', choices=SOFT_TARGET_MODES,
          help='focal loss with Mixup/CutMix: soft distribution, or argmax as published (default: distribution)')
    group = parser.add_argument_group('Cyclical training (arXiv 2202.08835), a schedule is off while its min is 0')
    _flag(group, 'wd_min', type=float, default=0.0, help='weight decay at the start and end (default: 0 = off)')
    _flag(group, 'wd_max', type=float, default=1e-3, help='weight decay at the minimum of eta (default: 1e-3)')
    _flag(group, 'T_min', type=float, default=0.0,
          help='softmax temperature of the training logits at the start and end (default: 0 = off)')
    _flag(group, 'T_max', type=float, default=2.0, help='temperature at the minimum of eta (default: 2.0)')
    _flag(group, 'clip_min', type=float, default=0.0,
          help='gradient-clip threshold (--clip-mode) at the start and end (default: 0 = off)')
    _flag(group, 'clip_max', type=float, default=100.0, help='clip threshold at the minimum of eta (default: 100)')
    _flag(group, 'cyclical_step_per_update', action='store_true', default=False,
          help='step the loss eta and the schedules after every optimizer update instead of once per epoch')


def check_cyclical_args(args: Any) -> None:
    """Raise a clear ValueError for invalid cyclical flags, before any model or data is built."""
    cyclical_eta(0, args.epochs + args.cooldown_epochs, args.cyclical_factor)
    for name in ('gamma', 'gamma_hc', 'gamma_pos', 'gamma_neg'):
        if not getattr(args, name) >= 0:
            raise ValueError(f'--{name} must be >= 0, got {getattr(args, name)}.')
    for prefix, what in _SCHEDULES:
        low, high = getattr(args, f'{prefix}_min'), getattr(args, f'{prefix}_max')
        if not low >= 0:
            raise ValueError(f'--{prefix}_min ({what}) must be >= 0 (0 = off), got {low}.')
        if low > 0 and not high >= low:
            raise ValueError(f'--{prefix}_max ({what}) must be >= --{prefix}_min, got {high} < {low}.')
    if args.wd_min > 0 and not args.weight_decay > 0:
        raise ValueError('Cyclical weight decay (--wd_min > 0) applies to the groups configured with weight decay; '
                         'set --weight-decay > 0.')
    if args.focal_loss is not None:
        others = [flag for flag, on in (('--jsd-loss', getattr(args, 'jsd_loss', False)),
                                        ('--bce-loss', getattr(args, 'bce_loss', False))) if on]
        if getattr(args, 'loss', None) not in (None, 'ce'):
            others.append(f'--loss {args.loss}')
        if others:
            raise ValueError(f'--focal_loss {args.focal_loss} replaces the training loss; it cannot be combined '
                             f'with {", ".join(others)}.')


def create_cyclical_train_loss(train_loss_fn: nn.Module, args: Any, *, mixup_active: bool) -> nn.Module:
    """The training criterion: the focal loss when --focal_loss is set, temperature-scaled when --T_min > 0.

    Args:
        train_loss_fn: The criterion train.py built from its own flags.
        args: train.py's arguments.
        mixup_active: Mixup / CutMix produce soft targets.
    """
    check_cyclical_args(args)
    if args.focal_loss is not None:
        own = {'sym': dict(gamma=args.gamma), 'asym': dict(gamma_pos=args.gamma_pos, gamma_neg=args.gamma_neg),
               'asym-cyclical': dict(gamma_hc=args.gamma_hc, gamma_pos=args.gamma_pos, gamma_neg=args.gamma_neg,
                                     cyclical_factor=args.cyclical_factor,
                                     epochs=args.epochs + args.cooldown_epochs)}[args.focal_loss]
        # timm's train.py builds Mixup with its --smoothing, so soft targets arrive smoothed already.
        smoothing = 0.0 if mixup_active and args.soft_target_mode == 'distribution' else args.smoothing
        train_loss_fn = create_loss(
            args.focal_loss, smoothing=smoothing, soft_targets=mixup_active, soft_target_mode=args.soft_target_mode,
            check_finite=False, **own)
    if args.T_min > 0:
        train_loss_fn = TemperatureScaledLoss(train_loss_fn)
    return train_loss_fn
