"""Tests of the grid runner (cfl-grid: cfl_timm.grid.runner, cfl_timm.grid.cli, cfl_timm.grid.cells).

The runner tests use cheap fake cells (the functions at the top of this file, loaded by the worker processes
through ``--cell-fn tests/test_grid_runner.py:NAME``); one test runs a real train.py cell on CIFAR-10 JPEGs.
"""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfl_timm.grid.grid_file import load_protocol
from cfl_timm.grid.runner import Cell, CellFailed, CellLock, GridRunner

REPO_ROOT = Path(__file__).resolve().parents[1]
CFL_GRID = [sys.executable, '-m', 'cfl_timm.grid']  # the cfl-grid command of this checkout

THIS_FILE = Path(__file__).resolve()


# ------------------------------------------------------------------------------ fake cells (run in workers)

def fake_cell(cell, run_dir, should_stop=lambda: False):
    """Logs '<cell> <pid>' to $FAKE_CELL_LOG, sleeps $FAKE_CELL_SLEEP, waits until $FAKE_CELL_WORKERS distinct
    workers have logged a cell (an event, not a time: the test holds however slowly the workers start), fails
    as a crashed command would for the cells named in $FAKE_CELL_FAIL unless the file $FAKE_CELL_FIXED exists."""
    with open(os.environ['FAKE_CELL_LOG'], 'a') as log:
        log.write(f'{cell.name} {os.getpid()}\n')
    time.sleep(float(os.environ.get('FAKE_CELL_SLEEP', '0')))
    workers = int(os.environ.get('FAKE_CELL_WORKERS', '0'))
    deadline = time.monotonic() + 600  # a guard against a hang only
    while time.monotonic() < deadline:
        with open(os.environ['FAKE_CELL_LOG']) as log:
            if len({line.split()[1] for line in log if line.strip()}) >= workers:
                break
        time.sleep(0.05)
    failing = os.environ.get('FAKE_CELL_FAIL', '').split(',')
    if cell.name in failing and not os.path.exists(os.environ.get('FAKE_CELL_FIXED', '/nonexistent')):
        command = [sys.executable, '-c', f"import sys; sys.stderr.write('boom in {cell.name}\\n'); sys.exit(3)"]
        done = subprocess.run(command, capture_output=True, text=True)
        raise CellFailed(done.returncode, done.stderr)
    return {'value': cell.seed * 10 + len(cell.loss), 'pid': os.getpid()}


def _cells(n_seeds=1):
    return [Cell(loss=loss, data=data, seed=seed)
            for seed in range(n_seeds) for data in ('c10', 'c10lt10') for loss in ('ce', 'cfl_authors')]


