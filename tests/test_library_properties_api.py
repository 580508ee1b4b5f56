"""Property-based tests (hypothesis) of every public entry point of ``cfl_timm.metrics``, ``cfl_timm.loss`` and
``cfl_timm.scheduler`` on wrong types, wrong dtypes, wrong shapes and out-of-range values (issue 20).

Each bad input gives a ``ValueError`` (a ``TypeError`` only where Python itself refuses the call) whose message names
the argument, before any work: never a silent number, never an ``AttributeError`` / ``IndexError`` /
``RuntimeError`` from inside torch or numpy. ``test_every_public_name_is_covered`` keeps the list of covered names
in step with the packages' exports. Valid inputs are checked against their documented ranges and invariances.
The strategies and settings are those of ``test_library_properties.py`` (deterministic, no example database).
"""
import argparse
import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_library_properties import FINITE, LOSS_SETTINGS, SETTINGS, logits_and_targets

import cfl_timm.loss as loss_package
import cfl_timm.metrics as metrics
import cfl_timm.scheduler as scheduler_package
from cfl_timm.loss import (
    CALIBRATION_LOSS_DEFAULTS,
    FOCAL_LOSS_TYPES,
    LOSS_KWARGS,
    LOSS_TYPES,
    AdaFocalLoss,
    create_calibration_loss,
    create_loss,
    cyclical_eta,
    loss_kwargs,
)
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
    load_logits_npz,
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
from cfl_timm.scheduler import (
    CyclicalScheduler,
    CyclicalWeightDecayScheduler,
    OneCycleLRScheduler,
    check_cyclical_arguments,
    create_scheduler_v2,
    cyclical_value,
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


def _three_classes(logits: torch.Tensor) -> torch.Tensor:
    """The first three classes of ``logits`` (a two-class draw gets its first class again as a third)."""
    return logits[:, :3] if logits.shape[1] >= 3 else torch.cat([logits, logits[:, :1]], dim=1)


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
    logits = _three_classes(logits)
    if name == 'CalibrationMeter' and kind == 'empty':
        return  # documented: an empty batch adds nothing (test_library_properties.py checks compute())
    with pytest.raises(ValueError, match='logits'):
        LOGITS_AND_TARGETS[name](_bad_logits(logits, kind), targets % 3)


@SETTINGS
@given(logits_and_targets(min_samples=3, max_samples=8), st.sampled_from(TARGET_KINDS))
@pytest.mark.parametrize('name', sorted(LOGITS_AND_TARGETS))
def test_metrics_refuse_bad_targets(name, data, kind):
    logits, targets = data
    logits = _three_classes(logits)
    with pytest.raises(ValueError, match='target'):
        LOGITS_AND_TARGETS[name](logits, _bad_targets(targets % 3, 3, kind))


@SETTINGS
@given(logits_and_targets(min_samples=2, max_samples=8), st.sampled_from(LOGITS_KINDS))
@pytest.mark.parametrize('name', sorted(LOGITS_ONLY))
def test_logit_scores_refuse_bad_logits(name, data, kind):
    logits, _ = data
    logits = _three_classes(logits)
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


@pytest.mark.parametrize('name', sorted(POSTHOC_METHODS))
def test_a_posthoc_state_without_its_fitted_values_is_refused(name):
    # {'name': 'ts', 'num_classes': 3} loaded, and predict_proba then raised KeyError: 'temperature'
    with pytest.raises(ValueError, match='lacks'):
        posthoc_from_state({'name': name, 'num_classes': 3})
    state = _fit_posthoc(name, torch.randn(6, 3), torch.arange(6) % 3).state_dict()
    assert posthoc_from_state(state).predict_proba(torch.randn(2, 3)).shape == (2, 3)


@pytest.mark.parametrize('shifted', [
    {'fog': {'high': (torch.randn(4, 3), torch.arange(4) % 3)}},  # a severity that is no integer
    {'fog': {1: torch.randn(4, 3)}},  # logits without targets
    {'fog': {1: (torch.randn(4, 3).numpy(), torch.arange(4) % 3)}},
    {'fog': [(torch.randn(4, 3), torch.arange(4) % 3)]},
    [],
])
def test_shift_report_checks_the_layout_of_the_corrupted_sets(shifted):
    # a string severity raised "invalid literal for int()", a bare tensor "too many values to unpack"
    with pytest.raises(ValueError, match='severity|pair|logits|corrupted set'):
        shift_report(torch.randn(6, 3), torch.arange(6) % 3, shifted)


@pytest.mark.parametrize('case', ['coinciding_ece_note', 'allow_test_split', 'class_names', 'split', 'checkpoint',
                                  'load_logits_npz'])
def test_arguments_of_the_wrong_type_are_refused(case):
    # coinciding_ece_note(None) AttributeError; allow_test_split='no' allowed the test split; class_names 'abc' saved
    # three names a, b, c and 3 a TypeError; split=None saved 'None'; load_logits_npz(None) a TypeError
    logits, targets = torch.randn(4, 3), torch.arange(4) % 3
    calls = {
        'coinciding_ece_note': (lambda: coinciding_ece_note([0.1, 0.1, 0.1]), 'metrics'),
        'allow_test_split': (lambda: fit_temperature(logits, targets, split='test', allow_test_split='no'),
                             'allow_test_split'),
        'class_names': (lambda: save_logits_npz(logits, targets, 'abc', split='validation'), 'class_names'),
        'split': (lambda: save_logits_npz(logits, targets, ['a', 'b', 'c'], split=None), 'split'),
        'checkpoint': (lambda: save_logits_npz(logits, targets, ['a', 'b', 'c'], split='val', checkpoint=3),
                       'checkpoint'),
        'load_logits_npz': (lambda: load_logits_npz(None), 'path'),
    }
    call, pattern = calls[case]
    with pytest.raises(ValueError, match=pattern):
        call()


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
@given(logits_and_targets(min_samples=1, max_samples=16), st.integers(0, 2 ** 32))
def test_risk_coverage_and_bootstrap_intervals_are_in_their_ranges(data, seed):
    logits, targets = data
    coverage, risk = risk_coverage_curve(logits, targets)
    count = logits.shape[0]
    assert torch.allclose(coverage, torch.arange(1, count + 1, dtype=torch.float64) / count)
    assert bool((risk >= 0).all()) and bool((risk <= 1).all())
    assert 0.0 <= optimal_aurc(float(risk[-1])) <= aurc(logits, targets) + 1e-12  # AURC* is the best ranking's
    ranges = {'top1': 100.0, 'nll': math.inf, 'brier': 2.0, 'ece': 1.0}
    for key, (point, low, high) in bootstrap_intervals(logits, targets, num_resamples=8, seed=seed).items():
        assert 0.0 <= low <= high <= ranges[key] + 1e-9, (key, low, high)
        assert math.isfinite(point) and 0.0 <= point <= ranges[key] + 1e-9


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
        'LogitsFile', 'load_logits_npz',  # the file reader (malformed files: test_save_logits.py)
        'OOD_SCORES',  # the four score functions, each in LOGITS_ONLY
    }
    constants = {name for name in dir(metrics) if name.isupper()}
    public = {name for name in dir(metrics) if not name.startswith('_') and not isinstance(
        getattr(metrics, name), type(metrics))} - constants
    assert public - covered == set()


