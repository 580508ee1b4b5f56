"""``cfl-grid`` (``python -m cfl_timm.grid``): run a grid of train.py runs, resumably, locally or on Slurm.

Papers of the study it was built for: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978, and
"General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835.

A grid is a YAML file (:mod:`cfl_timm.grid.grid_file`): a user's own (``--grid FILE.yaml``) or one of the study
protocols shipped with the package (``--protocol NAME``, ``cfl_timm/grid/protocols/``). Every cell is one run of
train.py in a subprocess, in its own folder ``WORK_DIR/<grid>/runs/<cell>/``; the runner
(:mod:`cfl_timm.grid.runner`) makes the grid resumable and safe to share between workers and hosts, the executors
(:mod:`cfl_timm.grid.executors`) run it with local worker processes or one Slurm job per cell. Results go to
``WORK_DIR/results`` unless ``--results-dir`` names another folder: a fresh work folder starts from nothing.

Usage::

    cfl-grid list --grid my_grid.yaml --data-dir DATA --work-dir WORK       # the cells and commands, a dry run
    cfl-grid run --grid my_grid.yaml --data-dir DATA --work-dir WORK --jobs 2   # or --executor slurm ...
    cfl-grid status --grid my_grid.yaml --work-dir WORK
    cfl-grid evaluate --grid my_grid.yaml --data-dir DATA --work-dir WORK   # grids with an evaluation key
    cfl-grid aggregate --grid my_grid.yaml --work-dir WORK
"""
import argparse
import shlex
import tarfile
from pathlib import Path
from typing import Any, Optional

from cfl_timm.training.arg_types import (
    existing_file,
    existing_folder,
    non_negative_int,
    output_folder,
    path_converter,
    positive_float,
    positive_int,
    seed,
)
from cfl_timm.training.cli_runner import run_cli

from .aggregate import aggregate, aggregate_study
from .cells import find_train_script, make_train_cell, prepare_data, run_pilot, train_command
from .evaluation import evaluate_grid
from .executors import EXECUTORS, LocalExecutor, SlurmExecutor, WorkerSpec
from .grid_file import Protocol, load_grid, load_protocol, protocol_names
from .runner import GridRunner, load_cell_fn

__all__ = ['get_args_parser', 'main', 'cli']


def make_cell_fn(protocol: str, data_dir: str, cell_fn: Optional[str] = None, grid: Optional[str] = None,
                 train_script: Optional[str] = None):
    """The cell function of a worker (the factory named in its :class:`~cfl_timm.grid.executors.WorkerSpec`):
    ``cell_fn`` (``FILE.py:NAME`` or ``MODULE:NAME``) when given, else ``train_script`` under ``protocol`` (or the
    grid file ``grid``) on ``data_dir``."""
    if cell_fn:
        return load_cell_fn(cell_fn)
    return make_train_cell(load_grid(Path(grid)) if grid else load_protocol(protocol), Path(data_dir),
                           Path(train_script))


def protocol_of(args: argparse.Namespace) -> Protocol:
    """The study protocol named by ``--protocol``, or the checked grid file of ``--grid``."""
    if getattr(args, 'grid', None) is None:
        return load_protocol(args.protocol)
    protocol = load_grid(args.grid)
    if protocol.name in protocol_names():
        raise ValueError(f'--grid {args.grid}: name {protocol.name!r} is a study protocol\'s; choose another '
                         f'(taken: {list(protocol_names())})')
    return protocol


