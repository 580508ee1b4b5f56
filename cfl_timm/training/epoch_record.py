"""One atomic record per epoch: every file train.py writes for an epoch changes together or not at all.

An epoch changes several files: the new state (``last.pth.tar``), the ranked copies (``checkpoint-N.pth.tar``,
``model_best.pth.tar``) and the removal of a copy that falls out of the history, the epoch's ``summary.csv`` row
and its ``reliability.jsonl`` line. Each file alone is replaced atomically (:mod:`cfl_timm.files`), but a kill
between two of them used to leave a mixed folder (a ``checkpoint-N`` never made, a ``reliability.jsonl`` line
lost). Here an epoch is written as a small write-ahead log:

1. *stage*: the epoch's state is written completely to ``tmp.pth.tar`` (the folder's other files untouched);
2. *commit*: ``epoch-record.json`` is written atomically; it names the epoch, the file operations (copy the
   staged state over ``last`` / ``checkpoint-N`` / ``model_best``, remove an evicted ``checkpoint-M``) and the
   per-epoch rows of the other files. Its rename is the single moment the epoch becomes part of the run;
3. *apply*: each operation is carried out (every one is idempotent: a copy goes to a temp name renamed over
   the target; a row update rewrites its file from the entries of earlier epochs plus the new one);
4. *close*: ``epoch-record.json`` is removed, then ``tmp.pth.tar``.

:func:`recover_epoch_record`, run when a folder is resumed, rolls an interrupted epoch forward when its record
was committed (applying it again, from the start) and back otherwise (deleting the staged state): after a kill
at any point every file holds the same epoch. Every file operation goes through :func:`_write_file`,
:func:`_link_or_copy` and :func:`_remove`, or through :func:`cfl_timm.files.apply_epoch_update`; the folder is
fsynced after the commit and before the record is removed, so the order holds across a power cut too.
"""
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Optional

from ..files import apply_epoch_update, atomic_write_bytes, temp_path_for

__all__ = ['RECORD_NAME', 'STAGED_NAME', 'commit_epoch_record', 'read_epoch_record', 'recover_epoch_record']

RECORD_NAME = 'epoch-record.json'
STAGED_NAME = 'tmp.pth.tar'  # timm's name of the freshly written state


# ------------------------------------------------------------------------------ file operations (kill points)

def _write_file(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Fill ``path`` through ``write(f)`` atomically: the file is complete or absent, never torn."""
    atomic_write_bytes(path, write)


def _rename(src: Path, dst: Path) -> None:
    """Rename ``src`` over ``dst`` in one step: ``dst`` is the old or the new file at every moment."""
    os.replace(src, dst)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same content as ``src`` (hard link, else copy) through a temp name renamed over ``dst``.

    Nothing is done when ``dst`` already is ``src`` (a repeated operation of a recovery): renaming a hard link
    over another link of the same file is a no-op in POSIX, which would leave the temp name behind.
    """
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        return
    tmp = temp_path_for(dst)
    try:
        os.link(src, tmp)
    except (OSError, NotImplementedError):
        shutil.copyfile(src, tmp)
    _rename(tmp, dst)


def _remove(path: Path) -> None:
    """Delete ``path`` if present."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _sync_dir(path: Path) -> None:
    """Flush the folder's entries (the renames) to disk: after a power cut the record and the files it changed
    are then on disk in the order they were made, not only after a kill of the process."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ the record

def _plain_name(name: Any, record_path: Path) -> str:
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith('.'):
        raise ValueError(f'{record_path}: {name!r} is not a file name of the run folder; the epoch record is '
                         'damaged (delete it to roll the epoch back).')
    return name


def commit_epoch_record(output_dir: str | Path, epoch: int, operations: Sequence[tuple[str, str]],
                        updates: Sequence[dict[str, Any]] = ()) -> None:
    """Commit and apply one epoch whose state is already staged in ``tmp.pth.tar``.

    Args:
        output_dir: The run folder.
        epoch: The epoch recorded.
        operations: ``('copy', NAME)`` (the staged state becomes NAME) or ``('remove', NAME)``, in order.
        updates: Row updates of other files (:meth:`cfl_timm.files.SummaryCSV.epoch_update`,
            :meth:`cfl_timm.files.ReliabilityLog.epoch_update`).
    """
    output_dir = Path(output_dir)
    record = {'epoch': int(epoch), 'staged': STAGED_NAME, 'operations': [list(op) for op in operations],
              'updates': list(updates)}
    data = (json.dumps(record, indent=1, sort_keys=True) + '\n').encode('utf-8')
    _write_file(output_dir / RECORD_NAME, lambda f: f.write(data))  # the commit point
    _sync_dir(output_dir)
    _apply(output_dir, record)


def read_epoch_record(output_dir: str | Path) -> Optional[dict[str, Any]]:
    """The committed but not yet closed record of ``output_dir``, or None.

    Raises:
        ValueError: The record is not one (it was written atomically, so only a foreign hand can break it).
    """
    path = Path(output_dir) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding='utf-8'))
        epoch, operations, updates = record['epoch'], record['operations'], record['updates']
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path} is not an epoch record of train.py ({e}); delete it to roll the epoch back.') \
            from None
    if not isinstance(epoch, int) or not isinstance(operations, list) or not isinstance(updates, list):
        raise ValueError(f'{path} is not an epoch record of train.py; delete it to roll the epoch back.')
    _plain_name(record.get('staged'), path)
    for op in operations:
        if not (isinstance(op, list) and len(op) == 2 and op[0] in ('copy', 'remove')):
            raise ValueError(f'{path}: unknown file operation {op!r}; delete it to roll the epoch back.')
        _plain_name(op[1], path)
    for update in updates:
        _plain_name(update.get('file') if isinstance(update, dict) else None, path)
    return record


def _apply(output_dir: Path, record: dict[str, Any]) -> None:
    staged = output_dir / record['staged']
    for op, name in record['operations']:
        if op == 'copy':
            _link_or_copy(staged, output_dir / name)
        else:
            _remove(output_dir / name)
    for update in record['updates']:
        apply_epoch_update(output_dir, record['epoch'], update)
    _sync_dir(output_dir)  # every change on disk before the record that would redo them goes
    _remove(output_dir / RECORD_NAME)  # closed: from here on the staged state is a leftover
    _remove(staged)


def recover_epoch_record(output_dir: str | Path) -> list[str]:
    """Roll an interrupted epoch forward (its record was committed) or back (it was not); returns what was done.

    Call after the partial temp files are removed. Raises ``ValueError`` for a damaged record.
    """
    output_dir = Path(output_dir)
    record = read_epoch_record(output_dir)
    if record is not None:
        if not (output_dir / record['staged']).is_file() and any(op == 'copy' for op, _ in record['operations']):
            raise ValueError(f'{output_dir / RECORD_NAME}: its staged state {record["staged"]} is missing; '
                             'delete the record to roll the epoch back.')
        _apply(output_dir, record)
        names = [name for op, name in record['operations'] if op == 'copy'] + [u['file'] for u in record['updates']]
        return [f'completed the interrupted record of epoch {record["epoch"]} ({", ".join(names)})']
    staged = output_dir / STAGED_NAME
    if staged.exists():
        _remove(staged)
        return [f'rolled back the uncommitted epoch (removed {STAGED_NAME})']
    return []
