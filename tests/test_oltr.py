"""Tests of the OLTR stage-1 adapter (oltr/): list files, metrics, configs, and short real-image runs."""
import json
from pathlib import Path

import numpy as np
import pytest

from oltr.lists import check_images_exist, class_counts, read_list
from oltr.metrics import macro_f1, open_set_f_measure, open_set_predictions, shot_accuracies, shot_groups

# ---------------------------------------------------------------- list files

def test_places_lt_train_list_counts_and_shot_groups(oltr_lists_dir):
    samples = read_list(oltr_lists_dir / 'Places_LT' / 'Places_LT_train.txt', num_classes=365)
    assert len(samples) == 62500
    counts = class_counts(samples, 365)
    assert min(counts) == 5 and max(counts) == 4980
    for rule, expected in (('code', [132, 156, 77]), ('paper', [131, 163, 71])):
        groups = shot_groups(counts, rule=rule)
        assert np.bincount(groups, minlength=3).tolist() == expected


def test_places_lt_val_test_and_imagenet_lt_val_test_lists(oltr_lists_dir):
    for dataset, split, num_classes, per_class in (('Places_LT', 'val', 365, 20), ('Places_LT', 'test', 365, 100),
                                                   ('ImageNet_LT', 'val', 1000, 20), ('ImageNet_LT', 'test', 1000, 50)):
        samples = read_list(oltr_lists_dir / dataset / f'{dataset}_{split}.txt', num_classes=num_classes)
        assert class_counts(samples, num_classes) == [per_class] * num_classes, (dataset, split)


def test_module_entry_point():
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, '-m', 'oltr.train', '--help'], cwd=repo, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    for option in ('--config', '--data-root', '--list-dir', '--open-root', '--output', '--set', '--test',
                   '--test_open', '--pretrained-file', '--resume', '--shot-rule'):
        assert option in done.stdout


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
    (tmp_path / 'img0.jpg').write_bytes(b'\xff\xd8\xff\xe0' + bytes(12))  # a JPEG header
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
    from sklearn.metrics import f1_score
    assert macro_f1(PREDS, LABELS, 5) == pytest.approx(f1_score(LABELS, PREDS, average='macro'))


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


# ---------------------------------------------------------------- configs

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'oltr' / 'configs'


def test_configs_carry_recipe_and_authors_cfl_settings():
    from oltr.config import load_config, run_name
    for dataset, feature_lr, backbone, num_classes in (('ImageNet_LT', 0.1, 'resnet10', 1000),
                                                       ('Places_LT', 0.001, 'resnet152', 365)):
        for name in ('stage_1', 'stage_1_cfl'):
            config = load_config(CONFIG_DIR / dataset / f'{name}.yaml')
            assert (config['dataset'], config['backbone'], config['num_classes']) == (dataset, backbone, num_classes)
            assert (config['epochs'], config['batch_size'], config['lr_step'], config['lr_gamma']) == (30, 128, 10, 0.1)
            assert (config['feature_lr'], config['classifier_lr']) == (feature_lr, 0.1)
            assert (config['momentum'], config['weight_decay']) == (0.9, 5e-4)
    imagenet = load_config(CONFIG_DIR / 'ImageNet_LT' / 'stage_1_cfl.yaml')
    places = load_config(CONFIG_DIR / 'Places_LT' / 'stage_1_cfl.yaml')
    assert [imagenet[k] for k in ('loss', 'gamma_pos', 'gamma_neg', 'gamma_hc', 'cyclical_factor')] == [
        'asym-cyclical', 0, 4, 2, 4]
    assert [places[k] for k in ('loss', 'gamma_pos', 'gamma_neg', 'gamma_hc', 'cyclical_factor')] == [
        'asym-cyclical', 1, 4, 2, 2]
    assert load_config(CONFIG_DIR / 'ImageNet_LT' / 'stage_1.yaml')['loss'] == 'ce'
    assert run_name(imagenet) == 'stage1_resnet10_asym-cyclical_pos0_neg4_hc2_f4'
    assert run_name(places) != run_name({**places, 'cyclical_factor': 3.0})


