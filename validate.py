#!/usr/bin/env python3
"""Evaluate a checkpoint: accuracy and calibration, test-time augmentation, temperature scaling, OOD AUROC.

Metrics (``cfl_timm.metrics``): top-1/top-5, NLL, Brier, ECE, adaptive ECE, classwise ECE, MCE and smooth ECE;
optionally the same metrics of the averaged softmax over ``--tta N`` deterministic views (identity, horizontal
flip, then flips x small shifts), a temperature fitted on a named held-out split (C. Guo et al.,
https://arxiv.org/abs/1706.04599) with every metric reported again after scaling, a reliability diagram PNG
(before / after side by side), a grid of evaluated images with their predictions, the logits behind the metrics
as an ``.npz`` (``--save-logits``, :mod:`cfl_timm.metrics.logits_file`), and the out-of-distribution
AUROC of the maximum softmax probability against a second image folder (Hendrycks & Gimpel,
https://arxiv.org/abs/1610.02136).

The command line is timm's ``validate.py`` (positional data dir or ``--data-dir``, ``--results-file`` with
``--results-format csv|json``, ``--checkpoint``, ``--use-ema``, ...) plus the calibration flags. Under
``torchrun --nproc-per-node W validate.py ...`` each process evaluates an unpadded shard, so every image is
counted once and the metrics equal the one-process metrics (``cfl_timm.training.evaluate``). Written for this
project on timm's library API. ``get_args_parser()`` / ``main(args)`` run it in-process.

Example::

    python validate.py DIR --split val --checkpoint output/train/RUN/model_best.pth.tar --tta 4 \\
        --calibration-split train --output-json val_metrics.json --results-file results.csv
"""
import argparse
import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from timm.data import ImageDataset, create_dataset, create_transform, resolve_data_config
from timm.layers import apply_test_time_pool, set_fast_norm
from timm.models import create_model, is_model, load_checkpoint
from timm.utils import ParseKwargs, random_seed, reparameterize_model, set_jit_fuser, setup_default_logging
from timm.utils.distributed import init_distributed_device_so

from cfl_timm.data import (
    MAX_TTA_VIEWS,
    DigitsDataset,
    SubsetDataset,
    average_softmax,
    check_disjoint_images,
    check_folder_tree,
    check_same_classes,
    check_split_tree,
    dataset_targets,
    digits_split,
    is_digits_dataset,
    is_image_folder_name,
    strict_folder_dataset,
    svhn_dataset,
    tta_views,
)
from cfl_timm.files import atomic_write_bytes, atomic_write_text
from cfl_timm.metrics import FIT_METHODS, check_calibration_split, coinciding_ece_note, msp_auroc, save_logits_npz
from cfl_timm.training import (
    create_eval_loader,
    evaluate_logits,
    evaluate_temperature_scaled,
    predict,
)
from cfl_timm.training.arg_types import INTERPOLATIONS, finite_float, positive_float, positive_int, seed
from cfl_timm.training.input_checks import check_mean_std, check_model_kwargs

_logger = logging.getLogger('validate')

