"""Class centroids of OLTR stage 2: their initial value (the per-class mean feature over the training set) and
the discriminative centroids loss that trains them with the features.

Paper: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019,
https://arxiv.org/abs/1904.05160 (section 3.1, eq. 4, and its released code); the centroid update is the
center-loss rule of Y. Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition",
ECCV 2016.
"""
from collections.abc import Iterable

import torch
import torch.nn as nn

__all__ = ['compute_centroids', 'DiscCentroidsLoss']


@torch.no_grad()
def compute_centroids(features: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                      device: torch.device) -> torch.Tensor:
    """Per-class mean of ``features(images)`` over ``batches`` (the whole training set, plainly sampled).

    The features run in eval mode; sums are accumulated in float64. Returns a float32 ``(num_classes, D)``
    tensor on ``device``.

    Raises:
        ValueError: A class has no image in ``batches`` (its centroid would be undefined), naming the classes.
    """
    was_training = features.training
    features.eval()
    sums, counts = None, torch.zeros(num_classes, dtype=torch.float64, device=device)
    for images, labels in batches:
        feats = features(images.to(device)).double()
        labels = labels.to(device)
        if sums is None:
            sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64, device=device)
        sums.index_add_(0, labels, feats)
        counts += torch.bincount(labels, minlength=num_classes)
    features.train(was_training)
    empty = (counts == 0).nonzero().flatten().tolist()
    if sums is None or empty:
        raise ValueError(f'class centroids need at least one training image per class; classes {empty[:10]} '
                         f'({len(empty)} in all) have none.')
    return (sums / counts.unsqueeze(1)).float()


class _Attraction(torch.autograd.Function):
    """``sum_i ||f_i - c_{y_i}||^2 / (2B)``. Features get the exact gradient ``(f_i - c_{y_i}) / B``; centroids
    get the center-loss update ``sum_{i: y_i = j} (c_j - f_i) / ((1 + n_j) B)``, which, as in OLTR's code, is not
    scaled by the incoming gradient (the loss weight does not slow the centroids down)."""

    @staticmethod
    def forward(ctx, feats, labels, centroids):
        ctx.save_for_backward(feats, labels, centroids)
        return (feats - centroids[labels]).pow(2).sum() / (2 * feats.shape[0])

    @staticmethod
    def backward(ctx, grad_output):
        feats, labels, centroids = ctx.saved_tensors
        batch = feats.shape[0]
        diff = centroids[labels] - feats
        counts = 1 + torch.bincount(labels, minlength=centroids.shape[0]).to(feats.dtype)
        grad_centroids = torch.zeros_like(centroids).index_add_(0, labels, diff) / counts.unsqueeze(1) / batch
        return -grad_output * diff / batch, None, grad_centroids


class DiscCentroidsLoss(nn.Module):
    """Discriminative centroids loss: attract each feature to its class centroid, repel it from the others.

    .. math::

        L = \\frac{1}{2B} \\sum_i \\lVert f_i - c_{y_i} \\rVert^2
            + \\lambda \\max\\Big(0,\\; M - \\frac{1}{BK} \\sum_i \\sum_{k \\ne y_i} \\lVert f_i - c_k \\rVert^2\\Big)

    with ``lambda`` = 0.01 and margin ``M`` = 10 (OLTR's code). The attraction's gradient reaching the centroids is
    the center-loss update (see :class:`_Attraction`); the repulsion's is its derivative. OLTR adds ``0.01 L`` to
    the classification loss and steps the centroids with their own SGD (lr 0.01).

    Args:
        margin: ``M``.
        repel_weight: ``lambda``.
    """

    def __init__(self, margin: float = 10.0, repel_weight: float = 0.01):
        super().__init__()
        self.margin = margin
        self.repel_weight = repel_weight

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Loss of features ``(B, D)`` with labels ``(B,)`` against centroids ``(K, D)``."""
        batch, num_classes = feats.shape[0], centroids.shape[0]
        attract = _Attraction.apply(feats, labels, centroids)
        squared = (feats.pow(2).sum(1, keepdim=True) + centroids.pow(2).sum(1) - 2 * feats @ centroids.t())
        others = torch.ones_like(squared).scatter_(1, labels.unsqueeze(1), 0.0)
        repel = torch.clamp(self.margin - (squared * others).sum() / (batch * num_classes), min=0.0)
        return attract + self.repel_weight * repel
