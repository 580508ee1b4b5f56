"""Property-based tests (hypothesis) of every public entry point of ``cfl_timm.metrics``, ``cfl_timm.loss`` and
``cfl_timm.scheduler`` on wrong types, wrong dtypes, wrong shapes and out-of-range values (issue 20).

Each bad input gives a ``ValueError`` (a ``TypeError`` only where Python itself refuses the call) whose message names
the argument, before any work: never a silent number, never an ``AttributeError`` / ``IndexError`` /
``RuntimeError`` from inside torch or numpy. ``test_every_public_name_is_covered`` keeps the list of covered names
in step with the packages' exports. Valid inputs are checked against their documented ranges and invariances.
The strategies and settings are those of ``test_library_properties.py`` (deterministic, no example database).
"""
import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_library_properties import FINITE, SETTINGS, logits_and_targets

import cfl_timm.metrics as metrics
from cfl_timm.metrics import (
    POSTHOC_METHODS,
    CalibrationMeter,
    aupr_in,
    aupr_out,
    aurc,
    auroc,
    bin_indices,
    bootstrap_auroc,
    bootstrap_intervals,
    calibration_direction,
    coinciding_ece_note,
    eaurc,
    energy,
    fit_posthoc,
    fit_temperature,
    fpr_at_95_tpr,
    is_test_split,
    max_logit,
    max_softmax_probability,
    msp_auroc,
    neg_entropy,
    ood_metrics,
    optimal_aurc,
    posthoc_from_state,
    risk_coverage_curve,
    save_logits_npz,
    shift_cell_metrics,
    shift_report,
    smooth_ece,
    smooth_ece_at_bandwidth,
)

pytestmark = pytest.mark.filterwarnings('ignore:The NLL-optimal temperature lies beyond')  # clipped T
BAD_NUMBERS = [math.nan, math.inf, -math.inf, '3', None, True]


def _meter(logits, targets, num_bins=15):
    meter = CalibrationMeter(3 if not isinstance(logits, torch.Tensor) or logits.dim() != 2 else
                             max(logits.shape[1], 2), num_bins)
    meter.update(logits, targets)
    return meter.compute()


def _fit_posthoc(name, logits, targets):
    small = {'grid': (1.0,), 'folds': 2} if name in ('ms', 'dirichlet') else {}  # one ODIR pair: fast
    return fit_posthoc(name, logits, targets, **small)


def _save(logits, targets):
    return save_logits_npz(logits, targets, [str(k) for k in range(3)], split='validation')


# Every public function of cfl_timm.metrics that takes (N, K) logits and (N,) targets, as f(logits, targets).
LOGITS_AND_TARGETS = {
    'CalibrationMeter': _meter,
    'aurc': aurc,
    'eaurc': eaurc,
    'risk_coverage_curve': risk_coverage_curve,
    'calibration_direction': calibration_direction,
    'bootstrap_intervals': lambda logits, targets: bootstrap_intervals(logits, targets, num_resamples=4),
    'fit_temperature': fit_temperature,
    'fit_temperature(grid-ece)': lambda logits, targets: fit_temperature(logits, targets, 'grid-ece', grid=(1.0, 2.0)),
    'shift_cell_metrics': lambda logits, targets: shift_cell_metrics(torch.randn(4, 3), logits, targets),
    'shift_report': lambda logits, targets: shift_report(logits, targets, {'fog': {1: (torch.randn(4, 3),
                                                                                      torch.arange(4) % 3)}}),
    'save_logits_npz': _save,
    **{f'fit_posthoc({name})': functools.partial(_fit_posthoc, name) for name in POSTHOC_METHODS},
}
# Every public function of cfl_timm.metrics that takes logits alone.
LOGITS_ONLY = {
    'max_softmax_probability': max_softmax_probability,
    'max_logit': max_logit,
    'energy': energy,
    'neg_entropy': neg_entropy,
    'ood_metrics(in_logits)': lambda logits: ood_metrics(logits, torch.randn(4, 3)),
    'ood_metrics(out_logits)': lambda logits: ood_metrics(torch.randn(4, 3), logits),
    'msp_auroc(in_logits)': lambda logits: msp_auroc(logits, torch.randn(4, 3)),
    'msp_auroc(out_logits)': lambda logits: msp_auroc(torch.randn(4, 3), logits),
    'predict_proba': lambda logits: fit_posthoc('ts', torch.randn(6, 3), torch.arange(6) % 3).predict_proba(logits),
    'IsotonicCalibration.per_class': lambda logits: fit_posthoc('iso', torch.randn(6, 3),
                                                                torch.arange(6) % 3).per_class(logits),
}
# Every public function of cfl_timm.metrics that takes two 1-D score vectors.
SCORE_PAIRS = {
    'auroc': auroc,
    'aupr_in': aupr_in,
    'aupr_out': aupr_out,
    'fpr_at_95_tpr': fpr_at_95_tpr,
    'bootstrap_auroc': lambda a, b: bootstrap_auroc(a, b, num_resamples=4),
}


