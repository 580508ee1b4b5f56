"""validate.py reads back the --holdout split of a train.py run (scikit-learn's digits, a real one-epoch run) and
evaluates through the model-free evaluator: the fit uses exactly the recorded images, the JSON equals
``python -m cfl_timm.evaluate`` on the saved logits, --plot-dir draws its pictures, bad input is one line."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_digits, validate_usage_error, write_digits_folder
from timm.data import ImageDataset, resolve_data_config
from timm.models import create_model, load_checkpoint

import validate
from cfl_timm import evaluate
from cfl_timm.data import DigitsDataset, SubsetDataset
from cfl_timm.data.holdout import (
    HOLDOUT_FILE,
    dataset_fingerprint,
    holdout_split,
    holdout_subset,
    read_holdout_record,
)
from cfl_timm.metrics import load_logits_npz
from cfl_timm.training import create_eval_loader, predict

HOLDOUT = 120
SECTIONS = ('num_samples', 'num_classes', 'num_bins', 'raw', 'selective', 'posthoc', 'ood', 'bootstrap')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def holdout_run(tmp_path_factory) -> Path:
    """One epoch of test_resnet on digits with --holdout 120 through train.py (one thread)."""
    return train_digits(tmp_path_factory.mktemp('holdout_train'), '--epochs', '1', '--holdout', str(HOLDOUT),
                        '--seed', '7')


@pytest.fixture(scope='module')
def ood_folder(tmp_path_factory) -> Path:
    """Digits images with a flipped colour map, as a stand-in out-of-distribution folder (2 per class)."""
    root = write_digits_folder(tmp_path_factory.mktemp('ood'), per_class=2) / 'val'
    for path in root.rglob('*.png'):
        from PIL import Image, ImageOps
        ImageOps.invert(Image.open(path).convert('RGB')).save(path)
    return root


@pytest.fixture(scope='module')
def validated(holdout_run, ood_folder, tmp_path_factory):
    """validate.py with the run's held-out split, post-hoc methods, bootstrap, an OOD folder and every output."""
    out = tmp_path_factory.mktemp('validated')
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = validate.main(validate.get_args_parser().parse_args([
            '--dataset', 'sklearn/digits', '--split', 'val', '--checkpoint', str(holdout_run / 'model_best.pth.tar'),
            '--calibration-split', 'holdout', '--posthoc', 'ts,vs,iso', '--bootstrap', '20', '--seed', '3',
            '--ood-data-dir', str(ood_folder), '--save-logits', str(out / 'test.npz'),
            '--save-fit-logits', str(out / 'fit.npz'), '--plot-dir', str(out / 'plots'), '--no-plot',
            '--output-json', str(out / 'validate.json'), '-j', '0', '-b', '64', '--log-freq', '1000']))
    finally:
        torch.set_num_threads(previous)
    return out, result


def test_train_records_its_holdout_split(holdout_run):
    record = read_holdout_record(holdout_run)
    train = DigitsDataset('train')
    assert record.split == 'train' and record.seed == 7 and len(record.indices) == HOLDOUT
    np.testing.assert_array_equal(record.indices, holdout_split(train.targets, HOLDOUT, 7)[1])
    assert record.fingerprint == dataset_fingerprint(train)
    assert record.fingerprint['kind'] == 'arrays' and record.fingerprint['num_images'] == len(train)


def test_validate_fits_on_exactly_the_recorded_images(holdout_run, validated, one_thread):
    out, result = validated
    record = read_holdout_record(holdout_run)
    fit = load_logits_npz(out / 'fit.npz')
    train = DigitsDataset('train')
    np.testing.assert_array_equal(fit.targets.numpy(), train.targets[record.indices])
    # The same logits as the model gives those training images, predicted here independently of validate.py.
    model = create_model('test_resnet', num_classes=10)
    load_checkpoint(model, str(holdout_run / 'model_best.pth.tar'))
    config = resolve_data_config({'img_size': 32}, model=model)
    loader = create_eval_loader(SubsetDataset(train, record.indices), config, batch_size=64, num_workers=0)
    logits, targets = predict(model.eval(), loader, device=torch.device('cpu'))
    torch.testing.assert_close(fit.logits, logits, rtol=0, atol=1e-5)
    assert result['holdout'] == {'split': 'train', 'num_samples': HOLDOUT, 'seed': 7}
    assert result['temperature_split'] == 'holdout'
    assert result['posthoc']['ts']['params']['temperature'] == result['temperature']  # one temperature scaling
    # train.py fitted its epoch temperature on the same held-out images with the same weights.
    with open(holdout_run / 'summary.csv', newline='') as stream:
        last = list(csv.DictReader(stream))[-1]
    assert result['temperature'] == pytest.approx(float(last['holdout_temperature']), rel=1e-4)


