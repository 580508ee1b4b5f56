"""Training subsets for limited and imbalanced data: first-N, stratified, sampler CSV and long-tailed.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 (``--train_size``,
``--read_sampler``), and Cui et al., "Class-Balanced Loss Based on Effective Number of Samples" (CVPR 2019),
for the exponential long-tailed profile used by the CIFAR-LT benchmarks.

Every selector returns an int64 index array into the full training set. :class:`SubsetDataset` wraps a timm
dataset with such an index array while forwarding ``transform``, so timm's loaders (and their distributed
samplers) shard the subset, never the full dataset.
"""
import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch.utils.data

from .wrapped import WrappedDataset

__all__ = [
    'SUBSET_MODES', 'SubsetDataset', 'class_counts', 'dataset_class_names', 'dataset_targets', 'evenly_spaced',
    'first_n_indices', 'log_class_counts',
    'SHOT_GROUPS', 'SHOT_RULES', 'long_tailed_counts', 'long_tailed_indices', 'read_sampler_indices',
    'select_train_subset', 'shot_group_classes', 'shot_groups', 'stratified_indices',
]

_logger = logging.getLogger(__name__)

SUBSET_MODES = ('first', 'stratified')


def dataset_targets(dataset: Any) -> np.ndarray:
    """Class index of every sample of a timm / torchvision dataset, without loading any image.

    Supports datasets with a ``targets`` attribute (torchvision, :mod:`cfl_timm.data.digits`) and timm's
    ``ImageDataset`` over a folder reader (``reader.samples`` of ``(path, target)`` pairs).
    """
    for holder in (dataset, getattr(dataset, 'reader', None)):
        if holder is None:
            continue
        targets = getattr(holder, 'targets', None)
        if targets is not None:
            return np.asarray(targets, dtype=np.int64)
        samples = getattr(holder, 'samples', None)
        if samples is not None:
            return np.asarray([s[1] for s in samples], dtype=np.int64)
    raise ValueError(f'Cannot read the class targets of a {type(dataset).__name__}: subsets need a map-style '
                     'dataset with `targets` or a timm folder reader.')


def class_counts(targets: np.ndarray, num_classes: Optional[int] = None) -> np.ndarray:
    """Number of samples of each class (length ``num_classes``, or max target + 1)."""
    targets = np.asarray(targets, dtype=np.int64)
    minlength = num_classes if num_classes is not None else (int(targets.max()) + 1 if targets.size else 0)
    return np.bincount(targets, minlength=minlength)


def first_n_indices(num_samples: int, train_size: int) -> np.ndarray:
    """The first ``train_size`` samples (the published ``--train_size``, not stratified)."""
    _check_size(train_size, num_samples)
    return np.arange(train_size, dtype=np.int64)