def _bad_logits(logits: torch.Tensor, kind: str):
    return {'int': logits.round().long(), 'bool': logits > 0, 'complex': logits.to(torch.complex64),
            'numpy': logits.numpy(), 'list': logits.tolist(), '0-dim': logits[0, 0], '1-D': logits[:, 0],
            '3-D': logits[None], 'one class': logits[:, :1], 'empty': logits[:0],
            'nan': logits.clone().fill_(math.nan)}[kind]


def _bad_targets(targets: torch.Tensor, num_classes: int, kind: str):
    return {'float': targets.double() + 0.7, 'bool': targets > 0, 'complex': targets.to(torch.complex64),
            'numpy': targets.numpy(), 'list': targets.tolist(), 'out_of_range': torch.full_like(targets, num_classes),
            'negative': targets - targets.max() - 1, 'column': targets[:, None], 'fewer': targets[:-1],
            'more': torch.cat([targets, targets[:1]])}[kind]


LOGITS_KINDS = ['int', 'bool', 'complex', 'numpy', 'list', '0-dim', '1-D', '3-D', 'one class', 'empty', 'nan']
TARGET_KINDS = ['float', 'bool', 'complex', 'numpy', 'list', 'out_of_range', 'negative', 'column', 'fewer', 'more']


# ------------------------------------------------------------------------------------ metrics: logits and targets

@SETTINGS
@given(logits_and_targets(min_samples=3, max_samples=8), st.sampled_from(LOGITS_KINDS))
@pytest.mark.parametrize('name', sorted(LOGITS_AND_TARGETS))
def test_metrics_refuse_bad_logits(name, data, kind):
    logits, targets = data
    logits = logits[:, :3] if logits.shape[1] >= 3 else torch.cat([logits, logits[:, :1]], dim=1)
    if name == 'CalibrationMeter' and kind == 'empty':
        return  # documented: an empty batch adds nothing (test_library_properties.py checks compute())
    with pytest.raises(ValueError, match='logits'):
        LOGITS_AND_TARGETS[name](_bad_logits(logits, kind), targets % 3)


@SETTINGS
@given(logits_and_targets(min_samples=3, max_samples=8), st.sampled_from(TARGET_KINDS))
@pytest.mark.parametrize('name', sorted(LOGITS_AND_TARGETS))
def test_metrics_refuse_bad_targets(name, data, kind):
    logits, targets = data
    logits = logits[:, :3] if logits.shape[1] >= 3 else torch.cat([logits, logits[:, :1]], dim=1)
    with pytest.raises(ValueError, match='target'):
        LOGITS_AND_TARGETS[name](logits, _bad_targets(targets % 3, 3, kind))


@SETTINGS
@given(logits_and_targets(min_samples=2, max_samples=8), st.sampled_from(LOGITS_KINDS))
@pytest.mark.parametrize('name', sorted(LOGITS_ONLY))
def test_logit_scores_refuse_bad_logits(name, data, kind):
    logits, _ = data
    logits = logits[:, :3] if logits.shape[1] >= 3 else torch.cat([logits, logits[:, :1]], dim=1)
    with pytest.raises(ValueError, match='logits'):
        LOGITS_ONLY[name](_bad_logits(logits, kind))


