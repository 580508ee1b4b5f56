"""Cost of train.py's training-time evidence (cfl_timm.training.evidence): a training step with and without the hook.

The hook reads the logits the loss already received (no extra forward pass) and adds a few reductions per batch on
the device. Measured here: the median time of a training step (forward, SA-FCL loss, backward, SGD step) of a timm
model with the :class:`TrainingEvidence` hook on the loss and without it, in interleaved repeats so drifts in
machine load hit both, and their ratio (target <= 1.01); and the hook alone on an (N, K) logit batch.

Usage: python bench/evidence_overhead.py [--model resnet18] [--img-size 32] [--batch-size 64] [--classes 10]
       [--loss safcl] [--steps 10] [--repeats 5] [--device cpu]
"""
import argparse
import statistics
import time

import timm
import torch

from cfl_timm import create_loss
from cfl_timm.training.evidence import TrainingEvidence


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_steps(model, criterion, optimizer, images, target, steps: int) -> float:
    """Seconds per training step, averaged over ``steps`` (after one untimed step)."""
    def step():
        optimizer.zero_grad()
        criterion(model(images), target).backward()
        optimizer.step()
    step()
    _synchronize(images.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(images.device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='resnet18')
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--classes', type=int, default=10)
    parser.add_argument('--loss', default='safcl')
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=args.classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    target = torch.randint(0, args.classes, (args.batch_size,), device=device)
    criterion = create_loss(name=args.loss)
    plain, hooked = [], []
    for _ in range(args.repeats):
        plain.append(time_steps(model, criterion, optimizer, images, target, args.steps))
        recorder = TrainingEvidence(criterion, device)
        hooked.append(time_steps(model, criterion, optimizer, images, target, args.steps))
        recorder.compute()
        recorder.close()
    ratio = statistics.median(plain) / statistics.median(hooked)
    print(f'{args.model} {args.img_size}px, batch {args.batch_size}, {args.classes} classes, --loss {args.loss}, '
          f'{device}, {torch.get_num_threads()} threads, {args.repeats} x {args.steps} steps')
    print(f'step without hook: {1e3 * statistics.median(plain):.1f} ms, with hook: '
          f'{1e3 * statistics.median(hooked):.1f} ms (median); steps/s ratio hooked / plain = {ratio:.3f}')
    recorder = TrainingEvidence(criterion, device)
    logits = torch.randn(args.batch_size, args.classes, device=device)
    for _ in range(3):
        recorder._record(criterion, (logits, target), None)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(100):
        recorder._record(criterion, (logits, target), None)
    _synchronize(device)
    print(f'hook alone on ({args.batch_size}, {args.classes}) logits: '
          f'{1e6 * (time.perf_counter() - start) / 100:.0f} us per batch')


if __name__ == '__main__':
    main()
