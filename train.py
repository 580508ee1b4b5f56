#!/usr/bin/env python3
"""Train an image classifier with timm's command line plus cyclical focal loss and cyclical training.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978, and "General Cyclical Training
of Neural Networks", https://arxiv.org/abs/2202.08835.

Written for this project on timm's library API (models, data, optimizers, schedulers, EMA, checkpoint saver);
the command line keeps timm's flag names, meanings and defaults, with a YAML ``-c/--config`` file whose values
become defaults that explicit flags override. The published CFL flags are accepted with their underscore
spelling and timm's dash spelling. Use ``get_args_parser()`` / ``parse_args()`` and ``main(args)`` to train
in-process; ``distributed_train.sh NUM_PROC ...`` runs it under torchrun (gloo on CPU, nccl on CUDA).
"""
import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from timm.data import AugMixDataset, Mixup, create_dataset, create_loader, resolve_data_config
from timm.layers import convert_splitbn_model, convert_sync_batchnorm
from timm.loss import create_classification_loss
from timm.models import create_model, is_model, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    CheckpointSaver,
    NativeScaler,
    accuracy,
    dispatch_clip_grad,
    distribute_bn,
    random_seed,
    setup_default_logging,
)
from timm.utils.distributed import init_distributed_device_so

from cfl_timm import (
    FOCAL_LOSS_TYPES,
    create_cyclical_schedules,
    create_focal_loss,
    cyclical_eta,
    cyclical_schedule_kwargs,
)
from cfl_timm.data import (
    SUBSET_MODES,
    DigitsDataset,
    SubsetDataset,
    class_counts,
    dataset_targets,
    is_digits_dataset,
    log_class_counts,
    patch_timm_posterize,
    select_train_subset,
)
from cfl_timm.loss_factory import DEFAULT_EPS, focal_loss_kwargs
from cfl_timm.scheduler import CyclicalValueScheduler
from cfl_timm.training import (
    SummaryWriter,
    TemperatureClassificationTask,
    atomic_write_text,
    ddp_device_ids,
    gather_objects,
    save_args_yaml,
)

_logger = logging.getLogger('train')

SOFT_TARGET_MODES = ('distribution', 'argmax')
# Split folder names timm's folder datasets accept for the default splits.
TRAIN_SPLIT_NAMES = ('train', 'training')
EVAL_SPLIT_NAMES = ('validation', 'val', 'valid', 'eval', 'evaluation')
TIMM_LOSS_TYPES = ('ce', 'bce', 'asl', 'poly', 'jsd', 'twoway', 'zlpr', 'db')


