"""An offline real-image dataset: scikit-learn's bundled handwritten digits as RGB PIL images.

Source: the UCI "Optical Recognition of Handwritten Digits" test set shipped inside scikit-learn
(``sklearn.datasets.load_digits``: 1,797 grey 8x8 images, 10 classes). Nothing is downloaded, so the quick
start and the tests train on real images without a network.
"""
from collections.abc import Callable
from typing import Optional

import numpy as np
import torch.utils.data
from PIL import Image

__all__ = ['DIGITS_DATASET_NAME', 'DigitsDataset', 'digits_split', 'is_digits_dataset']

DIGITS_DATASET_NAME = 'sklearn/digits'
_SPLITS = {'train': 'train', 'training': 'train', 'val': 'val', 'validation': 'val', 'test': 'val'}


def is_digits_dataset(name: Optional[str]) -> bool:
    """Whether a ``--dataset`` name selects :class:`DigitsDataset`."""
    return (name or '').lower() == DIGITS_DATASET_NAME


def digits_split(split: str) -> str:
    """The split ('train' or 'val') that a split name selects; ValueError naming the valid names otherwise."""
    if split not in _SPLITS:
        raise ValueError(f"Unknown split {split!r} for {DIGITS_DATASET_NAME}, expected one of {sorted(_SPLITS)}.")
    return _SPLITS[split]


class DigitsDataset(torch.utils.data.Dataset):
    """scikit-learn's digits, upsampled to ``image_size`` RGB PIL images, with a fixed stratified split.

    The split puts every ``val_every``-th image of each class (in dataset order) into validation (default 5:
    1,442 train / 355 val images), so it is deterministic and class-balanced without any random state.

    Args:
        split: 'train' or 'val' ('training', 'validation', 'test' accepted).
        image_size: Side of the square RGB images (bilinear upsampling from 8x8).
        transform: Applied to the PIL image (timm's loaders set it).
        val_every: Period of the validation selection within each class.
        image_mode: PIL mode of the returned images ('RGB' by default; 'L' for one-channel models).
    """

    def __init__(
            self,
            split: str = 'train',
            image_size: int = 32,
            transform: Optional[Callable] = None,
            val_every: int = 5,
            image_mode: str = 'RGB',
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"Unknown split {split!r} for {DIGITS_DATASET_NAME}, expected one of {sorted(_SPLITS)}.")
        from sklearn.datasets import load_digits  # optional dependency (the 'demo' extra)
        digits = load_digits()
        targets = digits.target.astype(np.int64)
        rank_in_class = np.zeros(len(targets), dtype=np.int64)
        seen: dict[int, int] = {}
        for i, t in enumerate(targets):
            rank_in_class[i] = seen.get(int(t), 0)
            seen[int(t)] = rank_in_class[i] + 1
        is_val = rank_in_class % val_every == val_every - 1
        keep = is_val if _SPLITS[split] == 'val' else ~is_val
        self.images = (digits.images[keep] * (255.0 / 16.0)).round().astype(np.uint8)
        self.targets = targets[keep]
        self.classes = [str(c) for c in range(10)]
        self.image_size = image_size
        self.image_mode = image_mode
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode='L')
        image = image.resize((self.image_size, self.image_size), Image.BILINEAR).convert(self.image_mode)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])
