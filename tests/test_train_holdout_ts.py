"""train.py --holdout N: temperature scaling fitted on the held-out split each evaluated epoch, and the evaluation
split's metrics after scaling (summary.csv's holdout_temperature and eval_{nll,ece,adaptive_ece,classwise_ece,
brier}_ts), checked against an independent fit on the reloaded last checkpoint; no such column without --holdout; under
torch.distributed every rank scores with rank 0's T."""
import csv

import pytest
import torch
import torch.nn.functional as F

import train
from cfl_timm.metrics import CalibrationMeter, fit_temperature
from cfl_timm.training import ProcessInfo, evaluate_temperature_scaled, predict

DIGITS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-j', '0',
          '--warmup-epochs', '0', '--log-interval', '1000', '-b', '32', '--train-size-mode', 'stratified']
TS_COLUMNS = ('holdout_temperature', 'eval_nll_ts', 'eval_ece_ts', 'eval_adaptive_ece_ts', 'eval_classwise_ece_ts',
              'eval_brier_ts')


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread per test


def _run(tmp_path, argv):
    args = train.parse_args([*argv, '--output', str(tmp_path), '--experiment', 'run'])
    train.check_args(args, train.get_args_parser())
    return train.main(args), tmp_path / 'run'


def _summary(run_dir):
    with open(run_dir / 'summary.csv', newline='') as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_holdout_fits_the_temperature_and_scores_the_eval_logits_divided_by_it(tmp_path):
    # AdamW for 3 epochs on 420 images: the network learns (about 45% top-1), so T is far from 1.
    argv = [*DIGITS, '--opt', 'adamw', '--lr', '0.01', '--epochs', '3', '--train_size', '480', '--holdout', '60']
    result, run_dir = _run(tmp_path, argv)
    columns, rows = _summary(run_dir)
    assert set(TS_COLUMNS) <= set(columns) and len(rows) == 3
    assert all(float(row[c]) > 0 for row in rows for c in TS_COLUMNS)
    last = rows[-1]
    assert result['eval_metrics']['holdout_temperature'] == float(last['holdout_temperature'])

    # Reload the last checkpoint and rebuild both splits exactly as train.py does (same seed, same subsets).
    args = train.parse_args(argv)
    ctx, _, loader_eval, _ = train.build_context(args, ProcessInfo(device=torch.device('cpu')))
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert checkpoint['epoch'] == 2
    ctx.model.load_state_dict(checkpoint['state_dict'])
    holdout_logits, holdout_target = predict(ctx.model, ctx.loader_holdout, device=torch.device('cpu'))
    eval_logits, eval_target = predict(ctx.model, loader_eval, device=torch.device('cpu'))
    assert len(holdout_target) == 60
    # The held-out split and the weights are the ones train.py evaluated.
    assert (holdout_logits.argmax(1) == holdout_target).double().mean().item() * 100 == pytest.approx(
        float(last['holdout_top1']), abs=1e-6)

    temperature = fit_temperature(holdout_logits, holdout_target, split='holdout')
    assert float(last['holdout_temperature']) == pytest.approx(temperature, abs=1e-4)
    assert temperature != pytest.approx(1.0, abs=0.05)  # a real fit, not the identity
    # eval_nll_ts is the NLL of the evaluation logits divided by T (float64, independent of CalibrationMeter).
    nll_ts = F.cross_entropy(eval_logits.double() / temperature, eval_target).item()
    assert float(last['eval_nll_ts']) == pytest.approx(nll_ts, abs=1e-4)
    assert float(last['eval_nll_ts']) != pytest.approx(float(last['eval_nll']), abs=0.01)
    probs = torch.softmax(eval_logits.double() / temperature, 1)
    brier = (probs - F.one_hot(eval_target, probs.shape[1]).double()).pow(2).sum(1).mean().item()
    assert float(last['eval_brier_ts']) == pytest.approx(brier, abs=1e-4)
    meter = CalibrationMeter(probs.shape[1], num_bins=15)
    meter.update(eval_logits / temperature, eval_target)
    scaled_metrics = meter.compute()
    for key in ('ece', 'adaptive_ece', 'classwise_ece'):
        assert float(last[f'eval_{key}_ts']) == pytest.approx(scaled_metrics[key], abs=1e-4)


def test_temperature_scaled_scoring_refuses_the_test_split():
    logits, target = torch.randn(20, 3, dtype=torch.float64), torch.arange(20) % 3
    with pytest.raises(ValueError, match="Refusing to fit the temperature on the 'test' split"):
        evaluate_temperature_scaled(logits, target, logits, target, 3, split='test')
    temperature, scaled = evaluate_temperature_scaled(2 * logits, target, logits, target, 3, split='holdout')
    assert temperature == pytest.approx(fit_temperature(2 * logits, target))
    assert scaled.metrics['nll'] == pytest.approx(F.cross_entropy(logits / temperature, target).item(), abs=1e-6)


def test_no_temperature_columns_without_holdout(tmp_path):
    result, run_dir = _run(tmp_path, [*DIGITS, '--epochs', '1', '--train_size', '96'])
    columns, rows = _summary(run_dir)
    assert len(rows) == 1 and 'eval_nll' in columns
    assert not set(TS_COLUMNS) & set(columns) and not set(TS_COLUMNS) & set(result['eval_metrics'])


def _two_rank_fit(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        generator = torch.Generator().manual_seed(0)
        logits, target = torch.randn(64, 4, generator=generator), torch.arange(64) % 4
        logits[torch.arange(64), target] += 2.0
        # Rank 1 holds different held-out logits on purpose: every rank must still score with rank 0's T.
        temperature, scaled = evaluate_temperature_scaled((3.0 + rank) * logits, target, logits, target, 4,
                                                          split='holdout')
        torch.save({'temperature': temperature, 'nll': scaled.metrics['nll']}, f'{out_dir}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_every_rank_scores_with_rank_zeros_temperature(tmp_path):
    # fork: the children skip re-importing train.py and timm (CPU only, no CUDA state to inherit).
    torch.multiprocessing.start_processes(_two_rank_fit, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=2,
                                          start_method='fork')
    results = [torch.load(tmp_path / f'rank{rank}.pt') for rank in range(2)]
    generator = torch.Generator().manual_seed(0)
    logits, target = torch.randn(64, 4, generator=generator), torch.arange(64) % 4
    logits[torch.arange(64), target] += 2.0
    expected = fit_temperature(3.0 * logits, target)
    assert fit_temperature(4.0 * logits, target) != pytest.approx(expected, rel=1e-3)  # rank 1 alone would differ
    assert results[0] == results[1] and results[0]['temperature'] == expected
