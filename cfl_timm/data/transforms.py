"""The standard CIFAR training transform: a random 32 px crop of the image zero-padded by 4, and a flip.

K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
https://arxiv.org/abs/1512.03385, section 4.2: "4 pixels are padded on each side, and a 32x32 crop is
randomly sampled from the padded image or its horizontal flip". The calibration papers train with it
(Mukhoti et al. 2020, https://arxiv.org/abs/2002.09437; Liu et al. 2022, https://arxiv.org/abs/2111.15430).

It replaces only the geometric first stage of timm's training transform (``RandomResizedCrop`` + flips);
timm's own second and third stages follow unchanged (``--aa`` RandAugment / AutoAugment, tensor conversion,
normalisation, ``--reprob`` random erasing, or their prefetcher-side versions), so those flags keep their
timm meaning. ``train.py --train-transform cifar`` selects it, ``timm`` (the default) keeps timm's.

Evaluation at 32 px needs no crop: the CIFAR networks' pretrained config has ``crop_pct`` 1.0, which makes
timm's evaluation transform an identity resize (32 -> 32) instead of a resize to 36 and a center crop.
"""
import argparse
from typing import Any, Optional, Union

from timm.data.transforms_factory import transforms_imagenet_train
from torchvision import transforms

from .constants import CIFAR10_MEAN, CIFAR10_STD

__all__ = ['TRAIN_TRANSFORMS', 'create_cifar_train_transform', 'cifar_transform_kwargs']

# train.py --train-transform choices: timm's RandomResizedCrop pipeline, or the CIFAR pad-and-crop one.
TRAIN_TRANSFORMS = ('timm', 'cifar')


def create_cifar_train_transform(
        img_size: Union[int, tuple[int, int]] = 32,
        padding: int = 4,
        hflip: float = 0.5,
        vflip: float = 0.,
        no_aug: bool = False,
        auto_augment: Optional[str] = None,
        color_jitter: Optional[float] = None,
        interpolation: str = 'bilinear',
        mean: tuple[float, ...] = CIFAR10_MEAN,
        std: tuple[float, ...] = CIFAR10_STD,
        re_prob: float = 0.,
        re_mode: str = 'const',
        re_count: int = 1,
        re_num_splits: int = 0,
        use_prefetcher: bool = False,
) -> transforms.Compose:
    """``RandomCrop(img_size, padding)`` with zero fill and the flips, then timm's colour and final stages.

    Args:
        img_size: Output size (int or (height, width)); the image is expected at this size already.
        padding: Zero pixels added on each side before the random crop (4 in He et al.).
        hflip: Horizontal flip probability.
        vflip: Vertical flip probability.
        no_aug: No augmentation at all: only timm's tensor conversion / normalisation stage.
        auto_augment: timm AutoAugment / RandAugment policy string (``--aa``), or None.
        color_jitter: timm colour jitter factor, or None for none (the CIFAR recipe has none).
        interpolation: Interpolation of the AutoAugment geometric ops.
        mean: Normalisation mean (CIFAR-10 by default).
        std: Normalisation std.
        re_prob: timm random-erasing probability (applied here unless ``use_prefetcher``).
        re_mode: Random-erasing fill mode.
        re_count: Random-erasing regions per image.
        re_num_splits: Random-erasing augmentation splits.
        use_prefetcher: timm's prefetcher normalises (and erases) on the device: end with a uint8 tensor.

    Raises:
        ValueError: A negative padding, a probability outside [0, 1], or a non-positive size.
    """
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f'img_size must be a positive int or (height, width), got {img_size!r}.')
    if padding < 0:
        raise ValueError(f'padding must be >= 0, got {padding}.')
    for name, p in (('hflip', hflip), ('vflip', vflip)):
        if not 0. <= p <= 1.:
            raise ValueError(f'{name} must be a probability in [0, 1], got {p}.')
    _, secondary, final = transforms_imagenet_train(
        size, hflip=0., vflip=0., color_jitter=color_jitter, auto_augment=None if no_aug else auto_augment,
        interpolation=interpolation, mean=mean, std=std, re_prob=0. if no_aug else re_prob, re_mode=re_mode,
        re_count=re_count, re_num_splits=re_num_splits, use_prefetcher=use_prefetcher, separate=True)
    if no_aug:
        return transforms.Compose(list(final.transforms))
    primary = [transforms.RandomCrop(size, padding=padding, fill=0, padding_mode='constant')]
    if hflip > 0.:
        primary.append(transforms.RandomHorizontalFlip(p=hflip))
    if vflip > 0.:
        primary.append(transforms.RandomVerticalFlip(p=vflip))
    return transforms.Compose(primary + list(secondary.transforms) + list(final.transforms))


def cifar_transform_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """train.py's augmentation flags as :func:`create_cifar_train_transform` keywords.

    ``--hflip``, ``--vflip``, ``--no-aug``, ``--aa``, ``--reprob`` / ``--remode`` / ``--recount`` /
    ``--resplit`` apply; ``--scale``, ``--ratio`` (RandomResizedCrop) and ``--color-jitter`` (timm's default
    0.4, not part of the CIFAR recipe) do not. Size, mean, std and the prefetcher come from the data config.
    """
    interpolation = args.train_interpolation if args.train_interpolation not in (None, '', 'random') else 'bilinear'
    return dict(
        padding=args.crop_padding, hflip=args.hflip, vflip=args.vflip, no_aug=args.no_aug, auto_augment=args.aa,
        interpolation=interpolation, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        re_num_splits=(args.aug_splits or 2) if args.resplit else 0)