def test_config_override_rules(tmp_path):
    from oltr.config import apply_overrides, load_config
    from oltr.train import get_args_parser, resolve_config
    path = CONFIG_DIR / 'Places_LT' / 'stage_1_cfl.yaml'
    config = load_config(path)
    # Not given on the command line: the config's values stay (the published port overwrote them with defaults).
    args = get_args_parser().parse_args(['--config', str(path), '--data-root', str(tmp_path)])
    assert resolve_config(args) == config
    # Given: they win; --set reads YAML scalars.
    args = get_args_parser().parse_args([
        '--config', str(path), '--data-root', str(tmp_path), '--gamma_pos', '0.5', '--epochs', '3',
        '--set', 'batch_size=16', '--set', 'smoothing=null', '--set', 'feature_lr=0.01'])
    resolved = resolve_config(args)
    assert (resolved['gamma_pos'], resolved['epochs'], resolved['batch_size']) == (0.5, 3, 16)
    assert resolved['feature_lr'] == 0.01 and resolved['smoothing'] is None
    assert (resolved['gamma_neg'], resolved['gamma_hc'], resolved['cyclical_factor']) == (4, 2, 2)
    assert apply_overrides(config, {'gamma_neg': None})['gamma_neg'] == 4
    with pytest.raises(ValueError, match='unknown config key'):
        apply_overrides(config, sets=['gama_neg=3'])
    with pytest.raises(ValueError, match='key=value'):
        apply_overrides(config, sets=['gamma_neg'])
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        apply_overrides(config, sets=['loss=focal'])
    assert config['shot_rule'] == 'code'
    args = get_args_parser().parse_args(['--config', str(path), '--data-root', str(tmp_path), '--shot-rule', 'paper'])
    assert resolve_config(args)['shot_rule'] == 'paper'
    with pytest.raises(ValueError, match=r"unknown shot_rule 'median', expected one of \('code', 'paper'\)"):
        apply_overrides(config, sets=['shot_rule=median'])
    with pytest.raises(ValueError, match='open_threshold must be a probability'):
        apply_overrides(config, {'open_threshold': 1.5})
    with pytest.raises(ValueError, match='epochs must be an integer >= 1'):
        apply_overrides(config, sets=['epochs=0'])
    bad = tmp_path / 'bad.yaml'
    bad.write_text('epochs: 30\nlearning_rate: 0.1\n')
    with pytest.raises(ValueError, match='unknown config key'):
        load_config(bad)


@pytest.mark.parametrize('dataset', ['ImageNet_LT', 'Places_LT'])
def test_eta_per_epoch_matches_paper_form(dataset):
    from cfl_timm import create_loss
    from oltr.config import load_config, loss_kwargs
    config = load_config(CONFIG_DIR / dataset / 'stage_1_cfl.yaml')
    criterion = create_loss(**loss_kwargs(config))
    f, n = config['cyclical_factor'], config['epochs'] - 1
    etas = []
    for epoch in range(30):  # 0-based, as the runner steps it
        criterion.set_epoch(epoch)
        expected = 1 - f * epoch / n if f * epoch <= n else (f * epoch / n - 1) / (f - 1)  # cfl.md section 2
        assert criterion.eta == pytest.approx(expected, abs=1e-12)
        etas.append(criterion.eta)
    assert etas[0] == 1.0 and etas[-1] == pytest.approx(1.0) and min(etas) >= 0.0 and max(etas) <= 1.0


# ---------------------------------------------------------------- stage-1 runs on real images

# Per-class training counts straddling OLTR's thresholds: code rule many {110, 105}, medium {60, 40, 21},
# few {20, 10, 5, 3}; paper rule moves 20 to medium. The tenth CIFAR-10 class is the open set.
LT_COUNTS = [110, 105, 60, 40, 21, 20, 10, 5, 3]
VAL_PER_CLASS, TEST_PER_CLASS, OPEN_IMAGES = 4, 8, 12


@pytest.fixture
def oltr_lists(image_folder, tmp_path):
    """OLTR-format lists over a real-image folder dataset (digits PNGs, CIFAR-10 JPEGs):
    <DS>_{train,val,test,open}.txt relative to the dataset root."""
    list_dir = tmp_path / 'oltr_lists'
    list_dir.mkdir()
    root = image_folder
    classes = sorted(p.name for p in (root / 'train').iterdir())
    assert len(classes) == 10
    lines = {'train': [], 'val': [], 'test': [], 'open': []}
    for label, (cls, count) in enumerate(zip(classes[:9], LT_COUNTS)):
        train_files = sorted((root / 'train' / cls).iterdir())[:count]
        lines['train'] += [f'train/{cls}/{f.name} {label}' for f in train_files]
        val_files = sorted((root / 'val' / cls).iterdir())
        lines['val'] += [f'val/{cls}/{f.name} {label}' for f in val_files[:VAL_PER_CLASS]]
        lines['test'] += [f'val/{cls}/{f.name} {label}'
                          for f in val_files[VAL_PER_CLASS:VAL_PER_CLASS + TEST_PER_CLASS]]
    open_files = sorted((root / 'val' / classes[9]).iterdir())[:OPEN_IMAGES]
    lines['open'] = [f'val/{classes[9]}/{f.name} -1' for f in open_files]
    for split, split_lines in lines.items():
        (list_dir / f'Mini_LT_{split}.txt').write_text('\n'.join(split_lines) + '\n')
    return list_dir


def _run_args(config, data_root, list_dir, output, *extra):
    from oltr.train import get_args_parser
    return get_args_parser().parse_args([
        '--config', str(config), '--data-root', str(data_root), '--list-dir', str(list_dir),
        '--output', str(output), '--device', 'cpu',
        '--set', 'dataset=Mini_LT', '--set', 'num_classes=9', '--set', 'image_size=32', '--set', 'resize_size=32',
        '--set', 'batch_size=16', '--set', 'workers=0', *extra])


