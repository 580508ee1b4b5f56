"""Crash-safe training checkpoints: timm's ``CheckpointSaver`` whose every save is one atomic epoch record, run-folder
recovery after a kill, the newest complete checkpoint for ``--resume auto``, and resume with clear errors.

timm 1.0.31's saver writes ``tmp.pth.tar`` and then *deletes* ``last.pth.tar`` before renaming the new file in
(a Windows workaround), and copies ``model_best`` / ``checkpoint-N`` the same way: a kill in that gap leaves no
``last.pth.tar``, and ``--resume auto`` silently restarted from epoch 0. :class:`AtomicCheckpointSaver` keeps
timm's bookkeeping (history ranking, best metric, resumable saver state) and changes only the file operations:
timm's ``save_checkpoint`` decides which files change; they, with the epoch's rows of the other run files, are
written as one epoch record (:mod:`cfl_timm.training.epoch_record`: stage, commit, apply), and every copy is
renamed *over* its target (a hard link, or a copy, to a temp name, then ``os.replace``).

:func:`recover_run_dir`, run when a run folder is opened, finishes what a kill interrupted: it deletes partial
temp files and rolls an interrupted epoch forward (committed) or back (not committed).
:func:`find_resume_checkpoint` then returns the newest complete checkpoint of the folder.
"""
import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from timm.utils import CheckpointSaver

from ..files import is_temp_file
from .epoch_record import (
    RECORD_NAME,
    STAGED_NAME,
    _link_or_copy,
    _remove,
    _rename,
    _write_file,
    commit_epoch_record,
    recover_epoch_record,
)

__all__ = ['CHECKPOINT_EXTENSION', 'AtomicCheckpointSaver', 'checkpoint_epoch', 'find_resume_checkpoint',
           'load_training_checkpoint', 'recorded_best_epoch', 'recover_run_dir', 'restore_training_state',
           'run_dir_in_use']

_logger = logging.getLogger(__name__)
_TIMM_SAVER_LOGGER = logging.getLogger('timm.utils.checkpoint_saver')


