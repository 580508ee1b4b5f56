"""Training-time evidence (cfl_timm.training.evidence and train.py's per-epoch columns and pictures).

The evidence terms are computed from the logits and the loss's public hyper-parameters only, so they are checked
against the loss itself: per sample they recombine into the loss value (focal + lambda * w * B for the Brier
family, the focal term alone for the focal losses), on the spec's input T1 (calibration_losses.md) and on random
float64 logits. A real train.py run on digits then records them per epoch, with train_top1, epoch_time and the
held-out / temperature-scaled columns, and draws its pictures (or not, with --no-plots).
"""
import csv
import logging
import math

import pytest
import torch
import torch.nn.functional as F

import train
from cfl_timm import create_loss
from cfl_timm.plotting import plot_run
from cfl_timm.training.evidence import TrainingEvidence, evidence_columns, loss_evidence, recombine_loss

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread per test

T1_LOGITS = torch.tensor([[3, 1, .5, -1], [1, 2, .5, -.5], [.2, 1.5, .3, -2], [0, 0, 0, 0]], dtype=torch.float64)
T1_TARGET = torch.tensor([0, 0, 3, 1])
# (factory name, keywords, evidence terms)
LOSSES = [
    ('fcl-ungated', {}, ('focal', 'brier', 'gate', 'gated_brier', 'p_t')),
    ('safcl', {}, ('focal', 'brier', 'gate', 'gated_brier', 'p_t')),
    ('safcl-nodetach', {'fcl_lambda': 0.5, 'safcl_gamma_cal': 1.5}, ('focal', 'brier', 'gate', 'gated_brier', 'p_t')),
    ('flsd', {}, ('focal', 'p_t')),
    ('dual-focal', {}, ('focal', 'p_t')),
    ('adafocal', {}, ('focal', 'p_t')),
    ('sym', {'gamma': 3.0}, ('focal', 'p_t')),
]
DIGITS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-j', '0',
          '--warmup-epochs', '0', '--log-interval', '1000', '-b', '32', '--train-size-mode', 'stratified']


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
@pytest.mark.parametrize('name,kwargs,keys', LOSSES, ids=[row[0] for row in LOSSES])
def test_evidence_terms_recombine_into_the_loss(name, kwargs, keys, reduction):
    criterion = create_loss(name=name, reduction=reduction, **kwargs)
    generator = torch.Generator().manual_seed(0)
    logits = torch.cat([T1_LOGITS, 3 * torch.randn(60, 4, generator=generator, dtype=torch.float64)])
    target = torch.cat([T1_TARGET, torch.randint(0, 4, (60,), generator=generator)])
    evidence = loss_evidence(criterion, logits, target)
    assert tuple(evidence) == keys and evidence_columns(criterion) == tuple(f'evidence_{k}' for k in keys)
    torch.testing.assert_close(recombine_loss(criterion, evidence), criterion(logits, target), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(evidence['p_t'], F.softmax(logits, 1)[torch.arange(64), target])


def test_safcl_terms_on_t1_are_the_specs_values():
    # calibration_losses.md 1.1 and 1.10: B = [.053018 .986020 1.415551 .75]; gate (1 - p_y)^2.
    evidence = loss_evidence(create_loss(name='safcl'), T1_LOGITS, T1_TARGET)
    torch.testing.assert_close(evidence['brier'], torch.tensor([.053018, .986020, 1.415551, .75], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    p_t = torch.tensor([.809234, .219880, .018827, .25], dtype=torch.float64)
    torch.testing.assert_close(evidence['gate'], (1 - p_t) ** 2, atol=1e-6, rtol=0)
    # Per-sample SA-FCL value [.009632 1.521892 5.187032 1.201666] = focal + w * B (lambda = 1).
    torch.testing.assert_close(evidence['focal'] + evidence['gated_brier'],
                               torch.tensor([.009632, 1.521892, 5.187032, 1.201666], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert loss_evidence(create_loss(name='fcl-ungated'), T1_LOGITS, T1_TARGET)['gate'].eq(1).all()


def test_no_evidence_for_other_losses_or_soft_targets():
    soft = F.one_hot(T1_TARGET, 4).double()
    assert loss_evidence(create_loss(name='sym', gamma=2.0), T1_LOGITS, soft) is None
    assert loss_evidence(create_loss(name='sym', gamma=2.0, smoothing=0.1), T1_LOGITS, T1_TARGET) is None
    assert loss_evidence(create_loss(name='mmce-m'), T1_LOGITS, T1_TARGET) is None
    assert loss_evidence(torch.nn.CrossEntropyLoss(), T1_LOGITS, T1_TARGET) is None
    assert evidence_columns(torch.nn.CrossEntropyLoss()) == ()


def test_recorder_hook_means_over_batches():
    criterion = create_loss(name='safcl')
    recorder = TrainingEvidence(criterion, torch.device('cpu'))
    assert recorder.columns() == ('train_top1', *evidence_columns(criterion))
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 5, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 5, (50,), generator=generator)
    losses = [criterion(logits[:20], target[:20]), criterion(logits[20:], target[20:])]
    values = recorder.compute()
    assert values['train_top1'] == pytest.approx(100 * (logits.argmax(1) == target).double().mean().item())
    full = loss_evidence(criterion, logits, target)
    for key, column in zip(recorder.keys, recorder.columns()[1:]):
        assert values[column] == pytest.approx(full[key].mean().item(), rel=1e-12)
    # The sample-weighted mean of the batch losses is focal + lambda * w * B of the epoch.
    epoch_loss = (losses[0] * 20 + losses[1] * 30).item() / 50
    assert values['evidence_focal'] + values['evidence_gated_brier'] == pytest.approx(epoch_loss, rel=1e-12)
    recorder.reset()
    assert recorder.compute() == dict.fromkeys(recorder.columns())  # nothing counted: None, not 0
    recorder.close()
    criterion(logits, target)
    assert recorder.compute()['train_top1'] is None  # the hook is gone


def test_recorder_skips_soft_targets():
    criterion = torch.nn.CrossEntropyLoss()
    recorder = TrainingEvidence(criterion, torch.device('cpu'))
    criterion(T1_LOGITS, F.one_hot(T1_TARGET, 4).double())  # Mixup / CutMix targets
    assert recorder.compute() == {'train_top1': None}
    criterion(T1_LOGITS, T1_TARGET)
    assert recorder.compute() == {'train_top1': 25.0}  # only row 1 is right (row 4's tie resolves to class 0)


def _run(tmp_path, argv, name='run'):
    args = train.parse_args([*argv, '--output', str(tmp_path), '--experiment', name])
    train.check_args(args, train.get_args_parser())
    return train.main(args), tmp_path / name


def _summary(run_dir):
    with open(run_dir / 'summary.csv', newline='') as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_run_records_evidence_and_draws_its_pictures(tmp_path, run_pictures):
    argv = [*DIGITS, '--opt', 'adamw', '--lr', '0.01', '--epochs', '2', '--train_size', '320', '--holdout', '60',
            '--loss', 'safcl', '--fcl-lambda', '0.5']
    _, run_dir = _run(tmp_path, argv)
    columns, rows = _summary(run_dir)
    wanted = ['train_top1', 'epoch_time', 'eval_adaptive_ece', 'eval_classwise_ece', 'eval_brier',
              *(f'evidence_{key}' for key in ('focal', 'brier', 'gate', 'gated_brier', 'p_t')),
              *(f'holdout_{key}' for key in ('ece', 'adaptive_ece', 'classwise_ece', 'nll')),
              *(f'eval_{key}_ts' for key in ('ece', 'adaptive_ece', 'classwise_ece', 'nll'))]
    assert set(wanted) <= set(columns) and len(rows) == 2
    assert all(math.isfinite(float(row[c])) for row in rows for c in wanted)
    for row in rows:
        assert 0 <= float(row['train_top1']) <= 100 and float(row['epoch_time']) > 0
        assert 0 <= float(row['evidence_gate']) <= 1 and 0 < float(row['evidence_p_t']) < 1
        # The epoch's terms recombine into its training loss (both are means over the same training samples).
        assert float(row['evidence_focal']) + 0.5 * float(row['evidence_gated_brier']) == pytest.approx(
            float(row['train_loss']), rel=1e-5)
    for name in ('curves.png', 'ece_vs_accuracy.png', 'evidence.png'):
        assert _is_png(run_dir / name), name


def test_run_without_holdout_says_what_it_cannot_record(tmp_path, caplog, run_pictures):
    caplog.set_level(logging.INFO)
    _, run_dir = _run(tmp_path, [*DIGITS, '--epochs', '1', '--train_size', '96', '--no-plots'])
    columns, rows = _summary(run_dir)
    assert len(rows) == 1 and math.isfinite(float(rows[0]['train_top1'])) and float(rows[0]['epoch_time']) > 0
    assert not [c for c in columns if c.startswith(('evidence_', 'holdout_')) or c.endswith('_ts')]
    assert 'No --holdout: the held-out metrics and the temperature-scaled twins (eval_*_ts) are not' in caplog.text
    assert 'has no evidence terms' in caplog.text
    assert not list(run_dir.glob('*.png'))  # --no-plots
    written, skipped = plot_run(run_dir)  # what the run would have drawn: no evidence picture for CE, and why
    assert sorted(p.name for p in written) == ['curves.png', 'ece_vs_accuracy.png']
    assert len(skipped) == 1 and skipped[0].startswith('evidence.png not drawn: no evidence_* values')


def _batch():
    generator = torch.Generator().manual_seed(2)
    return torch.randn(64, 6, generator=generator), torch.randint(0, 6, (64,), generator=generator)


def _two_rank_evidence(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        criterion = create_loss(name='safcl')
        recorder = TrainingEvidence(criterion, torch.device('cpu'))
        logits, target = _batch()
        shard = slice(0, 24) if rank == 0 else slice(24, 64)  # unequal shards: the means are sample-weighted
        criterion(logits[shard], target[shard])
        torch.save(recorder.compute(), f'{out_dir}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_every_rank_reports_the_epoch_over_all_ranks(tmp_path):
    # fork: the children skip re-importing train.py and timm (CPU only, no CUDA state to inherit).
    torch.multiprocessing.start_processes(_two_rank_evidence, args=(str(tmp_path / 'init'), str(tmp_path)),
                                          nprocs=2, start_method='fork')
    results = [torch.load(tmp_path / f'rank{rank}.pt') for rank in range(2)]
    criterion = create_loss(name='safcl')
    recorder = TrainingEvidence(criterion, torch.device('cpu'))
    criterion(*_batch())  # one process, all 64 samples
    expected = recorder.compute()
    assert results[0] == results[1]
    assert results[0] == pytest.approx(expected, rel=1e-12)
