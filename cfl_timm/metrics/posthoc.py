"""Post-hoc calibrators: maps fitted on held-out logits and applied, unchanged, to new logits.

References:
    C. Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (temperature, vector and matrix scaling;
    one-vs-rest histogram binning), https://arxiv.org/abs/1706.04599.
    M. Kull et al., "Beyond temperature scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet
    calibration", NeurIPS 2019 (Dirichlet calibration, ODIR), https://arxiv.org/abs/1910.12656.
    B. Zadrozny and C. Elkan, ICML 2001 (histogram binning) and KDD 2002 (isotonic regression).

Every calibrator fits in float64 on the CPU, is deterministic, and keeps its fitted parameters in
``state_dict()`` so they can be saved and re-applied with ``load_state_dict`` (or :func:`posthoc_from_state`).
"""
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .calibration import bin_indices
from .checks import check_count, check_logits, check_real, check_targets
from .lbfgs import minimize_lbfgs
from .temperature import fit_temperature

__all__ = ['POSTHOC_METHODS', 'AffineNLL', 'PosthocCalibrator', 'TemperatureScaling', 'VectorScaling', 'MatrixScaling',
           'DirichletCalibration', 'HistogramBinning', 'IsotonicCalibration', 'fit_posthoc', 'posthoc_from_state']

DEFAULT_ODIR_GRID = (1e-2, 1.0, 100.0)  # tried for lambda and for mu (all 9 pairs)
DEFAULT_FOLDS = 3


