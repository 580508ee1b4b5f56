"""Test configuration: the repository root on sys.path and the real-image data fixtures.

Two sources of real images:

- ``digits_dir``: scikit-learn's bundled handwritten digits written out as a timm folder dataset
  (``train/<class>/*.png``, ``val/<class>/*.png``). It ships with a dependency, so it exists on every machine.
- ``cifar10_dir`` / ``oltr_lists_dir``: the CIFAR-10 JPEG archive and the OLTR list files, found through the
  environment variable ``CFL_TIMM_DATA`` (a folder holding ``cifar10-jpeg.tar.gz`` and ``oltr_lists/``;
  ``.ci/run`` sets it to ``../shared/data``). When it is unset or the file is missing, the tests that need
  them are skipped with that reason.

``image_folder`` runs a test once on each folder dataset (digits always, CIFAR-10 when available), so every
behaviour checked on CIFAR-10 is also checked on images every machine has.
"""
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Every temporary file of the suite stays in the checkout. Set here, before any test module is collected: importing
# timm.utils imports W&B, which makes temp folders at import time, and an xdist worker that ends without running
# its interpreter's exit hooks leaves them behind. One folder per process (the controller and each worker), emptied
# when that process starts, git-ignored; torchrun, W&B and every subprocess inherit it.
_TEMP_ROOT = REPO_ROOT / '.pytest_tmpdir' / os.environ.get('PYTEST_XDIST_WORKER', 'main')
shutil.rmtree(_TEMP_ROOT, ignore_errors=True)
_TEMP_ROOT.mkdir(parents=True, exist_ok=True)
os.environ['TMPDIR'] = str(_TEMP_ROOT)
tempfile.tempdir = None  # gettempdir() caches its answer: make it read TMPDIR again

DATA_ENV = 'CFL_TIMM_DATA'
CIFAR10_ARCHIVE_NAME = 'cifar10-jpeg.tar.gz'
OLTR_LISTS_NAME = 'oltr_lists'
CIFAR10_TRAIN_PER_CLASS = 120
CIFAR10_VAL_PER_CLASS = 20


def data_path(name: str) -> Path:
    """``$CFL_TIMM_DATA/name``, or a pytest skip naming the variable and what is missing."""
    root = os.environ.get(DATA_ENV, '')
    if not root:
        pytest.skip(f'{DATA_ENV} is not set (a folder holding {CIFAR10_ARCHIVE_NAME} and {OLTR_LISTS_NAME}/)')
    path = Path(root).expanduser() / name
    if not path.exists():
        pytest.skip(f'{name} not found in {DATA_ENV}={root}')
    return path


def extract_cifar10_subset(archive: Path, dest: Path, train_per_class: int, val_per_class: int) -> Path:
    """Extract the first images of each class and split of the CIFAR-10 JPEG archive into `dest`.

    Returns `dest`, laid out as timm's folder dataset expects: `dest/{train,val}/<class>/NNNN.jpg`.
    """
    limits = {'train': train_per_class, 'val': val_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(archive, 'r:gz') as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in limits:
                continue
            split, cls = parts[-3], parts[-2]
            if taken.get((split, cls), 0) >= limits[split]:
                continue
            target = dest / split / cls / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
    return dest


def write_digits_folder(dest: Path, image_size: int = 32, per_class: Optional[int] = None) -> Path:
    """scikit-learn's digits as PNGs in a timm folder dataset: `dest/{train,val}/<digit>/NNNN.png`.

    The split is :class:`cfl_timm.data.DigitsDataset`'s (1,442 train / 355 val images); ``per_class`` keeps
    only the first images of each class and split.
    """
    from cfl_timm.data import DigitsDataset
    for split in ('train', 'val'):
        dataset = DigitsDataset(split, image_size=image_size)
        taken: dict[int, int] = {}
        for index in range(len(dataset)):
            image, label = dataset[index]
            if per_class is not None and taken.get(label, 0) >= per_class:
                continue
            taken[label] = taken.get(label, 0) + 1
            folder = dest / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f'{index:04d}.png')
    return dest