GRID_COMMANDS = {
    'list': ("print each cell's name and exact train.py command, running nothing",
             'A dry run: print every cell of the grid with the train.py command line run would start for it (done '
             'or not); nothing runs and nothing is written.'),
    'run': ('run every cell of the grid that is not done yet (locally or on Slurm)',
            'Run every cell of the grid not yet done (done.json in WORK_DIR or a result file in RESULTS_DIR), with '
            'local worker processes or one Slurm job per cell; resumable, safe to start on many hosts sharing '
            'WORK_DIR; a failed cell is retried by the next run.'),
    'status': ('count the done, running and failed cells of the grid',
               'Print how many cells of the grid are done, running (lock present) and failed, with the exit code of '
               'each failed cell.'),
    'evaluate': ("evaluate the grid's finished runs: post-hoc calibrators, AURC, shift; saved logits",
                 'For every finished run (result file present) not yet evaluated: rebuild its last checkpoint, check '
                 'it gives the recorded top-1, save its test and held-out logits, fit the grid\'s post-hoc '
                 'calibrators on the held-out split, and evaluate selective risk and the shift set; writes '
                 'RESULTS_DIR/<grid>/evaluation/<cell>.json (never overwritten). Incremental: may run while the grid '
                 'trains.'),
    'aggregate': ("build the grid's tables and figure from its results",
                  "Rebuild the grid's per-run CSV, summary CSV, markdown table and figure in RESULTS_DIR: from the "
                  'result files there for a grid with score_split (the study protocols), else from the done.json '
                  'files of WORK_DIR.'),
}
OTHER_COMMANDS = {
    'prepare-data': ('extract the CIFAR-10 JPEG archive (and capped, balanced copies of links; monitor/)',
                     'Extract the CIFAR-10 JPEG archive into OUT/train and OUT/val; with caps, a balanced copy of '
                     'links; with --monitor-per-class, monitor/ (the split the study protocols evaluate each epoch).'),
    'pilot': ("one CE run of a data setting for choosing its epochs (curve and last-fifth gain)",
              "Train the grid's ce cell of one data setting for EPOCHS epochs and record its curve and last-fifth "
              'gain in RESULTS_DIR/<grid>/pilots/NAME.json (never overwritten).'),
}


@path_converter('file')
def file_path(value: Any) -> Path:
    """``--grid``, ``--train-script``: an existing file."""
    if not str(value):
        raise argparse.ArgumentTypeError('give a file, got an empty path')
    return Path(existing_file(value))


@path_converter('file')
def tar_archive(value: Any) -> Path:
    """``prepare-data --archive``: an existing tar file (plain or compressed), checked before anything is
    extracted."""
    path = file_path(value)
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as error:
        raise argparse.ArgumentTypeError(f'cannot read {path} ({error.strerror})') from None
    if not is_tar:
        raise argparse.ArgumentTypeError(f'{value} is not a tar archive (.tar, .tar.gz, .tar.bz2 or .tar.xz)')
    return path


@path_converter('folder')
def folder_path(value: Any) -> Path:
    """``evaluate --data-dir``: an existing folder (what it must hold depends on the grid)."""
    return Path(existing_folder(value))


@path_converter('folder')
def training_data(value: Any) -> Path:
    """``--data-dir`` of the commands that train (and list their commands): a folder holding train/ and val/
    class folders."""
    path = folder_path(value)
    if not (path / 'train').is_dir() or not (path / 'val').is_dir():
        raise argparse.ArgumentTypeError(f'{value} must hold train/ and val/ class folders (see the prepare-data '
                                         'subcommand)')
    return path


@path_converter('output')
def output_path(value: Any) -> Path:
    """``--work-dir``, ``--results-dir``, ``--slurm-log-dir``, ``prepare-data --out``: a folder that is or can be
    made writable."""
    return Path(output_folder(value))


def check_grid_state(args: argparse.Namespace) -> None:
    """``status``, ``evaluate``, ``aggregate`` read a grid's state: its work folder, or the results folder given,
    must exist (a mistyped path would otherwise report an empty grid)."""
    folders = [args.work_dir] + ([args.results_dir] if args.results_dir is not None else [])
    if not any(folder.is_dir() for folder in folders):
        raise ValueError(f'--work-dir {args.work_dir}: no such folder, so no run of the grid is there '
                         f'({args.command} reads the runs that cfl-grid run wrote).')


def default_results_dir(args: argparse.Namespace) -> Path:
    """``--results-dir`` if given, else ``WORK_DIR/results``: a user's runs never mix with the committed ones."""
    return args.results_dir if args.results_dir is not None else args.work_dir / 'results'


