"""Two torchrun processes on CPU (gloo) through distributed_train.sh: training completes, each rank trains on
its disjoint share of the subset, and metrics / BN statistics are reduced across ranks."""
import csv
import json
import os
import subprocess
from pathlib import Path

import torch
from timm.data import create_loader, resolve_data_config
from timm.models import create_model

from cfl_timm.data import DigitsDataset, class_counts, stratified_indices

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_two_process_cpu_run_shards_the_subset(tmp_path):
    train_size = 300
    command = [
        str(REPO_ROOT / 'distributed_train.sh'), '2', '--dataset', 'sklearn/digits', '--model', 'test_resnet',
        '--img-size', '32', '-b', '32', '-j', '0', '--epochs', '2', '--warmup-epochs', '0', '--lr', '0.05',
        '--train_size', str(train_size), '--train-size-mode', 'stratified', '--focal-loss', 'asym-cyclical',
        '--wd-min', '1e-4', '--T-min', '0.5', '--clip-min', '1', '--dist-bn', 'reduce', '--log-shard-indices',
        '--output', str(tmp_path), '--experiment', 'ddp', '--log-interval', '1000']
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': python_path}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'Process 1 of 2, device cpu (backend gloo)' in result.stderr

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

    # Metrics were reduced over both ranks: the logged top-1 is the whole validation set's (355 images, each
    # rank 178 with one padded duplicate), as evaluated here in one process from the saved weights.
    model = create_model('test_resnet', num_classes=10)
    model.load_state_dict(checkpoint['state_dict'])
    config = resolve_data_config({'img_size': 32}, model=model)
    loader = create_loader(DigitsDataset('val'), input_size=config['input_size'], batch_size=64,
                           interpolation=config['interpolation'], mean=config['mean'], std=config['std'],
                           crop_pct=config['crop_pct'], num_workers=0, device=torch.device('cpu'))
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    logged = float(rows[-1]['eval_top1'])
    assert abs(logged - 100 * correct / 355) <= 100 / 356 + 1e-6
