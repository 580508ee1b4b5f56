"""bench/gpu_check.sh up to its first CUDA call (this machine has no GPU), its summary, and loss_speed's --autocast."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / 'bench' / 'gpu_check.sh'
sys.path.insert(0, str(REPO_ROOT / 'bench'))
import gpu_check  # noqa: E402
import loss_speed  # noqa: E402


def _repo_state(tmp_path: Path) -> list[str]:
    """The repository's changed and untracked files, less those under ``tmp_path`` and pytest's base temp folder.
    Ignored files are left out: other xdist workers write them (bytecode, ``.pytest_tmp``) while this test runs."""
    lines = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    skipped = [tmp_path.resolve(), (REPO_ROOT / '.pytest_tmp').resolve()]
    return [line for line in lines
            if not any((REPO_ROOT / line[3:]).resolve().is_relative_to(folder) for folder in skipped)]


def _run(*argv, tmp_path):
    env = {**os.environ, 'PYTHON': sys.executable, 'TMPDIR': str(tmp_path / 'outside_tmp')}
    (tmp_path / 'outside_tmp').mkdir(exist_ok=True)
    return subprocess.run(['bash', str(SCRIPT), *argv], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_script_syntax():
    subprocess.run(['bash', '-n', str(SCRIPT)], check=True)


def test_step_timeouts_add_up_to_under_eight_minutes():
    """The script's promise (docs/gpu.md): the timeouts of all its steps, the CUDA check's included, total < 480 s
    (the loss benchmark's step runs once per autocast mode)."""
    text = SCRIPT.read_text()
    cuda = re.findall(r'^timeout --kill-after=\d+ (\d+) "\$PYTHON" "\$\{CHECK\[@\]\}" cuda', text, re.M)
    steps = dict(re.findall(r'^\s*(?:if )?step (\S+) (\d+) ', text, re.M))
    modes = re.findall(r'^for mode in ([\w ]+); do$', text, re.M)
    assert len(cuda) == 1 and len(steps) == 8 and modes == ['none bf16 fp16'], (cuda, steps, modes)
    total = int(cuda[0]) + sum(int(t) * (3 if name == '"loss_speed_$mode"' else 1) for name, t in steps.items())
    assert total == 475


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-CUDA exit; this machine has CUDA')
def test_without_cuda_stops_at_the_first_cuda_call(tmp_path):
    before = _repo_state(tmp_path)
    out = tmp_path / 'check'
    result = _run(str(out), tmp_path=tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(f'no CUDA device (torch.cuda.is_available() is False); '
                                                           f'wrote {out}/summary.json')
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['cuda'] is False and summary['steps'] == {}
    assert not (out / 'steps.tsv').exists()  # no step ran
    # Nothing outside OUT_DIR: the repository's tracked and untracked files, the caller's TMPDIR and cwd.
    assert _repo_state(tmp_path) == before
    assert list((tmp_path / 'outside_tmp').iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ['check', 'outside_tmp']


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-CUDA exit; this machine has CUDA')
def test_relative_data_dir_and_timm_train_are_accepted(tmp_path):
    (tmp_path / 'data' / 'train').mkdir(parents=True)
    (tmp_path / 'timm_train.py').write_text('')
    result = _run('OUT', 'data', '--timm-train', 'timm_train.py', tmp_path=tmp_path)
    assert result.returncode == 3, result.stderr  # past the argument checks, up to the CUDA check
    assert json.loads((tmp_path / 'OUT' / 'summary.json').read_text())['cuda'] is False


@pytest.mark.parametrize('argv, message', [
    ([], 'usage:'),
    (['a', 'b', 'c'], 'usage:'),
    (['OUT', '--bogus'], 'unknown option --bogus'),
    (['OUT', 'no_such_data'], 'DATA_DIR no_such_data has no train/ folder'),
    (['OUT', '--timm-train', 'missing.py'], '--timm-train/TIMM_TRAIN missing.py is not a file'),
])
def test_bad_arguments_are_usage_errors(tmp_path, argv, message):
    result = _run(*argv, tmp_path=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / 'OUT').exists()


def test_a_non_empty_out_dir_is_refused(tmp_path):
    (tmp_path / 'OUT').mkdir()
    (tmp_path / 'OUT' / 'summary.json').write_text('{"kept": true}')
    result = _run('OUT', tmp_path=tmp_path)
    assert result.returncode == 2 and 'is not empty' in result.stderr
    assert (tmp_path / 'OUT' / 'summary.json').read_text() == '{"kept": true}'


def test_summarize_reports_pass_fail_timeout_and_skip(tmp_path):
    cuda = {'cuda': True, 'device': 'GPU X', 'torch': '2', 'cuda_version': '13'}
    (tmp_path / 'cuda.json').write_text(json.dumps(cuda))
    (tmp_path / 'steps.tsv').write_text('loss_speed_none\t0\t12.5\t\ntrain_amp\t1\t3.0\t\ntrain_compile\t124\t110.0\t\n'
                                        'timm_train\t0\t40.0\t\ncfl_train\t0\t30.0\t\nextra\tskip\t0\tno reason\n')
    (tmp_path / 'train_amp.json').write_text('{"top1": 50.0}')
    summary = gpu_check.summarize(tmp_path)
    assert summary['passed'] is False and summary['failed'] == ['train_amp', 'train_compile']
    steps = summary['steps']
    assert [steps[n]['status'] for n in ('loss_speed_none', 'train_amp', 'train_compile', 'extra')] == \
        ['pass', 'fail', 'timeout', 'skipped']
    assert steps['train_amp']['result'] == {'top1': 50.0} and steps['extra']['note'] == 'no reason'
    assert steps['timm_compare']['result'] == {'cfl_over_timm_time': 0.75}
    assert json.loads((tmp_path / 'summary.json').read_text()) == summary
    assert '| train_compile | timeout | 110 |' in (tmp_path / 'summary.md').read_text()


def test_loss_speed_autocast_is_validated(capsys):
    with pytest.raises(SystemExit) as error:
        loss_speed.main(['--device', 'cpu', '--autocast', 'fp32'])
    assert error.value.code == 2
    assert "argument --autocast: invalid choice: 'fp32'" in capsys.readouterr().err


def test_loss_speed_autocast_bf16_on_cpu(capsys):
    loss_speed.main(['--device', 'cpu', '--autocast', 'bf16', '--sizes', '8x10', '--repeats', '1',
                     '--losses', 'sym (gamma 2)'])
    out = capsys.readouterr().out
    assert 'autocast torch.bfloat16' in out and '| 8x10 | sym (gamma 2) |' in out


def test_loss_speed_unknown_loss_names_are_refused(capsys):
    """A name matching no table row selected nothing and the table held the baseline alone."""
    with pytest.raises(SystemExit) as error:
        loss_speed.main(['--device', 'cpu', '--losses', 'sym', 'bogus'])
    assert error.value.code == 2
    assert '--losses: unknown bogus; choose from sym, asym, asym-cyclical' in capsys.readouterr().err


def test_loss_speed_counts_the_dispatched_operations(capsys):
    loss_speed.main(['--device', 'cpu', '--sizes', '8x10', '--repeats', '1', '--losses', 'asym-cyclical'])
    rows = [line.split('|') for line in capsys.readouterr().out.splitlines() if line.startswith('| 8x10')]
    ops = {row[2].strip(): int(row[7]) for row in rows}
    assert set(ops) == {'ce-ls0.1 (baseline)', 'asym-cyclical (3, 2, 2, f 4)'}
    # Fused cross-entropy is one forward op and a few backward ones; the focal loss is written in many.
    assert 5 < ops['ce-ls0.1 (baseline)'] < ops['asym-cyclical (3, 2, 2, f 4)']


def test_with_autocast_runs_the_forward_in_the_autocast_dtype():
    seen = []
    wrapped = loss_speed.with_autocast(lambda z, t: seen.append(torch.mm(z, z.T).dtype) or z.sum(),
                                       torch.device('cpu'), torch.bfloat16)
    wrapped(torch.randn(4, 3, requires_grad=True), None).backward()
    assert seen == [torch.bfloat16]


def test_loss_speed_analytic_too_needs_compile(capsys):
    with pytest.raises(SystemExit) as error:
        loss_speed.main(['--device', 'cpu', '--analytic-too'])
    assert error.value.code == 2
    assert '--analytic-too compares compiled paths and needs --compile' in capsys.readouterr().err


def test_analytic_variants_are_added_for_the_losses_with_a_compiled_only_path():
    losses = loss_speed.make_losses(names=['brier', 'flsd', 'mbls'], analytic_too=True)
    assert list(losses)[1:] == ['brier', 'flsd', 'mbls', 'brier (analytic)', 'mbls (analytic)']
    variant = losses['brier (analytic)']
    assert variant._row_form is None and variant._formula_rows is None and losses['brier']._row_form is not None
