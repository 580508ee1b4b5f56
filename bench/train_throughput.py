"""Training throughput of the cyclical focal loss with all three cyclical schedules against cross-entropy.

The paper's claim (L. N. Smith, "Cyclical Focal Loss", arXiv 2202.08978): CFL "does not increase training
time". Both variants run through train.py's ``main`` in this one process, with the same model, data, batch
size, augmentation and seed, in interleaved repeats (CE, CFL, CE, CFL, ...) so drifts in machine load hit both.
Each repeat trains ``--epochs`` epochs; the first epoch of every repeat is discarded (warm-up), the others give
one images/s sample each. Reported: the median images/s of each variant and the ratio CFL / CE (target >= 0.98).

Baseline: timm's label-smoothed cross-entropy (``--smoothing 0.1``, as in the paper's CE runs).
Candidate: ``--focal_loss asym-cyclical`` with ``--wd_min/--wd_max``, ``--T_min/--T_max`` and
``--clip_min/--clip_max`` (cyclical weight decay, softmax temperature and gradient clipping).

With ``--torchcompile [BACKEND]`` both variants train with train.py's ``--torchcompile`` (the model compiled
through timm's task, the loss compiled where it is not epoch-aware); compilation falls in the dropped first
epoch of each repeat.

Usage, from the repository root (whose train.py it imports):
       python -m bench.train_throughput [--repeats 3] [--epochs 3] [--model test_resnet] [--img-size 32]
       [--batch-size 64] [--train-size 768] [--torchcompile [BACKEND]] [--json results.json]
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

import train

CFL_FLAGS = ['--focal_loss', 'asym-cyclical', '--gamma_hc', '3', '--gamma_pos', '2', '--gamma_neg', '4',
             '--wd_min', '1e-4', '--wd_max', '1e-3', '--T_min', '0.5', '--T_max', '2', '--clip_min', '1',
             '--clip_max', '10']
CE_FLAGS = ['--smoothing', '0.1']


def run_variant(common: list[str], flags: list[str], output: Path) -> list[float]:
    """Train once; images/s of every epoch after the first."""
    args = train.parse_args([*common, *flags, '--output', str(output), '--experiment', 'run'])
    speeds = train.main(args)['train_images_per_second']
    return speeds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--model', default='test_resnet')
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--train-size', type=int, default=768)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                        help='train both variants with train.py --torchcompile BACKEND (default: inductor)')
    parser.add_argument('--json', default='', help='also write the results to this JSON file')
    opts = parser.parse_args()
    if opts.epochs < 2:
        parser.error('--epochs must be >= 2 (the first epoch of each repeat is warm-up).')

    common = ['--dataset', 'sklearn/digits', '--model', opts.model, '--img-size', str(opts.img_size),
              '-b', str(opts.batch_size), '-j', '0', '--train_size', str(opts.train_size), '--epochs',
              str(opts.epochs), '--warmup-epochs', '0', '--lr', '0.05', '--device', opts.device,
              '--log-interval', '100000', '--seed', '0']
    if opts.torchcompile:
        common += ['--torchcompile', opts.torchcompile]
    samples: dict[str, list[float]] = {'ce': [], 'cfl': []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(opts.repeats):
            for name, flags in (('ce', CE_FLAGS), ('cfl', CFL_FLAGS)):
                samples[name] += run_variant(common, flags, Path(tmp) / f'{name}{repeat}')
    ce, cfl = statistics.median(samples['ce']), statistics.median(samples['cfl'])
    result = {
        'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, '
                   f'torch {torch.__version__} ({opts.device}, {torch.get_num_threads()} threads)',
        'setup': {k: v for k, v in vars(opts).items() if k != 'json'},
        'ce_images_per_s_median': round(ce, 1),
        'cfl_all_schedules_images_per_s_median': round(cfl, 1),
        'ratio_cfl_over_ce': round(cfl / ce, 4),
        'samples': {k: [round(v, 1) for v in vs] for k, vs in samples.items()},
    }
    print(json.dumps(result, indent=2))
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
