"""A resumable grid runner whose cells can be shared by many workers on many hosts through one directory.

Used by the grid tool (``cfl-grid``; the cyclical focal loss study, arXiv 2202.08978 and 2202.08835). Every cell runs
in ``RUNS/<cell>/``; the guarantees are that a cell is never run by two workers at once and that a worker never
records a cell whose lock it lost:

- ``done.json``: written atomically when the cell finished, after checking that the lock is still ours; the cell
  is skipped by every later invocation (so is a cell whose per-run result file exists in ``results_dir``).
- ``lock``: created with ``O_CREAT | O_EXCL`` by the worker running the cell; it records host, pid, start time and
  a random token. **Ownership is the token**: a worker owns the lock while the file at ``lock`` holds its token
  (an inode number is no proof: ext4 hands a freed inode to the next file at once). Its mtime is the heartbeat,
  refreshed every ``heartbeat_interval`` seconds. A lock is stale when its owner is on this host and its pid is
  gone, or when its heartbeat is older than ``stale_after`` seconds (the only test possible for another host); a
  lock whose previous command (``child.json``) still runs on this host is never stale. A stale lock is taken over
  by renaming it away (of several contenders exactly one rename succeeds) and judging the renamed file again: a
  live lock moved by mistake is linked back. A worker that lost its lock stops its command, records nothing as
  done and leaves the lock alone; a lock is only ever removed by its owner (again moved away first and its
  token checked, so a lock that changed hands in between is put back).
- ``child.json``: the command a cell runs (:func:`run_guarded`) starts in its own process group under a small
  guard that asks the kernel to SIGKILL it when the worker dies (``PR_SET_PDEATHSIG``), so a killed worker never
  leaves its training running; its pid and start time are recorded here so no worker starts the cell while it
  is still alive.
- ``error.json``: the last failure (exit code, output tail); the cell is retried on the next invocation.
  ``attempts.jsonl`` keeps one line per attempt.
"""
import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from cfl_timm.files import atomic_write_text

GUARD_SCRIPT = Path(__file__).resolve().with_name('guard.py')

__all__ = ['Cell', 'CellFailed', 'CellLock', 'GridRunner', 'atomic_write_json', 'create_json', 'load_cell_fn',
           'live_child', 'run_guarded']

@dataclass(frozen=True)
class Cell:
    """One point of the grid: a loss or training variant, a data setting and a seed."""
    loss: str
    data: str
    seed: int

    @property
    def name(self) -> str:
        return f'{self.data}__{self.loss}__s{self.seed}'


class CellFailed(Exception):
    """A cell's command failed: its exit code and the tail of its output."""

    def __init__(self, exit_code: Optional[int], output_tail: str):
        super().__init__(f'exit code {exit_code}')
        self.exit_code = exit_code
        self.output_tail = output_tail


def atomic_write_json(path: Path, payload: Any) -> None:
    """JSON to ``path`` through the project's atomic writer (temp file, fsync, ``os.replace``)."""
    atomic_write_text(path, json.dumps(payload, indent=1))


