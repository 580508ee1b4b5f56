"""The pictures calibration papers publish: reliability diagrams and their evolution over training, training curves,
prediction grids. Each is written as a PNG, atomically.

Reliability diagrams follow C. Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
https://arxiv.org/abs/1706.04599 (Figure 1): per-bin accuracy bars against confidence, the gap to the diagonal
shaded, the bin counts printed. Their evolution over training (small multiples at chosen epochs, several runs side
by side) is the figure of the cyclical / self-adaptive focal-loss papers comparing CE, focal, Brier and their loss.

matplotlib is an optional extra (``pip install cfl-timm[plot]`` or ``pip install matplotlib``), imported only when a
picture is drawn. Command line::

    python -m cfl_timm.plotting reliability RUN_DIR [RUN_DIR ...] --epochs 1 5 10 --out evolution.png
    python -m cfl_timm.plotting curves RUN_DIR_OR_SUMMARY_CSV [...] --out curves.png
    python -m cfl_timm.plotting run RUN_DIR        # the pictures train.py draws at the end of a run, again

``RUN_DIR`` is a train.py output folder (its ``reliability.jsonl`` / ``summary.csv``).
"""
import argparse
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from cfl_timm.files import atomic_write_bytes, read_summary
from cfl_timm.files import read_reliability_log as read_reliability_records

__all__ = ['RUN_PICTURES', 'plot_ece_vs_accuracy', 'plot_prediction_grid', 'plot_reliability_diagrams',
           'plot_reliability_evolution', 'plot_risk_coverage', 'plot_run', 'plot_shift', 'plot_training_curves',
           'plot_training_evidence', 'require_matplotlib', 'training_curves_figure']

# summary.csv columns drawn by plot_training_curves: (panel title, columns, second-axis columns).
_CURVE_PANELS = (
    ('loss', ('train_loss', 'eval_loss'), ()),
    ('top-1 (%)', ('eval_top1', 'train_top1', 'holdout_top1'), ()),
    ('calibration', ('eval_ece', 'eval_ece_ts'), ('eval_nll', 'eval_nll_ts')),
    ('schedules', ('lr',), ('eta', 'weight_decay', 'temperature', 'clip_grad')),
)


