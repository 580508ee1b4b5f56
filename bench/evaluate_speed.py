"""Time the model-free evaluator (``cfl_timm.evaluate.evaluate_logits``) on synthetic logits, one stage at a time.

Issue target: every metric, the six post-hoc fits and 1,000 bootstrap resamples on 10,000 x 10 logits in a few
seconds on one CPU thread. The logits are drawn from a miscalibrated Gaussian model (fixed seed); the fitting split
is a second draw of the same size, the OOD set a shifted draw. Each stage is timed ``--repeats`` times (process CPU
time by default, so other load on a shared machine counts less) and the median is printed, with the machine.

Usage::

    OMP_NUM_THREADS=1 python bench/evaluate_speed.py [--samples 10000] [--classes 10] [--repeats 5]
"""
import argparse
import os
import platform
import statistics
import time

import torch

from cfl_timm.evaluate import evaluate_logits
from cfl_timm.metrics import POSTHOC_METHODS
from cfl_timm.training.arg_types import positive_int


def synthetic(samples: int, classes: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Over-confident logits: the true class gets a bonus, then everything is scaled up (a temperature of 1/3)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (samples,), generator=generator)
    logits = torch.randn(samples, classes, generator=generator, dtype=torch.float64) + shift
    logits[torch.arange(samples), targets] += 1.5
    return (3.0 * logits).float(), targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--samples', type=positive_int, default=10_000)
    parser.add_argument('--classes', type=positive_int, default=10)
    parser.add_argument('--repeats', type=positive_int, default=5)
    parser.add_argument('--bootstrap', type=positive_int, default=1000)
    parser.add_argument('--clock', choices=('cpu', 'wall'), default='cpu',
                        help='process CPU time (default; robust to other load) or wall time')
    args = parser.parse_args()
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    logits, targets = synthetic(args.samples, args.classes, 0)
    fit = synthetic(args.samples, args.classes, 1)
    ood = {'shifted': synthetic(args.samples, args.classes, 2, shift=0.5)[0] / 3.0}
    stages = {
        'metrics (raw, direction, selective)': dict(),
        'ood (4 scores x 4 metrics)': dict(ood=ood),
    }
    stages.update({f'posthoc {name}': dict(fit=fit, posthoc=[name]) for name in POSTHOC_METHODS})
    stages[f'bootstrap {args.bootstrap}'] = dict(bootstrap=args.bootstrap)
    stages[f'everything (six fits, OOD, bootstrap {args.bootstrap})'] = dict(
        fit=fit, posthoc=list(POSTHOC_METHODS), ood=ood, bootstrap=args.bootstrap)
    threads = os.environ.get('OMP_NUM_THREADS', 'unset')
    print(f'{args.samples} x {args.classes} logits, torch {torch.__version__}, {torch.get_num_threads()} thread(s) '
          f'(OMP_NUM_THREADS={threads}), {platform.processor() or platform.machine()}, {args.clock} time, median '
          f'of {args.repeats}')
    evaluate_logits(logits, targets, fit=fit, posthoc=list(POSTHOC_METHODS), ood=ood, bootstrap=10)  # warm-up
    print('| stage | median s | min s |\n|---|---|---|')
    for name, kwargs in stages.items():
        times = []
        for _ in range(args.repeats):
            start = clock()
            evaluate_logits(logits, targets, **kwargs)
            times.append(clock() - start)
        print(f'| {name} | {statistics.median(times):.3f} | {min(times):.3f} |')


if __name__ == '__main__':
    main()
