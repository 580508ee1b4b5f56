"""validate.py on real images a dependency ships (scikit-learn's digits): exact 1- vs 2-process evaluation under
torchrun, test-time augmentation, timm's interface (results file, flag list), bad inputs, and the pictures."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import validate_usage_error as _usage_error
from PIL import Image
from timm.data import resolve_data_config
from timm.models import create_model

import validate
from cfl_timm.data import DigitsDataset, TTAView, average_softmax, tta_views
from cfl_timm.metrics import METRIC_KEYS
from cfl_timm.training import create_eval_loader, metrics_of_logits, predict

REPO_ROOT = Path(__file__).resolve().parents[1]
FLAGS_FILE = REPO_ROOT / 'tests' / 'fixtures' / 'timm_validate_flags_v1.0.28.txt'
pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread per test, as before the move


@pytest.fixture(scope='module')
def digits_folder(tmp_path_factory):
    """A timm image folder of real digits PNGs: train/<class>/ and val/<class>/, 4 and 3 images per class."""
    root = tmp_path_factory.mktemp('digits_folder')
    for split, per_class in (('train', 4), ('val', 3)):
        dataset = DigitsDataset('train' if split == 'train' else 'val')
        taken: dict[int, int] = {}
        for index, target in enumerate(dataset.targets):
            if taken.get(int(target), 0) < per_class:
                folder = root / split / str(target)
                folder.mkdir(parents=True, exist_ok=True)
                dataset[index][0].save(folder / f'{index:04d}.png')
                taken[int(target)] = taken.get(int(target), 0) + 1
    return root


def _run(*argv):
    return validate.main(validate.get_args_parser().parse_args([*argv, '-j', '0', '-b', '64', '--log-freq', '1000']))


def test_two_processes_count_each_image_once_and_match_one_process(digits_run, tmp_path):
    """torchrun with 2 gloo processes: the 355-image split is counted as 355 (no sampler padding) and every metric,
    plain and TTA, equals the one-process metric on the same weights."""
    checkpoint = digits_run / 'model_best.pth.tar'
    common = ['--dataset', 'sklearn/digits', '--split', 'val', '--checkpoint', str(checkpoint), '--tta', '2',
              '--no-plot', '-j', '0', '-b', '64']
    env = {**os.environ, 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)}
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
               str(REPO_ROOT / 'validate.py'), *common, '--output-json', str(tmp_path / 'two.json'),
               '--results-file', str(tmp_path / 'two.csv')]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    two = json.loads((tmp_path / 'two.json').read_text())
    one = _run(*common[:-4], '--no-plot', '--output-json', str(tmp_path / 'one.json'))
    assert two['num_samples'] == one['num_samples'] == len(DigitsDataset('val')) == 355
    assert sum(two['reliability']['count']) == 355
    for key in METRIC_KEYS:
        assert two[key] == one[key], key
        assert two['tta'][key] == one['tta'][key], key
    assert two['reliability'] == validate.json_safe(one['reliability'])  # empty bins: NaN in memory, null in JSON
    # timm's stdout protocol, from the primary process only: '--result' then the results row as JSON.
    assert result.stdout.count('--result\n') == 1
    printed = json.loads(result.stdout.split('--result\n', 1)[1])
    assert printed['num_samples'] == 355 and printed['top1'] == round(one['top1'], 4)
    with open(tmp_path / 'two.csv', newline='') as stream:
        row = next(csv.DictReader(stream))
    assert float(row['top1']) == round(one['top1'], 4) and int(row['num_samples']) == 355


class _AsymmetryModel(torch.nn.Module):
    """Logit 0 = mean of the left half minus mean of the right half of channel 0 (a flip negates it); logit 1 = 0.
    Records how many forward passes it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        half = images.shape[-1] // 2
        asymmetry = images[:, 0, :, :half].mean(dim=(1, 2)) - images[:, 0, :, half:].mean(dim=(1, 2))
        return torch.stack([asymmetry * 10, torch.zeros_like(asymmetry)], dim=1)


def _digits_loader(batch_size=64):
    config = resolve_data_config({'img_size': 32}, model=create_model('test_resnet', num_classes=10))
    return create_eval_loader(DigitsDataset('val'), config, batch_size=batch_size, num_workers=0)


