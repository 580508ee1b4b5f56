#!/usr/bin/env python3
"""Train an image classifier with timm's command line plus cyclical focal loss and cyclical training.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978, and "General Cyclical Training
of Neural Networks", https://arxiv.org/abs/2202.08835.

Written for this project on timm's library API (models, data, optimizers, schedulers, EMA, checkpoint saver);
the command line keeps timm's flag names, meanings and defaults, with a YAML ``-c/--config`` file whose values
become defaults that explicit flags override. The published CFL flags are accepted with their underscore
spelling and timm's dash spelling. Use ``get_args_parser()`` / ``parse_args()`` and ``main(args)`` to train
in-process; ``distributed_train.sh NUM_PROC ...`` runs it under torchrun (gloo on CPU, nccl on CUDA).

Reading order: the command line (its groups and checks live in :mod:`cfl_timm.training.args`), ``main``, the
:class:`TrainContext` the loop reads, ``_train`` (build, open the run folder, then epoch by epoch: start the
epoch, ``train_one_epoch``, ``validate``, record), then the builders it calls.
"""
import argparse
import contextlib
import functools
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import timm.scheduler
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data import AugMixDataset, Mixup, create_loader, resolve_data_config
from timm.layers import convert_splitbn_model, convert_sync_batchnorm, set_fast_norm
from timm.loss import create_classification_loss
from timm.models import create_model, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.utils import (
    dispatch_clip_grad,
    distribute_bn,
    random_seed,
    set_jit_fuser,
    setup_default_logging,
)

from cfl_timm import LOSS_TYPES, CyclicalScheduler, create_loss, loss_kwargs
from cfl_timm.data import (
    SubsetDataset,
    check_same_classes,
    check_split_tree,
    class_counts,
    dataset_targets,
    is_image_folder_name,
    log_class_counts,
    patch_timm_posterize,
    select_train_subset,
)
from cfl_timm.data.factory import build_dataset as create_split_dataset
from cfl_timm.data.factory import dataset_kwargs
from cfl_timm.data.holdout import (
    HOLDOUT_METRICS,
    HoldoutRecord,
    dataset_fingerprint,
    holdout_split,
    write_holdout_record,
)
from cfl_timm.data.transforms import cifar_transform_kwargs, create_cifar_train_transform
from cfl_timm.data.worker_seeding import EpochSeededTransform, seed_workers_by_epoch, stop_workers
from cfl_timm.files import (
    SUMMARY_COLUMNS,
    DiskFullError,
    ReliabilityLog,
    SummaryCSV,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_text,
    trim_jsonl,
)
from cfl_timm.plotting import plot_run
from cfl_timm.training import (
    AtomicCheckpointSaver,
    CountingScaler,
    CriterionStateClassificationTask,
    EvalResult,
    ProcessInfo,
    RunLock,
    barrier,
    claim_run,
    create_distillation_task,
    create_eval_loader,
    ddp_device_ids,
    distillation_kwargs,
    evaluate,
    evaluate_temperature_scaled,
    find_resume_checkpoint,
    gather_objects,
    init_process,
    load_training_checkpoint,
    metrics_of_logits,
    predict,
    recover_run_dir,
    restore_training_state,
    run_dir_in_use,
    save_args_yaml,
)
from cfl_timm.training.args import (
    TrainArgumentParser,
    UsageError,
    add_train_args,
    check_args,
    load_config,
    loss_name,
    mixup_active,
)
from cfl_timm.training.backends import set_timm_cuda_defaults
from cfl_timm.training.evidence import TrainingEvidence
from cfl_timm.training.initial_checkpoint import load_initial_checkpoint
from cfl_timm.training.input_checks import DECREASING_EVAL_METRICS, image_mode, input_channels
from cfl_timm.training.loggers import MetricWriters, create_metric_writers, metric_writers_kwargs
from cfl_timm.training.pretrained import fetching_weights
from cfl_timm.training.resume_args import recorded_settings
from cfl_timm.training.termination import exit_on_sigterm

_logger = logging.getLogger('train')
# AdaFocal's per-update bin statistics, one JSON line each, in the run directory.
ADAFOCAL_BINS_FILE = 'adafocal_bins.jsonl'
# With --holdout: T fitted on the held-out split each evaluated epoch, and the evaluation split's metrics after
# dividing its logits by T (summary.csv columns, after the held-out metrics).
TEMPERATURE_SCALED_METRICS = ('nll', 'ece', 'adaptive_ece', 'classwise_ece', 'brier')
HOLDOUT_TS_COLUMNS = ('holdout_temperature', *(f'eval_{key}_ts' for key in TEMPERATURE_SCALED_METRICS))
# Beside the default columns: the training pass's top-1 and the epoch's wall time, and the evaluation split's
# metrics whose temperature-scaled twins the held-out columns add (raw and scaled side by side).
EPOCH_COLUMNS = ('train_top1', 'epoch_time', 'eval_adaptive_ece', 'eval_classwise_ece', 'eval_brier')
HOLDOUT_EXTRA_COLUMNS = ('holdout_adaptive_ece', 'holdout_classwise_ece')

def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """timm's training flags (names, meanings, defaults) plus the cyclical focal loss / training flags.

    The groups live in :mod:`cfl_timm.training.args` (one ``add_<group>_args`` function each).
    """
    parser = TrainArgumentParser(prog='train.py', add_help=add_help,
                                     description='cfl-timm training (timm command line + cyclical training)')
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML config file; its values become defaults that explicit flags override')
    return add_train_args(parser)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; a ``-c/--config`` YAML file supplies defaults that explicit flags override."""
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str)
    config_args, remaining = config_parser.parse_known_args(argv)
    parser = get_args_parser()
    if config_args.config:
        parser.set_defaults(**load_config(config_args.config, parser))
    args = parser.parse_args(remaining)
    args.config = config_args.config
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train with the parsed arguments; returns the output directory and the last epoch's metrics."""
    setup_default_logging()
    check_args(args)
    import_device_modules(args.device_modules)
    set_timm_cuda_defaults()
    proc = init_process(args.device)
    effective_args = recorded_settings(args, proc.world_size)  # args.yaml and the checkpoints: what resume compares
    try:
        return _train(args, effective_args, proc)
    finally:
        if proc.distributed and dist.is_initialized():
            dist.destroy_process_group()


def import_device_modules(modules: Optional[Sequence[str]]) -> None:
    """``--device-modules``: import device back-end plug-ins before the device is set up."""
    for module in modules or ():
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UsageError(f'--device-modules: cannot import {module!r}: {e}') from e


