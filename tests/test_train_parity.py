"""Parity of train.py's command line with upstream timm's train.py (tests/fixtures/timm_train_flags.txt):
every upstream flag exists with the same destination and default, and parses with a value of its type; and
train.py / validate.py make timm's CUDA back-end settings before the device is set up."""
from pathlib import Path

import pytest
import torch

import train
import validate
from cfl_timm.training import backends

FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'timm_train_flags.txt'
# Defaults that differ on purpose (docs/training.md: the parity table).
DEFAULT_EXCEPTIONS = {
    # 'cuda' fails on a machine without CUDA; here it is 'cuda' where available, else 'cpu'.
    'device',
    # None = 0.1 for timm's losses (upstream's default), the published eps for the focal losses.
    'smoothing',
}
SAMPLE_VALUES = {'int': '3', 'float': '0.25', 'str': 'x', 'None': 'x', 'parsekwargs': 'a=1'}
# Free strings upstream that take a closed set of values here (argparse choices, a PIL mode).
CHOICE_VALUES = {'--amp-dtype': 'bfloat16', '--model-dtype': 'bfloat16', '--clip-mode': 'agc',
                 '--dist-bn': 'broadcast', '--interpolation': 'bicubic', '--mixup-mode': 'elem',
                 '--train-crop-mode': 'rkrc', '--input-img-mode': 'RGBA', '--remode': 'rand',
                 '--train-interpolation': 'bicubic', '--lr-base-scale': 'sqrt',
                 # A free string upstream that must be a torch device name here (arg_types.device_name).
                 '--device': 'cpu',
                 # Free strings upstream that must name an existing file here (arg_types.existing_file).
                 '--class-map': str(FIXTURE), '--initial-checkpoint': str(FIXTURE), '--pretrained-path': str(FIXTURE),
                 '--kd-pretrained-path': str(FIXTURE)}


def _upstream_flags() -> list[dict]:
    rows = []
    for line in FIXTURE.read_text().splitlines():
        if line.startswith('#') or not line.strip():
            continue
        flags, dest, default, kind, nargs, choices = line.split('\t')
        rows.append({'flags': flags.split(), 'dest': dest, 'default': default, 'kind': kind, 'nargs': nargs,
                     'choices': choices.split()})
    return rows


UPSTREAM = _upstream_flags()


def _argv(row: dict) -> list[str]:
    """A command line setting this flag to a non-default value of its type."""
    flag = row['flags'][-1]
    if row['kind'] in ('storetrue',):
        return [flag]
    value = row['choices'][-1] if row['choices'] else CHOICE_VALUES.get(flag, SAMPLE_VALUES[row['kind']])
    if row['nargs'] == '3':
        return [flag, value, value, value]
    if row['nargs'] in ('+', '*'):
        return [flag, value, value]
    if not flag.startswith('-'):  # the positional data dir
        return [value]
    return [flag, value]


def test_fixture_is_the_full_upstream_list():
    assert len(UPSTREAM) == 164
    assert FIXTURE.read_text().startswith('# Flags of upstream timm train.py')


def test_every_upstream_flag_exists_with_the_same_dest_and_default():
    parser = train.get_args_parser()
    ours = {s: a for a in parser._actions for s in (a.option_strings or [a.dest])}
    missing = [r['flags'] for r in UPSTREAM if not any(f in ours for f in r['flags'])]
    assert not missing, f'upstream flags missing from train.py: {missing}'
    for row in UPSTREAM:
        for flag in row['flags']:
            assert flag in ours, f'{flag} (spelling of {row["flags"]}) missing'
            action = ours[flag]
            assert action.dest == row['dest'], flag
            if row['dest'] not in DEFAULT_EXCEPTIONS:
                assert repr(action.default) == row['default'], (flag, action.default, row['default'])


@pytest.mark.parametrize('row', UPSTREAM, ids=[r['flags'][-1] for r in UPSTREAM])
def test_each_upstream_flag_parses(row):
    if row['dest'] == 'config':
        return  # -c/--config reads a file: tests/test_train.py covers it
    args = train.parse_args(_argv(row))
    value = getattr(args, row['dest'])
    assert repr(value) != row['default'] or row['kind'] == 'None', (row['flags'], value)


class _DeviceSetUp(Exception):
    """Raised where the entry point goes on to set up its device: the settings before it have been made."""


def _set_flags(allow_tf32: bool, benchmark: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.benchmark = benchmark


@pytest.fixture
def cuda_flags(monkeypatch):
    """CUDA reported available and the two back-end flags off, restored afterwards (torch's cuBLAS settings
    object is not one monkeypatch can restore)."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    monkeypatch.setattr(backends.torch.cuda, 'is_available', lambda: True)
    _set_flags(False, False)
    yield lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    _set_flags(*before)


def _stop(*args, **kwargs):
    raise _DeviceSetUp


def test_timm_cuda_defaults_only_with_cuda(cuda_flags, monkeypatch):
    assert backends.set_timm_cuda_defaults() is True and cuda_flags() == (True, True)
    _set_flags(False, False)
    monkeypatch.setattr(backends.torch.cuda, 'is_available', lambda: False)
    assert backends.set_timm_cuda_defaults() is False and cuda_flags() == (False, False)


def test_train_makes_timm_cuda_settings_before_the_device(cuda_flags, monkeypatch, tmp_path):
    """timm's train.py sets TF32 and cuDNN autotuning when CUDA is available; so does this one (a GPU check found
    them missing: inductor warned of unused TF32 tensor cores)."""
    monkeypatch.setattr(train, 'init_process', _stop)
    args = train.parse_args(['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--device', 'cpu',
                             '--output', str(tmp_path)])
    with pytest.raises(_DeviceSetUp):
        train.main(args)
    assert cuda_flags() == (True, True)


def test_validate_makes_timm_cuda_settings_before_the_device(cuda_flags, monkeypatch):
    monkeypatch.setattr(validate, '_validate', _stop)
    args = validate.get_args_parser().parse_args(['--dataset', 'sklearn/digits', '--model', 'test_resnet',
                                                  '--pretrained', '--device', 'cpu'])
    with pytest.raises(_DeviceSetUp):
        validate.main(args)
    assert cuda_flags() == (True, True)
