"""OLTR list files: one ``relative/path label`` line per image, open-set images labelled -1.

Benchmarks: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", https://arxiv.org/abs/1904.05160
"""
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

__all__ = ['OPEN_LABEL', 'DATASETS', 'SPLITS', 'list_path', 'read_list', 'class_counts', 'check_images_exist']

OPEN_LABEL = -1
DATASETS = ('ImageNet_LT', 'Places_LT')
SPLITS = ('train', 'val', 'test', 'open')

Sample = tuple[str, int]


def list_path(list_dir: Union[str, Path], dataset: str, split: str) -> Path:
    """The list file ``<list_dir>/<dataset>_<split>.txt``."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}', expected one of {SPLITS}.")
    return Path(list_dir) / f'{dataset}_{split}.txt'


def read_list(
        path: Union[str, Path],
        *,
        num_classes: Optional[int] = None,
        open_set: bool = False,
) -> list[Sample]:
    """Parse an OLTR list file into ``(relative_path, label)`` pairs.

    Args:
        path: The list file.
        num_classes: When given, every closed-set label must lie in [0, num_classes).
        open_set: The file is an open-set list: every label must be -1.

    Raises:
        FileNotFoundError: The list file does not exist.
        ValueError: A line does not parse as ``path label`` or a label is out of range; the message names the
            file and the 1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'OLTR list file not found: {path}')
    samples: list[Sample] = []
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue  # blank lines (e.g. a trailing newline) carry no sample
            if len(fields) != 2:
                raise ValueError(f"{path}:{line_no}: expected 'relative/path label', got {line.rstrip()!r}")
            rel_path, label_text = fields
            try:
                label = int(label_text)
            except ValueError:
                raise ValueError(f'{path}:{line_no}: label {label_text!r} is not an integer') from None
            if open_set:
                if label != OPEN_LABEL:
                    raise ValueError(f'{path}:{line_no}: open-set images must be labelled {OPEN_LABEL}, got {label}')
            elif label < 0 or (num_classes is not None and label >= num_classes):
                upper = num_classes if num_classes is not None else 'num_classes'
                raise ValueError(f'{path}:{line_no}: label {label} outside [0, {upper})')
            samples.append((rel_path, label))
    if not samples:
        raise ValueError(f'OLTR list file {path} holds no samples.')
    return samples


def class_counts(samples: Sequence[Sample], num_classes: int) -> list[int]:
    """Number of samples per class 0..num_classes-1."""
    counts = [0] * num_classes
    for _, label in samples:
        if not 0 <= label < num_classes:
            raise ValueError(f'label {label} outside [0, {num_classes})')
        counts[label] += 1
    return counts


def check_images_exist(root: Union[str, Path], samples: Sequence[Sample], *, list_name: str = '',
                       max_report: int = 5) -> None:
    """Raise ``FileNotFoundError`` naming the first few missing images before any training starts."""
    root = Path(root)
    missing = [rel for rel, _ in samples if not (root / rel).is_file()]
    if missing:
        shown = ', '.join(str(root / rel) for rel in missing[:max_report])
        more = f' (and {len(missing) - max_report} more)' if len(missing) > max_report else ''
        source = f' listed in {list_name}' if list_name else ''
        raise FileNotFoundError(
            f'{len(missing)} of {len(samples)} images{source} do not exist under {root}: {shown}{more}')