RESULTS_FORMATS = ('csv', 'json')
MODEL_DTYPES = ('float32', 'float16', 'bfloat16')
# timm's split synonyms (timm.data.dataset_factory): a folder dataset looks for the first that exists.
_TRAIN_SPLITS = ('train', 'training')
_EVAL_SPLITS = ('val', 'valid', 'validation', 'eval', 'evaluation')


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='validate.py', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='cfl-timm evaluation: accuracy, calibration, TTA, temperature scaling, OOD AUROC')
    group = parser.add_argument_group('Dataset (timm)')
    group.add_argument('data', nargs='?', metavar='DIR', default=None, help='dataset root (same as --data-dir)')
    group.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root')
    group.add_argument('--dataset', default='', metavar='NAME',
                       help="dataset type: '' (image folder), torch/cifar10, sklearn/digits, ...")
    group.add_argument('--split', default='validation', metavar='NAME', help='split to evaluate')
    group.add_argument('--num-samples', type=int, default=None, metavar='N',
                       help='evaluate N evenly spaced images of each split only')
    group.add_argument('--dataset-download', action='store_true', help='download a torchvision dataset')
    group.add_argument('--class-map', default='', metavar='FILENAME', help='class map file of the folder dataset')
    group.add_argument('--skip-bad-images', action='store_true',
                       help='leave out (and count in the log) unreadable images instead of refusing the split')
    group.add_argument('--input-key', default=None, help='dataset key of the input images (hfds/wds)')
    group.add_argument('--input-img-mode', default=None, help="image mode ('RGB', 'L'; default from the channels)")
    group.add_argument('--target-key', default=None, help='dataset key of the labels (hfds/wds)')
    group.add_argument('--dataset-trust-remote-code', action='store_true',
                       help="let a Hugging Face dataset run its repository's code")
    group = parser.add_argument_group('Model (timm)')
    group.add_argument('--model', '-m', default=None, metavar='NAME',
                       help="timm model name (default: the 'arch' stored in the checkpoint)")
    group.add_argument('--pretrained', action='store_true', help='use timm pretrained weights (no checkpoint)')
    group.add_argument('--checkpoint', default='', metavar='PATH', help='checkpoint file (train.py or timm)')
    group.add_argument('--use-ema', action='store_true', help="evaluate the checkpoint's EMA weights")
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='number of classes (default: the checkpoint run, else the dataset)')
    group.add_argument('--gp', default=None, metavar='POOL', help='global pool type (model default if unset)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, help='extra model kwargs')
    group.add_argument('--reparam', action='store_true', help='reparameterize the model (timm)')
    group.add_argument('--test-pool', action='store_true', help='test-time pooling (timm apply_test_time_pool)')
    group.add_argument('--valid-labels', default='', metavar='FILENAME',
                       help='text file of the class indices to keep (one per line): partial label space')
    group = parser.add_argument_group('Input (timm)')
    group.add_argument('--img-size', type=positive_int, default=None, metavar='N', help='input image size')
    group.add_argument('--in-chans', type=int, default=None, metavar='N', help='image input channels')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar=('C', 'H', 'W'), help='input size')
    group.add_argument('--use-train-size', action='store_true', help="use the model's train input size")
    group.add_argument('--crop-pct', type=float, default=None, metavar='PCT', help='input center crop percent')
    group.add_argument('--crop-mode', default=None, metavar='MODE', help='crop mode (center, squash, border)')
    group.add_argument('--crop-border-pixels', type=int, default=None, metavar='N', help='crop pixels at the border')
    group.add_argument('--mean', type=finite_float, nargs='+', default=None, metavar='MEAN', help='dataset mean')
    group.add_argument('--std', type=positive_float, nargs='+', default=None, metavar='STD', help='dataset std')
    group.add_argument('--interpolation', default='', metavar='NAME', choices=INTERPOLATIONS,
                       help='resize interpolation')
    group = parser.add_argument_group('Runtime (timm)')
    group.add_argument('-b', '--batch-size', type=int, default=256, metavar='N', help='batch size')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N', help='data loader workers')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='device')
    group.add_argument('--num-gpu', type=int, default=1, metavar='N',
                       help='1 (several devices: torchrun --nproc-per-node N validate.py ...)')
    group.add_argument('--no-prefetcher', action='store_true', help="disable timm's prefetcher")
    group.add_argument('--pin-mem', action='store_true', help='pin host memory in the loader')
    group.add_argument('--channels-last', action='store_true', help='channels-last memory format')
    group.add_argument('--amp', action='store_true', help='mixed precision autocast')
    group.add_argument('--amp-dtype', default=None, choices=('float16', 'bfloat16'),
                       help='autocast dtype (default: float16 on CUDA, bfloat16 on CPU)')
    group.add_argument('--model-dtype', default=None, choices=MODEL_DTYPES, help='model dtype without autocast')
    group.add_argument('--fuser', default='', help="jit fuser for --torchscript ('', 'te', 'old', 'nvfuser')")
    group.add_argument('--fast-norm', action='store_true', help="timm's fast norm layers")
    group.add_argument('--torchscript', action='store_true', help='torch.jit.script the model')
    group.add_argument('--torchcompile', nargs='?', default=None, const='inductor', metavar='BACKEND',
                       help='torch.compile with this backend (default inductor)')
    group.add_argument('--torchcompile-mode', default=None, help='torch.compile mode')
    group.add_argument('--aot-autograd', action='store_true', help='not available (functorch was removed)')
    group.add_argument('--tf-preprocessing', action='store_true', help='not available (needs TensorFlow)')
    group.add_argument('--real-labels', default='', metavar='FILENAME', help='not available (ImageNet ReaL)')
    group.add_argument('--retry', action='store_true', help='not available (lower --batch-size instead)')
    group.add_argument('--naflex-loader', action='store_true', help='not available (NaFlex models)')
    group.add_argument('--naflex-max-seq-len', type=int, default=576, help='NaFlex sequence length (unused)')
    group.add_argument('--seed', type=seed, default=42, metavar='S', help='random seed')
    group.add_argument('--log-freq', type=int, default=10, metavar='N', help='log every N batches')
    group.add_argument('--metrics-avg', default=None, choices=('micro', 'macro', 'weighted'),
                       help='also report precision, recall and F1 with this averaging (needs scikit-learn)')
    group = parser.add_argument_group('Test-time augmentation')
    group.add_argument('--tta', type=int, default=1, metavar='N',
                       help=f'average the softmax over N deterministic views (1-{MAX_TTA_VIEWS}: identity, '
                            'horizontal flip, then flips x shifts); reported next to the plain metrics')
    group.add_argument('--tta-shift', type=int, default=2, metavar='PX', help='shift of the TTA views in pixels')
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
                            'of the evaluated split (in-distribution) against it; refused when it shares images with '
                            'the evaluated split')
    group.add_argument('--ood-dataset', default='folder', choices=('folder', 'svhn'),
                       help="'svhn': --ood-data-dir holds SVHN's test_32x32.mat (read by torchvision, not downloaded)")
    group.add_argument('--ood-no-verify', action='store_true',
                       help="read an SVHN .mat that differs from the published file (skip torchvision's MD5 check)")
    group = parser.add_argument_group('Output')
    group.add_argument('--results-file', default='', metavar='FILENAME', help="timm's results file (one row)")
    group.add_argument('--results-format', default='csv', choices=RESULTS_FORMATS, help='results file format')
    group.add_argument('--output-json', default=None, metavar='PATH',
                       help='metrics JSON (default: beside the checkpoint, calibration-<split>.json)')
    group.add_argument('--plot', default=None, metavar='PATH',
                       help='reliability diagram PNG (default: the JSON path with .png); needs matplotlib')
    group.add_argument('--no-plot', action='store_true', help='do not draw the reliability diagram')
    group.add_argument('--prediction-grid', default=None, metavar='PATH',
                       help='PNG grid of evaluated images with true / predicted class, confidence, right or wrong')
    group.add_argument('--save-logits', default=None, metavar='FILE.npz',
                       help='save the logits (TTA-averaged with --tta), targets, class names, split and checkpoint '
                            '(plus ood_logits with --ood-data-dir) as a numpy .npz; see docs/evaluation.md')
    group.add_argument('--prediction-grid-size', type=int, default=32, metavar='N',
                       help='images in the prediction grid (evenly spaced over the split)')
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Input checks (all before any model or image is loaded)

