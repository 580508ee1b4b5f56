"""The shared eta schedule (cfl.md §2) and the cyclical weight-decay / temperature / clipping schedules (§4).

The schedules through timm's scheduler factory and a loop of timm's shape: tests/test_scheduler_factory.py."""
import math

import pytest
import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from cfl_timm import CyclicalScheduler, CyclicalWeightDecayScheduler, cyclical_eta, cyclical_value
from cfl_timm.scheduler import check_cyclical_arguments


def published_eta(epoch: int, epochs: int, factor: float) -> float:
    """The published code's schedule as cfl.md §2 states it: branch test f*e < E, denominator E - 1."""
    if factor * epoch < epochs:
        return 1.0 - factor * epoch / (epochs - 1)
    return (factor * epoch / (epochs - 1) - 1.0) / (factor - 1.0)


@pytest.mark.parametrize('factor', [1.0, 2.0, 4.0])
@pytest.mark.parametrize('epochs', [11, 31, 201])
def test_paper_form_endpoints(factor, epochs):
    last = epochs - 1
    assert cyclical_eta(0, epochs, factor) == 1.0
    assert cyclical_eta(last / factor, epochs, factor) == pytest.approx(0.0, abs=1e-12)
    assert cyclical_eta(last, epochs, factor) == (0.0 if factor == 1.0 else 1.0)
    # Linear descent to the minimum, linear return after it.
    assert cyclical_eta(last / factor / 2, epochs, factor) == pytest.approx(0.5)
    if factor > 1:
        midway_up = last / factor + (last - last / factor) / 2
        assert cyclical_eta(midway_up, epochs, factor) == pytest.approx(0.5)


@pytest.mark.parametrize('factor', [1.0, 2.0, 3.0, 4.0])
def test_equals_published_values_for_readme_recipe(factor):
    """200 epochs + 1 cooldown epoch (E = 201): every per-epoch value equals the published code's exactly."""
    epochs = 201
    values = [cyclical_eta(e, epochs, factor) for e in range(epochs)]
    assert values == [published_eta(e, epochs, factor) for e in range(epochs)]


def test_published_table_points():
    # E = 201, f = 4: minimum at epoch 50, back to 1 at epoch 200.
    points = {0: 1.0, 25: 0.5, 50: 0.0, 100: 1 / 3, 125: 0.5, 200: 1.0}
    for epoch, expected in points.items():
        assert cyclical_eta(epoch, 201, 4.0) == pytest.approx(expected, abs=1e-15)
    # E = 201, f = 2: symmetric triangle.
    assert [cyclical_eta(e, 201, 2.0) for e in (0, 50, 100, 150, 200)] == [1.0, 0.5, 0.0, 0.5, 1.0]


def test_clamped_and_defined_at_the_edges():
    assert cyclical_eta(0, 1, 4.0) == 1.0 and cyclical_eta(0.7, 1, 1.0) == 1.0  # E = 1
    assert cyclical_eta(250, 201, 4.0) == 1.0  # past the end: clamped
    assert cyclical_eta(250, 201, 1.0) == 0.0
    # A non-integer factor never leaves [0, 1] (the published code dips below 0 there).
    for factor in (1.3, 2.7, 3.9):
        values = [cyclical_eta(e / 7, 31, factor) for e in range(7 * 31)]
        assert min(values) >= 0.0 and max(values) <= 1.0
    assert published_eta(11, 30, 2.7) < 0 <= cyclical_eta(11, 30, 2.7)  # the defect this guards against


def test_fractional_epochs_interpolate():
    epochs, factor = 21, 2.0
    for epoch in (0.25, 3.5, 9.99, 10.5, 17.125):
        low, high = math.floor(epoch), math.ceil(epoch)
        if low < 10 < high:
            continue
        expected = cyclical_eta(low, epochs, factor) + (epoch - low) * (
            cyclical_eta(high, epochs, factor) - cyclical_eta(low, epochs, factor))
        assert cyclical_eta(epoch, epochs, factor) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize('args, match', [
    ((0, 0, 2.0), 'epochs must be an integer >= 1'),
    ((0, 2.5, 2.0), 'epochs must be an integer >= 1'),
    ((0, 10, 0.9), 'cyclical factor must be a finite number >= 1'),
    ((0, 10, float('inf')), 'cyclical factor must be'),
    ((-0.5, 10, 2.0), 'epoch must be a finite number >= 0'),
    ((float('nan'), 10, 2.0), 'epoch must be a finite number >= 0'),
])
def test_eta_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        cyclical_eta(*args)


def make_optimizer(**kwargs):
    model = timm.create_model('test_resnet', num_classes=10)
    return create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=5e-4, **kwargs)