def _both(name: str) -> list[str]:
    """A flag in its underscore (published) and dash (timm) spelling: '--T_min' -> ['--T_min', '--T-min']."""
    dashed = name[:2] + name[2:].replace('_', '-')
    underscored = name[:2] + name[2:].replace('-', '_')
    return list(dict.fromkeys([name, underscored, dashed]))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """timm's training flags (names, meanings, defaults) plus the cyclical focal loss / training flags."""
    parser = argparse.ArgumentParser(description='cfl-timm training (timm command line + cyclical training)',
                                     add_help=add_help)
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML config file; its values become defaults that explicit flags override')

    group = parser.add_argument_group('Dataset parameters')
    group.add_argument('data', nargs='?', metavar='DIR', help='path to dataset (positional is *deprecated*)')
    group.add_argument('--data-dir', metavar='DIR', help='path to dataset (root dir)')
    group.add_argument('--dataset', '-d', metavar='NAME', default='',
                       help="dataset type: '' (folder with train/val), torch/cifar10, torch/cifar100, "
                            "sklearn/digits (offline), ... (default: folder)")
    group.add_argument('--train-split', metavar='NAME', default='train', help='dataset train split (default: train)')
    group.add_argument('--val-split', metavar='NAME', default='validation',
                       help='dataset validation split (default: validation)')
    group.add_argument('--dataset-download', action='store_true', default=False,
                       help='allow download of dataset for torch/ and tfds/ datasets that support it')
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME',
                       help='path to class to idx mapping file (default: "")')
    group.add_argument('--input-img-mode', default=None, type=str, help='dataset image conversion mode')

    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', default='resnet50', type=str, metavar='MODEL',
                       help='name of model to train (default: "resnet50")')
    group.add_argument('--pretrained', action='store_true', default=False,
                       help='start with pretrained version of specified network (if avail)')
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='load this checkpoint into model after initialization (default: none)')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help="resume full model and optimizer state from checkpoint; 'auto' uses last.pth.tar "
                            'of the output directory when present (default: none)')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='prevent resume of optimizer state when resuming model')
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='number of label classes (default: from the training set)')
    group.add_argument('--gp', default=None, type=str, metavar='POOL',
                       help='global pool type, one of (fast, avg, max, avgmax, avgmaxc); model default if None')
    group.add_argument('--img-size', type=int, default=None, metavar='N',
                       help='image size (default: None => model default)')
    group.add_argument('--in-chans', type=int, default=None, metavar='N',
                       help='image input channels (default: None => 3)')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N N N',
                       help='input all image dimensions (d h w, e.g. --input-size 3 224 224), model default if None')
    group.add_argument('--crop-pct', default=None, type=float, metavar='N',
                       help='input image center crop percent (for validation only)')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN',
                       help='override mean pixel value of dataset')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD',
                       help='override std deviation of dataset')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME',
                       help='image resize interpolation type (overrides model)')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N',
                       help='input batch size for training (default: 128)')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                       help='validation batch size override (default: None)')
    group.add_argument('--channels-last', action='store_true', default=False,
                       help='use channels_last memory layout')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                       help='the number of steps to accumulate gradients (default: 1)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=_KeyValue,
                       help='extra model keyword arguments as key=value')

    group = parser.add_argument_group('Device parameters')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', type=str,
                       help='device to use for training (default: cuda when available, else cpu)')
    group.add_argument('--amp', action='store_true', default=False,
                       help='use mixed precision (float16 with a grad scaler on CUDA, bfloat16 autocast on CPU)')
    group.add_argument('--amp-dtype', default='float16', type=str, choices=('float16', 'bfloat16'),
                       help='lower precision AMP dtype on CUDA (default: float16; CPU always uses bfloat16)')
    group.add_argument('--no-ddp-bb', action='store_true', default=False,
                       help='force broadcast buffers for native DDP to off')
    group.add_argument('--local_rank', '--local-rank', default=0, type=int, help=argparse.SUPPRESS)

    group = parser.add_argument_group('Optimizer parameters')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER',
                       help='optimizer (default: "sgd")')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON',
                       help='optimizer epsilon (default: None, use opt default)')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA',
                       help='optimizer betas (default: None, use opt default)')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M',
                       help='optimizer momentum (default: 0.9)')
    group.add_argument('--weight-decay', type=float, default=2e-5,
                       help='weight decay (default: 2e-5); constant unless --wd_min enables the cyclical schedule')
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM',
                       help='clip gradient norm (default: None, no clipping); --clip_min overrides it with a '
                            'cyclical threshold')
    group.add_argument('--clip-mode', type=str, default='norm', choices=('norm', 'value', 'agc'),
                       help='gradient clipping mode (default: "norm")')
    group.add_argument('--layer-decay', type=float, default=None, help='layer-wise learning rate decay')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=_KeyValue,
                       help='extra optimizer keyword arguments as key=value')

    group = parser.add_argument_group('Learning rate schedule parameters')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER',
                       help='LR scheduler (default: "cosine")')
    group.add_argument('--sched-on-updates', action='store_true', default=False,
                       help='apply the LR scheduler step on update instead of epoch end')
    group.add_argument('--lr', type=float, default=None, metavar='LR',
                       help='learning rate, overrides lr-base if set (default: None)')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                       help='base learning rate: lr = lr_base * global_batch_size / base_size')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV',
                       help='base learning rate batch size (divisor, default: 256)')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                       help='base learning rate vs batch_size scaling ("linear", "sqrt", based on opt if empty)')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct',
                       help='learning rate noise on/off epoch percentages')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT',
                       help='learning rate noise limit percent (default: 0.67)')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV',
                       help='learning rate noise std-dev (default: 1.0)')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT',
                       help='learning rate cycle len multiplier (default: 1.0)')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT',
                       help='amount to decay each learning rate cycle (default: 0.5)')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N',
                       help='learning rate cycle limit, cycles enabled if > 1')
    group.add_argument('--lr-k-decay', type=float, default=1.0,
                       help='learning rate k-decay for cosine/poly (default: 1.0)')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR',
                       help='warmup learning rate (default: 1e-5)')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR',
                       help='lower lr bound for cyclic schedulers that hit 0 (default: 0)')
    group.add_argument('--epochs', type=int, default=300, metavar='N',
                       help='number of epochs to train (default: 300)')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N',
                       help='manual epoch number (useful on restarts)')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                       help='list of decay epoch indices for multistep lr. must be increasing')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N',
                       help='epoch interval to decay LR')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N',
                       help='epochs to warmup LR, if scheduler supports')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='exclude warmup period from decay schedule.')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N',
                       help='epochs to cooldown LR at min_lr, after cyclic schedule ends')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N',
                       help='patience epochs for Plateau LR scheduler (default: 10)')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE',
                       help='LR decay rate (default: 0.1)')

    group = parser.add_argument_group('Augmentation and regularization parameters')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='disable all training augmentation, override other train aug args')
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                       help='random resize scale (default: 0.08 1.0)')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                       help='random resize aspect ratio (default: 0.75 1.33)')
    group.add_argument('--hflip', type=float, default=0.5, help='horizontal flip training aug probability')
    group.add_argument('--vflip', type=float, default=0., help='vertical flip training aug probability')
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT',
                       help='color jitter factor (default: 0.4)')
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help='use AutoAugment policy. "v0" or "original". (default: None)')
    group.add_argument('--aug-repeats', type=float, default=0,
                       help='number of augmentation repetitions (distributed training only) (default: 0)')
    group.add_argument('--aug-splits', type=int, default=0,
                       help='number of augmentation splits (default: 0, valid: 0 or >=2)')
    group.add_argument('--jsd-loss', action='store_true', default=False,
                       help='enable Jensen-Shannon Divergence + CE loss. Use with `--aug-splits`.')
    group.add_argument('--bce-loss', action='store_true', default=False,
                       help='enable BCE loss w/ Mixup/CutMix use.')
    group.add_argument('--bce-sum', action='store_true', default=False,
                       help='sum over classes when using BCE loss.')
    group.add_argument('--bce-target-thresh', type=float, default=None,
                       help='threshold for binarizing softened BCE targets (default: None, disabled).')
    group.add_argument('--loss', type=str, default=None, choices=TIMM_LOSS_TYPES,
                       help='timm loss type (default: ce; --focal_loss selects a focal-family loss instead)')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT',
                       help='random erase prob (default: 0.)')
    group.add_argument('--remode', type=str, default='pixel', help='random erase mode (default: "pixel")')
    group.add_argument('--recount', type=int, default=1, help='random erase count (default: 1)')
    group.add_argument('--resplit', action='store_true', default=False,
                       help='do not random erase first (clean) augmentation split')
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha, mixup enabled if > 0. (default: 0.)')
    group.add_argument('--cutmix', type=float, default=0.0,
                       help='cutmix alpha, cutmix enabled if > 0. (default: 0.)')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None,
                       help='cutmix min/max ratio, overrides alpha and enables cutmix if set (default: None)')
    group.add_argument('--mixup-prob', type=float, default=1.0,
                       help='probability of performing mixup or cutmix when either/both is enabled')
    group.add_argument('--mixup-switch-prob', type=float, default=0.5,
                       help='probability of switching to cutmix when both mixup and cutmix enabled')
    group.add_argument('--mixup-mode', type=str, default='batch',
                       help='how to apply mixup/cutmix params. Per "batch", "pair", or "elem"')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N',
                       help='turn off mixup after this epoch, disabled if 0 (default: 0)')
    group.add_argument('--smoothing', type=float, default=None,
                       help='label smoothing (default: 0.1 for timm losses; the published eps for focal losses: '
                            '0.1 for asym/asym-cyclical, 0 for sym)')
    group.add_argument('--train-interpolation', type=str, default='random',
                       help='training interpolation (random, bilinear, bicubic default: "random")')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout rate (default: 0.)')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT',
                       help='drop path rate (default: None)')
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT',
                       help='drop block rate (default: None)')

    group = parser.add_argument_group('Batch norm parameters', 'Only works with gen_efficientnet based models '
                                                                'currently.')
    group.add_argument('--bn-momentum', type=float, default=None, help='BatchNorm momentum override (if not None)')
    group.add_argument('--bn-eps', type=float, default=None, help='BatchNorm epsilon override (if not None)')
    group.add_argument('--sync-bn', action='store_true', help='enable synchronized BatchNorm.')
    group.add_argument('--dist-bn', type=str, default='reduce', choices=('broadcast', 'reduce', ''),
                       help='distribute BatchNorm stats between nodes after each epoch ("broadcast", "reduce", '
                            'or "")')
    group.add_argument('--split-bn', action='store_true',
                       help='enable separate BN layers per augmentation split.')

    group = parser.add_argument_group('Model exponential moving average parameters')
    group.add_argument('--model-ema', action='store_true', default=False,
                       help='enable tracking moving average of model weights.')
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                       help='force ema to be tracked on CPU, rank=0 node only. Disables EMA validation.')
    group.add_argument('--model-ema-decay', type=float, default=0.9998,
                       help='decay factor for model weights moving average (default: 0.9998)')
    group.add_argument('--model-ema-warmup', action='store_true',
                       help='enable warmup for model EMA decay.')

    group = parser.add_argument_group('Miscellaneous parameters')
    group.add_argument('--seed', type=int, default=42, metavar='S', help='random seed (default: 42)')
    group.add_argument('--log-interval', type=int, default=50, metavar='N',
                       help='how many batches to wait before logging training status')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N',
                       help='number of checkpoints to keep (default: 10)')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N',
                       help='how many training processes to use (default: 4)')
    group.add_argument('--pin-mem', action='store_true', default=False,
                       help='pin CPU memory in DataLoader for more efficient (sometimes) transfer to GPU.')
    group.add_argument('--no-prefetcher', action='store_true', default=False, help='disable fast prefetcher')
    group.add_argument('--output', default='', type=str, metavar='PATH',
                       help='path to output folder (default: none, current dir)')
    group.add_argument('--experiment', default='', type=str, metavar='NAME',
                       help='name of train experiment, name of sub-folder for output')
    group.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC',
                       help='best metric (default: "top1")')

    group = parser.add_argument_group('Cyclical focal loss (arXiv 2202.08978)')
    group.add_argument(*_both('--focal_loss'), dest='focal_loss', default=None, choices=FOCAL_LOSS_TYPES,
                       help='focal-family training loss instead of timm\'s (default: None = timm\'s loss)')
    group.add_argument(*_both('--gamma'), dest='gamma', type=float, default=2.0,
                       help="focusing parameter of the 'sym' focal loss (default: 2.0)")
    group.add_argument(*_both('--gamma_hc'), dest='gamma_hc', type=float, default=0.0,
                       help='high-confidence exponent of asym-cyclical (default: 0.0)')
    group.add_argument(*_both('--gamma_pos'), dest='gamma_pos', type=float, default=0.0,
                       help='focal exponent of the target class, asym / asym-cyclical (default: 0.0)')
    group.add_argument(*_both('--gamma_neg'), dest='gamma_neg', type=float, default=4.0,
                       help='exponent of the other classes\' weight, asym / asym-cyclical (default: 4.0)')
    group.add_argument(*_both('--cyclical_factor'), dest='cyclical_factor', type=float, default=2.0,
                       help='cyclical factor f >= 1 of eta, shared by the loss and all schedules (default: 2.0)')
    group.add_argument(*_both('--soft_target_mode'), dest='soft_target_mode', default='distribution',
                       choices=SOFT_TARGET_MODES,
                       help='focal losses with Mixup/CutMix: use the soft distribution, or collapse it with '
                            'argmax as published (default: distribution)')

    group = parser.add_argument_group('Cyclical training (arXiv 2202.08835); a schedule is off when its min is 0')
    group.add_argument(*_both('--wd_min'), dest='wd_min', type=float, default=0.0,
                       help='cyclical weight decay at the start and end (default: 0 = off)')
    group.add_argument(*_both('--wd_max'), dest='wd_max', type=float, default=1e-3,
                       help='cyclical weight decay at the minimum of eta (default: 1e-3)')
    group.add_argument(*_both('--T_min'), dest='T_min', type=float, default=0.0,
                       help='softmax temperature (training logits only) at the start and end (default: 0 = off)')
    group.add_argument(*_both('--T_max'), dest='T_max', type=float, default=2.0,
                       help='softmax temperature at the minimum of eta (default: 2.0)')
    group.add_argument(*_both('--clip_min'), dest='clip_min', type=float, default=0.0,
                       help='gradient-clip threshold at the start and end (default: 0 = off)')
    group.add_argument(*_both('--clip_max'), dest='clip_max', type=float, default=100.0,
                       help='gradient-clip threshold at the minimum of eta (default: 100.0)')
    group.add_argument(*_both('--cyclical_step_per_update'), dest='cyclical_step_per_update', action='store_true',
                       default=False,
                       help='step the loss eta and the schedules after every optimizer update (fractional '
                            'epochs) instead of once per epoch as published')

    group = parser.add_argument_group('Training subsets (limited and imbalanced data)')
    group.add_argument(*_both('--train_size'), dest='train_size', type=int, default=None,
                       help='train on N images of the training set (default: all)')
    group.add_argument(*_both('--train_size_mode'), dest='train_size_mode', default='first', choices=SUBSET_MODES,
                       help="how --train_size picks: 'first' N images as published, or 'stratified' (equal "
                            'per class, first images of each class) (default: first)')
    group.add_argument(*_both('--read_sampler'), dest='read_sampler', type=str, default=None, metavar='CSV',
                       help='train on the 0-based training-set indices listed in this CSV (default: none)')
    group.add_argument(*_both('--imbalance_ratio'), dest='imbalance_ratio', type=float, default=None,
                       metavar='RHO', help='long-tailed subset n_c = n_max * rho^(-c/(K-1)) (default: none)')
    group.add_argument(*_both('--imbalance_max'), dest='imbalance_max', type=int, default=None, metavar='N',
                       help='head-class count n_max of the long-tailed subset (default: smallest class size)')
    group.add_argument(*_both('--log_shard_indices'), dest='log_shard_indices', action='store_true', default=False,
                       help='write the training-set indices each rank draws in the first epoch to shards.json')
    return parser


