"""One grid cell: train.py in a subprocess, then the scoring of its last checkpoint; the CE pilot; data preparation.

Cyclical focal loss (L. N. Smith, arXiv 2202.08978) and general cyclical training (arXiv 2202.08835) were studied
with these cells. The package never imports train.py: every cell runs it as a command, found by
:func:`find_train_script` (``--train-script``, else the train.py of the checkout the package is installed from, else
``./train.py``). The checkpoint is scored here with timm and cfl_timm, rebuilding the model from the run's
``args.yaml``.
"""
import dataclasses
import json
import os
import re
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Optional

from cfl_timm.files import atomic_write_text, read_summary

from .aggregate import last_fifth_gain
from .grid_file import Protocol
from .runner import Cell, CellFailed, run_guarded

__all__ = ['evaluate_checkpoint', 'find_train_script', 'holdout_dataset', 'load_run_model', 'make_train_cell',
           'predict', 'prepare_data', 'run_pilot', 'score_run', 'split_dataset', 'train_command']

# The checkout this package was installed from (an editable install or a run from the repository).
CHECKOUT = Path(__file__).resolve().parents[2]


def find_train_script(train_script: Optional[Path] = None) -> Path:
    """The train.py every cell runs: ``train_script`` if given, else the one of the checkout holding this package,
    else ``./train.py``; a ``ValueError`` naming ``--train-script`` when there is none."""
    if train_script is not None:
        path = Path(train_script).resolve()
        if not path.is_file():
            raise ValueError(f'--train-script {train_script}: no such file (the train.py of a cfl-timm checkout).')
        return path
    for candidate in (CHECKOUT / 'train.py', Path.cwd() / 'train.py'):
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError('no train.py found beside the installed cfl_timm package or in the current folder; pass '
                     '--train-script PATH (the train.py of a cfl-timm checkout).')


# ----------------------------------------------------------------------------------------------- data


def prepare_data(archive: Path, out: Path, train_per_class: Optional[int] = None,
                 val_per_class: Optional[int] = None, monitor_per_class: Optional[int] = None) -> Path:
    """Extract the CIFAR-10 JPEG archive into ``out`` (train/, val/); optionally a capped, balanced copy.

    Returns the data directory to pass to ``run --data-dir``: ``out`` itself, or with a cap
    ``out_train<N>_val<M>`` holding links to the first N training and M validation images (sorted by name, the
    order of timm's folder reader) of each class. train.py's subsets take each class's first images, so a
    training cap >= the protocol's per-class cap selects the same images and only saves the folder scan.
    With ``monitor_per_class`` the data directory also gets ``monitor/``: links to the first M validation images
    of each class, the split the study protocols evaluate every epoch (``--val-split monitor``) for the curve.
    """
    out = Path(out)
    if not (out / 'train').is_dir() or not (out / 'val').is_dir():
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter='data')
    if not train_per_class and not val_per_class:
        if monitor_per_class:
            _link_first(out / 'val', out / 'monitor', monitor_per_class)
        return out
    capped = out.parent / f'{out.name}_train{train_per_class or "all"}_val{val_per_class or "all"}'
    for split, cap in (('train', train_per_class), ('val', val_per_class)):
        _link_first(out / split, capped / split, cap)
    if monitor_per_class:
        _link_first(out / 'val', capped / 'monitor', monitor_per_class)
    return capped


def _link_first(source: Path, target: Path, per_class: Optional[int]) -> None:
    """``target/<class>/``: relative links to the first ``per_class`` images (all if None) of ``source/<class>/``."""
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        target_dir = target / class_dir.name
        target_dir.mkdir(parents=True, exist_ok=True)
        images = sorted(class_dir.iterdir(), key=lambda p: natural_key(p.name))
        for image in images[:per_class] if per_class else images:
            link = target_dir / image.name
            if not link.exists():
                os.symlink(os.path.relpath(image.resolve(), target_dir.resolve()), link)


