"""The study's per-run result files and their aggregate (cfl-grid: cfl_timm.grid.cells, cfl_timm.grid.aggregate).

Worker processes are real (``cfl-grid run`` with the fake cell of this file); the aggregate is checked
against numbers computed by hand from result files written here.
"""
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cfl_timm.grid.aggregate import aggregate_study, last_fifth_gain
from cfl_timm.grid.cells import find_train_script, make_train_cell, run_pilot
from cfl_timm.grid.grid_file import load_protocol, protocol_names
from cfl_timm.grid.runner import Cell, GridRunner

REPO_ROOT = Path(__file__).resolve().parents[1]
CFL_GRID = [sys.executable, '-m', 'cfl_timm.grid']  # the cfl-grid command of this checkout

THIS_FILE = Path(__file__).resolve()


def logging_cell(cell, run_dir, should_stop=lambda: False):
    with open(os.environ['STUDY_LOG'], 'a') as f:
        f.write(f'{cell.name} {os.getpid()}\n')
    return {'value': cell.seed * 100 + len(cell.loss)}


def _run(tmp_path, *extra):
    data = tmp_path / 'data'
    (data / 'train').mkdir(parents=True, exist_ok=True)
    (data / 'val').mkdir(parents=True, exist_ok=True)
    command = [*CFL_GRID, 'run', '--protocol', 'cpu', '--seeds', '0',
               '--work-dir', str(tmp_path / 'work'), '--results-dir', str(tmp_path / 'results'),
               '--data-dir', str(data), '--cell-fn', f'{THIS_FILE}:logging_cell', *extra]
    return subprocess.run(command, env={**os.environ, 'STUDY_LOG': str(tmp_path / 'cells.log')},
                          capture_output=True, text=True, timeout=300)


def test_per_run_result_files_carry_the_grid_to_another_machine(tmp_path):
    done = _run(tmp_path, '--jobs', '2')
    assert done.returncode == 0, done.stderr
    results = tmp_path / 'results' / 'cpu' / 'runs'
    cells = [c for c in load_protocol('cpu').cells() if c.seed == 0]
    assert sorted(p.stem for p in results.glob('*.json')) == sorted(c.name for c in cells)
    lines = (tmp_path / 'cells.log').read_text().splitlines()
    for cell in cells:
        payload = json.loads((results / f'{cell.name}.json').read_text())
        assert payload['cell'] == {'loss': cell.loss, 'data': cell.data, 'seed': cell.seed}
        assert payload['result'] == {'value': len(cell.loss)}
        assert f"{cell.name} {payload['pid']}" in lines and payload['wall_seconds'] >= 0
    # Another machine: a fresh work directory, only the result files (committed to the repository) come along.
    shutil.rmtree(tmp_path / 'work')
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / 'cells.log').read_text().splitlines()) == len(cells)  # nothing ran again
    assert 'ran 0, failed 0, done before 18' in done.stderr
    # A run never overwrites an earlier result: a new run of a cell happens only when its file is gone.
    (results / f'{cells[0].name}.json').unlink()
    done = _run(tmp_path)
    assert done.returncode == 0 and 'ran 1, failed 0, done before 17' in done.stderr, done.stderr


def _result(top1, nll, ece, ece_ts, per_class=None, temperature=1.5, holdout_curve=(50.0, 60.0)):
    metrics = {'top1': top1, 'top5': 99.0, 'nll': nll, 'brier': 0.5, 'ece': ece, 'adaptive_ece': ece,
               'classwise_ece': ece / 10, 'mce': 0.2, 'smooth_ece': ece}
    # A 5-epoch curve: held-out top-1 after epoch 4 (index 3) and after the last epoch are the last-fifth check.
    curve = [{'epoch': e, 'holdout_top1': 10.0 * e} for e in range(3)]
    curve += [{'epoch': 3, 'holdout_top1': holdout_curve[0]}, {'epoch': 4, 'holdout_top1': holdout_curve[1]}]
    return {'epochs': 30, 'train_seconds': 100.0, 'train_cpu_seconds': 360.0, 'curve': curve, 'test': metrics,
            'test_ts': {**metrics, 'nll': nll - 0.1, 'ece': ece_ts, 'adaptive_ece': ece_ts},
            'temperature': temperature, 'per_class_top1': per_class or [top1] * 10}


def _write(runs, data, method, seed, result):
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f'{data}__{method}__s{seed}.json').write_text(json.dumps({
        'cell': {'loss': method, 'data': data, 'seed': seed}, 'result': result, 'wall_seconds': 1.0}))


