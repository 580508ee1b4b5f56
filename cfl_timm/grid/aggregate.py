"""Aggregates of a grid, rebuilt from whatever per-run results exist.

Grids that score their last checkpoint (``score_split``, the study protocols): :func:`aggregate_study` reads
``RESULTS_DIR/<grid>/runs/<cell>.json`` (one per finished run, written by the grid runner) and writes beside them,
in ``RESULTS_DIR/<grid>/``:

- ``runs.csv``: one row per run (every metric before and after temperature scaling, shot groups);
- ``summary.csv``: per (data setting, method): the number of seeds, mean and sd of each metric, and the
  seed-paired differences against each baseline (mean, sd, t = mean / (sd / sqrt(n)) with n - 1 degrees of
  freedom), between each cyclical schedule and its constant counterpart, and between each focus method (the
  method the study asks about) and every other method of its setting;
- ``table.md``: the same as markdown tables (mean +- sd), headed by how many runs of the grid are done;
- ``plot.png``: top-1 and ECE before / after temperature scaling per method.

When ``cfl-grid evaluate`` wrote evaluation files (``RESULTS_DIR/<grid>/evaluation/<cell>.json``,
:mod:`cfl_timm.grid.evaluation`), ``summary.csv`` gains their ``eval_*`` columns and ``table.md`` three tables per
data setting after its own: the best post-hoc method per loss (chosen by mean test ECE, i.e. generously to post-hoc
calibration) with its seed-paired ECE difference against the first baseline's best and the selective AURC / E-AURC;
the ECE after every post-hoc method; top-1 and ECE under shift per severity with the clean-vs-corrupted MSP AUROC.
Only evaluated runs enter them. Without evaluation files both files are what they were before evaluation existed.

Other grids (a user's grid, the first study ``cpu``): :func:`aggregate` reads the ``done.json`` files of
``WORK_DIR/<grid>/runs/`` and writes ``<grid>_runs.csv``, ``<grid>.csv``, ``<grid>.md`` and ``<grid>.png`` into
``RESULTS_DIR``.

Pairing: runs with the same seed share the initialisation and data order, so differences are taken seed by seed
and only over the seeds both methods have finished.
"""
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional

from cfl_timm.files import atomic_write_bytes, atomic_write_text

from .grid_file import Protocol

__all__ = ['METRICS', 'aggregate', 'aggregate_study', 'evaluation_markdown', 'evaluation_records', 'last_fifth_gain',
           'mean_sd', 'paired', 'plot', 'study_figure', 'study_records', 'write_csv']

# Metrics of the scored split, before temperature scaling and (suffix _ts) after it. Top-1 does not change.
METRICS = ('top1', 'nll', 'brier', 'ece', 'adaptive_ece', 'classwise_ece')
DIFF_METRICS = ('top1', 'nll', 'ece', 'ece_ts', 'classwise_ece')
LABELS = {'top1': 'top-1', 'nll': 'NLL', 'ece': 'ECE', 'ece_ts': 'ECE TS'}


def last_fifth_gain(curve: list[dict[str, Any]], key: str = 'holdout_top1') -> Optional[float]:
    """The study's convergence check: ``key`` after the last epoch minus after four fifths of the epochs.

    The protocols pick their epochs so that this is under one point of held-out top-1 for CE. ``curve`` is a
    result's per-epoch list (``epoch`` counts from 0); with ``--val-interval`` the reference is the last evaluated
    epoch within the first four fifths. None when the curve does not have ``key`` at both points.
    """
    rows = [row for row in curve if isinstance(row.get(key), (int, float))]
    if not rows:
        return None
    num_epochs = rows[-1]['epoch'] + 1
    earlier = [row for row in rows[:-1] if row['epoch'] + 1 <= 0.8 * num_epochs]
    return rows[-1][key] - earlier[-1][key] if earlier else None


