"""Knowledge distillation with any registered loss as the task loss, on timm's distillation tasks.

timm's ``LogitDistillationTask`` (G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural
Network", https://arxiv.org/abs/1503.02531), ``FeatureDistillationTask`` and ``TokenDistillationTask``
(H. Touvron et al., "Training data-efficient image transformers & distillation through attention",
https://arxiv.org/abs/2012.12877) combine a task loss with a distillation loss:

    loss = w_task * criterion(student_logits, y) + w_kd * distill(student, teacher)

Here the criterion is any loss of the registry (cyclical focal loss included). The cyclical scheduler
attaches to that criterion (``attach_loss``: eta, and the training temperature of arXiv 2202.08835 dividing
the logits the criterion receives), so the cyclical position acts on the task loss and the optimizer, never
on the distillation term, which keeps its own ``kd_temperature``.
"""
from typing import Any, Optional

import torch
import torch.nn as nn
from timm.task import FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask

from .task import CriterionStateMixin

__all__ = ['DISTILLATION_TASKS', 'create_distillation_task', 'distillation_kwargs']


class CyclicalLogitDistillationTask(CriterionStateMixin, LogitDistillationTask):
    """timm's logit distillation; the task loss's state is checkpointed."""


class CyclicalFeatureDistillationTask(CriterionStateMixin, FeatureDistillationTask):
    """timm's feature distillation; the task loss's state is checkpointed."""


class CyclicalTokenDistillationTask(CriterionStateMixin, TokenDistillationTask):
    """timm's token distillation; the task loss's state is checkpointed."""


DISTILLATION_TASKS = {
    'logit': CyclicalLogitDistillationTask,
    'feature': CyclicalFeatureDistillationTask,
    'token': CyclicalTokenDistillationTask,
}


def create_distillation_task(
        distill_type: str,
        student: nn.Module,
        teacher: str,
        criterion: nn.Module,
        *,
        teacher_pretrained_path: Optional[str] = None,
        task_loss_weight: Optional[float] = None,
        distill_loss_weight: Optional[float] = None,
        kd_temperature: float = 4.0,
        kd_loss_type: str = 'kl',
        student_feature_dim: Optional[int] = None,
        teacher_feature_dim: Optional[int] = None,
        token_distill_type: str = 'soft',
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        verbose: bool = True,
) -> nn.Module:
    """A timm distillation task whose task loss is ``criterion`` (see the module docstring).

    Args:
        distill_type: 'logit', 'feature' or 'token'.
        student: The model to train.
        teacher: Teacher model name (timm registry); created with pretrained weights, from
            ``teacher_pretrained_path`` when given.
        criterion: The task loss (any registered loss).
        teacher_pretrained_path: Teacher weights file.
        task_loss_weight: Weight of the task loss (timm's weighting modes).
        distill_loss_weight: Weight of the distillation loss.
        kd_temperature: Softmax temperature of the logit / soft-token distillation loss.
        kd_loss_type: Logit distillation loss; timm implements 'kl'.
        student_feature_dim: Feature distillation: student feature size (detected when None).
        teacher_feature_dim: Feature distillation: teacher feature size (detected when None).
        token_distill_type: Token distillation: 'soft' or 'hard'.
        device: Device of the task (and teacher).
        dtype: Dtype of the teacher and task buffers.
        verbose: Log the weighting.

    Raises:
        ValueError: For an unknown ``distill_type``.
    """
    if distill_type not in DISTILLATION_TASKS:
        raise ValueError(f"Unknown distillation type '{distill_type}', expected one of {tuple(DISTILLATION_TASKS)}.")
    common = dict(student_model=student, teacher_model=teacher, criterion=criterion,
                  teacher_pretrained_path=teacher_pretrained_path, task_loss_weight=task_loss_weight,
                  distill_loss_weight=distill_loss_weight, device=device, dtype=dtype, verbose=verbose)
    if distill_type == 'logit':
        return CyclicalLogitDistillationTask(**common, loss_type=kd_loss_type, temperature=kd_temperature)
    if distill_type == 'feature':
        return CyclicalFeatureDistillationTask(**common, student_feature_dim=student_feature_dim,
                                               teacher_feature_dim=teacher_feature_dim)
    return CyclicalTokenDistillationTask(**common, distill_type=token_distill_type, temperature=kd_temperature)


def distillation_kwargs(args: Any) -> dict[str, Any]:
    """:func:`create_distillation_task` keyword arguments from train.py's ``--kd-*`` flags."""
    return dict(
        distill_type=args.kd_distill_type, teacher=args.kd_model_name,
        teacher_pretrained_path=args.kd_pretrained_path, task_loss_weight=args.task_loss_weight,
        distill_loss_weight=args.distill_loss_weight, kd_temperature=args.kd_temperature,
        kd_loss_type=args.kd_loss_type, student_feature_dim=args.kd_student_feature_dim,
        teacher_feature_dim=args.kd_teacher_feature_dim, token_distill_type=args.kd_token_distill_type)
