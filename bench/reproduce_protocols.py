"""The study's protocols: which train.py runs make up each grid.

Cyclical focal loss (L. N. Smith, arXiv 2202.08978) and general cyclical training (arXiv 2202.08835) against
cross-entropy, label smoothing and the calibration-loss family. A grid cell is (method, data setting, seed); a
method is a set of train.py flags, a data setting the subset flags of the training set, and every cell of a seed
shares the initialisation and data order (train.py's ``--seed``), so differences between methods are paired.

- ``cpu``: the first, short study (``test_resnet``, 3 to 7 epochs); its results are in ``bench/results/cpu.*``.
- ``study-cpu``: the converged CPU study (CIFAR ResNet-8 at 32 px, CIFAR crop+flip, 400 images per class and a
  long-tailed set, the full 10,000-image test set scored at the end, temperature scaling fitted on ``--holdout``).
- ``study-gpu`` / ``study-gpu-c100``: the published recipe's scale on full CIFAR-10 / CIFAR-100 (defined here,
  run elsewhere).
- ``smoke``: two tiny real cells, for checking an executor (the Slurm smoke test runs it).
"""
import math
from dataclasses import dataclass, field
from typing import Optional

from reproduce_runner import Cell

__all__ = ['METHODS', 'PROTOCOLS', 'Protocol', 'shot_groups_by_count']

# Each method is a set of train.py flags. train.py's CE default smoothing is 0.1 (timm's), so the methods that
# must not smooth say so; the asymmetric / cyclical focal losses keep their published eps 0.1.
METHODS: dict[str, list[str]] = {
    # baselines
    'ce': ['--smoothing', '0'],
    'ce_ls0.1': ['--smoothing', '0.1'],
    # the focal family of the first study
    'focal_g2': ['--focal_loss', 'sym', '--gamma', '2'],
    'asym': ['--focal_loss', 'asym', '--gamma_pos', '2', '--gamma_neg', '2'],
    # cyclical focal loss: the authors' example settings (CIFAR, ImageNet) and the OLTR ImageNet_LT settings
    'cfl_authors': ['--focal_loss', 'asym-cyclical', '--gamma_hc', '3', '--gamma_pos', '2', '--gamma_neg', '2',
                    '--cyclical_factor', '4'],
    'cfl_oltr': ['--focal_loss', 'asym-cyclical', '--gamma_hc', '2', '--gamma_pos', '0', '--gamma_neg', '4',
                 '--cyclical_factor', '4'],
    # the calibration-loss family (official default hyper-parameters, see calibration_losses.md)
    'fl3': ['--focal_loss', 'sym', '--gamma', '3', '--smoothing', '0'],
    'flsd': ['--loss', 'flsd', '--smoothing', '0'],
    'dual_focal': ['--loss', 'dual-focal', '--smoothing', '0'],
    'adafocal': ['--loss', 'adafocal', '--smoothing', '0'],
    'mbls': ['--loss', 'mbls', '--smoothing', '0'],
    # general cyclical training: each schedule (f = 2, a symmetric triangle, so the time-mean of eta is 1/2)
    # against CE with the constant value at the schedule's mean (min + max) / 2
    'ce_cyc_wd': ['--smoothing', '0', '--wd_min', '1e-4', '--wd_max', '1e-3', '--cyclical_factor', '2'],
    'ce_const_wd': ['--smoothing', '0', '--weight-decay', '5.5e-4'],
    'ce_cyc_temp': ['--smoothing', '0', '--T_min', '0.5', '--T_max', '2', '--cyclical_factor', '2'],
    'ce_const_temp': ['--smoothing', '0', '--T_min', '1.25', '--T_max', '1.25', '--cyclical_factor', '2'],
    'ce_cyc_clip': ['--smoothing', '0', '--clip_min', '0.5', '--clip_max', '4.5', '--cyclical_factor', '2'],
    'ce_const_clip': ['--smoothing', '0', '--clip-grad', '2.5'],
}

# The cyclical schedules and their constant counterparts (the study's second question).
CYCLICAL_PAIRS: tuple[tuple[str, str], ...] = (
    ('ce_cyc_wd', 'ce_const_wd'), ('ce_cyc_temp', 'ce_const_temp'), ('ce_cyc_clip', 'ce_const_clip'))

