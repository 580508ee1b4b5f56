"""timm's ResNet-18/34/50/101 with the CIFAR stem: one 3x3 stride-1 convolution and no max-pool.

K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
https://arxiv.org/abs/1512.03385 (Table 1 stages). The CIFAR stem is the one of the public CIFAR code the
calibration papers train (e.g. Mukhoti et al. 2020, https://arxiv.org/abs/2002.09437, and Liu et al. 2022,
MbLS, https://arxiv.org/abs/2111.15430): 32 px stays 32 px into ``layer1`` and reaches the head at 4x4.

Everything else is timm's ``ResNet`` unchanged (blocks, 1x1-convolution projection shortcuts, module names,
``block_args=dict(attn_layer='se')``, ``drop_path_rate``, ``drop_block_rate``), so state-dict keys match
timm's ``resnet18`` etc. except for the shape of ``conv1.weight``.
"""
from typing import Any

import torch.nn as nn
from timm.models import register_model
from timm.models._registry import generate_default_cfgs
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ._cifar import build_cifar_model, cifar_cfg, cifar_feature_info, cifar_stem_conv

__all__ = ['ResNetCifar']

_IMAGENET_STEM_ARGS = ('stem_type', 'stem_width', 'replace_stem_pool', 'aa_layer')


class ResNetCifar(ResNet):
    """timm's :class:`~timm.models.resnet.ResNet` whose stem is a 3x3 stride-1 convolution without max-pool.

    Takes the keyword arguments of timm's ``ResNet`` except the ImageNet stem options.

    Raises:
        ValueError: An ImageNet stem option (stem_type, stem_width, replace_stem_pool, aa_layer) is given.
    """

    def __init__(self, **kwargs: Any) -> None:
        given = sorted(set(kwargs) & set(_IMAGENET_STEM_ARGS))
        if given:
            raise ValueError(f'{given} configure the ImageNet stem; the CIFAR stem is one 3x3 stride-1 convolution '
                             f'without max-pool and takes none of {_IMAGENET_STEM_ARGS}.')
        super().__init__(**kwargs)
        self.conv1 = cifar_stem_conv(
            self.in_chans, self.bn1.num_features, device=kwargs.get('device'), dtype=kwargs.get('dtype'))
        self.maxpool = nn.Identity()
        self.feature_info = cifar_feature_info(self.feature_info)


def _create_resnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    return build_cifar_model(ResNetCifar, variant, pretrained, **kwargs)


_PAPERS = 'arXiv:1512.03385,arXiv:2002.09437'
default_cfgs = generate_default_cfgs({
    'resnet18_cifar': cifar_cfg(pool_size=(4, 4), paper_ids=_PAPERS),
    'resnet34_cifar': cifar_cfg(pool_size=(4, 4), paper_ids=_PAPERS),
    'resnet50_cifar': cifar_cfg(pool_size=(4, 4), paper_ids=_PAPERS),
    'resnet101_cifar': cifar_cfg(pool_size=(4, 4), paper_ids=_PAPERS),
})


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-18 with the CIFAR stem (basic blocks 2-2-2-2, 11.2M parameters for 10 classes)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet_cifar('resnet18_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-34 with the CIFAR stem (basic blocks 3-4-6-3, 21.3M parameters)."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet_cifar('resnet34_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-50 with the CIFAR stem (bottlenecks 3-4-6-3, 23.5M parameters)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet_cifar('resnet50_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-101 with the CIFAR stem (bottlenecks 3-4-23-3, 42.5M parameters)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return _create_resnet_cifar('resnet101_cifar', pretrained, **dict(model_args, **kwargs))
