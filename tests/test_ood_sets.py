"""Out-of-distribution sets: SVHN through torchvision's reader from a small ``.mat`` written here, and the refusal
of an OOD set sharing images with the in-distribution set (library function and validate.py's --ood-data-dir)."""
import numpy as np
import pytest
from conftest import validate_usage_error as _usage_error
from PIL import Image
from timm.data import ImageDataset

from cfl_timm.data import DigitsDataset, check_disjoint_images, image_digest, svhn_dataset, svhn_file


def _write_svhn(root, images: np.ndarray, digits: np.ndarray) -> None:
    """SVHN's .mat layout: X (32, 32, 3, N) uint8, y (N, 1) with the digit 0 stored as 10."""
    scipy_io = pytest.importorskip('scipy.io')
    root.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(svhn_file(root, 'test'), {'X': np.transpose(images, (1, 2, 3, 0)),
                                               'y': np.where(digits == 0, 10, digits)[:, None].astype(np.uint8)})


@pytest.fixture(scope='module')
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """Twelve real digits, 32 px RGB, and their labels."""
    dataset = DigitsDataset('val')
    return (np.stack([np.asarray(dataset[i][0]) for i in range(12)]),
            np.array([int(dataset.targets[i]) for i in range(12)]))


def test_svhn_mat_through_torchvision(tmp_path, digit_images):
    images, digits = digit_images
    _write_svhn(tmp_path / 'svhn', images, digits)
    dataset = svhn_dataset(tmp_path / 'svhn', verify_md5=False)
    assert len(dataset) == 12
    for index in (0, 5, 11):
        image, label = dataset[index]
        assert image.mode == 'RGB' and image.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(image), images[index])
        assert label == digits[index]  # the file's 10 is the digit 0
    with pytest.raises(ValueError, match='differs from the published SVHN test file'):
        svhn_dataset(tmp_path / 'svhn')  # torchvision's MD5 check of the published file
    with pytest.raises(ValueError, match='SVHN test file not found: .*test_32x32.mat'):
        svhn_dataset(tmp_path / 'nothing_here')
    with pytest.raises(ValueError, match="unknown SVHN split 'val'"):
        svhn_dataset(tmp_path / 'svhn', split='val')
    (tmp_path / 'broken').mkdir()
    (tmp_path / 'broken' / 'test_32x32.mat').write_bytes(b'not a mat file')
    with pytest.raises(ValueError, match='not a readable SVHN .mat file'):
        svhn_dataset(tmp_path / 'broken', verify_md5=False)


def _folder(root, images, labels, suffix='.png'):
    for index, (image, label) in enumerate(zip(images, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / str(label) / f'{index:03d}{suffix}')
    return root


def test_shared_images_are_refused_by_decoded_pixels(tmp_path, digit_images):
    images, labels = digit_images
    in_set = ImageDataset(str(_folder(tmp_path / 'in', images[:8], labels[:8])))
    # an OOD folder of other images passes ...
    ood = ImageDataset(str(_folder(tmp_path / 'ood', 255 - images[8:], labels[8:])))
    check_disjoint_images(in_set, ood, "split 'val'", '--ood-data-dir ood')
    # ... one holding an in-distribution image, re-saved in another mode (grey PNG: other bytes) and name, is refused
    Image.fromarray(images[2]).convert('L').save(tmp_path / 'ood' / str(labels[8]) / 'renamed.png')
    ood = ImageDataset(str(tmp_path / 'ood'))
    with pytest.raises(ValueError, match=r"OOD set --ood-data-dir ood shares 1 image\(s\) with the in-distribution "
                                         r"set split 'val' .*renamed\.png = .*002\.png"):
        check_disjoint_images(in_set, ood, "split 'val'", '--ood-data-dir ood')
    # an array-backed set (SVHN's .mat) holding a folder image is refused too, named by index
    _write_svhn(tmp_path / 'svhn', np.concatenate([255 - images[:3], images[5:6]]), labels[:4])
    with pytest.raises(ValueError, match=r'shares 1 image\(s\).*svhn\[3\] = .*005\.png'):
        check_disjoint_images(in_set, svhn_dataset(tmp_path / 'svhn', verify_md5=False), 'val', 'svhn')
    assert image_digest(Image.fromarray(images[0])) == image_digest(Image.fromarray(images[0]).convert('RGBA'))
    assert image_digest(Image.fromarray(images[0])) != image_digest(Image.fromarray(images[1]))


def test_validate_refuses_an_ood_folder_sharing_images(digits_run, digits_dir, tmp_path, capsys):
    shared = next((digits_dir / 'val' / '3').iterdir())
    ood = tmp_path / 'ood' / 'x'
    ood.mkdir(parents=True)
    Image.open(shared).save(ood / 'copy.png')
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(ood / 'black.png')
    line = _usage_error(capsys, '--data-dir', str(digits_dir), '--split', 'val', '--checkpoint',
                        str(digits_run / 'model_best.pth.tar'), '--no-plot', '--output-json',
                        str(tmp_path / 'out.json'), '--ood-data-dir', str(tmp_path / 'ood'))
    assert 'shares 1 image(s)' in line and 'copy.png' in line and shared.name in line
    assert not (tmp_path / 'out.json').exists()


def test_validate_reads_svhn_as_the_ood_set(digits_run, tmp_path, digit_images):
    import validate
    images, labels = digit_images
    _write_svhn(tmp_path / 'svhn', 255 - images, labels)  # inverted digits: not in the evaluated split
    result = validate.main(validate.get_args_parser().parse_args([
        '--dataset', 'sklearn/digits', '--split', 'val', '--checkpoint', str(digits_run / 'model_best.pth.tar'),
        '--no-plot', '--output-json', str(tmp_path / 'out.json'), '--ood-data-dir', str(tmp_path / 'svhn'),
        '--ood-dataset', 'svhn', '--ood-no-verify', '-j', '0', '-b', '64', '--log-freq', '1000']))
    assert result['ood_num_samples'] == 12 and 0 <= result['ood_auroc'] <= 1
