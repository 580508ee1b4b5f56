"""Records the learning rates timm's own scheduler types give, importing timm and torch only (never cfl_timm).

tests/test_scheduler_factory.py runs :func:`record` in a fresh interpreter without ``import cfl_timm`` and in its
own process after it, and requires identical results. Run as a script it prints the record as JSON.
"""
import argparse
import json
import sys

import timm.scheduler
import torch

SCHED_TYPES = ('cosine', 'tanh', 'step', 'constant', 'multistep', 'plateau', 'poly', 'wsd', 'rsqrt', 'none')
UPDATES_PER_EPOCH = 3
# Non-default values for every argument, so each one is exercised (warmup, cooldown, noise, cycles, k-decay...).
FACTORY_KWARGS = dict(
    num_epochs=9, decay_epochs=3, decay_milestones=[3, 6], cooldown_epochs=2, patience_epochs=1, decay_rate=0.5,
    min_lr=1e-4, warmup_lr=1e-3, warmup_epochs=2, warmup_prefix=False, noise=[0.4, 0.8], noise_pct=0.5,
    noise_std=0.7, noise_seed=3, cycle_mul=1.5, cycle_decay=0.5, cycle_limit=2, k_decay=1.5, plateau_mode='min')
# A namespace as timm's train.py parses it (no cyclical attributes).
TIMM_ARGS = dict(sched='cosine', epochs=9, decay_epochs=3, decay_milestones=[3, 6], warmup_epochs=2,
                 cooldown_epochs=2, patience_epochs=1, decay_rate=0.5, min_lr=1e-4, warmup_lr=1e-3,
                 warmup_prefix=True, lr_noise=None, lr_noise_pct=0.67, lr_noise_std=1.0, seed=42, lr_cycle_mul=1.0,
                 lr_cycle_decay=0.5, lr_cycle_limit=1, lr_k_decay=1.0, eval_metric='loss', sched_on_updates=False)


def make_optimizer() -> torch.optim.Optimizer:
    weights = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
    return torch.optim.SGD([{'params': [weights[0]], 'lr_scale': 0.5}, {'params': [weights[1]]}], lr=0.1,
                           momentum=0.9, weight_decay=1e-4)


def run(scheduler, optimizer, steps: int, per_update: bool) -> list:
    lrs = [[group['lr'] for group in optimizer.param_groups]]
    for t in range(1, steps + 1):
        if scheduler is not None:
            if per_update:
                scheduler.step_update(t, metric=1.0 / t)
            else:
                scheduler.step(t, metric=1.0 if t % 3 else 2.0)  # plateau sees no improvement now and then
        lrs.append([group['lr'] for group in optimizer.param_groups])
    return lrs


def record(**extra_kwargs) -> dict:
    """{case: [num_epochs, the LR scheduler's class name, lrs per step]} over every type and stepping mode, plus
    ``scheduler_kwargs`` of a timm train.py namespace and timm's ``create_scheduler`` (v1) on it."""
    out = {}
    for sched in SCHED_TYPES:
        for per_update in (False, True):
            if sched == 'plateau' and per_update:
                continue
            optimizer = make_optimizer()
            scheduler, num_epochs = timm.scheduler.create_scheduler_v2(
                optimizer, sched=sched, step_on_epochs=not per_update, updates_per_epoch=UPDATES_PER_EPOCH,
                **FACTORY_KWARGS, **extra_kwargs)
            steps = (num_epochs + 1) * (UPDATES_PER_EPOCH if per_update else 1)
            name = type(scheduler).__name__
            if name == 'CyclicalScheduler':  # cfl_timm's wrapper (cyclical keywords given): the LR scheduler inside
                name = type(scheduler.lr_scheduler).__name__
            out[f'{sched}/{"update" if per_update else "epoch"}'] = [num_epochs, name,
                                                                    run(scheduler, optimizer, steps, per_update)]
    args = argparse.Namespace(**TIMM_ARGS)
    out['scheduler_kwargs'] = timm.scheduler.scheduler_kwargs(args)
    optimizer = make_optimizer()
    scheduler, num_epochs = timm.scheduler.create_scheduler(args, optimizer, updates_per_epoch=UPDATES_PER_EPOCH)
    out['create_scheduler'] = [num_epochs, type(scheduler).__name__, run(scheduler, optimizer, num_epochs, False)]
    return out


if __name__ == '__main__':
    torch.set_num_threads(1)
    assert 'cfl_timm' not in sys.modules
    print(json.dumps(record()))