@pytest.mark.parametrize('name', ['ood_metrics', 'msp_auroc', 'shift_cell_metrics'])
def test_in_and_out_logits_must_share_the_classes(name):
    # msp_auroc and shift_cell_metrics compared the MSP of 3 and 5 classes and returned a number
    function = {'ood_metrics': ood_metrics, 'msp_auroc': msp_auroc,
                'shift_cell_metrics': lambda a, b: shift_cell_metrics(a, b, torch.arange(4))}[name]
    with pytest.raises(ValueError, match=r'logits must have K = 3 columns like (in_logits|clean logits), got 5'):
        function(torch.randn(6, 3), torch.randn(4, 5))


# ------------------------------------------------------------------------------------------------ metrics: scores

def _bad_scores(scores: torch.Tensor, kind: str):
    return {'bool': scores > 0, 'int8': scores.round().to(torch.int8), 'complex': scores.to(torch.complex64),
            'numpy': scores.numpy(), 'list': scores.tolist(), '2-D': scores[:, None].repeat(1, 2),
            '0-dim': scores[0], 'empty': scores[:0], 'nan': scores.clone().fill_(math.nan),
            'inf': scores.clone().fill_(math.inf)}[kind]


@SETTINGS
@given(st.lists(FINITE, min_size=2, max_size=12), st.lists(FINITE, min_size=2, max_size=12),
       st.sampled_from(['bool', 'int8', 'complex', 'numpy', 'list', '2-D', '0-dim', 'empty', 'nan', 'inf']),
       st.booleans())
@pytest.mark.parametrize('name', sorted(SCORE_PAIRS))
def test_score_metrics_refuse_bad_scores(name, first, second, kind, bad_first):
    first, second = torch.tensor(first, dtype=torch.float64), torch.tensor(second, dtype=torch.float64)
    if bad_first:
        first = _bad_scores(first, kind)
    else:
        second = _bad_scores(second, kind)
    with pytest.raises(ValueError, match='scores'):  # auroc's positive_scores / negative_scores, in_ / out_scores
        SCORE_PAIRS[name](first, second)


@SETTINGS
@given(st.lists(FINITE, min_size=1, max_size=12), st.lists(FINITE, min_size=1, max_size=12))
def test_score_metrics_are_in_range_and_auroc_is_antisymmetric(first, second):
    first, second = torch.tensor(first, dtype=torch.float64), torch.tensor(second, dtype=torch.float64)
    for name, function in SCORE_PAIRS.items():
        values = function(first, second)
        for value in values if isinstance(values, tuple) else (values,):
            assert 0.0 <= value <= 1.0, (name, values)
    assert auroc(first, second) + auroc(second, first) == pytest.approx(1.0, abs=1e-12)
    permuted = first.flip(0)
    assert auroc(permuted, second) == pytest.approx(auroc(first, second), abs=1e-12)


# ---------------------------------------------------------------------------------- metrics: numeric arguments