def _not_the_checkpoint_list(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith('Current checkpoints:')

CHECKPOINT_EXTENSION = '.pth.tar'
LAST_NAME = 'last' + CHECKPOINT_EXTENSION
TMP_NAME = STAGED_NAME
BEST_NAME = 'model_best' + CHECKPOINT_EXTENSION
# Files whose presence means a folder holds a run of train.py that finished an epoch, or is saving one (with
# checkpoint-N and recovery-E-B). args.yaml and run.json alone mean a run that failed before its first epoch:
# the identical command reuses that folder (cfl_timm.training.resume_args).
RUN_FILES = ('summary.csv', LAST_NAME, TMP_NAME, BEST_NAME, RECORD_NAME)
_NUMBERED_PREFIXES = ('checkpoint-', 'recovery-')


# ------------------------------------------------------------------------------------------------ the saver

class AtomicCheckpointSaver(CheckpointSaver):
    """timm's :class:`~timm.utils.CheckpointSaver` whose files are replaced atomically, never deleted first.

    Same arguments, files and history as timm's saver; see the module docstring for what changes. ``run_id``
    (keyword only) is recorded in every checkpoint (``checkpoint['saver']['run_id']``, see
    :mod:`cfl_timm.training.run_owner`).
    """

    def __init__(self, *args, run_id: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_id = run_id
        # Set only inside save_checkpoint: timm's save decides the file operations, collected here, not done.
        self._planned: Optional[list[tuple[str, str]]] = None

    def save_checkpoint(self, epoch, metric=None, updates: Sequence[dict[str, Any]] = ()):
        """timm's save (same files, ranking and return value) as one atomic epoch record.

        Args:
            epoch: The epoch saved.
            metric: Its metric, ranking the checkpoint (None: kept by recency).
            updates: The epoch's rows of other run files, committed with it
                (:meth:`cfl_timm.files.SummaryCSV.epoch_update`, :meth:`cfl_timm.files.ReliabilityLog.epoch_update`).
        """
        self._planned = []
        try:
            result = super().save_checkpoint(epoch, metric)  # stages tmp.pth.tar; collects the rest
            operations = self._planned
        finally:
            self._planned = None
        commit_epoch_record(self.checkpoint_dir, epoch, operations, updates)
        return result

    def _save(self, save_path, epoch, metric=None):
        # timm builds the state and hands save_path to torch.save, which also takes an open file.
        _write_file(Path(save_path), lambda f: super(AtomicCheckpointSaver, self)._save(f, epoch, metric))

    def state_dict(self, epoch=None, metric=None):
        # Also record the ranking direction, so recover_run_dir can tell the best epoch from the file alone, and
        # the run the checkpoint belongs to, so --resume continues only that run.
        return {**super().state_dict(epoch, metric), 'decreasing': self.decreasing, 'run_id': self.run_id}

    def _track_checkpoint(self, save_path, epoch, metric=None, update_best_file=True):
        # timm logs the whole history at INFO on every save (max_history lines each epoch); here it is DEBUG per
        # save, and train.py logs checkpoints_summary() once at the end.
        _TIMM_SAVER_LOGGER.addFilter(_not_the_checkpoint_list)
        try:
            super()._track_checkpoint(save_path, epoch, metric, update_best_file)
        finally:
            _TIMM_SAVER_LOGGER.removeFilter(_not_the_checkpoint_list)
        _logger.debug(self.checkpoints_summary())

    def checkpoints_summary(self) -> str:
        """The kept checkpoints, best first, one ``(path, metric)`` per line."""
        return 'Current checkpoints:\n' + ''.join(f' {entry}\n' for entry in self.checkpoint_files)

    def _replace(self, src, dst):
        if self._planned is None:  # a recovery checkpoint (save_recovery): renamed at once
            _rename(Path(src), Path(dst))
        else:  # tmp -> last inside an epoch record: a copy, the staged state stays until the record is closed
            self._planned.append(('copy', Path(dst).name))

    def _duplicate(self, src, dst):
        if self._planned is None:
            _link_or_copy(Path(src), Path(dst))
        else:  # timm copies last.pth.tar, which the record makes from the staged state
            self._planned.append(('copy', Path(dst).name))

    def _cleanup_checkpoints(self, trim=0):
        trim = min(len(self.checkpoint_files), trim)
        delete_index = self.max_history - trim
        if delete_index < 0 or len(self.checkpoint_files) <= delete_index:
            return
        for path, _ in self.checkpoint_files[delete_index:]:
            if self._planned is None:
                _remove(Path(path))
            else:
                self._planned.append(('remove', Path(path).name))
        self.checkpoint_files = self.checkpoint_files[:delete_index]


# ------------------------------------------------------------------------------------------ reading and recovery

def load_training_checkpoint(path: str | Path, flag: str = '--resume') -> dict[str, Any]:
    """Load a train.py checkpoint (CPU tensors), with a clear ``ValueError`` for anything else.

    Args:
        path: The checkpoint file.
        flag: The flag that named it, for the message.

    Raises:
        ValueError: Missing file, not a complete torch file (truncated, foreign), or not a training checkpoint
            (no ``state_dict`` / ``epoch``).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'{flag}: checkpoint not found: {path}')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated zip, pickle of foreign objects, not a torch file at all
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f'{flag}: {path} is not a complete PyTorch checkpoint (truncated or another kind of '
                         f'file): {reason[:200]}') from e
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint or 'epoch' not in checkpoint:
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f'{flag}: {path} is not a train.py training checkpoint (expected the keys state_dict and '
                         f'epoch, found {found}).')
    if not isinstance(checkpoint['epoch'], int) or checkpoint['epoch'] < 0:
        raise ValueError(f"{flag}: {path} has an invalid epoch {checkpoint['epoch']!r}.")
    return checkpoint


def checkpoint_epoch(path: str | Path) -> Optional[int]:
    """The epoch of a complete training checkpoint, or None when it is missing, torn or foreign."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:
        return None
    epoch = checkpoint.get('epoch') if isinstance(checkpoint, dict) else None
    return epoch if isinstance(epoch, int) and 'state_dict' in checkpoint else None


def run_dir_in_use(output_dir: str | Path) -> list[str]:
    """The run files (summary.csv, checkpoints, an epoch record) already in ``output_dir``: non-empty means a run
    that finished an epoch. A run that failed before (only ``args.yaml`` / ``run.json``) is not counted."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p.name for p in output_dir.iterdir() if p.name in RUN_FILES
                  or (p.name.startswith(_NUMBERED_PREFIXES) and p.name.endswith(CHECKPOINT_EXTENSION)))


def recover_run_dir(output_dir: str | Path) -> list[str]:
    """Finish what a kill interrupted in a run folder; returns what was done (for the log).

    * temp files of the atomic writer (``.<name>.<random>.tmp``) are partial: deleted;
    * an interrupted epoch is rolled forward when its record was committed, back otherwise
      (:func:`cfl_timm.training.epoch_record.recover_epoch_record`), so all run files hold the same epoch.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    done = []
    for path in sorted(output_dir.iterdir()):
        if is_temp_file(path) and path.is_file():
            _remove(path)
            done.append(f'removed the partial file {path.name}')
    return done + recover_epoch_record(output_dir)


def recorded_best_epoch(checkpoint: dict[str, Any]) -> Optional[int]:
    """The best epoch once the checkpoint's own epoch is counted (timm's saver records its state just before
    ranking the epoch being saved: ``best_epoch`` plus the ``pending`` epoch and metric)."""
    state = checkpoint.get('saver') or {}
    best_epoch, best_metric = state.get('best_epoch'), state.get('best_metric')
    epoch, metric = state.get('pending') or (None, None)
    decreasing = bool(state.get('decreasing', False))
    if metric is not None and (best_metric is None or (metric < best_metric if decreasing else metric > best_metric)):
        return epoch
    return best_epoch


def find_resume_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint of a run folder (``last.pth.tar`` first on a tie), or None.

    Candidates are ``last.pth.tar``, ``checkpoint-N.pth.tar`` and ``model_best.pth.tar``; torn or foreign files
    are skipped. Call :func:`recover_run_dir` first so an interrupted save is completed.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = [output_dir / LAST_NAME, *sorted(output_dir.glob('checkpoint-*' + CHECKPOINT_EXTENSION)),
                  output_dir / BEST_NAME]
    best_path, best_epoch = None, -1
    for path in candidates:
        epoch = checkpoint_epoch(path) if path.is_file() else None
        if epoch is not None and epoch > best_epoch:
            best_path, best_epoch = path, epoch
    return best_path


# ------------------------------------------------------------------------------------------------ resume

# Flags that shape the state a checkpoint holds, named in the messages when the state does not fit.
_MODEL_FLAGS = ('model', 'num_classes', 'img_size', 'in_chans', 'split_bn', 'aug_splits', 'model_kwargs')


def _saved_flags(checkpoint: dict[str, Any], names: tuple[str, ...]) -> str:
    """The checkpoint's values of ``names`` as command-line flags (only the ones it recorded)."""
    saved = checkpoint.get('args')
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved if isinstance(saved, dict) else {}
    parts = []
    for name in names:
        value = saved.get(name)
        if value in (None, False, '', {}, 0) and name not in ('focal_loss', 'model'):
            continue
        flag = '--' + name.replace('_', '-')
        parts.append(flag if value is True else f'{flag} {value}')
    return ' '.join(parts) if parts else '(no flags recorded)'


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return ' '.join(text.split())[:300] if text else type(error).__name__


def restore_training_state(checkpoint: dict[str, Any], path: str | Path, task, optimizer: torch.optim.Optimizer,
                           loss_scaler=None, resume_opt: bool = True) -> int:
    """Load a checkpoint of :func:`load_training_checkpoint` into the run; returns the next epoch.

    Restores the model, the EMA, the criterion state (e.g. the cyclical loss epoch), the optimizer (keeping the
    per-group fields this run's schedulers set up, such as the cyclical schedule's ``initial_weight_decay``,
    when the checkpoint was saved without them) and the grad scaler.

    Raises:
        ValueError: The model, loss or optimizer of the checkpoint do not fit this run, naming the flags it
            was saved with.
    """
    try:
        # The model, then the task's own state: CriterionStateClassificationTask.load_task_state refuses a loss
        # state of another loss with the flags to repeat (a ValueError, passed on as it is).
        task.load_checkpoint_state(checkpoint['state_dict'], checkpoint.get('task_state'))
    except RuntimeError as e:
        raise ValueError(f'--resume: the model weights in {path} do not fit this model; the checkpoint was saved '
                         f'with {_saved_flags(checkpoint, _MODEL_FLAGS)} ({_first_line(e)}).') from e
    if task.has_ema():
        if 'state_dict_ema' not in checkpoint:
            raise ValueError(f'--resume: {path} has no EMA weights but --model-ema is on.')
        task.load_checkpoint_state(checkpoint['state_dict_ema'], checkpoint.get('task_state_ema'), ema=True)
    if resume_opt and 'optimizer' in checkpoint:
        fresh_groups = [dict(group) for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f'--resume: the optimizer state in {path} does not fit this run\'s optimizer (saved '
                             f'with {_saved_flags(checkpoint, ("opt",))}); pass --no-resume-opt to start a fresh '
                             f'optimizer ({_first_line(e)}).') from e
        for group, fresh in zip(optimizer.param_groups, fresh_groups):
            for key, value in fresh.items():
                if key != 'params':
                    group.setdefault(key, value)
    if loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
        loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
    return int(checkpoint['epoch']) + 1