def study_records(protocol: Protocol, runs_dir: Path) -> list[dict[str, Any]]:
    """One flat record per result file of ``protocol`` under ``runs_dir``."""
    records = []
    for path in sorted(Path(runs_dir).glob('*.json')):
        payload = json.loads(path.read_text())
        cell, result = payload['cell'], payload['result']
        record: dict[str, Any] = {'method': cell['loss'], 'data': cell['data'], 'seed': cell['seed'],
                                  'epochs': result.get('epochs'), 'train_s': result.get('train_seconds'),
                                  'train_cpu_s': result.get('train_cpu_seconds'),
                                  'last_fifth_gain': last_fifth_gain(result.get('curve', []))}
        for key in METRICS:
            record[key] = result['test'][key]
            if 'test_ts' in result:
                record[f'{key}_ts'] = result['test_ts'][key]
        record['temperature'] = result.get('temperature')
        per_class = result['per_class_top1']
        for group, classes in protocol.shot_groups.get(cell['data'], {}).items():
            record[group] = sum(per_class[c] for c in classes) / len(classes) if classes else float('nan')
        records.append(record)
    return records


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan when undefined)."""
    n = len(values)
    if n == 0:
        return float('nan'), float('nan')
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float('nan')
    return mean, sd


def paired(records: list[dict[str, Any]], data: str, method: str, baseline: str, metric: str) -> dict[str, float]:
    """Seed-paired difference metric(method) - metric(baseline): mean, sd, n and t = mean / (sd / sqrt(n))."""
    base = {r['seed']: r.get(metric) for r in records if r['data'] == data and r['method'] == baseline}
    diffs = [r[metric] - base[r['seed']] for r in records
             if r['data'] == data and r['method'] == method and base.get(r['seed']) is not None
             and r.get(metric) is not None]
    mean, sd = mean_sd(diffs)
    # No t when the differences do not vary (beyond rounding): it would be a division by ~0.
    t = mean / (sd / math.sqrt(len(diffs))) if len(diffs) > 1 and sd > 1e-9 * max(1.0, abs(mean)) else float('nan')
    return {'mean': mean, 'sd': sd, 'n': len(diffs), 't': t}


def _summary_rows(protocol: Protocol, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for data, methods in protocol.grid.items():
        for method in methods:
            group = [r for r in records if r['data'] == data and r['method'] == method]
            if not group:
                continue
            row: dict[str, Any] = {'data': data, 'method': method, 'n_seeds': len(group)}
            metrics = [k for k in group[0] if k not in ('method', 'data', 'seed')]
            for metric in metrics:
                values = [r[metric] for r in group if isinstance(r.get(metric), (int, float))]
                row[f'{metric}_mean'], row[f'{metric}_sd'] = mean_sd(values)
            others = list(protocol.baselines) + [c for cyc, c in protocol.pairs if cyc == method]
            if method in protocol.focus:
                others += [m for m in methods if m not in others and m not in protocol.cyclical_methods]
            for other in others:
                if other == method:
                    continue
                for metric in DIFF_METRICS + tuple(protocol.shot_groups.get(data, {})):
                    if metric not in group[0]:
                        continue
                    for key, value in paired(records, data, method, other, metric).items():
                        row[f'd_{metric}_vs_{other}_{key}'] = value
            rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], float_format: str = '.6g') -> None:
    """Rows (dicts) to CSV atomically; the columns are every key in first-seen order, floats in ``float_format``."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (format(v, float_format) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _fmt(row: dict[str, Any], metric: str, digits: int) -> str:
    mean, sd = row.get(f'{metric}_mean'), row.get(f'{metric}_sd')
    if mean is None or mean != mean:
        return ''
    return f'{mean:.{digits}f} ± {sd:.{digits}f}' if sd == sd else f'{mean:.{digits}f}'


def _fmt_diff(row: dict[str, Any], metric: str, other: str, digits: int) -> str:
    prefix = f'd_{metric}_vs_{other}_'
    if f'{prefix}mean' not in row or row[f'{prefix}n'] == 0:
        return ''
    mean, sd, n, t = (row[f'{prefix}{k}'] for k in ('mean', 'sd', 'n', 't'))
    text = f'{mean:+.{digits}f}'
    if n > 1:
        text += f' ± {sd:.{digits}f}' + (f' (t {t:+.1f})' if t == t else '')
    return text


def _cpu_hours(protocol: Protocol, records: list[dict[str, Any]]) -> str:
    """The finished runs' train.py CPU time, and the whole grid's projected from each setting's mean run."""
    timed = [r for r in records if isinstance(r.get('train_cpu_s'), (int, float))]
    if not timed:
        return ''
    text = f'train.py CPU time of the finished runs: {sum(r["train_cpu_s"] for r in timed) / 3600:.2f} h'
    per_setting = {data: [r['train_cpu_s'] for r in timed if r['data'] == data] for data in protocol.grid}
    if all(per_setting.values()):  # a projection needs at least one timed run of every setting
        projected = sum(sum(t) / len(t) * len(protocol.grid[data]) * len(protocol.seeds)
                        for data, t in per_setting.items())
        text += f'; the whole grid at each setting\'s mean per run: {projected / 3600:.2f} h'
    return text + '. '