@dataclass
class TrainContext:
    """Everything the epoch loop needs, built once by :func:`build_context` (instead of long signatures).

    Attributes:
        args: The parsed (and checked) arguments; read, never written.
        proc: This process's device and rank.
        model: The timm model (unwrapped: checkpoints and BatchNorm sync use it).
        task: The timm task wrapping model and criterion (EMA, DDP, criterion state in checkpoints).
        optimizer: timm optimizer over the model's parameters.
        lr_scheduler: From timm's scheduler factory: the LR scheduler inside the one object that owns the
            cyclical position (weight decay, temperature, clip threshold and the loss eta move with its
            ``step`` / ``step_update``).
        criterion: The training loss, attached to ``lr_scheduler``.
        mixup_fn: timm's batch Mixup/CutMix, or None.
        loss_scaler: Grad scaler (CUDA float16 only) counting the steps it skipped, or None.
        autocast: Context-manager factory for the forward pass (a no-op without AMP).
        num_classes: Number of classes.
        num_epochs: Scheduled epochs (cooldown included).
        updates_per_epoch: Optimizer updates per epoch.
        loader_holdout: This rank's shard of the held-out calibration split (eval transforms), or None.
        holdout_size: Number of held-out images (all ranks together), 0 without ``--holdout``.
        holdout_record: What identifies the held-out images (written to the run folder for validate.py), or None.
        evidence: Records top-1 on the training batches and the loss's evidence terms (a hook on ``criterion``).
        worker_seeding: Reseeds the persistent training-loader workers each epoch, or None (no workers, or
            workers that restart each epoch).
    """

    args: argparse.Namespace
    proc: ProcessInfo
    model: nn.Module
    task: CriterionStateClassificationTask
    optimizer: torch.optim.Optimizer
    lr_scheduler: CyclicalScheduler
    criterion: nn.Module
    mixup_fn: Optional[Mixup]
    loss_scaler: Optional[CountingScaler]
    autocast: Callable[[], contextlib.AbstractContextManager]
    num_classes: int
    num_epochs: int
    updates_per_epoch: int
    loader_holdout: Any = None
    holdout_size: int = 0
    holdout_record: Optional[HoldoutRecord] = None
    evidence: Optional[TrainingEvidence] = None
    worker_seeding: Optional[EpochSeededTransform] = None

    @property
    def device(self) -> torch.device:
        return self.proc.device


@dataclass
class RunFiles:
    """The run's output folder and files (saver, summary and metric writers on the primary process only) and
    the first epoch."""

    output_dir: Path
    start_epoch: int
    saver: Optional[AtomicCheckpointSaver] = None
    summary: Optional[SummaryCSV] = None
    reliability: Optional[ReliabilityLog] = None  # reliability.jsonl: the evaluation's bins of every epoch
    writers: MetricWriters = field(default_factory=MetricWriters)
    lock: Optional[RunLock] = None  # the primary process's lock on output_dir

    def close(self) -> None:
        """Close the metric writers and unlock the folder."""
        self.writers.close()
        if self.lock is not None:
            self.lock.release()


def _train(args: argparse.Namespace, effective_args: dict[str, Any], proc: ProcessInfo) -> dict[str, Any]:
    """Build, open the run folder (resuming when asked), then train and validate epoch by epoch."""
    if proc.distributed:
        _logger.info(f'Process {proc.rank} of {proc.world_size}, device {proc.device} '
                     f'(backend {dist.get_backend()}).')
    try:  # bad input found while setting up (data files, teacher weights) is a usage error, not a crash
        ctx, loader_train, loader_eval, data_config = build_context(args, proc)
        run = open_run(ctx, effective_args, data_config)
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from e
    if proc.is_primary:
        log_unrecorded(ctx)
    eval_metrics: dict[str, float] = {}
    train_speed: list[float] = []
    try:
        if args.log_shard_indices:
            _log_shard_indices(loader_train, run.output_dir, run.start_epoch, proc.is_primary)
        for epoch in range(run.start_epoch, ctx.num_epochs):
            epoch_start = time.perf_counter()
            used = start_epoch(ctx, loader_train, epoch)
            train_metrics = train_one_epoch(ctx, loader_train, epoch, run,
                                            on_update=holdout_update_hook(ctx, run, epoch))
            train_speed.append(train_metrics.pop('images_per_second'))
            if proc.distributed and args.dist_bn in ('broadcast', 'reduce'):
                distribute_bn(ctx.model, proc.world_size, args.dist_bn == 'reduce')
                if ctx.task.has_ema():
                    distribute_bn(ctx.task.get_trainable_module(ema=True), proc.world_size,
                                  args.dist_bn == 'reduce')
            lrs = [group['lr'] for group in ctx.optimizer.param_groups]
            lr_value = sum(lrs) / len(lrs)
            if (epoch + 1) % args.val_interval and epoch + 1 != ctx.num_epochs:
                # --val-interval: no validation, checkpoint or summary row this epoch (timm's behaviour).
                ctx.lr_scheduler.step(epoch + 1, None)
                continue
            eval_model = ctx.task.get_eval_model(ema=ctx.task.has_ema() and not args.model_ema_force_cpu)
            evaluation = validate(eval_model, loader_eval, ctx.device, ctx.autocast, ctx.num_classes,
                                  model_dtype(args))
            eval_metrics = dict(evaluation.metrics)
            if ctx.loader_holdout is not None:
                holdout = evaluate_holdout(ctx, eval_model, run, epoch, update=holdout_update_every(ctx) == -1)
                eval_metrics.update(holdout_metrics(ctx, holdout, evaluation))
            ctx.lr_scheduler.step(epoch + 1, eval_metrics[args.eval_metric])
            # Training pass plus evaluations (the checkpoint writes after it are not counted).
            train_metrics['epoch_time'] = time.perf_counter() - epoch_start
            if proc.is_primary:
                record_epoch(ctx, run, epoch, train_metrics, eval_metrics, lr_value, used, evaluation)
    finally:
        for loader in (loader_train, loader_eval, ctx.loader_holdout):
            if loader is not None:
                stop_workers(loader)
        run.close()
    if proc.is_primary and not args.no_plots:
        draw_run_pictures(run.output_dir)
    if proc.is_primary and run.saver is not None:
        if run.saver.checkpoint_files:
            _logger.info(run.saver.checkpoints_summary())
        if run.saver.best_metric is not None:
            _logger.info(f'*** Best metric: {run.saver.best_metric} (epoch {run.saver.best_epoch})')
    return {'output_dir': str(run.output_dir), 'eval_metrics': eval_metrics, 'num_epochs': ctx.num_epochs,
            'train_images_per_second': train_speed}


def log_unrecorded(ctx: TrainContext) -> None:
    """Say which per-epoch values this run cannot record, and why (instead of empty columns nobody explains)."""
    if ctx.loader_holdout is None:
        _logger.info('No --holdout: the held-out metrics and the temperature-scaled twins (eval_*_ts) are not '
                     'recorded; T must be fitted on a split other than the one it is measured on (--holdout N).')
    if not ctx.evidence.keys:
        _logger.info(f'The loss {type(ctx.criterion).__name__} has no evidence terms (focal / Brier / gate / p_t): no '
                     'evidence_* columns.')
    if ctx.mixup_fn is not None:
        _logger.info('Mixup/CutMix: the training targets are soft (timm\'s Mixup returns them for every batch), so '
                     'train_top1 and the loss evidence are not recorded (empty columns).')