def require_matplotlib():
    """Import matplotlib with the non-interactive Agg backend, or raise ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError('pictures need matplotlib, an optional extra: pip install matplotlib (or pip install '
                          '"cfl-timm[plot]"; validate.py runs without it with --no-plot).') from error
    matplotlib.use('Agg')
    logging.getLogger('matplotlib.font_manager').setLevel(logging.WARNING)  # no font-cache chatter under INFO logs
    import matplotlib.pyplot as plt
    return plt


def _save(figure, path: os.PathLike, dpi: int = 110) -> Path:
    """Render the figure to PNG bytes and write them atomically (temp file + rename); close the figure."""
    plt = require_matplotlib()
    path = Path(path)
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, dpi=dpi, format='png')
    finally:
        plt.close(figure)
    atomic_write_bytes(path, lambda stream: stream.write(buffer.getvalue()))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Reliability diagrams

def _draw_reliability(axis, reliability: Mapping[str, Sequence[float]], title: str, compact: bool = False) -> None:
    edges = list(reliability['edges'])
    width = edges[1] - edges[0]
    lefts = edges[:-1]
    counts = [int(n) for n in reliability['count']]
    accuracy = [0.0 if math.isnan(a) else a for a in reliability['accuracy']]
    confidence = [lefts[i] + width / 2 if math.isnan(c) else c for i, c in enumerate(reliability['confidence'])]
    axis.bar(lefts, accuracy, width=width, align='edge', color='tab:blue', edgecolor='black', linewidth=0.5,
             label='accuracy')
    gap_bottom = [min(a, c) for a, c in zip(accuracy, confidence)]
    gap_height = [abs(c - a) if n else 0.0 for a, c, n in zip(accuracy, confidence, counts)]
    axis.bar(lefts, gap_height, bottom=gap_bottom, width=width, align='edge', color='tab:red', alpha=0.3,
             edgecolor='tab:red', hatch='//', linewidth=0.5, label='gap to confidence')
    axis.plot([0, 1], [0, 1], linestyle='--', color='gray', label='perfect calibration')
    for left, n in zip(lefts, counts):
        if n:
            axis.text(left + width / 2, 1.01, str(n), ha='center', va='bottom', fontsize=5 if compact else 6,
                      rotation=90)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.15)
    axis.set_title(title, fontsize=8 if compact else 9)
    if not compact:
        axis.set_xlabel('confidence (max softmax probability)')
        axis.set_ylabel('accuracy')
        axis.legend(loc='lower right', fontsize=7, framealpha=0.9)
    else:
        axis.tick_params(labelsize=6)


def plot_reliability_diagrams(panels: Sequence[tuple[str, Mapping, Mapping]], path: os.PathLike) -> Path:
    """Side-by-side reliability diagrams as one PNG.

    Args:
        panels: (title, reliability, metrics) per panel, reliability as returned by
            ``CalibrationMeter.reliability()`` and metrics by ``CalibrationMeter.compute()`` (ECE, MCE and NLL are
            printed in the title). Bin counts are printed above the bars.
        path: Output PNG path.

    Returns:
        The path written.
    """
    if not panels:
        raise ValueError('plot_reliability_diagrams needs at least one panel.')
    plt = require_matplotlib()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.6), squeeze=False)
    for axis, (title, reliability, metrics) in zip(axes[0], panels):
        _draw_reliability(axis, reliability, f"{title}\nECE {metrics['ece']:.4f}  MCE {metrics['mce']:.4f}  "
                                             f"NLL {metrics['nll']:.4f}")
    figure.tight_layout()
    return _save(figure, path)


def plot_risk_coverage(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]],
                       path: os.PathLike) -> Path:
    """Risk-coverage curves of selective classification (Geifman et al., ICLR 2019), one line per label, as a PNG.

    Args:
        curves: label -> (coverage, selective risk, AURC), e.g. from
            :func:`cfl_timm.metrics.risk_coverage_curve` and :func:`cfl_timm.metrics.aurc`; the AURC is printed in
            the legend.
        path: Output PNG path.

    Returns:
        The path written.
    """
    if not curves:
        raise ValueError('plot_risk_coverage needs at least one curve.')
    plt = require_matplotlib()
    figure, axis = plt.subplots(figsize=(5.0, 4.0))
    for label, (coverage, risk, area) in curves.items():
        axis.plot(list(coverage), list(risk), label=f'{label} (AURC {area:.4f})', linewidth=1.2)
    axis.set_xlim(0, 1)
    axis.set_ylim(bottom=0)
    axis.set_xlabel('coverage (most confident first)')
    axis.set_ylabel('selective risk (error rate)')
    axis.set_title('Risk-coverage curve')
    axis.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def read_reliability_log(path: os.PathLike) -> dict[int, dict[str, Any]]:
    """The per-epoch reliability records of a run's ``reliability.jsonl`` (or of the run folder), by epoch."""
    path = Path(path)
    records = read_reliability_records(path / 'reliability.jsonl' if path.is_dir() else path)
    return {int(record['epoch']): record for record in records}


