"""A small deterministic L-BFGS minimiser in numpy for smooth convex problems of a few hundred parameters.

Reference: J. Nocedal and S. J. Wright, "Numerical Optimization", 2nd ed., Springer 2006: Algorithm 7.4 (the
two-loop recursion), eq. 7.20 (the initial Hessian scaling) and Algorithm 3.1 (backtracking line search with the
Armijo condition, here with a safeguarded quadratic step).

The post-hoc scaling calibrators solve up to 28 such problems per fit; ``torch.optim.LBFGS`` spends as long on its
own bookkeeping (dozens of tiny tensor operations per iteration) as on the objective, which here is a couple of
matrix products. numpy's per-operation cost on 110-element vectors is several times lower.
"""
from collections.abc import Callable

import numpy as np

__all__ = ['minimize_lbfgs']

ARMIJO = 1e-4  # sufficient decrease: f(x + t d) <= f(x) + ARMIJO t g.d


def minimize_lbfgs(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], start: np.ndarray, max_iter: int = 200,
                   history: int = 20, grad_tol: float = 1e-9, change_tol: float = 1e-12) -> tuple[np.ndarray, float]:
    """Minimise ``fun`` from ``start`` by L-BFGS with a backtracking Armijo line search.

    Stops when the largest gradient entry is at most ``grad_tol``, when an accepted step lowers f by at most
    ``change_tol * max(1, |f|)`` (a tolerance relative to the objective's scale), when the line search cannot
    find a decrease, or after ``max_iter`` iterations. Curvature pairs with s.y <= 0 are not stored, so the
    implied Hessian approximation stays positive definite. Deterministic: the same input gives the same output.

    Args:
        fun: Maps a float64 vector to (f, gradient); f may be ``nan`` / ``inf`` (treated as no decrease).
        start: Initial point (not modified).
        max_iter: Most iterations (each needs one or more evaluations of ``fun``).
        history: Curvature pairs kept.
        grad_tol: Stop when max |gradient| <= this.
        change_tol: Stop when an iteration lowers f by at most this times max(1, |f|).

    Returns:
        (x, f) at the best point found; f(x) <= f(start).
    """
    x = np.array(start, dtype=np.float64)
    f, g = fun(x)
    steps: list[np.ndarray] = []
    changes: list[np.ndarray] = []
    for _ in range(max_iter):
        if not np.abs(g).max() > grad_tol:
            break
        direction = _two_loop(g, steps, changes)
        slope = float(g @ direction)
        if not slope < 0:  # not a descent direction (numerical breakdown): restart from steepest descent
            steps.clear()
            changes.clear()
            direction = _two_loop(g, steps, changes)
            slope = float(g @ direction)
        step = 1.0
        while True:
            x_new = x + step * direction
            f_new, g_new = fun(x_new)
            if f_new <= f + ARMIJO * step * slope:
                break
            # minimiser of the quadratic through f, the slope and f_new, kept in [0.1, 0.5] of the step
            curvature = f_new - f - step * slope
            trial = -slope * step * step / (2 * curvature) if curvature > 0 else 0.5 * step
            step = min(max(trial, 0.1 * step), 0.5 * step)
            if step * np.abs(direction).max() <= change_tol * max(1.0, np.abs(x).max()):
                return x, f
        s, y = x_new - x, g_new - g
        if float(s @ y) > 0:
            steps.append(s)
            changes.append(y)
            if len(steps) > history:
                del steps[0], changes[0]
        decrease = f - f_new
        x, f, g = x_new, f_new, g_new
        if decrease <= change_tol * max(1.0, abs(f)):
            break
    return x, f


def _two_loop(gradient: np.ndarray, steps: list[np.ndarray], changes: list[np.ndarray]) -> np.ndarray:
    """-H g for the L-BFGS inverse-Hessian approximation H of the stored pairs (Nocedal & Wright, Alg. 7.4).

    Without pairs, steepest descent scaled to a first step of at most 1 in the L1 norm of the gradient.
    """
    if not steps:
        return -gradient * min(1.0, 1.0 / float(np.abs(gradient).sum()))
    q = gradient.copy()
    rhos = [1.0 / float(s @ y) for s, y in zip(steps, changes)]
    alphas = []
    for s, y, rho in zip(reversed(steps), reversed(changes), reversed(rhos)):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    q *= float(steps[-1] @ changes[-1]) / float(changes[-1] @ changes[-1])
    for s, y, rho, alpha in zip(steps, changes, rhos, reversed(alphas)):
        q += (alpha - rho * float(y @ q)) * s
    return -q