def stratified_indices(targets: np.ndarray, train_size: int) -> np.ndarray:
    """``train_size`` samples with per-class counts as equal as possible, taking each class's first samples.

    Classes get ``train_size // K`` samples each; the remainder goes one each to the lowest class indices that
    still have samples left. Deterministic, in dataset order.
    """
    targets = np.asarray(targets, dtype=np.int64)
    _check_size(train_size, len(targets))
    available = class_counts(targets)
    num_classes = len(available)
    quota = np.zeros(num_classes, dtype=np.int64)
    remaining = train_size
    # Water-filling: classes smaller than the fair share give their surplus to the others.
    while remaining > 0:
        open_classes = np.flatnonzero(quota < available)
        share = max(remaining // len(open_classes), 1)
        for c in open_classes:
            take = min(share, available[c] - quota[c], remaining)
            quota[c] += take
            remaining -= take
            if remaining == 0:
                break
    return _take_first_per_class(targets, quota)


def long_tailed_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> np.ndarray:
    """Per-class counts ``n_c = floor(n_max * rho^(-c / (K - 1)))`` for c = 0..K-1 (at least 1 each).

    Args:
        n_max: Count of class 0 (the head class).
        num_classes: K, >= 2.
        imbalance_ratio: rho = n_0 / n_{K-1} >= 1.
    """
    if not (math.isfinite(imbalance_ratio) and imbalance_ratio >= 1):
        raise ValueError(f'--imbalance-ratio must be a finite number >= 1 (n_max / n_min), got {imbalance_ratio}.')
    if num_classes < 2:
        raise ValueError(f'A long-tailed subset needs at least 2 classes, got {num_classes}.')
    c = np.arange(num_classes, dtype=np.float64)
    counts = np.floor(n_max * imbalance_ratio ** (-c / (num_classes - 1)) + 1e-9).astype(np.int64)
    return np.maximum(counts, 1)


# OLTR's shot groups (Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", arXiv 1904.05160):
# 'code' is the released code (many >= 100, few <= 20 training images), 'paper' the paper's text (> 100, < 20).
SHOT_RULES = ('code', 'paper')
SHOT_GROUPS = ('many', 'medium', 'few')


def shot_groups(train_counts: Sequence[int], *, rule: str = 'code', many: int = 100, few: int = 20) -> np.ndarray:
    """Shot group of each class by its training count: 0 many, 1 medium, 2 few (the order of :data:`SHOT_GROUPS`).

    ``rule='code'``: many if count >= ``many``, few if count <= ``few``; ``rule='paper'``: > ``many`` and < ``few``.
    """
    if rule not in SHOT_RULES:
        raise ValueError(f"Unknown shot rule '{rule}', expected one of {SHOT_RULES}.")
    counts = np.asarray(train_counts)
    if rule == 'code':
        is_many, is_few = counts >= many, counts <= few
    else:
        is_many, is_few = counts > many, counts < few
    return np.where(is_many, 0, np.where(is_few, 2, 1))


def shot_group_classes(train_counts: Sequence[int], *, rule: str = 'code', many: int = 100,
                       few: int = 20) -> dict[str, tuple[int, ...]]:
    """:func:`shot_groups` as group name -> the classes in it (ascending), e.g. for per-group mean accuracies."""
    groups = shot_groups(train_counts, rule=rule, many=many, few=few)
    return {name: tuple(int(c) for c in np.flatnonzero(groups == index)) for index, name in enumerate(SHOT_GROUPS)}


def long_tailed_indices(targets: np.ndarray, imbalance_ratio: float, n_max: Optional[int] = None) -> np.ndarray:
    """The first ``n_c`` samples of each class c with the exponential profile of :func:`long_tailed_counts`.

    Args:
        targets: Class index of every training sample.
        imbalance_ratio: rho = n_max / n_min.
        n_max: Head-class count; defaults to the size of the smallest class, so every class can supply its n_c.
    """
    targets = np.asarray(targets, dtype=np.int64)
    available = class_counts(targets)
    if n_max is None:
        n_max = int(available.min())
    if n_max < 1:
        raise ValueError(f'--imbalance-max must be >= 1, got {n_max}.')
    counts = long_tailed_counts(n_max, len(available), imbalance_ratio)
    short = np.flatnonzero(counts > available)
    if short.size:
        raise ValueError(f'Long-tailed subset: classes {short.tolist()} have fewer images than their n_c '
                         f'({available[short].tolist()} < {counts[short].tolist()}); lower --imbalance-max.')
    return _take_first_per_class(targets, counts)


def read_sampler_indices(path: str | Path, num_samples: int) -> np.ndarray:
    """Read a ``--read_sampler`` CSV of 0-based training-set indices as int64 (the published code used int16).

    Accepts one or more indices per row, separated by commas or whitespace. Raises a ValueError naming the file
    for a missing or empty file, a non-integer entry, an index outside ``[0, num_samples)`` and duplicates.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'--read_sampler: file not found: {path}')
    values: list[int] = []
    outside: list[int] = []
    try:
        with open(path, newline='', encoding='utf-8') as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f'--read_sampler {path}: not a UTF-8 text file of indices (byte {e.start}: '
                         f'{e.object[e.start:e.start + 1]!r}).') from None
    for row_num, row in enumerate(rows, start=1):
        for cell in row:
            for token in cell.split():
                try:
                    value = float(token) if any(ch in token for ch in '.eE') else int(token)
                except ValueError:
                    raise ValueError(f'--read_sampler {path}: row {row_num}: {token!r} is not an integer '
                                     'index.') from None
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(f'--read_sampler {path}: row {row_num}: {token!r} is not an integer index.')
                value = int(value)
                # Checked here, as Python ints: a huge value never reaches (and overflows) the int64 array.
                (outside if not 0 <= value < num_samples else values).append(value)
    if not values and not outside:
        raise ValueError(f'--read_sampler {path}: the file holds no indices.')
    if outside:
        first = str(outside[0])
        first = first if len(first) <= 24 else first[:10] + '...' + first[-6:]
        raise ValueError(f'--read_sampler {path}: {len(outside)} indices outside [0, {num_samples - 1}] for a '
                         f'training set of {num_samples} images (first: {first}); indices are 0-based.')
    indices = np.asarray(values, dtype=np.int64)
    if len(np.unique(indices)) != len(indices):
        raise ValueError(f'--read_sampler {path}: duplicate indices ({len(indices) - len(np.unique(indices))}).')
    return indices


def select_train_subset(
        targets: np.ndarray,
        *,
        train_size: Optional[int] = None,
        train_size_mode: str = 'first',
        sampler_path: Optional[str] = None,
        imbalance_ratio: Optional[float] = None,
        imbalance_max: Optional[int] = None,
) -> Optional[np.ndarray]:
    """Select at most one subset of the training set; None means the full set.

    Args:
        targets: Class index of every training sample.
        train_size: ``--train_size`` N (first N or stratified, see ``train_size_mode``).
        train_size_mode: One of SUBSET_MODES.
        sampler_path: ``--read_sampler`` CSV of indices.
        imbalance_ratio: Long-tailed subset with this rho.
        imbalance_max: Head-class count of the long-tailed subset.
    """
    chosen = [name for name, value in (('--train_size', train_size), ('--read_sampler', sampler_path),
                                       ('--imbalance-ratio', imbalance_ratio)) if value is not None]
    if len(chosen) > 1:
        raise ValueError(f'Choose one training subset, got {" and ".join(chosen)}.')
    if train_size_mode not in SUBSET_MODES:
        raise ValueError(f'Unknown --train-size-mode {train_size_mode!r}, expected one of {SUBSET_MODES}.')
    if imbalance_max is not None and imbalance_ratio is None:
        raise ValueError('--imbalance-max sets the head-class count of the long-tailed subset; it needs '
                         '--imbalance-ratio RHO (>= 1).')
    if train_size is not None:
        if train_size_mode == 'first':
            return first_n_indices(len(targets), train_size)
        return stratified_indices(targets, train_size)
    if sampler_path is not None:
        return read_sampler_indices(sampler_path, len(targets))
    if imbalance_ratio is not None:
        return long_tailed_indices(targets, imbalance_ratio, imbalance_max)
    return None


def log_class_counts(counts: Sequence[int], title: str, logger: logging.Logger = _logger) -> None:
    """Log per-class counts with their min / max / total."""
    counts = np.asarray(counts)
    logger.info(f'{title}: {int(counts.sum())} images, {len(counts)} classes, per class min {int(counts.min())} '
                f'max {int(counts.max())}: {counts.tolist()}')


class SubsetDataset(WrappedDataset):
    """A view of a map-style dataset restricted to ``indices``; ``transform`` reads and writes the base's.

    timm's loader sets ``dataset.transform``; forwarding it keeps the base dataset's transform pipeline, and
    wrapping before the loader is built makes its (distributed) sampler draw from the subset only.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, indices: np.ndarray) -> None:
        super().__init__(dataset)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = dataset_targets(dataset)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]


