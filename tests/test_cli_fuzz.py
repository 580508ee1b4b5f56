"""Fuzz every flag of the command-line tools from its declaration.

For each flag of each tool's parser, bad values are generated from what the declaration says the flag takes
(a number, a count, a probability, a pair, a choice, a file, a folder): 0, negatives, nan, inf, huge, empty,
the wrong type, an inverted pair, a missing value, missing and wrong-kind paths. Each value is parsed and
checked in-process, exactly as the tool's command line does before any work, and must end either as a
one-line usage error (exit status 2, ``<prog>: error: ...`` naming the flag) or as an accepted argument set.
Anything else (a traceback, an error naming no input) fails.

The declarations themselves are held to the rule that a numeric or path flag carries its check: every flag
parsed as a number uses a converter of :mod:`cfl_timm.training.arg_types`, so no flag can be added without
its range.
"""
import argparse
import contextlib
import io
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cfl_timm.training import arg_types

DIGITS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '--epochs', '1', '-b', '4']
NUMBER_VALUES = ('0', '-1', 'nan', 'inf', '-inf', '1e308', '', 'abc', '1.5', '-1e-300')
TEXT_VALUES = ('', 'bogus', '-1')
SKIP = {
    'help',  # prints and exits 0
    'config',  # a file of values: fuzzed through its own rows in tests/test_bad_inputs.py
    'data', 'data_dir',  # the dataset is given by the base arguments; path checks are covered below
    'device_modules',  # imports the named modules by design
}


@dataclass(frozen=True)
class Entry:
    """A command-line tool: its parser and its parse-and-check stage (everything before any work)."""

    name: str  # the program name its usage errors start with
    parser: Callable[[], argparse.ArgumentParser]
    check: Callable[[list[str]], None]  # raises SystemExit(2) through parser.error on a bad input
    base: Callable[[Path], list[str]]  # arguments of an otherwise valid command line


def _train_check(argv: list[str]) -> None:
    import train
    from cfl_timm.training.args import check_args
    parser = train.get_args_parser()
    args = train.parse_args(argv)
    check_args(args, parser)


def _train_parser() -> argparse.ArgumentParser:
    import train
    return train.get_args_parser()


def _validate_check(argv: list[str]) -> None:
    import validate
    from cfl_timm.training.validate_args import check_args
    parser = validate.get_args_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except (ValueError, ImportError) as e:  # validate.cli's conversion of a bad input
        parser.error(validate._one_line(e))


def _validate_parser() -> argparse.ArgumentParser:
    import validate
    return validate.get_args_parser()


def _validate_base(tmp: Path) -> list[str]:
    checkpoint = tmp / 'run' / 'checkpoint.pth.tar'
    if not checkpoint.exists():  # check_args only needs the file to exist; nothing is loaded
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(b'not loaded by the checks')
    return ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--checkpoint', str(checkpoint),
            '--output-json', str(tmp / 'out' / 'result.json'), '-j', '0', '--no-plot']


def _module_parser(module: str) -> Callable[[], argparse.ArgumentParser]:
    def parser() -> argparse.ArgumentParser:
        return __import__(module, fromlist=['get_args_parser']).get_args_parser()
    return parser


def _shift_check(argv: list[str]) -> None:
    from cfl_timm import shift
    parser = shift.get_args_parser()
    args = parser.parse_args(argv)
    try:
        shift.check_args(args)
    except ValueError as e:
        parser.error(str(e))


def _shift_base(tmp: Path) -> list[str]:
    (tmp / 'clean').mkdir(exist_ok=True)
    checkpoint = tmp / 'checkpoint.pth.tar'
    checkpoint.write_bytes(b'not loaded by the checks')
    return ['--data-dir', str(tmp / 'clean'), '--cache-dir', str(tmp / 'cache'), '--checkpoint', str(checkpoint),
            '--output-json', str(tmp / 'shift.json')]


def _evaluate_check(argv: list[str]) -> None:
    from cfl_timm import evaluate  # the whole command: loading the small files is its check stage
    evaluate.cli(argv)


