"""Wide residual networks for CIFAR (WRN-d-k), on timm's pre-activation ``ResNetV2``.

S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016, https://arxiv.org/abs/1605.07146.

WRN-d-k: a 3x3 stride-1 stem of 16 channels, then three stages of (d - 4) / 6 pre-activation basic blocks
(BN-ReLU-conv3x3, twice) of 16k, 32k and 64k channels, a 1x1 convolution shortcut where the shape changes,
and a final BN-ReLU before global average pooling. WRN-28-10 has 36.5M parameters (the paper's Table).
The paper's dropout sits between the two convolutions of each block, after the ReLU: ``block_drop_rate``
(0.3 in the paper; ``--model-kwargs block_drop_rate=0.3``). ``drop_rate`` (``--drop``) stays timm's dropout
before the classifier.
"""
from collections import OrderedDict
from typing import Any

import torch.nn as nn
from timm.layers import BatchNormAct2d, create_conv2d
from timm.models import register_model
from timm.models._registry import generate_default_cfgs
from timm.models.resnetv2 import ResNetV2

from ._cifar import build_cifar_model, cifar_cfg, cifar_feature_info, cifar_stem_conv

__all__ = ['WideResNetCifar']


class WideResNetCifar(ResNetV2):
    """WRN-``depth``-``widen_factor`` for 32 px inputs: timm's ``ResNetV2`` (pre-activation, basic blocks).

    Args:
        depth: Total depth d, with d - 4 divisible by 6.
        widen_factor: Width multiplier k of the 16/32/64-channel stages.
        block_drop_rate: Dropout between the two convolutions of every block (the paper's dropout).
        stem_width: Channels of the stem convolution (16 in the paper).
        **kwargs: Further ``ResNetV2`` arguments (num_classes, in_chans, global_pool, drop_rate,
            drop_path_rate, act_layer, ...).

    Raises:
        ValueError: ``depth`` not of the form 6n + 4, or a rate outside [0, 1).
    """

    def __init__(
            self,
            depth: int = 28,
            widen_factor: int = 10,
            block_drop_rate: float = 0.,
            stem_width: int = 16,
            **kwargs: Any,
    ) -> None:
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f'WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}.')
        if not 0. <= block_drop_rate < 1.:
            raise ValueError(f'block_drop_rate must be in [0, 1), got {block_drop_rate}.')
        n = (depth - 4) // 6
        kwargs.setdefault('conv_layer', create_conv2d)
        kwargs.setdefault('norm_layer', BatchNormAct2d)
        super().__init__(
            layers=(n, n, n), channels=(16 * widen_factor, 32 * widen_factor, 64 * widen_factor),
            stem_chs=stem_width, preact=True, basic=True, bottle_ratio=1.0, **kwargs)
        self.stem = nn.Sequential(OrderedDict(conv=cifar_stem_conv(
            self.in_chans, stem_width, device=kwargs.get('device'), dtype=kwargs.get('dtype'))))
        self.stem_feat_idx = 0
        self.feature_info = cifar_feature_info(self.feature_info)
        if block_drop_rate > 0.:
            for stage in self.stages:
                for block in stage.blocks:
                    block.norm2.drop = nn.Dropout(block_drop_rate)  # BN -> dropout -> ReLU == BN-ReLU-dropout


default_cfgs = generate_default_cfgs({
    'wide_resnet28_10_cifar': cifar_cfg(first_conv='stem.conv', classifier='head.fc', paper_ids='arXiv:1605.07146'),
})


@register_model
def wide_resnet28_10_cifar(pretrained: bool = False, **kwargs: Any) -> WideResNetCifar:
    """WRN-28-10 (36.5M parameters); dropout between the convolutions with ``block_drop_rate``."""
    model_args = dict(depth=28, widen_factor=10)
    return build_cifar_model(
        WideResNetCifar, 'wide_resnet28_10_cifar', pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)), **dict(model_args, **kwargs))
