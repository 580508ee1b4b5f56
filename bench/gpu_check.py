"""The Python steps of ``bench/gpu_check.sh``, the one-script check of this project on a CUDA GPU.

Run from the repository root as ``python -m bench.gpu_check`` (it imports that checkout's train.py). Subcommands (each
writes its result as JSON; the shell script times, logs and collects them):

- ``cuda OUT_DIR``: whether CUDA is usable; without it writes ``OUT_DIR/summary.json`` (``"cuda": false``) and
  exits with code 3, before any other step runs.
- ``train RESULT_JSON -- TRAIN_ARGS``: one run of this project's train.py in this process; records the last
  epoch's top-1 and the images/s of the last training epoch (the first one includes compilation and warm-up).
- ``overflow RESULT_JSON OUT_DIR``: a float16 run on CUDA whose second training batch gives infinite logits;
  passes when train.py's GradScaler skipped that step (``skipped_steps`` > 0 in summary.csv).
- ``summarize OUT_DIR``: ``OUT_DIR/steps.tsv`` (name, exit code, seconds, written by the shell) and each
  step's ``OUT_DIR/<name>.json`` into ``OUT_DIR/summary.json`` and ``OUT_DIR/summary.md``.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import torch

import train
from cfl_timm.files import atomic_write_text

NO_CUDA_EXIT = 3


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + '\n')


def check_cuda(out_dir: Path) -> int:
    if not torch.cuda.is_available():
        write_json(out_dir / 'summary.json', {'cuda': False, 'torch': torch.__version__, 'steps': {},
                                              'reason': 'torch.cuda.is_available() is False'})
        return NO_CUDA_EXIT
    props = torch.cuda.get_device_properties(0)
    info = {'cuda': True, 'device': props.name, 'memory_gib': round(props.total_memory / 2**30, 1),
            'torch': torch.__version__, 'cuda_version': torch.version.cuda,
            'bf16_supported': torch.cuda.is_bf16_supported()}
    write_json(out_dir / 'cuda.json', info)
    print(json.dumps(info))
    return 0


def run_train(argv: list[str]) -> dict:
    """train.py's ``main`` on ``argv``; top-1 of the last epoch and images/s of the last training epoch."""
    parser = train.get_args_parser()
    args = train.parse_args(argv)
    train.check_args(args, parser)
    result = train.main(args)
    speeds = result['train_images_per_second']
    return {'top1': result['eval_metrics'].get('top1'), 'images_per_second': round(speeds[-1], 1),
            'images_per_second_by_epoch': [round(s, 1) for s in speeds]}


def overflowing_build_model(build_model, overflow_call: int = 2):
    """``build_model`` (train.py's) whose model returns infinite logits on its ``overflow_call``-th training forward:
    a float16 overflow, for the grad scaler to skip."""
    calls = {'train': 0}

    def build(*args, **kwargs):
        model, config = build_model(*args, **kwargs)

        def hook(module, inputs, output):
            if module.training:
                calls['train'] += 1
                if calls['train'] == overflow_call:
                    return output.index_fill(1, torch.tensor([0], device=output.device), float('inf'))
            return output
        model.register_forward_hook(hook)
        return model, config
    return build


def run_overflow(out_dir: Path) -> dict:
    """float16 autocast with the GradScaler on CUDA; the second training batch's logits are made infinite."""
    train.build_model = overflowing_build_model(train.build_model)  # this process runs nothing else
    run_train(['--dataset', 'sklearn/digits', '--model', 'test_resnet', '--img-size', '32', '-j', '0',
               '--warmup-epochs', '0', '--lr', '0.05', '--log-interval', '1000', '--epochs', '1', '-b', '32',
               '--train_size', '128', '--device', 'cuda', '--amp', '--amp-dtype', 'float16',
               '--output', str(out_dir), '--experiment', 'overflow'])
    with open(out_dir / 'overflow' / 'summary.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    skipped = sum(int(r['skipped_steps']) for r in rows)
    if skipped <= 0:
        raise SystemExit(f'overflow: the GradScaler skipped {skipped} steps; expected > 0')
    return {'skipped_steps': skipped, 'overflowing_batches': 1}


def summarize(out_dir: Path) -> dict:
    steps = {}
    with open(out_dir / 'steps.tsv') as f:
        for line in f:
            name, code, seconds, note = (line.rstrip('\n').split('\t') + [''])[:4]
            status = 'skipped' if code == 'skip' else 'pass' if code == '0' else 'timeout' if code == '124' \
                else 'fail'
            step = {'status': status, 'exit_code': None if code == 'skip' else int(code),
                    'seconds': float(seconds), 'log': f'{name}.log'}
            if note:
                step['note'] = note
            result = out_dir / f'{name}.json'
            if result.exists():
                step['result'] = json.loads(result.read_text())
            steps[name] = step
    if steps.get('timm_train', {}).get('status') == 'pass' and steps.get('cfl_train', {}).get('status') == 'pass':
        # Same flags, same data: the ratio of end-to-end wall-clock times (start-up and evaluation included).
        ratio = steps['cfl_train']['seconds'] / steps['timm_train']['seconds']
        steps['timm_compare'] = {'status': 'pass', 'seconds': 0.0, 'result': {'cfl_over_timm_time': round(ratio, 3)}}
    cuda = json.loads((out_dir / 'cuda.json').read_text())
    summary = {**cuda, 'passed': all(s['status'] in ('pass', 'skipped') for s in steps.values()),
               'failed': [n for n, s in steps.items() if s['status'] in ('fail', 'timeout')], 'steps': steps}
    write_json(out_dir / 'summary.json', summary)
    lines = [f"# GPU check: {cuda['device']}, torch {cuda['torch']} (CUDA {cuda['cuda_version']})", '',
             '| step | status | seconds | result |', '|---|---|---:|---|']
    for name, s in steps.items():
        shown = s.get('note') or json.dumps(s.get('result', {}))
        lines.append(f"| {name} | {s['status']} | {s['seconds']:.0f} | {shown} |")
    lines += ['', f"Failed: {', '.join(summary['failed']) or 'none'}.", '']
    atomic_write_text(out_dir / 'summary.md', '\n'.join(lines))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('cuda').add_argument('out_dir', type=Path)
    train_cmd = commands.add_parser('train')
    train_cmd.add_argument('result', type=Path)
    train_cmd.add_argument('train_args', nargs=argparse.REMAINDER)
    overflow = commands.add_parser('overflow')
    overflow.add_argument('result', type=Path)
    overflow.add_argument('out_dir', type=Path)
    commands.add_parser('summarize').add_argument('out_dir', type=Path)
    args = parser.parse_args(argv)
    if args.command == 'cuda':
        return check_cuda(args.out_dir)
    if args.command == 'train':
        train_args = args.train_args[1:] if args.train_args[:1] == ['--'] else args.train_args
        write_json(args.result, run_train(train_args))
    elif args.command == 'overflow':
        write_json(args.result, run_overflow(args.out_dir))
    else:
        summary = summarize(args.out_dir)
        print(f"GPU check {'passed' if summary['passed'] else 'FAILED: ' + ', '.join(summary['failed'])}; "
              f"see {args.out_dir / 'summary.md'}")
        return 0 if summary['passed'] else 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
