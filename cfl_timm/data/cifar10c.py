"""CIFAR-10-C files: reading the published release, and generating the same layout from any image folder (cached).

The release of D. Hendrycks and T. Dietterich (ICLR 2019, https://arxiv.org/abs/1903.12261) is a folder holding
``labels.npy`` and one ``<corruption>.npy`` per corruption, uint8 (5 N, H, W, 3): severities 1 to 5 stacked in
order, N = 10,000 CIFAR-10 test images each; ``labels.npy`` holds the 5 N labels (the N test labels five times).
:func:`generate_corrupted_set` writes that same layout from the images of any folder with
:mod:`cfl_timm.data.corruptions`, plus ``shift_set.json`` naming it "CIFAR-10-C-style, generated" (never
"CIFAR-10-C") with the seed, the version and what is synthesised, so :func:`load_corrupted` reads both alike.

The labels of a set mean the classes of the clean folder beside it: :func:`check_set_classes` refuses a clean
folder whose classes are not those the set's labels were made with (the published release: CIFAR-10's ten
classes in CIFAR-10's order, :data:`CIFAR10_CLASSES`; a generated set: the class names in its ``shift_set.json``).

The cache is keyed by the decoded source pixels and labels, the seed and :data:`GENERATOR_VERSION`: a folder
``<cache_dir>/cifar10c-style-<key>`` is reused only for the same inputs, and each file in it is written atomically,
so an interrupted generation resumes at the first missing corruption and never leaves a torn file.
"""
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch.utils.data
from PIL import Image

from cfl_timm.files import atomic_write_bytes, atomic_write_text

from .corruptions import CIFAR10C_PARAMS, CORRUPTIONS, SEVERITIES, SYNTHETIC_CORRUPTIONS, corrupt, corruption_rng

__all__ = ['CIFAR10_CLASSES', 'GENERATED_SET_NAME', 'GENERATOR_VERSION', 'LABELS_FILE', 'META_FILE',
           'NUMBERED_CLASSES', 'PUBLISHED_SET_NAME', 'ImageArrayDataset', 'available_corruptions',
           'check_cifar10_classes', 'check_set_classes', 'generate_corrupted_set', 'load_corrupted',
           'read_image_folder', 'shift_set_name']

LABELS_FILE = 'labels.npy'
META_FILE = 'shift_set.json'
GENERATOR_VERSION = 1  # bump when a corruption's output changes, so older caches are not reused
PUBLISHED_SET_NAME = 'CIFAR-10-C'
GENERATED_SET_NAME = 'CIFAR-10-C-style, generated'
# CIFAR-10's label order (label i of labels.npy is CIFAR-10's class i). It is also the sorted order of the names,
# so a class-folder tree of CIFAR-10 read by timm (which sorts folder names) has the same labels.
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
NUMBERED_CLASSES = tuple(str(label) for label in range(len(CIFAR10_CLASSES)))  # folders named by the label itself


def available_corruptions(root: str | os.PathLike) -> list[str]:
    """The corruptions with a file under ``root``, in the paper's order (extras of the release after them)."""
    names = {path.stem for path in Path(root).glob('*.npy')} - {Path(LABELS_FILE).stem}
    return [name for name in CORRUPTIONS if name in names] + sorted(names - set(CORRUPTIONS))


def shift_set_name(root: str | os.PathLike) -> str:
    """What the folder holds: the generated set's recorded name, else the published one."""
    meta = Path(root) / META_FILE
    return json.loads(meta.read_text())['name'] if meta.is_file() else PUBLISHED_SET_NAME


def _shown_names(names: Sequence[str], limit: int = 12) -> str:
    shown = ', '.join(map(str, names[:limit]))
    return f'{len(names)} classes ({shown}{", ..." if len(names) > limit else ""})'


def check_cifar10_classes(class_names: Sequence[str], source: str) -> None:
    """Refuse classes whose labels are not CIFAR-10's: the published CIFAR-10-C labels 0..9 mean CIFAR-10's classes.

    Accepted: exactly :data:`CIFAR10_CLASSES` in that order, or exactly the folders ``'0'`` ... ``'9'`` (named by
    the label).

    Args:
        class_names: The classes in label order (timm's reader: the sorted class folder names).
        source: What they are, for the message (e.g. the folder).

    Raises:
        ValueError: Naming ``source``, what it has and what CIFAR-10-C's labels mean.
    """
    names = tuple(str(name) for name in class_names)
    if names in (CIFAR10_CLASSES, NUMBERED_CLASSES):
        return
    raise ValueError(f'{source} has {_shown_names(names)}, but the labels of the published CIFAR-10-C (labels.npy, '
                     f'0 to 9) are CIFAR-10\'s classes in its order ({", ".join(CIFAR10_CLASSES)}): give the clean '
                     'CIFAR-10 test folder with exactly those ten class folders, or folders named 0 to 9.')


