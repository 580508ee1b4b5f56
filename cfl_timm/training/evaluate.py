"""Exact evaluation, in one process or under torchrun: each image of the split is counted once.

timm's evaluation loaders shard a split with ``OrderedDistributedSampler``, which pads every rank to the same
length by repeating images: a 355-image split is evaluated as 356 under two processes, and the metrics drift from
the one-process numbers. Here each rank instead evaluates a strided shard without padding (rank r takes images
r, r + W, r + 2W, ... of W ranks), the per-image logits are gathered back into dataset order on every rank, and
every metric is computed from that one full (N, K) tensor by the same code as in one process. Under torchrun the
metrics therefore equal the one-process metrics on the same weights (exactly, as long as the model gives each image
the same logits whatever batch it is in).

Both ``train.py`` (its per-epoch evaluation) and ``validate.py`` use :func:`create_eval_loader`, :func:`predict`
and :func:`metrics_of_logits` (or :func:`evaluate`, which chains them). Memory: the gathered float32 logits take
N * K * 4 bytes per rank (4 MB for CIFAR-100's 10,000 test images, 200 MB for ImageNet's 50,000).
"""
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from timm.data import create_loader

from cfl_timm.data.subsets import SubsetDataset
from cfl_timm.metrics import CalibrationMeter, fit_temperature

_logger = logging.getLogger(__name__)

__all__ = ['EvalResult', 'EvalShard', 'create_eval_loader', 'evaluate', 'metrics_of_logits',
           'evaluate_temperature_scaled', 'predict', 'shard_eval_dataset']


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EvalShard(SubsetDataset):
    """Rank ``rank``'s share of an evaluation split: images rank, rank + W, rank + 2W, ... (no padding).

    Args:
        dataset: The whole split (map-style; ``transform`` is forwarded to it).
        rank: This process's rank.
        world_size: Number of processes W.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f'need 0 <= rank < world_size, got rank {rank} and world_size {world_size}.')
        self.total = len(dataset)
        self.rank, self.world_size = rank, world_size
        super().__init__(dataset, np.arange(rank, self.total, world_size, dtype=np.int64))


def shard_eval_dataset(dataset: torch.utils.data.Dataset, rank: Optional[int] = None,
                       world_size: Optional[int] = None) -> torch.utils.data.Dataset:
    """The dataset itself in one process, else this rank's :class:`EvalShard` (rank / world size default to the
    initialised process group's)."""
    if rank is None or world_size is None:
        rank, world_size = _world()
    return dataset if world_size == 1 else EvalShard(dataset, rank, world_size)


def create_eval_loader(dataset: torch.utils.data.Dataset, data_config: dict[str, Any], *, batch_size: int,
                       num_workers: int = 4, device: torch.device | str = 'cpu',
                       use_prefetcher: Optional[bool] = None, pin_memory: bool = False,
                       persistent_workers: bool = False, crop_border_pixels: Optional[int] = None) -> Any:
    """timm's evaluation loader (``create_loader(is_training=False)``) over this rank's shard, never padded.

    Args:
        dataset: The whole evaluation split.
        data_config: timm's resolved data config (``input_size``, ``interpolation``, ``mean``, ``std``,
            ``crop_pct``; ``crop_mode`` when present).
        batch_size: Images per batch.
        num_workers: Loader worker processes.
        device: Where the prefetcher puts the batches.
        use_prefetcher: timm's prefetcher (default: on for CUDA devices only).
        pin_memory: Pin host memory.
        persistent_workers: Keep workers alive between passes.
        crop_border_pixels: Pixels cropped at the image border (timm).
    """
    if use_prefetcher is None:
        use_prefetcher = torch.device(device).type == 'cuda'
    return create_loader(
        shard_eval_dataset(dataset), input_size=data_config['input_size'], batch_size=batch_size, is_training=False,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        crop_pct=data_config['crop_pct'], crop_mode=data_config.get('crop_mode'),
        crop_border_pixels=crop_border_pixels, num_workers=num_workers,
        distributed=False, pin_memory=pin_memory, device=torch.device(device), use_prefetcher=use_prefetcher,
        persistent_workers=persistent_workers and num_workers > 0)


