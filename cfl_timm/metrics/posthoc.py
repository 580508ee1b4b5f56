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
from typing import Any, Optional

import numpy as np
import torch

from .calibration import bin_indices
from .temperature import fit_temperature

__all__ = ['POSTHOC_METHODS', 'PosthocCalibrator', 'TemperatureScaling', 'VectorScaling', 'MatrixScaling',
           'DirichletCalibration', 'HistogramBinning', 'IsotonicCalibration', 'fit_posthoc', 'posthoc_from_state']

DEFAULT_ODIR_GRID = (1e-2, 1.0, 100.0)  # tried for lambda and for mu (all 9 pairs)
DEFAULT_FOLDS = 3


def check_logits(logits: torch.Tensor, targets: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """Validate (N, K) logits (and (N,) targets in [0, K)); return them as float64 / int64 CPU tensors."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f'logits must be a non-empty (N, K) tensor with K >= 2, got {shape}.')
    logits = logits.detach().double().cpu()
    if not bool(torch.isfinite(logits).all()):
        raise ValueError('logits contain NaN or infinite values.')
    if targets is None:
        return (logits,)
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:1]:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f'targets must be an (N,) tensor matching logits {tuple(logits.shape)}, got {shape}.')
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f'targets must hold integer class indices, got dtype {targets.dtype}.')
    targets = targets.detach().long().cpu()
    if int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]:
        raise ValueError(f'targets must lie in [0, {logits.shape[1]}), got values in '
                         f'[{int(targets.min())}, {int(targets.max())}].')
    return logits, targets


class PosthocCalibrator:
    """Base: ``fit(logits, targets) -> self``, ``predict_proba(logits) -> (N, K) float64 probabilities``.

    Subclasses implement ``_fit`` and ``_predict`` on validated float64 tensors and keep every fitted value in
    ``self.state`` (a dict of tensors / floats), which is what ``state_dict`` returns.
    """
    name = ''

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def fit(self, logits: torch.Tensor, targets: torch.Tensor) -> 'PosthocCalibrator':
        """Fit on a held-out split and return ``self``."""
        logits, targets = check_logits(logits, targets)
        self.state = {'num_classes': logits.shape[1], **self._fit(logits, targets)}
        return self

    def predict_proba(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities (N, K), float64, rows summing to one."""
        if not self.state:
            raise ValueError(f"the '{self.name}' calibrator is not fitted: call fit(logits, targets) first.")
        (logits,) = check_logits(logits)
        if logits.shape[1] != self.state['num_classes']:
            raise ValueError(f"the '{self.name}' calibrator was fitted on {self.state['num_classes']} classes, "
                             f'got logits with {logits.shape[1]}.')
        return self._predict(logits)

    def state_dict(self) -> dict[str, Any]:
        """The method name and the fitted parameters (copies)."""
        return {'name': self.name, **{k: v.clone() if isinstance(v, torch.Tensor) else v
                                      for k, v in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> 'PosthocCalibrator':
        """Restore fitted parameters saved by ``state_dict``."""
        if state.get('name') != self.name:
            raise ValueError(f"state of method '{state.get('name')}' cannot be loaded into '{self.name}'.")
        self.state = {k: v for k, v in state.items() if k != 'name'}
        return self

    def _fit(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def _predict(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TemperatureScaling(PosthocCalibrator):
    """softmax(z / T), T > 0 minimising the NLL (:func:`cfl_timm.metrics.fit_temperature`)."""
    name = 'ts'

    def _fit(self, logits, targets):
        return {'temperature': fit_temperature(logits, targets)}

    def _predict(self, logits):
        return torch.softmax(logits / self.state['temperature'], dim=1)


class _AffineScaling(PosthocCalibrator):
    """softmax(W x + b) on features x of the logits, fitted by NLL (+ ODIR) with LBFGS in float64.

    W starts at the temperature-scaling solution I / T and b at 0; ODIR = lambda / (K (K - 1)) sum_{i != j} W_ij^2
    + mu / K sum_j b_j^2 leaves that start unpenalised. The objective never increases from the start (strong-Wolfe
    line search, and the start is kept if the optimiser ends worse), so the fitting NLL is no worse than TS's.
    With ``regularise``, (lambda, mu) is chosen from ``grid`` x ``grid`` by the mean held-out NLL of
    ``folds``-fold cross-validation on the fitting split (folds from a fixed permutation; ties go to the first
    pair); the chosen values and the CV NLLs are recorded in the state.
    """
    full_matrix = True
    regularise = True

    def __init__(self, grid: Sequence[float] = DEFAULT_ODIR_GRID, folds: int = DEFAULT_FOLDS,
                 max_iter: int = 200) -> None:
        super().__init__()
        if not grid or min(grid) < 0:
            raise ValueError(f'the ODIR grid must be non-empty and non-negative, got {tuple(grid)}.')
        if folds < 2:
            raise ValueError(f'folds must be >= 2, got {folds}.')
        self.grid, self.folds, self.max_iter = tuple(float(g) for g in grid), int(folds), int(max_iter)

    @staticmethod
    def features(logits: torch.Tensor) -> torch.Tensor:
        return logits

    def _solve(self, x: torch.Tensor, targets: torch.Tensor, lam: float, mu: float, temperature: float):
        """LBFGS from the temperature-scaling solution of (x, targets), ``temperature`` (fitted once per split by the
        caller: it does not depend on lambda and mu)."""
        classes = x.shape[1]
        if self.full_matrix:
            weight = torch.eye(classes, dtype=torch.float64) / temperature
        else:
            weight = torch.full((classes,), 1.0 / temperature, dtype=torch.float64)
        bias = torch.zeros(classes, dtype=torch.float64)
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        off_diagonal = ~torch.eye(classes, dtype=torch.bool)

        def objective() -> torch.Tensor:
            scores = x @ weight.T + bias if self.full_matrix else x * weight + bias
            loss = torch.nn.functional.cross_entropy(scores, targets)
            if self.full_matrix and lam:
                loss = loss + lam / (classes * (classes - 1)) * weight[off_diagonal].pow(2).sum()
            if mu:
                loss = loss + mu / classes * bias.pow(2).sum()
            return loss

        with torch.no_grad():
            start = (float(objective()), weight.clone(), bias.clone())
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-9,
                                      tolerance_change=1e-12, history_size=20, line_search_fn='strong_wolfe')

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            final = float(objective())
        if not final <= start[0]:  # also catches NaN
            return start[1], start[2]
        return weight.detach(), bias.detach()

    def _fit(self, logits, targets):
        x = self.features(logits)
        state: dict[str, Any] = {}
        lam = mu = 0.0
        if self.regularise:
            count = x.shape[0]
            fold_of = torch.empty(count, dtype=torch.long)
            fold_of[torch.randperm(count, generator=torch.Generator().manual_seed(0))] = \
                torch.arange(count) % self.folds
            pairs = [(a, b) for a in self.grid for b in self.grid]
            fold_temperatures = [fit_temperature(x[fold_of != fold], targets[fold_of != fold])
                                 for fold in range(self.folds)]
            scores = []
            for a, b in pairs:
                nll = 0.0
                for fold in range(self.folds):
                    held = fold_of == fold
                    weight, bias = self._solve(x[~held], targets[~held], a, b, fold_temperatures[fold])
                    scaled = self._apply(x[held], weight, bias)
                    nll += float(torch.nn.functional.cross_entropy(scaled, targets[held], reduction='sum'))
                scores.append(nll / count)
            lam, mu = pairs[int(np.argmin(scores))]
            state.update(odir_lambda=lam, odir_mu=mu, cv_grid=pairs, cv_nll=scores)
        weight, bias = self._solve(x, targets, lam, mu, fit_temperature(x, targets))
        state.update(weight=weight, bias=bias)
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

    def __init__(self, num_bins: int = 15) -> None:
        super().__init__()
        if num_bins < 1:
            raise ValueError(f'num_bins must be >= 1, got {num_bins}.')
        self.num_bins = int(num_bins)

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
        (logits,) = check_logits(logits)
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
    if name not in POSTHOC_METHODS:
        raise ValueError(f"Unknown post-hoc calibration method '{name}': expected one of {tuple(POSTHOC_METHODS)}.")
    return POSTHOC_METHODS[name]


def fit_posthoc(name: str, fit_logits: torch.Tensor, fit_targets: torch.Tensor, **kwargs: Any) -> PosthocCalibrator:
    """Build the calibrator ``name`` (keyword options go to its constructor) and fit it on a held-out split."""
    return _method(name)(**kwargs).fit(fit_logits, fit_targets)


def posthoc_from_state(state: dict[str, Any]) -> PosthocCalibrator:
    """Rebuild a fitted calibrator from ``state_dict()`` output."""
    return _method(state.get('name', ''))().load_state_dict(state)
