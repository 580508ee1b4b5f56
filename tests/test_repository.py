"""The committed tree itself: no file names a path of a machine, and no scratch output is committed."""
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Spelled in two parts so this file does not hold what it looks for.
MACHINE_PATHS = tuple('/' + name + '/' for name in ('work', 'tmp', 'root', 'home', 'Users'))
SCRATCH_SUFFIXES = ('.log', '.out', '.err', '.pyc', '.swp')


def _tracked() -> list[Path]:
    try:
        listed = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('not a git checkout')
    return [REPO_ROOT / name for name in listed.decode().split('\0') if name]


def test_no_committed_file_names_a_machine_path():
    named = []
    for path in _tracked():
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        try:
            text = path.read_text(encoding='utf-8')
        except UnicodeDecodeError:  # binary: a figure, an archive
            continue
        named += [f'{path.relative_to(REPO_ROOT)}:{number}' for number, line in enumerate(text.splitlines(), 1)
                  if any(prefix in line for prefix in MACHINE_PATHS)]
    assert not named, f'these lines name a path of a machine: {named[:20]}'


def test_no_scratch_output_is_committed():
    scratch = [str(path.relative_to(REPO_ROOT)) for path in _tracked() if path.suffix in SCRATCH_SUFFIXES]
    assert not scratch, f'scratch files are committed: {scratch}'
