"""``cfl-grid evaluate`` (cfl_timm.grid.evaluation) on a real one-cell grid of digits PNGs, and the evaluation tables of
``cfl-grid aggregate``.

The grid trains once per module (train.py in a subprocess, 2 epochs of the smoke protocol's tiny network); each test
evaluates a copy of its work and results folders, so the tests do not depend on each other.
"""
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cfl_timm.grid.aggregate import aggregate_study
from cfl_timm.grid.cells import find_train_script, holdout_dataset, load_run_model, make_train_cell, predict
from cfl_timm.grid.evaluation import LOGITS_FILES
from cfl_timm.grid.grid_file import load_grid, load_protocol
from cfl_timm.grid.runner import GridRunner

REPO_ROOT = Path(__file__).resolve().parents[1]
CELL = 'tiny__ce__s0'
POSTHOC = ['ts', 'vs', 'hist', 'iso']  # ms and dirichlet cross-validate ODIR: seconds each, tested elsewhere


def _grid_spec() -> dict:
    """A one-cell scored grid on digits: the smoke protocol's flags, 300 training images of which 60 held out, the
    test split scored, four post-hoc methods, and two corruptions of a generated shift set (30 images each)."""
    return {'name': 'tiny-eval', 'description': 'test', 'flags': [*load_protocol('smoke').common, '--val-split',
                                                                  'monitor'],
            'losses': {'ce': ['--smoothing', '0']},
            'data': {'tiny': ['--train_size', '300', '--train_size_mode', 'stratified', '--holdout', '60']},
            'epochs': 2, 'seeds': [0], 'threads': 1, 'score_split': 'validation', 'temperature_scaling': True,
            'evaluation': {'posthoc': POSTHOC, 'shift': {'split': 'monitor', 'seed': 0, 'num_samples': 30,
                                                        'corruptions': ['gaussian_noise', 'contrast']}}}


@pytest.fixture(scope='module')
def trained_grid(digits_dir, tmp_path_factory) -> Path:
    """A folder with data/ (digits; the test split doubles as the monitor split), grid.yaml, work/ and results/
    after the grid's one cell trained and was scored."""
    root = tmp_path_factory.mktemp('grid-evaluate')
    data = root / 'data'
    data.mkdir()
    for split, source in (('train', 'train'), ('val', 'val'), ('monitor', 'val')):
        (data / split).symlink_to(digits_dir / source, target_is_directory=True)
    (root / 'grid.yaml').write_text(yaml.safe_dump(_grid_spec()))
    protocol = load_grid(root / 'grid.yaml')
    summary = GridRunner(protocol.cells(), root / 'work' / protocol.name / 'runs',
                         make_train_cell(protocol, data, find_train_script()), heartbeat_interval=1, stale_after=30,
                         results_dir=root / 'results' / protocol.name / 'runs').run()
    assert summary['ran'] == [CELL], summary
    return root


@pytest.fixture
def grid(trained_grid, tmp_path) -> Path:
    """A copy of the trained grid's folders for one test (the data links point at the same digits)."""
    shutil.copytree(trained_grid, tmp_path / 'grid', symlinks=True)
    return tmp_path / 'grid'


def _evaluate(capsys, root: Path, *extra) -> tuple[int, str]:
    from cfl_timm.grid.cli import cli

    code = cli(['evaluate', '--grid', str(root / 'grid.yaml'), '--work-dir', str(root / 'work'), '--results-dir',
                str(root / 'results'), '--data-dir', str(root / 'data'), *extra])
    return code, capsys.readouterr().err


