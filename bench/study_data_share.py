"""How much of a study-cpu training epoch goes to reading and augmenting the images (JPEG decode, CIFAR crop+flip,
tensor conversion, collation), against the whole epoch with the model's training steps.

The issue behind the study asks to keep the data in memory if decoding is the bottleneck; this measures whether
it is. Both loops read the same 4,000 CIFAR-10 JPEGs through the same transform and loader (batch 32, no
workers, as ``study-cpu`` runs train.py with ``-j 0``), one torch thread, in interleaved repeats so that drifts in
machine load hit both; the first repeat is a warm-up and is dropped. Reported: median seconds per epoch of each
loop and the data share = data / whole.

Usage: python bench/study_data_share.py --data-dir bench/_work/cifar10 [--repeats 4] [--images 4000]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import timm
import torch
from timm.data import create_dataset

import cfl_timm  # noqa: F401  (registers the *_cifar models)
from cfl_timm.data.transforms import create_cifar_train_transform


def epoch_seconds(loader, step=None) -> float:
    start = time.perf_counter()
    for images, targets in loader:
        if step is not None:
            step(images, targets)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-dir', type=Path, required=True, help='folder with train/ class folders')
    parser.add_argument('--repeats', type=int, default=4)
    parser.add_argument('--images', type=int, default=4000)
    parser.add_argument('--model', default='resnet8_cifar')
    parser.add_argument('--json', type=Path, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error(f'--repeats must be >= 2 (the first is a warm-up), got {args.repeats}')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(args, parser)
    finally:
        torch.set_num_threads(threads)


def _measure(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    torch.manual_seed(0)
    dataset = create_dataset('', root=str(args.data_dir), split='train', is_training=True)
    if len(dataset) < args.images:
        parser.error(f'--images {args.images}: {args.data_dir}/train has only {len(dataset)} images')
    dataset.transform = create_cifar_train_transform(32)
    stride = len(dataset) // args.images
    subset = torch.utils.data.Subset(dataset, range(0, stride * args.images, stride))  # every class
    loader = torch.utils.data.DataLoader(subset, batch_size=32, shuffle=True, drop_last=True, num_workers=0)

    model = timm.create_model(args.model, num_classes=10).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()

    def train_step(images, targets):
        loss = criterion(model(images.to(memory_format=torch.channels_last)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    data_s, whole_s = [], []
    for repeat in range(args.repeats):
        data, whole = epoch_seconds(loader), epoch_seconds(loader, train_step)
        if repeat:
            data_s.append(data)
            whole_s.append(whole)
    result = {'images': args.images, 'model': args.model, 'repeats_kept': len(data_s),
              'data_seconds_median': statistics.median(data_s), 'whole_seconds_median': statistics.median(whole_s),
              'data_share': statistics.median(data_s) / statistics.median(whole_s),
              'torch': torch.__version__, 'timm': timm.__version__}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + '\n')
    return result


if __name__ == '__main__':
    main()
