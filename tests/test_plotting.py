"""Axes of the training-curves and study plots (scales and limits read from matplotlib, not from pixels)."""
import csv
import math

import pytest

pytest.importorskip('matplotlib')

from cfl_timm.plotting import require_matplotlib, training_curves_figure  # noqa: E402


def _write_summary(path, rows):
    with open(path, 'w', newline='') as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cyclical_rows(eta_floor: float):
    # One cycle of a cyclical schedule: eta from 1 down to eta_floor and back, weight decay 1e-4 .. 1e-3.
    rows = []
    for epoch in range(9):
        phase = abs(epoch - 4) / 4
        rows.append({'epoch': epoch, 'train_loss': 2.0 - 0.1 * epoch, 'eval_loss': 2.1 - 0.1 * epoch,
                     'eval_top1': 30 + 5 * epoch, 'eval_ece': 0.1, 'eval_nll': 1.5, 'lr': 0.1,
                     'eta': eta_floor + (1 - eta_floor) * phase, 'weight_decay': 1e-4 + 9e-4 * (1 - phase)})
    return rows


def _schedule_twin(figure):
    schedules = next(axis for axis in figure.axes if axis.get_title() == 'schedules')
    twins = [axis for axis in figure.axes if axis is not schedules and axis.bbox.bounds == schedules.bbox.bounds]
    assert len(twins) == 1
    return twins[0]


def _axes_fraction(axis, value: float) -> float:
    """Where ``value`` lies on the axis height, 0 = bottom, 1 = top (through the axis scale)."""
    low, high = (axis.transScale.transform((0, v))[1] for v in axis.get_ylim())
    return (axis.transScale.transform((0, value))[1] - low) / (high - low)


@pytest.mark.parametrize('eta_floor, scale', [(0.0, 'symlog'), (0.05, 'log')])
def test_weight_decay_variation_is_visible_beside_eta(tmp_path, eta_floor, scale):
    summary = _write_summary(tmp_path / 'summary.csv', _cyclical_rows(eta_floor))
    figure = training_curves_figure([summary], labels=['cyc'])
    try:
        twin = _schedule_twin(figure)
        assert twin.get_yscale() == scale
        low, high = twin.get_ylim()
        assert low <= 1e-4 and high >= 1.0  # both ends of weight decay and the top of eta
        # 1e-4 and 1e-3 are a visible distance apart (on a linear 0..1 axis they would be 0.09% of the height).
        gap = _axes_fraction(twin, 1e-3) - _axes_fraction(twin, 1e-4)
        assert gap > 0.1, gap
        weight_decay = next(line for line in twin.get_lines() if line.get_label() == 'cyc: weight_decay')
        assert min(weight_decay.get_ydata()) == pytest.approx(1e-4)
        assert max(weight_decay.get_ydata()) == pytest.approx(1e-3)
    finally:
        require_matplotlib().close(figure)


def test_schedules_of_one_magnitude_stay_linear(tmp_path):
    rows = _cyclical_rows(0.5)
    for row in rows:
        row['weight_decay'] = 0.0
        row['eta'] = max(row['eta'], 0.5)
    figure = training_curves_figure([_write_summary(tmp_path / 'summary.csv', rows)])
    try:
        assert _schedule_twin(figure).get_yscale() == 'linear'
        assert not math.isnan(_schedule_twin(figure).get_ylim()[0])
    finally:
        require_matplotlib().close(figure)


def _read_rows(path):
    def value(text):
        try:
            return float(text)
        except ValueError:
            return text
    with open(path, newline='') as stream:
        return [{k: value(v) for k, v in row.items() if v != ''} for row in csv.DictReader(stream)]


def test_study_bar_charts_start_at_zero():
    # The committed aggregates of both studies (read only): their lowest top-1 is far above 0, so an axis fitted to
    # the bars would start well above 0 and exaggerate every difference.
    from pathlib import Path

    from cfl_timm.grid.aggregate import study_figure, summary_figure
    from cfl_timm.grid.grid_file import load_protocol
    results = Path(__file__).resolve().parents[1] / 'bench' / 'results'
    study_rows = _read_rows(results / 'study-cpu' / 'summary.csv')
    cpu_rows = _read_rows(results / 'cpu.csv')
    assert min(r['top1_mean'] for r in study_rows) > 12 and min(r['top1_mean'] for r in cpu_rows) > 12
    plt = require_matplotlib()
    for figure in (study_figure(load_protocol('study-cpu'), study_rows, 72, 72),
                   summary_figure(load_protocol('cpu'), cpu_rows)):
        try:
            bar_axes = [axis for axis in figure.axes if axis.patches]
            assert bar_axes
            for axis in bar_axes:
                low, high = axis.get_ylim()
                assert low == 0, (axis.get_title(), axis.get_ylabel(), low)
                assert high >= max(patch.get_height() for patch in axis.patches)
        finally:
            plt.close(figure)
