"""Distribution shift: the 15 CIFAR-10-C corruptions (on real digits images), the CIFAR-10-C layout (published and
generated, cached), the shift report and plot, and ``python -m cfl_timm.shift`` end to end."""
import json
import math

import numpy as np
import pytest
import torch

from cfl_timm import shift as shift_cli
from cfl_timm.data import (
    CIFAR10C_PARAMS,
    CORRUPTIONS,
    GENERATED_SET_NAME,
    PUBLISHED_SET_NAME,
    SEVERITIES,
    DigitsDataset,
    available_corruptions,
    corrupt,
    corruption_rng,
    generate_corrupted_set,
    load_corrupted,
    read_image_folder,
    shift_set_name,
)
from cfl_timm.data import cifar10c as cifar10c_module
from cfl_timm.data.cifar10c import CIFAR10_CLASSES, check_cifar10_classes, check_set_classes
from cfl_timm.metrics import CalibrationMeter, load_logits_npz, msp_auroc, shift_report

# Deterministic corruptions (no random draw): the same output whatever the seed.
SEED_FREE = {'defocus_blur', 'zoom_blur', 'brightness', 'contrast', 'pixelate', 'jpeg_compression'}
# Corruptions whose mean squared distortion is not monotone in severity on these images, a property of the published
# parameters (docs/shift.md), with the reason.
NOT_MONOTONE = {
    'glass_blur': 'more blur before the shuffle at severities 2-3 leaves less to shuffle; 4-5 repeat it twice',
    'elastic_transform': 'the affine jitter shrinks (2.56 -> 0.96 px) as the elastic displacement grows',
    'pixelate': "28 and 27 px boxes resample 32 px differently, not more coarsely",
    'frost': 'the image weight falls as the frost weight rises: on bright pixels they partly cancel',
    'motion_blur': 'severities 3 and 4 (radius 6, 8 at sigma 2) differ in taps below exp(-18): the angle decides',
}


@pytest.fixture(scope='module')
def images() -> np.ndarray:
    """Ten real digits at 32 px, coloured (a different gain and offset per channel) so colour operations act."""
    dataset = DigitsDataset('val')
    grey = np.stack([np.asarray(dataset[i][0]) for i in range(0, 100, 10)]).astype(np.float64)
    return np.clip(grey * np.array([1.0, 0.7, 0.4]) + np.array([20, 40, 60]), 0, 255).astype(np.uint8)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.parametrize('name', CORRUPTIONS)
def test_corruption_changes_image_keeps_shape_and_is_deterministic_per_seed(images, name):
    image = images[3]
    for severity in SEVERITIES:
        out = corrupt(image, name, severity, corruption_rng(0, name, severity, 3))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert not np.array_equal(out, image), (name, severity)
        again = corrupt(image, name, severity, corruption_rng(0, name, severity, 3))
        np.testing.assert_array_equal(out, again)
        other_seed = corrupt(image, name, severity, corruption_rng(1, name, severity, 3))
        assert np.array_equal(out, other_seed) == (name in SEED_FREE), (name, severity)
    wide = np.ascontiguousarray(np.concatenate([images[0], images[1][:, :8]], axis=1)[:24])  # 24 x 40
    assert corrupt(wide, name, 3, corruption_rng(0, name, 3, 0)).shape == wide.shape


def test_severity_increases_distortion_on_average(images):
    """Mean squared distortion over ten images rises strictly with severity, except for the corruptions NOT_MONOTONE
    lists (and those do fall somewhere, so the list is not stale); severity 5 distorts more than severity 1 for all
    but elastic_transform."""
    for name in CORRUPTIONS:
        distortion = [np.mean([_mse(corrupt(im, name, s, corruption_rng(0, name, s, i)), im)
                               for i, im in enumerate(images)]) for s in SEVERITIES]
        monotone = all(later > earlier for earlier, later in zip(distortion, distortion[1:]))
        assert monotone == (name not in NOT_MONOTONE), (name, [round(d, 1) for d in distortion])
        if name != 'elastic_transform':
            assert distortion[-1] > distortion[0], name


