"""cfl-timm: cyclical focal loss and cyclical training for timm.

L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978, and
"General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835.

Importing the package registers the focal loss types with timm's loss factory (see :func:`register`) and the
CIFAR networks with timm's model registry (see :mod:`cfl_timm.models`).
"""
from . import models
from .cyclical_focal_loss import (
    FOCAL_LOSS_TYPES,
    AsymmetricFocalLoss,
    CyclicalFocalLoss,
    FocalLoss,
    create_loss,
    cyclical_eta,
)
from .loss_factory import create_focal_loss, focal_loss_kwargs
from .registry import ALL_LOSS_TYPES, is_registered, register
from .scheduler import (
    CyclicalSchedules,
    CyclicalValueScheduler,
    CyclicalWeightDecayScheduler,
    create_cyclical_schedules,
    cyclical_schedule_kwargs,
    cyclical_value,
)

__version__ = '0.1.0'

register()