def _check_results(results, run_dir, with_open):
    saved = json.loads((run_dir / 'results.json').read_text())
    expected_keys = {'overall', 'many', 'medium', 'few', 'macro_f1', 'best_epoch'} | ({'f_measure'} if with_open
                                                                                      else set())
    assert set(saved) == expected_keys
    assert saved == pytest.approx(results)
    for key in expected_keys - {'best_epoch'}:
        assert 0.0 <= saved[key] <= 1.0
    assert (run_dir / 'best.pth').is_file()
    assert not [p for p in run_dir.iterdir() if p.name.endswith('.tmp')]
    return saved


def test_stage1_ce_run_completes(image_folder, oltr_lists, tmp_path, one_thread):
    from oltr.lists import class_counts, read_list
    from oltr.metrics import shot_groups
    from oltr.train import main
    counts = class_counts(read_list(oltr_lists / 'Mini_LT_train.txt'), 9)
    assert counts == LT_COUNTS
    assert np.bincount(shot_groups(counts), minlength=3).tolist() == [2, 3, 4]
    assert np.bincount(shot_groups(counts, rule='paper'), minlength=3).tolist() == [2, 4, 3]
    args = _run_args(CONFIG_DIR / 'ImageNet_LT' / 'stage_1.yaml', image_folder, oltr_lists, tmp_path, '--epochs', '1')
    results = main(args)
    run_dir = tmp_path / 'Mini_LT' / 'stage1_resnet10_ce'
    saved = _check_results(results, run_dir, with_open=False)
    assert saved['best_epoch'] == 0
    assert json.loads((run_dir / 'config.json').read_text())['loss'] == 'ce'
    # A second run into the same directory is refused before any work: the first run's files stay intact.
    before = (run_dir / 'best.pth').read_bytes()
    with pytest.raises(FileExistsError, match='already holds a run'):
        main(args)
    assert (run_dir / 'best.pth').read_bytes() == before


def _interrupt_second_epoch(monkeypatch) -> None:
    """Make the runner's second ``train_one_epoch`` call raise KeyboardInterrupt (a kill mid-run)."""
    import oltr.train
    calls = []
    train_one_epoch = oltr.train.train_one_epoch

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(oltr.train, 'train_one_epoch', interrupted)


def test_stage1_cfl_run_open_set_test_and_exact_resume(image_folder, oltr_lists, tmp_path, monkeypatch, one_thread):
    import torch

    from oltr.train import main
    config = CONFIG_DIR / 'ImageNet_LT' / 'stage_1_cfl.yaml'
    results = main(_run_args(config, image_folder, oltr_lists, tmp_path / 'a', '--epochs', '2',
                             '--open-root', str(image_folder)))
    run_dir = tmp_path / 'a' / 'Mini_LT' / 'stage1_resnet10_asym-cyclical_pos0_neg4_hc2_f4'
    saved = _check_results(results, run_dir, with_open=True)
    assert json.loads((run_dir / 'config.json').read_text())['cyclical_factor'] == 4
    # --test_open re-evaluates the saved best checkpoint without training: the same numbers.
    retest = main(_run_args(config, image_folder, oltr_lists, tmp_path / 'a', '--epochs', '2', '--test_open',
                            '--open-root', str(image_folder)))
    assert retest == pytest.approx(saved)

    # The same run interrupted during its second epoch, then resumed: bit-identical to the uninterrupted one.
    _interrupt_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        main(_run_args(config, image_folder, oltr_lists, tmp_path / 'b', '--epochs', '2'))
    monkeypatch.undo()
    resumed_dir = tmp_path / 'b' / 'Mini_LT' / run_dir.name
    assert torch.load(resumed_dir / 'last.pth', weights_only=True)['epoch'] == 0
    with pytest.raises(ValueError, match=r"differs from the interrupted run in \['feature_lr'\]"):
        main(_run_args(config, image_folder, oltr_lists, tmp_path / 'b', '--epochs', '2', '--resume',
                       '--set', 'feature_lr=0.05'))
    main(_run_args(config, image_folder, oltr_lists, tmp_path / 'b', '--epochs', '2', '--resume'))
    reference = torch.load(run_dir / 'last.pth', weights_only=True)
    resumed = torch.load(resumed_dir / 'last.pth', weights_only=True)
    assert resumed['epoch'] == reference['epoch'] == 1
    for name, value in reference['model'].items():
        assert torch.equal(resumed['model'][name], value), name
    assert resumed['best_val_top1'] == reference['best_val_top1']
    assert resumed['scheduler']['last_epoch'] == 2 and resumed['criterion'] == reference['criterion']


