"""Reproduction study: cyclical focal loss and cyclical training against CE and the calibration losses.

Papers: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978, and "General Cyclical Training of
Neural Networks", https://arxiv.org/abs/2202.08835. The claims checked: CFL beats cross-entropy and focal loss
on balanced and long-tailed data; cyclical weight decay, temperature and clipping beat their constant values.

A study is a grid of (method x data setting x seed) defined by a protocol (:mod:`reproduce_protocols`). Every cell
is one run of this project's ``train.py`` in a subprocess, in its own directory ``WORK/<protocol>/runs/<cell>/``,
followed by the scoring of its last checkpoint; the result goes to ``RESULTS/<protocol>/runs/<cell>.json``, where
``RESULTS`` is ``WORK/results`` unless ``--results-dir`` names another folder (``--results-dir bench/results`` to
read or extend the project's committed results; a fresh work folder never counts them as done).
The grid runner (:mod:`reproduce_runner`) makes the grid resumable and safe to share between workers and hosts;
the executors (:mod:`executors`) run it with local worker processes or one Slurm job per cell.

Usage::

    python bench/reproduce.py prepare-data --archive cifar10-jpeg.tar.gz --out bench/_work/cifar10 \
        --monitor-per-class 100
    python bench/reproduce.py run --protocol study-cpu --data-dir bench/_work/cifar10 --work-dir bench/_work \
        --jobs 2                                      # or: --executor slurm --partition P --time 60
    python bench/reproduce.py status --protocol study-cpu --work-dir bench/_work
    python bench/reproduce.py aggregate --protocol study-cpu --work-dir bench/_work
    python bench/reproduce.py list --grid my_grid.yaml --data-dir DATA --work-dir WORK   # your own grid, dry run
    python bench/reproduce.py pilot --protocol study-cpu --data-setting c10_4k --epochs 40 \
        --data-dir bench/_work/cifar10 --work-dir bench/_work --name c10_4k_e40   # choose a setting's epochs
"""
import argparse
import dataclasses
import json
import os
import shlex
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # cfl_timm and train.py of this checkout
from executors import EXECUTORS, LocalExecutor, SlurmExecutor, WorkerSpec  # noqa: E402
from reproduce_aggregate import aggregate_study, last_fifth_gain, mean_sd, write_csv  # noqa: E402
from reproduce_grid import load_grid  # noqa: E402
from reproduce_protocols import PROTOCOLS, RANK_GROUPS, Protocol  # noqa: E402
from reproduce_runner import Cell, CellFailed, GridRunner, _project_io, load_cell_fn, run_guarded  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

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
    import re
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', name)]


# ------------------------------------------------------------------------------------------ one cell