def test_evaluate_saves_the_logits_fits_every_posthoc_method_and_skips_what_is_done(grid, capsys):
    code, err = _evaluate(capsys, grid)
    assert code == 0 and 'evaluated 1, done before 0, not finished 0' in err, err
    assert sum(CELL in line for line in err.splitlines()) == 1  # one progress line per cell
    path = grid / 'results' / 'tiny-eval' / 'evaluation' / f'{CELL}.json'
    record = json.loads(path.read_text())
    result = json.loads((grid / 'results' / 'tiny-eval' / 'runs' / f'{CELL}.json').read_text())['result']

    # The logits files: the documented format, equal to a fresh prediction of the checkpoint.
    from cfl_timm.metrics import load_logits_npz
    run_dir = grid / 'work' / 'tiny-eval' / 'runs' / CELL
    test, holdout = (load_logits_npz(run_dir / 'logits' / LOGITS_FILES[k]) for k in ('test', 'holdout'))
    model, args, data_config, epoch = load_run_model(run_dir / 'train')
    from timm.data import create_dataset
    fresh = predict(model, create_dataset('', root=str(grid / 'data'), split='validation', is_training=False),
                    data_config)
    assert torch.equal(test.logits, fresh[0]) and torch.equal(test.targets, fresh[1])
    fresh_holdout = predict(model, holdout_dataset(args, run_dir / 'train', grid / 'data'), data_config)
    assert torch.equal(holdout.logits, fresh_holdout[0]) and len(holdout.targets) == 60
    assert test.class_names == [str(c) for c in range(10)] and test.split == 'validation'
    assert test.checkpoint == 'last.pth.tar' and holdout.split == 'holdout'
    assert record['logits'] == {'test': f'runs/{CELL}/logits/test.npz', 'holdout': f'runs/{CELL}/logits/holdout.npz'}

    # The record: the scored checkpoint, its raw metrics as the scorer recorded them, every post-hoc method.
    assert record['cell'] == {'loss': 'ce', 'data': 'tiny', 'seed': 0} and record['epoch'] == epoch == 1
    assert record['top1'] == pytest.approx(result['test']['top1'], abs=1e-9)
    assert record['raw']['ece'] == pytest.approx(result['test']['ece'], abs=1e-9)
    assert record['num_images'] == len(fresh[1]) and record['num_holdout_images'] == 60
    assert list(record['posthoc']) == POSTHOC and record['evaluated']['posthoc'] == POSTHOC
    for method in POSTHOC:
        assert set(record['posthoc'][method]) == {'params', 'metrics'}
        assert 0 <= record['posthoc'][method]['metrics']['ece'] <= 1
    # Temperature scaling fitted on the same held-out logits as the scorer's: the same ECE after it.
    assert record['posthoc']['ts']['metrics']['ece'] == pytest.approx(result['test_ts']['ece'], abs=1e-4)
    assert record['selective']['aurc'] >= record['selective']['eaurc'] >= 0
    assert len(record['raw']['bin_gap']) == 15 and 'ood' not in record and 'bootstrap' not in record

    # The shift set: generated once, the two configured corruptions x 5 severities, 30 images each.
    shift = record['shift']
    assert shift['set'] == 'CIFAR-10-C-style, generated' and shift['split'] == 'monitor'
    assert set(shift['corruptions']) == {'gaussian_noise', 'contrast'} and len(shift['mean_per_severity']) == 5
    assert shift['num_samples'] == {'clean': 30, 'per_set': 30} and shift['mean']['num_cells'] == 10
    assert not Path(shift['folder']).is_absolute() and (grid / 'work' / 'shift-cache' / shift['folder']).is_dir()
    assert str(grid) not in path.read_text()  # no path of this machine in a result
    # The same shifted logits divided by the held-out temperature (ts is among the post-hoc methods): same top-1,
    # another ECE, and on the clean images exactly what dividing their logits by that T gives.
    scaled = record['shift_ts']
    assert scaled['mean']['top1'] == pytest.approx(shift['mean']['top1'])
    assert scaled['mean']['ece'] != pytest.approx(shift['mean']['ece'], abs=1e-9)

    # A second pass evaluates nothing and changes nothing.
    before = path.read_bytes(), (run_dir / 'logits' / 'test.npz').stat().st_mtime_ns
    code, err = _evaluate(capsys, grid)
    assert code == 0 and 'evaluated 0, done before 1, not finished 0' in err, err
    assert (path.read_bytes(), (run_dir / 'logits' / 'test.npz').stat().st_mtime_ns) == before
    assert 'shift set' not in err  # nothing to evaluate: nothing prepared

    # The aggregate gains the evaluation tables, from this record.
    paths = aggregate_study(load_grid(grid / 'grid.yaml'), grid / 'results')
    table = paths['md'].read_text()
    best = min(POSTHOC, key=lambda m: record['posthoc'][m]['metrics']['ece'])
    assert '**tiny: after the best post-hoc method.**' in table and 'chosen on the test split' in table
    raw, ts = record['raw']['ece'], record['posthoc']['ts']['metrics']['ece']
    assert f'| ce | 1 | {raw:.3f} | {ts:.3f} | {best} |' in table
    assert '**tiny: under shift**' in table and '**tiny: ECE under shift, raw and after temperature scaling**' in table
    row = next(csv.DictReader(open(paths['summary'])))
    assert row['eval_best_posthoc'] == best and float(row['eval_n']) == 1
    assert float(row['eval_aurc_mean']) == pytest.approx(record['selective']['aurc'], rel=1e-5)
    assert float(row['eval_shift_s5_ece_mean']) == pytest.approx(shift['mean_per_severity']['5']['ece'], rel=1e-5)


