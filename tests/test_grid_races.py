"""The three grid-runner races of issue 12 (item 7), reproduced with real worker processes.

Every ordering is forced with files and signals (a cell waits for a ``go`` file, the test waits for a marker file
or a process exit through a pidfd); no sleep decides an outcome. Worker processes are ``cfl-grid run``
with the fake cells defined here (``--cell-fn tests/test_grid_races.py:NAME``).
"""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfl_timm.grid.runner import run_guarded

REPO_ROOT = Path(__file__).resolve().parents[1]
CFL_GRID = [sys.executable, '-m', 'cfl_timm.grid']  # the cfl-grid command of this checkout

THIS_FILE = Path(__file__).resolve()
CELL = 'c10__ce__s0'
WAIT_S = 600.0  # upper bound of every wait below; reached only when the behaviour under test is broken

# A child command that records its pid, waits for the 'go' file, then records that it finished.
CHILD = """
import os, sys, time
race = sys.argv[1]
with open(os.path.join(race, 'child.pid.tmp'), 'w') as f:
    f.write(str(os.getpid()))
os.replace(os.path.join(race, 'child.pid.tmp'), os.path.join(race, 'child.pid'))
deadline = time.time() + 300
while not os.path.exists(os.path.join(race, 'go')) and time.time() < deadline:
    time.sleep(0.02)
open(os.path.join(race, 'finished-%d' % os.getpid()), 'w').close()
"""


# ------------------------------------------------------------------------------ fake cells (run in workers)

def _log(line):
    with open(os.path.join(os.environ['RACE_DIR'], 'cells.log'), 'a') as f:
        f.write(line + '\n')


def guarded_child_cell(cell, run_dir, should_stop=lambda: False):
    """Runs CHILD the way the train.py cell runs train.py (run_guarded)."""
    _log(f'{cell.name} {os.getpid()} {os.getppid()}')
    code = run_guarded([sys.executable, '-c', CHILD, os.environ['RACE_DIR']], run_dir, run_dir / 'child.log',
                       should_stop=should_stop, poll_interval=0.05)
    if code != 0:
        raise RuntimeError(f'child exit code {code}')
    return {'child': 'finished'}


def blocking_cell(cell, run_dir, should_stop=lambda: False):
    """Marks 'started', then waits for the 'go' file (the test pauses the worker meanwhile)."""
    race = Path(os.environ['RACE_DIR'])
    _log(f'{cell.name} {os.getpid()} {os.getppid()}')
    (race / 'started').touch()
    deadline = time.time() + WAIT_S
    while not (race / 'go').exists() and time.time() < deadline:
        time.sleep(0.02)
    return {'value': 1}


def quick_cell(cell, run_dir, should_stop=lambda: False):
    _log(f'{cell.name} {os.getpid()} {os.getppid()}')
    return {'value': cell.seed}


# ------------------------------------------------------------------------------------------------ helpers

def _worker(race, cell_fn, *extra, only=CELL):
    data = race / 'data'
    (data / 'train').mkdir(parents=True, exist_ok=True)
    (data / 'val').mkdir(parents=True, exist_ok=True)
    command = [*CFL_GRID, 'run', '--protocol', 'cpu', '--seeds', '0',
               '--work-dir', str(race / 'work'), '--results-dir', str(race / 'results'), '--data-dir', str(data),
               '--cell-fn', f'{THIS_FILE}:{cell_fn}', *extra]
    if only:
        command += ['--only', only]
    return subprocess.Popen(command, env={**os.environ, 'RACE_DIR': str(race)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_file(path, process=None):
    deadline = time.time() + WAIT_S
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f'worker exited ({process.returncode}) before {path.name}: {process.communicate()}')
        assert time.time() < deadline, f'{path} never appeared'
        time.sleep(0.02)


def _cells_log(race):
    path = race / 'cells.log'
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _run_dir(race):
    return race / 'work' / 'cpu' / 'runs' / CELL


# -------------------------------------------------------------------------------------------------- tests

@pytest.mark.skipif(not hasattr(os, 'pidfd_open'), reason='needs os.pidfd_open (Linux >= 5.3)')
def test_killed_worker_takes_its_command_with_it_and_the_cell_runs_once_more(tmp_path):
    """Race 1: a SIGKILLed worker used to leave its train.py running while a second worker started the cell."""
    worker = _worker(tmp_path, 'guarded_child_cell')
    _wait_for_file(tmp_path / 'child.pid', worker)
    child_pid = int((tmp_path / 'child.pid').read_text())
    groups = os.getpgid(child_pid), os.getpgid(worker.pid)
    pidfd = os.pidfd_open(child_pid)
    try:
        os.kill(worker.pid, signal.SIGKILL)
        worker.communicate()
        # The pidfd turns readable when the child exits: the kernel killed it with its worker.
        readable, _, _ = select.select([pidfd], [], [], WAIT_S)
    finally:
        os.close(pidfd)
    if not readable:
        os.kill(child_pid, signal.SIGKILL)
    assert readable, 'the command outlived its SIGKILLed worker'
    assert not list(tmp_path.glob('finished-*'))
    assert groups[0] == child_pid != groups[1]  # the command ran in its own process group
    recorded = json.loads((_run_dir(tmp_path) / 'child.json').read_text())  # left behind by the killed worker
    assert recorded['pid'] == child_pid and recorded['host'] == socket.gethostname()

    # The next worker finds the dead owner and the dead command, and runs the cell to the end, once.
    (tmp_path / 'go').touch()
    worker = _worker(tmp_path, 'guarded_child_cell')
    out, err = worker.communicate(timeout=WAIT_S)
    assert worker.returncode == 0, err
    assert 'took over a stale lock' in err and 'is gone' in err
    assert len(list(tmp_path.glob('finished-*'))) == 1
    assert (_run_dir(tmp_path) / 'done.json').is_file() and (tmp_path / 'results' / 'cpu' / 'runs' / f'{CELL}.json')
    assert not (_run_dir(tmp_path) / 'child.json').exists() and not (_run_dir(tmp_path) / 'lock').exists()


def test_no_worker_starts_a_cell_whose_previous_command_still_runs(tmp_path):
    """Race 1, second half: the lock's owner is dead but the command it started is alive (say the platform has no
    parent-death signal): the cell is not started until that command is gone."""
    run_dir = _run_dir(tmp_path)
    run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (run_dir / 'lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': dead.pid, 'token': 'old'}))
    survivor = subprocess.Popen([sys.executable, '-c', CHILD, str(tmp_path)])
    try:
        _wait_for_file(tmp_path / 'child.pid', survivor)
        start_time = int(Path(f'/proc/{survivor.pid}/stat').read_text().rsplit(')', 1)[1].split()[19])
        (run_dir / 'child.json').write_text(json.dumps({'host': socket.gethostname(), 'pid': survivor.pid,
                                                        'start_time': start_time}))
        worker = _worker(tmp_path, 'quick_cell')
        out, err = worker.communicate(timeout=WAIT_S)
        assert worker.returncode == 0, err
        assert _cells_log(tmp_path) == [] and 'still runs on this host' in err
        assert json.loads((run_dir / 'lock').read_text())['token'] == 'old'
    finally:
        survivor.kill()
        survivor.wait()
    worker = _worker(tmp_path, 'quick_cell')
    out, err = worker.communicate(timeout=WAIT_S)
    assert worker.returncode == 0, err
    assert [name for name, *_ in _cells_log(tmp_path)] == [CELL] and (run_dir / 'done.json').is_file()


