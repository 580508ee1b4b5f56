"""A held-out calibration split carved from the training set (``train.py --holdout N``).

Protocol of the calibration-loss papers (Mukhoti et al., "Calibrating Deep Neural Networks using Focal Loss",
NeurIPS 2020, https://arxiv.org/abs/2002.09437; Ghosh et al., "AdaFocal", NeurIPS 2022,
https://arxiv.org/abs/2211.11838): train on 45,000 CIFAR images and use 5,000 held-out *training* images,
unaugmented, for AdaFocal's per-epoch update, temperature scaling and model selection. The test split is never
used for any of these.

The split is stratified (each class keeps its share, largest remainders first), fixed by the seed, and disjoint
from the images trained on. train.py predicts it with :mod:`cfl_timm.training.evaluate` (under torchrun each rank
its unpadded strided shard, the logits gathered back in split order on every rank), so all ranks compute
identical metrics and identical AdaFocal updates.

train.py records the split in the run folder (``holdout.json``, :func:`write_holdout_record`): the training split's
name, the held-out indices into it, and a fingerprint of that split's images (:func:`dataset_fingerprint`).
validate.py reads it back (``--calibration-split holdout``) to fit post-hoc calibrators on exactly those images,
and refuses when the data folder no longer holds the same files (:func:`holdout_subset`).
"""
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cfl_timm.files import atomic_write_text

from .subsets import SubsetDataset, dataset_targets

__all__ = ['HOLDOUT_FILE', 'HOLDOUT_METRICS', 'HoldoutRecord', 'dataset_fingerprint', 'holdout_split',
           'holdout_subset', 'read_holdout_record', 'write_holdout_record']

HOLDOUT_FILE = 'holdout.json'
_RECORD_FORMAT = 1

# Metrics of the held-out split (summary.csv columns; --checkpoint-metric choices) and whether lower is better.
HOLDOUT_METRICS = {'holdout_top1': False, 'holdout_nll': True, 'holdout_ece': True}