def test_aggregate_of_a_partial_grid(tmp_path):
    protocol = load_protocol('study-cpu')
    runs = tmp_path / protocol.name / 'runs'
    ce = {0: 70.0, 1: 72.0, 2: 71.0}
    cfl = {0: 71.0, 1: 72.5, 2: 72.5}  # paired differences +1.0, +0.5, +1.5: mean 1, sd 0.5, t = 2 sqrt(3)
    for seed in range(3):
        _write(runs, 'c10_4k', 'ce', seed, _result(ce[seed], 1.0, 0.10, 0.02, holdout_curve=(60.0, 60.5 + seed)))
        _write(runs, 'c10_4k', 'cfl_authors', seed, _result(cfl[seed], 0.9, 0.05, 0.03))
        _write(runs, 'c10_4k', 'fl3', seed, _result(cfl[seed] - 2 + seed, 0.9, 0.05, 0.03))
        _write(runs, 'c10_4k', 'ce_cyc_wd', seed, _result(ce[seed] + 0.2 * seed, 1.0, 0.10, 0.02))
        _write(runs, 'c10_4k', 'ce_const_wd', seed, _result(ce[seed], 1.0, 0.10, 0.02))
    groups = protocol.shot_groups['c10lt100']
    lt_per_class = [80.0 if c in groups['many'] else 40.0 if c in groups['medium'] else 10.0 for c in range(10)]
    _write(runs, 'c10lt100', 'ce', 0, _result(40.0, 2.0, 0.3, 0.1, per_class=lt_per_class))
    fewer = [p - 4.0 if c in groups['few'] else p for c, p in enumerate(lt_per_class)]
    _write(runs, 'c10lt100', 'cfl_oltr', 0, _result(39.0, 2.0, 0.3, 0.1, per_class=fewer))
    paths = aggregate_study(protocol, tmp_path, machine='test machine')

    rows = {(r['data'], r['method']): r for r in csv.DictReader(open(paths['summary']))}
    row = rows[('c10_4k', 'cfl_authors')]
    assert row['n_seeds'] == '3' and float(row['top1_mean']) == pytest.approx(72.0)
    assert float(row['d_top1_vs_ce_mean']) == pytest.approx(1.0)
    assert float(row['d_top1_vs_ce_sd']) == pytest.approx(0.5)
    assert float(row['d_top1_vs_ce_t']) == pytest.approx(2 * math.sqrt(3), rel=1e-5)
    assert float(row['d_ece_ts_vs_ce_mean']) == pytest.approx(0.01)
    assert 'd_top1_vs_ce_ls0.1_mean' not in row or row['d_top1_vs_ce_ls0.1_mean'] in ('', 'nan')  # no CE+LS runs
    cyc = rows[('c10_4k', 'ce_cyc_wd')]
    assert float(cyc['d_top1_vs_ce_const_wd_mean']) == pytest.approx(0.2)  # 0, 0.2, 0.4
    lt = rows[('c10lt100', 'ce')]
    assert (float(lt['many_mean']), float(lt['medium_mean']), float(lt['few_mean'])) == (80.0, 40.0, 10.0)
    # The convergence check per run: CE's held-out top-1 gained 0.5, 1.5 and 2.5 points in its last fifth.
    assert float(row['last_fifth_gain_mean']) == pytest.approx(10.0)
    assert float(rows[('c10_4k', 'ce')]['last_fifth_gain_mean']) == pytest.approx(1.5)
    # A focus method (CFL) is compared with every other loss of its setting, not only with the baselines; the
    # cyclical-schedule runs are not losses and stay out of it.
    assert float(row['d_top1_vs_fl3_mean']) == pytest.approx(1.0)  # cfl - (cfl - 2 + seed) = 2, 1, 0
    assert row.get('d_top1_vs_ce_cyc_wd_mean') in (None, '')  # CSV rows share one header: empty, not absent
    assert rows[('c10_4k', 'fl3')].get('d_top1_vs_cfl_authors_mean') in (None, '')
    assert float(rows[('c10lt100', 'cfl_oltr')]['d_few_vs_ce_mean']) == pytest.approx(-4.0)

    table = paths['md'].read_text()
    assert '**Runs done: 17 of 72**' in table and 'test machine' in table
    # 17 runs of 360 CPU-s; projected: (15 + 9 cells) x 3 seeds x 360 s = 7.2 h
    assert 'finished runs: 1.70 h; the whole grid at each setting\'s mean per run: 7.20 h' in table
    assert '| cfl_authors | 3 | 72.00 ± 0.87 | +1.00 ± 0.50 (t +3.5) |' in table
    assert '| 1.50 ± 0.00 | 1.5 ± 1.0 |' in table  # CE's T and last-fifth columns
    assert '| cfl_authors | fl3 | 3 | +1.00 ± 1.00 (t +1.7) |' in table
    assert '| cfl_oltr | ce | 1 | -1.00 |' in table and '| -4.0 |' in table  # LT focus row with Δ few
    assert '| c10_4k | ce_cyc_wd | ce_const_wd | 3 | +0.20 ± 0.20 (t +1.7) |' in table
    assert 'few = classes 6, 7, 8, 9' in table and '(t -' not in table  # constant differences get no t
    assert len(list(csv.DictReader(open(paths['runs'])))) == 17
    assert paths['png'].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_last_fifth_gain_is_the_convergence_check():
    curve = [{'epoch': e, 'holdout_top1': float(v), 'eval_top1': 1.0} for e, v in enumerate(range(50, 60))]
    assert last_fifth_gain(curve) == 59.0 - 57.0  # after epoch 10 minus after epoch 8 (index 7)
    # --val-interval 3: evaluated after epochs 3, 6, 9 and the last; the reference is the last within 8 epochs.
    sparse = [row for row in curve if (row['epoch'] + 1) % 3 == 0 or row['epoch'] == 9]
    assert last_fifth_gain(sparse) == 59.0 - 55.0
    assert last_fifth_gain(curve, 'eval_top1') == 0.0
    assert last_fifth_gain(curve, 'missing') is None and last_fifth_gain(curve[-1:]) is None


