"""Post-hoc temperature scaling of classifier logits.

Reference: C. Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, https://arxiv.org/abs/1706.04599.
The ECE grid search reproduces tables that pick T by the lowest validation ECE (e.g. J. Mukhoti et al.,
"Calibrating Deep Neural Networks using Focal Loss", https://arxiv.org/abs/2002.09437).
"""
import math
import numbers
import warnings
from collections.abc import Sequence

import torch

from .calibration import bin_indices
from .checks import check_count, check_logits, check_targets

__all__ = ['FIT_METHODS', 'fit_temperature', 'check_calibration_split', 'is_test_split']

FIT_METHODS = ('nll', 'grid-ece')
DEFAULT_GRID = tuple(round(0.1 * i, 10) for i in range(1, 101))  # 0.1, 0.2, ..., 10.0
# The NLL fit searches T in this range: a model near chance drives the unbounded optimum to T -> inf (and a
# perfectly separable split to T -> 0), which no user wants reported as a fitted temperature.
DEFAULT_BOUNDS = (0.01, 100.0)


def is_test_split(split: str) -> bool:
    """Whether a split name denotes a test split ('test', 'TEST', 'test2017', ...)."""
    if not isinstance(split, str):
        raise ValueError(f'split must be a split name (str), got {type(split).__name__}.')
    return split.strip().lower().startswith('test')


def check_calibration_split(split: str, allow_test_split: bool = False) -> None:
    """Refuse to fit a temperature on a test split unless explicitly allowed (fitting on test leaks the labels)."""
    if not isinstance(allow_test_split, bool):  # 'no' would count as True and allow the test split
        raise ValueError(f'allow_test_split must be True or False, got {allow_test_split!r}.')
    if is_test_split(split) and not allow_test_split:
        raise ValueError(f"Refusing to fit the temperature on the '{split}' split: fit it on a held-out split "
                         f"(e.g. 'validation'), or allow it explicitly (allow_test_split=True, validate.py "
                         f"--allow-test-calibration).")


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, method: str = 'nll', *, split: str = 'validation',
                    allow_test_split: bool = False, num_bins: int = 15, grid: Sequence[float] = DEFAULT_GRID,
                    bounds: tuple[float, float] = DEFAULT_BOUNDS) -> float:
    """Fit one scalar T > 0 so that softmax(logits / T) is calibrated on a held-out split.

    ``'nll'`` (default, Guo et al.): minimise the mean NLL of softmax(b z) over b = 1 / T in [1 / hi, 1 / lo]
    (float64). The NLL is convex in b, so its derivative  mean_i (sum_k softmax(b z_i)_k z_ik - z_iy)  increases
    with b and the bounded optimum is found exactly by bisection on it (a bound when the derivative keeps its sign
    there; a warning then says the temperature was clipped).

    ``'grid-ece'``: the T of ``grid`` (default 0.1, 0.2, ..., 10.0, 100 values) with the lowest equal-width ECE of
    ``num_bins`` bins; ties go to the first (smallest) T.

    Args:
        logits: (N, K) logits of the held-out split, any float dtype.
        target: (N,) class indices.
        method: One of ``FIT_METHODS``.
        split: Name of the split the logits come from; a test split is refused unless `allow_test_split`.
        allow_test_split: Explicitly allow fitting on a test split.
        num_bins: Bins of the ECE for ``'grid-ece'``.
        grid: Temperatures tried by ``'grid-ece'``, each finite and > 0.
        bounds: (lo, hi) range of T for ``'nll'``, 0 < lo < hi (default 0.01 to 100).

    Returns:
        The temperature T (divide the logits by it).
    """
    if method not in FIT_METHODS:
        raise ValueError(f"Unknown temperature fit method '{method}': expected one of {FIT_METHODS}.")
    check_calibration_split(split, allow_test_split)
    logits = check_logits(logits)
    target = check_targets(target, logits.shape[0], logits.shape[1], name='target')
    if method == 'grid-ece':
        num_bins = check_count(num_bins, 'num_bins')
        values = grid.tolist() if hasattr(grid, 'tolist') else grid  # a numpy array or tensor of temperatures
        if (isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values
                or not all(isinstance(t, numbers.Real) and not isinstance(t, bool) and 0 < t < math.inf
                           for t in values)):  # NaN fails the comparison
            raise ValueError(f'the temperature grid must be non-empty and positive (finite numbers > 0), got {grid!r}.')
        temperatures = [float(t) for t in values]
        best = None
        for temperature in temperatures:
            ece = _ece(logits / temperature, target, num_bins)
            if best is None or ece < best[1]:
                best = (temperature, ece)
        return best[0]

    pair = bounds.tolist() if hasattr(bounds, 'tolist') else bounds
    if (isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2
            or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in pair)
            or not 0 < pair[0] < pair[1] < math.inf):  # NaN fails the comparison
        raise ValueError(f'bounds must satisfy 0 < lo < hi < inf, got {bounds!r}.')
    low, high = float(pair[0]), float(pair[1])
    target_logit = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    # (K, N): the softmax and the sum over classes then run along contiguous rows, several times faster for small K
    classes_first = logits.T.contiguous()

    def slope(beta: float) -> float:  # d/db of the mean NLL of softmax(b z)
        return float((torch.softmax(classes_first * beta, dim=0) * classes_first).sum(0).sub_(target_logit).mean())

    beta_low, beta_high = 1.0 / high, 1.0 / low
    if slope(beta_low) >= 0:
        return _clipped(high, 'upper')
    if slope(beta_high) <= 0:
        return _clipped(low, 'lower')
    for _ in range(200):  # the bracket shrinks by half each step: float64 resolution long before 200
        middle = 0.5 * (beta_low + beta_high)
        if middle in (beta_low, beta_high):
            break
        if slope(middle) > 0:
            beta_high = middle
        else:
            beta_low = middle
    return 1.0 / (0.5 * (beta_low + beta_high))


def _clipped(temperature: float, side: str) -> float:
    warnings.warn(f'The NLL-optimal temperature lies beyond the {side} bound; returning T = {temperature:g}. The '
                  'logits are (nearly) uninformative (upper) or perfectly separated (lower) on this split.',
                  stacklevel=3)
    return temperature


def _ece(logits: torch.Tensor, target: torch.Tensor, num_bins: int) -> float:
    """Equal-width top-label ECE, with the bin convention of :func:`bin_indices`."""
    confidence, prediction = torch.softmax(logits, dim=1).max(dim=1)
    bins = bin_indices(confidence, num_bins)
    gap = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, (prediction == target).double() - confidence)
    return float(gap.abs().sum() / target.numel())
