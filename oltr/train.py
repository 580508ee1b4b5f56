"""OLTR stages 1 and 2 with timm backbones and cfl_timm losses:
``python -m oltr.train --config CFG --data-root IMAGES [--stage1-checkpoint BEST_PTH]``.

Recipe: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", https://arxiv.org/abs/1904.05160
Loss: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978

Config values come from the YAML file; named command-line options and ``--set key=value`` replace them only
when given. The cyclical loss is stepped with the 0-based epoch (eta stays in [0, 1]); the epoch with the best
val top-1 is saved atomically; the test split (and the open set, when given) is evaluated with that checkpoint.
Every epoch also writes ``last.pth`` (model, optimizer, StepLR, loss epoch, RNG state), so ``--resume`` continues
an interrupted run exactly where it stopped.

Stage 2 (a config with ``stage: 2``) starts from a stage-1 ``best.pth``: it adds the modulated attention and the
meta-embedding classifier, computes the class centroids over the training set (plain sampling, eval transform),
then trains with class-aware sampling and the discriminative centroids loss beside the config's loss.
"""
import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from cfl_timm import create_loss
from cfl_timm.files import atomic_write_bytes
from cfl_timm.training import RunLock, arg_types, claim_run
from cfl_timm.training.termination import exit_on_sigterm

from .centroids import DiscCentroidsLoss, compute_centroids
from .config import DEFAULTS, LOSSES, apply_overrides, load_config, loss_kwargs, run_name
from .data import ListDataset, eval_transform, train_transform
from .lists import check_images_exist, class_counts, list_path, read_list
from .metrics import SHOT_RULES, macro_f1, open_set_f_measure, open_set_predictions, shot_accuracies
from .model import create_stage1_model
from .sampler import ClassAwareSampler
from .stage2_model import create_stage2_model, load_stage1, read_stage1_checkpoint

__all__ = ['get_args_parser', 'resolve_config', 'RunData', 'read_data', 'create_model', 'main']

# Named command-line options that map onto config keys (default None = "not given").
_CLI_KEYS = ('epochs', 'batch_size', 'num_classes', 'image_size', 'loss', 'gamma', 'gamma_hc', 'gamma_pos',
             'gamma_neg', 'cyclical_factor', 'smoothing', 'workers', 'seed', 'shot_rule', 'open_threshold')