NUMERIC_ARGUMENTS = {
    # name: (call with the value, the argument's name in the message, bad values besides BAD_NUMBERS)
    'CalibrationMeter(num_classes)': (lambda v: CalibrationMeter(v), 'num_classes', [0, 1, 2.0, 10.5]),
    'CalibrationMeter(num_bins)': (lambda v: CalibrationMeter(3, v), 'num_bins', [0, -1, 2.5]),
    'bin_indices(num_bins)': (lambda v: bin_indices(torch.tensor([0.5]), v), 'num_bins', [0, -1, 2.5, 15.0]),
    'calibration_direction(num_bins)': (lambda v: calibration_direction(torch.randn(4, 3), torch.arange(4) % 3, v),
                                        'num_bins', [0, 2.5]),
    'bootstrap_intervals(num_resamples)': (lambda v: bootstrap_intervals(torch.randn(4, 3), torch.arange(4) % 3, v),
                                           'num_resamples', [0, 1, 2.5]),
    'bootstrap_intervals(num_bins)': (lambda v: bootstrap_intervals(torch.randn(4, 3), torch.arange(4) % 3, 4,
                                                                    num_bins=v), 'num_bins', [0, 2.5]),
    'bootstrap_intervals(seed)': (lambda v: bootstrap_intervals(torch.randn(4, 3), torch.arange(4) % 3, 4, seed=v),
                                  'seed', [2 ** 64, -2 ** 63 - 1, 1.5]),
    'bootstrap_auroc(seed)': (lambda v: bootstrap_auroc(torch.rand(4), torch.rand(3), 4, seed=v), 'seed',
                              [2 ** 70, 1.5]),
    'fit_temperature(num_bins)': (lambda v: fit_temperature(torch.randn(4, 3), torch.arange(4) % 3, 'grid-ece',
                                                            num_bins=v), 'num_bins', [0, 2.5]),
    'fit_temperature(grid)': (lambda v: fit_temperature(torch.randn(4, 3), torch.arange(4) % 3, 'grid-ece',
                                                        grid=[1.0, v]), 'grid', [0, -1.0]),
    'fit_temperature(bounds)': (lambda v: fit_temperature(torch.randn(4, 3), torch.arange(4) % 3, bounds=(v, 10.0)),
                                'bounds', [0, -1, 20.0]),
    'smooth_ece(min_bandwidth)': (lambda v: smooth_ece(torch.rand(4), torch.ones(4), min_bandwidth=v),
                                  'min_bandwidth', [0, -0.1, 1.0, 2.0]),
    'smooth_ece(tolerance)': (lambda v: smooth_ece(torch.rand(4), torch.ones(4), tolerance=v), 'tolerance',
                              [0, -1e-6]),
    'smooth_ece_at_bandwidth(bandwidth)': (lambda v: smooth_ece_at_bandwidth(torch.rand(4), torch.ones(4), v),
                                           'bandwidth', [0, -0.1]),
    'optimal_aurc(error_rate)': (lambda v: optimal_aurc(v), 'error_rate', [-0.1, 1.5]),
    'ms(grid)': (lambda v: POSTHOC_METHODS['ms'](grid=(1.0, v)), 'grid', [-1.0]),
    'ms(folds)': (lambda v: POSTHOC_METHODS['ms'](folds=v), 'folds', [0, 1, 2.5]),
    'ms(max_iter)': (lambda v: POSTHOC_METHODS['ms'](max_iter=v), 'max_iter', [0, 1.5]),
    'hist(num_bins)': (lambda v: POSTHOC_METHODS['hist'](v), 'num_bins', [0, 2.5]),
}


@pytest.mark.parametrize('name', sorted(NUMERIC_ARGUMENTS))
def test_numeric_arguments_are_checked(name):
    call, argument, bad_values = NUMERIC_ARGUMENTS[name]
    for value in bad_values + BAD_NUMBERS:
        with pytest.raises(ValueError, match=argument):
            call(value)


def test_a_zero_tolerance_is_refused_instead_of_bisecting_forever():
    # tolerance=0 looped forever: the bracket stops shrinking at float64 resolution, never at width 0
    with pytest.raises(ValueError, match='tolerance'):
        smooth_ece(torch.tensor([0.2, 0.9]), torch.tensor([True, False]), tolerance=0.0)


@pytest.mark.parametrize('kind', ['nan', 'above', 'below', 'int', 'numpy'])
def test_bin_indices_refuses_confidence_outside_0_1(kind):
    # NaN went to the last bin, 1.5 to the last and -0.2 to the first, silently
    confidence = {'nan': torch.tensor([0.5, math.nan]), 'above': torch.tensor([1.5]), 'below': torch.tensor([-0.2]),
                  'int': torch.tensor([0, 1]), 'numpy': np.array([0.5])}[kind]
    with pytest.raises(ValueError, match='confidence'):
        bin_indices(confidence, 10)


@pytest.mark.parametrize('kind', ['nan', 'above', 'non-binary correct', 'shape', 'empty', 'complex', 'numpy'])
def test_smooth_ece_at_bandwidth_checks_its_samples(kind):
    # it had no checks: NaN and empty gave nan, 5.0 was clamped to 1, correct = 0.3 was used as is
    confidence, correct = torch.tensor([0.2, 0.7, 0.9]), torch.tensor([0.0, 1.0, 1.0])
    confidence, correct = {
        'nan': (confidence.clone().fill_(math.nan), correct), 'above': (confidence * 5, correct),
        'non-binary correct': (confidence, correct * 0.3), 'shape': (confidence, correct[:2]),
        'empty': (confidence[:0], correct[:0]), 'complex': (confidence.to(torch.complex64), correct),
        'numpy': (confidence.numpy(), correct)}[kind]
    with pytest.raises(ValueError, match='confidence|correct'):
        smooth_ece_at_bandwidth(confidence, correct, 0.1)
    with pytest.raises(ValueError, match='confidence|correct'):
        smooth_ece(confidence, correct)


