"""Post-hoc calibrators: isotonic against scikit-learn, scaling NLL no worse than TS, ECE reduced, state."""
import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression

from cfl_timm.metrics import fit_temperature
from cfl_timm.metrics.calibration import bin_indices
from cfl_timm.metrics.posthoc import (
    POSTHOC_METHODS,
    IsotonicCalibration,
    fit_posthoc,
    pool_adjacent_violators,
    posthoc_from_state,
)

CLASSES = 10


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def miscalibrated(count: int, seed: int, scale: float = 3.0):
    """Labels drawn from softmax(z); the model reports scale * z (over-confident)."""
    generator = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(count, CLASSES, generator=generator, dtype=torch.float64) * 1.5
    target = torch.multinomial(true_logits.softmax(1), 1, generator=generator).squeeze(1)
    return true_logits * scale, target


def ece(probs: torch.Tensor, target: torch.Tensor, num_bins: int = 15) -> float:
    confidence, prediction = probs.max(1)
    bins = bin_indices(confidence, num_bins)
    gap = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, (prediction == target).double() - confidence)
    return float(gap.abs().sum() / target.numel())


def nll(probs: torch.Tensor, target: torch.Tensor) -> float:
    return float(-probs.gather(1, target[:, None]).clamp_min(1e-300).log().mean())


@pytest.fixture(scope='module')
def splits():
    return miscalibrated(800, seed=0), miscalibrated(1500, seed=1)


@pytest.fixture(scope='module')
def fitted(splits):
    (fit_logits, fit_target), _ = splits
    return {name: fit_posthoc(name, fit_logits, fit_target) for name in POSTHOC_METHODS}


def test_isotonic_matches_sklearn_per_class(splits):
    (fit_logits, fit_target), (eval_logits, _) = splits
    # Coarse logits make tied probabilities, which scikit-learn averages before pooling.
    fit_logits = fit_logits.round()
    calibrator = IsotonicCalibration().fit(fit_logits, fit_target)
    per_class = calibrator.per_class(eval_logits).numpy()
    fit_probs, eval_probs = fit_logits.softmax(1).numpy(), eval_logits.softmax(1).numpy()
    for k in range(CLASSES):
        reference = IsotonicRegression(out_of_bounds='clip').fit(fit_probs[:, k], (fit_target.numpy() == k) * 1.0)
        np.testing.assert_allclose(per_class[:, k], reference.predict(eval_probs[:, k]), rtol=0, atol=1e-12)


def test_pool_adjacent_violators_small_case():
    fitted_values = pool_adjacent_violators(np.array([1.0, 3.0, 2.0, 0.0, 5.0]), np.ones(5))
    np.testing.assert_allclose(fitted_values, [1.0, 5 / 3, 5 / 3, 5 / 3, 5.0])


@pytest.mark.parametrize('name', ['vs', 'ms', 'dirichlet'])
def test_scaling_fit_nll_no_worse_than_ts(splits, fitted, name):
    (fit_logits, fit_target), _ = splits
    ts_nll = nll(fitted['ts'].predict_proba(fit_logits), fit_target)
    assert nll(fitted[name].predict_proba(fit_logits), fit_target) <= ts_nll + 1e-9


def test_ts_is_fit_temperature(splits, fitted):
    (fit_logits, fit_target), (eval_logits, _) = splits
    temperature = fit_temperature(fit_logits, fit_target)
    assert fitted['ts'].state_dict()['temperature'] == temperature
    torch.testing.assert_close(fitted['ts'].predict_proba(eval_logits), (eval_logits / temperature).softmax(1))


@pytest.mark.parametrize('name', ['ms', 'dirichlet'])
def test_odir_choice_recorded(fitted, name):
    state = fitted[name].state_dict()
    assert (state['odir_lambda'], state['odir_mu']) in state['cv_grid']
    assert len(state['cv_nll']) == len(state['cv_grid']) == 9
    assert state['cv_nll'][state['cv_grid'].index((state['odir_lambda'], state['odir_mu']))] == min(state['cv_nll'])


