"""A run folder has one owner and one history: ``--resume`` of another run's checkpoint into a folder holding a
run is refused with every file left byte-identical, a checkpoint resumed into a new folder starts a new run that
records its source, a second train.py on a locked folder fails naming the holder's pid and host, and a SIGKILLed
holder leaves no stale lock."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from cfl_timm.training import RunLock
from cfl_timm.training.run_owner import LOCK_NAME, read_run_id

REPO_ROOT = Path(__file__).resolve().parents[1]
ARGS = ['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-b', '32', '-j', '0',
        '--train_size', '64', '--epochs', '2', '--lr', '0.05', '--warmup-epochs', '0', '--log-interval', '1000']

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread per test


def _train(output: Path, experiment: str, *extra: str) -> dict:
    return train.main(train.parse_args([*ARGS, '--output', str(output), '--experiment', experiment, *extra]))


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _checkpoint_run_id(path: Path) -> str:
    return torch.load(path, map_location='cpu', weights_only=False)['saver']['run_id']


def _env() -> dict:
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH', '')) if p)
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': python_path}


def test_resume_into_another_runs_folder_is_refused_and_a_new_folder_starts_a_new_run(tmp_path, capsys):
    _train(tmp_path, 'a')
    _train(tmp_path, 'b')
    run_a, run_b = read_run_id(tmp_path / 'a'), read_run_id(tmp_path / 'b')
    assert run_a and run_b and run_a != run_b
    for path in (tmp_path / 'a').glob('*.pth.tar'):
        assert _checkpoint_run_id(path) == run_a, path.name
    before = _digests(tmp_path / 'b')
    assert {'args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar',
            'checkpoint-1.pth.tar'} <= before.keys()

    with pytest.raises(SystemExit) as exit_info:
        train.cli([*ARGS, '--output', str(tmp_path), '--experiment', 'b',
                   '--resume', str(tmp_path / 'a' / 'last.pth.tar')])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith('train.py: error: --resume:') and run_a in line and run_b in line, line
    assert _digests(tmp_path / 'b') == before  # nothing replaced, nothing added (not even the lock file)

    # Into a new folder: a new run whose record names the source checkpoint and its run.
    _train(tmp_path, 'c', '--resume', str(tmp_path / 'a' / 'checkpoint-0.pth.tar'))
    record = json.loads((tmp_path / 'c' / 'run.json').read_text())
    assert record['run_id'] not in (run_a, run_b)
    assert record['resumed_from'] == {'checkpoint': str((tmp_path / 'a' / 'checkpoint-0.pth.tar').resolve()),
                                      'run_id': run_a, 'epoch': 0}
    assert _checkpoint_run_id(tmp_path / 'c' / 'last.pth.tar') == record['run_id']

    # Its own folder's run goes on under its id, and keeps its record.
    _train(tmp_path, 'c', '--resume', 'auto', '--epochs', '3', '--allow-changed-args')
    assert json.loads((tmp_path / 'c' / 'run.json').read_text()) == record
    assert _checkpoint_run_id(tmp_path / 'c' / 'checkpoint-2.pth.tar') == record['run_id']


def test_a_second_train_py_on_a_locked_folder_fails_naming_the_holder(tmp_path):
    lock = RunLock.acquire(tmp_path / 'run')  # this process is the holder, by the mechanism train.py uses
    try:
        second = subprocess.run([sys.executable, str(REPO_ROOT / 'train.py'), *ARGS, '--output', str(tmp_path),
                                 '--experiment', 'run', '--resume', 'auto', '--seed', '7'],
                                env=_env(), capture_output=True, text=True, timeout=600)
    finally:
        lock.release()
    assert second.returncode == 2, second.stderr[-2000:]
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith('train.py: error: --output/--experiment:'), line
    assert f'pid {os.getpid()} on host {socket.gethostname()}' in line, line
    assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == [LOCK_NAME]  # it wrote nothing


def test_a_sigkilled_run_leaves_no_stale_lock(tmp_path):
    # tests/kill_at.py SIGKILLs train.py just before its 3rd optimizer update: it holds the lock at that point.
    victim = subprocess.Popen([sys.executable, str(REPO_ROOT / 'tests' / 'kill_at.py'), 'torch.optim:SGD.step', '3',
                               '--', *ARGS, '--output', str(tmp_path), '--experiment', 'run'],
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert victim.wait(timeout=600) == -signal.SIGKILL
    host = socket.gethostname()
    assert (tmp_path / 'run' / LOCK_NAME).read_text().strip() == f'pid {victim.pid} on host {host}'
    resumed = subprocess.Popen([sys.executable, str(REPO_ROOT / 'train.py'), *ARGS, '--output', str(tmp_path),
                                '--experiment', 'run', '--resume', 'auto'],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    # The new run took the lock (it wrote its pid), and a later process can take it again.
    holder = (tmp_path / 'run' / LOCK_NAME).read_text().strip()
    assert holder == f'pid {resumed.pid} on host {host}'
    RunLock.acquire(tmp_path / 'run').release()


_HOLD_AND_FORK = '''
import os, signal, sys
from cfl_timm.training import RunLock
RunLock.acquire(sys.argv[1])
read_end = int(sys.argv[2])
child = os.fork()
if child == 0:  # like a data-loader worker: outlives the trainer until its pipe closes
    os.read(read_end, 1)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
'''


def test_a_forked_worker_that_outlives_a_killed_holder_does_not_hold_the_folder(tmp_path):
    """Loader workers are forked from the trainer; the lock is the trainer's alone, so a resume right after a kill
    is not refused while orphaned workers are still winding down."""
    read_end, write_end = os.pipe()
    try:
        holder = subprocess.Popen([sys.executable, '-c', _HOLD_AND_FORK, str(tmp_path / 'run'), str(read_end)],
                                  env=_env(), pass_fds=(read_end,), stdout=subprocess.PIPE, text=True)
        child = int(holder.stdout.readline())
        assert holder.wait(timeout=60) == -signal.SIGKILL
        holder.stdout.close()
        os.kill(child, 0)  # the forked child is still alive, blocked on its pipe
        RunLock.acquire(tmp_path / 'run').release()
    finally:
        os.close(write_end)  # the child reads end-of-file and exits
        os.close(read_end)
