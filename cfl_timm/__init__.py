"""cfl-timm: cyclical focal loss and cyclical training for timm.

L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978, and
"General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835.

Importing the package registers every cfl-timm loss type (focal family and calibration losses) with timm's loss
factory (see :func:`register`; :func:`create_loss` is the one factory behind it), the OneCycle and cyclical
schedules with timm's scheduler factory (see :func:`cfl_timm.scheduler.register`) and the CIFAR networks with
timm's model registry (see :mod:`cfl_timm.models`).
"""
from . import models
from .loss import (
    FOCAL_LOSS_TYPES,
    LOSS_TYPES,
    SOFT_TARGET_LOSSES,
    AsymmetricFocalLoss,
    CyclicalFocalLoss,
    FocalLoss,
    create_loss,
    cyclical_eta,
    loss_kwargs,
)
from .registry import ALL_LOSS_TYPES, is_registered, register
from .scheduler import (
    CyclicalScheduler,
    CyclicalWeightDecayScheduler,
    OneCycleLRScheduler,
    cyclical_value,
)
from .scheduler import register as register_schedulers

__version__ = '0.1.0'

register()
register_schedulers()
