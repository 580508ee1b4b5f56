"""Where the cells of the study grid run: worker processes on this machine, or one Slurm job per cell.

Both executors run the same worker (:func:`run_worker`: a :class:`cfl_timm.grid.runner.GridRunner` over some cells),
so local workers and Slurm jobs can share one runs directory: the cell locks keep them apart, ``done.json`` (or
the per-run result file) makes every later invocation skip a finished cell, and a cell that failed is run again
by the next invocation.

- :class:`LocalExecutor`: ``jobs`` worker processes on this host, started from the already parsed settings
  (never by re-running the command line, so they cannot start workers of their own).
- :class:`SlurmExecutor`: submits each cell that is neither done nor queued as one Slurm job through ``submitit``
  (partition, time limit, CPUs and GPUs per task); the job ids go to ``<run dir>/slurm_jobs.jsonl``. A cell whose
  last job is still pending or running (``squeue``) is not submitted again; one whose last job ended without
  ``done.json`` (failed, cancelled, timed out, node lost) is submitted again by the next invocation. With
  ``wait`` the call returns once every job it submitted has ended, with the count of done and failed cells.
"""
import abc
import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .runner import Cell, GridRunner, atomic_write_json, load_cell_fn

__all__ = ['EXECUTORS', 'Executor', 'LocalExecutor', 'SlurmExecutor', 'WorkerSpec', 'run_worker', 'slurm_job_states']

@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, as plain picklable values (sent to worker processes and Slurm jobs).

    Attributes:
        runs_dir: directory of the cell directories.
        factory: ``MODULE:NAME`` or ``FILE.py:NAME`` of ``NAME(**factory_kwargs) -> cell_fn``.
        factory_kwargs: keyword arguments of the factory (plain values).
        results_dir: where the per-run result files go (None: none).
        stale_after: seconds without heartbeat after which a lock is stale.
        heartbeat: seconds between heartbeats.
    """
    runs_dir: Path
    factory: str
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    results_dir: Optional[Path] = None
    stale_after: float = 300.0
    heartbeat: float = 10.0

    def runner(self, cells: Sequence[Cell], with_cell_fn: bool = True) -> GridRunner:
        cell_fn = load_cell_fn(self.factory)(**self.factory_kwargs) if with_cell_fn else None
        return GridRunner(list(cells), self.runs_dir, cell_fn, stale_after=self.stale_after,
                          heartbeat_interval=self.heartbeat, results_dir=self.results_dir)


def run_worker(spec: WorkerSpec, cells: Sequence[Cell]) -> dict[str, list[str]]:
    """One worker: one pass of the grid runner over ``cells``."""
    return spec.runner(cells).run()


class Executor(abc.ABC):
    """Runs (or submits) the cells of a grid; returns the exit status of the invocation (0: nothing failed)."""
    name: str = ''

    @abc.abstractmethod
    def run(self, spec: WorkerSpec, cells: Sequence[Cell]) -> int:
        ...


def _local_worker(spec: WorkerSpec, cells: Sequence[Cell]) -> None:
    sys.exit(1 if run_worker(spec, cells)['failed'] else 0)


class LocalExecutor(Executor):
    """``jobs`` worker processes on this host (one: the calling process itself).

    Args:
        jobs: number of worker processes.
    """
    name = 'local'

    def __init__(self, jobs: int = 1):
        if jobs < 1:
            raise ValueError(f'jobs must be >= 1, got {jobs}')
        self.jobs = jobs

    def run(self, spec: WorkerSpec, cells: Sequence[Cell]) -> int:
        if self.jobs == 1:
            return 1 if run_worker(spec, cells)['failed'] else 0
        # Independent worker processes sharing the directory (the locks keep them apart). 'fork' starts them
        # from this process's state, with no command line to parse again.
        method = 'fork' if 'fork' in multiprocessing.get_all_start_methods() else 'spawn'
        context = multiprocessing.get_context(method)
        workers = [context.Process(target=_local_worker, args=(spec, list(cells)), name=f'grid-worker-{i}')
                   for i in range(self.jobs)]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join()
        except BaseException:
            # SIGTERM (or Ctrl-C) here: pass it on, so that each worker stops its cell's command; otherwise
            # interpreter cleanup would wait for the workers to finish the whole grid.
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.join()
            raise
        return max(1 if w.exitcode else 0 for w in workers)


# ------------------------------------------------------------------------------------------------ Slurm

# squeue lists a job while it is in one of these states; any other state (or no line at all) means it ended.
SLURM_ACTIVE_STATES = frozenset({'PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'SUSPENDED', 'REQUEUED',
                                 'REQUEUE_HOLD', 'REQUEUE_FED', 'RESIZING', 'SIGNALING', 'STAGE_OUT', 'STOPPED'})


def slurm_job_states() -> dict[str, str]:
    """Job id -> state of this user's jobs that squeue still lists (array tasks under their own id)."""
    done = subprocess.run(['squeue', '--me', '--noheader', '--format=%i|%T'], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'squeue failed (exit code {done.returncode}): {done.stderr.strip()}')
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition('|')
        if job_id:
            states[job_id] = state
    return states


def _job_active(job_id: str, states: dict[str, str]) -> bool:
    return states.get(str(job_id)) in SLURM_ACTIVE_STATES


def run_slurm_cell(spec: WorkerSpec, cell: Cell) -> dict[str, list[str]]:
    """The function a Slurm job runs: the worker over one cell; a failed cell fails the job.

    A retried cell may still hold the lock of its previous job, which died on another node: its heartbeat stops,
    so the job waits up to ``stale_after`` (plus two heartbeats) for the lock to turn stale and takes it over."""
    runner = spec.runner([cell])
    deadline = time.time() + spec.stale_after + 2 * spec.heartbeat
    while True:
        summary = runner.run()
        if not summary['skipped_locked'] or time.time() > deadline:
            break
        time.sleep(spec.heartbeat)
    if summary['failed']:
        raise RuntimeError(f'cell {cell.name} failed; see {spec.runs_dir / cell.name / "error.json"}')
    return summary


