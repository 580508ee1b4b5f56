"""One owner and one history per run folder: the run id and the run-folder lock of train.py.

A run folder holds one run. ``run.json`` names its run id (random hex, made when the run starts in the folder)
and, for a run started from another run's checkpoint, that source; every checkpoint records the id of the run
that wrote it (``checkpoint['saver']['run_id']``). So ``--resume`` continues only the run the checkpoint belongs
to: a checkpoint of run A resumed into a folder holding run B is refused before anything is written, and a
checkpoint resumed into a new folder starts a new run (new id, source recorded).

While a run trains, its primary process holds an exclusive ``fcntl.flock`` on ``run.lock`` in the folder
through an open file descriptor. The kernel drops the lock when the process ends, however it ends (SIGKILL
included), so a crash never leaves a stale lock; the file itself stays and is reused. The holder writes its pid
and host into the file, for the error a second process gets. A forked child (a data-loader worker) closes its
copy of the descriptor at once: a flock belongs to the open file, so a worker that outlived a killed trainer would
otherwise hold the folder until it noticed and exited, and an immediate ``--resume`` would be refused.
"""
import fcntl
import json
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..files import atomic_write_text

__all__ = ['LOCK_NAME', 'RUN_RECORD_NAME', 'RunLock', 'checkpoint_run_id', 'claim_run', 'read_run_id']

LOCK_NAME = 'run.lock'
RUN_RECORD_NAME = 'run.json'

_held_lock_fds: set[int] = set()  # this process's lock descriptors, closed in every forked child


def _close_held_locks_in_child() -> None:
    for fd in _held_lock_fds:
        try:
            os.close(fd)  # the parent's descriptor, and so its flock, stays
        except OSError:
            pass
    _held_lock_fds.clear()


os.register_at_fork(after_in_child=_close_held_locks_in_child)


class RunLock:
    """An exclusive lock on a run folder, held from :meth:`acquire` until :meth:`release` or process exit."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: Optional[int] = fd

    @classmethod
    def acquire(cls, output_dir: str | Path) -> 'RunLock':
        """Create ``output_dir`` if needed and lock it, without waiting.

        Raises:
            ValueError: Another process holds the folder, naming its pid and host.
        """
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip() or 'pid and host not yet written'
            os.close(fd)
            raise ValueError(f'--output/--experiment: {output_dir} is in use by another train.py ({holder}); '
                             'wait for it to end, or choose another --experiment.') from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'pid {os.getpid()} on host {socket.gethostname()}\n'.encode(), 0)
        _held_lock_fds.add(fd)
        return cls(path, fd)

    def release(self) -> None:
        """Unlock (closing the descriptor drops the flock); the file stays, so no other process races on it."""
        if self._fd is not None:
            _held_lock_fds.discard(self._fd)
            os.close(self._fd)
            self._fd = None


def _read_run_record(output_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((output_dir / RUN_RECORD_NAME).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get('run_id'), str) else {}


def read_run_id(output_dir: str | Path) -> Optional[str]:
    """The run id recorded in ``output_dir/run.json``, or None (no record: a new folder, or one from before
    run ids)."""
    return _read_run_record(Path(output_dir)).get('run_id')


def checkpoint_run_id(checkpoint: dict[str, Any]) -> Optional[str]:
    """The id of the run that wrote a training checkpoint, or None for a checkpoint from before run ids."""
    saver = checkpoint.get('saver')
    run_id = saver.get('run_id') if isinstance(saver, dict) else None
    return run_id if isinstance(run_id, str) else None


@dataclass(frozen=True)
class RunClaim:
    """The run a process trains: its id and, when the run started from another run's checkpoint, the source."""

    run_id: str
    resumed_from: Optional[dict[str, Any]] = None

    def write(self, output_dir: str | Path) -> None:
        """Record the run in ``output_dir/run.json`` (atomically)."""
        record = {'run_id': self.run_id, 'resumed_from': self.resumed_from}
        atomic_write_text(Path(output_dir) / RUN_RECORD_NAME, json.dumps(record, indent=1) + '\n')


def claim_run(output_dir: str | Path, in_use: list[str], resume_path: str,
              checkpoint: Optional[dict[str, Any]]) -> RunClaim:
    """The run this process may train in ``output_dir``; refuses a checkpoint of another run.

    Args:
        output_dir: The run folder.
        in_use: Its run files before this process wrote anything (:func:`cfl_timm.training.run_dir_in_use`).
        resume_path: The checkpoint resumed from ('' for none).
        checkpoint: That checkpoint, loaded.

    Returns:
        The folder's own run when it holds one (its id; a folder from before run ids gets one now); otherwise a
        new run, recording the checkpoint it starts from, if any.

    Raises:
        ValueError: ``output_dir`` holds a run and the checkpoint belongs to another one, naming both.
    """
    output_dir = Path(output_dir)
    record = _read_run_record(output_dir)
    folder_id = record.get('run_id')
    if in_use and resume_path and checkpoint is not None:
        source_id = checkpoint_run_id(checkpoint)
        in_folder = Path(resume_path).resolve().parent == output_dir.resolve()
        same_run = source_id == folder_id if folder_id is not None else source_id is None and in_folder
        if not same_run:
            raise ValueError(
                f'--resume: {resume_path} belongs to run {source_id or "(no run id)"}, but {output_dir} holds run '
                f'{folder_id or "(no run id)"} ({", ".join(in_use[:4])}); resume into the checkpoint\'s own folder, '
                'or pass a new --experiment to start a new run from it.')
    if in_use:  # the folder's own run goes on, keeping its record
        return RunClaim(folder_id, record.get('resumed_from')) if folder_id else RunClaim(secrets.token_hex(8))
    if resume_path and checkpoint is not None:
        source = {'checkpoint': str(Path(resume_path).resolve()), 'run_id': checkpoint_run_id(checkpoint),
                  'epoch': checkpoint.get('epoch')}
        return RunClaim(secrets.token_hex(8), resumed_from=source)
    return RunClaim(secrets.token_hex(8))
