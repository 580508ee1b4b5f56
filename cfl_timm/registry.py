"""Registration of cfl-timm's losses into timm's classification-loss factory.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978, and the calibration losses of
:mod:`cfl_timm.loss.calibration_losses`.

timm 1.0.x has no loss registry: ``timm.loss.create_classification_loss`` is a closed if/elif chain over
``LOSS_TYPES`` in the private module ``timm.loss._loss_factory``. :func:`register` wraps it once so that it
also builds every type of :data:`cfl_timm.loss.cfl_loss_factory.LOSS_TYPES` (through :func:`cfl_timm.create_loss`, the
one place where cfl names and keyword arguments are checked) while timm's own types, arguments and errors
behave exactly as before. The wrapper is installed wherever timm holds a reference to the factory
(``timm.loss``, ``timm.loss._loss_factory`` and the task modules that imported it by name).

The tested timm range is pinned in ``pyproject.toml``; if the factory moved, importing this module fails with
a message saying so instead of an AttributeError deep inside.
"""
import functools
import importlib
import inspect
import sys
from typing import Any, Optional

import timm
import timm.loss
import timm.task  # noqa: F401  (loads the task modules that import the factory by name)
import torch.nn as nn

from .loss.cfl_loss_factory import LOSS_KWARGS, LOSS_TYPES, REDUCTION_KWARG, create_loss

__all__ = ['ALL_LOSS_TYPES', 'TESTED_TIMM', 'register', 'is_registered']

TESTED_TIMM = '>=1.0.31,<1.1'
# timm factory arguments that mean something for the cfl types; any other must keep its default.
_SHARED_ARGS = ('loss_type', 'multi_label', 'smoothing', 'soft_targets')


def _timm_factory():
    """timm's private factory module, or an ImportError that says the tested timm range."""
    problem = None
    try:
        module = importlib.import_module('timm.loss._loss_factory')
    except ImportError as e:
        module, problem = None, f'cannot import timm.loss._loss_factory ({e})'
    if module is not None:
        factory = getattr(module, 'create_classification_loss', None)
        types = getattr(module, 'LOSS_TYPES', None)
        if not callable(factory) or not isinstance(types, tuple):
            problem = 'timm.loss._loss_factory has no create_classification_loss / LOSS_TYPES'
        elif not set(_SHARED_ARGS) <= set(inspect.signature(factory).parameters):
            problem = f'timm.loss._loss_factory.create_classification_loss lacks the arguments {_SHARED_ARGS}'
    if problem:
        raise ImportError(f'cfl_timm registers its losses into timm {TESTED_TIMM}, but the installed timm '
                          f'{timm.__version__} differs: {problem}. Install a tested timm: '
                          f'pip install "timm{TESTED_TIMM}".')
    return module


_timm_loss_factory = _timm_factory()
_original_factory = _timm_loss_factory.create_classification_loss
_original_signature = inspect.signature(_original_factory)
ALL_LOSS_TYPES = tuple(_timm_loss_factory.LOSS_TYPES) + LOSS_TYPES
# Keyword arguments only the cfl types take (timm's factory does not have them), in the factory's order.
_CFL_ONLY = tuple(k for k in dict.fromkeys([*(k for keys in LOSS_KWARGS.values() for k in keys), REDUCTION_KWARG])
                  if k not in _original_signature.parameters)
_CFL_KWARGS = frozenset(k for keys in LOSS_KWARGS.values() for k in keys) | {REDUCTION_KWARG}


def _signature() -> inspect.Signature:
    """timm's signature plus the cfl keywords (keyword-only, None = the loss type's default), shown by help()."""
    params = list(_original_signature.parameters.values())
    keyword_only = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in _CFL_ONLY]
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        return _original_signature.replace(parameters=params[:-1] + keyword_only + params[-1:])
    return _original_signature.replace(parameters=params + keyword_only)


def _doc() -> str:
    """timm's docstring plus the cfl loss types and the keywords each takes."""
    rows = '\n'.join(f'        {name!r}: {", ".join(keys) or "-"}' for name, keys in LOSS_KWARGS.items())
    return (inspect.getdoc(_original_factory) or '') + f'''

Added by cfl-timm (``import cfl_timm``, see docs/registration.md):
    loss_type also takes the cfl-timm types {LOSS_TYPES}, built by ``cfl_timm.create_loss`` with timm's
    ``smoothing`` (not given: the type's published default; the loss class calls it ``eps`` for the focal
    family) and ``soft_targets``. ``{REDUCTION_KWARG}``: 'mean' (default), 'sum' or 'none'. The keywords of
    each type (None = its default; a keyword given to a type that does not take it is a ValueError):
{rows}
'''


def create_classification_loss(loss_type: Optional[str] = None, *args: Any, **kwargs: Any) -> nn.Module:
    kwargs = {k: v for k, v in kwargs.items() if not (k in _CFL_ONLY and v is None)}  # None: not given
    if loss_type not in LOSS_TYPES:
        cfl_only = sorted(k for k in kwargs if k in _CFL_KWARGS and k not in _original_signature.parameters)
        if cfl_only:
            raise ValueError(f"Arguments {cfl_only} only apply to the cfl-timm loss types {LOSS_TYPES}.")
        if loss_type is not None and loss_type not in ALL_LOSS_TYPES:
            raise ValueError(f"Unknown loss type '{loss_type}', expected one of {ALL_LOSS_TYPES}.")
        return _original_factory(loss_type, *args, **kwargs)

    own = {k: kwargs.pop(k) for k in list(kwargs) if k not in _original_signature.parameters}
    bound = _original_signature.bind(loss_type, *args, **kwargs)
    if bound.arguments.get('multi_label', False):
        raise ValueError(f"Loss type '{loss_type}' does not support multi-label targets.")
    unsupported = sorted(
        name for name, value in bound.arguments.items()
        if name not in _SHARED_ARGS and value is not _original_signature.parameters[name].default
        and value != _original_signature.parameters[name].default)
    if unsupported:
        raise ValueError(f"Arguments {unsupported} do not apply to the loss type '{loss_type}'.")
    if REDUCTION_KWARG in own:
        own['reduction'] = own.pop(REDUCTION_KWARG)
    return create_loss(
        loss_type,
        smoothing=bound.arguments.get('smoothing'),  # None (not given) selects the type's default
        soft_targets=bound.arguments.get('soft_targets', False),
        **own,
    )


functools.update_wrapper(create_classification_loss, _original_factory)
create_classification_loss.__signature__ = _signature()
create_classification_loss.__doc__ = _doc()


def is_registered() -> bool:
    """Whether timm's public factory is the wrapped one."""
    return timm.loss.create_classification_loss is create_classification_loss


def register() -> None:
    """Make timm's classification-loss factory accept the cfl-timm loss types. Idempotent."""
    for name, module in list(sys.modules.items()):
        if (name == 'timm' or name.startswith('timm.')) and \
                getattr(module, 'create_classification_loss', None) is _original_factory:
            module.create_classification_loss = create_classification_loss
