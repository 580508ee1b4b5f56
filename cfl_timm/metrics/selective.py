"""Selective classification: the risk-coverage curve, its area (AURC), the optimal AURC* and the excess E-AURC.

Reference: Y. Geifman, G. Uziel and R. El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers",
ICLR 2019, https://arxiv.org/abs/1805.08206.

Samples are sorted by confidence c = max_k softmax(z)_k, highest first; the risk at coverage i / N is the error
rate among the first i samples, and AURC is the mean of the N risks. **Ties**: samples with equal confidence cannot
be ranked against each other, so within a run of tied confidences the errors are spread evenly (the expected risk
over every order of the tied samples). The curve and AURC therefore do not depend on the input order.
"""
import math

import torch

from .checks import check_logits, check_real, check_targets

__all__ = ['aurc', 'eaurc', 'optimal_aurc', 'risk_coverage_curve']


def _confidence_and_errors(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = check_logits(logits)
    targets = check_targets(targets, logits.shape[0], logits.shape[1])
    confidence, prediction = torch.softmax(logits, dim=1).max(dim=1)
    return confidence, (prediction != targets).double()


def risk_coverage_curve(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage i / N and selective risk for i = 1..N (both float64 (N,)), ties handled as in the module docstring.

    Args:
        logits: (N, K) logits.
        targets: (N,) integer class indices.
    """
    confidence, errors = _confidence_and_errors(logits, targets)
    order = confidence.argsort(descending=True, stable=True)
    confidence, errors = confidence[order], errors[order]
    count = confidence.numel()
    position = torch.arange(1, count + 1, dtype=torch.float64)
    # Each run of equal confidences: its start, size and error count; the first j of its members carry j / size of
    # the run's errors in expectation.
    _, run_sizes = torch.unique_consecutive(confidence, return_counts=True)
    run_id = torch.repeat_interleave(torch.arange(run_sizes.numel()), run_sizes)
    run_end = run_sizes.cumsum(0)
    run_start = run_end - run_sizes
    cumulative = torch.cat([errors.new_zeros(1), errors.cumsum(0)])
    before = cumulative[run_start][run_id]
    in_run = (cumulative[run_end] - cumulative[run_start])[run_id]
    taken = position - run_start[run_id].double()
    expected_errors = before + in_run * taken / run_sizes[run_id].double()
    return position / count, expected_errors / position


def aurc(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Area under the risk-coverage curve: the mean of the N selective risks."""
    return float(risk_coverage_curve(logits, targets)[1].mean())


def optimal_aurc(error_rate: float) -> float:
    """AURC* = r + (1 - r) ln(1 - r), the AURC of a perfect ranking (every error last) in the large-N limit.

    Args:
        error_rate: Overall error rate r in [0, 1]; (1 - r) ln(1 - r) is taken as 0 at r = 1.
    """
    error_rate = check_real(error_rate, 'error_rate', 0.0, 1.0)
    return error_rate + (1.0 - error_rate) * math.log1p(-error_rate) if error_rate < 1.0 else 1.0


def eaurc(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Excess AURC: AURC - AURC*(r) with r the error rate of the same samples."""
    coverage, risk = risk_coverage_curve(logits, targets)
    return float(risk.mean()) - optimal_aurc(float(risk[-1]))
