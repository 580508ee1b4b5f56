"""cfl_timm.evaluate: the model-free evaluator over saved logits (library function and command line)."""
import json
import shutil

import numpy as np
import pytest
import torch

from cfl_timm.evaluate import cli, evaluate_logits, posthoc_logits
from cfl_timm.metrics import (
    METRIC_KEYS,
    OOD_METRIC_KEYS,
    OOD_SCORES,
    CalibrationMeter,
    aurc,
    bootstrap_auroc,
    bootstrap_intervals,
    calibration_direction,
    eaurc,
    fit_posthoc,
    fit_temperature,
    load_logits_npz,
    msp,
    ood_metrics,
    save_logits_npz,
)

NUM_CLASSES = 10


def synthetic(count: int, seed: int, scale: float = 2.0, num_classes: int = NUM_CLASSES):
    """Over-confident float64 logits: the true class gets a bonus, everything is multiplied by ``scale``."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, num_classes, count)
    logits = rng.normal(size=(count, num_classes)) * 2.0
    logits[np.arange(count), targets] += 2.5
    return logits * scale, targets


def write(path, logits, targets=None, drop=(), **extra):
    """A saved-logits file as ``validate.py --save-logits`` writes it, with keys dropped or replaced,
    written with plain numpy so that malformed files can be made too."""
    arrays = {'logits': logits, 'targets': targets, 'class_names': np.array([str(k) for k in range(logits.shape[1])]),
              'split': np.array('validation'), 'checkpoint': np.array(''), **extra}
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None and key not in drop})
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {'test': write(tmp_path / 'test.npz', *synthetic(500, 0)),
            'fit': write(tmp_path / 'fit.npz', *synthetic(500, 1)),
            'ood': write(tmp_path / 'ood.npz', *synthetic(300, 2, scale=0.5))}


def tensors(path):
    saved = load_logits_npz(path)
    return saved.logits, saved.targets


def direct_metrics(logits, targets, num_bins=15):
    meter = CalibrationMeter(logits.shape[1], num_bins)
    meter.update(logits, targets)
    return meter.compute(), calibration_direction(logits, targets, num_bins)


def test_layout_and_json_file(files, tmp_path):
    out = tmp_path / 'result.json'
    result = cli(['--logits', files['test'], '--fit', files['fit'], '--ood', f'far={files["ood"]}',
                  '--posthoc', 'ts,vs,ms,dirichlet,hist,iso', '--bootstrap', '50', '--output-json', str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result) == {'num_samples', 'num_classes', 'num_bins', 'raw', 'selective', 'posthoc', 'ood',
                           'bootstrap'}
    metric_keys = set(METRIC_KEYS) | {'over_ece', 'under_ece', 'signed_ece', 'bin_gap', 'bin_count'}
    assert set(result['raw']) == metric_keys
    assert len(result['raw']['bin_gap']) == len(result['raw']['bin_count']) == 15
    assert set(result['selective']) == {'aurc', 'eaurc'}
    assert list(result['posthoc']) == ['ts', 'vs', 'ms', 'dirichlet', 'hist', 'iso']
    for name, entry in result['posthoc'].items():
        assert set(entry) == {'params', 'metrics'}
        assert set(entry['metrics']) == metric_keys
        # Every method changes the probabilities of this over-confident set.
        assert entry['metrics']['ece'] < result['raw']['ece'], name
    assert set(result['posthoc']['ts']['params']) == {'temperature'}
    assert result['posthoc']['ms']['params']['weight']['shape'] == [NUM_CLASSES, NUM_CLASSES]
    assert {'odir_lambda', 'odir_mu'} <= set(result['posthoc']['dirichlet']['params'])
    assert set(result['ood']) == {'far'}
    assert set(result['ood']['far']) == set(OOD_SCORES)
    for score in OOD_SCORES:
        assert set(result['ood']['far'][score]) == set(OOD_METRIC_KEYS)
    assert set(result['bootstrap']) == {'top1', 'nll', 'brier', 'ece', 'ood'}
    assert set(result['bootstrap']['ood']['far']) == {'msp_auroc'}


def test_numbers_equal_the_metric_functions(files):
    logits, targets = tensors(files['test'])
    fit_logits, fit_targets = tensors(files['fit'])
    ood_logits, _ = tensors(files['ood'])
    result = evaluate_logits(logits, targets, fit=(fit_logits, fit_targets), ood={'far': ood_logits},
                             posthoc=['ts', 'hist'], bootstrap=40, seed=3, num_bins=10)
    expected, direction = direct_metrics(logits, targets, 10)
    for key, value in expected.items():
        assert result['raw'][key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert result['raw']['over_ece'] == direction.over and result['raw']['under_ece'] == direction.under
    assert result['raw']['signed_ece'] == direction.signed
    assert result['raw']['bin_count'] == direction.bin_count.tolist()
    assert result['selective'] == {'aurc': aurc(logits, targets), 'eaurc': eaurc(logits, targets)}
    assert result['ood']['far'] == ood_metrics(logits, ood_logits)
    temperature = fit_temperature(fit_logits.double(), fit_targets)
    assert result['posthoc']['ts']['params']['temperature'] == pytest.approx(temperature, rel=1e-12)
    after, _ = direct_metrics(logits.double() / temperature, targets, 10)
    for key, value in after.items():
        assert result['posthoc']['ts']['metrics'][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    hist_probs = fit_posthoc('hist', fit_logits, fit_targets).predict_proba(logits)
    after_hist, _ = direct_metrics(posthoc_logits(hist_probs), targets, 10)
    assert result['posthoc']['hist']['metrics']['top1'] == after_hist['top1']
    assert result['posthoc']['hist']['metrics']['ece'] == pytest.approx(after_hist['ece'], rel=1e-12)
    intervals = bootstrap_intervals(logits, targets, 40, 3, 10)
    assert result['bootstrap'] == {
        **{key: [low, high] for key, (_, low, high) in intervals.items()},
        'ood': {'far': {'msp_auroc': list(bootstrap_auroc(msp(logits), msp(ood_logits), 40, 3)[1:])}}}


def test_posthoc_refused_without_fit(files, capsys):
    logits, targets = tensors(files['test'])
    with pytest.raises(ValueError, match='--fit'):
        evaluate_logits(logits, targets, posthoc=['ts'])
    with pytest.raises(SystemExit) as exit_info:
        cli(['--logits', files['test'], '--posthoc', 'ts'])
    assert exit_info.value.code == 2
    assert '--fit' in capsys.readouterr().err.strip().splitlines()[-1]


def test_posthoc_refused_when_fit_is_the_evaluated_split(files, tmp_path, capsys):
    copy = tmp_path / 'same_split.npz'
    shutil.copyfile(files['test'], copy)
    logits, targets = tensors(files['test'])
    with pytest.raises(ValueError, match='--fit'):
        evaluate_logits(logits, targets, fit=(logits.clone(), targets.clone()), posthoc=['ts'])
    out = tmp_path / 'result.json'
    with pytest.raises(SystemExit) as exit_info:
        cli(['--logits', files['test'], '--fit', str(copy), '--posthoc', 'ts', '--output-json', str(out)])
    assert exit_info.value.code == 2
    assert '--fit' in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def _bad_inputs(tmp_path, files):
    logits, targets = synthetic(50, 5)
    nan_logits = logits.copy()
    nan_logits[3, 2] = np.nan
    (tmp_path / 'not_npz.npz').write_text('plain text')
    return {
        'missing file': (['--logits', str(tmp_path / 'absent.npz')], 'absent.npz'),
        'not an npz': (['--logits', str(tmp_path / 'not_npz.npz')], 'not_npz.npz'),
        'no targets': (['--logits', write(tmp_path / 'no_targets.npz', logits)], 'targets'),
        'no logits': (['--logits', write(tmp_path / 'no_logits.npz', logits, targets, drop=('logits',))], 'logits'),
        'shape mismatch': (['--logits', write(tmp_path / 'short.npz', logits, targets[:-1])], 'short.npz'),
        'NaN logits': (['--logits', write(tmp_path / 'nan.npz', nan_logits, targets)], 'NaN'),
        'target out of range': (['--logits', write(tmp_path / 'range.npz', logits, targets + NUM_CLASSES)],
                                'range.npz'),
        'float targets': (['--logits', write(tmp_path / 'float.npz', logits, targets.astype(float))], 'float.npz'),
        'ood name taken': (['--logits', files['test'], '--ood', f'saved={files["ood"]}'], 'saved'),
        'ood K differs': (['--logits', files['test'], '--ood',
                           f'k7={write(tmp_path / "k7.npz", *synthetic(50, 6, num_classes=7))}'], 'k7'),
        'fit K differs': (['--logits', files['test'], '--posthoc', 'ts', '--fit',
                           write(tmp_path / 'k5.npz', *synthetic(50, 7, num_classes=5))], '--fit'),
        'ood not NAME=FILE': (['--logits', files['test'], '--ood', files['ood']], '--ood'),
        'unknown posthoc': (['--logits', files['test'], '--fit', files['fit'], '--posthoc', 'ts,platt'],
                            'dirichlet'),
        'negative bootstrap': (['--logits', files['test'], '--bootstrap', '-3'], '--bootstrap'),
        'zero bins': (['--logits', files['test'], '--num-bins', '0'], '--num-bins'),
    }


BAD_CASES = ('missing file', 'not an npz', 'no targets', 'no logits', 'shape mismatch', 'NaN logits',
             'target out of range', 'float targets', 'ood K differs', 'fit K differs', 'ood not NAME=FILE',
             'ood name taken', 'unknown posthoc', 'negative bootstrap', 'zero bins')


@pytest.mark.parametrize('case', BAD_CASES)
def test_bad_input_is_a_one_line_usage_error(case, files, tmp_path, capsys):
    argv, named = _bad_inputs(tmp_path, files)[case]
    out = tmp_path / 'result.json'
    with pytest.raises(SystemExit) as exit_info:
        cli([*argv, '--output-json', str(out)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    error_lines = [line for line in captured.err.splitlines() if 'error:' in line]
    assert len(error_lines) == 1 and captured.err.strip().splitlines()[-1] == error_lines[0]
    assert named in error_lines[0]
    assert 'Traceback' not in captured.err and captured.out == ''
    assert not out.exists()


def test_bootstrap_is_deterministic_by_seed(files):
    logits, targets = tensors(files['test'])
    ood = {'far': tensors(files['ood'])[0]}
    first = evaluate_logits(logits, targets, ood=ood, bootstrap=30, seed=7)['bootstrap']
    again = evaluate_logits(logits, targets, ood=ood, bootstrap=30, seed=7)['bootstrap']
    other = evaluate_logits(logits, targets, ood=ood, bootstrap=30, seed=8)['bootstrap']
    assert first == again
    assert first != other
    for key in ('top1', 'nll', 'brier', 'ece'):
        low, high = first[key]
        assert low <= high


def test_without_options_sections_are_empty_and_printed(files, capsys):
    result = cli(['--logits', files['test']])
    assert result['posthoc'] == {} and result['ood'] == {} and result['bootstrap'] == {}
    assert json.loads(capsys.readouterr().out) == result


def test_saved_ood_logits_are_the_set_saved(files, tmp_path):
    logits, targets = synthetic(200, 9)
    ood_logits, _ = synthetic(100, 10, scale=0.3)
    path = tmp_path / 'with_ood.npz'
    path.write_bytes(save_logits_npz(torch.from_numpy(logits), torch.from_numpy(targets),
                                     [str(k) for k in range(NUM_CLASSES)], split='test',
                                     ood_logits=torch.from_numpy(ood_logits)))
    result = cli(['--logits', str(path), '--ood', f'far={files["ood"]}', '--output-json', str(tmp_path / 'r.json')])
    assert set(result['ood']) == {'far', 'saved'}
    assert result['ood']['saved'] == ood_metrics(torch.from_numpy(logits), torch.from_numpy(ood_logits))
