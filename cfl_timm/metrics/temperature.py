"""Post-hoc temperature scaling of classifier logits.

Reference: C. Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, https://arxiv.org/abs/1706.04599.
The ECE grid search reproduces tables that pick T by the lowest validation ECE (e.g. J. Mukhoti et al.,
"Calibrating Deep Neural Networks using Focal Loss", https://arxiv.org/abs/2002.09437).
"""
import math
from collections.abc import Sequence

import torch

from .calibration import bin_indices

__all__ = ['FIT_METHODS', 'fit_temperature', 'check_calibration_split', 'is_test_split']

FIT_METHODS = ('nll', 'grid-ece')
DEFAULT_GRID = tuple(round(0.1 * i, 10) for i in range(1, 101))  # 0.1, 0.2, ..., 10.0


def is_test_split(split: str) -> bool:
    """Whether a split name denotes a test split ('test', 'TEST', 'test2017', ...)."""
    return split.strip().lower().startswith('test')


def check_calibration_split(split: str, allow_test_split: bool = False) -> None:
    """Refuse to fit a temperature on a test split unless explicitly allowed (fitting on test leaks the labels)."""
    if is_test_split(split) and not allow_test_split:
        raise ValueError(f"Refusing to fit the temperature on the '{split}' split: fit it on a held-out split "
                         f"(e.g. 'validation'), or allow it explicitly (allow_test_split=True, validate.py "
                         f"--allow-test-calibration).")


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, method: str = 'nll', *, split: str = 'validation',
                    allow_test_split: bool = False, num_bins: int = 15, grid: Sequence[float] = DEFAULT_GRID,
                    max_iter: int = 100) -> float:
    """Fit one scalar T > 0 so that softmax(logits / T) is calibrated on a held-out split.

    ``'nll'`` (default, Guo et al.): minimise the mean NLL of softmax(z / T) over u = log T with LBFGS (strong-Wolfe
    line search, float64). The NLL is convex in 1 / T, so the optimum is unique; optimising log T keeps T > 0.

    ``'grid-ece'``: the T of ``grid`` (default 0.1, 0.2, ..., 10.0, 100 values) with the lowest equal-width ECE of
    ``num_bins`` bins; ties go to the first (smallest) T.

    Args:
        logits: (N, K) logits of the held-out split, any float dtype.
        target: (N,) class indices.
        method: One of ``FIT_METHODS``.
        split: Name of the split the logits come from; a test split is refused unless `allow_test_split`.
        allow_test_split: Explicitly allow fitting on a test split.
        num_bins: Bins of the ECE for ``'grid-ece'``.
        grid: Temperatures tried by ``'grid-ece'``.
        max_iter: LBFGS iterations for ``'nll'``.

    Returns:
        The temperature T (divide the logits by it).
    """
    if method not in FIT_METHODS:
        raise ValueError(f"Unknown temperature fit method '{method}': expected one of {FIT_METHODS}.")
    check_calibration_split(split, allow_test_split)
    if logits.dim() != 2 or target.shape != logits.shape[:1] or logits.shape[0] == 0:
        raise ValueError(f'need logits (N, K) and target (N,) with N > 0, got {tuple(logits.shape)} and '
                         f'{tuple(target.shape)}.')
    logits = logits.detach().double().cpu()
    target = target.detach().long().cpu()
    if not bool(torch.isfinite(logits).all()):
        raise ValueError('logits contain NaN or infinite values.')
    if method == 'grid-ece':
        temperatures = [float(t) for t in grid]
        if not temperatures or min(temperatures) <= 0:
            raise ValueError('the temperature grid must be non-empty and positive.')
        best = None
        for temperature in temperatures:
            ece = _ece(logits / temperature, target, num_bins)
            if best is None or ece < best[1]:
                best = (temperature, ece)
        return best[0]

    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits * torch.exp(-log_temperature), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return math.exp(log_temperature.item())


def _ece(logits: torch.Tensor, target: torch.Tensor, num_bins: int) -> float:
    """Equal-width top-label ECE, with the bin convention of :func:`bin_indices`."""
    confidence, prediction = torch.softmax(logits, dim=1).max(dim=1)
    bins = bin_indices(confidence, num_bins)
    gap = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, (prediction == target).double() - confidence)
    return float(gap.abs().sum() / target.numel())
