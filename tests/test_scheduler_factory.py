"""The cyclical schedules and OneCycle through timm's own scheduler factory (cfl.md §2, §4; issue items 13.6, 11.3).

- timm's existing scheduler types give identical values with and without ``import cfl_timm`` (the 'without'
  side in a fresh interpreter);
- a loop of timm's own shape (``create_scheduler_v2`` + ``scheduler_kwargs``, then only ``step`` /
  ``step_update``) moves the loss eta, the weight decay, the temperature and the clip threshold, per epoch and
  per update, on real images (scikit-learn's digits), and resumes from ``state_dict()`` and from timm's
  ``step(start_epoch)``;
- OneCycle against its formula and against ``torch.optim.lr_scheduler.OneCycleLR``, and after a resume.
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm.scheduler
import timm.scheduler.scheduler_factory
import torch
import torch.nn as nn
from sklearn.datasets import load_digits
from timm.optim import create_optimizer_v2
from timm.task import ClassificationTask
from timm.utils import dispatch_clip_grad

import cfl_timm
from cfl_timm import CyclicalScheduler, OneCycleLRScheduler, create_loss, cyclical_eta
from cfl_timm.scheduler import scheduled_clip_args, scheduler_registry

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import timm_schedule_recorder  # noqa: E402  (timm-only helper, also run as a script)

torch.set_num_threads(1)
# timm's factory functions are looked up on timm.scheduler at call time: a name imported from timm before
# ``import cfl_timm`` ran is timm's unwrapped original.


# ---------------------------------------------------------------------------------------------------------------
# Registration: timm's existing behaviour unchanged


def test_wrapped_wherever_timm_holds_the_factory():
    assert cfl_timm.scheduler.scheduler_registry.is_registered()
    for module in (timm.scheduler, timm.scheduler.scheduler_factory):
        assert module.create_scheduler_v2 is scheduler_registry.create_scheduler_v2
        assert module.scheduler_kwargs is scheduler_registry.scheduler_kwargs
    cfl_timm.register_schedulers()  # idempotent
    assert timm.scheduler.create_scheduler_v2 is scheduler_registry.create_scheduler_v2


def test_existing_types_identical_with_and_without_cfl_timm():
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    result = subprocess.run([sys.executable, str(TESTS / 'timm_schedule_recorder.py')], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    without = json.loads(result.stdout)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # timm's plateau deprecation
        with_cfl = json.loads(json.dumps(timm_schedule_recorder.record()))
        # The cyclical keywords with every schedule off wrap the LR scheduler without changing one value.
        wrapped = json.loads(json.dumps(timm_schedule_recorder.record(cyclical_factor=4.0, wd_min=0.0)))
    assert len(without) == 21
    assert with_cfl == without
    for case, value in without.items():
        if '/' in case:  # every type and stepping mode
            assert wrapped[case] == value, case
    assert without['cosine/epoch'][2][3] != without['cosine/epoch'][2][4]  # a real schedule, not a constant


def test_scheduler_kwargs_adds_only_the_attributes_the_namespace_has():
    plain = argparse.Namespace(**timm_schedule_recorder.TIMM_ARGS)
    assert timm.scheduler.scheduler_kwargs(plain) == scheduler_registry._original_kwargs(plain)
    ours = argparse.Namespace(**timm_schedule_recorder.TIMM_ARGS, cyclical_factor=4.0, wd_min=1e-5, wd_max=8e-5,
                              T_min=0.5, T_max=2.0, clip_min=0.0, clip_max=100.0, cyclical_step_per_update=True,
                              onecycle_pct_start=0.25, onecycle_div_factor=10.0, onecycle_final_div_factor=None)
    kwargs = timm.scheduler.scheduler_kwargs(ours, decreasing_metric=False)
    assert kwargs == {**scheduler_registry._original_kwargs(plain, False), 'cyclical_factor': 4.0, 'wd_min': 1e-5,
                      'wd_max': 8e-5, 't_min': 0.5, 't_max': 2.0, 'clip_min': 0.0, 'clip_max': 100.0,
                      'cyclical_step_per_update': True, 'onecycle_pct_start': 0.25, 'onecycle_div_factor': 10.0}


def test_factory_errors_stay_timm_errors_and_new_ones_are_clear():
    optimizer = timm_schedule_recorder.make_optimizer()
    with pytest.raises(ValueError, match="Unknown scheduler 'nope'"):
        timm.scheduler.create_scheduler_v2(optimizer, sched='nope', num_epochs=3)
    with pytest.raises(ValueError, match="Unknown scheduler 'nope'"):
        timm.scheduler.create_scheduler_v2(optimizer, sched='nope', num_epochs=3, t_min=0.5)
    with pytest.raises(TypeError):
        timm.scheduler.create_scheduler_v2(optimizer, sched='onecycle', num_epochs=3, not_an_argument=1)
    with pytest.raises(ValueError, match=r'softmax temperature \(--T_min, --T_max\): min must not exceed max'):
        timm.scheduler.create_scheduler_v2(optimizer, num_epochs=3, t_min=3.0, t_max=2.0)
    with pytest.raises(ValueError, match='Per-update cyclical stepping needs updates_per_epoch >= 1'):
        timm.scheduler.create_scheduler_v2(optimizer, num_epochs=3, t_min=0.5, cyclical_step_per_update=True)
    with pytest.raises(ValueError, match=r'pct_start \(warm-up fraction\) must lie in \(0, 1\)'):
        timm.scheduler.create_scheduler_v2(optimizer, sched='onecycle', num_epochs=3, onecycle_pct_start=1.0)
    with pytest.raises(ValueError, match="Unknown onecycle anneal_strategy 'cosine', expected one of"):
        timm.scheduler.create_scheduler_v2(optimizer, sched='onecycle', num_epochs=3, onecycle_anneal='cosine')
    with pytest.raises(ValueError, match='needs updates_per_epoch >= 1'):
        timm.scheduler.create_scheduler_v2(optimizer, sched='onecycle', num_epochs=3, step_on_epochs=False)


# ---------------------------------------------------------------------------------------------------------------
# A loop of timm's own shape moves every cyclical value


NUM_EPOCHS, COOLDOWN, BATCH, IMAGES = 4, 1, 16, 64
UPDATES_PER_EPOCH = IMAGES // BATCH
CYCLICAL_ARGS = dict(cyclical_factor=4.0, wd_min=1e-5, wd_max=8e-5, T_min=0.5, T_max=2.0, clip_min=0.5, clip_max=2.0)


def digits_batches():
    digits = load_digits()
    x = torch.tensor(digits.data[:IMAGES] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[:IMAGES], dtype=torch.int64)
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, IMAGES, BATCH)]


def timm_args(**overrides):
    """The namespace a timm train.py with the cyclical flags parses (cyclical attribute names as train.py's)."""
    values = dict(sched='cosine', epochs=NUM_EPOCHS, cooldown_epochs=COOLDOWN, warmup_epochs=1, warmup_lr=1e-3,
                  min_lr=1e-4, lr=0.05, clip_grad=None, clip_mode='norm', sched_on_updates=False,
                  cyclical_step_per_update=False, **CYCLICAL_ARGS)
    values.update(overrides)
    return argparse.Namespace(**values)


def build(args, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = create_optimizer_v2(model, 'sgd', lr=args.lr, weight_decay=5e-4, momentum=0.9)
    loss = create_loss('asym-cyclical', gamma_hc=3.0, gamma_pos=2.0, gamma_neg=2.0, cyclical_factor=4.0,
                       epochs=NUM_EPOCHS + COOLDOWN)
    task = ClassificationTask(model, criterion=loss, device=torch.device('cpu'), verbose=False)
    lr_scheduler, num_epochs = timm.scheduler.create_scheduler_v2(
        optimizer, **timm.scheduler.scheduler_kwargs(args), updates_per_epoch=UPDATES_PER_EPOCH)
    lr_scheduler.attach_loss(loss)
    return model, optimizer, loss, task, lr_scheduler, num_epochs


def train_epochs(args, parts, start_epoch: int, stop_epoch: int) -> list[dict]:
    """timm's train loop shape: step_update after each update, step(epoch + 1) after each epoch."""
    model, optimizer, loss, task, lr_scheduler, num_epochs = parts
    records = []
    for epoch in range(start_epoch, stop_epoch):
        num_updates = epoch * UPDATES_PER_EPOCH
        epoch_args = scheduled_clip_args(args, lr_scheduler)
        for input, target in digits_batches():
            output = task(input, target)
            logits = model(input)
            temperature = lr_scheduler.temperature
            records.append({
                'epoch': epoch, 'update': num_updates, 'eta': loss.eta, 'clip_grad': epoch_args.clip_grad,
                'temperature': temperature, 'lr': optimizer.param_groups[1]['lr'],
                'weight_decay': [g['weight_decay'] for g in optimizer.param_groups],
                'loss': output['loss'].item(),
                # the loss the task computed is the loss of logits / T (forward() bypasses the hook)
                'loss_of_scaled_logits': loss.forward(logits / temperature, target).item(),
            })
            optimizer.zero_grad()
            output['loss'].backward()
            dispatch_clip_grad(model.parameters(), epoch_args.clip_grad, mode=epoch_args.clip_mode)
            optimizer.step()
            num_updates += 1
            lr_scheduler.step_update(num_updates=num_updates)
            epoch_args = scheduled_clip_args(args, lr_scheduler)
        records[-UPDATES_PER_EPOCH]['epoch_values'] = lr_scheduler.epoch_values(epoch)
        lr_scheduler.step(epoch + 1, metric=None)
    return records


def expected(position: float, low: float, high: float) -> float:
    eta = cyclical_eta(position, NUM_EPOCHS + COOLDOWN, 4.0)
    return (1 - eta) * high + eta * low


@pytest.mark.parametrize('per_update', [False, True], ids=['per-epoch', 'per-update'])
def test_timm_shaped_loop_moves_every_cyclical_value_and_resumes(per_update):
    args = timm_args(cyclical_step_per_update=per_update, sched_on_updates=per_update)
    parts = build(args)
    lr_scheduler, num_epochs = parts[4], parts[5]
    assert isinstance(lr_scheduler, CyclicalScheduler) and num_epochs == NUM_EPOCHS + COOLDOWN
    assert type(lr_scheduler.lr_scheduler).__name__ == 'CosineLRScheduler'
    records = train_epochs(args, parts, 0, num_epochs)
    assert len(records) == num_epochs * UPDATES_PER_EPOCH
    for record in records:
        position = record['update'] / UPDATES_PER_EPOCH if per_update else record['epoch']
        assert record['eta'] == cyclical_eta(position, num_epochs, 4.0)
        assert record['temperature'] == expected(position, 0.5, 2.0)
        assert record['clip_grad'] == expected(position, 0.5, 2.0)
        assert record['weight_decay'] == [0.0, expected(position, 1e-5, 8e-5)]  # no-decay group stays 0
        assert record['loss'] == record['loss_of_scaled_logits']
        if 'epoch_values' in record:  # summary columns: the values in force at the start of the epoch
            assert record['epoch_values'] == {key: record[key] if key != 'weight_decay' else record[key][1]
                                              for key in ('eta', 'weight_decay', 'temperature', 'clip_grad')}
    etas = [r['eta'] for r in records]
    assert min(etas) == 0.0 and max(etas) == 1.0  # the whole cycle: easy, hard, easy again
    # The LR is timm's cosine schedule, untouched by the wrapper.
    reference = build(args, seed=1)[4].lr_scheduler
    reference_lrs = []
    for record in records:
        t = record['update'] if per_update else record['epoch']
        reference.step_update(t) if per_update else reference.step(t)
        reference_lrs.append(reference.optimizer.param_groups[1]['lr'])
    assert [r['lr'] for r in records] == reference_lrs

    # Interrupted after epoch 1: resumed from state_dict() into fresh objects, and timm's way (step(start_epoch),
    # or step_update(start_epoch * updates) when the LR steps per update), the schedules continue identically.
    first = build(args)
    train_epochs(args, first, 0, 2)
    state = first[4].state_dict()
    assert state['epoch'] == 2.0 and state['lr_scheduler'] == first[4].lr_scheduler.state_dict()
    resumed, timm_resumed = build(args), build(args)
    for parts_ in (resumed, timm_resumed):  # a checkpoint restores the optimizer (with its lr) as well
        parts_[1].load_state_dict(first[1].state_dict())
    resumed[4].load_state_dict(state)
    if per_update:
        timm_resumed[4].step_update(2 * UPDATES_PER_EPOCH)
    else:
        timm_resumed[4].step(2)
    for parts_ in (resumed, timm_resumed):
        later = train_epochs(args, parts_, 2, num_epochs)
        for key in ('eta', 'temperature', 'clip_grad', 'weight_decay', 'lr'):
            assert [r[key] for r in later] == [r[key] for r in records[2 * UPDATES_PER_EPOCH:]], key


def test_per_epoch_stepping_follows_a_per_update_lr_on_resume():
    """LR per update, cyclical per epoch: timm resumes with step_update(start * updates) only, which must put the
    cyclical position at the start epoch too."""
    args = timm_args(sched_on_updates=True, cyclical_step_per_update=False)
    lr_scheduler = build(args)[4]
    lr_scheduler.step_update(3 * UPDATES_PER_EPOCH)
    assert lr_scheduler.epoch == 3.0 and lr_scheduler.temperature == expected(3, 0.5, 2.0)
    lr_scheduler.step_update(3 * UPDATES_PER_EPOCH + 1)  # within the epoch: no move
    assert lr_scheduler.epoch == 3.0


def test_state_dict_resumes_the_lr_scheduler_state():
    args = timm_args(sched='plateau', cyclical_step_per_update=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        first, second = build(args)[4], build(args)[4]
    for epoch, metric in enumerate((1.0, 0.9, 0.95, 0.97, 0.99), start=1):
        first.step(epoch, metric)
    second.load_state_dict(first.state_dict())
    assert second.lr_scheduler.lr_scheduler.state_dict() == first.lr_scheduler.lr_scheduler.state_dict()
    assert second.values() == first.values() and second.epoch == 5.0
    with pytest.raises(ValueError, match='Not a CyclicalScheduler state'):
        second.load_state_dict({'lr_scheduler': None})


def test_attach_loss_twice_and_temperature_off_are_clear():
    args = timm_args(T_min=0.0)
    _, _, loss, _, lr_scheduler, _ = build(args)
    assert lr_scheduler.temperature is None and not loss._forward_pre_hooks  # no hook when the schedule is off
    with pytest.raises(ValueError, match='attached to this scheduler already'):
        lr_scheduler.attach_loss(loss)
    plain = argparse.Namespace(clip_grad=1.5)
    assert scheduled_clip_args(plain, timm_schedule_recorder.make_optimizer()) is plain
    assert scheduled_clip_args(plain, lr_scheduler).clip_grad == expected(0, 0.5, 2.0) and plain.clip_grad == 1.5


# ---------------------------------------------------------------------------------------------------------------
# OneCycle


def onecycle_formula(t: float, total: int, lr_max: float, pct: float = 0.3, div: float = 25.0,
                     final_div: float = 1e4, anneal: str = 'cos') -> float:
    def interpolate(a, b, x):
        return b + (a - b) * (1 + math.cos(math.pi * x)) / 2 if anneal == 'cos' else a + (b - a) * x

    lr_initial, warm_end, last = lr_max / div, pct * total - 1, total - 1
    if t > last:
        return lr_initial / final_div
    if t <= warm_end:
        return interpolate(lr_initial, lr_max, t / warm_end)
    return interpolate(lr_max, lr_initial / final_div, (t - warm_end) / (last - warm_end))


def test_onecycle_known_steps():
    optimizer = timm_schedule_recorder.make_optimizer()  # lr 0.1, group 0 with lr_scale 0.5
    scheduler = OneCycleLRScheduler(optimizer, t_initial=10)
    lrs = []
    for t in range(12):
        scheduler.step(t)
        lrs.append(optimizer.param_groups[1]['lr'])
        assert optimizer.param_groups[0]['lr'] == pytest.approx(0.5 * lrs[-1], rel=1e-15)  # layer-decay scale
    # warm-up end w = 0.3 * 10 - 1 = 2, last step 9: start lr_max / 25, half-way up at t = 1, peak at t = 2,
    # the cosine half-way down at t = 5.5, lr_max / 25 / 1e4 from t = 9 on (cooldown included).
    assert lrs[0] == pytest.approx(0.004, rel=1e-14)
    assert lrs[1] == pytest.approx((0.004 + 0.1) / 2, rel=1e-14)
    assert lrs[2] == pytest.approx(0.1, rel=1e-14)
    assert lrs[9] == lrs[10] == lrs[11] == pytest.approx(4e-7, rel=1e-12)
    assert onecycle_formula(5.5, 10, 0.1) == pytest.approx((0.1 + 4e-7) / 2, rel=1e-12)
    assert lrs == [pytest.approx(onecycle_formula(t, 10, 0.1), rel=1e-14) for t in range(12)]
    assert max(lrs) == lrs[2] and lrs[3:10] == sorted(lrs[3:10], reverse=True)


@pytest.mark.parametrize('total, pct, div, final_div, anneal', [
    (10, 0.3, 25.0, 1e4, 'cos'), (37, 0.25, 10.0, 100.0, 'cos'), (23, 0.4, 25.0, 1e4, 'linear')])
def test_onecycle_equals_torch_onecyclelr(total, pct, div, final_div, anneal):
    torch_optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        torch_optimizer, max_lr=0.1, total_steps=total, pct_start=pct, div_factor=div, final_div_factor=final_div,
        anneal_strategy=anneal, cycle_momentum=False)
    torch_lrs = []
    for _ in range(total):
        torch_lrs.append(torch_optimizer.param_groups[0]['lr'])
        torch_optimizer.step()
        reference.step()
    ours_optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ours = OneCycleLRScheduler(ours_optimizer, t_initial=total, pct_start=pct, div_factor=div,
                               final_div_factor=final_div, anneal_strategy=anneal, t_in_epochs=False)
    ours_lrs = []
    for t in range(total):
        if t:
            ours.step_update(t)
        ours_lrs.append(ours_optimizer.param_groups[0]['lr'])
    assert ours_lrs == [pytest.approx(v, rel=1e-13, abs=1e-18) for v in torch_lrs]
    assert ours_lrs == [pytest.approx(onecycle_formula(t, total, 0.1, pct, div, final_div, anneal), rel=1e-14)
                        for t in range(total)]


def test_onecycle_through_the_factory_per_update_and_resume():
    args = argparse.Namespace(sched='onecycle', epochs=4, cooldown_epochs=1, warmup_epochs=5, sched_on_updates=True,
                              onecycle_pct_start=0.25, onecycle_div_factor=10.0, onecycle_final_div_factor=100.0)
    optimizer = timm_schedule_recorder.make_optimizer()
    scheduler, num_epochs = timm.scheduler.create_scheduler_v2(
        optimizer, **timm.scheduler.scheduler_kwargs(args), updates_per_epoch=5)
    assert isinstance(scheduler, OneCycleLRScheduler) and num_epochs == 5 and scheduler.t_initial == 20
    lrs = []
    for update in range(1, 26):
        scheduler.step_update(update)
        lrs.append(optimizer.param_groups[1]['lr'])
        scheduler.step(update // 5)  # ignored when stepping per update, as timm's schedulers do
    assert lrs == [pytest.approx(onecycle_formula(t, 20, 0.1, 0.25, 10.0, 100.0), rel=1e-14) for t in range(1, 26)]
    # Resume: a fresh scheduler from state_dict(), or stepped to the update count, continues identically.
    fresh_optimizer = timm_schedule_recorder.make_optimizer()
    fresh, _ = timm.scheduler.create_scheduler_v2(
        fresh_optimizer, **timm.scheduler.scheduler_kwargs(args), updates_per_epoch=5)
    fresh.load_state_dict(scheduler.state_dict())
    fresh.step_update(13)
    assert fresh_optimizer.param_groups[1]['lr'] == lrs[12]
    # With the cyclical keywords the OneCycle LR sits inside the CyclicalScheduler, unchanged.
    wrapped, _ = timm.scheduler.create_scheduler_v2(
        timm_schedule_recorder.make_optimizer(), **timm.scheduler.scheduler_kwargs(args), updates_per_epoch=5,
        t_min=0.5, cyclical_step_per_update=True)
    wrapped.step_update(13)
    assert wrapped.lr_scheduler.optimizer.param_groups[1]['lr'] == lrs[12]
    assert wrapped.temperature == pytest.approx((1 - cyclical_eta(13 / 5, 5, 2.0)) * 2.0 + cyclical_eta(13 / 5, 5, 2.0)
                                                * 0.5)


def test_train_py_sched_onecycle_on_real_images(tmp_path, capsys):
    import train

    argv = ['--dataset', 'sklearn/digits', '--model', 'test_efficientnet', '--img-size', '32', '-b', '32',
            '--train_size', '64', '--epochs', '3', '--cooldown-epochs', '1', '--sched', 'onecycle', '--lr', '0.05',
            '--onecycle-pct-start', '0.5', '--onecycle_div_factor', '10', '--onecycle-final-div-factor', '100',
            '--output', str(tmp_path), '--experiment', 'run', '-j', '0', '--log-interval', '1000']
    train.main(train.parse_args(argv))
    with open(tmp_path / 'run' / 'summary.csv') as f:
        lrs = [float(row['lr']) for row in csv.DictReader(f)]
    # 3 epochs of OneCycle (warm-up end 0.5 * 3 - 1 = 0.5), then 1 cooldown epoch at the final lr.
    assert lrs == [pytest.approx(onecycle_formula(t, 3, 0.05, 0.5, 10.0, 100.0), rel=1e-12) for t in range(4)]
    assert lrs[0] == pytest.approx(0.005) and lrs[2] == lrs[3] == pytest.approx(5e-5)
    with pytest.raises(SystemExit) as exit_info:  # a usage error before any work, as train.py's __main__ gives it
        train.check_args(train.parse_args(argv + ['--onecycle-pct-start', '1.5']), train.get_args_parser())
    assert exit_info.value.code == 2
    assert 'onecycle pct_start (warm-up fraction) must lie in (0, 1), got 1.5' in capsys.readouterr().err


def test_attached_loss_spans_the_scheduler_and_timm_attributes_pass_through():
    optimizer = timm_schedule_recorder.make_optimizer()
    lr_scheduler, num_epochs = timm.scheduler.create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=4, cycle_limit=2, cooldown_epochs=1, cyclical_factor=4.0)
    assert num_epochs == 9  # two cycles of 4 and a cooldown epoch: the span timm's factory decides
    loss = lr_scheduler.attach_loss(create_loss('asym-cyclical', cyclical_factor=4.0, epochs=5))
    assert loss.epochs == 9
    lr_scheduler.step(6)
    assert loss.eta == cyclical_eta(6, 9, 4.0) == lr_scheduler.eta
    other, _ = timm.scheduler.create_scheduler_v2(timm_schedule_recorder.make_optimizer(), num_epochs=4,
                                                  cyclical_factor=2.0)
    with pytest.raises(ValueError, match='one factor drives both'):
        other.attach_loss(create_loss('asym-cyclical', cyclical_factor=4.0, epochs=4))
    # timm's train.py reads lr_scheduler.t_in_epochs; other attributes are the LR scheduler's.
    assert lr_scheduler.t_in_epochs is True and lr_scheduler.get_cycle_length() == 8
    assert lr_scheduler.t_initial == lr_scheduler.lr_scheduler.t_initial == 4
    none, _ = timm.scheduler.create_scheduler_v2(timm_schedule_recorder.make_optimizer(), sched='none',
                                                 num_epochs=4, t_min=0.5, cyclical_step_per_update=True,
                                                 updates_per_epoch=2)
    assert none.lr_scheduler is None and none.t_in_epochs is False
    with pytest.raises(AttributeError):
        getattr(none, "t_initial")  # noqa: B009  (no LR scheduler to pass it through to)
