"""Registration into timm's classification-loss factory: new types work, existing types and errors unchanged."""
import argparse
import inspect
import os
import pydoc
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import timm.loss
import timm.task.classification
import torch

import cfl_timm
from cfl_timm import AsymmetricFocalLoss, CyclicalFocalLoss, FocalLoss, create_loss, loss_kwargs
from cfl_timm.loss.calibration_losses import _LOSS_CLASSES, CALIBRATION_LOSS_DEFAULTS, CALIBRATION_LOSS_TYPES
from cfl_timm.loss.cfl_loss_factory import LOSS_KWARGS, LOSS_TYPES, SOFT_TARGET_LOSSES
from cfl_timm.registry import ALL_LOSS_TYPES, _original_factory

EXISTING_CALLS = [
    dict(),
    dict(loss_type='ce'),
    dict(loss_type='ce', smoothing=0.1),
    dict(loss_type='ce', soft_targets=True),
    dict(multi_label=True),
    dict(loss_type='bce', smoothing=0.1, bce_target_thresh=0.2),
    dict(loss_type='bce', class_weight=[1.0, 2.0, 3.0]),
    dict(loss_type='asl', asl_gamma_pos=2.0, asl_gamma_neg=3.0, smoothing=0.1),
    dict(loss_type='asl', multi_label=True),
    dict(loss_type='poly', poly_epsilon=1.0),
    dict(loss_type='jsd', jsd_splits=3, smoothing=0.1),
    dict(loss_type='twoway', multi_label=True),
    dict(loss_type='zlpr', multi_label=True),
    dict(loss_type='db', multi_label=True, class_counts=[5.0, 10.0, 20.0], num_samples=30),
]

EXISTING_ERRORS = [
    dict(loss_type='ce', multi_label=True),
    dict(loss_type='twoway'),
    dict(loss_type='ce', class_weight=1.0),
    dict(loss_type='ce', bce_sum=True),
    dict(loss_type='ce', class_counts=[1.0]),
    dict(loss_type='asl', soft_targets=True),
    dict(loss_type='asl', asl_reduction='sum'),
    dict(loss_type='poly', poly_gamma=2.0),
    dict(loss_type='jsd'),
    dict(loss_type='zlpr', smoothing=0.1, multi_label=True),
    dict(loss_type='db', multi_label=True),
]


def describe(module):
    state = {k: v.tolist() for k, v in module.state_dict().items()}
    return type(module), repr(module), state, {k: repr(v) for k, v in vars(module).items() if not k.startswith('_')}


def test_import_registers_everywhere_timm_holds_the_factory():
    assert cfl_timm.is_registered()
    assert timm.loss.create_classification_loss is timm.loss._loss_factory.create_classification_loss
    assert timm.task.classification.create_classification_loss is timm.loss.create_classification_loss
    cfl_timm.register()
    cfl_timm.register()  # idempotent: never wraps the wrapper
    assert timm.loss.create_classification_loss.__wrapped__ is _original_factory


def test_help_of_timms_factory_shows_the_cfl_keywords():
    factory = timm.loss.create_classification_loss
    signature = inspect.signature(factory)
    timm_params = inspect.signature(_original_factory).parameters
    assert list(signature.parameters)[:len(timm_params)] == list(timm_params)  # timm's own, in timm's order
    cfl_keywords = {k for keys in LOSS_KWARGS.values() for k in keys} | {'loss_reduction'}
    added = {name: p for name, p in signature.parameters.items() if name not in timm_params}
    assert set(added) == cfl_keywords
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None for p in added.values())
    text = pydoc.render_doc(factory)
    assert 'flsd_gamma=None' in text and 'loss_reduction=None' in text  # in the signature help() prints
    for name, keys in LOSS_KWARGS.items():  # and each type's keywords in the docstring
        assert f"'{name}': {', '.join(keys) or '-'}" in text, name
    assert 'Create the training criterion for a classification task.' in text  # timm's docstring kept


def test_a_cfl_keyword_given_as_none_is_not_given():
    assert type(timm.loss.create_classification_loss('ce', gamma=None)) is torch.nn.CrossEntropyLoss
    assert timm.loss.create_classification_loss('sym', gamma=None).gamma == FocalLoss().gamma


def test_the_spelling_table_lists_every_renamed_class_argument():
    """docs/registration.md: every factory keyword whose class argument is spelled otherwise has its row."""
    rows = [line for line in (Path(__file__).resolve().parents[1] / 'docs' / 'registration.md').read_text()
            .splitlines() if line.startswith('| ')]
    for cls in _LOSS_CLASSES.values():
        for keyword, argument in cls.factory_keywords.items():
            if keyword != argument:
                assert any(f'`--{keyword}' in row and f'`{argument}`' in row and f'`{cls.__name__}`' in row
                           for row in rows) or any(f'`--{keyword}`' in row and argument in row
                                                   and cls.__name__ in row for row in rows), (cls, keyword)
    for cls in (FocalLoss, AsymmetricFocalLoss, CyclicalFocalLoss):  # smoothing -> eps
        assert 'eps' in inspect.signature(cls).parameters
        assert any('`--smoothing`' in row and '`eps`' in row and f'`{cls.__name__}`' in row for row in rows)


