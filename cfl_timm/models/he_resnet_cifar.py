"""The CIFAR ResNets of He et al.: 6n+2 layers, three stages of 16, 32 and 64 channels.

K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
https://arxiv.org/abs/1512.03385, section 4.2 (ResNet-20/32/44/56/110 on CIFAR-10, Table 6).

Built from timm's own ``BasicBlock`` (so ``block_args=dict(attn_layer='se')`` adds SE through timm's
``create_attn``, and ``drop_path_rate`` / ``--drop-path`` adds stochastic depth through timm's ``DropPath``).
The shortcut is the paper's option A by default: identity, subsampled and zero-padded where the stage
doubles the channels, so the network has exactly the paper's parameters (0.27M for ResNet-20).
"""
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerType, create_classifier, get_act_layer, get_device_dtype, get_norm_layer
from timm.models import register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models._registry import generate_default_cfgs
from timm.models.resnet import BasicBlock, Bottleneck, downsample_conv

from ._cifar import build_cifar_model, cifar_cfg

__all__ = ['CifarResNet', 'ZeroPadShortcut', 'SHORTCUT_TYPES']

SHORTCUT_TYPES = ('zero_pad', 'conv')


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A shortcut: take every ``stride``-th pixel and append zero channels.

    For an input x with C_in channels the output is [x[:, :, ::s, ::s], 0] with C_out - C_in zero channels,
    a parameter-free identity where the stage doubles the width and halves the resolution.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        if out_chs < in_chs or stride < 1:
            raise ValueError(f'ZeroPadShortcut needs out_chs >= in_chs and stride >= 1, got in_chs={in_chs}, '
                             f'out_chs={out_chs}, stride={stride}.')
        self.stride = stride
        self.pad_chs = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, [0, 0, 0, 0, 0, self.pad_chs])


