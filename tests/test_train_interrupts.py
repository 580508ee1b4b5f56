"""How a run ends when it does not finish: a late failure leaves a folder the identical command reuses, a full disk
is one line naming the file (and leaves the folder resumable), Ctrl-C is one line and exit status 130, SIGTERM
one line and exit status 143 after the same cleanup, and a resume lists the settings that changed
(docs/run-files.md)."""
import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import train
from cfl_timm.files import DiskFullError, append_jsonl, atomic_write_bytes, atomic_write_text, is_temp_file
from cfl_timm.training import checkpoint as ckpt
from cfl_timm.training.resume_args import (
    UNCOMPARED_SETTINGS,
    WORLD_SIZE_KEY,
    changed_settings,
    format_changes,
    recorded_settings,
)
from cfl_timm.training.termination import exit_on_sigterm

REPO_ROOT = Path(__file__).resolve().parents[1]
ARGS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-b', '32', '-j', '0',
        '--train_size', '64', '--epochs', '2', '--lr', '0.05', '--warmup-epochs', '0', '--log-interval', '1000',
        '--experiment', 'run']

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread per test


def _argv(output: Path, *extra: str) -> list[str]:
    return [*ARGS, '--output', str(output), *extra]


def _last_stderr_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------ a late failure

def test_a_late_failure_leaves_a_folder_the_identical_command_reuses(tmp_path, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError('the first training step failed')
    with pytest.MonkeyPatch.context() as patch:  # its own: the test's monkeypatch keeps conftest's settings
        patch.setattr(train, 'train_one_epoch', fail)
        with pytest.raises(RuntimeError, match='first training step'):
            train.cli(_argv(tmp_path))
    run_dir = tmp_path / 'run'
    assert {'args.yaml', 'run.json'} <= {p.name for p in run_dir.iterdir()}
    assert ckpt.run_dir_in_use(run_dir) == []  # no epoch finished: not a run that --resume must continue

    # A changed command is refused, naming what changed; the identical one starts the run again.
    with pytest.raises(SystemExit) as info:
        train.cli(_argv(tmp_path, '--lr', '0.1'))
    assert info.value.code == 2
    line = _last_stderr_line(capsys)
    assert 'holds a run that never finished an epoch, started with other settings: --lr 0.05 -> 0.1' in line, line
    result = train.cli(_argv(tmp_path))
    assert result['eval_metrics'] and ckpt.checkpoint_epoch(run_dir / 'last.pth.tar') == 1
    # Now it finished epochs: the same command again is refused (never overwrite a run).
    with pytest.raises(SystemExit):
        train.cli(_argv(tmp_path))
    assert 'already holds a run' in _last_stderr_line(capsys)


# ------------------------------------------------------------------------------------------ resume: what changed

def test_resume_lists_every_changed_trajectory_setting_and_ignores_the_uncompared_ones(tmp_path, capsys):
    train.cli(_argv(tmp_path, '--epochs', '1'))
    with pytest.raises(SystemExit) as info:
        train.cli(_argv(tmp_path, '--epochs', '1', '--resume', 'auto', '--img-size', '40', '--cyclical-factor',
                        '4', '-j', '1', '--log-interval', '7', '--checkpoint-hist', '3'))
    assert info.value.code == 2
    line = _last_stderr_line(capsys)
    assert line == (f'train.py: error: --resume: the run in {tmp_path / "run"} was trained with other settings, and '
                    'they change its training trajectory: --cyclical-factor 2.0 -> 4.0, --img-size 32 -> 40. Repeat '
                    'its settings, or pass --allow-changed-args to continue with the new ones.')
    # Only uncompared settings changed: the resume goes on (nothing left to train: epoch 0 was the last).
    train.cli(_argv(tmp_path, '--epochs', '1', '--resume', 'auto', '-j', '1', '--log-interval', '7'))


def test_changed_settings_compares_all_but_the_uncompared_and_formats_them():
    recorded = {'lr': 0.05, 'scale': [0.08, 1.0], 'wd_min': 1e-4, 'workers': 4, 'output': 'a', 'amp': False,
                'sched': 'cosine'}
    current = {'lr': 0.05, 'scale': (0.5, 1.0), 'wd_min': None, 'workers': 1, 'output': 'b', 'amp': True,
               'sched': 'cosine', 'new_flag': 3}
    changes = changed_settings(recorded, current)
    assert changes == [('amp', False, True), ('scale', [0.08, 1.0], [0.5, 1.0]), ('wd_min', 1e-4, None)]
    assert format_changes(changes) == '--amp off -> on, --scale 0.08 1.0 -> 0.5 1.0, --wd-min 0.0001 -> (not set)'
    # Every uncompared setting is a real flag of train.py (a renamed flag would silently be compared).
    assert UNCOMPARED_SETTINGS <= set(vars(train.parse_args([]))) | {'allow_changed_args'}
    # The number of processes is recorded beside the flags and compared like them; it is named as what it is.
    args = train.parse_args([])
    assert WORLD_SIZE_KEY not in vars(args)  # not a flag: the launcher sets it
    changes = changed_settings(recorded_settings(args, 2), recorded_settings(args, 1))
    assert changes == [('world_size', 2, 1)]
    assert format_changes(changes) == 'the number of processes (world size) 2 -> 1'
    assert changed_settings(vars(args), recorded_settings(args, 2)) == []  # a run recorded before: not compared


def test_resume_refuses_another_number_of_processes(tmp_path, capsys, monkeypatch):
    """A run records its number of processes (args.yaml, the checkpoints); resuming with another one changes the
    global batch and the learning rate, so it is refused before anything is built unless --allow-changed-args."""
    import yaml
    train.cli(_argv(tmp_path, '--epochs', '1'))
    run_dir = tmp_path / 'run'
    assert yaml.safe_load((run_dir / 'args.yaml').read_text())[WORLD_SIZE_KEY] == 1
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert vars(checkpoint['args'])[WORLD_SIZE_KEY] == 1
    # A config copied from an args.yaml may hold the recorded count: not a flag, so not an unknown key.
    (tmp_path / 'config.yaml').write_text(f'epochs: 3\n{WORLD_SIZE_KEY}: 2\n')
    assert train.parse_args(['-c', str(tmp_path / 'config.yaml')]).epochs == 3

    def refused(*extra: str) -> str:
        with pytest.raises(SystemExit) as info:
            train.cli(_argv(tmp_path, '--epochs', '1', *extra))
        assert info.value.code == 2
        return _last_stderr_line(capsys)

    # The checkpoint of this 1-process run resumed by 2 processes (torchrun's WORLD_SIZE): refused in the checks,
    # before any process group is set up.
    with monkeypatch.context() as patch:
        patch.setenv('WORLD_SIZE', '2')
        line = refused('--resume', str(run_dir / 'last.pth.tar'), '--experiment', 'other')
    assert 'trained with other settings, and they change its training trajectory: the number of processes ' \
           '(world size) 1 -> 2.' in line, line
    # A run recorded by 2 processes, resumed by 1.
    recorded = yaml.safe_load((run_dir / 'args.yaml').read_text())
    (run_dir / 'args.yaml').write_text(yaml.safe_dump({**recorded, WORLD_SIZE_KEY: 2}))
    line = refused('--resume', 'auto')
    assert line.endswith('they change its training trajectory: the number of processes (world size) 2 -> 1. Repeat '
                         'its settings, or pass --allow-changed-args to continue with the new ones.'), line
    train.cli(_argv(tmp_path, '--epochs', '1', '--resume', 'auto', '--allow-changed-args'))
    assert yaml.safe_load((run_dir / 'args.yaml').read_text())[WORLD_SIZE_KEY] == 1  # records the new count


# ------------------------------------------------------------------------------------------ a full disk

def test_a_full_disk_names_the_file_and_keeps_the_old_content(tmp_path):
    target = tmp_path / 'summary.csv'
    atomic_write_text(target, 'old\n')

    def no_space(*args):
        raise OSError(errno.ENOSPC, 'No space left on device')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, 'fsync', no_space)
        with pytest.raises(DiskFullError, match=f'no space left on device while writing {target}; free some space'):
            atomic_write_text(target, 'new\n')
        with pytest.raises(DiskFullError, match='no space left on device while writing .*bins.jsonl'):
            append_jsonl(tmp_path / 'bins.jsonl', {'epoch': 0})
    assert target.read_text() == 'old\n'

    def torch_save_on_a_full_disk(f):  # torch.save wraps the OSError of its file's write in its own error
        def write(data):
            raise OSError(errno.ENOSPC, 'No space left on device')
        f.write = write
        torch.save({'x': torch.zeros(1000)}, f)
    with pytest.raises(DiskFullError, match='no space left on device while writing .*last.pth.tar'):
        atomic_write_bytes(tmp_path / 'last.pth.tar', torch_save_on_a_full_disk)
    assert not [p for p in tmp_path.iterdir() if is_temp_file(p)]


