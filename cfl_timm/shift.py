"""Calibration under distribution shift: a checkpoint on CIFAR-10-C (the published files) or on a CIFAR-10-C-style
set generated from any image folder, reported per corruption and severity (Ovadia et al., NeurIPS 2019).

Run as::

    # the published release (labels.npy and <corruption>.npy), beside the clean test folder it was made from
    python -m cfl_timm.shift --data-dir cifar10/test --cifar10c-dir CIFAR-10-C \\
        --checkpoint output/train/RUN/model_best.pth.tar --output-json shift.json --plot shift.png
    # generated from the clean folder with CIFAR-10-C's parameters, cached under --cache-dir
    python -m cfl_timm.shift --data-dir cifar10/test --cache-dir output/shift-cache --seed 0 \\
        --checkpoint output/train/RUN/model_best.pth.tar --output-json shift.json

``--generate-only`` writes the generated set and stops (no model). ``--save-logits DIR`` also writes the logits of
every evaluated set, one saved-logits file each (:mod:`cfl_timm.metrics.logits_file`), for
``python -m cfl_timm.evaluate``. The JSON holds :func:`shift_report`'s layout
plus what was evaluated (``set``: "CIFAR-10-C" or "CIFAR-10-C-style, generated", its folder, seed and synthesised
corruptions). See ``docs/shift.md``. D. Hendrycks and T. Dietterich, ICLR 2019, https://arxiv.org/abs/1903.12261;
Y. Ovadia et al., NeurIPS 2019, https://arxiv.org/abs/1906.02530.
"""
import argparse
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from timm.data import ImageDataset, resolve_data_config
from timm.models import clean_state_dict, create_model, is_model

from cfl_timm.data import (
    CORRUPTIONS,
    SEVERITIES,
    ImageArrayDataset,
    available_corruptions,
    dataset_targets,
    evenly_spaced,
    generate_corrupted_set,
    load_corrupted,
    read_image_folder,
    shift_set_name,
    strict_folder_dataset,
)
from cfl_timm.data.cifar10c import (
    CIFAR10_CLASSES,
    META_FILE,
    PUBLISHED_SET_NAME,
    check_set_classes,
)
from cfl_timm.data.worker_seeding import check_worker_socket_dir
from cfl_timm.files import atomic_write_bytes, atomic_write_text
from cfl_timm.metrics import save_logits_npz, shift_report
from cfl_timm.training import create_eval_loader, load_training_checkpoint, predict
from cfl_timm.training.arg_types import (
    class_count,
    converter,
    existing_file,
    existing_folder,
    json_file,
    non_negative_int,
    output_folder,
    png_file,
    positive_int,
    seed,
)
from cfl_timm.training.cli_runner import run_cli

__all__ = ['cli', 'generate_shift_sets', 'get_args_parser', 'main', 'prepare_sets', 'shift_evaluation', 'shift_logits']

_logger = logging.getLogger('cfl_timm.shift')
# Named training datasets whose labels a published CIFAR-10-C set may be compared with: CIFAR-10 itself, and the
# offline digits set, whose classes are named by their labels 0 to 9 (the numbered-folder rule of check_set_classes).
_LABELS_0_TO_9_DATASETS = ('torch/cifar10', 'sklearn/digits')


