"""Persistent loader workers reseeded per epoch (cfl_timm.data.worker_seeding): an epoch's draws depend on the seed,
the epoch, the rank and the worker only, so a loader started at epoch e repeats what a long-lived one drew there."""
import random
import tempfile

import numpy as np
import pytest
import torch
import torch.utils.data

import train
from cfl_timm.data import EpochSeededTransform, epoch_worker_seed, seed_workers_by_epoch, stop_workers

NUM_WORKERS, EPOCHS = 2, 3


def _draw(index: int) -> tuple:
    """A transform drawing from the three streams a real augmentation uses."""
    return index, torch.rand(()).item(), float(np.random.rand()), random.random()


class _Draws(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.transform = _draw

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple:
        return self.transform(index)


def _loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_Draws(), batch_size=2, shuffle=True, num_workers=NUM_WORKERS,
                                       persistent_workers=True, collate_fn=list)


def _epochs(first: int, seeded: bool) -> list[list[tuple]]:
    """Epochs ``first`` .. EPOCHS - 1 through one loader, the main stream reseeded per epoch as train.py does."""
    loader = _loader()
    seeding = seed_workers_by_epoch(loader, seed=5, rank=0) if seeded else None
    if not seeded:  # the base seed from a generator of its own too, so only the reseeding is missing
        loader.generator = torch.Generator().manual_seed(5)
    draws = []
    for epoch in range(first, EPOCHS):
        torch.manual_seed(100 + epoch)
        if seeding is not None:
            seeding.set_epoch(epoch)
        draws.append([sample for batch in loader for sample in batch])
    return draws


def test_a_loader_started_at_a_later_epoch_draws_what_the_long_lived_one_drew():
    long_lived, resumed = _epochs(0, seeded=True), _epochs(1, seeded=True)
    assert resumed == long_lived[1:]
    # Each epoch draws anew, and the two workers draw different streams.
    values = [sample[1:] for epoch in long_lived for sample in epoch]
    assert len(set(values)) == len(values)


def test_without_the_reseeding_persistent_workers_would_break_resume():
    """The control: persistent workers whose streams run on across epochs draw otherwise after a restart."""
    long_lived, resumed = _epochs(0, seeded=False), _epochs(1, seeded=False)
    assert [s[0] for e in resumed for s in e] == [s[0] for e in long_lived[1:] for s in e]  # same shuffle
    assert resumed != long_lived[1:]


def test_in_the_main_process_the_transform_leaves_the_random_streams_alone():
    seeding = EpochSeededTransform(_draw, seed=5)
    seeding.set_epoch(3)
    torch.manual_seed(0)
    expected = torch.rand(())
    torch.manual_seed(0)
    assert seeding(7)[0] == 7
    assert seeding.transform is _draw
    torch.manual_seed(0)
    assert torch.rand(()) == expected


def test_worker_seeds_differ_by_each_coordinate():
    seeds = {epoch_worker_seed(s, e, r, w) for s in (0, 1) for e in (0, 1) for r in (0, 1) for w in (0, 1)}
    assert len(seeds) == 16 and all(0 <= s < 2**32 for s in seeds)


def test_refused_without_persistent_workers_or_for_an_iterable_dataset():
    plain = torch.utils.data.DataLoader(_Draws(), num_workers=0)
    with pytest.raises(ValueError, match='no persistent workers'):
        seed_workers_by_epoch(plain, seed=0)

    class Stream(torch.utils.data.IterableDataset):
        transform = None

        def __iter__(self):
            return iter(range(3))

    stream = torch.utils.data.DataLoader(Stream(), num_workers=1, persistent_workers=True)
    with pytest.raises(ValueError, match='iterable dataset'):
        seed_workers_by_epoch(stream, seed=0)


@pytest.mark.parametrize('flags, persistent', [
    ([], True),
    (['-j', '0'], False),
    (['--aug-splits', '2'], False),
    (['--use-multi-epochs-loader'], False),
    (['--worker-seeding', 'part'], False),
])
def test_which_training_loaders_keep_their_workers(flags, persistent):
    args = train.parse_args(['--dataset', 'sklearn/digits', '--model', 'test_resnet', '-j', '2', *flags])
    assert train.persistent_train_workers(args, _Draws()) is persistent
    iterable = type('Stream', (torch.utils.data.IterableDataset,), {'__iter__': lambda self: iter(())})()
    assert train.persistent_train_workers(args, iterable) is False


def test_stop_workers_ends_the_persistent_workers_now():
    """At interpreter exit multiprocessing would SIGTERM them and their pymp-* temp folders would stay."""
    loader = _loader()
    assert len([sample for batch in loader for sample in batch]) == 8
    workers = list(loader._iterator._workers)
    assert len(workers) == NUM_WORKERS and all(w.is_alive() for w in workers)
    stop_workers(loader)
    assert loader._iterator is None and not any(w.is_alive() for w in workers)
    assert all(w.exitcode == 0 for w in workers)  # ended by the loader's own shutdown, not terminated
    stop_workers(loader)  # nothing left to stop
    assert len([sample for batch in loader for sample in batch]) == 8  # a later pass starts new workers
    stop_workers(loader)


def test_a_temp_folder_too_long_for_the_worker_sockets_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    """Past the socket address length a worker cannot hand its batch over and the loader waited for ever (the
    two-process test hung with xdist's longer temp path)."""
    from cfl_timm.data import check_worker_socket_dir
    suite_temp = tempfile.gettempdir()  # the suite's own temp folder (conftest), short enough for the sockets
    long_temp = str(tmp_path / ('t' * 100))
    monkeypatch.setattr(tempfile, 'tempdir', long_temp)
    with pytest.raises(ValueError, match=r'^-j/--workers 2: the system temp folder .* is too long for the loader '
                                         r"workers' sockets \(\d+ bytes with their names, over the 10[37] a socket "
                                         r'address holds; .*set TMPDIR to a shorter folder, or use -j 0\.$'):
        check_worker_socket_dir(2)
    check_worker_socket_dir(0)  # no workers, no sockets
    with pytest.raises(SystemExit) as error:
        train.cli(['--dataset', 'sklearn/digits', '--model', 'test_resnet', '-j', '2', '--output', str(tmp_path)])
    assert error.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        'train.py: error: -j/--workers 2: the system temp folder')
    monkeypatch.setattr(tempfile, 'tempdir', suite_temp)
    check_worker_socket_dir(2)
