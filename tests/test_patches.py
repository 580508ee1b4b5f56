"""Tests of patches/apply.py on real timm trees: the installed timm 1.0.31 package and the v1.0.28 source
distribution from PyPI, each laid out as a checkout (``timm/`` at its root, plus patches/structural_sample/train.py
as ``train.py``, since neither the wheel nor the sdist ships upstream's train.py).

No diff is committed: the tool writes one on request (``--write-diff``), and the tests check that a patched tree
holds the project's modules byte for byte, that every other change is a marked inserted line, and that the
written diff applied with ``git apply`` gives the same tree. The v1.0.28 sdist is downloaded once with pip into
``.cache/timm-sdist/`` (git-ignored); those tests skip, saying so, only when PyPI cannot be reached.
"""
import ast
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import timm

from cfl_timm import cyclical_eta

REPO_ROOT = Path(__file__).resolve().parents[1]
PATCHES = REPO_ROOT / 'patches'
sys.path.insert(0, str(PATCHES))
import apply  # noqa: E402  (patches/apply.py is a script, not a package module)

INSTALLED_TIMM = Path(timm.__file__).resolve().parent
SDIST_CACHE = REPO_ROOT / '.cache' / 'timm-sdist'  # git-ignored; CI may keep it between runs
V1028_SDIST = 'timm-1.0.28.tar.gz'
INSERTED_INTO = {apply.LOSS_INIT, apply.LOSS_FACTORY, apply.SCHEDULER_INIT, apply.TRAIN}
CYCLICAL_FLAGS = [
    '--focal_loss', 'asym-cyclical', '--gamma_hc', '3', '--gamma_pos', '2', '--gamma_neg', '2',
    '--cyclical_factor', '4', '--wd_min', '1e-5', '--wd_max', '8e-5', '--T_min', '0.5', '--T_max', '2',
    '--clip_min', '0.5', '--clip_max', '2',
]


