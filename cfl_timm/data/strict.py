"""Image folders checked where they enter: no silent substitution, no shifted labels, no symlink loops.

timm's ``ImageDataset`` logs a warning and returns the next image when one cannot be read, which keeps a long
training run alive but makes an evaluation count some images twice and others never; its folder reader follows
symlinks without noticing a loop (the dataset repeats many times) and numbers the classes of each split on its
own (a class missing from one split shifts every later label). Before any work:

* :func:`check_folder_tree` walks a split folder and refuses a symlink loop, naming it;
* :func:`check_class_folders` refuses a class folder without an image (timm would drop it silently);
* :func:`check_same_classes` compares the class folders of every split a run reads;
* :func:`verify_images` opens and decodes every image (zero-byte, truncated, not-an-image and over-sized files
  are listed; ``image_check='header'`` reads the structure only, leaving a truncated image to fail when loaded)
  and :func:`strict_folder_dataset` refuses them, or drops them when asked, counting them;
* :class:`StrictImageDataset` raises :class:`CorruptImageError` naming the file if an image that passed those
  checks still cannot be decoded later, instead of substituting another one.
"""
import logging
import multiprocessing
import os
import sys
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Optional

from PIL import Image
from timm.data.dataset_factory import _search_split  # timm's split-folder search, so both read one folder

from .digits import is_digits_dataset
from .wrapped import WrappedDataset

__all__ = ['CorruptImageError', 'DATASET_PREFIXES', 'StrictImageDataset', 'MAX_IMAGE_PIXELS', 'check_class_folders',
           'check_class_map', 'check_dataset_name', 'check_folder_tree', 'check_split_tree', 'check_same_classes',
           'IMAGE_CHECKS', 'is_image_folder_name', 'SPLIT_FOLDER_NAMES', 'split_folder', 'strict_folder_dataset',
           'verify_images']

_logger = logging.getLogger(__name__)

# Pillow's own decompression-bomb threshold (about 89 megapixels); larger images are refused with the limit named.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
_LISTED = 5  # bad files named in one message
# How much of each image the check reads: 'decode' all its pixels (finds a truncated JPEG), 'header' its structure
# only (Image.verify: empty, not-an-image and over-sized files; a truncated image then fails when it is loaded,
# naming the file). The header check is for image sets too large to decode at every start.
IMAGE_CHECKS = ('decode', 'header')
# Below this many images one process checks them faster than starting others would gain (about 0.1 ms an image
# for CIFAR's 32 px JPEGs, 2-5 ms for ImageNet's).
_PARALLEL_FROM = 4096
_CHUNK_MIN = 256  # images a process checks per task


class CorruptImageError(ValueError):
    """An image file that cannot be read; the message names the file."""


def _reader(dataset: Any) -> Any:
    reader = getattr(dataset, 'reader', None)
    if reader is None or not hasattr(reader, 'filename'):
        raise ValueError(f'{type(dataset).__name__} has no timm file reader.')
    return reader


def is_image_folder_name(name: str) -> bool:
    """True when timm's ``create_dataset(name, ...)`` reads a folder (or tar) of images: not the offline digits,
    a torchvision or a remote (``tfds/``, ``hfds/``, ``hfids/``, ``wds/``) dataset."""
    return not is_digits_dataset(name) and not name.startswith(('torch/', 'tfds/', 'hfds/', 'hfids/', 'wds/'))


# Prefixes of timm's create_dataset ('torch/cifar10', 'hfds/...'); a name without '/' is a folder (or tar) dataset.
DATASET_PREFIXES = ('torch', 'hfds', 'hfids', 'tfds', 'wds')


def check_dataset_name(name: str) -> None:
    """Raise ``ValueError`` for a ``--dataset`` name with a prefix timm does not know (``bogus/x``): timm reads
    such a name as a plain image folder, silently."""
    prefix, sep, _ = (name or '').partition('/')
    if sep and not is_digits_dataset(name) and prefix.lower() not in DATASET_PREFIXES:
        raise ValueError(f'--dataset {name!r}: unknown dataset prefix {prefix + "/"!r}; give '
                         f'{", ".join(p + "/NAME" for p in DATASET_PREFIXES)}, sklearn/digits, or no prefix for an '
                         'image folder.')


def is_folder_dataset(dataset: Any) -> bool:
    """True for a timm ``ImageDataset`` over a folder reader (file paths and ``samples``)."""
    reader = getattr(dataset, 'reader', None)
    return reader is not None and hasattr(reader, 'filename') and hasattr(reader, 'samples')


def check_folder_tree(folder: str) -> None:
    """Walk ``folder`` as timm does (following symlinks) and raise ``ValueError`` naming the first folder reached a
    second time (a symlink loop, or two links to one folder), before timm's reader repeats it."""
    seen: dict[str, str] = {}
    for root, subdirs, _ in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            raise ValueError(f'symlink loop in the dataset: {root} is {seen[real]} again (timm would read its images '
                             'repeatedly); remove the link.')
        seen[real] = root
        subdirs.sort()


