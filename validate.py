#!/usr/bin/env python3
"""Evaluate a checkpoint from this project's train.py: accuracy and calibration, temperature scaling, OOD AUROC.

Metrics (``cfl_timm.metrics``): top-1/top-5, NLL, Brier, ECE, adaptive ECE, classwise ECE, MCE and smooth ECE;
optionally a temperature fitted on a named held-out split (C. Guo et al., https://arxiv.org/abs/1706.04599) with
every metric reported again after scaling, a reliability diagram PNG (before / after side by side), and the
out-of-distribution AUROC of the maximum softmax probability against a second image folder (Hendrycks & Gimpel,
https://arxiv.org/abs/1610.02136). Written for this project on timm's library API; the flags follow timm's
validate.py. ``get_args_parser()`` / ``main(args)`` run it in-process.

Example::

    python validate.py --data-dir DIR --split val --checkpoint output/train/RUN/model_best.pth.tar \\
        --calibration-split train --output-json val_metrics.json --plot val_reliability.png
"""
import argparse
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from timm.data import ImageDataset, create_dataset, create_loader, resolve_data_config
from timm.models import create_model, is_model, load_checkpoint
from timm.utils import setup_default_logging

from cfl_timm.data import DigitsDataset, SubsetDataset, dataset_targets, is_digits_dataset
from cfl_timm.metrics import (
    FIT_METHODS,
    CalibrationMeter,
    check_calibration_split,
    fit_temperature,
    msp_auroc,
    plot_reliability_diagrams,
    require_matplotlib,
)

_logger = logging.getLogger('validate')


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='cfl-timm checkpoint evaluation: accuracy, calibration, OOD AUROC',
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group('Dataset')
    group.add_argument('data', nargs='?', metavar='DIR', default=None, help='dataset root (same as --data-dir)')
    group.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root')
    group.add_argument('--dataset', default='', metavar='NAME',
                       help="dataset type: '' (image folder), torch/cifar10, sklearn/digits, ...")
    group.add_argument('--split', default='validation', metavar='NAME', help='split to evaluate')
    group.add_argument('--class-map', default='', metavar='FILENAME', help='class map file of the folder dataset')
    group.add_argument('--dataset-download', action='store_true', help='download a torchvision dataset')
    group.add_argument('--num-samples', type=int, default=None, metavar='N',
                       help='evaluate N evenly spaced images of each split only')
    group = parser.add_argument_group('Model')
    group.add_argument('--model', '-m', default=None, metavar='NAME',
                       help="timm model name (default: the 'arch' stored in the checkpoint)")
    group.add_argument('--checkpoint', default='', metavar='PATH', help='checkpoint written by train.py')
    group.add_argument('--use-ema', action='store_true', help="evaluate the checkpoint's EMA weights")
    group.add_argument('--pretrained', action='store_true', help='use timm pretrained weights (no checkpoint)')
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='number of classes (default: the checkpoint run, else the dataset)')
    group.add_argument('--in-chans', type=int, default=None, metavar='N', help='image input channels')
    group.add_argument('--img-size', type=int, default=None, metavar='N', help='input image size')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar=('C', 'H', 'W'), help='input size')
    group.add_argument('--crop-pct', type=float, default=None, metavar='PCT', help='input center crop percent')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN', help='dataset mean')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD', help='dataset std')
    group.add_argument('--interpolation', default='', metavar='NAME', help='resize interpolation')
    group.add_argument('-b', '--batch-size', type=int, default=256, metavar='N', help='batch size')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N', help='data loader workers')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='device')
    group.add_argument('--amp', action='store_true', help='mixed precision (float16 on CUDA, bfloat16 on CPU)')
    group.add_argument('--channels-last', action='store_true', help='channels-last memory format')
    group = parser.add_argument_group('Calibration')
    group.add_argument('--num-bins', type=int, default=15, metavar='B', help='bins of every binned metric')
    group.add_argument('--calibration-split', default=None, metavar='NAME',
                       help='held-out split to fit a temperature on (none: no temperature scaling)')
    group.add_argument('--temperature-method', default='nll', choices=FIT_METHODS,
                       help="'nll': LBFGS on NLL over log T (Guo et al.); 'grid-ece': lowest ECE over T = 0.1..10")
    group.add_argument('--allow-test-calibration', action='store_true',
                       help='allow fitting the temperature on a test split (leaks test labels; off by default)')
    group.add_argument('--ood-data-dir', default=None, metavar='DIR',
                       help='folder of out-of-distribution images: report the max-softmax-probability AUROC '
                            'of the evaluated split (in-distribution) against it')
    group = parser.add_argument_group('Output')
    group.add_argument('--output-json', default=None, metavar='PATH',
                       help='metrics JSON (default: beside the checkpoint, calibration-<split>.json)')
    group.add_argument('--plot', default=None, metavar='PATH',
                       help='reliability diagram PNG (default: the JSON path with .png); needs matplotlib')
    group.add_argument('--no-plot', action='store_true', help='do not draw the reliability diagram')
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Errors for bad input, before any model or data is loaded."""
    if args.num_bins < 1:
        raise ValueError(f'--num-bins must be >= 1, got {args.num_bins}.')
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f'--num-samples must be >= 1, got {args.num_samples}.')
    if args.batch_size < 1:
        raise ValueError(f'--batch-size must be >= 1, got {args.batch_size}.')
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise ValueError(f'--checkpoint not found: {args.checkpoint}')
    if not args.checkpoint and not args.pretrained:
        raise ValueError('give --checkpoint PATH (a train.py checkpoint) or --pretrained.')
    if args.model is not None and not is_model(args.model):
        raise ValueError(f"unknown timm model '{args.model}' (see timm.list_models()).")
    if args.calibration_split is not None:
        check_calibration_split(args.calibration_split, args.allow_test_calibration)
    root = args.data_dir or args.data
    if not is_digits_dataset(args.dataset) and not args.dataset.startswith(('torch/', 'tfds/', 'hfds/', 'wds/')):
        if not root or not Path(root).is_dir():
            raise ValueError(f'dataset folder not found: {root!r} (give --data-dir DIR with DIR/<split>/<class>/).')
    if args.ood_data_dir is not None and not Path(args.ood_data_dir).is_dir():
        raise ValueError(f'--ood-data-dir not found: {args.ood_data_dir}')
    if not args.no_plot:
        require_matplotlib()


def read_checkpoint_run(path: str) -> dict[str, Any]:
    """The training arguments and architecture stored by train.py's CheckpointSaver (empty when absent)."""
    if not path:
        return {}
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    run = dict(vars(checkpoint['args'])) if isinstance(checkpoint.get('args'), argparse.Namespace) else {}
    if 'arch' in checkpoint:
        run['arch'] = checkpoint['arch']
    return run