def test_coinciding_ece_note_refuses_non_finite_metrics():
    # it reported 'ECE, adaptive ECE and smooth ECE coincide (nan)'
    with pytest.raises(ValueError, match=r"metrics\['ece'\]"):
        coinciding_ece_note({'ece': math.nan, 'adaptive_ece': 0.1, 'smooth_ece': 0.1})
    assert coinciding_ece_note({'ece': 0.1, 'adaptive_ece': 0.2, 'smooth_ece': 0.1}) is None


@pytest.mark.parametrize('split', [None, 3, b'test'])
def test_split_must_be_a_name(split):
    with pytest.raises(ValueError, match='split'):
        is_test_split(split)
    with pytest.raises(ValueError, match='split'):
        fit_temperature(torch.randn(4, 3), torch.arange(4) % 3, split=split)


@pytest.mark.parametrize('name', ['ms', 'dirichlet'])
def test_cross_validated_calibrators_need_a_sample_per_fold(name):
    # with fewer samples than folds an empty fold scored every (lambda, mu) NaN and the first pair was kept silently
    with pytest.raises(ValueError, match='folds = 3 samples, got 2'):
        fit_posthoc(name, torch.randn(2, 3), torch.tensor([0, 1]))


def test_isotonic_per_class_is_checked_like_predict_proba():
    # per_class raised KeyError before fit and cut 5-class logits to the 3 fitted classes
    with pytest.raises(ValueError, match='not fitted'):
        POSTHOC_METHODS['iso']().per_class(torch.randn(4, 3))
    fitted = fit_posthoc('iso', torch.randn(6, 3), torch.arange(6) % 3)
    for classes in (2, 5):
        with pytest.raises(ValueError, match='fitted on 3 classes'):
            fitted.per_class(torch.randn(4, classes))


@pytest.mark.parametrize('state', [None, [], 'ts', {'name': 'nope'}, {'name': ['ts']}])
def test_posthoc_state_must_be_a_state_dict(state):
    with pytest.raises(ValueError, match='state|method'):
        posthoc_from_state(state)


def test_unknown_posthoc_methods_are_refused():
    for name in (['ts'], None, 'TS'):
        with pytest.raises(ValueError, match='method'):
            fit_posthoc(name, torch.randn(4, 3), torch.arange(4) % 3)


@pytest.mark.parametrize('kind', ['float targets', 'bool targets', 'int logits', 'complex logits', 'numpy logits',
                                  'int ood_logits'])
def test_save_logits_npz_refuses_what_it_would_convert(kind):
    # float targets were truncated (0.7 -> 0), bool targets and int logits cast, complex logits lost their imaginary
    # part, and a numpy array raised AttributeError
    logits, targets, ood = torch.randn(4, 3), torch.arange(4) % 3, None
    if kind == 'float targets':
        targets = targets + 0.7
    elif kind == 'bool targets':
        targets = targets > 0
    elif kind == 'int logits':
        logits = logits.long()
    elif kind == 'complex logits':
        logits = logits.to(torch.complex64)
    elif kind == 'numpy logits':
        logits = logits.numpy()
    else:
        ood = torch.ones(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match='target' if 'targets' in kind else 'logits'):
        save_logits_npz(logits, targets, ['a', 'b', 'c'], split='validation', ood_logits=ood)


# ------------------------------------------------------------------------------------------ metrics: valid inputs