def test_stage1_errors_before_training(image_folder, oltr_lists, tmp_path):
    from oltr.train import main
    config = CONFIG_DIR / 'ImageNet_LT' / 'stage_1.yaml'
    broken = tmp_path / 'lists'
    broken.mkdir()
    for split in ('train', 'val', 'test', 'open'):
        text = (oltr_lists / f'Mini_LT_{split}.txt').read_text()
        if split == 'val':
            text += 'val/nowhere/missing_a.jpg 0\nval/nowhere/missing_b.jpg 1\n'
        (broken / f'Mini_LT_{split}.txt').write_text(text)
    with pytest.raises(FileNotFoundError, match=r'2 of \d+ images listed in .*Mini_LT_val.txt.*missing_a.jpg'):
        main(_run_args(config, image_folder, broken, tmp_path / 'out'))
    with pytest.raises(ValueError, match=r'Mini_LT_train.txt:\d+: label 5 outside \[0, 5\)'):
        main(_run_args(config, image_folder, oltr_lists, tmp_path / 'out', '--set', 'num_classes=5'))
    places = CONFIG_DIR / 'Places_LT' / 'stage_1.yaml'
    with pytest.raises(SystemExit):  # a missing --pretrained-file is refused by its declaration
        main(_run_args(places, image_folder, oltr_lists, tmp_path / 'out', '--pretrained-file',
                       str(tmp_path / 'resnet152.pth')))
    with pytest.raises(ValueError, match='--pretrained-file'):
        main(_run_args(places, image_folder, oltr_lists, tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------- model and optimizer

def test_features_from_local_weights_file(tmp_path):
    import timm
    import torch

    from oltr.model import create_features, create_stage1_model, load_backbone_weights
    torch.manual_seed(0)
    source = timm.create_model('resnet18', layers=(1, 1, 1, 1), num_classes=5, zero_init_last=False)
    assert [len(getattr(source, f'layer{i}')) for i in range(1, 5)] == [1, 1, 1, 1]  # ResNet-10
    weights = tmp_path / 'resnet10.pth'
    torch.save({'state_dict': {f'module.{k}': v for k, v in source.state_dict().items()}}, weights)
    features = create_features('resnet10', pretrained_file=weights)
    assert features.num_features == 512
    loaded = features.state_dict()
    for name, value in source.state_dict().items():
        if not name.startswith('fc.'):
            assert torch.equal(loaded[name], value), name
    # Weights of another network are refused with the offending names (ResNet-18 has two blocks per stage).
    with pytest.raises(ValueError, match=r'does not match the backbone: missing \[.layer1\.1\.'):
        load_backbone_weights(timm.create_model('resnet18', num_classes=0), weights)
    model = create_stage1_model('resnet10', 9, feature_dim=256)  # a projection when the width differs
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 9)
    with pytest.raises(ValueError, match='--pretrained-file'):
        create_features('resnet152')
    with pytest.raises(FileNotFoundError, match='never downloaded'):
        create_features('resnet10', pretrained_file=tmp_path / 'absent.pth')


def test_two_param_groups_and_step_lr():
    from oltr.config import load_config
    from oltr.model import create_stage1_model
    from oltr.train import create_optimizer
    config = load_config(CONFIG_DIR / 'Places_LT' / 'stage_1.yaml')
    model = create_stage1_model('resnet10', 7)
    optimizer, scheduler = create_optimizer(model, config)
    groups = {g['name']: g for g in optimizer.param_groups}
    assert groups['features']['lr'] == 0.001 and groups['classifier']['lr'] == 0.1
    assert {id(p) for p in groups['classifier']['params']} == {id(p) for p in model.classifier.parameters()}
    assert all(g['momentum'] == 0.9 and g['weight_decay'] == 5e-4 for g in optimizer.param_groups)
    lrs = []
    for _ in range(30):
        lrs.append(groups['classifier']['lr'])
        optimizer.step()
        scheduler.step()
    assert lrs[:10] == [0.1] * 10
    assert lrs[10:20] == pytest.approx([0.01] * 10) and lrs[20:] == pytest.approx([0.001] * 10)


# ---------------------------------------------------------------- stage 2 (meta-embedding)

def _stage1_run(image_folder, oltr_lists, output, *extra) -> Path:
    """A one-epoch stage-1 run (ResNet-10) on the lists; returns its best.pth."""
    from oltr.train import main
    main(_run_args(CONFIG_DIR / 'ImageNet_LT' / 'stage_1.yaml', image_folder, oltr_lists, output, '--epochs', '1',
                   *extra))
    return output / 'Mini_LT' / 'stage1_resnet10_ce' / 'best.pth'


@pytest.fixture
def stage1_checkpoint(image_folder, oltr_lists, tmp_path, one_thread) -> Path:
    return _stage1_run(image_folder, oltr_lists, tmp_path / 'stage1')


def test_stage2_features_start_as_stage1_features_and_centroids_are_class_means(image_folder, oltr_lists, tmp_path,
                                                                                 one_thread):
    import torch
    from torch.utils.data import DataLoader

    from oltr.centroids import compute_centroids
    from oltr.data import ListDataset, eval_transform
    from oltr.stage2_model import create_stage2_model, load_stage1, read_stage1_checkpoint
    # A stage-1 run with a projection (feature_dim 256): stage 2 takes the ResNet, the projection and the classifier.
    best = _stage1_run(image_folder, oltr_lists, tmp_path, '--set', 'feature_dim=256')
    config = {'backbone': 'resnet10', 'num_classes': 9, 'feature_dim': 256}
    checkpoint = read_stage1_checkpoint(best, config)
    model = create_stage2_model('resnet10', 9, image_size=32, feature_dim=256).eval()
    load_stage1(model, checkpoint)
    assert torch.equal(model.classifier.hallucinator.weight, checkpoint['model']['classifier.weight'])
    from oltr.model import create_stage1_model
    stage1 = create_stage1_model('resnet10', 9, feature_dim=256).eval()
    stage1.load_state_dict(checkpoint['model'])
    samples = read_list(oltr_lists / 'Mini_LT_train.txt', num_classes=9)
    dataset = ListDataset(image_folder, samples, eval_transform(32, 32))
    with torch.no_grad():
        images = torch.stack([dataset[i][0] for i in range(8)])
        # With the attention's mask at zero the layer is the identity, and stage 2 computes the stage-1 features:
        # the ResNet and the projection were carried over.
        mask = model.features.attention.mask.weight
        assert mask.abs().sum() > 0  # OLTR's effective initialisation draws the mask, too
        saved_mask = mask.clone()
        mask.zero_()
        assert torch.allclose(model.features(images), stage1.features(images), atol=1e-6)
        mask.copy_(saved_mask)
        assert mask.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.05)  # N(0, 2 / out_channels)
    centroids = compute_centroids(model.features, DataLoader(dataset, batch_size=16, shuffle=True), 9,
                                  torch.device('cpu'))
    # The direct per-class mean: one image at a time, summed in float64.
    sums, counts = np.zeros((9, 256)), np.zeros(9)
    with torch.no_grad():
        for index in range(len(dataset)):
            image, label = dataset[index]
            sums[label] += model.features(image.unsqueeze(0))[0].double().numpy()
            counts[label] += 1
    assert counts.tolist() == LT_COUNTS
    # float32 features of a batch and of one image differ in the last digits (values up to ~3)
    np.testing.assert_allclose(centroids.numpy(), sums / counts[:, None], rtol=1e-5, atol=1e-5)
    assert not model.training


