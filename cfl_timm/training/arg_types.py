"""Argparse ``type=`` converters and actions that carry each flag's valid range with its declaration.

A flag declared with one of these cannot be parsed out of range: argparse reports the bad value as a one-line
usage error naming the flag (``train.py: error: argument --grayscale-prob: must be in [0, 1], got 2.0``, exit
status 2). ``-c/--config`` values go through the same converters (:func:`cfl_timm.training.input_checks.
coerce_config_value`), and :class:`Ascending`'s order check through :meth:`Ascending.check`.
"""
import argparse
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from timm.utils import ParseKwargs

__all__ = ['Ascending', 'CONVERTERS', 'INTERPOLATIONS', 'KeyValueArgs', 'MAX_CLASSES', 'PATH_KINDS', 'SEED_MAX',
           'at_least_one', 'check_output_file', 'class_count', 'converter', 'crop_fraction', 'device_name',
           'existing_file', 'existing_folder', 'finite_float', 'float_in', 'fraction', 'int_in', 'integer', 'json_file',
           'non_negative_float', 'non_negative_int', 'npz_file', 'output_file', 'output_file_ending', 'output_folder',
           'path_converter', 'png_file', 'positive_float', 'positive_int', 'probability', 'relative_name', 'seed',
           'writable_folder']

# Every converter a flag may be declared with (tests/test_cli_fuzz.py holds every parser to it): the ones below, and
# any a tool declares with @converter (e.g. cfl_timm.evaluate's --posthoc list).
CONVERTERS: set[Callable[[Any], Any]] = set()


def converter(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Register ``function`` as an argparse ``type=`` converter: it returns the value or raises
    ``argparse.ArgumentTypeError`` saying what is valid."""
    CONVERTERS.add(function)
    return function


# The kind of path each path converter takes, so that tests/test_cli_fuzz.py generates the right wrong paths for it:
# 'file' (an existing file), 'folder' (an existing folder), 'output' (a folder that is or can be made writable),
# 'output_file' (a file to write: not a folder, in a folder that is or can be made writable).
PATH_KINDS: dict[Callable[[Any], Any], str] = {}
_KINDS = ('file', 'folder', 'output', 'output_file')


def path_converter(kind: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register a converter (as :func:`converter` does) that takes a path of ``kind``: 'file', 'folder',
    'output' or 'output_file'."""
    if kind not in _KINDS:
        raise ValueError(f'kind must be one of {_KINDS}, got {kind!r}')

    def register(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
        PATH_KINDS[function] = kind
        return converter(function)
    return register


SEED_MAX = 2 ** 32 - 1  # numpy's seed range, used by timm's random_seed
# timm's resize interpolation names for --interpolation ('' = the model's own).
INTERPOLATIONS = ('', 'nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f'expected a number, got {value!r}')
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f'expected a number, got {value!r}') from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f'must be a finite number, got {value}')
    return number


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise argparse.ArgumentTypeError(f'expected an integer, got {value!r}')
    try:
        return int(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f'expected an integer, got {value!r}') from None


@converter
def finite_float(value: Any) -> float:
    """A finite float (no nan, no inf)."""
    return _float(value)


@converter
def probability(value: Any) -> float:
    """A probability in [0, 1]."""
    number = _float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f'must be a probability in [0, 1], got {number:g}')
    return number


@converter
def integer(value: Any) -> int:
    """Any integer (its range is checked where the value is used, e.g. by a loss factory)."""
    return _int(value)


def _between(number, low: float, high: float, low_open: bool, high_open: bool):
    if number < low or number > high or (low_open and number == low) or (high_open and number == high):
        raise argparse.ArgumentTypeError(f'must be in {"(" if low_open else "["}{low:g}, {high:g}'
                                         f'{")" if high_open else "]"}, got {number:g}')
    return number