def build_dataset(args: argparse.Namespace, split: str):
    if is_digits_dataset(args.dataset):
        return DigitsDataset(split)
    try:
        return create_dataset(args.dataset, root=args.data_dir or args.data, split=split, is_training=False,
                              class_map=args.class_map, download=args.dataset_download,
                              batch_size=args.batch_size)
    except (OSError, RuntimeError) as error:
        raise ValueError(f'could not load split {split!r} of {args.dataset or "the image folder"} from '
                         f'{args.data_dir or args.data!r}: {error}') from error


@torch.no_grad()
def collect_logits(model: torch.nn.Module, dataset, args: argparse.Namespace, data_config: dict[str, Any],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and targets of a whole dataset, on the CPU."""
    if args.num_samples is not None and args.num_samples < len(dataset):
        # Evenly spaced over the split, so a class-sorted folder keeps every class.
        dataset = SubsetDataset(dataset, np.linspace(0, len(dataset) - 1, args.num_samples).round().astype(np.int64))
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=False,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, crop_pct=data_config['crop_pct'], device=device,
        use_prefetcher=device.type == 'cuda')
    amp_dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if args.amp else contextlib.nullcontext
    logits, targets = [], []
    for images, target in loader:
        images, target = images.to(device), target.to(device)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            output = model(images)
        logits.append(output.float().cpu())
        targets.append(target.cpu())
    if not logits:
        raise ValueError('the evaluated dataset is empty.')
    return torch.cat(logits), torch.cat(targets)


def compute_metrics(logits: torch.Tensor, target: torch.Tensor, num_classes: int, num_bins: int,
                    chunk: int = 4096) -> tuple[dict[str, float], dict[str, list[float]]]:
    """All CalibrationMeter metrics and the reliability bins, fed in chunks as a loader would."""
    meter = CalibrationMeter(num_classes, num_bins=num_bins)
    for start in range(0, len(target), chunk):
        meter.update(logits[start:start + chunk], target[start:start + chunk])
    return meter.compute(), meter.reliability()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix='.json', dir=path.parent)
    os.chmod(temporary, 0o644)  # mkstemp creates 0600; the JSON is an ordinary shared output
    try:
        with os.fdopen(handle, 'w') as stream:
            json.dump(payload, stream, indent=2)
            stream.write('\n')
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate; returns the metrics written to the JSON (plus the output paths under 'files')."""
    setup_default_logging()
    check_args(args)
    device = torch.device(args.device)
    run = read_checkpoint_run(args.checkpoint)
    model_name = args.model or run.get('arch') or run.get('model')
    if not model_name:
        raise ValueError('the checkpoint names no architecture: give --model NAME.')
    # Evaluate at the training input settings unless a flag overrides them.
    data_args = dict(vars(args))
    for key in ('img_size', 'input_size', 'in_chans', 'crop_pct', 'mean', 'std', 'interpolation'):
        if data_args.get(key) in (None, '') and run.get(key) not in (None, ''):
            data_args[key] = run[key]

    dataset = build_dataset(args, args.split)
    num_classes = args.num_classes or run.get('num_classes') or int(dataset_targets(dataset).max()) + 1
    model = create_model(model_name, pretrained=args.pretrained, num_classes=num_classes,
                         in_chans=data_args['in_chans'] or 3, **(run.get('model_kwargs') or {}))
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema, strict=True)
    model.to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data_config = resolve_data_config(data_args, model=model)
    _logger.info(f'Evaluating {model_name} ({num_classes} classes) on split {args.split!r}, input '
                 f'{data_config["input_size"]}.')

    logits, target = collect_logits(model, dataset, args, data_config, device)
    metrics, reliability = compute_metrics(logits, target, num_classes, args.num_bins)
    result: dict[str, Any] = dict(metrics)
    result.update({'num_samples': len(target), 'num_bins': args.num_bins, 'split': args.split,
                   'model': model_name, 'checkpoint': os.path.basename(args.checkpoint) or None,
                   'reliability': reliability})
    panels = [(f'{args.split}: before temperature scaling', reliability, metrics)]

    if args.calibration_split is not None:
        if args.calibration_split == args.split:
            _logger.warning(f'The temperature is fitted on the evaluated split {args.split!r} itself: the '
                            '"after" metrics are optimistic.')
        elif args.calibration_split == run.get('train_split', 'train'):
            _logger.warning(f'The temperature is fitted on the training split {args.calibration_split!r}, which '
                            'is not held out: the network is over-confident there, so T will be too small.')
        fit_logits, fit_target = collect_logits(model, build_dataset(args, args.calibration_split), args,
                                                data_config, device)
        temperature = fit_temperature(fit_logits, fit_target, method=args.temperature_method,
                                      split=args.calibration_split, allow_test_split=args.allow_test_calibration,
                                      num_bins=args.num_bins)
        scaled_metrics, scaled_reliability = compute_metrics(logits / temperature, target, num_classes,
                                                             args.num_bins)
        result.update({'temperature': temperature, 'temperature_method': args.temperature_method,
                       'temperature_split': args.calibration_split,
                       'after_temperature_scaling': {**scaled_metrics, 'reliability': scaled_reliability}})
        panels.append((f'{args.split}: after temperature scaling (T = {temperature:.3f})', scaled_reliability,
                       scaled_metrics))

    if args.ood_data_dir is not None:
        ood_logits, _ = collect_logits(model, ImageDataset(args.ood_data_dir), args, data_config, device)
        result['ood_auroc'] = msp_auroc(logits, ood_logits)
        result['ood_num_samples'] = len(ood_logits)
        if 'temperature' in result:
            result['after_temperature_scaling']['ood_auroc'] = msp_auroc(logits / result['temperature'],
                                                                         ood_logits / result['temperature'])

    json_path = Path(args.output_json) if args.output_json else (
        Path(args.checkpoint).resolve().parent if args.checkpoint else Path('.')) / f'calibration-{args.split}.json'
    write_json_atomic(json_path, result)
    files = {'json': str(json_path)}
    if not args.no_plot:
        plot_path = Path(args.plot) if args.plot else json_path.with_suffix('.png')
        files['plot'] = str(plot_reliability_diagrams(panels, plot_path))
    summary = ' '.join(f'{key} {metrics[key]:.4f}' for key in metrics)
    _logger.info(f'{args.split}: {summary}')
    if 'temperature' in result:
        after = result['after_temperature_scaling']
        _logger.info(f'T = {result["temperature"]:.4f}: ' + ' '.join(
            f'{key} {after[key]:.4f}' for key in metrics))
    if 'ood_auroc' in result:
        _logger.info(f'OOD AUROC (max softmax probability): {result["ood_auroc"]:.4f}')
    _logger.info(f'Wrote {", ".join(files.values())}')
    return {**result, 'files': files}


def cli(argv: Optional[Sequence[str]] = None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        main(args)
    except (ValueError, ImportError) as error:
        parser.error(str(error))


if __name__ == '__main__':
    cli()