def draw_run_pictures(output_dir: Path) -> None:
    """The run's pictures from its summary.csv (:func:`cfl_timm.plotting.plot_run`); each one not drawn is logged
    with its reason, and a missing matplotlib is a warning (the training is done), never an error."""
    try:
        written, skipped = plot_run(output_dir)
    except ImportError as e:
        _logger.warning(f'{e} The run\'s pictures are not drawn (--no-plots skips them).')
        return
    for line in skipped:
        _logger.info(line)
    if written:
        _logger.info(f'Pictures: {", ".join(path.name for path in written)} in {output_dir}.')


def build_context(args: argparse.Namespace, proc: ProcessInfo) -> tuple[TrainContext, Any, Any, dict[str, Any]]:
    """Data, model, loss, task, optimizer and schedulers; returns the context, both loaders and the data config."""
    amp_dtype, use_scaler = resolve_amp(args, proc.device)
    random_seed(args.seed, proc.rank)

    # Data first: the class count and subsets come from the training set.
    dataset_train, dataset_eval, num_classes = load_datasets(args, proc.is_primary)
    dataset_train, dataset_holdout = carve_holdout(args, dataset_train, num_classes, proc)
    model, data_config = build_model(args, num_classes, proc.device, proc.distributed, proc.is_primary)
    mixup_fn = build_mixup(args, num_classes)
    loader_train, loader_eval, worker_seeding = build_loaders(args, dataset_train, dataset_eval, data_config, proc)
    if len(loader_train) == 0:
        share = (f', {-(-len(dataset_train) // proc.world_size)} per process of {proc.world_size}'
                 if proc.distributed else '')
        raise ValueError(f'The training set ({len(dataset_train)} images{share}) is smaller than one batch '
                         f'(-b {args.batch_size}; the last partial batch is dropped): no training step would run. '
                         'Lower -b or train on more images.')
    updates_per_epoch = max(1, (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps)
    lr = resolve_lr(args, proc.world_size)
    sched_kwargs = timm.scheduler.scheduler_kwargs(argparse.Namespace(**{**vars(args), 'lr': lr}),
                                                   decreasing_metric=args.eval_metric in DECREASING_EVAL_METRICS)

    # The loss needs the scheduled epoch count, the task wraps model and loss, and the optimizer takes the
    # task's trainable module (feature distillation adds a projection to train).
    num_epochs = scheduled_epochs(sched_kwargs, updates_per_epoch)
    criterion = build_train_criterion(args, num_epochs, mixup_fn is not None)
    evidence = TrainingEvidence(criterion, proc.device)  # hooked before any compile, for the whole run
    task = build_task(args, model, criterion, proc)
    opt_cfg = argparse.Namespace(**{**vars(args), 'lr': lr, 'opt_args': args.opt_kwargs or None})
    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=opt_cfg))
    # timm's factory (wrapped by cfl_timm): the LR schedule plus the cyclical schedules the flags switch on; the
    # attached loss follows its position (eta, and the temperature on the task loss's logits only).
    lr_scheduler, _ = timm.scheduler.create_scheduler_v2(optimizer, **sched_kwargs,
                                                         updates_per_epoch=updates_per_epoch)
    lr_scheduler.attach_loss(criterion)

    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device=torch.device('cpu') if args.model_ema_force_cpu else None)
    if args.torchcompile:
        compile_task(task, args.torchcompile, args.torchcompile_mode)
    if proc.distributed:
        ddp_kwargs = {'broadcast_buffers': False} if args.no_ddp_bb else {}
        task.prepare_distributed(device_ids=ddp_device_ids(proc.device), **ddp_kwargs)
    loss_scaler = CountingScaler(device=proc.device.type) if use_scaler else None
    autocast = functools.partial(torch.autocast, device_type=proc.device.type, dtype=amp_dtype) if amp_dtype \
        else contextlib.nullcontext
    ctx = TrainContext(
        args=args, proc=proc, model=model, task=task, optimizer=optimizer, lr_scheduler=lr_scheduler,
        criterion=criterion, mixup_fn=mixup_fn, loss_scaler=loss_scaler, autocast=autocast,
        num_classes=num_classes, num_epochs=num_epochs, updates_per_epoch=updates_per_epoch, evidence=evidence,
        worker_seeding=worker_seeding)
    if dataset_holdout is not None:
        ctx.holdout_size = len(dataset_holdout)
        ctx.holdout_record = HoldoutRecord(  # indices into the training split as read with evaluation transforms
            split=args.train_split, dataset=args.dataset, seed=args.seed, indices=dataset_holdout.indices,
            fingerprint=dataset_fingerprint(dataset_holdout.dataset)) if proc.is_primary else None
        ctx.loader_holdout = create_eval_loader(  # this rank's unpadded shard; predict() gathers the whole split
            dataset_holdout, data_config, batch_size=args.validation_batch_size or args.batch_size,
            num_workers=args.workers, device=proc.device, use_prefetcher=not args.no_prefetcher,
            pin_memory=args.pin_mem)
    return ctx, loader_train, loader_eval, data_config


def scheduled_epochs(sched_kwargs: dict[str, Any], updates_per_epoch: int) -> int:
    """The epoch count timm's scheduler factory schedules (cooldown and cycles included), from a throw-away
    optimizer: the loss must know it before the task, and so the optimizer, exist."""
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=sched_kwargs.get('lr') or 0.1,
                            weight_decay=1.0)  # a decayed group, as a cyclical weight-decay schedule requires
    return timm.scheduler.create_scheduler_v2(probe, **sched_kwargs, updates_per_epoch=updates_per_epoch)[1]


def build_task(args: argparse.Namespace, model: nn.Module, criterion: nn.Module, proc: ProcessInfo) -> nn.Module:
    """timm's classification task, or a distillation task (``--kd-model-name``) whose task loss is ``criterion``."""
    if args.kd_model_name is None:
        return CriterionStateClassificationTask(model, criterion, device=proc.device, verbose=proc.is_primary)
    try:
        return create_distillation_task(student=model, criterion=criterion, device=proc.device,
                                        dtype=model_dtype(args), verbose=proc.is_primary, **distillation_kwargs(args))
    except (OSError, RuntimeError) as e:  # no network for hub weights, an unreadable or mismatched weights file
        raise ValueError(f"Could not create the teacher '{args.kd_model_name}' (--kd-model-name) with its weights "
                         f'({args.kd_pretrained_path or "pretrained hub weights"}): {e}') from e