def _add_grid_choice(sub: argparse.ArgumentParser) -> None:
    grid = sub.add_mutually_exclusive_group(required=True)
    grid.add_argument('--grid', type=file_path, metavar='FILE.yaml',
                      help="a grid file of one's own (models, losses, data, seeds, epochs, flags; docs/grid.md)")
    grid.add_argument('--protocol', choices=protocol_names(), help='one of the study protocols shipped with cfl_timm')
    sub.add_argument('--work-dir', type=output_path, required=True, help='runs go to WORK_DIR/<grid>/runs/<cell>/')
    sub.add_argument('--results-dir', type=output_path, default=None,
                     help='per-run result files go to RESULTS_DIR/<grid>/runs/ and aggregate writes its tables '
                          'there (default WORK_DIR/results; the cpu protocol writes no per-run files unless given); '
                          "bench/results in a checkout holds the project's committed results")


def _add_train_script(sub: argparse.ArgumentParser) -> None:
    sub.add_argument('--train-script', type=file_path, default=None, metavar='PATH',
                     help='the train.py each cell runs (default: the one of the cfl-timm checkout the package is '
                          'installed from, else ./train.py)')


def get_args_parser() -> argparse.ArgumentParser:
    commands_text = '\n'.join(f'  {name:<13}{summary}' for name, (summary, _) in
                               {**GRID_COMMANDS, **OTHER_COMMANDS}.items())
    parser = argparse.ArgumentParser(
        prog='cfl-grid', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='cfl-grid (python -m cfl_timm.grid): run a grid of train.py runs, your own grid file or a '
                    'study protocol, resumably, locally or on Slurm.\n\nsubcommands (each has its own --help):\n'
                    + commands_text,
        epilog='A grid is --grid FILE.yaml (your own, see docs/grid.md) or --protocol NAME (a study protocol). '
               'Results go to WORK_DIR/results/ unless --results-dir says otherwise, so a fresh work folder starts '
               'from nothing.')
    commands = parser.add_subparsers(dest='command', required=True, metavar='SUBCOMMAND')

    for name, (summary, description) in GRID_COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=description)
        _add_grid_choice(sub)
        if name in ('run', 'list', 'evaluate'):
            sub.add_argument('--data-dir', type=folder_path if name == 'evaluate' else training_data, required=True,
                             help='folder with train/ and val/ class folders')
            sub.add_argument('--only', default=None, help='comma-separated cell names (default: all)')
            sub.add_argument('--seeds', type=seed, nargs='+', default=None, help='subset of the seeds')
        if name in ('run', 'list'):
            _add_train_script(sub)
        if name == 'run':
            sub.add_argument('--executor', default='local', choices=tuple(EXECUTORS),
                             help='local: worker processes on this host; slurm: one Slurm job per cell (submitit)')
            sub.add_argument('--jobs', type=positive_int, default=1,
                             help='local executor: worker processes on this host')
            sub.add_argument('--stale-after', type=positive_float, default=300.0,
                             help='seconds without heartbeat after which another host may take a lock over')
            sub.add_argument('--heartbeat', type=positive_float, default=10.0, help='heartbeat interval in seconds')
            sub.add_argument('--cell-fn', default=None,
                             help='FILE.py:function or module:function replacing the train.py cell (for tests)')
            slurm = sub.add_argument_group('Slurm executor (--executor slurm)')
            slurm.add_argument('--partition', default=None, help='Slurm partition (default: the cluster default)')
            slurm.add_argument('--time', type=positive_int, default=60, metavar='MINUTES', help='time limit per job')
            slurm.add_argument('--cpus-per-task', type=positive_int, default=1, help='CPUs per job (default 1)')
            slurm.add_argument('--gpus-per-task', type=non_negative_int, default=0, help='GPUs per job (default 0)')
            slurm.add_argument('--slurm-setup', action='append', default=[], metavar='LINE',
                               help='shell line run before each job (repeatable), e.g. "module load cuda"')
            slurm.add_argument('--slurm-log-dir', type=output_path, default=None,
                               help='submitit job folders (default WORK_DIR/<grid>/slurm)')
            slurm.add_argument('--wait', action='store_true',
                               help='wait until every submitted job ended; exit 1 if a cell is not done')
            slurm.add_argument('--poll', type=positive_float, default=5.0,
                               help='seconds between squeue polls with --wait')
        if name == 'aggregate':
            sub.add_argument('--machine', default='', help='machine description for the table')

    summary, description = OTHER_COMMANDS['prepare-data']
    prep = commands.add_parser('prepare-data', help=summary, description=description)
    prep.add_argument('--archive', type=tar_archive, required=True, help='the CIFAR-10 JPEG archive (.tar.gz)')
    prep.add_argument('--out', type=output_path, required=True, help='extract into OUT/train and OUT/val')
    prep.add_argument('--train-per-class', type=positive_int, default=None, help='a capped copy: first N train images')
    prep.add_argument('--val-per-class', type=positive_int, default=None, help='a capped copy: first N val images')
    prep.add_argument('--monitor-per-class', type=positive_int, default=None,
                      help='also link the first N val images per class into monitor/ (study protocols: 100)')

    summary, description = OTHER_COMMANDS['pilot']
    pilot = commands.add_parser('pilot', help=summary, description=description)
    _add_grid_choice(pilot)
    pilot.add_argument('--data-setting', required=True, help="one of the grid's data settings")
    pilot.add_argument('--epochs', type=positive_int, required=True)
    pilot.add_argument('--name', required=True, help='the pilot record is RESULTS_DIR/<grid>/pilots/NAME.json')
    pilot.add_argument('--data-dir', type=training_data, required=True, help='folder with train/ and val/ class '
                       'folders')
    pilot.add_argument('--seed', type=seed, default=0)
    _add_train_script(pilot)
    pilot.add_argument('extra_flags', nargs=argparse.REMAINDER,
                       help="train.py flags after '--', appended after the setting's data flags")
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
        raise ValueError(f'--data-setting {args.data_setting!r}: grid {protocol.name} has {sorted(protocol.data)}')
    if 'ce' not in protocol.method_flags:
        raise ValueError(f'pilot: grid {protocol.name} has no loss named ce (the pilot trains it)')
    if args.epochs < 5:
        raise ValueError(f'--epochs must be >= 5 for a last fifth to exist, got {args.epochs}.')
    train_script = find_train_script(args.train_script)
    extra = args.extra_flags[1:] if args.extra_flags[:1] == ['--'] else args.extra_flags
    print(run_pilot(protocol, args.data_setting, args.epochs, args.data_dir, args.work_dir, default_results_dir(args),
                    args.name, train_script, tuple(extra), args.seed))
    return 0