def _evaluate_base(tmp: Path) -> list[str]:
    from cfl_timm.files import atomic_write_bytes
    from cfl_timm.metrics import save_logits_npz
    path = tmp / 'test.npz'
    if not path.exists():
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(40, 3, generator=generator)
        targets = torch.randint(0, 3, (40,), generator=generator)
        data = save_logits_npz(logits, targets, ['a', 'b', 'c'], split='test')
        atomic_write_bytes(path, lambda f: f.write(data))
    return ['--logits', str(path), '--output-json', str(tmp / 'evaluate.json')]


def _oltr_check(argv: list[str]) -> None:
    from oltr import train as oltr_train
    parser = oltr_train.get_args_parser()
    args = parser.parse_args(argv)
    try:  # the checks main() runs before it reads any image: the config with the flags, the stage, the loss
        config = oltr_train.resolve_config(args)
        oltr_train._stage1_source(args, config, test_only=args.test or args.test_open)
        oltr_train.create_criterion(config)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # oltr.train.cli's conversion
        parser.error(str(e))


def _oltr_base(tmp: Path) -> list[str]:
    config = Path(__file__).resolve().parents[1] / 'oltr' / 'configs' / 'ImageNet_LT' / 'stage_1.yaml'
    return ['--config', str(config), '--data-root', str(tmp), '--output', str(tmp / 'logs')]


GRID_COMMANDS = ('list', 'status', 'evaluate', 'aggregate', 'run', 'pilot', 'prepare-data')
GRID_RUNS_MAIN = ('list', 'status')  # cheap and side-effect free: the whole command is the check stage


def _grid_subparser(command: str) -> Callable[[], argparse.ArgumentParser]:
    def parser() -> argparse.ArgumentParser:
        from cfl_timm.grid.cli import get_args_parser
        subparsers = next(a for a in get_args_parser()._actions if isinstance(a, argparse._SubParsersAction))
        return subparsers.choices[command]
    return parser


def _grid_check(command: str) -> Callable[[list[str]], None]:
    def check(argv: list[str]) -> None:
        from cfl_timm.grid.cli import get_args_parser, main
        from cfl_timm.training.cli_runner import run_cli
        # Commands that start work are fuzzed on the parse (their declarations); list and status run whole.
        run_cli(get_args_parser(), main if command in GRID_RUNS_MAIN else lambda args: 0, [command, *argv])
    return check


def _grid_base(command: str) -> Callable[[Path], list[str]]:
    def base(tmp: Path) -> list[str]:
        (tmp / 'data' / 'train').mkdir(parents=True, exist_ok=True)
        (tmp / 'data' / 'val').mkdir(parents=True, exist_ok=True)
        if not (tmp / 'a.tar.gz').exists():  # prepare-data's --archive is read as a tar file when parsed
            with tarfile.open(tmp / 'a.tar.gz', 'w:gz') as tar:
                tar.add(tmp / 'data', arcname='data')
        (tmp / 'work').mkdir(exist_ok=True)  # status, evaluate and aggregate read an existing work folder
        grid = ['--protocol', 'smoke', '--work-dir', str(tmp / 'work')]
        data = ['--data-dir', str(tmp / 'data')]
        return {'list': grid + data, 'status': grid, 'evaluate': grid + data, 'aggregate': grid, 'run': grid + data,
                'pilot': grid + data + ['--data-setting', 'x', '--epochs', '1', '--name', 'p'],
                'prepare-data': ['--archive', str(tmp / 'a.tar.gz'), '--out', str(tmp / 'prepared')]}[command]
    return base


