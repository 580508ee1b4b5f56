"""train.py's command line: timm's training flags plus the cyclical focal loss / cyclical training flags.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978, and "General Cyclical Training
of Neural Networks", https://arxiv.org/abs/2202.08835.

Structure (add a flag to the group function of its area, and its check to the matching ``check_*`` function):

* One ``add_<group>_args(parser)`` function per argument group, in help order: :func:`add_dataset_args`,
  :func:`add_model_args`, :func:`add_device_args`, :func:`add_optimizer_args`, :func:`add_scheduler_args`,
  :func:`add_augmentation_args`, :func:`add_batchnorm_args`, :func:`add_ema_args`, :func:`add_misc_args`,
  :func:`add_logging_args`, :func:`add_naflex_args`, :func:`add_loss_args`, :func:`add_distillation_args`,
  :func:`add_cyclical_args`, :func:`add_subset_args`. :data:`ARG_GROUPS` lists them and :func:`add_train_args`
  adds them all. Every flag of upstream timm's train.py is here with timm's name, meaning and default (the
  docs/training.md lists the two defaults that differ and the flags refused with their reason;
  ``tests/fixtures/timm_train_flags.txt``, checked by ``tests/test_train_parity.py``); the published cyclical
  flags take both spellings through :func:`both_spellings` (``--T_min`` and ``--T-min``). The focal-loss and
  cyclical groups and their check come from :mod:`cfl_timm.training.cyclical_args`, the one definition a
  patched timm checkout copies.
* :func:`load_config` reads a YAML ``-c/--config`` file whose values become parser defaults.
* Checks run before any data, model or process is touched. Each ``check_<group>_args(args)`` raises a
  ``ValueError`` naming the flag and its valid range or choices; :data:`ARG_CHECKS` lists them in order and
  :func:`check_args` runs them all. Given the parser, :func:`check_args` turns the first error into a usage
  error (``parser.error``: one line ``train.py: error: ...``, exit status 2); without it the ``ValueError``
  propagates (in-process callers of ``train.main``). Input errors found later but still before training
  (e.g. a sampler file's contents, an unreadable teacher checkpoint) are raised by train.py as
  :class:`UsageError`, which its command line turns into the same usage error.

This module only describes and checks the command line; it builds nothing (train.py does).
"""
import argparse
import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from timm.models import is_model

from ..data import IMAGE_CHECKS, SUBSET_MODES, check_dataset_name, is_digits_dataset
from ..data.holdout import HOLDOUT_METRICS
from ..data.transforms import TRAIN_TRANSFORMS
from ..data.worker_seeding import check_worker_socket_dir
from ..files import atomic_write_text
from ..loss.calibration_losses import CALIBRATION_LOSS_DEFAULTS
from ..loss.cfl_loss_factory import LOSS_TYPES, REDUCTION_KWARG, create_loss, loss_kwargs
from ..loss.cyclical_focal_loss import SOFT_TARGET_MODES
from ..registry import ALL_LOSS_TYPES
from ..scheduler import OneCycleLRScheduler
from ..scheduler.onecycle import ONECYCLE_ANNEAL
from .arg_types import (
    INTERPOLATIONS,
    Ascending,
    KeyValueArgs,
    at_least_one,
    class_count,
    crop_fraction,
    device_name,
    existing_file,
    finite_float,
    fraction,
    integer,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    relative_name,
    seed,
    writable_folder,
)
from .config_file import read_config_file
from .cyclical_args import (
    add_cyclical_args,
    add_focal_loss_args,
    both_spellings,
    check_cyclical_args,
    mixup_active,
)
from .input_checks import check_file_args, check_name_args, check_number_args, coerce_config_value, image_mode_name
from .loggers import check_logger_extras
from .resume_args import WORLD_SIZE_KEY

__all__ = [
    'ARG_CHECKS', 'ARG_GROUPS', 'EVAL_SPLIT_NAMES', 'SOFT_TARGET_MODES', 'TRAIN_SPLIT_NAMES',
    'add_augmentation_args', 'add_batchnorm_args', 'add_cyclical_args', 'add_dataset_args', 'add_device_args',
    'add_ema_args', 'add_loss_args', 'add_misc_args', 'add_model_args', 'add_optimizer_args',
    'add_scheduler_args', 'add_subset_args', 'add_train_args', 'both_spellings', 'check_args', 'load_config',
    'suggest_flag', 'TrainArgumentParser', 'UsageError',
    'loss_name', 'mixup_active', 'LOSS_FLAG_KWARGS', 'save_args_yaml',
]

MODEL_DTYPES = ('float32', 'float16', 'bfloat16')
KD_DISTILL_TYPES = ('logit', 'feature', 'token')
KD_TOKEN_DISTILL_TYPES = ('soft', 'hard')
WORKER_SEEDING = ('all', 'part')
MIXUP_MODES = ('batch', 'pair', 'elem')  # timm's Mixup: one lambda per batch, per pair of images, per image
TRAIN_CROP_MODES = ('rrc', 'rkrc', 'rkrr')  # timm's random resized crop, and its random-keep-ratio variants
RANDOM_ERASE_MODES = ('pixel', 'rand', 'const')  # timm's RandomErasing fill: per-pixel noise, per-channel, zeros
TRAIN_INTERPOLATIONS = ('random', *(name for name in INTERPOLATIONS if name))  # 'random': bilinear or bicubic
LR_BASE_SCALES = ('', 'linear', 'sqrt')  # '' = timm's rule by optimizer (sqrt for adaptive ones)
# Split folder names timm's folder datasets accept for the default splits.
TRAIN_SPLIT_NAMES = ('train', 'training')
EVAL_SPLIT_NAMES = ('validation', 'val', 'valid', 'eval', 'evaluation')


class UsageError(ValueError):
    """A bad input found while setting up, before training: the command line reports it as a usage error."""


def _flag_key(flag: str) -> str:
    return flag.lower().replace('_', '-')


def suggest_flag(flag: str, option_strings: list[str]) -> Optional[str]:
    """The known flag an unknown ``flag`` most likely meant: first one equal but for case and '-'/'_', else
    ``difflib``'s closest (``--clIp_max`` -> ``--clip_max``); None when nothing is close."""
    exact = [option for option in option_strings if _flag_key(option) == _flag_key(flag)]
    if exact:
        return exact[0]
    close = difflib.get_close_matches(flag, option_strings, n=1)
    return close[0] if close else None


class TrainArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose error for an unknown flag names the closest known one (a one-line usage error,
    exit status 2), so a mistyped flag is neither silently dropped nor left to guesswork."""

    def parse_args(self, args=None, namespace=None):
        args, extras = self.parse_known_args(args, namespace)
        if extras:
            flags = [item.split('=', 1)[0] for item in extras if item.startswith('-') and item != '-']
            options = [option for action in self._actions for option in action.option_strings
                       if option.startswith('--')]
            for flag in flags:
                suggestion = suggest_flag(flag, options)
                if suggestion:
                    self.error(f'unrecognized argument {flag}; did you mean {suggestion}?')
            self.error(f'unrecognized arguments: {" ".join(extras)}')
        return args


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """Dataset location, type and splits (timm)."""
    group = parser.add_argument_group('Dataset parameters')
    group.add_argument('data', nargs='?', metavar='DIR', help='path to dataset (positional is *deprecated*)')
    group.add_argument('--data-dir', metavar='DIR', help='path to dataset (root dir)')
    group.add_argument('--dataset', '-d', metavar='NAME', default='',
                       help="dataset type: '' (folder with train/val), torch/cifar10, torch/cifar100, "
                            "sklearn/digits (offline), ... (default: folder)")
    group.add_argument('--train-split', metavar='NAME', default='train',
                       help='dataset train split (default: train)')
    group.add_argument('--val-split', metavar='NAME', default='validation',
                       help='dataset validation split (default: validation)')
    group.add_argument('--train-num-samples', default=None, type=positive_int, metavar='N',
                       help='number of training samples of an iterable dataset (hfids/, wds/, tfds/) per epoch')
    group.add_argument('--val-num-samples', default=None, type=positive_int, metavar='N',
                       help='number of validation samples of an iterable dataset (hfids/, wds/, tfds/)')
    group.add_argument('--dataset-download', action='store_true', default=False,
                       help='allow download of dataset for torch/ and tfds/ datasets that support it')
    group.add_argument('--skip-bad-images', action='store_true', default=False,
                       help='leave out (and count in the log) unreadable images instead of refusing the dataset')
    group.add_argument('--image-check', choices=IMAGE_CHECKS, default='decode',
                       help="how much of each folder image is checked before any work: 'decode' every pixel "
                            "(finds a truncated JPEG; default), or 'header' only (for image sets too large to decode "
                            "at every start: a truncated image then stops the run when it is loaded, naming it)")
    group.add_argument('--class-map', default='', type=existing_file, metavar='FILENAME',
                       help='path to class to idx mapping file (default: "")')
    group.add_argument('--input-img-mode', default=None, type=image_mode_name, help='dataset image conversion mode')
    group.add_argument('--input-key', default=None, type=str,
                       help='dataset key of the input image (hfds/, hfids/, wds/ datasets)')
    group.add_argument('--target-key', default=None, type=str,
                       help='dataset key of the target label (hfds/, hfids/, wds/ datasets)')
    group.add_argument('--dataset-trust-remote-code', action='store_true', default=False,
                       help="let a Hugging Face dataset run code from the dataset's repository")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Model, checkpoints, input size and batch size (timm)."""
    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', default='resnet50', type=str, metavar='MODEL',
                       help='name of model to train (default: "resnet50")')
    group.add_argument('--pretrained', action='store_true', default=False,
                       help='start with pretrained version of specified network (if avail)')
    group.add_argument('--pretrained-path', default=None, type=existing_file, metavar='PATH',
                       help='load the --pretrained weights from this file instead of the hub (the classifier is '
                            'adapted to --num-classes)')
    group.add_argument('--initial-checkpoint', default='', type=existing_file, metavar='PATH',
                       help='load this checkpoint into model after initialization (default: none)')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help="resume full model and optimizer state from checkpoint; 'auto' uses last.pth.tar "
                            'of the output directory when present (default: none)')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='prevent resume of optimizer state when resuming model')
    group.add_argument('--allow-changed-args', action='store_true', default=False,
                       help='resume even though settings that change the training trajectory differ from the '
                            "run's (they are listed; default: refused)")
    group.add_argument('--num-classes', type=class_count, default=None, metavar='N',
                       help='number of label classes (default: from the training set)')
    group.add_argument('--gp', default=None, type=str, metavar='POOL',
                       help='global pool type, one of (fast, avg, max, avgmax, avgmaxc); model default if None')
    group.add_argument('--img-size', type=positive_int, default=None, metavar='N',
                       help='image size (default: None => model default)')
    group.add_argument('--in-chans', type=positive_int, default=None, metavar='N',
                       help='image input channels (default: None => 3)')
    group.add_argument('--input-size', default=None, nargs=3, type=positive_int, metavar='N N N',
                       help='input all image dimensions (d h w, e.g. --input-size 3 224 224), model default if None')
    group.add_argument('--crop-pct', default=None, type=crop_fraction, metavar='N',
                       help='input image center crop percent (for validation only)')
    group.add_argument('--mean', type=finite_float, nargs='+', default=None, metavar='MEAN',
                       help='override mean pixel value of dataset')
    group.add_argument('--std', type=positive_float, nargs='+', default=None, metavar='STD',
                       help='override std deviation of dataset')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME', choices=INTERPOLATIONS,
                       help='image resize interpolation type (overrides model)')
    group.add_argument('-b', '--batch-size', type=positive_int, default=128, metavar='N',
                       help='input batch size for training (default: 128)')
    group.add_argument('-vb', '--validation-batch-size', type=positive_int, default=None, metavar='N',
                       help='validation batch size override (default: None)')
    group.add_argument('--channels-last', action='store_true', default=False,
                       help='use channels_last memory layout')
    group.add_argument('--fuser', default='', type=str,
                       help="TorchScript jit fuser, one of ('', 'te', 'old', 'nvfuser')")
    group.add_argument('--grad-accum-steps', type=positive_int, default=1, metavar='N',
                       help='the number of steps to accumulate gradients (default: 1)')
    group.add_argument('--grad-checkpointing', action='store_true', default=False,
                       help='gradient checkpointing through the model blocks / stages (less memory, more compute)')
    group.add_argument('--fast-norm', action='store_true', default=False,
                       help="timm's experimental fast normalization layers")
    group.add_argument('--model-kwargs', nargs='*', default={}, action=KeyValueArgs,
                       help='extra model keyword arguments as key=value')
    group.add_argument('--head-init-scale', default=None, type=finite_float,
                       help='multiply the initial classifier weight and bias by this factor')
    group.add_argument('--head-init-bias', default=None, type=finite_float,
                       help='initial value of the classifier bias')
    group.add_argument('--torchcompile-mode', type=str, default=None,
                       help='torch.compile mode (default: None)')
    scripting = group.add_mutually_exclusive_group()
    scripting.add_argument('--torchscript', dest='torchscript', action='store_true',
                           help='torch.jit.script the whole model')
    scripting.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                           help='torch.compile the model and the training loss with this backend (default when '
                                'given without a value: inductor)')


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """Device, mixed precision and DDP options (timm)."""
    group = parser.add_argument_group('Device parameters')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=device_name,
                       help='device to use for training (default: cuda when available, else cpu)')
    group.add_argument('--amp', action='store_true', default=False,
                       help='use mixed precision (float16 with a grad scaler on CUDA, bfloat16 autocast on CPU)')
    group.add_argument('--amp-dtype', default='float16', type=str, choices=('float16', 'bfloat16'),
                       help='lower precision AMP dtype on CUDA (default: float16; CPU always uses bfloat16)')
    group.add_argument('--model-dtype', default=None, type=str, choices=MODEL_DTYPES,
                       help='train the model (weights and inputs) in this dtype instead of float32, without AMP '
                            '(default: None = float32)')
    group.add_argument('--no-ddp-bb', action='store_true', default=False,
                       help='force broadcast buffers for native DDP to off')
    group.add_argument('--synchronize-step', action='store_true', default=False,
                       help='synchronize the accelerator at the end of every optimizer update')
    group.add_argument('--local_rank', '--local-rank', default=0, type=non_negative_int, help=argparse.SUPPRESS)
    group.add_argument('--device-modules', default=None, type=str, nargs='+',
                       help='Python modules to import before the device is set up (device backend plug-ins)')


