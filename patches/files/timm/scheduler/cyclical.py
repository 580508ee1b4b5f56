"""train.py hooks for a timm checkout: the cyclical focal loss / cyclical training flags, their checks, the loss.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 and
"General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835

Copied into a timm checkout by cfl-timm's ``patches/apply.py``, next to cfl-timm's own scheduler modules (copied
verbatim into ``timm/scheduler/``). Those register with timm's scheduler factory, so the patched
``create_scheduler_v2(**scheduler_kwargs(args))`` reads the flags below and returns the ``CyclicalScheduler``
that owns the cyclical position: timm's own ``step`` / ``step_update`` calls move the LR, the weight decay,
the softmax temperature, the clip threshold and the loss eta together, exactly as in cfl-timm's train.py. The
patched train.py only adds the flags, the loss choice, ``lr_scheduler.attach_loss(train_loss_fn)``, the
scheduled clip threshold (:func:`scheduled_clip_args`) and the summary columns (:func:`cyclical_summary`).
"""
import argparse
from typing import Any

import torch.nn as nn
from timm.loss.cfl_loss_factory import create_loss
from timm.loss.cyclical_focal_loss import FOCAL_LOSS_TYPES, SOFT_TARGET_MODES

from .cyclical_scheduler import check_cyclical_arguments, scheduled_clip_args

__all__ = [
    'add_cyclical_args', 'check_cyclical_args', 'create_cyclical_train_loss', 'cyclical_summary',
    'scheduled_clip_args',
]


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
    check_cyclical_arguments(
        num_epochs=args.epochs + args.cooldown_epochs, cyclical_factor=args.cyclical_factor, wd_min=args.wd_min,
        wd_max=args.wd_max, t_min=args.T_min, t_max=args.T_max, clip_min=args.clip_min, clip_max=args.clip_max)
    for name in ('gamma', 'gamma_hc', 'gamma_pos', 'gamma_neg'):
        if not getattr(args, name) >= 0:
            raise ValueError(f'--{name} must be >= 0, got {getattr(args, name)}.')
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


def cyclical_summary(lr_scheduler: Any, epoch: int) -> dict[str, float]:
    """The cyclical values in force at the start of ``epoch`` that are on (summary columns ``train_eta``, ...)."""
    values = lr_scheduler.epoch_values(epoch) if hasattr(lr_scheduler, 'epoch_values') else {}
    return {name: value for name, value in values.items() if value is not None}


def create_cyclical_train_loss(train_loss_fn: nn.Module, args: Any, *, mixup_active: bool) -> nn.Module:
    """The training criterion: the focal loss when --focal_loss is set (the temperature is the scheduler's).

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
    return train_loss_fn
