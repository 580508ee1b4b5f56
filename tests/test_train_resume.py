"""A training process killed with SIGKILL mid-run and resumed ends exactly where an uninterrupted run ends."""
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
EPOCHS, COOLDOWN = 7, 1

# Everything stateful is on: cyclical loss and all three schedules, EMA, momentum, Mixup (numpy RNG), random
# crops/flips (torch and python RNG), random erasing, drop path, a cosine LR with warmup.
ARGS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-b', '32',
        '--train_size', '192', '--train-size-mode', 'stratified', '--epochs', str(EPOCHS), '--cooldown-epochs',
        str(COOLDOWN), '--lr', '0.05', '--warmup-epochs', '1', '--sched', 'cosine', '--focal_loss', 'asym-cyclical',
        '--gamma_hc', '3', '--gamma_pos', '2', '--cyclical_factor', '2', '--wd_min', '1e-4', '--T_min', '0.5',
        '--clip_min', '1', '--clip_max', '10', '--model-ema', '--model-ema-decay', '0.9', '--mixup', '0.2',
        '--reprob', '0.25', '--drop-path', '0.05', '--scale', '0.6', '1.0', '--log-interval', '1000']


UPDATES_PER_EPOCH = 192 // 32
KILL_AT_UPDATE = 2 * UPDATES_PER_EPOCH + 3  # mid-way through epoch 2, between its updates


def _command(output: Path, workers: int, *extra: str, kill_at_update: int = 0) -> list[str]:
    # tests/kill_at.py runs train.py and SIGKILLs it just before the given optimizer update (0: never).
    return [sys.executable, str(REPO_ROOT / 'tests' / 'kill_at.py'), 'torch.optim:SGD.step', str(kill_at_update),
            '--', *ARGS, '-j', str(workers), '--output', str(output), '--experiment', 'run', *extra]


def _env() -> dict:
    # One thread in every run: CPU kernels then reduce in one fixed order.
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': python_path}


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / 'summary.csv'
    if not path.exists():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _assert_rows_close(rows_a, rows_b):
    assert len(rows_a) == len(rows_b) == EPOCHS + COOLDOWN
    for a, b in zip(rows_a, rows_b):
        assert a.keys() == b.keys()
        for key in a.keys() - {'epoch_time'}:  # wall seconds: the one column that differs between equal runs
            if a[key] == '' or b[key] == '':
                assert a[key] == b[key], key
            else:
                assert abs(float(a[key]) - float(b[key])) <= 1e-6, (a['epoch'], key, a[key], b[key])


def _assert_state_close(state_a: dict, state_b: dict):
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        if torch.is_tensor(value) and value.is_floating_point():
            torch.testing.assert_close(value, state_b[key], rtol=0, atol=1e-6, msg=key)
        elif torch.is_tensor(value):
            assert torch.equal(value, state_b[key]), key


# -j 2: loader workers that persist across epochs, their random streams restarted each epoch
# (cfl_timm.data.worker_seeding); the resumed run starts them afresh.
@pytest.mark.parametrize('workers', [0, 2])
def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path, workers):
    full_out, killed_out = tmp_path / 'full', tmp_path / 'killed'
    full = subprocess.Popen(_command(full_out, workers), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # Killed at a fixed point of the run (an event, not a time): two epochs are on disk, the third is half done.
    victim = subprocess.run(_command(killed_out, workers, kill_at_update=KILL_AT_UPDATE), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    assert victim.returncode == -signal.SIGKILL
    assert len(_rows(killed_out / 'run')) == 2
    assert torch.load(killed_out / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)['epoch'] == 1

    resumed = subprocess.run(_command(killed_out, workers, '--resume', str(killed_out / 'run' / 'last.pth.tar')),
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, full_err = full.communicate(timeout=900)
    assert full.returncode == 0, full_err.decode()[-3000:]

    _assert_rows_close(_rows(full_out / 'run'), _rows(killed_out / 'run'))
    a = torch.load(full_out / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)
    b = torch.load(killed_out / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert a['epoch'] == b['epoch'] == EPOCHS + COOLDOWN - 1
    _assert_state_close(a['state_dict'], b['state_dict'])
    _assert_state_close(a['state_dict_ema'], b['state_dict_ema'])
    assert a['task_state']['criterion'].keys() == b['task_state']['criterion'].keys()
    for group_a, group_b in zip(a['optimizer']['param_groups'], b['optimizer']['param_groups']):
        assert abs(group_a['lr'] - group_b['lr']) <= 1e-12
        assert abs(group_a['weight_decay'] - group_b['weight_decay']) <= 1e-12
    for key, state in a['optimizer']['state'].items():
        torch.testing.assert_close(state['momentum_buffer'], b['optimizer']['state'][key]['momentum_buffer'],
                                   rtol=0, atol=1e-6)
    # The checkpoint history continued across the kill (checkpoint-hist default 10 keeps every epoch here).
    assert sorted(p.name for p in (killed_out / 'run').glob('checkpoint-*.pth.tar')) == \
        sorted(p.name for p in (full_out / 'run').glob('checkpoint-*.pth.tar'))