def evenly_spaced(dataset: torch.utils.data.Dataset, num_samples: Optional[int]) -> torch.utils.data.Dataset:
    """``num_samples`` evenly spaced items of ``dataset`` (first and last included; a class-sorted folder keeps
    every class), or the whole dataset when ``num_samples`` is None or not smaller than it."""
    if num_samples is None or num_samples >= len(dataset):
        return dataset
    return SubsetDataset(dataset, np.linspace(0, len(dataset) - 1, num_samples).round().astype(np.int64))


def dataset_class_names(dataset: Any, num_classes: int) -> list[str]:
    """The ``num_classes`` class names of a (wrapped) folder dataset (its ``class_to_idx``), a torchvision or
    digits dataset (``classes``); the class indices as strings otherwise."""
    base = dataset
    while hasattr(base, 'dataset'):
        base = base.dataset
    mapping = getattr(getattr(base, 'reader', None), 'class_to_idx', None) or getattr(base, 'class_to_idx', None)
    if mapping:
        names = {index: name for name, index in mapping.items()}
        return [str(names.get(i, i)) for i in range(num_classes)]
    classes = getattr(base, 'classes', None)
    if classes is not None and len(classes) == num_classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(num_classes)]


def _check_size(train_size: int, num_samples: int) -> None:
    if isinstance(train_size, bool) or int(train_size) != train_size or not 0 < train_size <= num_samples:
        raise ValueError(f'--train_size must be an integer in [1, {num_samples}] (the training set size), '
                         f'got {train_size}.')


def _take_first_per_class(targets: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Indices (sorted) of the first ``quota[c]`` samples of each class c, in dataset order."""
    seen = np.zeros(len(quota), dtype=np.int64)
    keep = np.zeros(len(targets), dtype=bool)
    for i, t in enumerate(targets):
        if seen[t] < quota[t]:
            keep[i] = True
            seen[t] += 1
    return np.flatnonzero(keep).astype(np.int64)