def add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    """Optimizer and gradient clipping (timm)."""
    group = parser.add_argument_group('Optimizer parameters')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER',
                       help='optimizer (default: "sgd")')
    group.add_argument('--opt-eps', default=None, type=positive_float, metavar='EPSILON',
                       help='optimizer epsilon (default: None, use opt default)')
    group.add_argument('--opt-betas', default=None, type=fraction, nargs='+', metavar='BETA',
                       help='optimizer betas (default: None, use opt default)')
    group.add_argument('--momentum', type=fraction, default=0.9, metavar='M',
                       help='optimizer momentum, in [0, 1) (default: 0.9)')
    group.add_argument('--weight-decay', type=non_negative_float, default=2e-5,
                       help='weight decay (default: 2e-5); constant unless --wd_min enables the cyclical schedule')
    group.add_argument('--clip-grad', type=positive_float, default=None, metavar='NORM',
                       help='clip gradient norm (default: None, no clipping); --clip_min overrides it with a '
                            'cyclical threshold')
    group.add_argument('--clip-mode', type=str, default='norm', choices=('norm', 'value', 'agc'),
                       help='gradient clipping mode (default: "norm")')
    group.add_argument('--layer-decay', type=positive_float, default=None, help='layer-wise learning rate decay')
    group.add_argument('--layer-decay-min-scale', type=non_negative_float, default=0,
                       help='lower bound of the layer-wise learning rate scale (default: 0)')
    group.add_argument('--layer-decay-no-opt-scale', type=non_negative_float, default=None,
                       help='layers whose layer-decay scale falls below this value are not optimized (frozen)')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=KeyValueArgs,
                       help='extra optimizer keyword arguments as key=value')


def add_scheduler_args(parser: argparse.ArgumentParser) -> None:
    """Learning-rate schedule and epochs (timm's scheduler factory arguments)."""
    group = parser.add_argument_group('Learning rate schedule parameters')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER',
                       help='LR scheduler: timm\'s types or "onecycle" (default: "cosine")')
    group.add_argument('--sched-on-updates', action='store_true', default=False,
                       help='apply the LR scheduler step on update instead of epoch end')
    group.add_argument('--lr', type=positive_float, default=None, metavar='LR',
                       help='learning rate, overrides lr-base if set (default: None)')
    group.add_argument('--lr-base', type=positive_float, default=0.1, metavar='LR',
                       help='base learning rate: lr = lr_base * global_batch_size / base_size')
    group.add_argument('--lr-base-size', type=positive_int, default=256, metavar='DIV',
                       help='base learning rate batch size (divisor, default: 256)')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE', choices=LR_BASE_SCALES,
                       help='base learning rate vs batch_size scaling ("linear", "sqrt", based on opt if empty)')
    group.add_argument('--lr-noise', type=non_negative_float, nargs='+', action=Ascending, default=None,
                       metavar='pct, pct',
                       help='learning rate noise on/off epoch percentages')
    group.add_argument('--lr-noise-pct', type=non_negative_float, default=0.67, metavar='PERCENT',
                       help='learning rate noise limit percent (default: 0.67)')
    group.add_argument('--lr-noise-std', type=non_negative_float, default=1.0, metavar='STDDEV',
                       help='learning rate noise std-dev (default: 1.0)')
    group.add_argument('--lr-cycle-mul', type=positive_float, default=1.0, metavar='MULT',
                       help='learning rate cycle len multiplier (default: 1.0)')
    group.add_argument('--lr-cycle-decay', type=positive_float, default=0.5, metavar='MULT',
                       help='amount to decay each learning rate cycle (default: 0.5)')
    group.add_argument('--lr-cycle-limit', type=positive_int, default=1, metavar='N',
                       help='learning rate cycle limit, cycles enabled if > 1')
    group.add_argument('--lr-k-decay', type=positive_float, default=1.0,
                       help='learning rate k-decay for cosine/poly (default: 1.0)')
    group.add_argument('--warmup-lr', type=non_negative_float, default=1e-5, metavar='LR',
                       help='warmup learning rate (default: 1e-5)')
    group.add_argument('--min-lr', type=non_negative_float, default=0, metavar='LR',
                       help='lower lr bound for cyclic schedulers that hit 0 (default: 0)')
    group.add_argument('--epochs', type=positive_int, default=300, metavar='N',
                       help='number of epochs to train (default: 300)')
    group.add_argument('--epoch-repeats', type=non_negative_float, default=0., metavar='N',
                       help='epoch repeat multiplier of an iterable dataset (number of passes per epoch)')
    group.add_argument('--start-epoch', default=None, type=non_negative_int, metavar='N',
                       help='manual epoch number (useful on restarts)')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=non_negative_int, nargs='+',
                       action=Ascending, metavar='MILESTONES',
                       help='list of decay epoch indices for multistep lr. must be increasing')
    group.add_argument('--decay-epochs', type=positive_float, default=90, metavar='N',
                       help='epoch interval to decay LR')
    group.add_argument('--warmup-epochs', type=non_negative_int, default=5, metavar='N',
                       help='epochs to warmup LR, if scheduler supports')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='exclude warmup period from decay schedule.')
    group.add_argument('--cooldown-epochs', type=non_negative_int, default=0, metavar='N',
                       help='epochs to cooldown LR at min_lr, after cyclic schedule ends')
    group.add_argument('--patience-epochs', type=non_negative_int, default=10, metavar='N',
                       help='patience epochs for Plateau LR scheduler (default: 10)')
    group.add_argument('--decay-rate', '--dr', type=positive_float, default=0.1, metavar='RATE',
                       help='LR decay rate (default: 0.1)')
    group.add_argument(*both_spellings('--onecycle-pct-start'), dest='onecycle_pct_start', type=finite_float,
                       default=0.3, metavar='FRACTION',
                       help='--sched onecycle: fraction of the cycle spent warming up from lr / div-factor to lr '
                            '(default: 0.3; --warmup-* do not apply)')
    group.add_argument(*both_spellings('--onecycle-div-factor'), dest='onecycle_div_factor', type=finite_float,
                       default=25.0, metavar='DIV', help='--sched onecycle: lr / initial lr (default: 25)')
    group.add_argument(*both_spellings('--onecycle-final-div-factor'), dest='onecycle_final_div_factor',
                       type=finite_float, default=1e4, metavar='DIV',
                       help='--sched onecycle: initial lr / final lr (default: 1e4; --min-lr does not apply)')
    group.add_argument(*both_spellings('--onecycle-anneal'), dest='onecycle_anneal', default='cos',
                       choices=ONECYCLE_ANNEAL, help='--sched onecycle: annealing curve (default: cos)')