class PosthocCalibrator:
    """Base: ``fit(logits, targets) -> self``, ``predict_proba(logits) -> (N, K) float64 probabilities``.

    Subclasses implement ``_fit`` and ``_predict`` on validated float64 tensors and keep every fitted value in
    ``self.state`` (a dict of tensors / floats), which is what ``state_dict`` returns.
    """
    name = ''
    state_keys: tuple[str, ...] = ()  # the fitted values (besides num_classes) that _predict reads

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def fit(self, logits: torch.Tensor, targets: torch.Tensor) -> 'PosthocCalibrator':
        """Fit on a held-out split and return ``self``."""
        logits = check_logits(logits)
        targets = check_targets(targets, logits.shape[0], logits.shape[1])
        self.state = {'num_classes': logits.shape[1], **self._fit(logits, targets)}
        return self

    def predict_proba(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities (N, K), float64, rows summing to one."""
        return self._predict(self._check_fitted(logits))

    def _check_fitted(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` checked (float64 CPU) for a fitted calibrator of the same number of classes."""
        if not self.state:
            raise ValueError(f"the '{self.name}' calibrator is not fitted: call fit(logits, targets) first.")
        logits = check_logits(logits)
        if logits.shape[1] != self.state['num_classes']:
            raise ValueError(f"the '{self.name}' calibrator was fitted on {self.state['num_classes']} classes, "
                             f'got logits with {logits.shape[1]}.')
        return logits

    def state_dict(self) -> dict[str, Any]:
        """The method name and the fitted parameters (copies)."""
        return {'name': self.name, **{k: v.clone() if isinstance(v, torch.Tensor) else v
                                      for k, v in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> 'PosthocCalibrator':
        """Restore fitted parameters saved by ``state_dict``."""
        if not isinstance(state, dict):
            raise ValueError(f'state must be the dict of state_dict(), got {type(state).__name__}.')
        if state.get('name') != self.name:
            raise ValueError(f"state of method '{state.get('name')}' cannot be loaded into '{self.name}'.")
        missing = [key for key in ('num_classes', *self.state_keys) if key not in state]
        if missing:
            raise ValueError(f"state of method '{self.name}' lacks {missing}: not the output of state_dict().")
        self.state = {k: v for k, v in state.items() if k != 'name'}
        return self

    def _fit(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def _predict(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TemperatureScaling(PosthocCalibrator):
    """softmax(z / T), T > 0 minimising the NLL (:func:`cfl_timm.metrics.fit_temperature`)."""
    name = 'ts'
    state_keys = ('temperature',)

    def _fit(self, logits, targets):
        return {'temperature': fit_temperature(logits, targets)}

    def _predict(self, logits):
        return torch.softmax(logits / self.state['temperature'], dim=1)


class AffineNLL:
    """The ODIR-regularised mean NLL of softmax(W x + b) on one split, with its analytic gradient, in float64 numpy.

    With scores s_i = W x_i + b, p_i = softmax(s_i) and one-hot y_i over N samples::

        f(W, b) = 1/N sum_i (logsumexp(s_i) - s_{i, y_i})
                  + lambda / (K (K - 1)) sum_{k != l} W_kl^2 + mu / K sum_k b_k^2
        df/dW = 1/N sum_i (p_i - y_i) x_i^T + 2 lambda / (K (K - 1)) offdiag(W)
        df/db = 1/N sum_i (p_i - y_i) + 2 mu / K b

    The target term is linear in (W, b): sum_i s_{i, y_i} = <W, C> + <b, n> with C = sum_i y_i x_i^T and n the class
    counts, computed once per split. With ``full_matrix=False`` (vector scaling) W is diag(w), the gradient of w is
    the diagonal of the above and lambda does not apply. Parameters travel as one flat vector: W (or w) row-major,
    then b. The scores are kept as a (K, N) array so that the per-sample reductions over the K classes run along
    contiguous rows.
    """

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, full_matrix: bool) -> None:
        x = features.numpy()
        self.count, self.classes = x.shape
        self.full_matrix = full_matrix
        self.x, self.x_t = x, np.ascontiguousarray(x.T)
        onehot = np.zeros((self.classes, self.count))
        onehot[targets.numpy(), np.arange(self.count)] = 1.0
        self.class_counts = onehot.sum(1)
        class_sums = onehot @ x  # C: row k sums the features of the samples of class k
        self.target_weight = class_sums if full_matrix else np.diagonal(class_sums).copy()
        self.off_diagonal = 1.0 - np.eye(self.classes)

    def unpack(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W or w, b) views of a flat parameter vector."""
        split = self.classes * self.classes if self.full_matrix else self.classes
        weight = params[:split].reshape(self.classes, self.classes) if self.full_matrix else params[:split]
        return weight, params[split:]

    def __call__(self, params: np.ndarray, lam: float = 0.0, mu: float = 0.0) -> tuple[float, np.ndarray]:
        """(f, df/dparams) at ``params`` for ODIR strengths ``lam``, ``mu``."""
        weight, bias = self.unpack(params)
        scores = weight @ self.x_t if self.full_matrix else weight[:, None] * self.x_t
        scores += bias[:, None]
        top = scores.max(0)
        scores -= top
        np.exp(scores, out=scores)
        total = scores.sum(0)
        nll = (top.sum() + np.log(total).sum() - (weight * self.target_weight).sum() - bias @ self.class_counts)
        scores /= total  # now p, (K, N)
        if self.full_matrix:
            grad_weight = scores @ self.x - self.target_weight
        else:
            grad_weight = np.einsum('kn,kn->k', scores, self.x_t) - self.target_weight
        grad_bias = scores.sum(1) - self.class_counts
        loss = nll / self.count
        grad_weight /= self.count
        grad_bias /= self.count
        if self.full_matrix and lam:
            off = weight * self.off_diagonal
            coef = lam / (self.classes * (self.classes - 1))
            loss += coef * float((off * off).sum())
            grad_weight += 2 * coef * off
        if mu:
            loss += mu / self.classes * float(bias @ bias)
            grad_bias += 2 * mu / self.classes * bias
        return float(loss), np.concatenate([grad_weight.ravel(), grad_bias])


class _AffineScaling(PosthocCalibrator):
    """softmax(W x + b) on features x of the logits, fitted by NLL (+ ODIR) with L-BFGS in float64.

    W starts at the temperature-scaling solution I / T and b at 0; ODIR = lambda / (K (K - 1)) sum_{i != j} W_ij^2
    + mu / K sum_j b_j^2 leaves that start unpenalised. The objective and its analytic gradient are
    :class:`AffineNLL`; :func:`~cfl_timm.metrics.lbfgs.minimize_lbfgs` never ends above its start, so the
    fitting NLL is no worse than TS's. With ``regularise``, (lambda, mu) is chosen from ``grid`` x ``grid`` by the
    mean held-out NLL of ``folds``-fold cross-validation on the fitting split (folds from a fixed permutation; ties
    go to the first pair); the chosen values and the CV NLLs are recorded in the state. Within a fold the pairs are
    solved from the strongest to the weakest, each starting from the previous solution (the problems are convex,
    so the start changes the result only within the optimiser's tolerance, and the weakly regularised, worst
    conditioned problems start close to their optimum); the first starts from the fold's TS, the final fit from TS.
    """
    full_matrix = True
    regularise = True
    state_keys = ('weight', 'bias')

    def __init__(self, grid: Sequence[float] = DEFAULT_ODIR_GRID, folds: int = DEFAULT_FOLDS,
                 max_iter: int = 200) -> None:
        super().__init__()
        if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or not grid:
            raise ValueError(f'the ODIR grid must be a non-empty sequence of numbers >= 0, got {grid!r}.')
        self.grid = tuple(check_real(g, f'grid[{i}]', 0.0) for i, g in enumerate(grid))
        self.folds = check_count(folds, 'folds', 2)
        self.max_iter = check_count(max_iter, 'max_iter')

    @staticmethod
    def features(logits: torch.Tensor) -> torch.Tensor:
        return logits

    def _temperature_start(self, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        """The flat parameters of W = I / T (w = 1 / T), b = 0 for the temperature fitted on (x, targets)."""
        classes = x.shape[1]
        scale = 1.0 / fit_temperature(x, targets)
        weight = np.eye(classes) * scale if self.full_matrix else np.full(classes, scale)
        return np.concatenate([weight.ravel(), np.zeros(classes)])

    def _solve(self, objective: AffineNLL, lam: float, mu: float, start: np.ndarray) -> np.ndarray:
        params, _ = minimize_lbfgs(lambda p: objective(p, lam, mu), start, max_iter=self.max_iter)
        return params

    def _fit(self, logits, targets):
        x = self.features(logits)
        state: dict[str, Any] = {}
        lam = mu = 0.0
        if self.regularise:
            count = x.shape[0]
            if count < self.folds:  # an empty held-out fold would score every (lambda, mu) pair NaN
                raise ValueError(f"the '{self.name}' calibrator chooses its ODIR strengths by {self.folds}-fold "
                                 f'cross-validation and needs at least folds = {self.folds} samples, got {count}.')
            fold_of = torch.empty(count, dtype=torch.long)
            fold_of[torch.randperm(count, generator=torch.Generator().manual_seed(0))] = \
                torch.arange(count) % self.folds
            pairs = [(a, b) for a in self.grid for b in self.grid]
            held_nll = np.zeros(len(pairs))
            # a regularisation path: strongest (lambda, mu) first, each solve starting from the previous solution
            order = sorted(range(len(pairs)), key=pairs.__getitem__, reverse=True)
            for fold in range(self.folds):
                held = fold_of == fold
                objective = AffineNLL(x[~held], targets[~held], self.full_matrix)
                held_out = AffineNLL(x[held], targets[held], self.full_matrix)
                params = self._temperature_start(x[~held], targets[~held])
                for index in order:
                    params = self._solve(objective, *pairs[index], params)
                    held_nll[index] += held_out(params)[0] * held_out.count
            scores = (held_nll / count).tolist()
            lam, mu = pairs[int(np.argmin(scores))]
            state.update(odir_lambda=lam, odir_mu=mu, cv_grid=pairs, cv_nll=scores)
        objective = AffineNLL(x, targets, self.full_matrix)
        weight, bias = objective.unpack(self._solve(objective, lam, mu, self._temperature_start(x, targets)))
        state.update(weight=torch.from_numpy(weight.copy()), bias=torch.from_numpy(bias.copy()))
        return state

    def _apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x @ weight.T + bias if self.full_matrix else x * weight + bias

    def _predict(self, logits):
        return torch.softmax(self._apply(self.features(logits), self.state['weight'], self.state['bias']), dim=1)


class VectorScaling(_AffineScaling):
    """softmax(w * z + b), w, b in R^K, minimising the NLL (unregularised, as in Guo et al. 2017)."""
    name = 'vs'
    full_matrix = False
    regularise = False


class MatrixScaling(_AffineScaling):
    """softmax(W z + b), W in R^{K x K}, minimising NLL + ODIR (Guo et al. 2017; Kull et al. 2019)."""
    name = 'ms'


class DirichletCalibration(_AffineScaling):
    """softmax(W log p + b) with p = softmax(z), minimising NLL + ODIR (Kull et al., NeurIPS 2019).

    log p differs from z by a per-row constant, so W = I / T, b = 0 is again temperature scaling.
    """
    name = 'dirichlet'

    @staticmethod
    def features(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits, dim=1)


def _renormalise(calibrated: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Rows divided by their sum; a row whose calibrated values are all zero keeps the uncalibrated p."""
    total = calibrated.sum(1, keepdim=True)
    zero = total.squeeze(1) <= 0
    out = calibrated / total.clamp_min(torch.finfo(calibrated.dtype).tiny)
    out[zero] = probs[zero]
    return out


class HistogramBinning(PosthocCalibrator):
    """One-vs-rest histogram binning: per class k, equal-width bins over p_k, each bin mapped to the frequency of
    y = k among the fitting samples in it; the K values are then renormalised.

    A bin with no fitting sample maps to its centre (the least informative value consistent with the binning).
    A row whose K calibrated values are all zero keeps the uncalibrated p (documented fallback, never NaN).
    Renormalisation can change the argmax.
    """
    name = 'hist'
    state_keys = ('num_bins', 'bin_values')

    def __init__(self, num_bins: int = 15) -> None:
        super().__init__()
        self.num_bins = check_count(num_bins, 'num_bins')

    def _fit(self, logits, targets):
        probs = torch.softmax(logits, dim=1)
        classes = probs.shape[1]
        bins = bin_indices(probs, self.num_bins)  # (N, K)
        onehot = torch.nn.functional.one_hot(targets, classes).double()
        flat = bins + torch.arange(classes) * self.num_bins  # bin of class k lives at k * B + b
        counts = torch.zeros(classes * self.num_bins, dtype=torch.float64).index_add_(
            0, flat.flatten(), torch.ones(flat.numel(), dtype=torch.float64))
        hits = torch.zeros_like(counts).index_add_(0, flat.flatten(), onehot.flatten())
        centres = (torch.arange(self.num_bins, dtype=torch.float64) + 0.5) / self.num_bins
        values = torch.where(counts > 0, hits / counts.clamp_min(1), centres.repeat(classes))
        return {'num_bins': self.num_bins, 'bin_values': values.view(classes, self.num_bins)}

    def _predict(self, logits):
        probs = torch.softmax(logits, dim=1)
        bins = bin_indices(probs, self.state['num_bins'])
        return _renormalise(self.state['bin_values'].gather(1, bins.T).T, probs)


def pool_adjacent_violators(y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit of ``y`` (in the given order) by pool-adjacent-violators."""
    values: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for value, w in zip(y.tolist(), weight.tolist()):
        values.append(value)
        weights.append(w)
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:  # pool the violating pair into one block
            w_total = weights[-2] + weights[-1]
            merged = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w_total
            size = sizes[-2] + sizes[-1]
            del values[-1], weights[-1], sizes[-1]
            values[-1], weights[-1], sizes[-1] = merged, w_total, size
    return np.repeat(np.asarray(values, dtype=np.float64), sizes)


class IsotonicCalibration(PosthocCalibrator):
    """One-vs-rest isotonic regression: per class k, the non-decreasing least-squares fit of 1[y = k] on p_k
    (pool-adjacent-violators over the distinct p_k, tied samples averaged), applied by linear interpolation
    between the fitted points and clipped outside them (scikit-learn's ``IsotonicRegression(out_of_bounds='clip')``);
    the K values are then renormalised (an all-zero row keeps the uncalibrated p). Can change the argmax.
    """
    name = 'iso'
    state_keys = ('thresholds', 'values')

    def _fit(self, logits, targets):
        probs = torch.softmax(logits, dim=1).numpy()
        onehot = torch.nn.functional.one_hot(targets, probs.shape[1]).double().numpy()
        xs, ys = [], []
        for k in range(probs.shape[1]):
            x, inverse, counts = np.unique(probs[:, k], return_inverse=True, return_counts=True)
            y = np.bincount(inverse, weights=onehot[:, k], minlength=x.size) / counts
            xs.append(torch.from_numpy(x))
            ys.append(torch.from_numpy(pool_adjacent_violators(y, counts.astype(np.float64))))
        return {'thresholds': xs, 'values': ys}

    def per_class(self, logits: torch.Tensor) -> torch.Tensor:
        """The K one-vs-rest isotonic values (N, K) before renormalisation."""
        logits = self._check_fitted(logits)
        probs = torch.softmax(logits, dim=1).numpy()
        columns = [np.interp(probs[:, k], x.numpy(), y.numpy())
                   for k, (x, y) in enumerate(zip(self.state['thresholds'], self.state['values']))]
        return torch.from_numpy(np.stack(columns, axis=1))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state['thresholds'] = [t.clone() for t in state['thresholds']]
        state['values'] = [v.clone() for v in state['values']]
        return state

    def _predict(self, logits):
        return _renormalise(self.per_class(logits), torch.softmax(logits, dim=1))


POSTHOC_METHODS: dict[str, type[PosthocCalibrator]] = {
    cls.name: cls for cls in (TemperatureScaling, VectorScaling, MatrixScaling, DirichletCalibration,
                              HistogramBinning, IsotonicCalibration)}


def _method(name: str) -> type[PosthocCalibrator]:
    if not isinstance(name, str) or name not in POSTHOC_METHODS:
        raise ValueError(f"Unknown post-hoc calibration method '{name}': expected one of {tuple(POSTHOC_METHODS)}.")
    return POSTHOC_METHODS[name]


def fit_posthoc(name: str, fit_logits: torch.Tensor, fit_targets: torch.Tensor, **kwargs: Any) -> PosthocCalibrator:
    """Build the calibrator ``name`` (keyword options go to its constructor) and fit it on a held-out split."""
    return _method(name)(**kwargs).fit(fit_logits, fit_targets)


def posthoc_from_state(state: dict[str, Any]) -> PosthocCalibrator:
    """Rebuild a fitted calibrator from ``state_dict()`` output."""
    if not isinstance(state, dict):
        raise ValueError(f'state must be the dict of state_dict(), got {type(state).__name__}.')
    return _method(state.get('name', ''))().load_state_dict(state)
