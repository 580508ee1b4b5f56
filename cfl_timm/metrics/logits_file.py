"""Saved logits: one ``.npz`` file per evaluated split, so that post-hoc calibrators, OOD scores and bootstrap
intervals can be recomputed later without re-running the network.

Format (numpy ``.npz``, readable with ``numpy.load(path, allow_pickle=False)``):

* ``logits``: (N, K) float32 or float64, finite (float64 only for TTA-averaged logits, which are computed in
  float64, so that the file reproduces the reported metrics exactly);
* ``targets``: (N,) int64 class indices in [0, K);
* ``class_names``: (K,) unicode strings;
* ``split`` / ``checkpoint``: 0-d unicode strings (the evaluated split, the checkpoint file name or '');
* ``ood_logits`` (optional): (M, K) float32 or float64, finite: the logits of an out-of-distribution set;
* ``ood_name`` (optional, with ``ood_logits``): 0-d unicode string, that set's name.
"""
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .checks import check_index_dtype

__all__ = ['LOGITS_FILE_KEYS', 'LogitsFile', 'load_logits_npz', 'save_logits_npz']

LOGITS_FILE_KEYS = ('logits', 'targets', 'class_names', 'split', 'checkpoint')
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class LogitsFile:
    """The contents of a saved-logits file, as CPU tensors and plain strings."""
    logits: torch.Tensor
    targets: torch.Tensor
    class_names: list[str]
    split: str
    checkpoint: str
    ood_logits: Optional[torch.Tensor] = None
    ood_name: Optional[str] = None


def _float_array(values: torch.Tensor, name: str) -> np.ndarray:
    """float32 / float64 stay as they are (no rounding of what the metrics used); half types widen to float32."""
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():  # no silent int / complex cast
        raise ValueError(f'save_logits_npz: {name} must be a floating-point torch.Tensor, got '
                         f'{values.dtype if isinstance(values, torch.Tensor) else type(values).__name__}.')
    values = values.detach().cpu()
    if values.dtype not in (torch.float32, torch.float64):
        values = values.float()
    return values.numpy()


def _check_logits(arrays: dict[str, np.ndarray], key: str, source: str) -> np.ndarray:
    logits = arrays[key]
    if logits.dtype not in _FLOAT_DTYPES:
        raise ValueError(f'{source}: {key!r} must be float32 or float64, got {logits.dtype}.')
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(f'{source}: {key!r} must have shape (N, K) with N >= 1, K >= 2, got {logits.shape}.')
    if not np.isfinite(logits).all():
        raise ValueError(f'{source}: {key!r} contains NaN or infinite values.')
    return logits


def _check_string(arrays: dict[str, np.ndarray], key: str, source: str, shape: tuple[int, ...]) -> np.ndarray:
    value = arrays[key]
    if value.dtype.kind != 'U' or value.shape != shape:
        raise ValueError(f'{source}: {key!r} must be a unicode string array of shape {shape}, got {value.dtype} '
                         f'{value.shape}.')
    return value


def _check_arrays(arrays: dict[str, np.ndarray], source: str) -> LogitsFile:
    """Validate the arrays of a logits file; ValueError naming ``source`` and the offending key."""
    for key in LOGITS_FILE_KEYS:
        if key not in arrays:
            raise ValueError(f'{source}: missing key {key!r} (a logits file holds {", ".join(LOGITS_FILE_KEYS)} '
                             f'and optionally ood_logits).')
    logits = _check_logits(arrays, 'logits', source)
    num_samples, num_classes = logits.shape
    targets = arrays['targets']
    if targets.dtype != np.int64:
        raise ValueError(f'{source}: \'targets\' must be int64, got {targets.dtype}.')
    if targets.shape != (num_samples,):
        raise ValueError(f'{source}: \'targets\' must have shape ({num_samples},) to match the logits, '
                         f'got {targets.shape}.')
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f'{source}: \'targets\' must lie in [0, {num_classes}), got values in '
                         f'[{targets.min()}, {targets.max()}].')
    names = _check_string(arrays, 'class_names', source, (num_classes,))
    split = _check_string(arrays, 'split', source, ())
    checkpoint = _check_string(arrays, 'checkpoint', source, ())
    ood, ood_name = None, None
    if 'ood_name' in arrays:
        if 'ood_logits' not in arrays:
            raise ValueError(f"{source}: 'ood_name' without 'ood_logits'.")
        ood_name = str(_check_string(arrays, 'ood_name', source, ()))
    if 'ood_logits' in arrays:
        ood = _check_logits(arrays, 'ood_logits', source)
        if ood.shape[1] != num_classes:
            raise ValueError(f'{source}: \'ood_logits\' must have {num_classes} columns like the logits, '
                             f'got {ood.shape}.')
    unknown = sorted(set(arrays) - set(LOGITS_FILE_KEYS) - {'ood_logits', 'ood_name'})
    if unknown:
        raise ValueError(f'{source}: unknown keys {unknown}.')
    return LogitsFile(logits=torch.from_numpy(logits), targets=torch.from_numpy(targets),
                      class_names=[str(n) for n in names], split=str(split), checkpoint=str(checkpoint),
                      ood_logits=None if ood is None else torch.from_numpy(ood), ood_name=ood_name)


def save_logits_npz(logits: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str], *, split: str,
                    checkpoint: str = '', ood_logits: Optional[torch.Tensor] = None,
                    ood_name: Optional[str] = None) -> bytes:
    """The bytes of a logits file (write them with an atomic writer); ValueError for input that would not load.

    Args:
        logits: (N, K) logits of the evaluated split (float32 / float64 kept, half types stored as float32).
        targets: (N,) integer class indices (stored as int64).
        class_names: K class names.
        split: name of the evaluated split.
        checkpoint: the checkpoint the logits came from ('' for none).
        ood_logits: optional (M, K) logits of an out-of-distribution set.
        ood_name: optional name of that set.
    """
    check_index_dtype(targets)  # a float or bool target would be truncated to an index silently
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):  # 'abc': 3 names a, b, c
        raise ValueError(f'save_logits_npz: class_names must be a sequence of K names, got '
                         f'{type(class_names).__name__}.')
    for name, value in (('split', split), ('checkpoint', '' if checkpoint is None else checkpoint),
                        ('ood_name', '' if ood_name is None else ood_name)):
        if not isinstance(value, str):
            raise ValueError(f'save_logits_npz: {name} must be a string, got {type(value).__name__}.')
    arrays = {'logits': _float_array(logits, 'logits'), 'targets': targets.detach().cpu().long().numpy(),
              'class_names': np.array([str(n) for n in class_names], dtype=str).reshape(len(class_names)),
              'split': np.array(str(split), dtype=str), 'checkpoint': np.array(str(checkpoint or ''), dtype=str)}
    if ood_logits is not None:
        arrays['ood_logits'] = _float_array(ood_logits, 'ood_logits')
        if ood_name is not None:
            arrays['ood_name'] = np.array(str(ood_name), dtype=str)
    _check_arrays(arrays, 'save_logits_npz')
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def load_logits_npz(path: str | Path) -> LogitsFile:
    """Read and validate a logits file; ValueError naming the file and the key when it is malformed."""
    if not isinstance(path, (str, Path)):
        raise ValueError(f'path must be a str or pathlib.Path of a logits file, got {type(path).__name__}.')
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError('a single array, not an archive of named arrays')
        with data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise ValueError(f'{path}: no such logits file.') from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:  # not an npz, or object arrays (pickle)
        raise ValueError(f'{path}: not a readable .npz logits file ({str(error).splitlines()[0]}).') from None
    return _check_arrays(arrays, str(path))