def _data_root(args: argparse.Namespace) -> Optional[str]:
    return args.data_dir or args.data


def resolve_split(args: argparse.Namespace, split: str, flag: str) -> str:
    """What a split name selects, so that two names can be compared: the folder of a folder dataset (timm's
    synonyms; the dataset root itself only for ``--split ''``), 'train' / 'val' for sklearn/digits, 'train' /
    'test' for torch/ datasets. ValueError naming ``flag`` and the valid names when the split does not exist."""
    name = args.dataset
    if is_digits_dataset(name):
        try:
            return digits_split(split)
        except ValueError as error:
            raise ValueError(f'{flag}: {error}') from None
    if name.startswith('torch/'):
        if split in _TRAIN_SPLITS:
            return 'train'
        if split in (*_EVAL_SPLITS, 'test'):
            return 'test'
        raise ValueError(f'{flag}: unknown split {split!r} of {name} (torchvision has a train and a test set): '
                         f'expected one of {sorted({*_TRAIN_SPLITS, *_EVAL_SPLITS, "test"})}.')
    if not is_image_folder_name(name):
        return split
    root = Path(_data_root(args))
    if root.is_file():  # a tar archive: timm's reader selects the split
        return split
    base = split.split('[')[0]
    if base == '':  # explicitly the whole folder (DIR/<class>/*)
        return str(root.resolve())
    synonyms = _TRAIN_SPLITS if base in _TRAIN_SPLITS else _EVAL_SPLITS if base in _EVAL_SPLITS else ()
    for candidate in (base, *synonyms):
        if candidate and (root / candidate).is_dir():
            return str((root / candidate).resolve())
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise ValueError(f'{flag}: no folder for split {split!r} in {root} (found {found}; timm would evaluate the '
                     f'whole folder instead, i.e. every split together).')