ENTRIES = {
    'train.py': Entry('train.py', _train_parser, _train_check,
                      lambda tmp: [*DIGITS, '--output', str(tmp / 'out'), '--experiment', 'run', '-j', '0']),
    'validate.py': Entry('validate.py', _validate_parser, _validate_check, _validate_base),
    'python -m oltr.train': Entry('python -m oltr.train', _module_parser('oltr.train'), _oltr_check, _oltr_base),
    **{f'cfl-grid {c}': Entry('cfl-grid', _grid_subparser(c), _grid_check(c), _grid_base(c))
       for c in GRID_COMMANDS},
    'python -m cfl_timm.shift': Entry('python -m cfl_timm.shift', _module_parser('cfl_timm.shift'), _shift_check,
                                      _shift_base),
    'python -m cfl_timm.evaluate': Entry('python -m cfl_timm.evaluate', _module_parser('cfl_timm.evaluate'),
                                         _evaluate_check, _evaluate_base),
}


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in SKIP
            and a.help != argparse.SUPPRESS]


def _values(action: argparse.Action, tmp: Path) -> list[list[str]]:
    """Bad (and borderline) values for one flag, from its declaration."""
    if action.nargs == 0:  # a switch: nothing to fuzz but a stray value
        return []
    kind = action.type
    path_kind = arg_types.PATH_KINDS.get(kind)
    if action.choices is not None:
        singles = ['bogus', '', '0']
    elif path_kind == 'file':
        singles = [str(tmp / 'missing.pth'), str(tmp), str(tmp / 'a_file.txt') + '/below', '']
    elif path_kind == 'folder':
        singles = [str(tmp / 'missing'), str(tmp / 'a_file.txt'), str(tmp / 'a_file.txt' / 'below'), '']
    elif path_kind == 'output':
        singles = [str(tmp / 'a_file.txt'), str(tmp / 'a_file.txt' / 'below'), '', str(tmp / 'read_only' / 'new'),
                   str(tmp / 'dead_link')]
    elif path_kind == 'output_file':
        singles = [str(tmp), str(tmp / 'a_file.txt' / 'below.json'), str(tmp / 'read_only' / 'new.json'),
                   str(tmp / 'dead_link' / 'new.json'), str(tmp / 'wrong.suffix'), '']
    elif kind in (None, str):
        singles = list(TEXT_VALUES) + [str(tmp / 'a_file.txt'), str(tmp / 'missing')]
    else:
        singles = list(NUMBER_VALUES)
    cases: list[list[str]] = []
    count = action.nargs if isinstance(action.nargs, int) else 1
    for value in singles:
        cases.append([value] * count)
    if action.nargs in ('+', '*') or (isinstance(action.nargs, int) and action.nargs > 1):
        cases.append(['5', '1'] if action.nargs in ('+', '*') else ['5', '1', '1'][:action.nargs])
    if action.nargs in (None, 1, '+') or isinstance(action.nargs, int):
        cases.append([])  # the flag without its value
    return cases