def add_augmentation_args(parser: argparse.ArgumentParser) -> None:
    """Data augmentation, Mixup/CutMix and regularization (timm)."""
    group = parser.add_argument_group('Augmentation and regularization parameters')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='disable all training augmentation, override other train aug args')
    group.add_argument('--train-transform', '--train_transform', default='timm', choices=TRAIN_TRANSFORMS,
                       help="training transform: 'timm' (RandomResizedCrop, --scale/--ratio, --color-jitter) or "
                            "'cifar' (random crop of the image zero-padded by --crop-padding, then --hflip; --aa and "
                            "--reprob apply, --scale/--ratio/--color-jitter do not; evaluation without a center "
                            "crop unless --crop-pct) (default: timm)")
    group.add_argument('--crop-padding', '--crop_padding', type=non_negative_int, default=4, metavar='PX',
                       help="zero padding on each side before the random crop of --train-transform cifar (default: 4)")
    group.add_argument('--train-crop-mode', type=str, default=None, choices=TRAIN_CROP_MODES,
                       help="training crop mode of timm's transforms (e.g. 'rrc', 'rkrc', 'rkrr')")
    group.add_argument('--scale', type=positive_float, nargs='+', action=Ascending, default=[0.08, 1.0],
                       metavar='PCT',
                       help='random resize scale (default: 0.08 1.0)')
    group.add_argument('--ratio', type=positive_float, nargs='+', action=Ascending, default=[3. / 4., 4. / 3.],
                       metavar='RATIO',
                       help='random resize aspect ratio (default: 0.75 1.33)')
    group.add_argument('--hflip', type=probability, default=0.5, help='horizontal flip training aug probability')
    group.add_argument('--vflip', type=probability, default=0., help='vertical flip training aug probability')
    group.add_argument('--color-jitter', type=non_negative_float, default=0.4, metavar='PCT',
                       help='color jitter factor (default: 0.4)')
    group.add_argument('--color-jitter-prob', type=probability, default=None, metavar='PCT',
                       help='probability of applying color jitter (default: None = always)')
    group.add_argument('--grayscale-prob', type=probability, default=None, metavar='PCT',
                       help='probability of random grayscale conversion (default: None = never)')
    group.add_argument('--gaussian-blur-prob', type=probability, default=None, metavar='PCT',
                       help='probability of random gaussian blur (default: None = never)')
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help='use AutoAugment policy. "v0" or "original". (default: None)')
    group.add_argument('--aug-repeats', type=non_negative_float, default=0,
                       help='number of augmentation repetitions (distributed training only) (default: 0)')
    group.add_argument('--aug-splits', type=non_negative_int, default=0,
                       help='number of augmentation splits (default: 0, valid: 0 or >=2)')
    group.add_argument('--reprob', type=probability, default=0., metavar='PCT',
                       help='random erase prob (default: 0.)')
    group.add_argument('--remode', type=str, default='pixel', choices=RANDOM_ERASE_MODES,
                       help='random erase mode (default: "pixel")')
    group.add_argument('--recount', type=positive_int, default=1, help='random erase count (default: 1)')
    group.add_argument('--resplit', action='store_true', default=False,
                       help='do not random erase first (clean) augmentation split')
    group.add_argument('--mixup', type=non_negative_float, default=0.0,
                       help='mixup alpha, mixup enabled if > 0. (default: 0.)')
    group.add_argument('--cutmix', type=non_negative_float, default=0.0,
                       help='cutmix alpha, cutmix enabled if > 0. (default: 0.)')
    group.add_argument('--cutmix-minmax', type=probability, nargs='+', action=Ascending, default=None,
                       help='cutmix min/max ratio, overrides alpha and enables cutmix if set (default: None)')
    group.add_argument('--mixup-prob', type=probability, default=1.0,
                       help='probability of performing mixup or cutmix when either/both is enabled')
    group.add_argument('--mixup-switch-prob', type=probability, default=0.5,
                       help='probability of switching to cutmix when both mixup and cutmix enabled')
    group.add_argument('--mixup-mode', type=str, default='batch', choices=MIXUP_MODES,
                       help='how to apply mixup/cutmix params. Per "batch", "pair", or "elem"')
    group.add_argument('--mixup-off-epoch', default=0, type=non_negative_int, metavar='N',
                       help='turn off mixup after this epoch, disabled if 0 (default: 0)')
    group.add_argument('--train-interpolation', type=str, default='random', choices=TRAIN_INTERPOLATIONS,
                       help='training interpolation (random, bilinear, bicubic default: "random")')
    group.add_argument('--drop', type=fraction, default=0.0, metavar='PCT', help='dropout rate (default: 0.)')
    group.add_argument('--drop-connect', type=finite_float, default=None, metavar='PCT',
                       help='drop connect rate, deprecated in timm (refused: use --drop-path)')
    group.add_argument('--drop-path', type=fraction, default=None, metavar='PCT',
                       help='drop path rate (default: None)')
    group.add_argument('--drop-block', type=fraction, default=None, metavar='PCT',
                       help='drop block rate (default: None)')


def add_batchnorm_args(parser: argparse.ArgumentParser) -> None:
    """BatchNorm overrides and distributed BatchNorm (timm)."""
    group = parser.add_argument_group('Batch norm parameters', 'Only works with gen_efficientnet based models '
                                                                'currently.')
    group.add_argument('--bn-momentum', type=probability, default=None,
                       help='BatchNorm momentum override (if not None)')
    group.add_argument('--bn-eps', type=positive_float, default=None, help='BatchNorm epsilon override (if not None)')
    group.add_argument('--sync-bn', action='store_true', help='enable synchronized BatchNorm.')
    group.add_argument('--dist-bn', type=str, default='reduce', choices=('broadcast', 'reduce', ''),
                       help='distribute BatchNorm stats between nodes after each epoch ("broadcast", "reduce", '
                            'or "")')
    group.add_argument('--split-bn', action='store_true',
                       help='enable separate BN layers per augmentation split.')