def check_args(args: argparse.Namespace) -> None:
    """ValueError / ImportError for bad input, before any model or image is loaded."""
    for flag, value, low in (('--num-bins', args.num_bins, 1), ('--batch-size', args.batch_size, 1),
                             ('--workers', args.workers, 0), ('--log-freq', args.log_freq, 1),
                             ('--prediction-grid-size', args.prediction_grid_size, 1),
                             ('--tta-shift', args.tta_shift, 1)):
        if value < low:
            raise ValueError(f'{flag} must be >= {low}, got {value}.')
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f'--num-samples must be >= 1, got {args.num_samples}.')
    check_mean_std(args)
    if not 1 <= args.tta <= MAX_TTA_VIEWS:
        raise ValueError(f'--tta must be in [1, {MAX_TTA_VIEWS}] views, got {args.tta}.')
    unavailable = {'--aot-autograd': (args.aot_autograd, 'functorch memory_efficient_fusion is not in this torch'),
                   '--tf-preprocessing': (args.tf_preprocessing, 'TensorFlow preprocessing is not supported'),
                   '--real-labels': (args.real_labels, 'ImageNet ReaL labels are not supported'),
                   '--retry': (args.retry, 'batch-size retry is not supported: lower --batch-size'),
                   '--naflex-loader': (args.naflex_loader, 'the NaFlex loader is not supported')}
    for flag, (value, why) in unavailable.items():
        if value:
            raise ValueError(f'{flag} is not available here: {why}.')
    if args.num_gpu != 1:
        raise ValueError(f'--num-gpu must be 1, got {args.num_gpu}: for several devices run '
                         f'torchrun --nproc-per-node {args.num_gpu} validate.py ...')
    if args.torchscript and args.torchcompile:
        raise ValueError('--torchscript and --torchcompile are mutually exclusive.')
    if args.amp and args.model_dtype not in (None, 'float32'):
        raise ValueError(f'--amp needs a float32 model, got --model-dtype {args.model_dtype}.')
    if args.checkpoint and os.path.isdir(args.checkpoint):
        raise ValueError(f'--checkpoint must be a file, got the folder {args.checkpoint} (bulk validation of a '
                         'folder of checkpoints is not supported).')
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise ValueError(f'--checkpoint not found: {args.checkpoint}')
    if not args.checkpoint and not args.pretrained:
        raise ValueError('give --checkpoint PATH (a train.py checkpoint) or --pretrained.')
    if args.model is not None and not is_model(args.model):
        raise ValueError(f"unknown timm model '{args.model}' (see timm.list_models()).")
    if args.valid_labels and not os.path.isfile(args.valid_labels):
        raise ValueError(f'--valid-labels not found: {args.valid_labels}')
    root = _data_root(args)
    if is_image_folder_name(args.dataset):
        if not root or not Path(root).exists():
            raise ValueError(f'dataset folder not found: {root!r} (give --data-dir DIR with DIR/<split>/<class>/).')
    evaluated = resolve_split(args, args.split, '--split')
    if args.calibration_split is not None:
        check_calibration_split(args.calibration_split, args.allow_test_calibration)
        if resolve_split(args, args.calibration_split, '--calibration-split') == evaluated:
            raise ValueError(f'--calibration-split {args.calibration_split!r} selects the evaluated images '
                             f'(--split {args.split!r}): fit the temperature on a held-out split.')
    if args.ood_data_dir is not None and not Path(args.ood_data_dir).is_dir():
        raise ValueError(f'--ood-data-dir not found: {args.ood_data_dir}')
    if args.metrics_avg:
        try:
            import sklearn.metrics  # noqa: F401
        except ImportError:
            raise ImportError('--metrics-avg needs scikit-learn: pip install scikit-learn') from None
    check_output_paths(args)
    if not args.no_plot or args.prediction_grid:
        from cfl_timm.plotting import require_matplotlib
        require_matplotlib()


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
        raise ValueError(f'--checkpoint {path} is not a readable checkpoint: {str(error).splitlines()[0]}') from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f'--checkpoint {path} is not a checkpoint dictionary.')
    run = dict(vars(checkpoint['args'])) if isinstance(checkpoint.get('args'), argparse.Namespace) else {}
    if 'arch' in checkpoint:
        run['arch'] = checkpoint['arch']
    return run


