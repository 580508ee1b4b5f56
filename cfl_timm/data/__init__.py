"""Data helpers: training subsets (first-N, stratified, sampler CSV, long-tailed), an offline digits set, and the
CIFAR statistics and training transform."""
from .compat import patch_timm_posterize, posterize
from .constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from .digits import DIGITS_DATASET_NAME, DigitsDataset, digits_split, is_digits_dataset
from .factory import build_dataset, dataset_kwargs
from .strict import (
    MAX_IMAGE_PIXELS,
    CorruptImageError,
    StrictImageDataset,
    check_folder_tree,
    check_same_classes,
    check_split_tree,
    is_image_folder_name,
    strict_folder_dataset,
    verify_images,
)
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
from .transforms import TRAIN_TRANSFORMS, cifar_transform_kwargs, create_cifar_train_transform
from .tta import MAX_TTA_VIEWS, TTAView, average_softmax, tta_views