def add_ema_args(parser: argparse.ArgumentParser) -> None:
    """Model weight EMA (timm)."""
    group = parser.add_argument_group('Model exponential moving average parameters')
    group.add_argument('--model-ema', action='store_true', default=False,
                       help='enable tracking moving average of model weights.')
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                       help='force ema to be tracked on CPU, rank=0 node only. Disables EMA validation.')
    group.add_argument('--model-ema-decay', type=probability, default=0.9998,
                       help='decay factor for model weights moving average (default: 0.9998)')
    group.add_argument('--model-ema-warmup', action='store_true',
                       help='enable warmup for model EMA decay.')


def add_misc_args(parser: argparse.ArgumentParser) -> None:
    """Seed, logging, workers, output folder and the checkpoint metric (timm)."""
    group = parser.add_argument_group('Miscellaneous parameters')
    group.add_argument('--seed', type=seed, default=42, metavar='S', help='random seed (default: 42)')
    group.add_argument('--worker-seeding', type=str, default='all',
                       help="data-loader worker seeding mode, 'all' or 'part' (default: all)")
    group.add_argument('--log-interval', type=positive_int, default=50, metavar='N',
                       help='how many batches to wait before logging training status')
    group.add_argument('--val-interval', type=positive_int, default=1, metavar='N',
                       help='validate and checkpoint every N epochs (the last epoch always) (default: 1)')
    group.add_argument('--recovery-interval', type=non_negative_int, default=0, metavar='N',
                       help='write a recovery checkpoint every N optimizer updates (default: 0 = off)')
    group.add_argument('--checkpoint-hist', type=positive_int, default=10, metavar='N',
                       help='number of checkpoints to keep (default: 10)')
    group.add_argument('-j', '--workers', type=non_negative_int, default=4, metavar='N',
                       help='how many training processes to use (default: 4)')
    group.add_argument('--save-images', action='store_true', default=False,
                       help='save the input batch as a JPEG at every log interval (debugging)')
    group.add_argument('--pin-mem', action='store_true', default=False,
                       help='pin CPU memory in DataLoader for more efficient (sometimes) transfer to GPU.')
    group.add_argument('--no-prefetcher', action='store_true', default=False, help='disable fast prefetcher')
    group.add_argument('--output', default='', type=writable_folder, metavar='PATH',
                       help='path to output folder (default: none, current dir)')
    group.add_argument('--experiment', default='', type=relative_name, metavar='NAME',
                       help='name of train experiment, name of sub-folder for output')
    group.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC',
                       help='best metric (default: "top1")')
    group.add_argument('--tta', type=non_negative_int, default=0, metavar='N',
                       help='test-time augmentation factor of the validation pass, 0 = none (only 0 is '
                            'accepted: the validation loader yields one view per image)')
    group.add_argument('--use-multi-epochs-loader', action='store_true', default=False,
                       help="timm's multi-epochs loader (workers kept across epochs)")


def add_loss_args(parser: argparse.ArgumentParser) -> None:
    """timm's loss selection and label smoothing, the cyclical focal loss (arXiv 2202.08978), the calibration
    losses (one flag per factory keyword) and the held-out calibration split."""
    group = parser.add_argument_group('Loss parameters')
    group.add_argument('--jsd-loss', action='store_true', default=False,
                       help='enable Jensen-Shannon Divergence + CE loss. Use with `--aug-splits`.')
    group.add_argument('--bce-loss', action='store_true', default=False,
                       help='enable BCE loss w/ Mixup/CutMix use.')
    group.add_argument('--bce-sum', action='store_true', default=False,
                       help='sum over classes when using BCE loss.')
    group.add_argument('--bce-target-thresh', type=probability, default=None,
                       help='threshold for binarizing softened BCE targets (default: None, disabled).')
    group.add_argument('--bce-pos-weight', type=positive_float, default=None,
                       help='positive-class weight of the BCE loss (default: None)')
    group.add_argument('--loss', type=str, default=None, choices=ALL_LOSS_TYPES, metavar='NAME',
                       help=f'loss type: timm\'s or a cfl-timm one, any of {", ".join(ALL_LOSS_TYPES)} '
                            '(default: ce)')
    group.add_argument('--smoothing', type=fraction, default=None,
                       help='label smoothing (default: 0.1 for timm losses; the published eps for focal losses: '
                            '0.1 for asym/asym-cyclical, 0 for sym; 0 for the calibration losses, which accept '
                            'no other value except ce-brier). cfl-timm losses apply it themselves, also to '
                            'Mixup/CutMix targets (Mixup then smooths nothing)')
    group.add_argument(*both_spellings('--loss_reduction'), dest=REDUCTION_KWARG, default=None,
                       choices=('mean', 'sum', 'none'),
                       help="reduction of a cfl-timm loss over the batch (default: mean; 'sum' with --clip-grad 2 "
                            'reproduces the FC / AdaFocal / Dual focal protocols)')
    add_focal_loss_args(parser)
    group = parser.add_argument_group(
        'Calibration losses (one flag per factory keyword; see docs/calibration-losses.md)')
    for key, value in LOSS_FLAG_KWARGS.items():
        defaults = ', '.join(f'{defaults[key]} for {name}' for name, defaults in CALIBRATION_LOSS_DEFAULTS.items()
                             if key in defaults)
        aliases = both_spellings(ADAFOCAL_FLAG_ALIASES[key]) if key in ADAFOCAL_FLAG_ALIASES else []
        group.add_argument(*both_spellings('--' + key), *aliases, dest=key,
                           type=_FLAG_TYPES[type(value)],
                           default=None, metavar=type(value).__name__.upper(), help=f'(default: {defaults})')
    group.add_argument('--holdout', type=positive_int, default=None, metavar='N',
                       help='carve a stratified held-out calibration split of N images (fixed by --seed, eval '
                            'transforms) from the training set: feeds AdaFocal\'s per-epoch update, logs '
                            'holdout_top1/nll/ece, can select the best checkpoint (default: none)')
    group.add_argument('--checkpoint-metric', '--checkpoint_metric', dest='checkpoint_metric', default=None,
                       choices=tuple(HOLDOUT_METRICS), metavar='NAME',
                       help=f'select the best checkpoint on the held-out split ({", ".join(HOLDOUT_METRICS)}; '
                            'needs --holdout; the evaluation/test split is never used for it) instead of '
                            '--eval-metric (default: --eval-metric)')


# The spellings of AdaFocal's flags in the multi-loss CIFAR seed script (ML), accepted as aliases of ours; its
# --adafocal-lambda, --adafocal-gamma-max/-min and --adafocal-update-every already are our spellings.
ADAFOCAL_FLAG_ALIASES = {'adafocal_bins': '--adafocal-num-bins', 'adafocal_gamma_init': '--adafocal-gamma-initial',
                         'adafocal_switch': '--adafocal-switch-pt'}