class _KeyValue(argparse.Action):
    """Parse ``key=value`` pairs into a dict, values read as YAML scalars."""

    def __call__(self, parser, namespace, values, option_string=None):
        parsed = {}
        for item in values:
            key, sep, value = item.partition('=')
            if not sep:
                parser.error(f'{option_string}: expected key=value, got {item!r}')
            parsed[key] = yaml.safe_load(value)
        setattr(namespace, self.dest, parsed)


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


def load_config(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML config of argument values (keys in either spelling); unknown keys are an error."""
    if not os.path.isfile(path):
        raise ValueError(f'Config file not found: {path}')
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f'Config file {path} must hold a mapping of argument names to values.')
    dests = {a.dest for a in parser._actions}
    resolved, unknown = {}, []
    for key, value in cfg.items():
        dest = str(key).lstrip('-')
        dest = dest if dest in dests else dest.replace('-', '_')
        if dest not in dests:
            unknown.append(key)
        resolved[dest] = value
    if unknown:
        raise ValueError(f'Unknown keys in config {path}: {unknown}; keys are flag names such as model, '
                         'batch_size, focal_loss, T_min.')
    return resolved


def check_args(args: argparse.Namespace) -> None:
    """Raise a clear ValueError for bad or conflicting arguments, before any data, model or process is touched."""
    if not is_model(args.model):
        raise ValueError(f"Unknown model '{args.model}'; list the valid names with timm.list_models().")
    if args.epochs < 1:
        raise ValueError(f'--epochs must be >= 1, got {args.epochs}.')
    if args.batch_size < 1 or args.grad_accum_steps < 1:
        raise ValueError('--batch-size and --grad-accum-steps must be >= 1.')
    if args.aug_splits == 1 or args.aug_splits < 0:
        raise ValueError(f'--aug-splits must be 0 or >= 2, got {args.aug_splits}.')
    if args.split_bn and args.aug_splits < 2:
        raise ValueError('--split-bn needs --aug-splits >= 2.')
    if args.jsd_loss and args.aug_splits < 2:
        raise ValueError('--jsd-loss needs --aug-splits >= 2.')
    if args.smoothing is not None and not 0 <= args.smoothing < 1:
        raise ValueError(f'--smoothing must be in [0, 1), got {args.smoothing}.')
    if args.focal_loss is not None:
        others = [flag for flag, on in (('--jsd-loss', args.jsd_loss), ('--bce-loss', args.bce_loss),
                                        (f'--loss {args.loss}', args.loss not in (None, 'ce'))) if on]
        if others:
            raise ValueError(f'--focal_loss {args.focal_loss} replaces timm\'s loss; it cannot be combined with '
                             f'{", ".join(others)}.')
        if min(args.gamma, args.gamma_hc, args.gamma_pos, args.gamma_neg) < 0:
            raise ValueError('--gamma, --gamma_hc, --gamma_pos and --gamma_neg must be >= 0.')
    # The cyclical ranges and timing, checked by the schedulers themselves on a dry construction.
    num_epochs = args.epochs + args.cooldown_epochs
    cyclical_eta(0, num_epochs, args.cyclical_factor)
    for name, low, high in (('weight decay (--wd_min, --wd_max)', args.wd_min, args.wd_max),
                            ('softmax temperature (--T_min, --T_max)', args.T_min, args.T_max),
                            ('gradient clipping (--clip_min, --clip_max)', args.clip_min, args.clip_max)):
        if low != 0:
            CyclicalValueScheduler(low, high, num_epochs=num_epochs, cyclical_factor=args.cyclical_factor,
                                   name=name)
    if args.train_size is not None and args.train_size < 1:
        raise ValueError(f'--train_size must be >= 1, got {args.train_size}.')
    subsets = [f for f, v in (('--train_size', args.train_size), ('--read_sampler', args.read_sampler),
                              ('--imbalance_ratio', args.imbalance_ratio)) if v]
    if len(subsets) > 1:
        raise ValueError(f'Choose one training subset, got {" and ".join(subsets)}.')
    if args.read_sampler and not os.path.isfile(args.read_sampler):
        raise ValueError(f'--read_sampler: file not found: {args.read_sampler}')
    data_dir = args.data_dir or args.data
    dataset_name = args.dataset or ''
    if is_digits_dataset(dataset_name):
        return
    if dataset_name.startswith(('hfds/', 'hfids/', 'tfds/', 'wds/')):
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


def build_dataset(args: argparse.Namespace, split: str, is_training: bool):
    """The named timm dataset, or the offline ``sklearn/digits`` set."""
    if is_digits_dataset(args.dataset):
        return DigitsDataset(split)
    root = args.data_dir or args.data
    try:
        return create_dataset(
            args.dataset, root=root, split=split, is_training=is_training, class_map=args.class_map,
            download=args.dataset_download, batch_size=args.batch_size, seed=args.seed,
            input_img_mode=args.input_img_mode or 'RGB')
    except (OSError, RuntimeError) as e:  # e.g. no network for --dataset-download, a corrupt torchvision set
        raise ValueError(f"Could not load the {split!r} split of dataset {args.dataset or 'folder'!r} from "
                         f"{root!r}: {e}") from e


def build_train_criterion(args: argparse.Namespace, num_epochs: int, mixup_active: bool) -> nn.Module:
    """--focal_loss through cfl_timm's factory, otherwise timm's own loss selection."""
    if args.focal_loss is not None:
        kwargs = focal_loss_kwargs(args, num_epochs)
        kwargs['smoothing'] = args.smoothing
        return create_focal_loss(**kwargs, soft_targets=mixup_active)
    smoothing = 0.1 if args.smoothing is None else args.smoothing
    if args.jsd_loss:
        return create_classification_loss('jsd', jsd_splits=args.aug_splits, smoothing=smoothing)
    if args.bce_loss:
        return create_classification_loss('bce', smoothing=smoothing, soft_targets=mixup_active,
                                          bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum)
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train with the parsed arguments; returns the output directory and the last epoch's metrics."""
    setup_default_logging()
    check_args(args)
    effective_args = dict(vars(args))

    dist_info = init_distributed_device_so(device=args.device)
    device = torch.device(dist_info['device'])
    rank, world_size = dist_info['global_rank'], dist_info['world_size']
    distributed, is_primary = dist_info['distributed'], dist_info['global_rank'] == 0
    try:
        return _train(args, effective_args, device, rank, world_size, distributed, is_primary)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def load_datasets(args: argparse.Namespace, is_primary: bool) -> tuple[Any, Any, int]:
    """Training set (restricted to the selected subset) and validation set, plus the number of classes."""
    dataset_train = build_dataset(args, args.train_split, is_training=True)
    dataset_eval = build_dataset(args, args.val_split, is_training=False)
    if len(dataset_train) == 0 or len(dataset_eval) == 0:
        raise ValueError(f'Empty dataset split: {len(dataset_train)} train / {len(dataset_eval)} validation images.')
    full_targets = dataset_targets(dataset_train)
    num_classes = args.num_classes or int(full_targets.max()) + 1
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
    """The timm model (split / sync BN as asked) on ``device``, and its resolved data config."""
    model = create_model(
        args.model, pretrained=args.pretrained, in_chans=args.in_chans or 3, num_classes=num_classes,
        drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block, global_pool=args.gp,
        bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, checkpoint_path=args.initial_checkpoint or None,
        **args.model_kwargs)
    data_config = resolve_data_config(vars(args), model=model, verbose=is_primary)
    if args.split_bn:
        model = convert_splitbn_model(model, max(args.aug_splits, 2))
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if distributed and args.sync_bn:
        model = convert_sync_batchnorm(model)
    return model, data_config


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
    """timm's batch Mixup/CutMix, smoothing with the loss's own default (0.1, or the focal loss's eps)."""
    if not (args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None):
        return None
    smoothing = args.smoothing if args.smoothing is not None else (
        DEFAULT_EPS[args.focal_loss] if args.focal_loss else 0.1)
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=smoothing, num_classes=num_classes)


