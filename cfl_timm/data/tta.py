"""Deterministic test-time augmentation (TTA) views and the averaged softmax over them.

The views follow the usual CIFAR / ImageNet practice (e.g. K. He et al., "Deep Residual Learning for Image
Recognition", https://arxiv.org/abs/1512.03385, and A. Krizhevsky et al. 2012 average predictions over flips and
shifted crops): view 0 is the image as evaluated, view 1 its horizontal flip, then small shifts of the image, each
unflipped and flipped. The predictions of V views are combined by averaging their softmax probabilities.
"""
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ['MAX_TTA_VIEWS', 'TTAView', 'average_softmax', 'tta_views']

# Shift directions after the identity: right, left, down, up, then the four diagonals.
_DIRECTIONS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))
MAX_TTA_VIEWS = 2 * len(_DIRECTIONS)


@dataclass(frozen=True)
class TTAView:
    """One view of a normalised image batch (N, C, H, W): the content shifted by ``shift`` = (dy, dx) pixels
    (down / right positive; the uncovered border is 0, i.e. the dataset mean after normalisation), then mirrored
    left-right when ``flip``."""
    flip: bool = False
    shift: tuple[int, int] = (0, 0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        dy, dx = self.shift
        height, width = images.shape[-2:]
        if abs(dy) >= height or abs(dx) >= width:
            raise ValueError(f'TTA shift {self.shift} does not fit an image of {height}x{width} pixels.')
        if dy or dx:
            shifted = torch.zeros_like(images)
            shifted[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
                images[..., max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
            images = shifted
        return images.flip(-1) if self.flip else images

    def describe(self) -> str:
        parts = ([f'shift {self.shift}'] if any(self.shift) else []) + (['hflip'] if self.flip else [])
        return ' + '.join(parts) or 'identity'


def tta_views(num_views: int, shift: int = 2) -> list[TTAView]:
    """The first ``num_views`` views: identity, flip, then (shift, unflipped), (shift, flipped) over right, left,
    down, up and the four diagonals, each by ``shift`` pixels.

    Args:
        num_views: 1 to ``MAX_TTA_VIEWS`` (18).
        shift: Shift in pixels (>= 1).
    """
    if isinstance(num_views, bool) or not 1 <= int(num_views) <= MAX_TTA_VIEWS or int(num_views) != num_views:
        raise ValueError(f'the number of TTA views must be an integer in [1, {MAX_TTA_VIEWS}], got {num_views}.')
    if isinstance(shift, bool) or int(shift) != shift or shift < 1:
        raise ValueError(f'the TTA shift must be an integer >= 1 pixel, got {shift}.')
    views = [TTAView(flip=flip, shift=(dy * shift, dx * shift)) for dy, dx in _DIRECTIONS for flip in (False, True)]
    return views[:int(num_views)]


def average_softmax(view_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """log of the mean over views of softmax(z_v), from logits (V, N, K), in float64.

    The result is a valid logit tensor: its softmax is the averaged probability. With one view the logits are
    returned unchanged (averaging one softmax is that softmax), so one-view TTA is the plain evaluation exactly.
    """
    view_logits = torch.stack(list(view_logits)) if not torch.is_tensor(view_logits) else view_logits
    if view_logits.dim() != 3 or view_logits.shape[0] == 0:
        raise ValueError(f'need view logits of shape (V, N, K) with V >= 1, got {tuple(view_logits.shape)}.')
    if view_logits.shape[0] == 1:
        return view_logits[0]
    log_probs = torch.log_softmax(view_logits.double(), dim=-1)
    return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(view_logits.shape[0]),
                                                                      dtype=torch.float64))
