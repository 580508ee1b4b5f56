from .bootstrap import BOOTSTRAP_METRIC_KEYS, bootstrap_auroc, bootstrap_intervals
from .calibration import METRIC_KEYS, CalibrationMeter, bin_indices, coinciding_ece_note
from .direction import CalibrationDirection, calibration_direction
from .logits_file import LOGITS_FILE_KEYS, LogitsFile, load_logits_npz, save_logits_npz
from .ood import (
    OOD_METRIC_KEYS,
    OOD_SCORES,
    aupr_in,
    aupr_out,
    auroc,
    energy,
    fpr_at_95_tpr,
    max_logit,
    max_softmax_probability,
    msp,
    msp_auroc,
    neg_entropy,
    ood_metrics,
)
from .posthoc import POSTHOC_METHODS, PosthocCalibrator, fit_posthoc, posthoc_from_state
from .selective import aurc, eaurc, optimal_aurc, risk_coverage_curve
from .shift import SHIFT_METRIC_KEYS, shift_cell_metrics, shift_report
from .smooth_ece import smooth_ece, smooth_ece_at_bandwidth
from .temperature import FIT_METHODS, check_calibration_split, fit_temperature, is_test_split