def check_set_classes(root: str | os.PathLike, class_names: Sequence[str], source: str) -> None:
    """Refuse clean classes that are not those the labels of the set under ``root`` were made with: a generated
    set's ``shift_set.json`` class names (when it records them), else the published release's CIFAR-10 classes
    (:func:`check_cifar10_classes`).

    Args:
        root: The CIFAR-10-C layout folder.
        class_names: The clean images' classes in label order.
        source: What they are, for the message (e.g. the clean folder).
    """
    meta = Path(root) / META_FILE
    if not meta.is_file():
        check_cifar10_classes(class_names, source)
        return
    try:
        recorded = json.loads(meta.read_text(encoding='utf-8')).get('class_names') or []
    except (ValueError, OSError, AttributeError) as error:
        raise ValueError(f'{meta} is not the JSON of a generated set ({error}).') from None
    names = [str(name) for name in class_names]
    if recorded and [str(name) for name in recorded] != names:
        raise ValueError(f'{source} has {_shown_names(names)}, but the set in {root} was generated with '
                         f'{_shown_names(recorded)} ({META_FILE}): its labels mean those. Give the folder it was '
                         'generated from, or another cache folder.')


class ImageArrayDataset(torch.utils.data.Dataset):
    """Images held in a uint8 (N, H, W, 3) array (memory-mapped or not) as RGB PIL images with their labels.

    ``transform`` is set by timm's loader factory like any dataset's.

    Args:
        images: uint8 (N, H, W, 3).
        targets: (N,) integer labels.
        transform: Applied to each PIL image.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Optional[Callable] = None) -> None:
        self.images, self.targets, self.transform = images, np.asarray(targets, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(np.asarray(self.images[index]), mode='RGB')
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def load_corrupted(root: str | os.PathLike, corruption: str, severity: int) -> ImageArrayDataset:
    """The images of one corruption at one severity of a CIFAR-10-C layout (memory-mapped: opening every set costs
    no memory up front).

    Args:
        root: Folder with ``labels.npy`` and ``<corruption>.npy``.
        corruption: A corruption with a file under ``root``.
        severity: 1 to 5.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f'CIFAR-10-C folder not found: {root}')
    if severity not in SEVERITIES:
        raise ValueError(f'severity must be one of {SEVERITIES}, got {severity!r}.')
    labels_path, images_path = root / LABELS_FILE, root / f'{corruption}.npy'
    if not labels_path.is_file():
        raise ValueError(f'{root} has no {LABELS_FILE}: expected the CIFAR-10-C layout (labels.npy and one '
                         '<corruption>.npy per corruption).')
    if not images_path.is_file():
        raise ValueError(f'{root} has no {corruption}.npy; corruptions there: '
                         f'{", ".join(available_corruptions(root)) or "none"}.')
    images, labels = _load(images_path), _load(labels_path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(images) % len(SEVERITIES):
        raise ValueError(f'{images_path}: expected uint8 (5 N, H, W, 3) images, got {images.dtype} {images.shape}.')
    per_severity = len(images) // len(SEVERITIES)
    if labels.ndim != 1 or labels.dtype.kind not in 'iu' or len(labels) not in (len(images), per_severity):
        raise ValueError(f'{labels_path}: expected {len(images)} (or {per_severity}) integer labels to match '
                         f'{images_path.name}, got {labels.dtype} {labels.shape}.')
    start = (severity - 1) * per_severity
    targets = labels[start:start + per_severity] if len(labels) == len(images) else labels
    return ImageArrayDataset(images[start:start + per_severity], targets)


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f'{path} is not a readable .npy array: {error}') from None