def compile_task(task: nn.Module, backend: str, mode: Optional[str]) -> None:
    """torch.compile the task's model (timm's ``task.compile``: student and teacher) and its training loss.

    The loss is compiled in place (``nn.Module.compile``), so its state_dict and the checkpoint keys stay as
    they are. A loss that follows the cyclical position compiles too: the cyclical focal loss's eta and the
    scheduler's temperature reach the graph as 0-dim tensors updated in place, so one graph serves every epoch.
    """
    # The losses' hyperparameters are constants: specialize Python floats (torch 2.14's symbolic floats fail a
    # dynamo guard on the focal losses' eps / K at large K).
    torch._dynamo.config.specialize_float = True
    task.compile(backend=backend, mode=mode)
    criterion = task.criterion
    if isinstance(criterion, nn.Module):
        criterion.compile(backend=backend, mode=mode)


def open_run(ctx: TrainContext, effective_args: dict[str, Any], data_config: dict[str, Any]) -> RunFiles:
    """The output folder and run files; resumes (``--resume PATH`` or ``auto``) and positions the LR scheduler.

    A run already in the folder without ``--resume``, or an explicit checkpoint of another run
    (:func:`cfl_timm.training.claim_run`) or that does not fit, is refused before anything is written; then the
    primary process locks the folder (:class:`cfl_timm.training.RunLock`, released by :meth:`RunFiles.close` or
    process exit) and writes the run files.
    """
    args = ctx.args
    exp_name = args.experiment or '-'.join([
        datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(data_config['input_size'][-1])])
    output_dir = Path(args.output or './output/train') / exp_name
    # Refusals come first, so a refused command leaves no folder and no lock file behind: the run files, and an
    # explicit checkpoint (its run, its model, loss and optimizer state; restoring it writes nothing).
    # Only the primary process judges the folder: another rank reading it could see the files the primary has
    # just written and refuse its own run (a usage error on one rank that ended two-rank runs at random).
    if ctx.proc.is_primary:
        refuse_unresumed_run(output_dir, run_dir_in_use(output_dir), args.resume)
    checkpoint, start_epoch = None, None
    if args.resume and args.resume != 'auto':
        checkpoint = load_training_checkpoint(args.resume)
        if ctx.proc.is_primary:
            claim_run(output_dir, run_dir_in_use(output_dir), args.resume, checkpoint)
        start_epoch = restore_checkpoint(ctx, args.resume, checkpoint)
    lock = RunLock.acquire(output_dir) if ctx.proc.is_primary else None
    try:
        return _open_locked_run(ctx, effective_args, exp_name, output_dir, lock, checkpoint, start_epoch)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def restore_checkpoint(ctx: TrainContext, path: str, checkpoint: dict[str, Any]) -> int:
    """Restore a loaded checkpoint into the run (model, EMA, loss, optimizer, scaler); returns the next epoch."""
    start_epoch = restore_training_state(checkpoint, path, ctx.task, ctx.optimizer, ctx.loss_scaler,
                                         not ctx.args.no_resume_opt)
    if ctx.proc.is_primary:
        _logger.info(f"Resumed from '{path}' (epoch {checkpoint['epoch']}).")
    return start_epoch


def _open_locked_run(ctx: TrainContext, effective_args: dict[str, Any], exp_name: str, output_dir: Path,
                     lock: Optional[RunLock], checkpoint: Optional[dict[str, Any]],
                     start_epoch: Optional[int]) -> RunFiles:
    """:func:`open_run` once the folder is locked (``checkpoint`` and ``start_epoch``: an explicit ``--resume``
    already restored). The folder's state is read again: another process may have written it before the lock."""
    args = ctx.args
    in_use = run_dir_in_use(output_dir)
    resume_path = resolve_resume(args.resume, output_dir, in_use, ctx.proc.is_primary)
    if resume_path and checkpoint is None:  # --resume auto found a checkpoint in the folder
        checkpoint = load_training_checkpoint(resume_path)
    claim = claim_run(output_dir, in_use, resume_path, checkpoint) if ctx.proc.is_primary else None
    if start_epoch is None:
        start_epoch = restore_checkpoint(ctx, resume_path, checkpoint) if resume_path else 0
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    if start_epoch > 0:
        if args.sched_on_updates:
            ctx.lr_scheduler.step_update(start_epoch * ctx.updates_per_epoch)
        else:
            ctx.lr_scheduler.step(start_epoch)

    run = RunFiles(output_dir=output_dir, start_epoch=start_epoch, lock=lock)
    if ctx.proc.is_primary:
        claim.write(output_dir)
        save_args_yaml(output_dir / 'args.yaml', effective_args)
        if ctx.holdout_record is not None:  # validate.py --calibration-split holdout reads it back
            write_holdout_record(output_dir, ctx.holdout_record)
        run.saver = AtomicCheckpointSaver(
            model=ctx.model, optimizer=ctx.optimizer, args=argparse.Namespace(**effective_args),
            amp_scaler=ctx.loss_scaler, checkpoint_dir=str(output_dir), recovery_dir=str(output_dir),
            decreasing=checkpoint_metric_decreasing(args), max_history=args.checkpoint_hist, task=ctx.task,
            run_id=claim.run_id)
        if resume_path and Path(resume_path).resolve().parent == output_dir.resolve():
            run.saver.load_state_dict_from_checkpoint(resume_path)
        run.summary = SummaryCSV(output_dir / 'summary.csv', columns=summary_columns(ctx), start_epoch=start_epoch)
        run.reliability = ReliabilityLog(output_dir / 'reliability.jsonl', start_epoch=start_epoch)
        # Bin-statistics lines of epochs after the checkpoint (or torn by a kill) are rewritten by this run.
        trim_jsonl(output_dir / ADAFOCAL_BINS_FILE, lambda record: record.get('epoch', -1) < start_epoch)
        run.writers = create_metric_writers(run_name=exp_name, output_dir=output_dir, config=effective_args,
                                            **metric_writers_kwargs(args))
        source = f' (new run from {claim.resumed_from["checkpoint"]})' if claim.resumed_from else ''
        _logger.info(f'Output in {output_dir}, run {claim.run_id}{source}; scheduled epochs {ctx.num_epochs}, '
                     f'{ctx.updates_per_epoch} updates per epoch.')
    return run


def start_epoch(ctx: TrainContext, loader_train, epoch: int) -> dict[str, Optional[float]]:
    """Reseed, reshuffle and set the epoch's Mixup; returns the cyclical values in force (the summary columns)."""
    # Every random stream restarts from (seed, epoch, rank): an interrupted run resumes bit for bit.
    random_seed(ctx.args.seed + epoch * 1000, ctx.proc.rank)
    if ctx.worker_seeding is not None:
        ctx.worker_seeding.set_epoch(epoch)
    if hasattr(loader_train.sampler, 'set_epoch'):
        loader_train.sampler.set_epoch(epoch)
    if ctx.mixup_fn is not None and ctx.args.mixup_off_epoch and epoch >= ctx.args.mixup_off_epoch:
        ctx.mixup_fn.mixup_enabled = False
    return ctx.lr_scheduler.epoch_values(epoch)


