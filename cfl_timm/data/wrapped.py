"""A dataset view over another dataset that shares its transform.

timm's loader factory assigns ``dataset.transform`` after the dataset is built; a view (a subset, a strict reader)
must hand that assignment to the dataset it wraps so the wrapped dataset's own pipeline keeps being used.
"""
from typing import Any

import torch.utils.data

__all__ = ['WrappedDataset']


class WrappedDataset(torch.utils.data.Dataset):
    """Base of dataset views: ``self.dataset`` is the wrapped dataset; ``transform`` reads and writes its own."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value) -> None:
        self.dataset.transform = value
