"""A held-out calibration split carved from the training set (``train.py --holdout N``).

Protocol of the calibration-loss papers (Mukhoti et al., "Calibrating Deep Neural Networks using Focal Loss",
NeurIPS 2020, https://arxiv.org/abs/2002.09437; Ghosh et al., "AdaFocal", NeurIPS 2022,
https://arxiv.org/abs/2211.11838): train on 45,000 CIFAR images and use 5,000 held-out *training* images,
unaugmented, for AdaFocal's per-epoch update, temperature scaling and model selection. The test split is never
used for any of these.

The split is stratified (each class keeps its share, largest remainders first), fixed by the seed, and disjoint
from the images trained on. Under torchrun each rank predicts its own shard (positions ``rank::world_size``, no
padding) and :func:`gather_predictions` reassembles every prediction exactly once, in split order, on every
rank, so all ranks compute identical metrics and identical AdaFocal updates.
"""
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    'HOLDOUT_METRICS', 'holdout_split', 'holdout_shard', 'gather_predictions', 'holdout_metrics',
    'append_jsonl', 'trim_jsonl',
]

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


def holdout_shard(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Positions of the held-out split that ``rank`` predicts: ``rank::world_size`` (no padding, no repeats)."""
    return np.arange(rank, num_samples, world_size, dtype=np.int64)


def gather_predictions(logits: torch.Tensor, targets: torch.Tensor, num_samples: int) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """Every rank's shard of (logits, targets) reassembled in split order, identical on every rank.

    Args:
        logits: This rank's predictions (len(shard), K), in shard order (see :func:`holdout_shard`).
        targets: This rank's targets (len(shard),).
        num_samples: Size of the held-out split.
    """
    logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
    if not (dist.is_available() and dist.is_initialized()):
        shards, world_size = [(logits, targets)], 1
    else:
        world_size = dist.get_world_size()
        shards = [None] * world_size
        dist.all_gather_object(shards, (logits, targets))
    full_logits = torch.empty(num_samples, logits.shape[1], dtype=torch.float32)
    full_targets = torch.empty(num_samples, dtype=torch.int64)
    for rank, (shard_logits, shard_targets) in enumerate(shards):
        positions = torch.from_numpy(holdout_shard(num_samples, rank, world_size))
        if len(positions) != len(shard_logits):
            raise RuntimeError(f'rank {rank} predicted {len(shard_logits)} held-out images, expected '
                               f'{len(positions)}.')
        full_logits[positions] = shard_logits
        full_targets[positions] = shard_targets.long()
    return full_logits, full_targets


def holdout_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 (percent), NLL and 15-bin ECE of the whole held-out split (one process, exact)."""
    from ..metrics import CalibrationMeter

    meter = CalibrationMeter(num_classes, num_bins=15)
    meter.update(logits, targets)
    calibration = meter.compute()
    top1 = 100.0 * (logits.argmax(1) == targets).double().mean().item()
    return {'holdout_top1': top1, 'holdout_nll': float(calibration['nll']), 'holdout_ece': float(calibration['ece'])}


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line: a single ``write`` on an O_APPEND file, then fsync.

    A kill can leave at most a torn last line, which :func:`trim_jsonl` drops on the next start. The file is
    created with mode 0o666 less the user's umask.
    """
    data = (json.dumps(record, sort_keys=True) + '\n').encode('utf-8')
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f'short write to {path}: {written} of {len(data)} bytes')
        os.fsync(fd)
    finally:
        os.close(fd)


def trim_jsonl(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Keep the complete JSON lines of ``path`` for which ``keep(record)`` holds (atomic rewrite).

    Used on resume: the lines written after the checkpoint's epoch, and a line torn by a kill, are dropped so
    that the resumed run appends them exactly once. Returns the number of lines kept (0 if there is no file).
    """
    from ..training import atomic_write_text

    path = Path(path)
    if not path.is_file():
        return 0
    kept = []
    for line in path.read_text(encoding='utf-8').splitlines(keepends=True):
        if not line.endswith('\n'):
            continue  # torn by a kill
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if keep(record):
            kept.append(line)
    atomic_write_text(path, ''.join(kept))
    return len(kept)
