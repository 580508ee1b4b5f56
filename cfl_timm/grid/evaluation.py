"""``cfl-grid evaluate``: the evaluation pass over a grid's finished runs (post-hoc calibrators, selective risk,
distribution shift), with each run's logits saved.

For every cell whose result file ``RESULTS_DIR/<grid>/runs/<cell>.json`` exists (the run finished and was scored)
and whose evaluation file ``RESULTS_DIR/<grid>/evaluation/<cell>.json`` does not, the model is rebuilt from the
run's ``WORK_DIR/<grid>/runs/<cell>/train/last.pth.tar`` exactly as the scorer rebuilt it
(:func:`cfl_timm.grid.cells.load_run_model`), and:

- the scored split and the run's held-out split are predicted; the scored split's top-1 must equal the one the
  result file records (else the checkpoint is not the scored one, and nothing is written);
- their logits are saved in the documented npz format (:mod:`cfl_timm.metrics.logits_file`) to
  ``WORK_DIR/<grid>/runs/<cell>/logits/test.npz`` and ``holdout.npz``;
- :func:`cfl_timm.evaluate.evaluate_logits` evaluates the scored split with every post-hoc calibrator of the grid's
  ``evaluation.posthoc`` fitted on the held-out split (``raw``, ``selective``, ``posthoc.<method>``);
- with ``evaluation.shift``, the model is evaluated on a CIFAR-10-C-style set generated once from
  ``DATA_DIR/<split>`` into ``WORK_DIR/shift-cache`` (:func:`cfl_timm.shift.generate_shift_sets`), and
  :func:`cfl_timm.metrics.shift_report`'s report is stored under ``shift`` (:func:`cfl_timm.shift.shift_logits`,
  :func:`cfl_timm.shift.shift_evaluation`, as ``python -m cfl_timm.shift`` computes it).

Every file is written atomically; an evaluation file is created only when absent (never overwritten), and it is
written last, so an interrupted pass is resumed by the next one, which skips the cells already evaluated. The pass
may run while the grid still trains: an unfinished cell has no result file yet.

References: C. Guo et al., ICML 2017, https://arxiv.org/abs/1706.04599; M. Kull et al., NeurIPS 2019,
https://arxiv.org/abs/1910.12656; Y. Geifman et al., ICLR 2019, https://arxiv.org/abs/1805.08206; D. Hendrycks and
T. Dietterich, ICLR 2019, https://arxiv.org/abs/1903.12261; Y. Ovadia et al., NeurIPS 2019,
https://arxiv.org/abs/1906.02530.
"""
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, TextIO

from cfl_timm.files import atomic_write_bytes

from .cells import CHECKOUT, holdout_dataset, load_run_model, predict, provenance, split_dataset
from .grid_file import Protocol, ShiftConfig
from .runner import Cell, create_json

__all__ = ['EVALUATION_DIR', 'LOGITS_FILES', 'SHIFT_CACHE', 'ShiftSets', 'evaluate_grid', 'evaluate_run',
           'evaluation_path', 'prepare_shift']

EVALUATION_DIR = 'evaluation'  # RESULTS_DIR/<grid>/evaluation/<cell>.json
LOGITS_FILES = {'test': 'test.npz', 'holdout': 'holdout.npz'}  # in WORK_DIR/<grid>/runs/<cell>/logits/
SHIFT_CACHE = 'shift-cache'  # WORK_DIR/shift-cache: the generated sets, shared by every grid of the work folder
# The evaluate_logits sections an evaluation file keeps (ood and bootstrap are not computed here).
KEPT_SECTIONS = ('num_samples', 'num_classes', 'num_bins', 'raw', 'selective', 'posthoc')


@dataclass(frozen=True)
class ShiftSets:
    """The clean images of the shift split and every corrupted set, prepared once for the whole pass.

    Attributes:
        clean: The clean dataset.
        sets: ``{(corruption, severity): dataset}``.
        described: What the set is (``set``, ``folder`` name, ``seed``, ``synthetic``, ``split``).
        num_samples: Evenly spaced images evaluated of each set (None: all).
    """
    clean: Any
    sets: dict[tuple[str, int], Any]
    described: dict[str, Any]
    num_samples: Optional[int] = None


