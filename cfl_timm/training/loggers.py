"""Per-epoch metric logging to Weights & Biases and TensorBoard behind one writer interface.

Each writer takes the epoch's row (the ``summary.csv`` row: timm's ``epoch``, ``train_loss``, ``eval_loss``,
``eval_top1``, ``eval_top5``, ``lr``, plus the calibration metrics ``eval_nll``, ``eval_ece`` and the cyclical
values ``eta``, ``weight_decay``, ``temperature``, ``clip_grad``) and logs every numeric value at step =
epoch; values that are off (None) are left out. Both back ends are optional extras, imported only when asked
for: :func:`check_logger_extras` names the pip command before any work starts.
"""
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Protocol

__all__ = ['LOGGER_EXTRAS', 'MetricWriter', 'MetricWriters', 'TensorBoardWriter', 'WandbWriter',
           'check_logger_extras', 'create_metric_writers', 'metric_writers_kwargs']

# flag -> (importable module, pip command)
LOGGER_EXTRAS = {
    '--log-wandb': ('wandb', 'pip install wandb  (or: pip install "cfl-timm[wandb]")'),
    '--log-tensorboard': ('tensorboard', 'pip install tensorboard  (or: pip install "cfl-timm[tensorboard]")'),
}


def check_logger_extras(log_wandb: bool, log_tensorboard: bool) -> None:
    """Raise a ValueError naming the pip command when a requested back end is not installed."""
    for flag, wanted in (('--log-wandb', log_wandb), ('--log-tensorboard', log_tensorboard)):
        module, command = LOGGER_EXTRAS[flag]
        if wanted and importlib.util.find_spec(module) is None:
            raise ValueError(f'{flag} needs the {module!r} package, which is not installed: {command}')


def _scalars(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k != 'epoch' and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricWriter(Protocol):
    """What train.py calls: ``log(row, step)`` once per epoch, ``close()`` at the end."""

    def log(self, row: Mapping[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


class WandbWriter:
    """Logs to a Weights & Biases run through the real ``wandb`` client (``WANDB_MODE=offline`` works offline).

    Args:
        project: W&B project (None: the client's default).
        name: Run name.
        tags: Run tags.
        resume_id: Resume this run id (``resume='must'``); None starts a new run.
        config: Run configuration (the effective arguments).
        directory: Folder in which the client writes its ``wandb/`` run folder.
    """

    def __init__(self, project: Optional[str], name: str, tags: Sequence[str], resume_id: Optional[str],
                 config: Mapping[str, Any], directory: Path) -> None:
        import wandb

        self.run = wandb.init(project=project, name=name, tags=list(tags) or None, config=dict(config),
                              dir=str(directory), id=resume_id or None, resume='must' if resume_id else None,
                              reinit='finish_previous')

    def log(self, row: Mapping[str, Any], step: int) -> None:
        self.run.log({'epoch': step, **_scalars(row)}, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorBoardWriter:
    """Writes TensorBoard event files (one scalar tag per key) to ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, row: Mapping[str, Any], step: int) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MetricWriters:
    """Several writers behind the one interface (empty: logging off)."""

    def __init__(self, writers: Sequence[MetricWriter] = ()) -> None:
        self.writers = list(writers)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        for writer in self.writers:
            writer.log(row, step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def create_metric_writers(
        *,
        log_wandb: bool = False,
        wandb_project: Optional[str] = None,
        wandb_tags: Sequence[str] = (),
        wandb_resume_id: Optional[str] = None,
        log_tensorboard: str = '',
        run_name: str = '',
        output_dir: Optional[Path] = None,
        config: Optional[Mapping[str, Any]] = None,
) -> MetricWriters:
    """The requested writers (call on the primary process only).

    Args:
        log_wandb: Log to Weights & Biases.
        wandb_project: W&B project.
        wandb_tags: W&B tags.
        wandb_resume_id: W&B run id to resume.
        log_tensorboard: TensorBoard log folder ('' = off).
        run_name: Name of the run (the experiment folder name).
        output_dir: The run's output folder (holds the W&B run folder).
        config: The effective arguments, stored with the W&B run.
    """
    check_logger_extras(log_wandb, bool(log_tensorboard))
    writers: list[MetricWriter] = []
    if log_wandb:
        writers.append(WandbWriter(wandb_project, run_name, wandb_tags, wandb_resume_id, config or {},
                                   Path(output_dir or '.')))
    if log_tensorboard:
        writers.append(TensorBoardWriter(Path(log_tensorboard)))
    return MetricWriters(writers)


def metric_writers_kwargs(args: Any) -> dict[str, Any]:
    """:func:`create_metric_writers` keyword arguments from train.py's logging flags."""
    return dict(log_wandb=args.log_wandb, wandb_project=args.wandb_project, wandb_tags=args.wandb_tags,
                wandb_resume_id=args.wandb_resume_id, log_tensorboard=args.log_tensorboard)