# ------------------------------------------------------------------------------------------------------- losses

def _loss(name: str, **kwargs):
    return create_loss(name, **({'epochs': 4} if name == 'asym-cyclical' and 'epochs' not in kwargs else {}),
                       **kwargs)


LOSS_LOGITS_KINDS = ['int', 'bool', 'complex', 'numpy', 'list', '0-dim', '1-D', 'one class']


@LOSS_SETTINGS
@given(logits_and_targets(min_samples=2, max_samples=8), st.sampled_from(LOSS_LOGITS_KINDS))
@pytest.mark.parametrize('name', LOSS_TYPES)
def test_losses_refuse_bad_logits(name, data, kind):
    # the focal losses cast int / bool logits to float, dropped the imaginary part of complex logits, returned 0
    # for one class and raised AttributeError on numpy arrays
    logits, targets = data
    bad = _bad_logits(logits, kind)
    if kind in ('0-dim', '1-D'):
        targets = targets[0]
    elif kind == 'one class':
        targets = torch.zeros_like(targets)
    with pytest.raises(ValueError, match='logits'):
        _loss(name)(bad, targets)


@LOSS_SETTINGS
@given(logits_and_targets(min_samples=2, max_samples=8),
       st.sampled_from(['numpy', 'list', 'complex', 'fewer', 'more']))
