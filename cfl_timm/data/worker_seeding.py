"""Persistent loader workers whose random streams restart every epoch, so a resumed run stays exact.

timm's training loader keeps its worker processes alive between epochs (``persistent_workers``): starting them
again costs each epoch a process start and a copy of the dataset. Kept alive, though, a worker's random streams run
on from one epoch into the next, and a run resumed at epoch ``e`` (fresh workers) would draw other augmentations
than the uninterrupted run did. :class:`EpochSeededTransform` gives both: the workers persist, and the first image a
worker transforms in an epoch reseeds its ``random``, NumPy and torch streams from ``(seed, epoch, rank, worker)``.

Which worker transforms which batch is fixed (PyTorch's loader hands batch ``i`` of an epoch to worker
``i mod num_workers``), so every epoch's augmentations are a function of those four numbers and of the shuffled
order, whatever happened before. The main process's streams are left alone: the loader's base seed is drawn from a
generator of its own (:func:`seed_workers_by_epoch`), so the epoch's shuffle, reseeded by train.py at the start of
each epoch, is the same in the uninterrupted and the resumed run.

The lifetime of such workers is handled here too: :func:`stop_workers` ends them at the end of training (left to
interpreter exit they are killed and leave temp folders), and :func:`check_worker_socket_dir` refuses a temp folder
too long for the sockets through which workers hand tensors over.
"""
import os
import random
import sys
import tempfile
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch
import torch.multiprocessing
import torch.utils.data

__all__ = ['EpochSeededTransform', 'check_worker_socket_dir', 'epoch_worker_seed', 'seed_workers_by_epoch',
           'stop_workers']


def epoch_worker_seed(seed: int, epoch: int, rank: int, worker_id: int) -> int:
    """A 32-bit seed for one worker in one epoch, distinct for each ``(seed, epoch, rank, worker_id)``."""
    return int(np.random.SeedSequence([seed, epoch, rank, worker_id]).generate_state(1)[0])


class EpochSeededTransform:
    """A dataset transform that, inside a loader worker, reseeds the worker's random streams when an epoch begins.

    The epoch is read from a one-element tensor in shared memory, written by the main process before each epoch's
    pass (:meth:`set_epoch`); a persistent worker sees the new value at its first image of that epoch and seeds
    ``random``, ``numpy.random`` and ``torch`` with :func:`epoch_worker_seed`. Outside a worker (``num_workers=0``)
    it only applies ``transform``: the main process's streams are train.py's.

    Args:
        transform: The dataset's transform (applied unchanged), or None.
        seed: The run's ``--seed``.
        rank: This process's rank (each rank's workers draw their own streams).
    """

    def __init__(self, transform: Optional[Callable], seed: int, rank: int = 0) -> None:
        self.transform = transform
        self.seed, self.rank = seed, rank
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._seeded_epoch = -1  # per process: each worker holds its own copy of this object

    def set_epoch(self, epoch: int) -> None:
        """Main process, before the epoch's pass over the loader."""
        self.epoch.fill_(epoch)

    def __call__(self, img: Any) -> Any:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            epoch = int(self.epoch)
            if epoch != self._seeded_epoch:
                worker_seed = epoch_worker_seed(self.seed, epoch, self.rank, info.id)
                random.seed(worker_seed)
                np.random.seed(worker_seed)
                torch.manual_seed(worker_seed)
                self._seeded_epoch = epoch
        return img if self.transform is None else self.transform(img)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(seed={self.seed}, rank={self.rank}, transform={self.transform!r})'


def seed_workers_by_epoch(loader: Any, seed: int, rank: int = 0) -> EpochSeededTransform:
    """Wrap the transform of ``loader``'s dataset in an :class:`EpochSeededTransform` and give the loader a base-seed
    generator of its own; call the returned object's ``set_epoch`` before each epoch.

    Args:
        loader: A loader from ``timm.data.create_loader`` (a ``PrefetchLoader`` or a ``DataLoader``) over a
            map-style dataset with a ``transform`` attribute, built with persistent workers.
        seed: The run's ``--seed``.
        rank: This process's rank.

    Raises:
        ValueError: When the loader has no persistent workers or its dataset is iterable.
    """
    data_loader = getattr(loader, 'loader', loader)
    if not getattr(data_loader, 'persistent_workers', False):
        raise ValueError('seed_workers_by_epoch: the loader has no persistent workers (persistent_workers=False or '
                         'num_workers=0); workers that restart each epoch are seeded by the loader already.')
    if isinstance(data_loader.dataset, torch.utils.data.IterableDataset):
        raise ValueError('seed_workers_by_epoch: an iterable dataset shards its stream per worker; '
                         'only map-style datasets are supported.')
    seeding = EpochSeededTransform(data_loader.dataset.transform, seed, rank)
    data_loader.dataset.transform = seeding
    # The loader draws its workers' base seed when its iterator is first made: from this generator, not from the
    # main process's stream, which train.py reseeds each epoch for the shuffle.
    data_loader.generator = torch.Generator().manual_seed(seed)
    return seeding


def stop_workers(loader: Any) -> None:
    """Stop ``loader``'s persistent workers now, the way the loader stops them when it is collected.

    Kept alive, they would last until interpreter exit, where ``multiprocessing`` terminates daemonic children with
    SIGTERM: their clean-up never runs, and each leaves its ``pymp-*`` folder (the socket folder through which it
    passed tensors) in the system temp folder. A loader without live workers is left as it is.

    Args:
        loader: A ``PrefetchLoader`` or a ``DataLoader``.
    """
    data_loader = getattr(loader, 'loader', loader)
    iterator = getattr(data_loader, '_iterator', None)  # the loader keeps its persistent iterator here
    if iterator is not None and hasattr(iterator, '_shutdown_workers'):
        iterator._shutdown_workers()
        data_loader._iterator = None


# A loader worker hands each tensor to the main process through a Unix socket that multiprocessing makes at
# TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX (torch's default 'file_descriptor' sharing). A socket address holds 107
# bytes on Linux (103 on macOS); past that the worker cannot make its socket, drops the batch, and the loader waits
# for it for ever.
_SOCKET_SUFFIX = os.path.join('pymp-XXXXXXXX', 'listener-XXXXXXXX')
_SOCKET_PATH_MAX = 103 if sys.platform == 'darwin' else 107


def check_worker_socket_dir(num_workers: int, flag: str = '-j/--workers') -> None:
    """Refuse loader workers whose sockets would not fit under the system temp folder (see ``_SOCKET_SUFFIX``).

    Args:
        num_workers: The loader's worker count (0: the main process loads, no sockets).
        flag: The flag that set it, for the message.

    Raises:
        ValueError: The temp folder's path is too long, naming it, its length and the ways out.
    """
    if num_workers <= 0 or sys.platform == 'win32':
        return
    if torch.multiprocessing.get_sharing_strategy() != 'file_descriptor':
        return
    temp = tempfile.gettempdir()
    length = len(os.fsencode(os.path.join(temp, _SOCKET_SUFFIX)))
    if length > _SOCKET_PATH_MAX:
        raise ValueError(f'{flag} {num_workers}: the system temp folder {temp} is too long for the loader workers\' '
                         f'sockets ({length} bytes with their names, over the {_SOCKET_PATH_MAX} a socket address '
                         'holds; the loader would wait for ever); set TMPDIR to a shorter folder, or use -j 0.')