# timm's split folder names (its synonyms of train and validation, and test): never a class of a split.
SPLIT_FOLDER_NAMES = ('train', 'training', 'val', 'valid', 'validation', 'eval', 'evaluation', 'test')


def split_folder(root: str, split: str) -> str:
    """The folder timm reads for ``split`` of the folder dataset at ``root`` (its own search, synonyms
    included)."""
    return _search_split(root, split)


def check_split_tree(root: str, split: str, class_map: str = '') -> None:
    """:func:`check_folder_tree`, :func:`check_class_folders` and :func:`check_class_map` on the folder timm reads
    for ``split`` of the folder dataset at ``root`` (its own split-folder search, synonyms included): other folders
    beside it, e.g. a link to the same images under another split name, are not that split's concern."""
    folder = split_folder(root, split)
    check_folder_tree(folder)
    check_class_folders(folder)
    if class_map:
        check_class_map(folder, class_map)


def check_class_map(folder: str, class_map: str) -> None:
    """Raise ``ValueError`` naming ``--class-map`` when timm cannot read it (a ``.txt`` of names, one per line, or a
    ``.pkl`` dict) or when class folders of ``folder`` are missing from it: timm drops their images silently. Names
    without a folder are fine (a class map of a superset, e.g. ImageNet's for ImageNet-A)."""
    import pickle

    from timm.data.readers.class_map import load_class_map
    if os.path.splitext(class_map)[1].lower() not in ('.txt', '.pkl'):
        raise ValueError(f'--class-map {class_map}: timm reads a .txt file (one class name per line) or a .pkl '
                         'dict of name to index.')
    try:
        names = load_class_map(class_map)
    except (OSError, UnicodeDecodeError, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f'--class-map {class_map} cannot be read: {e or type(e).__name__}') from None
    folders = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith('.'))
    unmapped = [name for name in folders if name not in names]
    if unmapped:
        raise ValueError(f'--class-map {class_map} lacks the class folder(s) {_listed(unmapped)} of {folder}: timm '
                         'would drop their images silently; add them to the map or remove the folders.')