def build_loaders(args: argparse.Namespace, dataset_train, dataset_eval, data_config: dict[str, Any],
                  device: torch.device, distributed: bool):
    """timm's training and validation loaders (the distributed samplers shard the subset, not the full set)."""
    patch_timm_posterize()  # RandAugment 'inc1' ops on Pillow >= 11 (see cfl_timm.data.compat)
    if args.aug_splits > 1:
        dataset_train = AugMixDataset(dataset_train, num_splits=args.aug_splits)
    use_prefetcher = not args.no_prefetcher
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, num_aug_repeats=int(args.aug_repeats), num_aug_splits=args.aug_splits,
        interpolation=args.train_interpolation or data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], num_workers=args.workers, distributed=distributed, pin_memory=args.pin_mem,
        device=device, use_prefetcher=use_prefetcher,
        # Workers restart each epoch so their RNG is a function of the epoch seed: resume is exact.
        persistent_workers=False)
    loader_eval = create_loader(
        dataset_eval, input_size=data_config['input_size'], batch_size=args.validation_batch_size or args.batch_size,
        is_training=False, interpolation=data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], num_workers=args.workers, distributed=distributed, crop_pct=data_config['crop_pct'],
        pin_memory=args.pin_mem, device=device, use_prefetcher=use_prefetcher, persistent_workers=False)
    return loader_train, loader_eval


