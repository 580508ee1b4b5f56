"""Smooth ECE against relplot and its behaviour in N, OOD AUROC, the reliability PNG, and CalibrationMeter's
distributed reduction across real gloo processes (equal to one process seeing everything)."""
import math
import os

import numpy as np
import pytest
import relplot
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import roc_auc_score

from cfl_timm.metrics import CalibrationMeter, auroc, msp_auroc, smooth_ece
from cfl_timm.plotting import plot_reliability_diagrams


def calibrated_sample(count: int, seed: int, power: float = 1.0):
    """Confidences uniform on [0.1, 1]; correct with probability c ** power (power 1: perfectly calibrated)."""
    generator = np.random.default_rng(seed)
    confidence = generator.uniform(0.1, 1.0, count)
    correct = (generator.uniform(size=count) < confidence ** power).astype(np.float64)
    return confidence, correct


@pytest.mark.parametrize('count, power', [(300, 1.0), (5000, 1.0), (5000, 3.0), (20000, 0.5)])
def test_smooth_ece_matches_relplot(count, power):
    confidence, correct = calibrated_sample(count, seed=count, power=power)
    ours = smooth_ece(torch.from_numpy(confidence), torch.from_numpy(correct))
    assert ours == pytest.approx(float(relplot.smECE(confidence, correct)), abs=1e-3)


def test_smooth_ece_shrinks_with_sample_count_on_calibrated_data():
    values = [np.mean([smooth_ece(*map(torch.from_numpy, calibrated_sample(count, seed))) for seed in range(3)])
              for count in (500, 5000, 50000)]
    assert values[0] > values[1] > values[2]
    assert values[2] < 0.01
    # A miscalibrated predictor keeps its error: smECE stays near the true (kernel-smoothed) gap.
    confidence, correct = calibrated_sample(50000, 7, power=3.0)
    assert smooth_ece(torch.from_numpy(confidence), torch.from_numpy(correct)) > 0.2


def test_smooth_ece_is_its_own_bandwidth_and_zero_on_exact_data():
    confidence, correct = calibrated_sample(2000, 1, power=2.0)
    value, bandwidth = smooth_ece(torch.from_numpy(confidence), torch.from_numpy(correct), return_bandwidth=True)
    assert value == pytest.approx(bandwidth, abs=1e-5)  # fixed point smECE_sigma = sigma
    # Half right at confidence 0.5 exactly: no calibration error at any bandwidth -> the minimum bandwidth.
    value, bandwidth = smooth_ece(torch.full((10,), 0.5), torch.tensor([1.0, 0.0] * 5), return_bandwidth=True)
    assert value < 1e-9 and bandwidth == pytest.approx(1e-3, rel=1e-3)


def test_auroc_known_answers_and_sklearn():
    assert auroc(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2])) == 1.0
    assert auroc(torch.tensor([0.1]), torch.tensor([0.9])) == 0.0
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([0.5])) == 0.5  # ties count half
    generator = torch.Generator().manual_seed(0)
    positive = torch.randint(0, 7, (400,), generator=generator).double()
    negative = torch.randint(0, 5, (300,), generator=generator).double()
    labels = np.r_[np.ones(400), np.zeros(300)]
    assert auroc(positive, negative) == pytest.approx(roc_auc_score(labels, np.r_[positive, negative]), abs=1e-12)
    # MSP: confident in-distribution logits vs flat OOD logits separate perfectly.
    in_logits = torch.eye(4)[torch.arange(40) % 4] * 5
    out_logits = torch.randn(30, 4, generator=generator) * 0.1
    assert msp_auroc(in_logits, out_logits) == 1.0
    with pytest.raises(ValueError, match='at least one'):
        auroc(torch.tensor([]), torch.tensor([0.5]))


def test_reliability_png(tmp_path):
    generator = torch.Generator().manual_seed(3)
    logits, target = torch.randn(500, 5, generator=generator) * 3, torch.randint(0, 5, (500,), generator=generator)
    meter = CalibrationMeter(5, num_bins=10)
    meter.update(logits, target)
    reliability = meter.reliability()
    assert sum(reliability['count']) == 500 and len(reliability['edges']) == 11
    empty = [n == 0 for n in reliability['count']]
    assert all(math.isnan(a) == e for a, e in zip(reliability['accuracy'], empty))
    path = plot_reliability_diagrams([('before', reliability, meter.compute())] * 2, tmp_path / 'r.png')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and path.stat().st_size > 10_000


def _distributed_worker(rank: int, world_size: int, init_file: str, logits, target, queue) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        meter = CalibrationMeter(logits.shape[1], num_bins=10)
        shard = slice(rank * 97, (rank + 1) * 97 if rank + 1 < world_size else None)  # unequal shares
        for start in range(shard.start, shard.stop or len(target), 50):
            stop = min(start + 50, shard.stop or len(target))
            meter.update(logits[start:stop], target[start:stop])
        meter.all_reduce()
        queue.put((rank, meter.compute()))
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_gloo_equals_one_process(tmp_path):
    generator = torch.Generator().manual_seed(5)
    logits, target = torch.randn(250, 6, generator=generator) * 2, torch.randint(0, 6, (250,), generator=generator)
    single = CalibrationMeter(6, num_bins=10)
    single.update(logits, target)
    single.all_reduce()  # not initialised: a no-op
    expected = single.compute()
    context = mp.get_context('spawn')
    queue = context.Queue()
    mp.start_processes(_distributed_worker, args=(2, os.fspath(tmp_path / 'init'), logits, target, queue),
                       nprocs=2, start_method='spawn')
    results = dict(queue.get(timeout=60) for _ in range(2))
    for rank in range(2):
        # The per-sample order differs (rank 0's then rank 1's), so adaptive ECE ties could differ: none here.
        assert results[rank] == pytest.approx(expected, rel=1e-12, abs=1e-14)
