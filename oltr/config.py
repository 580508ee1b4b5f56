"""OLTR stage-1 and stage-2 configuration: a YAML file, then command-line values, applied only when actually given.

The CFL authors' OLTR port let argparse defaults silently overwrite the gammas and factor of its configs; here a
command-line value replaces a config value only when the user passed it.
"""
import argparse
import math
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from cfl_timm import FOCAL_LOSS_TYPES
from cfl_timm.data.worker_seeding import check_worker_socket_dir
from cfl_timm.training.arg_types import SEED_MAX, fraction, non_negative_int, positive_int
from cfl_timm.training.config_file import read_config_file

from .metrics import SHOT_RULES

__all__ = ['DEFAULTS', 'LOSSES', 'BACKBONES', 'STAGES', 'SAMPLERS', 'load_config', 'apply_overrides', 'parse_set',
           'loss_kwargs', 'run_name']

LOSSES = ('ce',) + tuple(FOCAL_LOSS_TYPES)
BACKBONES = ('resnet10', 'resnet152')
STAGES = (1, 2)
SAMPLERS = ('plain', 'class_aware')

# Every key a config may hold, with the value used when the config leaves it out.
DEFAULTS: dict[str, Any] = {
    'stage': 1,
    'dataset': 'ImageNet_LT',
    'num_classes': 1000,
    'backbone': 'resnet10',
    'feature_dim': 512,
    'epochs': 30,
    'batch_size': 128,
    'image_size': 224,
    'resize_size': 256,
    'feature_lr': 0.1,
    'classifier_lr': 0.1,
    'momentum': 0.9,
    'weight_decay': 5e-4,
    'lr_step': 10,
    'lr_gamma': 0.1,
    'sampler': 'plain',
    'samples_per_class': 4,
    'freeze_backbone': False,
    'centroids_lr': 0.01,
    'centroids_weight': 0.01,
    'loss': 'ce',
    'gamma': 2.0,
    'gamma_hc': 0.0,
    'gamma_pos': 0.0,
    'gamma_neg': 4.0,
    'cyclical_factor': 2.0,
    'smoothing': None,
    'workers': 4,
    'seed': 0,
    'open_threshold': 0.1,
    'shot_rule': 'code',
}


def _check(config: dict[str, Any], source: str) -> None:
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f'{source}: unknown config key(s) {unknown}, expected some of {sorted(DEFAULTS)}.')
    if config['loss'] not in LOSSES:
        raise ValueError(f"{source}: unknown loss '{config['loss']}', expected one of {LOSSES}.")
    if config['backbone'] not in BACKBONES:
        raise ValueError(f"{source}: unknown backbone '{config['backbone']}', expected one of {BACKBONES}.")
    if isinstance(config['stage'], bool) or config['stage'] not in STAGES:
        raise ValueError(f"{source}: unknown stage {config['stage']!r}, expected one of {STAGES}.")
    if config['sampler'] not in SAMPLERS:
        raise ValueError(f"{source}: unknown sampler '{config['sampler']}', expected one of {SAMPLERS}.")
    if not isinstance(config['freeze_backbone'], bool):
        raise ValueError(f"{source}: freeze_backbone must be true or false, got {config['freeze_backbone']!r}.")
    if config['freeze_backbone'] and config['stage'] != 2:
        raise ValueError(f'{source}: freeze_backbone applies to stage 2 (the stage-1 backbone is what it freezes).')
    dataset = config['dataset']  # a folder name of the run (OUTPUT/<dataset>/...) and of its list files
    if not isinstance(dataset, str) or not dataset.strip() or dataset in ('.', '..') or '/' in dataset \
            or '\\' in dataset:
        raise ValueError(f'{source}: dataset must be a name without path separators (e.g. ImageNet_LT), got '
                         f'{dataset!r}.')
    for key, convert in (*((k, positive_int) for k in _COUNT_KEYS), ('workers', non_negative_int)):
        if isinstance(config[key], bool) or not isinstance(config[key], int):
            raise ValueError(f'{source}: {key} must be an integer, got {config[key]!r}.')
        _in_range(config, key, convert, source)
    check_worker_socket_dir(config['workers'], f'{source}: workers')
    if config['resize_size'] < config['image_size']:  # the eval transform's center crop would pad with black
        raise ValueError(f"{source}: resize_size {config['resize_size']} is smaller than image_size "
                         f"{config['image_size']} (evaluation resizes, then center-crops image_size).")
    if config['sampler'] == 'class_aware' and config['batch_size'] % config['samples_per_class']:
        raise ValueError(f"{source}: batch_size {config['batch_size']} is not a multiple of samples_per_class "
                         f"{config['samples_per_class']} (class-aware batches hold whole class groups).")
    if config['shot_rule'] not in SHOT_RULES:
        raise ValueError(f"{source}: unknown shot_rule '{config['shot_rule']}', expected one of {SHOT_RULES} "
                         "('code': many >= 100, few <= 20 as in OLTR's code; 'paper': > 100, < 20).")
    threshold = config['open_threshold']
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f'{source}: open_threshold must be a probability in (0, 1), got {threshold!r}.')
    seed = config['seed']
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f'{source}: seed must be an integer in [0, {SEED_MAX}], got {seed!r}.')
    for key in ('feature_lr', 'classifier_lr', 'momentum', 'weight_decay', 'lr_gamma', 'centroids_lr',
                'centroids_weight'):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f'{source}: {key} must be a finite number >= 0, got {value!r}.')
    _in_range(config, 'momentum', fraction, source)


