"""Model-free evaluation of saved logits: calibration, post-hoc calibrators, OOD detection, selective
classification and bootstrap intervals, as one JSON document.

Run as ``python -m cfl_timm.evaluate --logits TEST.npz [--fit HOLDOUT.npz] [--ood NAME=FILE.npz ...]``. Every
file is a saved-logits file (``validate.py --save-logits``, :mod:`cfl_timm.metrics.logits_file`); an OOD file's
``logits`` are used, and the ``ood_logits`` saved in the ``--logits`` file form the OOD set named by its
``ood_name`` (``saved`` when it has none). The definitions are those of :mod:`cfl_timm.metrics`; see
``docs/evaluation.md`` ("Evaluating saved logits") for the JSON layout. validate.py evaluates through
:func:`evaluate_logits` too, so its JSON holds the same sections for the same logits. ``--plot-dir`` draws the
reliability diagrams (before and after each post-hoc method) and the risk-coverage curves
(:mod:`cfl_timm.plotting`).

References: C. Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, https://arxiv.org/abs/1706.04599;
M. Kull et al., "Beyond temperature scaling", NeurIPS 2019, https://arxiv.org/abs/1910.12656; D. Hendrycks and
K. Gimpel, ICLR 2017, https://arxiv.org/abs/1610.02136; Y. Geifman et al., ICLR 2019,
https://arxiv.org/abs/1805.08206.
"""
import argparse
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from cfl_timm import plotting
from cfl_timm.files import atomic_write_text
from cfl_timm.metrics import (
    POSTHOC_METHODS,
    CalibrationMeter,
    LogitsFile,
    aurc,
    bootstrap_auroc,
    bootstrap_intervals,
    calibration_direction,
    eaurc,
    fit_posthoc,
    load_logits_npz,
    msp,
    ood_metrics,
    risk_coverage_curve,
)
from cfl_timm.metrics.checks import check_logits, check_targets
from cfl_timm.training import arg_types
from cfl_timm.training.cli_runner import run_cli

__all__ = ['MAX_BOOTSTRAP', 'PLOT_FILES', 'SAVED_OOD_NAME', 'bootstrap_count', 'check_plot_dir', 'cli',
           'evaluate_logits', 'get_args_parser', 'main', 'posthoc_list', 'posthoc_logits', 'write_plots']

SAVED_OOD_NAME = 'saved'  # the OOD set stored in the --logits file itself, when the file names it not
# The pictures --plot-dir holds: reliability diagrams (raw, then after each post-hoc method), risk-coverage curves.
PLOT_FILES = {'reliability': 'reliability.png', 'risk_coverage': 'risk_coverage.png'}


def _fingerprint(logits: torch.Tensor, targets: torch.Tensor) -> tuple[tuple[int, ...], str]:
    digest = hashlib.sha256()
    digest.update(logits.double().contiguous().numpy().tobytes())
    digest.update(targets.long().contiguous().numpy().tobytes())
    return tuple(logits.shape), digest.hexdigest()


def _metrics(logits: torch.Tensor, targets: torch.Tensor, num_bins: int) -> dict[str, Any]:
    """CalibrationMeter's metrics plus the direction of miscalibration and the per-bin gaps (null: empty bin)."""
    meter = CalibrationMeter(logits.shape[1], num_bins)
    meter.update(logits, targets)
    direction = calibration_direction(logits, targets, num_bins)
    return {**meter.compute(), 'over_ece': direction.over, 'under_ece': direction.under,
            'signed_ece': direction.signed,
            'bin_gap': [None if math.isnan(gap) else gap for gap in direction.bin_gap.tolist()],
            'bin_count': direction.bin_count.tolist()}


