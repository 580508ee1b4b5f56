"""train.py with every cfl-timm loss: --loss NAME and one flag per factory keyword, usage errors before any work,
the held-out calibration split (--holdout) with AdaFocal's per-epoch update, its bin-statistics lines and exact
resume after SIGKILL, identical AdaFocal state on two torchrun ranks, and grad-scaler skipped steps counted."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import every_rank_log

import train
from cfl_timm.data import DigitsDataset
from cfl_timm.data.holdout import holdout_split
from cfl_timm.files import trim_jsonl
from cfl_timm.loss.calibration_losses import CALIBRATION_LOSS_TYPES, SOFT_TARGET_LOSSES
from cfl_timm.loss.cfl_loss_factory import LOSS_KWARGS, LOSS_TYPES
from cfl_timm.training.args import LOSS_FLAG_KWARGS

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / 'bench'))
import gpu_check  # noqa: E402

DIGITS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-j', '0',
          '--warmup-epochs', '0', '--lr', '0.05', '--log-interval', '1000']


def _run(tmp_path, *argv):
    args = train.parse_args([*argv, '--output', str(tmp_path), '--experiment', 'run'])
    train.check_args(args, train.get_args_parser())
    return train.main(args), tmp_path / 'run'


def _summary(run_dir):
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def _env():
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': python_path}


@pytest.mark.parametrize('name', CALIBRATION_LOSS_TYPES)
def test_each_calibration_loss_trains_on_real_images_and_reports_top1_and_ece(tmp_path, name):
    extra = ['--holdout', '32'] if name == 'adafocal' else []
    result, run_dir = _run(tmp_path, *DIGITS, '--epochs', '1', '-b', '64', '--train_size', '96',
                           '--train-size-mode', 'stratified', '--loss', name, *extra)
    row = _summary(run_dir)[0]
    top1, ece = float(row['eval_top1']), float(row['eval_ece'])
    assert 0 <= top1 <= 100 and 0 <= ece <= 1 and np.isfinite(float(row['train_loss']))
    assert result['eval_metrics']['top1'] == pytest.approx(top1) and result['eval_metrics']['ece'] == ece
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert checkpoint['args'].loss == name


@pytest.mark.parametrize('key', list(LOSS_FLAG_KWARGS))
def test_every_factory_keyword_has_a_flag_in_both_spellings(key):
    value = LOSS_FLAG_KWARGS[key]
    name = next(n for n, keys in LOSS_KWARGS.items() if key in keys)
    for flag in {'--' + key, '--' + key.replace('_', '-')}:
        args = train.parse_args(['--loss', name, flag, str(value)])
        assert getattr(args, key) == value and type(getattr(args, key)) is type(value), flag
    assert getattr(train.parse_args([]), key) is None  # only given flags reach the factory
    # The flag reaches the loss: the criterion train.py builds equals the factory's with that keyword.
    args = train.parse_args([*DIGITS, '--loss', name, '--' + key.replace('_', '-'), str(value)])
    built = train.build_train_criterion(args, 3, False)
    reference = train.create_loss(name, **{key: value})
    assert type(built) is type(reference) and repr(built) == repr(reference)
    assert {k: v.tolist() for k, v in built.state_dict().items()} == \
        {k: v.tolist() for k, v in reference.state_dict().items()}


def test_loss_flag_accepts_every_registered_type():
    from cfl_timm import ALL_LOSS_TYPES
    for name in ALL_LOSS_TYPES:
        assert train.parse_args(['--loss', name]).loss == name
    assert set(LOSS_TYPES) <= set(ALL_LOSS_TYPES)


@pytest.mark.parametrize('argv, message', [
    (['--loss', 'flsd', '--mixup', '0.8'], r"--loss flsd: Loss type 'flsd' needs class-index targets, not soft "
                                           r"\(Mixup / CutMix\) targets; .* \(Mixup/CutMix is on"),
    (['--loss', 'dual-focal', '--cutmix', '1.0'], "Loss type 'dual-focal' needs class-index targets"),
    (['--loss', 'brier', '--flsd-gamma', '2'], r"--loss brier: Arguments \['flsd_gamma'\] do not apply to the loss "
                                               r"type 'brier'"),
    (['--loss', 'ce', '--mbls-margin', '5'], r'--mbls-margin only apply to the cfl-timm loss types'),
    (['--loss', 'ce', '--loss-reduction', 'sum'], r'--loss-reduction only apply to the cfl-timm loss types'),
    (['--gamma-hc', '3'], r"--gamma-hc only apply to the cfl-timm loss types .* not to the timm loss 'ce'"),
    (['--loss', 'sym', '--gamma-hc', '3'], r"Arguments \['gamma_hc'\] do not apply to the loss type 'sym'"),
    (['--loss', 'flsd', '--smoothing', '0.1'], '--loss flsd: .*smoothing'),
    (['--loss', 'mmce-m', '--loss-reduction', 'none'], '--loss mmce-m: '),
    (['--loss', 'adafocal'], r'--loss adafocal updates its state on held-out training images every epoch: pass '
                             r'--holdout N'),
    (['--checkpoint-metric', 'holdout_ece'], r'--checkpoint-metric holdout_ece selects on the held-out split: '
                                             r'pass --holdout N'),
    (['--focal_loss', 'asym', '--loss', 'brier'], '--focal_loss asym and --loss brier select two losses'),
    (['--loss', 'asym', '--bce-loss'], '--loss asym replaces timm\'s loss; it cannot be combined with --bce-loss'),
])
def test_bad_loss_command_lines_are_usage_errors_before_any_work(tmp_path, capsys, argv, message):
    args = train.parse_args([*DIGITS, *argv, '--output', str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        train.check_args(args, train.get_args_parser())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('train.py: error: ') and re.search(message, err[-1]), err[-1]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('argv', [['--checkpoint-metric', 'eval_ece'], ['--checkpoint-metric', 'test_nll']])
def test_checkpoint_metric_never_names_the_evaluation_or_test_split(capsys, argv):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert "invalid choice" in capsys.readouterr().err


def test_soft_target_losses_train_with_mixup_and_mixup_leaves_smoothing_to_the_loss(tmp_path):
    args = train.parse_args([*DIGITS, '--loss', 'asym-cyclical', '--mixup', '0.8', '--smoothing', '0.2'])
    mixup = train.build_mixup(args, 10)
    assert mixup.label_smoothing == 0.0  # the loss applies eps (0.2) to hard and mixed targets alike
    assert train.build_train_criterion(args, 3, True).eps == 0.2
    timm_args = train.parse_args([*DIGITS, '--mixup', '0.8', '--smoothing', '0.2'])
    assert train.build_mixup(timm_args, 10).label_smoothing == 0.2  # timm's own losses: timm's convention
    soft = next(n for n in SOFT_TARGET_LOSSES)
    _, run_dir = _run(tmp_path, *DIGITS, '--epochs', '1', '-b', '64', '--train_size', '128', '--loss', soft,
                      '--mixup', '0.8', '--mixup-prob', '0.5')
    assert np.isfinite(float(_summary(run_dir)[0]['train_loss']))


def test_holdout_split_is_stratified_disjoint_and_fixed_by_the_seed():
    targets = DigitsDataset('train').targets
    train_pos, held = holdout_split(targets, 300, seed=42)
    assert len(held) == 300 and len(train_pos) == len(targets) - 300
    assert not set(train_pos) & set(held) and set(train_pos) | set(held) == set(range(len(targets)))
    counts = np.bincount(targets[held], minlength=10)
    expected = np.bincount(targets, minlength=10) * 300 / len(targets)
    assert np.all(np.abs(counts - expected) < 1) and counts.sum() == 300  # each class its share
    again, held_again = holdout_split(targets, 300, seed=42)
    assert np.array_equal(held, held_again) and np.array_equal(train_pos, again)
    assert not np.array_equal(holdout_split(targets, 300, seed=43)[1], held)
    # Tiny classes keep one training image each.
    tiny = np.array([0] * 3 + [1] * 2 + [2] * 50)
    tr, ho = holdout_split(tiny, 52, seed=0)
    assert sorted(set(tiny[tr])) == [0, 1, 2] and len(ho) == 52
    for bad in (0, 53, 2.5, True):
        with pytest.raises(ValueError, match=r'--holdout must be an integer in \[1, 52\]'):
            holdout_split(tiny, bad, seed=0)


def test_holdout_is_carved_from_training_with_eval_transforms(tmp_path):
    args = train.parse_args([*DIGITS, '--train_size', '200', '--train-size-mode', 'stratified', '--holdout', '50'])
    proc = train.ProcessInfo(device=torch.device('cpu'))
    dataset_train, _, num_classes = train.load_datasets(args, True)
    reduced, held = train.carve_holdout(args, dataset_train, num_classes, proc)
    assert len(reduced) == 150 and len(held) == 50
    assert not set(reduced.indices) & set(held.indices) and set(reduced.indices) | set(held.indices) == \
        set(dataset_train.indices)
    assert held.dataset is not reduced.dataset  # its own dataset instance: the loaders' transforms differ
    ctx, loader_train, _, _ = train.build_context(args, proc)
    assert ctx.holdout_size == 50 and len(ctx.loader_holdout.dataset) == 50
    eval_transform = repr(ctx.loader_holdout.dataset.transform)
    assert 'RandomResizedCrop' not in eval_transform and 'RandomResizedCrop' in repr(loader_train.dataset.transform)


def test_trim_jsonl_drops_later_epochs_and_torn_lines(tmp_path):
    path = tmp_path / 'bins.jsonl'
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert trim_jsonl(path, lambda r: r['epoch'] < 2) == 2
    assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'
    assert trim_jsonl(tmp_path / 'none.jsonl', lambda r: True) == 0


ADAFOCAL_ARGS = [*DIGITS, '--epochs', '3', '-b', '32', '--train_size', '96', '--train-size-mode', 'stratified',
                 '--loss', 'adafocal', '--holdout', '32', '--checkpoint-metric', 'holdout_ece']


def _adafocal_command(output: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / 'train.py'), *ADAFOCAL_ARGS, '--output', str(output), '--experiment',
            'run', *extra]


def _bins(run_dir: Path) -> list[dict]:
    path = run_dir / 'adafocal_bins.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_adafocal_holdout_run_writes_bin_lines_and_resumes_exactly_after_sigkill(tmp_path):
    full_out, killed_out = tmp_path / 'full', tmp_path / 'killed'
    full = subprocess.Popen(_adafocal_command(full_out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    # Kill -9 at a fixed point (an event, not a time): just before the second checkpoint save, so the first
    # checkpoint is on disk and epoch 1 has trained (tests/kill_at.py runs train.py and kills at that call).
    victim_command = [sys.executable, str(REPO_ROOT / 'tests' / 'kill_at.py'),
                      'cfl_timm.training.checkpoint:AtomicCheckpointSaver.save_checkpoint', '2', '--',
                      *_adafocal_command(killed_out)[2:]]
    victim = subprocess.run(victim_command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, timeout=600)
    assert victim.returncode == -signal.SIGKILL, victim.stderr[-3000:]
    assert 1 <= len(_bins(killed_out / 'run')) < 3

    resumed = subprocess.run(_adafocal_command(killed_out, '--resume', 'auto'), env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, full_err = full.communicate(timeout=600)
    assert full.returncode == 0, full_err.decode()[-3000:]

    # One line per epoch (no duplicate past the checkpoint), equal to the uninterrupted run's.
    full_bins, killed_bins = _bins(full_out / 'run'), _bins(killed_out / 'run')
    assert [b['epoch'] for b in full_bins] == [0, 1, 2] == [b['epoch'] for b in killed_bins]
    assert full_bins == killed_bins
    a = torch.load(full_out / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)
    b = torch.load(killed_out / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)
    state_a, state_b = a['task_state']['criterion'], b['task_state']['criterion']
    assert state_a.keys() == state_b.keys() and any('gamma' in k for k in state_a)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key  # identical gammas, edges and update count
    for key, value in a['state_dict'].items():
        torch.testing.assert_close(value, b['state_dict'][key], rtol=0, atol=1e-6, msg=key)
    rows_a, rows_b = _summary(full_out / 'run'), _summary(killed_out / 'run')
    assert [r['holdout_ece'] for r in rows_a] == [r['holdout_ece'] for r in rows_b]
    assert all(r['holdout_ece'] and r['holdout_nll'] and r['holdout_top1'] for r in rows_a)
    # The best checkpoint was selected on the held-out ECE (lower is better).
    best = min(range(3), key=lambda e: float(rows_a[e]['holdout_ece']))
    best_checkpoint = torch.load(full_out / 'run' / 'model_best.pth.tar', map_location='cpu', weights_only=False)
    assert best_checkpoint['epoch'] == best and best_checkpoint['metric'] == pytest.approx(
        float(rows_a[best]['holdout_ece']))


def test_two_gloo_ranks_end_with_identical_adafocal_state(tmp_path):
    command = [str(REPO_ROOT / 'distributed_train.sh'), '2', *DIGITS, '--epochs', '2', '-b', '16',
               '--train_size', '120', '--train-size-mode', 'stratified', '--loss', 'adafocal', '--holdout', '61',
               '--output', str(tmp_path), '--experiment', 'ddp']
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, every_rank_log(result.stderr)
    # Every epoch each rank gathers the whole held-out split, updates, then the ranks compare their full loss
    # state bit for bit (train.py raises if they differ).
    assert result.stderr.count('adafocal state identical on 2 ranks') == 2, result.stderr[-3000:]
    assert [b['epoch'] for b in _bins(tmp_path / 'ddp')] == [0, 1]
    rows = _summary(tmp_path / 'ddp')
    # The held-out metrics cover all 61 images once (odd: one rank predicts 31, the other 30, no padding).
    checkpoint = torch.load(tmp_path / 'ddp' / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert int(checkpoint['task_state']['criterion']['num_updates']) == 2
    top1 = float(rows[-1]['holdout_top1'])
    assert round(top1 * 61 / 100) == pytest.approx(top1 * 61 / 100, abs=1e-6)


def test_grad_scaler_skips_and_counts_a_non_finite_step(tmp_path, monkeypatch, caplog):
    """A float16 overflow under the scaler, simulated on CPU: the scaler's found-inf path (CPU GradScaler) skips
    the step, train.py counts it in the log and in summary.csv, and training goes on."""
    caplog.set_level('INFO')
    monkeypatch.setattr(train, 'resolve_amp', lambda args, device: (None, True))  # the scaler path, on CPU
    # The second training batch overflows (the hook bench/gpu_check.sh uses on CUDA).
    monkeypatch.setattr(train, 'build_model', gpu_check.overflowing_build_model(train.build_model))
    _, run_dir = _run(tmp_path, *DIGITS, '--epochs', '2', '-b', '32', '--train_size', '128', '--loss',
                      'asym-cyclical', '--gamma-hc', '3', '--gamma-pos', '2')
    rows = _summary(run_dir)
    assert [r['skipped_steps'] for r in rows] == ['1', '0']
    assert 'the grad scaler skipped 1 optimizer step(s) with non-finite gradients' in caplog.text
    assert all(np.isfinite(float(r['train_loss'])) or r['epoch'] == '0' for r in rows)
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert all(torch.isfinite(v).all() for v in checkpoint['state_dict'].values() if v.is_floating_point())
    assert checkpoint['amp_scaler']['scale'] < 65536.0  # backed off once


def test_adafocal_per_batch_updates_every_k_optimizer_updates(tmp_path):
    _, run_dir = _run(tmp_path, *DIGITS, '--epochs', '2', '-b', '32', '--train_size', '128', '--loss', 'adafocal',
                      '--holdout', '40', '--adafocal-update-every', '2')
    bins = _bins(run_dir)  # 3 updates per epoch (88 training images, batches of 32): one re-validation each
    assert [(b['epoch'], b['batch']) for b in bins] == [(0, 2), (1, 2)]
    assert [b['update'] for b in bins] == [1, 2]
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert int(checkpoint['task_state']['criterion']['num_updates']) == 2


@pytest.mark.parametrize('first, second, message', [
    (['--loss', 'asym-cyclical'], ['--loss', 'ce'], r"holds training-loss state \['_extra_state'\] but this run's "
                                                    r"loss is LabelSmoothingCrossEntropy; resume with the loss flags"),
    (['--loss', 'ce'], ['--loss', 'asym-cyclical'], r"holds training-loss state \[\] but this run's loss is "
                                                    r"CyclicalFocalLoss"),
    (['--loss', 'adafocal', '--holdout', '30'], ['--loss', 'adafocal', '--holdout', '30', '--adafocal-bins', '5'],
     r"training-loss state does not fit: this run's loss is AdaFocalLoss"),
])
def test_resume_with_other_loss_flags_is_a_clear_error(tmp_path, first, second, message):
    base = [*DIGITS, '-b', '64', '--train_size', '96']
    _run(tmp_path, *base, '--epochs', '1', *first)
    # The changed loss flags are refused first, listed; allowed, the loss state itself does not fit.
    changed = train.parse_args([*base, '--epochs', '2', *second, '--resume', 'auto', '--output', str(tmp_path),
                                '--experiment', 'run'])
    with pytest.raises(ValueError, match='was trained with other settings, and they change its training trajectory'):
        train.check_args(changed)
    with pytest.raises(ValueError, match=message):
        _run(tmp_path, *base, '--epochs', '2', *second, '--resume', 'auto', '--allow-changed-args')
