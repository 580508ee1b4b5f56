"""The README's set-up commands and CI stay in step: CI runs exactly the README's test command, with the test
data and again in a fresh clone without it."""
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
    ci_lines = [line.strip() for line in (REPO_ROOT / '.ci' / 'run').read_text().splitlines()
                if line.strip() and not line.strip().startswith('#')]
    assert ci_lines[-1] == test_command
    runs = [i for i, line in enumerate(ci_lines) if line == test_command]
    assert len(runs) == 2
    # First with the test data beside the repository, then in a fresh clone without the variable.
    before_first, between = ci_lines[:runs[0]], ci_lines[runs[0] + 1:runs[1]]
    assert 'CFL_TIMM_DATA="$(realpath -m ../shared/data)"' in before_first
    assert any(line.startswith('git clone') for line in between) and 'unset CFL_TIMM_DATA' in between
    assert between.index('unset CFL_TIMM_DATA') > max(i for i, line in enumerate(between) if line.startswith('cd '))


def test_readme_main_job_names_files_that_exist():
    install_and_run, _ = readme_setup_commands()
    assert 'pip install' in install_and_run
    words = shlex.split(install_and_run.replace('&&', ' '))
    assert 'train.py' in words and (REPO_ROOT / 'train.py').is_file()
    config = words[words.index('-c') + 1]
    assert (REPO_ROOT / config).is_file(), config


def test_readme_names_the_test_data_variable_and_the_cpu_wheel():
    text = (REPO_ROOT / 'README.md').read_text()
    setup = text.split('## Set-up', 1)[1].split('\n## ', 1)[0]
    assert 'CFL_TIMM_DATA' in setup and 'cifar10-jpeg.tar.gz' in setup and 'oltr_lists/' in setup
    assert '--index-url https://download.pytorch.org/whl/cpu' in setup and 'CUDA' in setup


def test_readme_names_the_committed_study_results_as_they_are():
    # The study's text moved from the README to docs/study.md (the documentation site); the check reads both.
    text = (REPO_ROOT / 'README.md').read_text() + (REPO_ROOT / 'docs' / 'study.md').read_text()
    paths = set(re.findall(r'`(bench/results/[^`<>]+)`', text))
    assert 'bench/results/study-cpu/table.md' in paths and 'bench/results/cpu.csv' in paths
    for path in paths:
        assert list(REPO_ROOT.glob(path)), f'README.md or docs/study.md names {path}, which does not exist'
    # The aggregate's files, as cfl_timm.grid.aggregate names them (aggregate: first study; aggregate_study)
    # them, are the ones the README lists beside their folder.
    study = re.search(r'aggregate in\s+`bench/results/study-cpu/table\.md`((?:,\s*`[^`]+`)+)', text)
    assert study, 'docs/study.md no longer lists the study-cpu aggregate'
    listed = {'table.md', *re.findall(r'`([^`]+)`', study.group(1))}
    assert listed == {'runs.csv', 'summary.csv', 'table.md', 'plot.png'}
    assert all((REPO_ROOT / 'bench' / 'results' / 'study-cpu' / name).is_file() for name in listed)
    for name in ('cpu_runs.csv', 'cpu.csv', 'cpu.md', 'cpu.png'):
        assert f'`{name}`' in text or f'`bench/results/{name}`' in text, name
        assert (REPO_ROOT / 'bench' / 'results' / name).is_file(), name
