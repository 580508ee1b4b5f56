"""Registration of the focal-family losses into timm's classification-loss factory.

Paper: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978

timm 1.0.31 has no loss registry: ``timm.loss.create_classification_loss`` is a closed if/elif chain over
``LOSS_TYPES``. :func:`register` wraps it so that it also accepts the loss types 'sym', 'asym' and
'asym-cyclical' while every existing type, argument and error behaves exactly as before. The wrapper is
installed wherever timm holds a reference to the factory (``timm.loss``, ``timm.loss._loss_factory`` and the
task modules that imported it by name).
"""
import functools
import inspect
import sys
from typing import Any, Optional

import timm.loss
import timm.loss._loss_factory as timm_loss_factory
import timm.task  # noqa: F401  (loads the task modules that import the factory by name)
import torch.nn as nn

from .cyclical_focal_loss import FOCAL_LOSS_TYPES
from .loss_factory import create_focal_loss

__all__ = ['ALL_LOSS_TYPES', 'FOCAL_LOSS_KWARGS', 'register', 'is_registered']

ALL_LOSS_TYPES = tuple(timm_loss_factory.LOSS_TYPES) + FOCAL_LOSS_TYPES
# Extra keyword arguments the wrapped factory accepts, with the create_focal_loss argument each one feeds.
FOCAL_LOSS_KWARGS = {
    'focal_gamma': 'gamma', 'gamma_hc': 'gamma_hc', 'gamma_pos': 'gamma_pos', 'gamma_neg': 'gamma_neg',
    'cyclical_factor': 'cyclical_factor', 'epochs': 'epochs', 'soft_target_mode': 'soft_target_mode',
}
# timm factory arguments that mean something for the focal losses; any other must keep its default.
_SHARED_ARGS = ('loss_type', 'multi_label', 'smoothing', 'soft_targets')

_original_factory = timm_loss_factory.create_classification_loss
_original_signature = inspect.signature(_original_factory)


@functools.wraps(_original_factory)
def create_classification_loss(loss_type: Optional[str] = None, *args: Any, **kwargs: Any) -> nn.Module:
    focal_kwargs = {FOCAL_LOSS_KWARGS[name]: kwargs.pop(name) for name in list(kwargs) if name in FOCAL_LOSS_KWARGS}
    if loss_type not in FOCAL_LOSS_TYPES:
        if focal_kwargs:
            given = sorted(k for k, v in FOCAL_LOSS_KWARGS.items() if v in focal_kwargs)
            raise ValueError(f'Arguments {given} only apply to the loss types {FOCAL_LOSS_TYPES}.')
        if loss_type is not None and loss_type not in ALL_LOSS_TYPES:
            raise ValueError(f"Unknown loss type '{loss_type}', expected one of {ALL_LOSS_TYPES}.")
        return _original_factory(loss_type, *args, **kwargs)

    bound = _original_signature.bind(loss_type, *args, **kwargs)
    if bound.arguments.get('multi_label', False):
        raise ValueError(f"Loss type '{loss_type}' does not support multi-label targets.")
    unsupported = sorted(
        name for name, value in bound.arguments.items()
        if name not in _SHARED_ARGS and value != _original_signature.parameters[name].default)
    if unsupported:
        raise ValueError(f"Arguments {unsupported} do not apply to the loss type '{loss_type}'.")
    return create_focal_loss(
        loss_type,
        smoothing=bound.arguments.get('smoothing'),  # None (not given) selects the published default
        soft_targets=bound.arguments.get('soft_targets', False),
        **focal_kwargs,
    )


def is_registered() -> bool:
    """Whether timm's public factory is the wrapped one."""
    return timm.loss.create_classification_loss is create_classification_loss


def register() -> None:
    """Make timm's classification-loss factory accept the focal loss types. Idempotent."""
    for name, module in list(sys.modules.items()):
        if (name == 'timm' or name.startswith('timm.')) and \
                getattr(module, 'create_classification_loss', None) is _original_factory:
            module.create_classification_loss = create_classification_loss
