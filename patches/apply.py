#!/usr/bin/env python3
"""Add cyclical focal loss and cyclical training to an existing timm checkout, or take them out again.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 and
"General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835

Usage::

    python patches/apply.py PATH_TO_TIMM_CHECKOUT [--dry-run] [--revert] [--library-only] [--write-diff FILE]

The checkout is timm's repository layout: ``train.py`` at its root and the ``timm/`` package beside it
(``--library-only`` patches the ``timm/`` package alone, e.g. an installed wheel laid out as a checkout).

What it does (see docs/patches.md):

- copies this project's modules into the checkout, verbatim and under the same names (:data:`COPIED_FILES`):
  the loss package ``cfl_timm/loss/`` into ``timm/loss/`` (its base ``_base.py``, the focal family, the
  calibration losses and the one factory ``cfl_loss_factory.py``) and the scheduler modules of
  ``cfl_timm/scheduler/`` into ``timm/scheduler/`` (``CyclicalScheduler``, ``OneCycleLRScheduler`` and their
  registration into timm's scheduler factory), and beside them ``cfl_timm/training/cyclical_args.py`` (the
  train.py flags, their checks and the loss choice: the same module that defines those flags for this project's
  own train.py) with the flag types it uses, ``cfl_timm/training/arg_types.py``;
- inserts lines into ``timm/loss/__init__.py`` (exports), ``timm/loss/_loss_factory.py`` where the checkout
  has one (every cfl-timm loss type joins ``create_classification_loss``), ``timm/scheduler/__init__.py``
  (registers 'onecycle' and the cyclical keywords with ``create_scheduler_v2`` / ``scheduler_kwargs``) and
  ``train.py`` (flags, loss choice, the loss attached to the scheduler, the scheduled clip threshold, summary
  columns).

Insertion points are found from the code's structure with :mod:`ast` (a named statement or function), never
from line numbers. No diff is stored: ``--write-diff FILE`` (or ``--dry-run``) produces it from the checkout at
hand and the current modules. Every inserted line carries the marker ``# cfl-timm`` and no upstream line is changed, so
``--revert`` (dropping the marked lines and deleting the copied files) restores each file byte for byte, and a
second run changes nothing. Every problem (a missing anchor, source file or checkout file, a read-only target,
a foreign file at a copy destination) is found before anything is written: then nothing is written and each
problem is named.

Standard library only, and nothing imported from this project: the tool runs with a bare ``python3`` (3.10+)
that has neither torch nor cfl-timm installed.
"""
import argparse
import ast
import difflib
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = '# cfl-timm'

# Destination in the checkout -> source in this repository. Copied byte for byte.
COPIED_FILES = {
    'timm/loss/_base.py': 'cfl_timm/loss/_base.py',
    'timm/loss/cyclical_focal_loss.py': 'cfl_timm/loss/cyclical_focal_loss.py',
    'timm/loss/calibration_losses.py': 'cfl_timm/loss/calibration_losses.py',
    'timm/loss/cfl_loss_factory.py': 'cfl_timm/loss/cfl_loss_factory.py',
    'timm/scheduler/cyclical_value.py': 'cfl_timm/scheduler/cyclical_value.py',
    'timm/scheduler/cyclical_weight_decay.py': 'cfl_timm/scheduler/cyclical_weight_decay.py',
    'timm/scheduler/cyclical_scheduler.py': 'cfl_timm/scheduler/cyclical_scheduler.py',
    'timm/scheduler/onecycle.py': 'cfl_timm/scheduler/onecycle.py',
    'timm/scheduler/scheduler_registry.py': 'cfl_timm/scheduler/scheduler_registry.py',
    'timm/scheduler/cyclical_args.py': 'cfl_timm/training/cyclical_args.py',
    'timm/scheduler/arg_types.py': 'cfl_timm/training/arg_types.py',
}
# What a copied module may import: it has to work inside any timm checkout.
ALLOWED_IMPORTS = {'argparse', 'collections', 'copy', 'functools', 'inspect', 'math', 'numbers', 'os', 'sys', 'typing',
                   'torch', 'timm'}
LOSS_INIT = 'timm/loss/__init__.py'
LOSS_FACTORY = 'timm/loss/_loss_factory.py'
SCHEDULER_INIT = 'timm/scheduler/__init__.py'
TRAIN = 'train.py'


class PatchError(Exception):
    """The checkout cannot be patched (or reverted); the message names every reason."""