def build_dataset(args: argparse.Namespace, split: str, input_img_mode: str = 'RGB'):
    """The split as a dataset; folder images are verified first (see :func:`cfl_timm.data.strict_folder_dataset`)
    and fail loudly when unreadable."""
    if is_digits_dataset(args.dataset):
        return DigitsDataset(split)
    root = _data_root(args)
    if is_image_folder_name(args.dataset) and root and os.path.isdir(root):
        check_split_tree(root, split)
    try:
        dataset = create_dataset(
            args.dataset, root=root, split=split, is_training=False, class_map=args.class_map,
            download=args.dataset_download, batch_size=args.batch_size, input_key=args.input_key,
            input_img_mode=args.input_img_mode or input_img_mode, target_key=args.target_key,
            trust_remote_code=args.dataset_trust_remote_code, seed=args.seed)
    except (OSError, RuntimeError, AssertionError) as error:
        raise ValueError(f'could not load split {split!r} of {args.dataset or "the image folder"} from '
                         f'{root!r}: {error}') from error
    return strict_folder_dataset(dataset, split, skip_bad_images=args.skip_bad_images)


def check_split_classes(args: argparse.Namespace, splits: dict[str, Any]) -> None:
    """The evaluated (and calibration) split against each other and against the training folder of the same
    root when there is one: a class missing from a split would shift every label after it."""
    if args.class_map or not is_image_folder_name(args.dataset) or not os.path.isdir(_data_root(args) or ''):
        return
    root = Path(_data_root(args))
    train = next((root / name for name in _TRAIN_SPLITS if (root / name).is_dir()), None)
    if train is not None and str(train.resolve()) not in {str(Path(d.reader.root).resolve()) for d in splits.values()
                                                          if hasattr(getattr(d, 'reader', None), 'root')}:
        splits = {train.name: ImageDataset(str(train)), **splits}
    check_same_classes(splits)


def build_ood_dataset(folder: str, in_chans: int, skip_bad_images: bool = False, kind: str = 'folder',
                      verify_md5: bool = True):
    """Every image under ``folder`` (labels unused), verified, failing loudly when corrupt; with ``kind='svhn'``
    SVHN's test split from ``folder/test_32x32.mat`` (see :func:`cfl_timm.data.svhn_dataset`)."""
    if kind == 'svhn':
        if in_chans != 3:
            raise ValueError(f'--ood-dataset svhn holds RGB images; the model takes {in_chans} channel(s).')
        return svhn_dataset(folder, 'test', verify_md5=verify_md5)
    check_folder_tree(folder)
    try:
        dataset = ImageDataset(folder, input_img_mode='RGB' if in_chans == 3 else 'L')
    except RuntimeError as error:  # timm: no images found
        raise ValueError(f'--ood-data-dir {folder}: {error}') from None
    return strict_folder_dataset(dataset, '--ood-data-dir', skip_bad_images=skip_bad_images)


def subsample(dataset, num_samples: Optional[int]):
    """N evenly spaced images of the split (a class-sorted folder keeps every class), or the whole split."""
    if num_samples is None or num_samples >= len(dataset):
        return dataset
    return SubsetDataset(dataset, np.linspace(0, len(dataset) - 1, num_samples).round().astype(np.int64))