def natural_key(name: str) -> list:
    """Sort key of timm's folder reader (digit runs compared as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', name)]


# ------------------------------------------------------------------------------------------ one cell


def train_command(protocol: Protocol, cell: Cell, data_dir: Path, run_dir: Path, train_script: Path) -> list[str]:
    """The train.py command line of one cell (resumes from its own last checkpoint after a crash)."""
    return [sys.executable, str(train_script), '--data-dir', str(data_dir), *protocol.train_flags(cell),
            '--output', str(run_dir), '--experiment', 'train', '--resume', 'auto']


def load_run_model(train_dir: Path):
    """The model of ``train_dir/last.pth.tar`` in eval mode, the run's arguments and data config, and the epoch.

    The model and data config are rebuilt with timm from the run's ``args.yaml``, as train.py builds them."""
    import argparse as _argparse

    import torch
    import yaml
    from timm.data import resolve_data_config
    from timm.layers import convert_splitbn_model
    from timm.models import clean_state_dict, create_model

    import cfl_timm  # noqa: F401 - registers the CIFAR networks and losses with timm

    args = yaml.safe_load((train_dir / 'args.yaml').read_text())
    with torch.serialization.safe_globals([_argparse.Namespace]):
        checkpoint = torch.load(train_dir / 'last.pth.tar', map_location='cpu', weights_only=True)
    state_dict = clean_state_dict(checkpoint['state_dict'])
    num_classes = args.get('num_classes') or next(v.shape[0] for k, v in reversed(state_dict.items())
                                                   if k.endswith('bias'))
    model = create_model(args['model'], num_classes=num_classes, in_chans=args.get('in_chans') or 3,
                         global_pool=args.get('gp'), **(args.get('model_kwargs') or {}))
    data_config = resolve_data_config(args, model=model)
    if args.get('train_transform') == 'cifar' and args.get('crop_pct') is None:
        data_config['crop_pct'] = 1.0  # as train.py: the whole 32 px image, no resize-up and center crop
    if args.get('split_bn'):
        model = convert_splitbn_model(model, max(args.get('aug_splits') or 0, 2))
    model.load_state_dict(state_dict)
    model.eval()
    return model, args, data_config, int(checkpoint['epoch'])


def predict(model, dataset, data_config: dict[str, Any], batch_size: int = 256):
    """(logits float32 (N, K), targets (N,)) of ``model`` on ``dataset`` with timm's evaluation transforms."""
    import torch
    from timm.data import create_loader

    loader = create_loader(dataset, input_size=data_config['input_size'], batch_size=batch_size, is_training=False,
                           interpolation=data_config['interpolation'], mean=data_config['mean'],
                           std=data_config['std'], crop_pct=data_config['crop_pct'], num_workers=0,
                           use_prefetcher=False)
    logits, targets = [], []
    with torch.inference_mode():
        for images, target in loader:
            logits.append(model(images).float())
            targets.append(target)
    return torch.cat(logits), torch.cat(targets)


def per_class_top1(logits, targets, num_classes: int) -> list[float]:
    correct = (logits.argmax(1) == targets).double()
    return [100.0 * correct[targets == c].mean().item() if (targets == c).any() else float('nan')
            for c in range(num_classes)]


def split_dataset(args: dict[str, Any], data_dir: Path, split: str):
    """The run's dataset (``args.yaml``'s ``dataset``) split ``split`` under ``data_dir``, for evaluation."""
    from timm.data import create_dataset

    return create_dataset(args.get('dataset') or '', root=str(data_dir), split=split, is_training=False)


def evaluate_checkpoint(train_dir: Path, data_dir: Path, batch_size: int = 256) -> dict[str, Any]:
    """Per-class top-1 (percent), NLL and 15-bin ECE of ``train_dir/last.pth.tar`` on the run's validation split.

    The overall top-1 equals the last ``eval_top1`` of ``summary.csv`` (checked by the caller).
    """
    model, args, data_config, epoch = load_run_model(train_dir)
    dataset = split_dataset(args, data_dir, args.get('val_split', 'validation'))
    logits, targets = predict(model, dataset, data_config, batch_size)
    num_classes = logits.shape[1]
    result = {'top1': 100.0 * (logits.argmax(1) == targets).double().mean().item(),
              'per_class_top1': per_class_top1(logits, targets, num_classes),
              'num_val_images': int(targets.numel()), 'epoch': epoch}
    metrics = calibration(logits, targets, num_classes)
    result.update(nll=metrics['nll'], ece=metrics['ece'])
    return result


def calibration(logits, targets, num_classes: int) -> dict[str, float]:
    """Every metric of the project's CalibrationMeter (top-1, NLL, Brier, ECE, adaptive / classwise ECE, ...)."""
    from cfl_timm.metrics import CalibrationMeter

    meter = CalibrationMeter(num_classes, num_bins=15)
    meter.update(logits, targets)
    return {k: float(v) for k, v in meter.compute().items()}


def holdout_dataset(args: dict[str, Any], train_dir: Path, data_dir: Path):
    """The run's ``--holdout`` split as train.py recorded it (``train_dir/holdout.json``: the same images, by their
    indices), read from ``data_dir`` with evaluation transforms; a ``ValueError`` when the data differ."""
    import argparse

    from cfl_timm.data import build_dataset, dataset_kwargs
    from cfl_timm.data.holdout import holdout_subset, read_holdout_record

    record = read_holdout_record(train_dir)
    kwargs = {**dataset_kwargs(argparse.Namespace(**args)), 'root': str(data_dir)}
    return holdout_subset(record, build_dataset(split=record.split, is_training=False, **kwargs))