@pytest.mark.parametrize('kwargs', EXISTING_CALLS, ids=lambda k: k.get('loss_type', 'default'))
def test_existing_types_unchanged(kwargs):
    assert describe(timm.loss.create_classification_loss(**kwargs)) == describe(_original_factory(**kwargs))


@pytest.mark.parametrize('kwargs', EXISTING_ERRORS, ids=lambda k: k.get('loss_type', 'default'))
def test_existing_errors_unchanged(kwargs):
    with pytest.raises(ValueError) as original:
        _original_factory(**kwargs)
    with pytest.raises(ValueError) as wrapped:
        timm.loss.create_classification_loss(**kwargs)
    assert str(wrapped.value) == str(original.value)


def test_positional_arguments_still_pass_through():
    wrapped = timm.loss.create_classification_loss('ce', False, 0.2)
    assert describe(wrapped) == describe(_original_factory('ce', False, 0.2))


def test_unknown_type_lists_every_valid_type():
    with pytest.raises(ValueError, match=r"Unknown loss type 'focal', expected one of \('ce', 'bce', .*'db', 'sym', "
                                         r"'asym', 'asym-cyclical', "):
        timm.loss.create_classification_loss('focal')
    assert ALL_LOSS_TYPES == tuple(timm.loss.LOSS_TYPES) + LOSS_TYPES
    assert set(CALIBRATION_LOSS_TYPES) <= set(LOSS_TYPES) and len(set(ALL_LOSS_TYPES)) == len(ALL_LOSS_TYPES)


def test_new_types_through_timm_factory():
    sym = timm.loss.create_classification_loss('sym', gamma=3.0)
    assert isinstance(sym, FocalLoss) and sym.gamma == 3.0 and sym.eps == 0.0
    asym = timm.loss.create_classification_loss('asym', gamma_pos=2.0, gamma_neg=2.0)
    assert isinstance(asym, AsymmetricFocalLoss) and asym.eps == 0.1  # published default when smoothing not given
    cyclical = timm.loss.create_classification_loss(
        'asym-cyclical', smoothing=0.0, gamma_hc=3.0, gamma_pos=2.0, gamma_neg=2.0, cyclical_factor=4.0, epochs=201)
    assert isinstance(cyclical, CyclicalFocalLoss) and cyclical.eps == 0.0 and cyclical.epochs == 201
    mixup = timm.loss.create_classification_loss('asym-cyclical', smoothing=0.2, soft_targets=True, epochs=10)
    assert mixup.eps == 0.2 and mixup.soft_target_mode == 'distribution'  # the loss owns eps (Mixup smoothing 0)
    published = timm.loss.create_classification_loss('asym-cyclical', soft_targets=True, epochs=10,
                                                     soft_target_mode='argmax')
    assert published.eps == 0.1 and published.soft_target_mode == 'argmax'


def test_new_types_through_timm_classification_task():
    model = timm.create_model('test_resnet', num_classes=4)
    task = timm.task.ClassificationTask(
        model, criterion_kwargs=dict(loss_type='asym-cyclical', gamma_hc=3.0, gamma_pos=2.0, gamma_neg=2.0,
                                     cyclical_factor=4.0, epochs=8), verbose=False)
    assert isinstance(task.criterion, CyclicalFocalLoss)
    task.criterion.set_epoch(2)
    result = task(torch.randn(2, 3, 32, 32), torch.tensor([0, 3]))
    result['loss'].backward()
    assert torch.isfinite(result['loss'])


@pytest.mark.parametrize('kwargs, match', [
    (dict(loss_type='ce', gamma_hc=3.0), r"Arguments \['gamma_hc'\] only apply to the cfl-timm loss types"),
    (dict(loss_type='ce', loss_reduction='sum'), r"Arguments \['loss_reduction'\] only apply to the cfl-timm"),
    (dict(loss_type='sym', gamma_pos=3.0), r"Arguments \['gamma_pos'\] do not apply to the loss type 'sym'"),
    (dict(loss_type='asym', epochs=3), r"Arguments \['epochs'\] do not apply to the loss type 'asym'"),
    (dict(loss_type='asym', bce_sum=True), r"Arguments \['bce_sum'\] do not apply to the loss type 'asym'"),
    (dict(loss_type='asym-cyclical', gamma_hc=1.0), "CyclicalFocalLoss needs epochs"),
    (dict(loss_type='asym', multi_label=True), "'asym' does not support multi-label targets"),
    (dict(loss_type='asym-cyclical', class_weight=[1.0, 2.0]), r"Arguments \['class_weight'\] do not apply"),
    (dict(loss_type='sym', gamma=-1.0), 'gamma must be a finite number >= 0'),
    (dict(loss_type='asym-cyclical', epochs=0), 'epochs must be an integer >= 1'),
    (dict(loss_type='asym', smoothing=1.5), r'must lie in \[0, 1\)'),
])
def test_focal_type_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.loss.create_classification_loss(**kwargs)