def class_names(dataset, num_classes: int) -> list[str]:
    """Class names of a folder (its class_to_idx), torchvision or digits dataset; indices otherwise."""
    base = dataset
    while hasattr(base, 'dataset'):
        base = base.dataset
    mapping = getattr(getattr(base, 'reader', None), 'class_to_idx', None) or getattr(base, 'class_to_idx', None)
    if mapping:
        names = {index: name for name, index in mapping.items()}
        return [str(names.get(i, i)) for i in range(num_classes)]
    classes = getattr(base, 'classes', None)
    if classes is not None and len(classes) == num_classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(num_classes)]


def build_model(args: argparse.Namespace, run: dict[str, Any], num_classes: int, in_chans: int,
                device: torch.device) -> tuple[torch.nn.Module, str, int]:
    """The model with the checkpoint loaded (and reparameterized / pooled / compiled as asked)."""
    model_name = args.model or run.get('arch') or run.get('model')
    if not model_name:
        raise ValueError('the checkpoint names no architecture: give --model NAME.')
    model_kwargs = {**(run.get('model_kwargs') or {}), **args.model_kwargs}
    if args.model_kwargs:
        check_model_kwargs(model_name, args.model_kwargs)
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
    plain = evaluate_logits(view_logits[0], target, num_classes, num_bins=args.num_bins)
    out = {'plain': plain, 'target': target, 'logits': view_logits[0]}
    if args.tta > 1:
        out['tta'] = evaluate_logits(average_softmax(view_logits), target, num_classes, num_bins=args.num_bins)
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
                                    confidence.tolist(), class_names(dataset, num_classes), path))


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate; returns the metrics written to the JSON (plus the output paths under 'files')."""
    setup_default_logging()
    check_args(args)
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


def _validate(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    is_primary = not dist.is_initialized() or dist.get_rank() == 0
    random_seed(args.seed)
    if args.fuser:
        set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()
    run = read_checkpoint_run(args.checkpoint)
    valid_labels = read_valid_labels(args.valid_labels)
    # Evaluate at the training input settings unless a flag overrides them.
    data_args = dict(vars(args))
    for key in ('img_size', 'input_size', 'in_chans', 'crop_pct', 'mean', 'std', 'interpolation'):
        if data_args.get(key) in (None, '') and run.get(key) not in (None, ''):
            data_args[key] = run[key]
    in_chans = data_args['in_chans'] or (data_args['input_size'][0] if data_args['input_size'] else 3)

    img_mode = 'RGB' if in_chans == 3 else 'L'
    dataset = build_dataset(args, args.split, img_mode)
    # Every split is read and checked before any evaluation.
    calibration = build_dataset(args, args.calibration_split, img_mode) if args.calibration_split is not None else None
    check_split_classes(args, {args.split: dataset, **({args.calibration_split: calibration} if calibration else {})})
    ood_dataset = None
    if args.ood_data_dir is not None:
        ood_dataset = build_ood_dataset(args.ood_data_dir, in_chans, args.skip_bad_images, args.ood_dataset,
                                        verify_md5=not args.ood_no_verify)
        if isinstance(dataset, torch.utils.data.IterableDataset):
            _logger.warning(f'split {args.split!r} is a streamed dataset: not checked for images shared with the '
                            'OOD set.')
        else:
            check_disjoint_images(dataset, ood_dataset, f'split {args.split!r}',
                                  f'--ood-data-dir {args.ood_data_dir}')
    num_classes = args.num_classes or run.get('num_classes') or int(dataset_targets(dataset).max()) + 1
    largest = int(dataset_targets(dataset).max())
    if valid_labels is None and largest >= num_classes:
        raise ValueError(f'split {args.split!r} has class index {largest}, but the model has {num_classes} classes '
                         f'(--num-classes or the checkpoint): give --num-classes >= {largest + 1}.')
    model, model_name, param_count = build_model(args, run, num_classes, in_chans, device)
    data_config = resolve_data_config(data_args, model=model, use_test_size=not args.use_train_size,
                                      verbose=is_primary)
    if args.test_pool:
        model, test_time_pool = apply_test_time_pool(model, data_config)
        if test_time_pool:
            data_config['crop_pct'] = 1.0
    model = prepare_model(model, args, device)
    metric_classes = len(valid_labels) if valid_labels is not None else num_classes
    if is_primary:
        _logger.info(f'Evaluating {model_name} ({param_count / 1e6:.2f}M parameters, {num_classes} classes) on '
                     f'split {args.split!r}, input {data_config["input_size"]}, {args.tta} view(s).')

    evaluator = Evaluator(model, args, data_config, device, valid_labels)
    dataset = subsample(dataset, args.num_samples)
    evaluation = evaluate_split(evaluator, args, dataset, metric_classes)
    plain = evaluation['plain']
    result: dict[str, Any] = dict(plain.metrics)
    result.pop('loss')
    metric_keys = list(result)
    result.update({'num_samples': plain.num_samples, 'num_bins': args.num_bins, 'split': args.split,
                   'model': model_name, 'checkpoint': os.path.basename(args.checkpoint) or None,
                   'param_count': round(param_count / 1e6, 2), 'reliability': plain.reliability})
    if args.metrics_avg:
        result.update(precision_recall_f1(evaluation['logits'], evaluation['target'], args.metrics_avg))
    if 'tta' in evaluation:
        tta = evaluation['tta']
        result['tta'] = {'num_views': args.tta, 'views': [v.describe() for v in evaluator.views],
                         **{k: tta.metrics[k] for k in metric_keys}, 'reliability': tta.reliability}
    panels = [(f'{args.split}: before temperature scaling', plain.reliability, plain.metrics)]

    if args.calibration_split is not None:
        if is_primary and args.calibration_split == run.get('train_split', 'train'):
            _logger.warning(f'The temperature is fitted on the training split {args.calibration_split!r}, which '
                            'is not held out: the network is over-confident there, so T will be too small.')
        held_out = subsample(calibration, args.num_samples)
        fit_logits, fit_target = evaluator.logits(held_out)
        temperature, scaled = evaluate_temperature_scaled(
            fit_logits[0], fit_target, evaluation['logits'], evaluation['target'], metric_classes,
            split=args.calibration_split, method=args.temperature_method,
            allow_test_split=args.allow_test_calibration, num_bins=args.num_bins)
        result.update({'temperature': temperature, 'temperature_method': args.temperature_method,
                       'temperature_split': args.calibration_split,
                       'after_temperature_scaling': {**{k: scaled.metrics[k] for k in metric_keys},
                                                     'reliability': scaled.reliability}})
        panels.append((f'{args.split}: after temperature scaling (T = {temperature:.3f})', scaled.reliability,
                       scaled.metrics))

    ood_view_logits = None
    if args.ood_data_dir is not None:
        ood_view_logits = evaluator.logits(ood_dataset)[0]
        ood_logits = ood_view_logits[0]
        result['ood_auroc'] = msp_auroc(evaluation['logits'], ood_logits)
        result['ood_num_samples'] = len(ood_logits)
        if 'temperature' in result:
            result['after_temperature_scaling']['ood_auroc'] = msp_auroc(
                evaluation['logits'] / result['temperature'], ood_logits / result['temperature'])

    files: dict[str, str] = {}
    row = results_row({**result, 'metric_keys': metric_keys}, {
        'param_count': result['param_count'], 'img_size': data_config['input_size'][-1],
        'crop_pct': data_config['crop_pct'], 'interpolation': data_config['interpolation']})
    if is_primary:
        files = write_outputs(args, result, row, panels, dataset, evaluation, data_config, metric_classes,
                              ood_view_logits=ood_view_logits)
        log_summary(args, result, metric_keys)
    return {**result, 'files': files, 'results_row': row}


def output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Every file this command writes, by the flag that names it (defaults resolved): the one place they are
    computed, for the collision check and for the writers."""
    json_path = Path(args.output_json) if args.output_json else (
        Path(args.checkpoint).resolve().parent if args.checkpoint else Path('.')) / f'calibration-{args.split}.json'
    paths = {'--output-json': json_path}
    if args.results_file:
        paths['--results-file'] = Path(args.results_file)
    if not args.no_plot:
        paths['--plot'] = Path(args.plot) if args.plot else json_path.with_suffix('.png')
    if args.prediction_grid:
        paths['--prediction-grid'] = Path(args.prediction_grid)
    if args.save_logits:
        paths['--save-logits'] = Path(args.save_logits)
    return paths


