"""The shipped configs against the recipes they name, read through train.py's real config loading and parser.

Also the multi-loss seed's AdaFocal flag spellings and the near-miss flag suggestion of train.py's parser.
"""
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy

import train
from cfl_timm.loss.calibration_losses import AdaFocalLoss, DualFocalLoss, FLSDLoss, MMCEMLoss, SAFCLoss

CONFIGS = Path(__file__).resolve().parent.parent / 'configs'

# Configs whose comment claims a published recipe -> (source, the published command line's flags).
PUBLISHED_RECIPES = {
    'cifar10_cfl_published.yaml': (
        'L. N. Smith, Cyclical Focal Loss (arXiv 2202.08978), the authors\' README example for CIFAR',
        ['--focal_loss', 'asym-cyclical', '--gamma_hc', '3', '--gamma_pos', '2', '--gamma_neg', '2',
         '--cyclical_factor', '4']),
}

# The multi-loss CIFAR seed's AdaFocal flags (its spellings) and the same values in ours.
SEED_ADAFOCAL_FLAGS = ['--adafocal-num-bins', '15', '--adafocal-lambda', '2.0', '--adafocal-gamma-initial', '5.0',
                       '--adafocal-switch-pt', '0.25', '--adafocal-gamma-max', '8.0', '--adafocal-gamma-min', '-8.0',
                       '--adafocal-update-every', '1']
CANONICAL_ADAFOCAL_FLAGS = ['--adafocal-bins', '15', '--adafocal-lambda', '2.0', '--adafocal-gamma-init', '5.0',
                            '--adafocal-switch', '0.25', '--adafocal-gamma-max', '8.0', '--adafocal-gamma-min',
                            '-8.0', '--adafocal-update-every', '1']
SEED_ADAFOCAL_VALUES = dict(num_bins=15, lam=2.0, gamma_init=5.0, switch=0.25, gamma_max=8.0, gamma_min=-8.0,
                            update_every=1)


def _comment(path: Path) -> str:
    return ''.join(line for line in path.read_text(encoding='utf-8').splitlines(True) if line.startswith('#'))


def _criterion(args) -> nn.Module:
    return train.build_train_criterion(args, args.epochs, False)


def test_every_config_claiming_a_published_recipe_has_one_in_the_table():
    claiming = {p.name for p in CONFIGS.rglob('*.yaml') if re.search(r'\bpublished\b', _comment(p), re.I)}
    assert claiming == set(PUBLISHED_RECIPES)


@pytest.mark.parametrize('name', sorted(PUBLISHED_RECIPES))
def test_published_config_equals_the_published_command_line(name):
    _, argv = PUBLISHED_RECIPES[name]
    from_config = vars(train.parse_args(['-c', str(CONFIGS / name)]))
    from_command = vars(train.parse_args(argv))
    defaults = vars(train.parse_args([]))
    published = {key for key in from_command if from_command[key] != defaults[key]}
    assert published, 'the table entry sets nothing'
    assert {key: from_config[key] for key in published} == {key: from_command[key] for key in published}


def test_seed_adafocal_spellings_parse_to_the_canonical_namespace():
    seed = train.parse_args(['--loss', 'adafocal', *SEED_ADAFOCAL_FLAGS])
    canonical = train.parse_args(['--loss', 'adafocal', *CANONICAL_ADAFOCAL_FLAGS])
    assert vars(seed) == vars(canonical)
    assert vars(seed) != vars(train.parse_args(['--loss', 'adafocal']))
    loss = _criterion(seed)
    assert isinstance(loss, AdaFocalLoss)
    assert {key: getattr(loss, key) for key in SEED_ADAFOCAL_VALUES} == SEED_ADAFOCAL_VALUES
    assert loss.gammas.tolist() == [5.0] * 15


def test_adafocal_multiloss_seed_config():
    args = train.parse_args(['-c', str(CONFIGS / 'cifar10_adafocal_multiloss_seed.yaml')])
    assert vars(args) == {**vars(train.parse_args(['-c', str(CONFIGS / 'cifar10_adafocal_multiloss_seed.yaml'),
                                                   *SEED_ADAFOCAL_FLAGS]))}
    assert (args.epochs, args.seed, args.holdout, args.lr, args.sched) == (350, 42, 5000, 0.1, 'multistep')
    assert (args.decay_milestones, args.decay_rate) == ([151, 251], 0.1)
    loss = _criterion(args)
    assert {key: getattr(loss, key) for key in SEED_ADAFOCAL_VALUES} == SEED_ADAFOCAL_VALUES
    for backbone in ('resnet50_cifar', 'resnet110_cifar', 'wide_resnet28_10_cifar', 'densenet121_cifar'):
        assert backbone in _comment(CONFIGS / 'cifar10_adafocal_multiloss_seed.yaml')


def test_adafocal_official_config_uses_the_official_defaults():
    args = train.parse_args(['-c', str(CONFIGS / 'cifar10_adafocal.yaml')])
    loss = _criterion(args)
    official = dict(num_bins=15, lam=1.0, gamma_init=1.0, switch=0.2, gamma_max=20.0, gamma_min=-2.0,
                    update_every=-1)
    assert {key: getattr(loss, key) for key in official} == official
    assert (loss.reduction, args.clip_grad, args.holdout, args.epochs) == ('sum', 2.0, 5000, 350)


# SA-FCL seed baselines: file -> (loss class, its hyper-parameters from the seed's configs).
SAFCL_SEED = {
    'wd_ce': (nn.CrossEntropyLoss, {}),
    'label_smoothing': (LabelSmoothingCrossEntropy, {'smoothing': 0.05 * 10 / 9}),
    'brier': (None, {}),
    'mmce': (MMCEMLoss, {'weight': 1.0}),
    'flsd53': (FLSDLoss, {'gamma': 3.0}),
    'dual_focal': (DualFocalLoss, {'gamma': 2.0}),
    'fcl_ungated': (None, {'gamma': 2.0, 'lam': 1.0}),
    'safcl': (SAFCLoss, {'gamma': 2.0, 'gamma_cal': 2.0, 'lam': 1.0, 'detach_gate': True}),
    'safcl_nostop': (None, {'gamma': 2.0, 'gamma_cal': 2.0, 'lam': 1.0, 'detach_gate': False}),
}
SAFCL_SEED_NAMES = {'brier': 'brier', 'fcl_ungated': 'fcl-ungated', 'safcl_nostop': 'safcl-nodetach'}


def test_safcl_seed_has_every_baseline():
    assert {p.stem for p in (CONFIGS / 'safcl_seed').glob('*.yaml')} == set(SAFCL_SEED)


@pytest.mark.parametrize('name', sorted(SAFCL_SEED))
def test_safcl_seed_config_builds_its_loss(name):
    args = train.parse_args(['-c', str(CONFIGS / 'safcl_seed' / f'{name}.yaml')])
    assert (args.epochs, args.lr, args.sched, args.decay_milestones, args.decay_rate, args.weight_decay) == (
        350, 0.1, 'multistep', [151, 251], 0.1, 5e-4)
    assert (args.opt, args.momentum, args.batch_size, args.model) == ('sgd', 0.9, 128, 'resnet50_cifar')
    cls, params = SAFCL_SEED[name]
    loss = _criterion(args)
    if cls is not None:
        assert type(loss) is cls
    if name in SAFCL_SEED_NAMES:
        assert loss.name == SAFCL_SEED_NAMES[name]
    for key, value in params.items():
        assert math.isclose(getattr(loss, key), value, rel_tol=1e-6), key
    if name == 'wd_ce':
        assert loss.label_smoothing == 0.0
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss(logits, torch.arange(6))).item()


@pytest.mark.parametrize('flag,suggestion', [
    ('--clIp_max', '--clip_max'), ('--Gamma-HC', '--gamma_hc'), ('--gamma_hcc', '--gamma_hc'),
    ('--adafocal-num-bnis', '--adafocal-num-bins'), ('--lr-cycle-limt', '--lr-cycle-limit')])
def test_near_miss_flag_is_a_one_line_usage_error_naming_the_flag(flag, suggestion, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args([flag, '3'])
    assert e.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if 'error' in line]
    assert error == [f'train.py: error: unrecognized argument {flag}; did you mean {suggestion}?']


def test_unknown_flag_far_from_every_flag_keeps_argparse_message(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(['--zzqqxxy', '3'])
    assert e.value.code == 2
    assert 'train.py: error: unrecognized arguments: --zzqqxxy' in capsys.readouterr().err.splitlines()


def test_config_key_near_miss_names_the_right_key(tmp_path):
    config = tmp_path / 'typo.yaml'
    config.write_text('clIp_max: 3.0\nmodle: resnet18\n', encoding='utf-8')
    with pytest.raises(ValueError, match=r"\['clIp_max', 'modle'\] \(clIp_max: did you mean clip_max\?\) "
                                         r"\(modle: did you mean model\?\)"):
        train.parse_args(['-c', str(config)])


def test_an_empty_config_key_is_accepted(tmp_path):
    """``config: ''`` (what a run started without -c records in its args.yaml) names no other config: accepted;
    a named one is refused (configs do not include other configs; see the bad-input table)."""
    path = tmp_path / 'run.yaml'
    path.write_text("config: ''\nepochs: 3\n")
    assert train.parse_args(['-c', str(path)]).epochs == 3


def test_a_runs_own_args_yaml_is_a_valid_config(tmp_path):
    """timm's convention: ``-c RUN/args.yaml`` repeats a run. Every recorded value, including empty lists that
    are a flag's default (``wandb_tags: []``), must read back to the same settings."""
    from cfl_timm.training import save_args_yaml
    args = train.parse_args(['--model', 'resnet18', '--epochs', '3'])
    path = tmp_path / 'args.yaml'
    save_args_yaml(path, {**vars(args), 'world_size': 1})
    assert 'wandb_tags: []' in path.read_text()
    again = train.parse_args(['-c', str(path)])
    assert (again.model, again.epochs, again.wandb_tags) == ('resnet18', 3, [])


def test_an_empty_list_for_a_flag_that_needs_a_value_is_refused(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('decay_milestones: []\n')
    with pytest.raises(ValueError, match=r"key 'decay_milestones' expects at least one value"):
        train.parse_args(['-c', str(path)])