def expected_wd(epoch, epochs=11, factor=2.0, wd_min=1e-5, wd_max=8e-5):
    eta = cyclical_eta(epoch, epochs, factor)
    return (1 - eta) * wd_max + eta * wd_min


@pytest.mark.parametrize('optimizer_kwargs, num_groups', [
    (dict(filter_bias_and_bn=False), 1),  # one group, every parameter decayed
    (dict(), 2),  # [no_decay, decay]
    (dict(layer_decay=0.75), 12),  # layer decay: many groups, each with an lr_scale
])
def test_weight_decay_touches_decayed_groups_only(optimizer_kwargs, num_groups):
    optimizer = make_optimizer(**optimizer_kwargs)
    assert len(optimizer.param_groups) == num_groups
    configured = [group['weight_decay'] for group in optimizer.param_groups]
    scheduler = CyclicalWeightDecayScheduler(optimizer, wd_min=1e-5, wd_max=8e-5, num_epochs=11, cyclical_factor=2.0)
    for epoch in (0, 1, 5, 7, 10):
        scheduler.step(epoch)
        for group, initial in zip(optimizer.param_groups, configured):
            if initial > 0:
                assert group['weight_decay'] == pytest.approx(expected_wd(epoch), rel=1e-15)  # no lr_scale factor
            else:
                assert group['weight_decay'] == 0.0
    assert scheduler.value == pytest.approx(expected_wd(10))


def test_weight_decay_selects_by_configuration_not_index():
    optimizer = make_optimizer()
    optimizer.param_groups.reverse()  # [decay, no_decay]: the published index-based code would hit no_decay
    scheduler = CyclicalWeightDecayScheduler(optimizer, wd_min=1e-5, wd_max=8e-5, num_epochs=11, cyclical_factor=2.0)
    scheduler.step(5)
    assert optimizer.param_groups[0]['weight_decay'] == pytest.approx(8e-5)
    assert optimizer.param_groups[1]['weight_decay'] == 0.0


def test_weight_decay_starts_at_min_and_acts_on_the_update():
    optimizer = make_optimizer(filter_bias_and_bn=False)
    CyclicalWeightDecayScheduler(optimizer, wd_min=1e-5, wd_max=8e-5, num_epochs=11, cyclical_factor=2.0)
    assert optimizer.param_groups[0]['weight_decay'] == pytest.approx(1e-5)
    param = optimizer.param_groups[0]['params'][0]
    param.grad = torch.zeros_like(param)
    before = param.detach().clone()
    optimizer.step()  # zero gradient: the change is the weight decay alone, lr * wd * w
    torch.testing.assert_close(param.detach(), before * (1 - 0.1 * 1e-5))


def test_per_update_stepping_and_resume_purity():
    updates_per_epoch = 8
    optimizer = make_optimizer()
    scheduler = CyclicalWeightDecayScheduler(
        optimizer, wd_min=1e-5, wd_max=8e-5, num_epochs=11, cyclical_factor=2.0, t_in_epochs=False,
        updates_per_epoch=updates_per_epoch)
    scheduler.step(3)  # ignored when stepping per update, as timm's schedulers do
    assert scheduler.value == pytest.approx(expected_wd(0))
    for num_updates in range(1, 40):
        scheduler.step_update(num_updates)
        assert scheduler.value == pytest.approx(expected_wd(num_updates / updates_per_epoch), rel=1e-15)
    # A scheduler built afresh and stepped to the same point (what resume does) gives the same state.
    fresh = CyclicalWeightDecayScheduler(
        make_optimizer(), wd_min=1e-5, wd_max=8e-5, num_epochs=11, cyclical_factor=2.0, t_in_epochs=False,
        updates_per_epoch=updates_per_epoch)
    fresh.step_update(39)
    assert [g['weight_decay'] for g in fresh.optimizer.param_groups] == \
        [g['weight_decay'] for g in optimizer.param_groups]


def test_weight_decay_coexists_with_timm_lr_scheduler():
    optimizer = make_optimizer(layer_decay=0.75)
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, sched='cosine', num_epochs=10, cooldown_epochs=1)
    assert num_epochs == 11
    scheduler = CyclicalScheduler(lr_scheduler, optimizer, num_epochs=num_epochs, cyclical_factor=4.0, wd_min=1e-5,
                                  wd_max=8e-5)
    for epoch in range(1, num_epochs):
        scheduler.step(epoch)
        lrs = {round(g['lr'] / g['lr_scale'], 12) for g in optimizer.param_groups}
        assert len(lrs) == 1  # the lr schedule still scales by lr_scale
        decayed = [g['weight_decay'] for g in optimizer.param_groups if g['initial_weight_decay'] > 0]
        assert decayed == [pytest.approx(expected_wd(epoch, factor=4.0))] * 6
        assert scheduler.weight_decay == pytest.approx(expected_wd(epoch, factor=4.0))


def test_temperature_and_clip_schedules():
    scheduler = CyclicalScheduler(None, num_epochs=31, cyclical_factor=4.0, t_min=0.5, t_max=2.0, clip_min=0.5,
                                  clip_max=100.0)
    assert (scheduler.temperature, scheduler.clip_grad, scheduler.weight_decay) == (0.5, 0.5, None)
    temperatures = []
    for epoch in range(31):
        scheduler.step(epoch)
        temperatures.append(scheduler.temperature)
        eta = cyclical_eta(epoch, 31, 4.0)
        assert scheduler.eta == eta
        assert scheduler.temperature == pytest.approx((1 - eta) * 2.0 + eta * 0.5, rel=1e-15)
        assert scheduler.clip_grad == cyclical_value(epoch, min_value=0.5, max_value=100.0, num_epochs=31,
                                                     cyclical_factor=4.0)
    # eta's minimum lies at epoch 30 / 4 = 7.5: the value peaks next to it, never above max.
    assert temperatures.index(max(temperatures)) in (7, 8) and max(temperatures) <= 2.0
    assert temperatures[0] == 0.5 and temperatures[-1] == pytest.approx(0.5)


def test_all_three_together_share_one_eta_per_update():
    optimizer = make_optimizer()
    scheduler = CyclicalScheduler(
        None, optimizer, num_epochs=21, cyclical_factor=4.0, wd_min=1e-5, wd_max=8e-5, t_min=0.5, t_max=2.0,
        clip_min=0.5, clip_max=2.0, step_per_update=True, updates_per_epoch=4)
    for num_updates in (1, 7, 20, 41, 80):
        scheduler.step_update(num_updates)
        eta = cyclical_eta(num_updates / 4, 21, 4.0)
        values = scheduler.values()
        assert values['eta'] is None  # no loss attached
        assert values['weight_decay'] == pytest.approx((1 - eta) * 8e-5 + eta * 1e-5, rel=1e-15)
        assert values['temperature'] == pytest.approx((1 - eta) * 2.0 + eta * 0.5, rel=1e-15)
        assert values['clip_grad'] == pytest.approx((1 - eta) * 2.0 + eta * 0.5, rel=1e-15)
        assert optimizer.param_groups[1]['weight_decay'] == values['weight_decay']


def test_schedules_off_when_min_is_zero():
    optimizer = make_optimizer()
    scheduler = CyclicalScheduler(None, optimizer, num_epochs=5)
    assert scheduler.values() == {'eta': None, 'weight_decay': None, 'temperature': None, 'clip_grad': None}
    scheduler.step(3)
    assert [g['weight_decay'] for g in optimizer.param_groups] == [0.0, 5e-4]  # the configured values stay
    only_clip = CyclicalScheduler(None, num_epochs=5, clip_min=1.0, clip_max=10.0)
    assert only_clip.values() == {'eta': None, 'weight_decay': None, 'temperature': None, 'clip_grad': 1.0}


@pytest.mark.parametrize('kwargs, match', [
    (dict(wd_min=1e-3, wd_max=1e-4), r'weight decay \(--wd_min, --wd_max\): min must not exceed max, got min=0.001'),
    (dict(t_min=3.0, t_max=2.0), r'softmax temperature \(--T_min, --T_max\): min must not exceed max'),
    (dict(clip_min=5.0, clip_max=1.0), r'gradient clipping \(--clip_min, --clip_max\): min must not exceed max'),
    (dict(t_min=-1.0), 'min and max must be finite and >= 0'),
    (dict(clip_min=1.0, clip_max=float('inf')), 'min and max must be finite and >= 0'),
    (dict(cyclical_factor=0.5), 'cyclical factor must be a finite number >= 1'),
    (dict(num_epochs=0), 'epochs must be an integer >= 1'),
    (dict(step_per_update=True), 'Per-update cyclical stepping needs updates_per_epoch >= 1'),
])
def test_schedule_bad_input(kwargs, match):
    base = dict(num_epochs=10)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        CyclicalScheduler(None, make_optimizer(), **base)
    if 'step_per_update' not in kwargs:  # the early check (train.py, before any data) says the same
        with pytest.raises(ValueError, match=match):
            check_cyclical_arguments(**base)


def test_weight_decay_needs_a_decayed_group():
    model = timm.create_model('test_resnet', num_classes=10)
    optimizer = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match='needs at least one parameter group configured with weight decay > 0'):
        CyclicalWeightDecayScheduler(optimizer, wd_min=1e-5, wd_max=8e-5, num_epochs=10, cyclical_factor=2.0)
    with pytest.raises(ValueError, match='needs the optimizer'):
        CyclicalScheduler(None, None, num_epochs=10, wd_min=1e-5)