def main(args: argparse.Namespace) -> int:
    if args.command == 'prepare-data':
        print(prepare_data(args.archive, args.out, args.train_per_class, args.val_per_class, args.monitor_per_class))
        return 0
    protocol = protocol_of(args)
    if args.command in ('status', 'evaluate', 'aggregate'):
        check_grid_state(args)
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
        train_script = find_train_script(args.train_script)
        for cell in cells:
            command = train_command(protocol, cell, args.data_dir.resolve(), (runs_dir / cell.name).resolve(),
                                    train_script)
            print(f'{cell.name}: {shlex.join(command)}')
        return 0
    if args.command == 'status':
        GridRunner(cells, runs_dir, cell_fn=None, results_dir=results_dir_for(protocol, args)).print_status()
        return 0
    if args.command == 'evaluate':
        evaluate_grid(protocol, cells, args.work_dir, default_results_dir(args), args.data_dir)
        return 0
    if args.command == 'aggregate':
        results_dir = default_results_dir(args)
        if protocol.score_split is None:  # from the work dir's done.json files
            paths = aggregate(protocol, runs_dir, results_dir, args.machine)
        else:
            paths = aggregate_study(protocol, results_dir, args.machine)
        print('\n'.join(str(p) for p in paths.values()))
        return 0

    train_script = None if args.cell_fn else str(find_train_script(args.train_script))
    spec = WorkerSpec(runs_dir=runs_dir.resolve(), factory='cfl_timm.grid.cli:make_cell_fn',
                      factory_kwargs={'protocol': protocol.name, 'data_dir': str(args.data_dir.resolve()),
                                      'cell_fn': args.cell_fn, 'train_script': train_script,
                                      'grid': str(args.grid.resolve()) if args.grid else None},
                      results_dir=results_dir_for(protocol, args), stale_after=args.stale_after,
                      heartbeat=args.heartbeat)
    return make_executor(args, runs_dir).run(spec, cells)


def cli(argv: Optional[list[str]] = None) -> int:
    """The ``cfl-grid`` console entry point: bad input is one usage line and exit status 2, never a traceback."""
    return run_cli(get_args_parser(), main, argv)