def _name_list(choices: Sequence) -> Any:
    def parse(text: str) -> list:
        names = [item.strip() for item in text.split(',') if item.strip()]
        kind = type(choices[0])
        try:
            values = [kind(name) for name in names]
        except ValueError:
            values = []
        unknown = [value for value in values if value not in choices]
        if not values or unknown:
            raise argparse.ArgumentTypeError(f'expected a comma-separated list from {",".join(map(str, choices))}, '
                                             f'got {text!r}.')
        return list(dict.fromkeys(values))
    return converter(parse)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m cfl_timm.shift', allow_abbrev=False,
        description='Accuracy, ECE, NLL and clean-vs-corrupted MSP AUROC on CIFAR-10-C or a generated '
                    'CIFAR-10-C-style set.')
    data = parser.add_argument_group('data')
    data.add_argument('--data-dir', type=existing_folder, required=True, metavar='DIR',
                      help='the clean images, a class-folder tree (DIR/<class>/<image>), e.g. the CIFAR-10 test set')
    data.add_argument('--cifar10c-dir', type=existing_folder, metavar='DIR',
                      help='the published CIFAR-10-C files (labels.npy, <corruption>.npy); else generate')
    data.add_argument('--cache-dir', type=output_folder, default=None, metavar='DIR',
                      help='where generated sets are cached (needed to generate)')
    data.add_argument('--seed', type=seed, default=0, help='seed of the generated corruptions')
    data.add_argument('--image-size', type=positive_int, default=None,
                      help='resize the clean images to this square side before corrupting (default: as they are)')
    data.add_argument('--corruptions', type=_name_list(CORRUPTIONS), default=None, metavar='LIST',
                      help='comma-separated corruptions (default: the 15 of the benchmark that the set has)')
    data.add_argument('--severities', type=_name_list(SEVERITIES), default=list(SEVERITIES), metavar='LIST',
                      help='comma-separated severities (default 1,2,3,4,5)')
    data.add_argument('--num-samples', type=positive_int, default=None, metavar='N',
                      help='evaluate N evenly spaced images of each set (default: all)')
    data.add_argument('--generate-only', action='store_true', help='write the generated set and stop')
    model = parser.add_argument_group('model')
    model.add_argument('--checkpoint', type=existing_file, metavar='PATH', help='a train.py checkpoint')
    model.add_argument('--model', default=None, help='timm model name (default: the checkpoint\'s)')
    model.add_argument('--use-ema', action='store_true', help='evaluate the EMA weights of the checkpoint')
    model.add_argument('--num-classes', type=class_count, default=None,
                       help='classes of the model (default: the checkpoint\'s, else the largest label + 1)')
    model.add_argument('--batch-size', type=positive_int, default=256)
    model.add_argument('--workers', type=non_negative_int, default=2)
    model.add_argument('--device', default='cpu')
    output = parser.add_argument_group('output')
    output.add_argument('--num-bins', type=positive_int, default=15, help='equal-width bins of ECE')
    output.add_argument('--output-json', type=json_file, metavar='PATH',
                        help='write the report here (atomically); default: print')
    output.add_argument('--plot', type=png_file, metavar='PATH.png', help='box plot of top-1 and ECE per severity')
    output.add_argument('--save-logits', type=output_folder, default=None, metavar='DIR',
                        help='write the logits of every evaluated set to a new folder (DIR/clean.npz, '
                             'DIR/<corruption>_s<severity>.npz: saved-logits files for python -m cfl_timm.evaluate)')
    return parser


def logits_file_name(corruption: Optional[str] = None, severity: Optional[int] = None) -> str:
    """The file of a set under ``--save-logits``: ``clean.npz``, or ``<corruption>_s<severity>.npz``."""
    return 'clean.npz' if corruption is None else f'{corruption}_s{severity}.npz'


def logits_split_name(corruption: Optional[str] = None, severity: Optional[int] = None) -> str:
    """The ``split`` recorded in a set's logits file: ``clean``, or ``<corruption>-<severity>``."""
    return 'clean' if corruption is None else f'{corruption}-{severity}'


def check_logits_folder(args: argparse.Namespace) -> None:
    """``--save-logits``: a folder of its own, holding no logits of an earlier run (files are never overwritten,
    and two runs are never mixed in one folder)."""
    folder = Path(args.save_logits).expanduser()
    for flag, path in (('--output-json', args.output_json), ('--plot', args.plot)):
        if path and Path(path).expanduser().resolve() == folder.resolve():
            raise ValueError(f'--save-logits and {flag} name the same path {path}: give the logits a folder of '
                             'their own.')
    earlier = sorted(path.name for path in folder.glob('*.npz')) if folder.is_dir() else []
    if earlier:
        raise ValueError(f'--save-logits {args.save_logits} already holds the logits of an earlier run '
                         f'({", ".join(earlier[:3])}{", ..." if len(earlier) > 3 else ""}, {len(earlier)} file(s)); '
                         'files are never overwritten: give a new or empty folder.')