def test_tta_one_view_equals_plain_and_views_are_applied(digits_run):
    model = create_model('test_resnet', num_classes=10)
    checkpoint = torch.load(digits_run / 'model_best.pth.tar', map_location='cpu', weights_only=False)
    model.load_state_dict(checkpoint['state_dict'])
    loader = _digits_loader()
    plain_logits, target = predict(model, loader, device=torch.device('cpu'))
    one_view_logits, one_target = predict(model, loader, device=torch.device('cpu'), views=tta_views(1))
    assert one_view_logits.shape == (1, 355, 10) and torch.equal(one_target, target)
    plain = metrics_of_logits(plain_logits, target, 10)
    one_view = metrics_of_logits(average_softmax(one_view_logits), target, 10)
    assert one_view.metrics == plain.metrics
    assert json.dumps(one_view.reliability) == json.dumps(plain.reliability)  # NaN marks empty bins

    # The views reach the model: one forward pass per view and batch, view 1 is the mirror image of view 0.
    probe = _AsymmetryModel()
    views = tta_views(4, shift=2)
    assert [v.describe() for v in views] == ['identity', 'hflip', 'shift (0, 2)', 'shift (0, 2) + hflip']
    view_logits, _ = predict(probe, loader, device=torch.device('cpu'), views=views)
    assert probe.calls == 4 * len(loader)
    assert view_logits[0, :, 0].abs().max() > 0.1
    torch.testing.assert_close(view_logits[1, :, 0], -view_logits[0, :, 0])
    torch.testing.assert_close(view_logits[3, :, 0], -view_logits[2, :, 0])
    # Averaged softmax: the mean of the per-view probabilities, exactly as defined.
    expected = torch.softmax(view_logits.double(), dim=-1).mean(dim=0)
    torch.testing.assert_close(torch.softmax(average_softmax(view_logits), dim=-1), expected, rtol=0, atol=1e-12)


def test_tta_view_pixels():
    images = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4)
    assert torch.equal(TTAView()(images), images)
    assert torch.equal(TTAView(flip=True)(images), images.flip(-1))
    shifted = TTAView(shift=(1, -2))(images)  # content moves one row down and two columns left
    assert torch.equal(shifted[..., 1:, :2], images[..., :2, 2:])
    assert shifted[..., 0, :].abs().sum() == 0 and shifted[..., :, 2:].abs().sum() == 0
    assert len(tta_views(18)) == 18 and len(set(tta_views(18))) == 18
    for bad in (0, 19):
        with pytest.raises(ValueError, match=r'\[1, 18\]'):
            tta_views(bad)


def test_cli_reports_tta_next_to_plain_and_timm_results_file(digits_run, tmp_path):
    result = _run('--dataset', 'sklearn/digits', '--split', 'val', '--checkpoint',
                  str(digits_run / 'model_best.pth.tar'), '--tta', '3', '--num-samples', '100', '--no-plot',
                  '--output-json', str(tmp_path / 'm.json'), '--results-file', str(tmp_path / 'r.json'),
                  '--results-format', 'json', '--metrics-avg', 'macro')
    def strict(constant):
        raise AssertionError(f'{constant} in a JSON output (not valid JSON)')
    written = json.loads((tmp_path / 'm.json').read_text(), parse_constant=strict)
    json.loads((tmp_path / 'r.json').read_text(), parse_constant=strict)
    assert written['tta']['num_views'] == 3 and written['tta']['views'][1] == 'hflip'
    assert set(METRIC_KEYS) <= set(written['tta']) and sum(written['tta']['reliability']['count']) == 100
    assert written['tta']['nll'] != written['nll']  # the flipped and shifted views change the probabilities
    row = json.loads((tmp_path / 'r.json').read_text())
    assert row['model'] == 'test_resnet' and row['top1_err'] == pytest.approx(100 - row['top1'])
    assert row['tta_views'] == 3 and row['tta_ece'] == written['tta']['ece'] and row['img_size'] == 32
    assert 0 <= row['macro_f1_score'] <= 100 and result['files']['results'] == str(tmp_path / 'r.json')


def test_every_upstream_validate_flag_is_accepted(tmp_path):
    parser = validate.get_args_parser()
    known = set(parser._option_string_actions)
    flags = [line.strip() for line in FLAGS_FILE.read_text().splitlines() if line.startswith('-')]
    assert len(flags) >= 55
    assert [flag for flag in flags if flag not in known] == []
    (tmp_path / 'c.pth').write_bytes(b'')  # --checkpoint is declared as an existing file
    args = parser.parse_args(['DIR', '--results-file', 'x.csv', '--checkpoint', str(tmp_path / 'c.pth'), '--use-ema'])
    assert args.data == 'DIR' and args.results_format == 'csv' and args.use_ema


