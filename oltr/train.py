"""OLTR stage 1 with timm backbones and cfl_timm losses: ``python -m oltr.train --config CFG --data-root IMAGES``.

Recipe: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", https://arxiv.org/abs/1904.05160
Loss: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978

Config values come from the YAML file; named command-line options and ``--set key=value`` replace them only
when given. The cyclical loss is stepped with the 0-based epoch (eta stays in [0, 1]); the epoch with the best
val top-1 is saved atomically; the test split (and the open set, when given) is evaluated with that checkpoint.
Every epoch also writes ``last.pth`` (model, optimizer, StepLR, loss epoch, RNG state), so ``--resume`` continues
an interrupted run exactly where it stopped.
"""
import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from cfl_timm import create_loss
from cfl_timm.files import atomic_write_bytes
from cfl_timm.training import arg_types

from .config import apply_overrides, load_config, loss_kwargs, run_name
from .data import ListDataset, eval_transform, train_transform
from .lists import check_images_exist, class_counts, list_path, read_list
from .metrics import SHOT_RULES, macro_f1, open_set_f_measure, open_set_predictions, shot_accuracies
from .model import create_stage1_model

__all__ = ['get_args_parser', 'resolve_config', 'main']

# Named command-line options that map onto config keys (default None = "not given").
_CLI_KEYS = ('epochs', 'batch_size', 'num_classes', 'image_size', 'loss', 'gamma', 'gamma_hc', 'gamma_pos',
             'gamma_neg', 'cyclical_factor', 'smoothing', 'workers', 'seed', 'shot_rule', 'open_threshold')