def test_train_py_on_a_full_disk_ends_with_one_line_and_resumes(tmp_path):
    original_fsync, original_save = os.fsync, ckpt.AtomicCheckpointSaver.save_checkpoint
    saves = [0]

    def save_checkpoint(self, *args, **kwargs):  # the disk fills up during the second epoch's save
        saves[0] += 1
        return original_save(self, *args, **kwargs)

    def fsync(fd):
        if saves[0] == 2:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return original_fsync(fd)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ckpt.AtomicCheckpointSaver, 'save_checkpoint', save_checkpoint)
        patch.setattr(os, 'fsync', fsync)
        with pytest.raises(SystemExit) as info:
            train.cli(_argv(tmp_path))
    assert info.value.code == f'train.py: error: no space left on device while writing {tmp_path / "run"}' \
                              f'/tmp.pth.tar; free some space, then continue the run (train.py: --resume auto)'
    run_dir = tmp_path / 'run'
    assert ckpt.checkpoint_epoch(run_dir / 'last.pth.tar') == 0
    train.cli(_argv(tmp_path, '--resume', 'auto'))
    assert ckpt.checkpoint_epoch(run_dir / 'last.pth.tar') == 1
    assert [line.split(',')[0] for line in (run_dir / 'summary.csv').read_text().splitlines()] == ['epoch', '0', '1']