def plot_reliability_evolution(runs: Sequence[os.PathLike], path: os.PathLike, epochs: Optional[Sequence[int]] = None,
                               labels: Optional[Sequence[str]] = None, max_epochs: int = 5) -> Path:
    """Small multiples of the reliability diagram over training: one row per run, one column per epoch.

    Args:
        runs: train.py run folders (or their ``reliability.jsonl`` files).
        path: Output PNG path.
        epochs: Epochs to draw (each must be recorded in every run); default: ``max_epochs`` evenly spaced epochs
            of the first run, first and last included.
        labels: Row labels (default: the run folder names).
        max_epochs: Columns when ``epochs`` is not given.

    Returns:
        The path written.
    """
    if not runs:
        raise ValueError('plot_reliability_evolution needs at least one run.')
    logs = [read_reliability_log(run) for run in runs]
    for run, log in zip(runs, logs):
        if not log:
            raise ValueError(f'no reliability records in {run} (train.py writes reliability.jsonl each epoch).')
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f'{len(labels)} labels for {len(runs)} runs.')
    labels = list(labels) if labels is not None else [Path(run).name if Path(run).is_dir() else Path(run).parent.name
                                                       for run in runs]
    if epochs is None:
        recorded = sorted(logs[0])
        picks = sorted({recorded[round(i * (len(recorded) - 1) / max(max_epochs - 1, 1))]
                        for i in range(min(max_epochs, len(recorded)))})
        epochs = picks
    epochs = [int(e) for e in epochs]
    for run, log in zip(runs, logs):
        missing = [e for e in epochs if e not in log]
        if missing:
            raise ValueError(f'epochs {missing} are not recorded in {run} (recorded: {sorted(log)}).')
    plt = require_matplotlib()
    figure, axes = plt.subplots(len(runs), len(epochs), figsize=(2.6 * len(epochs) + 0.6, 2.7 * len(runs)),
                                squeeze=False, sharex=True, sharey=True)
    for row, (label, log) in enumerate(zip(labels, logs)):
        for column, epoch in enumerate(epochs):
            record = log[epoch]
            title = f'epoch {epoch}: ECE {record["ece"]:.3f}' if 'ece' in record else f'epoch {epoch}'
            _draw_reliability(axes[row][column], record, title, compact=True)
        axes[row][0].set_ylabel(f'{label}\naccuracy', fontsize=8)
    for column in range(len(epochs)):
        axes[-1][column].set_xlabel('confidence', fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, names, loc='lower center', ncol=3, fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(figure, path)


# ----------------------------------------------------------------------------------------------------------------
# Training curves

def _read_summary_columns(path: Path) -> dict[str, list[float]]:
    rows = read_summary(path)
    if not rows:
        raise ValueError(f'no rows in {path} (a train.py summary.csv).')
    columns: dict[str, list[float]] = {}
    for key in rows[0]:
        values = [float(row[key]) if row.get(key) not in (None, '') else math.nan for row in rows]
        if any(not math.isnan(v) for v in values):
            columns[key] = values
    return columns


def _set_schedule_scale(axis, values: Sequence[float]) -> None:
    """A logarithmic y-axis when the positive values span more than a factor 50, so that weight decay (1e-4 ..
    1e-3) shows beside eta, T (~1) and clip thresholds (~10-100). A cyclical eta reaches exactly 0, where a log
    axis is undefined: then symlog, linear below the smallest positive value and logarithmic above it."""
    finite = [v for v in values if not math.isnan(v)]
    positive = [v for v in finite if v > 0]
    if not positive or max(positive) / min(positive) <= 50 or min(finite) < 0:
        return
    if min(finite) > 0:
        axis.set_yscale('log')
        return
    axis.set_yscale('symlog', linthresh=min(positive), linscale=0.5)
    axis.set_ylim(0, max(positive) * 2)


def _summary_runs(summaries: Sequence[os.PathLike], labels: Optional[Sequence[str]],
                  what: str) -> list[tuple[str, dict[str, list[float]]]]:
    """(label, columns) of each run's summary.csv (run folders or files), with the errors of ``what``."""
    if not summaries:
        raise ValueError(f'{what} needs at least one summary.csv.')
    files = [Path(s) / 'summary.csv' if Path(s).is_dir() else Path(s) for s in summaries]
    for file in files:
        if not file.is_file():
            raise ValueError(f'summary file not found: {file}')
    if labels is not None and len(labels) != len(files):
        raise ValueError(f'{len(labels)} labels for {len(files)} runs.')
    labels = list(labels) if labels is not None else [file.parent.name for file in files]
    return list(zip(labels, [_read_summary_columns(file) for file in files]))


def training_curves_figure(summaries: Sequence[os.PathLike], labels: Optional[Sequence[str]] = None):
    """The matplotlib figure of :func:`plot_training_curves` (for callers that inspect or restyle it)."""
    labels, runs = zip(*_summary_runs(summaries, labels, 'plot_training_curves'))
    plt = require_matplotlib()
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    styles = ('-', '--', ':', '-.')
    figure, axes = plt.subplots(1, len(_CURVE_PANELS), figsize=(4.4 * len(_CURVE_PANELS), 3.8), squeeze=False)
    for axis, (title, left, right) in zip(axes[0], _CURVE_PANELS):
        twin = axis.twinx() if any(key in run for run in runs for key in right) else None
        for index, (label, run) in enumerate(zip(labels, runs)):
            color = colors[index % len(colors)]
            epochs = run.get('epoch', list(range(len(next(iter(run.values()))))))
            for style, key in zip(styles, left):
                if key in run:
                    axis.plot(epochs, run[key], color=color, linestyle=style, marker='.', label=f'{label}: {key}')
            for style, key in zip(styles, right):
                if key in run:
                    twin.plot(epochs, run[key], color=color, linestyle=style, alpha=0.6, label=f'{label}: {key}')
        axis.set_title(title, fontsize=10)
        axis.set_xlabel('epoch')
        axis.set_ylabel(' / '.join(left), fontsize=8)
        handles, names = axis.get_legend_handles_labels()
        if twin is not None:
            # The schedules span orders of magnitude (weight decay 1e-4, eta and T ~1, clip thresholds ~10-100).
            _set_schedule_scale(twin, [v for run in runs for key in right for v in run.get(key, [])])
            twin.set_ylabel(' / '.join(k for k in right if any(k in run for run in runs)), fontsize=8)
            more_handles, more_names = twin.get_legend_handles_labels()
            handles, names = handles + more_handles, names + more_names
        if handles:
            axis.legend(handles, names, fontsize=6, loc='best')
    figure.tight_layout()
    return figure


def plot_training_curves(summaries: Sequence[os.PathLike], path: os.PathLike,
                         labels: Optional[Sequence[str]] = None) -> Path:
    """Loss, top-1 (evaluation, training and held-out split when recorded), ECE and its temperature-scaled twin
    (NLL and its twin on a second axis) and the learning rate (eta, weight decay, temperature and clip threshold
    on a second axis, logarithmic, or symlog when eta reaches 0, when they span more than a factor 50) against the
    epoch, for one or several runs, as one PNG.

    Args:
        summaries: ``summary.csv`` files or train.py run folders holding one.
        path: Output PNG path.
        labels: One label per run (default: the run folder names).

    Returns:
        The path written.
    """
    return _save(training_curves_figure(summaries, labels), path)


def plot_ece_vs_accuracy(summaries: Sequence[os.PathLike], path: os.PathLike,
                         labels: Optional[Sequence[str]] = None) -> Path:
    """ECE against top-1 on the evaluation split, one point per evaluated epoch joined in epoch order (first and
    last epoch labelled), for one or several runs; with ``--holdout`` also after temperature scaling
    (``eval_ece_ts``: T fitted on the held-out split), dashed. Lower right is better.

    Args:
        summaries: ``summary.csv`` files or train.py run folders holding one.
        path: Output PNG path.
        labels: One label per run (default: the run folder names).

    Returns:
        The path written.
    """
    runs = _summary_runs(summaries, labels, 'plot_ece_vs_accuracy')
    for label, run in runs:
        if 'eval_top1' not in run or 'eval_ece' not in run:
            raise ValueError(f'{label}: summary.csv has no eval_top1 / eval_ece values.')
    plt = require_matplotlib()
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    figure, axis = plt.subplots(figsize=(5.6, 4.4))
    for index, (label, run) in enumerate(runs):
        color = colors[index % len(colors)]
        epochs = run.get('epoch', list(range(len(run['eval_top1']))))
        axis.plot(run['eval_top1'], run['eval_ece'], color=color, marker='o', markersize=3, label=f'{label}: ECE')
        if 'eval_ece_ts' in run:
            axis.plot(run['eval_top1'], run['eval_ece_ts'], color=color, marker='x', markersize=3, linestyle='--',
                      alpha=0.7, label=f'{label}: ECE after TS (T fitted on the held-out split)')
        for position in sorted({0, len(epochs) - 1}):
            axis.annotate(f'epoch {int(epochs[position])}', (run['eval_top1'][position], run['eval_ece'][position]),
                          textcoords='offset points', xytext=(4, 4), fontsize=6, color=color)
    axis.set_xlabel('top-1 on the evaluation split (%)')
    axis.set_ylabel('ECE (15 equal-width bins)')
    axis.set_title('ECE vs accuracy over training', fontsize=10)
    axis.legend(fontsize=6, loc='best')
    figure.tight_layout()
    return _save(figure, path)


# Evidence panels: (title, columns); summary.csv's evidence_<key> columns (cfl_timm.training.evidence).
_EVIDENCE_PANELS = (
    ('loss terms (training-sample means)', ('evidence_focal', 'evidence_brier', 'evidence_gated_brier')),
    ('gate w and target probability p_t', ('evidence_gate', 'evidence_p_t')),
)


def plot_training_evidence(summaries: Sequence[os.PathLike], path: os.PathLike,
                           labels: Optional[Sequence[str]] = None) -> Path:
    """The per-epoch evidence of a focal calibration loss, as the SA-FCL authors plot it: the training-sample means
    of the focal term, the Brier term B and the gated w * B (left), the gate w and p_t (right), for one or several
    runs. Losses without the Brier term (focal, FLSD, AdaFocal, dual focal) have the focal term and p_t only.

    Args:
        summaries: ``summary.csv`` files or train.py run folders holding one.
        path: Output PNG path.
        labels: One label per run (default: the run folder names).

    Returns:
        The path written.

    Raises:
        ValueError: No run has evidence columns (its loss has no evidence terms).
    """
    runs = _summary_runs(summaries, labels, 'plot_training_evidence')
    if not any(key.startswith('evidence_') for _, run in runs for key in run):
        raise ValueError('no evidence_* values in the summaries: only the focal calibration losses (fcl-ungated, '
                         'safcl, safcl-nodetach, flsd, adafocal, dual-focal, sym without smoothing) record them.')
    plt = require_matplotlib()
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    styles = ('-', '--', ':')
    figure, axes = plt.subplots(1, len(_EVIDENCE_PANELS), figsize=(5.0 * len(_EVIDENCE_PANELS), 3.8), squeeze=False)
    for axis, (title, keys) in zip(axes[0], _EVIDENCE_PANELS):
        for index, (label, run) in enumerate(runs):
            epochs = run.get('epoch', list(range(len(next(iter(run.values()))))))
            for style, key in zip(styles, keys):
                if key in run:
                    axis.plot(epochs, run[key], color=colors[index % len(colors)], linestyle=style, marker='.',
                              label=f'{label}: {key.removeprefix("evidence_")}')
        axis.set_title(title, fontsize=10)
        axis.set_xlabel('epoch')
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6, loc='best')
    figure.tight_layout()
    return _save(figure, path)