def test_paused_worker_that_lost_its_lock_records_nothing_and_keeps_the_new_lock(tmp_path):
    """Race 2: ext4 gives a new file the inode of the one just deleted, so a lock taken over while its owner was
    paused can have the owner's old inode number. The new owner's lock is written here into the same inode (what
    ext4 does), with the new owner's token. The paused worker must notice by the token, right before recording."""
    worker = _worker(tmp_path, 'blocking_cell', '--heartbeat', '100', '--stale-after', '300')
    _wait_for_file(tmp_path / 'started', worker)
    lock = _run_dir(tmp_path) / 'lock'
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        inode = lock.stat().st_ino
        with open(lock, 'r+') as f:  # another host judged the paused worker stale and now owns the cell
            f.truncate(0)
            f.write(json.dumps({'host': 'other-host', 'pid': 1, 'token': 'new-owner', 'started': time.time()}))
        assert lock.stat().st_ino == inode
        (tmp_path / 'go').touch()
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    out, err = worker.communicate(timeout=WAIT_S)
    assert worker.returncode == 1, err
    run_dir = _run_dir(tmp_path)
    assert not (run_dir / 'done.json').exists()
    assert not (tmp_path / 'results' / 'cpu' / 'runs' / f'{CELL}.json').exists()
    assert 'lock taken over' in json.loads((run_dir / 'error.json').read_text())['output_tail']
    assert json.loads(lock.read_text())['token'] == 'new-owner'  # the new owner's lock is left alone
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith('lock')) == ['lock']


def test_jobs_with_equals_sign_starts_exactly_that_many_workers(tmp_path):
    """Race 3: ``--jobs=2`` was not recognised when the workers' command line was rewritten, so every worker
    started workers of its own without limit. Workers now come from the parsed arguments, never from argv."""
    launcher = _worker(tmp_path, 'quick_cell', '--jobs=2', only=None)
    out, err = launcher.communicate(timeout=WAIT_S)
    assert launcher.returncode == 0, err
    lines = _cells_log(tmp_path)
    names = [name for name, _, _ in lines]
    assert len(names) == 18 and len(set(names)) == 18  # the seed-0 grid, every cell once
    workers = {int(pid) for _, pid, _ in lines}
    parents = {int(ppid) for _, _, ppid in lines}
    assert parents == {launcher.pid} and 1 <= len(workers) <= 2  # direct children of the launcher only
    assert err.count('pass finished') == 2  # exactly two workers ran a pass


@pytest.mark.skipif(not hasattr(os, 'pidfd_open'), reason='needs os.pidfd_open (Linux >= 5.3)')
@pytest.mark.parametrize('jobs', ['1', '2'])
def test_sigterm_stops_the_worker_and_its_command_cleanly(tmp_path, jobs):
    """SIGTERM (Slurm's preemption, ``kill``) used to end ``cfl-grid run`` without cleanup: its command was then
    SIGKILLed by the kernel, which skipped the command's own cleanup. Now the worker passes the stop on (with two
    workers, the launcher first passes it to them), its command gets SIGTERM, and it exits 143 with one line."""
    worker = _worker(tmp_path, 'guarded_child_cell', '--jobs', jobs)
    _wait_for_file(tmp_path / 'child.pid', worker)
    pidfd = os.pidfd_open(int((tmp_path / 'child.pid').read_text()))
    try:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=WAIT_S)
        readable, _, _ = select.select([pidfd], [], [], 0)  # the worker waited for its command: it is gone now
    finally:
        os.close(pidfd)
    assert worker.returncode == 143, err
    assert readable, 'the command outlived its stopped worker'
    assert 'Traceback' not in err, err
    assert err.strip().splitlines()[-1] == 'cfl-grid: terminated (SIGTERM)'
    assert not list(tmp_path.glob('finished-*'))
