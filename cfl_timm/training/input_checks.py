"""Checks of train.py's inputs that the per-group checks of :mod:`cfl_timm.training.args` do not cover: numbers
that depend on each other, names timm resolves only when it builds (optimizer, scheduler, metric, device), files
named by flags, the run folder, and the types of ``-c/--config`` values.

Every function raises a ``ValueError`` naming the flag (or config key) and its valid range or choices; none
builds anything heavier than a one-parameter optimizer, so all run before any data, model or process.
"""
import argparse
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from ..data import MAX_IMAGE_PIXELS, is_image_folder_name, split_folder
from .arg_types import converter
from .checkpoint import run_dir_in_use
from .distributed import launched_world_size
from .resume_args import check_resume_args

__all__ = ['DECREASING_EVAL_METRICS', 'EVAL_METRICS', 'check_crop_pct', 'check_file_args', 'check_mean_std',
           'check_global_pool', 'check_model_kwargs', 'check_name_args', 'check_number_args', 'check_opt_betas',
           'coerce_config_value', 'default_image_mode', 'image_mode', 'image_mode_name', 'input_channels']


# Keys of train.py's validation metrics (``--eval-metric`` picks the one that ranks checkpoints).
EVAL_METRICS = ('top1', 'top5', 'loss', 'nll', 'ece')
DECREASING_EVAL_METRICS = ('loss', 'nll', 'ece')  # lower is better

def _flag(dest: str) -> str:
    return '--' + dest.replace('_', '-')


def check_number_args(args: argparse.Namespace) -> None:
    """Checks that span several numbers: the input size against the mean and std, and the long-tailed subset's
    head count against its ratio (each single flag's range is in its declaration, :mod:`cfl_timm.training.
    arg_types`)."""
    check_mean_std(args)
    check_crop_pct(args)
    check_image_mode(args)
    if args.imbalance_max is not None and args.imbalance_ratio is None:
        raise ValueError('--imbalance_max sets the head-class count of the long-tailed subset; it needs '
                         '--imbalance_ratio RHO (>= 1).')


@converter  # here, not in arg_types: that module is copied into timm checkouts, which need not import PIL
def image_mode_name(value: Any) -> str:
    """A PIL image mode images can be converted to: RGB, L, RGBA, LA, CMYK, YCbCr, LAB, HSV, I, F, ..."""
    from PIL import ImageMode

    name = str(value)
    try:
        ImageMode.getmode(name)
    except KeyError:
        raise argparse.ArgumentTypeError(f'unknown PIL image mode {name!r}; valid: RGB, L, RGBA, LA, CMYK, YCbCr, '
                                         'LAB, HSV, I, F, ...') from None
    return name


def input_channels(args: argparse.Namespace) -> int:
    """The model's input channels: ``--input-size``'s first value, else ``--in-chans``, else 3."""
    return (args.input_size[0] if args.input_size else None) or args.in_chans or 3


def default_image_mode(channels: int) -> str:
    """timm's rule for the PIL mode images are read in: 'L' for a one-channel model, else 'RGB'."""
    return 'L' if channels == 1 else 'RGB'


def image_mode(args: argparse.Namespace) -> str:
    """The PIL mode images are read in: ``--input-img-mode``, else :func:`default_image_mode`."""
    return args.input_img_mode or default_image_mode(input_channels(args))


def check_image_mode(args: argparse.Namespace) -> None:
    """``--input-img-mode`` is a PIL mode whose band count equals the model's input channels."""
    from PIL import ImageMode
    channels = input_channels(args)
    mode = image_mode(args)
    bands = len(ImageMode.getmode(mode).bands)  # a known mode: its declaration (image_mode_name)
    if bands != channels:
        given = '--input-img-mode' if args.input_img_mode else 'the default --input-img-mode (RGB, or L for 1 channel)'
        raise ValueError(f'{given} {mode} gives {bands}-channel images, but the model takes {channels} '
                         '(--in-chans / --input-size); make them agree.')


