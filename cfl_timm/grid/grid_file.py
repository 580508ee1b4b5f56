"""Grid files: a grid of train.py runs described in YAML, the study protocols and a user's own grids alike.

Cyclical focal loss (L. N. Smith, arXiv 2202.08978) and general cyclical training (arXiv 2202.08835) were studied
as such grids. A grid is the product losses (x models) x data settings x seeds; each cell is one train.py run
with the flags ``flags``, ``--epochs``, the data setting's flags, ``--model`` and the loss's flags, ``--seed`` (in
this order). Example::

    name: my-grid                     # results: RESULTS_DIR/my-grid/runs/
    models: [test_resnet]             # train.py --model (optional when flags hold --model)
    losses:                           # name -> train.py flags of the loss
      ce: [--smoothing, '0']
      cfl: [--focal_loss, asym-cyclical, --gamma_hc, '3']
    data:                             # name -> train.py data flags (may be empty)
      all: []
    seeds: [0, 1]
    epochs: 1                         # or one number per data setting: {all: 1}
    flags: [--img-size, '32', -b, '64', -j, '0']   # train.py flags of every cell (optional)

The study protocols (``cfl_timm/grid/protocols/*.yaml``) use the optional keys too: ``grid`` (the losses run on
each data setting), ``shot_groups``, ``score_split``, ``temperature_scaling``, ``baselines``, ``pairs``, ``focus``,
and ``evaluation`` (what ``cfl-grid evaluate`` computes from each finished run, :mod:`cfl_timm.grid.evaluation`)::

    evaluation:
      posthoc: [ts, vs, ms, dirichlet, hist, iso]       # fitted on each run's --holdout split
      shift: {split: monitor, seed: 0, num_samples: 250}  # optional; also corruptions: [...] (default all 15)
A file is checked completely before any work starts; a mistake is one ``ValueError`` naming the file and the key.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cfl_timm.data.corruptions import CORRUPTIONS
from cfl_timm.data.subsets import SHOT_GROUPS, SHOT_RULES, long_tailed_counts, shot_group_classes
from cfl_timm.metrics import POSTHOC_METHODS

from .runner import Cell

__all__ = ['GRID_KEYS', 'PROTOCOL_DIR', 'EvaluationConfig', 'Protocol', 'ShiftConfig', 'grid_protocol', 'load_grid',
           'load_protocol', 'protocol_names']

PROTOCOL_DIR = Path(__file__).resolve().parent / 'protocols'

GRID_KEYS = {
    'name': 'a plain name',
    'description': 'one line (optional)',
    'models': 'a non-empty list of model names (optional when flags hold --model)',
    'losses': 'a non-empty mapping of loss name -> list of train.py flags',
    'data': 'a non-empty mapping of data setting -> list of train.py flags',
    'seeds': 'a non-empty list of integers',
    'epochs': 'a positive integer, or a mapping of every data setting -> positive integer',
    'flags': 'a list of train.py flags (optional)',
    'threads': 'a positive integer (optional)',
    'grid': 'a mapping of data setting -> non-empty list of its losses (optional; default every loss everywhere)',
    'shot_groups': 'a mapping of data setting -> {num_classes: K[, rule: paper|code]} (OLTR\'s groups of the '
                   "setting's long-tailed counts) or {many, medium, few: lists of classes} (optional)",
    'score_split': 'a split name scored on the last checkpoint (optional)',
    'temperature_scaling': 'true or false (optional; needs score_split and --holdout)',
    'baselines': 'a list of losses every loss is compared with (optional)',
    'pairs': 'a list of [cyclical, constant] loss pairs (optional)',
    'focus': 'a list of losses compared with every other loss of their data setting (optional)',
    'notes': 'free text (optional)',
    'evaluation': 'a mapping with posthoc (a list of post-hoc methods) and shift (optional; needs score_split, '
                  'and --holdout for posthoc)',
}
EVALUATION_KEYS = {
    'posthoc': f'a list of post-hoc methods from {list(POSTHOC_METHODS)}, fitted on the held-out split (optional)',
    'shift': 'a mapping {split: SPLIT, seed: N, num_samples: N, corruptions: [...]} (optional; seed, num_samples '
             'and corruptions optional)',
}
SHIFT_KEYS = {
    'split': 'a plain name: the clean images are DATA_DIR/<split>',
    'seed': 'an integer >= 0 (the corruptions\' seed; default 0)',
    'num_samples': 'a positive integer (evenly spaced images of each set; default all)',
    'corruptions': f'a non-empty list from {list(CORRUPTIONS)} (default all 15)',
}
DEFAULT_BASELINES = ('ce', 'ce_ls0.1')  # those of them among the grid's losses
REQUIRED = ('name', 'losses', 'data', 'seeds', 'epochs')


@dataclass(frozen=True)
class ShiftConfig:
    """The distribution-shift part of a grid's evaluation: a CIFAR-10-C-style set generated from one data split.

    Attributes:
        split: the clean images, ``DATA_DIR/<split>`` (a class-folder tree).
        seed: seed of the generated corruptions.
        num_samples: evaluate this many evenly spaced images of every set (None: all).
        corruptions: the corruptions generated and evaluated (default the benchmark's 15).
    """
    split: str
    seed: int = 0
    num_samples: Optional[int] = None
    corruptions: tuple[str, ...] = CORRUPTIONS


@dataclass(frozen=True)
class EvaluationConfig:
    """What ``cfl-grid evaluate`` computes from each finished run (:mod:`cfl_timm.grid.evaluation`).

    Attributes:
        posthoc: post-hoc calibrators (names of :data:`cfl_timm.metrics.POSTHOC_METHODS`), fitted on the run's
            held-out split and applied to its scored split.
        shift: the distribution-shift evaluation (None: none).
    """
    posthoc: tuple[str, ...] = ()
    shift: Optional[ShiftConfig] = None

_PLAIN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]*$')


@dataclass(frozen=True)
class Protocol:
    """One grid: train.py flags shared by every cell, the data settings, the methods run on each, the seeds.

    Attributes:
        name: the grid's name (per-run results go to ``RESULTS_DIR/<name>/runs/``).
        description: one line for the results table.
        common: train.py flags of every cell.
        data: data setting -> train.py subset flags (``--train_size`` / ``--imbalance_ratio``, ``--holdout``).
        epochs: data setting -> training epochs.
        grid: data setting -> the methods run on it.
        method_flags: method (a loss, or model+loss) -> its train.py flags.
        seeds: the seeds (paired: one initialisation and data order per seed, shared by every method).
        threads: torch threads per training process (None: torch's default).
        shot_groups: data setting -> shot group -> classes.
        score_split: the split scored at the end on the last checkpoint (None: only train.py's own evaluation).
        temperature_scaling: fit a temperature on the ``--holdout`` split and score before and after it.
        baselines: the methods every other method is compared with (seed-paired differences).
        pairs: (cyclical, constant) method pairs compared with each other.
        focus: the methods the study asks about, each compared (seed-paired) with every other loss of its setting.
        notes: free-form facts (pilot, timing).
        evaluation: what ``cfl-grid evaluate`` computes from each finished run (None: the grid has none).
    """
    name: str
    description: str
    common: list[str]
    data: dict[str, list[str]]
    epochs: dict[str, int]
    grid: dict[str, tuple[str, ...]]
    method_flags: dict[str, list[str]]
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: Optional[int] = None
    shot_groups: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    score_split: Optional[str] = None
    temperature_scaling: bool = False
    baselines: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    focus: tuple[str, ...] = ()
    notes: str = ''
    evaluation: Optional[EvaluationConfig] = None

    @property
    def cyclical_methods(self) -> tuple[str, ...]:
        """The methods of the cyclical/constant pairs (a question of their own, not a loss to compare with)."""
        return tuple(m for pair in self.pairs for m in pair)

    @property
    def data_settings(self) -> tuple[str, ...]:
        return tuple(self.grid)

    @property
    def methods(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for methods in self.grid.values():
            seen.update(dict.fromkeys(methods))
        return tuple(seen)

    def cells(self) -> list[Cell]:
        # Seed-major order: if a grid is cut short, the finished seeds are complete grids.
        return [Cell(loss=method, data=data, seed=seed)
                for seed in self.seeds for data, methods in self.grid.items() for method in methods]

    def flags_of(self, method: str) -> list[str]:
        """The train.py flags of ``method``."""
        return self.method_flags[method]

    def train_flags(self, cell: Cell) -> list[str]:
        """The cell's train.py flags after ``--data-dir``: common, epochs, data subset, method, seed."""
        return [*self.common, '--epochs', str(self.epochs[cell.data]), *self.data[cell.data],
                *self.flags_of(cell.loss), '--seed', str(cell.seed)]


def _fail(path: Path, key: str, got: Any) -> ValueError:
    return ValueError(f'grid {path}: {key!r} must be {GRID_KEYS[key.split(".")[0]]}, got {got!r}')


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _flag_list(path: Path, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                              for v in value):
        raise _fail(path, key, value)
    return [str(v) for v in value]


def _named_flags(path: Path, key: str, value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict) or not value:
        raise _fail(path, key, value)
    for name in value:
        if not isinstance(name, str) or not _PLAIN.match(name) or '__' in name:
            raise ValueError(f'grid {path}: {key!r} name {name!r} must be plain (letters, digits, . _ + -, no "__")')
    return {name: _flag_list(path, f'{key}.{name}', [] if flags is None else flags)
            for name, flags in value.items()}


def _names(path: Path, key: str, value: Any, valid) -> tuple[str, ...]:
    """A list of names, each one of ``valid``."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, key, value)
    unknown = [v for v in value if v not in valid]
    if unknown:
        raise ValueError(f'grid {path}: {key!r} names {unknown[0]!r}, not one of {list(valid)}')
    return tuple(value)


def _flag_value(flags: list[str], flag: str) -> Optional[str]:
    """The value train.py's argparse would take for ``flag`` (either spelling, ``--f v`` or ``--f=v``; the last
    occurrence wins), or None."""
    value, key = None, flag.replace('_', '-')
    for i, item in enumerate(flags):
        name, eq, inline = item.partition('=')
        if name.replace('_', '-') == key:
            value = inline if eq else (flags[i + 1] if i + 1 < len(flags) else None)
    return value


def _shot_groups(path: Path, setting: str, value: Any, flags: list[str]) -> dict[str, tuple[int, ...]]:
    """One data setting's shot groups: explicit class lists, or OLTR's rule applied to the long-tailed counts of
    the setting's own ``--imbalance_ratio`` / ``--imbalance_max`` flags (``flags``: every flag of its cells)."""
    key = f'shot_groups.{setting}'
    if isinstance(value, dict) and set(value) == set(SHOT_GROUPS):
        if not all(isinstance(v, list) and all(_is_int(c) and c >= 0 for c in v) for v in value.values()):
            raise _fail(path, key, value)
        return {group: tuple(value[group]) for group in SHOT_GROUPS}
    if not (isinstance(value, dict) and 'num_classes' in value and set(value) <= {'num_classes', 'rule'}
            and _positive_int(value['num_classes']) and value.get('rule', 'paper') in SHOT_RULES):
        raise _fail(path, key, value)
    ratio, n_max = _flag_value(flags, '--imbalance-ratio'), _flag_value(flags, '--imbalance-max')
    try:
        counts = long_tailed_counts(int(n_max), value['num_classes'], float(ratio))
    except (TypeError, ValueError) as error:
        raise ValueError(f'grid {path}: {key!r} needs the data setting\'s --imbalance_ratio and --imbalance_max '
                         f'flags (got {ratio!r}, {n_max!r}): {error}') from None
    return shot_group_classes(counts, rule=value.get('rule', 'paper'))


def _mapping(path: Path, key: Optional[str], value: Any, keys: dict[str, str], required: tuple[str, ...]
             ) -> dict[str, Any]:
    """The grid file (``key`` None) or one of its nested mappings, with only ``keys`` and every one of ``required``."""
    prefix = f'{key}.' if key else ''
    if not isinstance(value, dict):
        raise ValueError(f'grid {path}: {f"{key!r} " if key else ""}must be a mapping with keys {list(keys)}, got '
                         f'{type(value).__name__}')
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise ValueError(f'grid {path}: unknown key {prefix}{unknown[0]!r}; valid keys: {list(keys)}')
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f'grid {path}: missing key {prefix}{missing[0]!r} ({keys[missing[0]]})')
    return value


def _evaluation(path: Path, spec: Any, score_split: Optional[str],
                data_flags: dict[str, list[str]]) -> EvaluationConfig:
    """The ``evaluation`` key: post-hoc methods (each data setting must hold out a split to fit them on) and the
    optional shift set."""
    spec = _mapping(path, 'evaluation', spec, EVALUATION_KEYS, ())
    if score_split is None:
        raise ValueError(f"grid {path}: 'evaluation' needs 'score_split' (the split the runs are scored and "
                         'evaluated on)')
    posthoc = spec.get('posthoc', [])
    if not isinstance(posthoc, list) or len(set(map(str, posthoc))) != len(posthoc):
        raise ValueError(f"grid {path}: 'evaluation.posthoc' must be {EVALUATION_KEYS['posthoc']} (no repeats), "
                         f'got {posthoc!r}')
    posthoc = _names(path, 'evaluation.posthoc', posthoc, POSTHOC_METHODS)
    no_holdout = [setting for setting, flags in data_flags.items() if not _flag_value(flags, '--holdout')]
    if posthoc and no_holdout:
        raise ValueError(f"grid {path}: 'evaluation.posthoc' fits on the held-out split, but data setting "
                         f'{no_holdout[0]!r} has no --holdout flag')
    shift = None
    if spec.get('shift') is not None:
        value = _mapping(path, 'evaluation.shift', spec['shift'], SHIFT_KEYS, ('split',))
        checks = {'split': lambda v: isinstance(v, str) and bool(_PLAIN.match(v)),
                  'seed': lambda v: _is_int(v) and v >= 0, 'num_samples': _positive_int,
                  'corruptions': lambda v: (isinstance(v, list) and bool(v) and len(set(map(str, v))) == len(v)
                                            and all(c in CORRUPTIONS for c in v))}
        for key, item in value.items():
            if not checks[key](item):
                raise ValueError(f'grid {path}: \'evaluation.shift.{key}\' must be {SHIFT_KEYS[key]}, got {item!r}')
        shift = ShiftConfig(split=value['split'], seed=value.get('seed', 0), num_samples=value.get('num_samples'),
                            corruptions=tuple(value.get('corruptions', CORRUPTIONS)))
    return EvaluationConfig(posthoc=posthoc, shift=shift)


def grid_protocol(spec: Any, path: Path) -> Protocol:
    """The :class:`Protocol` of a parsed grid file ``spec`` (read from ``path``, named in errors)."""
    _mapping(path, None, spec, GRID_KEYS, REQUIRED)
    name = spec['name']
    if not isinstance(name, str) or not _PLAIN.match(name):
        raise _fail(path, 'name', name)
    common = _flag_list(path, 'flags', spec.get('flags', []))
    models = spec.get('models')
    if models is None:
        if '--model' not in common and '-m' not in common:
            raise ValueError(f"grid {path}: missing key 'models' ({GRID_KEYS['models']})")
        models = [None]
    elif not isinstance(models, list) or not models or not all(isinstance(m, str) and _PLAIN.match(m)
                                                               for m in models):
        raise _fail(path, 'models', models)
    losses = _named_flags(path, 'losses', spec['losses'])
    data = _named_flags(path, 'data', spec['data'])
    seeds = spec['seeds']
    if not isinstance(seeds, list) or not seeds or not all(map(_is_int, seeds)) or len(set(seeds)) != len(seeds):
        raise _fail(path, 'seeds', seeds)
    epochs = spec['epochs']
    if _positive_int(epochs):
        epochs = dict.fromkeys(data, epochs)
    elif not (isinstance(epochs, dict) and set(epochs) == set(data) and all(map(_positive_int, epochs.values()))):
        raise _fail(path, 'epochs', epochs)
    threads = spec.get('threads')
    if threads is not None and not _positive_int(threads):
        raise _fail(path, 'threads', threads)
    texts = {key: spec.get(key, default) for key, default in
             (('description', f'grid {name}'), ('notes', ''), ('score_split', None))}
    for key, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise _fail(path, key, value)
    temperature_scaling = spec.get('temperature_scaling', False)
    if not isinstance(temperature_scaling, bool) or (temperature_scaling and texts['score_split'] is None):
        raise _fail(path, 'temperature_scaling', temperature_scaling)
    # A method is one (model, loss); the model goes into the name only when the grid has several.
    methods = {(f'{model}+{loss}' if len(models) > 1 else loss): ([] if model is None else ['--model', model]) + flags
               for model in models for loss, flags in losses.items()}
    grid_spec = spec.get('grid')
    if grid_spec is None:
        grid = dict.fromkeys(data, tuple(methods))
    else:
        if not isinstance(grid_spec, dict) or not grid_spec:
            raise _fail(path, 'grid', grid_spec)
        _names(path, 'grid', list(grid_spec), data)
        grid = {setting: _names(path, f'grid.{setting}', grid_spec[setting], methods) for setting in grid_spec}
        if not all(grid.values()):
            raise _fail(path, 'grid', grid_spec)
    in_grid = {m for ms in grid.values() for m in ms}
    shots = spec.get('shot_groups', {})
    if not isinstance(shots, dict):
        raise _fail(path, 'shot_groups', shots)
    _names(path, 'shot_groups', list(shots), data)
    pairs = spec.get('pairs', [])
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise _fail(path, 'pairs', pairs)
    for pair in pairs:
        _names(path, 'pairs', pair, in_grid)
    return Protocol(
        name=name, description=texts['description'], common=common, data=data, epochs=epochs, grid=grid,
        method_flags=methods, seeds=tuple(seeds), threads=threads,
        shot_groups={setting: _shot_groups(path, setting, value, [*common, *data[setting]])
                     for setting, value in shots.items()},
        score_split=texts['score_split'], temperature_scaling=temperature_scaling,
        baselines=_names(path, 'baselines', spec.get('baselines', [m for m in DEFAULT_BASELINES if m in methods]),
                         methods),
        pairs=tuple(tuple(p) for p in pairs), focus=_names(path, 'focus', spec.get('focus', []), in_grid),
        notes=texts['notes'],
        evaluation=None if spec.get('evaluation') is None else _evaluation(
            path, spec['evaluation'], texts['score_split'], {s: [*common, *data[s]] for s in grid}))


def load_grid(path: Path) -> Protocol:
    """The :class:`Protocol` of the YAML grid file ``path``; a missing, unreadable or invalid file is a
    ``ValueError`` naming the file (and the key)."""
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(f'grid {path}: cannot read it ({error.strerror})') from None
    except yaml.YAMLError as error:
        raise ValueError(f'grid {path}: not valid YAML ({str(error).splitlines()[0]})') from None
    return grid_protocol(spec, path)


def protocol_names() -> tuple[str, ...]:
    """The study protocols shipped with the package (``cfl_timm/grid/protocols/<name>.yaml``)."""
    return tuple(sorted(p.stem for p in PROTOCOL_DIR.glob('*.yaml')))


def load_protocol(name: str) -> Protocol:
    """The study protocol ``name`` (one of :func:`protocol_names`)."""
    if name not in protocol_names():
        raise ValueError(f'protocol {name!r}: not a study protocol; valid: {list(protocol_names())}')
    protocol = load_grid(PROTOCOL_DIR / f'{name}.yaml')
    if protocol.name != name:
        raise ValueError(f'protocol file {name}.yaml names itself {protocol.name!r}')
    return protocol