def record_epoch(ctx: TrainContext, run: RunFiles, epoch: int, train_metrics: dict[str, float],
                 eval_metrics: dict[str, float], lr: float, used: dict[str, Optional[float]],
                 evaluation: EvalResult) -> None:
    """Primary process: the checkpoints, the summary row and the reliability line as one atomic epoch record
    (:mod:`cfl_timm.training.epoch_record`), then the row to W&B / TensorBoard and the epoch's log line."""
    extra = {k: v for k, v in {**train_metrics, **eval_metrics}.items() if k in run.summary.columns
             and k not in ('loss', 'top1', 'top5', 'nll', 'ece')}
    row = {
        'epoch': epoch, 'train_loss': train_metrics['loss'], 'eval_loss': eval_metrics['loss'],
        'eval_top1': eval_metrics['top1'], 'eval_top5': eval_metrics['top5'], 'lr': lr,
        'eval_nll': eval_metrics['nll'], 'eval_ece': eval_metrics['ece'], **used, **extra,
        **{f'eval_{key}': eval_metrics[key] for key in ('adaptive_ece', 'classwise_ece', 'brier')}}
    updates = [run.summary.epoch_update(row),
               run.reliability.epoch_update(epoch, evaluation.reliability, evaluation.metrics)]
    run.saver.save_checkpoint(epoch, metric=eval_metrics[ctx.args.checkpoint_metric or ctx.args.eval_metric],
                              updates=updates)
    run.writers.log(row, step=epoch)
    _logger.info(f'Epoch {epoch}: train_loss {train_metrics["loss"]:.4f} eval_top1 {eval_metrics["top1"]:.2f} '
                 f'eval_nll {eval_metrics["nll"]:.4f} eval_ece {eval_metrics["ece"]:.4f} {used}'
                 + ''.join(f' {k} {v:.4f}' if isinstance(v, float) else f' {k} {v}' for k, v in extra.items()))


def train_one_epoch(ctx: TrainContext, loader, epoch: int, run: Optional[RunFiles] = None,
                    on_update: Optional[Callable[[int], None]] = None) -> dict[str, float]:
    """One pass over the training loader: the sample-weighted mean loss over all ranks and this rank's images/s.

    With ``run`` (the primary process's run files), ``--recovery-interval`` writes recovery checkpoints and
    ``--save-images`` saves input batches into the run folder. ``on_update(k)``, when given, runs after the
    k-th optimizer update of the epoch (k = 1, 2, ...).
    """
    args, task, optimizer, device = ctx.args, ctx.task, ctx.optimizer, ctx.device
    task.train()
    accum_steps = args.grad_accum_steps
    num_batches = len(loader)
    last_accum_steps = num_batches % accum_steps or accum_steps
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    sample_count = torch.zeros((), dtype=torch.float64, device=device)
    num_updates = epoch * ctx.updates_per_epoch
    skipped_before = ctx.loss_scaler.skipped_steps if ctx.loss_scaler is not None else 0
    ctx.evidence.reset()
    start = time.perf_counter()
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        update_idx = batch_idx // accum_steps
        need_update = (batch_idx + 1) % accum_steps == 0 or batch_idx + 1 == num_batches
        accum = accum_steps if update_idx < num_batches // accum_steps else last_accum_steps
        if args.no_prefetcher:
            input, target = input.to(device=device, dtype=model_dtype(args)), target.to(device)
        if ctx.mixup_fn is not None:
            input, target = ctx.mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)

        sync_ctx = task.no_sync() if not need_update else contextlib.nullcontext()
        with sync_ctx:
            with ctx.autocast():
                loss = task(input, target)['loss']
            scaled = loss / accum
            clip = ctx.lr_scheduler.clip_grad or args.clip_grad
            if ctx.loss_scaler is not None:
                ctx.loss_scaler(scaled, optimizer, clip_grad=clip, clip_mode=args.clip_mode,
                                parameters=task.get_clip_parameters(), need_update=need_update)
            else:
                scaled.backward()
                if need_update:
                    if clip:
                        dispatch_clip_grad(task.get_clip_parameters(), clip, mode=args.clip_mode)
                    optimizer.step()
        loss_sum += loss.detach().double() * input.size(0)
        sample_count += input.size(0)
        if need_update:
            optimizer.zero_grad()
            num_updates += 1
            task.update_ema(step=num_updates)
            ctx.lr_scheduler.step_update(num_updates=num_updates, metric=None)
            if on_update is not None:
                on_update(num_updates - epoch * ctx.updates_per_epoch)
                task.train()
            if args.synchronize_step and device.type != 'cpu':
                torch.accelerator.synchronize(device)
            if run is not None and run.saver is not None and args.recovery_interval and \
                    (update_idx + 1) % args.recovery_interval == 0:
                run.saver.save_recovery(epoch, batch_idx=update_idx)
        if ctx.proc.is_primary and (batch_idx % args.log_interval == 0 or batch_idx + 1 == num_batches):
            elapsed = time.perf_counter() - start
            _logger.info(f'Train: {epoch} [{batch_idx + 1}/{num_batches}] loss {loss.item():.4f} '
                         f'lr {optimizer.param_groups[0]["lr"]:.3e} {(batch_idx + 1) / max(elapsed, 1e-9):.2f} it/s')
            if args.save_images and run is not None:
                save_batch_image(input, run.output_dir / f'train-batch-{epoch}-{batch_idx}.jpg')
    images_per_second = sample_count.item() / max(time.perf_counter() - start, 1e-9)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loss_sum)
        dist.all_reduce(sample_count)
    metrics = {'loss': (loss_sum / sample_count.clamp_min(1)).item(), 'images_per_second': images_per_second,
               **ctx.evidence.compute()}
    if ctx.loss_scaler is not None:
        metrics['skipped_steps'] = ctx.loss_scaler.skipped_steps - skipped_before
        if metrics['skipped_steps'] and ctx.proc.is_primary:
            _logger.warning(f'Train: {epoch}: the grad scaler skipped {metrics["skipped_steps"]} optimizer step(s) '
                            'with non-finite gradients (float16 overflow) and lowered its scale.')
    return metrics


def save_batch_image(input: torch.Tensor, path: Path) -> None:
    """``--save-images``: the (normalized) input batch as one JPEG grid, written atomically."""
    import torchvision.utils

    def write(f):
        torchvision.utils.save_image(input.detach().float().cpu(), f, format='jpeg', padding=0, normalize=True)
    atomic_write_bytes(path, write)