def test_class_aware_sampler_yields_groups_of_four_per_class(oltr_lists):
    from torch.utils.data import DataLoader

    from oltr.sampler import ClassAwareSampler
    labels = [label for _, label in read_list(oltr_lists / 'Mini_LT_train.txt', num_classes=9)]
    sampler = ClassAwareSampler(labels, samples_per_class=4, seed=3)
    indices = list(sampler)
    assert len(indices) == len(sampler) == len(labels) == sum(LT_COUNTS)
    groups = [indices[i:i + 4] for i in range(0, len(indices) - len(indices) % 4, 4)]
    group_labels, streams = [], {c: [] for c in range(9)}
    for group in groups:
        assert len({labels[i] for i in group}) == 1, group  # four images of one class
        group_labels.append(labels[group[0]])
        streams[labels[group[0]]] += group
    # Each class's images come in passes: every pass shows each of its images once, in a new order.
    for label, stream in streams.items():
        members = sorted(i for i, y in enumerate(labels) if y == label)
        for start in range(0, len(stream) - LT_COUNTS[label] + 1, LT_COUNTS[label]):
            assert sorted(stream[start:start + LT_COUNTS[label]]) == members, label
    # The classes come in turn: every pass over the 9 classes visits each once, however long-tailed.
    for start in range(0, len(group_labels) - 8, 9):
        assert sorted(group_labels[start:start + 9]) == list(range(9))
    # A DataLoader batch of 16 holds 4 whole groups; the same epoch repeats (resume), another differs.
    loader = DataLoader(list(zip(range(len(labels)), labels)), batch_size=16, sampler=sampler, drop_last=True)
    for _, batch_labels in loader:
        assert [len(set(batch_labels[i:i + 4].tolist())) for i in range(0, 16, 4)] == [1, 1, 1, 1]
    assert list(sampler) == indices
    sampler.set_epoch(1)
    assert list(sampler) != indices
    with pytest.raises(ValueError, match='samples_per_class must be >= 1'):
        ClassAwareSampler(labels, samples_per_class=0)


