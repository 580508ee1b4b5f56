"""OneCycle learning-rate schedule as a timm scheduler (``--sched onecycle``).

Paper: L. N. Smith and N. Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
Learning Rates", https://arxiv.org/abs/1708.07120 (the two-phase form of ``torch.optim.lr_scheduler.OneCycleLR``).
"""
import math
from typing import Optional

import torch
from timm.scheduler.scheduler import Scheduler

from ..loss._base import is_integer, is_real

__all__ = ['ONECYCLE_ANNEAL', 'OneCycleLRScheduler']

ONECYCLE_ANNEAL = ('cos', 'linear')


class OneCycleLRScheduler(Scheduler):
    """OneCycle: warm up from lr_max / div_factor to lr_max, then anneal to lr_max / (div_factor * final_div_factor).

    lr_max is each parameter group's learning rate (times its ``lr_scale`` under layer decay, as in timm). With
    T = ``t_initial`` steps (epochs or updates), w = pct_start * T - 1 the last warm-up step and L = T - 1 the
    last step::

        lr(t) = anneal(lr_initial, lr_max,   t / w)              0 <= t <= w
              = anneal(lr_max,     lr_final, (t - w) / (L - w))  w < t <= L
              = lr_final                                         t > L   (timm's cooldown epochs)

        lr_initial = lr_max / div_factor,  lr_final = lr_initial / final_div_factor
        anneal_cos(a, b, x) = b + (a - b) * (1 + cos(pi * x)) / 2,  anneal_linear(a, b, x) = a + (b - a) * x

    which is ``torch.optim.lr_scheduler.OneCycleLR(total_steps=T, three_phase=False, cycle_momentum=False)`` at
    every step 0 <= t <= L. The value is a pure function of t, so ``step(start_epoch)`` /
    ``step_update(start_update)`` after a restart, or ``load_state_dict``, resumes it exactly.

    Args:
        optimizer: The optimizer; each group's ``lr`` is its lr_max.
        t_initial: Number of steps T of the cycle (epochs, or updates with ``t_in_epochs=False``), >= 1.
        pct_start: Fraction of the cycle spent warming up, in (0, 1).
        div_factor: lr_max / lr_initial, > 0.
        final_div_factor: lr_initial / lr_final, > 0.
        anneal_strategy: 'cos' or 'linear'.
        t_in_epochs: Step per epoch (``step``) or per optimizer update (``step_update``).
        noise_range_t, noise_pct, noise_std, noise_seed: timm's LR noise (see :class:`timm.scheduler.Scheduler`).
        initialize: Record each group's ``initial_lr`` (timm's convention).
    """

    def __init__(
            self,
            optimizer: torch.optim.Optimizer,
            t_initial: int,
            pct_start: float = 0.3,
            div_factor: float = 25.0,
            final_div_factor: float = 1e4,
            anneal_strategy: str = 'cos',
            t_in_epochs: bool = True,
            noise_range_t=None,
            noise_pct: float = 0.67,
            noise_std: float = 1.0,
            noise_seed: Optional[int] = 42,
            initialize: bool = True,
    ) -> None:
        if not is_integer(t_initial) or t_initial < 1:
            raise ValueError(f'OneCycle needs t_initial (the cycle length in steps) as an integer >= 1, '
                             f'got {t_initial!r}.')
        if not (is_real(pct_start) and 0 < pct_start < 1):
            raise ValueError(f'onecycle pct_start (warm-up fraction) must lie in (0, 1), got {pct_start!r}.')
        for name, value in (('div_factor', div_factor), ('final_div_factor', final_div_factor)):
            if not (is_real(value) and value > 0):
                raise ValueError(f'onecycle {name} must be a finite number > 0, got {value!r}.')
        if anneal_strategy not in ONECYCLE_ANNEAL:
            raise ValueError(
                f"Unknown onecycle anneal_strategy '{anneal_strategy}', expected one of {ONECYCLE_ANNEAL}.")
        super().__init__(
            optimizer, param_group_field='lr', t_in_epochs=t_in_epochs, noise_range_t=noise_range_t,
            noise_pct=noise_pct, noise_std=noise_std, noise_seed=noise_seed, initialize=initialize)
        self.t_initial = int(t_initial)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.anneal_strategy = anneal_strategy
        self.update_groups(self._get_lr(0))

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == 'cos':
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _lr(self, lr_max: float, t: float) -> float:
        lr_initial = lr_max / self.div_factor
        lr_final = lr_initial / self.final_div_factor
        last = self.t_initial - 1
        if t > last:
            return lr_final
        warm_end = float(self.pct_start * self.t_initial) - 1
        if t <= warm_end:  # a zero-length warm-up (pct_start * T = 1) starts at lr_max
            return self._anneal(lr_initial, lr_max, t / warm_end if warm_end > 0 else 1.0)
        if last == warm_end:  # unreachable for pct_start < 1; kept for a zero-length decay phase
            return lr_final
        return self._anneal(lr_max, lr_final, (t - warm_end) / (last - warm_end))

    def _get_lr(self, t: int) -> list[float]:
        return [self._lr(lr_max, t) for lr_max in self.base_values]

    def get_cycle_length(self, cycles: int = 0) -> int:
        """Length of the cycle in steps (timm's cycle schedulers' interface; OneCycle has exactly one cycle)."""
        return self.t_initial