class _CastInput(nn.Module):
    """Feeds the model its ``--model-dtype`` (the evaluation loader yields float32 images)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input.to(self.dtype))


def validate(model: nn.Module, loader, device: torch.device, autocast, num_classes: int,
             dtype: Optional[torch.dtype] = None) -> EvalResult:
    """Loss, top-1/top-5 (percent, timm's convention), every calibration metric (15 bins) and the reliability bins
    of the whole split, each image counted once and identical on every rank (``cfl_timm.training.evaluate``)."""
    if dtype is not None:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        model = _CastInput(model, dtype)
    return evaluate(model, loader, num_classes=num_classes, device=device, autocast=autocast)


def build_dataset(args: argparse.Namespace, split: str, is_training: bool):
    """The named split through the factory validate.py shares (:func:`cfl_timm.data.build_dataset`)."""
    kwargs = dataset_kwargs(args, is_training, input_img_mode=image_mode(args))
    return create_split_dataset(split=split, is_training=is_training, **kwargs)


def build_train_criterion(args: argparse.Namespace, num_epochs: int, mixup_active: bool) -> nn.Module:
    """A cfl-timm loss (``--loss NAME`` / ``--focal_loss``) through :func:`cfl_timm.create_loss`, built for
    training (non-finite logits reach the grad scaler instead of raising), otherwise timm's own loss selection."""
    name = loss_name(args)
    if name in LOSS_TYPES:
        return create_loss(**loss_kwargs(args, name, num_epochs=num_epochs, soft_targets=mixup_active))
    smoothing = 0.1 if args.smoothing is None else args.smoothing
    if args.jsd_loss:
        return create_classification_loss('jsd', jsd_splits=args.aug_splits, smoothing=smoothing)
    if args.bce_loss or args.loss == 'bce':
        return create_classification_loss('bce', smoothing=smoothing, soft_targets=mixup_active,
                                          bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum,
                                          pos_weight=args.bce_pos_weight)
    return create_classification_loss(args.loss or 'ce', smoothing=smoothing, soft_targets=mixup_active)


def resolve_amp(args: argparse.Namespace, device: torch.device) -> tuple[Optional[torch.dtype], bool]:
    """(autocast dtype or None, use a grad scaler). CPU autocast supports bfloat16 only."""
    if not args.amp:
        return None, False
    if device.type == 'cpu':
        if args.amp_dtype != 'bfloat16':
            _logger.info('--amp on CPU: using bfloat16 autocast (CPU autocast has no float16 grad scaler).')
        return torch.bfloat16, False
    dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    return dtype, dtype == torch.float16 and device.type == 'cuda'


def load_datasets(args: argparse.Namespace, is_primary: bool) -> tuple[Any, Any, int]:
    """Training set (restricted to the selected subset) and validation set, plus the number of classes."""
    root = args.data_dir or args.data
    if is_image_folder_name(args.dataset) and root and Path(root).is_dir():
        for split in (args.train_split, args.val_split):  # before timm's reader walks them (it follows symlinks)
            check_split_tree(root, split, args.class_map)
    dataset_train = build_dataset(args, args.train_split, is_training=True)
    dataset_eval = build_dataset(args, args.val_split, is_training=False)
    if not args.class_map:  # a class map fixes the labels; otherwise each split numbers its own class folders
        check_same_classes({args.train_split: dataset_train, args.val_split: dataset_eval})
    if len(dataset_train) == 0 or len(dataset_eval) == 0:
        raise ValueError(f'Empty dataset split: {len(dataset_train)} train / {len(dataset_eval)} validation images.')
    full_targets = dataset_targets(dataset_train)
    num_classes = args.num_classes or int(full_targets.max()) + 1
    if num_classes < int(full_targets.max()) + 1:
        raise ValueError(f'--num-classes {args.num_classes} is smaller than the training set, whose labels go up to '
                         f'{int(full_targets.max())} ({int(full_targets.max()) + 1} classes).')
    if num_classes < 2:  # a classifier needs two classes; the calibration metrics refuse one after the first epoch
        raise ValueError(f'The training set has {num_classes} class ({len(dataset_train)} images); a classifier '
                         'needs at least 2 (a class folder per class under the train split, or --num-classes >= 2).')
    subset = select_train_subset(
        full_targets, train_size=args.train_size, train_size_mode=args.train_size_mode,
        sampler_path=args.read_sampler, imbalance_ratio=args.imbalance_ratio, imbalance_max=args.imbalance_max)
    if subset is not None:
        dataset_train = SubsetDataset(dataset_train, subset)
    if is_primary:
        log_class_counts(class_counts(dataset_targets(dataset_train), num_classes),
                         'Training set' if subset is None else 'Training subset')
    return dataset_train, dataset_eval, num_classes


def build_model(args: argparse.Namespace, num_classes: int, device: torch.device, distributed: bool,
                is_primary: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The timm model (split / sync BN, dtype, head init, gradient checkpointing, TorchScript as asked) on
    ``device``, and its resolved data config."""
    if args.fuser:
        set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()
    factory_kwargs = {}
    if args.pretrained_path:  # a local file takes priority over the hub; the classifier adapts to num_classes
        factory_kwargs['pretrained_cfg_overlay'] = {'file': args.pretrained_path, 'num_classes': -1}
    in_chans = input_channels(args)
    with fetching_weights('--pretrained', args.model, file_flag='--pretrained-path', pretrained=args.pretrained):
        model = create_model(
            args.model, pretrained=args.pretrained, in_chans=in_chans, num_classes=num_classes,
            drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
            global_pool=args.gp, bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, scriptable=args.torchscript,
            **factory_kwargs, **args.model_kwargs)
    if args.initial_checkpoint:
        load_initial_checkpoint(model, args.initial_checkpoint)
    init_head(model, args.head_init_scale, args.head_init_bias)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    data_config = resolve_data_config(vars(args), model=model, verbose=is_primary)
    if args.train_transform == 'cifar' and args.crop_pct is None:
        data_config['crop_pct'] = 1.0  # evaluate the whole image: no resize-up and center crop at 32 px
    if args.split_bn:
        model = convert_splitbn_model(model, max(args.aug_splits, 2))
    model.to(device=device, dtype=model_dtype(args))
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if distributed and args.sync_bn:
        model = convert_sync_batchnorm(model)
    if args.torchscript:
        model = torch.jit.script(model)
    return model, data_config


def init_head(model: nn.Module, scale: Optional[float], bias: Optional[float]) -> None:
    """``--head-init-scale`` multiplies the classifier's initial weight and bias; ``--head-init-bias`` sets the bias."""
    if scale is None and bias is None:
        return
    head = model.get_classifier()
    with torch.no_grad():
        if scale is not None:
            head.weight.mul_(scale)
            head.bias.mul_(scale)
        if bias is not None:
            head.bias.fill_(bias)


def model_dtype(args: argparse.Namespace) -> Optional[torch.dtype]:
    """``--model-dtype`` as a torch dtype (None: float32, timm's default)."""
    return getattr(torch, args.model_dtype) if args.model_dtype else None


def resolve_lr(args: argparse.Namespace, world_size: int) -> float:
    """``--lr``, or ``--lr-base`` scaled by the global batch size (linear, or sqrt for adaptive optimizers)."""
    if args.lr is not None:
        return args.lr
    global_batch = args.batch_size * world_size * args.grad_accum_steps
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    ratio = global_batch / args.lr_base_size
    lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
    _logger.info(f'Learning rate ({lr}) from base learning rate ({args.lr_base}) and global batch {global_batch}.')
    return lr


def build_mixup(args: argparse.Namespace, num_classes: int) -> Optional[Mixup]:
    """timm's batch Mixup/CutMix. With a timm loss Mixup smooths the targets (``--smoothing``, default 0.1, as
    timm does); a cfl-timm loss applies its smoothing itself, to soft targets too, so Mixup smooths nothing and a
    batch left unmixed gives exactly the hard-target loss."""
    if not mixup_active(args):
        return None
    if loss_name(args) in LOSS_TYPES:
        smoothing = 0.0
    else:
        smoothing = 0.1 if args.smoothing is None else args.smoothing
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=smoothing, num_classes=num_classes)


def build_loaders(args: argparse.Namespace, dataset_train, dataset_eval, data_config: dict[str, Any],
                  proc: ProcessInfo) -> tuple[Any, Any, Optional[EpochSeededTransform]]:
    """timm's training and validation loaders (the distributed samplers shard the subset, not the full set), and
    the per-epoch seeding of the training loader's workers when they persist (see :func:`persistent_train_workers`).
    """
    device = proc.device
    patch_timm_posterize()  # RandAugment 'inc1' ops on Pillow >= 11 (see cfl_timm.data.compat)
    if args.aug_splits > 1:
        dataset_train = AugMixDataset(dataset_train, num_splits=args.aug_splits)
    use_prefetcher = not args.no_prefetcher
    img_dtype = model_dtype(args) or torch.float32
    persistent = persistent_train_workers(args, dataset_train)
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
        color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob,
        grayscale_prob=args.grayscale_prob or 0., gaussian_blur_prob=args.gaussian_blur_prob or 0.,
        auto_augment=args.aa, num_aug_repeats=int(args.aug_repeats), num_aug_splits=args.aug_splits,
        interpolation=args.train_interpolation or data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], num_workers=args.workers, distributed=proc.distributed, pin_memory=args.pin_mem,
        img_dtype=img_dtype, device=device, use_prefetcher=use_prefetcher, worker_seeding=args.worker_seeding,
        use_multi_epochs_loader=args.use_multi_epochs_loader, persistent_workers=persistent)
    if args.train_transform == 'cifar':  # replaces the transform create_loader set on the dataset
        loader_train.dataset.transform = create_cifar_train_transform(
            data_config['input_size'][-2:], mean=data_config['mean'], std=data_config['std'],
            use_prefetcher=use_prefetcher, **cifar_transform_kwargs(args))
    worker_seeding = seed_workers_by_epoch(loader_train, args.seed, proc.rank) if persistent else None
    # Evaluation shards are unpadded: each image is counted once under torchrun (cfl_timm.training.evaluate). Its
    # transforms draw nothing at random, so its workers persist as timm's do.
    loader_eval = create_eval_loader(
        dataset_eval, data_config, batch_size=args.validation_batch_size or args.batch_size, num_workers=args.workers,
        device=device, use_prefetcher=use_prefetcher, pin_memory=args.pin_mem, persistent_workers=args.workers > 0)
    return loader_train, loader_eval, worker_seeding