def check_crop_pct(args: argparse.Namespace) -> None:
    """``--crop-pct`` leaves a resize that can be computed: the evaluation resizes to the input size divided by it,
    which must stay within Pillow's pixel limit (a tiny fraction overflowed only when the first image was read)."""
    if args.crop_pct is None:
        return
    size = max((args.input_size or [None, 0, 0])[1:] + [args.img_size or 0]) or 1  # the model's own when not given
    edge = size / args.crop_pct
    if edge * edge > MAX_IMAGE_PIXELS:
        raise ValueError(f'--crop-pct {args.crop_pct:g}: the evaluation would resize each image to at least '
                         f'{edge:.3g} pixels a side (the input size over the crop fraction), beyond the '
                         f'{MAX_IMAGE_PIXELS}-pixel image limit; give a fraction near 1 (timm: 0.875).')


def check_mean_std(args: argparse.Namespace) -> None:
    """``--mean`` and ``--std`` give 1 value or one per input channel (``--input-size``/``--in-chans``, else 3)."""
    channels = input_channels(args)
    for dest in ('mean', 'std'):
        value = getattr(args, dest)
        if value is not None and len(value) not in (1, channels):
            raise ValueError(f'{_flag(dest)} needs 1 or {channels} values (one per input channel), got {len(value)}.')


def check_opt_betas(opt: str, betas: Sequence[float]) -> None:
    """``--opt-betas`` reaches the optimizer as given. timm drops betas silently for an optimizer without them
    (sgd, rmsprop, kron, ...), drops a third beta of a two-beta optimizer (adamw), and fails with an IndexError on
    too few (one beta for adamw, two for adan): all three are refused here, by a dry construction."""
    from timm.optim import create_optimizer_v2

    given = tuple(betas)
    shown = ' '.join(f'{beta:g}' for beta in given)
    try:
        defaults = create_optimizer_v2(torch.nn.Linear(1, 1), opt=opt, lr=0.1, betas=given).defaults
    except (IndexError, TypeError, ValueError) as e:
        raise ValueError(f'--opt-betas {shown}: the {opt!r} optimizer does not take {len(given)} beta(s) ({e}).') from e
    taken = defaults.get('betas', (defaults['beta1'],) if 'beta1' in defaults else ())
    if not taken:
        raise ValueError(f'--opt-betas {shown}: the {opt!r} optimizer takes no betas (it would ignore them); drop '
                         '--opt-betas.')
    if tuple(taken) != given:
        raise ValueError(f'--opt-betas {shown}: the {opt!r} optimizer takes {len(taken)} beta(s) and would use '
                         f'{" ".join(f"{beta:g}" for beta in taken)}; give {len(taken)}.')


def check_name_args(args: argparse.Namespace) -> None:
    """Names timm resolves only when it builds: optimizer, LR scheduler, checkpoint metric and device."""
    from timm.optim import create_optimizer_v2, list_optimizers
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    if args.eval_metric not in EVAL_METRICS:
        raise ValueError(f'--eval-metric must be one of {", ".join(EVAL_METRICS)}, got {args.eval_metric!r}.')
    probe = torch.nn.Linear(1, 1)
    try:
        optimizer = create_optimizer_v2(probe, opt=args.opt, lr=0.1, weight_decay=args.weight_decay)
    except (ValueError, AssertionError, KeyError, TypeError) as e:
        raise ValueError(f'--opt: unknown optimizer {args.opt!r}; valid names: timm.optim.list_optimizers() '
                         f'(e.g. {", ".join(list_optimizers()[:12])}, ...). ({e})') from e
    if args.opt_betas is not None:
        check_opt_betas(args.opt, args.opt_betas)
    if args.opt_kwargs:
        try:
            create_optimizer_v2(probe, opt=args.opt, lr=0.1, weight_decay=args.weight_decay, **args.opt_kwargs)
        except TypeError as e:
            raise ValueError(f'--opt-kwargs {_kwargs_text(args.opt_kwargs)}: not accepted by the {args.opt!r} '
                             f'optimizer ({e}).') from e
    if args.model_kwargs:
        check_model_kwargs(args.model, args.model_kwargs)
    check_global_pool(args.model, args.gp, args.model_kwargs)
    # The scheduler name, by a dry construction with train.py's own keyword arguments. Only an unknown name is
    # reported here; other settings are checked by their own groups and, with context, by the real construction.
    try:
        kwargs = scheduler_kwargs(argparse.Namespace(**{**vars(args), 'lr': 0.1}))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # deprecation notices are for the real construction to show
            create_scheduler_v2(optimizer, **kwargs, updates_per_epoch=1)
    except ValueError as e:
        if 'Unknown scheduler' in str(e):
            raise ValueError(f'--sched: {e} Valid: cosine, tanh, step, multistep, plateau, poly, rsqrt, wsd, '
                             'constant, onecycle, none.') from e
    device = torch.device(args.device)  # a device name: its declaration (arg_types.device_name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {args.device}: no CUDA device is available here; use --device cpu.')


