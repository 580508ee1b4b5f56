"""Crash-safe run files, standard library only: atomic writes, JSON-lines logs and the per-epoch summary CSV.

The bottom floor of the package: every other module may import it, it imports nothing of ``cfl_timm``.

A reader (or a resumed run) only ever sees a complete old file or a complete new one: every write goes to a
temporary file in the same directory, is flushed to disk, then replaces the target with ``os.replace``.
"""
import csv
import errno
import io
import json
import math
import os
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Optional

__all__ = ['SUMMARY_COLUMNS', 'DiskFullError', 'ReliabilityLog', 'SummaryCSV', 'append_jsonl',
           'apply_epoch_update', 'atomic_write_bytes', 'atomic_write_text', 'is_temp_file', 'read_reliability_log',
           'read_summary', 'temp_path_for', 'trim_jsonl']

# timm's columns first, then the calibration metrics and the cyclical values in force during the epoch.
SUMMARY_COLUMNS = ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'eval_nll', 'eval_ece',
                   'eta', 'weight_decay', 'temperature', 'clip_grad')


TEMP_SUFFIX = '.tmp'


class DiskFullError(OSError):
    """A write failed because the device is full (``ENOSPC``, or ``EDQUOT``: the user's quota); the message names
    the file. Nothing already written is lost: the write went to a temp file, which is removed."""

    def __init__(self, path: str | Path, error: OSError):
        reason = 'no space left on device' if error.errno == errno.ENOSPC else 'disk quota exceeded'
        super().__init__(error.errno, f'{reason} while writing {path}; free some space, then continue the run '
                                      '(train.py: --resume auto)')
        self.path = Path(path)

    def __str__(self) -> str:
        return self.strerror


def _disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full_cause(error: BaseException) -> Optional[OSError]:
    """The ``ENOSPC`` / ``EDQUOT`` error in ``error``'s chain (a writer such as torch.save may wrap it), or None."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and _disk_full(error):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


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
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        if keep_mode is not None:
            os.fchmod(fd, keep_mode)
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as error:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        full = _disk_full_cause(error)
        if full is not None and not isinstance(error, DiskFullError):
            raise DiskFullError(path, full) from error
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode('utf-8')))


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


def _epoch_of(record: Mapping[str, Any]) -> int:
    """The ``epoch`` of a summary row or JSON record (-1 when missing or not a number: such lines are dropped)."""
    try:
        return int(record.get('epoch'))
    except (TypeError, ValueError):
        return -1


def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    writer.writerows({c: r.get(c, '') for c in columns} for r in rows)
    return buffer.getvalue()


class SummaryCSV:
    """The per-epoch ``summary.csv``, rewritten atomically on every row.

    Args:
        path: The CSV file.
        columns: Column order (default :data:`SUMMARY_COLUMNS`).
        start_epoch: Rows of epochs >= start_epoch already in the file are dropped, in the file too (a resumed
            run rewrites them); 0 starts a new file.
    """

    def __init__(self, path: str | Path, columns: Sequence[str] = SUMMARY_COLUMNS, start_epoch: int = 0) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        found = read_summary(self.path)
        self.rows = [{c: r.get(c, '') for c in self.columns} for r in found if 0 <= _epoch_of(r) < start_epoch]
        if len(self.rows) != len(found):  # rows of the epochs this run repeats (or broken ones): gone now
            atomic_write_text(self.path, _csv_text(self.columns, self.rows))

    def format_row(self, row: Mapping[str, Any]) -> dict[str, str]:
        """``row`` as the strings written (missing or None values empty); refuses unknown columns."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f'Unknown summary columns {sorted(unknown)}, expected a subset of {self.columns}.')
        return {c: _format(row.get(c)) for c in self.columns}

    def append(self, row: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None) -> None:
        """Append one epoch's row (missing or None values are written empty) and rewrite the file."""
        self.rows.append(self.format_row(row))
        atomic_write_text(self.path, _csv_text(self.columns, self.rows))

    def epoch_update(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The update of :func:`apply_epoch_update` that makes ``row`` the file's row of its epoch (for an epoch
        record, which applies it; see ``cfl_timm.training.epoch_record``)."""
        formatted = self.format_row(row)
        self.rows.append(formatted)
        return {'file': self.path.name, 'columns': list(self.columns), 'row': formatted}


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line: a single ``write`` on an O_APPEND file, then fsync.

    A kill can leave at most a torn last line, which :func:`trim_jsonl` drops on the next start. The file is
    created with mode 0o666 less the user's umask.
    """
    data = (json.dumps(record, sort_keys=True) + '\n').encode('utf-8')
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f'short write to {path}: {written} of {len(data)} bytes')
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        if _disk_full(error):
            raise DiskFullError(path, error) from error
        raise


