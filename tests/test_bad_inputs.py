"""Bad input never runs silently: one table of bad inputs to train.py, validate.py, the OLTR trainer, the shift
evaluation (``python -m cfl_timm.shift``), ``cfl-grid`` and the library, each with the message fragment it must
produce, all rejected before any training work.

Command-line rows run the real entry point in-process (``train.cli``, ``validate.cli``, ``oltr.train.cli``,
``cfl_timm.shift.cli``, ``cfl_timm.grid.cli.cli``) and expect a usage error: exit status 2 and one last line
``<prog>: error: ...`` holding the fragment; then no run folder, checkpoint, cache or output file may exist.
Library rows expect a ``ValueError`` holding the fragment.
The ``bad-inputs`` section of docs/bad-input.md is this table (``python tests/test_bad_inputs.py`` prints it).
"""
import argparse
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.models import create_model

REPO_ROOT = Path(__file__).resolve().parents[1]

DIGITS = ('--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '--epochs', '1', '-b', '32')


@dataclass(frozen=True)
class Row:
    """One bad input: where it enters, what it is (README wording), the arguments and the expected fragment."""

    entry: str  # train.py, validate.py, oltr, cfl_timm.shift, cfl-grid, library
    what: str
    args: tuple  # command-line arguments ({files}: the folder of prepared bad files; {out}: a folder that must not
    # come to exist), or a library call name
    message: str


# then a folder of {files}/folders
FOLDER = ('--model', 'test_resnet', '--img-size', '32', '--epochs', '1', '-b', '4', '--data-dir')


def T(what, message, *args, base=DIGITS):  # noqa: N802  (a table constructor)
    return Row('train.py', what, (*base, *args), message)


TRAIN_ROWS = [
    # numbers
    T('`--lr nan`', 'argument --lr: must be a finite number', '--lr', 'nan'),
    T('`--lr inf`', 'argument --lr: must be a finite number', '--lr', 'inf'),
    T('`--lr 0`', 'argument --lr: must be > 0', '--lr', '0'),
    T('`--lr -0.1`', 'argument --lr: must be > 0', '--lr=-0.1'),
    T('`--lr-base 0`', 'argument --lr-base: must be > 0', '--lr-base', '0'),
    T('`--weight-decay -1`', 'argument --weight-decay: must be >= 0', '--weight-decay=-1'),
    T('`--momentum nan`', 'argument --momentum: must be a finite number', '--momentum', 'nan'),
    T('`--warmup-lr -1`', 'argument --warmup-lr: must be >= 0', '--warmup-lr=-1'),
    T('`--min-lr inf`', 'argument --min-lr: must be a finite number', '--min-lr', 'inf'),
    T('`--drop 1`', 'argument --drop: must be in [0, 1)', '--drop', '1'),
    T('`--drop-path 1.5`', 'argument --drop-path: must be in [0, 1)', '--drop-path', '1.5'),
    T('`--reprob 2`', 'argument --reprob: must be a probability in [0, 1]', '--reprob', '2'),
    T('`--mixup -1`', 'argument --mixup: must be >= 0', '--mixup=-1'),
    T('`--mixup-prob 1.5`', 'argument --mixup-prob: must be a probability in [0, 1]', '--mixup-prob', '1.5'),
    T('`--model-ema-decay 2`', 'argument --model-ema-decay: must be a probability in [0, 1]', '--model-ema-decay', '2'),
    T('`--clip-grad 0`', 'argument --clip-grad: must be > 0', '--clip-grad', '0'),
    T('`--smoothing 1`', 'argument --smoothing: must be in [0, 1)', '--smoothing', '1'),
    T('`--input-img-mode bogus`', "--input-img-mode: unknown PIL image mode 'bogus'", '--input-img-mode', 'bogus'),
    T('`--input-img-mode L` for a 3-channel model', '--input-img-mode L gives 1-channel images, but the model takes 3',
      '--input-img-mode', 'L'),
    T('`--in-chans 4` without an image mode', 'gives 3-channel images, but the model takes 4', '--in-chans', '4'),
    T('`--scale nan 1`', 'argument --scale: must be a finite number', '--scale', 'nan', '1'),
    T('`--epochs 0`', 'argument --epochs: must be an integer >= 1', '--epochs', '0'),
    T('`-b 0`', 'argument -b/--batch-size: must be an integer >= 1', '-b', '0'),
    T('`--grad-accum-steps 0`', 'argument --grad-accum-steps: must be an integer >= 1', '--grad-accum-steps', '0'),
    T('`--checkpoint-hist 0`', 'argument --checkpoint-hist: must be an integer >= 1', '--checkpoint-hist', '0'),
    T('`--log-interval 0`', 'argument --log-interval: must be an integer >= 1', '--log-interval', '0'),
    T('`-j -1`', 'argument -j/--workers: must be an integer >= 0', '-j', '-1'),
    T('`--seed -1`', 'argument --seed: must be an integer in [0, 4294967295]', '--seed=-1'),
    T('`--seed 4294967296`', 'argument --seed: must be an integer in [0, 4294967295]', '--seed', '4294967296'),
    T('`--num-classes 0`', 'argument --num-classes: must be an integer in [1, 10000000]', '--num-classes', '0'),
    T('`--num-classes 10**15` (numpy ran out of memory counting classes)',
      'argument --num-classes: must be an integer in [1, 10000000], got 1000000000000000', '--num-classes',
      '1000000000000000'),
    T('`--img-size 0`', 'argument --img-size: must be an integer >= 1', '--img-size', '0'),
    T('`--input-size 3 0 32`', 'argument --input-size: must be an integer >= 1', '--input-size', '3', '0', '32'),
    T('`--mean 0.5 0.5` (2 values, 3 channels)', '--mean needs 1 or 3 values', '--mean', '0.5', '0.5'),
    T('`--std 0 0 0`', 'argument --std: must be > 0', '--std', '0', '0', '0'),
    T('`--color-jitter-prob 5`', 'argument --color-jitter-prob: must be a probability in [0, 1]',
      '--color-jitter-prob', '5'),
    T('`--grayscale-prob 2`', 'argument --grayscale-prob: must be a probability in [0, 1]', '--grayscale-prob', '2'),
    T('`--gaussian-blur-prob -1`', 'argument --gaussian-blur-prob: must be a probability in [0, 1]',
      '--gaussian-blur-prob=-1'),
    T('`--bce-target-thresh 2`', 'argument --bce-target-thresh: must be a probability in [0, 1]',
      '--bce-target-thresh', '2'),
    T('`--scale 0.9 0.1` (low > high)', 'argument --scale: values must be in increasing order', '--scale', '0.9',
      '0.1'),
    T('`--ratio 0 0`', 'argument --ratio: must be > 0', '--ratio', '0', '0'),
    T('`--cutmix-minmax 0.9 0.1` (low > high)', 'argument --cutmix-minmax: values must be in increasing order',
      '--cutmix-minmax', '0.9', '0.1'),
    T('`--lr-noise 5 1` (low > high)', 'argument --lr-noise: values must be in increasing order', '--lr-noise',
      '5', '1'),
    T('`--decay-milestones -5`', 'argument --decay-milestones: must be an integer >= 0', '--decay-milestones=-5'),
    T('`--decay-milestones 30 10` (decreasing)', 'argument --decay-milestones: values must be in increasing order',
      '--decay-milestones', '30', '10'),
    T('`--lr-cycle-mul 0`', 'argument --lr-cycle-mul: must be > 0', '--lr-cycle-mul', '0'),
    T('`--lr-base-size 0`', 'argument --lr-base-size: must be an integer >= 1', '--lr-base-size', '0'),
    T('`--start-epoch 1` with `--epochs 1`', '--start-epoch must be in [0, --epochs) = [0, 1)', '--start-epoch',
      '1'),
    T('`--interpolation bogus`', "argument --interpolation: invalid choice: 'bogus'", '--interpolation', 'bogus'),
    T('`--model-kwargs foo=1`', "--model-kwargs foo=1: not accepted by model 'test_resnet'", '--model-kwargs',
      'foo=1'),
    T('`--opt-kwargs foo=1`', "--opt-kwargs foo=1: not accepted by the 'sgd' optimizer", '--opt-kwargs', 'foo=1'),
    T('`--gp bogus` (timm asserted when building the model)', "--gp 'bogus': not a global pool type of model "
      "'test_resnet'", '--gp', 'bogus'),
    T('`--opt-betas` for sgd (timm ignores them)', "--opt-betas 0.9 0.99: the 'sgd' optimizer takes no betas",
      '--opt-betas', '0.9', '0.99'),
    T('`--opt adamw` with three betas (timm drops the third)', "the 'adamw' optimizer takes 2 beta(s)", '--opt',
      'adamw', '--opt-betas', '0.9', '0.99', '0.5'),
    T('`--opt adan` with two betas (an IndexError in timm)', "the 'adan' optimizer does not take 2 beta(s)", '--opt',
      'adan', '--opt-betas', '0.9', '0.99'),
    T('`--warmup-epochs -1`', 'argument --warmup-epochs: must be an integer >= 0', '--warmup-epochs=-1'),
    T('`--cooldown-epochs -1`', 'argument --cooldown-epochs: must be an integer >= 0', '--cooldown-epochs=-1'),
    # cyclical schedules and losses
    T('`--T_min 3 --T_max 2`', 'min must not exceed max', '--T_min', '3', '--T_max', '2'),
    T('`--wd_min -1e-4`', 'argument --wd_min/--wd-min: must be >= 0', '--wd_min=-1e-4'),
    T('`--cyclical_factor 0.5`', 'argument --cyclical_factor/--cyclical-factor: must be >= 1', '--cyclical_factor',
      '0.5'),
    T('`--holdout 0`', 'argument --holdout: must be an integer >= 1', '--holdout', '0'),
    T('`--focal_loss sym --gamma -1`', 'gamma must be a finite number >= 0',
      '--focal_loss', 'sym', '--gamma=-1'),
    T('`--focal_loss asym --bce-loss`', 'cannot be combined with --bce-loss', '--focal_loss', 'asym', '--bce-loss'),
    T('`--focal_loss focal` (unknown)', "invalid choice: 'focal'", '--focal_loss', 'focal'),
    T('`--loss nope` (unknown)', "invalid choice: 'nope'", '--loss', 'nope'),
    T('`--aug-splits 1`', '--aug-splits must be 0 or >= 2', '--aug-splits', '1'),
    T('`--split-bn` without `--aug-splits`', '--split-bn needs --aug-splits >= 2', '--split-bn'),
    T('`--jsd-loss` without `--aug-splits`', '--jsd-loss needs --aug-splits >= 2', '--jsd-loss'),
    # names timm resolves late
    T('`--model no_such_model`', "unknown model 'no_such_model'", '--model', 'no_such_model'),
    T('`--opt nosuchopt`', "--opt: unknown optimizer 'nosuchopt'", '--opt', 'nosuchopt'),
    T('`--sched nosuchsched`', "--sched: Unknown scheduler 'nosuchsched'", '--sched', 'nosuchsched'),
    T('`--eval-metric acc`', "--eval-metric must be one of top1, top5, loss, nll, ece, got 'acc'",
      '--eval-metric', 'acc'),
    T('`--device nonsense`', "--device: 'nonsense' is not a device name", '--device', 'nonsense'),
    T('`--model-kwargs depth` (no `=`)', 'expected key=value', '--model-kwargs', 'depth'),
    T('`--epochs ten`', "argument --epochs: expected an integer, got 'ten'", '--epochs', 'ten'),
    # subsets
    T('`--imbalance_ratio 0`', 'argument --imbalance_ratio/--imbalance-ratio: must be >= 1', '--imbalance_ratio', '0'),
    T('`--imbalance_ratio 0.5`', 'argument --imbalance_ratio/--imbalance-ratio: must be >= 1',
      '--imbalance_ratio', '0.5'),
    T('`--imbalance_ratio nan`', 'argument --imbalance_ratio/--imbalance-ratio: must be a finite number',
      '--imbalance_ratio', 'nan'),
    T('`--imbalance_max 40` without a ratio', '--imbalance_max sets the head-class count', '--imbalance_max', '40'),
    T('`--imbalance_ratio 10 --imbalance_max 0`', 'argument --imbalance_max/--imbalance-max: must be an integer >= 1',
      '--imbalance_ratio', '10', '--imbalance_max', '0'),
    T('`--imbalance_ratio 10 --imbalance_max 1000` (more than a class has)', 'fewer images than their n_c',
      '--imbalance_ratio', '10', '--imbalance_max', '1000'),
    T('`--train_size 0`', 'argument --train_size/--train-size: must be an integer >= 1', '--train_size', '0'),
    T('`--train_size 100000` (more than the set)', r'--train_size must be an integer in [1, 1442]',
      '--train_size', '100000'),
    T('`--train_size 10` with `-b 32` (no full batch)', 'is smaller than one batch', '--train_size', '10'),
    T('two subsets at once', 'Choose one training subset', '--train_size', '10', '--imbalance_ratio', '10'),
    T('`--num-classes 5` below the data\'s 10 classes', '--num-classes 5 is smaller than the training set',
      '--num-classes', '5'),
    T('`--read_sampler` missing file', 'file not found', '--read_sampler', '{files}/absent.csv'),
    T('sampler file empty', 'the file holds no indices', '--read_sampler', '{files}/empty.csv'),
    T('sampler entry `x`', "'x' is not an integer index", '--read_sampler', '{files}/word.csv'),
    T('sampler entry `1.5`', "'1.5' is not an integer index", '--read_sampler', '{files}/fraction.csv'),
    T('sampler index 1442 (= set size)', '1 indices outside [0, 1441]', '--read_sampler', '{files}/too_big.csv'),
    T('sampler index -1', '1 indices outside [0, 1441]', '--read_sampler', '{files}/negative.csv'),
    T('sampler index 10^23 (beyond int64)', 'indices outside [0, 1441]', '--read_sampler', '{files}/huge.csv'),
    T('sampler with non-UTF-8 bytes', 'not a UTF-8 text file', '--read_sampler', '{files}/binary.csv'),
    T('sampler with a repeated index', 'duplicate indices (1)', '--read_sampler', '{files}/duplicate.csv'),
    # config file
    T('`-c` missing file', 'Config file not found', '-c', '{files}/absent.yaml'),
    T('config not a mapping', 'must hold a mapping', '-c', '{files}/list.yaml'),
    T('config with unknown key', "Unknown keys in config", '-c', '{files}/unknown_key.yaml'),
    T('config that is not YAML', 'is not valid YAML', '-c', '{files}/broken.yaml'),
    T('config `epochs: ten`', "key 'epochs' expected an integer, got 'ten'", '-c', '{files}/epochs_word.yaml'),
    T('config `epochs: 1.5`', "key 'epochs' expected an integer, got 1.5", '-c', '{files}/epochs_fraction.yaml'),
    T('config `lr: [1, 2]`', "key 'lr' expects one value", '-c', '{files}/lr_list.yaml'),
    T('config `focal_loss: bogus`', "key 'focal_loss' must be one of sym, asym, asym-cyclical",
      '-c', '{files}/focal_bogus.yaml'),
    T('config `amp: "yes"`', "key 'amp' is a switch", '-c', '{files}/amp_string.yaml'),
    T('config `model_kwargs: 3`', "key 'model_kwargs' expects a mapping", '-c', '{files}/kwargs_number.yaml'),
    T('config with a key given twice', "key 'epochs' appears twice (line 2)", '-c', '{files}/duplicate_key.yaml'),
    T('config with a `config:` key', "key 'config' is not allowed inside a config file", '-c',
      '{files}/nested_config.yaml'),
    T('config `grayscale_prob: 2`', "key 'grayscale_prob' must be a probability in [0, 1]", '-c',
      '{files}/grayscale_prob.yaml'),
    T('config `scale: [0.9, 0.1]`', "key 'scale': values must be in increasing order", '-c',
      '{files}/scale_order.yaml'),
    # dataset
    T('`--data-dir` missing', 'Dataset path does not exist', '--model', 'test_resnet', '--data-dir', 'no/such/dir',
      base=()),
    T('no dataset at all', 'No dataset path', '--model', 'test_resnet', base=()),
    T('folder without a `train/` folder', "no non-empty 'train' folder", '--model', 'test_resnet', '--data-dir',
      '{files}/no_train', base=()),
    T('`--class-map` missing file', '--class-map: file not found', '--class-map', '{files}/absent.txt'),
    T('val folder missing a class', 'missing 1 (2); the labels would not match', '{files}/folders/missing_class',
      base=FOLDER),
    T('train and val class folders that differ', 'missing 1 (2); extra 1 (3)', '{files}/folders/other_class',
      base=FOLDER),
    T('zero-byte image', 'empty.png: empty file', '{files}/folders/zero_byte', base=FOLDER),
    T('text file named `.jpg`', "cannot identify image file", '{files}/folders/text_jpg', base=FOLDER),
    T('truncated JPEG', 'truncated.jpg: image file is truncated', '{files}/folders/truncated', base=FOLDER),
    T('symlink loop in the data folder', 'symlink loop in the dataset', '{files}/folders/symlink_loop',
      base=FOLDER),
    T('image of 100000x100000 pixels (PNG header)', 'huge.png: Image size (10000000000 pixels) exceeds limit',
      '{files}/folders/huge', base=FOLDER),
    # checkpoints and the run folder
    T('`--initial-checkpoint` missing', '--initial-checkpoint: file not found', '--initial-checkpoint',
      '{files}/absent.pth.tar'),
    T('`--initial-checkpoint` truncated', 'is not a readable PyTorch checkpoint', '--initial-checkpoint',
      '{files}/truncated.pth.tar'),
    T('`--initial-checkpoint` text file', 'is not a readable PyTorch checkpoint', '--initial-checkpoint',
      '{files}/text.pth.tar'),
    T('`--initial-checkpoint` of another model', 'does not fit the model (missing', '--initial-checkpoint',
      '{files}/other_model.pth.tar'),
    T('`--initial-checkpoint` with 10 classes, `--num-classes 12`', 'other shapes (file vs model): fc.weight (10, ',
      '--initial-checkpoint', '{files}/focal.pth.tar', '--num-classes', '12'),
    T('`--resume` missing file', '--resume: checkpoint not found', '--resume', '{files}/absent.pth.tar'),
    T('`--resume` truncated checkpoint', 'is not a complete PyTorch checkpoint', '--resume',
      '{files}/truncated.pth.tar'),
    T('`--resume` text file', 'is not a complete PyTorch checkpoint', '--resume', '{files}/text.pth.tar'),
    T('`--resume` torch file of something else', 'is not a train.py training checkpoint', '--resume',
      '{files}/foreign.pth.tar'),
    T('`--resume` checkpoint trained with other settings', 'was trained with other settings, and they change its '
      'training trajectory: --model test_efficientnet -> test_resnet', '--resume', '{files}/other_model.pth.tar'),
    T('`--resume auto` with settings the run was not trained with', 'was trained with other settings, and they '
      'change its training trajectory: --epochs 7 -> 1, --img-size 64 -> 32', '--resume', 'auto', '--output',
      '{files}/runs', '--experiment', 'changed'),
    T('`--resume auto` without `--experiment`', '--resume auto needs --experiment NAME', '--resume', 'auto',
      '--output', '{files}/runs'),
    T('changed command in a folder whose run never finished an epoch', 'holds a run that never finished an epoch, '
      'started with other settings: --epochs 7 -> 1', '--output', '{files}/runs', '--experiment', 'unstarted'),
    T('`--resume` checkpoint of another model (`--allow-changed-args`)', 'do not fit this model; the checkpoint '
      'was saved with --model test_efficientnet', '--resume', '{files}/other_model.pth.tar', '--allow-changed-args'),
    T('`--resume` focal-loss checkpoint without the loss flags (`--allow-changed-args`)', "holds training-loss "
      "state ['_extra_state'] but this run's loss is LabelSmoothingCrossEntropy; resume with the loss flags",
      '--resume', '{files}/focal.pth.tar', '--allow-changed-args'),
    T('existing `--experiment` folder without `--resume`', 'already holds a run', '--output', '{files}/runs',
      '--experiment', 'existing'),
    T('`--resume` of another run into a folder holding a run', 'belongs to run 00c0ffee00c0ffee, but', '--resume',
      '{files}/other_run.pth.tar', '--output', '{files}/runs', '--experiment', 'existing'),
    T('`--output` is a file', 'is a file, not a folder', '--output', '{files}/empty.csv', '--experiment', 'x'),
    T('`--experiment` an absolute path', 'argument --experiment: must be a relative name inside --output',
      '--output', '{files}/runs', '--experiment', '{files}/elsewhere'),
    T('`--experiment ../up` (leaves --output)', 'argument --experiment: must be a relative name inside --output',
      '--output', '{files}/runs', '--experiment', '../up'),
    T('`--experiment a/../b` (a `..` part inside)', 'argument --experiment: must be a relative name inside --output',
      '--output', '{files}/runs', '--experiment', 'a/../b'),
    T('`--experiment .` (--output itself)', 'argument --experiment: must be a relative name inside --output',
      '--output', '{files}/runs', '--experiment', '.'),
    T('`--experiment " "` (blank)', 'argument --experiment: must be a relative name inside --output', '--output',
      '{files}/runs', '--experiment', ' '),
    T('`--experiment` with a newline', 'no blank part or control character), got ', '--output', '{files}/runs',
      '--experiment', 'a\nb'),
    T('`--experiment` naming a file in `--output`', 'empty.csv is a file, not a run folder', '--output', '{files}',
      '--experiment', 'empty.csv'),
    T('`--output` a broken symbolic link', 'argument --output: ', '--output', '{files}/dead_link', '--experiment',
      'x'),
    T('`--output` a symbolic link to a file', 'argument --output: ', '--output', '{files}/link_to_file',
      '--experiment', 'x'),
    T('`--log-tensorboard` a file', 'argument --log-tensorboard: ', '--log-tensorboard', '{files}/empty.csv'),
    T('`--resume` a folder', '--resume: checkpoint not found', '--resume', '{files}/runs'),
    T('`--resume` zero-byte file', 'is not a complete PyTorch checkpoint', '--resume', '{files}/zero.pth.tar'),
    T('`--resume` torch file holding a list', 'is not a train.py training checkpoint', '--resume',
      '{files}/list.pth.tar'),
    T('`--initial-checkpoint` zero-byte file', 'is not a readable PyTorch checkpoint', '--initial-checkpoint',
      '{files}/zero.pth.tar'),
    T('`--initial-checkpoint` torch file holding a list', 'is not a readable PyTorch checkpoint',
      '--initial-checkpoint', '{files}/list.pth.tar'),
    # flag interactions and edge numbers
    T('`--mixup-mode bogus`', "argument --mixup-mode: invalid choice: 'bogus'", '--mixup', '0.5', '--mixup-mode',
      'bogus'),
    T('`--jsd-loss` with `--mixup`', '--jsd-loss cannot be combined with Mixup/CutMix', '--mixup', '0.5',
      '--aug-splits', '2', '--jsd-loss'),
    T('`--cutmix-minmax 0.5 1.5`', 'argument --cutmix-minmax: must be a probability in [0, 1]', '--cutmix-minmax',
      '0.5', '1.5'),
    T('`--momentum 5`', 'argument --momentum: must be in [0, 1)', '--momentum', '5'),
    T('`--crop-pct 1e-9` (a resize beyond any image)', '--crop-pct 1e-09: the evaluation would resize each image',
      '--crop-pct', '1e-9'),
    T('`--remode bogus`', "argument --remode: invalid choice: 'bogus'", '--reprob', '0.5', '--remode', 'bogus'),
    T('`--train-interpolation bogus`', "argument --train-interpolation: invalid choice: 'bogus'",
      '--train-interpolation', 'bogus'),
    T('`--lr-base-scale bogus`', "argument --lr-base-scale: invalid choice: 'bogus'", '--lr-base-scale', 'bogus'),
    T('`--aa bogus`', "--aa 'bogus' is not a timm augmentation policy", '--aa', 'bogus'),
    T('`--aa rand-m9-zz5` (bad RandAugment section)', "--aa 'rand-m9-zz5' is not a timm augmentation policy", '--aa',
      'rand-m9-zz5'),
    T('`--bce-target-thresh` without `--bce-loss`', '--bce-target-thresh: for the BCE loss (--bce-loss) only',
      '--bce-target-thresh', '0.2'),
    T('`--bce-sum` without `--bce-loss`', '--bce-sum: for the BCE loss (--bce-loss) only', '--bce-sum'),
    T('`--train-crop-mode bogus`', "argument --train-crop-mode: invalid choice: 'bogus'", '--train-crop-mode',
      'bogus'),
    T('`--lr 1e400` (overflows to inf)', 'argument --lr: must be a finite number', '--lr', '1e400'),
    T('`--lr 1e-400` (underflows to 0)', 'argument --lr: must be > 0', '--lr', '1e-400'),
    T('`--lr -0`', 'argument --lr: must be > 0', '--lr=-0'),
    T('`--seed 1e3`', "argument --seed: expected an integer, got '1e3'", '--seed', '1e3'),
    T('`-b 10^20`', 'is smaller than one batch', '-b', '100000000000000000000'),
    T('`--holdout 100000` (more than the set)', '--holdout must be an integer in [1, 1432]', '--holdout', '100000'),
    T('one class folder in the data', 'a classifier needs at least 2', '{files}/folders/one_class', base=FOLDER),
    T('empty class folder in both splits', 'class folder(s) 1 (3) hold no image', '{files}/folders/empty_class',
      base=FOLDER),
    T('class folder holding only a `.txt` file', 'class folder(s) 1 (3) hold no image',
      '{files}/folders/text_class', base=FOLDER),
    T('`--class-map` naming 2 of the 3 class folders', 'lacks the class folder(s) 1 (2)', '{files}/folders/plain',
      '--class-map', '{files}/classes_01.txt', base=FOLDER),
    T('`--class-map` a `.csv` file', 'timm reads a .txt file', '{files}/folders/plain', '--class-map',
      '{files}/word.csv', base=FOLDER),
    T('`--class-map` with non-UTF-8 bytes', 'cannot be read', '{files}/folders/plain', '--class-map',
      '{files}/binary.txt', base=FOLDER),
    T('image directly in the `train/` folder', 'lie directly in the split folder', '{files}/folders/loose_image',
      base=FOLDER),
    T('`--train-split ""` on a dataset root (its splits become classes)', 'are named like dataset splits',
      '{files}/digits', '--train-split', '', base=FOLDER),
    T('`--dataset bogus/x` with a `--data-dir`', "unknown dataset prefix 'bogus/'", '{files}/digits', '--dataset',
      'bogus/x', base=FOLDER),
    T('`--output` inside the training split folder', 'lies inside the --train-split folder', '{files}/digits',
      '--output', '{files}/digits/train', '--experiment', 'run', base=FOLDER),
    # config oddities
    T('config `epochs: null`', "key 'epochs' is null, but the flag needs a value", '-c', '{files}/null_epochs.yaml'),
    T('config `amp: null`', "key 'amp' is null, but the flag needs a value", '-c', '{files}/null_amp.yaml'),
    T('empty config file', 'is empty: it must hold a mapping', '-c', '{files}/empty.yaml'),
    T('config of comments only', 'is empty: it must hold a mapping', '-c', '{files}/comments.yaml'),
    T('config that is a scalar', 'must hold a mapping', '-c', '{files}/scalar.yaml'),
    T('config `lr: .nan`', "key 'lr' must be a finite number", '-c', '{files}/nan_lr.yaml'),
    T('config with a Python object tag', 'is not valid YAML', '-c', '{files}/python_tag.yaml'),
    T('config with two YAML documents', 'is not valid YAML', '-c', '{files}/two_documents.yaml'),
    T('config with non-UTF-8 bytes', 'is not valid YAML', '-c', '{files}/binary.yaml'),
    T('`-c` a folder', 'Config file not found', '-c', '{files}/runs'),
]


def V(what, message, *args):  # noqa: N802
    return Row('validate.py', what, args, message)


FOCAL = ('--checkpoint', '{files}/focal.pth.tar')


def VF(what, message, folder):  # noqa: N802  (evaluating the 'val' split of a folder of {files}/folders)
    return V(what, message, '--data-dir', f'{{files}}/folders/{folder}', '--checkpoint', '{files}/focal.pth.tar',
             '--split', 'val')


VALIDATE_ROWS = [
    V('`--checkpoint` missing file', 'argument --checkpoint: file not found', '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/absent.pth.tar'),
    V('neither `--checkpoint` nor `--pretrained`', 'give --checkpoint PATH', '--dataset', 'sklearn/digits',
      '--model', 'test_resnet'),
    V('`--model no_such_model`', "unknown timm model 'no_such_model'", '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/focal.pth.tar', '--model', 'no_such_model'),
    V('`--data-dir` missing', 'dataset folder not found', '--data-dir', '{files}/nothing', '--checkpoint',
      '{files}/focal.pth.tar'),
    V('`--ood-data-dir` missing', 'argument --ood-data-dir: folder not found', '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/focal.pth.tar', '--ood-data-dir', '{files}/nothing'),
    V('`--ood-data-dir` holding an image of the evaluated split', 'shares 1 image(s) with the in-distribution set',
      '--data-dir', '{files}/digits', '--split', 'val', '--checkpoint', '{files}/focal.pth.tar', '--ood-data-dir',
      '{files}/ood_shared'),
    V('`--ood-dataset svhn` without `test_32x32.mat`', 'SVHN test file not found', '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/focal.pth.tar', '--ood-dataset', 'svhn', '--ood-data-dir', '{files}/no_train'),
    V('`--num-bins 0`', 'argument --num-bins: must be an integer >= 1', '--dataset', 'sklearn/digits', '--checkpoint',
      '{files}/focal.pth.tar', '--num-bins', '0'),
    V('`--num-samples 0`', 'argument --num-samples: must be an integer >= 1', '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/focal.pth.tar', '--num-samples', '0'),
    V('`-b 0`', 'argument -b/--batch-size: must be an integer >= 1', '--dataset', 'sklearn/digits', '--checkpoint',
      '{files}/focal.pth.tar', '-b', '0'),
    V('`--temperature-method ece` (unknown)', "invalid choice: 'ece'", '--temperature-method', 'ece'),
    V('`--calibration-split test` (leaks test labels)', "Refusing to fit the temperature on the 'test' split",
      '--dataset', 'sklearn/digits', '--checkpoint', '{files}/focal.pth.tar', '--calibration-split', 'test'),
    V('`--split test` on a folder without `test/`', "--split: no folder for split 'test'", '--data-dir',
      '{files}/digits', '--checkpoint', '{files}/focal.pth.tar', '--split', 'test'),
    V('`--calibration-split holdout` (no such folder)', "--calibration-split: no folder for split 'holdout'",
      '--data-dir', '{files}/digits', '--checkpoint', '{files}/focal.pth.tar', '--split', 'val',
      '--calibration-split', 'holdout'),
    V('`--calibration-split holdout`, the run trained without `--holdout`', 'records no held-out split',
      '--dataset', 'sklearn/digits', '--checkpoint', '{files}/focal.pth.tar', '--calibration-split', 'holdout'),
    V('`--run-dir` without `--calibration-split holdout`', '--run-dir is read only with --calibration-split holdout',
      '--dataset', 'sklearn/digits', '--checkpoint', '{files}/focal.pth.tar', '--run-dir', '{files}'),
    V('`--posthoc ts` without `--calibration-split`', '--posthoc needs a held-out split to fit on', '--dataset',
      'sklearn/digits', '--checkpoint', '{files}/focal.pth.tar', '--posthoc', 'ts'),
    V('`--posthoc platt` (unknown)', "argument --posthoc: unknown method(s) ['platt']", '--posthoc', 'platt'),
    V('`--plot-dir` is a file', 'empty.csv is a file, not a folder', '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/focal.pth.tar', '--plot-dir', '{files}/empty.csv'),
    V('`--calibration-split` naming the evaluated split', 'selects the evaluated images', '--data-dir',
      '{files}/digits', '--checkpoint', '{files}/focal.pth.tar', '--split', 'val', '--calibration-split',
      'validation'),
    V('`--mean 0.5 0.5` (2 values, 3 channels)', '--mean needs 1 or 3 values', '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/focal.pth.tar', '--mean', '0.5', '0.5'),
    V('`--std 0`', 'argument --std: must be > 0', '--std', '0'),
    V('`--img-size 0`', 'argument --img-size: must be an integer >= 1', '--img-size', '0'),
    V('`--seed -1`', 'argument --seed: must be an integer in [0, 4294967295]', '--seed=-1'),
    V('`--interpolation bogus`', "argument --interpolation: invalid choice: 'bogus'", '--interpolation', 'bogus'),
    V('`--model-kwargs foo=1`', "--model-kwargs foo=1: not accepted by model 'test_resnet'", '--dataset',
      'sklearn/digits', '--checkpoint', '{files}/focal.pth.tar', '--model-kwargs', 'foo=1'),
    V('`--bootstrap 10**11` (the resample indices could not be allocated)',
      'argument --bootstrap: expected 0 (no intervals) or an integer in [2, 100000]', '--bootstrap', '100000000000'),
    V('`--gp bogus`', "--gp 'bogus': not a global pool type of model 'test_resnet'", '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/focal.pth.tar', '--gp', 'bogus'),
    V('`--tta 0`', 'must be an integer in [1, 18]', '--dataset', 'sklearn/digits', '--checkpoint',
      '{files}/focal.pth.tar', '--tta', '0'),
    V('`--tta-shift` as large as the image', '--tta-shift 32 px is not smaller than the 32x32 input', '--dataset',
      'sklearn/digits', '--checkpoint', '{files}/focal.pth.tar', '--img-size', '32', '--tta', '4', '--tta-shift',
      '32'),
    V('`--num-gpu 2`', 'torchrun --nproc-per-node 2', '--dataset', 'sklearn/digits', '--checkpoint',
      '{files}/focal.pth.tar', '--num-gpu', '2'),
    V('`--checkpoint` that is not a checkpoint', 'is not a readable checkpoint', '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/text.pth.tar'),
    V('two outputs naming one file (`--results-file` = `--prediction-grid`)', 'name the same file', '--dataset',
      'sklearn/digits', '--checkpoint', '{files}/focal.pth.tar', '--results-file', '{files}/same.png',
      '--prediction-grid', '{files}/same.png'),
    V('a corrupt image in the evaluated split', 'corrupt image', '--data-dir', '{files}/corrupt', '--checkpoint',
      '{files}/focal.pth.tar', '--split', 'val'),
    VF('evaluated folder missing a class of `train/`', "split 'val' (", 'missing_class'),
    VF('evaluated class folders differ from `train/`', 'missing 1 (2); extra 1 (3)', 'other_class'),
    VF('zero-byte image', 'empty.png: empty file', 'zero_byte'),
    VF('text file named `.jpg`', 'cannot identify image file', 'text_jpg'),
    VF('truncated JPEG', 'truncated.jpg: image file is truncated', 'truncated'),
    VF('symlink loop in the data folder', 'symlink loop in the dataset', 'symlink_loop'),
    VF('empty class folder', 'class folder(s) 1 (3) hold no image', 'empty_class'),
    VF('image of 100000x100000 pixels (PNG header)', 'huge.png: Image size (10000000000 pixels) exceeds limit', 'huge'),
    V('`--results-file` naming the `--checkpoint`', 'is the input file of --checkpoint', '--dataset',
      'sklearn/digits', *FOCAL, '--results-file', '{files}/focal.pth.tar'),
    V('`--prediction-grid` a symbolic link to the `--checkpoint`', 'is the input file of --checkpoint', '--dataset',
      'sklearn/digits', *FOCAL, '--prediction-grid', '{files}/focal_link.png'),
    V('`--results-file` naming the `--valid-labels` file', 'is the input file of --valid-labels', '--dataset',
      'sklearn/digits', *FOCAL, '--valid-labels', '{files}/word.csv', '--results-file', '{files}/word.csv'),
    V('`--results-file` a folder', 'argument --results-file: ', '--dataset', 'sklearn/digits', *FOCAL,
      '--results-file', '{files}/runs'),
    V('`--prediction-grid` below a file', 'argument --prediction-grid: ', '--dataset', 'sklearn/digits', *FOCAL,
      '--prediction-grid', '{files}/empty.csv/grid.png'),
    V('`--save-logits` a folder', 'argument --save-logits: ', '--dataset', 'sklearn/digits', *FOCAL,
      '--save-logits', '{files}/runs'),
    V('`--checkpoint` zero-byte file', 'is not a readable checkpoint: EOFError', '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/zero.pth.tar'),
    V('`--checkpoint` torch file holding a list', 'is not a checkpoint dictionary', '--dataset', 'sklearn/digits',
      '--checkpoint', '{files}/list.pth.tar'),
    V('`--checkpoint` a folder', 'bulk validation of a folder of checkpoints is not supported', '--dataset',
      'sklearn/digits', '--checkpoint', '{files}/runs'),
    V('`--device nonsense`', "argument --device: 'nonsense' is not a device name", '--device', 'nonsense'),
    V('`--valid-labels` index beyond the classes', 'class index 99 is outside the model', '--dataset',
      'sklearn/digits', *FOCAL, '--valid-labels', '{files}/labels_99.txt'),
    V('`--prediction-grid` inside the evaluated split folder', 'lies inside the image folder of --split',
      '--data-dir', '{files}/digits', '--split', 'val', *FOCAL, '--prediction-grid', '{files}/digits/val/0/grid.png'),
    V('`--plot-dir` inside the evaluated split folder', 'lies inside the image folder of --split', '--data-dir',
      '{files}/digits', '--split', 'val', *FOCAL, '--posthoc', 'ts', '--calibration-split', 'train', '--plot-dir',
      '{files}/digits/val/0'),
    V('`--crop-pct 1e-9`', '--crop-pct 1e-09: the evaluation would resize each image', '--dataset', 'sklearn/digits',
      *FOCAL, '--crop-pct', '1e-9'),
    V('`--split ""` on a dataset root (its splits become classes)', 'are named like dataset splits', '--data-dir',
      '{files}/digits', '--split', '', *FOCAL),
    V('`--dataset bogus/x`', "unknown dataset prefix 'bogus/'", '--dataset', 'bogus/x', *FOCAL),
    V('`--class-map` naming 2 of the 3 class folders', 'lacks the class folder(s) 1 (2)', '--data-dir',
      '{files}/folders/plain', '--split', 'val', *FOCAL, '--class-map', '{files}/classes_01.txt'),
    V('`--crop-mode bogus`', "argument --crop-mode: invalid choice: 'bogus'", '--crop-mode', 'bogus'),
    V('`--input-img-mode bogus`', "argument --input-img-mode: unknown PIL image mode 'bogus'", '--input-img-mode',
      'bogus'),
    V('`--class-map` missing file', 'argument --class-map: file not found', '--data-dir', '{files}/digits', *FOCAL,
      '--split', 'val', '--class-map', '{files}/absent.txt'),
]


def O(what, message, lists, *args):  # noqa: N802, E743
    return Row('oltr', what, (lists, *args), message)


OLTR_ROWS = [
    O('list file with a duplicate line', 'duplicate of line 1', 'duplicate'),
    O('list naming a non-image file (`.txt`)', 'is not an image file', 'text_entry'),
    O('list naming a `.png` that is not an image', 'are not images', 'fake_png'),
    O('list naming a missing image', 'do not exist under', 'missing'),
    O('list line without a label', "expected 'relative/path label'", 'no_label'),
    O('list label `x`', "label 'x' is not an integer", 'word_label'),
    O('list label 9 with 3 classes', 'label 9 outside [0, 3)', 'big_label'),
    O('list with non-UTF-8 bytes', 'not a UTF-8 text file', 'binary'),
    O('empty list file', 'holds no samples', 'empty'),
    O('`--set batch_size=64` above the training images', 'fewer than one batch', 'good', '--set', 'batch_size=64'),
    O('`--set nosuchkey=1`', "unknown config key 'nosuchkey'", 'good', '--set', 'nosuchkey=1'),
    O('`--set lr` (no `=`)', '--set expects key=value', 'good', '--set', 'lr'),
    O('`--set loss=bogus`', "unknown loss 'bogus'", 'good', '--set', 'loss=bogus'),
    O('`--set open_threshold=2`', 'open_threshold must be a probability in (0, 1)', 'good', '--set',
      'open_threshold=2'),
    O('`--seed -1`', 'argument --seed: must be an integer in [0, 4294967295]', 'good', '--seed=-1'),
    O('`--set seed=-1`', 'seed must be an integer in [0, 4294967295]', 'good', '--set', 'seed=-1'),
    O('`--resume` without an interrupted run', '--resume: no', 'good', '--resume'),
    O('`--pretrained-file` missing', 'argument --pretrained-file: file not found', 'good', '--pretrained-file',
      '{files}/absent.pth'),
    O('stage-2 config without `--stage1-checkpoint`', 'pass --stage1-checkpoint PATH', 'good', '--config',
      '{files}/stage_2.yaml'),
    O('`--stage1-checkpoint` of another backbone and class count',
      'is a stage-1 run of backbone resnet152, num_classes 365', 'good', '--config', '{files}/stage_2.yaml',
      '--stage1-checkpoint', '{files}/places_stage1.pth'),
    O('`--stage1-checkpoint` with a stage-1 config', 'starts a stage-2 run', 'good', '--stage1-checkpoint',
      '{files}/places_stage1.pth'),
    O('`--stage1-checkpoint` zero-byte file', 'is not a readable PyTorch checkpoint', 'good', '--config',
      '{files}/stage_2.yaml', '--stage1-checkpoint', '{files}/zero.pth.tar'),
    O('`--device nonsense`', "argument --device: 'nonsense' is not a device name", 'good', '--device', 'nonsense'),
    O('`--output` a file', 'argument --output: ', 'good', '--output', '{files}/empty.csv'),
    O('`--list-dir` a file', 'argument --list-dir: ', 'good', '--list-dir', '{files}/empty.csv'),
    O('`--data-root` missing', 'argument --data-root: folder not found', 'good', '--data-root', '{files}/nothing'),
    O('`--open-root` missing', 'argument --open-root: folder not found', 'good', '--open-root', '{files}/nothing'),
    O('config with a key given twice', "key 'epochs' appears twice", 'good', '--config', '{files}/oltr_twice.yaml'),
    O('config that is not YAML', 'is not valid YAML', 'good', '--config', '{files}/oltr_broken.yaml'),
    O('config with non-UTF-8 bytes', 'is not valid YAML', 'good', '--config', '{files}/oltr_binary.yaml'),
    O('empty config file', 'is empty: it must hold a mapping', 'good', '--config', '{files}/empty.yaml'),
    O('`--set feature_lr=.nan`', 'feature_lr must be a finite number >= 0', 'good', '--set', 'feature_lr=.nan'),
    O('`--set classifier_lr=.inf`', 'classifier_lr must be a finite number >= 0', 'good', '--set',
      'classifier_lr=.inf'),
    O('`--set feature_dim=0`', 'feature_dim must be an integer >= 1', 'good', '--set', 'feature_dim=0'),
    O('`--set resize_size=0`', 'resize_size must be an integer >= 1', 'good', '--set', 'resize_size=0'),
    O('`--set workers=-1`', 'workers must be an integer >= 0', 'good', '--set', 'workers=-1'),
    O('`--set momentum=5`', 'momentum must be in [0, 1)', 'good', '--set', 'momentum=5'),
    O('`--set dataset=../up` (leaves --output)', 'dataset must be a name without path separators', 'good', '--set',
      'dataset=../up'),
    O('`--set dataset=` (null)', 'dataset must be a name without path separators', 'good', '--set', 'dataset='),
    O('`--set resize_size=16` below `image_size` 32', 'resize_size 16 is smaller than image_size 32', 'good', '--set',
      'resize_size=16'),
    O('`--set num_classes=3.0`', 'num_classes must be an integer, got 3.0', 'good', '--set', 'num_classes=3.0'),
    O('`--set smoothing=2`', 'eps (label smoothing) must lie in [0, 1)', 'good', '--set', 'loss=sym', '--set',
      'smoothing=2'),
]


# the digits val split as the clean images; generated sets cached and the report written under {out}
SHIFT = ('--data-dir', '{files}/digits/val', '--cache-dir', '{out}/cache', '--output-json', '{out}/shift.json',
         '--workers', '0')
CHECKPOINT = ('--checkpoint', '{files}/focal.pth.tar')


def S(what, message, *args, base=SHIFT):  # noqa: N802
    return Row('cfl_timm.shift', what, (*base, *args), message)


SHIFT_ROWS = [
    S('`--corruptions frost,rain` (unknown)', 'argument --corruptions: expected a comma-separated list from '
      'gaussian_noise,', '--corruptions', 'frost,rain', *CHECKPOINT),
    S('`--severities 0`', "argument --severities: expected a comma-separated list from 1,2,3,4,5, got '0'",
      '--severities', '0', *CHECKPOINT),
    S('`--data-dir` missing', 'argument --data-dir: folder not found', '--data-dir', '{files}/nothing', *CHECKPOINT),
    S('`--save-logits` empty', 'argument --save-logits: give a folder, got an empty path', *CHECKPOINT,
      '--save-logits', ''),
    S('neither `--cifar10c-dir` nor `--cache-dir`', 'give --cifar10c-dir DIR (the published files) or --cache-dir',
      '--data-dir', '{files}/digits/val', *CHECKPOINT, base=()),
    S('`--cifar10c-dir` without `labels.npy`', 'has no labels.npy', '--cifar10c-dir', '{files}/no_train',
      *CHECKPOINT),
    S('`--corruptions fog` that the `--cifar10c-dir` lacks', "has no file for ['fog']; it has ['frost']",
      '--cifar10c-dir', '{files}/c10c_frost', '--corruptions', 'fog', *CHECKPOINT),
    S('`--generate-only` with `--cifar10c-dir`', 'they do not apply to --cifar10c-dir', '--cifar10c-dir',
      '{files}/c10c_frost', '--generate-only'),
    S('`--cache-dir` below a file', 'empty.csv is a file, not a folder', '--cache-dir', '{files}/empty.csv/cache',
      '--generate-only'),
    S('`--checkpoint` missing file', 'argument --checkpoint: file not found', '--checkpoint', '{files}/absent.pth.tar'),
    S('`--checkpoint` that is not a checkpoint (refused before generating)', 'is not a complete PyTorch checkpoint',
      '--checkpoint', '{files}/text.pth.tar'),
    S('`--use-ema` with a checkpoint without EMA weights', 'has no state_dict_ema (--use-ema needs EMA weights)',
      *CHECKPOINT, '--use-ema'),
    S('`--output-json` and `--plot` naming one `.png`', 'the file name must end in .json', *CHECKPOINT,
      '--output-json', '{out}/shift.png', '--plot', '{out}/shift.png'),
    S('`--output-json` below a file', 'empty.csv is a file, not a folder', *CHECKPOINT, '--output-json',
      '{files}/empty.csv/shift.json'),
]

# a grid's cells would train in {out}/work
WORK = ('--work-dir', '{out}/work')


def G(what, message, *args):  # noqa: N802
    return Row('cfl-grid', what, args, message)


GRID_ROWS = [
    G('`--protocol bogus` (unknown)', "argument --protocol: invalid choice: 'bogus'", 'run', '--protocol', 'bogus',
      '--data-dir', '{files}/digits', *WORK),
    G('`run --jobs 0`', 'argument --jobs: must be an integer >= 1', 'run', '--protocol', 'cpu', '--data-dir',
      '{files}/digits', *WORK, '--jobs', '0'),
    G('`run --data-dir` missing', 'argument --data-dir: folder not found', 'run', '--protocol', 'cpu',
      '--data-dir', '{files}/nothing', *WORK),
    G('`run --data-dir` without train/', 'no_train must hold train/ and val/ class folders', 'run', '--protocol',
      'cpu', '--data-dir', '{files}/no_train', *WORK),
    G('`list --data-dir` a file', 'argument --data-dir: ', 'list', '--protocol', 'cpu', '--data-dir',
      '{files}/empty.csv', *WORK),
    G('`--grid` missing file', 'argument --grid: file not found', 'run', '--grid', '{files}/absent.yaml',
      '--data-dir', '{files}/digits', *WORK),
    G('`--train-script` missing file', 'argument --train-script: file not found', 'list', '--protocol', 'cpu',
      '--data-dir', '{files}/digits', *WORK, '--train-script', '{files}/absent.py'),
    G('`--work-dir` below a file', 'argument --work-dir: ', 'run', '--protocol', 'cpu', '--data-dir',
      '{files}/digits', '--work-dir', '{files}/empty.csv/work'),
    G('`--work-dir` empty', 'argument --work-dir: give a folder, got an empty path', 'run', '--protocol', 'cpu',
      '--data-dir', '{files}/digits', '--work-dir', ''),
    G('`--results-dir` a file', 'argument --results-dir: ', 'run', '--protocol', 'cpu', '--data-dir',
      '{files}/digits', *WORK, '--results-dir', '{files}/empty.csv'),
    G('`--slurm-log-dir` below a file', 'argument --slurm-log-dir: ', 'run', '--protocol', 'cpu', '--data-dir',
      '{files}/digits', *WORK, '--executor', 'slurm', '--slurm-log-dir', '{files}/empty.csv/logs'),
    G('`status` with a missing `--work-dir`', '/work: no such folder, so no run of the grid is there', 'status',
      '--protocol', 'cpu', *WORK),
    G('`evaluate --data-dir` missing', 'argument --data-dir: folder not found', 'evaluate', '--protocol',
      'study-cpu', '--data-dir', '{files}/nothing', *WORK),
    G('`pilot --data-dir` missing', 'argument --data-dir: folder not found', 'pilot', '--protocol', 'study-cpu',
      '--data-setting', 'c10_4k', '--epochs', '10', '--name', 'p', '--data-dir', '{files}/nothing', *WORK),
    G('`prepare-data --archive` missing', 'argument --archive: file not found', 'prepare-data', '--archive',
      '{files}/absent.tar.gz', '--out', '{out}/data'),
    G('`prepare-data --archive` that is not a tar file', 'text.pth.tar is not a tar archive', 'prepare-data',
      '--archive', '{files}/text.pth.tar', '--out', '{out}/data'),
    G('`prepare-data --out` a file', 'empty.csv is a file, not a folder', 'prepare-data', '--archive',
      '{files}/archive.tar.gz', '--out', '{files}/empty.csv'),
    G('`prepare-data --out` empty', 'argument --out: give a folder, got an empty path', 'prepare-data', '--archive',
      '{files}/archive.tar.gz', '--out', ''),
    G('`evaluate` a grid without an evaluation key', 'grid cpu has no evaluation key', 'evaluate', '--protocol',
      'cpu', '--data-dir', '{files}/digits', '--work-dir', '{files}/runs'),
    G('`aggregate` with a missing `--work-dir`', 'no such folder, so no run of the grid is there', 'aggregate',
      '--protocol', 'cpu', *WORK),
]


def L(what, message, call):  # noqa: N802
    return Row('library', what, (call,), message)


LIBRARY_ROWS = [
    L("`create_loss('bogus')`", "bogus", 'create_loss_unknown'),
    L('`cyclical_eta(0, epochs=0, factor=2)`', 'epochs', 'eta_epochs'),
    L('`cyclical_eta(0, epochs=10, factor=0.5)`', 'factor', 'eta_factor'),
    L('`long_tailed_counts(100, 10, imbalance_ratio=0)`', '--imbalance-ratio must be a finite number >= 1',
      'long_tailed_ratio'),
    L('`select_train_subset(..., imbalance_max=5)` without a ratio', '--imbalance-max sets the head-class count',
      'subset_max_without_ratio'),
    L('`stratified_indices(targets, 0)`', '--train_size must be an integer in [1, ', 'stratified_zero'),
    L('`SummaryCSV.append({"epochs": 2})`', 'Unknown summary columns', 'summary_column'),
    L('`load_training_checkpoint(truncated file)`', 'is not a complete PyTorch checkpoint', 'load_truncated'),
    L('`coerce_config_value(--epochs, "ten")`', "expected an integer, got 'ten'", 'coerce_word'),
]

ROWS = TRAIN_ROWS + VALIDATE_ROWS + OLTR_ROWS + SHIFT_ROWS + GRID_ROWS + LIBRARY_ROWS


def _row_id(row: Row) -> str:
    return f'{row.entry}:{re.sub(r"[^A-Za-z0-9_=.-]+", "_", row.what).strip("_")}'


# ------------------------------------------------------------------------------------------------ files

@pytest.fixture(scope='module')
def files(tmp_path_factory, digits_dir) -> Path:
    """The prepared bad files: samplers, configs, checkpoints, a folder holding a run, OLTR list folders, a
    CIFAR-10-C-style folder holding one corruption, a tar archive."""
    root = tmp_path_factory.mktemp('bad_inputs')
    samplers = {'empty.csv': b'', 'word.csv': b'1\nx\n', 'fraction.csv': b'1.5\n', 'too_big.csv': b'0\n1442\n',
                'negative.csv': b'-1\n3\n', 'huge.csv': b'3\n100000000000000000000000\n',
                'binary.csv': b'\xff\xfe\x00\x81', 'duplicate.csv': b'1,2\n2\n'}
    for name, content in samplers.items():
        (root / name).write_bytes(content)
    configs = {'list.yaml': '- 1\n- 2\n', 'unknown_key.yaml': 'modle: x\n', 'broken.yaml': 'epochs: [1\n',
               'epochs_word.yaml': 'epochs: ten\n', 'epochs_fraction.yaml': 'epochs: 1.5\n',
               'lr_list.yaml': 'lr: [1, 2]\n', 'focal_bogus.yaml': 'focal_loss: bogus\n',
               'amp_string.yaml': 'amp: "yes"\n', 'kwargs_number.yaml': 'model_kwargs: 3\n',
               'duplicate_key.yaml': 'epochs: 1\nepochs: 2\n', 'nested_config.yaml': 'config: other.yaml\n',
               'grayscale_prob.yaml': 'grayscale_prob: 2\n', 'scale_order.yaml': 'scale: [0.9, 0.1]\n',
               'null_epochs.yaml': 'epochs: null\n', 'null_amp.yaml': 'amp: null\n', 'empty.yaml': '',
               'comments.yaml': '# nothing here\n', 'scalar.yaml': '5\n', 'nan_lr.yaml': 'lr: .nan\n',
               'python_tag.yaml': 'lr: !!python/object/apply:os.getcwd []\n',
               'two_documents.yaml': 'epochs: 1\n---\nepochs: 2\n'}
    for name, content in configs.items():
        (root / name).write_text(content)
    (root / 'binary.yaml').write_bytes(b'epochs: 1\n\xff\xfe: 2\n')
    oltr_config = (REPO_ROOT / 'oltr' / 'configs' / 'ImageNet_LT' / 'stage_1.yaml').read_text()
    (root / 'oltr_twice.yaml').write_text(oltr_config + 'epochs: 2\n')  # the file gives epochs already
    (root / 'oltr_broken.yaml').write_text(oltr_config + 'lr_step: [1\n')
    (root / 'oltr_binary.yaml').write_bytes(oltr_config.encode() + b'# \xff\xfe\n')
    (root / 'zero.pth.tar').write_bytes(b'')
    (root / 'labels_99.txt').write_text('0\n99\n')
    (root / 'classes_01.txt').write_text('0\n1\n')
    (root / 'binary.txt').write_bytes(b'0\n\xff\xfe\n')
    torch.save([1, 2, 3], root / 'list.pth.tar')
    (root / 'dead_link').symlink_to(root / 'nowhere')
    (root / 'link_to_file').symlink_to(root / 'empty.csv')
    (root / 'no_train' / 'val' / 'a').mkdir(parents=True)
    # Checkpoints: a focal-loss one of test_resnet (10 classes), one of another model, broken ones.
    from cfl_timm import CyclicalFocalLoss
    torch.manual_seed(0)
    focal_args = argparse.Namespace(model='test_resnet', num_classes=None, focal_loss='asym-cyclical', gamma_hc=3.0,
                                    gamma_pos=2.0, gamma_neg=4.0, cyclical_factor=2.0, smoothing=None)
    criterion = CyclicalFocalLoss(gamma_hc=3.0, gamma_pos=2.0, cyclical_factor=2.0, epochs=2)
    torch.save({'epoch': 0, 'arch': 'test_resnet', 'args': focal_args,
                'state_dict': create_model('test_resnet', num_classes=10).state_dict(),
                'task_state': {'criterion': criterion.state_dict()}}, root / 'focal.pth.tar')
    torch.save({'epoch': 0, 'arch': 'test_efficientnet', 'args': argparse.Namespace(model='test_efficientnet'),
                'state_dict': create_model('test_efficientnet', num_classes=10).state_dict()},
               root / 'other_model.pth.tar')
    torch.save({'epoch': 0, 'arch': 'test_resnet', 'args': argparse.Namespace(model='test_resnet'),
                'state_dict': create_model('test_resnet', num_classes=10).state_dict(),
                'saver': {'run_id': '00c0ffee00c0ffee'}}, root / 'other_run.pth.tar')
    (root / 'truncated.pth.tar').write_bytes((root / 'focal.pth.tar').read_bytes()[:4000])
    (root / 'text.pth.tar').write_text('not a checkpoint\n')
    (root / 'focal_link.png').symlink_to(root / 'focal.pth.tar')
    torch.save({'weights': torch.zeros(3)}, root / 'foreign.pth.tar')
    (root / 'digits').symlink_to(digits_dir, target_is_directory=True)
    corrupt = root / 'corrupt' / 'val' / '0'
    corrupt.mkdir(parents=True)
    for image in sorted((digits_dir / 'val' / '0').iterdir())[:3]:
        (corrupt / image.name).write_bytes(image.read_bytes())
    (corrupt / 'bad.png').write_bytes(b'this is not an image' * 10)
    shared = root / 'ood_shared' / 'x'  # an OOD folder holding one image of the digits val split
    shared.mkdir(parents=True)
    (shared / 'copy.png').write_bytes(sorted((digits_dir / 'val' / '3').iterdir())[0].read_bytes())
    _write_bad_folders(root / 'folders', digits_dir)
    existing = root / 'runs' / 'existing'
    existing.mkdir(parents=True)
    (existing / 'summary.csv').write_text('epoch,train_loss\n0,1.0\n')
    (existing / 'run.json').write_text('{"run_id": "0123456789abcdef", "resumed_from": null}\n')
    for name, files in (('changed', ('summary.csv', 'args.yaml')), ('unstarted', ('args.yaml', 'run.json'))):
        (root / 'runs' / name).mkdir()  # a run trained with other settings; one that failed before its first epoch
        for file in files:
            (root / 'runs' / name / file).write_text({
                'summary.csv': 'epoch,train_loss\n0,1.0\n',
                'args.yaml': 'epochs: 7\nimg_size: 64\nmodel: test_resnet\n',
                'run.json': '{"run_id": "0123456789abcdef", "resumed_from": null}\n'}[file])
    _write_oltr_lists(root / 'oltr', digits_dir)
    (root / 'stage_2.yaml').write_text((REPO_ROOT / 'oltr' / 'configs' / 'ImageNet_LT' / 'stage_2.yaml').read_text())
    torch.save({'model': {}, 'epoch': 0, 'config': {'stage': 1, 'backbone': 'resnet152', 'num_classes': 365,
                                                    'feature_dim': 512}}, root / 'places_stage1.pth')
    (root / 'c10c_frost').mkdir()  # the published layout with one corruption: labels.npy and frost.npy
    np.save(root / 'c10c_frost' / 'labels.npy', np.zeros(5, dtype=np.int64))
    np.save(root / 'c10c_frost' / 'frost.npy', np.zeros((5, 8, 8, 3), dtype=np.uint8))
    with tarfile.open(root / 'archive.tar.gz', 'w:gz') as tar:
        tar.add(root / 'empty.csv', arcname='empty.csv')
    return root


def _png_header(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` RGB pixels: signature, IHDR and an empty IDAT (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)) + chunk(
        b'IDAT', b'')


def _write_bad_folders(root: Path, digits_dir: Path) -> None:
    """Small train/val image folders over the digits PNGs (3 classes, 4 images each), one per defect; an image
    defect is in both splits."""
    import io

    from PIL import Image
    jpeg = io.BytesIO()  # cut in the middle of its pixel data: Image.verify() accepts it, decoding does not
    Image.effect_noise((128, 128), 64).convert('RGB').save(jpeg, 'JPEG')
    bad_files = {'zero_byte': ('empty.png', b''), 'text_jpg': ('notes.jpg', b'just some text, not a JPEG\n'),
                 'truncated': ('truncated.jpg', jpeg.getvalue()[:len(jpeg.getvalue()) // 2]),
                 'huge': ('huge.png', _png_header(100_000, 100_000))}
    classes = {'missing_class': ('012', '01'), 'other_class': ('012', '013'), 'one_class': ('0', '0')}
    for name in (*classes, *bad_files, 'symlink_loop', 'empty_class', 'text_class', 'loose_image', 'plain'):
        for split, labels in zip(('train', 'val'), classes.get(name, ('012', '012'))):
            for label in labels:
                folder = root / name / split / label
                folder.mkdir(parents=True)
                for image in sorted((digits_dir / split / str(int(label) % 3)).iterdir())[:4]:
                    (folder / image.name).write_bytes(image.read_bytes())
                if name in bad_files and label == '0':
                    (folder / bad_files[name][0]).write_bytes(bad_files[name][1])
    for split in ('train', 'val'):  # a fourth class folder without images: empty, or holding a text file
        (root / 'empty_class' / split / '3').mkdir(parents=True)
        (root / 'text_class' / split / '3').mkdir(parents=True)
        (root / 'text_class' / split / '3' / 'notes.txt').write_text('not an image\n')
    (root / 'empty_class' / 'train' / '.git').mkdir()  # a hidden folder is not a class
    loose = root / 'loose_image' / 'train'  # an image beside the class folders
    (loose / 'loose.png').write_bytes(next((loose / '0').iterdir()).read_bytes())
    (root / 'symlink_loop' / 'train' / '0' / 'again').symlink_to('..', target_is_directory=True)
    (root / 'symlink_loop' / 'val' / '0' / 'again').symlink_to('..', target_is_directory=True)


def _write_oltr_lists(root: Path, digits_dir: Path) -> None:
    """OLTR list folders over the digits PNGs (3 classes, 8 training images each): 'good' and one per defect."""
    images = {c: sorted((digits_dir / 'train' / str(c)).iterdir())[:12] for c in range(3)}
    lines = {'train': [f'train/{c}/{p.name} {c}' for c in range(3) for p in images[c][:8]],
             'val': [f'train/{c}/{p.name} {c}' for c in range(3) for p in images[c][8:10]],
             'test': [f'train/{c}/{p.name} {c}' for c in range(3) for p in images[c][10:12]]}
    (digits_dir / 'not_an_image.png').write_bytes(b'hello, not a PNG')
    defects = {'good': None, 'duplicate': lines['train'][0], 'text_entry': 'train/0/notes.txt 0',
               'fake_png': 'not_an_image.png 0', 'missing': 'train/0/absent.png 0', 'no_label': 'train/0/x.png',
               'word_label': 'train/0/x.png x', 'big_label': 'train/0/x.png 9', 'binary': None, 'empty': None}
    for name, extra in defects.items():
        folder = root / name
        folder.mkdir(parents=True)
        for split, split_lines in lines.items():
            text = '\n'.join(split_lines) + '\n'
            if split == 'train' and extra is not None:
                text += extra + '\n'
            (folder / f'Mini_LT_{split}.txt').write_text(text)
    (root / 'binary' / 'Mini_LT_train.txt').write_bytes(b'train/0/a.png 0\n\xff\xfe\n')
    (root / 'empty' / 'Mini_LT_train.txt').write_text('\n')


# ------------------------------------------------------------------------------------------------ runners

def _expand(args, files: Path, out: Path = Path('{out}')) -> list[str]:
    return [str(a).replace('{files}', str(files)).replace('{out}', str(out)) for a in args]


def _usage_error(capsys, call) -> str:
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ''


@pytest.mark.parametrize('row', TRAIN_ROWS, ids=_row_id)
def test_train_py_rejects_bad_input_before_training(row, files, tmp_path, capsys):
    import train
    argv = _expand(row.args, files)
    output = tmp_path / 'out'
    if '--output' not in argv:
        argv += ['--output', str(output), '--experiment', 'run']
    argv += [] if '-j' in argv else ['-j', '0']
    existing = files / 'runs' / 'existing'
    before = sorted(p.name for p in existing.iterdir())
    line = _usage_error(capsys, lambda: train.cli(argv))
    assert line.startswith('train.py: error: ') and row.message in line, line
    assert not output.exists()  # no run folder, no checkpoint, no summary
    assert sorted(p.name for p in existing.iterdir()) == before  # the earlier run is untouched


@pytest.mark.parametrize('row', VALIDATE_ROWS, ids=_row_id)
def test_validate_py_rejects_bad_input_before_evaluating(row, files, tmp_path, capsys):
    import validate
    out_json = tmp_path / 'out' / 'result.json'
    argv = _expand(row.args, files) + ['--output-json', str(out_json), '-j', '0', '--no-plot']
    line = _usage_error(capsys, lambda: validate.cli(argv))
    assert 'error: ' in line and row.message in line, line
    assert not out_json.exists()


@pytest.mark.parametrize('row', OLTR_ROWS, ids=_row_id)
def test_oltr_rejects_bad_input_before_training(row, files, digits_dir, tmp_path, capsys):
    from oltr.train import cli
    config = REPO_ROOT / 'oltr' / 'configs' / 'ImageNet_LT' / 'stage_1.yaml'
    lists, *extra = _expand(row.args, files)
    output = tmp_path / 'out'
    argv = ['--config', str(config), '--data-root', str(digits_dir), '--list-dir', str(files / 'oltr' / lists),
            '--output', str(output), '--device', 'cpu', '--set', 'dataset=Mini_LT', '--set', 'num_classes=3',
            '--set', 'image_size=32', '--set', 'resize_size=32', '--set', 'batch_size=8', '--set', 'workers=0',
            '--epochs', '1', *extra]
    line = _usage_error(capsys, lambda: cli(argv))
    assert 'error: ' in line and row.message in line, line
    assert not output.exists()


@pytest.mark.parametrize('row', SHIFT_ROWS, ids=_row_id)
def test_shift_rejects_bad_input_before_reading_images(row, files, tmp_path, capsys):
    from cfl_timm import shift
    out = tmp_path / 'out'
    line = _usage_error(capsys, lambda: shift.cli(_expand(row.args, files, out)))
    assert line.startswith('python -m cfl_timm.shift: error: ') and row.message in line, line
    assert not out.exists()  # no cache folder, no generated set, no report


@pytest.mark.parametrize('row', GRID_ROWS, ids=_row_id)
def test_cfl_grid_rejects_bad_input_before_any_work(row, files, tmp_path, capsys):
    from cfl_timm.grid.cli import cli
    out = tmp_path / 'out'
    line = _usage_error(capsys, lambda: cli(_expand(row.args, files, out)))
    assert re.match(r'cfl-grid( [a-z-]+)?: error: ', line) and row.message in line, line
    assert not out.exists()  # no work folder, no run, no extracted data


def _library_call(name: str, files: Path):
    from cfl_timm import create_loss, cyclical_eta
    from cfl_timm.data import long_tailed_counts, select_train_subset, stratified_indices
    from cfl_timm.files import SummaryCSV
    from cfl_timm.training import load_training_checkpoint
    from cfl_timm.training.input_checks import coerce_config_value
    targets = np.repeat(np.arange(3), 10)
    epochs_action = next(a for a in __import__('train').get_args_parser()._actions if a.dest == 'epochs')
    return {
        'create_loss_unknown': lambda: create_loss('bogus'),
        'eta_epochs': lambda: cyclical_eta(0, 0, 2.0),
        'eta_factor': lambda: cyclical_eta(0, 10, 0.5),
        'long_tailed_ratio': lambda: long_tailed_counts(100, 10, 0.0),
        'subset_max_without_ratio': lambda: select_train_subset(targets, imbalance_max=5),
        'stratified_zero': lambda: stratified_indices(targets, 0),
        'summary_column': lambda: SummaryCSV(files / 'lib' / 'summary.csv').append({'epochs': 2}),
        'load_truncated': lambda: load_training_checkpoint(files / 'truncated.pth.tar'),
        'coerce_word': lambda: coerce_config_value(epochs_action, 'epochs', 'ten', 'run.yaml'),
    }[name]


@pytest.mark.parametrize('row', LIBRARY_ROWS, ids=_row_id)
def test_library_rejects_bad_input(row, files):
    call = _library_call(row.args[0], files)
    with pytest.raises(ValueError) as info:
        call()
    assert row.message in str(info.value), str(info.value)
    assert not (files / 'lib' / 'summary.csv').exists()


# ------------------------------------------------------------------------------------- docs/bad-input.md

def readme_table() -> str:
    lines = ['| entry | bad input | message (fragment) |', '|---|---|---|']
    for row in ROWS:
        lines.append(f'| {row.entry} | {row.what} | `{row.message}` |'.replace('`` ', '` ').replace('``', '`'))
    return '\n'.join(lines)


def test_table_is_large_distinct_and_in_the_docs():
    assert len(ROWS) >= 60 and len({(r.entry, r.what) for r in ROWS}) == len(ROWS)
    text = (REPO_ROOT / 'docs' / 'bad-input.md').read_text()
    section = text.split('<!-- section:bad-inputs -->', 1)[1].split('<!-- /section:bad-inputs -->', 1)[0]
    assert readme_table() in section, 'docs/bad-input.md table out of date: python tests/test_bad_inputs.py --write'


def write_docs_table() -> None:
    """Replace the bad-inputs section of docs/bad-input.md with :func:`readme_table`."""
    path = REPO_ROOT / 'docs' / 'bad-input.md'
    text = path.read_text()
    start = text.index('| entry | bad input | message (fragment) |')  # the table ends the section
    end = text.index('<!-- /section:bad-inputs -->')
    path.write_text(f'{text[:start]}{readme_table()}\n{text[end:]}')


if __name__ == '__main__':  # python tests/test_bad_inputs.py [--write]
    if '--write' in sys.argv[1:]:
        write_docs_table()
    else:
        sys.stdout.write(readme_table() + '\n')
