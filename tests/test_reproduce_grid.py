"""A user's own grid file (bench/reproduce_grid.py) through bench/reproduce.py: checked before any work, listed as
exact train.py commands, and run by the local executor into a fresh folder with real train.py processes."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / 'bench' / 'reproduce.py'

GRID = """\
name: digits-demo
models: [test_resnet]
losses:
  ce: [--smoothing, '0']
  cfl: [--focal_loss, asym-cyclical, --gamma_hc, '3', --gamma_pos, '2', --gamma_neg, '2', --cyclical_factor, '4']
data:
  all:
seeds: [0]
epochs: 1
flags: [--img-size, '32', -b, '128', --opt, sgd, --lr, '0.05', -j, '0', --checkpoint-hist, '1', --warmup-epochs, '0',
        --log-interval, '1000']
threads: 1
"""


def _reproduce(*argv, **kwargs):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'}, **kwargs)


def test_a_two_cell_grid_lists_its_commands_and_runs_locally(digits_dir, tmp_path):
    grid = tmp_path / 'grid.yaml'
    grid.write_text(GRID)
    work = tmp_path / 'work'
    where = ['--grid', str(grid), '--data-dir', str(digits_dir), '--work-dir', str(work)]
    listed = _reproduce('list', *where)
    assert listed.returncode == 0, listed.stderr
    commands = dict(line.split(': ', 1) for line in listed.stdout.splitlines())
    assert sorted(commands) == ['all__ce__s0', 'all__cfl__s0'] and not work.exists()  # a dry run writes nothing
    cfl = shlex.split(commands['all__cfl__s0'])
    assert cfl[1] == str(REPO_ROOT / 'train.py') and cfl[cfl.index('--focal_loss') + 1] == 'asym-cyclical'
    assert cfl[cfl.index('--model') + 1] == 'test_resnet' and cfl[cfl.index('--epochs') + 1] == '1'
    assert cfl[cfl.index('--output') + 1] == str(work.resolve() / 'digits-demo' / 'runs' / 'all__cfl__s0')

    done = _reproduce('run', *where, '--jobs', '1')
    assert done.returncode == 0 and 'ran 2, failed 0, done before 0' in done.stderr, done.stderr[-3000:]
    for name, command in commands.items():
        result = json.loads((work / 'results' / 'digits-demo' / 'runs' / f'{name}.json').read_text())['result']
        assert result['epochs'] == 1 and 0 <= result['top1'] <= 100 and result['num_val_images'] == 355
        log = (work / 'digits-demo' / 'runs' / name / 'train.log').read_text()
        assert command.split(' ', 1)[1] in log  # the listed command is the one that ran
    status = _reproduce('status', '--grid', str(grid), '--work-dir', str(work))
    assert status.stdout.startswith('2/2 done'), status.stdout
    again = _reproduce('run', *where)
    assert again.returncode == 0 and 'ran 0, failed 0, done before 2' in again.stderr, again.stderr
    table = _reproduce('aggregate', '--grid', str(grid), '--work-dir', str(work))
    assert table.returncode == 0, table.stderr
    rows = (work / 'results' / 'digits-demo.csv').read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith('all,ce,1,') and rows[2].startswith('all,cfl,1,')


@pytest.mark.parametrize('change, key', [
    ({'loss': {'ce': []}}, "unknown key 'loss'"),
    ({'models': []}, "'models' must be"),
    ({'seeds': ['a']}, "'seeds' must be"),
    ({'epochs': 0}, "'epochs' must be"),
    ({'epochs': {'other': 1}}, "'epochs' must be"),
    ({'losses': {'ce': '--smoothing 0'}}, "'losses.ce' must be"),
    ({'losses': {}}, "'losses' must be"),
    ({'name': 'study-cpu'}, "is a study protocol's"),
])
def test_a_bad_grid_file_is_one_usage_line_before_any_work(tmp_path, change, key):
    import yaml

    spec = {**yaml.safe_load(GRID), **change}
    spec = {k: v for k, v in spec.items() if not (k == 'losses' and 'loss' in change)}
    grid = tmp_path / 'grid.yaml'
    grid.write_text(yaml.safe_dump(spec))
    data = tmp_path / 'data'
    for split in ('train', 'val'):
        (data / split).mkdir(parents=True)
    done = _reproduce('run', '--grid', str(grid), '--data-dir', str(data), '--work-dir', str(tmp_path / 'work'))
    errors = [line for line in done.stderr.splitlines() if 'error:' in line]
    assert done.returncode == 2 and len(errors) == 1 and key in errors[0], done.stderr
    assert 'Traceback' not in done.stderr and not (tmp_path / 'work').exists()


def test_the_smoke_protocol_as_a_grid_file_runs_the_same_train_py_arguments():
    """bench/grids/smoke.yaml and the `smoke` protocol give every cell the same parsed train.py arguments."""
    sys.path.insert(0, str(REPO_ROOT / 'bench'))
    try:
        from reproduce_grid import load_grid
        from reproduce_protocols import PROTOCOLS
    finally:
        sys.path.remove(str(REPO_ROOT / 'bench'))
    import train

    grid, protocol = load_grid(REPO_ROOT / 'bench' / 'grids' / 'smoke.yaml'), PROTOCOLS['smoke']
    assert grid.cells() == protocol.cells() and grid.threads == protocol.threads
    for cell in protocol.cells():
        expected = train.parse_args(['--data-dir', 'DATA', *protocol.train_flags(cell)])
        assert train.parse_args(['--data-dir', 'DATA', *grid.train_flags(cell)]) == expected, cell.name