def lay_out_checkout(timm_package: Path, root: Path) -> Path:
    """A timm package plus the structural sample train.py, laid out as a timm checkout at ``root``."""
    shutil.copytree(timm_package, root / 'timm', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(PATCHES / 'structural_sample' / 'train.py', root / 'train.py')
    return root


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The installed timm 1.0.31 package as a checkout."""
    return lay_out_checkout(INSTALLED_TIMM, tmp_path / 'checkout')


def v1028_sdist() -> Path:
    """timm 1.0.28's source distribution from PyPI, downloaded once into the cache (atomically: a finished file
    or none, also with several test workers)."""
    target = SDIST_CACHE / V1028_SDIST
    if target.is_file():
        return target
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=SDIST_CACHE, prefix='.download-'))
    try:
        result = subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:', 'timm==1.0.28',
             '--dest', str(work)], capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not (work / V1028_SDIST).is_file():
            pytest.skip(f'PyPI unreachable, timm 1.0.28 sdist not downloaded: {result.stderr.strip()[-300:]}')
        os.replace(work / V1028_SDIST, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


@pytest.fixture(scope='module')
def v1028_package(tmp_path_factory) -> Path:
    """The ``timm/`` package of the v1.0.28 sdist, extracted once per module."""
    root = tmp_path_factory.mktemp('timm-1.0.28')
    with tarfile.open(v1028_sdist()) as tar:
        tar.extractall(root, filter='data')
    return root / 'timm-1.0.28' / 'timm'


@pytest.fixture(params=['1.0.31 package', 'v1.0.28 sdist'])
def any_checkout(request, tmp_path: Path) -> Path:
    """Each real timm tree as a checkout."""
    if request.param == '1.0.31 package':
        assert timm.__version__ == '1.0.31', 'the pinned timm changed: update this test and docs/patches.md'
        package = INSTALLED_TIMM
    else:
        package = request.getfixturevalue('v1028_package')
    return lay_out_checkout(package, tmp_path / 'checkout')


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file() and '__pycache__' not in p.parts}


def run_tool(*argv: str, capsys) -> tuple[int, str, str]:
    code = apply.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_patched_files_equal_the_projects_modules(any_checkout, tmp_path, capsys):
    before = {p.relative_to(any_checkout).as_posix(): p.read_text()
              for p in any_checkout.rglob('*.py') if '__pycache__' not in p.parts}
    diff = tmp_path / 'cfl.diff'
    code, _, err = run_tool(any_checkout, '--write-diff', diff, capsys=capsys)
    assert code == 0, err
    code, _, err = run_tool(any_checkout, capsys=capsys)
    assert code == 0, err
    after = {p.relative_to(any_checkout).as_posix(): p.read_text()
             for p in any_checkout.rglob('*.py') if '__pycache__' not in p.parts}
    for dest, src in apply.COPIED_FILES.items():  # the project's modules, byte for byte, nothing else added
        assert dest not in before and (any_checkout / dest).read_bytes() == (REPO_ROOT / src).read_bytes(), dest
    changed = {rel for rel in after if before.get(rel) != after[rel]} - set(apply.COPIED_FILES)
    assert changed == INSERTED_INTO & set(before)  # v1.0.28 has no timm/loss/_loss_factory.py
    assert apply.LOSS_INIT in changed and apply.TRAIN in changed
    for rel in changed:  # only marked lines were inserted, no upstream line changed
        assert apply.strip_marked(after[rel]) == before[rel], rel

    # The written diff, applied with git to an unpatched copy of the tree, gives the same files.
    assert run_tool(any_checkout, '--revert', capsys=capsys)[0] == 0
    # git must not find an enclosing repository (the test folder may lie inside this one): then it patches the
    # working directory like patch(1)
    env = {**os.environ, 'GIT_CEILING_DIRECTORIES': str(any_checkout.parent)}
    applied = subprocess.run(['git', 'apply', str(diff)], cwd=any_checkout, env=env, capture_output=True,
                             text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
    assert {p.relative_to(any_checkout).as_posix(): p.read_text()
            for p in any_checkout.rglob('*.py') if '__pycache__' not in p.parts} == after


def test_write_diff_refuses_an_existing_file_and_a_patched_checkout(checkout, tmp_path, capsys):
    existing = tmp_path / 'mine.diff'
    existing.write_text('keep me')
    with pytest.raises(SystemExit):
        apply.main([str(checkout), '--write-diff', str(existing)])
    assert 'exists already' in capsys.readouterr().err and existing.read_text() == 'keep me'
    assert run_tool(checkout, capsys=capsys)[0] == 0
    code, _, err = run_tool(checkout, '--write-diff', tmp_path / 'new.diff', capsys=capsys)
    assert code == 1 and 'patched already' in err and not (tmp_path / 'new.diff').exists()


def test_apply_is_idempotent_and_revert_is_byte_exact(checkout, capsys):
    before = tree_digest(checkout)
    code, out, err = run_tool(checkout, capsys=capsys)
    assert code == 0, err
    patched = tree_digest(checkout)
    changed = {rel for rel in patched if before.get(rel) != patched[rel]}
    assert changed == {'train.py', 'timm/loss/__init__.py', 'timm/loss/_loss_factory.py', apply.SCHEDULER_INIT,
                       *apply.COPIED_FILES}

    code, out, _ = run_tool(checkout, capsys=capsys)  # second run: nothing to do
    assert code == 0 and 'already patched' in out
    code, out, _ = run_tool(checkout, '--dry-run', capsys=capsys)
    assert code == 0 and 'already patched' in out
    assert tree_digest(checkout) == patched

    code, out, err = run_tool(checkout, '--revert', '--dry-run', capsys=capsys)
    assert code == 0 and 'deleted file mode' in out
    assert tree_digest(checkout) == patched  # a dry run changes nothing
    code, _, err = run_tool(checkout, '--revert', capsys=capsys)
    assert code == 0, err
    assert tree_digest(checkout) == before
    code, out, _ = run_tool(checkout, '--revert', capsys=capsys)
    assert code == 0 and 'already unpatched' in out


def test_revert_keeps_crlf_files_byte_exact(checkout, capsys):
    init = checkout / 'timm' / 'loss' / '__init__.py'
    crlf = init.read_bytes().replace(b'\n', b'\r\n')
    init.write_bytes(crlf)
    assert run_tool(checkout, '--library-only', capsys=capsys)[0] == 0
    patched = init.read_bytes()
    assert b'cfl-timm\r\n' in patched and b'cfl-timm\n' not in patched.replace(b'\r\n', b'')
    assert run_tool(checkout, '--library-only', '--revert', capsys=capsys)[0] == 0
    assert init.read_bytes() == crlf


def test_missing_anchors_change_nothing_and_are_all_named(checkout, capsys):
    factory = checkout / 'timm' / 'loss' / '_loss_factory.py'
    factory.write_text(factory.read_text().replace('LOSS_TYPES = (', 'KNOWN_LOSSES = ('))
    train = checkout / 'train.py'
    train.write_text(train.read_text().replace('lr_scheduler.step_update(', 'lr_scheduler.step('))
    before = tree_digest(checkout)
    code, out, err = run_tool(checkout, capsys=capsys)
    assert code == 1
    assert 'nothing was changed' in err
    assert 'timm/loss/_loss_factory.py: the module-level assignment LOSS_TYPES = (...)' in err
    assert 'train.py: train_one_epoch(): "lr_scheduler.step_update(...)"' in err
    assert tree_digest(checkout) == before  # the anchors that were found were not applied either


def bare_python(cwd: Path) -> list[str]:
    """A Python 3.10+ that can import neither torch nor cfl_timm: the system python3 where it has neither, else
    this interpreter with -S (no site-packages). -I keeps out PYTHON* variables, the user site and the script's
    folder."""
    probe = ('import importlib.util, sys; print(sys.version_info >= (3, 10) and not any('
             'importlib.util.find_spec(m) for m in ("torch", "cfl_timm")))')
    system = shutil.which('python3', path=os.defpath)
    for command in ([[system, '-I']] if system else []) + [[sys.executable, '-I', '-S']]:
        result = subprocess.run([*command, '-c', probe], cwd=cwd, env={'PATH': os.defpath}, capture_output=True,
                                text=True, timeout=60)
        if result.stdout.strip() == 'True':
            return command
    raise AssertionError(f'no Python without torch and cfl_timm: {result.stdout} {result.stderr}')


def test_apply_imports_the_standard_library_only():
    tree = ast.parse((PATCHES / 'apply.py').read_text())  # every import, deferred ones included
    modules = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert None not in modules  # no relative import
    assert {m for m in modules if m.split('.')[0] not in sys.stdlib_module_names} == set()


def run_bare(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """patches/apply.py run by a bare Python, from a folder outside this repository."""
    return subprocess.run([*bare_python(cwd), str(PATCHES / 'apply.py'), *map(str, argv)], cwd=cwd,
                          env={'PATH': os.defpath}, capture_output=True, text=True, timeout=300)


def test_bare_python_patches_and_reverts(checkout, tmp_path, capsys):
    reference = tmp_path / 'reference'
    shutil.copytree(checkout, reference)
    assert run_tool(reference, capsys=capsys)[0] == 0  # the same tool, run inside the test environment
    before = tree_digest(checkout)
    outside = tmp_path / 'elsewhere'
    outside.mkdir()

    dry = run_bare(checkout, '--dry-run', cwd=outside)
    assert dry.returncode == 0 and 'would change' in dry.stderr, dry.stderr
    assert tree_digest(checkout) == before
    result = run_bare(checkout, cwd=outside)
    assert result.returncode == 0, result.stderr
    assert tree_digest(checkout) == tree_digest(reference)
    for dest, src in apply.COPIED_FILES.items():  # the project's modules, byte for byte
        assert (checkout / dest).read_bytes() == (REPO_ROOT / src).read_bytes(), dest
    assert 'already patched' in run_bare(checkout, cwd=outside).stdout
    result = run_bare(checkout, '--revert', cwd=outside)
    assert result.returncode == 0, result.stderr
    assert tree_digest(checkout) == before


@pytest.mark.parametrize('problem', ['read-only file', 'missing anchor'])
def test_bare_python_reports_a_problem_in_one_line_and_writes_nothing(problem, checkout, tmp_path):
    if problem == 'read-only file':
        target = checkout / apply.SCHEDULER_INIT
        target.chmod(0o444)
        expected = f'{apply.SCHEDULER_INIT} is read-only'
    else:
        train = checkout / 'train.py'
        train.write_text(train.read_text().replace('lr_scheduler.step_update(', 'lr_scheduler.step('))
        expected = 'train.py: train_one_epoch(): "lr_scheduler.step_update(...)"'
    modes = {p: p.stat().st_mode for p in checkout.rglob('*')}
    before = tree_digest(checkout)
    for argv in (['--dry-run'], []):  # the dry run fails exactly where the real run would
        result = run_bare(checkout, *argv, cwd=tmp_path)
        assert result.returncode == 1 and result.stdout == '', result.stderr
        line, = result.stderr.splitlines()
        assert line.startswith(f'error: cannot patch {checkout}: ') and expected in line, line
        assert line.endswith('nothing was changed'), line
        assert tree_digest(checkout) == before
        assert {p: p.stat().st_mode for p in checkout.rglob('*')} == modes


def test_missing_source_file_is_found_before_writing(checkout, monkeypatch, capsys):
    monkeypatch.setitem(apply.COPIED_FILES, 'timm/loss/extra.py', 'cfl_timm/not_there.py')
    before = tree_digest(checkout)
    code, _, err = run_tool(checkout, capsys=capsys)
    assert code == 1
    assert err.strip() == (f'error: cannot patch {checkout}: source file cfl_timm/not_there.py is missing from this '
                           'repository; nothing was changed')
    assert tree_digest(checkout) == before


def test_a_copied_module_importing_an_uncopied_one_is_found_before_writing(checkout, monkeypatch, capsys):
    monkeypatch.delitem(apply.COPIED_FILES, 'timm/loss/_base.py')
    before = tree_digest(checkout)
    code, _, err = run_tool(checkout, '--dry-run', capsys=capsys)
    assert code == 1 and 'nothing was changed' in err
    for module in ('cyclical_focal_loss', 'calibration_losses'):
        assert f'timm/loss/{module}.py: relative import of ._base, which is not a copied module' in err
    assert tree_digest(checkout) == before


def test_a_failed_write_restores_the_files_written_before_it(checkout, monkeypatch, capsys):
    real_write, calls = apply.atomic_write_text, []

    def disk_full_at_the_third_file(path: Path, text: str) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, 'No space left on device')
        real_write(path, text)

    monkeypatch.setattr(apply, 'atomic_write_text', disk_full_at_the_third_file)
    before = tree_digest(checkout)
    code, out, err = run_tool(checkout, capsys=capsys)
    assert code == 1 and out == ''
    rel = calls[2].relative_to(checkout).as_posix()
    assert err.strip() == (f'error: writing {rel} failed ([Errno 28] No space left on device); the files written '
                           'before it were restored')
    assert tree_digest(checkout) == before


def test_foreign_file_at_a_copy_destination_is_refused(checkout, capsys):
    foreign = checkout / 'timm' / 'scheduler' / 'cyclical_args.py'
    foreign.write_text('# a user file\n')
    before = tree_digest(checkout)
    code, _, err = run_tool(checkout, capsys=capsys)
    assert code == 1 and 'timm/scheduler/cyclical_args.py already exists and was not written by this tool' in err
    assert tree_digest(checkout) == before


def test_not_a_checkout_and_missing_train_py_are_clear_errors(tmp_path, checkout, capsys):
    code, _, err = run_tool(tmp_path / 'nowhere', capsys=capsys)
    assert code == 1 and 'timm/loss/__init__.py is missing' in err
    (checkout / 'train.py').unlink()
    code, _, err = run_tool(checkout, capsys=capsys)
    assert code == 1 and '--library-only' in err


PATCHED_LIBRARY_CHECK = r'''
import argparse, math, torch, torch.nn as nn
from timm.loss import CyclicalFocalLoss, AsymmetricLossSingleLabel, create_classification_loss, LOSS_TYPES
from timm.loss import AdaFocalLoss, CALIBRATION_LOSS_TYPES
from timm.loss.calibration_losses import CALIBRATION_LOSS_DEFAULTS

# The factory accepts every cfl-timm type; existing types and errors behave as before.
loss = create_classification_loss('asym-cyclical', smoothing=0.1, gamma_hc=3., gamma_pos=2., gamma_neg=2.,
                                  cyclical_factor=4., epochs=5)
assert type(loss) is CyclicalFocalLoss and (loss.gamma_hc, loss.epochs, loss.eps) == (3., 5, 0.1), loss
assert type(create_classification_loss('ce')) is nn.CrossEntropyLoss
assert type(create_classification_loss('asl')) is AsymmetricLossSingleLabel
assert LOSS_TYPES[-15:] == ('sym', 'asym', 'asym-cyclical') + CALIBRATION_LOSS_TYPES
for name in CALIBRATION_LOSS_TYPES:  # the spec's keyword names with their official defaults
    built = create_classification_loss(name, **CALIBRATION_LOSS_DEFAULTS[name])
    assert type(built) is type(create_classification_loss(name)), name
assert type(create_classification_loss('adafocal', adafocal_bins=10, loss_reduction='sum')) is AdaFocalLoss
for call, error in ((lambda: create_classification_loss('nope'), "expected one of ('ce', 'bce'"),
                    (lambda: create_classification_loss('sym', multi_label=True), 'multi-label'),
                    (lambda: create_classification_loss('brier', flsd_gamma=2.), "do not apply to the loss type"),
                    (lambda: create_classification_loss('asym-cyclical'), 'CyclicalFocalLoss needs epochs'),
                    (lambda: create_classification_loss('ce', gamma_pos=2.), 'only apply to the loss types')):
    try:
        call()
        raise AssertionError('no error')
    except (ValueError, TypeError) as e:
        assert error in str(e), e
try:
    create_classification_loss('twoway')
    raise AssertionError('no error')
except ValueError as e:
    assert 'requires multi-label targets' in str(e), e

# The patched scheduler factory: timm's types as before, 'onecycle', and the cyclical keywords returning the
# CyclicalScheduler. Weight decay reaches the decayed groups only (chosen by configured value, not index, no
# lr_scale), per-update stepping uses fractional epochs, the clip threshold arrives in a copy of args, the
# attached loss follows the position and sees logits / T.
import timm.scheduler
from timm.scheduler import CyclicalScheduler, OneCycleLRScheduler, CosineLRScheduler, scheduled_clip_args
from timm.scheduler.cyclical_args import cyclical_summary
from timm.scheduler.cyclical_value import cyclical_value
weights = [nn.Parameter(torch.zeros(2)) for _ in range(3)]
optimizer = torch.optim.SGD([{'params': [weights[0]], 'weight_decay': 1e-4, 'lr_scale': 0.5},
                             {'params': [weights[1]], 'weight_decay': 0.},
                             {'params': [weights[2]], 'weight_decay': 3e-4}], lr=0.1)
plain, _ = timm.scheduler.create_scheduler_v2(optimizer, sched='cosine', num_epochs=5)
assert type(plain) is CosineLRScheduler
onecycle, n = timm.scheduler.create_scheduler_v2(optimizer, sched='onecycle', num_epochs=5, cooldown_epochs=1)
assert type(onecycle) is OneCycleLRScheduler and n == 6
ns = argparse.Namespace(sched='cosine', epochs=4, cooldown_epochs=1, cyclical_factor=4., wd_min=1e-5, wd_max=8e-5,
                        T_min=0.5, T_max=2., clip_min=0.5, clip_max=2., cyclical_step_per_update=True)
scheduler, num_epochs = timm.scheduler.create_scheduler_v2(optimizer, **timm.scheduler.scheduler_kwargs(ns),
                                                           updates_per_epoch=4)
assert type(scheduler) is CyclicalScheduler and num_epochs == 5 and scheduler.t_in_epochs
criterion = create_classification_loss('asym-cyclical', gamma_hc=3., cyclical_factor=4., epochs=5)
scheduler.attach_loss(criterion)
args = argparse.Namespace(clip_grad=None, clip_mode='norm')
scheduler.step(1)
epoch_args = scheduled_clip_args(args, scheduler)
scheduler.step_update(6)
update_args = scheduled_clip_args(epoch_args, scheduler)
expect = {name: cyclical_value(1.5, min_value=lo, max_value=hi, num_epochs=5, cyclical_factor=4.)
          for name, (lo, hi) in {'wd': (1e-5, 8e-5), 'T': (0.5, 2.), 'clip': (0.5, 2.)}.items()}
assert args.clip_grad is None
assert math.isclose(epoch_args.clip_grad, cyclical_value(1, min_value=0.5, max_value=2., num_epochs=5,
                                                         cyclical_factor=4.))
assert math.isclose(update_args.clip_grad, expect['clip'])
assert [g['weight_decay'] for g in optimizer.param_groups] == [expect['wd'], 0., expect['wd']]
assert math.isclose(scheduler.temperature, expect['T'])
assert criterion.epoch == 1.5
logits, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
assert criterion(logits, target).item() == criterion.forward(logits / expect['T'], target).item()
assert cyclical_summary(scheduler, 1)['weight_decay'] == cyclical_value(1, min_value=1e-5, max_value=8e-5,
                                                                         num_epochs=5, cyclical_factor=4.)
try:
    timm.scheduler.create_scheduler_v2(torch.optim.SGD([weights[1]], lr=0.1, weight_decay=0.), num_epochs=5,
                                       wd_min=1e-5)
    raise AssertionError('no error')
except ValueError as e:
    assert 'weight decay > 0' in str(e), e
print('ok')
'''


def test_patched_library_factory_and_hooks(checkout, capsys):
    assert run_tool(checkout, capsys=capsys)[0] == 0
    env = {**os.environ, 'PYTHONPATH': str(checkout)}
    result = subprocess.run([sys.executable, '-c', PATCHED_LIBRARY_CHECK], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-3000:]


def cyclical_expected(epoch: float, low: float, high: float, num_epochs: int = 3, factor: float = 4.0) -> float:
    eta = cyclical_eta(epoch, num_epochs, factor)
    return (1 - eta) * high + eta * low


def test_patched_train_py_trains_with_the_cyclical_flags(checkout, image_folder, tmp_path, capsys):
    assert run_tool(checkout, capsys=capsys)[0] == 0
    output = tmp_path / 'out'
    env = {**os.environ, 'PYTHONPATH': str(checkout)}
    result = subprocess.run(
        [sys.executable, 'train.py', str(image_folder), '--output', str(output), '--epochs', '3', '--max-images', '48',
         '--weight-decay', '2e-5', *CYCLICAL_FLAGS],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['epoch']) for r in rows] == [0, 1, 2]
    for row in rows:
        epoch = int(row['epoch'])
        assert float(row['train_eta']) == pytest.approx(cyclical_eta(epoch, 3, 4.0), abs=1e-12)
        assert float(row['train_weight_decay']) == pytest.approx(cyclical_expected(epoch, 1e-5, 8e-5), rel=1e-12)
        assert float(row['train_temperature']) == pytest.approx(cyclical_expected(epoch, 0.5, 2.0), rel=1e-12)
        assert float(row['train_clip_grad']) == pytest.approx(cyclical_expected(epoch, 0.5, 2.0), rel=1e-12)
        assert float(row['train_loss']) > 0
    assert float(rows[1]['train_eta']) == pytest.approx(1 / 3)  # a real mid-run value, not the start value
    updates = json.loads((output / 'updates.json').read_text())
    assert len(updates) == 9  # 48 images, batch 16, 3 epochs
    for update in updates:
        epoch = update['epoch']
        for configured, used in update['groups']:  # no-decay groups stay 0, decayed follow the schedule
            assert used == (0.0 if configured == 0 else pytest.approx(cyclical_expected(epoch, 1e-5, 8e-5)))
        assert update['clip_grad'] == pytest.approx(cyclical_expected(epoch, 0.5, 2.0))
        assert update['temperature'] == pytest.approx(cyclical_expected(epoch, 0.5, 2.0))

    bad = subprocess.run([sys.executable, 'train.py', str(image_folder), '--focal_loss', 'asym', '--loss', 'bce'],
                         cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    assert bad.returncode != 0 and 'cannot be combined with --loss bce' in bad.stderr
    bad = subprocess.run([sys.executable, 'train.py', str(image_folder), '--focal_loss', 'cyclic'],
                         cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    assert bad.returncode != 0 and "choose from 'sym', 'asym', 'asym-cyclical'" in bad.stderr
