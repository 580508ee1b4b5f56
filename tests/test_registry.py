"""Registration into timm's classification-loss factory: new types work, existing types and errors unchanged."""
import argparse

import pytest
import timm
import timm.loss
import timm.task.classification
import torch

import cfl_timm
from cfl_timm import AsymmetricFocalLoss, CyclicalFocalLoss, FocalLoss, create_focal_loss, focal_loss_kwargs
from cfl_timm.registry import _original_factory

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
                                         r"'asym', 'asym-cyclical'\)"):
        timm.loss.create_classification_loss('focal')


def test_new_types_through_timm_factory():
    sym = timm.loss.create_classification_loss('sym', focal_gamma=3.0)
    assert isinstance(sym, FocalLoss) and sym.gamma == 3.0 and sym.eps == 0.0
    asym = timm.loss.create_classification_loss('asym', gamma_pos=2.0, gamma_neg=2.0)
    assert isinstance(asym, AsymmetricFocalLoss) and asym.eps == 0.1  # published default when smoothing not given
    cyclical = timm.loss.create_classification_loss(
        'asym-cyclical', smoothing=0.0, gamma_hc=3.0, gamma_pos=2.0, gamma_neg=2.0, cyclical_factor=4.0, epochs=201)
    assert isinstance(cyclical, CyclicalFocalLoss) and cyclical.eps == 0.0 and cyclical.epochs == 201
    mixup = timm.loss.create_classification_loss('asym-cyclical', smoothing=0.1, soft_targets=True, epochs=10)
    assert mixup.eps == 0.0 and mixup.soft_target_mode == 'distribution'  # smoothing lives in the mixed targets
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
    (dict(loss_type='ce', gamma_hc=3.0), r"Arguments \['gamma_hc'\] only apply to the loss types"),
    (dict(loss_type='asym', multi_label=True), "'asym' does not support multi-label targets"),
    (dict(loss_type='asym-cyclical', class_weight=[1.0, 2.0]), r"Arguments \['class_weight'\] do not apply"),
    (dict(loss_type='sym', focal_gamma=-1.0), 'gamma must be a finite number >= 0'),
    (dict(loss_type='asym-cyclical', epochs=0), 'epochs must be an integer >= 1'),
    (dict(loss_type='asym', smoothing=1.5), r'must lie in \[0, 1\)'),
])
def test_focal_type_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.loss.create_classification_loss(**kwargs)


def test_focal_loss_factory_and_kwargs_adapter():
    args = argparse.Namespace(focal_loss='asym-cyclical', gamma=2.0, gamma_hc=3.0, gamma_pos=2.0, gamma_neg=2.0,
                              cyclical_factor=4.0, smoothing=None, other=1)
    kwargs = focal_loss_kwargs(args, num_epochs=201)
    assert kwargs == dict(focal_loss='asym-cyclical', epochs=201, gamma=2.0, gamma_hc=3.0, gamma_pos=2.0,
                          gamma_neg=2.0, cyclical_factor=4.0)
    loss = create_focal_loss(**kwargs)
    assert isinstance(loss, CyclicalFocalLoss) and loss.eps == 0.1 and loss.cyclical_factor == 4.0
    assert create_focal_loss(**dict(kwargs, smoothing=0.0)).eps == 0.0  # explicit --smoothing honoured
    assert create_focal_loss('sym').eps == 0.0
    with pytest.raises(ValueError, match=r"Unknown focal loss 'cyclical', expected one of \('sym', 'asym', "):
        create_focal_loss('cyclical')
    with pytest.raises(ValueError, match=r"Unknown soft_target_mode 'max'"):
        create_focal_loss('asym', soft_target_mode='max')
