"""DenseNet-121 for CIFAR on timm's ``DenseNet``: a 3x3 stride-1 stem of 2k channels and no max-pool.

G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017, https://arxiv.org/abs/1608.06993 (DenseNet-BC 121: growth rate 32, blocks 6-12-24-16,
compression 0.5). The CIFAR form, with 32 px reaching the head at 4x4, is the one the focal-calibration
study trains (Mukhoti et al. 2020, https://arxiv.org/abs/2002.09437): 7.0M parameters for 10 classes.
"""
from typing import Any

import torch.nn as nn
from timm.models import register_model
from timm.models._registry import generate_default_cfgs
from timm.models.densenet import DenseNet

from ._cifar import build_cifar_model, cifar_cfg, cifar_feature_info, cifar_stem_conv

__all__ = ['DenseNetCifar']

_IMAGENET_STEM_ARGS = ('stem_type', 'aa_layer')


class DenseNetCifar(DenseNet):
    """timm's :class:`~timm.models.densenet.DenseNet` with a 3x3 stride-1 stem convolution and no stem pool.

    Takes the keyword arguments of timm's ``DenseNet`` except the ImageNet stem options.

    Raises:
        ValueError: ``stem_type`` or ``aa_layer`` is given.
    """

    def __init__(self, **kwargs: Any) -> None:
        given = sorted(set(kwargs) & set(_IMAGENET_STEM_ARGS))
        if given:
            raise ValueError(f'{given} configure the ImageNet stem; the CIFAR stem is one 3x3 stride-1 convolution '
                             f'without pooling and takes none of {_IMAGENET_STEM_ARGS}.')
        super().__init__(**kwargs)
        self.features.conv0 = cifar_stem_conv(
            self.in_chans, self.features.norm0.num_features, init=lambda conv: nn.init.kaiming_normal_(conv.weight),
            device=kwargs.get('device'), dtype=kwargs.get('dtype'))
        self.features.pool0 = nn.Identity()
        self.feature_info = cifar_feature_info(self.feature_info)


default_cfgs = generate_default_cfgs({
    'densenet121_cifar': cifar_cfg(
        pool_size=(4, 4), first_conv='features.conv0', classifier='classifier',
        paper_ids='arXiv:1608.06993,arXiv:2002.09437'),
})


@register_model
def densenet121_cifar(pretrained: bool = False, **kwargs: Any) -> DenseNetCifar:
    """DenseNet-121 (k=32, blocks 6-12-24-16) with the CIFAR stem, 7.0M parameters for 10 classes."""
    model_args = dict(growth_rate=32, block_config=(6, 12, 24, 16))
    return build_cifar_model(
        DenseNetCifar, 'densenet121_cifar', pretrained,
        feature_cfg=dict(flatten_sequential=True), **dict(model_args, **kwargs))