def train_command(protocol: Protocol, cell: Cell, data_dir: Path, run_dir: Path) -> list[str]:
    """The train.py command line of one cell (resumes from its own last checkpoint after a crash)."""
    return [sys.executable, str(REPO_ROOT / 'train.py'), '--data-dir', str(data_dir), *protocol.train_flags(cell),
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


def evaluate_checkpoint(train_dir: Path, data_dir: Path, batch_size: int = 256) -> dict[str, Any]:
    """Per-class top-1 (percent), NLL and 15-bin ECE of ``train_dir/last.pth.tar`` on the run's validation split.

    The overall top-1 equals the last ``eval_top1`` of ``summary.csv`` (checked by the caller).
    """
    from timm.data import create_dataset

    model, args, data_config, epoch = load_run_model(train_dir)
    dataset = create_dataset(args.get('dataset') or '', root=str(data_dir), split=args.get('val_split', 'validation'),
                             is_training=False)
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


def holdout_dataset(args: dict[str, Any], data_dir: Path):
    """The run's ``--holdout`` split, rebuilt by train.py's own functions from the run's arguments (same subset,
    same seed, evaluation transforms)."""
    import torch

    import train as train_script
    from cfl_timm.training.distributed import ProcessInfo

    namespace = argparse.Namespace(**{**args, 'data_dir': str(data_dir), 'data': None})
    dataset_train, _, num_classes = train_script.load_datasets(namespace, False)
    _, dataset = train_script.carve_holdout(namespace, dataset_train, num_classes,
                                            ProcessInfo(device=torch.device('cpu'), rank=1, world_size=2))
    return dataset


def score_run(protocol: Protocol, train_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The study's metrics of the run's last checkpoint on ``protocol.score_split``, before and after temperature
    scaling fitted on the run's held-out split (never on the scored split)."""
    from timm.data import create_dataset

    from cfl_timm.metrics import METRIC_KEYS
    from cfl_timm.training import evaluate_temperature_scaled

    model, args, data_config, epoch = load_run_model(train_dir)
    dataset = create_dataset(args.get('dataset') or '', root=str(data_dir), split=protocol.score_split,
                             is_training=False)
    logits, targets = predict(model, dataset, data_config)
    num_classes = logits.shape[1]
    scored = {'checkpoint': 'last.pth.tar', 'epoch': epoch, 'split': protocol.score_split,
              'num_images': int(targets.numel()), 'test': calibration(logits, targets, num_classes),
              'per_class_top1': per_class_top1(logits, targets, num_classes)}
    if protocol.temperature_scaling:
        holdout_logits, holdout_targets = predict(model, holdout_dataset(args, data_dir), data_config)
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


def provenance() -> dict[str, Any]:
    """Versions, commit and machine of a result (so results from many machines can be told apart)."""
    import platform
    import subprocess

    import timm
    import torch

    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT, capture_output=True, text=True)
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


def train_cell(protocol: Protocol, cell: Cell, data_dir: Path, run_dir: Path,
               should_stop=lambda: False) -> tuple[list[str], float, float]:
    """Run (or resume) train.py for ``cell`` in ``run_dir/train``; returns its command line and the wall and CPU
    seconds it took. train.py runs in its own process group and is killed with this worker (never left running).
    """
    env = dict(os.environ)
    if protocol.threads:
        env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = str(protocol.threads)
    command = train_command(protocol, cell, data_dir, run_dir)
    log_path = run_dir / 'train.log'
    start, cpu_start = time.time(), _children_cpu_seconds()
    returncode = run_guarded(command, run_dir, log_path, should_stop=should_stop, env=env, cwd=REPO_ROOT)
    if returncode != 0:
        raise CellFailed(returncode, tail(log_path))
    return command, time.time() - start, _children_cpu_seconds() - cpu_start


def make_train_cell(protocol: Protocol, data_dir: Path):
    """The default cell function: train.py in a subprocess, then the per-class evaluation of its checkpoint."""
    data_dir = Path(data_dir).resolve()

    def run_cell(cell: Cell, run_dir: Path, should_stop=lambda: False) -> dict[str, Any]:
        command, train_seconds, train_cpu_seconds = train_cell(protocol, cell, data_dir, run_dir, should_stop)
        train_dir = run_dir / 'train'
        from cfl_timm.files import read_summary
        rows = read_summary(train_dir / 'summary.csv')
        last = rows[-1]
        if protocol.threads:
            import torch
            torch.set_num_threads(protocol.threads)
        if protocol.score_split is not None:
            return {'protocol': protocol.name, 'method_flags': protocol.flags_of(cell.loss),
                    'command': portable_command(command[1:], data_dir, run_dir),
                    'train_seconds': train_seconds, 'train_cpu_seconds': train_cpu_seconds, 'epochs': len(rows),
                    'curve': [{k: _number(row.get(k)) for k in CURVE_COLUMNS if row.get(k) not in (None, '')}
                              for row in rows],
                    **score_run(protocol, train_dir, data_dir), 'provenance': provenance()}
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


def portable_command(argv: list[str], data_dir: Path, run_dir: Path) -> list[str]:
    """``argv`` without this machine's paths (results are committed): train.py relative to the repository,
    the data and run directories as ``$DATA`` and ``$RUN``."""
    names = {str(REPO_ROOT / 'train.py'): 'train.py', str(data_dir): '$DATA', str(run_dir): '$RUN'}
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
              results_dir: Path, name: str, extra_flags: tuple[str, ...] = (), seed: int = 0) -> Path:
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
    from cfl_timm.files import read_summary
    summary = run_dir / 'train' / 'summary.csv'
    epochs_before = len(read_summary(summary)) if summary.exists() else 0
    command, wall_seconds, cpu_seconds = train_cell(pilot, cell, data_dir, run_dir)
    curve = [{k: _number(row.get(k)) for k in PILOT_COLUMNS if row.get(k) not in (None, '')}
             for row in read_summary(summary)]
    gains = {key: last_fifth_gain(curve, key) for key in ('holdout_top1', 'eval_top1')}
    record = {'protocol': protocol.name, 'data_setting': data_setting, 'method': 'ce', 'seed': seed,
              'epochs': epochs, 'extra_flags': list(extra_flags),
              'command': portable_command(command[1:], data_dir, run_dir), 'last_fifth_gain': gains,
              'meets_criterion': gains['holdout_top1'] is not None and gains['holdout_top1'] < 1.0,
              'curve': curve, 'provenance': provenance()}
    # Seconds only for the epochs trained by this call (a resumed run's earlier epochs were not timed here).
    record.update(epochs_trained_here=len(curve) - epochs_before,
                  wall_seconds=wall_seconds if epochs_before == 0 else None,
                  cpu_seconds=cpu_seconds if epochs_before == 0 else None)
    _project_io().atomic_write_text(record_path, json.dumps(record, indent=1) + '\n')
    return record_path