# The calibration losses' factory keywords with their official defaults (one CLI flag each).
LOSS_FLAG_KWARGS = {key: value for defaults in CALIBRATION_LOSS_DEFAULTS.values() for key, value in defaults.items()}
# Their declared types: numbers must be finite (the ranges are checked by the loss factory, the one place that
# knows them, through check_loss_args's dry construction); names stay strings.
_FLAG_TYPES = {float: finite_float, int: integer, str: str}


def add_subset_args(parser: argparse.ArgumentParser) -> None:
    """Training subsets for limited and imbalanced data."""
    group = parser.add_argument_group('Training subsets (limited and imbalanced data)')
    group.add_argument(*both_spellings('--train_size'), dest='train_size', type=positive_int, default=None,
                       help='train on N images of the training set (default: all)')
    group.add_argument(*both_spellings('--train_size_mode'), dest='train_size_mode', default='first',
                       choices=SUBSET_MODES,
                       help="how --train_size picks: 'first' N images as published, or 'stratified' (equal "
                            'per class, first images of each class) (default: first)')
    group.add_argument(*both_spellings('--read_sampler'), dest='read_sampler', type=existing_file, default=None,
                       metavar='CSV',
                       help='train on the 0-based training-set indices listed in this CSV (default: none)')
    group.add_argument(*both_spellings('--imbalance_ratio'), dest='imbalance_ratio', type=at_least_one, default=None,
                       metavar='RHO', help='long-tailed subset n_c = n_max * rho^(-c/(K-1)) (default: none)')
    group.add_argument(*both_spellings('--imbalance_max'), dest='imbalance_max', type=positive_int, default=None,
                       metavar='N',
                       help='head-class count n_max of the long-tailed subset (default: smallest class size)')
    group.add_argument(*both_spellings('--log_shard_indices'), dest='log_shard_indices',
                       action='store_true', default=False,
                       help='write the training-set indices each rank draws in the first epoch to shards.json')


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    """Metric logging to Weights & Biases (timm's flags) and TensorBoard."""
    group = parser.add_argument_group('Logging parameters (optional extras: pip install "cfl-timm[wandb]" / '
                                      '"cfl-timm[tensorboard]")')
    group.add_argument('--log-wandb', action='store_true', default=False,
                       help='log training and validation metrics to Weights & Biases')
    group.add_argument('--wandb-project', default=None, type=str, help='W&B project name')
    group.add_argument('--wandb-tags', default=[], type=str, nargs='+', help='W&B run tags')
    group.add_argument('--wandb-resume-id', default='', type=str, metavar='ID',
                       help='resume this W&B run (with --resume)')
    group.add_argument('--log-tensorboard', default='', type=writable_folder, metavar='DIR',
                       help='also write the logged scalars as TensorBoard event files to DIR (default: off)')
    group.add_argument('--no-plots', '--no-plot', dest='no_plots', action='store_true', default=False,
                       help='do not draw curves.png, ece_vs_accuracy.png and evidence.png into the run folder at the '
                            'end of the run (they need matplotlib: pip install "cfl-timm[plot]")')


def add_naflex_args(parser: argparse.ArgumentParser) -> None:
    """timm's NaFlex variable-resolution loader flags (parsed; training with them is refused, see check)."""
    group = parser.add_argument_group('NaFlex loader parameters (not supported by this train.py)')
    group.add_argument('--naflex-loader', action='store_true', default=False,
                       help='NaFlex loader for NaFlex-capable models (refused here)')
    group.add_argument('--naflex-train-seq-lens', type=positive_int, nargs='+', default=[128, 256, 576, 784, 1024],
                       help='NaFlex training sequence lengths')
    group.add_argument('--naflex-max-seq-len', type=positive_int, default=576,
                       help='NaFlex fixed maximum sequence length (validation)')
    group.add_argument('--naflex-patch-sizes', type=positive_int, nargs='+', default=None,
                       help='NaFlex patch sizes for variable patch-size training')
    group.add_argument('--naflex-patch-size-probs', type=probability, nargs='+', default=None,
                       help='NaFlex probability of each patch size (uniform if not given)')
    group.add_argument('--naflex-loss-scale', default='linear', type=str,
                       help='NaFlex loss scaling by batch size: none, sqrt or linear')
    group.add_argument('--naflex-patchify-channels-first', action='store_true', default=False,
                       help='NaFlex patches in channels-first (C-P-P) layout')


def add_distillation_args(parser: argparse.ArgumentParser) -> None:
    """Knowledge distillation through timm's distillation tasks (``timm.task``)."""
    group = parser.add_argument_group('Knowledge distillation parameters')
    group.add_argument('--kd-model-name', default=None, type=str,
                       help='teacher model name; enables knowledge distillation (default: None)')
    group.add_argument('--kd-pretrained-path', default=None, type=existing_file, metavar='PATH',
                       help='teacher weights file (a state dict or a train.py checkpoint) instead of the '
                            "teacher's pretrained hub weights")
    group.add_argument('--kd-distill-type', default='logit', type=str, choices=KD_DISTILL_TYPES,
                       help='logit: match output logits; feature: match pooled features; token: models with a '
                            'distillation head (default: logit)')
    group.add_argument('--kd-loss-type', default='kl', type=str,
                       help="logit distillation loss; timm implements only 'kl' (default: kl)")
    group.add_argument('--distill-loss-weight', default=None, type=non_negative_float,
                       help='weight of the distillation loss; with it the weights are independent (task weight '
                            'default 1.0)')
    group.add_argument('--task-loss-weight', default=None, type=non_negative_float,
                       help='weight of the task loss; given alone, the distillation weight is 1 - this '
                            '(default: 1.0)')
    group.add_argument('--kd-temperature', default=4.0, type=positive_float,
                       help='softmax temperature of the distillation loss (default: 4.0)')
    group.add_argument('--kd-student-feature-dim', default=None, type=positive_int,
                       help='student feature dimension for feature distillation (default: detected)')
    group.add_argument('--kd-teacher-feature-dim', default=None, type=positive_int,
                       help='teacher feature dimension for feature distillation (default: detected)')
    group.add_argument('--kd-token-distill-type', default='soft', type=str, choices=KD_TOKEN_DISTILL_TYPES,
                       help='token distillation: soft (KL with temperature) or hard (CE on teacher argmax)')