def check_args(args: argparse.Namespace) -> None:
    """Every input checked before any work."""
    check_worker_socket_dir(args.workers, '--workers')
    if args.cifar10c_dir is not None:
        if args.generate_only or args.image_size is not None:
            raise ValueError('--generate-only and --image-size generate a set; they do not apply to --cifar10c-dir.')
        if not (Path(args.cifar10c_dir) / 'labels.npy').is_file():
            raise ValueError(f'--cifar10c-dir {args.cifar10c_dir} has no labels.npy (expected the CIFAR-10-C '
                             'layout: labels.npy and one <corruption>.npy per corruption).')
        present = available_corruptions(args.cifar10c_dir)
        if not set(present) & set(CORRUPTIONS):
            raise ValueError(f'--cifar10c-dir {args.cifar10c_dir} holds none of the corruptions '
                             f'{", ".join(CORRUPTIONS)}.')
        missing = [name for name in args.corruptions or () if name not in present]
        if missing:
            raise ValueError(f'--cifar10c-dir {args.cifar10c_dir} has no file for {missing}; it has '
                             f'{present}.')
    elif not args.cache_dir:
        raise ValueError('give --cifar10c-dir DIR (the published files) or --cache-dir DIR (to generate a '
                         'CIFAR-10-C-style set).')
    if args.generate_only:
        if args.save_logits:
            raise ValueError('--save-logits writes the logits of a model; it does not apply to --generate-only.')
        return
    if not args.checkpoint:  # a given path is checked by its declaration
        raise ValueError(f'--checkpoint not found: {args.checkpoint!r} (needed unless --generate-only).')
    if args.model is not None and not is_model(args.model):
        raise ValueError(f"--model: unknown timm model '{args.model}' (see timm.list_models()).")
    if args.save_logits:
        check_logits_folder(args)
    if args.plot:
        from cfl_timm.plotting import require_matplotlib
        require_matplotlib()


def generate_shift_sets(data_dir: str | Path, cache_dir: str | Path, *, seed: int = 0,
                        corruptions: Sequence[str] = CORRUPTIONS, image_size: Optional[int] = None,
                        source: Optional[str] = None, log: Callable[[str], Any] = _logger.info
                        ) -> tuple[ImageArrayDataset, list[str], Path, dict[str, Any]]:
    """The clean images of a class-folder tree and the CIFAR-10-C-style set generated from them (cached).

    Args:
        data_dir: The clean images (``DIR/<class>/<image>``).
        cache_dir: Parent folder of the cached generated sets (:func:`cfl_timm.data.generate_corrupted_set`).
        seed: Seed of the corruptions.
        corruptions: Names from :data:`cfl_timm.data.CORRUPTIONS` to generate.
        image_size: Resize the clean images to this square side first (None: as they are).
        source: How errors name the clean images (default: the folder).
        log: Called with a progress line per corruption.

    Returns:
        The clean dataset, its class names, the folder of the generated set, and what it is (``set``, ``folder``,
        ``seed``, ``synthetic``). A cached set made from the same pixels under other class names is refused
        (:func:`check_set_classes`).
    """
    images, labels, class_names = read_image_folder(data_dir, image_size)
    folder = generate_corrupted_set(images, labels, cache_dir, seed=seed, corruptions=corruptions,
                                    class_names=class_names, source=Path(data_dir).name, log=log)
    check_set_classes(folder, class_names, source or f'the clean images {data_dir}')
    meta = json.loads((folder / META_FILE).read_text())
    return ImageArrayDataset(images, labels), class_names, folder, {
        'set': meta['name'], 'folder': str(folder), 'seed': meta['seed'], 'synthetic': meta['synthetic']}


def prepare_sets(args: argparse.Namespace) -> tuple[Any, list[str], Path, dict[str, Any]]:
    """The clean dataset and its class names, the folder of the corrupted sets and what it is (generated when
    asked). The clean classes are checked against what the set's labels mean (:func:`check_set_classes`)."""
    source = f'the clean --data-dir {args.data_dir}'
    if args.cifar10c_dir is not None:
        dataset = ImageDataset(args.data_dir)
        class_to_idx = dataset.reader.class_to_idx
        class_names = sorted(class_to_idx, key=class_to_idx.get)
        check_set_classes(args.cifar10c_dir, class_names, source)
        clean = strict_folder_dataset(dataset, 'clean --data-dir')
        return clean, class_names, Path(args.cifar10c_dir), {'set': shift_set_name(args.cifar10c_dir),
                                                             'folder': str(args.cifar10c_dir)}
    return generate_shift_sets(args.data_dir, args.cache_dir, seed=args.seed,
                               corruptions=args.corruptions or CORRUPTIONS, image_size=args.image_size, source=source)