def test_published_parameters_and_bad_inputs(images):
    assert len(CORRUPTIONS) == 15 and all(len(params) == 5 for params in CIFAR10C_PARAMS.values())
    assert CIFAR10C_PARAMS['gaussian_noise'] == (0.04, 0.06, 0.08, 0.09, 0.10)  # ImageNet-C: 0.08 ... 0.38
    assert CIFAR10C_PARAMS['jpeg_compression'] == (80, 65, 58, 50, 40)  # ImageNet-C: 25 ... 7
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match='unknown corruption .speckle.*gaussian_noise'):
        corrupt(images[0], 'speckle', 1, rng)
    with pytest.raises(ValueError, match='severity must be one of'):
        corrupt(images[0], 'contrast', 0, rng)
    with pytest.raises(ValueError, match=r'\(H, W, 3\) uint8'):
        corrupt(images[0].astype(np.float32), 'contrast', 1, rng)


def test_brightness_equals_hsv_value_shift(images):
    """The closed form (RGB scaled by min(V + c, 1) / V) equals adding c to V in HSV and converting back."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
    image = images[5].copy()
    image[0, 0] = 0  # a black pixel: becomes grey c
    for severity, c in zip(SEVERITIES, CIFAR10C_PARAMS['brightness']):
        hsv = rgb_to_hsv(image / 255.0)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        expected = (np.clip(hsv_to_rgb(hsv), 0, 1) * 255).astype(np.uint8)
        out = corrupt(image, 'brightness', severity, np.random.default_rng(0))
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


# ------------------------------------------------------------------------------------------------ CIFAR-10-C files

def _published_layout(root, per_severity=6, names=('gaussian_noise', 'fog'), labels_per_set=True):
    """A small folder in the published layout: severity s of image i has every pixel equal to 10 s + i."""
    root.mkdir(parents=True, exist_ok=True)
    labels = np.arange(per_severity) % 3
    for name in names:
        stacked = np.zeros((5 * per_severity, 4, 4, 3), dtype=np.uint8)
        for s in SEVERITIES:
            for i in range(per_severity):
                stacked[(s - 1) * per_severity + i] = 10 * s + i
        np.save(root / f'{name}.npy', stacked)
    np.save(root / 'labels.npy', np.tile(labels, 5) if labels_per_set else labels)
    return root, labels


@pytest.mark.parametrize('labels_per_set', [True, False])
def test_reading_the_published_layout(tmp_path, labels_per_set):
    root, labels = _published_layout(tmp_path / 'c10c', labels_per_set=labels_per_set)
    assert available_corruptions(root) == ['gaussian_noise', 'fog']  # the paper's order
    assert shift_set_name(root) == PUBLISHED_SET_NAME
    for severity in SEVERITIES:
        dataset = load_corrupted(root, 'fog', severity)
        assert len(dataset) == 6
        image, target = dataset[4]
        assert image.size == (4, 4) and np.asarray(image).min() == np.asarray(image).max() == 10 * severity + 4
        assert target == labels[4]


def test_reading_bad_layouts_names_the_problem(tmp_path):
    root, _ = _published_layout(tmp_path / 'c10c')
    with pytest.raises(ValueError, match='has no snow.npy; corruptions there: gaussian_noise, fog'):
        load_corrupted(root, 'snow', 1)
    with pytest.raises(ValueError, match='severity must be one of'):
        load_corrupted(root, 'fog', 6)
    np.save(root / 'labels.npy', np.zeros(7, dtype=np.int64))
    with pytest.raises(ValueError, match='expected 30 \\(or 6\\) integer labels'):
        load_corrupted(root, 'fog', 1)
    (root / 'labels.npy').unlink()
    with pytest.raises(ValueError, match='has no labels.npy'):
        load_corrupted(root, 'fog', 1)
    np.save(root / 'labels.npy', np.zeros(30, dtype=np.int64))
    np.save(root / 'fog.npy', np.zeros((29, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r'uint8 \(5 N, H, W, 3\)'):
        load_corrupted(root, 'fog', 1)


def test_generated_set_is_the_same_layout_cached_and_keyed(images, tmp_path, monkeypatch):
    labels = np.arange(len(images)) % 4
    names = ('shot_noise', 'contrast')
    folder = generate_corrupted_set(images, labels, tmp_path, seed=3, corruptions=names)
    meta = json.loads((folder / 'shift_set.json').read_text())
    assert meta['name'] == GENERATED_SET_NAME == shift_set_name(folder) and meta['seed'] == 3
    assert 'frost' in meta['synthetic']
    assert available_corruptions(folder) == list(names)
    for severity in SEVERITIES:
        dataset = load_corrupted(folder, 'shot_noise', severity)
        np.testing.assert_array_equal(dataset.targets, labels)
        expected = corrupt(images[7], 'shot_noise', severity, corruption_rng(3, 'shot_noise', severity, 7))
        np.testing.assert_array_equal(np.asarray(dataset[7][0]), expected)
    # cached: the same inputs reuse every file (nothing is corrupted again) ...
    monkeypatch.setattr(cifar10c_module, 'corrupt', lambda *a: pytest.fail('regenerated a cached corruption'))
    assert generate_corrupted_set(images, labels, tmp_path, seed=3, corruptions=names) == folder
    monkeypatch.undo()
    # ... a missing file is made again, identically; another seed or other pixels are another set
    before = (folder / 'contrast.npy').read_bytes()
    (folder / 'contrast.npy').unlink()
    generate_corrupted_set(images, labels, tmp_path, seed=3, corruptions=names)
    assert (folder / 'contrast.npy').read_bytes() == before
    assert generate_corrupted_set(images, labels, tmp_path, seed=4, corruptions=names[:1]) != folder
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert generate_corrupted_set(changed, labels, tmp_path, seed=3, corruptions=names[:1]) != folder
    assert not [p for p in tmp_path.rglob('*') if p.name.endswith('.tmp')]
    with pytest.raises(ValueError, match='unknown corruption'):
        generate_corrupted_set(images, labels, tmp_path, corruptions=['speckle_noise'])


def test_generating_from_a_real_image_folder(image_folder, tmp_path):
    """The clean images and labels come from timm's folder reader (digits; CIFAR-10 when CFL_TIMM_DATA is set)."""
    from timm.data import ImageDataset
    images, labels, class_names = read_image_folder(image_folder / 'val')
    reader = ImageDataset(str(image_folder / 'val')).reader
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3) and len(images) == len(reader.samples)
    np.testing.assert_array_equal(labels, [target for _, target in reader.samples])
    assert class_names == sorted(reader.class_to_idx, key=reader.class_to_idx.get)
    subset = slice(0, len(images), max(1, len(images) // 20))
    folder = generate_corrupted_set(images[subset], labels[subset], tmp_path, corruptions=['fog'],
                                    class_names=class_names)
    corrupted = load_corrupted(folder, 'fog', 5)
    np.testing.assert_array_equal(corrupted.targets, labels[subset])
    assert not np.array_equal(np.asarray(corrupted[0][0]), images[0])
    resized, _, _ = read_image_folder(image_folder / 'val', image_size=16)
    assert resized.shape[1:] == (16, 16, 3)


# ------------------------------------------------------------------------------------------------- the report

def _logits(generator, n, k=4, scale=2.0):
    return torch.randn(n, k, generator=generator, dtype=torch.float64) * scale


def test_report_means_equal_direct_means():
    generator = torch.Generator().manual_seed(0)
    clean, clean_targets = _logits(generator, 50), torch.randint(0, 4, (50,), generator=generator)
    shifted = {name: {s: (_logits(generator, 40 + s, scale=2.0 / s), torch.randint(0, 4, (40 + s,),
                                                                                  generator=generator))
                      for s in (1, 2, 3)} for name in ('fog', 'snow')}
    del shifted['snow'][3]  # a corruption without every severity: means count what is there
    report = shift_report(clean, clean_targets, shifted, num_bins=10)
    direct = {}
    for name, cells in shifted.items():
        for s, (logits, targets) in cells.items():
            meter = CalibrationMeter(4, 10)
            meter.update(logits, targets)
            metrics = meter.compute()
            cell = report['corruptions'][name][str(s)]
            for key in ('top1', 'ece', 'nll'):
                assert cell[key] == pytest.approx(metrics[key], rel=1e-12)
            assert cell['msp_auroc'] == pytest.approx(msp_auroc(clean, logits), rel=1e-12)
            direct[(name, s)] = cell
    for key in ('top1', 'ece', 'nll', 'msp_auroc'):
        for s in (1, 2, 3):
            values = [cell[key] for (_, severity), cell in direct.items() if severity == s]
            assert report['mean_per_severity'][str(s)][key] == pytest.approx(sum(values) / len(values), rel=1e-12)
            assert report['mean_per_severity'][str(s)]['num_corruptions'] == len(values)
        assert report['mean'][key] == pytest.approx(np.mean([cell[key] for cell in direct.values()]), rel=1e-12)
    assert report['mean']['num_cells'] == 5
    meter = CalibrationMeter(4, 10)
    meter.update(clean, clean_targets)
    assert report['clean']['ece'] == pytest.approx(meter.compute()['ece'], rel=1e-12)
    json.dumps(report, allow_nan=False)
    with pytest.raises(ValueError, match='K = 3 classes'):
        shift_report(clean, clean_targets, {'fog': {1: (torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))}})


def test_plot_shift_writes_a_png(tmp_path):
    pytest.importorskip('matplotlib')
    from cfl_timm.plotting import plot_shift
    generator = torch.Generator().manual_seed(1)
    shifted = {name: {s: (_logits(generator, 30, scale=3.0 / s), torch.randint(0, 4, (30,), generator=generator))
                      for s in SEVERITIES} for name in ('fog', 'snow', 'contrast')}
    report = shift_report(_logits(generator, 30), torch.randint(0, 4, (30,), generator=generator), shifted)
    path = plot_shift(report, tmp_path / 'shift.png', title='test')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------------------------------------------ the command

@pytest.fixture(scope='module')
def clean_folder(tmp_path_factory):
    """Twenty real digits PNGs in class folders (two per class)."""
    root = tmp_path_factory.mktemp('clean')
    dataset = DigitsDataset('val')
    taken: dict[int, int] = {}
    for index, target in enumerate(dataset.targets):
        if taken.get(int(target), 0) < 2:
            (root / str(target)).mkdir(exist_ok=True)
            dataset[index][0].save(root / str(target) / f'{index:04d}.png')
            taken[int(target)] = taken.get(int(target), 0) + 1
    return root


def _cli(*argv):
    return shift_cli.main(shift_cli.get_args_parser().parse_args([*argv, '--workers', '0', '--batch-size', '64']))


def test_command_generates_evaluates_and_reports(digits_run, clean_folder, tmp_path, one_thread):
    checkpoint = str(digits_run / 'model_best.pth.tar')
    common = ['--data-dir', str(clean_folder), '--cache-dir', str(tmp_path / 'cache'),
              '--corruptions', 'gaussian_noise,contrast', '--severities', '1,5']
    described = _cli(*common, '--generate-only')
    assert described['set'] == GENERATED_SET_NAME
    report = _cli(*common, '--checkpoint', checkpoint, '--output-json', str(tmp_path / 'shift.json'),
                  '--plot', str(tmp_path / 'shift.png'))
    assert json.loads((tmp_path / 'shift.json').read_text()) == json.loads(json.dumps(report))
    assert report['set'] == GENERATED_SET_NAME and report['num_samples'] == {'clean': 20, 'per_set': 20}
    assert set(report['corruptions']) == {'gaussian_noise', 'contrast'}
    assert set(report['mean_per_severity']) == {'1', '5'}
    cells = [cell for cells in report['corruptions'].values() for cell in cells.values()]
    assert report['mean']['top1'] == pytest.approx(np.mean([cell['top1'] for cell in cells]))
    assert all(0 <= cell['msp_auroc'] <= 1 and math.isfinite(cell['nll']) for cell in cells)
    assert (tmp_path / 'shift.png').read_bytes()[:4] == b'\x89PNG'
    # the published layout is read by the same command; here, the generated folder copied without its name file
    published = tmp_path / 'published'
    published.mkdir()
    folder = next((tmp_path / 'cache').iterdir())
    for name in ('labels.npy', 'gaussian_noise.npy', 'contrast.npy'):
        (published / name).write_bytes((folder / name).read_bytes())
    (published / 'speckle_noise.npy').write_bytes((folder / 'contrast.npy').read_bytes())  # an extra: not evaluated
    again = _cli('--data-dir', str(clean_folder), '--cifar10c-dir', str(published), '--checkpoint', checkpoint,
                 '--severities', '1,5', '--output-json', str(tmp_path / 'published.json'))
    assert again['set'] == PUBLISHED_SET_NAME and set(again['corruptions']) == {'gaussian_noise', 'contrast'}
    for name in ('gaussian_noise', 'contrast'):
        for s in ('1', '5'):
            assert again['corruptions'][name][s]['top1'] == pytest.approx(report['corruptions'][name][s]['top1'])


def test_command_bad_inputs_stop_before_work(clean_folder, tmp_path, capsys):
    def usage_error(*argv):
        with pytest.raises(SystemExit) as exit_info:
            shift_cli.cli(list(argv))
        assert exit_info.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    data = ['--data-dir', str(clean_folder)]
    assert '--cifar10c-dir DIR' in usage_error(*data)
    assert 'argument --checkpoint: file not found: x.pth' in usage_error(*data, '--checkpoint', 'x.pth')
    assert 'expected a comma-separated list' in usage_error(*data, '--corruptions', 'frost,speckle')
    assert 'expected a comma-separated list' in usage_error(*data, '--severities', '0')
    assert '--checkpoint not found' in usage_error(*data, '--cache-dir', str(tmp_path / 'c'))
    assert 'has no labels.npy' in usage_error(*data, '--cifar10c-dir', str(tmp_path))
    np.save(tmp_path / 'labels.npy', np.zeros(5, dtype=np.int64))
    assert 'holds none of the corruptions' in usage_error(*data, '--cifar10c-dir', str(tmp_path))
    assert 'argument --data-dir: folder not found' in usage_error('--data-dir', str(tmp_path / 'missing'),
                                                                  '--cache-dir', 'c')
    assert not (tmp_path / 'c').exists()


def test_save_logits_writes_the_logits_of_every_set_the_report_came_from(digits_run, clean_folder, tmp_path,
                                                                          one_thread, capsys, monkeypatch):
    from cfl_timm import evaluate
    logits_dir = tmp_path / 'logits'
    argv = ['--data-dir', str(clean_folder), '--cache-dir', str(tmp_path / 'cache'), '--corruptions',
            'gaussian_noise,contrast', '--severities', '1,5', '--checkpoint', str(digits_run / 'model_best.pth.tar'),
            '--num-bins', '10', '--save-logits', str(logits_dir)]
    report = _cli(*argv, '--output-json', str(tmp_path / 'shift.json'))
    assert sorted(path.name for path in logits_dir.iterdir()) == [
        'clean.npz', 'contrast_s1.npz', 'contrast_s5.npz', 'gaussian_noise_s1.npz', 'gaussian_noise_s5.npz']
    cells = {('clean', None): report['clean'], **{(name, int(s)): cell for name, by_severity in
                                                   report['corruptions'].items() for s, cell in by_severity.items()}}
    clean = load_logits_npz(logits_dir / 'clean.npz')
    for (name, severity), cell in cells.items():
        saved = load_logits_npz(logits_dir / (f'{name}_s{severity}.npz' if severity else 'clean.npz'))
        assert saved.split == (f'{name}-{severity}' if severity else 'clean')
        assert saved.checkpoint == 'model_best.pth.tar' and saved.class_names == [str(i) for i in range(10)]
        assert saved.logits.shape == (20, 10) and len(saved.targets) == 20
        # the report's numbers, recomputed from the saved logits alone
        top1 = (saved.logits.argmax(1) == saved.targets).double().mean().item() * 100
        assert top1 == pytest.approx(cell['top1'], rel=1e-12, abs=1e-12)
        meter = CalibrationMeter(10, 10)
        meter.update(saved.logits, saved.targets)
        assert meter.compute()['ece'] == pytest.approx(cell['ece'], rel=1e-9, abs=1e-12)
        if severity:
            assert msp_auroc(clean.logits, saved.logits) == pytest.approx(cell['msp_auroc'], rel=1e-12)
    # the model-free evaluator reads them
    evaluated = evaluate.main(evaluate.get_args_parser().parse_args(
        ['--logits', str(logits_dir / 'gaussian_noise_s5.npz'), '--num-bins', '10',
         '--output-json', str(tmp_path / 'evaluated.json')]))
    assert evaluated['raw']['top1'] == pytest.approx(report['corruptions']['gaussian_noise']['5']['top1'])

    # a second run into the same folder, or the folder named as another output, is refused before any work
    monkeypatch.setattr(shift_cli, 'prepare_sets', lambda args: pytest.fail('started work'))
    before = {path.name: path.read_bytes() for path in logits_dir.iterdir()}

    def usage_error(*extra):
        with pytest.raises(SystemExit) as exit_info:
            shift_cli.cli([*argv, *extra])
        assert exit_info.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]
    line = usage_error()
    assert f'--save-logits {logits_dir} already holds the logits of an earlier run' in line, line
    assert {path.name: path.read_bytes() for path in logits_dir.iterdir()} == before
    argv[-1] = str(tmp_path / 'out.json')
    assert 'name the same path' in usage_error('--output-json', str(tmp_path / 'out.json'))
    argv[-1] = str(tmp_path / 'shift.json')
    assert 'is a file' in usage_error()
    argv[-1] = str(tmp_path / 'new')
    assert 'does not apply to --generate-only' in usage_error('--generate-only')