def _worker(tmp_path, env_extra, *extra_args):
    """A real worker process: cfl-grid run with the fake cell over the cpu protocol's seed-0 grid."""
    data_dir = tmp_path / 'data'
    (data_dir / 'train').mkdir(parents=True, exist_ok=True)
    (data_dir / 'val').mkdir(parents=True, exist_ok=True)
    env = {**os.environ, 'FAKE_CELL_LOG': str(tmp_path / 'cells.log'), **env_extra}
    command = [*CFL_GRID, 'run', '--protocol', 'cpu', '--seeds', '0',
               '--work-dir', str(tmp_path / 'work'), '--data-dir', str(data_dir),
               '--cell-fn', f'{THIS_FILE}:fake_cell', *extra_args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _log_lines(tmp_path):
    path = tmp_path / 'cells.log'
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------------------------ tests

def test_skip_if_done(tmp_path):
    calls = []

    def cell_fn(cell, run_dir, should_stop):
        calls.append(cell.name)
        return {'value': cell.seed}

    cells = _cells()
    first = GridRunner(cells, tmp_path, cell_fn, heartbeat_interval=1, stale_after=10).run()
    assert sorted(first['ran']) == sorted(c.name for c in cells)
    for cell in cells:
        done = json.loads((tmp_path / cell.name / 'done.json').read_text())
        assert done['cell']['loss'] == cell.loss and done['result'] == {'value': cell.seed}
        assert not (tmp_path / cell.name / 'lock').exists()
    second = GridRunner(cells, tmp_path, cell_fn, heartbeat_interval=1, stale_after=10).run()
    assert second['ran'] == [] and sorted(second['skipped_done']) == sorted(c.name for c in cells)
    assert len(calls) == len(cells)


def test_two_worker_processes_never_run_the_same_cell(tmp_path):
    workers = [_worker(tmp_path, {'FAKE_CELL_SLEEP': '0.1', 'FAKE_CELL_WORKERS': '2'}) for _ in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    lines = _log_lines(tmp_path)
    names = [name for name, _ in lines]
    runs = sorted((tmp_path / 'work' / 'cpu' / 'runs').iterdir())
    assert len(runs) == 18 and len(names) == 18 and len(set(names)) == 18  # every cell exactly once
    assert len({pid for _, pid in lines}) == 2  # both workers took cells
    for run_dir in runs:
        assert (run_dir / 'done.json').is_file() and not (run_dir / 'lock').exists()
    # Each worker reports the cells the other one held as 'held elsewhere' or done before it got there.
    assert all('pass finished' in err for _, err in outputs)


def test_live_lock_is_respected_and_dead_owner_taken_over(tmp_path):
    cells = _cells()
    target = cells[0]
    run_dir = tmp_path / target.name
    run_dir.mkdir()
    lock_path = run_dir / 'lock'
    # A live owner on this host (this test process): the cell is left alone.
    lock_path.write_text(json.dumps({'host': 'this-host', 'pid': os.getpid(), 'token': 'x'}))
    calls = []

    def cell_fn(cell, run_dir, should_stop):
        calls.append(cell.name)
        return {}

    summary = GridRunner(cells, tmp_path, cell_fn, host='this-host', heartbeat_interval=1, stale_after=10).run()
    assert summary['skipped_locked'] == [target.name] and target.name not in calls
    assert json.loads(lock_path.read_text())['token'] == 'x'

    # The owner process is gone (its pid no longer exists): the lock is taken over at once, whatever its age.
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    lock_path.write_text(json.dumps({'host': 'this-host', 'pid': dead.pid, 'token': 'y'}))
    lock = CellLock(lock_path, stale_after=1000, host='this-host')
    assert lock.try_acquire()
    assert 'gone' in lock.took_over['reason'] and lock.took_over['previous']['token'] == 'y'
    assert json.loads(lock_path.read_text())['pid'] == os.getpid()
    lock.release()
    assert not lock_path.exists()


def test_zombie_owner_counts_as_gone(tmp_path):
    # A killed worker is a zombie until its parent reaps it; its pid still answers kill(pid, 0).
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    stat = Path(f'/proc/{child.pid}/stat')
    deadline = time.monotonic() + 600  # a guard against a hang only: the loop ends when the child is a zombie
    while stat.read_text().rsplit(')', 1)[1].split()[0] != 'Z' and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        lock_path = tmp_path / 'lock'
        lock_path.write_text(json.dumps({'host': 'this-host', 'pid': child.pid, 'token': 'zombie'}))
        lock = CellLock(lock_path, stale_after=1000, host='this-host')
        assert lock.try_acquire() and 'gone' in lock.took_over['reason']
        lock.release()
    finally:
        child.wait()


def test_other_host_lock_taken_over_only_after_heartbeat_timeout(tmp_path):
    lock_path = tmp_path / 'lock'
    # pid 1 is alive here, but the lock belongs to another host: only its heartbeat age counts.
    lock_path.write_text(json.dumps({'host': 'other-host', 'pid': 1, 'token': 'remote'}))
    lock = CellLock(lock_path, stale_after=60, host='this-host')
    assert not lock.try_acquire()
    old = time.time() - 120
    os.utime(lock_path, (old, old))
    assert lock.try_acquire()
    assert 'no heartbeat' in lock.took_over['reason']
    assert json.loads(lock_path.read_text())['token'] == lock.token
    # Our own heartbeat refreshes the mtime, so we never look stale to the other host.
    os.utime(lock_path, (old, old))
    before = time.time()
    assert lock.heartbeat() and lock_path.stat().st_mtime >= before - 1  # refreshed (1 s of mtime granularity)
    lock.release()


def test_stale_locks_taken_over_by_exactly_one_of_two_processes(tmp_path):
    runs_dir = tmp_path / 'work' / 'cpu' / 'runs'
    cells = [c for c in load_protocol('cpu').cells() if c.seed == 0]
    old = time.time() - 3600
    for cell in cells:
        (runs_dir / cell.name).mkdir(parents=True)
        lock_path = runs_dir / cell.name / 'lock'
        lock_path.write_text(json.dumps({'host': 'crashed-host', 'pid': 12345, 'token': cell.name}))
        os.utime(lock_path, (old, old))
    workers = [_worker(tmp_path, {'FAKE_CELL_SLEEP': '0.2'}, '--stale-after', '60') for _ in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    names = [name for name, _ in _log_lines(tmp_path)]
    assert sorted(names) == sorted(c.name for c in cells)  # each stale cell run once, none twice
    # Every stale lock is taken over (removed) once; a worker that moved it aside can still lose the fresh lock to
    # the other worker's plain create in between, which then runs the cell without logging a takeover.
    takeovers = sum(err.count('took over a stale lock') for _, err in outputs)
    assert 0 < takeovers <= len(cells)
    assert not list(runs_dir.glob('*/lock*'))


def test_crashed_cell_recorded_and_retried_next_invocation(tmp_path):
    failing = 'c10lt10__focal_g2__s0'
    env = {'FAKE_CELL_FAIL': failing, 'FAKE_CELL_FIXED': str(tmp_path / 'fixed')}
    worker = _worker(tmp_path, env)
    out, err = worker.communicate(timeout=900)
    assert worker.returncode == 1  # a failed cell makes the invocation fail...
    run_dir = tmp_path / 'work' / 'cpu' / 'runs' / failing
    error = json.loads((run_dir / 'error.json').read_text())
    assert error['exit_code'] == 3 and f'boom in {failing}' in error['output_tail']
    assert not (run_dir / 'done.json').exists() and not (run_dir / 'lock').exists()
    done_first = list((tmp_path / 'work' / 'cpu' / 'runs').glob('*/done.json'))
    assert len(done_first) == 17  # ...but the rest of the grid went on
    assert '1 failed' in err

    (tmp_path / 'fixed').touch()
    worker = _worker(tmp_path, env)
    out, err = worker.communicate(timeout=900)
    assert worker.returncode == 0, err
    names = [name for name, _ in _log_lines(tmp_path)]
    assert names.count(failing) == 2 and len(names) == 19  # only the failed cell ran again
    assert (run_dir / 'done.json').is_file() and not (run_dir / 'error.json').exists()
    attempts = [json.loads(line) for line in (run_dir / 'attempts.jsonl').read_text().splitlines()]
    assert [a['ok'] for a in attempts] == [False, True] and attempts[0]['exit_code'] == 3


def test_cell_stops_and_records_nothing_when_its_lock_is_taken_over(tmp_path):
    cell = Cell('ce', 'c10', 0)

    def cell_fn(cell, run_dir, should_stop):
        # Another host decides we are stale and takes the lock over while we run.
        os.rename(run_dir / 'lock', run_dir / 'moved')
        (run_dir / 'lock').write_text(json.dumps({'host': 'other-host', 'pid': 1, 'token': 'theirs'}))
        deadline = time.monotonic() + 600  # a guard against a hang only: the loop ends when the loss is seen
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.02)
        if should_stop():
            raise CellFailed(-1, 'stopped: lock lost')
        return {}

    summary = GridRunner([cell], tmp_path, cell_fn, heartbeat_interval=0.1, stale_after=1).run()
    run_dir = tmp_path / cell.name
    assert summary['failed'] == [cell.name] and not (run_dir / 'done.json').exists()
    assert 'lock lost' in json.loads((run_dir / 'error.json').read_text())['output_tail']
    assert json.loads((run_dir / 'lock').read_text())['token'] == 'theirs'  # the new owner's lock is untouched


def test_bad_runner_settings_fail_early(tmp_path):
    with pytest.raises(ValueError, match='stale_after'):
        GridRunner(_cells(), tmp_path, fake_cell, heartbeat_interval=10, stale_after=20)
    with pytest.raises(ValueError, match='duplicate'):
        GridRunner(_cells() * 2, tmp_path, fake_cell)


def test_aggregate_writes_csv_table_and_plot(tmp_path):
    from cfl_timm.grid.aggregate import aggregate

    protocol = load_protocol('cpu')
    runs_dir = tmp_path / 'runs'
    for cell in protocol.cells():
        if cell.loss not in ('ce', 'cfl_authors') or cell.data == 'c10lt10':
            continue
        per_class = [50.0 + c + cell.seed + (0.5 if cell.loss == 'cfl_authors' and cell.seed == 2 else 0)
                     for c in range(10)]
        (runs_dir / cell.name).mkdir(parents=True)
        (runs_dir / cell.name / 'done.json').write_text(json.dumps({
            'cell': {'loss': cell.loss, 'data': cell.data, 'seed': cell.seed}, 'wall_seconds': 10.0 + cell.seed,
            'result': {'top1': sum(per_class) / 10, 'eval_ece': 0.05, 'eval_nll': 1.5, 'epochs': 3,
                       'per_class_top1': per_class}}))
    paths = aggregate(protocol, runs_dir, tmp_path / 'results', machine='test machine')
    rows = list(csv.DictReader(open(paths['csv'])))
    assert [(r['data'], r['loss'], r['n_seeds']) for r in rows] == [
        ('c10', 'ce', '3'), ('c10', 'cfl_authors', '3'), ('c10lt100', 'ce', '3'), ('c10lt100', 'cfl_authors', '3')]
    # seeds 0, 1, 2 shift every class by the seed: mean top-1 55.5, sd 1; many = classes 0-2 -> 52.
    assert float(rows[0]['top1_mean']) == pytest.approx(55.5) and float(rows[0]['top1_sd']) == pytest.approx(1.0)
    assert float(rows[1]['d_top1_vs_ce_mean']) == pytest.approx(0.5 / 3, abs=1e-4)
    assert float(rows[2]['many_mean']) == pytest.approx(52.0) and float(rows[2]['few_mean']) == pytest.approx(59.0)
    table = paths['md'].read_text()
    assert '| c10lt100 | ce | 3 | 55.50 ± 1.00 |  |  | 52.0 ± 1.0 | 55.5 ± 1.0 | 59.0 ± 1.0 |' in table
    assert '| c10 | ce | 3 | 55.50 ± 1.00 |  |  |  |  |  |' in table and 'test machine' in table
    # cfl_authors gets +0.5 on every class of seed 2 only: paired differences 0, 0, 0.5.
    assert '| c10 | cfl_authors | 3 | 55.67 ± 1.26 | +0.17 ± 0.29 |  |' in table
    assert paths['png'].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert len(list(csv.DictReader(open(paths['runs'])))) == 12


def _num_images(split_dir):
    return sum(1 for p in split_dir.rglob('*') if p.is_file())


def test_real_train_cell_on_real_images(image_folder, tmp_path):
    """One real cell: train.py in a subprocess on a long-tailed subset of real images (digits PNGs, CIFAR-10
    JPEGs), then the per-class checkpoint evaluation."""
    import dataclasses

    from cfl_timm.grid.cells import find_train_script, make_train_cell

    cpu = load_protocol('cpu')
    protocol = dataclasses.replace(cpu, name='tiny', epochs={'c10lt10': 1},
                                   data={'c10lt10': ['--imbalance_ratio', '10', '--imbalance_max', '40']},
                                   grid={'c10lt10': ('cfl_authors',)})
    cell = Cell('cfl_authors', 'c10lt10', 0)
    cell_fn = make_train_cell(protocol, image_folder, find_train_script())
    summary = GridRunner([cell], tmp_path, cell_fn, heartbeat_interval=1,
                         stale_after=30).run()
    run_dir = tmp_path / cell.name
    assert summary['ran'] == [cell.name], (run_dir / 'error.json').read_text() if summary['failed'] else ''
    result = json.loads((run_dir / 'done.json').read_text())['result']
    log = (run_dir / 'train.log').read_text()
    assert '[40, 30, 23, 18, 14, 11, 8, 6, 5, 4]' in log  # floor(40 * 10^(-c/9))
    assert result['num_val_images'] == _num_images(image_folder / 'val') and len(result['per_class_top1']) == 10
    # The checkpoint evaluation reproduces train.py's own last-epoch top-1 (checked inside the cell too).
    counts = [_num_images(d) for d in sorted((image_folder / 'val').iterdir())]  # class order of timm's reader
    weighted = sum(acc * n for acc, n in zip(result['per_class_top1'], counts)) / sum(counts)
    assert weighted == pytest.approx(result['top1'], abs=0.05)
    assert 0 <= result['eval_ece'] <= 1 and result['eval_nll'] > 0 and result['epochs'] == 1


def test_checkpoint_evaluation_of_a_split_bn_model(image_folder, tmp_path):
    """The GPU protocol trains with --aug-splits 3 --split-bn: its checkpoints hold the auxiliary BN layers."""
    import torch
    import yaml
    from timm.layers import convert_splitbn_model
    from timm.models import create_model

    from cfl_timm.grid.cells import evaluate_checkpoint

    torch.manual_seed(0)
    model = convert_splitbn_model(create_model('test_resnet', num_classes=10), 3)
    assert any('aux_bn' in key for key in model.state_dict())
    torch.save({'epoch': 4, 'state_dict': model.state_dict()}, tmp_path / 'last.pth.tar')
    (tmp_path / 'args.yaml').write_text(yaml.safe_dump({
        'model': 'test_resnet', 'img_size': 32, 'split_bn': True, 'aug_splits': 3, 'dataset': '',
        'val_split': 'validation', 'num_classes': None, 'in_chans': None, 'gp': None, 'model_kwargs': {}}))
    result = evaluate_checkpoint(tmp_path, image_folder)
    assert result['epoch'] == 4 and result['num_val_images'] == _num_images(image_folder / 'val')
    assert len(result['per_class_top1']) == 10
    assert 0.0 <= result['top1'] <= 100.0 and result['nll'] > 0


def test_prepare_data_extracts_and_caps_per_class(image_folder, tmp_path):
    import tarfile

    from cfl_timm.grid.cells import prepare_data

    archive = tmp_path / 'cifar10.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        for split in ('train', 'val'):
            tar.add(image_folder / split, arcname=split)
    full = prepare_data(archive, tmp_path / 'cifar10')
    for split in ('train', 'val'):
        assert sorted(p.relative_to(full / split) for p in (full / split).rglob('*')) == \
            sorted(p.relative_to(image_folder / split) for p in (image_folder / split).rglob('*'))
    capped = prepare_data(archive, tmp_path / 'cifar10', train_per_class=7, val_per_class=3)
    for split, cap in (('train', 7), ('val', 3)):
        for class_dir in (capped / split).iterdir():
            names = sorted(p.name for p in class_dir.iterdir())
            assert names == sorted(p.name for p in (full / split / class_dir.name).iterdir())[:cap]
            assert all((class_dir / n).resolve().is_file() for n in names)