def shift_logits(logits_of: Callable[[Any], tuple[torch.Tensor, torch.Tensor]], clean: Any,
                 sets: Mapping[tuple[str, int], Any], num_samples: Optional[int] = None,
                 log: Callable[[str], Any] = _logger.info
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]]]:
    """A model's logits on the clean set and on every corrupted set.

    Args:
        logits_of: The model's (logits (N, K), targets (N,)) on a dataset.
        clean: The clean dataset.
        sets: ``{(corruption, severity): dataset}`` (e.g. :func:`cfl_timm.data.load_corrupted`'s).
        num_samples: Evaluate this many evenly spaced images of each set (None: all).
        log: Called with a line per corrupted set.

    Returns:
        The clean (logits, targets) and ``{corruption: {severity: (logits, targets)}}``, as
        :func:`shift_evaluation` takes them.
    """
    clean_out = logits_of(evenly_spaced(clean, num_samples))
    shifted: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for (name, severity), dataset in sets.items():
        log(f'{name} severity {severity}: {len(dataset)} images')
        shifted.setdefault(name, {})[severity] = logits_of(evenly_spaced(dataset, num_samples))
    return clean_out, shifted


def shift_evaluation(clean: tuple[torch.Tensor, torch.Tensor],
                     shifted: Mapping[str, Mapping[int, tuple[torch.Tensor, torch.Tensor]]],
                     num_bins: int = 15) -> dict[str, Any]:
    """``num_samples`` (``clean``, ``per_set``) and :func:`cfl_timm.metrics.shift_report` of :func:`shift_logits`'s
    logits."""
    return {'num_samples': {'clean': len(clean[1]),
                            'per_set': len(next(iter(next(iter(shifted.values())).values()))[1])},
            **shift_report(*clean, shifted, num_bins=num_bins)}


def check_model_labels(run: dict[str, Any], num_classes: int, checkpoint: str) -> None:
    """With the published CIFAR-10-C, the model's outputs must be CIFAR-10's ten classes: refuse a model with
    another class count, or one whose checkpoint records a training dataset of other classes. A folder dataset
    ('' recorded) is judged by its class count only (the checkpoint records no class names)."""
    if num_classes != len(CIFAR10_CLASSES):
        raise ValueError(f'--checkpoint {checkpoint}: the model has {num_classes} classes, but the published '
                         f'CIFAR-10-C labels are CIFAR-10\'s {len(CIFAR10_CLASSES)}.')
    dataset = str(run.get('dataset') or '')
    if dataset and dataset.lower() not in _LABELS_0_TO_9_DATASETS:
        raise ValueError(f'--checkpoint {checkpoint} was trained on --dataset {dataset}, whose labels are not '
                         f'CIFAR-10\'s ({", ".join(CIFAR10_CLASSES)}), which the published CIFAR-10-C labels mean.')


def save_set_logits(folder: Path, clean: tuple[torch.Tensor, torch.Tensor],
                    shifted: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]], class_names: list[str],
                    checkpoint: str) -> None:
    """``--save-logits``: one saved-logits file per set (atomically), the logits the report is computed from."""
    num_classes = clean[0].shape[1]
    names = list(class_names) + [str(index) for index in range(len(class_names), num_classes)]
    sets = [(None, None, clean)] + [(name, severity, cell) for name, cells in shifted.items()
                                    for severity, cell in cells.items()]
    for name, severity, (logits, targets) in sets:
        data = save_logits_npz(logits, targets, names, split=logits_split_name(name, severity),
                               checkpoint=checkpoint)
        atomic_write_bytes(folder / logits_file_name(name, severity), lambda f, data=data: f.write(data))
    _logger.info(f'logits of {len(sets)} sets written to {folder}')