# --------------------------------------------------------------------------------- which classes the labels mean

def _class_folders(root, names):
    """One tiny PNG per class folder."""
    from PIL import Image
    for index, name in enumerate(names):
        (root / name).mkdir(parents=True)
        Image.new('RGB', (4, 4), (index * 20, 0, 0)).save(root / name / 'a.png')
    return root


def test_published_set_accepts_only_cifar10_classes_in_its_order(tmp_path):
    from timm.data import ImageDataset
    root, _ = _published_layout(tmp_path / 'c10c')
    cifar_names = tmp_path / 'reversed'
    _class_folders(cifar_names, CIFAR10_CLASSES)
    assert list(CIFAR10_CLASSES) == sorted(CIFAR10_CLASSES) and len(set(CIFAR10_CLASSES)) == 10
    reader = ImageDataset(str(cifar_names)).reader  # timm sorts the class folders: CIFAR-10's order
    assert sorted(reader.class_to_idx, key=reader.class_to_idx.get) == list(CIFAR10_CLASSES)
    check_set_classes(root, CIFAR10_CLASSES, 'folder')
    check_set_classes(root, [str(i) for i in range(10)], 'folder')
    for names in (CIFAR10_CLASSES[:9], [*CIFAR10_CLASSES[:9], 'lorry'], [str(i) for i in range(1, 11)],
                  ['Airplane', *CIFAR10_CLASSES[1:]]):
        with pytest.raises(ValueError, match='folder has .* CIFAR-10.s classes in its order'):
            check_cifar10_classes(names, 'folder')
    # a generated set's labels mean the class names it was generated with
    folder = generate_corrupted_set(np.zeros((3, 4, 4, 3), np.uint8), np.array([0, 1, 2]), tmp_path / 'cache',
                                    corruptions=['contrast'], class_names=['a', 'b', 'c'])
    check_set_classes(folder, ['a', 'b', 'c'], 'folder')
    with pytest.raises(ValueError, match=r"folder has 3 classes \(a, c, b\), but the set in .* was generated with "
                                         r"3 classes \(a, b, c\)"):
        check_set_classes(folder, ['a', 'c', 'b'], 'folder')


