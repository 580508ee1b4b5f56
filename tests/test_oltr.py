"""Tests of the OLTR stage-1 adapter (oltr/): list files, metrics, configs, and short real-image runs."""
from pathlib import Path

import numpy as np
import pytest

from oltr.lists import check_images_exist, class_counts, read_list
from oltr.metrics import macro_f1, open_set_f_measure, open_set_predictions, shot_accuracies, shot_groups

OLTR_LISTS = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'oltr_lists'


# ---------------------------------------------------------------- list files

def test_places_lt_train_list_counts_and_shot_groups():
    samples = read_list(OLTR_LISTS / 'Places_LT' / 'Places_LT_train.txt', num_classes=365)
    assert len(samples) == 62500
    counts = class_counts(samples, 365)
    assert min(counts) == 5 and max(counts) == 4980
    for rule, expected in (('code', [132, 156, 77]), ('paper', [131, 163, 71])):
        groups = shot_groups(counts, rule=rule)
        assert np.bincount(groups, minlength=3).tolist() == expected


def test_places_lt_val_and_imagenet_lt_test_lists():
    assert class_counts(read_list(OLTR_LISTS / 'Places_LT' / 'Places_LT_val.txt', num_classes=365), 365) == [20] * 365
    counts = class_counts(read_list(OLTR_LISTS / 'ImageNet_LT' / 'ImageNet_LT_test.txt', num_classes=1000), 1000)
    assert counts == [50] * 1000


def test_list_errors_name_the_line(tmp_path):
    bad = tmp_path / 'bad.txt'
    bad.write_text('a.jpg 0\nb.jpg\n')
    with pytest.raises(ValueError, match=r'bad\.txt:2: expected'):
        read_list(bad)
    bad.write_text('a.jpg 0\nb.jpg x\n')
    with pytest.raises(ValueError, match=r'bad\.txt:2: label .x. is not an integer'):
        read_list(bad)
    bad.write_text('a.jpg 0\n\nb.jpg 3\n')
    with pytest.raises(ValueError, match=r'bad\.txt:3: label 3 outside \[0, 3\)'):
        read_list(bad, num_classes=3)
    with pytest.raises(ValueError, match=r'bad\.txt:1: open-set images must be labelled -1'):
        read_list(bad, open_set=True)
    with pytest.raises(FileNotFoundError, match='not found'):
        read_list(tmp_path / 'absent.txt')


def test_missing_images_reported_with_first_offenders(tmp_path):
    (tmp_path / 'img0.jpg').write_bytes(b'x')
    samples = [('img0.jpg', 0)] + [(f'gone{i}.jpg', 0) for i in range(8)]
    with pytest.raises(FileNotFoundError) as info:
        check_images_exist(tmp_path, samples, list_name='train.txt', max_report=3)
    message = str(info.value)
    assert '8 of 9 images listed in train.txt' in message
    assert 'gone0.jpg' in message and 'gone2.jpg' in message and 'gone3.jpg' not in message
    assert '(and 5 more)' in message
    check_images_exist(tmp_path, samples[:1])


# ---------------------------------------------------------------- metrics

# Five classes with training counts 150, 100, 50, 20, 10:
# code rule (>= 100 / <= 20): many {0, 1}, medium {2}, few {3, 4}; paper rule (> 100 / < 20): many {0},
# medium {1, 2, 3}, few {4}.
TRAIN_COUNTS = [150, 100, 50, 20, 10]
LABELS = [0, 0, 1, 1, 1, 2, 2, 3, 3, 4]
PREDS = [0, 1, 1, 1, 0, 2, 0, 3, 3, 2]
# per-class accuracies: 1/2, 2/3, 1/2, 1, 0; overall 6/10


def test_shot_accuracies_both_rules():
    code = shot_accuracies(PREDS, LABELS, TRAIN_COUNTS)
    assert code['overall'] == pytest.approx(0.6)
    assert code['many'] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert code['medium'] == pytest.approx(1 / 2)
    assert code['few'] == pytest.approx((1 + 0) / 2)
    paper = shot_accuracies(PREDS, LABELS, TRAIN_COUNTS, rule='paper')
    assert paper['overall'] == pytest.approx(0.6)
    assert paper['many'] == pytest.approx(1 / 2)
    assert paper['medium'] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert paper['few'] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="expected one of"):
        shot_groups(TRAIN_COUNTS, rule='median')


def test_macro_f1_hand_computed():
    # F1 per class = 2TP / (#pred + #label): 2/5, 4/6, 2/4, 4/4, 0/1
    expected = (2 / 5 + 4 / 6 + 2 / 4 + 1 + 0) / 5
    assert macro_f1(PREDS, LABELS, 5) == pytest.approx(expected)


def test_open_set_f_measure_at_threshold():
    k = 12  # more than 10 classes, so a flat softmax falls below 0.1
    flat = np.full(k, 1 / k)

    def peaked(c):
        row = np.full(k, 0.5 / (k - 1))
        row[c] = 0.5
        return row

    probs = np.stack([peaked(0), peaked(2), flat, flat, peaked(3), peaked(3)])
    labels = [0, 1, 2, -1, -1, 3]
    preds = open_set_predictions(probs, 0.1)
    assert preds.tolist() == [0, 2, -1, -1, 3, 3]
    # TP = 2 (rows 0, 5); FP = 2 (row 1 wrong, row 2 known image called unknown); FN = 1 (row 4)
    precision, recall = 2 / 4, 2 / 3
    assert open_set_f_measure(preds, labels) == pytest.approx(2 * precision * recall / (precision + recall))
    assert open_set_f_measure(preds, labels) == pytest.approx(4 / 7)
