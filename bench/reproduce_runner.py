"""A resumable grid runner whose cells can be shared by many workers on many hosts through one directory.

Used by ``bench/reproduce.py`` (the cyclical focal loss reproduction study, arXiv 2202.08978). Every cell runs in
``RUNS/<cell>/``:

- ``done.json``: written atomically (temp file + ``os.replace``) when the cell finished; the cell is skipped by
  every later invocation.
- ``lock``: created with ``O_CREAT | O_EXCL`` by the worker running the cell; it records host, pid, a random
  token and the start time. Its mtime is the heartbeat, refreshed every ``heartbeat_interval`` seconds. A lock
  is stale when its owner is on this host and its pid is gone, or when its heartbeat is older than
  ``stale_after`` seconds (the only test possible for another host). A stale lock is taken over by renaming it
  away (atomic: of several contenders exactly one rename succeeds) and checking that the renamed file is the one
  judged stale (same inode); a fresh lock moved by mistake is linked back. A worker whose lock was taken over
  notices it at its next heartbeat, stops its cell and records nothing as done.
- ``error.json``: the last failure (exit code, stderr tail); the cell is retried on the next invocation.
  ``attempts.jsonl`` keeps one line per attempt.
"""
import importlib
import importlib.util
import json
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

__all__ = ['Cell', 'CellFailed', 'CellLock', 'GridRunner', 'atomic_write_json', 'load_cell_fn']


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""
    loss: str
    data: str
    seed: int

    @property
    def name(self) -> str:
        return f'{self.data}__{self.loss}__s{self.seed}'


class CellFailed(Exception):
    """A cell's command failed: its exit code and the tail of its output."""

    def __init__(self, exit_code: int, output_tail: str):
        super().__init__(f'exit code {exit_code}')
        self.exit_code = exit_code
        self.output_tail = output_tail


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
    with open(tmp, 'w') as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs on this host; a zombie (exited, not yet reaped) counts as gone."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # /proc/<pid>/stat: "pid (comm) state ..."; comm may hold spaces or parentheses, so split at the last ')'.
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ('Z', 'X')