def open_checkpoint(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The weights of ``--checkpoint`` (its EMA weights with ``--use-ema``), the training arguments it records and
    the model name, read and checked before any set is read or generated (a file that is not a usable checkpoint is
    refused before that work)."""
    checkpoint = load_training_checkpoint(args.checkpoint, '--checkpoint')
    run = vars(checkpoint['args']) if isinstance(checkpoint.get('args'), argparse.Namespace) else {}
    name = args.model or checkpoint.get('arch') or run.get('model')
    if not name:
        raise ValueError(f'--checkpoint {args.checkpoint} names no architecture: give --model NAME.')
    key = 'state_dict_ema' if args.use_ema else 'state_dict'
    if key not in checkpoint:
        raise ValueError(f'--checkpoint {args.checkpoint} has no {key} (--use-ema needs EMA weights).')
    return checkpoint[key], run, name


def build_model(args: argparse.Namespace, state_dict: dict[str, Any], run: dict[str, Any], name: str,
                max_label: int) -> torch.nn.Module:
    """The network ``name`` with :func:`open_checkpoint`'s weights, for images labelled up to ``max_label``."""
    num_classes = args.num_classes or run.get('num_classes') or max_label + 1
    if max_label >= num_classes:
        raise ValueError(f'the images have label {max_label}, but the model has {num_classes} classes.')
    model = create_model(name, num_classes=num_classes, **(run.get('model_kwargs') or {}))
    try:
        model.load_state_dict(clean_state_dict(state_dict))
    except RuntimeError as error:
        raise ValueError(f'--checkpoint {args.checkpoint} does not fit {name} with {num_classes} classes: '
                         f'{str(error).splitlines()[0]}') from None
    return model


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Check, prepare the sets (generating when asked), evaluate every (corruption, severity), write the report."""
    check_args(args)
    opened = None if args.generate_only else open_checkpoint(args)
    clean, class_names, folder, described = prepare_sets(args)
    if args.generate_only:
        _logger.info(f'{described["set"]} written to {folder}')
        return described
    # the benchmark's 15 (the release's 4 extras are left out, so the means are the benchmark's)
    corruptions = args.corruptions or [name for name in available_corruptions(folder) if name in CORRUPTIONS]
    if len(corruptions) < len(CORRUPTIONS):
        _logger.warning(f'evaluating {len(corruptions)} of the {len(CORRUPTIONS)} corruptions: the means are over '
                        'those only.')
    cells = {(name, severity): load_corrupted(folder, name, severity)
             for name in corruptions for severity in args.severities}  # every file checked before the model runs
    max_label = max([int(dataset_targets(clean).max())] + [int(np.max(ds.targets)) for ds in cells.values()])
    device = torch.device(args.device)
    state_dict, run, model_name = opened
    model = build_model(args, state_dict, run, model_name, max_label)
    if described['set'] == PUBLISHED_SET_NAME:
        check_model_labels(run, model.num_classes, args.checkpoint)
    model = model.to(device).eval()
    data_config = resolve_data_config({key: run.get(key) for key in ('input_size', 'img_size', 'crop_pct', 'mean',
                                                                     'std', 'interpolation')}, model=model)

    def logits_of(dataset) -> tuple[torch.Tensor, torch.Tensor]:
        loader = create_eval_loader(dataset, data_config, batch_size=args.batch_size, num_workers=args.workers,
                                    device=device)
        return predict(model, loader, device=device)

    clean_out, shifted = shift_logits(logits_of, clean, cells, args.num_samples)
    if args.save_logits:
        save_set_logits(Path(args.save_logits), clean_out, shifted, class_names, Path(args.checkpoint).name)
    report = {**described, 'model': model_name, 'checkpoint': Path(args.checkpoint).name,
              **shift_evaluation(clean_out, shifted, args.num_bins)}
    text = json.dumps(report, indent=2, allow_nan=False) + '\n'
    if args.output_json:
        atomic_write_text(args.output_json, text)
    else:
        print(text, end='')
    if args.plot:
        from cfl_timm.plotting import plot_shift
        plot_shift(report, args.plot, title=f'{described["set"]}: {model_name}')
    return report


def cli(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    return run_cli(get_args_parser(), main, argv)


if __name__ == '__main__':
    cli()
