"""Classification task with a training-only softmax temperature and checkpointed criterion state.

Paper: L. N. Smith, "General Cyclical Training of Neural Networks", https://arxiv.org/abs/2202.08835
(cyclical softmax temperature), and "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 (the epoch-aware
criterion whose state must survive a resume).
"""
from typing import Any, Optional

import torch
import torch.nn as nn
from timm.task import ClassificationTask

__all__ = ['TemperatureClassificationTask']


class TemperatureClassificationTask(ClassificationTask):
    """timm's :class:`~timm.task.ClassificationTask` whose training loss sees ``logits / temperature``.

    loss = criterion(model(x) / T, y) when ``temperature`` T is set, criterion(model(x), y) when it is None.
    The returned ``output`` stays the raw logits, and evaluation never goes through this forward, so the
    temperature acts on training only. The criterion's ``state_dict`` (e.g. the cyclical loss epoch) is task
    state, so timm's ``CheckpointSaver(task=...)`` writes it and :meth:`load_task_state` restores it.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, criterion=criterion, **kwargs)
        self.temperature: Optional[float] = None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        output = self.trainable_module(input)
        logits = output if self.temperature is None else output / self.temperature
        return {'loss': self.criterion(logits, target), 'output': output}

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> dict[str, Any]:
        if ema or not isinstance(self.criterion, nn.Module):
            return {}
        state = self.criterion.state_dict()
        return {'criterion': state} if state else {}

    def load_task_state(
            self,
            state: Optional[dict[str, Any]],
            strict: bool = True,
            module: Optional[nn.Module] = None,
            ema: bool = False,
    ) -> None:
        """Restore the criterion state of a checkpoint; a clear ValueError when it belongs to another loss."""
        if ema:
            return
        saved = (state or {}).get('criterion', {})
        current = self.criterion.state_dict() if isinstance(self.criterion, nn.Module) else {}
        hint = (f"this run's loss is {type(self.criterion).__name__}; resume with the loss flags the checkpoint was "
                "trained with (--loss and its keywords, see the run's args.yaml).")
        if set(saved) != set(current):
            raise ValueError(f'--resume: the checkpoint holds training-loss state {sorted(saved)} but {hint} '
                             f'(its state: {sorted(current)})')
        if not saved:
            return
        try:
            self.criterion.load_state_dict(saved, strict=strict)
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f'--resume: the checkpoint\'s training-loss state does not fit: {hint} ({e})') from e