def _complete_jsonl_lines(path: Path, keep: Callable[[dict[str, Any]], bool]) -> list[str]:
    """The complete JSON-object lines of ``path`` for which ``keep(record)`` holds (a torn last line is dropped)."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding='utf-8').splitlines(keepends=True):
        if not line.endswith('\n'):
            continue  # torn by a kill
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and keep(record):
            kept.append(line)
    return kept


def trim_jsonl(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Keep the complete JSON lines of ``path`` for which ``keep(record)`` holds (atomic rewrite).

    Used on resume: the lines written after the checkpoint's epoch, and a line torn by a kill, are dropped so
    that the resumed run appends them exactly once. Returns the number of lines kept (0 if there is no file).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept = _complete_jsonl_lines(path, keep)
    atomic_write_text(path, ''.join(kept))
    return len(kept)


# --------------------------------------------------------------------------------------------------------------
# ``reliability.jsonl``: the evaluation's reliability-diagram bins of every epoch, one JSON object a line:
# ``epoch``, the equal-width bin ``edges`` (B + 1), per bin the ``count``, mean ``confidence`` and ``accuracy``
# (null for an empty bin) as ``CalibrationMeter.reliability()`` returns them, plus the epoch's scalar metrics.
# ``python -m cfl_timm.plotting reliability RUN_DIR ...`` draws their evolution. A resumed run drops the lines of
# the epochs it repeats (and a line torn by a kill), like ``summary.csv``.

def _plain(value: Any) -> Any:
    """JSON-safe value: NaN (an empty bin) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_reliability_log(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``reliability.jsonl`` in file order (null bins read back as NaN); empty list when absent."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f'{path}:{number}: not a JSON line ({error.msg}).') from None
        for key in ('confidence', 'accuracy'):
            record[key] = [math.nan if v is None else v for v in record.get(key, [])]
        records.append(record)
    return records


class ReliabilityLog:
    """Appends one epoch's reliability bins to ``reliability.jsonl`` (one fsynced write per line).

    Args:
        path: The JSONL file.
        start_epoch: Lines of epochs >= start_epoch already in the file, and a line torn by a kill, are dropped
            (a resumed run writes them again).
    """

    def __init__(self, path: str | Path, start_epoch: int = 0) -> None:
        self.path = Path(path)
        trim_jsonl(self.path, lambda record: record.get('epoch', -1) < start_epoch)

    @staticmethod
    def line(epoch: int, reliability: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
        """The JSON line of ``epoch``: ``reliability`` (``CalibrationMeter.reliability()``) and the scalar
        ``metrics``."""
        record = {'epoch': int(epoch), **{k: _plain(v) for k, v in reliability.items()},
                  **{k: _plain(float(v)) for k, v in metrics.items() if isinstance(v, (int, float))}}
        return json.dumps(record, sort_keys=True) + '\n'

    def append(self, epoch: int, reliability: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Record ``reliability`` (``CalibrationMeter.reliability()``) and the scalar ``metrics`` of ``epoch``."""
        append_jsonl(self.path, json.loads(self.line(epoch, reliability, metrics)))

    def epoch_update(self, epoch: int, reliability: Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, Any]:
        """The update of :func:`apply_epoch_update` that makes this the file's line of ``epoch`` (for an epoch
        record, which applies it)."""
        return {'file': self.path.name, 'line': self.line(epoch, reliability, metrics)}


def apply_epoch_update(folder: str | Path, epoch: int, update: Mapping[str, Any]) -> None:
    """Make ``update`` (from :meth:`SummaryCSV.epoch_update` or :meth:`ReliabilityLog.epoch_update`) the last
    entry of its file in ``folder``: entries of epochs >= ``epoch`` are dropped, the new one is added, the file is
    rewritten atomically. Applying it twice gives the same bytes (a recovery may repeat it)."""
    path = Path(folder) / update['file']
    if 'columns' in update:
        rows = [r for r in read_summary(path) if 0 <= _epoch_of(r) < epoch]
        atomic_write_text(path, _csv_text(update['columns'], [*rows, update['row']]))
    else:
        kept = _complete_jsonl_lines(path, lambda record: _epoch_of(record) < epoch)
        atomic_write_text(path, ''.join(kept) + update['line'])
