"""train.py's command line (cfl_timm.training.args): the argument groups, timm's key=value parsing, and bad
command lines ending as one-line usage errors (exit status 2) before any work."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train
from cfl_timm.training import args as train_args

REPO_ROOT = Path(__file__).resolve().parents[1]


def _train_cli(*argv: str) -> subprocess.CompletedProcess:
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': python_path}
    return subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), *argv], env=env, capture_output=True,
                          text=True, timeout=120)


def test_every_group_function_adds_its_own_flags():
    # Each group adds at least one flag, no flag is added twice, and train.py's parser is exactly the groups.
    seen: set[str] = set()
    for add_group in train_args.ARG_GROUPS:
        parser = argparse.ArgumentParser(add_help=False)
        add_group(parser)
        flags = {s for action in parser._actions for s in action.option_strings}
        assert flags or add_group is train_args.add_dataset_args, add_group.__name__
        assert not flags & seen, (add_group.__name__, flags & seen)
        seen |= flags
    parser_flags = {s for a in train.get_args_parser()._actions for s in a.option_strings}
    assert parser_flags == seen | {'-h', '--help', '-c', '--config'}


def test_key_value_flags_use_timm_literal_parsing():
    args = train.parse_args(['--model-kwargs', 'drop_rate=0.25', 'act_layer=gelu', 'flag=True',
                             '--opt-kwargs', 'foreach=False'])
    assert args.model_kwargs == {'drop_rate': 0.25, 'act_layer': 'gelu', 'flag': True}
    assert args.opt_kwargs == {'foreach': False}


def test_key_value_without_equals_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(['--model-kwargs', 'drop_rate'])
    assert exc.value.code == 2
    assert "--model-kwargs: expected key=value, got 'drop_rate'" in capsys.readouterr().err


def test_check_args_raises_in_process_and_exits_2_with_a_parser(capsys):
    # A check across flags (a single flag's range is its declaration's, and argparse reports it).
    args = train.parse_args(['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--epochs', '2',
                             '--start-epoch', '2'])
    with pytest.raises(ValueError, match=r'--start-epoch must be in \[0, --epochs\) = \[0, 2\), got 2'):
        train_args.check_args(args)
    with pytest.raises(SystemExit) as exc:
        train_args.check_args(args, train.get_args_parser())
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        'train.py: error: --start-epoch must be in [0, --epochs) = [0, 2), got 2.'


def test_bad_command_line_is_a_one_line_usage_error_before_any_work(tmp_path):
    result = _train_cli('--dataset', 'sklearn/digits', '--model', 'test_resnet', '--aug-splits', '1',
                        '--output', str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == 'train.py: error: --aug-splits must be 0 or >= 2, got 1.'
    assert 'Traceback' not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_input_found_while_setting_up_is_a_usage_error_too(tmp_path):
    # The sampler file exists (the command-line check passes) but holds a non-integer: found while building the
    # training set, still before training, and reported the same way.
    sampler = tmp_path / 'sampler.csv'
    sampler.write_text('1\nx\n')
    result = _train_cli('--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-j', '0',
                        '--read_sampler', str(sampler), '--output', str(tmp_path), '--experiment', 'run')
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('train.py: error: ') and 'is not an integer' in last
    assert 'Traceback' not in result.stderr and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('script, extra', [('train.py', ['--epochs', '1', '--output', 'out']), ('validate.py', [])])
def test_pretrained_weights_out_of_reach_are_one_usage_error(tmp_path, script, extra):
    """Offline with an empty Hugging Face cache, --pretrained ends in one line naming the flag and the way around
    (huggingface_hub raised LocalEntryNotFoundError from inside timm.create_model, a traceback)."""
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf'), 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, str(REPO_ROOT / script), '--dataset', 'sklearn/digits', '--model',
                             'test_resnet', '--pretrained', *extra],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{script}: error: --pretrained: the pretrained weights of 'test_resnet' could not be "
                           'loaded'), line
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').rglob('*.pth.tar'))


def test_fetching_weights_converts_only_when_weights_are_asked_for():
    from cfl_timm.training.pretrained import fetching_weights
    with pytest.raises(ValueError, match=r"^--pretrained: the pretrained weights of 'm' could not be loaded \(gone\)"):
        with fetching_weights('--pretrained', 'm', file_flag='--pretrained-path'):
            raise FileNotFoundError('gone\nsecond line')
    with pytest.raises(FileNotFoundError):  # no weights asked for: not this flag's fault
        with fetching_weights('--pretrained', 'm', file_flag='--pretrained-path', pretrained=False):
            raise FileNotFoundError('gone')
