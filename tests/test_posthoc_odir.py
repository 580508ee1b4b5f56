"""ODIR-regularised scaling fits (ms, dirichlet, vs): the analytic gradient against autograd, the numpy L-BFGS,
and the fitted results against a straightforward autograd + torch.optim.LBFGS reference on a miscalibrated set."""
import numpy as np
import pytest
import torch

from cfl_timm.metrics import fit_temperature
from cfl_timm.metrics.lbfgs import minimize_lbfgs
from cfl_timm.metrics.posthoc import AffineNLL, fit_posthoc

CLASSES = 6
GRID = (1e-2, 100.0)  # a 2 x 2 grid and 2 folds keep the reference's autograd fits to about a second
FOLDS = 2


def miscalibrated(count: int, seed: int):
    """Labels drawn from softmax(z + class bias); the model reports 3 z (over-confident, biased)."""
    generator = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(count, CLASSES, generator=generator, dtype=torch.float64) * 1.5
    true_logits += torch.linspace(-1.0, 1.0, CLASSES, dtype=torch.float64)
    target = torch.multinomial(true_logits.softmax(1), 1, generator=generator).squeeze(1)
    return true_logits * 3.0, target


def features(name: str, logits: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(1) if name == 'dirichlet' else logits


def reference_objective(x, target, weight, bias, lam, mu):
    """NLL + ODIR written directly with autograd-able torch operations."""
    classes = x.shape[1]
    full = weight.dim() == 2
    loss = torch.nn.functional.cross_entropy(x @ weight.T + bias if full else x * weight + bias, target)
    if full and lam:
        loss = loss + lam / (classes * (classes - 1)) * weight[~torch.eye(classes, dtype=torch.bool)].pow(2).sum()
    return loss + mu / classes * bias.pow(2).sum()


def reference_solve(x, target, lam, mu):
    """The previous implementation: autograd + torch.optim.LBFGS (strong Wolfe) from the TS solution."""
    classes = x.shape[1]
    weight = (torch.eye(classes, dtype=torch.float64) / fit_temperature(x, target)).requires_grad_(True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        loss = reference_objective(x, target, weight, bias, lam, mu)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def reference_fit(x, target):
    """The previous cross-validated choice of (lambda, mu) and the final fit with it."""
    count = x.shape[0]
    fold_of = torch.empty(count, dtype=torch.long)
    fold_of[torch.randperm(count, generator=torch.Generator().manual_seed(0))] = torch.arange(count) % FOLDS
    pairs = [(a, b) for a in GRID for b in GRID]
    scores = []
    for lam, mu in pairs:
        total = 0.0
        for fold in range(FOLDS):
            held = fold_of == fold
            weight, bias = reference_solve(x[~held], target[~held], lam, mu)
            total += float(torch.nn.functional.cross_entropy(x[held] @ weight.T + bias, target[held], reduction='sum'))
        scores.append(total / count)
    lam, mu = pairs[int(np.argmin(scores))]
    weight, bias = reference_solve(x, target, lam, mu)
    return {'pair': (lam, mu), 'cv_nll': scores, 'weight': weight, 'bias': bias}


@pytest.fixture(scope='module')
def data():
    return miscalibrated(600, seed=3), miscalibrated(1000, seed=4)


@pytest.fixture(scope='module', params=['ms', 'dirichlet'])
def fits(request, data):
    (logits, target), _ = data
    name = request.param
    new = fit_posthoc(name, logits, target, grid=GRID, folds=FOLDS)
    return name, new, reference_fit(features(name, logits), target)


@pytest.mark.parametrize('full_matrix', [True, False])
def test_analytic_gradient_equals_autograd(full_matrix):
    logits, target = miscalibrated(300, seed=5)
    generator = torch.Generator().manual_seed(6)
    shape = (CLASSES, CLASSES) if full_matrix else (CLASSES,)
    weight = (torch.randn(shape, generator=generator, dtype=torch.float64) * 0.3).requires_grad_(True)
    bias = torch.randn(CLASSES, generator=generator, dtype=torch.float64).requires_grad_(True)
    objective = AffineNLL(logits, target, full_matrix)
    for lam, mu in [(0.0, 0.0), (0.7, 2.5)]:
        loss = reference_objective(logits, target, weight, bias, lam, mu)
        grad_weight, grad_bias = torch.autograd.grad(loss, (weight, bias))
        value, grad = objective(torch.cat([weight.detach().flatten(), bias.detach()]).numpy(), lam, mu)
        assert value == pytest.approx(float(loss.detach()), rel=1e-13)
        expected = torch.cat([grad_weight.flatten() if full_matrix else grad_weight, grad_bias]).numpy()
        np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-13)
        # and against central differences, independently of autograd
        params = torch.cat([weight.detach().flatten(), bias.detach()]).numpy()
        step = 1e-6
        for index in (0, 1, len(params) - 1):
            shift = np.zeros_like(params)
            shift[index] = step
            difference = (objective(params + shift, lam, mu)[0] - objective(params - shift, lam, mu)[0]) / (2 * step)
            assert difference == pytest.approx(grad[index], rel=1e-6, abs=1e-9)


def test_fitting_objective_no_worse_than_reference(data, fits):
    (logits, target), _ = data
    name, new, reference = fits
    lam, mu = new.state['odir_lambda'], new.state['odir_mu']
    x = features(name, logits)
    # the reference's final fit with the pair the new fit chose (the same pair, checked below)
    weight, bias = reference_solve(x, target, lam, mu)
    ours = float(reference_objective(x, target, new.state['weight'], new.state['bias'], lam, mu))
    theirs = float(reference_objective(x, target, weight, bias, lam, mu))
    assert ours <= theirs + 1e-10


def test_odir_choice_and_probabilities_match_reference(data, fits):
    _, (eval_logits, _) = data
    name, new, reference = fits
    assert (new.state['odir_lambda'], new.state['odir_mu']) == reference['pair']
    # On the weakest Dirichlet pair the reference stops about 2e-8 above the fold optimum (ill-conditioned), which
    # moves its held-out NLL by a few 1e-6; the new fits there are the closer ones to the optimum.
    np.testing.assert_allclose(new.state['cv_nll'], reference['cv_nll'], rtol=0, atol=2e-5)
    x = features(name, eval_logits)
    expected = torch.softmax(x @ reference['weight'].T + reference['bias'], dim=1)
    torch.testing.assert_close(new.predict_proba(eval_logits), expected, rtol=0, atol=1e-4)


def test_vector_scaling_matches_reference(data):
    (logits, target), (eval_logits, _) = data
    new = fit_posthoc('vs', logits, target)
    classes = logits.shape[1]
    weight = torch.full((classes,), 1.0 / fit_temperature(logits, target), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        loss = reference_objective(logits, target, weight, bias, 0.0, 0.0)
        loss.backward()
        return loss

    optimizer.step(closure)
    ours = float(reference_objective(logits, target, new.state['weight'], new.state['bias'], 0.0, 0.0))
    assert ours <= float(closure().detach()) + 1e-10
    expected = torch.softmax(eval_logits * weight.detach() + bias.detach(), dim=1)
    torch.testing.assert_close(new.predict_proba(eval_logits), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize('name', ['ms', 'dirichlet'])
def test_default_grid_fit_is_bit_identical_when_repeated(data, name):
    (logits, target), (eval_logits, _) = data
    once, again = (fit_posthoc(name, logits, target) for _ in range(2))
    assert once.state['cv_nll'] == again.state['cv_nll']
    assert torch.equal(once.state['weight'], again.state['weight'])
    assert torch.equal(once.predict_proba(eval_logits), again.predict_proba(eval_logits))


def test_lbfgs_reaches_a_known_minimum_and_never_ends_above_its_start():
    # an ill-conditioned convex quadratic with its minimum at 1, plus a region where f is not finite
    scales = np.logspace(0, 4, 12)

    def quadratic(x):
        if x[0] > 50:
            return float('nan'), np.zeros_like(x)
        return 0.5 * float(scales @ (x - 1) ** 2), scales * (x - 1)

    start = np.full(12, 40.0)
    x, value = minimize_lbfgs(quadratic, start, max_iter=500)
    np.testing.assert_allclose(x, 1.0, atol=1e-6)
    assert value == quadratic(x)[0] < 1e-10
    x_short, value_short = minimize_lbfgs(quadratic, start, max_iter=2)
    assert quadratic(start)[0] > value_short > value
    x_again, _ = minimize_lbfgs(quadratic, start, max_iter=500)
    assert np.array_equal(x, x_again)


def test_bad_max_iter():
    logits, target = miscalibrated(20, seed=7)
    with pytest.raises(ValueError, match='max_iter must be an integer >= 1'):
        fit_posthoc('ms', logits, target, max_iter=0)
