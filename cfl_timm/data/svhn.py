"""SVHN (Netzer et al., "Reading Digits in Natural Images with Unsupervised Feature Learning", NIPS workshop 2011)
read from the user's own ``<split>_32x32.mat`` files through torchvision's reader, never downloaded.

The usual out-of-distribution set of CIFAR models (D. Hendrycks and K. Gimpel, ICLR 2017,
https://arxiv.org/abs/1610.02136). torchvision's ``SVHN`` checks each file against the MD5 of the published one; a
file that differs (a subset, a re-export) is refused with that reason unless ``verify_md5=False``.
"""
import os
from collections.abc import Callable
from typing import Optional

from torchvision.datasets import SVHN

__all__ = ['SVHN_SPLITS', 'svhn_dataset', 'svhn_file']

SVHN_SPLITS = tuple(SVHN.split_list)


def svhn_file(root: str | os.PathLike, split: str = 'test') -> str:
    """The path of a split's ``.mat`` file under ``root`` (``test_32x32.mat`` for the test split)."""
    if split not in SVHN_SPLITS:
        raise ValueError(f'unknown SVHN split {split!r}; choose from {", ".join(SVHN_SPLITS)}.')
    return os.path.join(root, SVHN.split_list[split][1])


class _UnverifiedSVHN(SVHN):
    """torchvision's reader with the MD5 check reduced to the file's existence."""

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


def svhn_dataset(root: str | os.PathLike, split: str = 'test', transform: Optional[Callable] = None,
                 verify_md5: bool = True) -> SVHN:
    """torchvision's ``SVHN`` of ``split`` from ``root/<split>_32x32.mat`` (labels 0-9; the file's 10 is digit 0).

    Args:
        root: The folder holding the ``.mat`` file.
        split: 'train', 'test' or 'extra'.
        transform: Applied to each RGB PIL image.
        verify_md5: Require the published file (torchvision's MD5 check).

    Raises:
        ValueError: The file is missing, or differs from the published one with ``verify_md5``, or cannot be read.
    """
    path = svhn_file(root, split)
    if not os.path.isfile(path):
        raise ValueError(f'SVHN {split} file not found: {path} (nothing is downloaded; put the published '
                         f'{os.path.basename(path)} there).')
    reader = SVHN if verify_md5 else _UnverifiedSVHN
    try:
        return reader(str(root), split=split, transform=transform, download=False)
    except RuntimeError:
        raise ValueError(f'{path} differs from the published SVHN {split} file (MD5 check of torchvision); use '
                         'verify_md5=False (--ood-no-verify) to read it anyway.') from None
    except Exception as error:  # scipy's MatReadError, a missing X / y (KeyError), a truncated file (OSError)
        raise ValueError(f'{path} is not a readable SVHN .mat file (needs the arrays X and y): {error}') from None
