"""The CIFAR training transform (shape, zero-padded random crop, flip, normalisation), the identity evaluation
resize at 32 px, the recipe configs, and resnet20_cifar trained from the command line on real images and resumed."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision import transforms

import train
from cfl_timm.data import TRAIN_TRANSFORMS, create_cifar_train_transform
from cfl_timm.data.constants import CIFAR10_MEAN, CIFAR10_STD

torch.set_num_threads(1)
REPO = Path(train.__file__).resolve().parent
CONFIGS = {
    'cifar10_mbls_resnet50.yaml': dict(model='resnet50_cifar', epochs=200, lr=0.1, weight_decay=5e-4, clip_grad=2.0,
                                       sched='multistep', decay_milestones=[151, 251], opt='momentum'),
    'cifar10_focal_calibration.yaml': dict(model='resnet50_cifar', epochs=350, lr=0.1, momentum=0.9,
                                           weight_decay=5e-4, batch_size=128, decay_milestones=[151, 251],
                                           opt='momentum', focal_loss='sym', gamma=3.0),
    'cifar10_resnet_se_onecycle.yaml': dict(model='resnet18_cifar', sched='onecycle', drop_path=0.1, aa='rand-m9-n2',
                                            reprob=0.3, smoothing=0.1, clip_grad=1.0),
}


def _pattern_image(size: int = 32) -> Image.Image:
    """A known image: R = 8 * column, G = 8 * row, B = 200 (no pixel is 0, so padding is recognisable)."""
    rows, cols = np.mgrid[0:size, 0:size]
    array = np.stack([8 * cols + 1, 8 * rows + 1, np.full_like(rows, 200)], -1).astype(np.uint8)
    return Image.fromarray(array)


def _find_offset(out: torch.Tensor, padded: torch.Tensor) -> tuple[int, int]:
    matches = [(dy, dx) for dy in range(9) for dx in range(9) if torch.equal(out, padded[:, dy:dy + 32, dx:dx + 32])]
    assert len(matches) == 1
    return matches[0]


def test_cifar_crop_is_a_shift_of_the_zero_padded_image():
    image = _pattern_image()
    padded = torch.nn.functional.pad(torch.from_numpy(np.array(image)).permute(2, 0, 1), [4, 4, 4, 4])
    tf = create_cifar_train_transform(32, padding=4, hflip=0., use_prefetcher=True)  # uint8 CHW, no normalisation
    torch.manual_seed(0)
    offsets = set()
    for _ in range(200):
        out = tf(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        offsets.add(_find_offset(out, padded))
    assert offsets <= {(dy, dx) for dy in range(9) for dx in range(9)} and len(offsets) > 40
    assert (0, 0) in offsets or (8, 8) in offsets or len({o[0] for o in offsets}) == 9
    # the crop at (0, 4) has 4 zero rows on top and the image below: zero padding, not reflection
    out = next(o for o in (tf(image) for _ in range(2000)) if _find_offset(o, padded) == (0, 4))
    assert not out[:, :4].any() and out[:, 4:].all()
    assert torch.equal(out[:, 4:], padded[:, 4:32, 4:36])


def test_cifar_flip_and_normalisation():
    image = _pattern_image()
    flipped = create_cifar_train_transform(32, padding=0, hflip=1.0, use_prefetcher=True)(image)
    assert torch.equal(flipped, torch.from_numpy(np.array(image)).permute(2, 0, 1).flip(-1))
    normalised = create_cifar_train_transform(32, padding=0, hflip=0.)(image)
    expected = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)(transforms.ToTensor()(image))
    assert normalised.dtype == torch.float32 and torch.allclose(normalised, expected)
    assert [type(t).__name__ for t in create_cifar_train_transform().transforms] == [
        'RandomCrop', 'RandomHorizontalFlip', 'MaybeToTensor', 'Normalize']
    with_aa = create_cifar_train_transform(auto_augment='rand-m9-n2', re_prob=0.3)
    assert [type(t).__name__ for t in with_aa.transforms] == [
        'RandomCrop', 'RandomHorizontalFlip', 'RandAugment', 'MaybeToTensor', 'Normalize', 'RandomErasing']
    with pytest.raises(ValueError, match='padding'):
        create_cifar_train_transform(padding=-1)


def test_cifar_eval_at_32px_is_an_identity_resize():
    model = timm.create_model('resnet20_cifar')
    config = resolve_data_config({}, model=model)
    assert config['input_size'] == (3, 32, 32) and config['crop_pct'] == 1.0
    image = _pattern_image()
    evaluated = create_transform(**config, is_training=False)(image)
    expected = transforms.Normalize(config['mean'], config['std'])(transforms.ToTensor()(image))
    assert torch.allclose(evaluated, expected)
    timm_default = create_transform(**dict(config, crop_pct=0.875), is_training=False)(image)
    assert not torch.allclose(timm_default, expected)  # what crop_pct 1.0 avoids: resize to 36, center crop


def test_train_transform_flag_and_checks(capsys):
    args = train.parse_args(['--train-transform', 'cifar', '--crop_padding', '2'])
    assert (args.train_transform, args.crop_padding) == ('cifar', 2) and TRAIN_TRANSFORMS == ('timm', 'cifar')
    assert train.parse_args([]).train_transform == 'timm'
    for argv, message in ((['--train-transform', 'rrc'], "invalid choice: 'rrc'"),
                          (['--train-transform', 'cifar', '--aug-splits', '2', '--dataset', 'sklearn/digits'],
                           'cannot be combined with --aug-splits')):
        with pytest.raises(SystemExit) as e:
            args = train.parse_args(argv)
            train.check_args(args, train.get_args_parser())
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_recipe_configs_parse_with_train_py(name):
    args = train.parse_args(['-c', str(REPO / 'configs' / name), '--dataset', 'sklearn/digits'])
    for key, value in CONFIGS[name].items():
        assert getattr(args, key) == value, key
    assert args.train_transform == 'cifar' and args.crop_padding == 4 and args.model in timm.list_models('*_cifar')
    train.check_args(args)  # --sched onecycle included (timm's scheduler factory, registered by cfl_timm)
    assert timm.create_model(args.model, **args.model_kwargs).num_classes == 10


def _summary(run_dir: Path) -> list[dict]:
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def test_resnet20_cifar_trains_from_the_command_line_on_digits(tmp_path):
    command = [sys.executable, str(REPO / 'train.py'), '--model', 'resnet20_cifar', '--dataset', 'sklearn/digits',
               '--img-size', '32', '--train-transform', 'cifar', '--epochs', '1', '--train_size', '128', '-b', '32',
               '-j', '0', '--warmup-epochs', '0', '--output', str(tmp_path), '--experiment', 'run']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _summary(tmp_path / 'run')
    assert [r['epoch'] for r in rows] == ['0'] and 0 <= float(rows[0]['eval_top1']) <= 100
    checkpoint = tmp_path / 'run' / 'last.pth.tar'
    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    args = train.parse_args(['--model', 'resnet20_cifar', '--initial-checkpoint', str(checkpoint)])
    loaded, data_config = train.build_model(args, 10, torch.device('cpu'), False, True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
    assert data_config['input_size'] == (3, 32, 32) and data_config['crop_pct'] == 1.0
    # --pretrained --pretrained-path FILE: timm's file loading, the classifier re-initialised for the new head
    args = train.parse_args(['--model', 'resnet20_cifar', '--pretrained', '--pretrained-path', str(checkpoint)])
    loaded, _ = train.build_model(args, 7, torch.device('cpu'), False, True)
    body = {k: v for k, v in saved.items() if not k.startswith('fc.')}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in body.items()) and loaded.fc.out_features == 7
    with pytest.raises(ValueError, match='No pretrained weights exist'):
        train.build_model(train.parse_args(['--model', 'resnet20_cifar', '--pretrained']), 10,
                          torch.device('cpu'), False, True)


def test_resnet20_cifar_trains_on_image_folders_and_resumes(image_folder, tmp_path):
    argv = ['--model', 'resnet20_cifar', '--data-dir', str(image_folder), '--train-transform', 'cifar',
            '--train_size', '128', '-b', '32', '-j', '0', '--warmup-epochs', '0', '--output', str(tmp_path),
            '--experiment', 'run', '--log-interval', '1000']
    train.main(train.parse_args([*argv, '--epochs', '1']))
    first = _summary(tmp_path / 'run')
    train.main(train.parse_args([*argv, '--epochs', '2', '--resume', 'auto', '--allow-changed-args']))
    rows = _summary(tmp_path / 'run')
    assert [r['epoch'] for r in rows] == ['0', '1'] and rows[0] == first[0]
    assert float(rows[1]['train_loss']) > 0 and 0 <= float(rows[1]['eval_top1']) <= 100


def test_course_config_trains_a_short_run_on_digits(tmp_path):
    # SE + stochastic depth + RandAugment + CutMix + random erasing + OneCycle, as configured, on real images
    config = REPO / 'configs' / 'cifar10_resnet_se_onecycle.yaml'
    args = train.parse_args(['-c', str(config), '--dataset', 'sklearn/digits', '--epochs', '1', '--train_size', '64',
                             '-b', '32', '-j', '0', '--output', str(tmp_path), '--experiment', 'run',
                             '--log-interval', '1000'])
    train.main(args)
    row = _summary(tmp_path / 'run')[0]
    assert float(row['train_loss']) > 0 and float(row['lr']) > 0
