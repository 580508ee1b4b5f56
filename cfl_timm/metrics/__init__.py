from .calibration import METRIC_KEYS, CalibrationMeter, bin_indices
from .ood import auroc, max_softmax_probability, msp_auroc
from .reliability import plot_reliability_diagrams, require_matplotlib
from .smooth_ece import smooth_ece, smooth_ece_at_bandwidth
from .temperature import FIT_METHODS, check_calibration_split, fit_temperature, is_test_split