def holdout_split(targets: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0 .. len(targets) - 1`` into (train, holdout), stratified by class and fixed by ``seed``.

    Class c gets ``size * n_c / N`` held-out images rounded by largest remainder (ties to the lower class), so
    the total is exactly ``size``; which images is a seeded permutation within each class. Every class keeps
    at least one training image.

    Args:
        targets: Class index of every training image (N,).
        size: Number of held-out images, 1 <= size <= N - number of classes.
        seed: Seed of the selection (``--seed``).

    Returns:
        (train positions, holdout positions), each sorted ascending; disjoint, together all N positions.
    """
    targets = np.asarray(targets, dtype=np.int64)
    classes, counts = np.unique(targets, return_counts=True)
    limit = len(targets) - len(classes)
    if isinstance(size, bool) or int(size) != size or not 1 <= size <= limit:
        raise ValueError(f'--holdout must be an integer in [1, {limit}] (training images minus one per class), '
                         f'got {size!r}.')
    exact = counts * (size / len(targets))
    quota = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(len(classes)), -(exact - quota)))  # largest remainder first, then class
    quota[order[:size - int(quota.sum())]] += 1
    overflow = quota - (counts - 1)  # keep one training image per class; move any excess to the next classes
    while (overflow > 0).any():
        spare = int(overflow.clip(min=0).sum())
        quota = np.minimum(quota, counts - 1)
        room = counts - 1 - quota
        for c in np.argsort(-room, kind='stable'):
            take = min(spare, int(room[c]))
            quota[c] += take
            spare -= take
        overflow = quota - (counts - 1)
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(targets == c))[:q] for c, q in zip(classes, quota)]
    holdout = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(targets)), holdout, assume_unique=True)
    return train, holdout


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """What identifies a split's images, cheaply: the image count and a SHA-256 over every sample, in order.

    A timm folder reader contributes each file's path relative to the split folder, its size in bytes and its
    label (so a renamed, added, removed, resized or relabelled file changes it); a dataset holding its images in
    memory (scikit-learn's digits; torchvision's ``data``) their bytes and labels; any other only its labels
    (``kind`` says which).
    """
    digest = hashlib.sha256()
    reader = getattr(dataset, 'reader', None)
    samples = getattr(reader, 'samples', None)
    if samples is not None and getattr(reader, 'root', None) is not None:
        kind = 'files'
        for path, target in samples:
            path = str(path)
            digest.update(f'{os.path.relpath(path, reader.root)}\0{os.path.getsize(path)}\0{target}\n'.encode())
    else:
        pixels = next((getattr(dataset, name) for name in ('images', 'data')
                       if isinstance(getattr(dataset, name, None), np.ndarray)), None)
        kind = 'labels' if pixels is None else 'arrays'
        if pixels is not None:
            digest.update(np.ascontiguousarray(pixels).tobytes())
        digest.update(dataset_targets(dataset).tobytes())
    return {'kind': kind, 'num_images': len(dataset), 'sha256': digest.hexdigest()}


@dataclass(frozen=True)
class HoldoutRecord:
    """The held-out split of a train.py run: ``indices`` into the training split ``split`` (read with evaluation
    transforms) whose images had ``fingerprint`` (:func:`dataset_fingerprint`)."""
    split: str
    dataset: str
    seed: int
    indices: np.ndarray
    fingerprint: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({'format': _RECORD_FORMAT, 'split': self.split, 'dataset': self.dataset, 'seed': self.seed,
                           'size': len(self.indices), 'fingerprint': self.fingerprint,
                           'indices': [int(i) for i in self.indices]}) + '\n'


def write_holdout_record(run_dir: str | os.PathLike, record: HoldoutRecord) -> Path:
    """Write ``record`` to ``run_dir/holdout.json`` atomically; returns the path."""
    path = Path(run_dir) / HOLDOUT_FILE
    atomic_write_text(path, record.to_json())
    return path


def read_holdout_record(run_dir: str | os.PathLike) -> HoldoutRecord:
    """The held-out split recorded in a train.py run folder.

    Raises:
        ValueError: the folder has no (readable) ``holdout.json``, i.e. the run was trained without ``--holdout``.
    """
    path = Path(run_dir) / HOLDOUT_FILE
    if not path.is_file():
        raise ValueError(f'{run_dir} records no held-out split (no {HOLDOUT_FILE}: the run was trained without '
                         '--holdout N, or by a version that did not record it).')
    try:
        data = json.loads(path.read_text())
        if data.get('format') != _RECORD_FORMAT:
            raise ValueError(f'unknown format {data.get("format")!r}')
        indices = np.asarray(data['indices'], dtype=np.int64)
        if indices.ndim != 1 or len(indices) != data['size'] or (indices < 0).any():
            raise ValueError('malformed indices')
        return HoldoutRecord(split=str(data['split']), dataset=str(data['dataset']), seed=int(data['seed']),
                             indices=indices, fingerprint=dict(data['fingerprint']))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f'{path} is not a readable held-out split record ({error}).') from None


def holdout_subset(record: HoldoutRecord, dataset: Any) -> SubsetDataset:
    """The recorded held-out images of ``dataset`` (the training split, read again); ValueError when that split
    is not the one the run recorded (other files, sizes, labels or order)."""
    found = dataset_fingerprint(dataset)
    if found != record.fingerprint:
        recorded = record.fingerprint
        raise ValueError(f'the training split {record.split!r} differs from the one the run recorded its held-out '
                         f'split on ({recorded.get("num_images")} images, {recorded.get("kind")} SHA-256 '
                         f'{str(recorded.get("sha256"))[:12]}; found {found["num_images"]} images, SHA-256 '
                         f'{found["sha256"][:12]}): give the same data folder the run was trained on.')
    if len(record.indices) and int(record.indices.max()) >= len(dataset):
        raise ValueError(f'the held-out indices go up to {int(record.indices.max())}, but split {record.split!r} '
                         f'has {len(dataset)} images.')
    return SubsetDataset(dataset, record.indices)