def check_output_paths(args: argparse.Namespace) -> None:
    """ValueError when two outputs of this command are the same file (one would overwrite the other)."""
    seen: dict[Path, str] = {}
    for flag, path in output_paths(args).items():
        resolved = path.expanduser().resolve()
        if resolved in seen:
            raise ValueError(f'{flag} and {seen[resolved]} name the same file {path}: give each output its own path.')
        seen[resolved] = flag
    if args.save_logits:
        check_writable_file(args.save_logits, '--save-logits', '.npz')


def check_writable_file(path: str, flag: str, suffix: str) -> None:
    """ValueError unless ``path`` ends in ``suffix``, is not a folder, and its folder exists writable or can be
    created (checked before any work, so that a long evaluation does not fail at its last step)."""
    target = Path(path).expanduser()
    if target.suffix.lower() != suffix:
        raise ValueError(f'{flag} {path}: the file name must end in {suffix}.')
    if target.is_dir():
        raise ValueError(f'{flag} {path} is a folder: give a file name ending in {suffix}.')
    folder = target.resolve().parent
    while not folder.exists():  # the nearest existing ancestor must let us create the missing folders
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f'{flag} {path}: cannot write into {folder} (not a writable folder).')


def write_outputs(args, result, row, panels, dataset, evaluation, data_config, num_classes,
                  ood_view_logits=None) -> dict[str, str]:
    paths = output_paths(args)
    json_path = paths['--output-json']
    atomic_write_text(json_path, json.dumps(json_safe(result), indent=2, allow_nan=False) + '\n')
    files = {'json': str(json_path)}
    if args.results_file:
        write_results(args.results_file, row, args.results_format)
        files['results'] = args.results_file
    if not args.no_plot:
        from cfl_timm.plotting import plot_reliability_diagrams
        files['plot'] = str(plot_reliability_diagrams(panels, paths['--plot']))
    if args.prediction_grid:
        files['prediction_grid'] = draw_prediction_grid(args, dataset, evaluation, data_config, num_classes,
                                                        args.prediction_grid)
    if args.save_logits:
        # The logits behind the reported metrics: the TTA-averaged ones (float64) when --tta > 1, and the OOD
        # set's averaged the same way (average_softmax returns a single view unchanged).
        logits = evaluation['tta'].logits if 'tta' in evaluation else evaluation['logits']
        ood_logits = average_softmax(ood_view_logits) if ood_view_logits is not None else None
        data = save_logits_npz(logits, evaluation['target'], class_names(dataset, num_classes), split=args.split,
                               checkpoint=result['checkpoint'] or '', ood_logits=ood_logits)
        atomic_write_bytes(paths['--save-logits'], lambda f: f.write(data))
        files['logits'] = str(paths['--save-logits'])
    return files


def log_summary(args: argparse.Namespace, result: dict[str, Any], metric_keys: list[str]) -> None:
    lines = [(f'{args.split} ({result["num_samples"]} images)', result)]
    if 'tta' in result:
        lines.append((f'TTA ({args.tta} views)', result['tta']))
    if 'temperature' in result:
        lines.append((f'T = {result["temperature"]:.4f}', result['after_temperature_scaling']))
    for title, metrics in lines:
        _logger.info(f'{title}: ' + ' '.join(f'{key} {metrics[key]:.4f}' for key in metric_keys))
        note = coinciding_ece_note(metrics)
        if note:
            _logger.info(f'  {note}')
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
        result = main(args)
    except (ValueError, ImportError) as error:
        parser.error(_one_line(error))
    if result['files']:  # the primary process: timm's results row on stdout, after its '--result' delimiter
        print(f'--result\n{json.dumps(json_safe(result["results_row"]), indent=4)}')


if __name__ == '__main__':
    cli()