@pytest.mark.parametrize('name', LOSS_TYPES)
def test_losses_refuse_more_bad_targets(name, data, kind):
    # (bool, float, out-of-range, negative and (N, 1) targets: test_library_properties.py)
    logits, targets = data
    with pytest.raises(ValueError, match='target'):
        _loss(name)(logits, _bad_targets(targets, logits.shape[1], kind))


@pytest.mark.parametrize('name', LOSS_TYPES)
def test_non_finite_logits_are_refused_or_give_a_non_finite_loss(name):
    logits, targets = torch.randn(4, 3, dtype=torch.float64), torch.arange(4) % 3
    logits[1, 2] = math.nan
    if name in FOCAL_LOSS_TYPES:  # check_finite=True, the library default
        with pytest.raises(ValueError, match='logits contain NaN or inf'):
            _loss(name)(logits, targets)
        logits.requires_grad_(True)
        assert not torch.isfinite(_loss(name, check_finite=False)(logits, targets))
    else:  # documented: no host sync per step, a non-finite loss as cross-entropy gives
        assert not torch.isfinite(_loss(name)(logits, targets))


@pytest.mark.parametrize('name', LOSS_TYPES)
def test_an_empty_batch_is_refused_or_documented(name):
    logits, targets = torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)
    if name in FOCAL_LOSS_TYPES:  # documented: 0 for 'mean' and 'sum', shape (0,) for 'none'
        assert float(_loss(name)(logits, targets)) == 0.0
        assert _loss(name, reduction='none')(logits, targets).shape == (0,)
    else:
        with pytest.raises(ValueError, match='logits must have shape'):
            _loss(name)(logits, targets)


def _lower_bound(name: str, num_classes: int) -> float:
    # CE - alpha * H~ with H~ <= log K (norm 'sample'; 'classes' divides it by K): the only loss below 0
    return -CALIBRATION_LOSS_DEFAULTS['confidence-penalty']['cp_alpha'] * math.log(num_classes) \
        if name == 'confidence-penalty' else 0.0


@LOSS_SETTINGS
@given(logits_and_targets(), st.sampled_from(['mean', 'sum']))
@pytest.mark.parametrize('name', LOSS_TYPES)
def test_losses_are_above_their_lower_bound_with_finite_gradients(name, data, reduction):
    logits, targets = data
    logits.requires_grad_(True)
    loss = _loss(name, reduction=reduction)(logits, targets)
    loss.backward()
    loss = loss.detach()
    scale = 1 if reduction == 'mean' else logits.shape[0]
    assert float(loss) >= _lower_bound(name, logits.shape[1]) * scale - 1e-9, float(loss)
    assert bool(torch.isfinite(logits.grad).all())


BAD_LOSS_VALUES = [math.nan, math.inf, '2', True, None]


def _loss_keywords():
    for name in LOSS_TYPES:
        for keyword in LOSS_KWARGS[name]:
            yield name, keyword
        for keyword in ('smoothing', 'reduction', 'soft_targets'):
            yield name, keyword


@pytest.mark.parametrize(('name', 'keyword'), list(_loss_keywords()))
def test_loss_arguments_are_checked(name, keyword):
    # cyclical_eta raised OverflowError for epochs=inf and 'cannot convert float NaN' for nan; factor=True passed as
    # 1; check_finite='no' and soft_targets='no' counted as True
    bad = list(BAD_LOSS_VALUES)
    if keyword in ('soft_target_mode', 'mmce_norm', 'mbls_norm', 'cp_norm', 'reduction'):
        bad = ['x', None, 1, ['mean']]
    elif keyword in ('check_finite', 'soft_targets'):
        bad = ['no', 1, None]
    elif keyword in ('adafocal_bins', 'adafocal_update_every', 'epochs'):
        bad += [0, 2.5]
    elif keyword in ('cyclical_factor',):
        bad += [0.5]
    elif keyword == 'smoothing':
        bad += [-0.1, 1.0]
    elif not keyword.startswith('adafocal_gamma'):  # the AdaFocal gammas may be negative
        bad += [-1.0]
    pattern = keyword.replace('_', '[_ ]') + '|label smoothing|eps'
    for value in bad:
        if keyword == 'smoothing' and value is None:
            continue  # None selects the type's default (documented)
        with pytest.raises(ValueError, match=pattern):
            _loss(name, **{keyword: value})