def evaluation_path(results_dir: Path, protocol: Protocol, cell: Cell) -> Path:
    """``RESULTS_DIR/<grid>/evaluation/<cell>.json``."""
    return Path(results_dir) / protocol.name / EVALUATION_DIR / f'{cell.name}.json'


def _result_path(results_dir: Path, protocol: Protocol, cell: Cell) -> Path:
    return Path(results_dir) / protocol.name / 'runs' / f'{cell.name}.json'


def check_evaluation_inputs(protocol: Protocol, data_dir: Path) -> None:
    """ValueError, before any work, when the grid has nothing to evaluate or a data folder is missing."""
    if protocol.evaluation is None or protocol.score_split is None:
        raise ValueError(f'grid {protocol.name} has no evaluation key (what to evaluate: posthoc methods and an '
                         'optional shift set; docs/grid.md, "Evaluating a grid\'s runs").')
    if not Path(data_dir).is_dir():
        raise ValueError(f'--data-dir {data_dir}: not a folder (the data the grid was trained on).')
    shift = protocol.evaluation.shift
    if shift is not None and not (Path(data_dir) / shift.split).is_dir():
        raise ValueError(f'--data-dir {data_dir} has no {shift.split}/ folder: the grid\'s evaluation.shift.split '
                         'names the clean images of the shift set.')


def prepare_shift(config: ShiftConfig, data_dir: Path, cache_dir: Path, log=lambda message: None) -> ShiftSets:
    """Generate (or find cached) the CIFAR-10-C-style set of ``DATA_DIR/<config.split>`` and open every
    (corruption, severity) of it; every file is checked here, before any model runs."""
    from cfl_timm.data import SEVERITIES, load_corrupted
    from cfl_timm.shift import generate_shift_sets

    clean, _, folder, described = generate_shift_sets(Path(data_dir) / config.split, cache_dir, seed=config.seed,
                                                      corruptions=config.corruptions, log=log)
    sets = {(name, severity): load_corrupted(folder, name, severity)
            for name in config.corruptions for severity in SEVERITIES}
    # The folder's name only (its cache key): a result file names no path of the machine it was made on.
    return ShiftSets(clean, sets, {**described, 'folder': folder.name, 'split': config.split}, config.num_samples)


def _read_result(path: Path) -> dict[str, Any]:
    """The scored result of a cell's result file; ValueError naming the file when it is not one."""
    try:
        result = json.loads(path.read_text())['result']
        checked = {'epoch': int(result['epoch']), 'num_images': int(result['num_images']),
                   'top1': float(result['test']['top1'])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f'{path}: not the result file of a scored run (needs result.epoch, result.num_images and '
                         f'result.test.top1; {type(error).__name__}: {error}).') from None
    return checked


def _save_logits(path: Path, logits, targets, class_names: list[str], split: str) -> None:
    """The logits file ``path``, written atomically; one that exists must hold the same logits (an earlier pass
    stopped after writing it), and is left as it is."""
    import torch

    from cfl_timm.metrics import load_logits_npz, save_logits_npz

    data = save_logits_npz(logits, targets, class_names, split=split, checkpoint='last.pth.tar')
    if path.exists():
        saved = load_logits_npz(path)
        if not (torch.equal(saved.logits, logits) and torch.equal(saved.targets, targets.long())):
            raise ValueError(f'{path} exists and holds other logits than the checkpoint gives now: move it away '
                             'if the run was retrained (a logits file is never overwritten).')
        return
    atomic_write_bytes(path, lambda f: f.write(data))