@SETTINGS
@given(logits_and_targets(min_samples=2), st.randoms(use_true_random=False))
def test_binned_metrics_are_invariant_to_the_order_of_samples(data, random):
    logits, targets = data
    order = list(range(logits.shape[0]))
    random.shuffle(order)
    order = torch.tensor(order)
    first, second = _meter(logits, targets), _meter(logits[order], targets[order])
    # adaptive ECE is left out: its equal-mass split breaks ties between equal confidences by position (documented)
    for key in ('ece', 'classwise_ece', 'mce', 'nll', 'brier', 'top1', 'smooth_ece'):
        assert first[key] == pytest.approx(second[key], abs=1e-9), key
    direction = calibration_direction(logits[order], targets[order])
    assert direction.ece == pytest.approx(first['ece'], abs=1e-9)
    assert direction.over >= 0 and direction.under >= 0
    assert direction.signed == pytest.approx(direction.over - direction.under, abs=1e-12)
    assert aurc(logits[order], targets[order]) == pytest.approx(aurc(logits, targets), abs=1e-9)
    point = bootstrap_intervals(logits[order], targets[order], num_resamples=4)['ece'][0]
    assert point == pytest.approx(first['ece'], abs=1e-9)


@SETTINGS
@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=40), st.integers(1, 20))
def test_bin_indices_are_monotone_and_in_range(confidence, num_bins):
    values = torch.tensor(sorted(confidence), dtype=torch.float64)
    bins = bin_indices(values, num_bins)
    assert bins.dtype == torch.int64 and bool((bins >= 0).all()) and bool((bins < num_bins).all())
    assert bool((bins[1:] >= bins[:-1]).all())


@SETTINGS
@given(logits_and_targets(min_samples=2, max_samples=12))
def test_calibrators_give_probabilities_and_temperature_keeps_the_ranking(data):
    logits, targets = data
    for name in ('ts', 'vs', 'hist', 'iso'):
        probs = fit_posthoc(name, logits, targets).predict_proba(logits)
        assert probs.shape == logits.shape and bool(torch.isfinite(probs).all())
        assert bool((probs >= 0).all()) and bool((probs <= 1 + 1e-12).all()), name
        assert torch.allclose(probs.sum(1), torch.ones(len(probs), dtype=torch.float64)), name
    # temperature scaling divides by T > 0: softmax order within each row is unchanged
    temperature = fit_posthoc('ts', logits, targets).state['temperature']
    assert 0.01 <= temperature <= 100.0
    scaled = logits / temperature
    assert torch.equal(scaled.argsort(dim=1, stable=True), logits.argsort(dim=1, stable=True))


@SETTINGS
@given(logits_and_targets(min_samples=2, max_samples=12))
def test_isotonic_calibration_is_monotone_in_each_class_probability(data):
    logits, targets = data
    calibrator = fit_posthoc('iso', logits, targets)
    # rows whose class-0 probability rises: the class-0 isotonic value never falls
    grid = torch.linspace(-20, 20, 41, dtype=torch.float64)
    probe = torch.zeros(41, logits.shape[1], dtype=torch.float64)
    probe[:, 0] = grid
    values = calibrator.per_class(probe)[:, 0]
    assert bool((values[1:] >= values[:-1] - 1e-12).all())
    assert bool((values >= 0).all()) and bool((values <= 1).all())


def test_every_public_name_is_covered():
    """A new export of cfl_timm.metrics must be added to a table above (or here, when it takes no data)."""
    covered = set(LOGITS_AND_TARGETS) | set(LOGITS_ONLY) | set(SCORE_PAIRS) | {
        name.split('(')[0] for name in NUMERIC_ARGUMENTS}
    covered = {name.split('(')[0].split('.')[0] for name in covered}
    covered |= {
        'bin_indices', 'coinciding_ece_note', 'smooth_ece', 'smooth_ece_at_bandwidth', 'is_test_split',
        'optimal_aurc', 'posthoc_from_state', 'PosthocCalibrator', 'msp',  # tested above / an alias of a tested one
        'CalibrationDirection',  # a result type (the value of calibration_direction)
        'check_calibration_split',  # is_test_split's check (test_split_must_be_a_name covers the split type)
        'LogitsFile', 'load_logits_npz',  # a file reader, tested on malformed files in test_save_logits.py
        'OOD_SCORES',  # the four score functions, each in LOGITS_ONLY
    }
    constants = {name for name in dir(metrics) if name.isupper()}
    public = {name for name in dir(metrics) if not name.startswith('_') and not isinstance(
        getattr(metrics, name), type(metrics))} - constants
    assert public - covered == set()
