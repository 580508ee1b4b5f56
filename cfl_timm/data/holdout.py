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
"""
import numpy as np

__all__ = ['HOLDOUT_METRICS', 'holdout_split']

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
