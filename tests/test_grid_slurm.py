"""The Slurm executor of cfl-grid against a real Slurm (``bench/slurm/start_local_slurm.sh``, started
by ``.ci/run``): cells submitted through submitit and ``sbatch``, job ids recorded, a failed job's cell retried by
the next invocation, a queued cell never submitted twice, and two real train.py cells run end to end.

Skipped with the reason when ``sbatch`` or submitit is missing or no Slurm controller answers. Jobs inherit this
process's environment (``sbatch --export=ALL``), which is how the fake cells get their settings.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CFL_GRID = [sys.executable, '-m', 'cfl_timm.grid']  # the cfl-grid command of this checkout
THIS_FILE = Path(__file__).resolve()
WAIT_S = 240.0  # upper bound of every wait; reached only when Slurm does not run the jobs


def _slurm_ready() -> str:
    """'' when a Slurm controller answers and a node takes jobs, else why not."""
    if shutil.which('sbatch') is None:
        return 'sbatch not found (bench/slurm/start_local_slurm.sh installs and starts a local Slurm)'
    try:
        import submitit  # noqa: F401
    except ImportError:
        return 'submitit not installed (pip install -e ".[dev]")'
    ping = subprocess.run(['scontrol', 'ping'], capture_output=True, text=True)
    if ping.returncode != 0 or 'UP' not in ping.stdout:
        return f'no Slurm controller answers (scontrol ping: {ping.stdout.strip() or ping.stderr.strip()})'
    nodes = subprocess.run(['sinfo', '-h', '-o', '%T'], capture_output=True, text=True).stdout.split()
    if not any(state.rstrip('*') in ('idle', 'mixed', 'allocated', 'completing') for state in nodes):
        return f'no Slurm node takes jobs (states: {nodes})'
    return ''


_REASON = _slurm_ready()
pytestmark = pytest.mark.skipif(bool(_REASON), reason=_REASON)


# ------------------------------------------------------------------------------ fake cells (run in jobs)

def slurm_fake_cell(cell, run_dir, should_stop=lambda: False):
    """Logs '<cell> <pid> <job id>'; fails for $SLURM_FAKE_FAIL until $SLURM_FAKE_DIR/fixed exists; waits for
    $SLURM_FAKE_DIR/go when the cell is in $SLURM_FAKE_BLOCK (after creating started-<cell>)."""
    race = Path(os.environ['SLURM_FAKE_DIR'])
    with open(race / 'cells.log', 'a') as f:
        f.write(f"{cell.name} {os.getpid()} {os.environ.get('SLURM_JOB_ID')}\n")
    if cell.name in os.environ.get('SLURM_FAKE_BLOCK', '').split(','):
        (race / f'started-{cell.name}').touch()
        deadline = time.time() + WAIT_S
        while not (race / 'go').exists() and time.time() < deadline:
            time.sleep(0.05)
    if cell.name in os.environ.get('SLURM_FAKE_FAIL', '').split(',') and not (race / 'fixed').exists():
        raise RuntimeError(f'boom in {cell.name}')
    return {'value': cell.seed, 'job': os.environ.get('SLURM_JOB_ID')}


# ------------------------------------------------------------------------------------------------ helpers

def _run(tmp_path, cells, *extra, env=None, protocol='cpu', grid=None, data_dir=None, cell_fn=True, background=False):
    if data_dir is None:
        data_dir = tmp_path / 'data'
        (data_dir / 'train').mkdir(parents=True, exist_ok=True)
        (data_dir / 'val').mkdir(parents=True, exist_ok=True)
    which = ['--grid', str(grid)] if grid else ['--protocol', protocol]
    command = [*CFL_GRID, 'run', *which, '--executor', 'slurm',
               '--work-dir', str(tmp_path / 'work'), '--results-dir', str(tmp_path / 'results'),
               '--data-dir', str(data_dir), '--slurm-log-dir', str(tmp_path / 'slurm'), '--time', '10',
               '--cpus-per-task', '1', '--poll', '0.5', '--only', ','.join(cells), *extra]
    if cell_fn:
        command += ['--cell-fn', f'{THIS_FILE}:slurm_fake_cell']
    env = {**os.environ, 'SLURM_FAKE_DIR': str(tmp_path), **(env or {})}
    if background:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=WAIT_S)
    return done.returncode, done.stderr


def _jobs(run_dir):
    path = run_dir / 'slurm_jobs.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _log(tmp_path):
    path = tmp_path / 'cells.log'
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


# -------------------------------------------------------------------------------------------------- tests

CELLS = ['c10__ce__s0', 'c10__ce_ls0.1__s0', 'c10__focal_g2__s0']


def test_slurm_jobs_record_ids_and_a_failed_cell_is_retried_next_invocation(tmp_path):
    failing = CELLS[2]
    env = {'SLURM_FAKE_FAIL': failing}
    code, err = _run(tmp_path, CELLS, '--wait', env=env)
    assert code == 1, err  # one cell failed
    runs = tmp_path / 'work' / 'cpu' / 'runs'
    first = {name: _jobs(runs / name) for name in CELLS}
    assert all(len(jobs) == 1 for jobs in first.values()), first
    # Each cell ran inside the job recorded for it.
    assert sorted((name, job) for name, _, job in _log(tmp_path)) == sorted(
        (name, jobs[0]['job_id']) for name, jobs in first.items())
    for name in CELLS[:2]:
        result = json.loads((tmp_path / 'results' / 'cpu' / 'runs' / f'{name}.json').read_text())
        assert result['slurm_job_id'] == first[name][0]['job_id'] == result['result']['job']
        assert (runs / name / 'done.json').is_file() and not (runs / name / 'lock').exists()
    error = json.loads((runs / failing / 'error.json').read_text())
    assert f'boom in {failing}' in error['output_tail'] and error['slurm_job_id'] == first[failing][0]['job_id']
    assert 'not done (retried next invocation)' in err

    (tmp_path / 'fixed').touch()
    code, err = _run(tmp_path, CELLS, '--wait', env=env)
    assert code == 0, err
    assert 'submitted 1, queued before 0, done before 2' in err
    retried = _jobs(runs / failing)
    assert len(retried) == 2 and retried[1]['previous_job_id'] == retried[0]['job_id'] != retried[1]['job_id']
    assert [len(_jobs(runs / name)) for name in CELLS[:2]] == [1, 1]  # finished cells were not submitted again
    assert (tmp_path / 'results' / 'cpu' / 'runs' / f'{failing}.json').is_file()

    code, err = _run(tmp_path, CELLS, '--wait', env=env)
    assert code == 0 and 'submitted 0, queued before 0, done before 3' in err
    assert len(_log(tmp_path)) == 4


def test_a_queued_or_running_cell_is_not_submitted_again(tmp_path):
    cell = CELLS[0]
    env = {'SLURM_FAKE_BLOCK': cell}
    code, err = _run(tmp_path, [cell], env=env)  # no --wait: submit and return
    assert code == 0 and 'submitted 1' in err, err
    deadline = time.time() + WAIT_S
    while not (tmp_path / f'started-{cell}').exists():
        assert time.time() < deadline, 'the job never started'
        time.sleep(0.2)
    run_dir = tmp_path / 'work' / 'cpu' / 'runs' / cell
    job_id = _jobs(run_dir)[0]['job_id']
    code, err = _run(tmp_path, [cell], env=env)
    assert code == 0 and f'job {job_id} still running' in err and 'submitted 0' in err, err
    # A waiting invocation submits nothing and waits for the running job, which finishes once 'go' exists.
    waiting = _run(tmp_path, [cell], '--wait', env=env, background=True)
    lines = [waiting.stderr.readline() for _ in range(2)]
    assert f'job {job_id} still running' in lines[0] and 'submitted 0, queued before 1' in lines[1], lines
    (tmp_path / 'go').touch()
    rest = waiting.communicate(timeout=WAIT_S)[1]
    assert waiting.returncode == 0 and '1 of 1 cells done' in rest, rest
    assert len(_jobs(run_dir)) == 1 and [name for name, *_ in _log(tmp_path)] == [cell]
    assert (run_dir / 'done.json').is_file()


USER_GRID = """\
name: my-slurm-grid
models: [test_resnet]
losses:
  ce: [--smoothing, '0']
  cfl: [--focal_loss, asym-cyclical, --gamma_hc, '3', --gamma_pos, '2', --gamma_neg, '2', --cyclical_factor, '4']