class CellLock:
    """An exclusive lock file for one cell, safe across processes and hosts sharing the directory.

    Args:
        path: the lock file.
        stale_after: seconds without heartbeat after which the lock is stale whoever holds it.
        host: this host's name (default ``socket.gethostname()``).
    """

    def __init__(self, path: Path, stale_after: float = 300.0, host: Optional[str] = None):
        if stale_after <= 0:
            raise ValueError(f'stale_after must be > 0 seconds, got {stale_after}')
        self.path = Path(path)
        self.stale_after = stale_after
        self.host = host or socket.gethostname()
        self.token = uuid.uuid4().hex
        self.inode: Optional[int] = None
        self.took_over: Optional[dict[str, Any]] = None

    # -- inspection
    @staticmethod
    def read(path: Path) -> tuple[Optional[dict[str, Any]], Optional[os.stat_result]]:
        """The lock's content (None if unreadable or still empty) and its stat (None if it does not exist)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None, None
        try:
            info = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            info = None
        return info, st

    def stale_reason(self, info: Optional[dict[str, Any]], st: os.stat_result) -> Optional[str]:
        """Why the lock described by ``info``/``st`` is stale, or None when it is live."""
        age = time.time() - st.st_mtime
        if info is None:
            # Empty or half-written: its creator died between open and write, or is writing right now.
            return f'unreadable lock, {age:.0f} s old' if age > self.stale_after else None
        if info.get('host') == self.host and not _pid_alive(int(info.get('pid', -1))):
            return f"owner pid {info.get('pid')} on this host is gone"
        if age > self.stale_after:
            return f"no heartbeat from {info.get('host')}:{info.get('pid')} for {age:.0f} s"
        return None

    # -- acquisition
    def try_acquire(self) -> bool:
        """Create the lock (or take a stale one over); False when another live worker holds it."""
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info, st = self.read(self.path)
                if st is None:
                    continue  # released meanwhile: try again
                reason = self.stale_reason(info, st)
                if reason is None:
                    return False
                self._take_over(st, info, reason)
                continue
            with os.fdopen(fd, 'w') as f:
                json.dump({'host': self.host, 'pid': os.getpid(), 'token': self.token, 'started': time.time()}, f)
                f.flush()
                os.fsync(f.fileno())
            self.inode = os.stat(self.path).st_ino
            return True
        return False

    def _take_over(self, judged: os.stat_result, info: Optional[dict[str, Any]], reason: str) -> None:
        grave = self.path.with_name(f'{self.path.name}.stale-{self.token}')
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # another contender removed it first
        if os.stat(grave).st_ino != judged.st_ino:
            # Between our judgement and the rename the stale lock was replaced by a live one: put it back.
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass  # a third worker created the lock meanwhile; the displaced owner sees it at its heartbeat
            os.unlink(grave)
            return
        os.unlink(grave)
        self.took_over = {'previous': info, 'reason': reason}

    # -- while held
    def owned(self) -> bool:
        """True while the lock file is still the one this object created."""
        try:
            return self.inode is not None and os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            return False

    def heartbeat(self) -> bool:
        """Refresh the heartbeat (the mtime); False when the lock is no longer ours."""
        if not self.owned():
            return False
        try:
            os.utime(self.path)
        except FileNotFoundError:
            return False
        return True

    def release(self) -> None:
        """Remove the lock if it is still ours (moved away first so a foreign lock is never deleted)."""
        if self.inode is None:
            return
        grave = self.path.with_name(f'{self.path.name}.release-{self.token}')
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            self.inode = None
            return
        if os.stat(grave).st_ino != self.inode:
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        os.unlink(grave)
        self.inode = None


class _Heartbeat(threading.Thread):
    def __init__(self, lock: CellLock, interval: float):
        super().__init__(daemon=True)
        self.lock, self.interval = lock, interval
        self.lost = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            if not self.lock.heartbeat():
                self.lost.set()
                return


CellFn = Callable[..., dict[str, Any]]


def load_cell_fn(spec: str) -> CellFn:
    """``path/to/file.py:function`` or ``package.module:function`` -> the function."""
    if ':' not in spec:
        raise ValueError(f'cell function must be FILE.py:NAME or MODULE:NAME, got {spec!r}')
    target, name = spec.rsplit(':', 1)
    if target.endswith('.py'):
        module_spec = importlib.util.spec_from_file_location(Path(target).stem + '_cells', target)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f'cannot load {target}')
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, name)


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f'{seconds // 3600:d}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else \
        f'{seconds // 60:d}m{seconds % 60:02d}s'


class GridRunner:
    """Runs every not-yet-done cell once, skipping cells that are done or held by a live worker.

    Args:
        cells: the grid.
        runs_dir: directory of the cell directories (may be shared between hosts).
        cell_fn: ``cell_fn(cell, run_dir, should_stop) -> dict`` (the result stored in ``done.json``); raises
            :class:`CellFailed` (or any exception) on failure; ``should_stop()`` turns True if the lock was lost.
        stale_after: see :class:`CellLock`.
        heartbeat_interval: seconds between heartbeats; must be well below ``stale_after``.
        stream: where the progress line goes (stderr).
    """

    def __init__(self, cells: list[Cell], runs_dir: Path, cell_fn: Optional[CellFn], *, stale_after: float = 300.0,
                 heartbeat_interval: float = 10.0, host: Optional[str] = None, stream=None):
        if heartbeat_interval <= 0 or heartbeat_interval * 3 > stale_after:
            raise ValueError(f'heartbeat_interval ({heartbeat_interval}) must be > 0 and at most stale_after / 3 '
                             f'({stale_after / 3:g}) so a live worker never looks stale')
        names = [c.name for c in cells]
        if len(set(names)) != len(names):
            raise ValueError('duplicate cells in the grid')
        self.cells = list(cells)
        self.runs_dir = Path(runs_dir)
        self.cell_fn = cell_fn
        self.stale_after = stale_after
        self.heartbeat_interval = heartbeat_interval
        self.host = host or socket.gethostname()
        self.stream = stream if stream is not None else sys.stderr
        self._started = time.time()

    def run_dir(self, cell: Cell) -> Path:
        return self.runs_dir / cell.name

    def is_done(self, cell: Cell) -> bool:
        return (self.run_dir(cell) / 'done.json').is_file()

    def run(self) -> dict[str, list[str]]:
        """One pass over the grid; returns the cell names ran / done before / held elsewhere / failed."""
        if self.cell_fn is None:
            raise ValueError('GridRunner.run needs a cell_fn')
        summary: dict[str, list[str]] = {'ran': [], 'skipped_done': [], 'skipped_locked': [], 'failed': []}
        for cell in self.cells:
            if self.is_done(cell):
                summary['skipped_done'].append(cell.name)
                continue
            run_dir = self.run_dir(cell)
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = CellLock(run_dir / 'lock', stale_after=self.stale_after, host=self.host)
            if not lock.try_acquire():
                summary['skipped_locked'].append(cell.name)
                continue
            try:
                if self.is_done(cell):  # finished by another worker between our check and our lock
                    summary['skipped_done'].append(cell.name)
                    continue
                if lock.took_over:
                    self._log(f'{cell.name}: took over a stale lock ({lock.took_over["reason"]})')
                self.progress(f'start {cell.name}')
                ok = self._run_cell(cell, run_dir, lock)
                summary['ran' if ok else 'failed'].append(cell.name)
                self.progress(f'{"done" if ok else "FAILED"} {cell.name}')
            finally:
                lock.release()
        self._log(f'pass finished: ran {len(summary["ran"])}, failed {len(summary["failed"])}, '
                  f'done before {len(summary["skipped_done"])}, held elsewhere {len(summary["skipped_locked"])}')
        return summary

    def _run_cell(self, cell: Cell, run_dir: Path, lock: CellLock) -> bool:
        heartbeat = _Heartbeat(lock, self.heartbeat_interval)
        heartbeat.start()
        start = time.time()
        attempt = {'cell': asdict(cell), 'host': self.host, 'pid': os.getpid(), 'started': start}
        try:
            result = self.cell_fn(cell, run_dir, should_stop=heartbeat.lost.is_set)
            error = None
        except CellFailed as exc:
            error = {'exit_code': exc.exit_code, 'output_tail': exc.output_tail}
        except Exception as exc:  # noqa: BLE001 - any failure of a cell is recorded, never fatal to the grid
            error = {'exit_code': None, 'output_tail': ''.join(traceback.format_exception(exc))[-4000:]}
        finally:
            heartbeat.stopped.set()
            heartbeat.join()
        wall = time.time() - start
        if error is None and heartbeat.lost.is_set():
            error = {'exit_code': None, 'output_tail': 'lock taken over by another worker; result discarded'}
        attempt.update(wall_seconds=wall, ok=error is None, **(error or {}))
        with open(run_dir / 'attempts.jsonl', 'a') as f:
            f.write(json.dumps(attempt) + '\n')
        if error is not None:
            atomic_write_json(run_dir / 'error.json', attempt)
            self._log(f'{cell.name} failed (exit code {error["exit_code"]}):\n{error["output_tail"][-1500:]}')
            return False
        atomic_write_json(run_dir / 'done.json', {
            'cell': asdict(cell), 'result': result, 'wall_seconds': wall, 'host': self.host, 'pid': os.getpid(),
            'finished': time.time()})
        try:
            os.unlink(run_dir / 'error.json')
        except FileNotFoundError:
            pass
        return True

    # -- reporting
    def counts(self) -> dict[str, Any]:
        done, failed, running, walls = 0, 0, 0, []
        for cell in self.cells:
            run_dir = self.run_dir(cell)
            if (run_dir / 'done.json').is_file():
                done += 1
                try:
                    walls.append(json.loads((run_dir / 'done.json').read_text())['wall_seconds'])
                except (OSError, ValueError, KeyError):
                    pass
                continue
            if (run_dir / 'lock').exists():
                running += 1
            elif (run_dir / 'error.json').is_file():
                failed += 1
        return {'total': len(self.cells), 'done': done, 'failed': failed, 'running': running, 'walls': walls}

    def progress(self, event: str) -> None:
        c = self.counts()
        width = 30
        filled = int(width * c['done'] / max(c['total'], 1))
        remaining = c['total'] - c['done']
        if c['walls']:
            eta = remaining * (sum(c['walls']) / len(c['walls'])) / max(c['running'], 1)
            eta_text = f'ETA {_format_seconds(eta)}'
        else:
            eta_text = 'ETA ?'
        self._log(f'[{"#" * filled}{"." * (width - filled)}] {c["done"]}/{c["total"]} done, {c["running"]} running, '
                  f'{c["failed"]} failed | {eta_text} | elapsed {_format_seconds(time.time() - self._started)} '
                  f'| {event}')

    def print_status(self) -> None:
        c = self.counts()
        print(f'{c["done"]}/{c["total"]} done, {c["running"]} running (lock present), {c["failed"]} failed')
        for cell in self.cells:
            run_dir = self.run_dir(cell)
            if (run_dir / 'error.json').is_file() and not self.is_done(cell):
                error = json.loads((run_dir / 'error.json').read_text())
                print(f'  failed: {cell.name} (exit code {error.get("exit_code")})')

    def _log(self, message: str) -> None:
        print(f'[reproduce {time.strftime("%H:%M:%S")} pid {os.getpid()}] {message}', file=self.stream, flush=True)
