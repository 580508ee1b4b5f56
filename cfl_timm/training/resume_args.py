"""Resume says what changed: the settings of a continued run are compared with the ones it was trained with.

A resumed run (``--resume auto`` in its folder, or ``--resume PATH``) that silently takes another image size,
cyclical factor or learning-rate schedule ends somewhere no uninterrupted run would, and nothing in its files
says so. :func:`check_resume_args` compares the new settings with the recorded ones (the folder's ``args.yaml``
for ``--resume auto``, the checkpoint's own ``args`` for ``--resume PATH``) and refuses any difference in a
setting that alters the training trajectory, listing every one (flag, old value, new value) in one message,
unless ``--allow-changed-args`` is given. :data:`UNCOMPARED_SETTINGS` names, explicitly, the settings that do not
alter the trajectory; every other setting, a new flag included, is compared. So is the number of processes
(:data:`WORLD_SIZE_KEY`, recorded beside the flags): each process draws its own batch, so another number changes
the global batch, the scaled learning rate and the data each step sees.

The same comparison lets the identical command reuse a folder whose run never finished an epoch (a late
failure left ``args.yaml`` and ``run.json`` there, but no checkpoint or summary row): only a changed command is
refused there.
"""
import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

__all__ = ['UNCOMPARED_SETTINGS', 'WORLD_SIZE_KEY', 'changed_settings', 'check_resume_args', 'format_changes',
           'recorded_settings']

_logger = logging.getLogger(__name__)

# The settings whose change leaves every computed number of the run as it is (so a resume may change them).
UNCOMPARED_SETTINGS = frozenset({
    # where the run's files go
    'output', 'experiment',
    # how this command resumes (the recorded values of the run are compared, not these)
    'resume', 'no_resume_opt', 'start_epoch', 'allow_changed_args', 'config',
    # logging and debugging output
    'log_interval', 'log_wandb', 'wandb_project', 'wandb_tags', 'wandb_resume_id', 'log_tensorboard',
    'save_images', 'log_shard_indices',
    # which checkpoints are kept, and recovery checkpoints inside an epoch
    'checkpoint_hist', 'recovery_interval',
    # machine resources: loader processes, pinned memory, device synchronisation, torchrun's rank variable.
    # --workers changes which worker draws a batch's random augmentation, so the draws (not their distribution)
    # differ: a resume with another -j is not bit-identical to the uninterrupted run (it is logged).
    'workers', 'pin_mem', 'synchronize_step', 'local_rank',
    # how much of each image the start-up check reads (the images trained on are the same)
    'image_check',
})
_NOTED_SETTINGS = ('workers',)  # uncompared, but named in the log when changed
# Recorded with the flags (args.yaml, the checkpoint's args) and compared like them, but set by the launcher
# (distributed_train.sh N / torchrun), not by a flag.
WORLD_SIZE_KEY = 'world_size'
_NOT_FLAGS = {WORLD_SIZE_KEY: 'the number of processes (world size)'}


def recorded_settings(args: argparse.Namespace, world_size: int) -> dict[str, Any]:
    """What a run records of its settings (``args.yaml``, the checkpoints' ``args``) and a resume compares: every
    flag, and the number of processes."""
    return {**vars(args), WORLD_SIZE_KEY: world_size}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def changed_settings(recorded: Mapping[str, Any], current: Mapping[str, Any],
                     uncompared: frozenset[str] = UNCOMPARED_SETTINGS) -> list[tuple[str, Any, Any]]:
    """The compared settings whose value differs: ``(name, recorded value, current value)``, sorted by name.

    A setting absent from the record (a flag added since the run was recorded) is not compared.
    """
    return [(name, _plain(recorded[name]), _plain(current[name])) for name in sorted(current)
            if name in recorded and name not in uncompared and _plain(recorded[name]) != _plain(current[name])]


