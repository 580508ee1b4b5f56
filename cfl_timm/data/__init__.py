"""Data helpers: training subsets (first-N, stratified, sampler CSV, long-tailed), an offline digits set, the
CIFAR statistics and training transform, CIFAR-10-C corruptions and files, SVHN, the OOD overlap check, and the
per-epoch seeding of persistent loader workers."""
from .cifar10c import (
    CIFAR10_CLASSES,
    GENERATED_SET_NAME,
    PUBLISHED_SET_NAME,
    ImageArrayDataset,
    available_corruptions,
    check_cifar10_classes,
    check_set_classes,
    generate_corrupted_set,
    load_corrupted,
    read_image_folder,
    shift_set_name,
)
from .compat import patch_timm_posterize, posterize
from .constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from .corruptions import CIFAR10C_PARAMS, CORRUPTIONS, SEVERITIES, SYNTHETIC_CORRUPTIONS, corrupt, corruption_rng
from .digits import DIGITS_DATASET_NAME, DigitsDataset, digits_split, is_digits_dataset
from .factory import build_dataset, dataset_kwargs
from .overlap import check_disjoint_images, image_digest
from .strict import (
    IMAGE_CHECKS,
    MAX_IMAGE_PIXELS,
    CorruptImageError,
    StrictImageDataset,
    check_dataset_name,
    check_folder_tree,
    check_same_classes,
    check_split_tree,
    is_image_folder_name,
    split_folder,
    strict_folder_dataset,
    verify_images,
)
from .subsets import (
    SHOT_GROUPS,
    SHOT_RULES,
    SUBSET_MODES,
    SubsetDataset,
    class_counts,
    dataset_class_names,
    dataset_targets,
    evenly_spaced,
    first_n_indices,
    log_class_counts,
    long_tailed_counts,
    long_tailed_indices,
    read_sampler_indices,
    select_train_subset,
    shot_group_classes,
    shot_groups,
    stratified_indices,
)
from .svhn import SVHN_SPLITS, svhn_dataset, svhn_file
from .transforms import TRAIN_TRANSFORMS, cifar_transform_kwargs, create_cifar_train_transform
from .tta import MAX_TTA_VIEWS, TTAView, average_softmax, tta_views
from .worker_seeding import (
    EpochSeededTransform,
    check_worker_socket_dir,
    epoch_worker_seed,
    seed_workers_by_epoch,
    stop_workers,
)
