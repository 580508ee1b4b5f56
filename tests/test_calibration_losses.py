"""The calibration losses against calibration_losses.md §1: known answers T1/T2, an independent autograd formula of
each loss, gradcheck, the detach checks, reductions, AdaFocal's worked updates and state, and bad input."""
import json
import math

import numpy
import pytest
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy

from cfl_timm import FocalLoss
from cfl_timm.loss import calibration_losses as cl
from cfl_timm.loss.calibration_losses import (
    CALIBRATION_LOSS_DEFAULTS,
    CALIBRATION_LOSS_TYPES,
    SOFT_TARGET_LOSSES,
    AdaFocalLoss,
    create_calibration_loss,
)

torch.set_num_threads(1)

T1_LOGITS = [[3, 1, .5, -1], [1, 2, .5, -.5], [.2, 1.5, .3, -2], [0, 0, 0, 0]]
T1_TARGET = [0, 0, 3, 1]
T1_CE = [.211667, 1.514675, 3.972453, 1.386294]
T2_LOGITS = [[15, 0, 3, -2], [1, 2, .5, -.5], [0, 12, 1, -9]]
T2_TARGET = [0, 2, 2]
BATCH_LOSSES = ('mmce-m', 'mmce-w')
ATOL = 1e-6


def t1(requires_grad=False):
    logits = torch.tensor(T1_LOGITS, dtype=torch.float64, requires_grad=requires_grad)
    return logits, torch.tensor(T1_TARGET)


def t2(requires_grad=False):
    logits = torch.tensor(T2_LOGITS, dtype=torch.float64, requires_grad=requires_grad)
    return logits, torch.tensor(T2_TARGET)


def values(name, reduction='none', logits_target=None, **kwargs):
    logits, target = logits_target or t1()
    return create_calibration_loss(name, reduction=reduction, **kwargs)(logits, target).detach()


def grad_row(name, row, logits_target_fn=t1, **kwargs):
    logits, target = logits_target_fn(requires_grad=True)
    create_calibration_loss(name, **kwargs)(logits, target).backward()
    return logits.grad[row]


def close(actual, expected, atol=ATOL):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float64), expected, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------------------------
# Independent reference: each loss written as its formula with plain autograd, float64
# ---------------------------------------------------------------------------------------------------------------

def _laplacian(a, b):
    return torch.exp(-(a.unsqueeze(1) - b.unsqueeze(0)).abs() / 0.4)


def reference(name, logits, target, reduction='mean', smoothing=0.0, **kw):
    """The spec formula of ``name``; returns the reduced loss."""
    kw = {**CALIBRATION_LOSS_DEFAULTS[name], **kw}
    num_rows, num_classes = logits.shape
    logp = torch.log_softmax(logits, dim=1)
    p = logp.exp()
    if target.is_floating_point():
        q = target
        index = None
    else:
        q = F.one_hot(target, num_classes).to(logits.dtype)
        index = target
    ce = -(q * logp).sum(1)
    brier = ((p - q) ** 2).sum(1)
    if index is not None:
        logp_y = logp.gather(1, index.unsqueeze(1)).squeeze(1)
        p_y = logp_y.exp()
    if name == 'brier':
        rows = brier
    elif name == 'ce-brier':
        y = (1 - smoothing) * q + smoothing / num_classes
        rows = -(y * logp).sum(1) + kw['brier_weight'] * brier
    elif name in ('mmce-m', 'mmce-w'):
        r, predicted = p.max(1)
        c = (predicted == index).to(logits.dtype)
        if name == 'mmce-m':
            penalty = ((c - r).unsqueeze(1) * (c - r).unsqueeze(0) * _laplacian(r, r)).sum() / num_rows**2
        else:
            ok = c.bool()
            m, n = float(ok.sum()), float((~ok).sum())
            if m == 0 or n == 0:
                penalty = logits.sum() * 0
            else:
                rc, ri = r[ok], r[~ok]
                a_cc = ((1 - rc).unsqueeze(1) * (1 - rc).unsqueeze(0) * _laplacian(rc, rc)).mean()
                a_ii = (ri.unsqueeze(1) * ri.unsqueeze(0) * _laplacian(ri, ri)).mean()
                a_ci = ((1 - rc).unsqueeze(1) * ri.unsqueeze(0) * _laplacian(rc, ri)).mean()
                if kw['mmce_norm'] == 'code':
                    d = a_cc / (m * m + 1e-5) + a_ii / (n * n + 1e-5) - 2 * a_ci / (m * n + 1e-5)
                else:
                    d = a_cc + a_ii - 2 * a_ci
                penalty = torch.sqrt(d + 1e-10)
        rows = ce + kw['mmce_weight'] * penalty
    elif name == 'flsd':
        pd = p_y.detach()
        gamma = torch.where(pd < .2, 5.0, torch.where(pd < .5, 3.0, kw['flsd_gamma']))
        rows = -(1 - p_y) ** gamma * logp_y
    elif name == 'dual-focal':
        below = (p < p_y.detach().unsqueeze(1)).to(p.dtype)
        p_j = (p * below).max(1).values
        rows = -(1 - p_y + p_j) ** kw['dual_gamma'] * logp_y
    elif name == 'adafocal':
        gammas, edges = kw['gammas'], kw['edges']
        bins = (p_y.detach().unsqueeze(1) >= edges[1:-1].unsqueeze(0)).sum(1)
        gamma = gammas[bins]
        focal = (1 - p_y + 1e-20) ** gamma.clamp_min(0)
        inverse = (1 + p_y + 1e-20) ** (-gamma).clamp_min(0)
        rows = -torch.where(gamma >= 0, focal, inverse) * logp_y
    elif name == 'mbls':
        hinge = F.relu(logits.max(1, keepdim=True).values - logits - kw['mbls_margin'])
        hinge = hinge.mean(1) if kw['mbls_norm'] == 'mean' else hinge.sum(1)
        rows = ce + kw['mbls_alpha'] * hinge
    elif name == 'confidence-penalty':
        if kw['cp_norm'] == 'classes':
            clamped = p.clamp(1e-10, 1 - 1e-10)
            entropy = -(clamped * clamped.log()).sum(1) / num_classes
        else:
            entropy = -(p * logp).sum(1)
        rows = ce - kw['cp_alpha'] * entropy
    else:
        focal = -(1 - p_y) ** kw['fcl_gamma'] * logp_y
        gate = 1.0
        if name == 'safcl':
            gate = ((1 - p_y) ** kw['safcl_gamma_cal']).detach()
        elif name == 'safcl-nodetach':
            gate = (1 - p_y) ** kw['safcl_gamma_cal']
        rows = focal + kw['fcl_lambda'] * gate * brier
    return {'none': rows, 'mean': rows.mean(), 'sum': rows.sum()}[reduction]


