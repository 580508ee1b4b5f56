"""The README's set-up commands and CI stay in step: CI runs exactly the README's test command."""
import re
import shlex
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def readme_setup_commands() -> list[str]:
    text = (REPO_ROOT / 'README.md').read_text()
    setup = text.split('## Set-up', 1)[1].split('\n## ', 1)[0]
    return [block.strip() for block in re.findall(r'```bash\n(.*?)```', setup, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    install_and_run, test_command = readme_setup_commands()
    ci_lines = [line.strip() for line in (REPO_ROOT / '.ci' / 'run').read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == test_command


def test_readme_main_job_names_files_that_exist():
    install_and_run, _ = readme_setup_commands()
    assert 'pip install' in install_and_run
    words = shlex.split(install_and_run.replace('&&', ' '))
    assert 'train.py' in words and (REPO_ROOT / 'train.py').is_file()
    config = words[words.index('-c') + 1]
    assert (REPO_ROOT / config).is_file(), config