@pytest.mark.parametrize('name', list(POSTHOC_METHODS))
def test_every_method_changes_and_reduces_ece(splits, fitted, name):
    _, (eval_logits, eval_target) = splits
    raw = eval_logits.softmax(1)
    calibrated = fitted[name].predict_proba(eval_logits)
    assert calibrated.dtype == torch.float64
    torch.testing.assert_close(calibrated.sum(1), torch.ones(len(eval_target), dtype=torch.float64))
    assert (calibrated - raw).abs().max() > 1e-3
    assert ece(calibrated, eval_target) < 0.5 * ece(raw, eval_target)


@pytest.mark.parametrize('name', list(POSTHOC_METHODS))
def test_deterministic_and_state_round_trip(splits, name):
    (fit_logits, fit_target), (eval_logits, _) = splits
    # A smaller ODIR search keeps the two extra fits cheap; determinism does not depend on the grid size.
    options = {'grid': (1e-2, 1.0), 'folds': 2} if name in ('ms', 'dirichlet') else {}
    once, again = (fit_posthoc(name, fit_logits, fit_target, **options) for _ in range(2))
    first, second = once.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        if isinstance(first[key], torch.Tensor):
            assert torch.equal(first[key], second[key]), key
        elif isinstance(first[key], list) and first[key] and isinstance(first[key][0], torch.Tensor):
            assert all(torch.equal(a, b) for a, b in zip(first[key], second[key])), key
        else:
            assert first[key] == second[key], key
    restored = posthoc_from_state(first)
    assert type(restored) is type(once)
    assert torch.equal(restored.predict_proba(eval_logits), once.predict_proba(eval_logits))


def test_histogram_empty_bin_keeps_centre():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]], dtype=torch.float64)
    calibrator = fit_posthoc('hist', logits, torch.tensor([0, 1, 1]))
    values = calibrator.state_dict()['bin_values']
    assert values[0, 7] == pytest.approx(7.5 / 15)  # no fitting p_0 fell in [7/15, 8/15)
    assert values[0, 14] == pytest.approx(0.5)  # one of the two p_0 = 0.98 samples is class 0


def test_all_zero_row_keeps_uncalibrated_probabilities():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    calibrator = fit_posthoc('iso', logits, torch.tensor([1, 0]))
    # Force every one-vs-rest value to zero, as a map fitted on a class never seen would give.
    calibrator.state['values'] = [torch.zeros_like(v) for v in calibrator.state['values']]
    torch.testing.assert_close(calibrator.predict_proba(logits), logits.softmax(1))


def test_bad_inputs():
    logits, target = miscalibrated(20, seed=2)
    with pytest.raises(ValueError, match=r"Unknown post-hoc calibration method 'platt'.*'ts'.*'iso'"):
        fit_posthoc('platt', logits, target)
    with pytest.raises(ValueError, match=r'logits is empty \(N = 0\)'):
        fit_posthoc('ts', logits[:0], target[:0])
    with pytest.raises(ValueError, match='NaN'):
        fit_posthoc('vs', torch.where(torch.arange(20)[:, None] == 3, float('nan'), logits), target)
    with pytest.raises(ValueError, match=r'targets must have shape \(20,\) to match the logits'):
        fit_posthoc('ms', logits, target[:-1])
    with pytest.raises(ValueError, match=r'targets class indices must lie in \[0, 10\)'):
        fit_posthoc('iso', logits, torch.full((20,), 10))
    with pytest.raises(ValueError, match='integer class indices'):
        fit_posthoc('hist', logits, target.double())
    with pytest.raises(ValueError, match='not fitted'):
        POSTHOC_METHODS['dirichlet']().predict_proba(logits)
    with pytest.raises(ValueError, match='fitted on 10 classes'):
        fit_posthoc('ts', logits, target).predict_proba(logits[:, :5])
    with pytest.raises(ValueError, match="cannot be loaded into 'vs'"):
        POSTHOC_METHODS['vs']().load_state_dict(fit_posthoc('ts', logits, target).state_dict())