data:
  tiny: [--train_size, '200', --train_size_mode, stratified]
seeds: [0]
epochs: 1
flags: [--img-size, '32', -b, '32', --opt, sgd, --lr, '0.05', -j, '0', --checkpoint-hist, '1', --log-interval, '1000']
threads: 1
"""


def test_slurm_runs_a_users_two_cell_grid_file(digits_dir, tmp_path):
    """A user's own two-cell grid file (train.py, test_resnet, 1 epoch on digits PNGs) submitted with sbatch, run
    and collected into the user's fresh results folder."""
    grid = tmp_path / 'grid.yaml'
    grid.write_text(USER_GRID)
    cells = ['tiny__ce__s0', 'tiny__cfl__s0']
    code, err = _run(tmp_path, cells, '--wait', grid=grid, data_dir=digits_dir, cell_fn=False)
    assert code == 0 and 'done before 0' in err, err
    for name in cells:
        run_dir = tmp_path / 'work' / 'my-slurm-grid' / 'runs' / name
        job_id = _jobs(run_dir)[0]['job_id']
        payload = json.loads((tmp_path / 'results' / 'my-slurm-grid' / 'runs' / f'{name}.json').read_text())
        assert payload['slurm_job_id'] == job_id and payload['cell']['loss'] == name.split('__')[1]
        result = payload['result']
        assert result['epochs'] == 1 and 0.0 <= result['top1'] <= 100.0 and len(result['per_class_top1']) == 10
        assert result['num_val_images'] == sum(1 for p in (digits_dir / 'val').rglob('*') if p.is_file())
        log = (run_dir / 'train.log').read_text()
        assert '--seed 0' in log and '--train_size 200' in log and '--model test_resnet' in log
        assert not (run_dir / 'lock').exists() and not (run_dir / 'child.json').exists()