def test_loss_kwargs_adapter():
    args = argparse.Namespace(gamma=None, gamma_hc=3.0, gamma_pos=2.0, gamma_neg=2.0, cyclical_factor=4.0,
                              smoothing=None, soft_target_mode=None, loss_reduction=None, other=1)
    kwargs = loss_kwargs(args, 'asym-cyclical', num_epochs=201)
    assert kwargs == dict(name='asym-cyclical', soft_targets=False, epochs=201, gamma_hc=3.0, gamma_pos=2.0,
                          gamma_neg=2.0, cyclical_factor=4.0, check_finite=False)
    loss = create_loss(**kwargs)
    assert isinstance(loss, CyclicalFocalLoss) and loss.eps == 0.1 and loss.cyclical_factor == 4.0
    assert not loss.check_finite  # built for a training loop under a GradScaler
    assert create_loss(**dict(kwargs, smoothing=0.0)).eps == 0.0  # explicit --smoothing honoured
    assert create_loss('sym').eps == 0.0
    # A flag given for a loss it does not apply to is passed on, so the factory names it.
    with pytest.raises(ValueError, match=r"Arguments \['gamma_hc', 'gamma_neg', 'gamma_pos'\] do not apply to "
                                         r"the loss type 'sym'"):
        create_loss(**loss_kwargs(args, 'sym'))
    with pytest.raises(ValueError, match=r"AsymmetricFocalLoss: unknown soft_target_mode 'max'"):
        create_loss('asym', soft_target_mode='max')


@pytest.mark.parametrize('name', CALIBRATION_LOSS_TYPES)
def test_calibration_types_through_timm_factory_with_spec_defaults(name):
    defaults = CALIBRATION_LOSS_DEFAULTS[name]
    assert LOSS_KWARGS[name] == tuple(defaults)
    via_timm = timm.loss.create_classification_loss(name)
    direct = create_loss(name)
    assert type(via_timm) is type(direct) and describe(via_timm) == describe(direct)
    for key, value in defaults.items():  # the official defaults, under the spec's keyword names
        assert describe(timm.loss.create_classification_loss(name, **{key: value})) == describe(direct), key
    through_task = timm.task.ClassificationTask(timm.create_model('test_resnet', num_classes=4),
                                                criterion_kwargs=dict(loss_type=name), verbose=False)
    assert type(through_task.criterion) is type(direct)
    # A keyword of another loss, or of a timm loss, is an error naming it.
    foreign = next(k for other, keys in LOSS_KWARGS.items() if other != name for k in keys if k not in defaults)
    with pytest.raises(ValueError, match=foreign):
        timm.loss.create_classification_loss(name, **{foreign: 1})
    with pytest.raises(ValueError, match=foreign):
        create_loss(name, **{foreign: 1})
    with pytest.raises(ValueError, match='poly_epsilon'):
        timm.loss.create_classification_loss(name, poly_epsilon=1.0)
    with pytest.raises(ValueError, match='multi-label'):
        timm.loss.create_classification_loss(name, multi_label=True)
    if name in SOFT_TARGET_LOSSES:
        create_loss(name, soft_targets=True)
    else:
        with pytest.raises(ValueError, match=f"Loss type '{name}' needs class-index targets"):
            timm.loss.create_classification_loss(name, soft_targets=True)
    reduced = timm.loss.create_classification_loss(name, loss_reduction='sum')
    assert getattr(reduced, 'reduction', 'sum') == 'sum'


def test_a_moved_timm_factory_fails_at_import_with_the_tested_range():
    script = ('import timm.loss._loss_factory as f\n'
              'del f.create_classification_loss\n'
              'import cfl_timm\n')
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(p for p in (repo, os.environ.get('PYTHONPATH')) if p)}
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: cfl_timm registers its losses into timm >=1.0.31,<1.1, but the installed '
                            f'timm {timm.__version__} differs: timm.loss._loss_factory has no '
                            'create_classification_loss'), last
    assert 'pip install "timm>=1.0.31,<1.1"' in last