# Keys that may change between an interrupted run and its resumption (they do not change what is trained).
_RESUME_FREE_KEYS = ('workers', 'shot_rule', 'open_threshold')


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m oltr.train',
                                     description='OLTR stages 1 and 2 with timm backbones and cyclical focal loss')
    parser.add_argument('--config', required=True, help='YAML config, e.g. oltr/configs/Places_LT/stage_1_cfl.yaml')
    parser.add_argument('--data-root', required=True, type=arg_types.existing_folder,
                        help='root the list files\' image paths are relative to')
    parser.add_argument('--list-dir', default=None, type=arg_types.existing_folder,
                        help='folder with <DS>_{train,val,test,open}.txt (default: data/<DS>, OLTR\'s layout)')
    parser.add_argument('--open-root', default=None, type=arg_types.existing_folder,
                        help='root of the open-set images (enables open-set testing)')
    parser.add_argument('--output', default='logs', type=arg_types.output_folder,
                        help='runs go to OUTPUT/<DS>/<run name>')
    parser.add_argument('--pretrained-file', default=None, type=arg_types.existing_file,
                        help='local ImageNet weights (ResNet-152 for Places_LT)')
    parser.add_argument('--stage1-checkpoint', dest='stage1_checkpoint', default=None, type=arg_types.existing_file,
                        help='stage 2: the best.pth of the stage-1 run to start from (same backbone and classes)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='override any config key')
    parser.add_argument('--test', action='store_true', help='only evaluate the run\'s best checkpoint on test')
    parser.add_argument('--test_open', action='store_true', help='--test including the open set (needs --open-root)')
    parser.add_argument('--resume', action='store_true', help="continue the run from its last.pth")
    parser.add_argument('--device', default=None, type=arg_types.device_name,
                        help='default: cuda when available, else cpu')
    parser.add_argument('--epochs', type=arg_types.positive_int, default=None)
    parser.add_argument('--batch-size', dest='batch_size', type=arg_types.positive_int, default=None)
    parser.add_argument('--num-classes', dest='num_classes', type=arg_types.class_count, default=None)
    parser.add_argument('--image-size', dest='image_size', type=arg_types.positive_int, default=None)
    parser.add_argument('--loss', default=None, choices=LOSSES,
                        help="'ce' or a focal loss type ('sym', 'asym', 'asym-cyclical')")
    for name in ('gamma', 'gamma_hc', 'gamma_pos', 'gamma_neg'):  # ranges: the loss factory's, by name
        parser.add_argument(f'--{name}', type=arg_types.finite_float, default=None)
    parser.add_argument('--cyclical_factor', type=arg_types.at_least_one, default=None)
    parser.add_argument('--smoothing', type=arg_types.fraction, default=None)
    parser.add_argument('--workers', type=arg_types.non_negative_int, default=None)
    parser.add_argument('--seed', type=arg_types.seed, default=None)
    parser.add_argument('--shot-rule', dest='shot_rule', choices=SHOT_RULES, default=None,
                        help="many/few thresholds: 'code' (>= 100 / <= 20, OLTR's code, the config default) or "
                             "'paper' (> 100 / < 20)")
    parser.add_argument('--open-threshold', dest='open_threshold', default=None,
                        type=arg_types.float_in(0.0, 1.0, 'open_probability', low_open=True, high_open=True),
                        help='max softmax probability below which a prediction is "unknown" (OLTR: 0.1)')
    return parser


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config file, then the named options that were given, then ``--set``."""
    return apply_overrides(load_config(args.config), {k: getattr(args, k) for k in _CLI_KEYS}, args.set)


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + '\n').encode()))


def create_criterion(config: dict[str, Any]) -> nn.Module:
    """Cross-entropy for ``loss: ce``, otherwise the cfl_timm focal-family loss of the config."""
    if config['loss'] == 'ce':
        return nn.CrossEntropyLoss()
    return create_loss(**loss_kwargs(config))


def create_optimizer(model: nn.Module, config: dict[str, Any]):
    """SGD over named parameter groups with their own learning rates, and StepLR (stepped per epoch).

    Groups: the trainable features, the classifier, and in stage 2 the centroids (``centroids_lr``; OLTR gives
    them a separate SGD with the same momentum, weight decay and StepLR, which is the same update).
    """
    centroids = getattr(model.classifier, 'centroids', None)
    groups = [
        {'name': 'features', 'params': [p for p in model.features.parameters() if p.requires_grad],
         'lr': config['feature_lr']},
        {'name': 'classifier', 'params': [p for p in model.classifier.parameters() if p is not centroids],
         'lr': config['classifier_lr']},
    ]
    if centroids is not None:
        groups.append({'name': 'centroids', 'params': [centroids], 'lr': config['centroids_lr']})
    optimizer = torch.optim.SGD(groups, lr=config['classifier_lr'], momentum=config['momentum'],
                                weight_decay=config['weight_decay'])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config['lr_step'], gamma=config['lr_gamma'])
    return optimizer, scheduler


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels over a loader."""
    model.eval()
    probs, labels = [], []
    for images, targets in loader:
        probs.append(torch.softmax(model(images.to(device)).float(), dim=1).cpu())
        labels.append(targets)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def _restore(state: dict[str, Any], config: dict[str, Any], model: nn.Module, optimizer, scheduler,
             criterion: nn.Module, stage1_checkpoint: Optional[str]) -> tuple[int, float]:
    """Load a ``last.pth`` state into the training state; returns (next epoch, best val top-1 so far).

    A config key missing from the saved config (a run from before the key existed) counts as its default.
    """
    saved = {**DEFAULTS, **state['config']}
    changed = sorted(k for k in config if k not in _RESUME_FREE_KEYS and saved[k] != config[k])
    if changed:
        raise ValueError(f'--resume: the config differs from the interrupted run in {changed} '
                         f"(saved: {[saved[k] for k in changed]}, now: {[config[k] for k in changed]}).")
    recorded = state.get('stage1_checkpoint')
    if stage1_checkpoint is not None and str(Path(stage1_checkpoint).resolve()) != recorded:
        raise ValueError(f'--resume: --stage1-checkpoint {stage1_checkpoint} is not the checkpoint the run started '
                         f'from ({recorded}); resume with that one, or without --stage1-checkpoint.')
    model.load_state_dict(state['model'])
    optimizer.load_state_dict(state['optimizer'])
    scheduler.load_state_dict(state['scheduler'])
    criterion.load_state_dict(state['criterion'])
    torch.set_rng_state(state['rng'])
    return state['epoch'] + 1, state['best_val_top1']


def train_one_epoch(model, loader, criterion, optimizer, device, centroids_loss: Optional[nn.Module] = None,
                    centroids_weight: float = 0.0) -> float:
    """One epoch; in stage 2 ``centroids_weight * centroids_loss(features, targets, centroids)`` is added."""
    model.train()
    total, count = 0.0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        if centroids_loss is None:
            loss = criterion(model(images), targets)
        else:
            logits, feats = model(images, return_features=True)
            loss = (criterion(logits, targets)
                    + centroids_weight * centroids_loss(feats, targets, model.classifier.centroids))
        if not torch.isfinite(loss):
            raise FloatingPointError(f'non-finite training loss {loss.item()}')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * targets.numel()
        count += targets.numel()
    return total / max(count, 1)


def evaluate(probs: np.ndarray, labels: np.ndarray, train_counts: list[int], config: dict[str, Any],
             open_probs: Optional[np.ndarray] = None) -> dict[str, float]:
    """OLTR's metrics: closed-set top-1 and shot groups (argmax), macro F1, and the open-set F-measure over the
    closed test set plus the open set with predictions below ``open_threshold`` called unknown."""
    preds = probs.argmax(axis=1)
    results = shot_accuracies(preds, labels, train_counts, rule=config['shot_rule'])
    results['macro_f1'] = macro_f1(preds, labels, config['num_classes'])
    if open_probs is not None:
        all_probs = np.concatenate([probs, open_probs])
        all_labels = np.concatenate([labels, np.full(len(open_probs), -1)])
        results['f_measure'] = open_set_f_measure(open_set_predictions(all_probs, config['open_threshold']),
                                                  all_labels)
    return results


def format_table(results: dict[str, float]) -> str:
    keys = [k for k in ('overall', 'many', 'medium', 'few', 'macro_f1', 'f_measure') if k in results]
    header = ' | '.join(f'{k:>8}' for k in keys)
    row = ' | '.join(f'{100 * results[k]:8.2f}' if not math.isnan(results[k]) else f'{"n/a":>8}' for k in keys)
    return f'{header}\n{row}'


def _stage1_source(args: argparse.Namespace, config: dict[str, Any], test_only: bool) -> Optional[dict[str, Any]]:
    """Check the options that depend on the stage; returns the stage-1 checkpoint a new stage-2 run starts from
    (read and checked against the config), else None."""
    if config['stage'] == 1:
        if args.stage1_checkpoint is not None:
            raise ValueError('--stage1-checkpoint starts a stage-2 run, but this config is stage 1 (stage: 1).')
        if config['backbone'] == 'resnet152' and args.pretrained_file is None and not test_only:
            raise ValueError('backbone resnet152 (Places_LT) starts from ImageNet weights: pass --pretrained-file '
                             'PATH.')
        return None
    if args.pretrained_file is not None:
        raise ValueError('--pretrained-file is for stage 1; stage 2 takes every weight from --stage1-checkpoint.')
    if test_only or args.resume:
        return None  # the run's own best.pth / last.pth hold every weight
    if args.stage1_checkpoint is None:
        raise ValueError('stage 2 starts from a stage-1 run: pass --stage1-checkpoint PATH (its best.pth).')
    return read_stage1_checkpoint(args.stage1_checkpoint, config)


def create_model(config: dict[str, Any], pretrained_file: Optional[str], stage1: Optional[dict[str, Any]],
                 test_only: bool) -> nn.Module:
    """The network of the config's stage; stage 2 copies ``stage1`` (a stage-1 checkpoint) in when given."""
    if config['stage'] == 1:
        return create_stage1_model(config['backbone'], config['num_classes'], feature_dim=config['feature_dim'],
                                   pretrained_file=None if test_only else pretrained_file,
                                   require_pretrained=not test_only)
    model = create_stage2_model(config['backbone'], config['num_classes'], image_size=config['image_size'],
                                feature_dim=config['feature_dim'], freeze_backbone=config['freeze_backbone'])
    if stage1 is not None:
        load_stage1(model, stage1)
    return model


@dataclass(frozen=True)
class RunData:
    """The checked samples of each split, with what is needed to load them: a builder of the run's loaders."""

    config: dict[str, Any]
    samples: dict[str, list[tuple[str, int]]]
    data_root: str
    open_root: Optional[str]
    device: torch.device

    def loader(self, split: str, train: bool = False) -> DataLoader:
        """The split's loader: training transform, shuffled or class-aware, last partial batch dropped when
        ``train``; otherwise the eval transform in list order."""
        config = self.config
        transform = (train_transform(config['image_size']) if train
                     else eval_transform(config['image_size'], config['resize_size']))
        root = self.open_root if split == 'open' else self.data_root
        sampler = None
        if train and config['sampler'] == 'class_aware':
            sampler = ClassAwareSampler([label for _, label in self.samples[split]], config['samples_per_class'],
                                        seed=config['seed'])
        return DataLoader(ListDataset(root, self.samples[split], transform), batch_size=config['batch_size'],
                          shuffle=train and sampler is None, sampler=sampler, drop_last=train,
                          num_workers=config['workers'], pin_memory=self.device.type == 'cuda')


def read_data(args: argparse.Namespace, config: dict[str, Any], *, train: bool, with_open: bool,
              device: torch.device) -> RunData:
    """Read and check every list and image the run needs, before any work (the training images only when
    ``train``; then stage 2 also needs every class in the training list, and there must be one full batch)."""
    dataset, num_classes = config['dataset'], config['num_classes']
    list_dir = Path(args.list_dir) if args.list_dir else Path('data') / dataset
    samples = {split: read_list(list_path(list_dir, dataset, split), num_classes=num_classes)
               for split in ('train', 'val', 'test')}
    if with_open:
        samples['open'] = read_list(list_path(list_dir, dataset, 'open'), open_set=True)
    for split, split_samples in samples.items():
        if split == 'train' and not train:
            continue
        root = args.open_root if split == 'open' else args.data_root
        check_images_exist(root, split_samples, list_name=str(list_path(list_dir, dataset, split)))
    if train:
        counts = class_counts(samples['train'], num_classes)
        if config['stage'] == 2 and 0 in counts:
            empty = [c for c, n in enumerate(counts) if n == 0]
            raise ValueError(f"{list_path(list_dir, dataset, 'train')}: stage 2 needs a centroid of every class, "
                             f'but classes {empty[:10]} ({len(empty)} in all) have no training image.')
        if len(samples['train']) < config['batch_size']:
            raise ValueError(f"{len(samples['train'])} training images are fewer than one batch of "
                             f"{config['batch_size']} (last partial batches are dropped).")
    return RunData(config, samples, args.data_root, args.open_root, device)


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train the config's stage (unless ``--test``/``--test_open``) and evaluate; returns the test results."""
    config = resolve_config(args)
    test_only = args.test or args.test_open
    with_open = args.test_open or args.open_root is not None
    if args.test_open and args.open_root is None:
        raise ValueError('--test_open needs --open-root (the root of the open-set images).')
    if args.resume and test_only:
        raise ValueError('--resume continues training; it cannot be combined with --test / --test_open.')
    stage1 = _stage1_source(args, config, test_only)
    criterion = None if test_only else create_criterion(config)  # invalid loss settings fail here, before any work
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    data = read_data(args, config, train=not test_only, with_open=with_open, device=device)
    run_dir = Path(args.output) / config['dataset'] / run_name(config)
    if args.resume and not (run_dir / 'last.pth').is_file():
        raise FileNotFoundError(f"--resume: no {run_dir / 'last.pth'} to continue from.")
    torch.manual_seed(config['seed'])
    np.random.seed(config['seed'])
    model = create_model(config, args.pretrained_file, stage1, test_only).to(device)
    if not test_only:
        lock = RunLock.acquire(run_dir)  # one process per run folder; the kernel drops it however we end
        try:
            _train(args, config, model, criterion.to(device), data, run_dir)
        finally:
            lock.release()
    return _test(config, model, data, run_dir, with_open)


def _test(config: dict[str, Any], model: nn.Module, data: RunData, run_dir: Path, with_open: bool
          ) -> dict[str, float]:
    """Evaluate the run's ``best.pth`` on test (and the open set); writes and returns ``results.json``."""
    best_path = run_dir / 'best.pth'
    if not best_path.is_file():
        raise FileNotFoundError(f'no checkpoint to test: {best_path} (train this config first)')
    checkpoint = torch.load(best_path, map_location=data.device, weights_only=True)
    model.load_state_dict(checkpoint['model'])
    probs, labels = predict(model, data.loader('test'), data.device)
    open_probs = predict(model, data.loader('open'), data.device)[0] if with_open else None
    train_counts = class_counts(data.samples['train'], config['num_classes'])
    results = evaluate(probs, labels, train_counts, config, open_probs)
    results['best_epoch'] = checkpoint['epoch']
    _atomic_write_json(run_dir / 'results.json', results)
    print(format_table(results), flush=True)
    return results


def _train(args: argparse.Namespace, config: dict[str, Any], model: nn.Module, criterion: nn.Module,
           data: RunData, run_dir: Path) -> None:
    """Train in ``run_dir`` (locked by the caller): refuse a folder holding another run, claim the run id, set up
    stage 2's centroids on a new run, then the epochs with ``best.pth`` / ``last.pth`` written atomically."""
    best_path, last_path, device = run_dir / 'best.pth', run_dir / 'last.pth', data.device
    in_use = [p.name for p in (best_path, last_path) if p.exists()]
    if in_use and not args.resume:
        # Never overwrite a finished or interrupted run's checkpoints.
        raise FileExistsError(f'{run_dir} already holds a run: continue it with --resume, evaluate it with --test, '
                              'or choose another --output.')
    last = torch.load(last_path, map_location='cpu', weights_only=True) if args.resume else None
    claim = claim_run(run_dir, in_use, str(last_path) if args.resume else '', last)
    optimizer, scheduler = create_optimizer(model, config)
    stage2 = config['stage'] == 2
    centroids_loss = DiscCentroidsLoss().to(device) if stage2 else None
    train_loader, val_loader = data.loader('train', train=True), data.loader('val')
    best_acc, start_epoch = -1.0, 0
    if args.resume:
        start_epoch, best_acc = _restore(last, config, model, optimizer, scheduler, criterion, args.stage1_checkpoint)
        print(f'resuming run {claim.run_id} at epoch {start_epoch} (best val top-1 so far {100 * best_acc:.2f})',
              flush=True)
        stage1_path = last.get('stage1_checkpoint')
    else:
        claim.write(run_dir)
        _atomic_write_json(run_dir / 'config.json', config)
        stage1_path = str(Path(args.stage1_checkpoint).resolve()) if stage2 else None
        if stage2:  # the memory starts as the per-class mean feature of the stage-1 network (plus fresh layers)
            model.classifier.centroids.data.copy_(
                compute_centroids(model.features, data.loader('train'), config['num_classes'], device))
    saver = {'run_id': claim.run_id}
    for epoch in range(start_epoch, config['epochs']):
        if hasattr(criterion, 'set_epoch'):
            criterion.set_epoch(epoch)  # 0-based: eta stays in [0, 1] over this stage's own epochs
        if isinstance(train_loader.sampler, ClassAwareSampler):
            train_loader.sampler.set_epoch(epoch)
        start = time.time()
        train_loss = train_one_epoch(model, train_loader, criterion, optimizer, device, centroids_loss,
                                     config['centroids_weight'])
        scheduler.step()
        val_probs, val_labels = predict(model, val_loader, device)
        val_acc = float((val_probs.argmax(axis=1) == val_labels).mean())
        eta = f' eta {criterion.eta:.4f}' if hasattr(criterion, 'eta') else ''
        print(f'epoch {epoch}: train loss {train_loss:.4f}{eta} val top-1 {100 * val_acc:.2f} '
              f'({time.time() - start:.1f} s)', flush=True)
        if val_acc > best_acc:
            best_acc = val_acc
            state = {'model': model.state_dict(), 'epoch': epoch, 'val_top1': val_acc, 'config': config,
                     'saver': saver, 'stage1_checkpoint': stage1_path}
            atomic_write_bytes(best_path, lambda f, s=state: torch.save(s, f))
        state = {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                 'scheduler': scheduler.state_dict(), 'criterion': criterion.state_dict(), 'epoch': epoch,
                 'best_val_top1': best_acc, 'rng': torch.get_rng_state(), 'config': config, 'saver': saver,
                 'stage1_checkpoint': stage1_path}
        atomic_write_bytes(last_path, lambda f, s=state: torch.save(s, f))
    print(f'best val top-1 {100 * best_acc:.2f}', flush=True)


def cli(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """The command line: bad input (config, lists, images, run folder) ends as a usage error, one line
    ``train.py: error: ...`` with exit status 2, before any training step."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        with exit_on_sigterm(parser.prog, '; the run folder keeps its last epoch: repeat the command with --resume '
                             'to continue.'):
            return main(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        parser.error(str(error))


if __name__ == '__main__':
    cli()