def test_study_protocol_cells_and_flags():
    protocol = load_protocol('study-cpu')
    cells = protocol.cells()
    assert len(cells) == 3 * (15 + 9) and len({c.name for c in cells}) == len(cells)
    assert {c.loss for c in cells if c.data == 'c10lt100'} == {'ce', 'ce_ls0.1', 'fl3', 'flsd', 'dual_focal',
                                                              'adafocal', 'mbls', 'cfl_authors', 'cfl_oltr'}
    assert protocol.shot_groups['c10lt100'] == {'many': (0, 1, 2), 'medium': (3, 4, 5), 'few': (6, 7, 8, 9)}
    # Each constant counterpart sits at its cyclical schedule's mean, (min + max) / 2.
    flags = {c.loss: protocol.train_flags(c) for c in cells if c.seed == 0 and c.data == 'c10_4k'}

    def value(method, flag):
        argv = flags[method]
        return float(argv[len(argv) - 1 - argv[::-1].index(flag) + 1])  # the last occurrence wins in argparse

    assert value('ce_const_wd', '--weight-decay') == pytest.approx(
        (value('ce_cyc_wd', '--wd_min') + value('ce_cyc_wd', '--wd_max')) / 2)
    assert value('ce_const_temp', '--T_min') == value('ce_const_temp', '--T_max') == pytest.approx(
        (value('ce_cyc_temp', '--T_min') + value('ce_cyc_temp', '--T_max')) / 2)
    assert value('ce_const_clip', '--clip-grad') == pytest.approx(
        (value('ce_cyc_clip', '--clip_min') + value('ce_cyc_clip', '--clip_max')) / 2)
    assert all(value(m, '--seed') == 0 for m in flags)


@pytest.mark.parametrize('name', protocol_names())
def test_every_protocol_cell_is_a_valid_train_command(name, tmp_path):
    """Each cell's train.py flags pass train.py's parser and its input checks (before any GPU-hour is spent)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import train

    protocol = load_protocol(name)
    for split in ('train', 'val', 'monitor'):
        (tmp_path / split / 'a').mkdir(parents=True)
    checked = set()
    for cell in protocol.cells():
        if (cell.loss, cell.data) in checked:
            continue
        checked.add((cell.loss, cell.data))
        args = train.parse_args(['--data-dir', str(tmp_path), *protocol.train_flags(cell), '--output',
                                 str(tmp_path / 'out')])
        train.check_args(args)
        assert args.seed == cell.seed and args.epochs == protocol.epochs[cell.data]
    assert len(checked) == sum(len(m) for m in protocol.grid.values())


def _tiny_study(digits_dir, tmp_path):
    """A data folder of digits PNGs (its test split doubles as the monitor split) and a one-cell study protocol
    on it: the smoke protocol's tiny network, 240 training images plus 60 held out."""
    import dataclasses

    data = tmp_path / 'data'
    data.mkdir()
    for split, source in (('train', 'train'), ('val', 'val'), ('monitor', 'val')):
        (data / split).symlink_to(digits_dir / source, target_is_directory=True)
    smoke = load_protocol('smoke')
    protocol = dataclasses.replace(
        smoke, name='tiny-study', description='test', common=smoke.common + ['--val-split', 'monitor'],
        data={'tiny': ['--train_size', '300', '--train_size_mode', 'stratified', '--holdout', '60']},
        epochs={'tiny': 2}, grid={'tiny': ('ce',)}, score_split='validation', temperature_scaling=True)
    return data, protocol


