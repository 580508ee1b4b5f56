from .calibration import CalibrationMeter, bin_indices