@pytest.fixture(autouse=True)
def _skip_run_pictures(request, monkeypatch):
    """train.py draws its pictures (curves, ECE vs accuracy, evidence: about a second of matplotlib) at the end of
    every run. In-process runs of tests that do not ask for the ``run_pictures`` fixture skip that drawing, to keep
    the suite fast; tests/test_train_evidence.py checks the pictures."""
    plotting = sys.modules.get('cfl_timm.plotting')  # imported by train.py; not imported here for tests without it
    if plotting is not None and 'run_pictures' not in request.fixturenames:
        monkeypatch.setattr(plotting, 'RUN_PICTURES', {})


@pytest.fixture
def run_pictures():
    """Request it to let train.py draw its run pictures in the test (see ``_skip_run_pictures``)."""


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test, restored after it. On the shared 2-core CI machine thread
    contention makes the default two threads several times slower for tiny batches, and one thread gives one
    fixed reduction order, so two runs in one process are bit-identical."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='session')
def cifar10_archive() -> Path:
    """The CIFAR-10 JPEG archive in ``$CFL_TIMM_DATA`` (skips when absent)."""
    return data_path(CIFAR10_ARCHIVE_NAME)


@pytest.fixture(scope='session')
def oltr_lists_dir() -> Path:
    """The published OLTR list files in ``$CFL_TIMM_DATA/oltr_lists`` (skips when absent)."""
    return data_path(OLTR_LISTS_NAME)


@pytest.fixture(scope='session')
def cifar10_dir(cifar10_archive, tmp_path_factory) -> Path:
    """A real-image CIFAR-10 subset: 120 train and 20 val JPEGs per class (1,400 files), extracted once per run."""
    return extract_cifar10_subset(cifar10_archive, tmp_path_factory.mktemp('cifar10'), CIFAR10_TRAIN_PER_CLASS,
                                  CIFAR10_VAL_PER_CLASS)


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory) -> Path:
    """scikit-learn's digits as a timm folder dataset of 32 px RGB PNGs (1,442 train / 355 val), written once."""
    return write_digits_folder(tmp_path_factory.mktemp('digits'))


def validate_usage_error(capsys, *argv: str) -> str:
    """validate.py's command line must stop with a one-line usage error (exit 2); returns that line."""
    import validate
    with pytest.raises(SystemExit) as exit_info:
        validate.cli([*argv, '-j', '0'])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('validate.py: error:')]
    assert len(lines) == 1
    return lines[0]


@pytest.fixture(scope='session')
def digits_run(tmp_path_factory) -> Path:
    """Two epochs of test_resnet on sklearn digits through train.py (one thread), trained once per session: the run
    folder with model_best.pth.tar, summary.csv and reliability.jsonl."""
    return train_digits(tmp_path_factory.mktemp('train'), '--epochs', '2')


def train_digits(output: Path, *extra: str) -> Path:
    """test_resnet on sklearn digits through train.py (one thread) into ``output/run``, with ``extra`` flags."""
    import torch

    import train
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(train.get_args_parser().parse_args([
            '--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '--warmup-epochs', '0',
            '--lr', '0.05', '-b', '64', '-j', '0', '--output', str(output), '--experiment', 'run',
            '--log-interval', '1000', '--checkpoint-hist', '1', *extra]))
    finally:
        torch.set_num_threads(previous)
    return output / 'run'


@pytest.fixture(params=['digits', 'cifar10'])
def image_folder(request) -> Path:
    """A real-image timm folder dataset: scikit-learn's digits, then the CIFAR-10 subset (skipped when absent)."""
    return request.getfixturevalue(f'{request.param}_dir')


def every_rank_log(stderr: str, tail: int = 3000) -> str:
    """A torchrun failure message that keeps every rank's error: the lines of all ranks that name an error
    (torchrun prints the first failing rank's traceback, which may be a consequence of another rank's exit),
    then the tail of the whole log."""
    errors = [line for line in stderr.splitlines() if 'error' in line.lower() or 'exitcode' in line.lower()]
    return 'error lines of every rank:\n' + '\n'.join(errors[-40:]) + '\n--- tail ---\n' + stderr[-tail:]