def create_json(path: Path, payload: Any) -> None:
    """JSON to a new file ``path``, never over an existing one: written completely under a temporary name, then
    hard-linked to its name, which fails with ``FileExistsError`` if it exists (also when another process
    created it meanwhile)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{uuid.uuid4().hex[:8]}.tmp')
    atomic_write_json(tmp, payload)
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


# ------------------------------------------------------------------------------------------ processes


def _proc_stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state, 19 = start time), or None."""
    try:
        # "pid (comm) state ...": comm may hold spaces or parentheses, so split at the last ')'.
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (tells a pid from a later process given the same pid)."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _pid_alive(pid: int, start_time: Optional[int] = None) -> bool:
    """True if ``pid`` runs on this host (and started at ``start_time`` when given); a zombie counts as gone."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return not Path('/proc/self/stat').exists()  # no /proc: trust kill(pid, 0)
    if fields[0] in ('Z', 'X'):
        return False
    return start_time is None or len(fields) <= 19 or int(fields[19]) == start_time


def live_child(run_dir: Path, host: str) -> Optional[dict[str, Any]]:
    """The command recorded in ``run_dir/child.json`` if it still runs on ``host`` (this host), else None."""
    try:
        record = json.loads((Path(run_dir) / 'child.json').read_text())
    except (OSError, ValueError):
        return None
    if record.get('host') != host:
        return None
    return record if _pid_alive(int(record.get('pid', -1)), record.get('start_time')) else None


def run_guarded(command: Sequence[str], run_dir: Path, log_path: Path, *, should_stop: Callable[[], bool],
                env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None, host: Optional[str] = None,
                poll_interval: float = 0.5, term_timeout: float = 30.0) -> int:
    """Run ``command`` for a cell and return its exit code; it never outlives the worker.

    The command runs in its own process group (a stop signals the whole group, data-loader workers included)
    under a guard that makes the kernel SIGKILL it when this worker dies. Its pid and start time go to
    ``run_dir/child.json`` so that no other worker starts the cell while it is still alive. When
    ``should_stop()`` turns True (the lock was lost) the group gets SIGTERM, then SIGKILL after ``term_timeout``
    seconds, and :class:`CellFailed` is raised.
    """
    run_dir = Path(run_dir)
    # The guard is a standard-library script run by its path: it starts in milliseconds, before any import of the
    # package (and torch).
    guard = [sys.executable, str(GUARD_SCRIPT), str(os.getpid()), '--', *command]
    with open(log_path, 'ab') as log:
        log.write(('\n$ ' + ' '.join(command) + '\n').encode())
        log.flush()
        process = subprocess.Popen(guard, cwd=str(cwd) if cwd else None, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    record = {'host': host or socket.gethostname(), 'pid': process.pid, 'start_time': process_start_time(process.pid),
              'worker_pid': os.getpid(), 'started': time.time(), 'command': list(command)}
    atomic_write_json(run_dir / 'child.json', record)
    try:
        while process.poll() is None:
            if should_stop():
                _stop_group(process, term_timeout)
                raise CellFailed(None, 'lock lost to another worker; command stopped')
            time.sleep(poll_interval)
    except BaseException:
        if process.poll() is None:  # interrupted (KeyboardInterrupt, an error): never leave the command behind
            _stop_group(process, term_timeout)
        raise
    finally:
        if process.poll() is not None:
            _stop_group(process, 0.0)  # whatever the command left behind in its group
            try:
                os.unlink(run_dir / 'child.json')
            except FileNotFoundError:
                pass
    return process.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty


def _stop_group(process: subprocess.Popen, term_timeout: float) -> None:
    """SIGTERM the command's process group, SIGKILL it after ``term_timeout`` seconds, and reap the command.

    The group id is the command's pid, which the kernel does not hand out again while the group has members."""
    if term_timeout > 0 and process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=term_timeout)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


# ----------------------------------------------------------------------------------------------- lock