def test_bad_inputs_stop_before_work(digits_run, digits_folder, tmp_path, capsys):
    checkpoint = str(digits_run / 'model_best.pth.tar')
    out = ['--output-json', str(tmp_path / 'x.json'), '--no-plot']
    folder = ['--data-dir', str(digits_folder), '--checkpoint', checkpoint, *out]
    # A split without a folder: timm would evaluate train + val together and call it 'test'.
    line = _usage_error(capsys, *folder, '--split', 'test')
    assert "--split: no folder for split 'test'" in line and "['train', 'val']" in line
    # An unknown calibration split would fit T on the whole folder, evaluated images included.
    line = _usage_error(capsys, *folder, '--split', 'val', '--calibration-split', 'holdout')
    assert "--calibration-split: no folder for split 'holdout'" in line
    line = _usage_error(capsys, *folder, '--split', 'val', '--calibration-split', 'validation')
    assert 'selects the evaluated images' in line
    line = _usage_error(capsys, '--dataset', 'sklearn/digits', '--split', 'test', '--checkpoint', checkpoint, *out,
                        '--calibration-split', 'val', '--allow-test-calibration')
    assert 'selects the evaluated images' in line
    assert 'must be an integer in [1, 18]' in _usage_error(capsys, *folder, '--tta', '0')
    assert '--aot-autograd is not available' in _usage_error(capsys, *folder, '--aot-autograd')
    assert 'torchrun --nproc-per-node 2' in _usage_error(capsys, *folder, '--num-gpu', '2')
    assert 'bulk validation' in _usage_error(capsys, '--data-dir', str(digits_folder), '--checkpoint',
                                             str(digits_run), *out)
    assert 'mutually exclusive' in _usage_error(capsys, *folder, '--torchscript', '--torchcompile')
    line = _usage_error(capsys, '--dataset', 'sklearn/digits', '--checkpoint', checkpoint, *out, '--num-classes', '5')
    assert 'has class index 9, but the model has 5 classes' in line
    (tmp_path / 'empty_ood').mkdir()
    line = _usage_error(capsys, '--dataset', 'sklearn/digits', '--checkpoint', checkpoint, *out, '--ood-data-dir',
                        str(tmp_path / 'empty_ood'))
    assert '--ood-data-dir' in line and 'Found 0 images' in line
    (tmp_path / 'foreign.pth').write_bytes(b'not a checkpoint')
    assert 'is not a readable checkpoint' in _usage_error(capsys, '--data-dir', str(digits_folder), '--checkpoint',
                                                          str(tmp_path / 'foreign.pth'), *out)
    assert not (tmp_path / 'x.json').exists()


@pytest.mark.parametrize('kind', ['garbage', 'truncated'])
def test_corrupt_images_are_named_not_replaced(digits_run, digits_folder, tmp_path, capsys, kind):
    root = tmp_path / 'data'
    for path in digits_folder.rglob('*.png'):
        target = root / path.relative_to(digits_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    bad = root / 'val' / '3' / 'bad.jpg'
    if kind == 'garbage':
        bad.write_bytes(b'this is not an image' * 10)
    else:  # a valid JPEG header whose pixel data is cut off: only decoding finds it
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:300])
    line = _usage_error(capsys, '--data-dir', str(root), '--split', 'val', '--checkpoint',
                        str(digits_run / 'model_best.pth.tar'), '--output-json', str(tmp_path / 'x.json'),
                        '--no-plot')
    assert f"1 corrupt image(s) in split 'val': {bad}: " in line
    assert not (tmp_path / 'x.json').exists()


def _check_png(path: Path, size: tuple[int, int]) -> None:
    """A PNG of the expected pixel size that is not blank (many colours, real contrast)."""
    with Image.open(path) as image:
        assert image.format == 'PNG' and image.size == size
        pixels = np.asarray(image.convert('RGB'))
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


