"""OLTR stage-1 networks from timm: ResNet-10 (ImageNet-LT) or ResNet-152 + 2048->512 projection (Places-LT),
followed by a linear ("dot product") classifier.

Benchmarks: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", https://arxiv.org/abs/1904.05160
"""
from pathlib import Path
from typing import Optional, Union

import timm
import torch
import torch.nn as nn

__all__ = ['Stage1Model', 'create_resnet', 'create_features', 'load_backbone_weights', 'create_stage1_model']


class Stage1Model(nn.Module):
    """``classifier(features(x))``; the two parts take separate learning rates."""

    def __init__(self, features: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_backbone_weights(backbone: nn.Module, path: Union[str, Path]) -> None:
    """Load ImageNet weights from a local file into a timm ResNet (its ``fc`` entries are ignored).

    Accepts a plain state dict or one under ``state_dict`` / ``model``, with or without a ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'pretrained weights file not found: {path} (pass a local file with '
                                f'--pretrained-file; weights are never downloaded)')
    state = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix('module.'): v for k, v in state.items() if not k.removeprefix('module.').startswith('fc.')}
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(f'{path} does not match the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}, '
                         f'wrong shape {mismatched[:5]} (first five of each)')
    backbone.load_state_dict(state)


def create_resnet(backbone: str) -> nn.Module:
    """The timm ResNet of a backbone name, without classifier and without weights (OLTR's initialisation)."""
    if backbone == 'resnet10':
        return timm.create_model('resnet18', layers=(1, 1, 1, 1), num_classes=0, zero_init_last=False)
    if backbone == 'resnet152':
        return timm.create_model('resnet152', num_classes=0, zero_init_last=False)
    raise ValueError(f"Unknown backbone '{backbone}', expected one of ('resnet10', 'resnet152').")


def create_features(backbone: str, *, feature_dim: int = 512, pretrained_file: Optional[Union[str, Path]] = None,
                    require_pretrained: bool = True) -> nn.Module:
    """The feature extractor of OLTR stage 1.

    Args:
        backbone: 'resnet10' (timm resnet18 with layers (1, 1, 1, 1), 512-d, from scratch) or 'resnet152'
            (ImageNet weights from ``pretrained_file``, then Linear(2048, feature_dim) + ReLU).
        feature_dim: Width of the feature vector (512 in OLTR).
        pretrained_file: Local ImageNet weights; required for 'resnet152' unless ``require_pretrained`` is False.
        require_pretrained: False when the weights come from a stage-1 checkpoint afterwards (``--test``).
    """
    if backbone == 'resnet10':
        net = create_resnet(backbone)
        if pretrained_file is not None:
            load_backbone_weights(net, pretrained_file)
        if feature_dim == net.num_features:
            return net
        return nn.Sequential(net, nn.Linear(net.num_features, feature_dim), nn.ReLU(inplace=True))
    if backbone == 'resnet152':
        if pretrained_file is None and require_pretrained:
            raise ValueError('backbone resnet152 (Places_LT) starts from ImageNet weights: '
                             'pass --pretrained-file PATH.')
        net = create_resnet(backbone)
        if pretrained_file is not None:
            load_backbone_weights(net, pretrained_file)
        return nn.Sequential(net, nn.Linear(net.num_features, feature_dim), nn.ReLU(inplace=True))
    raise ValueError(f"Unknown backbone '{backbone}', expected one of ('resnet10', 'resnet152').")


def create_stage1_model(backbone: str, num_classes: int, *, feature_dim: int = 512,
                        pretrained_file: Optional[Union[str, Path]] = None,
                        require_pretrained: bool = True) -> Stage1Model:
    """Features (see :func:`create_features`) plus a linear classifier Linear(feature_dim, num_classes)."""
    features = create_features(backbone, feature_dim=feature_dim, pretrained_file=pretrained_file,
                               require_pretrained=require_pretrained)
    return Stage1Model(features, nn.Linear(feature_dim, num_classes))
