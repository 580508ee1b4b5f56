"""Reliability diagrams: per-bin accuracy against confidence, with the gap shaded and the bin counts shown.

Reference: C. Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, https://arxiv.org/abs/1706.04599
(Figure 1). Plotting needs matplotlib, an optional extra (``pip install cfl-timm[plot]`` or ``pip install
matplotlib``).
"""
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ['plot_reliability_diagrams', 'require_matplotlib']


def require_matplotlib():
    """Import matplotlib with a non-interactive backend, or raise ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError('reliability diagrams need matplotlib, an optional extra: pip install matplotlib '
                          '(or run validate.py with --no-plot).') from error
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _draw(axis, reliability: Mapping[str, Sequence[float]], metrics: Mapping[str, float], title: str) -> None:
    edges = reliability['edges']
    width = edges[1] - edges[0]
    lefts = edges[:-1]
    accuracy = [0.0 if math.isnan(a) else a for a in reliability['accuracy']]
    confidence = [lefts[i] + width / 2 if math.isnan(c) else c for i, c in enumerate(reliability['confidence'])]
    counts = [int(n) for n in reliability['count']]
    axis.bar(lefts, accuracy, width=width, align='edge', color='tab:blue', edgecolor='black', linewidth=0.5,
             label='accuracy')
    gap_bottom = [min(a, c) for a, c in zip(accuracy, confidence)]
    gap_height = [abs(c - a) if n else 0.0 for a, c, n in zip(accuracy, confidence, counts)]
    axis.bar(lefts, gap_height, bottom=gap_bottom, width=width, align='edge', color='tab:red', alpha=0.3,
             edgecolor='tab:red', hatch='//', linewidth=0.5, label='gap to confidence')
    axis.plot([0, 1], [0, 1], linestyle='--', color='gray', label='perfect calibration')
    for left, n in zip(lefts, counts):
        if n:
            axis.text(left + width / 2, 1.01, str(n), ha='center', va='bottom', fontsize=6, rotation=90)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.12)
    axis.set_xlabel('confidence (max softmax probability)')
    axis.set_ylabel('accuracy')
    axis.set_title(f"{title}\nECE {metrics['ece']:.4f}  MCE {metrics['mce']:.4f}  NLL {metrics['nll']:.4f}",
                   fontsize=9)
    axis.legend(loc='lower right', fontsize=7, framealpha=0.9)


def plot_reliability_diagrams(panels: Sequence[tuple[str, Mapping, Mapping]], path: os.PathLike) -> Path:
    """Write side-by-side reliability diagrams as a PNG, atomically (temp file + rename).

    Args:
        panels: (title, reliability, metrics) per panel, reliability as returned by
            ``CalibrationMeter.reliability()`` and metrics by ``CalibrationMeter.compute()``. Bin counts are printed
            above the bars.
        path: Output PNG path.

    Returns:
        The path written.
    """
    if not panels:
        raise ValueError('plot_reliability_diagrams needs at least one panel.')
    plt = require_matplotlib()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.6), squeeze=False)
    for axis, (title, reliability, metrics) in zip(axes[0], panels):
        _draw(axis, reliability, metrics, title)
    figure.tight_layout()
    handle, temporary = tempfile.mkstemp(suffix='.png', dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o644)  # mkstemp creates 0600; the PNG is an ordinary shared output
    try:
        figure.savefig(temporary, dpi=110, format='png')
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
