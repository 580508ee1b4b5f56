"""Image folders that fail on a corrupt image instead of silently evaluating another one in its place.

timm's ``ImageDataset`` logs a warning and returns the next image when one cannot be read, which keeps a long
training run alive but makes an evaluation count some images twice and others never. :func:`verify_images` checks
every file before any work (``PIL.Image.verify``: the header and, for PNG, the chunk checksums), and
:class:`StrictImageDataset` raises :class:`CorruptImageError` naming the file when the pixels of an image that
passed that check cannot be decoded.
"""
from typing import Any

from PIL import Image

from .wrapped import WrappedDataset

__all__ = ['CorruptImageError', 'StrictImageDataset', 'verify_images']


class CorruptImageError(ValueError):
    """An image file that cannot be read; the message names the file."""


def _reader(dataset: Any) -> Any:
    reader = getattr(dataset, 'reader', None)
    if reader is None or not hasattr(reader, 'filename'):
        raise ValueError(f'{type(dataset).__name__} has no timm file reader.')
    return reader


def verify_images(dataset: Any) -> int:
    """Open every image of a timm ``ImageDataset`` and verify it; raises :class:`CorruptImageError` for the first
    file that is not a readable image. Returns the number of files checked."""
    reader = _reader(dataset)
    for index in range(len(reader)):
        path = reader.filename(index, absolute=True)
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError) as error:
            raise CorruptImageError(f'corrupt image {path}: {error}') from None
    return len(reader)


class StrictImageDataset(WrappedDataset):
    """A timm ``ImageDataset`` whose unreadable images raise :class:`CorruptImageError` (naming the file).

    ``transform`` and ``targets`` / ``reader`` are those of the wrapped dataset, so timm's loaders and
    ``cfl_timm.data.dataset_targets`` work on it unchanged.
    """

    def __init__(self, dataset: Any) -> None:
        super().__init__(dataset)
        self.reader = _reader(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target, *_ = self.reader[index]
        try:
            image = Image.open(image)
            mode = getattr(self.dataset, 'input_img_mode', 'RGB')
            image = image.convert(mode) if mode else image
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise CorruptImageError(f'corrupt image {self.reader.filename(index, absolute=True)}: {error}') from None
        if self.dataset.transform is not None:
            image = self.dataset.transform(image)
        if target is None:
            target = -1
        elif self.dataset.target_transform is not None:
            target = self.dataset.target_transform(target)
        return image, target