@SETTINGS
@given(st.floats(0, 50, allow_nan=False), st.integers(1, 40), st.floats(1, 8, allow_nan=False))
def test_cyclical_eta_is_in_0_1_and_starts_at_1(epoch, epochs, factor):
    assert 0.0 <= cyclical_eta(epoch, epochs, factor) <= 1.0
    assert cyclical_eta(0, epochs, factor) == 1.0


@pytest.mark.parametrize('argument', ['epoch', 'epochs', 'factor'])
def test_cyclical_eta_refuses_bad_numbers(argument):
    for value in [math.nan, math.inf, -math.inf, '1', None, True, torch.tensor(1.0)] + [-1]:
        arguments = {'epoch': 1.0, 'epochs': 4, 'factor': 2.0, argument: value}
        with pytest.raises(ValueError, match={'factor': 'cyclical factor', 'epoch': 'epoch '}.get(argument, argument)):
            cyclical_eta(arguments['epoch'], arguments['epochs'], arguments['factor'])


@pytest.mark.parametrize('state', [{}, None, {'eta': 0.5}])
def test_cyclical_focal_loss_extra_state_is_checked(state):
    # a checkpoint without the loss's epoch raised KeyError: 'epoch'
    with pytest.raises(ValueError, match='extra state'):
        _loss('asym-cyclical').set_extra_state(state)


def test_adafocal_validation_refuses_complex_correctness():
    with pytest.raises(ValueError, match='correct'):
        AdaFocalLoss().update_from_validation(torch.tensor([0.5, 0.7]), torch.tensor([1 + 1j, 0j]))


@pytest.mark.parametrize('name', [['sym'], None, 3])
def test_unknown_loss_names_are_refused(name):
    with pytest.raises(ValueError, match='Unknown'):
        create_loss(name)
    with pytest.raises(ValueError, match='Unknown calibration loss'):
        create_calibration_loss(name)


def test_every_loss_export_is_covered():
    """Every class is built by create_loss under one of LOSS_TYPES, which every loss test above runs."""
    classes = {name for name in dir(loss_package) if isinstance(getattr(loss_package, name), type)}
    built = {type(_loss(name)).__name__ for name in LOSS_TYPES}
    assert classes - built == set()
    functions = {name for name in dir(loss_package) if callable(getattr(loss_package, name))
                 and not isinstance(getattr(loss_package, name), type) and not name.startswith('_')}
    assert functions == {'create_loss', 'create_calibration_loss', 'cyclical_eta', 'loss_kwargs'}


def test_loss_kwargs_reads_an_argument_namespace():
    # loss_kwargs reads attributes with getattr defaults: any object works, a bad value reaches create_loss's check
    kwargs = loss_kwargs(argparse.Namespace(smoothing=math.nan), 'sym')
    with pytest.raises(ValueError, match='eps'):
        create_loss(**kwargs)
    for name in ([], {}, None, 3):  # an unhashable name raised TypeError; a string is checked by create_loss
        with pytest.raises(ValueError, match='Unknown loss type'):
            loss_kwargs(argparse.Namespace(), name)


# ---------------------------------------------------------------------------------------------------- schedules

def _optimizer(weight_decay: float = 1e-4):
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, weight_decay=weight_decay)


