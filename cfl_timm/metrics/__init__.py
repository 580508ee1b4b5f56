from .calibration import METRIC_KEYS, CalibrationMeter, bin_indices
from .ood import auroc, max_softmax_probability, msp_auroc
from .smooth_ece import smooth_ece, smooth_ece_at_bandwidth
from .temperature import FIT_METHODS, check_calibration_split, fit_temperature, is_test_split


def __getattr__(name: str):
    """``plot_reliability_diagrams`` / ``require_matplotlib`` live in :mod:`cfl_timm.plotting` (imported lazily)."""
    if name in ('plot_reliability_diagrams', 'require_matplotlib'):
        from cfl_timm import plotting
        return getattr(plotting, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
