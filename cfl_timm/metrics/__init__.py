from .calibration import METRIC_KEYS, CalibrationMeter, bin_indices
from .smooth_ece import smooth_ece, smooth_ece_at_bandwidth
