"""Image folders are verified where they enter (cfl_timm.data.strict): unreadable images are refused or, when
asked, left out and counted, never replaced by another image; symlink loops are refused; train.py and
validate.py share the checks (their bad-input rows are in tests/test_bad_inputs.py)."""
import io
import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from timm.data import ImageDataset

from cfl_timm.data import CorruptImageError, check_folder_tree, strict_folder_dataset, verify_images


def _small_folder(root: Path, digits_dir: Path, per_class: int = 4) -> Path:
    for label in '012':
        folder = root / label
        folder.mkdir(parents=True)
        for image in sorted((digits_dir / 'train' / label).iterdir())[:per_class]:
            shutil.copy(image, folder / image.name)
    return root


def _truncated_jpeg() -> bytes:
    """A 128 px JPEG cut in the middle of its pixel data (the header is intact)."""
    buffer = io.BytesIO()
    Image.effect_noise((128, 128), 64).convert('RGB').save(buffer, 'JPEG')
    return buffer.getvalue()[:len(buffer.getvalue()) // 2]


def test_truncated_jpeg_passes_pil_verify_but_not_the_check(tmp_path, digits_dir):
    # Why the check decodes the pixels: Image.verify() accepts a JPEG cut in half.
    folder = _small_folder(tmp_path / 'data', digits_dir)
    path = folder / '0' / 'cut.jpg'
    path.write_bytes(_truncated_jpeg())
    with Image.open(path) as image:
        image.verify()
    bad = verify_images(ImageDataset(str(folder)))
    assert [Path(p).name for _, p, _ in bad] == ['cut.jpg']
    assert bad[0][2].startswith('image file is truncated')


def test_skip_bad_images_leaves_them_out_and_counts_them(tmp_path, digits_dir, caplog):
    folder = _small_folder(tmp_path / 'data', digits_dir)
    (folder / '1' / 'empty.png').write_bytes(b'')
    (folder / '2' / 'text.jpg').write_text('not an image')
    with pytest.raises(CorruptImageError, match=r"2 corrupt image\(s\) in split 'train': .*empty.png: empty file"):
        strict_folder_dataset(ImageDataset(str(folder)), 'train')
    with caplog.at_level(logging.WARNING):
        dataset = strict_folder_dataset(ImageDataset(str(folder)), 'train', skip_bad_images=True)
    assert 'left out 2 unreadable image(s)' in caplog.text and '(12 remain)' in caplog.text
    # Every remaining image is returned once, under its own label: nothing is substituted.
    assert len(dataset) == 12
    names = [Path(dataset.reader.filename(i, absolute=True)) for i in range(len(dataset))]
    assert sorted(p.name for p in names) == sorted(p.name for p in folder.rglob('*.png') if p.stat().st_size)
    assert [dataset[i][1] for i in range(len(dataset))] == [int(p.parent.name) for p in names]


def test_an_image_broken_after_the_check_raises_instead_of_being_replaced(tmp_path, digits_dir):
    folder = _small_folder(tmp_path / 'data', digits_dir)
    dataset = strict_folder_dataset(ImageDataset(str(folder)), 'val')
    victim = Path(dataset.reader.filename(5, absolute=True))
    victim.write_bytes(b'garbage')
    with pytest.raises(CorruptImageError, match=victim.name):
        dataset[5]


def test_oversized_image_is_refused_naming_the_limit(tmp_path, digits_dir):
    folder = _small_folder(tmp_path / 'data', digits_dir)
    with pytest.raises(CorruptImageError, match=r'12 corrupt .*32x32 pixels, above the limit of 1000; .* and 7 more'):
        strict_folder_dataset(ImageDataset(str(folder)), 'train', max_pixels=1000)


def test_symlink_loop_is_refused_but_a_link_elsewhere_is_followed(tmp_path, digits_dir):
    folder = _small_folder(tmp_path / 'data', digits_dir)
    other = _small_folder(tmp_path / 'other', digits_dir)
    (folder / '0' / 'more').symlink_to(other / '1', target_is_directory=True)
    check_folder_tree(str(folder))  # a link to a folder outside the tree is read once
    (folder / '2' / 'loop').symlink_to(folder, target_is_directory=True)
    with pytest.raises(ValueError, match=r'symlink loop in the dataset: .*2/loop is'):
        check_folder_tree(str(folder))


def test_train_py_with_skip_bad_images_trains_on_the_readable_images(tmp_path, digits_dir, caplog):
    import train
    data = tmp_path / 'data'
    _small_folder(data / 'train', digits_dir, per_class=6)
    _small_folder(data / 'validation', digits_dir, per_class=2)
    (data / 'train' / '0' / 'empty.png').write_bytes(b'')
    argv = ['--data-dir', str(data), '--model', 'test_resnet', '--img-size', '32', '-b', '6', '--epochs', '1',
            '-j', '0', '--output', str(tmp_path / 'out'), '--experiment', 'run', '--skip-bad-images']
    with caplog.at_level(logging.WARNING):
        train.cli(argv)
    assert "left out 1 unreadable image(s) of split 'train' (18 remain)" in caplog.text
    assert (tmp_path / 'out' / 'run' / 'last.pth.tar').is_file()


class _RecordedPool(ProcessPoolExecutor):
    started: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _RecordedPool.started.append(kwargs.get('max_workers'))


def test_processes_share_a_large_check_and_find_the_same_files(tmp_path, digits_dir, monkeypatch):
    """Several processes (train.py and validate.py pass -j) find exactly what one process finds, in order."""
    from cfl_timm.data import strict
    monkeypatch.setattr(strict, '_PARALLEL_FROM', 8)  # the 15-image folder counts as large ...
    monkeypatch.setattr(strict, '_CHUNK_MIN', 2)  # ... and goes out in 8 chunks of 2 images
    monkeypatch.setattr(strict, 'ProcessPoolExecutor', _RecordedPool)
    folder = _small_folder(tmp_path / 'data', digits_dir)
    (folder / '0' / 'cut.jpg').write_bytes(_truncated_jpeg())
    (folder / '2' / 'empty.png').write_bytes(b'')
    (folder / '1' / 'text.jpg').write_text('not an image')
    dataset = ImageDataset(str(folder))
    one = verify_images(dataset)
    assert sorted(Path(p).name for _, p, _ in one) == ['cut.jpg', 'empty.png', 'text.jpg']
    assert _RecordedPool.started == []
    assert verify_images(dataset, num_workers=2) == one
    assert _RecordedPool.started == [2]


def test_header_check_leaves_the_truncated_jpeg_to_the_load(tmp_path, digits_dir):
    """--image-check header reads each image's structure only: empty and not-an-image files are still refused before
    any work, a truncated JPEG passes and then stops the loading of that image, naming it (never substituted)."""
    folder = _small_folder(tmp_path / 'data', digits_dir)
    (folder / '0' / 'cut.jpg').write_bytes(_truncated_jpeg())
    (folder / '1' / 'text.jpg').write_text('not an image')
    bad = verify_images(ImageDataset(str(folder)), image_check='header')
    assert [Path(p).name for _, p, _ in bad] == ['text.jpg']
    (folder / '1' / 'text.jpg').unlink()
    dataset = strict_folder_dataset(ImageDataset(str(folder)), 'train', image_check='header')
    index = next(i for i in range(len(dataset)) if dataset.reader.filename(i).endswith('cut.jpg'))
    with pytest.raises(CorruptImageError, match='cut.jpg'):
        dataset[index]
    with pytest.raises(ValueError, match="image_check must be one of \\('decode', 'header'\\), got 'pixels'"):
        verify_images(ImageDataset(str(folder)), image_check='pixels')