@dataclass
class Insert:
    """Lines inserted before line ``index`` (0-based) of the original file, each at ``indent``."""
    index: int
    indent: str
    lines: list[str]


@dataclass
class FilePlan:
    """The edits of one inserted-into file, or the anchors that could not be found."""
    inserts: list[Insert] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Source helpers


def _relative_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    """The module-level ``from .x import ...`` statements of a parsed file (where new imports are inserted)."""
    return [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 1]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, line endings as given) to ``path`` atomically: a temp file in the same folder is
    fsynced, then moved over ``path`` with ``os.replace``, so a crash leaves the old file or the new one, never a
    torn one. A replaced file keeps its mode; a new one gets 0666 minus the umask, as with ``open()``.

    Deliberately not cfl_timm's writer: this script has to run where cfl-timm (and torch) is not installed.
    """
    try:
        keep_mode: Optional[int] = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        keep_mode = None
    tmp = path.with_name(f'.{path.name}.{secrets.token_hex(6)}.tmp')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if keep_mode is not None:
            os.fchmod(fd, keep_mode)
        with os.fdopen(fd, 'wb') as f:
            f.write(text.encode('utf-8'))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_text(path: Path) -> str:
    with open(path, newline='', encoding='utf-8') as f:  # line endings kept as they are, so a revert is byte for byte
        return f.read()


def split_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def newline_of(text: str) -> str:
    return '\r\n' if '\r\n' in text.split('\n', 1)[0] + '\n' else '\n'


def strip_marked(text: str) -> str:
    """The file without the lines this tool inserted (exactly the upstream file)."""
    return ''.join(line for line in split_lines(text) if MARKER not in line)


def render(original: str, inserts: list[Insert]) -> str:
    lines = split_lines(original)
    newline = newline_of(original)
    if lines and not lines[-1].endswith(('\n', '\r')):
        lines[-1] += newline  # only reached when a line is appended after an unterminated last line
    by_index: dict[int, list[str]] = {}
    for insert in inserts:
        by_index.setdefault(insert.index, []).extend(
            f'{insert.indent}{line}{"" if MARKER in line else "  " + MARKER}{newline}' for line in insert.lines)
    out = []
    for index in range(len(lines) + 1):
        out.extend(by_index.get(index, []))
        if index < len(lines):
            out.append(lines[index])
    return ''.join(out)


def indent_of(lines: list[str], node: ast.AST) -> str:
    line = lines[node.lineno - 1]
    return line[:len(line) - len(line.lstrip())]


def call_name(node: Optional[ast.AST]) -> Optional[str]:
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            return func.id
        if isinstance(func, ast.Attribute):
            return func.attr
    return None


def assigned_names(node: ast.AST) -> set[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, 'target', None)]
    names = set()
    for target in targets:
        for sub in ast.walk(target) if target is not None else ():
            if isinstance(sub, ast.Name):
                names.add(sub.id)
    return names


def module_function(tree: ast.Module, name: str) -> Optional[ast.FunctionDef]:
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def statements(func: ast.AST) -> Iterator[ast.stmt]:
    """Every statement inside ``func`` (nested blocks included), in source order."""
    found = [n for n in ast.walk(func) if isinstance(n, ast.stmt) and n is not func]
    return iter(sorted(found, key=lambda n: (n.lineno, n.col_offset)))


def find_statement(func: ast.AST, predicate: Callable[[ast.stmt], bool]) -> Optional[ast.stmt]:
    return next((n for n in statements(func) if predicate(n)), None)


def body_start(func: ast.FunctionDef) -> ast.stmt:
    """The first statement of ``func`` after its docstring."""
    body = func.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], 'value', None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1]
    return body[0]


def last_parameter_line(lines: list[str], func: ast.FunctionDef) -> Optional[int]:
    """0-based index of the line ending the last parameter, when the signature is one parameter a line with a
    trailing comma (timm's style), so a keyword parameter can be added as a line of its own."""
    args = func.args
    if args.vararg or args.kwarg:
        return None
    params = args.posonlyargs + args.args + args.kwonlyargs
    defaults = [d for d in args.defaults + args.kw_defaults if d is not None]
    nodes = params + defaults
    if not nodes:
        return None
    end = max(n.end_lineno for n in nodes)
    if not lines[end - 1].split('#', 1)[0].rstrip().endswith(','):
        return None
    return end


def uses_name(func: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name or isinstance(n, ast.arg) and n.arg == name
               for n in ast.walk(func))


# ---------------------------------------------------------------------------------------------------------------
# Anchors: each file's insertion points, from its structure


def plan_loss_init(source: str) -> FilePlan:
    plan = FilePlan()
    tree = ast.parse(source)
    imports = _relative_imports(tree)
    if not imports:
        plan.missing.append(f'{LOSS_INIT}: a module-level relative import (from .x import ...)')
        return plan
    plan.inserts.append(Insert(imports[-1].end_lineno, '', [
        'from .cyclical_focal_loss import FOCAL_LOSS_TYPES, AsymmetricFocalLoss, CyclicalFocalLoss, FocalLoss, '
        'cyclical_eta',
        'from .calibration_losses import CALIBRATION_LOSS_TYPES, AdaFocalLoss',
        'from .cfl_loss_factory import LOSS_TYPES as CFL_LOSS_TYPES, create_loss as create_cfl_loss',
    ]))
    return plan


def plan_loss_factory(source: str) -> FilePlan:
    plan = FilePlan()
    tree = ast.parse(source)
    lines = split_lines(source)
    imports = _relative_imports(tree)
    if imports:
        plan.inserts.append(Insert(imports[-1].end_lineno, '', [
            'from .cfl_loss_factory import LOSS_TYPES as CFL_LOSS_TYPES, create_loss as create_cfl_loss']))
    else:
        plan.missing.append(f'{LOSS_FACTORY}: a module-level relative import (from .x import ...)')
    loss_types = next((n for n in tree.body if isinstance(n, ast.Assign) and assigned_names(n) == {'LOSS_TYPES'}),
                      None)
    if loss_types is not None:
        plan.inserts.append(Insert(loss_types.end_lineno, '', ['LOSS_TYPES = LOSS_TYPES + CFL_LOSS_TYPES']))
    else:
        plan.missing.append(f'{LOSS_FACTORY}: the module-level assignment LOSS_TYPES = (...)')
    func = module_function(tree, 'create_classification_loss')
    if func is None:
        plan.missing.append(f'{LOSS_FACTORY}: def create_classification_loss(...)')
        return plan
    params = {a.arg for a in func.args.args + func.args.kwonlyargs}
    needed = ('loss_type', 'multi_label', 'smoothing', 'soft_targets')
    if not set(needed) <= params:
        plan.missing.append(f'{LOSS_FACTORY}: create_classification_loss parameters {needed}')
    end = last_parameter_line(lines, func)
    if end is None:
        plan.missing.append(f'{LOSS_FACTORY}: create_classification_loss signature with one parameter a line, '
                            'a trailing comma and no **kwargs')
    if plan.missing:
        return plan
    param_indent = indent_of(lines, func.args.args[-1])
    plan.inserts.append(Insert(end, param_indent, ['**cfl_kwargs,']))
    first = body_start(func)
    body_indent = indent_of(lines, first)
    plan.inserts.append(Insert(first.lineno - 1, body_indent, [
        'if loss_type in CFL_LOSS_TYPES:',
        '    if multi_label:',
        '        raise ValueError(f"Loss type \'{loss_type}\' does not support multi-label targets.")',
        "    if 'loss_reduction' in cfl_kwargs:",
        "        cfl_kwargs['reduction'] = cfl_kwargs.pop('loss_reduction')",
        '    return create_cfl_loss(loss_type, smoothing=smoothing, soft_targets=soft_targets, **cfl_kwargs)',
        'if cfl_kwargs:',
        '    raise TypeError(f"Arguments {sorted(cfl_kwargs)} only apply to the loss types {CFL_LOSS_TYPES}.")',
    ]))
    return plan


def plan_scheduler_init(source: str) -> FilePlan:
    plan = FilePlan()
    tree = ast.parse(source)
    imports = _relative_imports(tree)
    if not any(n.module == 'scheduler_factory' for n in imports):
        plan.missing.append(f'{SCHEDULER_INIT}: the module-level "from .scheduler_factory import ..."')
        return plan
    plan.inserts.append(Insert(imports[-1].end_lineno, '', [
        'from .cyclical_scheduler import CyclicalScheduler, scheduled_clip_args',
        'from .onecycle import OneCycleLRScheduler',
        'from .scheduler_registry import register as _register_cfl_schedules',
        '_register_cfl_schedules()',
    ]))
    return plan


def plan_train(source: str) -> FilePlan:
    plan = FilePlan()
    tree = ast.parse(source)
    lines = split_lines(source)

    def need(node: Optional[ast.AST], what: str) -> bool:
        if node is None:
            plan.missing.append(f'{TRAIN}: {what}')
        return node is not None

    timm_loss_import = next(
        (n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == 'timm.loss' and n.level == 0), None)
    if need(timm_loss_import, 'the module-level import "from timm.loss import ..."'):
        plan.inserts.append(Insert(timm_loss_import.end_lineno, '', [
            'from timm.scheduler.cyclical_args import (',
            '    add_train_py_args, check_train_py_args, create_train_py_loss, cyclical_summary,',
            '    scheduled_clip_args)']))

    parser_assign = next((n for n in tree.body if isinstance(n, ast.Assign) and 'parser' in assigned_names(n)
                          and call_name(n.value) == 'ArgumentParser'), None)
    parse_args_def = module_function(tree, '_parse_args')
    if need(parser_assign, 'the module-level "parser = argparse.ArgumentParser(...)"') and \
            need(parse_args_def, 'def _parse_args()'):
        before = [n for n in tree.body if n.end_lineno < parse_args_def.lineno]
        if before and before[-1].lineno >= parser_assign.lineno:
            # after the last module-level statement that adds flags, before def _parse_args
            plan.inserts.append(Insert(before[-1].end_lineno, '', ['add_train_py_args(parser)']))
        else:
            plan.missing.append(f'{TRAIN}: module-level flag definitions between "parser = ..." and _parse_args')

    main = module_function(tree, 'main')
    if need(main, 'def main()'):
        parsed = find_statement(main, lambda n: isinstance(n, ast.Assign) and call_name(n.value) == '_parse_args')
        if need(parsed, 'main(): "args, args_text = _parse_args()"'):
            plan.inserts.append(Insert(parsed.end_lineno, indent_of(lines, parsed), ['check_train_py_args(args)']))
        mixup = find_statement(main, lambda n: isinstance(n, ast.Assign) and 'mixup_active' in assigned_names(n))
        to_device = find_statement(main, lambda n: isinstance(n, ast.Assign)
                                   and assigned_names(n) == {'train_loss_fn'} and call_name(n.value) == 'to'
                                   and isinstance(n.value.func.value, ast.Name)
                                   and n.value.func.value.id == 'train_loss_fn')
        if need(mixup, 'main(): "mixup_active = ..."') and \
                need(to_device, 'main(): "train_loss_fn = train_loss_fn.to(...)"'):
            plan.inserts.append(Insert(to_device.lineno - 1, indent_of(lines, to_device), [
                'train_loss_fn = create_train_py_loss(train_loss_fn, args, mixup_active=mixup_active)']))
        scheduler = find_statement(main, lambda n: isinstance(n, ast.Assign) and call_name(n.value)
                                   == 'create_scheduler_v2' and {'lr_scheduler', 'num_epochs'} <= assigned_names(n))
        if need(scheduler, 'main(): "lr_scheduler, num_epochs = create_scheduler_v2(...)"'):
            # timm's factory, patched, returns the CyclicalScheduler: the loss follows its position.
            plan.inserts.append(Insert(scheduler.end_lineno, indent_of(lines, scheduler), [
                'lr_scheduler.attach_loss(train_loss_fn)']))
        call = find_statement(main, lambda n: isinstance(n, ast.Assign) and call_name(n.value) == 'train_one_epoch'
                              and 'train_metrics' in assigned_names(n))
        if need(call, 'main(): "train_metrics = train_one_epoch(...)"'):
            plan.inserts.append(Insert(call.end_lineno, indent_of(lines, call), [
                'train_metrics.update(cyclical_summary(lr_scheduler, epoch))']))

    epoch_fn = module_function(tree, 'train_one_epoch')
    if need(epoch_fn, 'def train_one_epoch(...)'):
        params = [a.arg for a in epoch_fn.args.args + epoch_fn.args.kwonlyargs]
        if not {'args', 'lr_scheduler'} <= set(params):
            plan.missing.append(f'{TRAIN}: train_one_epoch(..., args, ..., lr_scheduler=...) parameters')
        else:
            first = body_start(epoch_fn)
            plan.inserts.append(Insert(first.lineno - 1, indent_of(lines, first), [
                f'args = scheduled_clip_args(args, lr_scheduler)  {MARKER}: a copy if the clip is scheduled']))
        step_update = find_statement(epoch_fn, lambda n: isinstance(n, ast.Expr) and call_name(n.value)
                                     == 'step_update' and isinstance(n.value.func.value, ast.Name)
                                     and n.value.func.value.id == 'lr_scheduler')
        if need(step_update, 'train_one_epoch(): "lr_scheduler.step_update(...)"'):
            plan.inserts.append(Insert(step_update.end_lineno, indent_of(lines, step_update), [
                'args = scheduled_clip_args(args, lr_scheduler)']))
    return plan


PLANNERS = {LOSS_INIT: plan_loss_init, LOSS_FACTORY: plan_loss_factory, SCHEDULER_INIT: plan_scheduler_init,
            TRAIN: plan_train}


# ---------------------------------------------------------------------------------------------------------------
# Whole-checkout plan


def check_self_contained(relpath: str, text: str) -> list[str]:
    """Imports of a copied module that a timm checkout may not have."""
    problems = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # must name a copied module, resolved as Python does (the same in both layouts)
                package = Path(relpath).parents[node.level - 1]
                target = (package / (node.module or '').replace('.', '/')).as_posix() + '.py'
                if target not in COPIED_FILES:
                    problems.append(f'{relpath}: relative import of {"." * node.level}{node.module or ""}, '
                                    'which is not a copied module')
                continue
            names = [node.module]
        else:
            continue
        problems += [f'{relpath}: imports {name}' for name in names if name.split('.')[0] not in ALLOWED_IMPORTS]
    return problems


def copied_sources() -> tuple[dict[str, str], list[str]]:
    """({destination: text} of the copied modules, a problem for each source missing from this repository)."""
    missing = [src for src in COPIED_FILES.values() if not (REPO_ROOT / src).is_file()]
    sources = {dest: read_text(REPO_ROOT / src) for dest, src in COPIED_FILES.items() if src not in missing}
    return sources, [f'source file {src} is missing from this repository' for src in missing]


def write_problems(checkout: Path, changes: dict[str, tuple[Optional[str], Optional[str]]]) -> list[str]:
    """Why a planned change could not be written: a read-only file (its mode is respected, even where the user
    could replace it, e.g. as root) or a folder where no file can be created or removed."""
    problems = []
    for rel, (old, _) in changes.items():
        path = checkout / rel
        if old is not None and (not os.stat(path).st_mode & 0o222 or not os.access(path, os.W_OK)):
            problems.append(f'{rel} is read-only')
        if not os.access(path.parent, os.W_OK | os.X_OK):
            problems.append(f'{Path(rel).parent} is not a writable folder')
    return problems


def build_plan(checkout: Path, *, revert: bool, library_only: bool,
               writing: bool = True) -> dict[str, tuple[Optional[str], Optional[str]]]:
    """{relative path: (current text or None, new text or None)} for every file that changes.

    Raises :class:`PatchError` naming every problem found, before anything is written; with ``writing`` (a real
    run or its dry run) that includes files or folders that could not be written.
    """
    if not (checkout / LOSS_INIT).is_file():
        raise PatchError(f'{checkout} is not a timm checkout: {LOSS_INIT} is missing')
    if not (checkout / SCHEDULER_INIT).is_file():
        raise PatchError(f'{checkout} is not a timm checkout: {SCHEDULER_INIT} is missing')
    targets = [LOSS_INIT] + ([LOSS_FACTORY] if (checkout / LOSS_FACTORY).is_file() else []) + [SCHEDULER_INIT]
    if not library_only:
        if not (checkout / TRAIN).is_file():
            raise PatchError(f'{checkout} has no {TRAIN} at its root; pass --library-only to patch timm/ alone')
        targets.append(TRAIN)

    problems: list[str] = []
    changes: dict[str, tuple[Optional[str], Optional[str]]] = {}
    was_patched = False
    for rel in targets:
        try:
            current = read_text(checkout / rel)
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f'{rel} cannot be read ({e})')
            continue
        original = strip_marked(current)
        was_patched |= original != current
        if revert:
            new = original
        else:
            try:
                plan = PLANNERS[rel](original)
            except SyntaxError as e:
                problems.append(f'{rel}: cannot be parsed ({e})')
                continue
            problems += plan.missing
            new = render(original, plan.inserts)
        if new != current:
            changes[rel] = (current, new)

    sources, missing = copied_sources()
    problems += missing
    for dest, text in sources.items():
        problems += check_self_contained(dest, text)
        path = checkout / dest
        try:
            current = read_text(path) if path.is_file() else None
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f'{dest} cannot be read ({e})')
            continue
        ours = was_patched or current is None or current == text
        if current is not None and not ours:
            problems.append(f'{dest} already exists and was not written by this tool; move it away first')
        elif revert and current is not None:
            changes[dest] = (current, None)
        elif not revert and current != text:
            changes[dest] = (current, text)
    if writing:
        problems += write_problems(checkout, changes)
    if problems:
        action = 'revert' if revert else 'patch'
        if len(problems) == 1:
            raise PatchError(f'cannot {action} {checkout}: {problems[0]}; nothing was changed')
        listing = '\n'.join(f'  - {p}' for p in problems)
        raise PatchError(f'cannot {action} {checkout}; nothing was changed:\n{listing}')
    return changes