def test_study_cell_scores_the_last_checkpoint_before_and_after_temperature_scaling(digits_dir, tmp_path):
    """A real study cell on digits PNGs: train.py with --holdout, the last checkpoint scored on the test split and
    calibrated with a temperature fitted on the held-out split only."""
    data, protocol = _tiny_study(digits_dir, tmp_path)
    cell = Cell('ce', 'tiny', 0)
    summary = GridRunner([cell], tmp_path / 'runs', make_train_cell(protocol, data, find_train_script()),
                         heartbeat_interval=1,
                         stale_after=30, results_dir=tmp_path / 'results').run()
    run_dir = tmp_path / 'runs' / cell.name
    assert summary['ran'] == [cell.name], (run_dir / 'error.json').read_text() if summary['failed'] else ''
    result = json.loads((tmp_path / 'results' / f'{cell.name}.json').read_text())['result']
    num_val = sum(1 for p in (digits_dir / 'val').rglob('*.png'))
    assert result['num_images'] == num_val and result['num_holdout_images'] == 60 and result['epoch'] == 1
    assert len(result['curve']) == 2 and {'holdout_top1', 'eval_top1', 'lr'} <= set(result['curve'][-1])
    # Here the monitor split is the test split, so the scored top-1 is train.py's own last evaluation.
    assert result['test']['top1'] == pytest.approx(result['curve'][-1]['eval_top1'], abs=0.01)
    assert result['test_ts']['top1'] == result['test']['top1'] and result['temperature'] > 0
    # The temperature minimises the held-out NLL: never worse there than T = 1.
    assert result['holdout_ts']['nll'] <= result['holdout']['nll'] + 1e-6
    assert result['holdout']['top1'] == pytest.approx(result['curve'][-1]['holdout_top1'], abs=0.01)
    # train.py fitted the same T on the same held-out logits each epoch and scored its monitor split (here the
    # scored split) after scaling: the study's scorer and train.py share one fit-then-score function.
    assert result['temperature'] == pytest.approx(result['curve'][-1]['holdout_temperature'], rel=1e-3)
    assert result['test_ts']['nll'] == pytest.approx(result['curve'][-1]['eval_nll_ts'], abs=1e-4)
    assert result['test_ts']['ece'] == pytest.approx(result['curve'][-1]['eval_ece_ts'], abs=1e-4)
    assert set(result['test']) >= {'top1', 'nll', 'brier', 'ece', 'adaptive_ece', 'classwise_ece'}
    assert result['provenance']['torch'] and result['command'][:3] == ['train.py', '--data-dir', '$DATA']
    assert not any(str(tmp_path) in arg for arg in result['command'])  # no path of this machine
    assert 0 < result['train_cpu_seconds']


def test_a_result_file_is_never_overwritten(tmp_path):
    """Another machine recorded the cell while this one ran it (say the results came in with a git pull): the
    earlier result stays, this run records nothing."""
    cell = Cell('ce', 'c10', 0)
    results = tmp_path / 'results'

    def cell_fn(cell, run_dir, should_stop):
        results.mkdir(exist_ok=True)
        (results / f'{cell.name}.json').write_text('{"earlier": true}')
        return {'value': 1}

    summary = GridRunner([cell], tmp_path / 'runs', cell_fn, heartbeat_interval=1, stale_after=10,
                         results_dir=results).run()
    assert summary['failed'] == [cell.name]
    assert json.loads((results / f'{cell.name}.json').read_text()) == {'earlier': True}
    assert not (tmp_path / 'runs' / cell.name / 'done.json').exists() and len(list(results.iterdir())) == 1