SCHEDULE_ARGUMENTS = {
    # name: (call with the value, pattern of the message, bad values besides BAD_NUMBERS)
    'cyclical_value(min_value)': (lambda v: cyclical_value(1, min_value=v, max_value=1.0, num_epochs=4,
                                                           cyclical_factor=2.0), 'min_value', []),
    'cyclical_value(max_value)': (lambda v: cyclical_value(1, min_value=0.0, max_value=v, num_epochs=4,
                                                           cyclical_factor=2.0), 'max_value', []),
    'cyclical_value(num_epochs)': (lambda v: cyclical_value(1, min_value=0.0, max_value=1.0, num_epochs=v,
                                                            cyclical_factor=2.0), 'epochs', [0, 2.5]),
    'check_cyclical_arguments(num_epochs)': (lambda v: check_cyclical_arguments(num_epochs=v), 'epochs', [0, 2.5]),
    'check_cyclical_arguments(t_min)': (lambda v: check_cyclical_arguments(num_epochs=4, t_min=v),
                                        'temperature', [-1.0, 5.0]),
    'check_cyclical_arguments(updates_per_epoch)': (lambda v: check_cyclical_arguments(num_epochs=4,
                                                                                       updates_per_epoch=v),
                                                    'updates_per_epoch', [0, 2.5]),
    'CyclicalScheduler(cyclical_factor)': (lambda v: CyclicalScheduler(None, num_epochs=4, cyclical_factor=v),
                                           'cyclical factor', [0.5]),
    'CyclicalScheduler(step_per_update)': (lambda v: CyclicalScheduler(None, num_epochs=4, step_per_update=v,
                                                                       updates_per_epoch=2), 'step_per_update',
                                           ['no', 1]),
    'CyclicalScheduler.step(epoch)': (lambda v: CyclicalScheduler(None, num_epochs=4).step(v), 'epoch', [-1]),
    'CyclicalScheduler.load_state_dict': (lambda v: CyclicalScheduler(None, num_epochs=4).load_state_dict(
        {'epoch': v}), 'epoch', [-1]),
    'CyclicalScheduler(updates_per_epoch)': (lambda v: CyclicalScheduler(None, num_epochs=4, updates_per_epoch=v),
                                             'updates_per_epoch', [-1, 2.5, torch.tensor([1, 2]), []]),
    'CyclicalScheduler(t_min)': (lambda v: CyclicalScheduler(None, num_epochs=4, t_min=v), 'temperature',
                                 [-1.0, torch.tensor([1.0, 2.0]), torch.tensor([])]),
    'CyclicalScheduler.step_update(num_updates)': (lambda v: CyclicalScheduler(
        None, num_epochs=4, step_per_update=True, updates_per_epoch=2).step_update(v), 'num_updates',
        [-1, 2.5, 'x', []]),
    'CyclicalScheduler.epoch_values(epoch)': (lambda v: CyclicalScheduler(None, num_epochs=4).epoch_values(v),
                                              'epoch', [[], 2.5]),
    'CyclicalWeightDecayScheduler(wd_max)': (lambda v: CyclicalWeightDecayScheduler(
        _optimizer(), wd_min=1e-4, wd_max=v, num_epochs=4, cyclical_factor=2.0), 'weight decay', [1e-5, -1.0]),
    'CyclicalWeightDecayScheduler(optimizer)': (lambda v: CyclicalWeightDecayScheduler(
        v, wd_min=1e-4, wd_max=1e-3, num_epochs=4, cyclical_factor=2.0), 'optimizer', [[]]),
    'OneCycleLRScheduler(t_initial)': (lambda v: OneCycleLRScheduler(_optimizer(), v), 't_initial', [0, 2.5]),
    'OneCycleLRScheduler(pct_start)': (lambda v: OneCycleLRScheduler(_optimizer(), 10, pct_start=v), 'pct_start',
                                       [0, 1, 1.5]),
    'OneCycleLRScheduler(div_factor)': (lambda v: OneCycleLRScheduler(_optimizer(), 10, div_factor=v),
                                        'div_factor', [0, -1.0]),
    'OneCycleLRScheduler(anneal_strategy)': (lambda v: OneCycleLRScheduler(_optimizer(), 10, anneal_strategy=v),
                                             'anneal_strategy', ['x', ['cos']]),
    'create_scheduler_v2(cyclical_epochs)': (lambda v: create_scheduler_v2(_optimizer(), num_epochs=4, t_min=1.0,
                                                                           cyclical_epochs=v), 'cyclical_epochs',
                                             [0, 2.5]),
    'create_scheduler_v2(cyclical_step_per_update)': (lambda v: create_scheduler_v2(
        _optimizer(), num_epochs=4, t_min=1.0, cyclical_step_per_update=v, updates_per_epoch=2),
        'step_per_update', ['no', 1]),
    'create_scheduler_v2(onecycle_pct_start)': (lambda v: create_scheduler_v2(
        _optimizer(), 'onecycle', num_epochs=4, onecycle_pct_start=v), 'pct_start', [0, 1.5]),
}


