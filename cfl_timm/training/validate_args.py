"""validate.py's command line: its argument groups (timm's ``validate.py`` flags with their names, meanings and
defaults, plus the calibration, post-hoc, OOD and output flags) and every check of them, all run before any model or
image is loaded (:func:`check_args`).

``--calibration-split holdout`` reads back the held-out split a train.py run carved with ``--holdout N``
(:mod:`cfl_timm.data.holdout`): the run folder is ``--run-dir`` or the checkpoint's folder.
"""
import argparse
import os
from pathlib import Path
from typing import Any, Optional

import torch
from timm.models import is_model

from cfl_timm.data import (
    IMAGE_CHECKS,
    MAX_TTA_VIEWS,
    check_dataset_name,
    digits_split,
    is_digits_dataset,
    is_image_folder_name,
    split_folder,
)
from cfl_timm.data.holdout import HOLDOUT_FILE, HoldoutRecord, read_holdout_record
from cfl_timm.data.worker_seeding import check_worker_socket_dir
from cfl_timm.evaluate import PLOT_FILES, bootstrap_count, check_plot_dir, posthoc_list
from cfl_timm.metrics import FIT_METHODS, POSTHOC_METHODS, check_calibration_split
from cfl_timm.training.arg_types import (
    INTERPOLATIONS,
    KeyValueArgs,
    class_count,
    crop_fraction,
    device_name,
    existing_file,
    existing_folder,
    finite_float,
    int_in,
    non_negative_int,
    npz_file,
    output_file,
    output_folder,
    path_converter,
    positive_float,
    positive_int,
    seed,
)
from cfl_timm.training.input_checks import check_crop_pct, check_mean_std, image_mode_name

__all__ = ['HOLDOUT_SPLIT', 'MODEL_DTYPES', 'RESULTS_FORMATS', 'add_validate_args', 'check_args',
           'holdout_record', 'output_paths', 'resolve_split']

RESULTS_FORMATS = ('csv', 'json')
CROP_MODES = ('center', 'squash', 'border')  # timm's eval transform
MODEL_DTYPES = ('float32', 'float16', 'bfloat16')
# --calibration-split HOLDOUT_SPLIT: the held-out split recorded in the train.py run folder.
HOLDOUT_SPLIT = 'holdout'
# timm's split synonyms (timm.data.dataset_factory): a folder dataset looks for the first that exists.
_TRAIN_SPLITS = ('train', 'training')
_EVAL_SPLITS = ('val', 'valid', 'validation', 'eval', 'evaluation')


@path_converter('file')
def checkpoint_file(value: Any) -> str:
    """validate.py's ``--checkpoint``: one existing checkpoint file ('' = none given); timm's validation of a
    folder of checkpoints is not supported."""
    path = str(value)
    if path and os.path.isdir(path):
        raise argparse.ArgumentTypeError(f'{path} is a folder: bulk validation of a folder of checkpoints is not '
                                         'supported; give one checkpoint file')
    return existing_file(path)