# ------------------------------------------------------------------------------------------- aggregate


def run_records(runs_dir: Path) -> list[dict[str, Any]]:
    """One flat record per finished cell (``done.json``), with the shot-group accuracies."""
    records = []
    for done in sorted(Path(runs_dir).glob('*/done.json')):
        payload = json.loads(done.read_text())
        cell, result = payload['cell'], payload['result']
        record = {'loss': cell['loss'], 'data': cell['data'], 'seed': cell['seed'], 'top1': result['top1'],
                  'ece': result['eval_ece'], 'nll': result['eval_nll'],
                  'wall_s': result.get('train_seconds', payload['wall_seconds']), 'epochs': result['epochs']}
        per_class = result['per_class_top1']
        for group, classes in RANK_GROUPS.items():
            record[group] = sum(per_class[c] for c in classes) / len(classes)
        for c, value in enumerate(per_class):
            record[f'class{c}'] = value
        records.append(record)
    return records


METRICS = ('top1', 'many', 'medium', 'few', 'ece', 'nll', 'wall_s')


def aggregate(protocol: Protocol, runs_dir: Path, results_dir: Path, machine: str = '') -> dict[str, Path]:
    """Write ``<protocol>_runs.csv`` (per run), ``<protocol>.csv`` (mean/sd), ``<protocol>.md`` and ``.png``."""
    records = run_records(runs_dir)
    if not records:
        raise ValueError(f'No finished runs under {runs_dir}.')
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: results_dir / f'{protocol.name}{suffix}' for k, suffix in
             (('runs', '_runs.csv'), ('csv', '.csv'), ('md', '.md'), ('png', '.png'))}

    write_csv(paths['runs'], records, float_format='.4f')

    rows = []
    for data in protocol.data_settings:
        for loss in protocol.grid[data]:
            group = [r for r in records if r['loss'] == loss and r['data'] == data]
            if not group:
                continue
            row = {'data': data, 'loss': loss, 'n_seeds': len(group)}
            for metric in METRICS:
                row[f'{metric}_mean'], row[f'{metric}_sd'] = mean_sd([r[metric] for r in group])
            rows.append(row)
    for row in rows:
        for baseline in BASELINES:
            row[f'd_top1_vs_{baseline}_mean'], row[f'd_top1_vs_{baseline}_sd'] = paired_difference(
                records, row['data'], row['loss'], baseline)
    write_csv(paths['csv'], rows, float_format='.4f')
    paths['md'].write_text(markdown_table(protocol, rows, machine))
    plot(protocol, rows, paths['png'])
    return paths