def test_a_checkpoint_that_is_not_the_scored_one_is_a_clear_error(grid, capsys):
    result_path = grid / 'results' / 'tiny-eval' / 'runs' / f'{CELL}.json'
    payload = json.loads(result_path.read_text())
    payload['result']['test']['top1'] += 1.0
    result_path.write_text(json.dumps(payload))
    with pytest.raises(SystemExit) as exit_info:
        _evaluate(capsys, grid)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and 'the checkpoint (or the data folder) is not the scored one' in err, err
    assert CELL in err and not (grid / 'results' / 'tiny-eval' / 'evaluation').exists()
    assert not (grid / 'work' / 'tiny-eval' / 'runs' / CELL / 'logits').exists()  # nothing written

    payload['result']['test']['top1'] -= 1.0
    payload['result']['epoch'] = 7
    result_path.write_text(json.dumps(payload))
    with pytest.raises(SystemExit):
        _evaluate(capsys, grid)
    assert 'is of epoch 1' in capsys.readouterr().err
    result_path.write_text('{"cell": {}}')
    with pytest.raises(SystemExit):
        _evaluate(capsys, grid)
    assert 'not the result file of a scored run' in capsys.readouterr().err


def test_an_unfinished_cell_is_left_for_a_later_pass_and_a_grid_without_evaluation_is_refused(grid, capsys):
    (grid / 'results' / 'tiny-eval' / 'runs' / f'{CELL}.json').unlink()  # as if still training
    code, err = _evaluate(capsys, grid)
    assert code == 0 and 'evaluated 0, done before 0, not finished 1' in err, err
    spec = _grid_spec()
    del spec['evaluation']
    (grid / 'grid.yaml').write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit):
        _evaluate(capsys, grid)
    assert 'grid tiny-eval has no evaluation key' in capsys.readouterr().err


def _evaluation_record(method, seed, ece, posthoc_ece, aurc, shift_ece):
    """An evaluation file's fields that the aggregate reads."""
    metrics = lambda e: {'ece': e, 'nll': 1.0 + e, 'top1': 70.0}  # noqa: E731
    cells = {str(s): {'top1': 80.0 - 10 * s, 'ece': shift_ece + s / 100, 'nll': 1.0, 'msp_auroc': 0.6}
             for s in range(1, 6)}
    return {'cell': {'loss': method, 'data': 'c10_4k', 'seed': seed}, 'raw': metrics(ece),
            'posthoc': {m: {'params': {}, 'metrics': metrics(e)} for m, e in posthoc_ece.items()},
            'selective': {'aurc': aurc, 'eaurc': aurc / 2},
            'shift': {'clean': {'top1': 90.0, 'ece': 0.01, 'nll': 0.5}, 'corruptions': {'fog': cells},
                      'mean_per_severity': {s: {**c, 'num_corruptions': 1} for s, c in cells.items()},
                      'mean': {'top1': 50.0, 'ece': shift_ece + 0.03, 'nll': 1.0, 'msp_auroc': 0.6, 'num_cells': 5}},
            'shift_ts': {'clean': {'top1': 90.0, 'ece': 0.005, 'nll': 0.5},
                         'mean_per_severity': {s: {**c, 'ece': shift_ece / 2 + int(s) / 100} for s, c in cells.items()},
                         'mean': {'top1': 50.0, 'ece': shift_ece / 2 + 0.03, 'nll': 1.0, 'msp_auroc': 0.6}}}