def _kwargs_text(kwargs: dict) -> str:
    return ' '.join(f'{k}={v!r}' for k, v in kwargs.items())


def _dry_build_error(model: str, **kwargs: Any) -> Optional[Exception]:
    """What building ``model`` with ``kwargs`` on the meta device (no memory, no weights) raises, or None."""
    from timm.models import create_model
    try:
        with torch.device('meta'):
            create_model(model, **kwargs)
    except Exception as e:  # noqa: BLE001  (timm asserts, or raises TypeError / ValueError / KeyError per model)
        return e
    return None


def check_model_kwargs(model: str, kwargs: dict) -> None:
    """The model's constructor accepts ``kwargs``: a dry build on the meta device. Only a ``TypeError`` naming one
    of the keys is this flag's; a model that cannot be built on meta is left to the real build to report."""
    from timm.models import is_model
    if not is_model(model):
        return  # reported by the model check
    error = _dry_build_error(model, **kwargs)
    if isinstance(error, TypeError) and any(repr(str(key)) in str(error) for key in kwargs):
        raise ValueError(f'--model-kwargs {_kwargs_text(kwargs)}: not accepted by model {model!r} ({error}).') \
            from error


def check_global_pool(model: str, global_pool: Optional[str], kwargs: Optional[dict] = None) -> None:
    """``--gp`` names a global pool type the model takes: a dry build on the meta device with and without it.

    The valid names depend on the architecture (timm's CNNs: '', 'avg', 'max', 'avgmax', 'catavgmax' and their
    'fast' forms; vision transformers: '', 'avg', 'max', 'avgmax', 'token', 'map'), so the model itself is asked.
    timm refuses a wrong one with a bare assertion when the model is built, after the data was read.
    """
    from timm.models import is_model
    if global_pool is None or not is_model(model):
        return
    if _dry_build_error(model, **(kwargs or {})) is not None:
        return  # not buildable on meta, or another flag's fault: reported by the real build
    error = _dry_build_error(model, global_pool=global_pool, **(kwargs or {}))
    if error is not None:
        raise ValueError(f"--gp {global_pool!r}: not a global pool type of model {model!r} "
                         f"({str(error) or type(error).__name__}); CNNs take '', 'avg', 'max', 'avgmax', "
                         "'catavgmax' (and 'fast' forms), vision transformers '', 'avg', 'max', 'avgmax', 'token', "
                         "'map'.")


