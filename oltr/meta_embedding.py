"""OLTR's meta-embedding classifier: a direct feature enriched by a memory of class centroids, scaled by its
reachability to the memory, and classified by a cosine-norm classifier.

Paper: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019,
https://arxiv.org/abs/1904.05160 (section 3.1, "dynamic meta-embedding")
"""
import math

import torch
import torch.nn as nn

__all__ = ['CosNormClassifier', 'MetaEmbeddingClassifier']


def _distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(B, K)``, computed from the differences (cdist's default matmul form loses digits
    when a feature lies close to a centroid, which is where the reachability is largest)."""
    return torch.cdist(x, centroids, compute_mode='donot_use_mm_for_euclid_dist')


class CosNormClassifier(nn.Module):
    """Cosine-norm classifier with a squashed input norm.

    .. math::

        z_k = s \\, \\frac{\\lVert x \\rVert}{1 + \\lVert x \\rVert} \\,
              \\frac{x^\\top w_k}{\\lVert x \\rVert \\, \\lVert w_k \\rVert}

    The logit is the cosine between ``x`` and the class weight ``w_k``, times ``s`` and a factor in [0, 1) that
    grows with ``||x||`` (so a feature far from the origin, e.g. one with high reachability, gets sharper logits).

    Args:
        in_dim: Feature width.
        num_classes: Number of classes.
        scale: ``s`` (OLTR: 16).
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=1, keepdim=True)
        squashed = x / (1 + norm)  # = norm / (1 + norm) * x / norm, and finite at x = 0
        weight = self.weight / self.weight.norm(dim=1, keepdim=True)
        return self.scale * squashed @ weight.t()


class MetaEmbeddingClassifier(nn.Module):
    """Meta-embedding over a memory of class centroids ``c_1 .. c_K``, then :class:`CosNormClassifier`.

    .. math::

        \\gamma = \\frac{r}{\\min_k \\lVert x - c_k \\rVert}, \\quad
        o = \\mathrm{softmax}(H x + b_H), \\quad
        m = \\sum_k o_k c_k, \\quad
        e = \\tanh(S x + b_S), \\quad
        x' = \\gamma \\, (x + e \\odot m), \\quad
        \\text{logits} = \\mathrm{CosNorm}(x')

    ``gamma`` is the reachability of ``x`` to the memory (``r`` = 10), ``H`` the hallucinator (initialised from the
    stage-1 linear classifier), ``e`` the concept selector. The centroids are a parameter of this module, so they
    are saved with it; the classifier reads them without gradient (they are trained only by the discriminative
    centroids loss, :class:`oltr.centroids.DiscCentroidsLoss`).

    Args:
        feature_dim: Feature width ``D``.
        num_classes: Number of classes ``K``.
        reach_scale: ``r`` (OLTR: 10).
        cos_scale: Scale of the cosine-norm classifier (OLTR: 16).
    """

    def __init__(self, feature_dim: int, num_classes: int, reach_scale: float = 10.0, cos_scale: float = 16.0):
        super().__init__()
        self.reach_scale = reach_scale
        self.centroids = nn.Parameter(torch.zeros(num_classes, feature_dim))
        self.hallucinator = nn.Linear(feature_dim, num_classes)
        self.selector = nn.Linear(feature_dim, feature_dim)
        self.cosnorm = CosNormClassifier(feature_dim, num_classes, scale=cos_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centroids = self.centroids.detach()
        reachability = self.reach_scale / _distances(x, centroids).min(dim=1, keepdim=True).values
        memory = torch.softmax(self.hallucinator(x), dim=1) @ centroids
        selector = torch.tanh(self.selector(x))
        return self.cosnorm(reachability * (x + selector * memory))
