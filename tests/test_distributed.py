"""Two torchrun processes on CPU (gloo) through distributed_train.sh: training completes, each rank trains on
its disjoint share of the subset, and metrics / BN statistics are reduced across ranks."""
import contextlib
import csv
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import every_rank_log
from timm.data import create_loader, resolve_data_config
from timm.models import create_model

from cfl_timm.data import DigitsDataset, class_counts, stratified_indices

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_two_process_cpu_run_shards_the_subset(tmp_path):
    train_size = 300
    command = [
        str(REPO_ROOT / 'distributed_train.sh'), '2', '--dataset', 'sklearn/digits', '--model', 'test_resnet',
        # -j 1: each rank's loader worker persists across the epochs (cfl_timm.data.worker_seeding)
        '--img-size', '32', '-b', '32', '-j', '1', '--epochs', '2', '--warmup-epochs', '0', '--lr', '0.05',
        '--train_size', str(train_size), '--train-size-mode', 'stratified', '--focal-loss', 'asym-cyclical',
        '--wd-min', '1e-4', '--T-min', '0.5', '--clip-min', '1', '--dist-bn', 'reduce', '--log-shard-indices',
        '--output', str(tmp_path), '--experiment', 'ddp', '--log-interval', '1000']
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)
    # The launch's TMPDIR: torchrun's agent logs there, and each loader worker makes its tensor socket there. Not
    # below tmp_path: with xdist that path is too long for a socket (cfl_timm.data.check_worker_socket_dir).
    temp = Path(tempfile.mkdtemp(prefix='launch-'))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': python_path, 'TMPDIR': str(temp)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, every_rank_log(result.stderr)
    assert 'Process 1 of 2, device cpu (backend gloo)' in result.stderr
    # Nothing of the launch is left in the temp folder (torchrun alone leaves a torchelastic_* folder per launch);
    # torch's import makes its compile cache folder there, which is meant to stay.
    assert sorted(p.name for p in temp.iterdir() if not p.name.startswith('torchinductor_')) == []

    run_dir = tmp_path / 'ddp'
    shards = json.loads((run_dir / 'shards.json').read_text())['shards']
    assert len(shards) == 2 and len(shards[0]) == len(shards[1]) == train_size // 2
    assert not set(shards[0]) & set(shards[1])  # disjoint
    expected = stratified_indices(DigitsDataset('train').targets, train_size)
    assert set(shards[0]) | set(shards[1]) == set(expected.tolist())  # complete: exactly the subset
    assert class_counts(DigitsDataset('train').targets[expected]).tolist() == [30] * 10
    assert 'Training subset: 300 images, 10 classes, per class min 30 max 30' in result.stderr

    with open(run_dir / 'summary.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['0', '1']
    for row in rows:
        assert 0 < float(row['eval_nll']) and row['temperature'] and row['weight_decay'] and row['clip_grad']
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert not any(k.startswith('module.') for k in checkpoint['state_dict'])  # saved unwrapped from DDP

    # Exact distributed evaluation: every image of the 355-image validation split counted once (no sampler
    # padding), and every logged metric equal to train.py's own evaluation in one process on the saved weights.
    import train
    from cfl_timm.training import create_eval_loader
    model = create_model('test_resnet', num_classes=10)
    model.load_state_dict(checkpoint['state_dict'])
    config = resolve_data_config({'img_size': 32}, model=model)
    loader = create_eval_loader(DigitsDataset('val'), config, batch_size=32, num_workers=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the two processes ran
    try:
        result = train.validate(model, loader, torch.device('cpu'), contextlib.nullcontext, 10)
    finally:
        torch.set_num_threads(threads)
    assert result.num_samples == 355
    keys = ('loss', 'top1', 'top5', 'nll', 'ece')
    one_process = {key: float(result.metrics[key]) for key in keys}
    logged = {key: float(rows[-1][f'eval_{key}']) for key in keys}
    # Equal up to float32 rounding of the logits (a conv kernel may round an image's logits differently in a
    # batch of other images); the same top-1 / top-5 counts.
    assert logged == pytest.approx(one_process, rel=1e-6, abs=1e-9)
    assert (logged['top1'], logged['top5']) == (one_process['top1'], one_process['top5'])
    correct = logged['top1'] * 355 / 100
    assert abs(correct - round(correct)) < 1e-9  # a count out of 355 (the padded sampler gave counts out of 356)
    with torch.no_grad():
        model.eval()
        plain = create_loader(DigitsDataset('val'), input_size=config['input_size'], batch_size=64,
                              interpolation=config['interpolation'], mean=config['mean'], std=config['std'],
                              crop_pct=config['crop_pct'], num_workers=0, device=torch.device('cpu'))
        assert round(correct) == sum((model(x).argmax(1) == y).sum().item() for x, y in plain)


def test_a_failed_launch_ends_with_the_rank_status_and_no_traceback(tmp_path):
    """A usage error on every rank: distributed_train.sh exits 2 like train.py, with torchrun's table of the failed
    ranks but not the agent's traceback, and leaves nothing in the temp folder."""
    temp = Path(tempfile.mkdtemp(prefix='launch-'))  # short: see the test above
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': python_path, 'TMPDIR': str(temp)}
    command = [str(REPO_ROOT / 'distributed_train.sh'), '2', '--dataset', 'sklearn/digits', '--model', 'test_resnet',
               '--model-kwargs', 'depth=foo', '--output', str(tmp_path / 'out')]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, every_rank_log(result.stderr)
    assert "train.py: error: --model-kwargs depth='foo'" in result.stderr
    assert 'FAILED' in result.stderr and 'Traceback' not in result.stderr
    assert sorted(p.name for p in temp.iterdir() if not p.name.startswith('torchinductor_')) == []