def check_file_args(args: argparse.Namespace) -> None:
    """The resume checkpoint exists, an explicit run folder is never reused without --resume, and a resume keeps
    the run's settings (:func:`cfl_timm.training.resume_args.check_resume_args`); the other files named by flags
    are checked by their ``arg_types.existing_file`` declaration."""
    if args.resume and args.resume != 'auto' and not os.path.isfile(args.resume):
        raise ValueError(f"--resume: checkpoint not found: {args.resume} (a file, or 'auto' for the run folder's "
                         'newest complete checkpoint)')
    output = Path(args.output or './output/train')
    if output.exists() and not output.is_dir():
        raise ValueError(f'--output: {output} is a file, not a folder.')
    run_dir = output / args.experiment if args.experiment else None
    if run_dir is not None and (run_dir.is_file() or (run_dir.is_symlink() and not run_dir.exists())):
        raise ValueError(f'--output/--experiment: {run_dir} is a file, not a run folder; choose another '
                         '--experiment.')
    data_dir = (args.data_dir or args.data) if is_image_folder_name(args.dataset or '') else None
    if data_dir and os.path.isdir(data_dir):  # the split folders the run reads must not receive its files
        for flag, split in (('--train-split', args.train_split), ('--val-split', args.val_split)):
            folder = Path(split_folder(data_dir, split)).resolve()
            if folder in [output.resolve(), *output.resolve().parents]:
                raise ValueError(f'--output {output} lies inside the {flag} folder {folder} that the run reads: its '
                                 'checkpoints and pictures would become part of the data; write it elsewhere.')
    in_use = run_dir_in_use(run_dir) if run_dir is not None else []
    if in_use and not args.resume:
        raise ValueError(f'--output/--experiment: {run_dir} already holds a run ({", ".join(in_use[:4])}); pass '
                         '--resume auto to continue it, or choose another --experiment.')
    check_resume_args(args, run_dir, bool(in_use), launched_world_size())  # a resume (or re-run) that changed


def coerce_config_value(action: argparse.Action, key: Any, value: Any, path: str) -> Any:
    """A ``-c/--config`` value checked (and converted) as the flag ``action`` would read it on the command line.

    Raises:
        ValueError: Naming the config file, the key, the expected type or choices and the value found.
    """
    where = f'Config {path}: key {key!r}'
    if value is None:  # null means "not given" only where that is the flag's default; elsewhere it is no value
        if action.default is None:
            return None
        raise ValueError(f'{where} is null, but the flag needs a value (default {action.default!r}): give one, or '
                         'delete the line.')
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f'{where} is a switch: expected true or false, got {value!r}.')
        return value
    if action.nargs == 0 or isinstance(action.default, dict):  # key=value flags take a mapping
        if isinstance(action.default, dict) and not isinstance(value, dict):
            raise ValueError(f'{where} expects a mapping of names to values, got {value!r}.')
        return value
    if action.nargs in ('+', '*') or isinstance(action.nargs, int):
        if not isinstance(value, (list, tuple)):
            value = [value]
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise ValueError(f'{where} expects {action.nargs} values, got {len(value)}.')
        if action.nargs == '+' and not value and value != action.default:  # [] is fine where it is the default
            raise ValueError(f'{where} expects at least one value.')
        items = [_coerce_scalar(action, where, item) for item in value]
        check = getattr(action, 'check', None)  # a declared post-check (e.g. arg_types.Ascending)
        if check is not None:
            try:
                check(items)
            except argparse.ArgumentTypeError as e:
                raise ValueError(f'{where}: {e}.') from None
        return items
    if isinstance(value, (list, tuple, dict)):
        raise ValueError(f'{where} expects one value, got {value!r}.')
    return _coerce_scalar(action, where, value)


def _coerce_scalar(action: argparse.Action, where: str, value: Any) -> Any:
    kind = action.type or str
    if kind in (int, float) and isinstance(value, bool):
        raise ValueError(f'{where} expects a number ({kind.__name__}), got {value!r}.')
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f'{where} expects an integer, got {value!r}.')
        value = int(value)
    if kind is str and isinstance(value, (int, float)):
        value = str(value)
    try:
        converted = kind(value)
    except argparse.ArgumentTypeError as e:  # a arg_types converter: its message names the valid range
        raise ValueError(f'{where} {e}.') from None
    except (TypeError, ValueError) as e:
        name = getattr(kind, '__name__', str(kind))
        raise ValueError(f'{where} expects {name}, got {value!r}.') from e
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f'{where} must be one of {", ".join(map(str, action.choices))}, got {converted!r}.')
    return converted
