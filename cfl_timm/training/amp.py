"""timm's NativeScaler that counts the optimizer steps its found-inf check skipped.

Under float16 autocast a loss or gradient can overflow to inf / NaN. torch's GradScaler then skips that
optimizer step and halves its scale (the found-inf path), for cross-entropy and the cfl-timm losses alike (they
are built with ``check_finite=False`` for training). The count makes those skips visible in the log and in
``summary.csv`` instead of silent.
"""
import torch
from timm.utils import NativeScaler

__all__ = ['CountingScaler']


class CountingScaler(NativeScaler):
    """:class:`timm.utils.NativeScaler` plus ``skipped_steps``: optimizer steps skipped for non-finite gradients.

    A step was skipped when the scale went down in ``update()`` (the scaler backs off only on found inf). Reading
    the scale is one host sync per optimizer update, where ``GradScaler.step`` already synchronises to read its
    found-inf flag.

    Args:
        device: Device type of the scaler ('cuda'; 'cpu' runs the same found-inf path on CPU).
    """

    def __init__(self, device: str = 'cuda') -> None:
        super().__init__(device=device)
        self.skipped_steps = 0

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_grad=None, clip_mode='norm',
                 parameters=None, create_graph=False, need_update=True) -> None:
        scale = self._scaler.get_scale() if need_update else None
        super().__call__(loss, optimizer, clip_grad=clip_grad, clip_mode=clip_mode, parameters=parameters,
                         create_graph=create_graph, need_update=need_update)
        if need_update and self._scaler.get_scale() < scale:
            self.skipped_steps += 1