BASELINES = ('ce', 'ce_ls0.1')


def paired_difference(records: list[dict[str, Any]], data: str, loss: str, baseline: str) -> tuple[float, float]:
    """Mean and sd over seeds of top-1(loss) - top-1(baseline), paired by seed (same init and data order)."""
    by_seed = {r['seed']: r['top1'] for r in records if r['data'] == data and r['loss'] == baseline}
    diffs = [r['top1'] - by_seed[r['seed']] for r in records
             if r['data'] == data and r['loss'] == loss and r['seed'] in by_seed]
    return mean_sd(diffs) if diffs else (float('nan'), float('nan'))


def markdown_table(protocol: Protocol, rows: list[dict[str, Any]], machine: str = '') -> str:
    def cell(row, metric, digits):
        mean, sd = row[f'{metric}_mean'], row[f'{metric}_sd']
        sign = '+' if metric.startswith('d_') and mean > 0 else ''
        return f'{sign}{mean:.{digits}f} ± {sd:.{digits}f}' if sd == sd else f'{sign}{mean:.{digits}f}'

    lines = [f'Protocol `{protocol.name}`: {protocol.description}; epochs '
             + ', '.join(f'{d} {e}' for d, e in protocol.epochs.items())
             + (f'. Machine: {machine}.' if machine else '.'), '',
             'Mean ± sd over seeds; top-1, many/medium/few (class groups 0-2 / 3-6 / 7-9) in %, ECE (15 bins) '
             'and NLL on the balanced validation set; Δ = top-1 minus the baseline\'s top-1, paired by seed '
             '(same initialisation and data order); wall = seconds of train.py per run.', '',
             '| data | loss | seeds | top-1 | Δ vs ce | Δ vs ce_ls0.1 | many | medium | few | ECE | NLL | wall s |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        long_tailed = row['data'] in protocol.shot_groups
        shots = [cell(row, m, 1) if long_tailed else '' for m in ('many', 'medium', 'few')]
        deltas = [cell(row, f'd_top1_vs_{b}', 2) if row['loss'] != b and row[f'd_top1_vs_{b}_mean'] == row[
            f'd_top1_vs_{b}_mean'] else '' for b in BASELINES]
        lines.append(f"| {row['data']} | {row['loss']} | {row['n_seeds']} | {cell(row, 'top1', 2)} | "
                     + ' | '.join(deltas + shots) + f" | {cell(row, 'ece', 3)} | {cell(row, 'nll', 3)} | "
                     f"{cell(row, 'wall_s', 0)} |")
    return '\n'.join(lines) + '\n'


def summary_figure(protocol: Protocol, rows: list[dict[str, Any]]):
    """The first study's figure: top-1 bars (± sd) per loss, one panel per data setting."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    settings = [d for d in protocol.data_settings if any(r['data'] == d for r in rows)]
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.6), squeeze=False)
    for ax, data in zip(axes[0], settings):
        group = [r for r in rows if r['data'] == data]
        x = range(len(group))
        ax.bar(x, [r['top1_mean'] for r in group], yerr=[r['top1_sd'] for r in group], capsize=3,
               color=['#888888' if r['loss'].startswith('ce') else '#4477aa' if 'cfl' not in r['loss']
                      else '#cc6677' for r in group])
        highs = [r['top1_mean'] + 2 * (r['top1_sd'] if r['top1_sd'] == r['top1_sd'] else 0) for r in group]
        ax.set_ylim(0, max(highs) + 2)  # a bar's length is its value: the axis starts at 0
        ax.set_xticks(list(x))
        ax.set_xticklabels([r['loss'] for r in group], rotation=45, ha='right', fontsize=8)
        ax.set_title(data)
        ax.set_ylabel('top-1 (%)')
    fig.suptitle(f'protocol {protocol.name}: mean ± sd over seeds', fontsize=10)
    fig.tight_layout()
    return fig


def plot(protocol: Protocol, rows: list[dict[str, Any]], path: Path) -> None:
    """:func:`summary_figure` written to ``path`` as a PNG, atomically."""
    import matplotlib.pyplot as plt

    from cfl_timm.files import atomic_write_bytes
    fig = summary_figure(protocol, rows)
    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=110, format='png'))
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------------ CLI


def make_cell_fn(protocol: str, data_dir: str, cell_fn: Optional[str] = None, grid: Optional[str] = None):
    """The cell function of a worker (the factory named in its :class:`executors.WorkerSpec`): ``cell_fn``
    (``FILE.py:NAME`` or ``MODULE:NAME``) when given, else train.py under ``protocol`` (or the grid file ``grid``)
    on ``data_dir``."""
    if cell_fn:
        return load_cell_fn(cell_fn)
    return make_train_cell(load_grid(Path(grid)) if grid else PROTOCOLS[protocol], Path(data_dir))


def protocol_of(args: argparse.Namespace) -> Protocol:
    """The study protocol named by ``--protocol``, or the checked grid file of ``--grid``."""
    if getattr(args, 'grid', None) is None:
        return PROTOCOLS[args.protocol]
    protocol = load_grid(args.grid)
    if protocol.name in PROTOCOLS:
        raise ValueError(f'--grid {args.grid}: name {protocol.name!r} is a study protocol\'s; choose another '
                         f'(taken: {sorted(PROTOCOLS)})')
    return protocol


GRID_COMMANDS = {
    'list': ("print each cell's name and exact train.py command, running nothing",
             "A dry run: print every cell of the protocol or grid file with its train.py command line, as run "
             "would start it (whether done or not); nothing runs and nothing is written."),
    'run': ('run every cell of a protocol that is not done yet',
            'Run every cell of the protocol not yet done (in WORK_DIR or RESULTS_DIR), with local workers or one '
            'Slurm job per cell; resumable, safe to start on many hosts sharing WORK_DIR.'),
    'status': ('count done, running and failed cells of a protocol',
               'Print how many cells of the protocol are done, running (lock present) and failed, with the last '
               'error of each failed cell.'),
    'aggregate': ("build a protocol's tables and figure from its results",
                  "Rebuild the protocol's per-run CSV, summary CSV, markdown table and figure in RESULTS_DIR from "
                  'the result files there (the legacy cpu protocol: from the done.json files of WORK_DIR).'),
}


def default_results_dir(args: argparse.Namespace) -> Path:
    """``--results-dir`` if given, else ``WORK_DIR/results``: a user's runs never mix with the committed ones."""
    return args.results_dir if args.results_dir is not None else args.work_dir / 'results'


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)

    parser.epilog = ('Results go to WORK_DIR/results/ unless --results-dir says otherwise; the committed results '
                     'of this project (bench/results/) are only read or extended with --results-dir bench/results.')
    prep = commands.add_parser('prepare-data', help='extract the CIFAR-10 JPEG archive (and capped copies)',
                               description='Extract the CIFAR-10 JPEG archive into OUT/train and OUT/val; with '
                                           'caps, a balanced copy of links; with --monitor-per-class, monitor/.')
    prep.add_argument('--archive', type=Path, required=True)
    prep.add_argument('--out', type=Path, required=True)
    prep.add_argument('--train-per-class', type=int, default=None)
    prep.add_argument('--val-per-class', type=int, default=None)
    prep.add_argument('--monitor-per-class', type=int, default=None,
                      help='also link the first N val images per class into monitor/ (study protocols: 100)')

    pilot = commands.add_parser('pilot', help="a CE pilot for a setting's epochs (curve and last-fifth gain)",
                                description="Train one CE run of a data setting for EPOCHS epochs and record its "
                                            "curve and last-fifth gain in RESULTS_DIR/<protocol>/pilots/NAME.json.")
    pilot.add_argument('--protocol', required=True, choices=tuple(PROTOCOLS))
    pilot.add_argument('--data-setting', required=True, help="one of the protocol's data settings")
    pilot.add_argument('--epochs', type=int, required=True)
    pilot.add_argument('--name', required=True, help='the pilot record is RESULTS_DIR/<protocol>/pilots/NAME.json')
    pilot.add_argument('--data-dir', type=Path, required=True)
    pilot.add_argument('--work-dir', type=Path, required=True)
    pilot.add_argument('--results-dir', type=Path, default=None,
                       help='default WORK_DIR/results; pass bench/results to add to the committed results')
    pilot.add_argument('--seed', type=int, default=0)
    pilot.add_argument('extra_flags', nargs=argparse.REMAINDER,
                       help="train.py flags after '--', appended after the setting's data flags")

    for name, (summary, description) in GRID_COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=description)
        grid = sub.add_mutually_exclusive_group(required=True)
        grid.add_argument('--protocol', choices=tuple(PROTOCOLS), help='one of the study protocols')
        grid.add_argument('--grid', type=Path, metavar='FILE.yaml',
                          help="a grid file of one's own (models, losses, data, seeds, epochs; docs/grid.md)")
        sub.add_argument('--work-dir', type=Path, required=True, help='runs go to WORK_DIR/<protocol>/runs/')
        sub.add_argument('--results-dir', type=Path, default=None,
                         help='per-run result files go to RESULTS_DIR/<protocol>/runs/ and aggregate writes its '
                              'tables there (default WORK_DIR/results; the legacy cpu protocol writes no per-run '
                              'files unless given); pass bench/results to use the committed results')
        if name in ('run', 'list'):
            sub.add_argument('--data-dir', type=Path, required=True, help='folder with train/ and val/ class folders')
            sub.add_argument('--only', default=None, help='comma-separated cell names (default: all)')
            sub.add_argument('--seeds', type=int, nargs='+', default=None, help='subset of the seeds')
        if name == 'run':
            sub.add_argument('--executor', default='local', choices=tuple(EXECUTORS),
                             help='local: worker processes on this host; slurm: one Slurm job per cell (submitit)')
            sub.add_argument('--jobs', type=int, default=1, help='local executor: worker processes on this host')
            sub.add_argument('--stale-after', type=float, default=300.0,
                             help='seconds without heartbeat after which another host may take a lock over')
            sub.add_argument('--heartbeat', type=float, default=10.0, help='heartbeat interval in seconds')
            sub.add_argument('--cell-fn', default=None,
                             help='FILE.py:function or module:function replacing the train.py cell (for tests)')
            slurm = sub.add_argument_group('Slurm executor (--executor slurm)')
            slurm.add_argument('--partition', default=None, help='Slurm partition (default: the cluster default)')
            slurm.add_argument('--time', type=int, default=60, metavar='MINUTES', help='time limit per job')
            slurm.add_argument('--cpus-per-task', type=int, default=1, help='CPUs per job (default 1)')
            slurm.add_argument('--gpus-per-task', type=int, default=0, help='GPUs per job (default 0)')
            slurm.add_argument('--slurm-setup', action='append', default=[], metavar='LINE',
                               help='shell line run before each job (repeatable), e.g. "module load cuda"')
            slurm.add_argument('--slurm-log-dir', type=Path, default=None,
                               help='submitit job folders (default WORK_DIR/<protocol>/slurm)')
            slurm.add_argument('--wait', action='store_true',
                               help='wait until every submitted job ended; exit 1 if a cell is not done')
            slurm.add_argument('--poll', type=float, default=5.0, help='seconds between squeue polls with --wait')
        if name == 'aggregate':
            sub.add_argument('--machine', default='', help='machine description for the table')
    return parser


