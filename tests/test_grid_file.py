"""A user's own grid file (cfl_timm.grid.grid_file) through cfl-grid: checked before any work, listed as exact
train.py commands, and run by the local executor into a fresh folder with real train.py processes; the command's
help describes every subcommand."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CFL_GRID = [sys.executable, '-m', 'cfl_timm.grid']  # the cfl-grid command of this checkout

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


def _cfl_grid(*argv, **kwargs):
    return subprocess.run([*CFL_GRID, *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'}, **kwargs)


def _in_process(capsys, *argv) -> tuple[int, str, str]:
    """cfl-grid's own function in this process (a command's start costs seconds of imports); (status, out, err)."""
    from cfl_timm.grid.cli import cli

    code = cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_two_cell_grid_lists_its_commands_and_runs_locally(digits_dir, tmp_path, capsys):
    """The run is the real command (a subprocess); list, status, the second run and aggregate run in process."""
    grid = tmp_path / 'grid.yaml'
    grid.write_text(GRID)
    work = tmp_path / 'work'
    where = ['--grid', str(grid), '--data-dir', str(digits_dir), '--work-dir', str(work)]
    code, out, err = _in_process(capsys, 'list', *where)
    assert code == 0, err
    commands = dict(line.split(': ', 1) for line in out.splitlines())
    assert sorted(commands) == ['all__ce__s0', 'all__cfl__s0'] and not work.exists()  # a dry run writes nothing
    cfl = shlex.split(commands['all__cfl__s0'])
    assert cfl[1] == str(REPO_ROOT / 'train.py') and cfl[cfl.index('--focal_loss') + 1] == 'asym-cyclical'
    assert cfl[cfl.index('--model') + 1] == 'test_resnet' and cfl[cfl.index('--epochs') + 1] == '1'
    assert cfl[cfl.index('--output') + 1] == str(work.resolve() / 'digits-demo' / 'runs' / 'all__cfl__s0')

    done = _cfl_grid('run', *where, '--jobs', '1')
    assert done.returncode == 0 and 'ran 2, failed 0, done before 0' in done.stderr, done.stderr[-3000:]
    for name, command in commands.items():
        result = json.loads((work / 'results' / 'digits-demo' / 'runs' / f'{name}.json').read_text())['result']
        assert result['epochs'] == 1 and 0 <= result['top1'] <= 100 and result['num_val_images'] == 355
        log = (work / 'digits-demo' / 'runs' / name / 'train.log').read_text()
        assert command.split(' ', 1)[1] in log  # the listed command is the one that ran
    code, out, err = _in_process(capsys, 'status', '--grid', str(grid), '--work-dir', str(work))
    assert out.startswith('2/2 done'), out
    code, out, err = _in_process(capsys, 'run', *where)
    assert code == 0 and 'ran 0, failed 0, done before 2' in err, err
    code, out, err = _in_process(capsys, 'aggregate', '--grid', str(grid), '--work-dir', str(work))
    assert code == 0, err
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
    ({'grid': {'all': ['focal']}}, "'grid.all' names 'focal'"),
    ({'shot_groups': {'all': {'num_classes': 10}}}, "needs the data setting's --imbalance_ratio"),
    ({'shot_groups': {'all': {'many': [0], 'few': [1]}}}, "'shot_groups.all' must be"),
    ({'temperature_scaling': True}, "'temperature_scaling' must be"),
    ({'models': None, 'flags': ['-b', '8']}, "missing key 'models'"),
    ({'evaluation': {'posthoc': ['ts']}}, "'evaluation' needs 'score_split'"),
    ({'evaluation': ['ts']}, "'evaluation' must be a mapping"),
    ({'score_split': 'validation', 'evaluation': {'post': ['ts']}}, "unknown key evaluation.'post'"),
    ({'score_split': 'validation', 'evaluation': {'posthoc': ['ts']}}, "data setting 'all' has no --holdout"),
    ({'score_split': 'validation', 'evaluation': {'posthoc': ['platt']}}, "'evaluation.posthoc' names 'platt'"),
    ({'score_split': 'validation', 'evaluation': {'posthoc': ['ts', 'ts']}}, "'evaluation.posthoc' must be"),
    ({'score_split': 'validation', 'evaluation': {'shift': {'seed': 0}}}, "missing key evaluation.shift.'split'"),
    ({'score_split': 'validation', 'evaluation': {'shift': {'split': 'monitor', 'num_samples': 0}}},
     "'evaluation.shift.num_samples' must be a positive integer"),
    ({'score_split': 'validation', 'evaluation': {'shift': {'split': 'monitor', 'corruptions': ['rain']}}},
     "'evaluation.shift.corruptions' must be"),
    ({'score_split': 'validation', 'evaluation': {'shift': {'split': '../val'}}}, "'evaluation.shift.split' must be"),
])
def test_a_bad_grid_file_is_one_usage_line_before_any_work(tmp_path, capsys, change, key):
    """In process (cfl-grid's own function); the subprocess exit status and the absent traceback are checked by
    test_a_missing_train_script_is_one_usage_line."""
    import yaml

    from cfl_timm.grid.cli import cli

    spec = {k: v for k, v in {**yaml.safe_load(GRID), **change}.items() if v is not None}
    spec = {k: v for k, v in spec.items() if not (k == 'losses' and 'loss' in change)}
    grid = tmp_path / 'grid.yaml'
    grid.write_text(yaml.safe_dump(spec))
    data = tmp_path / 'data'
    for split in ('train', 'val'):
        (data / split).mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        cli(['run', '--grid', str(grid), '--data-dir', str(data), '--work-dir', str(tmp_path / 'work')])
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if 'error:' in line]
    assert exit_info.value.code == 2 and len(errors) == 1 and key in errors[0], stderr
    assert not (tmp_path / 'work').exists()


def _help(capsys, *argv) -> str:
    from cfl_timm.grid.cli import cli

    with pytest.raises(SystemExit) as exit_info:
        cli([*argv, '--help'])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_the_help_describes_every_subcommand_and_each_has_its_own(capsys):
    from cfl_timm.grid.cli import GRID_COMMANDS, OTHER_COMMANDS

    top = _help(capsys)
    for name, (summary, _) in {**GRID_COMMANDS, **OTHER_COMMANDS}.items():
        assert f'{name:<13}{summary}' in top  # one line each, in the description
        paragraphs = _help(capsys, name).split('\n\n')
        assert paragraphs[0].startswith(f'usage: cfl-grid {name}') and not paragraphs[1].startswith('options')


def test_the_console_entry_point_is_the_cli():
    """pyproject.toml's cfl-grid script names the function `python -m cfl_timm.grid` runs."""
    import importlib

    import tomllib

    scripts = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())['project']['scripts']
    module, _, name = scripts['cfl-grid'].partition(':')
    from cfl_timm.grid.cli import cli
    assert getattr(importlib.import_module(module), name) is cli


def test_a_missing_train_script_is_one_usage_line(tmp_path):
    grid = tmp_path / 'grid.yaml'
    grid.write_text(GRID)
    for split in ('train', 'val'):
        (tmp_path / split).mkdir()
    done = _cfl_grid('list', '--grid', str(grid), '--data-dir', str(tmp_path), '--work-dir', str(tmp_path / 'w'),
                     '--train-script', str(tmp_path / 'nowhere.py'))
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(f'argument --train-script: file not found: '
                                                         f'{tmp_path / "nowhere.py"}'), done.stderr