def markdown(protocol: Protocol, rows: list[dict[str, Any]], num_done: int, num_cells: int, machine: str,
             records: Optional[list[dict[str, Any]]] = None) -> str:
    lines = [f'Protocol `{protocol.name}`: {protocol.description}; epochs '
             + ', '.join(f'{d} {e}' for d, e in protocol.epochs.items()) + '.'
             + (f' Machine: {machine}.' if machine else ''), '',
             f'**Runs done: {num_done} of {num_cells}** ({len(protocol.seeds)} seeds x '
             f'{sum(len(m) for m in protocol.grid.values())} cells). ' + _cpu_hours(protocol, records or [])
             + 'Mean ± sd over the finished seeds (n); Δ = '
             'seed-paired difference (method minus reference, same initialisation and data order), ± its sd over '
             'seeds, t = mean / (sd / sqrt(n)) with n - 1 degrees of freedom (|t| > 4.30 for p < 0.05 at n = 3). '
             'Last checkpoint, scored on the '
             f'{protocol.score_split} split; TS = after temperature scaling fitted on the held-out split. Top-1 and '
             'shot groups in %, ECE 15 equal-width bins, adaptive ECE 15 equal-mass bins. Last fifth = held-out '
             'top-1 after the last epoch minus after four fifths of the epochs (the convergence check).', '']
    baselines = [b for b in protocol.baselines]
    for data in protocol.grid:
        group = [r for r in rows if r['data'] == data]
        if not group:
            continue
        shots = tuple(protocol.shot_groups.get(data, {}))
        header = (['method', 'n', 'top-1'] + [f'Δ top-1 vs {b}' for b in baselines]
                  + ['NLL', 'NLL TS', 'ECE', 'ECE TS'] + [f'Δ ECE vs {b}' for b in baselines]
                  + ['adaptive ECE', 'classwise ECE', 'Brier', 'T', 'last fifth'])
        lines += [f'**{data}**', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        for row in group:
            cells = [row['method'], str(row['n_seeds']), _fmt(row, 'top1', 2)]
            cells += [_fmt_diff(row, 'top1', b, 2) for b in baselines]
            cells += [_fmt(row, 'nll', 3), _fmt(row, 'nll_ts', 3), _fmt(row, 'ece', 3), _fmt(row, 'ece_ts', 3)]
            cells += [_fmt_diff(row, 'ece', b, 3) for b in baselines]
            cells += [_fmt(row, 'adaptive_ece', 3), _fmt(row, 'classwise_ece', 4), _fmt(row, 'brier', 3),
                      _fmt(row, 'temperature', 2), _fmt(row, 'last_fifth_gain', 1)]
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
        if shots:
            lines += [f'Shot groups of {data} (classes by training images): '
                      + '; '.join(f'{s} = classes {", ".join(map(str, c))}'
                                  for s, c in protocol.shot_groups[data].items()) + '.', '']
            header = (['method', 'n'] + list(shots)
                      + [f'Δ {s} vs {b}' for b in baselines for s in shots])
            lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
            for row in group:
                cells = [row['method'], str(row['n_seeds'])] + [_fmt(row, s, 1) for s in shots]
                cells += [_fmt_diff(row, s, b, 1) for b in baselines for s in shots]
                lines.append('| ' + ' | '.join(cells) + ' |')
            lines.append('')
        focus_rows = [row for row in group if row['method'] in protocol.focus]
        if focus_rows:
            metrics = (('top1', 2), ('nll', 3), ('ece', 3), ('ece_ts', 3)) + tuple((s, 1) for s in shots)
            lines += [f'**{data}: each focus method minus every other loss** (seed-paired)', '',
                      '| method | minus | n | ' + ' | '.join(f'Δ {LABELS.get(m, m)}' for m, _ in metrics) + ' |',
                      '|' + '---|' * (3 + len(metrics))]
            for row in focus_rows:
                for other in (r['method'] for r in group):
                    if other == row['method'] or f'd_top1_vs_{other}_n' not in row:
                        continue
                    lines.append(f"| {row['method']} | {other} | {row[f'd_top1_vs_{other}_n']} | "
                                 + ' | '.join(_fmt_diff(row, m, other, d) for m, d in metrics) + ' |')
            lines.append('')
    pair_rows = [(cyc, const, r) for cyc, const in protocol.pairs for r in rows if r['method'] == cyc]
    if pair_rows:
        lines += ['**Cyclical schedule minus its constant counterpart** (seed-paired)', '',
                  '| data | cyclical | constant | n | Δ top-1 | Δ NLL | Δ ECE | Δ ECE TS |',
                  '|---|---|---|---|---|---|---|---|']
        for cyc, const, row in pair_rows:
            lines.append(f"| {row['data']} | {cyc} | {const} | {row.get(f'd_top1_vs_{const}_n', 0)} | "
                         + ' | '.join(_fmt_diff(row, m, const, d) for m, d in
                                      (('top1', 2), ('nll', 3), ('ece', 3), ('ece_ts', 3))) + ' |')
        lines.append('')
    return '\n'.join(lines)


def study_figure(protocol: Protocol, rows: list[dict[str, Any]], num_done: int, num_cells: int):
    """The aggregate's figure: per data setting, top-1 bars (± sd) above ECE bars (after TS as markers)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    settings = [d for d in protocol.grid if any(r['data'] == d for r in rows)]
    fig, axes = plt.subplots(2, len(settings), figsize=(5.5 * len(settings), 6.5), squeeze=False)
    for col, data in enumerate(settings):
        group = [r for r in rows if r['data'] == data]
        x = list(range(len(group)))
        colours = ['#888888' if r['method'] in protocol.baselines else '#cc6677' if r['method'].startswith('cfl')
                   else '#44aa99' if r['method'].startswith('ce_') else '#4477aa' for r in group]
        sd = [r['top1_sd'] if r['top1_sd'] == r['top1_sd'] else 0.0 for r in group]
        top, bottom = axes[0][col], axes[1][col]
        top.bar(x, [r['top1_mean'] for r in group], yerr=sd, capsize=3, color=colours)
        # A bar's length is its value: the axis starts at 0, never at the lowest bar.
        top.set_ylim(0, max(r['top1_mean'] + s for r, s in zip(group, sd)) + 1)
        top.set_title(data)
        top.set_ylabel('test top-1 (%)')
        bottom.bar(x, [r['ece_mean'] for r in group], color=colours, label='before TS')
        if 'ece_ts_mean' in group[0]:
            bottom.plot(x, [r['ece_ts_mean'] for r in group], 'kD', markersize=4, label='after TS')
        bottom.set_ylim(bottom=0)
        bottom.set_ylabel('test ECE')
        bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.set_xticks(x)
            ax.set_xticklabels([r['method'] for r in group], rotation=60, ha='right', fontsize=7)
    fig.suptitle(f'{protocol.name}: mean ± sd over seeds ({num_done} of {num_cells} runs done)', fontsize=10)
    fig.tight_layout()
    return fig


def plot(protocol: Protocol, rows: list[dict[str, Any]], path: Path, num_done: int, num_cells: int) -> None:
    """:func:`study_figure` written to ``path`` as a PNG, atomically."""
    import matplotlib.pyplot as plt
    fig = study_figure(protocol, rows, num_done, num_cells)
    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=100, format='png'))
    finally:
        plt.close(fig)


# ------------------------------------------------------------- the evaluation pass (cfl-grid evaluate)

SEVERITY_KEYS = ('1', '2', '3', '4', '5')


def evaluation_records(evaluation_dir: Path) -> list[dict[str, Any]]:
    """One flat record per evaluation file under ``evaluation_dir``: ``ece`` / ``nll`` / ``top1`` raw and after
    each post-hoc method (suffix ``_<method>``), ``aurc``, ``eaurc`` and, with a shift section, ``shift_clean_*``,
    ``shift_s<severity>_*`` (top1, ece: mean over corruptions) and ``shift_msp_auroc`` (mean over every set)."""
    records = []
    for path in sorted(Path(evaluation_dir).glob('*.json')):
        payload = json.loads(path.read_text())
        cell = payload['cell']
        record: dict[str, Any] = {'method': cell['loss'], 'data': cell['data'], 'seed': cell['seed']}
        for key in ('ece', 'nll', 'top1'):
            record[key] = payload['raw'][key]
            for method, section in payload['posthoc'].items():
                record[f'{key}_{method}'] = section['metrics'][key]
        record.update(aurc=payload['selective']['aurc'], eaurc=payload['selective']['eaurc'])
        shift = payload.get('shift')
        if shift:
            record.update(shift_clean_top1=shift['clean']['top1'], shift_clean_ece=shift['clean']['ece'])
            for severity, means in shift['mean_per_severity'].items():
                record.update({f'shift_s{severity}_top1': means['top1'], f'shift_s{severity}_ece': means['ece']})
            record['shift_msp_auroc'] = shift['mean']['msp_auroc']
            record['shift_mean_ece'] = shift['mean']['ece']
        shift_ts = payload.get('shift_ts')
        if shift_ts:
            record['shift_ts_clean_ece'] = shift_ts['clean']['ece']
            for severity, means in shift_ts['mean_per_severity'].items():
                record[f'shift_ts_s{severity}_ece'] = means['ece']
            record['shift_ts_mean_ece'] = shift_ts['mean']['ece']
        records.append(record)
    return records


def _evaluation_rows(protocol: Protocol, records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(data, method) -> its ``eval_*`` summary columns; adds ``best_ece`` (the ECE after the row's best post-hoc
    method) to each record for the seed-paired differences."""
    rows = {}
    for data, methods in protocol.grid.items():
        for method in methods:
            group = [r for r in records if r['data'] == data and r['method'] == method]
            if not group:
                continue
            row: dict[str, Any] = {'eval_n': len(group)}
            keys = list(dict.fromkeys(k for r in group for k in r if k not in ('method', 'data', 'seed')))
            for key in keys:
                values = [r[key] for r in group if isinstance(r.get(key), (int, float))]
                row[f'eval_{key}_mean'], row[f'eval_{key}_sd'] = mean_sd(values)
            means = {k[len('ece_'):]: row[f'eval_{k}_mean'] for k in keys
                     if k.startswith('ece_') and row[f'eval_{k}_mean'] == row[f'eval_{k}_mean']}
            if means:
                best = min(means, key=means.get)
                row['eval_best_posthoc'] = best
                for key in ('ece', 'nll', 'top1'):
                    row[f'eval_best_{key}_mean'], row[f'eval_best_{key}_sd'] = (row[f'eval_{key}_{best}_mean'],
                                                                                row[f'eval_{key}_{best}_sd'])
                for r in group:
                    r['best_ece'] = r.get(f'ece_{best}')
            rows[(data, method)] = row
    reference = protocol.baselines[0] if protocol.baselines else None
    for (data, method), row in rows.items():
        if reference is not None and method != reference and (data, reference) in rows:
            for metric in ('best_ece', 'shift_mean_ece', 'shift_ts_mean_ece'):
                if all(metric in r for r in records if r['data'] == data and r['method'] in (method, reference)):
                    for key, value in paired(records, data, method, reference, metric).items():
                        row[f'd_eval_{metric}_vs_{reference}_{key}'] = value
    return rows


def evaluation_markdown(protocol: Protocol, rows: dict[tuple[str, str], dict[str, Any]], num_evaluated: int,
                        num_done: int) -> str:
    """The evaluation tables of ``table.md`` (see the module docstring), from :func:`_evaluation_rows`'s rows."""
    reference = protocol.baselines[0] if protocol.baselines else None
    # The grid's post-hoc methods, then any other that an evaluation file holds (evaluated under another config).
    found = [key[len('eval_ece_'):-len('_mean')] for row in rows.values() for key in row
             if key.startswith('eval_ece_') and key.endswith('_mean')]
    methods = list(dict.fromkeys([*(protocol.evaluation.posthoc if protocol.evaluation else ()),
                                  *(m for m in found if m)]))
    shift = protocol.evaluation.shift if protocol.evaluation else None
    lines = [f'**Evaluation** (`cfl-grid evaluate`): {num_evaluated} of the {num_done} finished runs evaluated; only '
             'they enter the tables below (n = evaluated seeds). Post-hoc methods fitted on each run\'s held-out '
             f'split, applied to the {protocol.score_split} split; ECE 15 equal-width bins; AURC / E-AURC: '
             'selective risk of the uncalibrated model (Geifman et al. 2019).', '']
    for data in protocol.grid:
        group = [(method, rows[(data, method)]) for method in protocol.grid[data] if (data, method) in rows]
        if not group:
            continue
        header = ['method', 'n', 'ECE raw', 'ECE TS', 'best post-hoc', 'its ECE', 'its NLL', 'its top-1',
                  f'Δ ECE (best post-hoc) vs {reference}' if reference else 'Δ ECE (best post-hoc)', 'AURC', 'E-AURC']
        versus = (f' minus the ECE of {reference} after its own best method (seed-paired)' if reference else '')
        lines += [f'**{data}: after the best post-hoc method.** The best post-hoc method of a loss is the one with '
                  'the lowest mean test ECE over its seeds: it is chosen on the test split, which is generous to '
                  f'post-hoc calibration. Δ = that ECE{versus}.', '',
                  '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        for method, row in group:
            cells = [method, str(row['eval_n']), _fmt(row, 'eval_ece', 3), _fmt(row, 'eval_ece_ts', 3),
                     row.get('eval_best_posthoc', ''), _fmt(row, 'eval_best_ece', 3), _fmt(row, 'eval_best_nll', 3),
                     _fmt(row, 'eval_best_top1', 2),
                     _fmt_diff(row, 'eval_best_ece', reference, 3) if reference else '',
                     _fmt(row, 'eval_aurc', 3), _fmt(row, 'eval_eaurc', 3)]
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines += ['', f'**{data}: ECE after each post-hoc method** (mean ± sd over seeds)', '',
                  '| method | n | raw | ' + ' | '.join(methods) + ' |', '|' + '---|' * (3 + len(methods))]
        for method, row in group:
            lines.append(f"| {method} | {row['eval_n']} | {_fmt(row, 'eval_ece', 3)} | "
                         + ' | '.join(_fmt(row, f'eval_ece_{m}', 3) for m in methods) + ' |')
        lines.append('')
        shifted = [(method, row) for method, row in group if 'eval_shift_clean_top1_mean' in row]
        if shifted:
            what = (f'the set generated from the {shift.split} split, {len(shift.corruptions)} corruptions x 5 '
                    f'severities, {shift.num_samples or "all"} images of each' if shift else 'the shift set')
            lines += [f'**{data}: under shift** ({what}): top-1 % / ECE, the mean over the corruptions, then mean ± '
                      'sd over seeds; clean = the clean images of the same split; MSP AUROC = clean vs corrupted '
                      'by max softmax probability, mean over every (corruption, severity).', '',
                      '| method | n | clean | ' + ' | '.join(f'severity {s}' for s in SEVERITY_KEYS)
                      + ' | MSP AUROC |', '|' + '---|' * (4 + len(SEVERITY_KEYS))]
            for method, row in shifted:
                cells = [f"{_fmt(row, f'eval_shift_{s}_top1', 2)} / {_fmt(row, f'eval_shift_{s}_ece', 3)}"
                         for s in ('clean', *(f's{k}' for k in SEVERITY_KEYS))]
                lines.append(f"| {method} | {row['eval_n']} | " + ' | '.join(cells)
                             + f" | {_fmt(row, 'eval_shift_msp_auroc', 3)} |")
            lines.append('')
        scaled = [(method, row) for method, row in group if 'eval_shift_ts_mean_ece_mean' in row]
        if scaled:
            versus = f'Δ mean vs {reference}' if reference else 'Δ mean'
            lines += [f'**{data}: ECE under shift, raw and after temperature scaling** (the temperature fitted on '
                      'the held-out split, in distribution, applied to every shifted set: does it survive the '
                      'shift?): mean over the corruptions, then mean ± sd over seeds; mean = over every '
                      f'(corruption, severity); Δ seed-paired.', '',
                      '| method | n | ' + ' | '.join(f'severity {s} raw / TS' for s in SEVERITY_KEYS)
                      + f' | mean raw | mean TS | {versus} raw | {versus} TS |',
                      '|' + '---|' * (6 + len(SEVERITY_KEYS))]
            for method, row in scaled:
                cells = [f"{_fmt(row, f'eval_shift_s{s}_ece', 3)} / {_fmt(row, f'eval_shift_ts_s{s}_ece', 3)}"
                         for s in SEVERITY_KEYS]
                diffs = [_fmt_diff(row, metric, reference, 3) if reference else ''
                         for metric in ('eval_shift_mean_ece', 'eval_shift_ts_mean_ece')]
                lines.append(f"| {method} | {row['eval_n']} | " + ' | '.join(cells)
                             + f" | {_fmt(row, 'eval_shift_mean_ece', 3)} | {_fmt(row, 'eval_shift_ts_mean_ece', 3)}"
                             + ' | ' + ' | '.join(diffs) + ' |')
            lines.append('')
    return '\n'.join(lines)


def aggregate_study(protocol: Protocol, results_dir: Path, machine: str = '',
                    out_dir: Optional[Path] = None) -> dict[str, Path]:
    """Rebuild ``runs.csv``, ``summary.csv``, ``table.md`` and ``plot.png`` of ``protocol`` from its result files
    in ``results_dir/<protocol>/runs/``; returns their paths."""
    out_dir = Path(out_dir or Path(results_dir) / protocol.name)
    records = study_records(protocol, out_dir / 'runs')
    if not records:
        raise ValueError(f'No finished runs of protocol {protocol.name} under {out_dir / "runs"}.')
    names = {c.name for c in protocol.cells()}
    num_done = sum(1 for r in records if f"{r['data']}__{r['method']}__s{r['seed']}" in names)
    rows = _summary_rows(protocol, records)
    paths = {'runs': out_dir / 'runs.csv', 'summary': out_dir / 'summary.csv', 'md': out_dir / 'table.md',
             'png': out_dir / 'plot.png'}
    evaluated = evaluation_records(out_dir / 'evaluation')
    evaluation_rows = _evaluation_rows(protocol, evaluated)
    write_csv(paths['runs'], records)
    write_csv(paths['summary'], [{**row, **evaluation_rows.get((row['data'], row['method']), {})} for row in rows])
    text = markdown(protocol, rows, num_done, len(names), machine, records)
    if evaluation_rows:
        text += evaluation_markdown(protocol, evaluation_rows, len(evaluated), num_done)
    atomic_write_text(paths['md'], text)
    plot(protocol, rows, paths['png'], num_done, len(names))
    return paths


# ------------------------------------------------ grids without a scored split (done.json in the work folder)


def run_records(protocol: Protocol, runs_dir: Path) -> list[dict[str, Any]]:
    """One flat record per finished cell (``done.json``), with the shot-group accuracies of its data setting."""
    records = []
    for done in sorted(Path(runs_dir).glob('*/done.json')):
        payload = json.loads(done.read_text())
        cell, result = payload['cell'], payload['result']
        record = {'loss': cell['loss'], 'data': cell['data'], 'seed': cell['seed'], 'top1': result['top1'],
                  'ece': result['eval_ece'], 'nll': result['eval_nll'],
                  'wall_s': result.get('train_seconds', payload['wall_seconds']), 'epochs': result['epochs']}
        per_class = result['per_class_top1']
        for group, classes in protocol.shot_groups.get(cell['data'], {}).items():
            record[group] = sum(per_class[c] for c in classes) / len(classes) if classes else float('nan')
        for c, value in enumerate(per_class):
            record[f'class{c}'] = value
        records.append(record)
    return records


RUN_METRICS = ('top1', 'many', 'medium', 'few', 'ece', 'nll', 'wall_s')


def aggregate(protocol: Protocol, runs_dir: Path, results_dir: Path, machine: str = '') -> dict[str, Path]:
    """Write ``<protocol>_runs.csv`` (per run), ``<protocol>.csv`` (mean/sd), ``<protocol>.md`` and ``.png``."""
    records = run_records(protocol, runs_dir)
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
            for metric in RUN_METRICS:
                row[f'{metric}_mean'], row[f'{metric}_sd'] = mean_sd([r[metric] for r in group if metric in r])
            rows.append(row)
    for row in rows:
        for baseline in BASELINES:
            row[f'd_top1_vs_{baseline}_mean'], row[f'd_top1_vs_{baseline}_sd'] = paired_difference(
                records, row['data'], row['loss'], baseline)
    write_csv(paths['csv'], rows, float_format='.4f')
    atomic_write_text(paths['md'], markdown_table(protocol, rows, machine))
    summary_plot(protocol, rows, paths['png'])
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


def summary_plot(protocol: Protocol, rows: list[dict[str, Any]], path: Path) -> None:
    """:func:`summary_figure` written to ``path`` as a PNG, atomically."""
    import matplotlib.pyplot as plt

    fig = summary_figure(protocol, rows)
    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=110, format='png'))
    finally:
        plt.close(fig)
