"""The one loss factory of cfl-timm: every focal-family and calibration loss by name, plus an argparse adapter.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 (``sym``, ``asym``,
``asym-cyclical``), and the calibration losses of :mod:`cfl_timm.loss.calibration_losses` (Brier, MMCE, FLSD-53,
Dual focal, AdaFocal, MbLS, confidence penalty, FCL / SA-FCL).

:func:`create_loss` is the only place where loss names and their keyword arguments are checked; timm's
``create_classification_loss`` (wrapped in :mod:`cfl_timm.registry`) and ``train.py`` route every cfl name here.
The module imports only its two sibling loss modules, so ``patches/apply.py`` can copy it into ``timm/loss/``.

Label smoothing and soft targets: the loss owns its smoothing ``eps`` for hard and soft (Mixup / CutMix)
targets alike, so Mixup must be built with ``label_smoothing=0`` for these losses. A batch that Mixup leaves
unmixed then gives exactly the hard-target loss with the same smoothing.
"""
from typing import Any, Optional

import torch.nn as nn

from ._base import check_flag
from .calibration_losses import CALIBRATION_LOSS_DEFAULTS, CALIBRATION_LOSS_TYPES, create_calibration_loss
from .calibration_losses import SOFT_TARGET_LOSSES as _CALIBRATION_SOFT_TARGET_LOSSES
from .cyclical_focal_loss import FOCAL_LOSS_CLASSES, FOCAL_LOSS_TYPES

__all__ = [
    'LOSS_TYPES', 'SOFT_TARGET_LOSSES', 'LOSS_KWARGS', 'DEFAULT_SMOOTHING', 'REDUCTION_KWARG',
    'create_loss', 'loss_kwargs',
]

# Every loss type this project adds, focal family first.
LOSS_TYPES = tuple(FOCAL_LOSS_TYPES) + tuple(CALIBRATION_LOSS_TYPES)
# The types that accept soft (Mixup / CutMix) targets.
SOFT_TARGET_LOSSES = tuple(FOCAL_LOSS_TYPES) + tuple(_CALIBRATION_SOFT_TARGET_LOSSES)
# Label smoothing when none is given: the published eps of the focal losses, 0 (official) for the others.
DEFAULT_SMOOTHING = {'sym': 0.0, 'asym': 0.1, 'asym-cyclical': 0.1, **{name: 0.0 for name in CALIBRATION_LOSS_TYPES}}
# The keyword arguments of each type besides ``smoothing``, ``reduction`` and ``soft_targets``.
LOSS_KWARGS = {
    'sym': ('gamma', 'soft_target_mode', 'check_finite'),
    'asym': ('gamma_pos', 'gamma_neg', 'soft_target_mode', 'check_finite'),
    'asym-cyclical': ('gamma_hc', 'gamma_pos', 'gamma_neg', 'cyclical_factor', 'epochs', 'soft_target_mode',
                      'check_finite'),
    **{name: tuple(defaults) for name, defaults in CALIBRATION_LOSS_DEFAULTS.items()},
}
# timm's factory spells the reduction of these losses ``loss_reduction`` (train.py: ``--loss-reduction``).
REDUCTION_KWARG = 'loss_reduction'


def create_loss(
        name: str,
        *,
        smoothing: Optional[float] = None,
        reduction: str = 'mean',
        soft_targets: bool = False,
        **kwargs: Any,
) -> nn.Module:
    """Create a cfl-timm loss by name.

    Args:
        name: One of :data:`LOSS_TYPES`.
        smoothing: Label smoothing applied by the loss to hard and soft targets; None selects the type's
            default (:data:`DEFAULT_SMOOTHING`: 0.1 for 'asym' / 'asym-cyclical' as published, else 0). The
            calibration losses accept a non-zero value only where their definition has one ('ce-brier').
        reduction: 'mean', 'sum' or 'none' (not for the batch statistic 'mmce-*').
        soft_targets: The targets will be soft distributions (Mixup / CutMix, built with label smoothing 0):
            an error for the types not in :data:`SOFT_TARGET_LOSSES`.
        **kwargs: The type's own keyword arguments (:data:`LOSS_KWARGS`); e.g. ``epochs`` (required) for
            'asym-cyclical', ``flsd_gamma`` for 'flsd'. ``check_finite=False`` (focal types) is for training
            loops under a GradScaler: non-finite logits then skip the step instead of raising.

    Raises:
        ValueError: An unknown name, a keyword argument that does not apply to the type, soft targets for a
            type that needs class indices, or a bad value.
    """
    if not isinstance(name, str) or name not in LOSS_TYPES:
        raise ValueError(f"Unknown loss type {name!r}, expected one of {LOSS_TYPES}.")
    check_flag(name, 'soft_targets', soft_targets)
    valid = LOSS_KWARGS[name]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"Arguments {unknown} do not apply to the loss type {name!r}; its arguments are "
                         f"{valid + ('smoothing', 'reduction', 'soft_targets')}.")
    if soft_targets and name not in SOFT_TARGET_LOSSES:
        raise ValueError(f"Loss type {name!r} needs class-index targets, not soft (Mixup / CutMix) targets; the "
                         f"types that accept soft targets are {SOFT_TARGET_LOSSES}.")
    if smoothing is None:
        smoothing = DEFAULT_SMOOTHING[name]
    if name in CALIBRATION_LOSS_TYPES:
        return create_calibration_loss(name, reduction=reduction, smoothing=smoothing, **kwargs)
    return FOCAL_LOSS_CLASSES[name](eps=smoothing, reduction=reduction, **kwargs)


def loss_kwargs(args: Any, name: str, *, num_epochs: Optional[int] = None, soft_targets: bool = False,
                training: bool = True) -> dict[str, Any]:
    """Keyword arguments of :func:`create_loss` from an argparse namespace (or any object).

    Reads ``smoothing`` and ``loss_reduction`` (None = default) and every attribute named in :data:`LOSS_KWARGS`
    that is not None. An attribute given for a type it does not apply to is left in, so that
    :func:`create_loss` rejects it by name.

    Args:
        args: The parsed arguments.
        name: The loss type.
        num_epochs: Epochs the cyclical schedule spans (timm's num_epochs: epochs + cooldown), for
            'asym-cyclical'.
        soft_targets: Mixup / CutMix is active.
        training: Build for a training loop (``check_finite=False`` on the focal types, so a GradScaler
            skips steps with non-finite logits).
    """
    if not isinstance(name, str):
        raise ValueError(f'Unknown loss type {name!r}, expected one of {LOSS_TYPES}.')
    kwargs: dict[str, Any] = {'name': name, 'soft_targets': soft_targets}
    if getattr(args, 'smoothing', None) is not None:
        kwargs['smoothing'] = args.smoothing
    if getattr(args, REDUCTION_KWARG, None) is not None:
        kwargs['reduction'] = getattr(args, REDUCTION_KWARG)
    known = dict.fromkeys(k for keys in LOSS_KWARGS.values() for k in keys if k not in ('epochs', 'check_finite'))
    for key in known:
        if key == 'cyclical_factor' and name != 'asym-cyclical':
            continue  # shared with the cyclical schedules: not a loss argument of the other types
        if getattr(args, key, None) is not None:
            kwargs[key] = getattr(args, key)
    if name == 'asym-cyclical' and num_epochs is not None:
        kwargs['epochs'] = num_epochs
    if training and 'check_finite' in LOSS_KWARGS.get(name, ()):
        kwargs['check_finite'] = False
    return kwargs
