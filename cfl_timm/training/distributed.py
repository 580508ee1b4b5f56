"""Distributed helpers that also work on CPU (gloo) processes launched by torchrun."""
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.utils.distributed import init_distributed_device_so, is_distributed_env, world_info_from_env

__all__ = ['ProcessInfo', 'barrier', 'ddp_device_ids', 'gather_objects', 'init_process', 'launched_world_size']


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process runs: its device and its place among the torchrun processes.

    Attributes:
        device: The device this process trains on.
        rank: Global rank (0 when not distributed).
        world_size: Number of processes (1 when not distributed).
        distributed: Whether a process group is initialised.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    distributed: bool = False

    @property
    def is_primary(self) -> bool:
        """Rank 0: the process that logs and writes the run files."""
        return self.rank == 0


def init_process(device: str) -> ProcessInfo:
    """Initialise the process group from torchrun's environment (timm's ``init_distributed_device_so``;
    gloo on CPU, nccl on CUDA), or describe the single process on ``device`` when not launched by torchrun."""
    info = init_distributed_device_so(device=device)
    return ProcessInfo(device=torch.device(info['device']), rank=info['global_rank'],
                       world_size=info['world_size'], distributed=info['distributed'])


def launched_world_size() -> int:
    """The number of processes this run is launched with, read from the launcher's environment (torchrun's
    ``WORLD_SIZE``, or SLURM's) by the rule :func:`init_process` follows, before any process group exists."""
    return world_info_from_env()[2] if is_distributed_env() else 1


def ddp_device_ids(device: torch.device) -> Any:
    """``device_ids`` for DistributedDataParallel: ``[device]`` on an accelerator, None on CPU.

    DDP rejects ``device_ids`` for CPU modules, which is why timm's own train.py fails under torchrun on CPU.
    """
    return None if device.type == 'cpu' else [device]


def gather_objects(obj: Any) -> list:
    """All ranks' ``obj`` in rank order (``[obj]`` when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Synchronise all ranks (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