# ------------------------------------------------------------------------------------------ Ctrl-C

def test_ctrl_c_ends_with_one_line_and_exit_status_130(tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)}
    command = [sys.executable, str(REPO_ROOT / 'train.py'), *_argv(tmp_path, '--epochs', '1000', '--log-interval',
                                                                   '1')]
    # pytest-xdist's workers ignore SIGINT, and a child inherits an ignored signal (Python then installs no
    # KeyboardInterrupt handler): restore the default disposition a terminal's train.py has.
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        for line in process.stderr:  # an event, not a time: the first logged training step
            lines.append(line)
            if line.startswith('Train: 0 ['):
                break
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(timeout=600) == 130, ''.join(lines) + rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert 'Traceback' not in rest, rest
    assert rest.strip().splitlines()[-1] == ('train.py: interrupted (Ctrl-C); the run folder keeps its last '
                                             'completed epoch: repeat the command with --resume auto (and its '
                                             '--experiment) to continue.')


# ------------------------------------------------------------------------------------------ SIGTERM

# train.py's cli, with a pause (until a signal) just before the third optimizer update: epoch 0's record is on disk,
# epoch 1 has started. The test signals the process from outside at that event, never after a time.
_PAUSE_IN_EPOCH_1 = """
import signal, sys
import torch
sys.path.insert(0, sys.argv[1])
import train
step, calls = torch.optim.SGD.step, [0]
def paused_step(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:
        print('paused', flush=True)
        signal.pause()
    return step(self, *args, **kwargs)
torch.optim.SGD.step = paused_step
train.cli(sys.argv[2:])
"""


def test_sigterm_ends_cleanly_with_exit_status_143_and_leaves_no_temp_folder(tmp_path):
    """SIGTERM (kill, Slurm, torchrun's agent, the grid runner) has a default disposition that ends the process
    without interpreter cleanup: the two folders W&B makes in the temp folder when ``timm.utils`` is imported
    stayed behind. train.py turns it into a clean exit, and ``--resume auto`` continues the run."""
    temp = tmp_path / 'tmp'
    temp.mkdir()
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TMPDIR': str(temp),
           'PYTHONPATH': os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)}
    with open(tmp_path / 'stderr.txt', 'w') as stderr:
        process = subprocess.Popen([sys.executable, '-c', _PAUSE_IN_EPOCH_1, str(REPO_ROOT), *_argv(tmp_path)],
                                   env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            assert any(line == 'paused\n' for line in process.stdout)  # an event: epoch 1's second update
            assert any(p.name.endswith('wandb-media') for p in temp.iterdir())  # what the signal used to leave
            process.send_signal(signal.SIGTERM)
            process.stdout.read()
            assert process.wait(timeout=600) == 143, (tmp_path / 'stderr.txt').read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    err = (tmp_path / 'stderr.txt').read_text()
    assert 'Traceback' not in err, err
    assert err.strip().splitlines()[-1] == ('train.py: terminated (SIGTERM); the run folder keeps its last '
                                            'completed epoch: repeat the command with --resume auto (and its '
                                            '--experiment) to continue.')
    assert list(temp.iterdir()) == []
    run_dir = tmp_path / 'run'
    assert ckpt.checkpoint_epoch(run_dir / 'last.pth.tar') == 0

    # A normal exit is unchanged: the resumed run finishes with status 0 and also leaves the temp folder empty.
    resumed = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), *_argv(tmp_path, '--resume', 'auto')],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ckpt.checkpoint_epoch(run_dir / 'last.pth.tar') == 1
    assert [line.split(',')[0] for line in (run_dir / 'summary.csv').read_text().splitlines()] == ['epoch', '0', '1']
    assert list(temp.iterdir()) == []


def test_exit_on_sigterm_raises_in_the_main_thread_and_restores_the_default(capsys):
    with pytest.raises(SystemExit) as info:
        with exit_on_sigterm('prog', '; a hint'):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # not reached when the handler ran at once; the signal ends the pause otherwise
    assert info.value.code == 143
    assert capsys.readouterr().err == 'prog: terminated (SIGTERM); a hint\n'
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_exit_on_sigterm_keeps_an_ignored_sigterm_and_installs_nothing_off_the_main_thread():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. started under a parent that ignores it
    try:
        with exit_on_sigterm('prog'):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: the block goes on
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)

    seen = []

    def in_a_thread():
        with exit_on_sigterm('prog'):  # signal.signal would raise ValueError here
            seen.append(signal.getsignal(signal.SIGTERM))
    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == [signal.SIG_DFL]


def test_the_other_tools_end_ctrl_c_with_one_line_and_exit_status_130(capsys):
    """``run_cli`` (cfl-grid, ``python -m cfl_timm.evaluate`` / ``cfl_timm.shift``): Ctrl-C as train.py ends it."""
    import argparse

    from cfl_timm.training.cli_runner import run_cli

    def interrupted(args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_cli(argparse.ArgumentParser(prog='some-tool'), interrupted, [])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.splitlines() == ['some-tool: interrupted (Ctrl-C)']
