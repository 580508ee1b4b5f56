"""Training subsets: first-N, stratified, int64 sampler CSV with range checks, long-tailed profile, digits set."""
import numpy as np
import pytest
import torch

from cfl_timm.data import (
    DigitsDataset,
    SubsetDataset,
    class_counts,
    dataset_targets,
    first_n_indices,
    long_tailed_counts,
    long_tailed_indices,
    read_sampler_indices,
    select_train_subset,
    stratified_indices,
)


def _targets(counts):
    """Interleaved class labels with the given per-class counts (class c appears counts[c] times)."""
    rng = np.random.default_rng(0)
    targets = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return rng.permutation(targets)


def test_first_n_is_the_first_n_images():
    np.testing.assert_array_equal(first_n_indices(100, 7), np.arange(7))
    assert first_n_indices(100, 7).dtype == np.int64
    with pytest.raises(ValueError, match=r'--train_size must be an integer in \[1, 100\]'):
        first_n_indices(100, 101)


def test_stratified_is_balanced_and_takes_each_class_first_images():
    targets = _targets([50, 50, 50, 50])
    idx = stratified_indices(targets, 42)
    np.testing.assert_array_equal(class_counts(targets[idx]), [11, 11, 10, 10])
    for c in range(4):
        first_of_class = np.flatnonzero(targets == c)[: (targets[idx] == c).sum()]
        np.testing.assert_array_equal(np.sort(idx[targets[idx] == c]), first_of_class)


def test_stratified_gives_a_small_class_surplus_to_the_others():
    targets = _targets([3, 40, 40])
    idx = stratified_indices(targets, 30)
    np.testing.assert_array_equal(class_counts(targets[idx]), [3, 14, 13])
    assert len(np.unique(idx)) == 30


def test_long_tailed_counts_follow_the_exponential_profile():
    counts = long_tailed_counts(500, 10, 100.0)
    expected = np.floor(500 * 100.0 ** (-np.arange(10) / 9))
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] == 500 and counts[-1] == 5
    with pytest.raises(ValueError, match='>= 1'):
        long_tailed_counts(500, 10, 0.5)


def test_long_tailed_indices_take_the_first_n_c_of_each_class():
    targets = _targets([60, 60, 60, 60, 60])
    idx = long_tailed_indices(targets, 10.0, n_max=50)
    np.testing.assert_array_equal(class_counts(targets[idx]), long_tailed_counts(50, 5, 10.0))
    for c, n in enumerate(long_tailed_counts(50, 5, 10.0)):
        np.testing.assert_array_equal(idx[targets[idx] == c], np.flatnonzero(targets == c)[:n])
    with pytest.raises(ValueError, match='fewer images than their n_c'):
        long_tailed_indices(targets, 10.0, n_max=61)


def test_read_sampler_is_int64_beyond_int16(tmp_path):
    # The published loader cast to int16: 40000 wrapped to -25536 and selected a wrong image.
    path = tmp_path / 'sampler.csv'
    path.write_text('40000\n0\n32768, 49999\n')
    idx = read_sampler_indices(path, 50000)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, [40000, 0, 32768, 49999])


@pytest.mark.parametrize('content, message', [
    ('', 'holds no indices'),
    ('\n\n', 'holds no indices'),
    ('1\nabc\n', r"row 2: 'abc' is not an integer"),
    ('1.5\n', 'is not an integer'),
    ('0\n50000\n', r'outside \[0, 49999\]'),
    ('-1\n', r'outside \[0, 49999\]'),
    ('3\n3\n', 'duplicate'),
])
def test_read_sampler_bad_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / 'bad.csv'
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_sampler_indices(path, 50000)


def test_read_sampler_missing_file(tmp_path):
    with pytest.raises(ValueError, match='file not found'):
        read_sampler_indices(tmp_path / 'none.csv', 10)


def test_select_one_subset_only(tmp_path):
    targets = _targets([10, 10])
    assert select_train_subset(targets) is None
    with pytest.raises(ValueError, match='Choose one training subset'):
        select_train_subset(targets, train_size=5, imbalance_ratio=2.0)
    with pytest.raises(ValueError, match=r"expected one of \('first', 'stratified'\)"):
        select_train_subset(targets, train_size=5, train_size_mode='random')


def test_digits_dataset_is_a_real_rgb_image_set_with_disjoint_balanced_splits():
    train, val = DigitsDataset('train'), DigitsDataset('val')
    assert len(train) + len(val) == 1797
    counts = class_counts(val.targets)
    assert counts.min() >= 34 and counts.max() <= 37
    image, label = train[0]
    assert image.mode == 'RGB' and image.size == (32, 32) and label == 0
    pixels = np.asarray(image)
    assert pixels.max() > 200 and pixels.min() == 0  # real strokes on a dark background
    train_set = {train.images[i].tobytes() for i in range(len(train))}
    # Duplicated digit images exist in the source data; most validation images are unseen in training.
    assert sum(val.images[i].tobytes() in train_set for i in range(len(val))) < len(val) // 20
    with pytest.raises(ValueError, match='Unknown split'):
        DigitsDataset('dev')


def test_subset_dataset_forwards_transform_and_targets():
    base = DigitsDataset('train')
    subset = SubsetDataset(base, np.array([5, 1, 900]))
    subset.transform = lambda img: torch.tensor(np.asarray(img)).float().mean()
    assert base.transform is subset.transform
    np.testing.assert_array_equal(dataset_targets(subset), base.targets[[5, 1, 900]])
    assert len(subset) == 3 and subset[2][1] == base.targets[900]
    assert subset[0][0].item() == pytest.approx(base[5][0].item())


def test_distributed_sampler_shards_the_subset_not_the_full_set():
    targets = DigitsDataset('train').targets
    idx = stratified_indices(targets, 300)
    subset = SubsetDataset(DigitsDataset('train'), idx)
    shards = [list(torch.utils.data.DistributedSampler(subset, num_replicas=2, rank=r, seed=0)) for r in range(2)]
    drawn = [idx[s] for s in shards]
    assert len(drawn[0]) == len(drawn[1]) == 150
    assert not set(drawn[0]) & set(drawn[1])
    assert set(drawn[0]) | set(drawn[1]) == set(idx.tolist())
