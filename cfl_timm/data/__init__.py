"""Data helpers: training subsets (first-N, stratified, sampler CSV, long-tailed) and an offline digits set."""
from .compat import patch_timm_posterize, posterize
from .digits import DIGITS_DATASET_NAME, DigitsDataset, is_digits_dataset
from .subsets import (
    SUBSET_MODES,
    SubsetDataset,
    class_counts,
    dataset_targets,
    first_n_indices,
    log_class_counts,
    long_tailed_counts,
    long_tailed_indices,
    read_sampler_indices,
    select_train_subset,
    stratified_indices,
)