def _gather_in_order(local: torch.Tensor, shard: EvalShard, device: torch.device) -> torch.Tensor:
    """Every rank's ``local`` (samples along dim 0) gathered and interleaved back into dataset order."""
    rank, world_size = _world()
    if (shard.rank, shard.world_size) != (rank, world_size):
        raise ValueError(f'the loader shards for rank {shard.rank} of {shard.world_size}, but this is rank {rank} '
                         f'of {world_size}.')
    comm_device = device if dist.get_backend() == 'nccl' else torch.device('cpu')
    longest = -(-shard.total // world_size)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=comm_device)
    padded[:local.shape[0]] = local.to(comm_device)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    result = torch.empty((shard.total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        count = len(range(r, shard.total, world_size))
        result[r::world_size] = part[:count].cpu()
    return result


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Any, *, device: torch.device,
            autocast: Optional[Callable[[], Any]] = None, channels_last: bool = False,
            views: Optional[Sequence[Callable[[torch.Tensor], torch.Tensor]]] = None,
            log_interval: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and int64 targets of the whole split, on the CPU, in dataset order, on every rank.

    Under torchrun the loader must come from :func:`create_eval_loader` (its dataset is this rank's
    :class:`EvalShard`); a DistributedDataParallel wrapper is unwrapped (ranks may run different batch counts).

    Args:
        model: The network (put in eval mode here).
        loader: Loader of the split (of this rank's shard under torchrun), batches of (images, targets).
        device: Device of the model.
        autocast: Zero-argument context-manager factory for mixed precision (None: full precision).
        channels_last: Feed channels-last images.
        views: Test-time views (callables on the image batch); None: the images as loaded.
        log_interval: Log progress every this many batches on rank 0 (0: never).

    Returns:
        logits (N, K), or (V, N, K) with ``views``, and targets (N,).
    """
    distributed = _world()[1] > 1
    shard = getattr(loader, 'dataset', None)
    if distributed and not isinstance(shard, EvalShard):
        raise ValueError('distributed evaluation needs a loader from create_eval_loader (an unpadded EvalShard), '
                         "not timm's padded distributed sampler.")
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    model.eval()
    autocast = autocast or contextlib.nullcontext
    transforms = list(views) if views is not None else [lambda images: images]
    logits, targets = [], []
    rank = _world()[0]
    for batch_index, (images, target) in enumerate(loader):
        if log_interval and rank == 0 and batch_index % log_interval == 0:
            _logger.info(f'Test: [{batch_index:>4d}/{len(loader)}]')
        images, target = images.to(device), target.to(device)
        outputs = []
        for view in transforms:
            batch = view(images)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast():
                output = model(batch)
            if isinstance(output, (tuple, list)):
                output = output[0]
            outputs.append(output.float().cpu())
        logits.append(torch.stack(outputs, dim=1))  # (n, V, K)
        targets.append(target.cpu().long())
    if logits:
        local_logits, local_target = torch.cat(logits), torch.cat(targets)
    elif distributed:  # a rank with an empty shard still joins the gather
        local_logits, local_target = torch.zeros(0, len(transforms), 0), torch.zeros(0, dtype=torch.long)
    else:
        raise ValueError('the evaluated dataset is empty.')
    if distributed:
        num_classes = torch.tensor([local_logits.shape[-1]], device=device if dist.get_backend() == 'nccl' else None)
        dist.all_reduce(num_classes, op=dist.ReduceOp.MAX)
        if local_logits.shape[-1] == 0:
            local_logits = torch.zeros(0, len(transforms), int(num_classes))
        local_logits = _gather_in_order(local_logits, shard, device)
        local_target = _gather_in_order(local_target, shard, device)
        if local_target.numel() == 0:
            raise ValueError('the evaluated dataset is empty.')
    return (local_logits.transpose(0, 1).contiguous() if views is not None else local_logits[:, 0].contiguous(),
            local_target)


@dataclass
class EvalResult:
    """Metrics of one evaluation: ``metrics`` (``loss`` = mean cross-entropy = ``nll``, and every key of
    ``cfl_timm.metrics.METRIC_KEYS``), ``reliability`` (``CalibrationMeter.reliability()``) and the sample count."""
    metrics: dict[str, float]
    reliability: dict[str, list[float]]
    num_samples: int
    logits: Optional[torch.Tensor] = field(default=None, repr=False)
    target: Optional[torch.Tensor] = field(default=None, repr=False)


def metrics_of_logits(logits: torch.Tensor, target: torch.Tensor, num_classes: int, num_bins: int = 15,
                    chunk: int = 4096) -> EvalResult:
    """Every metric of complete (N, K) logits and (N,) targets, fed to one ``CalibrationMeter`` in fixed chunks
    (the same arithmetic however many processes produced the logits)."""
    meter = CalibrationMeter(num_classes, num_bins=num_bins)
    for start in range(0, len(target), chunk):
        meter.update(logits[start:start + chunk], target[start:start + chunk])
    metrics = meter.compute()
    return EvalResult(metrics={'loss': metrics['nll'], **metrics}, reliability=meter.reliability(),
                      num_samples=int(target.numel()), logits=logits, target=target)


def evaluate(model: torch.nn.Module, loader: Any, *, num_classes: int, device: torch.device,
             autocast: Optional[Callable[[], Any]] = None, channels_last: bool = False,
             num_bins: int = 15) -> EvalResult:
    """:func:`predict` then :func:`metrics_of_logits`: the metrics of the whole split, identical on every rank."""
    logits, target = predict(model, loader, device=device, autocast=autocast, channels_last=channels_last)
    return metrics_of_logits(logits, target, num_classes, num_bins=num_bins)


def evaluate_temperature_scaled(fit_logits: torch.Tensor, fit_target: torch.Tensor, logits: torch.Tensor,
                                target: torch.Tensor, num_classes: int, *, split: str, method: str = 'nll',
                                allow_test_split: bool = False, num_bins: int = 15) -> tuple[float, EvalResult]:
    """Temperature scaling, fitted then scored: T from :func:`cfl_timm.metrics.fit_temperature` on a held-out
    split's logits, then every metric of ``logits / T`` (:func:`metrics_of_logits`; no model is run again).

    Under torch.distributed every rank holds the same gathered logits; the fit runs on every rank and rank 0's T is
    broadcast, so all ranks score with the identical float whatever the platform's arithmetic.

    Args:
        fit_logits: (N, K) logits of the split T is fitted on (held out; a test split is refused).
        fit_target: (N,) its class indices.
        logits: (M, K) logits of the split that is scored after scaling.
        target: (M,) its class indices.
        num_classes: Number of classes of the metrics.
        split: Name of the fitted split (see :func:`cfl_timm.metrics.check_calibration_split`).
        method: Fit method, one of ``cfl_timm.metrics.FIT_METHODS``.
        allow_test_split: Explicitly allow fitting on a test split.
        num_bins: Bins of the ECE (of the fit for ``'grid-ece'`` and of the scored metrics).

    Returns:
        (T, the :class:`EvalResult` of ``logits / T``).
    """
    temperature = fit_temperature(fit_logits, fit_target, method=method, split=split,
                                  allow_test_split=allow_test_split, num_bins=num_bins)
    if _world()[1] > 1:
        shared = [temperature]
        dist.broadcast_object_list(shared, src=0)
        temperature = float(shared[0])
    return temperature, metrics_of_logits(logits / temperature, target, num_classes, num_bins=num_bins)