def test_disc_centroids_loss_equation_and_gradients():
    import torch

    from oltr.centroids import DiscCentroidsLoss
    torch.manual_seed(0)
    feats = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    centroids = (0.3 * torch.randn(4, 5, dtype=torch.float64)).requires_grad_()
    labels = torch.tensor([0, 1, 1, 3, 0, 0])
    loss_fn = DiscCentroidsLoss()
    loss = loss_fn(feats, labels, centroids)
    # The equation, directly: attraction + 0.01 * max(0, 10 - mean squared distance to the other classes).
    dist2 = ((feats[:, None, :] - centroids[None]) ** 2).sum(-1)
    own = torch.nn.functional.one_hot(labels, 4).bool()
    attract = dist2[own].sum() / (2 * 6)
    repel = torch.clamp(10 - dist2[~own].sum() / (6 * 4), min=0)
    assert repel > 0  # the margin is active for these small vectors
    assert loss.item() == pytest.approx((attract + 0.01 * repel).item(), rel=1e-12)
    # Features get the exact derivative.
    grad_feats, = torch.autograd.grad(attract + 0.01 * repel, feats, retain_graph=True)
    loss.backward()
    torch.testing.assert_close(feats.grad, grad_feats)
    assert torch.autograd.gradcheck(lambda f: loss_fn(f, labels, centroids.detach()),
                                    (feats.detach().requires_grad_(),))
    # Centroids: the center-loss update (c_j - f_i) / ((1 + n_j) B) of the attraction, plus the repulsion's
    # derivative; the attraction part is not scaled by a loss weight.
    repel_grad, = torch.autograd.grad(0.01 * repel, centroids)
    counts = torch.bincount(labels, minlength=4).double()
    expected = torch.zeros(4, 5, dtype=torch.float64)
    for i, label in enumerate(labels):
        expected[label] += (centroids[label] - feats[i]).detach() / (1 + counts[label]) / 6
    torch.testing.assert_close(centroids.grad, expected + repel_grad)
    centroids.grad = None
    (0.01 * loss_fn(feats, labels, centroids)).backward()
    torch.testing.assert_close(centroids.grad, expected + 0.01 * repel_grad)


def test_meta_embedding_matches_its_equation():
    import torch

    from oltr.meta_embedding import MetaEmbeddingClassifier
    torch.manual_seed(0)
    head = MetaEmbeddingClassifier(6, 4).double()
    with torch.no_grad():
        head.centroids.copy_(torch.randn(4, 6))
    x = torch.randn(3, 6, dtype=torch.float64)
    c = head.centroids.detach()
    reach = 10 / torch.stack([min(torch.linalg.vector_norm(xi - ck) for ck in c) for xi in x]).unsqueeze(1)
    memory = torch.softmax(x @ head.hallucinator.weight.t() + head.hallucinator.bias, dim=1) @ c
    selector = torch.tanh(x @ head.selector.weight.t() + head.selector.bias)
    infused = reach * (x + selector * memory)
    norm = infused.norm(dim=1, keepdim=True)
    w = head.cosnorm.weight / head.cosnorm.weight.norm(dim=1, keepdim=True)
    expected = 16 * (norm / (1 + norm)) * (infused / norm) @ w.t()
    torch.testing.assert_close(head(x), expected)
    head(x).sum().backward()
    assert head.centroids.grad is None  # the memory is read without gradient; only the centroids loss moves it


def test_stage2_refuses_a_wrong_stage1_checkpoint(image_folder, oltr_lists, stage1_checkpoint, tmp_path, capsys):
    import torch

    from oltr.train import cli
    config = CONFIG_DIR / 'ImageNet_LT' / 'stage_2.yaml'
    state = torch.load(stage1_checkpoint, weights_only=True)
    places = tmp_path / 'places.pth'
    torch.save({**state, 'config': {**state['config'], 'backbone': 'resnet152', 'num_classes': 365}}, places)
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint\n')

    def usage_error(*extra) -> str:
        with pytest.raises(SystemExit) as info:
            cli(['--config', str(config), '--data-root', str(image_folder), '--list-dir', str(oltr_lists),
                 '--output', str(tmp_path / 'out'), '--device', 'cpu', '--set', 'dataset=Mini_LT',
                 '--set', 'num_classes=9', '--set', 'image_size=32', '--set', 'resize_size=32',
                 '--set', 'batch_size=16', '--set', 'workers=0', *extra])
        assert info.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
        assert len(lines) == 1
        return lines[0]

    line = usage_error('--stage1-checkpoint', str(places))
    assert ('is a stage-1 run of backbone resnet152, num_classes 365, feature_dim 512, but this config trains '
            'backbone resnet10, num_classes 9, feature_dim 512') in line
    line = usage_error('--stage1-checkpoint', str(stage1_checkpoint), '--set', 'feature_dim=256')
    assert 'feature_dim 512, but this config trains backbone resnet10, num_classes 9, feature_dim 256' in line
    assert 'not a readable PyTorch checkpoint' in usage_error('--stage1-checkpoint', str(text))
    assert 'pass --stage1-checkpoint PATH' in usage_error()
    assert 'argument --stage1-checkpoint: file not found' in usage_error('--stage1-checkpoint',
                                                                        str(tmp_path / 'absent.pth'))
    assert '--pretrained-file is for stage 1' in usage_error('--stage1-checkpoint', str(stage1_checkpoint),
                                                            '--pretrained-file', str(stage1_checkpoint))
    assert not (tmp_path / 'out').exists()  # refused before any work