@pytest.mark.parametrize('name', sorted(SCHEDULE_ARGUMENTS))
def test_schedule_arguments_are_checked(name):
    # t_initial / updates_per_epoch / num_epochs = nan or inf raised 'cannot convert float NaN to integer' or
    # OverflowError; cyclical_value(min_value=nan) returned nan; cyclical_step_per_update='no' switched per-update
    # stepping on; a None optimizer raised AttributeError; numpy pct_start was refused (below)
    call, pattern, bad_values = SCHEDULE_ARGUMENTS[name]
    for value in bad_values + BAD_NUMBERS:
        if value is None and name.startswith('create_scheduler_v2'):
            continue  # None: not given (the factory's documented default)
        if value is True and name.endswith('step_per_update)'):
            continue  # a valid flag
        with pytest.raises(ValueError, match=pattern):
            call(value)


def test_numpy_numbers_are_valid_schedule_arguments():
    # OneCycle refused np.float32(0.3) as pct_start ('must lie in (0, 1), got 0.3')
    scheduler = OneCycleLRScheduler(_optimizer(), np.int64(10), pct_start=np.float32(0.3), div_factor=np.float64(25))
    assert scheduler.t_initial == 10 and scheduler.pct_start == pytest.approx(0.3)


@SETTINGS
@given(st.integers(1, 30), st.floats(0.01, 0.99), st.floats(1.0, 100.0), st.floats(1.0, 1e4),
       st.sampled_from(['cos', 'linear']))
def test_onecycle_lr_stays_between_its_final_and_maximum(steps, pct_start, div_factor, final_div_factor, anneal):
    scheduler = OneCycleLRScheduler(_optimizer(), steps, pct_start=pct_start, div_factor=div_factor,
                                    final_div_factor=final_div_factor, anneal_strategy=anneal)
    lr_max = 0.1
    lr_final = lr_max / div_factor / final_div_factor
    for t in range(steps + 3):
        lr = scheduler._get_lr(t)[0]
        assert lr_final * (1 - 1e-9) <= lr <= lr_max * (1 + 1e-9), (t, lr)


@SETTINGS
@given(st.floats(0, 40, allow_nan=False), st.integers(1, 30), st.floats(1, 8, allow_nan=False),
       st.floats(0, 10, allow_nan=False), st.floats(0, 10, allow_nan=False))
def test_cyclical_values_lie_between_min_and_max(epoch, num_epochs, factor, low, high):
    low, high = min(low, high), max(low, high)
    value = cyclical_value(epoch, min_value=low, max_value=high, num_epochs=num_epochs, cyclical_factor=factor)
    assert low - 1e-12 <= value <= high + 1e-12
    scheduler = CyclicalScheduler(None, _optimizer(), num_epochs=num_epochs, cyclical_factor=factor, wd_min=1e-4,
                                  wd_max=1e-3, t_min=0.5, t_max=2.0)
    scheduler.set_epoch(epoch)
    assert 1e-4 - 1e-15 <= scheduler.weight_decay <= 1e-3 + 1e-15
    assert 0.5 - 1e-12 <= scheduler.temperature <= 2.0 + 1e-12


