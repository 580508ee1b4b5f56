"""What every cfl-timm loss module shares: the reductions and the checks of constructor arguments, with one
message form (``<loss>: <argument> must be ...`` / ``<loss>: unknown <argument> ..., expected one of ...``).

Standard library only, so ``patches/apply.py`` can copy it into ``timm/loss/`` with the loss modules that import
it (relative imports among the copied files work in both layouts).
"""
import math
import numbers
from typing import Any

__all__ = ['REDUCTIONS', 'check_choice', 'check_number', 'check_reduction']

# How a loss reduces its per-sample values over the batch.
REDUCTIONS = ('none', 'mean', 'sum')


def check_number(owner: str, name: str, value: Any, low: float = 0.0) -> float:
    """``value`` as a float, or a ValueError unless it is a real number (not a bool), finite and >= ``low``.

    Args:
        owner: Who takes the argument (a loss type or class name), the start of the message.
        name: The argument's name as the caller spells it.
        value: The given value.
        low: The smallest valid value (``-math.inf`` for any finite number).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < low:
        raise ValueError(f'{owner}: {name} must be a finite number >= {low:g}, got {value!r}.')
    return float(value)


def check_choice(owner: str, name: str, value: Any, choices: tuple) -> Any:
    """``value``, or a ValueError naming the valid ``choices`` unless it is one of them."""
    if value not in choices:
        raise ValueError(f'{owner}: unknown {name} {value!r}, expected one of {choices}.')
    return value


def check_reduction(owner: str, reduction: Any) -> str:
    """``reduction``, or a ValueError unless it is one of :data:`REDUCTIONS`."""
    return check_choice(owner, 'reduction', reduction, REDUCTIONS)