# The pictures train.py draws into its run folder at the end of a run: file name -> drawing function.
RUN_PICTURES = {
    'curves.png': plot_training_curves,
    'ece_vs_accuracy.png': plot_ece_vs_accuracy,
    'evidence.png': plot_training_evidence,
}


def plot_run(run_dir: os.PathLike) -> tuple[list[Path], list[str]]:
    """Draw :data:`RUN_PICTURES` from a run folder's ``summary.csv`` into the folder (each atomically).

    Returns:
        (the paths written, one line per picture not drawn saying why, e.g. a loss without evidence terms).

    Raises:
        ImportError: matplotlib is not installed.
    """
    run_dir = Path(run_dir)
    written, skipped = [], []
    for name, draw in RUN_PICTURES.items():
        try:
            written.append(draw([run_dir], run_dir / name))
        except ValueError as error:
            skipped.append(f'{name} not drawn: {error}')
    return written, skipped


# ----------------------------------------------------------------------------------------------------------------
# Prediction grid

def plot_prediction_grid(images, true: Sequence[int], predicted: Sequence[int], confidence: Sequence[float],
                         class_names: Sequence[str], path: os.PathLike, columns: int = 8) -> Path:
    """A grid of images, each titled with its true and predicted class and the confidence, framed green with a
    check mark when right and red with a cross when wrong.

    Args:
        images: (N, H, W, 3) or (N, H, W) array of floats in [0, 1].
        true: True class index of each image.
        predicted: Predicted class index of each image.
        confidence: Max softmax probability of each prediction.
        class_names: Name of each class index.
        path: Output PNG path.
        columns: Images per row.

    Returns:
        The path written.
    """
    count = len(images)
    if count == 0 or not len(true) == len(predicted) == len(confidence) == count:
        raise ValueError(f'need N > 0 images with N labels, predictions and confidences, got {count}, {len(true)}, '
                         f'{len(predicted)} and {len(confidence)}.')
    plt = require_matplotlib()
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.55 * columns, 2.05 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= count:
            axis.axis('off')
            continue
        right = int(true[index]) == int(predicted[index])
        color = 'tab:green' if right else 'tab:red'
        axis.imshow(images[index], cmap='gray' if images[index].ndim == 2 else None, vmin=0, vmax=1,
                    interpolation='nearest')
        for spine in axis.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(3)
        axis.set_title(f'{"✓" if right else "✗"} pred {class_names[int(predicted[index])]} ({confidence[index]:.2f})\n'
                       f'true: {class_names[int(true[index])]}', fontsize=7, color=color)
    figure.suptitle('prediction (confidence), true class; green ✓ right, red ✗ wrong', fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


# ----------------------------------------------------------------------------------------------------------------
# Distribution shift

def plot_shift(report: Mapping[str, Any], path: os.PathLike, title: str = '') -> Path:
    """Accuracy and ECE per severity across corruptions, a box per severity beside the clean value (the figure of
    Y. Ovadia et al., NeurIPS 2019, https://arxiv.org/abs/1906.02530).

    Args:
        report: A report of :func:`cfl_timm.metrics.shift.shift_report` (``clean``, ``corruptions``).
        path: Output PNG path.
        title: Figure title (e.g. the set's name: "CIFAR-10-C" or "CIFAR-10-C-style, generated").

    Returns:
        The path written.
    """
    severities = sorted({s for cells in report['corruptions'].values() for s in cells}, key=int)
    if not severities:
        raise ValueError('plot_shift needs a report with at least one corrupted set.')
    plt = require_matplotlib()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    positions = list(range(1, len(severities) + 1))
    for axis, key, label in zip(axes, ('top1', 'ece'), ('top-1 accuracy (%)', 'ECE')):
        boxes = [[cells[s][key] for cells in report['corruptions'].values() if s in cells] for s in severities]
        axis.boxplot(boxes, positions=positions, widths=0.6, whis=(0, 100))
        axis.axhline(report['clean'][key], color='tab:blue', linestyle='--', linewidth=1, label='clean')
        axis.plot(positions, [sum(b) / len(b) for b in boxes], 'o', color='tab:red', markersize=4,
                  label='mean over corruptions')
        axis.set_xticks(positions, [str(s) for s in severities])
        axis.set_xlabel('severity (box: corruptions, whiskers: min-max)')
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


# ----------------------------------------------------------------------------------------------------------------
# Command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m cfl_timm.plotting',
                                     description='Draw reliability-diagram evolution or training curves of runs.')
    commands = parser.add_subparsers(dest='command', required=True)
    evolution = commands.add_parser('reliability', help='reliability diagrams at chosen epochs, one row per run')
    evolution.add_argument('runs', nargs='+', metavar='RUN_DIR', help='train.py run folders (reliability.jsonl)')
    evolution.add_argument('--epochs', type=int, nargs='+', default=None, metavar='E',
                           help='epochs to draw (default: 5 evenly spaced, first and last included)')
    evolution.add_argument('--labels', nargs='+', default=None, metavar='NAME', help='row labels')
    evolution.add_argument('--out', required=True, metavar='PNG', help='output PNG')
    curves = commands.add_parser('curves', help='loss, top-1, ECE, lr and cyclical schedules of runs')
    curves.add_argument('runs', nargs='+', metavar='RUN', help='train.py run folders or summary.csv files')
    curves.add_argument('--labels', nargs='+', default=None, metavar='NAME', help='legend labels')
    curves.add_argument('--out', required=True, metavar='PNG', help='output PNG')
    run = commands.add_parser('run', help="a train.py run's pictures (curves, ECE vs accuracy, evidence) into it")
    run.add_argument('run_dir', metavar='RUN_DIR', help='train.py run folder (summary.csv)')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == 'reliability':
            written = plot_reliability_evolution(args.runs, args.out, epochs=args.epochs, labels=args.labels)
        elif args.command == 'run':
            pictures, skipped = plot_run(args.run_dir)
            for line in skipped:
                print(line)
            if not pictures:
                raise ValueError(f'no picture drawn in {args.run_dir}.')
            written = pictures[0].parent
        else:
            written = plot_training_curves(args.runs, args.out, labels=args.labels)
    except (ValueError, ImportError) as error:
        parser.error(str(error))
    print(written)
    return written


if __name__ == '__main__':
    main()
