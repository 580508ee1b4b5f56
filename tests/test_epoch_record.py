"""The atomic epoch record: a crash injected at every file operation of an epoch's save (in-process, at the ``os``
calls themselves), then the recovery of ``--resume auto`` and the rest of the run, leave every run file
(``last``, ``checkpoint-N``, ``model_best``, ``summary.csv``, ``reliability.jsonl``) bit-identical to an
uninterrupted run's; once on the saver directly (every point), once through train.py (the points either side of
the commit)."""
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import train
from cfl_timm.files import ReliabilityLog, SummaryCSV, is_temp_file, read_summary
from cfl_timm.training import checkpoint as ckpt
from cfl_timm.training.epoch_record import read_epoch_record

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread per test

# The os calls that change files; a crash before any of them is a kill point.
MUTATING = ('open', 'fsync', 'replace', 'link', 'remove', 'unlink')
EPOCHS = 3
KILLED_EPOCH = 1


class SimulatedKill(BaseException):
    """Raised at a kill point; a BaseException, so nothing catches it (as with SIGKILL)."""


class CrashInjector:
    """Counts the mutating ``os`` calls while armed and 'kills the process' at the k-th: that call and every later
    one raise, so no clean-up runs (as after SIGKILL). A write killed at its fsync leaves a torn temp file."""

    def __init__(self, patch: pytest.MonkeyPatch, kill_at=None):
        self.kill_at, self.armed, self.dead = kill_at, False, False
        self.seen: list[str] = []
        for name in MUTATING:
            patch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name, original):
        def operation(*args, **kwargs):
            if self.dead:
                raise SimulatedKill(f'{name} after the kill')
            if self.armed:
                self.seen.append(f'{name}({_shown(args[0])})')
                if len(self.seen) == self.kill_at:
                    self.dead = True
                    if name == 'fsync' and stat.S_ISREG(os.fstat(args[0]).st_mode):
                        # killed before the data reached the disk: half of it is there
                        os.ftruncate(args[0], os.fstat(args[0]).st_size // 2)
                    raise SimulatedKill(self.seen[-1])
            return original(*args, **kwargs)
        return operation


def _shown(target) -> str:
    if isinstance(target, int):
        return '<fd>'
    if Path(target).is_dir():
        return '<run folder>'
    return '<temp of ' + Path(target).name.split('.')[1] + '>' if is_temp_file(target) else Path(target).name


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


# ------------------------------------------------------------------------------------ the saver, every point

def _epoch_state(model: nn.Module, epoch: int) -> None:
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) * (epoch + 1) + i)


def _open(run_dir: Path, start_epoch: int):
    """What train.py opens: a saver (its history restored from last.pth.tar on resume), the summary, the log."""
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = ckpt.AtomicCheckpointSaver(model=model, optimizer=optimizer, checkpoint_dir=str(run_dir),
                                       recovery_dir=str(run_dir), max_history=1, run_id='00c0ffee00c0ffee')
    if start_epoch:
        saver.load_state_dict_from_checkpoint(str(run_dir / 'last.pth.tar'))
    return (model, saver, SummaryCSV(run_dir / 'summary.csv', start_epoch=start_epoch),
            ReliabilityLog(run_dir / 'reliability.jsonl', start_epoch=start_epoch))


def _record(opened, epoch: int) -> None:
    model, saver, summary, reliability = opened
    _epoch_state(model, epoch)
    metric = [0.5, 0.7, 0.6][epoch]  # epoch 1 is the best, and evicts checkpoint-0 from a history of one
    bins = {'edges': [0.0, 0.5, 1.0], 'count': [epoch, 3], 'confidence': [0.25, float('nan')], 'accuracy': [1, 0]}
    updates = [summary.epoch_update({'epoch': epoch, 'train_loss': 1.0 / (epoch + 1), 'eval_top1': metric}),
               reliability.epoch_update(epoch, bins, {'ece': metric / 10})]
    saver.save_checkpoint(epoch, metric=metric, updates=updates)


def _run(run_dir: Path, start_epoch: int = 0, stop_after: int = EPOCHS) -> None:
    opened = _open(run_dir, start_epoch)
    for epoch in range(start_epoch, stop_after):
        _record(opened, epoch)


def _resume(run_dir: Path) -> int:
    """--resume auto: recover the folder, then continue after the newest complete checkpoint."""
    ckpt.recover_run_dir(run_dir)
    start_epoch = ckpt.checkpoint_epoch(ckpt.find_resume_checkpoint(run_dir)) + 1
    _run(run_dir, start_epoch)
    return start_epoch


