"""Refuse an out-of-distribution set that shares images with the in-distribution set.

An OOD AUROC measured with some in-distribution images among the "OOD" samples is biased towards 0.5, silently
(torch-uncertainty's users asked for OOD sets that truly exclude in-distribution images). Two images are the same
when their **decoded pixels** are: the SHA-256 of the RGB pixels and the size. That catches a copied file, the same
image re-saved losslessly under another name or format, and an array-backed set (SVHN's ``.mat``) holding a folder's
image; it does not catch a re-compressed JPEG, a resized or a cropped copy (near duplicates need perceptual hashing,
which this check does not attempt). Hashing file bytes instead would miss every re-encoded or array-backed copy.
"""
import hashlib
from typing import Any

from PIL import Image

__all__ = ['check_disjoint_images', 'image_digest']

_SHOWN = 3


def image_digest(image: Image.Image) -> str:
    """SHA-256 of an image's size and RGB pixels (its mode and file format do not matter)."""
    rgb = image.convert('RGB')
    digest = hashlib.sha256(f'{rgb.width}x{rgb.height}:'.encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def _describe(dataset: Any, index: int, name: str) -> str:
    """The file of sample ``index`` when the dataset reads files (timm's folder reader), else ``name[index]``."""
    reader = getattr(dataset, 'reader', None)
    if reader is not None and hasattr(reader, 'filename'):
        return str(reader.filename(index, absolute=True))
    return f'{name}[{index}]'


def _digest_at(dataset: Any, index: int, name: str) -> str:
    image = dataset[index][0]
    if not isinstance(image, Image.Image):
        raise ValueError(f'{name}: sample {index} is a {type(image).__name__}, not a PIL image; check for shared '
                         'images before a transform is set.')
    return image_digest(image)


def check_disjoint_images(in_dataset: Any, ood_dataset: Any, in_name: str, ood_name: str) -> None:
    """Raise ``ValueError`` when any image of ``ood_dataset`` has the same decoded pixels as one of ``in_dataset``.

    Both datasets must return ``(PIL image, target)`` (no transform set yet). The message names the OOD set, the
    number of shared images and a few of them with their in-distribution twin (files when the dataset reads files).

    Args:
        in_dataset: The in-distribution (evaluated) set.
        ood_dataset: The out-of-distribution set.
        in_name: How to name the in-distribution set in the message (e.g. ``split 'val'``).
        ood_name: How to name the OOD set (e.g. ``--ood-data-dir DIR``).
    """
    known: dict[str, int] = {}
    for index in range(len(in_dataset)):
        known.setdefault(_digest_at(in_dataset, index, in_name), index)
    shared = []
    for index in range(len(ood_dataset)):
        twin = known.get(_digest_at(ood_dataset, index, ood_name))
        if twin is not None:
            shared.append((index, twin))
    if shared:
        shown = '; '.join(f'{_describe(ood_dataset, i, ood_name)} = {_describe(in_dataset, j, in_name)}'
                          for i, j in shared[:_SHOWN])
        raise ValueError(f'OOD set {ood_name} shares {len(shared)} image(s) with the in-distribution set {in_name} '
                         f'(identical decoded pixels), e.g. {shown}: an OOD set must exclude in-distribution '
                         'images; remove them.')