def write_changes(checkout: Path, changes: dict[str, tuple[Optional[str], Optional[str]]]) -> None:
    """Write every change atomically per file; on any failure restore the files already written. Called only
    after :func:`build_plan` found nothing in the way, so a failure here is the system's (disk full, ...)."""
    done: list[tuple[Path, Optional[str]]] = []
    rel = ''
    try:
        for rel, (old, new) in changes.items():
            path = checkout / rel
            if new is None:
                path.unlink()
            else:
                atomic_write_text(path, new)
            done.append((path, old))
    except BaseException as e:
        for path, old in reversed(done):
            if old is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write_text(path, old)
        if isinstance(e, OSError):
            raise PatchError(f'writing {rel} failed ({e}); the files written before it were restored') from e
        raise


def unified_diff(rel: str, old: Optional[str], new: Optional[str]) -> str:
    """A git-style unified diff of one file (new / deleted files included), for ``git apply``."""
    header = f'diff --git a/{rel} b/{rel}\n'
    if old is None:
        header += 'new file mode 100644\n'
    elif new is None:
        header += 'deleted file mode 100644\n'
    body = difflib.unified_diff(
        split_lines(old or ''), split_lines(new or ''),
        '/dev/null' if old is None else f'a/{rel}', '/dev/null' if new is None else f'b/{rel}')
    return header + ''.join(body)


