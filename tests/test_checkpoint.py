"""Crash-safe checkpoints: a real SIGKILL during the checkpoint write leaves a temp file that the next start
removes; run files keep the user's umask; resume errors are clear. (A crash at every file operation of an epoch's
save: tests/test_epoch_record.py.)"""
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from cfl_timm.files import atomic_write_text, is_temp_file
from cfl_timm.training import checkpoint as ckpt

REPO_ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
ARGS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-b', '32', '-j', '0',
        '--train_size', '64', '--epochs', str(EPOCHS), '--lr', '0.05', '--warmup-epochs', '0', '--focal_loss',
        'asym-cyclical', '--eval-metric', 'loss', '--log-interval', '1000', '--experiment', 'run']


def _train(output: Path, *extra: str) -> dict:
    return train.main(train.parse_args([*ARGS, '--output', str(output), *extra]))


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread per test


def _last_state(run_dir: Path) -> dict:
    return torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)


def test_sigkill_during_the_checkpoint_write_then_resume_auto(tmp_path):
    """A real process SIGKILLed in the middle of writing the checkpoint of epoch 1: its temp file is open (created,
    nothing written: the kill comes at the second call of torch.save, which fills it) and never renamed."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)}
    command = [sys.executable, str(REPO_ROOT / 'tests' / 'kill_at.py'), 'torch:save', '2', '--', *ARGS,
               '--output', str(tmp_path)]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / 'run'
    leftovers = [p.name for p in run_dir.iterdir() if is_temp_file(p)]
    assert len(leftovers) == 1 and leftovers[0].startswith('.tmp.pth.tar.')
    assert ckpt.checkpoint_epoch(run_dir / 'last.pth.tar') == 0

    resumed = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), *ARGS, '--output', str(tmp_path),
                              '--resume', 'auto'], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f'removed the partial file {leftovers[0]}' in resumed.stderr
    assert "Resumed from" in resumed.stderr and '(epoch 0)' in resumed.stderr
    assert not [p for p in run_dir.iterdir() if is_temp_file(p)]
    assert ckpt.checkpoint_epoch(run_dir / 'last.pth.tar') == EPOCHS - 1


def test_run_files_keep_the_users_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        _train(tmp_path, '--epochs', '1')
        atomic_write_text(tmp_path / 'new.txt', 'x')
    finally:
        os.umask(previous)
    run_dir = tmp_path / 'run'
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run_dir.iterdir()}
    assert {'args.yaml', 'summary.csv', 'last.pth.tar', 'checkpoint-0.pth.tar', 'model_best.pth.tar'} <= set(modes)
    assert set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE((tmp_path / 'new.txt').stat().st_mode) == 0o640
    # A replaced file keeps the mode it had.
    os.chmod(tmp_path / 'new.txt', 0o600)
    atomic_write_text(tmp_path / 'new.txt', 'y')
    assert stat.S_IMODE((tmp_path / 'new.txt').stat().st_mode) == 0o600
    assert (tmp_path / 'new.txt').read_text() == 'y'


def test_resume_with_a_schedule_the_checkpoint_lacked_and_without_the_loss_flags(tmp_path):
    # Saved without --wd_min: resuming with the cyclical weight decay switched on now works (no bare KeyError).
    _train(tmp_path, '--epochs', '1')
    # Both settings change the trajectory: refused, listing them, unless --allow-changed-args is given.
    with pytest.raises(ValueError, match=r'--epochs 1 -> 2, --wd-min 0.0 -> 0.0001\. Repeat its settings, or pass '
                                         r'--allow-changed-args'):
        _train(tmp_path, '--epochs', '2', '--wd_min', '1e-4', '--resume', 'auto')
    result = _train(tmp_path, '--epochs', '2', '--wd_min', '1e-4', '--resume', 'auto', '--allow-changed-args')
    assert result['eval_metrics'] and ckpt.checkpoint_epoch(tmp_path / 'run' / 'last.pth.tar') == 1
    groups = _last_state(tmp_path / 'run')['optimizer']['param_groups']
    assert sorted(g['weight_decay'] for g in groups)[-1] > 0
    # A focal-loss checkpoint resumed without repeating the loss flags: a clear message naming them.
    argv = [a for a in ARGS if a not in ('--focal_loss', 'asym-cyclical')]
    with pytest.raises(ValueError, match=r"holds training-loss state \['_extra_state'\] but this run's loss is "
                                         r'LabelSmoothingCrossEntropy; resume with the loss flags'):
        train.main(train.parse_args([*argv, '--output', str(tmp_path), '--epochs', '3', '--resume', 'auto',
                                     '--allow-changed-args']))


def test_the_checkpoint_list_is_logged_once_at_the_end_and_per_save_only_at_debug(tmp_path, caplog):
    caplog.set_level('INFO')
    _train(tmp_path, '--checkpoint-hist', '2')
    infos = [r for r in caplog.records if r.getMessage().startswith('Current checkpoints:')]
    assert len(infos) == 1, [r.name for r in infos]  # timm's saver would log it after each of the 3 epochs
    assert infos[0].name == train._logger.name  # train.py's summary, not timm's per-save line
    assert infos[0].getMessage().count('checkpoint-') == 2  # the two kept epochs, best first
    caplog.clear()
    caplog.set_level('DEBUG', logger=ckpt.__name__)
    _train(tmp_path / 'again')
    debugs = [r for r in caplog.records if r.getMessage().startswith('Current checkpoints:')
              and r.levelname == 'DEBUG']
    assert len(debugs) == EPOCHS and all(r.name == ckpt.__name__ for r in debugs)
