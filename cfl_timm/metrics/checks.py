"""Eager input checks shared by the model-free evaluation metrics (one place, so every metric words errors alike)."""
import math
import numbers
from typing import Any

import torch

__all__ = ['check_count', 'check_index_dtype', 'check_logits', 'check_real', 'check_same_classes', 'check_scores',
           'check_targets']


def check_count(value: Any, name: str, low: int = 1) -> int:
    """Return ``value`` after checking it is a Python / numpy integer (not a bool, not a float) >= ``low`` that a
    tensor size can hold (< 2**63)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value < 2 ** 63:
        raise ValueError(f'{name} must be an integer >= {low} (and < 2**63), got {value!r}.')
    return int(value)


def check_real(value: Any, name: str, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
               high_open: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite real number (not a bool) between ``low`` and
    ``high`` (each bound included unless ``low_open`` / ``high_open``)."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (value < high if high_open else value <= high))
    if not ok:
        if high == math.inf:
            valid = f'{">" if low_open else ">="} {low:g}'
        else:
            valid = f'in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
        raise ValueError(f'{name} must be a finite number {valid}, got {value!r}.')
    return float(value)


def check_logits(logits: torch.Tensor, name: str = 'logits') -> torch.Tensor:
    """Return ``logits`` detached as float64 on the CPU after checking it is a finite, non-empty (N, K >= 2) tensor."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor of shape (N, K), got {type(logits).__name__}.')
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f'{name} must have shape (N, K) with K >= 2, got {tuple(logits.shape)}.')
    if logits.shape[0] == 0:
        raise ValueError(f'{name} is empty (N = 0); at least one sample is needed.')
    if not logits.is_floating_point():
        raise ValueError(f'{name} must be a floating-point tensor, got {logits.dtype}.')
    logits = logits.detach().cpu().double()
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f'{name} contains NaN or infinite values.')
    return logits


def check_same_classes(logits: torch.Tensor, other: torch.Tensor, name: str, other_name: str) -> None:
    """Raise a ValueError unless two checked (N, K) logits tensors have the same number of classes K."""
    if logits.shape[1] != other.shape[1]:
        raise ValueError(f'{other_name} must have K = {logits.shape[1]} columns like {name}, got {other.shape[1]}.')


def check_index_dtype(targets: Any, name: str = 'targets') -> None:
    """Raise a ValueError unless ``targets`` is a tensor of an integer dtype (not bool, float or complex)."""
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor of class indices, got {type(targets).__name__}.')
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f'{name} must hold integer class indices (e.g. torch.int64), got {targets.dtype}.')


def check_targets(targets: torch.Tensor, num_samples: int, num_classes: int, name: str = 'targets') -> torch.Tensor:
    """Return ``targets`` as int64 on the CPU after checking it is (N,) integer class indices in [0, K)."""
    check_index_dtype(targets, name)
    if targets.shape != (num_samples,):
        raise ValueError(f'{name} must have shape ({num_samples},) to match the logits, got {tuple(targets.shape)}.')
    targets = targets.detach().cpu().long()
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise ValueError(f'{name} class indices must lie in [0, {num_classes}), got values in '
                         f'[{int(targets.min())}, {int(targets.max())}].')
    return targets


def check_scores(scores: torch.Tensor, name: str = 'scores') -> torch.Tensor:
    """Return ``scores`` as a float64 CPU vector after checking it is a finite, non-empty 1-D tensor."""
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f'{name} must be a 1-D torch.Tensor, got {type(scores).__name__}.')
    if scores.dim() != 1:
        raise ValueError(f'{name} must be 1-D, got shape {tuple(scores.shape)}.')
    if scores.numel() == 0:
        raise ValueError(f'{name} is empty; at least one score is needed.')
    if not (scores.is_floating_point() or scores.dtype in (torch.int32, torch.int64)):
        raise ValueError(f'{name} must be a real-valued tensor, got {scores.dtype}.')
    scores = scores.detach().cpu().double()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f'{name} contains NaN or infinite values.')
    return scores