def evaluate_run(protocol: Protocol, cell: Cell, run_dir: Path, result_path: Path, data_dir: Path,
                 shift: Optional[ShiftSets] = None) -> dict[str, Any]:
    """The evaluation record of one finished run (its logits files are written on the way).

    Args:
        protocol: The grid (its ``score_split`` and ``evaluation``).
        cell: The cell.
        run_dir: ``WORK_DIR/<grid>/runs/<cell>`` (holding ``train/last.pth.tar``).
        result_path: The cell's result file (what the scorer recorded).
        data_dir: The data folder the run was trained and scored on.
        shift: The prepared shift sets (None: no shift evaluation).

    Returns:
        The JSON-ready record: the cell, checkpoint, epoch, what was evaluated, ``raw``, ``selective``,
        ``posthoc.<method>`` (``params``, ``metrics``) and, with ``shift``, ``shift``.

    Raises:
        ValueError: no checkpoint, or one that is not the scored one (other epoch or top-1 than recorded).
    """
    from cfl_timm.data import dataset_class_names
    from cfl_timm.data.holdout import HOLDOUT_FILE
    from cfl_timm.evaluate import evaluate_logits

    config = protocol.evaluation
    recorded = _read_result(result_path)
    train_dir = Path(run_dir) / 'train'
    if not (train_dir / 'last.pth.tar').is_file():
        raise ValueError(f'{cell.name}: {train_dir / "last.pth.tar"} not found; the evaluation needs the run\'s '
                         'checkpoint (run it on the work folder the grid trained in).')
    model, args, data_config, epoch = load_run_model(train_dir)
    if epoch != recorded['epoch']:
        raise ValueError(f'{cell.name}: {train_dir / "last.pth.tar"} is of epoch {epoch}, {result_path} records '
                         f'epoch {recorded["epoch"]}: the checkpoint is not the scored one.')
    test_set = split_dataset(args, data_dir, protocol.score_split)
    test_logits, test_targets = predict(model, test_set, data_config)
    num_images, correct = len(test_targets), int((test_logits.argmax(1) == test_targets).sum())
    top1 = 100.0 * correct / num_images
    # Equal up to the rounding of a percentage: the same number of correct images of the same split.
    if num_images != recorded['num_images'] or abs(top1 - recorded['top1']) >= 50.0 / num_images:
        raise ValueError(f'{cell.name}: the checkpoint gives top-1 {top1:.4f} on {num_images} images of split '
                         f'{protocol.score_split!r}, {result_path} records {recorded["top1"]:.4f} on '
                         f'{recorded["num_images"]}: the checkpoint (or the data folder) is not the scored one.')
    class_names = dataset_class_names(test_set, test_logits.shape[1])
    logits_dir = Path(run_dir) / 'logits'
    _save_logits(logits_dir / LOGITS_FILES['test'], test_logits, test_targets, class_names, protocol.score_split)
    fit, holdout_split = None, None
    if config.posthoc or (train_dir / HOLDOUT_FILE).is_file():
        holdout_set = holdout_dataset(args, train_dir, data_dir)
        fit = predict(model, holdout_set, data_config)
        holdout_split = 'holdout'  # train.py's name for its --holdout images
        _save_logits(logits_dir / LOGITS_FILES['holdout'], *fit, class_names, holdout_split)
    evaluated = evaluate_logits(test_logits, test_targets, fit=fit if config.posthoc else None,
                                posthoc=config.posthoc)
    grid_dir = Path(run_dir).parents[1]  # WORK_DIR/<grid>: the logits files are named relative to it
    record = {'cell': asdict(cell), 'grid': protocol.name, 'checkpoint': 'last.pth.tar', 'epoch': epoch,
              'split': protocol.score_split, 'num_images': num_images, 'top1': top1,
              'num_holdout_images': None if fit is None else len(fit[1]), 'holdout_split': holdout_split,
              'logits': {name: str((logits_dir / file).relative_to(grid_dir)) for name, file in LOGITS_FILES.items()
                         if (logits_dir / file).is_file()},
              'evaluated': {'posthoc': list(config.posthoc),
                            'shift': None if config.shift is None else asdict(config.shift)},
              **{key: evaluated[key] for key in KEPT_SECTIONS}}
    if shift is not None:
        from cfl_timm.shift import shift_evaluation, shift_logits

        (clean, clean_targets), shifted = shift_logits(lambda dataset: predict(model, dataset, data_config),
                                                       shift.clean, shift.sets, shift.num_samples,
                                                       log=lambda message: None)
        record['shift'] = {**shift.described, **shift_evaluation((clean, clean_targets), shifted)}
        if 'ts' in config.posthoc:  # Ovadia et al.'s question: does an in-distribution temperature survive shift?
            temperature = record['posthoc']['ts']['params']['temperature']  # the one fitted on the held-out split
            record['shift_ts'] = shift_evaluation(
                (clean / temperature, clean_targets),
                {name: {severity: (logits / temperature, targets) for severity, (logits, targets) in cells.items()}
                 for name, cells in shifted.items()})
    return record


