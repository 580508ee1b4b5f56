"""The command-line flags of the cyclical focal loss and of cyclical training, their checks, and the hooks of a
timm train.py: one definition for cfl-timm's train.py and for a timm checkout patched by ``patches/apply.py``.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 and
"General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835

cfl-timm's argument groups (``cfl_timm.training.args``) add :func:`add_focal_loss_args` and
:func:`add_cyclical_args` and run :func:`check_cyclical_args`. ``patches/apply.py`` copies this module and its
flag types (``arg_types.py``) verbatim into ``timm/scheduler/`` (beside the modules of ``cfl_timm/scheduler/``),
and the patched train.py calls
:func:`add_train_py_args`, :func:`check_train_py_args`, :func:`create_train_py_loss`, :func:`cyclical_summary`
and :func:`scheduled_clip_args`; timm's own ``step`` / ``step_update`` calls on the ``CyclicalScheduler`` that
the patched ``create_scheduler_v2`` returns move the LR, the weight decay, the temperature, the clip threshold
and the loss eta together.

Standard library, torch and timm only; the other modules are imported by relative paths that are the same in both
layouts (``..loss`` and ``..scheduler`` name ``cfl_timm/loss/`` and ``cfl_timm/scheduler/`` here, ``timm/loss/``
and ``timm/scheduler/`` in a patched checkout; ``.arg_types`` is copied beside it).
"""
import argparse
from typing import Any, Optional

import torch.nn as nn

from ..loss.cfl_loss_factory import create_loss, loss_kwargs
from ..loss.cyclical_focal_loss import FOCAL_LOSS_TYPES, SOFT_TARGET_MODES
from ..scheduler.cyclical_scheduler import check_cyclical_arguments, scheduled_clip_args
from .arg_types import at_least_one, finite_float, non_negative_float

__all__ = [
    'add_cyclical_args', 'add_focal_loss_args', 'add_train_py_args', 'both_spellings', 'check_cyclical_args',
    'check_train_py_args', 'create_train_py_loss', 'cyclical_summary', 'mixup_active', 'scheduled_clip_args',
]


def both_spellings(name: str) -> list[str]:
    """A flag in its underscore (published) and dash (timm) spelling: '--T_min' -> ['--T_min', '--T-min']."""
    dashed = name[:2] + name[2:].replace('_', '-')
    underscored = name[:2] + name[2:].replace('-', '_')
    return list(dict.fromkeys([name, underscored, dashed]))


def add_focal_loss_args(parser: argparse.ArgumentParser) -> None:
    """The focal-family loss and its exponents (arXiv 2202.08978). An exponent left unset takes the loss class's
    published default; label smoothing is timm's ``--smoothing``."""
    group = parser.add_argument_group('Cyclical focal loss (arXiv 2202.08978)')
    group.add_argument(*both_spellings('--focal_loss'), dest='focal_loss', default=None, choices=FOCAL_LOSS_TYPES,
                       help='focal-family training loss replacing the default one (the published flag)')
    group.add_argument(*both_spellings('--gamma'), dest='gamma', type=finite_float, default=None,
                       help="focusing parameter of the 'sym' focal loss (default: 2.0)")
    group.add_argument(*both_spellings('--gamma_hc'), dest='gamma_hc', type=finite_float, default=None,
                       help='high-confidence exponent of asym-cyclical (default: 0.0)')
    group.add_argument(*both_spellings('--gamma_pos'), dest='gamma_pos', type=finite_float, default=None,
                       help='focal exponent of the target class, asym / asym-cyclical (default: 0.0)')
    group.add_argument(*both_spellings('--gamma_neg'), dest='gamma_neg', type=finite_float, default=None,
                       help='exponent of the other classes\' weight, asym / asym-cyclical (default: 4.0)')
    group.add_argument(*both_spellings('--cyclical_factor'), dest='cyclical_factor', type=at_least_one, default=2.0,
                       help='cyclical factor f >= 1 of eta, shared by the loss and all schedules (default: 2.0)')
    group.add_argument(*both_spellings('--soft_target_mode'), dest='soft_target_mode', default=None,
                       choices=SOFT_TARGET_MODES,
                       help='focal losses with Mixup/CutMix: use the soft distribution, or collapse it with '
                            'argmax as published (default: distribution)')