def test_command_refuses_a_clean_folder_of_other_classes_before_the_model(tmp_path, capsys, monkeypatch):
    root, _ = _published_layout(tmp_path / 'c10c')
    checkpoint = tmp_path / 'model.pth.tar'
    checkpoint.write_bytes(b'never loaded')
    # the checkpoint is read before the sets (open_checkpoint); the network is built only after the class check
    monkeypatch.setattr(shift_cli, 'open_checkpoint', lambda args: ({}, {}, 'test_resnet'))
    monkeypatch.setattr(shift_cli, 'build_model', lambda *a: pytest.fail('built the model'))
    clean = _class_folders(tmp_path / 'clean', [*CIFAR10_CLASSES[:9], 'lorry'])
    with pytest.raises(SystemExit) as exit_info:
        shift_cli.cli(['--data-dir', str(clean), '--cifar10c-dir', str(root), '--checkpoint', str(checkpoint)])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f'the clean --data-dir {clean} has 10 classes (airplane, automobile, bird, cat, deer, dog, frog, horse, '\
           'lorry, ship), but the labels of the published CIFAR-10-C' in line, line


def test_published_set_refuses_a_model_of_other_classes(tmp_path):
    shift_cli.check_model_labels({'dataset': 'torch/cifar10'}, 10, 'm.pth')
    shift_cli.check_model_labels({'dataset': ''}, 10, 'm.pth')  # a folder dataset: its class count only
    with pytest.raises(ValueError, match='--checkpoint m.pth: the model has 100 classes'):
        shift_cli.check_model_labels({'dataset': ''}, 100, 'm.pth')
    with pytest.raises(ValueError, match='trained on --dataset torch/svhn, whose labels are not CIFAR-10'):
        shift_cli.check_model_labels({'dataset': 'torch/svhn'}, 10, 'm.pth')


def test_the_real_cifar10_folder_has_the_labels_of_cifar10c(cifar10_dir):
    """The CIFAR-10 test images as a class-folder tree (skipped without CFL_TIMM_DATA): timm's reader gives them
    CIFAR-10's labels, so the published CIFAR-10-C check accepts the folder."""
    _, _, class_names = read_image_folder(cifar10_dir / 'val')
    assert class_names == list(CIFAR10_CLASSES)
    check_cifar10_classes(class_names, str(cifar10_dir / 'val'))