ARG_GROUPS: tuple[Callable[[argparse.ArgumentParser], None], ...] = (
    add_dataset_args, add_model_args, add_device_args, add_optimizer_args, add_scheduler_args,
    add_augmentation_args, add_batchnorm_args, add_ema_args, add_misc_args, add_logging_args, add_naflex_args,
    add_loss_args, add_distillation_args, add_cyclical_args, add_subset_args,
)


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every group of :data:`ARG_GROUPS` to ``parser`` (in help order) and return it."""
    for add_group in ARG_GROUPS:
        add_group(parser)
    return parser


def save_args_yaml(path: str | Path, args: Mapping[str, Any]) -> None:
    """Save the effective arguments (plain values only) as YAML, atomically."""
    plain = {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, list, tuple, dict, type(None)))}
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}
    atomic_write_text(path, yaml.safe_dump(plain, default_flow_style=False, sort_keys=True))


def load_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML config of argument values (keys in either spelling); unknown keys are an error."""
    try:
        cfg = read_config_file(path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # A run's args.yaml records its own source as 'config' ('' without -c): reusable as it is. A named config is
    # refused, never followed or ignored: configs do not include other configs.
    if cfg.get('config'):
        raise UsageError(f"Config file {path}: key 'config' is not allowed inside a config file (it names "
                         f"{cfg['config']!r}; configs do not include other configs): delete the line (a run's "
                         'args.yaml already holds every value of the config it names).')
    cfg.pop('config', None)
    # A run's args.yaml also records how many processes ran it: a fact of that run, not a flag (the launcher sets it).
    cfg.pop(WORLD_SIZE_KEY, None)
    actions = {a.dest: a for a in parser._actions}
    resolved, unknown = {}, []
    for key, value in cfg.items():
        dest = str(key).lstrip('-')
        dest = dest if dest in actions else dest.replace('-', '_')
        if dest not in actions:
            unknown.append(key)
            continue
        try:
            resolved[dest] = coerce_config_value(actions[dest], key, value, path)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if unknown:
        hints = {key: suggest_flag(str(key), list(actions)) for key in unknown}
        hints = ''.join(f' ({key}: did you mean {hint}?)' for key, hint in hints.items() if hint)
        raise UsageError(f'Unknown keys in config {path}: {unknown}{hints}; keys are flag names such as model, '
                         'batch_size, focal_loss, T_min.')
    return resolved


def check_model_args(args: argparse.Namespace) -> None:
    """The model name, and the start epoch inside the epoch count (ranges of single flags are in their declarations,
    :mod:`cfl_timm.training.arg_types`)."""
    if not is_model(args.model):
        raise ValueError(f"--model: unknown model '{args.model}'; list the valid names with timm.list_models().")
    if args.start_epoch is not None and not 0 <= args.start_epoch < args.epochs:
        raise ValueError(f'--start-epoch must be in [0, --epochs) = [0, {args.epochs}), got {args.start_epoch}.')


def check_augmentation_args(args: argparse.Namespace) -> None:
    """Augmentation splits and what depends on them."""
    if args.aug_splits == 1:
        raise ValueError('--aug-splits must be 0 or >= 2, got 1.')
    if args.split_bn and args.aug_splits < 2:
        raise ValueError('--split-bn needs --aug-splits >= 2.')
    if args.aa:  # timm parses the policy only when it builds the training transform: a dry build, on one size
        from timm.data import create_transform
        try:
            create_transform(32, is_training=True, auto_augment=args.aa)
        except (AssertionError, KeyError, ValueError, IndexError) as e:
            raise ValueError(f'--aa {args.aa!r} is not a timm augmentation policy ({e or type(e).__name__}); e.g. '
                             'rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original, originalr, v0, 3a.') from None
    if args.train_transform == 'cifar' and args.aug_splits > 1:
        raise ValueError("--train-transform cifar cannot be combined with --aug-splits (AugMix splits are built "
                         "on timm's transform); use --train-transform timm.")


def loss_name(args: argparse.Namespace) -> str:
    """The selected loss type: ``--focal_loss`` (published flag), else ``--loss``, else timm's flags / 'ce'."""
    if args.focal_loss is not None:
        return args.focal_loss
    if args.loss is not None:
        return args.loss
    return 'jsd' if args.jsd_loss else 'bce' if args.bce_loss else 'ce'


def check_loss_args(args: argparse.Namespace) -> None:
    """timm's loss selection, label smoothing, the cfl-timm loss keywords (checked by a dry construction through
    :func:`cfl_timm.create_loss`, the one place that knows them) and the held-out split they may need."""
    if args.jsd_loss and args.aug_splits < 2:
        raise ValueError('--jsd-loss needs --aug-splits >= 2.')
    if args.jsd_loss and mixup_active(args):
        raise ValueError('--jsd-loss cannot be combined with Mixup/CutMix (--mixup, --cutmix, --cutmix-minmax): the '
                         'JSD loss takes hard labels, Mixup makes soft targets.')
    if args.focal_loss is not None and args.loss not in (None, 'ce', args.focal_loss):
        raise ValueError(f'--focal_loss {args.focal_loss} and --loss {args.loss} select two losses; give one.')
    name = loss_name(args)
    own = [k for k in tuple(LOSS_FLAG_KWARGS) + ('gamma', 'gamma_hc', 'gamma_pos', 'gamma_neg', 'soft_target_mode',
                                                  REDUCTION_KWARG) if getattr(args, k, None) is not None]
    if name in LOSS_TYPES:
        others = [flag for flag, on in (('--jsd-loss', args.jsd_loss), ('--bce-loss', args.bce_loss)) if on]
        if others:
            raise ValueError(f'--loss {name} replaces timm\'s loss; it cannot be combined with {", ".join(others)}.')
        kwargs = loss_kwargs(args, name, num_epochs=args.epochs + args.cooldown_epochs,
                             soft_targets=mixup_active(args))
        try:
            needs_holdout = hasattr(create_loss(**kwargs), 'update_from_validation')
        except ValueError as e:
            raise ValueError(f'--loss {name}: {e}' + (' (Mixup/CutMix is on: --mixup, --cutmix or --cutmix-minmax)'
                                                      if kwargs['soft_targets'] and 'soft' in str(e) else '')) from e
    elif own:
        flags = ', '.join('--' + k.replace('_', '-') for k in own)
        raise ValueError(f'{flags} only apply to the cfl-timm loss types ({", ".join(LOSS_TYPES)}), not to the '
                         f'timm loss {name!r}.')
    else:
        needs_holdout = False
    if needs_holdout and args.holdout is None:
        raise ValueError(f'--loss {name} updates its state on held-out training images every epoch: pass '
                         '--holdout N (e.g. 5000 for CIFAR); the evaluation/test split is never used for it.')
    bce_options = [flag for flag, given in (('--bce-sum', args.bce_sum), ('--bce-target-thresh',
                   args.bce_target_thresh is not None), ('--bce-pos-weight', args.bce_pos_weight is not None)) if given]
    if bce_options and name != 'bce':
        raise ValueError(f'{", ".join(bce_options)}: for the BCE loss (--bce-loss) only, not the {name!r} loss.')
    if args.checkpoint_metric is not None and args.holdout is None:
        raise ValueError(f'--checkpoint-metric {args.checkpoint_metric} selects on the held-out split: pass '
                         '--holdout N (the evaluation/test split is never used for checkpoint selection here).')


def check_schedule_args(args: argparse.Namespace) -> None:
    """The cyclical flags (their one check, shared with a patched timm checkout) and the OneCycle settings."""
    check_cyclical_args(args)
    if args.sched == 'onecycle':  # the scheduler's own checks, on a stand-in optimizer
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        OneCycleLRScheduler(probe, t_initial=args.epochs, pct_start=args.onecycle_pct_start,
                            div_factor=args.onecycle_div_factor, final_div_factor=args.onecycle_final_div_factor,
                            anneal_strategy=args.onecycle_anneal)


def check_subset_args(args: argparse.Namespace) -> None:
    """At most one training subset, with a sane size or an existing sampler file."""
    subsets = [f for f, v in (('--train_size', args.train_size), ('--read_sampler', args.read_sampler),
                              ('--imbalance_ratio', args.imbalance_ratio)) if v is not None]
    if len(subsets) > 1:
        raise ValueError(f'Choose one training subset, got {" and ".join(subsets)}.')


def check_dataset_args(args: argparse.Namespace) -> None:
    """A dataset that can be found: the offline digits, a remote dataset, a torchvision root or a folder."""
    data_dir = args.data_dir or args.data
    dataset_name = args.dataset or ''
    check_dataset_name(dataset_name)
    if is_digits_dataset(dataset_name) or dataset_name.startswith(('hfds/', 'hfids/', 'tfds/', 'wds/')):
        return
    if dataset_name.startswith('torch/'):
        if not args.dataset_download and not (data_dir and os.path.isdir(data_dir)):
            raise ValueError(f'Dataset root {data_dir!r} does not exist; pass --data-dir (or --dataset-download '
                             'to fetch it).')
        return
    if not data_dir:
        raise ValueError('No dataset path: pass --data-dir DIR (a folder with train/ and val/ class folders) or '
                         '--dataset sklearn/digits.')
    if not os.path.isdir(data_dir):
        raise ValueError(f'Dataset path does not exist: {data_dir}')
    for split, synonyms in ((args.train_split, TRAIN_SPLIT_NAMES), (args.val_split, EVAL_SPLIT_NAMES)):
        names = [split] + (list(synonyms) if split in synonyms else [])
        folders = [os.path.join(data_dir, n) for n in names if os.path.isdir(os.path.join(data_dir, n))]
        if not folders or not any(os.scandir(folders[0])):
            raise ValueError(f'Dataset path {data_dir} has no non-empty {split!r} folder of class folders '
                             f'(looked for {names}).')


def check_device_args(args: argparse.Namespace) -> None:
    """Model dtype against AMP, and the compile / TorchScript options."""
    if args.model_dtype not in (None, 'float32') and args.amp:
        raise ValueError(f'--model-dtype {args.model_dtype} cannot be combined with --amp (AMP keeps float32 '
                         'weights); choose one.')
    if args.torchcompile_mode is not None and not args.torchcompile:
        raise ValueError('--torchcompile-mode needs --torchcompile.')
    if args.torchscript and args.sync_bn:
        raise ValueError('--torchscript cannot be combined with --sync-bn (a scripted model cannot be converted).')
    if args.torchscript and args.kd_model_name:
        raise ValueError('--torchscript cannot be combined with --kd-model-name (timm\'s distillation tasks wrap '
                         'the student in Python modules).')


def check_misc_args(args: argparse.Namespace) -> None:
    """Intervals, worker seeding, and upstream options this train.py refuses (with the reason)."""
    if args.worker_seeding not in WORKER_SEEDING:
        raise ValueError(f"--worker-seeding must be one of {WORKER_SEEDING}, got '{args.worker_seeding}'.")
    if args.tta != 0:
        raise ValueError(f'--tta {args.tta} is refused: train.py\'s validation loader yields one view per image, '
                         'so there is nothing to average (as in timm\'s train.py); use 0.')
    if args.drop_connect is not None:
        raise ValueError('--drop-connect is deprecated in timm and its train.py ignores it; use --drop-path.')
    check_worker_socket_dir(args.workers)


def check_logging_args(args: argparse.Namespace) -> None:
    """W&B options and the optional logging extras (the pip command when missing)."""
    if args.wandb_resume_id and not args.resume:
        raise ValueError('--wandb-resume-id needs --resume (it continues the W&B run of a resumed training).')
    if not args.log_wandb and (args.wandb_project or args.wandb_tags or args.wandb_resume_id):
        raise ValueError('--wandb-project, --wandb-tags and --wandb-resume-id need --log-wandb.')
    check_logger_extras(args.log_wandb, bool(args.log_tensorboard))


def check_naflex_args(args: argparse.Namespace) -> None:
    """NaFlex training is refused, with the reason."""
    if args.naflex_loader:
        raise ValueError('--naflex-loader is not supported by this train.py: the NaFlex loader yields patch '
                         'dictionaries of variable sequence length for NaFlex ViTs, which the calibration metrics, '
                         'subsets and cyclical schedules here do not handle; use timm\'s own train.py for NaFlex.')


def check_distillation_args(args: argparse.Namespace) -> None:
    """The teacher, its weights file, the loss weights and the distillation loss type."""
    if args.kd_model_name is None:
        given = [flag for flag, value in (('--kd-pretrained-path', args.kd_pretrained_path),
                                          ('--task-loss-weight', args.task_loss_weight),
                                          ('--distill-loss-weight', args.distill_loss_weight)) if value is not None]
        if given:
            raise ValueError(f'{", ".join(given)} need --kd-model-name (the teacher).')
        return
    if not is_model(args.kd_model_name):
        raise ValueError(f"Unknown teacher model '{args.kd_model_name}' (--kd-model-name); list the valid names "
                         'with timm.list_models().')
    if args.kd_loss_type != 'kl':
        raise ValueError(f"--kd-loss-type must be 'kl' (the only logit distillation loss timm implements), got "
                         f"'{args.kd_loss_type}'.")
    if args.jsd_loss:
        raise ValueError('--jsd-loss cannot be combined with --kd-model-name (the JSD loss needs the augmentation '
                         'splits of one batch, the distillation tasks compare single views).')


ARG_CHECKS: tuple[Callable[[argparse.Namespace], None], ...] = (
    check_model_args, check_number_args, check_device_args, check_augmentation_args, check_loss_args,
    check_distillation_args, check_schedule_args, check_subset_args, check_misc_args, check_logging_args,
    check_naflex_args, check_dataset_args, check_name_args, check_file_args,
)


def check_args(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> None:
    """Run every check of :data:`ARG_CHECKS`, before any data, model or process is touched.

    Args:
        args: The parsed arguments.
        parser: When given, the first failing check ends the program as a usage error through
            ``parser.error`` (one line ``<prog>: error: <message>``, exit status 2).

    Raises:
        ValueError: Naming the flag and its valid range or choices (only without ``parser``).
    """
    try:
        for check in ARG_CHECKS:
            check(args)
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))
