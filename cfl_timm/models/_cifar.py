"""What the CIFAR networks share: their pretrained config, the 3x3 stride-1 stem, and the timm builder call.

The CIFAR forms of ResNet, WideResNet and DenseNet differ from the ImageNet forms in the stem only: one 3x3
stride-1 convolution and no max-pool, so a 32 px image keeps its resolution into the first stage and
reaches the head at 8x8 (three stages) or 4x4 (four stages) instead of 1x1.
"""
from collections.abc import Callable
from typing import Any, Optional

import torch.nn as nn
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg

from cfl_timm.data.constants import CIFAR10_MEAN, CIFAR10_STD

__all__ = ['cifar_cfg', 'cifar_feature_info', 'cifar_stem_conv', 'build_cifar_model']


def cifar_cfg(**kwargs: Any) -> dict[str, Any]:
    """A pretrained config for a CIFAR network: 3x32x32 input, CIFAR-10 statistics, 10 classes, no weights.

    ``crop_pct`` 1.0 makes timm's evaluation transform resize 32 px to 32 px (an identity) instead of
    resizing up and center-cropping away the border.
    """
    return {
        'url': '',
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0',
        **kwargs,
    }


def cifar_feature_info(feature_info: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An ImageNet-stem feature_info (stem at stride 2, first stage at 4) rescaled for the stride-1 stem."""
    return [dict(info, reduction=1 if i == 0 else max(1, info['reduction'] // 4))
            for i, info in enumerate(feature_info)]


def cifar_stem_conv(
        in_chans: int,
        out_chs: int,
        init: Optional[Callable[[nn.Conv2d], None]] = None,
        device=None,
        dtype=None,
) -> nn.Conv2d:
    """The CIFAR stem: a 3x3 stride-1 convolution without bias (He et al. 2016, section 4.2)."""
    conv = nn.Conv2d(in_chans, out_chs, kernel_size=3, stride=1, padding=1, bias=False, device=device, dtype=dtype)
    if init is None:
        nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
    else:
        init(conv)
    return conv


def build_cifar_model(
        model_cls: Callable[..., nn.Module],
        variant: str,
        pretrained: bool = False,
        feature_cfg: Optional[dict[str, Any]] = None,
        **kwargs: Any,
) -> nn.Module:
    """timm's ``build_model_with_cfg``, refusing ``pretrained=True`` unless a weight file is given.

    No published weights exist for these networks, so ``pretrained=True`` is an error rather than timm's
    warning and random initialisation. A file does load: ``--pretrained-path PATH``
    (``pretrained_cfg_overlay=dict(file=PATH)``), or ``--initial-checkpoint PATH`` (``checkpoint_path``).

    Raises:
        ValueError: ``pretrained=True`` without a weight source.
    """
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        if not (cfg.file or cfg.state_dict or cfg.url or cfg.hf_hub_id):
            raise ValueError(
                f'No pretrained weights exist for {variant!r} (the CIFAR networks are trained from scratch). '
                f'Drop pretrained=True / --pretrained, or load your own weights with --initial-checkpoint PATH or '
                f'--pretrained-path PATH (pretrained_cfg_overlay=dict(file=PATH)).')
    return build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)
