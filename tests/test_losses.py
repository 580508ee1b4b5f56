"""The focal-family losses against the equations of cfl.md §3, timm, and each other, in float64."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm.loss
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import AsymmetricLossSingleLabel

from cfl_timm import AsymmetricFocalLoss, CyclicalFocalLoss, FocalLoss, create_loss, cyclical_eta
from cfl_timm.loss import cyclical_focal_loss as loss_module

GAMMAS = [(0.0, 0.0, 0.0), (3.0, 2.0, 2.0), (2.0, 0.0, 4.0), (2.0, 1.0, 4.0), (0.0, 0.5, 0.0), (1.5, 2.5, 3.5)]
ETAS = [0.0, 0.3, 1.0]
EPSILONS = [0.0, 0.1]


def formula(logits, target, eta, gamma_hc, gamma_pos, gamma_neg, eps, symmetric=False):
    """cfl.md §3 written out class by class: per-sample loss, float64, plain autograd."""
    logits = logits.double()
    logp = torch.log_softmax(logits, dim=1)
    p = logp.exp()
    num_classes = logits.shape[1]
    if target.is_floating_point():
        q = target.double()
    else:
        q = F.one_hot(target, num_classes).double()
    w_pos = (1 - eta) * (1 - p) ** gamma_pos + eta * (1 + p) ** gamma_hc
    w_neg = (1 - eta) * p ** gamma_neg + eta
    weight = w_pos if symmetric else q * w_pos + (1 - q) * w_neg
    y = (1 - eps) * q + eps / num_classes
    return -(y * weight * logp).sum(dim=1)


def cyclical_at_eta(eta_value, gamma_hc, gamma_pos, gamma_neg, eps, reduction='none'):
    """A CyclicalFocalLoss whose state gives exactly eta_value (f = 1 over 11 epochs: eta = 1 - e / 10)."""
    loss = CyclicalFocalLoss(gamma_hc=gamma_hc, gamma_pos=gamma_pos, gamma_neg=gamma_neg, cyclical_factor=1.0,
                             epochs=11, eps=eps, reduction=reduction)
    loss.set_epoch(10 * (1 - eta_value))
    assert loss.eta == pytest.approx(eta_value, abs=1e-15)
    return loss


def random_logits(rows=6, classes=5, scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=generator, dtype=torch.float64) * scale).requires_grad_()
    target = torch.randint(0, classes, (rows,), generator=generator)
    return logits, target


def extreme_logits():
    """|z| up to 1e4 with p_t -> 1, p_t -> 0 (underflow) and ties."""
    logits = torch.tensor([
        [1e4, -1e4, 0.0, 5.0],
        [-1e4, 1e4, 0.0, -5.0],
        [30.0, -30.0, 0.0, 1e-3],
        [0.0, 0.0, 0.0, 0.0],
        [-1e4, -1e4, 1e4, 1e4],
    ], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 0, 0, 2, 3])
    return logits, target


@pytest.mark.parametrize('eps', EPSILONS)
@pytest.mark.parametrize('eta', ETAS)
@pytest.mark.parametrize('gammas', GAMMAS)
def test_cyclical_matches_formula_and_gradients(gammas, eta, eps):
    gamma_hc, gamma_pos, gamma_neg = gammas
    loss_fn = cyclical_at_eta(eta, gamma_hc, gamma_pos, gamma_neg, eps)
    logits, target = random_logits()
    ours = loss_fn(logits, target)
    expected = formula(logits, target, eta, gamma_hc, gamma_pos, gamma_neg, eps)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    grad_ours, = torch.autograd.grad(ours.sum(), logits)
    grad_expected, = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad_ours, grad_expected, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, target), (logits,))


@pytest.mark.parametrize('shape', [(1, 10), (31, 10), (32, 10), (257, 10), (64, 1), (40, 2), (33, 15), (48, 16),
                                   (40, 17), (8, 1000)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_short_row_log_softmax_equals_torch(shape, dtype):
    """The losses' log-softmax (transposed for rows of < 16 classes in batches of >= 32 on the CPU) gives
    torch.log_softmax's values and gradient, extreme logits included."""
    from cfl_timm.loss._base import log_softmax
    generator = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * 10
    logits[0, 0], logits[-1, -1] = 1e4, -1e4
    logits = logits.to(dtype).requires_grad_()
    ours, expected = log_softmax(logits), torch.log_softmax(logits, 1)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=4 * torch.finfo(dtype).eps * 1e4)
    weights = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    grad_ours, = torch.autograd.grad(ours, logits, weights)
    grad_expected, = torch.autograd.grad(expected, logits, weights)
    torch.testing.assert_close(grad_ours, grad_expected)