def _train(args, effective_args, device, rank, world_size, distributed, is_primary) -> dict[str, Any]:
    if distributed:
        _logger.info(f'Process {rank} of {world_size}, device {device} (backend {dist.get_backend()}).')
    amp_dtype, use_scaler = resolve_amp(args, device)
    random_seed(args.seed, rank)

    # Data first: the class count and subsets come from the training set.
    dataset_train, dataset_eval, num_classes = load_datasets(args, is_primary)
    model, data_config = build_model(args, num_classes, device, distributed, is_primary)
    lr = resolve_lr(args, world_size)
    opt_cfg = argparse.Namespace(**{**vars(args), 'lr': lr, 'opt_args': args.opt_kwargs or None})
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=opt_cfg))
    mixup_fn = build_mixup(args, num_classes)
    loader_train, loader_eval = build_loaders(args, dataset_train, dataset_eval, data_config, device, distributed)
    updates_per_epoch = max(1, (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps)

    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(argparse.Namespace(**{**vars(args), 'lr': lr}),
                                      decreasing_metric='loss' in args.eval_metric),
        updates_per_epoch=updates_per_epoch)
    criterion = build_train_criterion(args, num_epochs, mixup_fn is not None)
    schedules = create_cyclical_schedules(
        optimizer, num_epochs=num_epochs, updates_per_epoch=updates_per_epoch, **cyclical_schedule_kwargs(args))

    task = TemperatureClassificationTask(model, criterion, device=device, verbose=is_primary)
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device=torch.device('cpu') if args.model_ema_force_cpu else None)
    if distributed:
        ddp_kwargs = {'broadcast_buffers': False} if args.no_ddp_bb else {}
        task.prepare_distributed(device_ids=ddp_device_ids(device), **ddp_kwargs)
    loss_scaler = NativeScaler(device=device.type) if use_scaler else None

    # Output directory, run files and resume.
    exp_name = args.experiment or '-'.join([
        datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(data_config['input_size'][-1])])
    output_dir = Path(args.output or './output/train') / exp_name
    resume_path = args.resume
    if resume_path == 'auto':
        resume_path = str(output_dir / 'last.pth.tar') if (output_dir / 'last.pth.tar').is_file() else ''
    start_epoch = 0
    if resume_path:
        start_epoch = resume_training(resume_path, task, optimizer, loss_scaler, not args.no_resume_opt, is_primary)
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    if start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)

    saver, summary = None, None
    if is_primary:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_args_yaml(output_dir / 'args.yaml', effective_args)
        saver = CheckpointSaver(model=model, optimizer=optimizer, args=argparse.Namespace(**effective_args),
                                amp_scaler=loss_scaler, checkpoint_dir=str(output_dir), recovery_dir=str(output_dir),
                                decreasing='loss' in args.eval_metric, max_history=args.checkpoint_hist, task=task)
        if resume_path and Path(resume_path).resolve().parent == output_dir.resolve():
            saver.load_state_dict_from_checkpoint(resume_path)
        summary = SummaryWriter(output_dir / 'summary.csv', start_epoch=start_epoch)
        _logger.info(f'Output in {output_dir}; scheduled epochs {num_epochs}, {updates_per_epoch} updates per epoch.')

    if args.log_shard_indices:
        _log_shard_indices(loader_train, output_dir, start_epoch, is_primary)

    autocast = (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype)) if amp_dtype else \
        contextlib.nullcontext
    eval_metrics: dict[str, float] = {}
    train_speed: list[float] = []
    for epoch in range(start_epoch, num_epochs):
        # Every random stream restarts from (seed, epoch, rank): an interrupted run resumes bit for bit.
        random_seed(args.seed + epoch * 1000, rank)
        if hasattr(loader_train.sampler, 'set_epoch'):
            loader_train.sampler.set_epoch(epoch)
        if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        start_updates = epoch * updates_per_epoch if args.cyclical_step_per_update else None
        set_cyclical_epoch(criterion, schedules, task, epoch, start_updates)
        used = epoch_values(criterion, schedules)

        train_metrics = train_one_epoch(
            epoch, task, loader_train, optimizer, lr_scheduler, schedules, criterion, mixup_fn, args, device,
            autocast, loss_scaler, updates_per_epoch, is_primary)
        train_speed.append(train_metrics.pop('images_per_second'))
        if distributed and args.dist_bn in ('broadcast', 'reduce'):
            distribute_bn(model, world_size, args.dist_bn == 'reduce')
            if task.has_ema():
                distribute_bn(task.get_trainable_module(ema=True), world_size, args.dist_bn == 'reduce')
        eval_model = task.get_eval_model(ema=task.has_ema() and not args.model_ema_force_cpu)
        eval_metrics = validate(eval_model, loader_eval, device, autocast, num_classes)

        lrs = [group['lr'] for group in optimizer.param_groups]
        lr_value = sum(lrs) / len(lrs)
        lr_scheduler.step(epoch + 1, eval_metrics[args.eval_metric])
        if is_primary:
            summary.append({
                'epoch': epoch, 'train_loss': train_metrics['loss'], 'eval_loss': eval_metrics['loss'],
                'eval_top1': eval_metrics['top1'], 'eval_top5': eval_metrics['top5'], 'lr': lr_value,
                'eval_nll': eval_metrics['nll'], 'eval_ece': eval_metrics['ece'], **used})
            best_metric, best_epoch = saver.save_checkpoint(epoch, metric=eval_metrics[args.eval_metric])
            _logger.info(f'Epoch {epoch}: train_loss {train_metrics["loss"]:.4f} eval_top1 {eval_metrics["top1"]:.2f} '
                         f'eval_nll {eval_metrics["nll"]:.4f} eval_ece {eval_metrics["ece"]:.4f} {used}')
    if is_primary and saver is not None and saver.best_metric is not None:
        _logger.info(f'*** Best metric: {saver.best_metric} (epoch {saver.best_epoch})')
    return {'output_dir': str(output_dir), 'eval_metrics': eval_metrics, 'num_epochs': num_epochs,
            'train_images_per_second': train_speed}


