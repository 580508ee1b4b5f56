"""The import layers of ``cfl_timm`` (docs/architecture: imports run one way, downwards).

Every ``.py`` file under ``cfl_timm/`` is parsed with :mod:`ast`; every import statement counts, also one inside a
function or a ``try`` block, so a cycle cannot hide behind a deferred import. The graph:

* a node is a module of ``cfl_timm`` (a package is its ``__init__``, named like the package);
* ``import a.b.c`` and ``from a.b import c`` give an edge to ``a.b.c`` when that is a module of ``cfl_timm``,
  otherwise ``from a.b import c`` gives an edge to ``a.b`` (importing a name from a package's ``__init__``);
  relative imports are resolved against the importing module's package first;
* excluded, and only this: the parent packages that Python runs implicitly before a submodule
  (``import cfl_timm.files`` also runs ``cfl_timm/__init__``). They are no edge, because every module of the
  package is below its ``__init__`` that re-exports it, so counting them would make each re-export a cycle;
  an explicit import of a package (``from cfl_timm import training`` when ``training`` is a re-exported name,
  ``from . import x`` of a name, ``import cfl_timm.data``) is an edge like any other;
* a target that is no file of ``cfl_timm`` is skipped: the ``except ImportError`` fallback of the copyable
  modules (none today; a copied module imports by the same relative path in both layouts).
"""
import ast
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / 'cfl_timm'


def _module_name(path: Path) -> str:
    parts = ('cfl_timm',) + path.relative_to(PACKAGE_DIR).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob('*.py'))}


def _imports(name: str, path: Path) -> list[str]:
    """Absolute names of everything ``path`` imports (unresolved to files), in file order."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - (node.level - 1)]
                stem = '.'.join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            names = [f'{stem}.{alias.name}' for alias in node.names]
            found += names
            if not all(n in _MODULES for n in names):  # a name (not a submodule) is taken from ``stem`` itself
                found.append(stem)
    return found


def _resolve(target: str) -> str | None:
    """The cfl_timm module ``target`` names: itself, or the module it is a name of; None outside cfl_timm."""
    while target and target not in _MODULES:
        target = target.rpartition('.')[0]
    return target or None


_MODULES = _modules()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in _MODULES.items():
        targets = {t for t in _imports(name, path) if t == 'cfl_timm' or t.startswith('cfl_timm.')}
        # a name of a module (``from .files import atomic_write_text``) resolves to that module; a target with
        # no file at all (the patched-timm fallback) is skipped rather than resolved to its parent
        edges = set()
        for target in targets:
            resolved = _resolve(target)
            head = target.rpartition('.')[0]
            if resolved == target or resolved == head:
                edges.add(resolved)
        edges.discard(name)
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None (iterative depth-first search)."""
    state = {}  # 1 on the current path, 2 finished
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for child in graph[todo.pop()] - seen:
            seen.add(child)
            todo.append(child)
    return seen


def test_graph_sees_relative_deferred_and_submodule_imports():
    graph = _graph()
    assert 'cfl_timm.files' in graph['cfl_timm.training.checkpoint']  # from ..files import ...
    assert 'cfl_timm.training.checkpoint' in graph['cfl_timm.training']  # from .checkpoint import ...
    assert 'cfl_timm.models' in graph['cfl_timm']  # from . import models: a subpackage, not cfl_timm itself
    assert 'cfl_timm' not in graph['cfl_timm.models']


def test_find_cycle_reports_a_cycle_behind_a_deferred_import():
    assert _find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
    assert _find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, 'import cycle in cfl_timm: ' + ' -> '.join(cycle)


def test_files_imports_only_the_standard_library():
    imported = _imports('cfl_timm.files', _MODULES['cfl_timm.files'])
    outside = sorted({t for t in imported if t.split('.')[0] not in sys.stdlib_module_names})
    assert not outside, f'cfl_timm/files.py must import only the standard library, imports {outside}'


def test_metrics_never_reach_plotting_or_training():
    graph = _graph()
    for name in (n for n in graph if n == 'cfl_timm.metrics' or n.startswith('cfl_timm.metrics.')):
        bad = sorted(t for t in _reachable(graph, name)
                     if t == 'cfl_timm.plotting' or t == 'cfl_timm.training' or t.startswith('cfl_timm.training.'))
        assert not bad, f'{name} imports {bad} (metrics sit below plotting and training)'
