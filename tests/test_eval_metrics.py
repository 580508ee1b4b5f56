"""Model-free evaluation metrics against scikit-learn and direct numpy loops: OOD scores (AUROC, AUPR-In/Out, FPR95),
selective classification (AURC, E-AURC), the direction of miscalibration and seeded bootstrap intervals."""
import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from cfl_timm.metrics import (
    OOD_METRIC_KEYS,
    OOD_SCORES,
    CalibrationMeter,
    aupr_in,
    aupr_out,
    aurc,
    auroc,
    bootstrap_auroc,
    bootstrap_intervals,
    calibration_direction,
    eaurc,
    energy,
    fpr_at_95_tpr,
    max_logit,
    msp,
    neg_entropy,
    ood_metrics,
    optimal_aurc,
    risk_coverage_curve,
)


def random_logits(count, num_classes=5, seed=0, integer=False, scale=2.0):
    """float64 logits; ``integer=True`` draws small integers so that scores tie often."""
    generator = torch.Generator().manual_seed(seed)
    if integer:
        return torch.randint(-2, 3, (count, num_classes), generator=generator).double()
    return torch.randn(count, num_classes, generator=generator, dtype=torch.float64) * scale


def random_targets(logits, seed=0, accuracy=0.7):
    """Targets equal to the argmax with probability ``accuracy``, otherwise uniform."""
    generator = torch.Generator().manual_seed(seed + 1000)
    uniform = torch.randint(logits.shape[1], (logits.shape[0],), generator=generator)
    keep = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64) < accuracy
    return torch.where(keep, logits.argmax(dim=1), uniform)


def test_scores_match_their_equations():
    logits = random_logits(50, seed=1)
    probs = torch.softmax(logits, dim=1).numpy()
    z = logits.numpy()
    np.testing.assert_allclose(msp(logits).numpy(), probs.max(1), rtol=1e-12)
    np.testing.assert_allclose(max_logit(logits).numpy(), z.max(1), rtol=1e-12)
    np.testing.assert_allclose(energy(logits).numpy(), np.log(np.exp(z).sum(1)), rtol=1e-12)
    np.testing.assert_allclose(neg_entropy(logits).numpy(), (probs * np.log(probs)).sum(1), rtol=1e-10)
    assert set(OOD_SCORES) == {'msp', 'max_logit', 'energy', 'neg_entropy'}


def numpy_fpr95(in_scores, out_scores):
    return float(np.mean(out_scores >= np.percentile(in_scores, 5)))


@pytest.mark.parametrize('integer', [False, True])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_ood_metrics_match_sklearn_and_numpy(integer, seed):
    in_logits = random_logits(137, seed=seed, integer=integer, scale=3.0)
    out_logits = random_logits(91, seed=seed + 50, integer=integer, scale=1.0)
    table = ood_metrics(in_logits, out_logits)
    assert set(table) == set(OOD_SCORES)
    for name, score in OOD_SCORES.items():
        in_scores, out_scores = score(in_logits).numpy(), score(out_logits).numpy()
        if integer:
            assert len(np.unique(np.r_[in_scores, out_scores])) < len(in_scores) + len(out_scores)  # ties present
        labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
        scores = np.r_[in_scores, out_scores]
        expected = {'auroc': roc_auc_score(labels, scores), 'aupr_in': average_precision_score(labels, scores),
                    'aupr_out': average_precision_score(1 - labels, -scores),
                    'fpr95': numpy_fpr95(in_scores, out_scores)}
        assert set(table[name]) == set(OOD_METRIC_KEYS)
        for metric, value in expected.items():
            assert table[name][metric] == pytest.approx(value, abs=1e-12), (name, metric)


def test_ood_metric_functions_on_scores_and_known_answers():
    in_scores, out_scores = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.1, 0.2])
    assert auroc(in_scores, out_scores) == 1.0
    assert aupr_in(in_scores, out_scores) == 1.0 and aupr_out(in_scores, out_scores) == 1.0
    assert fpr_at_95_tpr(in_scores, out_scores) == 0.0
    # All scores equal: one threshold, precision = prevalence.
    tied_in, tied_out = torch.full((3,), 0.5), torch.full((2,), 0.5)
    assert aupr_in(tied_in, tied_out) == pytest.approx(0.6) and aupr_out(tied_in, tied_out) == pytest.approx(0.4)
    assert fpr_at_95_tpr(tied_in, tied_out) == 1.0
    # Interpolated threshold: 5th percentile of 0..100 is 5.0; OOD 4.9 is rejected, 5.0 kept.
    assert fpr_at_95_tpr(torch.arange(101.0), torch.tensor([4.9, 5.0])) == 0.5


def direct_aurc(confidence, errors):
    """Risk at every coverage by an explicit loop over a descending sort (distinct confidences)."""
    order = np.argsort(-confidence)
    risks, seen = [], 0.0
    for i, index in enumerate(order, start=1):
        seen += errors[index]
        risks.append(seen / i)
    return float(np.mean(risks)), np.array(risks)


