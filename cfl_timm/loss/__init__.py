"""The cfl-timm losses: the focal family (arXiv 2202.08978), the calibration losses and their one factory.

The modules of this package import torch, timm and the standard library only, and each other by relative
imports, so ``patches/apply.py`` copies them (with ``_base``) into ``timm/loss/`` of a timm checkout unchanged.
"""
from ._base import REDUCTIONS
from .calibration_losses import (
    CALIBRATION_LOSS_DEFAULTS,
    CALIBRATION_LOSS_TYPES,
    AdaFocalLoss,
    BrierLoss,
    CEBrierLoss,
    ConfidencePenaltyLoss,
    DualFocalLoss,
    FLSDLoss,
    FocalCalibrationLoss,
    MbLSLoss,
    MMCEMLoss,
    MMCEWLoss,
    SAFCLNoDetachLoss,
    SAFCLoss,
    create_calibration_loss,
)
from .cfl_loss_factory import (
    DEFAULT_SMOOTHING,
    LOSS_KWARGS,
    LOSS_TYPES,
    REDUCTION_KWARG,
    SOFT_TARGET_LOSSES,
    create_loss,
    loss_kwargs,
)
from .cyclical_focal_loss import (
    FOCAL_LOSS_CLASSES,
    FOCAL_LOSS_TYPES,
    SOFT_TARGET_MODES,
    AsymmetricFocalLoss,
    CyclicalFocalLoss,
    FocalLoss,
    cyclical_eta,
)