# A one-epoch stage 1 on 32-pixel images leaves BatchNorm's running statistics far from the batch statistics, so the
# centroids (computed in eval mode, as OLTR does) lie far from the training-mode features, and ImageNet-LT's
# stage-2 learning rates (0.01 / 0.1) can diverge in these short runs; ten times smaller ones keep them finite.
SHORT_RUN_LRS = ('--set', 'feature_lr=0.001', '--set', 'classifier_lr=0.01')


def _stage2_args(config, image_folder, oltr_lists, output, stage1, *extra):
    return _run_args(config, image_folder, oltr_lists, output, '--stage1-checkpoint', str(stage1), *extra)


def test_stage2_frozen_backbone_does_not_move(image_folder, oltr_lists, stage1_checkpoint, tmp_path, one_thread):
    import torch

    from oltr.train import main
    # Places-LT's stage 2 (ResNet frozen; attention, feature layer and classifier learn) on the small ResNet-10.
    config = CONFIG_DIR / 'Places_LT' / 'stage_2.yaml'
    results = main(_stage2_args(config, image_folder, oltr_lists, tmp_path, stage1_checkpoint, '--epochs', '1',
                                '--set', 'backbone=resnet10'))
    run_dir = tmp_path / 'Mini_LT' / 'stage2_resnet10_ce'
    _check_results(results, run_dir, with_open=False)
    # The run's initial network, rebuilt the way the runner builds it (same seed, same stage-1 weights).
    from oltr.stage2_model import create_stage2_model, load_stage1, read_stage1_checkpoint
    torch.manual_seed(0)
    initial = create_stage2_model('resnet10', 9, image_size=32, freeze_backbone=True)
    load_stage1(initial, read_stage1_checkpoint(stage1_checkpoint, {'backbone': 'resnet10', 'num_classes': 9,
                                                                    'feature_dim': 512}))
    last = torch.load(run_dir / 'last.pth', weights_only=True)
    trained = last['model']
    moved = {name for name, param in initial.named_parameters() if not torch.equal(trained[name], param.detach())}
    frozen = {name for name, param in initial.named_parameters() if name.startswith('features.backbone.')}
    assert frozen and not moved & frozen  # not one frozen parameter moved
    # What learns moved (on a 1 x 1 map the attention's softmax is constant, so theta and phi get no gradient).
    assert {'features.attention.mask.weight', 'features.attention.g.weight', 'features.fc.weight',
            'classifier.centroids', 'classifier.hallucinator.weight', 'classifier.selector.weight',
            'classifier.cosnorm.weight'} <= moved
    groups = {g['name']: g for g in last['optimizer']['param_groups']}
    assert set(groups) == {'features', 'classifier', 'centroids'}
    assert groups['centroids']['lr'] == 0.01 and groups['features']['lr'] == 1e-4


def test_stage2_ce_run_ends_with_oltr_metrics(image_folder, oltr_lists, stage1_checkpoint, tmp_path, one_thread):
    import torch

    from oltr.train import main
    config = CONFIG_DIR / 'ImageNet_LT' / 'stage_2.yaml'
    args = _stage2_args(config, image_folder, oltr_lists, tmp_path, stage1_checkpoint, '--epochs', '1',
                        '--open-root', str(image_folder), *SHORT_RUN_LRS)
    run_dir = tmp_path / 'Mini_LT' / 'stage2_resnet10_ce'
    # While another process holds the run folder, a second one is refused before it writes anything there.
    from cfl_timm.training import RunLock
    holder = RunLock.acquire(run_dir)
    with pytest.raises(ValueError, match='is in use by another'):
        main(args)
    holder.release()
    assert sorted(p.name for p in run_dir.iterdir()) == ['run.lock']
    results = main(args)
    _check_results(results, run_dir, with_open=True)
    best = torch.load(run_dir / 'best.pth', weights_only=True)
    assert best['stage1_checkpoint'] == str(stage1_checkpoint.resolve())
    assert best['saver']['run_id'] == json.loads((run_dir / 'run.json').read_text())['run_id']
    with pytest.raises(FileExistsError, match='already holds a run'):
        main(args)


