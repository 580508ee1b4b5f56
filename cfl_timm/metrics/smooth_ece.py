"""Smooth ECE: kernel-smoothed calibration error with a self-consistent bandwidth.

Reference: J. Blasiok and P. Nakkiran, "Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing",
https://arxiv.org/abs/2309.12236 (reference package ``relplot``).
"""
import math

import numpy as np
import torch

from .checks import check_real, check_scores

__all__ = ['smooth_ece', 'smooth_ece_at_bandwidth']

_MIN_GRID_POINTS = 2001
_KERNEL_WIDTHS = 5.0  # Gaussian truncated at 5 sigma (relative mass lost < 6e-7)


def _reflected_smooth(position: np.ndarray, weights: np.ndarray, bandwidth: float) -> np.ndarray:
    """Sum of w_i * K(t, f_i) on a grid t_j = j / (M - 1) of [0, 1], rows of `weights` smoothed independently.

    K is the Gaussian kernel reflected at 0 and 1 (so that each kernel integrates to one over [0, 1]). Each point is
    first split linearly between its two neighbouring grid points, then the grid is convolved with the kernel.
    """
    num_points = max(_MIN_GRID_POINTS, 2 * math.ceil(10.0 / bandwidth) + 1)
    step = 1.0 / (num_points - 1)
    scaled = position * (num_points - 1)
    left = np.clip(np.floor(scaled).astype(np.int64), 0, num_points - 2)
    frac = scaled - left
    grid = np.stack([np.bincount(left, row * (1 - frac), num_points) + np.bincount(left + 1, row * frac, num_points)
                     for row in weights])
    half = math.ceil(_KERNEL_WIDTHS * bandwidth / step)
    offsets = np.arange(-half, half + 1) * step
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2) / (math.sqrt(2 * math.pi) * bandwidth)
    # The reflected signal is periodic with period 2 (M - 1): index j maps to |j| folded back into [0, M - 1].
    period = 2 * (num_points - 1)
    index = np.arange(-half, num_points + half) % period
    index = np.where(index > num_points - 1, period - index, index)
    extended = grid[:, index]
    # 'valid' convolution through the FFT (the kernel spans up to 10 sigma of the grid), at a power-of-two length.
    length = 1 << (extended.shape[1] + kernel.size - 2).bit_length()
    full = np.fft.irfft(np.fft.rfft(extended, length) * np.fft.rfft(kernel, length), length)
    return full[:, 2 * half:2 * half + num_points]


def _check_samples(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, correct) as float64 CPU vectors after checking them: matching non-empty 1-D tensors, confidence
    real in [0, 1], correct 0 / 1 (bool or numbers)."""
    confidence = check_scores(confidence, 'confidence')
    if not bool(((confidence >= 0) & (confidence <= 1)).all()):
        raise ValueError('confidence must hold finite values in [0, 1] (max softmax probabilities), got values in '
                         f'[{float(confidence.min())}, {float(confidence.max())}].')
    if not isinstance(correct, torch.Tensor) or correct.is_complex():
        raise ValueError(f'correct must be a real or bool torch.Tensor, got '
                         f'{getattr(correct, "dtype", type(correct).__name__)}.')
    if correct.shape != confidence.shape:
        raise ValueError(f'confidence and correct must be matching 1-D tensors, got {tuple(confidence.shape)} '
                         f'and {tuple(correct.shape)}.')
    hits = correct.detach().cpu().double()
    if not bool(((hits == 0) | (hits == 1)).all()):
        raise ValueError('correct must hold 0 or 1 (or bool) for every sample.')
    return confidence, hits


def smooth_ece_at_bandwidth(confidence: torch.Tensor, correct: torch.Tensor, bandwidth: float) -> float:
    """smECE_sigma = (1 / N) * integral over [0, 1] of |sum_i K_sigma(t, c_i) (c_i - y_i)| dt.

    The integral is a trapezoid sum on the grid, normalised by the same sum of the kernel density (which integrates
    to N), so the discretisation error of the two cancels to first order.

    Args:
        confidence: (N,) predicted confidence in [0, 1], N >= 1.
        correct: (N,) 1 where the prediction was right, else 0 (bool or numbers).
        bandwidth: Kernel width sigma > 0 (the grid has about 20 / sigma points).
    """
    confidence, correct = _check_samples(confidence, correct)
    bandwidth = check_real(bandwidth, 'bandwidth', 0.0, low_open=True)
    return _smooth_ece_at_bandwidth(confidence.numpy(), correct.numpy(), bandwidth)


def _smooth_ece_at_bandwidth(confidence: np.ndarray, correct: np.ndarray, bandwidth: float) -> float:
    """:func:`smooth_ece_at_bandwidth` on checked float64 arrays."""
    residual = confidence - correct
    smoothed = _reflected_smooth(confidence, np.stack([residual, np.ones_like(residual)]), bandwidth)
    return float(np.trapezoid(np.abs(smoothed[0])) / np.trapezoid(smoothed[1]))


def smooth_ece(confidence: torch.Tensor, correct: torch.Tensor, min_bandwidth: float = 1e-3,
               tolerance: float = 1e-6, return_bandwidth: bool = False):
    """Smooth ECE of top-label confidences against correctness, with the bandwidth chosen as the fixed point.

    smECE_sigma(c, y) decreases in sigma; the bandwidth sigma* solves smECE_sigma* = sigma* (Blasiok & Nakkiran,
    Def. 7), so the result equals sigma* itself. Because sigma* shrinks as the noise of a finite sample shrinks, the
    estimate of a calibrated predictor goes to zero as N grows instead of growing like binned ECE with many bins.
    The fixed point is found by bisection to `tolerance`; it is bounded below by `min_bandwidth` (relplot's
    ``eps``), which limits the grid to about 20 / min_bandwidth points.

    Args:
        confidence: (N,) predicted confidence in [0, 1] (max softmax probability).
        correct: (N,) 1 where the prediction was right, else 0 (bool or float).
        min_bandwidth: Smallest bandwidth considered, in (0, 1).
        tolerance: Bisection tolerance on the bandwidth, > 0.
        return_bandwidth: Also return sigma*.

    Returns:
        smECE (float), or (smECE, sigma*) when `return_bandwidth`.
    """
    confidence, correct = (values.numpy() for values in _check_samples(confidence, correct))
    min_bandwidth = check_real(min_bandwidth, 'min_bandwidth', 0.0, 1.0, low_open=True, high_open=True)
    # A tolerance of 0 would bisect forever once the bracket stops shrinking at float64 resolution.
    tolerance = check_real(tolerance, 'tolerance', 0.0, low_open=True)

    def excess(bandwidth: float) -> float:
        return _smooth_ece_at_bandwidth(confidence, correct, bandwidth) - bandwidth

    low, high = min_bandwidth, 1.0
    if excess(high) >= 0:
        bandwidth = high
    elif excess(low) <= 0:
        bandwidth = low
    else:
        while high - low > tolerance:
            middle = 0.5 * (low + high)
            if excess(middle) > 0:
                low = middle
            else:
                high = middle
        bandwidth = 0.5 * (low + high)
    value = _smooth_ece_at_bandwidth(confidence, correct, bandwidth)
    return (value, bandwidth) if return_bandwidth else value