class CifarResNet(nn.Module):
    """A CIFAR ResNet: 3x3 stem, stages of timm residual blocks, global average pool and a linear classifier.

    With ``layers=(n, n, n)``, ``channels=(16, 32, 64)`` and basic blocks this is the 6n+2-layer network of
    He et al. (section 4.2): the first stage keeps 32x32, the next two halve the resolution and double the
    width, the head pools 8x8. Stage i >= 1 starts with a stride-2 block.

    Args:
        layers: Blocks per stage.
        channels: Width of each stage (before the block expansion).
        block: timm's ``BasicBlock`` or ``Bottleneck``.
        shortcut: 'zero_pad' (option A, parameter-free) or 'conv' (option B, 1x1 convolution + BN)
            where the shape changes.
        num_classes: Classifier outputs (0 for none).
        in_chans: Input channels.
        stem_width: Channels of the stem convolution (defaults to ``channels[0]``).
        global_pool: timm pooling type.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, rising linearly from 0 to this rate over the blocks.
        zero_init_last: Zero the last BN weight of each residual branch.
        act_layer: Activation layer.
        norm_layer: Normalisation layer.
        block_args: Extra keyword arguments for every block, e.g. ``dict(attn_layer='se')``.
    """

    def __init__(
            self,
            layers: tuple[int, ...] = (3, 3, 3),
            channels: tuple[int, ...] = (16, 32, 64),
            block: type[Union[BasicBlock, Bottleneck]] = BasicBlock,
            shortcut: str = 'zero_pad',
            num_classes: int = 10,
            in_chans: int = 3,
            stem_width: Optional[int] = None,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = True,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            block_args: Optional[dict[str, Any]] = None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUT_TYPES:
            raise ValueError(f'Unknown shortcut {shortcut!r}, expected one of {SHORTCUT_TYPES}.')
        if len(layers) != len(channels) or not layers or min(layers) < 1:
            raise ValueError(f'layers and channels need the same positive length and >= 1 block per stage, '
                             f'got layers={layers}, channels={channels}.')
        dd = {'device': device, 'dtype': dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        block_args = block_args or {}

        stem_width = stem_width or channels[0]
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(stem_width, **dd)
        self.act1 = act_layer(inplace=True)
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module='act1')]

        net_num_blocks = sum(layers)
        net_block_idx = 0
        reduction = 1
        inplanes = stem_width
        stages = []
        for stage_idx, (num_blocks, planes) in enumerate(zip(layers, channels)):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            outplanes = planes * block.expansion
            blocks = []
            for block_idx in range(num_blocks):
                block_stride = stride if block_idx == 0 else 1
                downsample = None
                if block_stride != 1 or inplanes != outplanes:
                    if shortcut == 'zero_pad':
                        downsample = ZeroPadShortcut(inplanes, outplanes, block_stride)
                    else:
                        downsample = downsample_conv(
                            inplanes, outplanes, kernel_size=1, stride=block_stride, norm_layer=norm_layer, **dd)
                dpr = drop_path_rate * net_block_idx / max(net_num_blocks - 1, 1)  # timm's linear decay rule
                blocks.append(block(
                    inplanes, planes, block_stride, downsample,
                    act_layer=act_layer, norm_layer=norm_layer,
                    drop_path=DropPath(dpr) if dpr > 0. else None,
                    **block_args, **dd))
                inplanes = outplanes
                net_block_idx += 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=outplanes, reduction=reduction, module=f'stages.{stage_idx}'))
        self.stages = nn.Sequential(*stages)

        self.num_features = inplanes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """He-normal convolutions (fan-out), optionally a zero last BN weight in each residual branch."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, 'zero_init_last'):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        return dict(stem=r'^conv1|bn1', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier for ``num_classes`` outputs (0: features only), keeping the pooling unless given."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """Features and the intermediates at ``indices`` (0 the stem, i the end of stage i), as timm's models.

        Args:
            x: Input images.
            indices: The last n taps if int, all if None, these taps if a sequence.
            norm: Unused (no final norm layer), accepted for the timm interface.
            stop_early: Stop after the last requested tap.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}.")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[:max_index]
        for feat_idx, stage in enumerate(stages, start=1):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, list[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last tap in ``indices`` (and the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        prune_end = max_index < len(self.stages)
        self.stages = self.stages[:max_index]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    num_taps = len(kwargs.get('layers', (3, 3, 3))) + 1
    return build_cifar_model(
        CifarResNet, variant, pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(num_taps))), **kwargs)


def _he_resnet(variant: str, n: int, pretrained: bool, **kwargs: Any) -> CifarResNet:
    model_args = dict(layers=(n, n, n), channels=(16, 32, 64), block=BasicBlock)
    return _create_cifar_resnet(variant, pretrained, **dict(model_args, **kwargs))


default_cfgs = generate_default_cfgs({
    name: cifar_cfg(paper_ids='arXiv:1512.03385')
    for name in ('resnet8_cifar', 'resnet14_cifar', 'resnet20_cifar', 'resnet32_cifar', 'resnet56_cifar',
                 'resnet110_cifar')
})


@register_model
def resnet8_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-8 for CIFAR (n=1; He et al. 2016, section 4.2 layout), option A shortcuts."""
    return _he_resnet('resnet8_cifar', 1, pretrained, **kwargs)


@register_model
def resnet14_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-14 for CIFAR (n=2), option A shortcuts."""
    return _he_resnet('resnet14_cifar', 2, pretrained, **kwargs)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (n=3, 0.27M parameters), option A shortcuts."""
    return _he_resnet('resnet20_cifar', 3, pretrained, **kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (n=5, 0.46M parameters), option A shortcuts."""
    return _he_resnet('resnet32_cifar', 5, pretrained, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (n=9, 0.85M parameters), option A shortcuts."""
    return _he_resnet('resnet56_cifar', 9, pretrained, **kwargs)


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (n=18, 1.7M parameters), option A shortcuts."""
    return _he_resnet('resnet110_cifar', 18, pretrained, **kwargs)