def check_class_folders(folder: str) -> None:
    """Raise ``ValueError`` naming the class folders of a split folder that hold no image (timm would drop such a
    class silently and number the others without it) or the images lying directly in it (timm would make them a
    class named '') or class folders named like splits (``train``, ``val``: the folder is a dataset root). Hidden
    entries (``.git``, ``.DS_Store``) are not classes."""
    from timm.data import get_img_extensions
    extensions = tuple(get_img_extensions())
    empty, loose, classes = [], [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith('.'):
            continue
        if not entry.is_dir():
            if entry.name.lower().endswith(extensions):
                loose.append(entry.name)
            continue
        classes.append(entry.name)
        if not any(name.lower().endswith(extensions)
                   for _, _, names in os.walk(entry.path, followlinks=True) for name in names):
            empty.append(entry.name)
    splits = [name for name in classes if name.lower() in SPLIT_FOLDER_NAMES]
    if splits:  # e.g. an empty split name, or --data-dir one level too high: the splits would become classes
        raise ValueError(f'{folder}: its class folders {_listed(splits)} are named like dataset splits; this is a '
                         'dataset root, not a split folder: check --data-dir and the split name.')
    if loose:  # timm would make them a class of their own, named ''
        raise ValueError(f'{folder}: image(s) {_listed(loose)} lie directly in the split folder; move each into the '
                         'folder of its class.')
    if empty:
        raise ValueError(f'{folder}: class folder(s) {_listed(empty)} hold no image (extensions '
                         f'{", ".join(extensions)}); timm would drop the class silently: add its images or remove it.')


def _class_names(dataset: Any) -> Optional[set]:
    mapping = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    return set(mapping) if mapping else None


def check_same_classes(splits: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless every folder split in ``splits`` (name -> timm dataset) has the same class
    folders; the message names the split, its folder and the missing / extra classes. Splits without class folders
    (torchvision, digits) are not compared."""
    named = [(name, ds, _class_names(ds)) for name, ds in splits.items()]
    named = [(name, ds, classes) for name, ds, classes in named if classes is not None]
    if len(named) < 2:
        return
    ref_name, ref_ds, ref = named[0]
    for name, ds, classes in named[1:]:
        missing, extra = sorted(ref - classes), sorted(classes - ref)
        if missing or extra:
            parts = ([f'missing {_listed(missing)}'] if missing else []) + ([f'extra {_listed(extra)}'] if extra
                                                                             else [])
            raise ValueError(f'split {name!r} ({ds.reader.root}) has different class folders from split {ref_name!r} '
                             f'({ref_ds.reader.root}): {"; ".join(parts)}; the labels would not match.')


def _listed(items: list) -> str:
    shown = ', '.join(map(str, items[:_LISTED]))
    return f'{len(items)} ({shown}{", ..." if len(items) > _LISTED else ""})'


def _image_problem(path: str, max_pixels: int, decode: bool = True) -> Optional[str]:
    """Why the file at ``path`` is not a usable image, or None. ``verify`` checks the structure (and PNG
    checksums) but not a truncated JPEG, so with ``decode`` the pixels are decoded too."""
    try:
        if os.path.getsize(path) == 0:
            return 'empty file'
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                return f'{image.width}x{image.height} pixels, above the limit of {max_pixels}'
            image.verify()
        if decode:
            with Image.open(path) as image:
                image.load()
    except Image.DecompressionBombError as error:
        return f'{error} (limit {max_pixels} pixels)'
    except (OSError, SyntaxError, ValueError) as error:
        return str(error) or type(error).__name__
    return None


def _problems(paths: list[str], max_pixels: int, decode: bool) -> list[Optional[str]]:
    return [_image_problem(path, max_pixels, decode) for path in paths]


def verify_images(dataset: Any, max_pixels: int = MAX_IMAGE_PIXELS, num_workers: int = 0,
                  image_check: str = 'decode') -> list[tuple[int, str, str]]:
    """Open and verify every image of a timm folder ``ImageDataset``, and decode it (``image_check='decode'``).

    Args:
        dataset: The timm folder dataset.
        max_pixels: Largest accepted width x height.
        num_workers: Processes that share the check (train.py and validate.py pass ``-j``); one process checks
            a split of fewer than 4096 images, or with ``num_workers`` <= 1. Decoding holds the interpreter lock
            for small images, so threads do not help.
        image_check: 'decode' (every pixel) or 'header' (the structure only; see ``IMAGE_CHECKS``).

    Returns:
        ``(index, path, problem)`` for each unusable file (empty, truncated, not an image, more than
        ``max_pixels`` pixels), in dataset order.
    """
    if image_check not in IMAGE_CHECKS:
        raise ValueError(f'image_check must be one of {IMAGE_CHECKS}, got {image_check!r}.')
    decode = image_check == 'decode'
    reader = _reader(dataset)
    paths = [reader.filename(index, absolute=True) for index in range(len(reader))]
    if num_workers <= 1 or len(paths) < _PARALLEL_FROM:
        problems = _problems(paths, max_pixels, decode)
    else:
        size = max(_CHUNK_MIN, -(-len(paths) // (8 * num_workers)))  # about 8 chunks per process: even ends
        chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
        # fork on Linux: the children need no imports, so the pool starts in milliseconds (elsewhere the default).
        context = multiprocessing.get_context('fork' if sys.platform == 'linux' else None)
        with ProcessPoolExecutor(max_workers=min(num_workers, len(chunks)), mp_context=context) as pool:
            problems = [p for chunk in pool.map(_problems, chunks, [max_pixels] * len(chunks),
                                                 [decode] * len(chunks)) for p in chunk]
    return [(index, path, problem) for index, (path, problem) in enumerate(zip(paths, problems))
            if problem is not None]


def strict_folder_dataset(dataset: Any, split: str, skip_bad_images: bool = False,
                          max_pixels: int = MAX_IMAGE_PIXELS, num_workers: int = 0, image_check: str = 'decode') -> Any:
    """``dataset`` (a timm ``ImageDataset``) as a :class:`StrictImageDataset` whose images all decode.

    Other datasets are returned unchanged. Unusable images raise :class:`CorruptImageError` naming the first few
    and their count, or with ``skip_bad_images`` are dropped from the split and counted in the log.
    ``num_workers`` processes share the check, ``image_check`` says how much of each image it reads
    (:func:`verify_images`).
    """
    if not is_folder_dataset(dataset):
        return dataset
    bad = verify_images(dataset, max_pixels, num_workers=num_workers, image_check=image_check)
    if bad:
        shown = '; '.join(f'{path}: {problem}' for _, path, problem in bad[:_LISTED])
        more = f' and {len(bad) - _LISTED} more' if len(bad) > _LISTED else ''
        if not skip_bad_images:
            raise CorruptImageError(f'{len(bad)} corrupt image(s) in split {split!r}: {shown}{more} (fix or remove '
                                    'them, or pass --skip-bad-images to leave them out).')
        dropped = {index for index, _, _ in bad}
        reader = dataset.reader
        reader.samples = [s for i, s in enumerate(reader.samples) if i not in dropped]
        _logger.warning(f'--skip-bad-images: left out {len(bad)} unreadable image(s) of split {split!r} '
                        f'({len(reader.samples)} remain): {shown}{more}')
        if not reader.samples:
            raise CorruptImageError(f'split {split!r}: no readable image is left.')
    return StrictImageDataset(dataset)


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
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise CorruptImageError(f'corrupt image {self.reader.filename(index, absolute=True)}: {error}') from None
        if self.dataset.transform is not None:
            image = self.dataset.transform(image)
        if target is None:
            target = -1
        elif self.dataset.target_transform is not None:
            target = self.dataset.target_transform(target)
        return image, target