def test_pilot_records_the_curve_and_the_last_fifth_gain(digits_dir, tmp_path, capsys):
    """``cfl-grid pilot``: the protocol's CE cell with other epochs (and extra flags), trained for real on digits;
    its record holds the per-epoch curve and the convergence check, and is never overwritten."""
    data, protocol = _tiny_study(digits_dir, tmp_path)
    path = run_pilot(protocol, 'tiny', 5, data, tmp_path / 'work', tmp_path / 'results', 'p5', find_train_script(),
                     ('--lr', '0.02'))
    assert path == tmp_path / 'results' / 'tiny-study' / 'pilots' / 'p5.json'
    record = json.loads(path.read_text())
    assert [row['epoch'] for row in record['curve']] == list(range(5))
    assert record['epochs_trained_here'] == 5 and record['cpu_seconds'] > 0 and record['wall_seconds'] > 0
    held_out = [row['holdout_top1'] for row in record['curve']]
    assert record['last_fifth_gain']['holdout_top1'] == pytest.approx(held_out[4] - held_out[3])
    assert record['meets_criterion'] == (held_out[4] - held_out[3] < 1.0)
    command = record['command']
    last_lr = len(command) - 1 - command[::-1].index('--lr')  # the extra flag comes last, so it wins in argparse
    assert command[command.index('--epochs') + 1] == '5' and command[last_lr + 1] == '0.02'
    assert '$DATA' in command and str(tmp_path) not in ' '.join(command)  # no machine path in a committed record
    with pytest.raises(ValueError, match='never overwritten'):
        run_pilot(protocol, 'tiny', 5, data, tmp_path / 'work', tmp_path / 'results', 'p5', find_train_script())
    with pytest.raises(ValueError, match='must be a plain file name'):  # before anything runs or is written
        run_pilot(protocol, 'tiny', 5, data, tmp_path / 'work', tmp_path / 'results', '../p6',
                  find_train_script())
    assert not (tmp_path / 'results' / 'tiny-study' / 'p6.json').exists()
    # A bad data setting is a usage error of the command line, before anything runs.
    from cfl_timm.grid.cli import cli
    with pytest.raises(SystemExit) as exit_info:
        cli(['pilot', '--protocol', 'study-cpu', '--data-setting', 'c10', '--epochs', '40', '--name', 'x',
             '--data-dir', str(data), '--work-dir', str(tmp_path / 'work2'),
             '--results-dir', str(tmp_path / 'results2')])
    assert "--data-setting 'c10': grid study-cpu has ['c10_4k', 'c10lt100']" in capsys.readouterr().err
    assert exit_info.value.code == 2 and not (tmp_path / 'work2').exists()


def test_data_share_bench_times_the_data_loop_and_the_whole_epoch(digits_dir, tmp_path):
    """bench/study_data_share.py on digits: both loops run over the same loader; the data loop is a part of the
    whole epoch, so its share lies in (0, 1)."""
    if str(REPO_ROOT / 'bench') not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / 'bench'))
    import study_data_share

    result = study_data_share.main(['--data-dir', str(digits_dir), '--repeats', '2', '--images', '320',
                                    '--json', str(tmp_path / 'share.json')])
    assert result['repeats_kept'] == 1 and 0 < result['data_share'] < 1
    assert json.loads((tmp_path / 'share.json').read_text()) == result
    with pytest.raises(SystemExit):  # more images than the folder holds: a usage error
        study_data_share.main(['--data-dir', str(digits_dir), '--images', '100000'])


def test_a_fresh_work_dir_starts_from_nothing_and_keeps_its_results(tmp_path, capsys):
    """Without --results-dir the results go to WORK_DIR/results: the committed bench/results never count as done,
    and a user's runs never land among them."""
    data = tmp_path / 'data'
    for split in ('train', 'val'):
        (data / split).mkdir(parents=True)
    cell = load_protocol('study-cpu').cells()[0]
    total = len(load_protocol('study-cpu').cells())
    committed = REPO_ROOT / 'bench' / 'results' / 'study-cpu' / 'runs'
    before = sorted(committed.glob('*.json')) if committed.is_dir() else []
    base = CFL_GRID
    work = ['--protocol', 'study-cpu', '--work-dir', str(tmp_path / 'work')]
    from cfl_timm.grid.cli import cli
    (tmp_path / 'work').mkdir()
    assert cli(['status', *work]) == 0 and capsys.readouterr().out.startswith(f'0/{total} done')
    done = subprocess.run([*base, 'run', *work, '--data-dir', str(data), '--only', cell.name,
                           '--cell-fn', f'{THIS_FILE}:logging_cell'],
                          env={**os.environ, 'STUDY_LOG': str(tmp_path / 'cells.log')},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and 'ran 1, failed 0, done before 0' in done.stderr, done.stderr
    result = tmp_path / 'work' / 'results' / 'study-cpu' / 'runs' / f'{cell.name}.json'
    assert json.loads(result.read_text())['result'] == {'value': len(cell.loss)}
    assert (sorted(committed.glob('*.json')) if committed.is_dir() else []) == before
    assert cli(['status', *work]) == 0 and capsys.readouterr().out.startswith(f'1/{total} done')