def test_every_schedule_export_is_covered():
    covered = {name.split('(')[0].split('.')[0] for name in SCHEDULE_ARGUMENTS} | {
        'cyclical_value', 'check_cyclical_arguments',
        'register', 'scheduler_kwargs',  # the factory wrapper's plumbing (test_scheduler_factory.py)
        'scheduled_clip_args',  # a copy of an argparse namespace (test_schedule.py)
    }
    public = {name for name in dir(scheduler_package) if not name.startswith('_') and not name.isupper()
              and not isinstance(getattr(scheduler_package, name), type(scheduler_package))}
    assert public - covered == set()


# --------------------------------------------------------------------------------- garbage in every argument

GARBAGE = [None, True, 0, -1, 2 ** 70, 2.5, math.nan, math.inf, 'x', '3', [], [1, 2], {}, object(),
           np.array([0.5]), np.zeros((6, 3)), torch.tensor(0.5), torch.tensor([]), torch.zeros(0, 3), torch.ones(6),
           torch.ones(6, 3, 2), torch.ones(6, 3, dtype=torch.int64), torch.ones(6, 3, dtype=torch.complex64),
           torch.ones(6, dtype=torch.bool), torch.full((6, 3), math.nan), torch.ones(6, 3, dtype=torch.float16),
           torch.ones(6, 1), torch.ones(2, 3), torch.arange(6), torch.arange(6) + 5]
_L = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
_T = torch.tensor([0, 1, 2, 0, 1, 2])
_CONFIDENCE = torch.linspace(0.2, 0.9, 6, dtype=torch.float64)
_CORRECT = torch.tensor([True, False, True, True, False, True])

def _call_loss(name, logits, targets):
    return _loss(name)(logits, targets)


