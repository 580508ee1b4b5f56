"""OLTR stage-2 network: the stage-1 ResNet with modulated attention on its feature map, a Linear + ReLU
feature layer, and the meta-embedding classifier; built from a stage-1 checkpoint.

Paper: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019,
https://arxiv.org/abs/1904.05160
"""
import math
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn as nn

from .attention import ModulatedAttention
from .meta_embedding import MetaEmbeddingClassifier
from .model import create_resnet

__all__ = ['Stage2Features', 'Stage2Model', 'create_stage2_model', 'read_stage1_checkpoint', 'load_stage1']


class Stage2Features(nn.Module):
    """``relu(fc(pool(attention(backbone_map(x)))))``.

    Args:
        backbone: A timm ResNet without classifier (``num_classes=0``).
        image_size: Input image size (square); fixes the feature-map size the attention is built for.
        feature_dim: Output width of ``fc``.
    """

    def __init__(self, backbone: nn.Module, image_size: int, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        side = math.ceil(image_size / backbone.feature_info[-1]['reduction'])  # every stride-2 layer pads
        self.attention = ModulatedAttention(backbone.num_features, (side, side))
        self.fc = nn.Linear(backbone.num_features, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone.forward_head(self.attention(self.backbone.forward_features(x)), pre_logits=True)
        return torch.relu(self.fc(pooled))


class Stage2Model(nn.Module):
    """``classifier(features(x))`` with a meta-embedding classifier; the features are also returned on request
    (the discriminative centroids loss acts on them)."""

    def __init__(self, features: Stage2Features, classifier: MetaEmbeddingClassifier):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.features(x)
        logits = self.classifier(feats)
        return (logits, feats) if return_features else logits


def create_stage2_model(backbone: str, num_classes: int, *, image_size: int, feature_dim: int = 512,
                        freeze_backbone: bool = False) -> Stage2Model:
    """A stage-2 network with fresh weights (load a stage-1 checkpoint with :func:`load_stage1`).

    Args:
        backbone: 'resnet10' or 'resnet152' (see :func:`oltr.model.create_resnet`).
        num_classes: Number of classes.
        image_size: Input image size.
        feature_dim: Width of the feature layer, centroids and classifier.
        freeze_backbone: Take the ResNet's parameters out of training (OLTR's Places-LT stage 2: only the
            attention, the feature layer and the classifier learn).
    """
    model = Stage2Model(Stage2Features(create_resnet(backbone), image_size, feature_dim),
                        MetaEmbeddingClassifier(feature_dim, num_classes))
    if freeze_backbone:
        model.features.backbone.requires_grad_(False)
    return model


def read_stage1_checkpoint(path: Union[str, Path], config: dict[str, Any]) -> dict[str, Any]:
    """Load a stage-1 ``best.pth`` and check that it fits ``config``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not a stage-1 checkpoint of this adapter, or one of another backbone, class count or feature
            width; the message names what differs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'--stage1-checkpoint: {path} does not exist (pass the best.pth of a stage-1 run).')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(f'--stage1-checkpoint: {path} is not a readable PyTorch checkpoint '
                         f'({type(error).__name__}).') from None
    saved = checkpoint.get('config') if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict) or not isinstance(checkpoint.get('model'), dict) or saved.get('stage', 1) != 1:
        raise ValueError(f'--stage1-checkpoint: {path} is not the best.pth of an OLTR stage-1 run of this adapter.')
    keys = ('backbone', 'num_classes', 'feature_dim')
    differ = [k for k in keys if saved.get(k) != config[k]]
    if differ:
        have = ', '.join(f'{k} {saved.get(k)}' for k in keys)
        want = ', '.join(f'{k} {config[k]}' for k in keys)
        raise ValueError(f'--stage1-checkpoint: {path} is a stage-1 run of {have}, but this config trains {want}; '
                         'pass the stage-1 checkpoint of the same backbone and classes.')
    return checkpoint


def load_stage1(model: Stage2Model, checkpoint: dict[str, Any]) -> None:
    """Copy a stage-1 checkpoint (from :func:`read_stage1_checkpoint`) into a stage-2 model.

    The ResNet comes from the stage-1 features; the feature layer from the stage-1 projection when stage 1 had one
    (ResNet-152 + Linear(2048, 512)), otherwise it stays freshly initialised (OLTR adds it in ImageNet-LT stage 2);
    the hallucinator from the stage-1 linear classifier. The attention, the concept selector and the cosine-norm
    classifier start fresh; the centroids are computed afterwards (:func:`oltr.centroids.compute_centroids`).
    """
    state = checkpoint['model']
    projected = 'features.1.weight' in state
    prefix = 'features.0.' if projected else 'features.'
    backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if projected:
        model.features.fc.load_state_dict({'weight': state['features.1.weight'], 'bias': state['features.1.bias']})
    model.features.backbone.load_state_dict(backbone)
    model.classifier.hallucinator.load_state_dict({'weight': state['classifier.weight'],
                                                   'bias': state['classifier.bias']})