def test_a_crash_at_every_file_operation_of_an_epoch_resumes_to_identical_files(tmp_path):
    _run(tmp_path / 'reference')
    reference = _files(tmp_path / 'reference')
    assert sorted(reference) == ['checkpoint-1.pth.tar', 'last.pth.tar', 'model_best.pth.tar', 'reliability.jsonl',
                                 'summary.csv']

    def killed_run(run_dir: Path, kill_at=None) -> list[str]:
        _run(run_dir, stop_after=KILLED_EPOCH)
        opened = _open(run_dir, KILLED_EPOCH)
        with pytest.MonkeyPatch.context() as patch:
            injector = CrashInjector(patch, kill_at)
            injector.armed = True
            try:
                _record(opened, KILLED_EPOCH)
            except SimulatedKill:
                pass
        return injector.seen

    operations = killed_run(tmp_path / 'count')
    # Every file of the epoch is written at one of the points (each a temp file, then renamed).
    for stem in ('tmp', 'epoch-record', 'last', 'checkpoint-1', 'model_best', 'summary', 'reliability'):
        assert f'replace(<temp of {stem}>)' in operations, (stem, operations)
    assert 'remove(checkpoint-0.pth.tar)' in operations  # the eviction is a point too
    assert len(operations) >= 20, operations

    commit = operations.index('replace(<temp of epoch-record>)') + 1
    for kill_at, operation in enumerate(operations, start=1):
        run_dir = tmp_path / f'kill{kill_at}'
        assert killed_run(run_dir, kill_at)[-1] == operation
        committed = kill_at > commit
        # Committed and not yet closed: the record is there for the recovery (the last point removes tmp.pth.tar).
        assert (read_epoch_record(run_dir) is not None) == (committed and kill_at < len(operations)), operation
        start_epoch = _resume(run_dir)
        assert start_epoch == (KILLED_EPOCH + 1 if committed else KILLED_EPOCH), operation
        assert _files(run_dir) == reference, operation


# ------------------------------------------------------------------------------------ train.py, either side

ARGS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-b', '32', '-j', '0',
        '--train_size', '64', '--epochs', str(KILLED_EPOCH + 1), '--lr', '0.05', '--warmup-epochs', '0', '--focal_loss',
        'asym-cyclical', '--eval-metric', 'loss', '--log-interval', '1000', '--experiment', 'run',
        '--checkpoint-hist', '2']


def _train(output: Path, *extra: str) -> dict:
    return train.main(train.parse_args([*ARGS, '--output', str(output), *extra]))


def _train_killed(output: Path, kill_at=None) -> list[str]:
    """train.py with the crash injector armed during the save of epoch 1 (the second save)."""
    saves = [0]
    original = ckpt.AtomicCheckpointSaver.save_checkpoint
    with pytest.MonkeyPatch.context() as patch:  # its own: the test's monkeypatch keeps conftest's settings
        injector = CrashInjector(patch, kill_at)

        def save_checkpoint(self, epoch, metric=None, updates=()):
            saves[0] += 1
            injector.armed = saves[0] == KILLED_EPOCH + 1
            try:
                return original(self, epoch, metric, updates)
            finally:
                injector.armed = False

        patch.setattr(ckpt.AtomicCheckpointSaver, 'save_checkpoint', save_checkpoint)
        try:
            _train(output)
        except SimulatedKill:
            pass
    return injector.seen


def _rows(run_dir: Path) -> list[dict]:
    """summary.csv's rows without epoch_time (wall seconds: the one column that differs between equal runs)."""
    return [{k: v for k, v in row.items() if k != 'epoch_time'} for row in read_summary(run_dir / 'summary.csv')]


def _checkpoint(path: Path) -> dict:
    state = torch.load(path, map_location='cpu', weights_only=False)
    state.pop('args')  # holds --output, which differs between the two folders
    state['saver'].pop('run_id')
    return state


def test_train_py_killed_either_side_of_the_commit_resumes_to_identical_files(tmp_path):
    operations = _train_killed(tmp_path / 'reference')  # never killed: the reference run
    reference_dir = tmp_path / 'reference' / 'run'
    reference = _files(reference_dir)
    commit = operations.index('replace(<temp of epoch-record>)') + 1
    # Killed at the commit itself (the epoch is rolled back) and just after it (rolled forward).
    for kill_at in (commit, commit + 1):
        run_dir = tmp_path / f'kill{kill_at}' / 'run'
        assert _train_killed(run_dir.parent, kill_at)[-1] == operations[kill_at - 1]
        assert ckpt.checkpoint_epoch(run_dir / 'last.pth.tar') == KILLED_EPOCH - 1  # not yet applied
        _train(run_dir.parent, '--resume', 'auto')
        files = _files(run_dir)
        assert sorted(files) == sorted(reference), kill_at
        assert files['reliability.jsonl'] == reference['reliability.jsonl'], kill_at
        assert _rows(run_dir) == _rows(reference_dir), kill_at
        for name in (n for n in files if n.endswith('.pth.tar')):
            got, want = _checkpoint(run_dir / name), _checkpoint(reference_dir / name)
            assert got['epoch'] == want['epoch'] and got['saver'] == want['saver'], (kill_at, name)
            for key, value in want['state_dict'].items():
                assert torch.equal(got['state_dict'][key], value), (kill_at, name, key)
            assert str(got['optimizer']) == str(want['optimizer']), (kill_at, name)
        shutil.rmtree(run_dir.parent)