def score_run(protocol: Protocol, train_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The study's metrics of the run's last checkpoint on ``protocol.score_split``, before and after temperature
    scaling fitted on the run's held-out split (never on the scored split)."""
    from cfl_timm.metrics import METRIC_KEYS
    from cfl_timm.training import evaluate_temperature_scaled

    model, args, data_config, epoch = load_run_model(train_dir)
    dataset = split_dataset(args, data_dir, protocol.score_split)
    logits, targets = predict(model, dataset, data_config)
    num_classes = logits.shape[1]
    scored = {'checkpoint': 'last.pth.tar', 'epoch': epoch, 'split': protocol.score_split,
              'num_images': int(targets.numel()), 'test': calibration(logits, targets, num_classes),
              'per_class_top1': per_class_top1(logits, targets, num_classes)}
    if protocol.temperature_scaling:
        holdout_logits, holdout_targets = predict(model, holdout_dataset(args, train_dir, data_dir), data_config)
        temperature, scaled = evaluate_temperature_scaled(holdout_logits, holdout_targets, logits, targets,
                                                          num_classes, split='holdout')
        scored.update(temperature=temperature, num_holdout_images=int(holdout_targets.numel()),
                      holdout=calibration(holdout_logits, holdout_targets, num_classes),
                      holdout_ts=calibration(holdout_logits / temperature, holdout_targets, num_classes),
                      test_ts={key: float(scaled.metrics[key]) for key in METRIC_KEYS},
                      per_class_top1_ts=per_class_top1(scaled.logits, targets, num_classes))
    return scored


CURVE_COLUMNS = ('epoch', 'train_loss', 'eval_top1', 'eval_nll', 'eval_ece', 'holdout_top1', 'holdout_nll',
                 'holdout_ece', 'holdout_temperature', 'eval_nll_ts', 'eval_ece_ts', 'lr', 'eta', 'weight_decay',
                 'temperature', 'clip_grad')


def provenance(checkout: Path) -> dict[str, Any]:
    """Versions, commit and machine of a result (so results from many machines can be told apart)."""
    import platform
    import subprocess

    import timm
    import torch

    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=checkout, capture_output=True, text=True)
    return {'torch': torch.__version__, 'timm': timm.__version__, 'python': platform.python_version(),
            'git_commit': commit.stdout.strip() or None, 'machine': platform.machine(),
            'processor': _cpu_model(), 'cpus': os.cpu_count(),
            'cuda_device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _cpu_model() -> Optional[str]:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


def train_cell(protocol: Protocol, cell: Cell, data_dir: Path, run_dir: Path, train_script: Path,
               should_stop=lambda: False) -> tuple[list[str], float, float]:
    """Run (or resume) train.py for ``cell`` in ``run_dir/train``; returns its command line and the wall and CPU
    seconds it took. train.py runs in its own process group and is killed with this worker (never left running).
    """
    env = dict(os.environ)
    if protocol.threads:
        env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = str(protocol.threads)
    command = train_command(protocol, cell, data_dir, run_dir, train_script)
    log_path = run_dir / 'train.log'
    start, cpu_start = time.time(), _children_cpu_seconds()
    returncode = run_guarded(command, run_dir, log_path, should_stop=should_stop, env=env, cwd=train_script.parent)
    if returncode != 0:
        raise CellFailed(returncode, tail(log_path))
    return command, time.time() - start, _children_cpu_seconds() - cpu_start


def make_train_cell(protocol: Protocol, data_dir: Path, train_script: Path):
    """The default cell function: train.py in a subprocess, then the per-class evaluation of its checkpoint."""
    data_dir, train_script = Path(data_dir).resolve(), Path(train_script).resolve()

    def run_cell(cell: Cell, run_dir: Path, should_stop=lambda: False) -> dict[str, Any]:
        command, train_seconds, train_cpu_seconds = train_cell(protocol, cell, data_dir, run_dir, train_script,
                                                               should_stop)
        train_dir = run_dir / 'train'
        rows = read_summary(train_dir / 'summary.csv')
        last = rows[-1]
        if protocol.threads:
            import torch
            torch.set_num_threads(protocol.threads)
        if protocol.score_split is not None:
            return {'protocol': protocol.name, 'method_flags': protocol.flags_of(cell.loss),
                    'command': portable_command(command[1:], data_dir, run_dir, train_script),
                    'train_seconds': train_seconds, 'train_cpu_seconds': train_cpu_seconds, 'epochs': len(rows),
                    'curve': [{k: _number(row.get(k)) for k in CURVE_COLUMNS if row.get(k) not in (None, '')}
                              for row in rows],
                    **score_run(protocol, train_dir, data_dir), 'provenance': provenance(train_script.parent)}
        evaluation = evaluate_checkpoint(train_dir, data_dir)
        summary_top1 = float(last['eval_top1'])
        if abs(evaluation['top1'] - summary_top1) > 0.05:
            raise CellFailed(0, f'checkpoint top-1 {evaluation["top1"]:.3f} != summary eval_top1 {summary_top1:.3f}')
        return {
            'train_seconds': train_seconds, 'epochs': len(rows), 'top1': summary_top1,
            'top5': float(last['eval_top5']), 'eval_nll': float(last['eval_nll']),
            'eval_ece': float(last['eval_ece']), 'train_loss': float(last['train_loss']),
            'per_class_top1': evaluation['per_class_top1'], 'num_val_images': evaluation['num_val_images'],
            'checkpoint_nll': evaluation.get('nll'), 'checkpoint_ece': evaluation.get('ece'),
        }

    return run_cell


def portable_command(argv: list[str], data_dir: Path, run_dir: Path, train_script: Path) -> list[str]:
    """``argv`` without this machine's paths (results are committed): train.py relative to the repository,
    the data and run directories as ``$DATA`` and ``$RUN``."""
    names = {str(train_script): 'train.py', str(data_dir): '$DATA', str(run_dir): '$RUN'}
    return [names.get(arg, arg) for arg in argv]


def _number(value: Optional[str]) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and abs(number) < 2 ** 53 and '.' not in str(value) else number


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children: train.py's CPU time."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tail(path: Path, num_chars: int = 4000) -> str:
    data = Path(path).read_bytes()[-num_chars:]
    return data.decode(errors='replace')


# ---------------------------------------------------------------------------------------------- pilot

PILOT_COLUMNS = ('epoch', 'train_loss', 'eval_top1', 'holdout_top1', 'lr')


def run_pilot(protocol: Protocol, data_setting: str, epochs: int, data_dir: Path, work_dir: Path,
              results_dir: Path, name: str, train_script: Path, extra_flags: tuple[str, ...] = (),
              seed: int = 0) -> Path:
    """A CE pilot for choosing a setting's epochs; returns its record ``results_dir/<protocol>/pilots/<name>.json``.

    The protocol's ``ce`` cell of ``data_setting`` with ``epochs`` (and ``extra_flags`` after the setting's data
    flags, e.g. another ``--sched``) trains in ``work_dir/<protocol>/pilots/<name>/`` (resumed if it stopped).
    The record holds the per-epoch curve and the last-fifth gain of held-out and monitor top-1; the protocols
    want the held-out gain under one point. An existing record is never overwritten.
    """
    if not name or Path(name).name != name or name in ('.', '..'):
        raise ValueError(f'pilot name {name!r} must be a plain file name (no folders).')
    record_path = Path(results_dir) / protocol.name / 'pilots' / f'{name}.json'
    if record_path.exists():
        raise ValueError(f'pilot {name!r}: {record_path} exists; a pilot record is never overwritten '
                         '(pick another --name).')
    pilot = dataclasses.replace(protocol, epochs={**protocol.epochs, data_setting: epochs},
                                data={**protocol.data, data_setting: [*protocol.data[data_setting], *extra_flags]})
    cell = Cell('ce', data_setting, seed)
    run_dir = Path(work_dir).resolve() / protocol.name / 'pilots' / name
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir).resolve()
    summary = run_dir / 'train' / 'summary.csv'
    epochs_before = len(read_summary(summary)) if summary.exists() else 0
    command, wall_seconds, cpu_seconds = train_cell(pilot, cell, data_dir, run_dir, train_script)
    curve = [{k: _number(row.get(k)) for k in PILOT_COLUMNS if row.get(k) not in (None, '')}
             for row in read_summary(summary)]
    gains = {key: last_fifth_gain(curve, key) for key in ('holdout_top1', 'eval_top1')}
    record = {'protocol': protocol.name, 'data_setting': data_setting, 'method': 'ce', 'seed': seed,
              'epochs': epochs, 'extra_flags': list(extra_flags),
              'command': portable_command(command[1:], data_dir, run_dir, train_script), 'last_fifth_gain': gains,
              'meets_criterion': gains['holdout_top1'] is not None and gains['holdout_top1'] < 1.0,
              'curve': curve, 'provenance': provenance(train_script.parent)}
    # Seconds only for the epochs trained by this call (a resumed run's earlier epochs were not timed here).
    record.update(epochs_trained_here=len(curve) - epochs_before,
                  wall_seconds=wall_seconds if epochs_before == 0 else None,
                  cpu_seconds=cpu_seconds if epochs_before == 0 else None)
    atomic_write_text(record_path, json.dumps(record, indent=1) + '\n')
    return record_path


