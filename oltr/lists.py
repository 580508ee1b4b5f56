"""OLTR list files: one ``relative/path label`` line per image, open-set images labelled -1.

Benchmarks: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", https://arxiv.org/abs/1904.05160
"""
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

__all__ = ['OPEN_LABEL', 'DATASETS', 'SPLITS', 'IMAGE_EXTENSIONS', 'list_path', 'read_list', 'class_counts',
           'check_images_exist']

OPEN_LABEL = -1
DATASETS = ('ImageNet_LT', 'Places_LT')
SPLITS = ('train', 'val', 'test', 'open')

Sample = tuple[str, int]

# Image file types the loader reads (PIL), by extension and by the first bytes of the file.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
_IMAGE_MAGIC = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'BM', b'GIF87a', b'GIF89a', b'II*\x00', b'MM\x00*',
                b'P5', b'P6', b'RIFF')


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
    first_line: dict[str, int] = {}
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f'{path}: not a UTF-8 text file (byte {e.start}).') from None
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue  # blank lines (e.g. a trailing newline) carry no sample
        if len(fields) != 2:
            raise ValueError(f"{path}:{line_no}: expected 'relative/path label', got {line.rstrip()!r}")
        rel_path, label_text = fields
        if not rel_path.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f'{path}:{line_no}: {rel_path!r} is not an image file (expected one of '
                             f'{", ".join(IMAGE_EXTENSIONS)})')
        if rel_path in first_line:
            raise ValueError(f'{path}:{line_no}: duplicate of line {first_line[rel_path]} ({rel_path!r}); '
                             'each image is listed once')
        first_line[rel_path] = line_no
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
    if not missing:
        not_images = [rel for rel, _ in samples if not _looks_like_image(root / rel)]
        if not_images:
            shown = ', '.join(str(root / rel) for rel in not_images[:max_report])
            source = f' listed in {list_name}' if list_name else ''
            raise ValueError(f'{len(not_images)} of {len(samples)} files{source} under {root} are not images '
                             f'(no JPEG/PNG/BMP/GIF/TIFF/PPM/WebP header): {shown}')
    if missing:
        shown = ', '.join(str(root / rel) for rel in missing[:max_report])
        more = f' (and {len(missing) - max_report} more)' if len(missing) > max_report else ''
        source = f' listed in {list_name}' if list_name else ''
        raise FileNotFoundError(
            f'{len(missing)} of {len(samples)} images{source} do not exist under {root}: {shown}{more}')


def _looks_like_image(path: Path) -> bool:
    """Whether the file starts like an image PIL reads (checked on the first bytes only, so it stays cheap)."""
    with open(path, 'rb') as f:
        head = f.read(12)
    return head.startswith(_IMAGE_MAGIC) and (not head.startswith(b'RIFF') or head[8:12] == b'WEBP')