def persistent_train_workers(args: argparse.Namespace, dataset_train) -> bool:
    """Whether the training loader's workers persist across epochs, as timm's do (no restart cost per epoch).

    They do when :class:`~cfl_timm.data.worker_seeding.EpochSeededTransform` can restart their random streams each
    epoch, which keeps a resumed run exact: a map-style dataset whose transform draws all of a sample's randomness
    (not AugMix splits), timm's standard loader (not ``--use-multi-epochs-loader``, whose sampler runs ahead across
    epochs) and ``--worker-seeding all``. Otherwise the workers restart each epoch, seeded from the epoch's seed.
    """
    return (args.workers > 0 and args.aug_splits <= 1 and not args.use_multi_epochs_loader
            and args.worker_seeding == 'all' and not isinstance(dataset_train, torch.utils.data.IterableDataset))


def carve_holdout(args: argparse.Namespace, dataset_train, num_classes: int,
                  proc: ProcessInfo) -> tuple[Any, Optional[SubsetDataset]]:
    """``--holdout N``: (the training set without the held-out images, the held-out split) or (set, None).

    The split is stratified and fixed by ``--seed`` (see :func:`cfl_timm.data.holdout.holdout_split`), taken from
    the training set as selected (subsets included), and read through a second instance of the training split
    built with ``is_training=False``, so its images get the evaluation transforms. The same on every rank.
    """
    if args.holdout is None:
        return dataset_train, None
    if isinstance(dataset_train, SubsetDataset):
        base, indices = dataset_train.dataset, dataset_train.indices
    else:
        base, indices = dataset_train, np.arange(len(dataset_train), dtype=np.int64)
    train_positions, holdout_positions = holdout_split(dataset_targets(dataset_train), args.holdout, args.seed)
    dataset_holdout = SubsetDataset(build_dataset(args, args.train_split, is_training=False),
                                    indices[holdout_positions])
    if proc.is_primary:
        log_class_counts(class_counts(dataset_holdout.targets, num_classes), 'Held-out calibration split')
    return SubsetDataset(base, indices[train_positions]), dataset_holdout


def holdout_update_every(ctx: TrainContext) -> Optional[int]:
    """The loss's held-out update period: -1 after every epoch, k >= 1 every k optimizer updates (AdaFocal's
    ``adafocal_update_every``), None for a loss without ``update_from_validation``."""
    if not hasattr(ctx.criterion, 'update_from_validation'):
        return None
    return getattr(ctx.criterion, 'update_every', -1)


def holdout_update_hook(ctx: TrainContext, run: RunFiles, epoch: int) -> Optional[Callable[[int], None]]:
    """For ``adafocal_update_every = k >= 1``: re-validate and update after every k-th update of the epoch (the
    model returns to train mode afterwards; the official code left it in eval mode, a documented deviation)."""
    every = holdout_update_every(ctx)
    if every is None or every < 1 or ctx.loader_holdout is None:
        return None

    def hook(update_in_epoch: int) -> None:
        if update_in_epoch % every == 0:
            model = ctx.task.get_eval_model(ema=ctx.task.has_ema() and not ctx.args.model_ema_force_cpu)
            evaluate_holdout(ctx, model, run, epoch, update=True, batch=update_in_epoch)
    return hook