def set_cyclical_epoch(criterion: nn.Module, schedules, task, epoch: float, num_updates: Optional[int] = None) -> None:
    """Put the loss eta and the cyclical schedules at (fractional) ``epoch``; the task takes the temperature."""
    if hasattr(criterion, 'set_epoch'):
        criterion.set_epoch(epoch)
    if num_updates is None:
        schedules.step(int(epoch))
    else:
        schedules.step_update(num_updates)
    task.temperature = schedules.current()['temperature']


def epoch_values(criterion: nn.Module, schedules) -> dict[str, Optional[float]]:
    """The cyclical values in force at the start of the epoch (None where off), for the summary."""
    return {'eta': getattr(criterion, 'eta', None), **schedules.current()}


def train_one_epoch(epoch, task, loader, optimizer, lr_scheduler, schedules, criterion, mixup_fn, args, device,
                    autocast, loss_scaler, updates_per_epoch, is_primary) -> dict[str, float]:
    """One pass over the training loader: the sample-weighted mean loss over all ranks and this rank's images/s."""
    task.train()
    accum_steps = args.grad_accum_steps
    num_batches = len(loader)
    last_accum_steps = num_batches % accum_steps or accum_steps
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    sample_count = torch.zeros((), dtype=torch.float64, device=device)
    num_updates = epoch * updates_per_epoch
    start = time.perf_counter()
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        update_idx = batch_idx // accum_steps
        first_in_update = batch_idx % accum_steps == 0
        need_update = (batch_idx + 1) % accum_steps == 0 or batch_idx + 1 == num_batches
        accum = accum_steps if update_idx < num_batches // accum_steps else last_accum_steps
        if args.no_prefetcher:
            input, target = input.to(device), target.to(device)
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        if args.cyclical_step_per_update and first_in_update:
            set_cyclical_epoch(criterion, schedules, task, num_updates / updates_per_epoch, num_updates)

        sync_ctx = task.no_sync() if not need_update else contextlib.nullcontext()
        with sync_ctx:
            with autocast():
                loss = task(input, target)['loss']
            scaled = loss / accum
            clip = schedules.current()['clip_grad'] or args.clip_grad
            if loss_scaler is not None:
                loss_scaler(scaled, optimizer, clip_grad=clip, clip_mode=args.clip_mode,
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
            lr_scheduler.step_update(num_updates=num_updates, metric=None)
        if is_primary and (batch_idx % args.log_interval == 0 or batch_idx + 1 == num_batches):
            elapsed = time.perf_counter() - start
            _logger.info(f'Train: {epoch} [{batch_idx + 1}/{num_batches}] loss {loss.item():.4f} '
                         f'lr {optimizer.param_groups[0]["lr"]:.3e} {(batch_idx + 1) / max(elapsed, 1e-9):.2f} it/s')
    images_per_second = sample_count.item() / max(time.perf_counter() - start, 1e-9)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loss_sum)
        dist.all_reduce(sample_count)
    return {'loss': (loss_sum / sample_count.clamp_min(1)).item(), 'images_per_second': images_per_second}