def add_cyclical_args(parser: argparse.ArgumentParser) -> None:
    """Cyclical weight decay, softmax temperature and gradient clipping (arXiv 2202.08835)."""
    group = parser.add_argument_group('Cyclical training (arXiv 2202.08835); a schedule is off when its min is 0')
    group.add_argument(*both_spellings('--wd_min'), dest='wd_min', type=non_negative_float, default=0.0,
                       help='cyclical weight decay at the start and end (default: 0 = off)')
    group.add_argument(*both_spellings('--wd_max'), dest='wd_max', type=non_negative_float, default=1e-3,
                       help='cyclical weight decay at the minimum of eta (default: 1e-3)')
    group.add_argument(*both_spellings('--T_min'), dest='T_min', type=non_negative_float, default=0.0,
                       help='softmax temperature (training logits only) at the start and end (default: 0 = off)')
    group.add_argument(*both_spellings('--T_max'), dest='T_max', type=non_negative_float, default=2.0,
                       help='softmax temperature at the minimum of eta (default: 2.0)')
    group.add_argument(*both_spellings('--clip_min'), dest='clip_min', type=non_negative_float, default=0.0,
                       help='gradient-clip threshold at the start and end (default: 0 = off)')
    group.add_argument(*both_spellings('--clip_max'), dest='clip_max', type=non_negative_float, default=100.0,
                       help='gradient-clip threshold at the minimum of eta (default: 100.0)')
    group.add_argument(*both_spellings('--cyclical_step_per_update'), dest='cyclical_step_per_update',
                       action='store_true', default=False,
                       help='step the loss eta and the schedules after every optimizer update (fractional '
                            'epochs) instead of once per epoch as published')


def check_cyclical_args(args: Any) -> None:
    """The cyclical ranges and timing (the checks the scheduler factory runs) and a weight-decay schedule that has
    decayed groups to act on, before any data or model is built.

    Raises:
        ValueError: Naming the flags and their valid ranges.
    """
    check_cyclical_arguments(
        num_epochs=args.epochs + args.cooldown_epochs, cyclical_factor=args.cyclical_factor, wd_min=args.wd_min,
        wd_max=args.wd_max, t_min=args.T_min, t_max=args.T_max, clip_min=args.clip_min, clip_max=args.clip_max)
    if args.wd_min > 0 and not args.weight_decay > 0:
        raise ValueError('Cyclical weight decay (--wd_min > 0) applies to the groups configured with weight decay; '
                         'set --weight-decay > 0.')


def add_train_py_args(parser: argparse.ArgumentParser) -> None:
    """Both groups, for a timm train.py (a patched checkout)."""
    add_focal_loss_args(parser)
    add_cyclical_args(parser)


def mixup_active(args: Any) -> bool:
    """Whether Mixup / CutMix will produce soft targets (timm's train.py rule; a flag it lacks counts as off)."""
    return getattr(args, 'mixup', 0) > 0 or getattr(args, 'cutmix', 0) > 0 \
        or getattr(args, 'cutmix_minmax', None) is not None


def check_train_py_args(args: Any) -> None:
    """Every check of these flags in a timm train.py, right after parsing: the cyclical ranges, a focal loss that
    replaces timm's loss alone, and its keywords (a dry construction through the one loss factory).

    Raises:
        ValueError: Naming the flag and its valid range or choices.
    """
    check_cyclical_args(args)
    if args.focal_loss is None:
        return
    others = [flag for flag, on in (('--jsd-loss', getattr(args, 'jsd_loss', False)),
                                    ('--bce-loss', getattr(args, 'bce_loss', False))) if on]
    if getattr(args, 'loss', None) not in (None, 'ce'):
        others.append(f'--loss {args.loss}')
    if others:
        raise ValueError(f'--focal_loss {args.focal_loss} replaces the training loss; it cannot be combined '
                         f'with {", ".join(others)}.')
    try:
        create_train_py_loss(None, args, mixup_active=mixup_active(args))
    except ValueError as e:
        raise ValueError(f'--focal_loss {args.focal_loss}: {e}') from e


def create_train_py_loss(train_loss_fn: Optional[nn.Module], args: Any, *, mixup_active: bool) -> nn.Module:
    """The training criterion of a timm train.py: the focal loss when ``--focal_loss`` is set, else
    ``train_loss_fn`` (the temperature is the scheduler's).

    Args:
        train_loss_fn: The criterion train.py built from its own flags.
        args: train.py's arguments.
        mixup_active: Mixup / CutMix produce soft targets.
    """
    if args.focal_loss is None:
        return train_loss_fn
    kwargs = loss_kwargs(args, args.focal_loss, num_epochs=args.epochs + args.cooldown_epochs,
                         soft_targets=mixup_active)
    if mixup_active and kwargs.get('soft_target_mode', 'distribution') == 'distribution':
        # timm's train.py builds Mixup with its --smoothing, so the soft targets arrive smoothed already
        kwargs['smoothing'] = 0.0
    return create_loss(**kwargs)


def cyclical_summary(lr_scheduler: Any, epoch: int) -> dict[str, float]:
    """The cyclical values in force at the start of ``epoch`` that are on (summary columns ``train_eta``, ...)."""
    values = lr_scheduler.epoch_values(epoch) if hasattr(lr_scheduler, 'epoch_values') else {}
    return {name: value for name, value in values.items() if value is not None}
