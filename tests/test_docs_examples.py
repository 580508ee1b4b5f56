"""Every ```python block of README.md and docs/*.md runs: each in a fresh namespace, on one thread, with pytest's
temporary folder as the working directory. A block whose fence reads ```python title="not run" is shown, not
run (docs/architecture.md: the convention); bash and other blocks are never run."""
import os
import re
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_RUN = 'title="not run"'
FENCE = re.compile(r'^```python([^\n]*)\n(.*?)^```[ \t]*$', flags=re.S | re.M)


def _doc_files() -> list[Path]:
    return [REPO_ROOT / 'README.md', *sorted((REPO_ROOT / 'docs').glob('*.md'))]


def python_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, fence attributes, code) for each ```python block of a Markdown text."""
    return [(text.count('\n', 0, m.start()) + 1, m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def _examples():
    for path in _doc_files():
        for line, attrs, code in python_blocks(path.read_text()):
            if NOT_RUN not in attrs:
                yield pytest.param(path, line, code, id=f'{path.relative_to(REPO_ROOT)}:{line}')


def test_fence_parser_sees_attributes_and_skips_bash():
    text = '```bash\nexit 1\n```\n\n```python\nx = 1\n```\n\n```python title="not run"\nraise SystemExit\n```\n'
    assert python_blocks(text) == [(5, '', 'x = 1\n'), (9, NOT_RUN, 'raise SystemExit\n')]


def test_there_are_examples_to_run():
    assert len(list(_examples())) >= 3


@pytest.mark.parametrize('path,line,code', list(_examples()))
def test_example_runs(path, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile('\n' * line + code, str(path), 'exec'), {'__name__': '__docs_example__'})
    finally:
        torch.set_num_threads(threads)
    assert os.getcwd() == str(tmp_path)