def results_dir_for(protocol: Protocol, args: argparse.Namespace) -> Optional[Path]:
    """Where ``run`` writes per-run result files (None: only done.json in the work dir)."""
    if args.results_dir is None and protocol.name == 'cpu':
        return None
    return default_results_dir(args) / protocol.name / 'runs'


def make_executor(args: argparse.Namespace, runs_dir: Path):
    if args.executor == 'slurm':
        return SlurmExecutor(args.slurm_log_dir or runs_dir.parent / 'slurm', partition=args.partition,
                             time_min=args.time, cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                             setup=args.slurm_setup, wait=args.wait, poll_interval=args.poll)
    return LocalExecutor(args.jobs)


def _pilot(protocol: Protocol, args: argparse.Namespace) -> int:
    if args.data_setting not in protocol.data:
        raise ValueError(f'--data-setting {args.data_setting!r}: protocol {protocol.name} has '
                         f'{sorted(protocol.data)}')
    if args.epochs < 5:
        raise ValueError(f'--epochs must be >= 5 for a last fifth to exist, got {args.epochs}.')
    extra = args.extra_flags[1:] if args.extra_flags[:1] == ['--'] else args.extra_flags
    print(run_pilot(protocol, args.data_setting, args.epochs, args.data_dir, args.work_dir, default_results_dir(args),
                    args.name, tuple(extra), args.seed))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.command == 'prepare-data':
        print(prepare_data(args.archive, args.out, args.train_per_class, args.val_per_class, args.monitor_per_class))
        return 0
    protocol = protocol_of(args)
    if args.command == 'pilot':
        return _pilot(protocol, args)
    runs_dir = args.work_dir / protocol.name / 'runs'
    cells = protocol.cells()
    if getattr(args, 'seeds', None):
        cells = [c for c in cells if c.seed in args.seeds]
    if getattr(args, 'only', None):
        wanted = set(args.only.split(','))
        unknown = wanted - {c.name for c in cells}
        if unknown:
            raise ValueError(f'--only: unknown cells {sorted(unknown)}; valid: {[c.name for c in cells]}')
        cells = [c for c in cells if c.name in wanted]
    if args.command == 'list':
        for cell in cells:
            command = train_command(protocol, cell, args.data_dir.resolve(), (runs_dir / cell.name).resolve())
            print(f'{cell.name}: {shlex.join(command)}')
        return 0
    if args.command == 'status':
        GridRunner(cells, runs_dir, cell_fn=None, results_dir=results_dir_for(protocol, args)).print_status()
        return 0
    if args.command == 'aggregate':
        results_dir = default_results_dir(args)
        if protocol.score_split is None:  # the first study: from the work dir's done.json files
            paths = aggregate(protocol, runs_dir, results_dir, args.machine)
        else:
            paths = aggregate_study(protocol, results_dir, args.machine)
        print('\n'.join(str(p) for p in paths.values()))
        return 0

    if not (args.data_dir / 'train').is_dir() or not (args.data_dir / 'val').is_dir():
        raise ValueError(f'--data-dir {args.data_dir} must hold train/ and val/ class folders '
                         '(see the prepare-data command).')
    spec = WorkerSpec(runs_dir=runs_dir.resolve(), factory=f'{Path(__file__).resolve()}:make_cell_fn',
                      factory_kwargs={'protocol': protocol.name, 'data_dir': str(args.data_dir.resolve()),
                                      'cell_fn': args.cell_fn,
                                      'grid': str(args.grid.resolve()) if args.grid else None},
                      results_dir=results_dir_for(protocol, args), stale_after=args.stale_after,
                      heartbeat=args.heartbeat)
    return make_executor(args, runs_dir).run(spec, cells)


if __name__ == '__main__':
    parser = get_args_parser()
    try:
        sys.exit(main(parser.parse_args()))
    except ValueError as error:  # bad input: one usage line, exit 2, no traceback
        parser.error(str(error))
