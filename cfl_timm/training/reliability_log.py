"""``reliability.jsonl``: the evaluation's reliability-diagram bins of every epoch, one JSON object a line.

Each line holds ``epoch``, the equal-width bin ``edges`` (B + 1), and per bin the ``count``, mean ``confidence`` and
``accuracy`` (null for an empty bin), as ``CalibrationMeter.reliability()`` returns them, plus the epoch's scalar
metrics (``ece``, ``nll``, ``top1``, ...). ``python -m cfl_timm.plotting reliability RUN_DIR ...`` draws their
evolution. Each line is appended with one fsynced write; a resumed run drops the lines of the epochs it repeats
(and a line torn by a kill), like ``summary.csv``.
"""
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cfl_timm.data.holdout import append_jsonl, trim_jsonl

__all__ = ['ReliabilityLog', 'read_reliability_log']


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

    def append(self, epoch: int, reliability: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Record ``reliability`` (``CalibrationMeter.reliability()``) and the scalar ``metrics`` of ``epoch``."""
        record = {'epoch': int(epoch), **{k: _plain(v) for k, v in reliability.items()},
                  **{k: _plain(float(v)) for k, v in metrics.items() if isinstance(v, (int, float))}}
        append_jsonl(self.path, record)