def random_case(rows, classes, scale, seed, soft=False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * scale
    target = torch.randint(0, classes, (rows,), generator=generator)
    if soft:
        mix = torch.rand(rows, 1, generator=generator, dtype=torch.float64)
        other = torch.randint(0, classes, (rows,), generator=generator)
        target = mix * F.one_hot(target, classes) + (1 - mix) * F.one_hot(other, classes)
    return logits, target


def trained_adafocal():
    """An AdaFocal loss with non-trivial state (both branches) and its state for the reference."""
    loss = AdaFocalLoss(num_bins=4, lam=10.0, reduction='none')
    generator = torch.Generator().manual_seed(3)
    r = torch.rand(50, generator=generator, dtype=torch.float64)
    loss.update_from_validation(r, r < 0.5)  # under-confident below 0.5 (switch to inverse focal), over above
    assert (loss.gammas < 0).any() and (loss.gammas > 0).any()
    return loss, dict(gammas=loss.gammas.clone(), edges=loss.edges.clone())


# ---------------------------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------------------------

def test_api_names_defaults_and_soft_targets():
    assert CALIBRATION_LOSS_TYPES == ('brier', 'ce-brier', 'mmce-m', 'mmce-w', 'flsd', 'dual-focal', 'adafocal',
                                      'mbls', 'confidence-penalty', 'fcl-ungated', 'safcl', 'safcl-nodetach')
    assert CALIBRATION_LOSS_DEFAULTS == {
        'brier': {},
        'ce-brier': {'brier_weight': 0.1},
        'mmce-m': {'mmce_weight': 1.0},
        'mmce-w': {'mmce_weight': 2.0, 'mmce_norm': 'code'},
        'flsd': {'flsd_gamma': 3.0},
        'dual-focal': {'dual_gamma': 5.0},
        'adafocal': {'adafocal_bins': 15, 'adafocal_lambda': 1.0, 'adafocal_gamma_init': 1.0,
                     'adafocal_gamma_max': 20.0, 'adafocal_gamma_min': -2.0, 'adafocal_switch': 0.2,
                     'adafocal_update_every': -1},
        'mbls': {'mbls_margin': 10.0, 'mbls_alpha': 0.1, 'mbls_norm': 'mean'},
        'confidence-penalty': {'cp_alpha': 0.1, 'cp_norm': 'classes'},
        'fcl-ungated': {'fcl_gamma': 2.0, 'fcl_lambda': 1.0},
        'safcl': {'fcl_gamma': 2.0, 'fcl_lambda': 1.0, 'safcl_gamma_cal': 2.0},
        'safcl-nodetach': {'fcl_gamma': 2.0, 'fcl_lambda': 1.0, 'safcl_gamma_cal': 2.0},
    }
    assert SOFT_TARGET_LOSSES == ('brier', 'ce-brier', 'mbls', 'confidence-penalty')
    for name, defaults in CALIBRATION_LOSS_DEFAULTS.items():
        loss = create_calibration_loss(name, **defaults)  # every keyword accepted with its default value
        assert isinstance(loss, torch.nn.Module) and loss.name == name
        assert loss.reduction == 'mean'
    assert create_calibration_loss('adafocal').update_every == -1


# ---------------------------------------------------------------------------------------------------------------
# Known answers (spec §0, §1)
# ---------------------------------------------------------------------------------------------------------------

def test_regressions_for_existing_losses():
    logits, target = t1()
    assert close(F.cross_entropy(logits, target, reduction='none'), T1_CE)
    assert close(LabelSmoothingCrossEntropy(0.05)(logits, target), 1.775960)
    sym = FocalLoss(gamma=3.0, eps=0.0, reduction='none')
    assert close(sym(logits, target), [.001469, .719125, 3.752280, .584843])
    assert close(FocalLoss(gamma=3.0, eps=0.0)(logits, target), 1.264429)
    assert close(FocalLoss(gamma=3.0, eps=0.0, reduction='sum')(logits, target), 5.057717)


def test_brier_known_answers():
    assert close(values('brier'), [.053018, .986020, 1.415551, .75])
    assert close(values('brier', 'mean'), .801147)
    assert close(values('brier')[3], 1 - 1 / 4, atol=1e-12)  # uniform p
    logits = torch.tensor([[40.0, -40.0, -40.0]], dtype=torch.float64)
    assert values('brier', logits_target=(logits, torch.tensor([0])))[0] < 1e-30  # p = e gives 0


def test_ce_brier_known_answers():
    assert close(values('ce-brier', 'mean'), 1.851387)
    assert close(values('ce-brier', 'mean', brier_weight=1.0), 2.572419)
    assert close(values('ce-brier', brier_weight=0.0), T1_CE)
    logits, target = t1()
    smoothed = values('ce-brier', 'mean', brier_weight=0.0, smoothing=0.05)
    assert close(smoothed, LabelSmoothingCrossEntropy(0.05)(logits, target), atol=1e-12)
    assert close(smoothed, 1.775960)


def test_mmce_known_answers():
    assert close(values('mmce-m', 'mean'), 1.864023)
    assert close(values('mmce-m', 'mean', mmce_weight=1.0) - 1.7712722, .0927511, atol=2e-7)
    assert close(values('mmce-w', 'mean'), 2.080449)
    assert close(values('mmce-w', 'mean', mmce_weight=1.0) - 1.7712722, .154589, atol=2e-6)
    assert close(values('mmce-w', 'sum'), 8.321798)
    assert close(values('mmce-w', 'mean', mmce_weight=1.0, mmce_norm='paper') - 1.7712722, .359049, atol=2e-6)
    assert close(values('mmce-m', 'sum'), 4 * 1.864023, atol=4e-6)
    assert close(values('mmce-m', 'mean', mmce_weight=0.0), 1.771272)
    # all-correct or all-wrong batch: the weighted penalty is 0 (and has no gradient)
    logits, _ = t1()
    for target in (logits.argmax(1), (logits.argmax(1) + 1) % 4):
        z = logits.clone().requires_grad_()
        create_calibration_loss('mmce-w')(z, target).backward()
        ce_z = logits.clone().requires_grad_()
        F.cross_entropy(ce_z, target).backward()
        assert close(values('mmce-w', 'mean', logits_target=(logits, target)),
                     F.cross_entropy(logits, target), atol=1e-12)
        assert torch.allclose(z.grad, ce_z.grad, atol=1e-12)


def test_flsd_known_answers():
    assert close(values('flsd'), [.001469, .719125, 3.612320, .584843])
    assert close(values('flsd', 'mean'), 1.229439)
    assert close(values('flsd', 'sum'), 4.917757)
    assert close(values('flsd', 'sum', flsd_gamma=2.0), 4.923991)
    loss = create_calibration_loss('flsd', flsd_gamma=7.0)
    p = torch.tensor([.1, .19999, .2, .3, .49999, .5, .9], dtype=torch.float64)
    assert loss.sample_gamma(p).tolist() == [5, 5, 3, 3, 3, 7, 7]
    logits, target = t1()
    p_y = torch.softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    assert loss.sample_gamma(p_y).tolist()[:3] == [7, 3, 5]


def test_dual_focal_known_answers_and_gradient_through_p_j():
    assert close(values('dual-focal'), [.000517, .963439, 3.612320, .328974])
    assert close(values('dual-focal', 'mean'), 1.226313)
    assert close(values('dual-focal', 'sum'), 4.905251)
    assert close(values('dual-focal', 'sum', dual_gamma=2.0), 5.887083)
    assert close(values('dual-focal', dual_gamma=0.0), T1_CE)
    fl5 = FocalLoss(gamma=5.0, eps=0.0, reduction='none')(*t1())
    assert close(values('dual-focal')[2:], fl5[2:], atol=1e-12)  # y lowest, or all tied: FL-gamma
    row = grad_row('dual-focal', 1)
    assert close(row, [-.388854, .163216, .212240, .013398])
    assert not close(row, [-.350194, .268304, .059867, .022024], atol=1e-3)  # what detaching p_j gives


def test_mbls_known_answers_and_gradient_through_max_logit():
    assert close(values('mbls', 'mean'), 1.771272)  # T1: every gap < 10
    assert close(values('mbls', 'mean', logits_target=t2()), 4.571568)
    assert close(values('mbls', 'mean', logits_target=t2(), mbls_norm='sum'), 5.271568)
    assert close(grad_row('mbls', 0, t2), [.024998, -.008333, -.008331, -.008333])
    assert close(values('mbls', logits_target=t2(), mbls_alpha=0.0), F.cross_entropy(*t2(), reduction='none'))


def test_confidence_penalty_known_answers():
    assert close(values('confidence-penalty', 'mean'), 1.745746)
    assert close(values('confidence-penalty', 'mean', cp_norm='sample'), 1.669168)
    assert close(values('confidence-penalty', 'mean', cp_norm='sample') + .1 * math.log(4), 1.807797)
    assert close(values('confidence-penalty', cp_alpha=0.0), T1_CE)


def test_fcl_safcl_known_answers_and_gate_gradients():
    assert close(values('fcl-ungated'), [.060721, 1.907832, 5.239832, 1.529791])
    assert close(values('fcl-ungated', 'mean'), 2.184544)
    for name in ('safcl', 'safcl-nodetach'):
        assert close(values(name), [.009632, 1.521892, 5.187032, 1.201666])
        assert close(values(name, 'mean'), 1.980055)
    assert close(grad_row('safcl', 1), [-.286009, .239841, .034672, .011497])
    assert close(grad_row('safcl-nodetach', 1), [-.351982, .290386, .045950, .015646])
    assert close(grad_row('fcl-ungated', 1), [-.328440, .285670, .032779, .009991])
    fl2 = FocalLoss(gamma=2.0, eps=0.0, reduction='none')(*t1())
    for name in ('fcl-ungated', 'safcl', 'safcl-nodetach'):
        assert close(values(name, fcl_lambda=0.0), fl2, atol=1e-12)
    for name in ('safcl', 'safcl-nodetach'):
        assert close(grad_row(name, 1, safcl_gamma_cal=0.0), grad_row('fcl-ungated', 1), atol=1e-12)
    assert close(values('fcl-ungated', fcl_gamma=0.0, fcl_lambda=0.0), T1_CE)


# ---------------------------------------------------------------------------------------------------------------
# AdaFocal
# ---------------------------------------------------------------------------------------------------------------

VAL_R = [.3, .4, .5, .6, .7, .8, .9, .95, .99]
VAL_C = [0, 1, 0, 1, 1, 0, 1, 1, 1]


def adafocal_update(loss):
    """The spec's validation set, confidences in float32 as a softmax gives them (the spec's values come from it)."""
    return loss.update_from_validation(torch.tensor(VAL_R, dtype=torch.float32), torch.tensor(VAL_C))


def test_adafocal_before_update_is_fl1():
    logits, target = t1()
    assert close(create_calibration_loss('adafocal')(logits, target), 1.539848)
    assert close(create_calibration_loss('adafocal', reduction='sum')(logits, target), 6.159391)
    fl1 = FocalLoss(gamma=1.0, eps=0.0, reduction='none')(logits, target)
    assert close(values('adafocal'), fl1, atol=1e-12)
    assert close(values('adafocal', adafocal_gamma_init=0.0), T1_CE)


def test_adafocal_worked_update_lambda_1():
    loss = create_calibration_loss('adafocal', reduction='sum', adafocal_bins=3, adafocal_lambda=1.0)
    stats = adafocal_update(loss)
    json.dumps(stats)
    assert stats['update'] == 1 and int(loss.num_updates) == 1
    assert close(loss.edges, [.3, .6, .9, .99], atol=1e-7)
    assert [b['count'] for b in stats['bins']] == [3, 3, 2]  # .3 (the minimum) falls in no bin
    assert close([b['gap'] for b in stats['bins']], [-.166667, .133333, -.03])
    assert close([(b['lo'], b['hi']) for b in stats['bins']], [(.3, .6), (.6, .9), (.9, .99)], atol=1e-7)
    assert close([b['conf'] - b['acc'] for b in stats['bins']], [b['gap'] for b in stats['bins']], atol=1e-12)
    assert close(loss.gammas, [.846482, 1.142631, .970446])
    assert close([b['gamma'] for b in stats['bins']], loss.gammas, atol=1e-12)
    logits, target = t1()
    p_y = torch.softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    assert close(loss.sample_gamma(p_y), [1.142631, .846482, .846482, .846482])
    assert close(loss(logits, target), 6.255143)
    assert adafocal_update(loss)['update'] == 2
    assert close(loss.gammas, [.716531, 1.305605, .941765])


def test_adafocal_worked_update_lambda_10_switches_to_inverse_focal():
    loss = create_calibration_loss('adafocal', reduction='sum', adafocal_bins=3, adafocal_lambda=10.0)
    adafocal_update(loss)
    assert close(loss.gammas, [-.2, 3.793668, .740818])
    logits, target = t1()
    assert close(loss(logits, target), 7.013355)
    adafocal_update(loss)
    assert close(loss.gammas, [-1.058898, 14.391914, .548812])
    # inverse branch on T1 (every p_y below .6 is in bin 0): -(1 + p_y + 1e-20)^1.058898 logp_y
    rows = create_calibration_loss('adafocal', reduction='none', adafocal_bins=3)
    rows.load_state_dict(loss.state_dict())
    p_y = torch.softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    expected = -(1 + p_y) ** 1.058898 * torch.log(p_y)
    assert close(rows(logits, target)[1:], expected[1:], atol=1e-5)
    # the clip: gamma_max 10 holds the middle bin at 10
    clipped = create_calibration_loss('adafocal', adafocal_bins=3, adafocal_lambda=10.0, adafocal_gamma_max=10.0)
    adafocal_update(clipped)
    adafocal_update(clipped)
    assert close(clipped.gammas, [-1.058898, 10.0, .548812])


def test_adafocal_state_dict_round_trip_and_edges_interpolation():
    loss, _ = trained_adafocal()
    adafocal_update(loss)
    state = loss.state_dict()
    assert set(state) == {'gammas', 'edges', 'num_updates'}
    fresh = AdaFocalLoss(num_bins=4, reduction='none')
    fresh.load_state_dict(state)
    assert torch.equal(fresh.gammas, loss.gammas) and torch.equal(fresh.edges, loss.edges)
    assert int(fresh.num_updates) == 2
    logits, target = random_case(20, 6, 2.0, seed=1)
    assert torch.equal(fresh(logits, target), loss(logits, target))
    # equal-mass edges: numpy.interp(linspace(0, V, M + 1), arange(V), sort(r)) with V = 10, M = 4
    r = torch.tensor([.9, .1, .5, .3, .7, .2, .8, .4, .6, .95], dtype=torch.float64)
    loss.update_from_validation(r, r > .5)
    assert close(loss.edges, [.1, .35, .6, .85, .95], atol=1e-12)
    for size in (1, 2, 3, 7, 101):
        r = torch.rand(size, dtype=torch.float64)
        loss.update_from_validation(r, r > .5)
        expected = numpy.interp(numpy.linspace(0, size, 5), numpy.arange(size), numpy.sort(r.numpy()))
        assert close(loss.edges, expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Against the independent formula, gradcheck, reductions, dtypes
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', CALIBRATION_LOSS_TYPES)
def test_matches_autograd_formula_value_and_gradient(name):
    kwargs, ref_kwargs = {}, {}
    if name == 'adafocal':
        trained, ref_kwargs = trained_adafocal()
        kwargs = {'adafocal_bins': 4}
    # (48, 10): rows of fewer than 16 classes in a batch of >= 32 take the transposed log-softmax (loss._base).
    cases = [(7, 2, 1.0), (16, 5, 3.0), (9, 37, 10.0), (12, 10, 1e3), (5, 1000, 30.0), (48, 10, 3.0)]
    if name == 'mbls':
        kwargs = ref_kwargs = {'mbls_margin': 2.0}
    for seed, (rows, classes, scale) in enumerate(cases):
        logits, target = random_case(rows, classes, scale, seed)
        reductions = ('mean', 'sum') if name in BATCH_LOSSES else ('none', 'mean', 'sum')
        for reduction in reductions:
            loss = create_calibration_loss(name, reduction=reduction, **kwargs)
            if name == 'adafocal':
                loss.load_state_dict(trained.state_dict())
            z = logits.clone().requires_grad_()
            z_ref = logits.clone().requires_grad_()
            value = loss(z, target)
            expected = reference(name, z_ref, target, reduction, **ref_kwargs)
            weights = torch.rand(value.shape, dtype=torch.float64) if reduction == 'none' else torch.tensor(1.5)
            (value * weights).sum().backward()
            (expected * weights).sum().backward()
            message = f'{name} {reduction} N={rows} K={classes} scale={scale}'
            assert torch.allclose(value, expected.detach(), rtol=1e-9, atol=1e-9), message
            assert torch.allclose(z.grad, z_ref.grad, rtol=1e-7, atol=1e-9), message


@pytest.mark.parametrize('name', SOFT_TARGET_LOSSES)
def test_soft_targets_match_formula(name):
    for seed, (rows, classes) in enumerate([(6, 3), (8, 11), (40, 7)]):
        logits, soft = random_case(rows, classes, 3.0, seed, soft=True)
        kwargs = {'mbls_margin': 2.0} if name == 'mbls' else {}
        extra = {'smoothing': 0.1} if name == 'ce-brier' else {}
        z, z_ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        value = create_calibration_loss(name, reduction='none', **kwargs, **extra)(z, soft)
        expected = reference(name, z_ref, soft, 'none', **kwargs, **extra)
        weights = torch.rand(rows, dtype=torch.float64)
        (value * weights).sum().backward()
        (expected * weights).sum().backward()
        assert torch.allclose(value, expected.detach(), atol=1e-10)
        assert torch.allclose(z.grad, z_ref.grad, atol=1e-10)
        # one-hot float targets equal class indices
        hard = soft.argmax(1)
        onehot = F.one_hot(hard, classes).double()
        loss = create_calibration_loss(name, reduction='none', **kwargs, **extra)
        assert torch.allclose(loss(logits, onehot), loss(logits, hard), atol=1e-12)


def test_ce_brier_smoothing_with_hard_targets_matches_formula():
    logits, target = random_case(10, 7, 3.0, seed=5)
    z, z_ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value = create_calibration_loss('ce-brier', smoothing=0.2, brier_weight=0.5)(z, target)
    expected = reference('ce-brier', z_ref, target, smoothing=0.2, brier_weight=0.5)
    value.backward()
    expected.backward()
    assert torch.allclose(value, expected, atol=1e-12) and torch.allclose(z.grad, z_ref.grad, atol=1e-12)


@pytest.mark.parametrize('name', [name for name in CALIBRATION_LOSS_TYPES if name != 'safcl'])
def test_gradcheck(name):
    """Analytic gradient against finite differences. Not for ``safcl``: its detached gate makes its gradient, by
    definition, not the derivative of its value (it is checked against the detached formula instead)."""
    logits, target = random_case(6, 5, 2.0, seed=11)
    kwargs = {'mbls_margin': 1.0} if name == 'mbls' else {'adafocal_bins': 4} if name == 'adafocal' else {}
    reduction = 'mean' if name in BATCH_LOSSES else 'none'
    loss = create_calibration_loss(name, reduction=reduction, **kwargs)
    if name == 'adafocal':
        loss.load_state_dict(trained_adafocal()[0].state_dict())
    z = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (z,), eps=1e-6, atol=1e-7)
    if name in SOFT_TARGET_LOSSES:
        soft = random_case(6, 5, 2.0, seed=12, soft=True)[1]
        assert torch.autograd.gradcheck(lambda x: loss(x, soft), (z,), eps=1e-6, atol=1e-7)
    if name == 'confidence-penalty':  # some p below the clamp 1e-10 (no gradient through the clamped entries)
        clamped = logits.clone()
        clamped[:3, 0] = -40.0
        z = clamped.requires_grad_()
        assert torch.autograd.gradcheck(lambda x: loss(x, target), (z,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_confidence_penalty_clamps_both_ends_as_the_formula(dtype):
    # p below 1e-10 (every dtype) and, in float64 only, a row with p above 1 - 1e-10 (1 - 1e-10 rounds to 1 in
    # float32): value and gradient against the clamped formula with autograd (clamp: no gradient where clamped).
    logits, target = random_case(6, 5, 2.0, seed=21)
    logits[:3, 0] = -40.0
    logits[3] = torch.tensor([40.0, 0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    for reduction in ('none', 'mean'):
        z = logits.to(dtype).requires_grad_()
        value = create_calibration_loss('confidence-penalty', reduction=reduction)(z, target)
        z_ref = logits.to(dtype).double().requires_grad_()
        if dtype == torch.float32:  # the float32 bounds: 1 - 1e-10 is 1, no upper clamp
            p = torch.softmax(z_ref, 1)
            clamped = p.clamp(min=float(torch.tensor(1e-10, dtype=dtype)))
            rows = -torch.log_softmax(z_ref, 1).gather(1, target.unsqueeze(1)).squeeze(1) + \
                0.1 * (clamped * clamped.log()).sum(1) / 5
            expected = rows if reduction == 'none' else rows.mean()
        else:
            expected = reference('confidence-penalty', z_ref, target, reduction=reduction, cp_alpha=0.1,
                                 cp_norm='classes')
        value.sum().backward()
        expected.sum().backward()
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        assert torch.allclose(value.double(), expected, rtol=tol, atol=tol)
        assert torch.allclose(z.grad.double(), z_ref.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize('name', CALIBRATION_LOSS_TYPES)
def test_sum_is_n_times_mean_and_none_is_per_sample(name):
    logits, target = random_case(8, 6, 3.0, seed=2)
    mean = create_calibration_loss(name)(logits, target)
    total = create_calibration_loss(name, reduction='sum')(logits, target)
    assert torch.allclose(total, 8 * mean, atol=1e-12)
    if name in BATCH_LOSSES:
        with pytest.raises(ValueError, match=f"{name}: reduction 'none'"):
            create_calibration_loss(name, reduction='none')
    else:
        rows = create_calibration_loss(name, reduction='none')(logits, target)
        assert rows.shape == (8,) and torch.allclose(rows.mean(), mean, atol=1e-12)
        assert torch.allclose(rows[:3], create_calibration_loss(name, reduction='none')(logits[:3], target[:3]))


# The losses with a compiled-only path: their formula (mbls, confidence penalty) or a row form (the Brier family,
# MMCE, Dual focal; mmce-w's penalty also has a host-read-free compiled branch).
COMPILED_PATH_LOSSES = tuple(name for name in CALIBRATION_LOSS_TYPES if cl._LOSS_CLASSES[name]._formula_rows is not None
                             or cl._LOSS_CLASSES[name]._row_form is not None)


def compiled_cases(name):
    """(logits, target) pairs in float64 for the compiled path: random rows at two scales, and the edge cases of
    ``name`` (every sample correct / wrong for mmce-w, both clamp ends for the confidence penalty, soft targets)."""
    cases = [random_case(16, 5, 3.0, seed=1), random_case(12, 10, 1e3, seed=3)]
    if name == 'mmce-w':  # m = N (n = 0) and m = 0: the indicator is 0, the penalty and its gradient vanish
        logits = random_case(8, 4, 3.0, seed=5)[0]
        cases += [(logits, logits.argmax(1)), (logits, (logits.argmax(1) + 1) % 4)]
    if name == 'confidence-penalty':
        logits, target = random_case(6, 5, 2.0, seed=21)
        logits[:3, 0] = -40.0  # p below 1e-10
        logits[3] = torch.tensor([40.0, 0.0, 1.0, -2.0, 0.5], dtype=torch.float64)  # p above 1 - 1e-10
        cases.append((logits, target))
    if name in SOFT_TARGET_LOSSES:
        cases.append(random_case(8, 11, 3.0, seed=7, soft=True))
    return cases


COMPILED_PATH_KWARGS = {'mbls': {'mbls_margin': 2.0}, 'ce-brier': {'smoothing': 0.1}}


@pytest.mark.parametrize('name', COMPILED_PATH_LOSSES)
def test_compiled_path_matches_eager_and_formula(name):
    # Under torch.compile mbls and the confidence penalty are their formula with plain autograd ops, the Brier
    # family, MMCE and Dual focal their row form (rows from row reductions, the gradient rebuilt in the backward),
    # and mmce-w's penalty holds m, n, the indicator and the sign of D as tensors (aot_eager traces the same branch
    # as the inductor; fullgraph=True fails on any graph break): value and gradient equal the eager path and the
    # independent formula, in float64.
    import torch._dynamo as dynamo

    dynamo.reset()
    kwargs = COMPILED_PATH_KWARGS.get(name, {})
    reduction = 'sum' if name in BATCH_LOSSES else 'none'
    loss = create_calibration_loss(name, reduction=reduction, **kwargs)
    compiled = torch.compile(loss, backend='aot_eager', fullgraph=True, dynamic=True)
    for logits, target in compiled_cases(name):
        z, z_eager, z_ref = (logits.clone().requires_grad_() for _ in range(3))
        with dynamo.config.patch(specialize_float=True):  # as train.py's compile_task
            value = compiled(z, target)
        eager = loss(z_eager, target)
        expected = reference(name, z_ref, target, reduction, **kwargs)
        weights = torch.rand(value.shape, dtype=torch.float64) if reduction == 'none' else torch.tensor(1.5)
        for v in (value, eager, expected):
            (v * weights).sum().backward()
        message = f'{name} {tuple(logits.shape)} soft={target.is_floating_point()}'
        assert torch.allclose(value, eager.detach(), rtol=1e-10, atol=1e-12), message
        assert torch.allclose(value, expected.detach(), rtol=1e-9, atol=1e-9), message
        assert torch.allclose(z.grad, z_eager.grad, rtol=1e-9, atol=1e-12), message
        assert torch.allclose(z.grad, z_ref.grad, rtol=1e-7, atol=1e-9), message


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    logits, target = random_case(8, 5, 3.0, seed=4)
    half = logits.to(dtype)
    for name in CALIBRATION_LOSS_TYPES:
        z = half.clone().requires_grad_()
        value = create_calibration_loss(name)(z, target)
        assert value.dtype == torch.float32, name
        assert torch.allclose(value, create_calibration_loss(name)(half.float(), target), atol=1e-6), name
        value.backward()
        assert z.grad.dtype == dtype and torch.isfinite(z.grad.float()).all(), name


def test_no_grad_and_non_grad_logits_give_the_same_value():
    logits, target = random_case(8, 5, 3.0, seed=6)
    for name in CALIBRATION_LOSS_TYPES:
        loss = create_calibration_loss(name)
        with torch.no_grad():
            value = loss(logits.clone().requires_grad_(), target)
        assert torch.equal(value, loss(logits, target)), name
        assert torch.allclose(value, loss(logits.clone().requires_grad_(), target)), name


def test_second_derivative_is_refused():
    logits, target = t1(requires_grad=True)
    for name in CALIBRATION_LOSS_TYPES:
        loss = create_calibration_loss(name)(logits, target) + (logits ** 2).sum()
        with pytest.raises(RuntimeError, match='once differentiable'):
            torch.autograd.grad(loss, logits, create_graph=True)


def test_mmce_kernel_sums_match_the_kernel_matrix_with_ties():
    generator = torch.Generator().manual_seed(7)
    r = torch.rand(40, generator=generator, dtype=torch.float64)
    r[5:9] = r[20]  # ties: kernel 1 and sign 0
    r[30] = r[31] = 1.0
    v = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    kernel_sum, sign_sum = cl._laplacian_kernel_sums(r, v, 0.4)
    diff = r.unsqueeze(1) - r.unsqueeze(0)
    kernel = torch.exp(-diff.abs() / 0.4)
    assert torch.allclose(kernel_sum, kernel @ v, atol=1e-12)
    assert torch.allclose(sign_sum, (torch.sign(diff) * kernel) @ v, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

def test_factory_rejects_unknown_names_keywords_and_smoothing():
    with pytest.raises(ValueError, match=r"Unknown calibration loss 'brierr'.*'brier'"):
        create_calibration_loss('brierr')
    for name in CALIBRATION_LOSS_TYPES:
        with pytest.raises(ValueError, match=f'{name}: keyword argument.*gamma_pos.*valid keywords'):
            create_calibration_loss(name, gamma_pos=1.0)
        for keyword in CALIBRATION_LOSS_DEFAULTS[name]:
            assert keyword in str(pytest.raises(ValueError, create_calibration_loss, name, bogus=1).value)
        if name != 'ce-brier':
            with pytest.raises(ValueError, match=f'{name}: label smoothing must be 0'):
                create_calibration_loss(name, smoothing=0.1)
        with pytest.raises(ValueError, match=f"{name}: unknown reduction 'avg'"):
            create_calibration_loss(name, reduction='avg')
    with pytest.raises(ValueError, match="brier: keyword.*valid keywords: \\(none\\)"):
        create_calibration_loss('brier', brier_weight=1.0)
    with pytest.raises(ValueError, match='ce-brier: smoothing must lie in'):
        create_calibration_loss('ce-brier', smoothing=1.0)
    with pytest.raises(ValueError, match='ce-brier: smoothing must be a finite number >= 0'):
        create_calibration_loss('ce-brier', smoothing=-0.1)


NEGATIVE = [('ce-brier', 'brier_weight'), ('mmce-m', 'mmce_weight'), ('mmce-w', 'mmce_weight'),
            ('flsd', 'flsd_gamma'), ('dual-focal', 'dual_gamma'), ('adafocal', 'adafocal_lambda'),
            ('adafocal', 'adafocal_switch'), ('mbls', 'mbls_margin'), ('mbls', 'mbls_alpha'),
            ('confidence-penalty', 'cp_alpha'), ('fcl-ungated', 'fcl_gamma'), ('fcl-ungated', 'fcl_lambda'),
            ('safcl', 'fcl_gamma'), ('safcl', 'fcl_lambda'), ('safcl', 'safcl_gamma_cal'),
            ('safcl-nodetach', 'safcl_gamma_cal')]


@pytest.mark.parametrize('name,keyword', NEGATIVE)
def test_negative_or_non_finite_parameters_are_rejected(name, keyword):
    for bad in (-0.5, math.nan, math.inf, '1'):
        with pytest.raises(ValueError, match=f'{name}: {keyword} must be a finite number >= 0'):
            create_calibration_loss(name, **{keyword: bad})


def test_choice_and_adafocal_parameters_are_rejected():
    bad = [
        (dict(name='mmce-w', mmce_norm='both'), "mmce-w: unknown mmce_norm 'both'.*'code', 'paper'"),
        (dict(name='mbls', mbls_norm='max'), "mbls: unknown mbls_norm 'max'.*'mean', 'sum'"),
        (dict(name='confidence-penalty', cp_norm='x'), "confidence-penalty: unknown cp_norm 'x'.*'classes'"),
        (dict(name='adafocal', adafocal_bins=0), 'adafocal: adafocal_bins must be an integer >= 1'),
        (dict(name='adafocal', adafocal_bins=2.5), 'adafocal: adafocal_bins must be an integer >= 1'),
        (dict(name='adafocal', adafocal_update_every=0), 'adafocal: adafocal_update_every must be -1'),
        (dict(name='adafocal', adafocal_gamma_min=25.0), 'adafocal: adafocal_gamma_min .* must be <='),
        (dict(name='adafocal', adafocal_gamma_init=30.0), 'adafocal: adafocal_gamma_init must lie in'),
        (dict(name='adafocal', adafocal_gamma_max=math.inf), 'adafocal: adafocal_gamma_max must be a finite'),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            create_calibration_loss(**kwargs)


@pytest.mark.parametrize('name', CALIBRATION_LOSS_TYPES)
def test_bad_logits_and_targets_are_rejected(name):
    loss = create_calibration_loss(name)
    logits, target = t1()
    with pytest.raises(ValueError, match=f'{name}: logits must be a floating-point tensor'):
        loss(torch.ones(4, 4, dtype=torch.int64), target)
    with pytest.raises(ValueError, match=f'{name}: logits must have shape \\(N, K\\).*K >= 2'):
        loss(torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=f'{name}: logits must have shape'):
        loss(torch.zeros(4, dtype=torch.float64), target)
    for bad in (torch.tensor([0, 4, 1, 1]), torch.tensor([0, -1, 1, 1])):
        with pytest.raises(ValueError, match=f'{name}: target class indices must lie in \\[0, 4\\)'):
            loss(logits, bad)
    with pytest.raises(ValueError, match=f'{name}: target must hold integer class indices'):
        loss(logits, target.double())
    soft = torch.full((4, 4), 0.25, dtype=torch.float64)
    if name in SOFT_TARGET_LOSSES:
        for bad in (soft * 2, soft + torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64)):
            with pytest.raises(ValueError, match=f'{name}: soft targets must be non-negative and sum to 1'):
                loss(logits, bad)
    else:
        with pytest.raises(ValueError, match=f'{name}: soft targets .* are not supported'):
            loss(logits, soft)


def test_adafocal_update_rejects_bad_validation_input():
    loss = AdaFocalLoss(num_bins=3)
    r = torch.tensor([.3, .6, .9])
    bad = [
        ((torch.tensor([]), torch.tensor([])), 'confidences must be a non-empty 1-D'),
        ((torch.tensor([1, 0, 1]), torch.tensor([1, 0, 1])), 'confidences must be a non-empty 1-D floating'),
        ((torch.tensor([.3, 1.2, .5]), torch.tensor([1, 0, 1])), r'confidences must lie in \[0, 1\]'),
        ((r, torch.tensor([1, 0])), 'correct must be a tensor of shape'),
        ((r, torch.tensor([1, 2, 0])), 'correct must hold only 0/1'),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=f'adafocal.update_from_validation: {message}'):
            loss.update_from_validation(*args)
    assert int(loss.num_updates) == 0