@pytest.mark.parametrize('eps', EPSILONS)
@pytest.mark.parametrize('rows, classes', [(64, 10), (40, 3)])
def test_cyclical_matches_formula_on_short_rows_in_a_batch(rows, classes, eps):
    """Batches that take the transposed log-softmax: value, gradient and gradcheck against the formula."""
    loss_fn = cyclical_at_eta(0.3, 3.0, 2.0, 2.0, eps)
    logits, target = random_logits(rows, classes)
    ours = loss_fn(logits, target)
    expected = formula(logits, target, 0.3, 3.0, 2.0, 2.0, eps)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    grad_ours, = torch.autograd.grad(ours.sum(), logits)
    grad_expected, = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad_ours, grad_expected, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, target), (logits,))


@pytest.mark.parametrize('eps', EPSILONS)
@pytest.mark.parametrize('gammas', GAMMAS)
def test_extreme_logits_finite_and_exact(gammas, eps):
    gamma_hc, gamma_pos, gamma_neg = gammas
    loss_fn = cyclical_at_eta(0.4, gamma_hc, gamma_pos, gamma_neg, eps)
    logits, target = extreme_logits()
    ours = loss_fn(logits, target)
    grad, = torch.autograd.grad(ours.sum(), logits)
    assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
    # The autograd formula is itself finite here except for (1 - p)^gamma with gamma < 1 at p = 1.
    expected = formula(logits, target, 0.4, gamma_hc, gamma_pos, gamma_neg, eps)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-9)
    if gamma_pos == 0 or gamma_pos >= 1:
        grad_expected, = torch.autograd.grad(expected.sum(), logits)
        torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-12)
    # Tiny perturbations around the extremes: gradcheck on a well-conditioned but saturated point.
    saturated = logits[2:4].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, target[2:4]), (saturated,))


def test_target_probability_limits():
    """p_t -> 1: the loss -> 0 with a vanishing gradient; p_t -> 0: -log p_t growth, gradient p - onehot scaled."""
    loss_fn = AsymmetricFocalLoss(gamma_pos=2.0, gamma_neg=2.0, eps=0.0, reduction='none')
    confident = torch.tensor([[50.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    value = loss_fn(confident, torch.tensor([0]))
    assert 0 <= value.item() < 1e-40
    grad, = torch.autograd.grad(value.sum(), confident)
    assert grad.abs().max() < 1e-40
    wrong = torch.tensor([[-50.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    value = loss_fn(wrong, torch.tensor([0]))
    assert value.item() == pytest.approx(50.0 + torch.log(torch.tensor(2.0, dtype=torch.float64)).item(), rel=1e-12)


@pytest.mark.parametrize('gamma_pos,gamma_neg,eps', [(1.0, 4.0, 0.1), (2.0, 2.0, 0.1), (0.0, 4.0, 0.0),
                                                     (3.0, 0.0, 0.2)])
def test_eta_zero_equals_timm_asymmetric_single_label(gamma_pos, gamma_neg, eps):
    logits, target = random_logits(rows=16, classes=7, seed=3)
    timm_loss = AsymmetricLossSingleLabel(gamma_pos=gamma_pos, gamma_neg=gamma_neg, eps=eps)
    expected = timm_loss(logits, target)
    expected_grad, = torch.autograd.grad(expected, logits)
    asym = AsymmetricFocalLoss(gamma_pos=gamma_pos, gamma_neg=gamma_neg, eps=eps)
    cyclical = cyclical_at_eta(0.0, 3.0, gamma_pos, gamma_neg, eps, reduction='mean')
    for ours in (asym(logits, target), cyclical(logits, target)):
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], expected_grad)


@pytest.mark.parametrize('gamma', [0.5, 1.0, 2.0, 5.0])
def test_equal_gammas_without_smoothing_is_standard_focal(gamma):
    logits, target = random_logits(rows=10, classes=6, seed=4)
    logp_t = torch.log_softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    focal = -((1 - logp_t.exp()) ** gamma * logp_t)
    cyclical = cyclical_at_eta(0.0, 1.7, gamma, gamma, 0.0)
    torch.testing.assert_close(cyclical(logits, target), focal, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(FocalLoss(gamma=gamma, reduction='none')(logits, target), focal, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: FocalLoss(gamma=gamma)(z, target), (logits,))


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.3])
def test_all_gammas_zero_is_label_smoothed_cross_entropy(eps):
    logits, target = random_logits(rows=12, classes=9, seed=5)
    expected = F.cross_entropy(logits, target, label_smoothing=eps)
    for eta in ETAS:
        ours = cyclical_at_eta(eta, 0.0, 0.0, 0.0, eps, reduction='mean')(logits, target)
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(ours, logits)[0],
                                   torch.autograd.grad(expected, logits, retain_graph=True)[0])
    torch.testing.assert_close(FocalLoss(gamma=0.0, eps=eps)(logits, target), expected, rtol=1e-12, atol=1e-12)


def test_gamma_neg_has_no_effect_without_smoothing():
    logits, target = random_logits(seed=6)
    values = [cyclical_at_eta(0.5, 2.0, 1.0, gamma_neg, 0.0)(logits, target) for gamma_neg in (0.0, 2.0, 7.0)]
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-14)
    torch.testing.assert_close(values[0], values[2], rtol=0, atol=1e-14)


@pytest.mark.parametrize('eps', EPSILONS)
@pytest.mark.parametrize('eta', ETAS)
def test_soft_targets(eta, eps):
    logits, hard = random_logits(rows=8, classes=5, seed=7)
    generator = torch.Generator().manual_seed(8)
    soft = torch.softmax(torch.randn(8, 5, generator=generator, dtype=torch.float64) * 2, dim=1)
    loss_fn = cyclical_at_eta(eta, 3.0, 2.0, 2.0, eps)
    torch.testing.assert_close(loss_fn(logits, soft), formula(logits, soft, eta, 3.0, 2.0, 2.0, eps),
                               rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, soft), (logits,))
    # One-hot soft targets are the hard-label loss; a Mixup of two labels is the mixture of the targets.
    one_hot = F.one_hot(hard, 5).double()
    torch.testing.assert_close(loss_fn(logits, one_hot), loss_fn(logits, hard), rtol=1e-12, atol=1e-12)
    sym = FocalLoss(gamma=2.0, eps=eps, reduction='none')
    torch.testing.assert_close(sym(logits, soft), formula(logits, soft, 0.0, 0.0, 2.0, 0.0, eps, symmetric=True),
                               rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: sym(z, soft), (logits,))


def test_soft_target_argmax_mode_reproduces_published_collapse():
    logits, _ = random_logits(rows=8, classes=5, seed=9)
    soft = torch.softmax(torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), 1)
    published = CyclicalFocalLoss(gamma_hc=3, gamma_pos=2, gamma_neg=2, cyclical_factor=4, epochs=10,
                                  soft_target_mode='argmax', reduction='none')
    published.set_epoch(2)
    hard = CyclicalFocalLoss(gamma_hc=3, gamma_pos=2, gamma_neg=2, cyclical_factor=4, epochs=10, reduction='none')
    hard.set_epoch(2)
    torch.testing.assert_close(published(logits, soft), hard(logits, soft.argmax(1)))
    assert not torch.allclose(hard(logits, soft), hard(logits, soft.argmax(1)))


@pytest.mark.parametrize('loss_fn', [
    FocalLoss(gamma=2.0, eps=0.1, reduction='none'),
    AsymmetricFocalLoss(gamma_pos=1.0, gamma_neg=3.0, reduction='none'),
    cyclical_at_eta(0.6, 2.0, 1.0, 3.0, 0.1),
])
def test_dense_inputs_over_dim_1(loss_fn):
    generator = torch.Generator().manual_seed(10)
    logits = torch.randn(2, 4, 3, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 5), generator=generator)
    dense = loss_fn(logits, target)
    assert dense.shape == (2, 3, 5)
    flat = loss_fn(logits.movedim(1, -1).reshape(-1, 4), target.reshape(-1))
    torch.testing.assert_close(dense.reshape(-1), flat, rtol=1e-12, atol=1e-12)
    soft = torch.softmax(torch.randn(2, 4, 3, 5, generator=generator, dtype=torch.float64), dim=1)
    flat_soft = loss_fn(logits.movedim(1, -1).reshape(-1, 4), soft.movedim(1, -1).reshape(-1, 4))
    torch.testing.assert_close(loss_fn(logits, soft).reshape(-1), flat_soft, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, target), (logits,))


def test_reductions():
    logits, target = random_logits(rows=9, seed=11)
    per_sample = cyclical_at_eta(0.5, 3.0, 2.0, 2.0, 0.1)(logits, target)
    torch.testing.assert_close(cyclical_at_eta(0.5, 3.0, 2.0, 2.0, 0.1, 'mean')(logits, target), per_sample.mean())
    total = cyclical_at_eta(0.5, 3.0, 2.0, 2.0, 0.1, 'sum')
    torch.testing.assert_close(total(logits, target), per_sample.sum())
    assert torch.autograd.gradcheck(lambda z: total(z, target), (logits,))
    # A gradient that is not 1 (e.g. a loss scale) flows through 'mean' and 'sum' too.
    scaled, = torch.autograd.grad(3.0 * total(logits, target), logits)
    plain, = torch.autograd.grad(total(logits, target), logits)
    torch.testing.assert_close(scaled, 3.0 * plain)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    logits32, target = random_logits(rows=32, classes=10, seed=12)
    low = logits32.detach().to(dtype).requires_grad_()
    loss_fn = cyclical_at_eta(0.5, 3.0, 2.0, 2.0, 0.1, 'mean')
    value = loss_fn(low, target)
    assert value.dtype == torch.float32
    expected = loss_fn(low.detach().float(), target)
    torch.testing.assert_close(value, expected, rtol=0, atol=0)
    grad, = torch.autograd.grad(value, low)
    assert grad.dtype == dtype and torch.isfinite(grad.float()).all()


def test_cyclical_state_follows_schedule_and_survives_state_dict():
    loss_fn = CyclicalFocalLoss(gamma_hc=3, gamma_pos=2, gamma_neg=2, cyclical_factor=4, epochs=21)
    assert loss_fn.eta == 1.0
    loss_fn.set_epoch(2.5)
    assert loss_fn.eta == pytest.approx(cyclical_eta(2.5, 21, 4.0)) and loss_fn.eta == pytest.approx(0.5)
    restored = CyclicalFocalLoss(gamma_hc=3, gamma_pos=2, gamma_neg=2, cyclical_factor=4, epochs=21)
    restored.load_state_dict(loss_fn.state_dict())
    assert restored.epoch == 2.5 and restored.eta == loss_fn.eta
    logits, target = random_logits()
    torch.testing.assert_close(restored(logits, target), loss_fn(logits, target))


def test_create_loss_by_name():
    assert isinstance(create_loss('sym', gamma=1.0), FocalLoss)
    assert isinstance(create_loss('asym'), AsymmetricFocalLoss)
    loss = create_loss('asym-cyclical', gamma_hc=3, gamma_pos=2, gamma_neg=2, cyclical_factor=4, epochs=200)
    assert isinstance(loss, CyclicalFocalLoss) and loss.epochs == 200 and loss.eps == 0.1
    # Published defaults are part of the interface.
    assert (FocalLoss().gamma, FocalLoss().eps) == (2.0, 0.0)
    asym = AsymmetricFocalLoss()
    assert (asym.gamma_pos, asym.gamma_neg, asym.eps, asym.reduction) == (0.0, 4.0, 0.1, 'mean')
    cyc = CyclicalFocalLoss(epochs=5)
    assert (cyc.gamma_hc, cyc.gamma_pos, cyc.gamma_neg, cyc.cyclical_factor, cyc.eps) == (0.0, 0.0, 4.0, 2.0, 0.1)


def test_asymmetric_is_not_a_cyclical_loss():
    # A shared base, not inheritance: isinstance tells the losses apart (a schedule hook must not treat the
    # fixed-eta loss as cyclical).
    asym = AsymmetricFocalLoss()
    assert not isinstance(asym, CyclicalFocalLoss) and not hasattr(asym, 'set_epoch')
    assert isinstance(asym, loss_module._FocalLossBase) and isinstance(CyclicalFocalLoss(epochs=3),
                                                                       loss_module._FocalLossBase)
    assert asym.eta == 0.0 and asym.state_dict() == {}


@pytest.mark.parametrize('make', [
    lambda: CyclicalFocalLoss(),
    lambda: CyclicalFocalLoss(gamma_hc=3, gamma_pos=2, gamma_neg=2, cyclical_factor=4),
    lambda: create_loss('asym-cyclical'),
    lambda: timm.loss.create_classification_loss('asym-cyclical', gamma_hc=3.0),
])
def test_cyclical_span_is_required(make):
    # No silent epochs=1 (which froze eta at 1): the span must be given.
    with pytest.raises(ValueError, match=r"CyclicalFocalLoss needs epochs, the number of epochs the cyclical "
                                         r"schedule spans \(timm's num_epochs"):
        make()


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.25])
@pytest.mark.parametrize('make', [
    lambda eps: create_loss('sym', gamma=2.0, smoothing=eps, soft_targets=True),
    lambda eps: create_loss('asym', gamma_pos=2.0, gamma_neg=3.0, smoothing=eps, soft_targets=True),
    lambda eps: create_loss('asym-cyclical', gamma_hc=3.0, gamma_pos=2.0, gamma_neg=2.0, cyclical_factor=4.0,
                            epochs=9, smoothing=eps, soft_targets=True),
], ids=['sym', 'asym', 'asym-cyclical'])
def test_unmixed_mixup_batch_equals_the_hard_target_loss(make, eps):
    """Mixup in 'distribution' mode with label smoothing 0 (the loss owns eps): a batch Mixup leaves unmixed
    (lam = 1: --mixup-prob < 1, --mixup-off-epoch) gives the hard-target loss with the same smoothing."""
    loss_fn = make(eps)
    if isinstance(loss_fn, CyclicalFocalLoss):
        loss_fn.set_epoch(3)  # eta = 1/3, both weight terms active
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(8, 3, 4, 4, generator=generator)
    target = torch.randint(0, 10, (8,), generator=generator)
    logits = (torch.randn(8, 10, generator=generator, dtype=torch.float64) * 4).requires_grad_()
    for mixup in (Mixup(mixup_alpha=0.8, prob=0.0, label_smoothing=0.0, num_classes=10),  # --mixup-prob 0
                  Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=10)):
        if mixup.mix_prob > 0:
            mixup.mixup_enabled = False  # --mixup-off-epoch reached
        _, soft = mixup(images.clone(), target.clone())
        assert soft.is_floating_point() and torch.equal(soft, F.one_hot(target, 10).float())
        soft_value = loss_fn(logits, soft)
        hard_value = loss_fn(logits, target)
        torch.testing.assert_close(soft_value, hard_value, rtol=1e-13, atol=1e-13)
        soft_grad, = torch.autograd.grad(soft_value, logits)
        hard_grad, = torch.autograd.grad(hard_value, logits)
        torch.testing.assert_close(soft_grad, hard_grad, rtol=1e-12, atol=1e-13)
    # A mixed batch still uses the soft distribution (not silently collapsed).
    mixed = 0.7 * F.one_hot(target, 10).double() + 0.3 * F.one_hot(target.flip(0), 10).double()
    assert not torch.allclose(loss_fn(logits, mixed), loss_fn(logits, target))


def _loss_under_scaler_step(loss_fn, poison: bool):
    """One optimizer step of a linear model through a CPU GradScaler; returns (params changed, scale after)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 8)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    if poison:  # an fp16 overflow: one logit became inf
        logits = logits.index_put((torch.tensor([1]), torch.tensor([2])), torch.tensor(float('inf')))
    scaler.scale(loss_fn(logits, y)).backward()
    scaler.step(optimizer)
    scaler.update()
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return changed, scaler.get_scale()


@pytest.mark.parametrize('loss_fn', [
    FocalLoss(check_finite=False), AsymmetricFocalLoss(check_finite=False),
    CyclicalFocalLoss(gamma_hc=3, gamma_pos=2, epochs=4, check_finite=False),
    torch.nn.CrossEntropyLoss(),  # the reference behaviour
], ids=['sym', 'asym', 'asym-cyclical', 'ce'])
def test_non_finite_logits_under_the_grad_scaler_skip_the_step(loss_fn):
    # Training mode (check_finite=False): no error and no host sync in the loss; the overflow reaches the
    # gradients and the scaler's found-inf path skips the step and backs the scale off, as with cross-entropy.
    assert _loss_under_scaler_step(loss_fn, poison=False) == (True, 2.0 ** 8)
    assert _loss_under_scaler_step(loss_fn, poison=True) == (False, 2.0 ** 7)


def test_check_finite_outside_training_is_a_clear_error():
    logits = torch.randn(3, 4)
    logits[0, 1] = float('inf')
    with pytest.raises(ValueError, match='logits contain NaN or inf values'):
        FocalLoss()(logits, torch.tensor([0, 1, 2]))  # the library default checks
    value = FocalLoss(check_finite=False)(logits, torch.tensor([0, 1, 2]))
    assert not torch.isfinite(value)


@pytest.mark.parametrize('loss_fn', [
    FocalLoss(gamma=2.0, eps=0.1, check_finite=False),
    AsymmetricFocalLoss(gamma_pos=2.0, gamma_neg=3.0, check_finite=False),
    CyclicalFocalLoss(gamma_hc=3, gamma_pos=2, gamma_neg=2, cyclical_factor=4, epochs=5, check_finite=False),
], ids=['sym', 'asym', 'asym-cyclical'])
def test_torch_func_grad_and_vmap(loss_fn):
    if isinstance(loss_fn, CyclicalFocalLoss):
        loss_fn.set_epoch(1)
    logits, target = random_logits(rows=5, classes=4, seed=21)
    expected, = torch.autograd.grad(loss_fn(logits, target), logits)
    torch.testing.assert_close(torch.func.grad(lambda z: loss_fn(z, target))(logits.detach()), expected)

    def one(z, t):
        return loss_fn(z.unsqueeze(0), t.unsqueeze(0))
    per_sample = torch.func.vmap(one)(logits.detach(), target)
    torch.testing.assert_close(per_sample, torch.stack([one(z, t) for z, t in zip(logits.detach(), target)]))
    # Per-sample gradients: the mean over the batch of the per-sample gradients is the batch gradient's N-fold.
    per_sample_grads = torch.func.vmap(torch.func.grad(one))(logits.detach(), target)
    torch.testing.assert_close(per_sample_grads / len(target), expected)


def test_second_derivative_is_a_clear_error_not_silently_zero():
    loss_fn = CyclicalFocalLoss(gamma_hc=3, gamma_pos=2, gamma_neg=2, cyclical_factor=4, epochs=5)
    loss_fn.set_epoch(1)
    logits, target = random_logits(rows=4, classes=3, seed=22)
    first, = torch.autograd.grad(loss_fn(logits, target), logits, create_graph=True)
    plain, = torch.autograd.grad(loss_fn(logits, target), logits)
    torch.testing.assert_close(first, plain)  # the first derivative stays usable with create_graph
    with pytest.raises(RuntimeError, match='focal losses are once differentiable'):
        first.pow(2).sum().backward()
    with pytest.raises(RuntimeError, match='focal losses are once differentiable'):
        torch.autograd.gradgradcheck(lambda z: loss_fn(z, target), (logits,))
    with pytest.raises(RuntimeError, match='focal losses are once differentiable'):
        torch.func.jacrev(torch.func.grad(lambda z: loss_fn(z, target)))(logits.detach())


@pytest.mark.parametrize('make, match', [
    (lambda: create_loss('focal'), r"Unknown loss type 'focal', expected one of \('sym', 'asym', 'asym-cyclical', "),
    (lambda: create_loss('sym', gamma_hc=1.0), r"Arguments \['gamma_hc'\] do not apply to the loss type 'sym'"),
    (lambda: FocalLoss(gamma=-1), 'gamma must be a finite number >= 0'),
    (lambda: AsymmetricFocalLoss(gamma_neg=-0.5), 'gamma_neg must be'),
    (lambda: CyclicalFocalLoss(gamma_hc=-2, epochs=3), 'gamma_hc must be'),
    (lambda: CyclicalFocalLoss(gamma_pos=float('nan'), epochs=3), 'gamma_pos must be'),
    (lambda: AsymmetricFocalLoss(eps=1.0), r'eps \(label smoothing\) must lie in \[0, 1\)'),
    (lambda: FocalLoss(eps=-0.1), r'must lie in \[0, 1\)'),
    (lambda: CyclicalFocalLoss(cyclical_factor=0.5, epochs=3), 'cyclical factor must be a finite number >= 1'),
    (lambda: CyclicalFocalLoss(epochs=0), 'epochs must be an integer >= 1'),
    (lambda: CyclicalFocalLoss(epochs=3).set_epoch(-1), 'epoch must be a finite number >= 0'),
    (lambda: FocalLoss(reduction='batchmean'),
     r"FocalLoss: unknown reduction 'batchmean', expected one of \('none', 'mean'"),
    (lambda: FocalLoss(soft_target_mode='max'), r"expected one of \('distribution', 'argmax'\)"),
])
def test_bad_construction_raises_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize('loss_fn', [FocalLoss(), AsymmetricFocalLoss(), CyclicalFocalLoss(epochs=4)])
def test_bad_inputs_raise_clear_errors(loss_fn):
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r'target class indices must lie in \[0, 3\), got values in \[0, 3\]'):
        loss_fn(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r'must lie in \[0, 3\), got values in \[-1, 2\]'):
        loss_fn(logits, torch.tensor([0, -1, 2, 2]))
    for bad in (float('nan'), float('inf'), -float('inf')):
        poisoned = logits.clone()
        poisoned[1, 2] = bad
        with pytest.raises(ValueError, match='logits contain NaN or inf'):
            loss_fn(poisoned, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match='target must hold class indices of shape'):
        loss_fn(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r'logits must have shape \(N, K\)'):
        loss_fn(torch.randn(3), torch.tensor([0, 1, 2]))


def test_loss_file_works_standalone_outside_the_package(tmp_path):
    """The module imports torch, the standard library and its sibling ``_base`` only: the two dropped into any
    package (e.g. timm/loss/) work there on their own."""
    source = Path(loss_module.__file__)
    imports = [line.strip() for line in source.read_text().splitlines() if line.startswith(('import ', 'from '))]
    assert all(line.split()[1].split('.')[0] in {'torch', *sys.stdlib_module_names} or line.split()[1] == '._base'
               for line in imports), imports
    copy = tmp_path / 'standalone_copy'
    copy.mkdir()
    (copy / '__init__.py').write_text('')
    for name in ('_base.py', 'cyclical_focal_loss.py'):
        shutil.copy(source.parent / name, copy / name)
    script = (
        'import sys, torch\n'
        f'sys.path.insert(0, {str(tmp_path)!r})\n'
        'import standalone_copy.cyclical_focal_loss as m\n'
        'assert "cfl_timm" not in sys.modules\n'
        'loss = m.CyclicalFocalLoss(gamma_hc=3, gamma_pos=2, gamma_neg=2, cyclical_factor=4, epochs=5)\n'
        'loss.set_epoch(1)\n'
        'z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)\n'
        'assert torch.autograd.gradcheck(lambda x: loss(x, torch.tensor([0, 1, 2, 0])), (z,))\n'
        'logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])\n'
        'torch.save((logits, target, m.AsymmetricFocalLoss()(logits, target)), sys.argv[1])\n'
        'print(loss.eta)\n'
    )
    saved = tmp_path / 'copied.pt'
    result = subprocess.run([sys.executable, '-c', script, str(saved)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) == pytest.approx(0.0)
    logits, target, copied = torch.load(saved)
    torch.testing.assert_close(copied, AsymmetricFocalLoss()(logits, target))