@pytest.mark.parametrize('seed', [0, 3])
def test_aurc_matches_direct_loop(seed):
    logits = random_logits(300, seed=seed)
    targets = random_targets(logits, seed=seed)
    probs = torch.softmax(logits, dim=1)
    confidence = probs.max(dim=1).values.numpy()
    errors = (probs.argmax(dim=1) != targets).double().numpy()
    expected, risks = direct_aurc(confidence, errors)
    coverage, risk = risk_coverage_curve(logits, targets)
    np.testing.assert_allclose(coverage.numpy(), np.arange(1, 301) / 300)
    np.testing.assert_allclose(risk.numpy(), risks, atol=1e-12)
    assert aurc(logits, targets) == pytest.approx(expected, abs=1e-12)
    r = errors.mean()
    assert eaurc(logits, targets) == pytest.approx(expected - (r + (1 - r) * np.log(1 - r)), abs=1e-12)


def test_aurc_ties_are_the_mean_over_every_order():
    # Rows 0-2 share one confidence, rows 3-4 another; the curve must equal the mean over all 5! input orders.
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 0.0]],
                          dtype=torch.float64)
    targets = torch.tensor([0, 1, 1, 0, 1, 1])
    errors = np.array([0, 1, 1, 0, 1, 1], dtype=float)
    confidence = torch.softmax(logits, dim=1).max(dim=1).values.numpy()
    curves = []
    for order in itertools.permutations(range(6)):
        order = np.array(order)
        ranked = order[np.argsort(-confidence[order], kind='stable')]
        curves.append(np.cumsum(errors[ranked]) / np.arange(1, 7))
    _, risk = risk_coverage_curve(logits, targets)
    np.testing.assert_allclose(risk.numpy(), np.mean(curves, axis=0), atol=1e-12)
    shuffled = torch.tensor([4, 0, 5, 2, 3, 1])
    assert aurc(logits[shuffled], targets[shuffled]) == pytest.approx(aurc(logits, targets), abs=1e-15)


