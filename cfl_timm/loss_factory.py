"""Factory for the focal-family losses from explicit keyword arguments, plus an argparse adapter.

Paper: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978
"""
from typing import Any, Optional

import torch.nn as nn

from .cyclical_focal_loss import FOCAL_LOSS_TYPES, SOFT_TARGET_MODES, create_loss

__all__ = ['DEFAULT_EPS', 'create_focal_loss', 'focal_loss_kwargs']

# Label smoothing used when none is given explicitly: the published values.
DEFAULT_EPS = {'sym': 0.0, 'asym': 0.1, 'asym-cyclical': 0.1}


def create_focal_loss(
        focal_loss: str,
        *,
        gamma: float = 2.0,
        gamma_hc: float = 0.0,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        cyclical_factor: float = 2.0,
        epochs: int = 1,
        smoothing: Optional[float] = None,
        soft_targets: bool = False,
        soft_target_mode: str = 'distribution',
        reduction: str = 'mean',
) -> nn.Module:
    """Create the training criterion selected by ``--focal_loss``.

    Args:
        focal_loss: One of FOCAL_LOSS_TYPES ('sym', 'asym', 'asym-cyclical').
        gamma: Focusing parameter of the symmetric loss ('sym' only).
        gamma_hc: High-confidence exponent ('asym-cyclical' only).
        gamma_pos: Focal exponent of the target class ('asym', 'asym-cyclical').
        gamma_neg: Exponent of the other classes' weight ('asym', 'asym-cyclical').
        cyclical_factor: Cyclical factor f >= 1 ('asym-cyclical' only).
        epochs: Number of scheduled epochs, cooldown included ('asym-cyclical' only).
        smoothing: Label smoothing; None selects the published default (0.1 for 'asym' / 'asym-cyclical',
            0 for 'sym'), an explicit value (timm's ``--smoothing``) overrides it.
        soft_targets: Targets arrive as soft distributions from Mixup / CutMix. With the default
            'distribution' mode the smoothing is already inside those targets (as in timm), so eps is 0.
        soft_target_mode: 'distribution' or 'argmax' (collapse soft targets to hard labels, as published,
            then smooth with eps).
        reduction: 'none', 'mean' or 'sum'.
    """
    if focal_loss not in FOCAL_LOSS_TYPES:
        raise ValueError(f"Unknown focal loss '{focal_loss}', expected one of {FOCAL_LOSS_TYPES}.")
    if soft_target_mode not in SOFT_TARGET_MODES:
        raise ValueError(f"Unknown soft_target_mode '{soft_target_mode}', expected one of {SOFT_TARGET_MODES}.")
    eps = DEFAULT_EPS[focal_loss] if smoothing is None else smoothing
    if soft_targets and soft_target_mode == 'distribution':
        eps = 0.0
    common: dict[str, Any] = dict(eps=eps, reduction=reduction, soft_target_mode=soft_target_mode)
    if focal_loss == 'sym':
        return create_loss('sym', gamma=gamma, **common)
    if focal_loss == 'asym':
        return create_loss('asym', gamma_pos=gamma_pos, gamma_neg=gamma_neg, **common)
    return create_loss(
        'asym-cyclical', gamma_hc=gamma_hc, gamma_pos=gamma_pos, gamma_neg=gamma_neg,
        cyclical_factor=cyclical_factor, epochs=epochs, **common)


def focal_loss_kwargs(args: Any, num_epochs: int) -> dict[str, Any]:
    """Keyword arguments of :func:`create_focal_loss` from an argparse namespace (or any object).

    Reads ``focal_loss``, ``gamma``, ``gamma_hc``, ``gamma_pos``, ``gamma_neg``, ``cyclical_factor``,
    ``smoothing`` (None when not given explicitly) and ``soft_target_mode``; absent attributes keep the
    factory defaults.

    Args:
        args: The parsed arguments.
        num_epochs: Number of scheduled epochs the cyclical schedule spans (epochs + cooldown).
    """
    kwargs: dict[str, Any] = {'focal_loss': args.focal_loss, 'epochs': num_epochs}
    for name in ('gamma', 'gamma_hc', 'gamma_pos', 'gamma_neg', 'cyclical_factor', 'smoothing', 'soft_target_mode'):
        if getattr(args, name, None) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs
