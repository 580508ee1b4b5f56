"""train.py in-process: flags in both spellings, YAML configs, the published CIFAR recipe on real JPEGs,
summary columns against the schedules, the training-only temperature, and clear errors for bad input."""
import csv
import re
import shlex
from pathlib import Path

import pytest
import timm.scheduler
import torch
import yaml

import train
from cfl_timm import cyclical_eta
from cfl_timm.training import CriterionStateClassificationTask

# The published flags (cfl.md) with a non-default value each: (underscore spelling, value, parsed value).
PUBLISHED_FLAGS = [
    ('--focal_loss', 'asym', 'asym'),
    ('--gamma', '1.5', 1.5),
    ('--gamma_hc', '3', 3.0),
    ('--gamma_pos', '2', 2.0),
    ('--gamma_neg', '5', 5.0),
    ('--cyclical_factor', '4', 4.0),
    ('--wd_min', '1e-4', 1e-4),
    ('--wd_max', '2e-3', 2e-3),
    ('--T_min', '0.5', 0.5),
    ('--T_max', '3', 3.0),
    ('--clip_min', '1', 1.0),
    ('--clip_max', '50', 50.0),
    ('--train_size', '4000', 4000),
    ('--read_sampler', 'c10.csv', 'c10.csv'),
]

PUBLISHED_CIFAR = ('--model tresnet_m -b 384 --sched cosine --epochs 200 --lr 0.15 --warmup-lr 0.01 '
                   '--warmup-epochs 3 --cooldown-epochs 1 --weight-decay 5e-4 --amp --remode pixel --reprob 0.6 '
                   '--aug-splits 3 --aa rand-m9-mstd0.5-inc1 --resplit --split-bn --dist-bn reduce '
                   '--checkpoint-hist 4')


def _run(tmp_path, *argv):
    args = train.parse_args([*argv, '--output', str(tmp_path), '--experiment', 'run', '-j', '0',
                             '--log-interval', '1000'])
    return train.main(args), tmp_path / 'run'


def _summary(run_dir):
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize('flag, value, expected', PUBLISHED_FLAGS)
def test_published_flags_parse_in_both_spellings(flag, value, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'c10.csv').write_text('0\n')  # --read_sampler names an existing file
    dest = flag[2:]
    for spelling in {flag, '--' + flag[2:].replace('_', '-')}:
        args = train.parse_args([spelling, value])
        assert getattr(args, dest) == expected, spelling
    default = getattr(train.parse_args([]), dest)
    assert default != expected


def test_config_values_are_defaults_that_flags_override(tmp_path):
    config = tmp_path / 'run.yaml'
    config.write_text(yaml.safe_dump({'model': 'test_resnet', 'epochs': 7, 'T-min': 0.5, 'focal_loss': 'sym'}))
    args = train.parse_args(['-c', str(config), '--epochs', '3', '--focal-loss', 'asym'])
    assert (args.model, args.epochs, args.T_min, args.focal_loss) == ('test_resnet', 3, 0.5, 'asym')
    config.write_text(yaml.safe_dump({'modle': 'x'}))
    with pytest.raises(ValueError, match=r"Unknown keys in config .*\['modle'\]"):
        train.parse_args(['-c', str(config)])


def test_published_cifar_command_line_parses_unchanged():
    args = train.parse_args(shlex.split(PUBLISHED_CIFAR))
    assert (args.model, args.batch_size, args.sched, args.epochs, args.lr) == ('tresnet_m', 384, 'cosine', 200, 0.15)
    assert (args.warmup_lr, args.warmup_epochs, args.cooldown_epochs, args.weight_decay) == (0.01, 3, 1, 5e-4)
    assert args.amp and args.resplit and args.split_bn and (args.aug_splits, args.reprob) == (3, 0.6)
    assert (args.aa, args.remode, args.dist_bn, args.checkpoint_hist) == ('rand-m9-mstd0.5-inc1', 'pixel', 'reduce', 4)


def test_published_cifar_recipe_trains_on_real_images(tmp_path, image_folder):
    # The whole published flag set, with a CPU-sized model, image size, epoch count and subset (stratified 400),
    # on the digits PNGs and on the CIFAR-10 JPEGs.
    argv = shlex.split(PUBLISHED_CIFAR) + [
        '--data-dir', str(image_folder), '--model', 'test_resnet', '--img-size', '32', '-b', '32', '--epochs', '1',
        '--train_size', '400', '--train-size-mode', 'stratified', '--focal_loss', 'asym-cyclical',
        '--gamma_hc', '3', '--gamma_pos', '2']
    result, run_dir = _run(tmp_path, *argv)
    rows = _summary(run_dir)
    assert [r['epoch'] for r in rows] == ['0', '1']  # 1 epoch + 1 cooldown epoch
    for row in rows:
        for column in ('train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'eval_nll', 'eval_ece'):
            assert float(row[column]) == pytest.approx(float(row[column]))  # a finite number
        assert 0 <= float(row['eval_ece']) <= 1 and 0 <= float(row['eval_top1']) <= 100
    # tresnet_m's published checkpoint-hist 4 is honoured; last and best exist; args.yaml is the effective set.
    assert (run_dir / 'last.pth.tar').is_file() and (run_dir / 'model_best.pth.tar').is_file()
    saved = yaml.safe_load((run_dir / 'args.yaml').read_text())
    assert saved['aug_splits'] == 3 and saved['split_bn'] and saved['model'] == 'test_resnet' and saved['amp']
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert any('aux_bn' in k for k in checkpoint['state_dict'])  # --split-bn converted the BN layers


def test_summary_columns_hold_the_scheduled_values(tmp_path):
    epochs, cooldown, factor = 4, 1, 2.0
    argv = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-b', '64',
            '--train_size', '256', '--epochs', str(epochs), '--cooldown-epochs', str(cooldown), '--lr', '0.05',
            '--warmup-epochs', '0', '--weight-decay', '5e-4', '--focal_loss', 'asym-cyclical',
            '--cyclical_factor', str(factor), '--wd_min', '1e-4', '--wd_max', '1e-3', '--T_min', '0.5',
            '--T_max', '2', '--clip_min', '1', '--clip_max', '10']
    _, run_dir = _run(tmp_path, *argv)
    rows = _summary(run_dir)
    assert list(rows[0]) == ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'eval_nll',
                             'eval_ece', 'eta', 'weight_decay', 'temperature', 'clip_grad', 'train_top1',
                             'epoch_time', 'eval_adaptive_ece', 'eval_classwise_ece', 'eval_brier']
    assert len(rows) == epochs + cooldown
    for row in rows:
        eta = cyclical_eta(int(row['epoch']), epochs + cooldown, factor)
        assert float(row['eta']) == pytest.approx(eta, abs=1e-12)
        assert float(row['weight_decay']) == pytest.approx((1 - eta) * 1e-3 + eta * 1e-4, abs=1e-15)
        assert float(row['temperature']) == pytest.approx((1 - eta) * 2 + eta * 0.5, abs=1e-12)
        assert float(row['clip_grad']) == pytest.approx((1 - eta) * 10 + eta * 1, abs=1e-12)
    assert [float(r['eta']) for r in rows] == [1.0, 0.5, 0.0, 0.5, 1.0]
    # The decayed group carries the last epoch's cyclical weight decay; the no-decay group stays at 0.
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    decays = sorted(group['weight_decay'] for group in checkpoint['optimizer']['param_groups'])
    assert decays == [0.0, pytest.approx(float(rows[-1]['weight_decay']))]
    assert checkpoint['task_state']['criterion']  # the loss epoch is checkpointed


def test_schedules_off_leave_their_columns_empty(tmp_path):
    argv = ['--dataset', 'sklearn/digits', '--model', 'test_efficientnet', '--img-size', '32', '-b', '64',
            '--train_size', '128', '--epochs', '1', '--warmup-epochs', '0', '--smoothing', '0.1', '--clip-grad', '5']
    _, run_dir = _run(tmp_path, *argv)
    row = _summary(run_dir)[0]
    assert (row['eta'], row['weight_decay'], row['temperature'], row['clip_grad']) == ('', '', '', '')
    assert float(row['eval_nll']) > 0


def test_per_update_stepping_moves_within_the_epoch(tmp_path):
    argv = ['--dataset', 'sklearn/digits', '--model', 'test_efficientnet', '--img-size', '32', '-b', '32',
            '--train_size', '128', '--epochs', '2', '--warmup-epochs', '0', '--focal_loss', 'asym-cyclical',
            '--cyclical_factor', '4', '--T_min', '0.5', '--cyclical-step-per-update']
    _, run_dir = _run(tmp_path, *argv)
    rows = _summary(run_dir)
    # Logged: the values at the first update of each epoch (4 updates per epoch, 2 scheduled epochs, n = 1).
    assert [float(r['eta']) for r in rows] == [1.0, pytest.approx(cyclical_eta(1.0, 2, 4.0))]
    assert [float(r['temperature']) for r in rows] == [0.5, pytest.approx((1 - cyclical_eta(1.0, 2, 4.0)) * 2 +
                                                                          cyclical_eta(1.0, 2, 4.0) * 0.5)]
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    criterion_state = checkpoint['task_state']['criterion']
    # The loss follows the scheduler's position: after the last update, step_update(8) put it at 8 / 4 = 2.0, where
    # a resume continues (the values at every update: tests/test_scheduler_factory.py, a loop of timm's shape).
    assert criterion_state
    loss = train.build_train_criterion(train.parse_args(argv), 2, False)
    loss.load_state_dict(criterion_state)
    assert loss.epoch == 2.0


def test_temperature_divides_the_training_logits_only():
    # train.py's route: the cyclical scheduler's pre-hook divides the task loss's logits by the temperature.
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    plain = torch.nn.CrossEntropyLoss()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler, _ = timm.scheduler.create_scheduler_v2(optimizer, sched='cosine', num_epochs=4, t_min=0.5, t_max=2.5)
    scheduler.attach_loss(criterion)
    task = CriterionStateClassificationTask(model, criterion, verbose=False)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    scheduler.step(1)
    temperature = scheduler.temperature
    assert 0.5 < temperature < 2.5
    out = task(x, y)
    torch.testing.assert_close(out['loss'], plain(model(x) / temperature, y))
    torch.testing.assert_close(out['output'], model(x))  # raw logits go to metrics
    assert task.get_eval_model() is model  # evaluation bypasses the task's forward


def test_amp_on_cpu_uses_bfloat16():
    args = train.parse_args(['--amp'])
    assert train.resolve_amp(args, torch.device('cpu')) == (torch.bfloat16, False)


@pytest.fixture
def sampler_file(tmp_path):
    def write(content):
        path = tmp_path / 'sampler.csv'
        path.write_text(content)
        return str(path)
    return write


DIGITS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '--epochs', '1']


@pytest.mark.parametrize('argv, message', [
    (['--model', 'test_resnet', '--data-dir', 'no/such/dir'], 'Dataset path does not exist'),
    (['--model', 'test_resnet'], 'No dataset path'),
    (['--dataset', 'sklearn/digits', '--model', 'no_such_model'], "unknown model 'no_such_model'"),
    (DIGITS + ['--T_min', '3', '--T_max', '2'], r'softmax temperature .* min must not exceed max'),
    (DIGITS + ['--focal_loss', 'asym', '--aug-splits', '2', '--jsd-loss'], 'cannot be combined with --jsd-loss'),
    (DIGITS + ['--focal_loss', 'asym', '--bce-loss'], 'cannot be combined with --bce-loss'),
    (DIGITS + ['--train_size', '10', '--imbalance-ratio', '10'], 'Choose one training subset'),
    (DIGITS + ['--split-bn'], '--split-bn needs --aug-splits'),
    (DIGITS + ['--train_size', '100000'], r'--train_size must be an integer in \[1, 1442\]'),
])
def test_bad_input_gives_a_clear_error_before_training(tmp_path, argv, message):
    # Checks past the parse (a single flag's range is its declaration's: tests/test_bad_inputs.py, test_cli_fuzz.py)
    with pytest.raises(ValueError, match=message):
        _run(tmp_path, *argv)
    assert not (tmp_path / 'run' / 'summary.csv').exists()


@pytest.mark.parametrize('content, message', [
    ('', 'holds no indices'), ('1\nx\n', 'is not an integer'), ('0\n1442\n', r'outside \[0, 1441\]'),
])
def test_bad_sampler_file_gives_a_clear_error_before_training(tmp_path, sampler_file, content, message):
    with pytest.raises(ValueError, match=message):
        _run(tmp_path, *DIGITS, '--read_sampler', sampler_file(content))
    assert not (tmp_path / 'run').exists()


def test_empty_or_missing_split_folder_is_a_clear_error(tmp_path):
    (tmp_path / 'data' / 'train').mkdir(parents=True)
    with pytest.raises(ValueError, match="no non-empty 'train' folder"):
        _run(tmp_path, '--model', 'test_resnet', '--data-dir', str(tmp_path / 'data'))
    (tmp_path / 'data' / 'train' / 'cat').mkdir()
    with pytest.raises(ValueError, match=r"no non-empty 'validation' folder .*'val'"):
        _run(tmp_path, '--model', 'test_resnet', '--data-dir', str(tmp_path / 'data'))


@pytest.mark.parametrize('argv, message', [
    (['--focal_loss', 'focal'], r"invalid choice: 'focal' \(choose from '?sym'?, '?asym'?, '?asym-cyclical'?\)"),
    (['--loss', 'nope'], 'invalid choice'),
])
def test_unknown_loss_names_the_valid_choices(capsys, argv, message):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


def test_configs_load_and_name_no_machine_path():
    # Every committed config loads with known keys and names no path of this machine.
    for config in Path(train.__file__).resolve().parent.joinpath('configs').glob('*.yaml'):
        text = config.read_text()
        assert not any('/' + folder + '/' in text for folder in ('work', 'tmp'))
        train.load_config(str(config), train.get_args_parser())


def test_quickstart_config_trains(tmp_path):
    config = Path(train.__file__).resolve().parent / 'configs' / 'quickstart.yaml'
    args = train.parse_args(['-c', str(config), '--epochs', '1', '--cooldown-epochs', '0', '--output', str(tmp_path),
                             '--train_size', '128'])
    assert (args.dataset, args.focal_loss, args.wd_min, args.T_min, args.clip_min) == (
        'sklearn/digits', 'asym-cyclical', 1e-4, 0.5, 1.0)
    result = train.main(args)
    row = _summary(Path(result['output_dir']))[0]
    assert row['weight_decay'] and row['temperature'] and row['clip_grad'] and row['eta'] == '1.0'


def test_long_tailed_and_sampler_subsets_train_with_per_class_counts_logged(tmp_path, caplog):
    caplog.set_level('INFO')
    _run(tmp_path / 'lt', *DIGITS, '--imbalance_ratio', '10', '--imbalance-max', '40', '-b', '32')
    expected = [int(40 * 10 ** (-c / 9) + 1e-9) for c in range(10)]  # n_c = n_max * rho^(-c/(K-1))
    assert f'Training subset: {sum(expected)} images, 10 classes, per class min 4 max 40: {expected}' in caplog.text
    sampler = tmp_path / 'sampler.csv'
    sampler.write_text('\n'.join(str(i) for i in range(1000, 1442)))  # above int8, 0-based, the last image included
    _run(tmp_path / 'rs', *DIGITS, '--read-sampler', str(sampler), '-b', '32')
    assert 'Training subset: 442 images' in caplog.text


def test_resume_auto_continues_in_the_run_directory(tmp_path):
    argv = [*DIGITS, '--train_size', '96', '-b', '32', '--warmup-epochs', '0']
    _run(tmp_path, *argv)
    first = _summary(tmp_path / 'run')
    _run(tmp_path, *argv[:-6], '--epochs', '2', '--train_size', '96', '-b', '32', '--warmup-epochs', '0',
         '--resume', 'auto', '--allow-changed-args')  # more epochs: another schedule, so allowed explicitly
    rows = _summary(tmp_path / 'run')
    assert [r['epoch'] for r in rows] == ['0', '1'] and rows[0] == first[0]
    assert sorted(p.name for p in (tmp_path / 'run').glob('checkpoint-*')) == ['checkpoint-0.pth.tar',
                                                                               'checkpoint-1.pth.tar']


def test_summary_write_is_atomic(tmp_path, monkeypatch):
    from cfl_timm import files
    from cfl_timm.files import SummaryCSV

    writer = SummaryCSV(tmp_path / 'summary.csv')
    writer.append({'epoch': 0, 'train_loss': 1.5, 'temperature': None})
    before = (tmp_path / 'summary.csv').read_text()

    def crash(_fd):
        raise OSError('disk full')
    monkeypatch.setattr(files.os, 'fsync', crash)
    with pytest.raises(OSError, match='disk full'):
        writer.append({'epoch': 1, 'train_loss': 1.2})
    assert (tmp_path / 'summary.csv').read_text() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ['summary.csv']  # no temp file left behind
    assert before.splitlines()[1].startswith('0,1.5,') and before.splitlines()[1].endswith(',,,,,,,,,')
    with pytest.raises(ValueError, match='Unknown summary columns'):
        writer.append({'epochs': 2})
