"""Registration of the OneCycle and cyclical schedules into timm's scheduler factory.

Papers: L. N. Smith and N. Topin, "Super-Convergence", https://arxiv.org/abs/1708.07120 (OneCycle);
L. N. Smith, "General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835 and
"Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 (the cyclical schedules and the loss eta).

timm 1.0.31 has no scheduler registry: ``timm.scheduler.create_scheduler_v2`` is a closed if/elif chain and
``scheduler_kwargs`` a fixed adapter. :func:`register` wraps both, wherever timm holds a reference to them
(``timm.scheduler`` and ``timm.scheduler.scheduler_factory``, whose ``create_scheduler`` calls them), so that

- ``sched='onecycle'`` builds :class:`OneCycleLRScheduler` (keywords ``onecycle_pct_start``,
  ``onecycle_div_factor``, ``onecycle_final_div_factor``, ``onecycle_anneal``);
- any cyclical keyword (``cyclical_factor``, ``wd_min``, ``wd_max``, ``t_min``, ``t_max``, ``clip_min``,
  ``clip_max``, ``cyclical_step_per_update``, ``cyclical_epochs``) returns a :class:`CyclicalScheduler` around
  the LR scheduler, moving the cyclical weight decay, temperature, clip threshold and the loss eta with timm's
  ``step`` / ``step_update``;
- ``scheduler_kwargs(args)`` adds those keywords from the attributes an argparse namespace has (``--wd_min``,
  ``--T_min``, ``--onecycle-pct-start``, ...), and nothing when it has none.

Without the new keywords and types every call returns exactly what timm's own factory returns.
"""
import functools
import inspect
import sys
from typing import Any, Optional

import timm.scheduler.scheduler_factory as timm_scheduler_factory

from .cyclical_scheduler import CyclicalScheduler
from .onecycle import OneCycleLRScheduler

__all__ = ['CYCLICAL_KWARGS', 'ONECYCLE_KWARGS', 'SCHEDULER_ARG_NAMES', 'create_scheduler_v2', 'scheduler_kwargs',
           'register', 'is_registered']

# New keywords of the wrapped factory with their defaults (None: not given).
CYCLICAL_KWARGS = ('cyclical_factor', 'wd_min', 'wd_max', 't_min', 't_max', 'clip_min', 'clip_max',
                   'cyclical_step_per_update', 'cyclical_epochs')
ONECYCLE_KWARGS = ('onecycle_pct_start', 'onecycle_div_factor', 'onecycle_final_div_factor', 'onecycle_anneal')
# Factory keyword -> attribute of the parsed arguments that scheduler_kwargs reads (train.py's dest names).
SCHEDULER_ARG_NAMES = {**{name: name for name in CYCLICAL_KWARGS + ONECYCLE_KWARGS}, 't_min': 'T_min', 't_max': 'T_max'}

_original_create = inspect.unwrap(timm_scheduler_factory.create_scheduler_v2)
_original_kwargs = inspect.unwrap(timm_scheduler_factory.scheduler_kwargs)
_original_signature = inspect.signature(_original_create)


def _noise_range(noise: Any, t_initial: int) -> Any:
    """timm's noise on / off points: fractions of the schedule length -> steps."""
    if noise is None:
        return None
    if isinstance(noise, (list, tuple)):
        steps = [n * t_initial for n in noise]
        return steps[0] if len(steps) == 1 else steps
    return noise * t_initial


def _create_onecycle(arguments: dict[str, Any], options: dict[str, Any]) -> tuple[OneCycleLRScheduler, int]:
    """OneCycle over ``num_epochs`` (per epoch or per update), then ``cooldown_epochs`` at the final lr.

    timm's warm-up arguments do not apply (OneCycle's warm-up is ``onecycle_pct_start``), nor ``min_lr`` (the
    final lr is lr / (div_factor * final_div_factor)).
    """
    t_initial = arguments['num_epochs']
    if not arguments['step_on_epochs']:
        if not arguments['updates_per_epoch'] or arguments['updates_per_epoch'] < 1:
            raise ValueError('onecycle stepped per update (step_on_epochs=False) needs updates_per_epoch >= 1.')
        t_initial = t_initial * arguments['updates_per_epoch']
    defaults = {'pct_start': 0.3, 'div_factor': 25.0, 'final_div_factor': 1e4, 'anneal_strategy': 'cos'}
    given = {'pct_start': options.get('onecycle_pct_start'), 'div_factor': options.get('onecycle_div_factor'),
             'final_div_factor': options.get('onecycle_final_div_factor'),
             'anneal_strategy': options.get('onecycle_anneal')}
    scheduler = OneCycleLRScheduler(
        arguments['optimizer'], t_initial=t_initial, t_in_epochs=arguments['step_on_epochs'],
        noise_range_t=_noise_range(arguments['noise'], t_initial), noise_pct=arguments['noise_pct'],
        noise_std=arguments['noise_std'], noise_seed=arguments['noise_seed'],
        **{key: defaults[key] if value is None else value for key, value in given.items()})
    return scheduler, arguments['num_epochs'] + arguments['cooldown_epochs']