@torch.no_grad()
def evaluate_holdout(ctx: TrainContext, model: nn.Module, run: RunFiles, epoch: int, update: bool = True,
                     batch: Optional[int] = None) -> EvalResult:
    """Predict the held-out split (each rank its shard, gathered exactly) and return its evaluation; with ``update``
    feed a loss with ``update_from_validation`` (AdaFocal): every rank updates from the same gathered
    confidences, so all ranks hold identical state (checked), and the primary appends the update's bin
    statistics to ``adafocal_bins.jsonl`` (with the update number in the epoch as ``batch`` for per-batch
    updates)."""
    logits, targets = predict(model, ctx.loader_holdout, device=ctx.device, autocast=ctx.autocast,
                              channels_last=ctx.args.channels_last)
    holdout = metrics_of_logits(logits, targets, ctx.num_classes)
    if update and holdout_update_every(ctx) is not None:
        probabilities = logits.double().softmax(1)
        confidences, predictions = probabilities.max(1)
        stats = ctx.criterion.update_from_validation(confidences, predictions == targets)
        if ctx.proc.distributed:
            check_identical_on_ranks(ctx, f'{loss_name(ctx.args)} state', ctx.criterion.state_dict())
        if ctx.proc.is_primary:
            position = {'epoch': epoch} if batch is None else {'epoch': epoch, 'batch': batch}
            append_jsonl(run.output_dir / ADAFOCAL_BINS_FILE, {**position, **stats})
    return holdout


def holdout_metrics(ctx: TrainContext, holdout: EvalResult, evaluation: EvalResult) -> dict[str, float]:
    """The epoch's held-out columns: the held-out split's top-1, NLL, ECE, adaptive and classwise ECE, the
    temperature T fitted on its logits (Guo et al. 2017, NLL over log T with LBFGS; the test split is never used),
    and the evaluation split's metrics after temperature scaling, from its logits divided by T (the same T on every
    rank). T is fitted on the held-out split and measured on the evaluation split only: no ``*_ts`` value is scored
    on the logits it was fitted on."""
    temperature, scaled = evaluate_temperature_scaled(holdout.logits, holdout.target, evaluation.logits,
                                                      evaluation.target, ctx.num_classes, split='holdout')
    held_out = (*HOLDOUT_METRICS, *HOLDOUT_EXTRA_COLUMNS)
    return {**{key: holdout.metrics[key.removeprefix('holdout_')] for key in held_out},
            'holdout_temperature': temperature,
            **{f'eval_{key}_ts': scaled.metrics[key] for key in TEMPERATURE_SCALED_METRICS}}


def check_identical_on_ranks(ctx: TrainContext, what: str, state: dict[str, torch.Tensor]) -> None:
    """Compare a state dict bit for bit across ranks; raise if any rank differs (state that must never diverge)."""
    states = gather_objects({k: v.detach().cpu() for k, v in state.items()})
    differing = [rank for rank, other in enumerate(states)
                 if other.keys() != states[0].keys() or not all(torch.equal(other[k], states[0][k]) for k in other)]
    if differing:
        raise RuntimeError(f'{what} differs between rank 0 and ranks {differing}.')
    if ctx.proc.is_primary:
        _logger.info(f'{what} identical on {len(states)} ranks.')


def checkpoint_metric_decreasing(args: argparse.Namespace) -> bool:
    """Whether lower is better for the metric that selects the best checkpoint."""
    if args.checkpoint_metric is not None:
        return HOLDOUT_METRICS[args.checkpoint_metric]
    return args.eval_metric in DECREASING_EVAL_METRICS


def summary_columns(ctx: TrainContext) -> tuple[str, ...]:
    """summary.csv's columns: the default set, the epoch's training top-1, wall time and further evaluation metrics,
    the loss's evidence terms (when it has them), the held-out metrics with the temperature-scaled evaluation metrics
    (``--holdout``) and the scaler's skipped steps when on."""
    holdout = tuple(HOLDOUT_METRICS) + HOLDOUT_EXTRA_COLUMNS + HOLDOUT_TS_COLUMNS if ctx.loader_holdout is not None \
        else ()
    evidence = ctx.evidence.columns()[1:] if ctx.evidence is not None else ()
    return (SUMMARY_COLUMNS + EPOCH_COLUMNS + evidence + holdout
            + (('skipped_steps',) if ctx.loss_scaler is not None else ()))


def refuse_unresumed_run(output_dir: Path, in_use: list[str], resume: str) -> None:
    """A folder that already holds a run (``in_use``: its run files) is only reused with ``--resume``."""
    if in_use and not resume:
        raise ValueError(f'--output/--experiment: {output_dir} already holds a run ({", ".join(in_use[:4])}); '
                         'pass --resume auto to continue it, or choose another --experiment.')


def resolve_resume(resume: str, output_dir: Path, in_use: list[str], is_primary: bool) -> str:
    """The checkpoint to resume from ('' for a new run), after refusing to overwrite an existing run.

    A folder that already holds a run is only reused with ``--resume``. With ``--resume`` the primary process first
    finishes what a kill interrupted in the folder (:func:`cfl_timm.training.recover_run_dir`); with ``auto``
    every process then takes the newest complete checkpoint there.
    """
    if is_primary:  # see open_run: the primary alone judges the folder
        refuse_unresumed_run(output_dir, in_use, resume)
        for action in recover_run_dir(output_dir) if resume else ():
            _logger.info(f'{output_dir}: {action}.')
    if resume != 'auto':
        return resume
    barrier()
    found = find_resume_checkpoint(output_dir)
    return str(found) if found else ''


def _log_shard_indices(loader, output_dir: Path, epoch: int, is_primary: bool) -> None:
    """Write the training-set indices each rank draws in ``epoch`` (rank order) to shards.json."""
    sampler = loader.sampler
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)
    positions = [int(i) for i in sampler]
    dataset = loader.dataset
    base = dataset.dataset if isinstance(dataset, AugMixDataset) else dataset
    indices = base.indices[positions].tolist() if isinstance(base, SubsetDataset) else positions
    shards = gather_objects(indices)
    if is_primary:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / 'shards.json', json.dumps({'epoch': epoch, 'shards': shards}))


# After Ctrl-C or SIGTERM the folder keeps its last complete epoch record (cfl_timm.training.epoch_record).
RESUME_HINT = ('; the run folder keeps its last completed epoch: repeat the command with --resume auto (and its '
               '--experiment) to continue.')


def cli(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """The command line: a bad input, found before training starts, ends as a usage error (exit status 2); a full
    disk as one line naming the file (exit status 1); Ctrl-C as one line (exit status 130) and SIGTERM as one line
    (exit status 143, after the same cleanup), no traceback."""
    parser = get_args_parser()
    try:
        with exit_on_sigterm(parser.prog, RESUME_HINT):
            args = parse_args(argv)
            check_args(args, parser)
            return main(args)
    except UsageError as e:
        parser.error(str(e))
    except DiskFullError as e:
        sys.exit(f'{parser.prog}: error: {e}')
    except KeyboardInterrupt:
        print(f'{parser.prog}: interrupted (Ctrl-C){RESUME_HINT}', file=sys.stderr)
        sys.exit(130)


if __name__ == '__main__':
    cli()
