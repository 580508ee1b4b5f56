"""Training tasks whose loss state is checkpointed with the model.

Paper: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978 (the epoch-aware criterion whose
state must survive a resume); the same holds for AdaFocal's per-bin gammas (Ghosh et al., NeurIPS 2022).
The cyclical softmax temperature is not task state: the scheduler's pre-hook on the loss applies it
(:meth:`cfl_timm.scheduler.CyclicalScheduler.attach_loss`).
"""
from typing import Any, Optional

import torch.nn as nn
from timm.task import ClassificationTask

__all__ = ['CriterionStateMixin', 'CriterionStateClassificationTask']


class CriterionStateMixin:
    """Mixin for timm tasks: the criterion's ``state_dict`` is task state.

    timm's ``CheckpointSaver(task=...)`` writes ``get_task_state()`` into every checkpoint and resume calls
    :meth:`load_task_state`; a checkpoint of another loss gives a clear ValueError instead of a raw state_dict
    error. The task's own state (e.g. a distillation projection) is kept beside it.
    """

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> dict[str, Any]:
        state = dict(super().get_task_state(module=module, ema=ema))
        if not ema and module is None and isinstance(self.criterion, nn.Module):
            if criterion_state := self.criterion.state_dict():
                state['criterion'] = criterion_state
        return state

    def load_task_state(
            self,
            state: Optional[dict[str, Any]],
            strict: bool = True,
            module: Optional[nn.Module] = None,
            ema: bool = False,
    ) -> None:
        """Restore the task and criterion state of a checkpoint; a clear ValueError when it belongs to another
        loss."""
        super().load_task_state(state, strict=strict, module=module, ema=ema)
        if ema or module is not None:
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


class CriterionStateClassificationTask(CriterionStateMixin, ClassificationTask):
    """timm's :class:`~timm.task.ClassificationTask` whose criterion state is checkpointed."""