def full_diff(changes: dict[str, tuple[Optional[str], Optional[str]]]) -> str:
    """One git-style diff of every change (``timm/`` files first, ``train.py`` last), for ``git apply``."""
    return ''.join(unified_diff(rel, *changes[rel]) for rel in sorted(changes, key=lambda r: (r == TRAIN, r)))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Add cyclical focal loss and cyclical training to a timm checkout.')
    parser.add_argument('checkout', type=Path, help='timm checkout (train.py and timm/ at its root)')
    parser.add_argument('--dry-run', action='store_true', help='print the diff, change nothing')
    parser.add_argument('--revert', action='store_true', help='remove the change again (byte for byte)')
    parser.add_argument('--library-only', action='store_true', help='patch timm/ only (no train.py)')
    parser.add_argument('--write-diff', metavar='FILE', type=Path, default=None,
                        help='write the change as one git-style diff to FILE (a new file; for git apply) and '
                             'change nothing in the checkout')
    args = parser.parse_args(argv)
    if args.revert and args.write_diff:
        parser.error('--write-diff cannot be combined with --revert')
    if args.write_diff is not None:
        if not args.write_diff.resolve().parent.is_dir():
            parser.error(f'--write-diff {args.write_diff}: the folder {args.write_diff.parent} does not exist')
        if args.write_diff.exists():
            parser.error(f'--write-diff {args.write_diff}: the file exists already; choose a new name')
    checkout = args.checkout.resolve()
    try:
        if args.write_diff is not None:  # reads the checkout only
            if build_plan(checkout, revert=True, library_only=args.library_only, writing=False):
                raise PatchError(f'{checkout} is patched already; the diff is made from an unpatched checkout '
                                 '(run --revert first)')
            changes = build_plan(checkout, revert=False, library_only=args.library_only, writing=False)
            atomic_write_text(args.write_diff, full_diff(changes))
            print(f'wrote {args.write_diff} ({len(changes)} file(s))')
            return 0
        # A dry run checks exactly what a real run checks, so it fails where the real run would.
        changes = build_plan(checkout, revert=args.revert, library_only=args.library_only)
        if not changes:
            print(f'{checkout}: already {"unpatched" if args.revert else "patched"}, nothing to do')
            return 0
        if args.dry_run:
            sys.stdout.write(full_diff(changes))
            print(f'dry run: {len(changes)} file(s) would change', file=sys.stderr)
            return 0
        write_changes(checkout, changes)
    except PatchError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    verb = 'reverted' if args.revert else 'patched'
    for rel, (old, new) in changes.items():
        print(f'{verb}: {rel}' + (' (removed)' if new is None else ' (created)' if old is None else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