CFL_METHODS = ('cfl_authors', 'cfl_oltr')
STUDY_LOSSES = ('ce', 'ce_ls0.1', 'fl3', 'flsd', 'dual_focal', 'adafocal', 'mbls', 'cfl_authors', 'cfl_oltr')
STUDY_CYCLICAL = tuple(name for pair in CYCLICAL_PAIRS for name in pair)
LEGACY_LOSSES = ('ce', 'ce_ls0.1', 'focal_g2', 'asym', 'cfl_authors', 'cfl_oltr')


def long_tailed_counts(n_max: int, ratio: float, num_classes: int = 10) -> list[int]:
    """train.py's long-tailed profile: n_c = floor(n_max * ratio^(-c / (K - 1)))."""
    return [math.floor(n_max * ratio ** (-c / (num_classes - 1)) + 1e-9) for c in range(num_classes)]


def shot_groups_by_count(counts: list[int], many: int = 100, few: int = 20) -> dict[str, tuple[int, ...]]:
    """OLTR's shot groups (Liu et al. 2019): many > ``many`` training images, few < ``few``, medium between."""
    return {'many': tuple(c for c, n in enumerate(counts) if n > many),
            'medium': tuple(c for c, n in enumerate(counts) if few <= n <= many),
            'few': tuple(c for c, n in enumerate(counts) if n < few)}


# The first study's groups by frequency rank (its LT sets have no class under 20 images at n_max 300 / ratio 10).
RANK_GROUPS = {'many': (0, 1, 2), 'medium': (3, 4, 5, 6), 'few': (7, 8, 9)}


