#!/usr/bin/env python3
"""Evaluate a checkpoint: accuracy and calibration, test-time augmentation, temperature scaling and post-hoc
calibrators, OOD detection, selective classification, bootstrap intervals.

Metrics (``cfl_timm.metrics``): top-1/top-5, NLL, Brier, ECE, adaptive ECE, classwise ECE, MCE and smooth ECE;
optionally the same metrics of the averaged softmax over ``--tta N`` deterministic views (identity, horizontal
flip, then flips x small shifts), a temperature fitted on a named held-out split (C. Guo et al.,
https://arxiv.org/abs/1706.04599) with every metric reported again after scaling, a reliability diagram PNG
(before / after side by side), a grid of evaluated images with their predictions, and the logits behind the metrics
as an ``.npz`` (``--save-logits``, :mod:`cfl_timm.metrics.logits_file`). The evaluated logits (TTA-averaged with
``--tta``) then go through the model-free evaluator :func:`cfl_timm.evaluate.evaluate_logits`, the one
``python -m cfl_timm.evaluate`` runs on saved logits, so the JSON holds the same ``raw`` / ``selective`` /
``posthoc`` / ``ood`` / ``bootstrap`` sections: ``--posthoc`` methods fitted on ``--calibration-split``, the OOD
scores of ``--ood-data-dir`` (Hendrycks & Gimpel, https://arxiv.org/abs/1610.02136), ``--bootstrap`` intervals,
``--plot-dir`` pictures. ``--calibration-split holdout`` fits on the held-out split a train.py run carved with
``--holdout N``, read back by its recorded indices (:mod:`cfl_timm.data.holdout`).

The command line is timm's ``validate.py`` (positional data dir or ``--data-dir``, ``--results-file`` with
``--results-format csv|json``, ``--checkpoint``, ``--use-ema``, ...) plus the calibration flags; its groups and
checks live in :mod:`cfl_timm.training.validate_args`. Under ``torchrun --nproc-per-node W validate.py ...`` each
process evaluates an unpadded shard, so every image is counted once and the metrics equal the one-process metrics
(``cfl_timm.training.evaluate``). Written for this project on timm's library API. ``get_args_parser()`` /
``main(args)`` run it in-process.

Reading order: ``main``, :class:`ValidateContext`, ``_validate`` (read the splits, build the model, evaluate, fit,
write), then the builders and writers it calls.

Example::

    python validate.py DIR --split val --checkpoint output/train/RUN/model_best.pth.tar --tta 4 \\
        --calibration-split holdout --posthoc ts,dirichlet --output-json val_metrics.json --plot-dir plots
"""
import argparse
import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from timm.data import ImageDataset, create_transform, resolve_data_config
from timm.layers import apply_test_time_pool, set_fast_norm
from timm.models import create_model, load_checkpoint
from timm.utils import random_seed, reparameterize_model, set_jit_fuser, setup_default_logging
from timm.utils.distributed import init_distributed_device_so

from cfl_timm.data import (
    average_softmax,
    check_disjoint_images,
    check_folder_tree,
    check_same_classes,
    check_split_tree,
    dataset_class_names,
    dataset_kwargs,
    dataset_targets,
    evenly_spaced,
    is_image_folder_name,
    strict_folder_dataset,
    svhn_dataset,
    tta_views,
)
from cfl_timm.data import build_dataset as create_split_dataset
from cfl_timm.data.holdout import HoldoutRecord, holdout_subset
from cfl_timm.evaluate import PLOT_FILES, evaluate_logits
from cfl_timm.files import atomic_write_bytes, atomic_write_text
from cfl_timm.metrics import coinciding_ece_note, msp_auroc, save_logits_npz
from cfl_timm.training import (
    EvalResult,
    create_eval_loader,
    evaluate_temperature_scaled,
    metrics_of_logits,
    predict,
)
from cfl_timm.training.backends import set_timm_cuda_defaults
from cfl_timm.training.input_checks import check_global_pool, check_model_kwargs, default_image_mode
from cfl_timm.training.pretrained import fetching_weights
from cfl_timm.training.termination import exit_on_sigterm
from cfl_timm.training.validate_args import (
    add_validate_args,
    check_args,
    holdout_record,
    output_paths,
)

