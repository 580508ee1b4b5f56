"""Compatibility of timm's RandAugment with Pillow >= 11: posterize with 0 bits.

timm's 'PosterizeIncreasing' (the ``inc1`` RandAugment ops of the published recipe ``rand-m9-mstd0.5-inc1``)
maps magnitude 10 to keep 0 bits. Older Pillow zeroed the image for 0 bits (a LUT with an all-zero mask);
Pillow 11+ raises ``ValueError: bits must be between or equal to 1 and 8`` from inside the data loader, which
stops training at a random batch. :func:`patch_timm_posterize` restores the zero-bit behaviour in timm's
op table without changing any other case.
"""
from PIL import Image, ImageOps

__all__ = ['patch_timm_posterize', 'posterize']


def posterize(img: Image.Image, bits_to_keep: int, **__) -> Image.Image:
    """timm's posterize, with ``bits_to_keep <= 0`` giving an all-zero image as Pillow < 11 did."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def patch_timm_posterize() -> None:
    """Point timm's posterize ops at :func:`posterize` (idempotent; affects transforms built afterwards)."""
    from timm.data import auto_augment

    for name in ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'):
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = posterize