def test_reliability_jsonl_each_epoch_and_its_evolution(digits_run, tmp_path):
    from cfl_timm.files import read_reliability_log, read_summary
    from cfl_timm.plotting import main as plotting_main
    records = read_reliability_log(digits_run / 'reliability.jsonl')
    summary = read_summary(digits_run / 'summary.csv')
    assert [r['epoch'] for r in records] == [0, 1] == [int(row['epoch']) for row in summary]
    for record, row in zip(records, summary):
        assert sum(record['count']) == 355 and len(record['edges']) == 16
        assert record['ece'] == pytest.approx(float(row['eval_ece']), rel=1e-12)
        assert record['top1'] == pytest.approx(float(row['eval_top1']), rel=1e-12)
    # Two runs side by side (rows), two epochs (columns), through the documented command.
    out = tmp_path / 'evolution.png'
    plotting_main(['reliability', str(digits_run), str(digits_run / 'reliability.jsonl'), '--epochs', '0', '1',
                   '--labels', 'run A', 'run B', '--out', str(out)])
    _check_png(out, (638, 594))
    with pytest.raises(SystemExit):
        plotting_main(['reliability', str(digits_run), '--epochs', '7', '--out', str(tmp_path / 'no.png')])
    assert not (tmp_path / 'no.png').exists()


def test_reliability_log_resume_drops_repeated_and_torn_lines(tmp_path):
    from cfl_timm.files import ReliabilityLog, read_reliability_log
    bins = {'edges': [0.0, 0.5, 1.0], 'count': [0.0, 4.0], 'confidence': [float('nan'), 0.8],
            'accuracy': [float('nan'), 0.75]}
    log = ReliabilityLog(tmp_path / 'reliability.jsonl')
    for epoch in range(3):
        log.append(epoch, bins, {'ece': 0.05, 'top1': 75.0})
    with open(tmp_path / 'reliability.jsonl', 'a') as stream:
        stream.write('{"epoch": 3, "count"')  # torn by a kill
    ReliabilityLog(tmp_path / 'reliability.jsonl', start_epoch=2)
    records = read_reliability_log(tmp_path / 'reliability.jsonl')
    assert [r['epoch'] for r in records] == [0, 1]
    assert np.isnan(records[0]['confidence'][0]) and records[0]['accuracy'][1] == 0.75


def test_training_curves_from_summaries(digits_run, tmp_path):
    from cfl_timm.plotting import main as plotting_main
    out = tmp_path / 'curves.png'
    plotting_main(['curves', str(digits_run), str(digits_run / 'summary.csv'), '--labels', 'a', 'b',
                   '--out', str(out)])
    _check_png(out, (1936, 418))


def test_prediction_grid_and_missing_matplotlib(digits_run, tmp_path, capsys, monkeypatch):
    checkpoint = str(digits_run / 'model_best.pth.tar')
    grid = tmp_path / 'grid.png'
    result = _run('--dataset', 'sklearn/digits', '--split', 'val', '--checkpoint', checkpoint, '--no-plot',
                  '--output-json', str(tmp_path / 'm.json'), '--prediction-grid', str(grid),
                  '--prediction-grid-size', '16')
    assert result['files']['prediction_grid'] == str(grid)
    _check_png(grid, (1364, 451))
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # matplotlib not installed
    line = _usage_error(capsys, '--dataset', 'sklearn/digits', '--checkpoint', checkpoint, '--no-plot',
                        '--output-json', str(tmp_path / 'x.json'), '--prediction-grid', str(tmp_path / 'g.png'))
    assert 'pip install matplotlib' in line and not (tmp_path / 'x.json').exists()
    from cfl_timm.plotting import main as plotting_main
    with pytest.raises(SystemExit):
        plotting_main(['curves', str(digits_run), '--out', str(tmp_path / 'c.png')])
    assert 'pip install matplotlib' in capsys.readouterr().err


def test_summary_log_explains_coinciding_ece_metrics(caplog):
    import argparse
    caplog.set_level('INFO', logger=validate._logger.name)
    keys = ['top1', 'ece', 'adaptive_ece', 'smooth_ece']
    same = {'top1': 90.0, 'ece': 0.0421, 'adaptive_ece': 0.0421 + 1e-17, 'smooth_ece': 0.0421}
    apart = {'top1': 91.0, 'ece': 0.031, 'adaptive_ece': 0.029, 'smooth_ece': 0.027}
    validate.log_summary(argparse.Namespace(split='val'),
                         {'num_samples': 360, **same, 'temperature': 0.8, 'after_temperature_scaling': apart}, keys)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith('val (360 images): top1 90.0000 ece 0.0421')
    assert 'coincide (0.042100)' in messages[1] and messages[2].startswith('T = 0.8000: top1 91.0000')
    assert len(messages) == 3  # no note after temperature scaling, where the three differ