def _summarise(value: Any) -> Any:
    """A small JSON summary of one fitted parameter: numbers as they are, a tensor as its shape and norms."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return float(value)
        summary = {'shape': list(value.shape), 'norm': float(value.double().norm())}
        if value.dim() == 2 and value.shape[0] == value.shape[1]:
            diagonal = value.double().diagonal()
            summary.update(diagonal_mean=float(diagonal.mean()),
                           off_diagonal_norm=float((value.double() - torch.diag(diagonal)).norm()))
        return summary
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(item, torch.Tensor) for item in value):
            return {'count': len(value), 'sizes': [item.numel() for item in value]}
        return [_summarise(item) for item in value]
    return value


def posthoc_logits(probs: torch.Tensor) -> torch.Tensor:
    """log p as logits (softmax(log p) = p); a zero probability (histogram / isotonic maps) becomes the log of the
    smallest normal float64, so NLL stays finite (about 708 nats) and the argmax is unchanged."""
    return probs.clamp_min(torch.finfo(torch.float64).tiny).log()


def check_plot_dir(plot_dir: Optional[str | Path], flag: str = '--plot-dir') -> None:
    """ValueError when ``plot_dir`` exists as a file, ImportError when matplotlib is missing (checked before any
    work, so that an evaluation does not fail at its last step)."""
    if plot_dir is None:
        return
    if Path(plot_dir).exists() and not Path(plot_dir).is_dir():
        raise ValueError(f'{flag} {plot_dir} is a file: give a folder for the pictures.')
    plotting.require_matplotlib()


def write_plots(plot_dir: str | Path, targets: torch.Tensor, curves: Mapping[str, torch.Tensor],
                metrics: Mapping[str, Mapping[str, Any]], num_bins: int = 15) -> dict[str, str]:
    """The pictures of one evaluation in ``plot_dir`` (created): :data:`PLOT_FILES`.

    Args:
        plot_dir: Output folder.
        targets: (N,) class indices.
        curves: Label -> (N, K) logits: the raw ones, then those after each post-hoc method.
        metrics: Label -> its metrics (``ece``, ``mce``, ``nll``, ``aurc`` printed when present).
        num_bins: Equal-width bins of the reliability diagrams.

    Returns:
        Picture name -> path written.
    """
    folder = Path(plot_dir)
    folder.mkdir(parents=True, exist_ok=True)
    panels, risk_curves = [], {}
    for label, logits in curves.items():
        meter = CalibrationMeter(logits.shape[1], num_bins)
        meter.update(logits, targets)
        panels.append((label, meter.reliability(), metrics[label]))
        coverage, risk = risk_coverage_curve(logits, targets)
        risk_curves[label] = (coverage.tolist(), risk.tolist(), float(risk.mean()))
    return {'reliability': str(plotting.plot_reliability_diagrams(panels, folder / PLOT_FILES['reliability'])),
            'risk_coverage': str(plotting.plot_risk_coverage(risk_curves, folder / PLOT_FILES['risk_coverage']))}


def _check_inputs(logits, targets, fit, ood, posthoc, bootstrap, num_bins):
    """Every input of :func:`evaluate_logits` checked before any work; returns the float64 / int64 tensors."""
    logits = check_logits(logits)
    targets = check_targets(targets, logits.shape[0], logits.shape[1])
    ood = {name: check_logits(values, f'ood logits {name!r}') for name, values in (ood or {}).items()}
    for name, values in ood.items():
        if values.shape[1] != logits.shape[1]:
            raise ValueError(f'ood logits {name!r} have K = {values.shape[1]} classes, the evaluated logits '
                             f'K = {logits.shape[1]}.')
    unknown = [name for name in posthoc if name not in POSTHOC_METHODS]
    if unknown:
        raise ValueError(f'unknown post-hoc method(s) {unknown}: expected from {tuple(POSTHOC_METHODS)}.')
    if posthoc and fit is None:
        raise ValueError('post-hoc calibration needs a held-out fitting split: give --fit (fit=(logits, targets)).')
    if fit is not None:
        fit_logits = check_logits(fit[0], 'fit logits')
        fit_targets = check_targets(fit[1], fit_logits.shape[0], fit_logits.shape[1], 'fit targets')
        if fit_logits.shape[1] != logits.shape[1]:
            raise ValueError(f'--fit logits have K = {fit_logits.shape[1]} classes, the evaluated logits '
                             f'K = {logits.shape[1]}.')
        if _fingerprint(fit_logits, fit_targets) == _fingerprint(logits, targets):
            raise ValueError('--fit holds the evaluated split itself: fit post-hoc methods on a held-out split.')
        fit = (fit_logits, fit_targets)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or not _is_bootstrap_count(bootstrap):
        raise ValueError(f'bootstrap must be 0 (no intervals) or an integer in [2, {MAX_BOOTSTRAP}], '
                         f'got {bootstrap!r}.')
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f'num_bins must be an integer >= 1, got {num_bins!r}.')
    return logits, targets, fit, ood


def evaluate_logits(logits: torch.Tensor, targets: torch.Tensor, *,
                    fit: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                    ood: Optional[Mapping[str, torch.Tensor]] = None, posthoc: Sequence[str] = (),
                    bootstrap: int = 0, seed: int = 0, num_bins: int = 15,
                    plot_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """Every model-free metric of the evaluated logits, as a JSON-ready dict.

    Layout: ``raw`` (:class:`CalibrationMeter` metrics, ``over_ece`` / ``under_ece`` / ``signed_ece``,
    ``bin_gap`` / ``bin_count``), ``selective`` (``aurc``, ``eaurc``), ``posthoc[method]`` (``params``: a summary of
    the fitted parameters; ``metrics``: the ``raw`` metrics after the map), ``ood[name][score]`` (``auroc``,
    ``aupr_in``, ``aupr_out``, ``fpr95``), ``bootstrap`` (``[low, high]`` 95% intervals of top1, nll, brier, ece and
    ``ood[name]['msp_auroc']``). Keys with nothing to report are present and empty.

    Args:
        logits: (N, K) evaluated logits.
        targets: (N,) class indices.
        fit: (logits, targets) of a held-out split the post-hoc methods are fitted on (never the evaluated split).
        ood: Out-of-distribution logits by set name, each (M, K).
        posthoc: Names from :data:`POSTHOC_METHODS`.
        bootstrap: Resamples B for the intervals (0: none, else >= 2).
        seed: Seed of the bootstrap resampling.
        num_bins: Equal-width bins of every binned metric (>= 1).
        plot_dir: Also draw :data:`PLOT_FILES` into this folder (:func:`write_plots`; needs matplotlib).
    """
    check_plot_dir(plot_dir, 'plot_dir')
    logits, targets, fit, ood = _check_inputs(logits, targets, fit, ood, posthoc, bootstrap, num_bins)
    result: dict[str, Any] = {
        'num_samples': logits.shape[0], 'num_classes': logits.shape[1], 'num_bins': num_bins,
        'raw': _metrics(logits, targets, num_bins),
        'selective': {'aurc': aurc(logits, targets), 'eaurc': eaurc(logits, targets)},
        'posthoc': {}, 'ood': {}, 'bootstrap': {}}
    curves = {'uncalibrated': logits}
    for name in posthoc:
        calibrator = fit_posthoc(name, *fit)
        params = {key: _summarise(value) for key, value in calibrator.state_dict().items()
                  if key not in ('name', 'num_classes', 'cv_grid', 'cv_nll')}
        calibrated = posthoc_logits(calibrator.predict_proba(logits))
        result['posthoc'][name] = {'params': params, 'metrics': _metrics(calibrated, targets, num_bins)}
        curves[name] = calibrated
    for name, values in ood.items():
        result['ood'][name] = ood_metrics(logits, values)
    if bootstrap:
        intervals = bootstrap_intervals(logits, targets, bootstrap, seed, num_bins)
        result['bootstrap'] = {key: [low, high] for key, (_, low, high) in intervals.items()}
        result['bootstrap']['ood'] = {}
        for name, values in ood.items():
            _, low, high = bootstrap_auroc(msp(logits), msp(values), bootstrap, seed)
            result['bootstrap']['ood'][name] = {'msp_auroc': [low, high]}
    if plot_dir is not None:
        metrics = {'uncalibrated': {**result['raw'], **result['selective']},
                   **{name: section['metrics'] for name, section in result['posthoc'].items()}}
        write_plots(plot_dir, targets, curves, metrics, num_bins)
    return result


@arg_types.converter
def posthoc_list(text: str) -> list[str]:
    """argparse type of ``--posthoc``: comma-separated names from :data:`POSTHOC_METHODS`, repeats dropped."""
    names = [name.strip() for name in text.split(',') if name.strip()]
    unknown = [name for name in names if name not in POSTHOC_METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f'unknown method(s) {unknown or [text]}; choose from '
                                         f'{", ".join(POSTHOC_METHODS)} (comma-separated).')
    return list(dict.fromkeys(names))


@arg_types.converter
def _ood_entry(text: str) -> tuple[str, str]:
    name, sep, path = text.partition('=')
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f'expected NAME=FILE.npz, got {text!r}.')
    return name, arg_types.existing_file(path)


# The intervals hold B x N resample indices at once (cfl_timm.metrics.bootstrap): 100,000 resamples of a 10,000-image
# set are 8 GB. Intervals at the 95% level settle long before that.
MAX_BOOTSTRAP = 100_000


def _is_bootstrap_count(value: int) -> bool:
    """0 (no intervals) or a resample count in [2, MAX_BOOTSTRAP]."""
    return value == 0 or 2 <= value <= MAX_BOOTSTRAP


@arg_types.converter
def bootstrap_count(text: str) -> int:
    """argparse type of ``--bootstrap``: 0 (no intervals) or a resample count in [2, MAX_BOOTSTRAP]."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not _is_bootstrap_count(value):
        raise argparse.ArgumentTypeError(f'expected 0 (no intervals) or an integer in [2, {MAX_BOOTSTRAP}], '
                                         f'got {text!r}.')
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m cfl_timm.evaluate', allow_abbrev=False,
        description='Evaluate saved logits: calibration, post-hoc calibrators, OOD detection, selective risk.')
    parser.add_argument('--logits', type=arg_types.existing_file, required=True, metavar='TEST.npz',
                        help='evaluated logits and targets (.npz)')
    parser.add_argument('--fit', type=arg_types.existing_file, metavar='HOLDOUT.npz',
                        help='held-out logits and targets to fit --posthoc on')
    parser.add_argument('--ood', type=_ood_entry, action='append', default=[], metavar='NAME=FILE.npz',
                        help='an out-of-distribution set (repeatable)')
    parser.add_argument('--posthoc', type=posthoc_list, default=[], metavar='LIST',
                        help=f'comma-separated post-hoc methods from {",".join(POSTHOC_METHODS)} (needs --fit)')
    parser.add_argument('--bootstrap', type=bootstrap_count, default=0, metavar='B',
                        help='bootstrap resamples for 95%% intervals (0: none, else >= 2)')
    parser.add_argument('--seed', type=arg_types.seed, default=0, help='seed of the bootstrap resampling')
    parser.add_argument('--num-bins', type=arg_types.positive_int, default=15,
                        help='equal-width bins of the binned metrics')
    parser.add_argument('--output-json', type=arg_types.json_file, metavar='PATH',
                        help='write the results here (atomically)')
    parser.add_argument('--plot-dir', type=arg_types.output_folder, metavar='DIR',
                        help=f'draw {" and ".join(PLOT_FILES.values())} into DIR '
                        '(reliability diagrams before / after each --posthoc method, risk-coverage curves)')
    return parser