@pytest.mark.parametrize('count', [1000, 20000])
def test_eaurc_vanishes_for_a_perfect_ranking(count):
    # Every error has a lower confidence than every correct prediction; AURC* is the large-N limit, so the gap
    # is O(log(N) / N).
    generator = torch.Generator().manual_seed(count)
    confidence_logit = torch.rand(count, generator=generator, dtype=torch.float64) * 5
    logits = torch.stack([confidence_logit, torch.zeros(count, dtype=torch.float64)], dim=1)
    order = confidence_logit.argsort()
    targets = torch.zeros(count, dtype=torch.long)
    targets[order[:count // 4]] = 1  # the 25% least confident are wrong
    assert abs(eaurc(logits, targets)) < 5 * np.log(count) / count
    assert optimal_aurc(0.0) == 0.0 and optimal_aurc(1.0) == 1.0


@pytest.mark.parametrize('num_bins', [1, 10, 15])
def test_direction_adds_up_to_calibration_meter_ece(num_bins):
    logits = random_logits(500, seed=num_bins, scale=3.0)
    targets = random_targets(logits, seed=num_bins, accuracy=0.5)
    direction = calibration_direction(logits, targets, num_bins=num_bins)
    meter = CalibrationMeter(5, num_bins=num_bins)
    meter.update(logits, targets)
    assert direction.over + direction.under == pytest.approx(meter.compute()['ece'], abs=1e-12)
    assert direction.ece == pytest.approx(meter.compute()['ece'], abs=1e-12)
    assert direction.signed == pytest.approx(direction.over - direction.under, abs=1e-15)
    # Per-bin gaps weighted by n_b / N reproduce both parts.
    weights = direction.bin_count.double() / 500
    gap = torch.nan_to_num(direction.bin_gap)
    assert float((weights * gap.clamp(min=0)).sum()) == pytest.approx(direction.over, abs=1e-12)
    assert float((weights * (-gap).clamp(min=0)).sum()) == pytest.approx(direction.under, abs=1e-12)
    assert int(direction.bin_count.sum()) == 500
    assert bool(torch.isnan(direction.bin_gap[direction.bin_count == 0]).all())


def test_direction_sign_on_over_and_under_confident_sets():
    logits = random_logits(2000, num_classes=10, seed=7, scale=6.0)  # sharp: confidence near 1
    wrong_half = random_targets(logits, seed=7, accuracy=0.5)
    over = calibration_direction(logits, wrong_half)
    assert over.signed > 0.2 and over.under < 0.05
    flat = random_logits(2000, num_classes=10, seed=8, scale=0.1)  # confidence near 0.1 but always right
    under = calibration_direction(flat, flat.argmax(dim=1))
    assert under.signed < -0.5 and under.over == 0.0


def test_bootstrap_is_deterministic_and_contains_the_point_estimate():
    logits = random_logits(400, seed=11, scale=3.0)
    targets = random_targets(logits, seed=11)
    first = bootstrap_intervals(logits, targets, num_resamples=300, seed=5)
    assert first == bootstrap_intervals(logits, targets, num_resamples=300, seed=5)
    assert first != bootstrap_intervals(logits, targets, num_resamples=300, seed=6)
    meter = CalibrationMeter(5)
    meter.update(logits, targets)
    reference = meter.compute()
    for name, (point, low, high) in first.items():
        assert point == pytest.approx(reference[name], abs=1e-10), name
        assert low < point < high, name
    in_scores, out_scores = msp(logits[:200]), msp(random_logits(150, seed=12, scale=1.0))
    interval = bootstrap_auroc(in_scores, out_scores, num_resamples=300, seed=5)
    assert interval == bootstrap_auroc(in_scores, out_scores, num_resamples=300, seed=5)
    assert interval[0] == pytest.approx(auroc(in_scores, out_scores), abs=1e-12)
    assert interval[1] < interval[0] < interval[2]


def test_bootstrap_resamples_match_a_direct_recomputation():
    # Replay the generator's draw and recompute each resample with the plain metrics (ties included for AUROC).
    logits = random_logits(60, seed=13, integer=True)
    targets = random_targets(logits, seed=13)
    generator = torch.Generator().manual_seed(9)
    index = torch.randint(60, (40, 60), generator=generator)
    eces = []
    for row in index:
        meter = CalibrationMeter(5)
        meter.update(logits[row], targets[row])
        eces.append(meter.compute()['ece'])
    _, low, high = bootstrap_intervals(logits, targets, num_resamples=40, seed=9)['ece']
    assert (low, high) == pytest.approx(tuple(np.percentile(eces, [2.5, 97.5])), abs=1e-12)
    in_scores, out_scores = msp(logits[:30]), msp(logits[30:])
    generator = torch.Generator().manual_seed(9)
    in_index = torch.randint(30, (40, 30), generator=generator)
    out_index = torch.randint(30, (40, 30), generator=generator)
    values = [auroc(in_scores[i], out_scores[o]) for i, o in zip(in_index, out_index)]
    _, low, high = bootstrap_auroc(in_scores, out_scores, num_resamples=40, seed=9)
    assert (low, high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-12)


GOOD_LOGITS = torch.zeros(4, 3, dtype=torch.float64)
GOOD_TARGETS = torch.tensor([0, 1, 2, 0])
LOGIT_TARGET_FUNCTIONS = [risk_coverage_curve, aurc, eaurc, calibration_direction, bootstrap_intervals]


@pytest.mark.parametrize('function', LOGIT_TARGET_FUNCTIONS)
@pytest.mark.parametrize('logits, targets, match', [
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 'logits is empty'),
    (torch.tensor([[0.0, float('nan'), 0.0]] * 4), GOOD_TARGETS, 'logits contains NaN'),
    (torch.tensor([[0.0, float('inf'), 0.0]] * 4), GOOD_TARGETS, 'logits contains NaN or infinite'),
    (GOOD_LOGITS, torch.tensor([0, 1, 3, 0]), r'targets class indices must lie in \[0, 3\)'),
    (GOOD_LOGITS, torch.tensor([0, -1, 2, 0]), 'targets class indices'),
    (GOOD_LOGITS, torch.tensor([0.0, 1.0, 2.0, 0.0]), 'targets must hold integer'),
    (GOOD_LOGITS, torch.tensor([0, 1, 2]), r'targets must have shape \(4,\)'),
    (torch.zeros(4), GOOD_TARGETS, 'logits must have shape'),
])
def test_logit_metrics_reject_bad_inputs(function, logits, targets, match):
    with pytest.raises(ValueError, match=match):
        function(logits, targets)


@pytest.mark.parametrize('function', [auroc, aupr_in, aupr_out, fpr_at_95_tpr, bootstrap_auroc])
def test_score_metrics_reject_bad_inputs(function):
    with pytest.raises(ValueError, match='is empty'):
        function(torch.tensor([]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match='NaN or infinite'):
        function(torch.tensor([0.5]), torch.tensor([float('nan')]))


def test_ood_metrics_and_options_reject_bad_inputs():
    with pytest.raises(ValueError, match='out_logits contains NaN'):
        ood_metrics(GOOD_LOGITS, torch.full((2, 3), float('inf')))
    with pytest.raises(ValueError, match='in_logits is empty'):
        ood_metrics(torch.zeros(0, 3), GOOD_LOGITS)
    with pytest.raises(ValueError, match='out_logits must have K = 3'):
        ood_metrics(GOOD_LOGITS, torch.zeros(2, 4))
    with pytest.raises(ValueError, match='num_bins'):
        calibration_direction(GOOD_LOGITS, GOOD_TARGETS, num_bins=0)
    with pytest.raises(ValueError, match='num_resamples'):
        bootstrap_intervals(GOOD_LOGITS, GOOD_TARGETS, num_resamples=1)
    with pytest.raises(ValueError, match='error_rate'):
        optimal_aurc(1.5)
