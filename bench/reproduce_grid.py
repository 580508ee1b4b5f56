"""A user's own grid of train.py runs, described in a YAML file and run like the study's protocols.

The grid is the product models x losses x data settings x seeds; each cell is one train.py run (see
``docs/grid.md``). Example::

    name: my-grid                     # results: RESULTS_DIR/my-grid/runs/
    models: [test_resnet]             # train.py --model
    losses:                           # name -> train.py flags of the loss
      ce: [--smoothing, '0']
      cfl: [--focal_loss, asym-cyclical, --gamma_hc, '3']
    data:                             # name -> train.py data flags (may be empty)
      all: []
    seeds: [0, 1]
    epochs: 1                         # or one number per data setting: {all: 1}
    flags: [--img-size, '32', -b, '64', -j, '0']   # train.py flags of every cell (optional)
    threads: 1                        # torch threads per run (optional)

The file is checked completely before any work starts; a mistake is one ``ValueError`` naming the key.
"""
import re
from pathlib import Path
from typing import Any

from reproduce_protocols import Protocol

__all__ = ['GRID_KEYS', 'load_grid', 'grid_protocol']

GRID_KEYS = {'name': 'a plain name', 'models': 'a non-empty list of model names',
             'losses': 'a non-empty mapping of loss name -> list of train.py flags',
             'data': 'a non-empty mapping of data setting -> list of train.py flags',
             'seeds': 'a non-empty list of integers',
             'epochs': 'a positive integer, or a mapping of every data setting -> positive integer',
             'flags': 'a list of train.py flags (optional)', 'threads': 'a positive integer (optional)',
             'description': 'one line (optional)'}
REQUIRED = ('name', 'models', 'losses', 'data', 'seeds', 'epochs')
_PLAIN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]*$')


def _fail(path: Path, key: str, got: Any) -> ValueError:
    return ValueError(f'grid {path}: {key!r} must be {GRID_KEYS[key.split(".")[0]]}, got {got!r}')


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


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def grid_protocol(spec: Any, path: Path) -> Protocol:
    """The :class:`Protocol` of a parsed grid file ``spec`` (read from ``path``, named in errors)."""
    if not isinstance(spec, dict):
        raise ValueError(f'grid {path}: must be a mapping with keys {list(GRID_KEYS)}, got {type(spec).__name__}')
    unknown = [k for k in spec if k not in GRID_KEYS]
    if unknown:
        raise ValueError(f'grid {path}: unknown key {unknown[0]!r}; valid keys: {list(GRID_KEYS)}')
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise ValueError(f'grid {path}: missing key {missing[0]!r} ({GRID_KEYS[missing[0]]})')
    name = spec['name']
    if not isinstance(name, str) or not _PLAIN.match(name):
        raise _fail(path, 'name', name)
    models = spec['models']
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and _PLAIN.match(m) for m in models):
        raise _fail(path, 'models', models)
    losses = _named_flags(path, 'losses', spec['losses'])
    data = _named_flags(path, 'data', spec['data'])
    seeds = spec['seeds']
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise _fail(path, 'seeds', seeds)
    epochs = spec['epochs']
    if _positive_int(epochs):
        epochs = dict.fromkeys(data, epochs)
    elif not (isinstance(epochs, dict) and set(epochs) == set(data) and all(map(_positive_int, epochs.values()))):
        raise _fail(path, 'epochs', epochs)
    common = _flag_list(path, 'flags', spec.get('flags', []))
    threads = spec.get('threads')
    if threads is not None and not _positive_int(threads):
        raise _fail(path, 'threads', threads)
    description = spec.get('description', f'user grid {name}')
    if not isinstance(description, str):
        raise _fail(path, 'description', description)
    # A method is one (model, loss); the model goes into the name only when the grid has several.
    methods = {(f'{model}+{loss}' if len(models) > 1 else loss): ['--model', model, *flags]
               for model in models for loss, flags in losses.items()}
    return Protocol(name=name, description=description, common=common, data=data, epochs=epochs,
                    grid=dict.fromkeys(data, tuple(methods)), seeds=tuple(seeds), threads=threads,
                    method_flags=methods)


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