def add_validate_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add validate.py's argument groups to ``parser``; returns it."""
    group = parser.add_argument_group('Dataset (timm)')
    group.add_argument('data', nargs='?', metavar='DIR', default=None, help='dataset root (same as --data-dir)')
    group.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root')
    group.add_argument('--dataset', default='', metavar='NAME',
                       help="dataset type: '' (image folder), torch/cifar10, sklearn/digits, ...")
    group.add_argument('--split', default='validation', metavar='NAME', help='split to evaluate')
    group.add_argument('--num-samples', type=positive_int, default=None, metavar='N',
                       help='evaluate N evenly spaced images of each split only')
    group.add_argument('--dataset-download', action='store_true', help='download a torchvision dataset')
    group.add_argument('--class-map', default='', type=existing_file, metavar='FILENAME',
                       help='class map file of the folder dataset')
    group.add_argument('--skip-bad-images', action='store_true',
                       help='leave out (and count in the log) unreadable images instead of refusing the split')
    group.add_argument('--image-check', choices=IMAGE_CHECKS, default='decode',
                       help="how much of each folder image is checked before any work: 'decode' every pixel "
                            "(finds a truncated JPEG; default), or 'header' only (for image sets too large to decode "
                            "at every start: a truncated image then stops the run when it is loaded, naming it)")
    group.add_argument('--input-key', default=None, help='dataset key of the input images (hfds/wds)')
    group.add_argument('--input-img-mode', default=None, type=image_mode_name,
                       help="image mode ('RGB', 'L'; default from the channels)")
    group.add_argument('--target-key', default=None, help='dataset key of the labels (hfds/wds)')
    group.add_argument('--dataset-trust-remote-code', action='store_true',
                       help="let a Hugging Face dataset run its repository's code")
    group = parser.add_argument_group('Model (timm)')
    group.add_argument('--model', '-m', default=None, metavar='NAME',
                       help="timm model name (default: the 'arch' stored in the checkpoint)")
    group.add_argument('--pretrained', action='store_true', help='use timm pretrained weights (no checkpoint)')
    group.add_argument('--checkpoint', default='', type=checkpoint_file, metavar='PATH',
                       help='checkpoint file (train.py or timm)')
    group.add_argument('--use-ema', action='store_true', help="evaluate the checkpoint's EMA weights")
    group.add_argument('--num-classes', type=class_count, default=None, metavar='N',
                       help='number of classes (default: the checkpoint run, else the dataset)')
    group.add_argument('--gp', default=None, metavar='POOL', help='global pool type (model default if unset)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=KeyValueArgs, help='extra model kwargs')
    group.add_argument('--reparam', action='store_true', help='reparameterize the model (timm)')
    group.add_argument('--test-pool', action='store_true', help='test-time pooling (timm apply_test_time_pool)')
    group.add_argument('--valid-labels', default='', type=existing_file, metavar='FILENAME',
                       help='text file of the class indices to keep (one per line): partial label space')
    group = parser.add_argument_group('Input (timm)')
    group.add_argument('--img-size', type=positive_int, default=None, metavar='N', help='input image size')
    group.add_argument('--in-chans', type=positive_int, default=None, metavar='N', help='image input channels')
    group.add_argument('--input-size', default=None, nargs=3, type=positive_int, metavar=('C', 'H', 'W'),
                       help='input size')
    group.add_argument('--use-train-size', action='store_true', help="use the model's train input size")
    group.add_argument('--crop-pct', type=crop_fraction, default=None, metavar='PCT', help='input center crop percent')
    group.add_argument('--crop-mode', default=None, choices=CROP_MODES, help='crop mode (default: the model\'s)')
    group.add_argument('--crop-border-pixels', type=non_negative_int, default=None, metavar='N',
                       help='crop pixels at the border')
    group.add_argument('--mean', type=finite_float, nargs='+', default=None, metavar='MEAN', help='dataset mean')
    group.add_argument('--std', type=positive_float, nargs='+', default=None, metavar='STD', help='dataset std')
    group.add_argument('--interpolation', default='', metavar='NAME', choices=INTERPOLATIONS,
                       help='resize interpolation')
    group = parser.add_argument_group('Runtime (timm)')
    group.add_argument('-b', '--batch-size', type=positive_int, default=256, metavar='N', help='batch size')
    group.add_argument('-j', '--workers', type=non_negative_int, default=4, metavar='N', help='data loader workers')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=device_name,
                       help='device')
    group.add_argument('--num-gpu', type=positive_int, default=1, metavar='N',
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
    group.add_argument('--naflex-max-seq-len', type=positive_int, default=576, help='NaFlex sequence length (unused)')
    group.add_argument('--seed', type=seed, default=42, metavar='S', help='random seed')
    group.add_argument('--log-freq', type=positive_int, default=10, metavar='N', help='log every N batches')
    group.add_argument('--metrics-avg', default=None, choices=('micro', 'macro', 'weighted'),
                       help='also report precision, recall and F1 with this averaging (needs scikit-learn)')
    group = parser.add_argument_group('Test-time augmentation')
    group.add_argument('--tta', type=int_in(1, MAX_TTA_VIEWS, 'tta_views'), default=1, metavar='N',
                       help=f'average the softmax over N deterministic views (1-{MAX_TTA_VIEWS}: identity, '
                            'horizontal flip, then flips x shifts); reported next to the plain metrics')
    group.add_argument('--tta-shift', type=positive_int, default=2, metavar='PX',
                       help='shift of the TTA views in pixels')
    group = parser.add_argument_group('Calibration')
    group.add_argument('--num-bins', type=positive_int, default=15, metavar='B', help='bins of every binned metric')
    group.add_argument('--calibration-split', default=None, metavar='NAME',
                       help='held-out split to fit a temperature (and --posthoc methods) on; '
                            f"'{HOLDOUT_SPLIT}': the --holdout split the train.py run recorded (none: no fit)")
    group.add_argument('--run-dir', default=None, type=existing_folder, metavar='DIR',
                       help=f'train.py run folder whose {HOLDOUT_FILE} --calibration-split {HOLDOUT_SPLIT} reads '
                            "(unset: the checkpoint's folder)")
    group.add_argument('--posthoc', type=posthoc_list, default=[], metavar='LIST',
                       help=f'post-hoc methods fitted on --calibration-split, comma-separated from '
                            f'{",".join(POSTHOC_METHODS)} (reported under posthoc.<method>)')
    group.add_argument('--bootstrap', type=bootstrap_count, default=0, metavar='B',
                       help='bootstrap resamples (seeded by --seed) for 95%% intervals (0: none, else >= 2)')
    group.add_argument('--temperature-method', default='nll', choices=FIT_METHODS,
                       help="'nll': the NLL-optimal T (Guo et al.), exact; 'grid-ece': lowest ECE over T = 0.1..10")
    group.add_argument('--allow-test-calibration', action='store_true',
                       help='allow fitting the temperature on a test split (leaks test labels; off by default)')
    group.add_argument('--ood-data-dir', default=None, type=existing_folder, metavar='DIR',
                       help='folder of out-of-distribution images: the evaluated split (in-distribution) '
                            'against it, AUROC / AUPR / FPR95 of MSP, max logit, energy and entropy '
                            '(ood.<folder name>; ood_auroc: MSP); refused when it shares images with the '
                            'evaluated split')
    group.add_argument('--ood-dataset', default='folder', choices=('folder', 'svhn'),
                       help="'svhn': --ood-data-dir holds SVHN's test_32x32.mat (read by torchvision, not downloaded)")
    group.add_argument('--ood-no-verify', action='store_true',
                       help="read an SVHN .mat that differs from the published file (skip torchvision's MD5 check)")
    group = parser.add_argument_group('Output')
    group.add_argument('--results-file', default='', type=output_file, metavar='FILENAME',
                       help="timm's results file (one row)")
    group.add_argument('--results-format', default='csv', choices=RESULTS_FORMATS, help='results file format')
    group.add_argument('--output-json', default=None, type=output_file, metavar='PATH',
                       help='metrics JSON (default: beside the checkpoint, calibration-<split>.json)')
    group.add_argument('--plot', default=None, type=output_file, metavar='PATH',
                       help='reliability diagram PNG (default: the JSON path with .png); needs matplotlib')
    group.add_argument('--no-plot', action='store_true', help='do not draw the reliability diagram')
    group.add_argument('--prediction-grid', default=None, type=output_file, metavar='PATH',
                       help='PNG grid of evaluated images with true / predicted class, confidence, right or wrong')
    group.add_argument('--save-logits', default=None, type=npz_file, metavar='FILE.npz',
                       help='save the logits (TTA-averaged with --tta), targets, class names, split and checkpoint '
                            '(plus ood_logits with --ood-data-dir) as a numpy .npz; see docs/evaluation.md')
    group.add_argument('--save-fit-logits', default=None, type=npz_file, metavar='FILE.npz',
                       help='save the --calibration-split logits the same way (python -m cfl_timm.evaluate --fit)')
    group.add_argument('--plot-dir', default=None, type=output_folder, metavar='DIR',
                       help=f'draw {" and ".join(PLOT_FILES.values())} into DIR (reliability diagrams before / '
                            'after each --posthoc method, risk-coverage curves); needs matplotlib')
    group.add_argument('--prediction-grid-size', type=positive_int, default=32, metavar='N',
                       help='images in the prediction grid (evenly spaced over the split)')
    return parser


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


def _holdout_run_dir(args: argparse.Namespace) -> Optional[Path]:
    """The run folder ``--calibration-split holdout`` reads: ``--run-dir``, else the checkpoint's folder."""
    if args.run_dir:
        return Path(args.run_dir)
    return Path(args.checkpoint).resolve().parent if args.checkpoint else None


def holdout_record(args: argparse.Namespace) -> Optional[HoldoutRecord]:
    """The held-out split recorded by the train.py run (``--calibration-split holdout``), or None when the
    calibration split is a split of the dataset. ValueError when ``--run-dir`` names a folder without a record."""
    if args.calibration_split != HOLDOUT_SPLIT:
        return None
    run_dir = _holdout_run_dir(args)
    if args.run_dir or (run_dir is not None and (run_dir / HOLDOUT_FILE).is_file()):
        try:
            return read_holdout_record(run_dir)
        except ValueError as error:
            raise ValueError(f'--calibration-split {HOLDOUT_SPLIT} --run-dir {run_dir}: {error}') from None
    return None


def check_calibration_args(args: argparse.Namespace, evaluated: str) -> None:
    """--calibration-split (a held-out split of the dataset, or the run's recorded holdout), --run-dir,
    --posthoc and --save-fit-logits, against each other and against the evaluated split ``evaluated``."""
    if args.run_dir is not None:
        if args.calibration_split != HOLDOUT_SPLIT:
            raise ValueError(f'--run-dir is read only with --calibration-split {HOLDOUT_SPLIT} (the run\'s '
                             f'held-out split), got --calibration-split {args.calibration_split!r}.')
    for flag, value in (('--posthoc', args.posthoc), ('--save-fit-logits', args.save_fit_logits)):
        if value and args.calibration_split is None:
            raise ValueError(f'{flag} needs a held-out split to fit on: give --calibration-split NAME '
                             f"(or '{HOLDOUT_SPLIT}' for the train.py run's --holdout split).")
    if args.calibration_split is None:
        return
    check_calibration_split(args.calibration_split, args.allow_test_calibration)
    record = holdout_record(args)
    if record is not None:
        if is_image_folder_name(args.dataset) and (Path(_data_root(args)) / HOLDOUT_SPLIT).is_dir():
            raise ValueError(f'--calibration-split {HOLDOUT_SPLIT} is ambiguous: {_data_root(args)} has a '
                             f'{HOLDOUT_SPLIT!r} folder and the run records a held-out split; rename the folder.')
        if resolve_split(args, record.split, '--calibration-split holdout (the run\'s training split)') == evaluated:
            raise ValueError(f'--split {args.split!r} selects the training split {record.split!r} the held-out '
                             'images were carved from: evaluate a split the run did not train on.')
        return
    try:
        calibration = resolve_split(args, args.calibration_split, '--calibration-split')
    except ValueError as error:
        if args.calibration_split != HOLDOUT_SPLIT:
            raise
        run_dir = _holdout_run_dir(args)
        where = f'the run folder {run_dir}' if run_dir else 'no run folder (no --checkpoint, no --run-dir)'
        raise ValueError(f'{error} And {where} records no held-out split ({HOLDOUT_FILE}: train.py --holdout N '
                         'writes it; or give --run-dir RUN).') from None
    if calibration == evaluated:
        raise ValueError(f'--calibration-split {args.calibration_split!r} selects the evaluated images '
                         f'(--split {args.split!r}): fit the temperature on a held-out split.')


def check_args(args: argparse.Namespace) -> None:
    """ValueError / ImportError for bad input, before any model or image is loaded."""
    check_mean_std(args)  # a single flag's range is its declaration's (cfl_timm.training.arg_types)
    check_crop_pct(args)
    check_worker_socket_dir(args.workers)
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
    if not args.checkpoint and not args.pretrained:
        raise ValueError('give --checkpoint PATH (a train.py checkpoint) or --pretrained.')
    if args.model is not None and not is_model(args.model):
        raise ValueError(f"--model: unknown timm model '{args.model}' (see timm.list_models()).")
    root = _data_root(args)
    check_dataset_name(args.dataset)
    if is_image_folder_name(args.dataset):
        if not root or not Path(root).exists():
            raise ValueError(f'dataset folder not found: {root!r} (--dataset {args.dataset!r} reads an image folder: '
                             'give --data-dir DIR with DIR/<split>/<class>/).')
    check_calibration_args(args, resolve_split(args, args.split, '--split'))
    if args.metrics_avg:
        try:
            import sklearn.metrics  # noqa: F401
        except ImportError:
            raise ImportError('--metrics-avg needs scikit-learn: pip install scikit-learn') from None
    check_output_paths(args)
    check_plot_dir(args.plot_dir)
    if not args.no_plot or args.prediction_grid:
        from cfl_timm.plotting import require_matplotlib
        require_matplotlib()

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
    if args.save_fit_logits:
        paths['--save-fit-logits'] = Path(args.save_fit_logits)
    return paths


def _split_folder(args: argparse.Namespace, split: Optional[str]) -> Optional[str]:
    """The image folder read for ``split`` (a folder dataset), else None."""
    root = _data_root(args)
    if split is None or not is_image_folder_name(args.dataset) or not root or not os.path.isdir(root):
        return None
    return split_folder(root, 'train' if split == HOLDOUT_SPLIT else split)  # the held-out images are training ones


def input_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Every file and image folder this command reads, by the flag that names it: no output may replace one of
    them or land inside one (a picture written there would become an image of the dataset)."""
    folders = (*((flag, _split_folder(args, split)) for flag, split in (('--split', args.split),
                                                                          ('--calibration-split',
                                                                           args.calibration_split))),
               ('--ood-data-dir', args.ood_data_dir))
    named = (('--checkpoint', args.checkpoint), ('--valid-labels', args.valid_labels), ('--class-map', args.class_map),
             *folders)
    return {flag: Path(path) for flag, path in named if path}


def check_output_paths(args: argparse.Namespace) -> None:
    """ValueError when an output of this command is an input file (writing it would destroy it, e.g.
    ``--results-file`` naming the checkpoint) or two outputs are the same file (one would overwrite the other)."""
    inputs = {path.expanduser().resolve(): flag for flag, path in input_paths(args).items()}
    seen: dict[Path, str] = {}
    if args.plot_dir:  # a folder of pictures: not inside (nor one of) the image folders read
        _refuse_inside(inputs, '--plot-dir', Path(args.plot_dir), Path(args.plot_dir).expanduser().resolve())
    for flag, path in output_paths(args).items():
        resolved = path.expanduser().resolve()
        if resolved in inputs:
            raise ValueError(f'{flag} {path} is the input file of {inputs[resolved]}: writing it would destroy it; '
                             'give the output another path.')
        _refuse_inside(inputs, flag, path, resolved.parent)
        if resolved in seen:
            raise ValueError(f'{flag} and {seen[resolved]} name the same file {path}: give each output its own path.')
        seen[resolved] = flag


def _refuse_inside(inputs: dict[Path, str], flag: str, path: Path, folder: Path) -> None:
    """ValueError when ``folder`` (where ``flag`` writes) is an input folder or lies inside one."""
    inside = [(where, name) for where, name in inputs.items() if where in (folder, *folder.parents)]
    if inside:
        raise ValueError(f'{flag} {path} lies inside the image folder of {inside[0][1]} ({inside[0][0]}): what it '
                         'writes would become part of the data; write it elsewhere.')
