"""OLTR list-file datasets and the stage-1 transforms.

Benchmarks: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", https://arxiv.org/abs/1904.05160
"""
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional, Union

from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import transforms

__all__ = ['ListDataset', 'train_transform', 'eval_transform']


class ListDataset(Dataset):
    """Images named by an OLTR list: ``root / relative_path`` with its label (-1 for the open set)."""

    def __init__(self, root: Union[str, Path], samples: Sequence[tuple[str, int]],
                 transform: Optional[Callable] = None):
        self.root = Path(root)
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        rel_path, label = self.samples[index]
        with Image.open(self.root / rel_path) as image:
            image = image.convert('RGB')
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def train_transform(image_size: int) -> Callable:
    """OLTR's training transform: RandomResizedCrop, horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0), normalise."""
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


def eval_transform(image_size: int, resize_size: int) -> Callable:
    """OLTR's evaluation transform: Resize(resize_size) + CenterCrop(image_size), normalise."""
    return transforms.Compose([
        transforms.Resize(resize_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])