@dataclass(frozen=True)
class Protocol:
    """One grid: train.py flags shared by every cell, the data settings, the methods run on each, the seeds.

    Attributes:
        name: protocol name (per-run results go to ``bench/results/<name>/runs/``).
        description: one line for the results table.
        common: train.py flags of every cell.
        data: data setting -> train.py subset flags (``--train_size`` / ``--imbalance_ratio``, ``--holdout``).
        epochs: data setting -> training epochs.
        grid: data setting -> the methods run on it.
        seeds: the seeds (paired: one initialisation and data order per seed, shared by every method).
        threads: torch threads per training process (None: torch's default).
        shot_groups: long-tailed data setting -> shot group -> classes.
        score_split: the split scored at the end on the last checkpoint (None: only train.py's own evaluation).
        temperature_scaling: fit a temperature on the ``--holdout`` split and score before and after it.
        baselines: the methods every other method is compared with (seed-paired differences).
        pairs: (cyclical, constant) method pairs compared with each other.
        focus: the methods the study asks about, each compared (seed-paired) with every other loss of its setting.
        notes: free-form facts for docs/study.md (pilot, timing).
        method_flags: the protocol's own methods (name -> train.py flags), looked up before :data:`METHODS`
            (a user's grid file defines its methods here).
    """
    name: str
    description: str
    common: list[str]
    data: dict[str, list[str]]
    epochs: dict[str, int]
    grid: dict[str, tuple[str, ...]]
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: Optional[int] = None
    shot_groups: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    score_split: Optional[str] = None
    temperature_scaling: bool = False
    baselines: tuple[str, ...] = ('ce', 'ce_ls0.1')
    pairs: tuple[tuple[str, str], ...] = ()
    focus: tuple[str, ...] = ()
    notes: str = ''
    method_flags: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        for setting, methods in self.grid.items():
            unknown = [m for m in methods if m not in METHODS and m not in self.method_flags]
            if setting not in self.data or setting not in self.epochs or unknown:
                raise ValueError(f'protocol {self.name}: data setting {setting!r} needs data flags and epochs, '
                                 f'methods must be in METHODS (unknown: {unknown})')
        stray = [m for m in self.focus if m not in self.methods]
        if stray:
            raise ValueError(f'protocol {self.name}: focus methods {stray} are in no data setting of the grid')

    @property
    def cyclical_methods(self) -> tuple[str, ...]:
        """The methods of the cyclical/constant pairs (a question of their own, not a loss to compare with)."""
        return tuple(m for pair in self.pairs for m in pair)

    @property
    def data_settings(self) -> tuple[str, ...]:
        return tuple(self.grid)

    @property
    def methods(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for methods in self.grid.values():
            seen.update(dict.fromkeys(methods))
        return tuple(seen)

    def cells(self) -> list[Cell]:
        # Seed-major order: if a grid is cut short, the finished seeds are complete grids.
        return [Cell(loss=method, data=data, seed=seed)
                for seed in self.seeds for data, methods in self.grid.items() for method in methods]

    def flags_of(self, method: str) -> list[str]:
        """The train.py flags of ``method`` (the protocol's own methods first)."""
        return self.method_flags[method] if method in self.method_flags else METHODS[method]

    def train_flags(self, cell: Cell) -> list[str]:
        """The cell's train.py flags after ``--data-dir``: common, epochs, data subset, method, seed."""
        return [*self.common, '--epochs', str(self.epochs[cell.data]), *self.data[cell.data],
                *self.flags_of(cell.loss), '--seed', str(cell.seed)]


_CPU_COMMON = ['--model', 'test_resnet', '--img-size', '32', '-b', '64', '--opt', 'sgd', '--lr', '0.1',
               '--momentum', '0.9', '--weight-decay', '5e-4', '--sched', 'cosine', '--sched-on-updates',
               '--warmup-epochs', '0', '--cooldown-epochs', '0', '--cyclical_step_per_update',
               '--scale', '0.5', '1.0', '--color-jitter', '0', '--hflip', '0.5', '-j', '0', '--checkpoint-hist', '1',
               '--log-interval', '1000']

# study-cpu: 400 training images per class (the paper's limited-data regime: 4,000 CIFAR-10 images) plus 50 per
# class held out (train.py carves --holdout stratified out of the 450 per class, so 400 per class remain), and
# CIFAR-10-LT with ratio 100 and n_max 400 (988 images: 400 ... 4) with 100 held out (proportionally per class).
STUDY_LT_COUNTS = long_tailed_counts(400, 100.0)
# The LR steps (x0.1 at half and three quarters of training, He et al.'s CIFAR ResNet recipe) depend on the
# setting's epochs, so they sit with its data flags.
_STUDY_CPU_DATA = {
    'c10_4k': ['--train_size', '4500', '--train_size_mode', 'stratified', '--holdout', '500',
               '--decay-milestones', '20', '30'],
    'c10lt100': ['--imbalance_ratio', '100', '--imbalance_max', '400', '--holdout', '100',
                 '--decay-milestones', '30', '45'],
}
_STUDY_CPU_COMMON = [
    '--model', 'resnet8_cifar', '--img-size', '32', '--train-transform', 'cifar', '--crop-padding', '4',
    '--hflip', '0.5', '--channels-last', '-b', '32', '--opt', 'sgd', '--lr', '0.05', '--momentum', '0.9',
    '--weight-decay', '5e-4', '--sched', 'multistep', '--decay-rate', '0.1', '--sched-on-updates',
    '--warmup-epochs', '0',
    '--cooldown-epochs', '0', '--cyclical_step_per_update', '-j', '0', '--checkpoint-hist', '1',
    '--log-interval', '1000',
    # train.py evaluates every epoch on the 'monitor' split (the first 100 test images per class, for the curve
    # only); the last checkpoint is scored once on the full 10,000-image test set ('validation' -> val/).
    '--val-split', 'monitor']

PROTOCOLS: dict[str, Protocol] = {
    # Sized for 2 heavily shared CPU cores: all 54 cells took 19 minutes here with 3 workers of 1 thread each.
    'cpu': Protocol(
        name='cpu',
        description='test_resnet at 32 px, SGD lr 0.1 cosine per update, no warmup, batch 64, eta per update, '
                    'train cap 300 img/class (n_max 300 for LT), val: first 100 img/class of the CIFAR-10 test set',
        common=_CPU_COMMON,
        data={'c10': ['--train_size', '3000', '--train_size_mode', 'stratified'],
              'c10lt10': ['--imbalance_ratio', '10', '--imbalance_max', '300'],
              'c10lt100': ['--imbalance_ratio', '100', '--imbalance_max', '300']},
        epochs={'c10': 3, 'c10lt10': 4, 'c10lt100': 7},
        grid={'c10': LEGACY_LOSSES, 'c10lt10': LEGACY_LOSSES, 'c10lt100': LEGACY_LOSSES},
        threads=1,
        shot_groups={'c10lt10': RANK_GROUPS, 'c10lt100': RANK_GROUPS},
    ),
    'study-cpu': Protocol(
        name='study-cpu',
        description='resnet8_cifar at 32 px, CIFAR crop+flip, SGD lr 0.05 momentum 0.9 wd 5e-4, batch 32, LR x0.1 '
                    'at 1/2 and 3/4 of training; c10_4k: 400 img/class (+50 held out), 40 epochs; c10lt100: ratio '
                    '100, n_max 400 (+100 held out), 60 epochs; last checkpoint scored on the full CIFAR-10 test set '
                    '(10,000 images)',
        common=_STUDY_CPU_COMMON,
        data=_STUDY_CPU_DATA,
        # Epochs from the CE pilots (bench/results/study-cpu/pilots/, docs/study.md): with these steps the last fifth
        # of training changes held-out top-1 by -0.4 (c10_4k) and 0.0 points (c10lt100), under the 1 point allowed;
        # cosine schedules of 30, 50 and 60 epochs still gained 3 to 4 points there.
        epochs={'c10_4k': 40, 'c10lt100': 60},
        grid={'c10_4k': STUDY_LOSSES + STUDY_CYCLICAL, 'c10lt100': STUDY_LOSSES},
        threads=1,
        shot_groups={'c10lt100': shot_groups_by_count(STUDY_LT_COUNTS)},
        score_split='validation',
        temperature_scaling=True,
        pairs=CYCLICAL_PAIRS,
        focus=CFL_METHODS,
    ),
    # The published CIFAR recipe (cfl.md section 6) on the full data: tresnet_m at 224 px, 200 + 1 epochs.
    'study-gpu': Protocol(
        name='study-gpu',
        description="tresnet_m at 224 px, the published CIFAR recipe (200+1 epochs, b 384, lr 0.15, RandAugment, "
                    "AugMix splits 3, reprob 0.6, AMP); CIFAR-10 45,000 + 5,000 held out, CIFAR-10-LT ratio 100 "
                    "(n_max 5,000) + 10% held out; full test set",
        common=['--model', 'tresnet_m', '-b', '384', '--sched', 'cosine', '--lr', '0.15', '--warmup-lr', '0.01',
                '--warmup-epochs', '3', '--cooldown-epochs', '1', '--weight-decay', '5e-4', '--amp',
                '--remode', 'pixel', '--reprob', '0.6', '--aug-splits', '3', '--aa', 'rand-m9-mstd0.5-inc1',
                '--resplit', '--split-bn', '--dist-bn', 'reduce', '--checkpoint-hist', '1', '-j', '8',
                '--pin-mem', '--channels-last'],
        data={'c10': ['--holdout', '5000'],
              'c10lt100': ['--imbalance_ratio', '100', '--imbalance_max', '5000', '--holdout', '1240']},
        epochs={'c10': 200, 'c10lt100': 200},
        grid={'c10': STUDY_LOSSES + STUDY_CYCLICAL, 'c10lt100': STUDY_LOSSES},
        shot_groups={'c10lt100': shot_groups_by_count(long_tailed_counts(5000, 100.0))},
        score_split='validation',
        temperature_scaling=True,
        pairs=CYCLICAL_PAIRS,
        focus=CFL_METHODS,
    ),
    'study-gpu-c100': Protocol(
        name='study-gpu-c100',
        description='as study-gpu on CIFAR-100 (45,000 + 5,000 held out, full test set)',
        common=['--model', 'tresnet_m', '-b', '384', '--sched', 'cosine', '--lr', '0.15', '--warmup-lr', '0.01',
                '--warmup-epochs', '3', '--cooldown-epochs', '1', '--weight-decay', '5e-4', '--amp',
                '--remode', 'pixel', '--reprob', '0.6', '--aug-splits', '3', '--aa', 'rand-m9-mstd0.5-inc1',
                '--resplit', '--split-bn', '--dist-bn', 'reduce', '--checkpoint-hist', '1', '-j', '8',
                '--pin-mem', '--channels-last'],
        data={'c100': ['--holdout', '5000']},
        epochs={'c100': 200},
        grid={'c100': STUDY_LOSSES + STUDY_CYCLICAL},
        score_split='validation',
        temperature_scaling=True,
        pairs=CYCLICAL_PAIRS,
        focus=CFL_METHODS,
    ),
    # Two tiny real cells (a tiny network, one epoch on 20 images per class) for checking an executor end to end.
    'smoke': Protocol(
        name='smoke',
        description='test_resnet at 32 px, 1 epoch on 20 images per class (executor smoke test)',
        common=['--model', 'test_resnet', '--img-size', '32', '-b', '32', '--opt', 'sgd', '--lr', '0.05',
                '--sched', 'cosine', '--warmup-epochs', '0', '--cooldown-epochs', '0', '-j', '0',
                '--checkpoint-hist', '1', '--log-interval', '1000'],
        data={'tiny': ['--train_size', '200', '--train_size_mode', 'stratified']},
        epochs={'tiny': 1},
        grid={'tiny': ('ce', 'cfl_authors')},
        seeds=(0,),
        threads=1,
    ),
}