def int_in(low: int, high: int, name: str) -> Callable[[Any], int]:
    """A registered converter to an integer in [low, high], named ``name`` (for messages about config values)."""
    def convert(value: Any) -> int:
        number = _int(value)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f'must be an integer in [{low}, {high}], got {number}')
        return number
    convert.__name__ = name
    convert.__doc__ = f'An integer in [{low}, {high}].'
    return converter(convert)


def float_in(low: float, high: float, name: str, *, low_open: bool = False, high_open: bool = False
             ) -> Callable[[Any], float]:
    """A registered converter to a finite float in the interval from ``low`` to ``high`` (open ends as asked)."""
    def convert(value: Any) -> float:
        return _between(_float(value), low, high, low_open=low_open, high_open=high_open)
    convert.__name__ = name
    convert.__doc__ = f'A float in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}.'
    return converter(convert)


@converter
def fraction(value: Any) -> float:
    """A rate in [0, 1): dropout, drop-path, label smoothing."""
    return _between(_float(value), 0.0, 1.0, low_open=False, high_open=True)


@converter
def crop_fraction(value: Any) -> float:
    """A crop fraction in (0, 1]."""
    return _between(_float(value), 0.0, 1.0, low_open=True, high_open=False)


def _at_least(number, low, strict: bool, kind: str = ''):
    if number < low or (strict and number == low):
        raise argparse.ArgumentTypeError(f'must be {kind}{">" if strict else ">="} {low}, got {number:g}')
    return number


@converter
def positive_float(value: Any) -> float:
    """A finite float > 0."""
    return _at_least(_float(value), 0, strict=True)


@converter
def non_negative_float(value: Any) -> float:
    """A finite float >= 0."""
    return _at_least(_float(value), 0, strict=False)


@converter
def positive_int(value: Any) -> int:
    """An integer >= 1."""
    return _at_least(_int(value), 1, strict=False, kind='an integer ')


@converter
def non_negative_int(value: Any) -> int:
    """An integer >= 0."""
    return _at_least(_int(value), 0, strict=False, kind='an integer ')


# Far above any image-classification label set (ImageNet-21k has 21,843); a larger count is a typo, whose
# per-class arrays would not fit in memory.
MAX_CLASSES = 10_000_000
class_count = int_in(1, MAX_CLASSES, 'class_count')
class_count.__doc__ = f'A number of classes: an integer in [1, {MAX_CLASSES}].'


@converter
def at_least_one(value: Any) -> float:
    """A finite float >= 1 (an imbalance ratio, a multiplier that never shrinks)."""
    return _at_least(_float(value), 1, strict=False)


@converter
def seed(value: Any) -> int:
    """A random seed numpy accepts: an integer in [0, 2**32 - 1]."""
    number = _int(value)
    if not 0 <= number <= SEED_MAX:
        raise argparse.ArgumentTypeError(f'must be an integer in [0, {SEED_MAX}], got {number}')
    return number


@path_converter('file')
def existing_file(value: Any) -> str:
    """The path of an existing file ('' = none given)."""
    path = str(value)
    if path and not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f'{path} is a folder, not a file' if os.path.isdir(path)
                                         else f'file not found: {path}')
    return path


@path_converter('folder')
def existing_folder(value: Any) -> str:
    """The path of an existing folder."""
    path = str(value)
    if not path:
        raise argparse.ArgumentTypeError('give a folder, got an empty path')
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f'{path} is a file, not a folder' if os.path.exists(path)
                                         else f'folder not found: {path}')
    return path


def _check_writable(path: str) -> str:
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.islink(probe) and not os.path.exists(probe):  # creating the folder would fail on the dead link
        raise argparse.ArgumentTypeError(f'{probe} is a broken symbolic link (in {path})')
    if not os.path.isdir(probe):
        raise argparse.ArgumentTypeError(f'{probe} is a file, not a folder (in {path})')
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f'folder {probe} is not writable (in {path})')
    return path


@path_converter('output')
def output_folder(value: Any) -> str:
    """A folder to write into: it exists and is writable, or can be created (its nearest existing ancestor is a
    writable folder)."""
    path = str(value)
    if not path:  # an empty path would write into the working folder
        raise argparse.ArgumentTypeError('give a folder, got an empty path')
    return _check_writable(path)


