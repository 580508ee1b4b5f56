"""Images per second of the CIFAR networks at 32 px, training and evaluation, against timm's ``resnet18``.

Every model is measured in the same run as the baseline, timm's ImageNet ``resnet18`` at 32 px (its stem
shrinks 32 px to 8 px before the first stage, so it is cheap; the CIFAR ResNet-18 keeps 32 px), in the default
(contiguous) and the ``channels_last`` memory format. Measurements are interleaved rounds: each round times
``--steps`` batches of every (model, format, mode), so a change of machine load hits every entry alike; the
table reports the median over rounds. Training is forward + cross-entropy + backward + an SGD step in train
mode; evaluation is a forward pass under ``torch.inference_mode`` in eval mode. Random inputs, 10 classes.

``--clock cpu`` (the default) times with the process CPU time, so with one intra-op thread (the default) the
numbers are images per CPU-second, robust to other work sharing the cores; ``--clock wall`` times wall-clock
seconds (use it with several threads on an idle machine).

Usage: nice -n 10 python bench/model_throughput.py [--models resnet20_cifar resnet18_cifar] [--rounds 3]
       [--steps 1] [--batch-size 16] [--threads 1] [--clock cpu|wall] [--output results.json]
"""
import argparse
import json
import os
import platform
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from cfl_timm.files import atomic_write_text
from cfl_timm.models import CIFAR_MODELS  # (importing cfl_timm registers the models)

BASELINE = 'resnet18'
CLOCKS = {'cpu': time.process_time, 'wall': time.perf_counter}
FORMATS = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}


def _build(name: str, memory_format: torch.memory_format) -> torch.nn.Module:
    model = timm.create_model(name, num_classes=10)
    return model.to(memory_format=memory_format)


def time_train(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor, steps: int,
               clock=time.process_time) -> float:
    """Seconds per image of ``steps`` SGD steps (forward, cross-entropy, backward, update)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    start = clock()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), target).backward()
        optimizer.step()
    return (clock() - start) / (steps * images.shape[0])


def time_eval(model: torch.nn.Module, images: torch.Tensor, steps: int, clock=time.process_time) -> float:
    """Seconds per image of ``steps`` forward passes in eval mode."""
    model.eval()
    with torch.inference_mode():
        start = clock()
        for _ in range(steps):
            model(images)
    return (clock() - start) / (steps * images.shape[0])


def measure(names: list[str], batch_size: int, img_size: int, rounds: int, steps: int,
            clock=time.process_time) -> dict[str, dict]:
    """Median images/s per (model, format, mode) over interleaved rounds, after one warm-up step each."""
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, img_size, img_size)
    target = torch.randint(0, 10, (batch_size,))
    entries = {}
    for name in names:
        for fmt, memory_format in FORMATS.items():
            model = _build(name, memory_format)
            x = images.contiguous(memory_format=memory_format)
            time_train(model, x, target, 1)  # warm-up: allocator, kernels
            time_eval(model, x, 1)
            entries[(name, fmt)] = dict(model=model, x=x, train=[], eval=[])
    for _ in range(rounds):
        for entry in entries.values():
            entry['train'].append(time_train(entry['model'], entry['x'], target, steps, clock))
            entry['eval'].append(time_eval(entry['model'], entry['x'], steps, clock))
    results: dict[str, dict] = {}
    for (name, fmt), entry in entries.items():
        row = results.setdefault(name, dict(params=sum(p.numel() for p in entry['model'].parameters())))
        row[f'train_{fmt}'] = 1.0 / statistics.median(entry['train'])
        row[f'eval_{fmt}'] = 1.0 / statistics.median(entry['eval'])
    return results


def table(results: dict[str, dict]) -> str:
    """Markdown rows: images/s per format and mode, the channels_last speed-up and the ratio to the baseline."""
    base = results[BASELINE]
    lines = ['| model | params | train img/s | train, channels_last | eval img/s | eval, channels_last | '
             'channels_last speed-up (train / eval) | vs resnet18 (train / eval, channels_last) |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for name, row in results.items():
        lines.append(
            f"| {name} | {row['params'] / 1e6:.2f}M | {row['train_contiguous']:.0f} | {row['train_channels_last']:.0f}"
            f" | {row['eval_contiguous']:.0f} | {row['eval_channels_last']:.0f}"
            f" | {row['train_channels_last'] / row['train_contiguous']:.2f}x"
            f" / {row['eval_channels_last'] / row['eval_contiguous']:.2f}x"
            f" | {row['train_channels_last'] / base['train_channels_last']:.3f}"
            f" / {row['eval_channels_last'] / base['eval_channels_last']:.3f} |")
    return '\n'.join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=list(CIFAR_MODELS), choices=CIFAR_MODELS, metavar='NAME',
                        help='CIFAR models to measure (default: all); timm resnet18 is always measured')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--rounds', type=int, default=3, help='interleaved rounds; the median is reported')
    parser.add_argument('--steps', type=int, default=1, help='batches per model, format and mode in a round')
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads (default: 1)')
    parser.add_argument('--clock', default='cpu', choices=sorted(CLOCKS),
                        help='process CPU time (default; with 1 thread: images per CPU-second) or wall-clock time')
    parser.add_argument('--output', default='', help='also write the results as JSON to this file')
    args = parser.parse_args(argv)
    if min(args.batch_size, args.img_size, args.rounds, args.steps, args.threads) < 1:
        parser.error('--batch-size, --img-size, --rounds, --steps and --threads must be >= 1')
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.time()
    results = measure([BASELINE, *args.models], args.batch_size, args.img_size, args.rounds, args.steps,
                      CLOCKS[args.clock])
    load_after = os.getloadavg()
    machine = (f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, '
               f'torch {torch.__version__}, timm {timm.__version__}')
    print(f'# {machine}; batch {args.batch_size} at {args.img_size} px, {args.clock} clock, median of {args.rounds} '
          f'interleaved rounds of {args.steps} batches; load average (1 min) {load_before[0]:.1f} before, '
          f'{load_after[0]:.1f} after; {time.time() - start:.0f} s')
    print(table(results))
    if args.output:
        atomic_write_text(args.output, json.dumps(dict(
            machine=machine, clock=args.clock, batch_size=args.batch_size, img_size=args.img_size, rounds=args.rounds,
            steps=args.steps, load_average=[load_before[0], load_after[0]], results=results), indent=1) + '\n')


if __name__ == '__main__':
    main()