@torch.no_grad()
def validate(model: nn.Module, loader, device: torch.device, autocast, num_classes: int) -> dict[str, float]:
    """Loss, top-1/top-5 (percent, timm's convention) and calibration (NLL, 15-bin ECE), reduced over ranks."""
    from cfl_timm.metrics import CalibrationMeter

    model.eval()
    meter = CalibrationMeter(num_classes, num_bins=15)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5 (sums), count
    for input, target in loader:
        input, target = input.to(device), target.to(device)
        with autocast():
            output = model(input)
        if isinstance(output, (tuple, list)):
            output = output[0]
        output = output.float()
        top1, top5 = accuracy(output, target, topk=(1, min(5, num_classes)))
        n = input.size(0)
        sums += torch.tensor([nn.functional.cross_entropy(output, target).item() * n, top1.item() * n,
                              top5.item() * n, n], dtype=torch.float64, device=device)
        meter.update(output, target)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    meter.all_reduce()
    calibration = meter.compute()
    count = max(sums[3].item(), 1.0)
    return {'loss': sums[0].item() / count, 'top1': sums[1].item() / count, 'top5': sums[2].item() / count,
            'nll': float(calibration['nll']), 'ece': float(calibration['ece'])}


def resume_training(path: str, task, optimizer, loss_scaler, resume_opt: bool, is_primary: bool) -> int:
    """Restore model, EMA, criterion state, optimizer and scaler from a CheckpointSaver file; returns the next epoch."""
    if not os.path.isfile(path):
        raise ValueError(f'--resume: checkpoint not found: {path}')
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    if 'state_dict' not in checkpoint or 'epoch' not in checkpoint:
        raise ValueError(f'--resume: {path} is not a training checkpoint (no state_dict / epoch).')
    task.load_checkpoint_state(checkpoint['state_dict'], checkpoint.get('task_state'))
    if task.has_ema():
        if 'state_dict_ema' not in checkpoint:
            raise ValueError(f'--resume: {path} has no EMA weights but --model-ema is on.')
        task.load_checkpoint_state(checkpoint['state_dict_ema'], checkpoint.get('task_state_ema'), ema=True)
    if resume_opt and 'optimizer' in checkpoint:
        optimizer.load_state_dict(checkpoint['optimizer'])
    if loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
        loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
    if is_primary:
        _logger.info(f"Resumed from '{path}' (epoch {checkpoint['epoch']}).")
    return int(checkpoint['epoch']) + 1


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


if __name__ == '__main__':
    main(parse_args())