_logger = logging.getLogger('validate')
_TRAIN_SPLITS = ('train', 'training')  # timm's names of a folder dataset's training split


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='validate.py', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='cfl-timm evaluation: accuracy, calibration, TTA, temperature scaling and post-hoc '
                    'calibrators, OOD detection, selective classification')
    return add_validate_args(parser)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate; returns the metrics written to the JSON (plus the output paths under 'files')."""
    setup_default_logging()
    check_args(args)
    set_timm_cuda_defaults()
    distributed = int(os.environ.get('WORLD_SIZE', '1')) > 1
    if distributed:
        device = torch.device(init_distributed_device_so(device=args.device)['device'])
    else:
        device = torch.device(args.device)
    try:
        return _validate(args, device)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class Splits:
    """The datasets one evaluation reads, all read and checked before the model is built.

    Attributes:
        evaluated: ``--split``.
        calibration: The split temperature scaling and ``--posthoc`` are fitted on, or None.
        ood: The ``--ood-data-dir`` images, or None.
        holdout: With ``--calibration-split holdout``: the run's record the calibration split was read back by.
    """
    evaluated: Any
    calibration: Any = None
    ood: Any = None
    holdout: Optional[HoldoutRecord] = None


@dataclass
class ValidateContext:
    """The model and its settings, built once by :func:`build_context` and read by every step.

    Attributes:
        args: The parsed (and checked) arguments; read, never written.
        device: Device of the model.
        is_primary: Whether this process writes the outputs (rank 0).
        run: The training arguments stored in the checkpoint (empty without one).
        model_name: timm architecture name.
        param_count: Number of parameters.
        num_classes: Classes of the model's head.
        metric_classes: Classes of the metrics (``--valid-labels`` keeps a subset).
        data_config: timm's resolved data config of the evaluation.
        evaluator: Logits of any dataset with this model, data config and TTA views.
    """
    args: argparse.Namespace
    device: torch.device
    is_primary: bool
    run: dict[str, Any]
    model_name: str
    param_count: int
    num_classes: int
    metric_classes: int
    data_config: dict[str, Any]
    evaluator: 'Evaluator'


def _validate(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Read every split, build the model, evaluate, fit the held-out methods, then write the outputs."""
    random_seed(args.seed)
    if args.fuser:
        set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()
    run = read_checkpoint_run(args.checkpoint)
    data_args = input_args(args, run)
    in_chans = data_args['in_chans'] or (data_args['input_size'][0] if data_args['input_size'] else 3)
    splits = load_splits(args, in_chans)
    ctx = build_context(args, device, run, splits, data_args, in_chans)

    dataset = evenly_spaced(splits.evaluated, args.num_samples)
    evaluation = evaluate_split(ctx.evaluator, args, dataset, ctx.metric_classes)
    plain = evaluation['plain']
    result: dict[str, Any] = dict(plain.metrics)
    result.pop('loss')
    metric_keys = list(result)
    result.update({'num_samples': plain.num_samples, 'num_bins': args.num_bins, 'split': args.split,
                   'model': ctx.model_name, 'checkpoint': os.path.basename(args.checkpoint) or None,
                   'param_count': round(ctx.param_count / 1e6, 2), 'reliability': plain.reliability})
    if args.metrics_avg:
        result.update(precision_recall_f1(evaluation['logits'], evaluation['target'], args.metrics_avg))
    if 'tta' in evaluation:
        tta = evaluation['tta']
        result['tta'] = {'num_views': args.tta, 'views': [v.describe() for v in ctx.evaluator.views],
                         **{k: tta.metrics[k] for k in metric_keys}, 'reliability': tta.reliability}
    panels = [(f'{args.split}: before temperature scaling', plain.reliability, plain.metrics)]

    fit = None
    if splits.calibration is not None:
        fit = ctx.evaluator.logits(evenly_spaced(splits.calibration, args.num_samples))
        temperature, scaled = fit_temperature_scaling(ctx, fit, evaluation)
        result.update(temperature_result(ctx, splits, temperature, scaled, metric_keys))
        panels.append((f'{args.split}: after temperature scaling (T = {temperature:.3f})', scaled.reliability,
                       scaled.metrics))
    ood_view_logits = ctx.evaluator.logits(splits.ood)[0] if splits.ood is not None else None
    result.update(evaluate_logits(
        reported_logits(evaluation), evaluation['target'],
        fit=(average_softmax(fit[0]), fit[1]) if fit is not None else None,
        ood={ood_set_name(args): average_softmax(ood_view_logits)} if ood_view_logits is not None else None,
        posthoc=args.posthoc, bootstrap=args.bootstrap, seed=args.seed, num_bins=args.num_bins,
        plot_dir=args.plot_dir if ctx.is_primary else None))
    if ood_view_logits is not None:
        result['ood_auroc'] = result['ood'][ood_set_name(args)]['msp']['auroc']
        result['ood_num_samples'] = ood_view_logits.shape[1]
        if 'temperature' in result:
            temperature = result['temperature']
            result['after_temperature_scaling']['ood_auroc'] = msp_auroc(
                evaluation['logits'] / temperature, ood_view_logits[0] / temperature)

    files: dict[str, Any] = {}
    row = results_row({**result, 'metric_keys': metric_keys}, {
        'param_count': result['param_count'], 'img_size': ctx.data_config['input_size'][-1],
        'crop_pct': ctx.data_config['crop_pct'], 'interpolation': ctx.data_config['interpolation']})
    if ctx.is_primary:
        files = write_outputs(ctx, result, row, panels, dataset, evaluation, splits, fit, ood_view_logits)
        log_summary(args, result, metric_keys)
    return {**result, 'files': files, 'results_row': row}


