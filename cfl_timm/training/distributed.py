"""Distributed helpers that also work on CPU (gloo) processes launched by torchrun."""
from typing import Any

import torch
import torch.distributed as dist

__all__ = ['ddp_device_ids', 'gather_objects', 'barrier']


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