def test_stage2_cfl_run_and_exact_resume(image_folder, oltr_lists, stage1_checkpoint, tmp_path, monkeypatch,
                                         one_thread):
    import torch

    from oltr.train import main
    config = CONFIG_DIR / 'ImageNet_LT' / 'stage_2_cfl.yaml'
    results = main(_stage2_args(config, image_folder, oltr_lists, tmp_path / 'a', stage1_checkpoint, '--epochs', '2',
                                '--open-root', str(image_folder), *SHORT_RUN_LRS))
    run_dir = tmp_path / 'a' / 'Mini_LT' / 'stage2_resnet10_asym-cyclical_pos0_neg4_hc2_f4'
    _check_results(results, run_dir, with_open=True)

    _interrupt_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        main(_stage2_args(config, image_folder, oltr_lists, tmp_path / 'b', stage1_checkpoint, '--epochs', '2',
                          *SHORT_RUN_LRS))
    monkeypatch.undo()
    resumed_dir = tmp_path / 'b' / 'Mini_LT' / run_dir.name
    run_id = json.loads((resumed_dir / 'run.json').read_text())['run_id']
    with pytest.raises(ValueError, match='is not the checkpoint the run started from'):
        main(_stage2_args(config, image_folder, oltr_lists, tmp_path / 'b', run_dir / 'best.pth', '--epochs', '2',
                          '--resume', *SHORT_RUN_LRS))
    main(_stage2_args(config, image_folder, oltr_lists, tmp_path / 'b', stage1_checkpoint, '--epochs', '2',
                      '--resume', *SHORT_RUN_LRS))
    reference = torch.load(run_dir / 'last.pth', weights_only=True)
    resumed = torch.load(resumed_dir / 'last.pth', weights_only=True)
    assert resumed['epoch'] == reference['epoch'] == 1
    for name, value in reference['model'].items():
        assert torch.equal(resumed['model'][name], value), name
    assert resumed['criterion'] == reference['criterion'] and resumed['saver']['run_id'] == run_id


def test_stage2_configs_carry_the_published_recipe():
    from cfl_timm import create_loss
    from oltr.config import load_config, loss_kwargs, run_name
    expected = {  # dataset: epochs, lr_step, feature_lr, classifier_lr, freeze_backbone, backbone, classes
        'ImageNet_LT': (60, 20, 0.01, 0.1, False, 'resnet10', 1000),
        'Places_LT': (30, 10, 1e-4, 0.01, True, 'resnet152', 365)}
    for dataset, values in expected.items():
        for name in ('stage_2', 'stage_2_cfl'):
            config = load_config(CONFIG_DIR / dataset / f'{name}.yaml')
            assert (config['epochs'], config['lr_step'], config['feature_lr'], config['classifier_lr'],
                    config['freeze_backbone'], config['backbone'], config['num_classes']) == values, (dataset, name)
            assert (config['stage'], config['sampler'], config['samples_per_class'], config['batch_size']) == (
                2, 'class_aware', 4, 128)
            assert (config['centroids_lr'], config['centroids_weight'], config['momentum'],
                    config['weight_decay'], config['lr_gamma']) == (0.01, 0.01, 0.9, 5e-4, 0.1)
        cfl = load_config(CONFIG_DIR / dataset / 'stage_2_cfl.yaml')
        assert run_name(cfl).startswith('stage2_')
        # The authors' stage-2 settings: gamma_pos 0, gamma_neg 4, gamma_hc 2; factor 4 (ImageNet-LT), 2 (Places-LT).
        factor = 4 if dataset == 'ImageNet_LT' else 2
        assert [cfl[k] for k in ('loss', 'gamma_pos', 'gamma_neg', 'gamma_hc', 'cyclical_factor')] == [
            'asym-cyclical', 0, 4, 2, factor]
        # eta spans the stage's own epochs: 1 at the first, 0 at (E - 1) / f, 1 at the last, never outside [0, 1].
        criterion = create_loss(**loss_kwargs(cfl))
        etas = []
        for epoch in range(cfl['epochs']):
            criterion.set_epoch(epoch)
            etas.append(criterion.eta)
        assert etas[0] == 1.0 and etas[-1] == pytest.approx(1.0) and min(etas) == pytest.approx(0.0, abs=0.1)
        assert 0.0 <= min(etas) and max(etas) <= 1.0
    from oltr.config import apply_overrides
    stage2 = load_config(CONFIG_DIR / 'Places_LT' / 'stage_2.yaml')
    with pytest.raises(ValueError, match=r"unknown sampler 'balanced', expected one of \('plain', 'class_aware'\)"):
        apply_overrides(stage2, sets=['sampler=balanced'])
    with pytest.raises(ValueError, match='batch_size 126 is not a multiple of samples_per_class 4'):
        apply_overrides(stage2, {'batch_size': 126})
    with pytest.raises(ValueError, match='freeze_backbone applies to stage 2'):
        apply_overrides(stage2, sets=['stage=1'])
    with pytest.raises(ValueError, match=r'unknown stage 3, expected one of \(1, 2\)'):
        apply_overrides(stage2, sets=['stage=3'])
    # The authors' port runs ImageNet-LT stage 2 for 60 epochs (counted from 1) with `epochs: 30` in the loss,
    # and its command-line default factor 2 replaces the config's 4: eta ends at 3.14 (2.43 with factor 4).
    def published_eta(epoch, epochs=30, factor=2.0):
        return 1 - factor * epoch / (epochs - 1) if factor * epoch < epochs else (
            (factor * epoch / (epochs - 1) - 1) / (factor - 1))
    assert published_eta(60) == pytest.approx(3.14, abs=0.005)
    assert published_eta(60, factor=4.0) == pytest.approx(2.43, abs=0.005)
