"""Crash-safe run files: atomic text writes, the effective-arguments YAML and the per-epoch summary CSV.

A reader (or a resumed run) only ever sees a complete old file or a complete new one: every write goes to a
temporary file in the same directory, is flushed to disk, then replaces the target with ``os.replace``.
"""
import csv
import io
import math
import os
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Optional

import yaml

__all__ = ['SUMMARY_COLUMNS', 'SummaryWriter', 'atomic_write_bytes', 'atomic_write_text', 'is_temp_file',
           'read_summary', 'save_args_yaml', 'temp_path_for']

# timm's columns first, then the calibration metrics and the cyclical values in force during the epoch.
SUMMARY_COLUMNS = ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'eval_nll', 'eval_ece',
                   'eta', 'weight_decay', 'temperature', 'clip_grad')


TEMP_SUFFIX = '.tmp'


def temp_path_for(path: str | Path) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<random>.tmp`` (hidden, recognisable for clean-up)."""
    path = Path(path)
    return path.with_name(f'.{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}')


def is_temp_file(path: str | Path) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write_bytes` (left behind only by a killed process)."""
    name = Path(path).name
    return name.startswith('.') and name.endswith(TEMP_SUFFIX)


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file atomically: ``write(f)`` fills a temp file in the same directory, which is fsynced and then
    moved over ``path`` with os.replace, so a crash leaves either the old file or the new one, never a torn one.

    Permissions are those of an ordinary ``open()``: a new file gets 0666 minus the user's umask, a replaced
    file keeps its mode. A temp file left by a killed process is named ``.<name>.<random>.tmp``
    (:func:`is_temp_file`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        keep_mode: Optional[int] = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        keep_mode = None
    tmp_path = temp_path_for(path)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        if keep_mode is not None:
            os.fchmod(fd, keep_mode)
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode('utf-8')))


def save_args_yaml(path: str | Path, args: Mapping[str, Any]) -> None:
    """Save the effective arguments (plain values only) as YAML, atomically."""
    plain = {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, list, tuple, dict, type(None)))}
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}
    atomic_write_text(path, yaml.safe_dump(plain, default_flow_style=False, sort_keys=True))


def _format(value: Any) -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def read_summary(path: str | Path) -> list[dict[str, str]]:
    """Rows of a summary CSV as dicts of strings (empty list when absent)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


class SummaryWriter:
    """The per-epoch ``summary.csv``, rewritten atomically on every row.

    Args:
        path: The CSV file.
        columns: Column order (default :data:`SUMMARY_COLUMNS`).
        start_epoch: Rows of epochs >= start_epoch already in the file are dropped (a resumed run rewrites
            them); 0 starts a new file.
    """

    def __init__(self, path: str | Path, columns: Sequence[str] = SUMMARY_COLUMNS, start_epoch: int = 0) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self.rows = [r for r in read_summary(self.path) if r.get('epoch') and int(r['epoch']) < start_epoch]
        self.rows = [{c: r.get(c, '') for c in self.columns} for r in self.rows]

    def append(self, row: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None) -> None:
        """Append one epoch's row (missing or None values are written empty) and rewrite the file."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f'Unknown summary columns {sorted(unknown)}, expected a subset of {self.columns}.')
        self.rows.append({c: _format(row.get(c)) for c in self.columns})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator='\n')
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())
