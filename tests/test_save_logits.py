"""validate.py --save-logits on scikit-learn's digits (real images, a real train.py checkpoint) and the validation
of cfl_timm.metrics.load_logits_npz."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import validate_usage_error, write_digits_folder

import validate
from cfl_timm.data import DigitsDataset
from cfl_timm.metrics import LOGITS_FILE_KEYS, load_logits_npz, save_logits_npz
from cfl_timm.training import metrics_of_logits

METRICS = ('top1', 'top5', 'nll', 'brier', 'ece')


@pytest.fixture
def checkpoint(digits_run) -> Path:
    return digits_run / 'model_best.pth.tar'


def _run(checkpoint: Path, tmp_path: Path, *argv: str) -> dict:
    return validate.main(validate.get_args_parser().parse_args([
        '--dataset', 'sklearn/digits', '--split', 'val', '--checkpoint', str(checkpoint), '--no-plot',
        '--output-json', str(tmp_path / 'metrics.json'), '-j', '0', '-b', '64', '--log-freq', '1000', *argv]))


def test_saved_logits_reproduce_the_reported_metrics(checkpoint, tmp_path, one_thread):
    path = tmp_path / 'sub' / 'val_logits.npz'  # the folder does not exist yet: it is created
    result = _run(checkpoint, tmp_path, '--save-logits', str(path))
    assert result['files']['logits'] == str(path)
    saved = load_logits_npz(path)
    with np.load(path, allow_pickle=False) as raw:
        assert sorted(raw.files) == sorted(LOGITS_FILE_KEYS)
        assert raw['logits'].dtype == np.float32 and raw['targets'].dtype == np.int64
    assert saved.logits.shape == (355, 10) and saved.ood_logits is None
    assert torch.equal(saved.targets, torch.as_tensor(DigitsDataset('val').targets, dtype=torch.int64))
    assert saved.class_names == [str(i) for i in range(10)]
    assert saved.split == 'val' and saved.checkpoint == 'model_best.pth.tar'
    recomputed = metrics_of_logits(saved.logits, saved.targets, 10).metrics
    for key in METRICS:
        assert recomputed[key] == result[key], key
    assert not list(path.parent.glob('.*.tmp'))  # the atomic writer's temp file is gone


def test_tta_saves_the_averaged_logits_and_ood_logits(checkpoint, tmp_path, one_thread):
    ood = write_digits_folder(tmp_path / 'ood', per_class=1) / 'train'  # not the evaluated images (refused)
    plain_path, tta_path = tmp_path / 'plain.npz', tmp_path / 'tta.npz'
    plain = _run(checkpoint, tmp_path, '--save-logits', str(plain_path))
    result = _run(checkpoint, tmp_path, '--tta', '2', '--save-logits', str(tta_path), '--ood-data-dir', str(ood))
    saved, plain_saved = load_logits_npz(tta_path), load_logits_npz(plain_path)
    assert saved.logits.dtype == torch.float64  # average_softmax works in float64: kept, so metrics are exact
    recomputed = metrics_of_logits(saved.logits, saved.targets, 10).metrics
    for key in METRICS:
        assert recomputed[key] == result['tta'][key], key
        assert result[key] == plain[key], key  # the plain metrics are unchanged by --tta
    # Averaged, not the identity view: softmax of the saved logits is a proper distribution that differs from it.
    assert not torch.allclose(saved.logits.float(), plain_saved.logits, atol=1e-4)
    torch.testing.assert_close(torch.softmax(saved.logits, 1).sum(1), torch.ones(355, dtype=torch.float64))
    assert saved.ood_logits is not None and saved.ood_logits.shape == (10, 10)  # one image per class
    assert result['ood_num_samples'] == 10


def test_save_logits_collision_and_bad_suffix_are_usage_errors(checkpoint, tmp_path, capsys):
    common = ['--dataset', 'sklearn/digits', '--split', 'val', '--checkpoint', str(checkpoint), '--no-plot']
    same = tmp_path / 'out.npz'
    line = validate_usage_error(capsys, *common, '--output-json', str(same), '--save-logits', str(same))
    assert '--save-logits' in line and '--output-json' in line
    line = validate_usage_error(capsys, *common, '--output-json', str(tmp_path / 'm.json'),
                        '--save-logits', str(tmp_path / 'logits.npy'))
    assert '--save-logits' in line and '.npz' in line
    line = validate_usage_error(capsys, *common, '--output-json', str(tmp_path / 'm.json'),
                                '--save-logits', str(tmp_path))
    assert '--save-logits' in line
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    line = validate_usage_error(capsys, *common, '--output-json', str(tmp_path / 'm.json'),
                        '--save-logits', str(blocker / 'x.npz'))
    assert '--save-logits' in line and 'a_file is a file, not a folder' in line
    assert not (tmp_path / 'm.json').exists() and not same.exists()


def _arrays(**changes) -> dict[str, np.ndarray]:
    arrays = {'logits': np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32),
              'targets': np.array([0, 1, 2, 0, 1, 2], dtype=np.int64), 'class_names': np.array(['a', 'b', 'c']),
              'split': np.array('val'), 'checkpoint': np.array('model_best.pth.tar')}
    arrays.update(changes)
    return {key: value for key, value in arrays.items() if value is not None}


def _write(tmp_path: Path, **changes) -> Path:
    path = tmp_path / 'bad.npz'
    np.savez(path, **_arrays(**changes))
    return path


def test_round_trip(tmp_path):
    logits = torch.randn(5, 4, dtype=torch.float64)
    data = save_logits_npz(logits, torch.tensor([3, 0, 1, 2, 3]), ['w', 'x', 'y', 'z'], split='test',
                           checkpoint='', ood_logits=torch.randn(2, 4).half())
    path = tmp_path / 'ok.npz'
    path.write_bytes(data)
    loaded = load_logits_npz(path)
    assert torch.equal(loaded.logits, logits) and loaded.targets.tolist() == [3, 0, 1, 2, 3]
    assert loaded.class_names == ['w', 'x', 'y', 'z'] and loaded.split == 'test' and loaded.checkpoint == ''
    assert loaded.ood_logits.dtype == torch.float32 and loaded.ood_logits.shape == (2, 4)
    with np.load(io.BytesIO(data), allow_pickle=False) as raw:  # plain numpy reads it without pickle
        assert raw['class_names'].tolist() == ['w', 'x', 'y', 'z']


@pytest.mark.parametrize('changes, key, words', [
    ({'logits': None}, 'logits', 'missing'),
    ({'targets': None}, 'targets', 'missing'),
    ({'class_names': None}, 'class_names', 'missing'),
    ({'targets': np.array([0, 1, 2], dtype=np.int64)}, 'targets', 'shape'),
    ({'logits': np.ones((6,), dtype=np.float32)}, 'logits', 'shape'),
    ({'logits': np.full((6, 3), np.nan, dtype=np.float32)}, 'logits', 'NaN'),
    ({'targets': np.array([0, 1, 2, 0, 1, 3], dtype=np.int64)}, 'targets', '[0, 3)'),
    ({'targets': np.array([0, 1, 2, 0, 1, -1], dtype=np.int64)}, 'targets', '[0, 3)'),
    ({'targets': np.zeros(6, dtype=np.int32)}, 'targets', 'int64'),
    ({'logits': np.ones((6, 3), dtype=np.int64)}, 'logits', 'float32 or float64'),
    ({'class_names': np.array(['a', 'b'])}, 'class_names', 'shape'),
    ({'split': np.array(3)}, 'split', 'unicode'),
    ({'ood_logits': np.ones((2, 4), dtype=np.float32)}, 'ood_logits', 'columns'),
])
def test_load_rejects_bad_files(tmp_path, changes, key, words):
    path = _write(tmp_path, **changes)
    with pytest.raises(ValueError) as error:
        load_logits_npz(path)
    message = str(error.value)
    assert str(path) in message and repr(key) in message and words in message
    assert '\n' not in message


def test_load_rejects_non_npz(tmp_path):
    npy = tmp_path / 'x.npy'
    np.save(npy, np.zeros(3))
    text = tmp_path / 'x.npz'
    text.write_text('not an archive')
    for path in (npy, text, tmp_path / 'missing.npz'):
        with pytest.raises(ValueError, match='logits file') as error:
            load_logits_npz(path)
        assert str(path) in str(error.value)