def read_image_folder(folder: str | os.PathLike, image_size: Optional[int] = None
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of a class-folder tree (timm's reader: ``folder/<class>/<image>``, classes in timm's order) as
    uint8 (N, H, W, 3), its labels (N,) and the class names.

    Args:
        folder: The image folder.
        image_size: Resize every image to this square side (bilinear) first; None: all images must share a size.
    """
    from timm.data import ImageDataset  # timm's folder reader, so labels follow the order validate.py uses

    try:
        reader = ImageDataset(str(folder)).reader
    except RuntimeError as error:  # timm: no images found
        raise ValueError(f'{folder}: {error}') from None
    images = []
    for path, _ in reader.samples:
        try:
            with Image.open(path) as image:
                image = image.convert('RGB')
                if image_size is not None:
                    image = image.resize((image_size, image_size), Image.BILINEAR)
                images.append(np.asarray(image))
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f'cannot read image {path}: {error}') from None
        if images[-1].shape != images[0].shape:
            raise ValueError(f'{path} is {images[-1].shape[1]}x{images[-1].shape[0]}, {reader.samples[0][0]} '
                             f'{images[0].shape[1]}x{images[0].shape[0]}: give image_size (--image-size) to '
                             'resize them to one size.')
    labels = np.array([target for _, target in reader.samples], dtype=np.int64)
    names = sorted(reader.class_to_idx, key=reader.class_to_idx.get)
    return np.stack(images), labels, names


def _cache_key(images: np.ndarray, labels: np.ndarray, seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({'version': GENERATOR_VERSION, 'seed': seed, 'shape': list(images.shape),
                              'params': {k: repr(v) for k, v in CIFAR10C_PARAMS.items()}}).encode())
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:20]


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda f: np.save(f, array, allow_pickle=False))


def generate_corrupted_set(images: np.ndarray, labels: np.ndarray, cache_dir: str | os.PathLike, *, seed: int = 0,
                           corruptions: Sequence[str] = CORRUPTIONS, class_names: Sequence[str] = (),
                           source: str = '', log: Callable[[str], Any] = lambda message: None) -> Path:
    """The CIFAR-10-C layout of ``images`` under ``cache_dir``: generated when missing, reused when cached.

    Image i of corruption c at severity s is corrupted with :func:`corruption_rng` (seed, c, s, i), so the result is
    deterministic per seed and does not depend on which corruptions are generated or in what order.

    Args:
        images: uint8 (N, H, W, 3) clean images.
        labels: (N,) integer labels.
        cache_dir: Parent folder of the cached sets.
        seed: Seed of every random draw.
        corruptions: Names from :data:`CORRUPTIONS` to make.
        class_names: Recorded in ``shift_set.json``.
        source: A description of the source (e.g. its folder), recorded in ``shift_set.json``.
        log: Called with a progress line per corruption.

    Returns:
        The folder (``<cache_dir>/cifar10c-style-<key>``).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(images) == 0:
        raise ValueError(f'images must be uint8 (N, H, W, 3) with N >= 1, got {images.dtype} {images.shape}.')
    if labels.shape != (len(images),) or labels.dtype.kind not in 'iu':
        raise ValueError(f'labels must be ({len(images)},) integers, got {labels.dtype} {labels.shape}.')
    unknown = [name for name in corruptions if name not in CORRUPTIONS]
    if unknown:
        raise ValueError(f'unknown corruption(s) {unknown}; choose from {", ".join(CORRUPTIONS)}.')
    folder = Path(cache_dir) / f'cifar10c-style-{_cache_key(images, labels, seed)}'
    folder.mkdir(parents=True, exist_ok=True)
    meta = {'name': GENERATED_SET_NAME, 'generator_version': GENERATOR_VERSION, 'seed': seed,
            'num_images': len(images), 'image_shape': list(images.shape[1:]), 'source': source,
            'class_names': list(class_names), 'parameters': 'CIFAR-10-C (make_cifar_c.py), see docs/shift.md',
            'synthetic': SYNTHETIC_CORRUPTIONS}
    if not (folder / META_FILE).is_file():
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2) + '\n')
    if not (folder / LABELS_FILE).is_file():
        _save_npy(folder / LABELS_FILE, np.tile(labels.astype(np.int64), len(SEVERITIES)))
    for name in corruptions:
        path = folder / f'{name}.npy'
        if path.is_file():
            log(f'{name}: cached in {folder}')
            continue
        log(f'{name}: generating {len(SEVERITIES)} x {len(images)} images')
        out = np.empty((len(SEVERITIES),) + images.shape, dtype=np.uint8)
        for s, severity in enumerate(SEVERITIES):
            for index, image in enumerate(images):
                out[s, index] = corrupt(image, name, severity, corruption_rng(seed, name, severity, index))
        _save_npy(path, out.reshape((-1,) + images.shape[1:]))
    return folder