# ----------------------------------------------------------------------------------------------------------------
# Data and model

def read_checkpoint_run(path: str) -> dict[str, Any]:
    """The training arguments and architecture stored by train.py's CheckpointSaver (empty when absent)."""
    if not path:
        return {}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # a truncated, foreign or non-checkpoint file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__  # EOFError: ''
        raise ValueError(f'--checkpoint {path} is not a readable checkpoint: {reason}') from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f'--checkpoint {path} is not a checkpoint dictionary.')
    run = dict(vars(checkpoint['args'])) if isinstance(checkpoint.get('args'), argparse.Namespace) else {}
    if 'arch' in checkpoint:
        run['arch'] = checkpoint['arch']
    return run


def input_args(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    """The input settings to evaluate at: the training run's unless a flag overrides them."""
    data_args = dict(vars(args))
    for key in ('img_size', 'input_size', 'in_chans', 'crop_pct', 'mean', 'std', 'interpolation'):
        if data_args.get(key) in (None, '') and run.get(key) not in (None, ''):
            data_args[key] = run[key]
    return data_args


def build_dataset(args: argparse.Namespace, split: str, input_img_mode: str = 'RGB'):
    """The split as a dataset through the factory train.py uses (:func:`cfl_timm.data.build_dataset`); a folder's
    tree is checked first (before timm's reader walks it, following symlinks)."""
    root = args.data_dir or args.data
    if is_image_folder_name(args.dataset) and root and os.path.isdir(root):
        check_split_tree(root, split, args.class_map)
    return create_split_dataset(split=split, **dataset_kwargs(args, input_img_mode=input_img_mode))


def load_splits(args: argparse.Namespace, in_chans: int) -> Splits:
    """Every split of the evaluation, read and checked (class folders, the held-out record) before any model."""
    img_mode = default_image_mode(in_chans)
    evaluated = build_dataset(args, args.split, img_mode)
    record = holdout_record(args)
    calibration = None
    if record is not None:  # the run's --holdout images: its training split, read again, at the recorded indices
        calibration = holdout_subset(record, build_dataset(args, record.split, img_mode))
    elif args.calibration_split is not None:
        calibration = build_dataset(args, args.calibration_split, img_mode)
    checked = {args.split: evaluated}
    if calibration is not None and record is None:
        checked[args.calibration_split] = calibration
    check_split_classes(args, checked)
    ood = None
    if args.ood_data_dir:
        ood = build_ood_dataset(args.ood_data_dir, in_chans, args.skip_bad_images, args.ood_dataset,
                                verify_md5=not args.ood_no_verify, verify_workers=args.workers,
                                image_check=args.image_check)
        if isinstance(evaluated, torch.utils.data.IterableDataset):
            _logger.warning(f'split {args.split!r} is a streamed dataset: not checked for images shared with the '
                            'OOD set.')
        else:
            check_disjoint_images(evaluated, ood, f'split {args.split!r}', f'--ood-data-dir {args.ood_data_dir}')
    return Splits(evaluated=evaluated, calibration=calibration, ood=ood, holdout=record)


def build_context(args: argparse.Namespace, device: torch.device, run: dict[str, Any], splits: Splits,
                  data_args: dict[str, Any], in_chans: int) -> ValidateContext:
    """The model with its checkpoint, data config and evaluator."""
    is_primary = not dist.is_initialized() or dist.get_rank() == 0
    valid_labels = read_valid_labels(args.valid_labels)
    targets = dataset_targets(splits.evaluated)
    num_classes = args.num_classes or run.get('num_classes') or int(targets.max()) + 1
    largest = int(targets.max())
    if valid_labels is not None and max(valid_labels) >= num_classes:
        raise ValueError(f'--valid-labels {args.valid_labels}: class index {max(valid_labels)} is outside the model\'s '
                         f'{num_classes} classes [0, {num_classes}).')
    if valid_labels is None and largest >= num_classes:
        raise ValueError(f'split {args.split!r} has class index {largest}, but the model has {num_classes} classes '
                         f'(--num-classes or the checkpoint): give --num-classes >= {largest + 1}.')
    model, model_name, param_count = build_model(args, run, num_classes, in_chans, device)
    data_config = resolve_data_config(data_args, model=model, use_test_size=not args.use_train_size,
                                      verbose=is_primary)
    height, width = data_config['input_size'][1:]
    if args.tta > 2 and args.tta_shift >= min(height, width):  # views 3 on shift the image by --tta-shift pixels
        raise ValueError(f'--tta-shift {args.tta_shift} px is not smaller than the {height}x{width} input: the shifted '
                         'views would hold no image; give a smaller shift.')
    if args.test_pool:
        model, test_time_pool = apply_test_time_pool(model, data_config)
        if test_time_pool:
            data_config['crop_pct'] = 1.0
    model = prepare_model(model, args, device)
    metric_classes = len(valid_labels) if valid_labels is not None else num_classes
    if is_primary:
        _logger.info(f'Evaluating {model_name} ({param_count / 1e6:.2f}M parameters, {num_classes} classes) on '
                     f'split {args.split!r}, input {data_config["input_size"]}, {args.tta} view(s).')
    return ValidateContext(args=args, device=device, is_primary=is_primary, run=run, model_name=model_name,
                           param_count=param_count, num_classes=num_classes, metric_classes=metric_classes,
                           data_config=data_config,
                           evaluator=Evaluator(model, args, data_config, device, valid_labels))


def check_split_classes(args: argparse.Namespace, splits: dict[str, Any]) -> None:
    """The evaluated (and calibration) split against each other and against the training folder of the same
    root when there is one: a class missing from a split would shift every label after it."""
    if args.class_map or not is_image_folder_name(args.dataset) or not os.path.isdir(args.data_dir or args.data or ''):
        return
    root = Path(args.data_dir or args.data)
    train = next((root / name for name in _TRAIN_SPLITS if (root / name).is_dir()), None)
    if train is not None and str(train.resolve()) not in {str(Path(d.reader.root).resolve()) for d in splits.values()
                                                          if hasattr(getattr(d, 'reader', None), 'root')}:
        splits = {train.name: ImageDataset(str(train)), **splits}
    check_same_classes(splits)


def build_ood_dataset(folder: str, in_chans: int, skip_bad_images: bool = False, kind: str = 'folder',
                      verify_md5: bool = True, verify_workers: int = 0, image_check: str = 'decode'):
    """Every image under ``folder`` (labels unused), verified, failing loudly when corrupt; with ``kind='svhn'``
    SVHN's test split from ``folder/test_32x32.mat`` (see :func:`cfl_timm.data.svhn_dataset`)."""
    if kind == 'svhn':
        if in_chans != 3:
            raise ValueError(f'--ood-dataset svhn holds RGB images; the model takes {in_chans} channel(s).')
        return svhn_dataset(folder, 'test', verify_md5=verify_md5)
    check_folder_tree(folder)
    try:
        dataset = ImageDataset(folder, input_img_mode=default_image_mode(in_chans))
    except RuntimeError as error:  # timm: no images found
        raise ValueError(f'--ood-data-dir {folder}: {error}') from None
    return strict_folder_dataset(dataset, '--ood-data-dir', skip_bad_images=skip_bad_images,
                                 num_workers=verify_workers, image_check=image_check)


def ood_set_name(args: argparse.Namespace) -> str:
    """The name of the ``--ood-data-dir`` set in the JSON (``ood.<name>``) and the saved logits: its folder's."""
    return Path(args.ood_data_dir).resolve().name or 'ood'


def build_model(args: argparse.Namespace, run: dict[str, Any], num_classes: int, in_chans: int,
                device: torch.device) -> tuple[torch.nn.Module, str, int]:
    """The model with the checkpoint loaded (and reparameterized / pooled / compiled as asked)."""
    model_name = args.model or run.get('arch') or run.get('model')
    if not model_name:
        raise ValueError('the checkpoint names no architecture: give --model NAME.')
    model_kwargs = {**(run.get('model_kwargs') or {}), **args.model_kwargs}
    if args.model_kwargs:
        check_model_kwargs(model_name, args.model_kwargs)
    check_global_pool(model_name, args.gp, model_kwargs)
    with fetching_weights('--pretrained', model_name, file_flag='--checkpoint', pretrained=args.pretrained):
        model = create_model(model_name, pretrained=args.pretrained, num_classes=num_classes, in_chans=in_chans,
                             global_pool=args.gp, scriptable=args.torchscript, **model_kwargs)
    if args.checkpoint:
        try:
            load_checkpoint(model, args.checkpoint, use_ema=args.use_ema, strict=True)
        except (RuntimeError, KeyError) as error:
            raise ValueError(f'--checkpoint {args.checkpoint} does not fit {model_name} with {num_classes} '
                             f'classes: {str(error).splitlines()[0]}') from None
    if args.reparam:
        model = reparameterize_model(model)
    param_count = sum(p.numel() for p in model.parameters())
    return model, model_name, param_count


def prepare_model(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    dtype = getattr(torch, args.model_dtype) if args.model_dtype else None
    model = model.to(device=device, dtype=dtype).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.torchscript:
        model = torch.jit.script(model)
    elif args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Evaluation

class Evaluator:
    """Logits of named datasets with one model, data config and set of views (shared by every split evaluated)."""

    def __init__(self, model, args: argparse.Namespace, data_config: dict[str, Any], device: torch.device,
                 valid_labels: Optional[list[int]]) -> None:
        self.model, self.args, self.data_config, self.device = model, args, data_config, device
        self.valid_labels = valid_labels
        self.views = tta_views(args.tta, shift=args.tta_shift) if args.tta > 1 else None
        dtype = getattr(torch, args.model_dtype) if args.model_dtype else None
        amp_dtype = getattr(torch, args.amp_dtype) if args.amp_dtype else (
            torch.float16 if device.type == 'cuda' else torch.bfloat16)
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if args.amp else None
        self.input_dtype = dtype

    def logits(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, N, K) logits (V = 1 without TTA) and (N,) targets of the whole dataset, on every rank."""
        loader = create_eval_loader(
            dataset, self.data_config, batch_size=self.args.batch_size, num_workers=self.args.workers,
            device=self.device, use_prefetcher=not self.args.no_prefetcher, pin_memory=self.args.pin_mem,
            crop_border_pixels=self.args.crop_border_pixels)
        views = self.views or [lambda images: images]
        if self.input_dtype is not None:
            views = [lambda images, view=view: view(images).to(self.input_dtype) for view in views]
        logits, target = predict(self.model, loader, device=self.device, autocast=self.autocast,
                                 channels_last=self.args.channels_last, views=views,
                                 log_interval=self.args.log_freq)
        if self.valid_labels is not None:
            logits = logits[..., self.valid_labels]
        return logits, target


def read_valid_labels(path: str) -> Optional[list[int]]:
    if not path:
        return None
    try:
        labels = [int(line) for line in Path(path).read_text().split()]
    except ValueError:
        raise ValueError(f'--valid-labels {path}: expected one integer class index per line.') from None
    if not labels or min(labels) < 0 or len(set(labels)) != len(labels):
        raise ValueError(f'--valid-labels {path}: expected distinct class indices >= 0.')
    return labels


def precision_recall_f1(logits: torch.Tensor, target: torch.Tensor, average: str) -> dict[str, float]:
    from sklearn.metrics import f1_score, precision_score, recall_score
    prediction, target = logits.argmax(dim=1).numpy(), target.numpy()
    return {f'{average}_{name}': 100.0 * float(fn(target, prediction, average=average, zero_division=0))
            for name, fn in (('precision', precision_score), ('recall', recall_score), ('f1_score', f1_score))}


def evaluate_split(evaluator: Evaluator, args: argparse.Namespace, dataset, num_classes: int) -> dict[str, Any]:
    """Plain metrics (view 0) and, with --tta, those of the averaged softmax, with the logits kept for later use."""
    view_logits, target = evaluator.logits(dataset)
    plain = metrics_of_logits(view_logits[0], target, num_classes, num_bins=args.num_bins)
    out = {'plain': plain, 'target': target, 'logits': view_logits[0]}
    if args.tta > 1:
        out['tta'] = metrics_of_logits(average_softmax(view_logits), target, num_classes, num_bins=args.num_bins)
    return out


def reported_logits(evaluation: dict[str, Any]) -> torch.Tensor:
    """The logits behind the reported metrics, the ones ``--save-logits`` writes and the model-free evaluator
    reads: the TTA-averaged ones (float64) with ``--tta``, else the plain ones."""
    return evaluation['tta'].logits if 'tta' in evaluation else evaluation['logits']


def fit_temperature_scaling(ctx: ValidateContext, fit: tuple[torch.Tensor, torch.Tensor],
                            evaluation: dict[str, Any]) -> tuple[float, EvalResult]:
    """T fitted on the calibration split's plain logits (view 0), and the evaluated split's metrics after it."""
    args = ctx.args
    if ctx.is_primary and args.calibration_split == ctx.run.get('train_split', 'train'):
        _logger.warning(f'The temperature is fitted on the training split {args.calibration_split!r}, which '
                        'is not held out: the network is over-confident there, so T will be too small.')
    return evaluate_temperature_scaled(
        fit[0][0], fit[1], evaluation['logits'], evaluation['target'], ctx.metric_classes,
        split=args.calibration_split, method=args.temperature_method,
        allow_test_split=args.allow_test_calibration, num_bins=args.num_bins)


def temperature_result(ctx: ValidateContext, splits: Splits, temperature: float, scaled: EvalResult,
                       metric_keys: list[str]) -> dict[str, Any]:
    """The JSON keys of temperature scaling (and, for the run's held-out split, where it came from)."""
    out = {'temperature': temperature, 'temperature_method': ctx.args.temperature_method,
           'temperature_split': ctx.args.calibration_split,
           'after_temperature_scaling': {**{k: scaled.metrics[k] for k in metric_keys},
                                         'reliability': scaled.reliability}}
    if splits.holdout is not None:
        out['holdout'] = {'split': splits.holdout.split, 'num_samples': len(splits.holdout.indices),
                          'seed': splits.holdout.seed}
    return out


def results_row(result: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """timm's results columns (model, top1, top1_err, top5, top5_err, param_count, img_size, crop_pct,
    interpolation) followed by the calibration metrics, their TTA and temperature-scaled versions, and OOD AUROC."""
    row = {'model': result['model'], 'top1': round(result['top1'], 4), 'top1_err': round(100 - result['top1'], 4),
           'top5': round(result['top5'], 4), 'top5_err': round(100 - result['top5'], 4), **extra}
    row.update({key: result[key] for key in result['metric_keys'] if key not in row})
    row.update({key: value for key, value in result.items() if key.endswith(('_precision', '_recall', '_f1_score'))})
    if 'tta' in result:
        row['tta_views'] = result['tta']['num_views']
        row.update({f'tta_{key}': result['tta'][key] for key in result['metric_keys']})
    if 'temperature' in result:
        row['temperature'] = result['temperature']
        row.update({f'ts_{key}': result['after_temperature_scaling'][key] for key in result['metric_keys']})
    for key in ('ood_auroc', 'checkpoint', 'split', 'num_samples'):
        if key in result:
            row[key] = result[key]
    return row


def json_safe(value: Any) -> Any:
    """Strict JSON: NaN (the mean confidence / accuracy of an empty reliability bin) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_results(path: str, row: dict[str, Any], results_format: str) -> None:
    """timm's results file: one CSV row under a header, or the row as a JSON object."""
    if results_format == 'json':
        text = json.dumps(json_safe(row), indent=4, allow_nan=False) + '\n'
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row), lineterminator='\n')
        writer.writeheader()
        writer.writerow(row)
        text = buffer.getvalue()
    atomic_write_text(path, text)


def draw_prediction_grid(args: argparse.Namespace, dataset, evaluation: dict[str, Any], data_config: dict[str, Any],
                         num_classes: int, path: str) -> str:
    """The first images of an evenly spaced selection, at the evaluated resolution without normalisation."""
    from cfl_timm.plotting import plot_prediction_grid
    count = min(args.prediction_grid_size, len(dataset))
    positions = np.linspace(0, len(dataset) - 1, count).round().astype(np.int64)
    transform = create_transform(data_config['input_size'], is_training=False,
                                 interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
                                 crop_mode=data_config.get('crop_mode'), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    previous = dataset.transform
    dataset.transform = transform
    try:
        images = torch.stack([dataset[int(i)][0] for i in positions])
    finally:
        dataset.transform = previous
    probabilities = torch.softmax(evaluation['logits'][positions].double(), dim=1)
    confidence, prediction = probabilities.max(dim=1)
    return str(plot_prediction_grid(images.permute(0, 2, 3, 1).clamp(0, 1).numpy(),
                                    evaluation['target'][positions].tolist(), prediction.tolist(),
                                    confidence.tolist(), dataset_class_names(dataset, num_classes), path))


# ----------------------------------------------------------------------------------------------------------------
# Outputs

def write_outputs(ctx: ValidateContext, result: dict[str, Any], row: dict[str, Any], panels: list, dataset,
                  evaluation: dict[str, Any], splits: Splits, fit: Optional[tuple[torch.Tensor, torch.Tensor]],
                  ood_view_logits: Optional[torch.Tensor]) -> dict[str, Any]:
    """Every file the flags ask for (paths from :func:`cfl_timm.training.validate_args.output_paths`)."""
    args = ctx.args
    paths = output_paths(args)
    json_path = paths['--output-json']
    atomic_write_text(json_path, json.dumps(json_safe(result), indent=2, allow_nan=False) + '\n')
    files: dict[str, Any] = {'json': str(json_path)}
    if args.results_file:
        write_results(args.results_file, row, args.results_format)
        files['results'] = args.results_file
    if not args.no_plot:
        from cfl_timm.plotting import plot_reliability_diagrams
        files['plot'] = str(plot_reliability_diagrams(panels, paths['--plot']))
    if args.plot_dir:  # drawn by the model-free evaluator
        files['plot_dir'] = {name: str(Path(args.plot_dir) / file) for name, file in PLOT_FILES.items()}
    if args.prediction_grid:
        files['prediction_grid'] = draw_prediction_grid(args, dataset, evaluation, ctx.data_config,
                                                        ctx.metric_classes, args.prediction_grid)
    names = dataset_class_names(dataset, ctx.metric_classes)
    checkpoint = result['checkpoint'] or ''
    if args.save_logits:
        # The OOD set's logits are averaged over the same views (average_softmax returns a single view unchanged).
        ood = average_softmax(ood_view_logits) if ood_view_logits is not None else None
        data = save_logits_npz(reported_logits(evaluation), evaluation['target'], names, split=args.split,
                               checkpoint=checkpoint, ood_logits=ood,
                               ood_name=ood_set_name(args) if ood is not None else None)
        atomic_write_bytes(paths['--save-logits'], lambda f: f.write(data))
        files['logits'] = str(paths['--save-logits'])
    if args.save_fit_logits:
        data = save_logits_npz(average_softmax(fit[0]), fit[1], names, split=args.calibration_split,
                               checkpoint=checkpoint)
        atomic_write_bytes(paths['--save-fit-logits'], lambda f: f.write(data))
        files['fit_logits'] = str(paths['--save-fit-logits'])
    return files


def log_summary(args: argparse.Namespace, result: dict[str, Any], metric_keys: list[str]) -> None:
    lines = [(f'{args.split} ({result["num_samples"]} images)', result)]
    if 'tta' in result:
        lines.append((f'TTA ({args.tta} views)', result['tta']))
    if 'temperature' in result:
        lines.append((f'T = {result["temperature"]:.4f}', result['after_temperature_scaling']))
    for name, section in result.get('posthoc', {}).items():
        lines.append((f'after post-hoc {name}', section['metrics']))
    for title, metrics in lines:
        _logger.info(f'{title}: ' + ' '.join(f'{key} {metrics[key]:.4f}' for key in metric_keys))
        note = coinciding_ece_note(metrics)
        if note:
            _logger.info(f'  {note}')
    if 'selective' in result:
        _logger.info(f'Selective classification: AURC {result["selective"]["aurc"]:.4f} '
                     f'E-AURC {result["selective"]["eaurc"]:.4f}')
    if 'ood_auroc' in result:
        _logger.info(f'OOD AUROC (max softmax probability): {result["ood_auroc"]:.4f}')


def _one_line(error: BaseException) -> str:
    """The message of an error as one line (a DataLoader worker's error carries its traceback: keep its last line)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    for prefix in ('cfl_timm.data.strict.CorruptImageError: ', 'CorruptImageError: ', 'ValueError: '):
        last = last.removeprefix(prefix)
    return last if len(lines) > 1 else (lines[0] if lines else last)


def cli(argv: Optional[Sequence[str]] = None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        with exit_on_sigterm(parser.prog):
            result = main(args)
    except (ValueError, ImportError) as error:
        parser.error(_one_line(error))
    if result['files']:  # the primary process: timm's results row on stdout, after its '--result' delimiter
        print(f'--result\n{json.dumps(json_safe(result["results_row"]), indent=4)}')


if __name__ == '__main__':
    cli()