def test_validate_json_equals_the_model_free_evaluator_on_the_saved_logits(validated, tmp_path, one_thread):
    out, result = validated
    written = json.loads((out / 'validate.json').read_text())
    evaluate.cli(['--logits', str(out / 'test.npz'), '--fit', str(out / 'fit.npz'), '--posthoc', 'ts,vs,iso',
                  '--bootstrap', '20', '--seed', '3', '--output-json', str(tmp_path / 'evaluate.json'),
                  '--plot-dir', str(tmp_path / 'plots')])
    model_free = json.loads((tmp_path / 'evaluate.json').read_text())
    for key in SECTIONS:
        assert written[key] == model_free[key], key
    assert set(written['ood']) == {'val'}  # the OOD folder's name travels with the saved logits
    assert set(written['ood']['val']) == {'msp', 'max_logit', 'energy', 'neg_entropy'}
    assert written['ood_auroc'] == written['ood']['val']['msp']['auroc']
    assert set(written['posthoc']) == {'ts', 'vs', 'iso'} and 'aurc' in written['selective']
    for folder in (out / 'plots', tmp_path / 'plots'):
        for name in evaluate.PLOT_FILES.values():
            assert (folder / name).read_bytes()[:8] == PNG_MAGIC, folder / name
    assert result['files']['plot_dir'] == {k: str(out / 'plots' / v) for k, v in evaluate.PLOT_FILES.items()}


def test_folder_fingerprint_changes_with_the_files(tmp_path):
    root = write_digits_folder(tmp_path / 'digits', per_class=2) / 'train'
    first = dataset_fingerprint(ImageDataset(str(root)))
    assert first == dataset_fingerprint(ImageDataset(str(root))) and first['kind'] == 'files'
    victim = next(root.rglob('*.png'))
    victim.rename(victim.with_name('renamed.png'))
    assert dataset_fingerprint(ImageDataset(str(root)))['sha256'] != first['sha256']


def _common(run: Path, split: str = 'val') -> list[str]:
    return ['--dataset', 'sklearn/digits', '--split', split, '--checkpoint', str(run / 'model_best.pth.tar'),
            '--no-plot']


def test_a_run_without_a_recorded_holdout_is_refused(digits_run, capsys):
    line = validate_usage_error(capsys, *_common(digits_run), '--calibration-split', 'holdout')
    assert 'records no held-out split' in line and 'train.py --holdout N' in line, line
    line = validate_usage_error(capsys, *_common(digits_run), '--calibration-split', 'holdout',
                                '--run-dir', str(digits_run))
    assert f'no {HOLDOUT_FILE}' in line, line


def test_other_data_than_the_run_recorded_is_refused(holdout_run, tmp_path, capsys):
    record = json.loads((holdout_run / HOLDOUT_FILE).read_text())
    record['fingerprint']['sha256'] = '0' * 64  # as if the training images had changed since
    (tmp_path / HOLDOUT_FILE).write_text(json.dumps(record))
    line = validate_usage_error(capsys, *_common(holdout_run), '--calibration-split', 'holdout',
                                '--run-dir', str(tmp_path), '--output-json', str(tmp_path / 'out.json'))
    assert 'differs from the one the run recorded' in line, line
    assert not (tmp_path / 'out.json').exists()
    with pytest.raises(ValueError, match='differs'):
        holdout_subset(read_holdout_record(tmp_path), DigitsDataset('train'))


@pytest.mark.parametrize('extra, message', [
    (['--save-fit-logits', 'fit.npz'], '--save-fit-logits needs a held-out split'),
    (['--calibration-split', 'holdout'], 'selects the training split'),
    (['--bootstrap', '1'], 'argument --bootstrap: expected 0 (no intervals) or an integer in [2, 100000]'),
])
def test_bad_holdout_flags_are_one_line_errors(holdout_run, extra, message, capsys):  # more: test_bad_inputs.py
    split = 'train' if message == 'selects the training split' else 'val'
    line = validate_usage_error(capsys, *_common(holdout_run, split), *extra)
    assert message in line, line


def test_evaluate_refuses_a_plot_dir_that_is_a_file(tmp_path, capsys):  # validate.py's: test_bad_inputs.py
    (tmp_path / 'plots').write_text('')
    with pytest.raises(SystemExit):
        evaluate.cli(['--logits', str(tmp_path / 'x.npz'), '--plot-dir', str(tmp_path / 'plots')])
    assert '--plot-dir' in capsys.readouterr().err


def test_image_folder_run_reads_back_and_refuses_changed_files(tmp_path, capsys, one_thread):
    """The same on a timm image folder: the recorded files are read back; one file removed since is refused."""
    data = write_digits_folder(tmp_path / 'data', per_class=6)
    import train
    train.main(train.get_args_parser().parse_args([
        str(data), '--model', 'test_resnet', '--img-size', '32', '--epochs', '1', '--warmup-epochs', '0',
        '-b', '16', '-j', '0', '--output', str(tmp_path / 'out'), '--experiment', 'run', '--log-interval', '1000',
        '--holdout', '20']))
    run = tmp_path / 'out' / 'run'
    common = [str(data), '--split', 'val', '--checkpoint', str(run / 'model_best.pth.tar'), '--no-plot',
              '--calibration-split', 'holdout', '-j', '0', '--log-freq', '1000']
    result = validate.main(validate.get_args_parser().parse_args([
        *common, '--save-fit-logits', str(tmp_path / 'fit.npz'), '--output-json', str(tmp_path / 'ok.json')]))
    record = read_holdout_record(run)
    assert record.fingerprint['kind'] == 'files' and result['holdout']['num_samples'] == 20
    train_files = ImageDataset(str(data / 'train'))
    fit = load_logits_npz(tmp_path / 'fit.npz')
    np.testing.assert_array_equal(fit.targets.numpy(), [train_files.reader.samples[i][1] for i in record.indices])
    next((data / 'train').rglob('*.png')).unlink()
    line = validate_usage_error(capsys, *common, '--output-json', str(tmp_path / 'refused.json'))
    assert "the training split 'train' differs" in line and '60 images' in line, line
    assert not (tmp_path / 'refused.json').exists()