def _shown(value: Any) -> str:
    if value is None or value == '' or value == [] or value == {}:
        return '(not set)'
    if value is True:
        return 'on'
    if value is False:
        return 'off'
    if isinstance(value, list):
        return ' '.join(map(str, value))
    if isinstance(value, dict):
        return ' '.join(f'{k}={v}' for k, v in value.items())
    return str(value)


def format_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """``--img-size 32 -> 64, --wd-min 0.0001 -> (not set)``; a setting that is not a flag by its description
    (``the number of processes (world size) 2 -> 1``)."""
    return ', '.join(f'{_NOT_FLAGS.get(name) or "--" + name.replace("_", "-")} {_shown(old)} -> {_shown(new)}'
                     for name, old, new in changes)


def _recorded_args_yaml(run_dir: Path) -> Optional[dict[str, Any]]:
    path = run_dir / 'args.yaml'
    if not path.is_file():
        return None
    try:
        recorded = yaml.safe_load(path.read_text(encoding='utf-8'))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f'{path} is not the YAML of a train.py run ({e}); the settings of the run cannot be '
                         'compared. Restore it, or pass --allow-changed-args.') from None
    return recorded if isinstance(recorded, dict) else None


def _recorded_checkpoint_args(path: str) -> Optional[dict[str, Any]]:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (a broken checkpoint is refused with its own message when it is loaded)
        return None
    saved = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    return vars(saved) if isinstance(saved, argparse.Namespace) else saved if isinstance(saved, dict) else None


def check_resume_args(args: argparse.Namespace, run_dir: Optional[Path], run_started: bool, world_size: int) -> None:
    """Refuse a resume (or a re-run in a folder whose run never finished an epoch) with changed settings.

    Args:
        args: The parsed arguments (``--resume``, ``--allow-changed-args`` and every setting compared).
        run_dir: The run folder when known before the model is built (``--experiment`` given), else None.
        run_started: Whether ``run_dir`` holds a run that finished an epoch (checkpoints, summary rows).
        world_size: The number of processes this command runs with (compared with the recorded one).

    Raises:
        ValueError: ``--resume auto`` without ``--experiment``; or changed settings, all listed, without
            ``--allow-changed-args``.
    """
    if args.resume == 'auto' and not args.experiment:
        raise ValueError('--resume auto needs --experiment NAME, the run folder to continue (without it every run '
                         'gets a new folder named by the time, so there is nothing to resume).')
    if args.resume and args.resume != 'auto':
        recorded, source = _recorded_checkpoint_args(args.resume), f'the checkpoint {args.resume}'
        what = '--resume'
    elif run_dir is not None and (args.resume or not run_started):
        recorded, source = _recorded_args_yaml(run_dir), f'the run in {run_dir}'
        what = '--resume' if args.resume else '--output/--experiment'
    else:
        return
    if recorded is None:
        return
    current = recorded_settings(args, world_size)
    noted = [(name, recorded[name], current[name]) for name in _NOTED_SETTINGS
             if name in recorded and name in current and recorded[name] != current[name]]
    if noted:
        _logger.info(f'{source}: changed {format_changes(noted)} (not compared: the augmentation random draws '
                     'of a resumed run differ from the uninterrupted run\'s).')
    changes = changed_settings(recorded, current)
    if not changes:
        return
    if args.allow_changed_args:
        _logger.warning(f'{source}: continuing with changed settings (--allow-changed-args): '
                        f'{format_changes(changes)}.')
        return
    if args.resume:
        raise ValueError(f'{what}: {source} was trained with other settings, and they change its training '
                         f'trajectory: {format_changes(changes)}. Repeat its settings, or pass '
                         '--allow-changed-args to continue with the new ones.')
    raise ValueError(f'{what}: {run_dir} holds a run that never finished an epoch, started with other settings: '
                     f'{format_changes(changes)}. Repeat its command to start it again, choose another '
                     '--experiment, or pass --allow-changed-args to start it again with the new settings.')