def test_aggregate_tables_of_the_evaluation_by_hand(tmp_path):
    """The best post-hoc method per loss (lowest mean test ECE over seeds), its seed-paired Δ against CE's best, and
    the shift table, checked against numbers worked out by hand; a run without an evaluation file stays out."""
    from test_grid_study import _result, _write

    protocol = load_protocol('study-cpu')
    runs, evaluation = tmp_path / 'study-cpu' / 'runs', tmp_path / 'study-cpu' / 'evaluation'
    evaluation.mkdir(parents=True)
    for seed in range(3):
        for method in ('ce', 'fl3'):
            _write(runs, 'c10_4k', method, seed, _result(70.0, 1.0, 0.1, 0.02))
        # ce: iso best (0.010, 0.012, 0.014); fl3: ts best on average (0.020 + seed / 100) though vs wins seed 0.
        ce = _evaluation_record('ce', seed, 0.10, {'ts': 0.03, 'iso': 0.010 + 0.002 * seed}, 0.2, 0.05)
        fl3 = _evaluation_record('fl3', seed, 0.08, {'ts': 0.020 + seed / 100, 'iso': 0.05,
                                                     'vs': 0.015 if seed == 0 else 0.06}, 0.1 + seed / 10, 0.04)
        for record in (ce, fl3):
            (evaluation / f"c10_4k__{record['cell']['loss']}__s{seed}.json").write_text(json.dumps(record))
    _write(runs, 'c10_4k', 'mbls', 0, _result(70.0, 1.0, 0.1, 0.02))  # finished, not evaluated
    paths = aggregate_study(protocol, tmp_path)
    rows = {r['method']: r for r in csv.DictReader(open(paths['summary']))}
    assert rows['ce']['eval_best_posthoc'] == 'iso' and rows['fl3']['eval_best_posthoc'] == 'ts'
    assert float(rows['fl3']['eval_best_ece_mean']) == pytest.approx(0.03)
    # fl3's best (ts: 0.02, 0.03, 0.04) minus ce's best (iso: 0.010, 0.012, 0.014): 0.010, 0.018, 0.026.
    assert float(rows['fl3']['d_eval_best_ece_vs_ce_mean']) == pytest.approx(0.018)
    assert float(rows['fl3']['d_eval_best_ece_vs_ce_sd']) == pytest.approx(0.008)
    assert float(rows['fl3']['d_eval_best_ece_vs_ce_t']) == pytest.approx(0.018 / (0.008 / math.sqrt(3)), rel=1e-5)
    assert rows['mbls']['eval_n'] in ('', '0') and rows['fl3']['eval_n'] == '3'
    table = paths['md'].read_text()
    assert '| fl3 | 3 | 0.080 ± 0.000 | 0.030 ± 0.010 | ts | 0.030 ± 0.010 |' in table
    assert '+0.018 ± 0.008 (t +3.9) | 0.200 ± 0.100 | 0.100 ± 0.050 |' in table
    # raw, ts, vs, ms, dirichlet, hist, iso: ce has no vs, ms, dirichlet or hist
    assert '| ce | 3 | 0.100 ± 0.000 | 0.030 ± 0.000 |  |  |  |  | 0.012 ± 0.002 |' in table
    assert '| mbls |' not in table.split('after the best post-hoc method')[1]
    # Under shift: clean 90 / 0.010, severity s top-1 80 - 10 s, ECE shift_ece + s / 100; mean MSP AUROC 0.6.
    assert '| fl3 | 3 | 90.00 ± 0.00 / 0.010 ± 0.000 | 70.00 ± 0.00 / 0.050 ± 0.000 |' in table
    assert '| 0.600 ± 0.000 |\n' in table
    # After TS: severity s ECE shift_ece / 2 + s / 100; means shift_ece + 0.03 raw, shift_ece / 2 + 0.03 after TS;
    # fl3 minus ce, the same on every seed: -0.010 raw (0.04 vs 0.05), -0.005 after TS (0.02 vs 0.025).
    assert ('| fl3 | 3 | 0.050 ± 0.000 / 0.030 ± 0.000 | 0.060 ± 0.000 / 0.040 ± 0.000 |' in table)
    assert float(rows['fl3']['d_eval_shift_mean_ece_vs_ce_mean']) == pytest.approx(-0.010)
    assert float(rows['fl3']['d_eval_shift_ts_mean_ece_vs_ce_mean']) == pytest.approx(-0.005)
    assert table.rstrip().endswith('| 0.070 ± 0.000 | 0.050 ± 0.000 | -0.010 ± 0.000 | -0.005 ± 0.000 |')


def test_the_evaluation_only_adds_to_the_tables_of_the_committed_results(tmp_path):
    """The aggregate of the committed study results (without evaluation files: the tables as they were; the
    unchanged code path) and again with an evaluation file: table.md gains its tables after the old text,
    summary.csv gains columns and keeps every old one as it was."""
    committed = REPO_ROOT / 'bench' / 'results' / 'study-cpu'
    shutil.copytree(committed / 'runs', tmp_path / 'study-cpu' / 'runs')
    protocol = load_protocol('study-cpu')
    paths = aggregate_study(protocol, tmp_path, 'test machine')
    before_md = paths['md'].read_text()
    before = list(csv.DictReader(open(paths['summary'])))
    assert '**Evaluation**' not in before_md and not any(key.startswith(('eval_', 'd_eval_')) for key in before[0])
    (tmp_path / 'study-cpu' / 'evaluation').mkdir()
    record = _evaluation_record('ce', 0, 0.05, {'ts': 0.02}, 0.1, 0.05)
    (tmp_path / 'study-cpu' / 'evaluation' / 'c10_4k__ce__s0.json').write_text(json.dumps(record))
    paths = aggregate_study(protocol, tmp_path, 'test machine')
    after_md = paths['md'].read_text()
    assert after_md.startswith(before_md) and '**c10_4k: after the best post-hoc method.**' in after_md
    assert '1 of the 72 finished runs evaluated' in after_md and '**c10lt100: after' not in after_md
    after = list(csv.DictReader(open(paths['summary'])))
    assert [{key: row[key] for key in before[0]} for row in after] == before
    assert after[0]['eval_best_posthoc'] == 'ts' and after[1]['eval_n'] == ''
