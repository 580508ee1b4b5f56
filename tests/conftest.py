"""Test configuration: the repository root on sys.path, and a real-image CIFAR-10 subset fixture."""
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARED_DIR = REPO_ROOT.parent / "shared"
CIFAR10_ARCHIVE = SHARED_DIR / "data" / "cifar10-jpeg.tar.gz"
CIFAR10_TRAIN_PER_CLASS = 120
CIFAR10_VAL_PER_CLASS = 20


def extract_cifar10_subset(dest: Path, train_per_class: int, val_per_class: int) -> Path:
    """Extract the first images of each class and split of the shared CIFAR-10 JPEG archive into `dest`.

    Returns `dest`, laid out as timm's folder dataset expects: `dest/{train,val}/<class>/NNNN.jpg`.
    """
    if not CIFAR10_ARCHIVE.is_file():
        raise FileNotFoundError(f"CIFAR-10 JPEG archive not found at {CIFAR10_ARCHIVE} (shared/ beside the repo)")
    limits = {"train": train_per_class, "val": val_per_class}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR10_ARCHIVE, "r:gz") as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in limits:
                continue
            split, cls = parts[-3], parts[-2]
            if taken.get((split, cls), 0) >= limits[split]:
                continue
            target = dest / split / cls / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
    return dest


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    """A real-image CIFAR-10 subset: 120 train and 20 val JPEGs per class (1,400 files), extracted once per run."""
    return extract_cifar10_subset(tmp_path_factory.mktemp("cifar10"), CIFAR10_TRAIN_PER_CLASS, CIFAR10_VAL_PER_CLASS)