def last_slurm_job(run_dir: Path) -> Optional[dict[str, Any]]:
    """The last job recorded in ``run_dir/slurm_jobs.jsonl`` (None if none)."""
    path = Path(run_dir) / 'slurm_jobs.jsonl'
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


class SlurmExecutor(Executor):
    """One Slurm job per cell through ``submitit``.

    Args:
        log_dir: submitit's folder for job scripts, pickles and logs (``<log_dir>/<job id>/``).
        partition: Slurm partition (None: the cluster's default).
        time_min: time limit of each job in minutes.
        cpus_per_task: CPUs of each job.
        gpus_per_task: GPUs of each job (0: none requested).
        setup: extra shell lines run before the cell in each job (modules, conda, ...).
        wait: block until every submitted job ended and report the done / failed cells.
        poll_interval: seconds between squeue polls while waiting.
    """
    name = 'slurm'

    def __init__(self, log_dir: Path, *, partition: Optional[str] = None, time_min: int = 60, cpus_per_task: int = 1,
                 gpus_per_task: int = 0, setup: Sequence[str] = (), wait: bool = False, poll_interval: float = 5.0,
                 stream=None):
        if time_min < 1 or cpus_per_task < 1 or gpus_per_task < 0 or poll_interval <= 0:
            raise ValueError(f'Slurm job settings out of range: time_min {time_min} (>= 1), cpus_per_task '
                             f'{cpus_per_task} (>= 1), gpus_per_task {gpus_per_task} (>= 0), poll_interval '
                             f'{poll_interval} (> 0)')
        self.log_dir = Path(log_dir)
        self.partition = partition
        self.time_min = time_min
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.setup = list(setup)
        self.wait = wait
        self.poll_interval = poll_interval
        self.stream = stream if stream is not None else sys.stderr

    def parameters(self) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters of every job."""
        # The job runs this Python (submitit's default), where cfl_timm is installed: nothing to put on a path.
        params: dict[str, Any] = {
            'time': self.time_min, 'cpus_per_task': self.cpus_per_task, 'ntasks_per_node': 1, 'nodes': 1,
            'setup': list(self.setup),
        }
        if self.partition:
            params['partition'] = self.partition
        if self.gpus_per_task:
            params['gpus_per_task'] = self.gpus_per_task
        return params

    def run(self, spec: WorkerSpec, cells: Sequence[Cell]) -> int:
        import submitit  # the dev / slurm extra; only this executor needs it

        runner = spec.runner(cells, with_cell_fn=False)
        states = slurm_job_states()
        executor = submitit.SlurmExecutor(folder=self.log_dir / '%j')
        executor.update_parameters(**self.parameters())
        submitted: dict[str, str] = {}
        counts = {'done': 0, 'queued': 0}
        for cell in cells:
            if runner.is_done(cell):
                counts['done'] += 1
                continue
            run_dir = runner.run_dir(cell)
            last = last_slurm_job(run_dir)
            if last is not None and _job_active(last['job_id'], states):
                counts['queued'] += 1
                self._log(f'{cell.name}: job {last["job_id"]} still {states[str(last["job_id"])].lower()}')
                continue
            executor.update_parameters(job_name=f'cfl-{cell.name}')
            job = executor.submit(run_slurm_cell, spec, cell)
            run_dir.mkdir(parents=True, exist_ok=True)
            record = {'job_id': str(job.job_id), 'submitted': time.time(), 'previous_job_id': last and last['job_id'],
                      'log_dir': str(self.log_dir / str(job.job_id)), **{k: v for k, v in self.parameters().items()
                                                                           if k != 'setup'}}
            with open(run_dir / 'slurm_jobs.jsonl', 'a') as f:
                f.write(json.dumps(record) + '\n')
            submitted[cell.name] = str(job.job_id)
            self._log(f'{cell.name}: submitted job {job.job_id}'
                      + (f' (retry after job {last["job_id"]})' if last else ''))
        atomic_write_json(self.log_dir / 'last_submission.json', {'submitted': submitted, **counts,
                                                                  'time': time.time()})
        self._log(f'submitted {len(submitted)}, queued before {counts["queued"]}, done before {counts["done"]}')
        if not self.wait:
            return 0
        return self._wait(runner, cells, submitted)

    def _wait(self, runner: GridRunner, cells: Sequence[Cell], submitted: dict[str, str]) -> int:
        """Block until none of the jobs of ``cells`` is active; 1 if a cell is still not done."""
        job_ids = {c.name: (last_slurm_job(runner.run_dir(c)) or {}).get('job_id') for c in cells}
        while True:
            states = slurm_job_states()
            active = [name for name, job_id in job_ids.items() if job_id is not None and _job_active(job_id, states)]
            if not active:
                break
            time.sleep(self.poll_interval)
        not_done = [c.name for c in cells if not runner.is_done(c)]
        self._log(f'all jobs ended: {len(cells) - len(not_done)} of {len(cells)} cells done'
                  + (f'; not done (retried next invocation): {", ".join(not_done)}' if not_done else ''))
        return 1 if not_done else 0

    def _log(self, message: str) -> None:
        print(f'[cfl-grid slurm {time.strftime("%H:%M:%S")}] {message}', file=self.stream, flush=True)


EXECUTORS = {'local': LocalExecutor, 'slurm': SlurmExecutor}
