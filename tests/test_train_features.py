"""Short trainings (sklearn digits, tiny timm models, one thread) of the timm features train.py gained for
parity: W&B (offline) and TensorBoard logging, torch.compile with every registered loss, knowledge
distillation from a teacher checkpoint written here, gradient checkpointing, --val-interval and a bfloat16
model on the CPU."""
import csv
import json
import time
from pathlib import Path

import pytest
import timm.loss
import torch
import torch.nn.functional as F
from timm.models import create_model

import train
from cfl_timm import ALL_LOSS_TYPES
from cfl_timm.loss.calibration_losses import CALIBRATION_LOSS_TYPES, create_calibration_loss
from cfl_timm.training import CriterionStateClassificationTask, ProcessInfo
from cfl_timm.training import args as train_args

DIGITS = ['--dataset', 'sklearn/digits', '--img-size', '32', '-b', '64', '-j', '0', '--train_size', '128',
          '--epochs', '1', '--warmup-epochs', '0', '--lr', '0.05', '--log-interval', '1000']
CYCLICAL = ['--focal_loss', 'asym-cyclical', '--wd_min', '1e-4', '--T_min', '0.5', '--clip_min', '1',
            '--clip_max', '10']
# timm's update_summary keys, then the calibration metrics and the cyclical values of this project.
LOGGED_KEYS = {'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'eval_nll', 'eval_ece', 'eta',
               'weight_decay', 'temperature', 'clip_grad'}


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: one intra-op thread per test


def _run(tmp_path, *argv, model='test_efficientnet'):
    args = train.parse_args([*DIGITS, '--model', model, *argv, '--output', str(tmp_path), '--experiment', 'run'])
    return train.main(args), tmp_path / 'run'