@path_converter('output')
def writable_folder(value: Any) -> str:
    """:func:`output_folder`, or '' for the flag's default (train.py's ``--output ''`` is timm's ./output)."""
    path = str(value)
    return _check_writable(path) if path else path


def check_output_file(path: str, suffix: Optional[str] = None) -> str:
    """``path`` ('' = none given) unless it does not end in ``suffix`` (when given), is a folder, or lies where no
    file can be written (its nearest existing ancestor is not a writable folder); raises
    ``argparse.ArgumentTypeError`` saying which."""
    if not path:
        return path
    target = os.path.expanduser(path)
    if suffix is not None and os.path.splitext(target)[1].lower() != suffix:
        raise argparse.ArgumentTypeError(f'{path}: the file name must end in {suffix}')
    if os.path.isdir(target):
        raise argparse.ArgumentTypeError(f'{path} is a folder: give a file name'
                                         + (f' ending in {suffix}' if suffix else ''))
    _check_writable(os.path.dirname(os.path.abspath(target)))
    return path


@path_converter('output_file')
def output_file(value: Any) -> str:
    """A file to write ('' = none given): not an existing folder, and its folder is writable or can be created."""
    return check_output_file(str(value))


def output_file_ending(suffix: str, name: str) -> Callable[[Any], str]:
    """A registered converter, named ``name``, to the path of a file to write ending in ``suffix`` ('' = none
    given; checked when parsed, so that a long evaluation does not fail at its last step)."""
    def convert(value: Any) -> str:
        return check_output_file(str(value), suffix)
    convert.__name__ = name
    convert.__doc__ = f'A file to write, ending in {suffix}, in a folder that is or can be made writable.'
    return path_converter('output_file')(convert)


json_file = output_file_ending('.json', 'json_file')
png_file = output_file_ending('.png', 'png_file')
npz_file = output_file_ending('.npz', 'npz_file')


@converter
def relative_name(value: Any) -> str:
    """A relative folder name that stays inside its parent: no absolute path, no '.' or '..' part, no control
    character, no blank part ('' = none given: the tool's own name)."""
    name = str(value)
    parts = name.replace('\\', '/').rstrip('/').split('/')
    if name and (os.path.isabs(name) or any(part in ('', '.', '..') or not part.strip() for part in parts)
                 or any(not char.isprintable() for char in name)):
        raise argparse.ArgumentTypeError(f'must be a relative name inside --output (no absolute path, no . or .. '
                                         f'part, no blank part or control character), got {name!r}')
    return name


@converter
def device_name(value: Any) -> str:
    """A torch device name: cpu, cuda, cuda:N, mps, ... (whether it is present is checked where it is used)."""
    name = str(value)
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f'{name!r} is not a device name (cpu, cuda, cuda:N, mps, ...)') from None
    return name


class Ascending(argparse.Action):
    """A list of values in non-decreasing order (a ``low high`` pair, or increasing milestones)."""

    @staticmethod
    def check(values: Sequence[Any]) -> None:
        """Raise ``argparse.ArgumentTypeError`` when ``values`` decrease anywhere."""
        if any(b < a for a, b in zip(values, values[1:])):
            raise argparse.ArgumentTypeError(
                f'values must be in increasing order (low <= high), got {" ".join(f"{v:g}" for v in values)}')

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            self.check(values)
        except argparse.ArgumentTypeError as e:
            parser.error(f'argument {option_string}: {e}')
        setattr(namespace, self.dest, values)


class KeyValueArgs(ParseKwargs):
    """timm's ``ParseKwargs`` (``key=value`` pairs, values read as Python literals, else strings), with an item
    lacking ``=`` reported as a usage error instead of a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values:
            if item and '=' not in item:
                parser.error(f'{option_string}: expected key=value, got {item!r}')
        super().__call__(parser, namespace, values, option_string)