def _load(flag: str, path: str) -> LogitsFile:
    try:
        return load_logits_npz(path)
    except ValueError as error:
        raise ValueError(f'{flag} {error}') from None


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Load and check every input file first, then evaluate; write ``--output-json`` when given."""
    names = [name for name, _ in args.ood]
    repeated = sorted({name for name in names if names.count(name) > 1 or name == SAVED_OOD_NAME})
    if repeated:
        raise ValueError(f'--ood names must be distinct and not {SAVED_OOD_NAME!r} (the --logits file\'s own '
                         f'ood_logits), got {repeated}.')
    check_plot_dir(args.plot_dir)
    evaluated = _load('--logits', args.logits)
    fit = _load('--fit', args.fit) if args.fit else None
    ood = {name: _load(f'--ood {name}', path).logits for name, path in args.ood}
    if evaluated.ood_logits is not None:
        saved_name = evaluated.ood_name or SAVED_OOD_NAME
        if saved_name in ood:
            raise ValueError(f'--ood {saved_name}: the --logits file holds an OOD set of that name; choose another.')
        ood[saved_name] = evaluated.ood_logits
    result = evaluate_logits(evaluated.logits, evaluated.targets, fit=(fit.logits, fit.targets) if fit else None,
                             ood=ood, posthoc=args.posthoc, bootstrap=args.bootstrap, seed=args.seed,
                             num_bins=args.num_bins, plot_dir=args.plot_dir)
    text = json.dumps(result, indent=2, allow_nan=False) + '\n'
    if args.output_json:
        atomic_write_text(args.output_json, text)
    else:
        print(text, end='')
    return result


def cli(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    return run_cli(get_args_parser(), main, argv)


if __name__ == '__main__':
    cli()