@functools.wraps(_original_create)
def create_scheduler_v2(optimizer: Any, sched: str = 'cosine', *args: Any, **kwargs: Any) -> tuple[Any, int]:
    options = {name: kwargs.pop(name) for name in list(kwargs) if name in CYCLICAL_KWARGS + ONECYCLE_KWARGS}
    cyclical = {name: options[name] for name in CYCLICAL_KWARGS if options.get(name) is not None}
    span = cyclical.get('cyclical_epochs')
    if span is not None and (isinstance(span, bool) or not isinstance(span, int) or span < 1):
        raise ValueError(f'cyclical_epochs must be an integer >= 1 (the span of the cyclical schedules), or None '
                         f'for the schedule length; got {span!r}.')
    if sched != 'onecycle' and not cyclical:
        return _original_create(optimizer, sched, *args, **kwargs)
    bound = _original_signature.bind(optimizer, sched, *args, **kwargs)  # timm's TypeError for bad arguments
    bound.apply_defaults()
    if sched == 'onecycle':
        lr_scheduler, num_epochs = _create_onecycle(bound.arguments, options)
    else:
        lr_scheduler, num_epochs = _original_create(optimizer, sched, *args, **kwargs)
    if not cyclical:
        return lr_scheduler, num_epochs
    span = cyclical.pop('cyclical_epochs', None) or num_epochs  # checked above: None or >= 1
    step_per_update = cyclical.pop('cyclical_step_per_update', False)
    if not isinstance(step_per_update, bool):  # bool('no') is True
        raise ValueError(f'cyclical_step_per_update must be True or False, got {step_per_update!r}.')
    scheduler = CyclicalScheduler(
        lr_scheduler, optimizer, num_epochs=span, step_per_update=step_per_update,
        updates_per_epoch=bound.arguments['updates_per_epoch'], **cyclical)
    return scheduler, num_epochs


create_scheduler_v2.__signature__ = _original_signature.replace(parameters=[
    *_original_signature.parameters.values(),
    *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Optional[Any])
      for name in CYCLICAL_KWARGS + ONECYCLE_KWARGS)])
create_scheduler_v2.__doc__ = (_original_create.__doc__ or '') + """
    Added by cfl-timm: ``sched='onecycle'`` (:class:`OneCycleLRScheduler`; ``onecycle_pct_start`` 0.3,
    ``onecycle_div_factor`` 25, ``onecycle_final_div_factor`` 1e4, ``onecycle_anneal`` 'cos'), and the cyclical
    keywords ``cyclical_factor``, ``wd_min``, ``wd_max``, ``t_min``, ``t_max``, ``clip_min``, ``clip_max``,
    ``cyclical_step_per_update`` and ``cyclical_epochs`` (the span of the schedules and the loss eta; None = the
    returned num_epochs): given any of them, the scheduler returned is a :class:`CyclicalScheduler` around the LR
    scheduler. None (the default) means not given; without them the result is timm's own.
"""


@functools.wraps(_original_kwargs)
def scheduler_kwargs(cfg: Any, decreasing_metric: Optional[bool] = None) -> dict[str, Any]:
    kwargs = _original_kwargs(cfg, decreasing_metric)
    for key, attr in SCHEDULER_ARG_NAMES.items():
        value = getattr(cfg, attr, None)
        if value is not None:
            kwargs[key] = value
    return kwargs


scheduler_kwargs.__doc__ = (_original_kwargs.__doc__ or '') + """
    Added by cfl-timm: the cyclical and OneCycle keywords of the wrapped ``create_scheduler_v2``, each read from
    the attribute of ``cfg`` with train.py's destination name (``wd_min``, ``T_min``, ``onecycle_pct_start``,
    ...) when ``cfg`` has it and it is not None.
"""

_WRAPPED = {'create_scheduler_v2': (_original_create, create_scheduler_v2),
            'scheduler_kwargs': (_original_kwargs, scheduler_kwargs)}


def is_registered() -> bool:
    """Whether timm's public scheduler factory is the wrapped one."""
    return getattr(sys.modules.get('timm.scheduler'), 'create_scheduler_v2', None) is create_scheduler_v2


def register() -> None:
    """Make timm's scheduler factory accept 'onecycle' and the cyclical keywords. Idempotent."""
    for name, module in list(sys.modules.items()):
        if not (name == 'timm' or name.startswith('timm.')):
            continue
        for attr, (original, wrapped) in _WRAPPED.items():
            current = getattr(module, attr, None)
            if callable(current) and current is not wrapped and inspect.unwrap(current) is original:
                setattr(module, attr, wrapped)