class CellLock:
    """An exclusive lock file for one cell, safe across processes and hosts sharing the directory.

    Args:
        path: the lock file (its directory is the cell's run directory).
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
        self.acquired = False
        self.took_over: Optional[dict[str, Any]] = None
        self.held_reason: Optional[str] = None

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
        return info if isinstance(info, dict) else None, st

    def stale_reason(self, info: Optional[dict[str, Any]], st: os.stat_result) -> Optional[str]:
        """Why the lock described by ``info``/``st`` is stale, or None when it is live (see :attr:`held_reason`)."""
        child = live_child(self.path.parent, self.host)
        if child is not None:
            self.held_reason = f"the cell's command (pid {child['pid']}) still runs on this host"
            return None
        age = time.time() - st.st_mtime
        if info is None:
            # Empty or half-written: its creator died between open and write, or is writing right now.
            if age > self.stale_after:
                return f'unreadable lock, {age:.0f} s old'
            self.held_reason = 'lock being written'
            return None
        if info.get('host') == self.host and not _pid_alive(int(info.get('pid', -1)), info.get('start_time')):
            return f"owner pid {info.get('pid')} on this host is gone"
        if age > self.stale_after:
            return f"no heartbeat from {info.get('host')}:{info.get('pid')} for {age:.0f} s"
        self.held_reason = f"held by {info.get('host')}:{info.get('pid')}"
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
                self._take_over(info, reason)
                continue
            with os.fdopen(fd, 'w') as f:
                json.dump({'host': self.host, 'pid': os.getpid(), 'start_time': process_start_time(os.getpid()),
                           'token': self.token, 'started': time.time()}, f)
                f.flush()
                os.fsync(f.fileno())
            self.acquired = True
            return True
        self.held_reason = 'contended'
        return False

    def _take_over(self, info: Optional[dict[str, Any]], reason: str) -> None:
        grave = self.path.with_name(f'{self.path.name}.stale-{self.token}')
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # another contender removed it first
        # The file we moved may not be the one we judged (it was replaced by a live lock in between): judge it
        # again and put a live one back.
        moved_info, moved_st = self.read(grave)
        if moved_st is not None and self.stale_reason(moved_info, moved_st) is None:
            self._put_back(grave)
            return
        os.unlink(grave)
        self.took_over = {'previous': info, 'reason': reason}

    def _put_back(self, grave: Path) -> None:
        try:
            os.link(grave, self.path)
        except FileExistsError:
            # A third worker created the lock meanwhile; the displaced owner no longer finds its token and stops
            # without recording. The moved file is left as it is (never deleted by a non-owner).
            return
        os.unlink(grave)

    # -- while held
    def owned(self) -> bool:
        """True while the file at ``path`` holds this object's token (the proof of ownership)."""
        if not self.acquired:
            return False
        for attempt in range(3):
            info, st = self.read(self.path)
            if st is not None:
                return info is not None and info.get('token') == self.token
            # Missing: a contender may have moved it away for a moment to judge it; it puts a live lock back.
            time.sleep(0.05 * (attempt + 1))
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
        """Remove the lock if it is still ours; a lock that is not ours is never touched."""
        if not self.owned():
            self.acquired = False
            return
        grave = self.path.with_name(f'{self.path.name}.release-{self.token}')
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            self.acquired = False
            return
        info, _ = self.read(grave)
        if info is None or info.get('token') != self.token:
            self._put_back(grave)  # it changed hands between the check and the rename
        else:
            os.unlink(grave)
        self.acquired = False


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
        results_dir: where the per-run result file ``<cell>.json`` goes when a cell finishes (None: none); a cell
            with a result file there counts as done.
        stream: where the progress line goes (stderr).
    """

    def __init__(self, cells: list[Cell], runs_dir: Path, cell_fn: Optional[CellFn], *, stale_after: float = 300.0,
                 heartbeat_interval: float = 10.0, host: Optional[str] = None, results_dir: Optional[Path] = None,
                 stream=None):
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
        self.results_dir = Path(results_dir) if results_dir is not None else None
        self.stream = stream if stream is not None else sys.stderr
        self._started = time.time()

    def run_dir(self, cell: Cell) -> Path:
        return self.runs_dir / cell.name

    def result_path(self, cell: Cell) -> Optional[Path]:
        return self.results_dir / f'{cell.name}.json' if self.results_dir is not None else None

    def is_done(self, cell: Cell) -> bool:
        result = self.result_path(cell)
        return (self.run_dir(cell) / 'done.json').is_file() or (result is not None and result.is_file())

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
                self._log(f'{cell.name}: skipped, {lock.held_reason}')
                continue
            try:
                if self.is_done(cell):  # finished by another worker between our check and our lock
                    summary['skipped_done'].append(cell.name)
                    continue
                child = live_child(run_dir, self.host)
                if child is not None:  # a lock removed by hand while its command still runs
                    summary['skipped_locked'].append(cell.name)
                    self._log(f"{cell.name}: skipped, its previous command (pid {child['pid']}) still runs")
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
        attempt = {'cell': asdict(cell), 'host': self.host, 'pid': os.getpid(), 'started': start,
                   'slurm_job_id': os.environ.get('SLURM_JOB_ID')}
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
        # Ownership is checked right before recording: a worker that was paused while another took the cell over
        # must not record it (nor, later, remove the new owner's lock).
        if error is None and (heartbeat.lost.is_set() or not lock.owned()):
            error = {'exit_code': None, 'output_tail': 'lock taken over by another worker; result discarded'}
        attempt.update(wall_seconds=wall, ok=error is None, **(error or {}))
        with open(run_dir / 'attempts.jsonl', 'a') as f:
            f.write(json.dumps(attempt) + '\n')
        if error is not None:
            atomic_write_json(run_dir / 'error.json', attempt)
            self._log(f'{cell.name} failed (exit code {error["exit_code"]}):\n{error["output_tail"][-1500:]}')
            return False
        record = {'cell': asdict(cell), 'result': result, 'wall_seconds': wall, 'host': self.host,
                  'pid': os.getpid(), 'slurm_job_id': attempt['slurm_job_id'], 'finished': time.time()}
        if self.result_path(cell) is not None:
            try:
                self._write_result(cell, record)
            except FileExistsError as exc:  # an earlier run's result appeared meanwhile: keep it, record nothing
                self._log(f'{cell.name}: {exc}; this run is not recorded')
                return False
        atomic_write_json(run_dir / 'done.json', record)
        try:
            os.unlink(run_dir / 'error.json')
        except FileNotFoundError:
            pass
        return True

    def _write_result(self, cell: Cell, record: dict[str, Any]) -> None:
        """The per-run result file, created only if absent (an earlier run of the cell is never overwritten):
        written completely under a temporary name, then hard-linked to its name, which fails if it exists."""
        path = self.result_path(cell)
        try:
            create_json(path, record)
        except FileExistsError:
            raise FileExistsError(f'{path} exists: an earlier run of {cell.name} was recorded') from None

    # -- reporting
    def counts(self) -> dict[str, Any]:
        done, failed, running, walls = 0, 0, 0, []
        for cell in self.cells:
            run_dir = self.run_dir(cell)
            if self.is_done(cell):
                done += 1
                for path in (run_dir / 'done.json', self.result_path(cell)):
                    if path is not None and path.is_file():
                        try:
                            walls.append(json.loads(path.read_text())['wall_seconds'])
                            break
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
        print(f'[cfl-grid {time.strftime("%H:%M:%S")} pid {os.getpid()}] {message}', file=self.stream, flush=True)