# Keys that may change between an interrupted run and its resumption (they do not change what is trained).
_RESUME_FREE_KEYS = ('workers', 'shot_rule', 'open_threshold')


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='OLTR stage 1 with timm backbones and cyclical focal loss')
    parser.add_argument('--config', required=True, help='YAML config, e.g. oltr/configs/Places_LT/stage_1_cfl.yaml')
    parser.add_argument('--data-root', required=True, help='root the list files\' image paths are relative to')
    parser.add_argument('--list-dir', default=None, help='folder with <DS>_{train,val,test,open}.txt '
                                                         '(default: data/<DS>, OLTR\'s layout)')
    parser.add_argument('--open-root', default=None, help='root of the open-set images (enables open-set testing)')
    parser.add_argument('--output', default='logs', help='runs go to OUTPUT/<DS>/<run name>')
    parser.add_argument('--pretrained-file', default=None, help='local ImageNet weights (ResNet-152 for Places_LT)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='override any config key')
    parser.add_argument('--test', action='store_true', help='only evaluate the run\'s best checkpoint on test')
    parser.add_argument('--test_open', action='store_true', help='--test including the open set (needs --open-root)')
    parser.add_argument('--resume', action='store_true', help="continue the run from its last.pth")
    parser.add_argument('--device', default=None, help='default: cuda when available, else cpu')
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--batch-size', dest='batch_size', type=int, default=None)
    parser.add_argument('--num-classes', dest='num_classes', type=int, default=None)
    parser.add_argument('--image-size', dest='image_size', type=int, default=None)
    parser.add_argument('--loss', default=None, help="'ce' or a focal loss type ('sym', 'asym', 'asym-cyclical')")
    for name in ('gamma', 'gamma_hc', 'gamma_pos', 'gamma_neg', 'cyclical_factor', 'smoothing'):
        parser.add_argument(f'--{name}', type=float, default=None)
    parser.add_argument('--workers', type=int, default=None)
    parser.add_argument('--seed', type=arg_types.seed, default=None)
    parser.add_argument('--shot-rule', dest='shot_rule', choices=SHOT_RULES, default=None,
                        help="many/few thresholds: 'code' (>= 100 / <= 20, OLTR's code, the config default) or "
                             "'paper' (> 100 / < 20)")
    parser.add_argument('--open-threshold', dest='open_threshold', type=float, default=None,
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
    """SGD over two named parameter groups (features, classifier) with their own learning rates, and StepLR."""
    groups = [
        {'name': 'features', 'params': list(model.features.parameters()), 'lr': config['feature_lr']},
        {'name': 'classifier', 'params': list(model.classifier.parameters()), 'lr': config['classifier_lr']},
    ]
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


def _restore(path: Path, config: dict[str, Any], model: nn.Module, optimizer, scheduler,
             criterion: nn.Module) -> tuple[int, float]:
    """Load ``last.pth`` into the training state; returns (next epoch, best val top-1 so far)."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    changed = sorted(k for k in config if k not in _RESUME_FREE_KEYS and state['config'].get(k) != config[k])
    if changed:
        raise ValueError(f'--resume: the config differs from the interrupted run in {changed} '
                         f"(saved: {[state['config'].get(k) for k in changed]}, now: {[config[k] for k in changed]}).")
    model.load_state_dict(state['model'])
    optimizer.load_state_dict(state['optimizer'])
    scheduler.load_state_dict(state['scheduler'])
    criterion.load_state_dict(state['criterion'])
    torch.set_rng_state(state['rng'])
    return state['epoch'] + 1, state['best_val_top1']


def train_one_epoch(model, loader, criterion, optimizer, device) -> float:
    model.train()
    total, count = 0.0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        loss = criterion(model(images), targets)
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


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train stage 1 (unless ``--test``/``--test_open``) and evaluate; returns the test results."""
    config = resolve_config(args)
    dataset = config['dataset']
    list_dir = Path(args.list_dir) if args.list_dir else Path('data') / dataset
    test_only = args.test or args.test_open
    with_open = args.test_open or args.open_root is not None
    if args.test_open and args.open_root is None:
        raise ValueError('--test_open needs --open-root (the root of the open-set images).')
    if config['backbone'] == 'resnet152' and args.pretrained_file is None and not test_only:
        raise ValueError('backbone resnet152 (Places_LT) starts from ImageNet weights: pass --pretrained-file PATH.')
    if args.pretrained_file is not None and not Path(args.pretrained_file).is_file():
        raise FileNotFoundError(f'pretrained weights file not found: {args.pretrained_file}')
    if args.resume and test_only:
        raise ValueError('--resume continues training; it cannot be combined with --test / --test_open.')
    criterion = None if test_only else create_criterion(config)  # invalid loss settings fail here, before any work

    # Read and check every list and image before any work.
    num_classes = config['num_classes']
    splits = {split: read_list(list_path(list_dir, dataset, split), num_classes=num_classes)
              for split in ('train', 'val', 'test')}
    if with_open:
        splits['open'] = read_list(list_path(list_dir, dataset, 'open'), open_set=True)
    for split, samples in splits.items():
        if split == 'train' and test_only:
            continue
        root = args.open_root if split == 'open' else args.data_root
        check_images_exist(root, samples, list_name=str(list_path(list_dir, dataset, split)))
    train_counts = class_counts(splits['train'], num_classes)

    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    run_dir = Path(args.output) / dataset / run_name(config)
    best_path, last_path = run_dir / 'best.pth', run_dir / 'last.pth'
    if args.resume and not last_path.is_file():
        raise FileNotFoundError(f'--resume: no {last_path} to continue from.')
    if not args.resume and not test_only and (last_path.exists() or best_path.exists()):
        # Never overwrite a finished or interrupted run's checkpoints.
        raise FileExistsError(f'{run_dir} already holds a run: continue it with --resume, evaluate it with --test, '
                              'or choose another --output.')
    torch.manual_seed(config['seed'])
    np.random.seed(config['seed'])

    def loader(split: str, train: bool = False) -> DataLoader:
        transform = (train_transform(config['image_size']) if train
                     else eval_transform(config['image_size'], config['resize_size']))
        root = args.open_root if split == 'open' else args.data_root
        return DataLoader(ListDataset(root, splits[split], transform), batch_size=config['batch_size'],
                          shuffle=train, drop_last=train, num_workers=config['workers'],
                          pin_memory=device.type == 'cuda')

    model = create_stage1_model(config['backbone'], num_classes, feature_dim=config['feature_dim'],
                                pretrained_file=None if test_only else args.pretrained_file,
                                require_pretrained=not test_only).to(device)
    if not test_only:
        if len(splits['train']) < config['batch_size']:
            raise ValueError(f"{len(splits['train'])} training images are fewer than one batch of "
                             f"{config['batch_size']} (last partial batches are dropped).")
        criterion = criterion.to(device)
        optimizer, scheduler = create_optimizer(model, config)
        train_loader, val_loader = loader('train', train=True), loader('val')
        best_acc, start_epoch = -1.0, 0
        if args.resume:
            start_epoch, best_acc = _restore(last_path, config, model, optimizer, scheduler, criterion)
            print(f'resuming at epoch {start_epoch} (best val top-1 so far {100 * best_acc:.2f})', flush=True)
        else:
            _atomic_write_json(run_dir / 'config.json', config)
        for epoch in range(start_epoch, config['epochs']):
            if hasattr(criterion, 'set_epoch'):
                criterion.set_epoch(epoch)  # 0-based: eta stays in [0, 1]
            start = time.time()
            train_loss = train_one_epoch(model, train_loader, criterion, optimizer, device)
            scheduler.step()
            val_probs, val_labels = predict(model, val_loader, device)
            val_acc = float((val_probs.argmax(axis=1) == val_labels).mean())
            eta = f' eta {criterion.eta:.4f}' if hasattr(criterion, 'eta') else ''
            print(f'epoch {epoch}: train loss {train_loss:.4f}{eta} val top-1 {100 * val_acc:.2f} '
                  f'({time.time() - start:.1f} s)', flush=True)
            if val_acc > best_acc:
                best_acc = val_acc
                state = {'model': model.state_dict(), 'epoch': epoch, 'val_top1': val_acc, 'config': config}
                atomic_write_bytes(best_path, lambda f, s=state: torch.save(s, f))
            last = {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                    'scheduler': scheduler.state_dict(), 'criterion': criterion.state_dict(), 'epoch': epoch,
                    'best_val_top1': best_acc, 'rng': torch.get_rng_state(), 'config': config}
            atomic_write_bytes(last_path, lambda f, s=last: torch.save(s, f))
        print(f'best val top-1 {100 * best_acc:.2f}', flush=True)

    if not best_path.is_file():
        raise FileNotFoundError(f'no checkpoint to test: {best_path} (train this config first)')
    checkpoint = torch.load(best_path, map_location=device, weights_only=True)
    model.load_state_dict(checkpoint['model'])
    probs, labels = predict(model, loader('test'), device)
    open_probs = predict(model, loader('open'), device)[0] if with_open else None
    results = evaluate(probs, labels, train_counts, config, open_probs)
    results['best_epoch'] = checkpoint['epoch']
    _atomic_write_json(run_dir / 'results.json', results)
    print(format_table(results), flush=True)
    return results


def cli(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """The command line: bad input (config, lists, images, run folder) ends as a usage error, one line
    ``train.py: error: ...`` with exit status 2, before any training step."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return main(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        parser.error(str(error))


if __name__ == '__main__':
    cli()
