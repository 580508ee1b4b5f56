#!/usr/bin/env python3
"""A small train.py with the statement structure of timm's own train.py, for the CI tests of patches/apply.py.

Written for this project (no upstream code): it has every statement the tool anchors on, in upstream's order
and nesting (module-level ``parser`` and flags, ``_parse_args``, ``main`` building the loss, the task, the
optimizer and ``create_scheduler_v2``, an epoch loop calling ``train_one_epoch`` with keyword arguments, and
``num_updates += 1`` in the update loop), and trains on the installed timm library. After each optimizer update
it records what the update used (the weight decay of every parameter group with its configured value, the clip
threshold, the training temperature of the scheduler) in ``updates.json`` so the tests can check the patched
hooks.
"""
import argparse
import json
import os
from collections import OrderedDict

import torch
import torch.utils.data
from timm import utils
from timm.loss import create_classification_loss
from timm.models import create_model
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask
from torchvision import datasets, transforms

parser = argparse.ArgumentParser(description='structural sample of timm train.py')
parser.add_argument('data_dir', help='folder dataset with train/ and val/')
parser.add_argument('--model', default='test_resnet')
parser.add_argument('--num-classes', type=int, default=10)
parser.add_argument('--img-size', type=int, default=32)
parser.add_argument('--max-images', type=int, default=64)
parser.add_argument('--batch-size', type=int, default=16)
parser.add_argument('--epochs', type=int, default=3)
parser.add_argument('--cooldown-epochs', type=int, default=0)
parser.add_argument('--sched', default='cosine')
parser.add_argument('--warmup-epochs', type=int, default=0)
parser.add_argument('--lr', type=float, default=0.01)
parser.add_argument('--weight-decay', type=float, default=2e-5)
parser.add_argument('--loss', default=None)
parser.add_argument('--smoothing', type=float, default=0.1)
parser.add_argument('--mixup', type=float, default=0.0)
parser.add_argument('--cutmix', type=float, default=0.0)
parser.add_argument('--clip-grad', type=float, default=None)
parser.add_argument('--clip-mode', default='norm')
parser.add_argument('--output', default='output')


def _parse_args():
    return parser.parse_args(), ''


def main():
    args, args_text = _parse_args()
    torch.manual_seed(0)
    device = torch.device('cpu')
    model = create_model(args.model, num_classes=args.num_classes)
    transform = transforms.Compose([transforms.Resize(args.img_size), transforms.ToTensor()])
    dataset = datasets.ImageFolder(os.path.join(args.data_dir, 'train'), transform=transform)
    dataset = torch.utils.data.Subset(dataset, range(min(args.max_images, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)

    mixup_active = args.mixup > 0 or args.cutmix > 0.
    train_loss_fn = create_classification_loss(args.loss, smoothing=args.smoothing, soft_targets=mixup_active)
    train_loss_fn = train_loss_fn.to(device=device)
    task = ClassificationTask(model, criterion=train_loss_fn, device=device, verbose=False)
    optimizer = create_optimizer_v2(model, opt='sgd', lr=args.lr, weight_decay=args.weight_decay)

    updates_per_epoch = len(loader)
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer,
        **scheduler_kwargs(args),
        updates_per_epoch=updates_per_epoch,
    )
    os.makedirs(args.output, exist_ok=True)
    updates = []
    for epoch in range(num_epochs):
        train_metrics = train_one_epoch(
            epoch,
            model,
            loader,
            optimizer,
            args,
            task=task,
            device=device,
            lr_scheduler=lr_scheduler,
            record=updates,
        )
        lr_scheduler.step(epoch + 1)
        lrs = [group['lr'] for group in optimizer.param_groups]
        utils.update_summary(
            epoch, train_metrics, None, filename=os.path.join(args.output, 'summary.csv'),
            lr=sum(lrs) / len(lrs), write_header=epoch == 0)
    with open(os.path.join(args.output, 'updates.json'), 'w') as f:
        json.dump(updates, f)


def train_one_epoch(
        epoch,
        model,
        loader,
        optimizer,
        args,
        task=None,
        device=None,
        lr_scheduler=None,
        record=None,
):
    losses = utils.AverageMeter()
    num_updates = epoch * len(loader)
    task.train()
    for input, target in loader:
        loss = task(input.to(device), target.to(device))['loss']
        optimizer.zero_grad()
        loss.backward()
        if args.clip_grad is not None:
            utils.dispatch_clip_grad(model.parameters(), value=args.clip_grad, mode=args.clip_mode)
        optimizer.step()
        losses.update(loss.item(), input.shape[0])
        record.append({
            'epoch': epoch,
            'groups': [[g.get('initial_weight_decay', g['weight_decay']), g['weight_decay']]
                       for g in optimizer.param_groups],
            'clip_grad': args.clip_grad,
            'temperature': getattr(lr_scheduler, 'temperature', None),
        })

        num_updates += 1
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
    return OrderedDict([('loss', losses.avg)])


if __name__ == '__main__':
    main()