def _summary(run_dir):
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def _wandb_records(path: Path):
    """Records of a W&B run file (LevelDB log format: 7-byte header, then 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b':W&B'
    pos, block, chunk = 7, 32768, b''
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], 'little'), data[pos + 6]
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b''


def test_wandb_offline_and_tensorboard_log_the_summary_scalars(tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    tb_dir = tmp_path / 'tb'
    _, run_dir = _run(tmp_path, '--epochs', '2', *CYCLICAL, '--log-wandb', '--wandb-project', 'cfl-test',
                      '--wandb-tags', 'digits', 'parity', '--log-tensorboard', str(tb_dir))
    rows = _summary(run_dir)
    assert [r['epoch'] for r in rows] == ['0', '1']

    run_files = list((run_dir / 'wandb').glob('offline-run-*/run-*.wandb'))
    assert len(run_files) == 1
    # wandb's service process may still be writing after run.finish() returned: wait for its exit record.
    deadline = time.monotonic() + 120
    while not any(r.WhichOneof('record_type') == 'exit' for r in _wandb_records(run_files[0])):
        assert time.monotonic() < deadline, 'the W&B run file never got its exit record'
        time.sleep(0.2)
    history, runs = [], []
    for record in _wandb_records(run_files[0]):
        kind = record.WhichOneof('record_type')
        if kind == 'history':
            history.append({item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == 'run':
            runs.append(record.run)
    assert runs[0].project == 'cfl-test' and list(runs[0].tags) == ['digits', 'parity']
    assert len(history) == 2
    for logged, row in zip(history, rows):
        assert LOGGED_KEYS <= set(logged)
        assert logged['epoch'] == int(row['epoch'])
        for key in LOGGED_KEYS:
            assert logged[key] == pytest.approx(float(row[key]), rel=1e-12), key

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    assert LOGGED_KEYS <= set(events.Tags()['scalars'])
    for key in LOGGED_KEYS:
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [0, 1]
        assert [s.value for s in scalars] == pytest.approx([float(r[key]) for r in rows], rel=1e-6), key


@pytest.mark.parametrize('flag, module', [('--log-wandb', 'wandb'), ('--log-tensorboard', 'tensorboard')])
def test_missing_logging_extra_is_a_usage_error_with_the_pip_command(monkeypatch, capsys, flag, module):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == module else
                        real_find_spec(name, *a))
    argv = [*DIGITS, '--model', 'test_resnet', flag] + (['tb'] if flag == '--log-tensorboard' else [])
    with pytest.raises(SystemExit) as exc:
        train_args.check_args(train.parse_args(argv), train.get_args_parser())
    assert exc.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f'train.py: error: {flag} needs the {module!r} package') and f'pip install {module}' \
        in message


def _loss_and_target(name: str, num_classes: int, batch: int):
    """A registered loss as train.py would create it, with a matching target (one-hot for multi-label types)."""
    factory = timm.loss.create_classification_loss  # cfl_timm's registry wraps timm's factory
    target = torch.arange(batch) % num_classes
    if name == 'jsd':
        return factory('jsd', jsd_splits=2), target
    if name == 'asym-cyclical':
        return factory(name, epochs=10), target
    try:
        return factory(name), target
    except ValueError as e:
        if 'multi-label' not in str(e):
            raise
    kwargs = {'class_counts': [3.0] * num_classes, 'num_samples': 3 * num_classes} if name == 'db' else {}
    return factory(name, multi_label=True, **kwargs), F.one_hot(target, num_classes).float()


@pytest.mark.parametrize('name', ALL_LOSS_TYPES)
def test_every_registered_loss_trains_compiled(name):
    # train.py's compile route (timm's task.compile + the loss compiled in place) on a tiny model: the compiled
    # loss and gradients equal the eager ones, and a compiled SGD step changes the weights.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    x = torch.randn(8, 3, 2, 2)
    criterion, target = _loss_and_target(name, 5, 8)
    eager_task = CriterionStateClassificationTask(model, criterion, verbose=False)
    eager = eager_task(x, target)['loss']
    eager_grad, = torch.autograd.grad(eager, model[1].weight)

    task = CriterionStateClassificationTask(model, criterion, verbose=False)
    train.compile_task(task, 'aot_eager', None)
    assert task.trainable_module is not model  # compiled
    loss = task(x, target)['loss']
    grad, = torch.autograd.grad(loss, model[1].weight)
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name', ['sym', 'asym', 'asym-cyclical'])
def test_focal_losses_compile_to_one_graph(name):
    # The training configuration (no finiteness check in the loop): the loss traces as one graph, no break.
    import torch._dynamo as dynamo

    criterion = timm.loss.create_classification_loss(name, **({'epochs': 10} if name == 'asym-cyclical' else {}))
    if hasattr(criterion, 'check_finite'):
        criterion.check_finite = False
    explanation = dynamo.explain(criterion)(torch.randn(8, 5, requires_grad=True), torch.arange(8) % 5)
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.parametrize('name', CALIBRATION_LOSS_TYPES)
def test_calibration_losses_compile_to_one_graph(name):
    # No host read while compiling (the CPU target check becomes an async assert, the backward always scales,
    # mmce-w's compiled penalty holds its counts, indicator and the sign of D as tensors): one graph, no break.
    import torch._dynamo as dynamo

    with dynamo.config.patch(specialize_float=True):  # as train.py's compile_task
        explanation = dynamo.explain(create_calibration_loss(name))(torch.randn(8, 5, requires_grad=True),
                                                                   torch.arange(8) % 5)
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def _cyclical_loss_under_schedule():
    """asym-cyclical with the temperature schedule on, as train.py attaches them (eta and T both move)."""
    from cfl_timm.scheduler import CyclicalScheduler

    loss = timm.loss.create_classification_loss('asym-cyclical', epochs=10, gamma_hc=3.0, gamma_pos=2.0,
                                                gamma_neg=2.0, cyclical_factor=4.0)
    loss.check_finite = False
    scheduler = CyclicalScheduler(None, num_epochs=10, cyclical_factor=4.0, t_min=0.5, t_max=2.0)
    scheduler.attach_loss(loss)
    return loss, scheduler


def test_cyclical_eta_and_temperature_do_not_recompile_the_loss():
    # eta and T reach the compiled graph as 0-dim tensors updated in place: moving the cyclical position (by epoch
    # and within one) reuses the one graph (a recompile raises), and every value and gradient equals the eager
    # float path at that position.
    import torch._dynamo as dynamo

    compiled, compiled_scheduler = _cyclical_loss_under_schedule()
    eager, eager_scheduler = _cyclical_loss_under_schedule()
    train.compile_task(CriterionStateClassificationTask(torch.nn.Linear(2, 5), compiled, verbose=False),
                       'aot_eager', None)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=generator) * 3
    target = torch.randint(0, 5, (16,), generator=generator)
    dynamo.reset()
    dynamo.utils.counters.clear()
    seen = set()
    with dynamo.config.patch(error_on_recompile=True):
        for epoch in (0, 1, 2.5, 4, 7):
            compiled_scheduler.set_epoch(epoch)
            eager_scheduler.set_epoch(epoch)
            seen.add((eager.eta, eager_scheduler.temperature))
            z, z_ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
            value, expected = compiled(z, target), eager(z_ref, target)
            value.backward()
            expected.backward()
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-5, atol=1e-7)
    assert len(seen) == 5  # five different (eta, T) pairs
    # Two graphs, each compiled once: the temperature pre-hook's division and the loss (dynamo compiles the hook
    # and the loss's forward as separate frames).
    assert dynamo.utils.counters['stats']['unique_graphs'] == 2
    assert compiled.eta_tensor.item() == eager.eta and 'eta_tensor' not in compiled.state_dict()


def test_torchcompile_trains_a_tiny_model(tmp_path):
    result, run_dir = _run(tmp_path, *CYCLICAL, '--torchcompile', 'aot_eager')
    row = _summary(run_dir)[0]
    assert float(row['train_loss']) > 0 and row['temperature'] == '0.5'
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert not any('_orig_mod' in k for k in checkpoint['state_dict'])  # saved unwrapped from the compiled module
    assert checkpoint['task_state']['criterion']  # the eager cyclical loss keeps its state


def test_distillation_from_a_teacher_checkpoint_with_the_temperature_on_the_task_loss_only(tmp_path):
    torch.manual_seed(0)
    teacher = create_model('test_efficientnet', num_classes=10)
    teacher_file = tmp_path / 'teacher.pth'
    torch.save(teacher.state_dict(), teacher_file)
    kd = ['--kd-model-name', 'test_efficientnet', '--kd-pretrained-path', str(teacher_file), '--task-loss-weight',
          '0.6', '--kd-temperature', '3']

    # The task as train.py builds it: teacher weights from the file, timm's complementary weighting, and the
    # cyclical scheduler attached to the task loss (temperature T_min = 0.5 at epoch 0) but not to the KD term.
    args = train.parse_args([*DIGITS, '--model', 'test_resnet', *kd, *CYCLICAL])
    ctx = train.build_context(args, ProcessInfo(torch.device('cpu')))[0]
    task = ctx.task
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(task.teacher.model.state_dict()[key], value)
    assert ctx.criterion is task.criterion and hasattr(ctx.criterion, 'set_epoch')
    task.train()
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    out = task(x, y)
    with torch.no_grad():
        logits_t = teacher.eval()(task.teacher.normalize_input(x, task.student_mean, task.student_std))
    kl = F.kl_div(F.log_softmax(out['output'] / 3, -1), F.log_softmax(logits_t / 3, -1), reduction='batchmean',
                  log_target=True) * 9
    # forward() bypasses the scheduler's hook: the logits are divided by the temperature here, explicitly.
    expected = 0.6 * ctx.criterion.forward(out['output'] / 0.5, y) + 0.4 * kl
    torch.testing.assert_close(out['loss'], expected, rtol=1e-5, atol=1e-6)

    # A short training, then the cyclical loss state is in the checkpoint.
    _, run_dir = _run(tmp_path, *kd, *CYCLICAL, model='test_resnet')
    row = _summary(run_dir)[0]
    assert row['temperature'] == '0.5' and row['eta'] == '1.0' and float(row['train_loss']) > 0
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert 'criterion' in checkpoint['task_state']
    assert not any(k.startswith('teacher') for k in checkpoint['state_dict'])  # the student only


def test_grad_checkpointing_trains(tmp_path):
    args = train.parse_args([*DIGITS, '--model', 'test_resnet', '--grad-checkpointing'])
    model, _ = train.build_model(args, 10, torch.device('cpu'), False, False)
    assert model.grad_checkpointing
    _, run_dir = _run(tmp_path, '--grad-checkpointing', model='test_resnet')
    assert float(_summary(run_dir)[0]['train_loss']) > 0


def test_val_interval_validates_and_checkpoints_every_n_epochs_and_the_last(tmp_path):
    _, run_dir = _run(tmp_path, '--epochs', '3', '--val-interval', '2', '--train_size', '64')
    assert [r['epoch'] for r in _summary(run_dir)] == ['1', '2']
    assert sorted(p.name for p in run_dir.glob('checkpoint-*')) == ['checkpoint-1.pth.tar', 'checkpoint-2.pth.tar']


def test_bfloat16_model_trains_on_cpu(tmp_path):
    _, run_dir = _run(tmp_path, '--model-dtype', 'bfloat16', *CYCLICAL)
    row = _summary(run_dir)[0]
    assert float(row['train_loss']) > 0 and 0 <= float(row['eval_ece']) <= 1
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    dtypes = {v.dtype for v in checkpoint['state_dict'].values() if v.is_floating_point()}
    assert dtypes == {torch.bfloat16}


def test_recovery_interval_and_save_images_write_into_the_run_folder(tmp_path):
    _, run_dir = _run(tmp_path, '--recovery-interval', '1', '--save-images', '--log-interval', '1',
                      '--train_size', '128', '-b', '64')
    assert sorted(p.name for p in run_dir.glob('recovery-*.pth.tar'))  # timm's saver keeps the latest
    images = sorted(run_dir.glob('train-batch-0-*.jpg'))
    assert [p.name for p in images] == ['train-batch-0-0.jpg', 'train-batch-0-1.jpg']
    assert images[0].read_bytes()[:2] == b'\xff\xd8'  # JPEG
