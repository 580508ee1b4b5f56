"""validate.py end to end on a checkpoint trained here by train.py over real images (scikit-learn's digits PNGs
and CIFAR-10 JPEGs), and its errors."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

import train
import validate
from cfl_timm.metrics import METRIC_KEYS


@pytest.fixture(scope='module', params=['digits', 'cifar10'])
def data_dir(request):
    """A real-image folder dataset: the digits PNGs, then the CIFAR-10 JPEGs (skipped without CFL_TIMM_DATA)."""
    return request.getfixturevalue(f'{request.param}_dir')


def _num_val_images(data_dir):
    return sum(1 for p in (data_dir / 'val').rglob('*') if p.is_file())


@pytest.fixture(scope='module')
def checkpoint(data_dir, tmp_path_factory):
    """One epoch of test_resnet with the cyclical focal loss, written by train.py's CheckpointSaver."""
    output = tmp_path_factory.mktemp('train')
    args = train.get_args_parser().parse_args([
        '--data-dir', str(data_dir), '--model', 'test_resnet', '--img-size', '32', '--epochs', '1',
        '--warmup-epochs', '0', '--lr', '0.05', '-b', '64', '-j', '0', '--focal_loss', 'asym-cyclical',
        '--gamma_hc', '3', '--gamma_pos', '2', '--output', str(output), '--experiment', 'run',
        '--log-interval', '1000', '--checkpoint-hist', '1'])
    train.main(args)
    path = output / 'run' / 'model_best.pth.tar'
    assert path.is_file()
    return path


def _validate(*argv):
    return validate.main(validate.get_args_parser().parse_args([*argv, '-j', '0', '-b', '100']))


def test_end_to_end_with_temperature_and_ood(data_dir, checkpoint, tmp_path):
    ood_dir = tmp_path / 'noise'
    generator = np.random.default_rng(0)
    for i in range(40):  # uniform-noise images: the classic far-OOD baseline
        (ood_dir / 'noise').mkdir(parents=True, exist_ok=True)
        Image.fromarray(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(ood_dir / 'noise' / f'{i}.png')
    json_path, plot_path = tmp_path / 'out' / 'val.json', tmp_path / 'out' / 'val.png'
    result = _validate('--data-dir', str(data_dir), '--split', 'val', '--checkpoint', str(checkpoint),
                       '--calibration-split', 'train', '--num-samples', '600', '--ood-data-dir', str(ood_dir),
                       '--output-json', str(json_path), '--plot', str(plot_path), '--tta', '2')
    written = json.loads(json_path.read_text())
    assert set(METRIC_KEYS) | {'temperature', 'after_temperature_scaling'} <= set(written)
    assert set(METRIC_KEYS) <= set(written['after_temperature_scaling'])
    assert written['num_samples'] == min(600, _num_val_images(data_dir))
    assert written['model'] == 'test_resnet'  # model from the checkpoint
    assert written['temperature'] > 0 and written['temperature'] != 1.0
    for metrics in (written, written['after_temperature_scaling']):
        assert 0 <= metrics['top1'] <= 100 and metrics['top1'] <= metrics['top5']
        assert all(0 <= metrics[key] <= 1 for key in ('ece', 'adaptive_ece', 'classwise_ece', 'mce', 'smooth_ece'))
        assert metrics['nll'] > 0 and 0 <= metrics['brier'] <= 2
    # Temperature scaling leaves the argmax, hence the accuracy, unchanged.
    assert written['after_temperature_scaling']['top1'] == written['top1']
    assert sum(written['reliability']['count']) == written['num_samples']
    # TTA (identity + horizontal flip) reported next to the plain metrics, every key.
    assert written['tta']['views'] == ['identity', 'hflip'] and set(METRIC_KEYS) <= set(written['tta'])
    assert sum(written['tta']['reliability']['count']) == written['num_samples']
    assert written['tta']['nll'] != written['nll']
    assert 0 <= written['ood_auroc'] <= 1 and written['ood_num_samples'] == 40
    assert plot_path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and plot_path.stat().st_size > 10_000
    assert result['files'] == {'json': str(json_path), 'plot': str(plot_path)}


def test_default_outputs_beside_checkpoint_without_temperature(data_dir, checkpoint, tmp_path):
    local = tmp_path / 'ckpt.pth.tar'
    local.write_bytes(checkpoint.read_bytes())
    result = _validate('--data-dir', str(data_dir), '--split', 'val', '--checkpoint', str(local),
                       '--model', 'test_resnet', '--num-bins', '10', '--temperature-method', 'grid-ece')
    written = json.loads((tmp_path / 'calibration-val.json').read_text())
    assert 'temperature' not in written and 'after_temperature_scaling' not in written
    assert written['num_bins'] == 10 and len(written['reliability']['count']) == 10
    assert (tmp_path / 'calibration-val.png').stat().st_size > 0
    assert written['top1'] == pytest.approx(result['top1'])


def test_errors_before_any_work(data_dir, checkpoint, tmp_path, monkeypatch):
    base = ['--data-dir', str(data_dir), '--checkpoint', str(checkpoint), '--output-json', str(tmp_path / 'x.json')]
    with pytest.raises(ValueError, match="Refusing to fit the temperature on the 'test' split"):
        _validate(*base, '--calibration-split', 'test')
    with pytest.raises(SystemExit):  # refused by the flag's declaration (argparse names it)
        _validate('--data-dir', str(data_dir), '--checkpoint', str(tmp_path / 'missing.pth.tar'))
    with pytest.raises(ValueError, match="unknown timm model 'no_such_model'"):
        _validate(*base, '--model', 'no_such_model')
    with pytest.raises(ValueError, match='dataset folder not found'):
        _validate('--data-dir', str(tmp_path / 'nothing'), '--checkpoint', str(checkpoint))
    with pytest.raises(SystemExit):  # argparse names the valid methods
        validate.get_args_parser().parse_args(['--temperature-method', 'ece'])
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # matplotlib not installed
    with pytest.raises(ImportError, match='pip install matplotlib'):
        _validate(*base)
    assert not (tmp_path / 'x.json').exists()
    _validate(*base, '--no-plot', '--num-samples', '50')  # still evaluates without the optional extra
    assert json.loads((tmp_path / 'x.json').read_text())['num_samples'] == 50