# Integer keys that count something (>= 1); 'workers' may be 0.
_COUNT_KEYS = ('num_classes', 'epochs', 'batch_size', 'image_size', 'resize_size', 'feature_dim', 'lr_step',
               'samples_per_class')


def _in_range(config: dict[str, Any], key: str, convert, source: str) -> None:
    """``convert`` (an :mod:`cfl_timm.training.arg_types` converter: the flags' own range) accepts the value."""
    try:
        convert(config[key])
    except argparse.ArgumentTypeError as e:
        raise ValueError(f'{source}: {key} {e}.') from None


def load_config(path: Union[str, Path]) -> dict[str, Any]:
    """Read a YAML config; missing keys take :data:`DEFAULTS`, unknown keys raise ``ValueError``."""
    config = {**DEFAULTS, **read_config_file(path)}  # a missing or unreadable file is a ValueError naming it
    _check(config, str(path))
    return config


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as YAML (``3`` -> int, ``0.1`` -> float, ``null`` -> None)."""
    key, sep, text = item.partition('=')
    if not sep or not key:
        raise ValueError(f"--set expects key=value, got {item!r}.")
    return key.strip(), yaml.safe_load(text)


def apply_overrides(config: dict[str, Any], given: Optional[dict[str, Any]] = None,
                    sets: Optional[list[str]] = None) -> dict[str, Any]:
    """A new config: ``config``, then the named command-line values that were given (not None), then ``--set``.

    Args:
        config: The loaded config.
        given: Command-line values by config key; None means "not given" and keeps the config value.
        sets: ``key=value`` strings from ``--set``.
    """
    result = dict(config)
    for key, value in (given or {}).items():
        if key not in DEFAULTS:
            raise ValueError(f'unknown config key {key!r}, expected one of {sorted(DEFAULTS)}.')
        if value is not None:
            result[key] = value
    for item in sets or []:
        key, value = parse_set(item)
        if key not in DEFAULTS:
            raise ValueError(f'--set {item}: unknown config key {key!r}, expected one of {sorted(DEFAULTS)}.')
        result[key] = value
    _check(result, 'command line')
    return result


def loss_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`cfl_timm.create_loss` for a focal-family loss of the config."""
    if config['loss'] == 'ce':
        raise ValueError("loss 'ce' is plain cross-entropy, not a focal loss.")
    kwargs = {'name': config['loss'], 'smoothing': config['smoothing']}
    if config['loss'] == 'sym':
        kwargs['gamma'] = config['gamma']
    else:
        kwargs.update(gamma_pos=config['gamma_pos'], gamma_neg=config['gamma_neg'])
    if config['loss'] == 'asym-cyclical':
        kwargs.update(gamma_hc=config['gamma_hc'], cyclical_factor=config['cyclical_factor'], epochs=config['epochs'])
    return kwargs


def _num(value: float) -> str:
    return f'{value:g}'


def run_name(config: dict[str, Any]) -> str:
    """Run directory name from the loss settings, the cyclical factor included (the authors' port left it out)."""
    loss = config['loss']
    name = f"stage{config['stage']}_{config['backbone']}_{loss}"
    if loss == 'sym':
        name += f"_g{_num(config['gamma'])}"
    elif loss in ('asym', 'asym-cyclical'):
        name += f"_pos{_num(config['gamma_pos'])}_neg{_num(config['gamma_neg'])}"
        if loss == 'asym-cyclical':
            name += f"_hc{_num(config['gamma_hc'])}_f{_num(config['cyclical_factor'])}"
    if loss != 'ce' and config['smoothing'] is not None:
        name += f"_ls{_num(config['smoothing'])}"
    return name