# name: (function of positional values, valid values); each value in turn is replaced by every GARBAGE entry
GARBAGE_CALLS = {
    'CalibrationMeter.update': (lambda a, b: CalibrationMeter(3).update(a, b), [_L, _T]),
    'bin_indices': (bin_indices, [_CONFIDENCE, 10]),
    'coinciding_ece_note': (coinciding_ece_note, [{'ece': 0.1, 'adaptive_ece': 0.1, 'smooth_ece': 0.1}]),
    'smooth_ece': (lambda a, b, c, d: smooth_ece(a, b, min_bandwidth=c, tolerance=d), [_CONFIDENCE, _CORRECT, 1e-3,
                                                                                       1e-4]),
    'smooth_ece_at_bandwidth': (smooth_ece_at_bandwidth, [_CONFIDENCE, _CORRECT, 0.1]),
    'aurc': (aurc, [_L, _T]), 'eaurc': (eaurc, [_L, _T]), 'risk_coverage_curve': (risk_coverage_curve, [_L, _T]),
    'optimal_aurc': (optimal_aurc, [0.3]),
    'calibration_direction': (calibration_direction, [_L, _T, 15]),
    'bootstrap_intervals': (bootstrap_intervals, [_L, _T, 4, 0, 15]),
    'bootstrap_auroc': (bootstrap_auroc, [_CONFIDENCE, _CONFIDENCE, 4, 0]),
    **{name: (function, [_CONFIDENCE, _CONFIDENCE]) for name, function in SCORE_PAIRS.items()
       if name != 'bootstrap_auroc'},
    **{name: (function, [_L]) for name, function in (('msp', max_softmax_probability), ('energy', energy),
                                                      ('neg_entropy', neg_entropy), ('max_logit', max_logit))},
    'ood_metrics': (ood_metrics, [_L, _L]), 'msp_auroc': (msp_auroc, [_L, _L]),
    'fit_temperature': (lambda a, b, c, d, e: fit_temperature(a, b, c, split=d, allow_test_split=e),
                        [_L, _T, 'nll', 'validation', False]),
    'fit_temperature(grid-ece)': (lambda a, b, c: fit_temperature(_L, _T, 'grid-ece', num_bins=a, grid=b, bounds=c),
                                  [15, (0.5, 1.0), (0.1, 10.0)]),
    'fit_posthoc': (fit_posthoc, ['ts', _L, _T]),
    'HistogramBinning': (lambda a: fit_posthoc('hist', _L, _T, num_bins=a), [5]),
    'predict_proba': (lambda a: fit_posthoc('ts', _L, _T).predict_proba(a), [_L]),
    'posthoc_from_state': (posthoc_from_state, [{'name': 'ts', 'num_classes': 3, 'temperature': 1.5}]),
    'save_logits_npz': (lambda a, b, c, d, e: save_logits_npz(a, b, c, split=d, checkpoint=e),
                        [_L, _T, ['a', 'b', 'c'], 'validation', 'last.pth.tar']),
    'shift_cell_metrics': (shift_cell_metrics, [_L, _L, _T, 15]),
    'shift_report': (shift_report, [_L, _T, {'fog': {1: (_L, _T)}}, 15]),
    'create_loss': (lambda a, b, c: create_loss(a, smoothing=b, reduction=c), ['sym', 0.1, 'mean']),
    'create_calibration_loss': (lambda a, b: create_calibration_loss(a, reduction=b), ['brier', 'mean']),
    **{f'loss {name}': (functools.partial(_call_loss, name), [_L, _T]) for name in LOSS_TYPES},
    'cyclical_eta': (cyclical_eta, [1.0, 4, 2.0]),
    'cyclical_value': (lambda a, b, c, d, e: cyclical_value(a, min_value=b, max_value=c, num_epochs=d,
                                                            cyclical_factor=e), [1.0, 0.0, 1.0, 4, 2.0]),
    'check_cyclical_arguments': (lambda a, b, c, d: check_cyclical_arguments(num_epochs=a, cyclical_factor=b,
                                                                             t_min=c, updates_per_epoch=d),
                                 [4, 2.0, 0.5, 2]),
    'CyclicalScheduler': (lambda a, b, c, d: CyclicalScheduler(None, _optimizer(), num_epochs=a, wd_min=b,
                                                               clip_min=c, updates_per_epoch=d), [4, 1e-4, 1.0, 2]),
    'CyclicalScheduler.step': (lambda a: CyclicalScheduler(None, num_epochs=4).step(a), [1]),
    'CyclicalScheduler.step_update': (lambda a: CyclicalScheduler(None, num_epochs=4, step_per_update=True,
                                                                  updates_per_epoch=2).step_update(a), [3]),
    'CyclicalScheduler.attach_loss': (lambda a: CyclicalScheduler(None, num_epochs=4, t_min=1.0).attach_loss(a),
                                      [create_loss('sym')]),
    'CyclicalScheduler.load_state_dict': (lambda a: CyclicalScheduler(None, num_epochs=4).load_state_dict(a),
                                          [{'epoch': 1}]),
    'CyclicalWeightDecayScheduler': (lambda a, b, c, d: CyclicalWeightDecayScheduler(
        a, wd_min=b, wd_max=c, num_epochs=d, cyclical_factor=2.0), [_optimizer(), 1e-4, 1e-3, 4]),
    'OneCycleLRScheduler': (lambda a, b, c, d, e: OneCycleLRScheduler(_optimizer(), a, pct_start=b, div_factor=c,
                                                                      final_div_factor=d, anneal_strategy=e),
                            [10, 0.3, 25.0, 1e4, 'cos']),
    'create_scheduler_v2': (lambda a, b, c: create_scheduler_v2(_optimizer(), num_epochs=4, t_min=a,
                                                                cyclical_factor=b, cyclical_epochs=c), [1.0, 2.0, 4]),
}


@pytest.mark.parametrize('name', sorted(GARBAGE_CALLS))
def test_garbage_in_any_argument_gives_a_value_error_or_a_valid_call(name):
    """Each argument replaced by every value of GARBAGE in turn (all of them: a table, not a sample): the call either
    runs (the value was valid: a float16 tensor, an integer score vector, 0 where 0 is allowed, ...) or raises a
    ValueError: never an AttributeError, IndexError, KeyError, RuntimeError or an operand TypeError from inside."""
    function, valid = GARBAGE_CALLS[name]
    for position in range(len(valid)):
        for value in GARBAGE:
            arguments = list(valid)
            arguments[position] = value
            try:
                function(*arguments)
            except ValueError:
                pass
            except Exception as error:  # noqa: BLE001  (the failure names the argument and the value)
                raise AssertionError(f'{name}: argument {position} = {value!r}: {type(error).__name__}: '
                                     f'{error}') from error
