"""One dataset factory for train.py and validate.py: timm's ``create_dataset``, the offline ``sklearn/digits`` set,
and the verified folder reader.

Both entry points read a split through :func:`build_dataset`, so a split means the same images in training and in
evaluation (which is what lets validate.py read back the held-out split a train.py run carved, by its indices).
:func:`dataset_kwargs` is the argparse adapter; the factory itself takes explicit keywords.
"""
import argparse
from typing import Any, Optional

from timm.data import create_dataset

from .digits import DigitsDataset, is_digits_dataset
from .strict import strict_folder_dataset

__all__ = ['build_dataset', 'dataset_kwargs']


def build_dataset(name: str, *, root: Optional[str], split: str, is_training: bool = False, class_map: str = '',
                  download: bool = False, batch_size: int = 1, seed: int = 42, repeats: int = 0,
                  input_img_mode: str = 'RGB', input_key: Optional[str] = None, target_key: Optional[str] = None,
                  num_samples: Optional[int] = None, trust_remote_code: bool = False,
                  skip_bad_images: bool = False, verify_workers: int = 0, image_check: str = 'decode') -> Any:
    """The named split as a dataset; folder images are verified first (see :func:`strict_folder_dataset`):
    unreadable ones are refused (or left out with ``skip_bad_images``), never replaced by another image.

    Args:
        name: timm dataset name ('' for an image folder, ``torch/cifar10``, ``sklearn/digits``, ...).
        root: Dataset root folder (or archive).
        split: Split name (timm's synonyms apply to folders).
        is_training: timm's training flag (iterable datasets shuffle; ``repeats`` / ``num_samples`` apply).
        class_map: Class map file of a folder dataset.
        download: Let a torchvision dataset download itself.
        batch_size: Batch size (iterable datasets).
        seed: Seed (iterable datasets).
        repeats: Epoch repeats (iterable training datasets).
        input_img_mode: PIL image mode of the samples.
        input_key: Dataset key of the images (hfds / wds).
        target_key: Dataset key of the labels (hfds / wds).
        num_samples: Samples of an iterable dataset.
        trust_remote_code: Let a Hugging Face dataset run its repository's code.
        skip_bad_images: Leave out unreadable folder images instead of refusing the split.
        verify_workers: Processes that share the check of a large image folder (the loader's ``-j``).
        image_check: How much of each folder image the check reads ('decode' or 'header').

    Raises:
        ValueError: the split cannot be read (no network for a download, a corrupt set, no such split).
    """
    if is_digits_dataset(name):
        return DigitsDataset(split, image_mode=input_img_mode)
    try:
        dataset = create_dataset(
            name, root=root, split=split, is_training=is_training, class_map=class_map, download=download,
            batch_size=batch_size, seed=seed, repeats=repeats, input_img_mode=input_img_mode, input_key=input_key,
            target_key=target_key, num_samples=num_samples, trust_remote_code=trust_remote_code)
    except (OSError, RuntimeError, AssertionError) as e:  # no network, a corrupt torchvision set, no such split
        raise ValueError(f"Could not load the {split!r} split of dataset {name or 'folder'!r} from {root!r}: "
                         f'{e}') from e
    return strict_folder_dataset(dataset, split, skip_bad_images=skip_bad_images, num_workers=verify_workers,
                                 image_check=image_check)


def dataset_kwargs(args: argparse.Namespace, is_training: bool = False, input_img_mode: str = 'RGB') -> dict[str, Any]:
    """:func:`build_dataset`'s keywords (all but ``split`` / ``is_training``) from train.py's or validate.py's
    arguments; ``input_img_mode`` is the default when ``--input-img-mode`` is unset. The iterable-dataset sizes
    (``--epoch-repeats``, ``--train-num-samples``, ``--val-num-samples``) are train.py's only."""
    num_samples = getattr(args, 'train_num_samples' if is_training else 'val_num_samples', None)
    return dict(name=args.dataset, root=args.data_dir or args.data, class_map=args.class_map,
                download=args.dataset_download, batch_size=args.batch_size, seed=args.seed,
                repeats=getattr(args, 'epoch_repeats', 0) if is_training else 0,
                input_img_mode=args.input_img_mode or input_img_mode, input_key=args.input_key,
                target_key=args.target_key, num_samples=num_samples,
                trust_remote_code=args.dataset_trust_remote_code, skip_bad_images=args.skip_bad_images,
                verify_workers=args.workers, image_check=args.image_check)