def _run(entry: Entry, argv: list[str]) -> tuple[str, str]:
    """('ok' | 'usage', last stderr line), or raise what the tool raised."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            entry.check(argv)
        except SystemExit as e:
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            return ('usage' if e.code == 2 else f'exit {e.code}'), (lines[-1] if lines else '')
    return 'ok', ''


def _fuzz_cases(entry_name: str) -> list[tuple[str, str]]:
    parser = ENTRIES[entry_name].parser()
    return [(entry_name, a.option_strings[-1]) for a in _actions(parser)]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


CASES = [case for name in ENTRIES for case in _fuzz_cases(name)]


@pytest.mark.parametrize('entry_name,flag', CASES, ids=[f'{n}:{f}' for n, f in CASES])
def test_every_bad_value_is_a_usage_error_or_accepted(entry_name, flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an accepted relative output (``--output-json bogus``) lands here, not in the repo
    entry = ENTRIES[entry_name]
    action = _option(entry.parser(), flag)
    (tmp_path / 'a_file.txt').write_text('not a checkpoint\n')
    (tmp_path / 'read_only').mkdir(mode=0o555)
    (tmp_path / 'dead_link').symlink_to(tmp_path / 'nowhere')
    problems = []
    for values in _values(action, tmp_path):
        argv = entry.base(tmp_path) + [flag, *values]
        shown = f'{flag} {" ".join(repr(v) for v in values)}'.strip()
        try:
            outcome, line = _run(entry, argv)
        except Exception as e:  # noqa: BLE001  (any escape is the defect this test exists to find)
            problems.append(f'{shown}: raised {type(e).__name__}: {e}')
            continue
        if outcome == 'ok':
            continue
        if outcome != 'usage':
            problems.append(f'{shown}: {outcome} ({line})')
        elif not re.match(rf'{re.escape(entry.name)}( [a-z-]+)?: error: ', line):  # the tool, or its subcommand
            problems.append(f'{shown}: the last line is not a usage error: {line!r}')
        elif not _names_input(line, action):
            problems.append(f'{shown}: the message names no input: {line!r}')
    assert not problems, '\n'.join(problems)


def _names_input(line: str, action: argparse.Action) -> bool:
    names = set(action.option_strings) | {'--' + action.dest.replace('_', '-'), '--' + action.dest}
    return any(name in line for name in names)


@pytest.mark.parametrize('entry_name', sorted(ENTRIES))
def test_every_numeric_and_path_flag_declares_its_check(entry_name):
    """A flag parsed as a number carries a range converter (plain ``int``/``float`` would accept nan, -1, ...), and
    one parsed as a path a path converter (plain ``Path`` would accept a missing file, a file for a folder, '')."""
    parser = ENTRIES[entry_name].parser()
    plain = [a.option_strings[-1] for a in parser._actions if a.type in (int, float, Path)]
    assert not plain, f'declare these with a cfl_timm.training.arg_types converter: {plain}'
    unknown = [a.option_strings[-1] for a in parser._actions
               if callable(a.type) and a.type is not str and a.type not in arg_types.CONVERTERS]
    assert not unknown, f'flags with a converter not registered with @arg_types.converter: {unknown}'


# A flag takes a path when its metavar or its name says so.
PATH_METAVAR = re.compile(r'PATH|DIR|FILE|\.(npz|json|png|yaml|csv|txt|tar)', re.IGNORECASE)
PATH_DEST = re.compile(r'(_dir|_file|_root|checkpoint)$')
# Path flags read by a stage of their own, with the reason (every other path flag declares its kind).
PATH_FLAGS_CHECKED_ELSEWHERE = {
    ('train.py', '--config'): 'read by the config loader before the parser (its rows in tests/test_bad_inputs.py)',
    ('train.py', '--data-dir'): 'optional (sklearn/digits, torch/... need none): checked with the dataset',
    ('validate.py', '--data-dir'): 'optional (sklearn/digits, torch/... need none): checked with the dataset',
    ('train.py', '--resume'): "a checkpoint or 'auto' (the run folder's last checkpoint)",
    ('validate.py', '--real-labels'): 'refused whatever its value (ImageNet ReaL labels are not supported)',
    ('python -m cfl_timm.evaluate', '--ood'): 'NAME=FILE pairs: their converter checks the file',
}


@pytest.mark.parametrize('entry_name', sorted(ENTRIES))
def test_every_path_flag_declares_its_kind(entry_name):
    """A flag that takes a path is declared with a path converter (arg_types.path_converter: an existing file or
    folder, a folder or a file to write), so a missing path, a file for a folder or an unwritable place is refused
    when parsed."""
    parser = ENTRIES[entry_name].parser()
    undeclared = [a.option_strings[-1] for a in parser._actions
                  if a.option_strings and a.nargs != 0 and a.type not in arg_types.PATH_KINDS
                  and (PATH_METAVAR.search(a.metavar if isinstance(a.metavar, str) else '')
                       or PATH_DEST.search(a.dest))
                  and (entry_name, a.option_strings[-1]) not in PATH_FLAGS_CHECKED_ELSEWHERE]
    assert not undeclared, f'declare these with a path converter of cfl_timm.training.arg_types: {undeclared}'


def test_values_cover_every_kind_of_flag(tmp_path):
    """The generator yields bad values for every non-switch flag (so no flag is silently left out)."""
    parser = ENTRIES['train.py'].parser()
    empty = [a.option_strings[-1] for a in _actions(parser) if a.nargs != 0 and not _values(a, tmp_path)]
    assert not empty