def evaluate_grid(protocol: Protocol, cells: list[Cell], work_dir: Path, results_dir: Path, data_dir: Path,
                  stream: Optional[TextIO] = None) -> dict[str, list[str]]:
    """One evaluation pass over ``cells``: every cell with a result file and no evaluation file is evaluated
    (:func:`evaluate_run`) and its evaluation file created; the others are skipped.

    Args:
        protocol: The grid, with an ``evaluation`` key.
        cells: The cells to consider (all of the grid's, or those of ``--only`` / ``--seeds``).
        work_dir: The grid's work folder (runs in ``WORK_DIR/<grid>/runs/``, the shift cache in
            ``WORK_DIR/shift-cache``).
        results_dir: The results folder (``RESULTS_DIR/<grid>/runs/`` and ``evaluation/``).
        data_dir: The data folder the grid was trained on.
        stream: Where the progress lines go (default stderr): one per evaluated cell and a summary.

    Returns:
        Cell names by outcome: ``evaluated``, ``done_before`` (an evaluation file exists), ``not_finished`` (no
        result file yet).
    """
    stream = stream if stream is not None else sys.stderr

    def log(message: str) -> None:
        print(f'[cfl-grid evaluate {time.strftime("%H:%M:%S")}] {message}', file=stream, flush=True)

    work_dir, results_dir, data_dir = Path(work_dir), Path(results_dir), Path(data_dir)
    check_evaluation_inputs(protocol, data_dir)
    summary: dict[str, list[str]] = {'evaluated': [], 'done_before': [], 'not_finished': []}
    todo = []
    for cell in cells:
        if evaluation_path(results_dir, protocol, cell).is_file():
            summary['done_before'].append(cell.name)
        elif not _result_path(results_dir, protocol, cell).is_file():
            summary['not_finished'].append(cell.name)
        else:
            todo.append(cell)
    if todo:
        if protocol.threads:
            import torch
            torch.set_num_threads(protocol.threads)  # as the scorer: the runs' own thread count
        shift = None
        if protocol.evaluation.shift is not None:
            shift = prepare_shift(protocol.evaluation.shift, data_dir, work_dir / SHIFT_CACHE, log)
            log(f'shift set: {shift.described["set"]} of {protocol.evaluation.shift.split}/ '
                f'({shift.described["folder"]}), {len(shift.sets)} corrupted sets')
        for index, cell in enumerate(todo, 1):
            path = evaluation_path(results_dir, protocol, cell)
            if path.is_file():  # evaluated by another pass meanwhile
                summary['done_before'].append(cell.name)
                continue
            start = time.time()
            record = evaluate_run(protocol, cell, work_dir / protocol.name / 'runs' / cell.name,
                                  _result_path(results_dir, protocol, cell), data_dir, shift)
            record.update(seconds=time.time() - start, provenance=provenance(CHECKOUT))
            try:
                create_json(path, record)
            except FileExistsError:
                summary['done_before'].append(cell.name)
                log(f'{cell.name}: evaluated by another pass meanwhile; its evaluation file is kept')
                continue
            summary['evaluated'].append(cell.name)
            log(f'{index}/{len(todo)} {cell.name}: epoch {record["epoch"]}, top-1 {record["top1"]:.2f}, ECE '
                f'{record["raw"]["ece"]:.4f}' + ''.join(f', {m} {s["metrics"]["ece"]:.4f}'
                                                        for m, s in record['posthoc'].items())
                + (f', shift mean ECE {record["shift"]["mean"]["ece"]:.4f}' if 'shift' in record else '')
                + f' ({record["seconds"]:.0f} s)')
    log(f'pass finished: evaluated {len(summary["evaluated"])}, done before {len(summary["done_before"])}, '
        f'not finished {len(summary["not_finished"])}')
    return summary
