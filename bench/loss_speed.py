"""Forward + backward time and peak memory of the focal-family and calibration losses against label-smoothed
cross-entropy.

Every loss is measured in the same run as the baseline, ``F.cross_entropy(label_smoothing=0.1)``, at the
same (N, K) on the same device, in interleaved rounds (each timed call right after an untimed call of the same
loss); the table reports the median time per call and the
ratio to the baseline's median. ``autograd-ref`` is the loss written as the formula with plain autograd
(the structure of the published implementation), for comparison. The calibration losses
(``cfl_timm.loss.calibration_losses``) run with their official defaults; half of the rows are predicted correctly
(target = arg-max), so the MMCE penalties, Dual focal's mask and AdaFocal's bins see both cases.

``--compile`` measures every loss wrapped in ``torch.compile`` (``--compile-backend``, default inductor)
against the compiled baseline, configured as train.py builds them (no finiteness check); compilation happens
in the warm-up calls, outside the timed rounds.

``--analytic-too`` (with ``--compile``) adds, for each calibration loss with a compiled-only path (its formula, or
its row form: rows from row reductions and the gradient rebuilt in the backward), a row ``NAME (analytic)`` that
compiles the eager analytic path instead, so the two are compared in the same run.

``--autocast bf16|fp16`` runs every loss's forward (the baseline's too) inside ``torch.autocast(device type,
dtype)`` on float32 logits, the mixed-precision setting of train.py ``--amp``; the backward runs outside, as in
training. The default ``none`` measures plain float32.

Usage: python bench/loss_speed.py [--repeats 30] [--device cpu|cuda] [--sizes 256x10 256x1000 128x21843]
       [--losses NAME ...] [--clock wall|cpu] [--compile [--compile-backend inductor] [--compile-mode MODE]]
       [--analytic-too] [--autocast none|bf16|fp16]

The last column counts the ATen operator calls of one forward + backward (:func:`dispatched_ops`): where the host's
dispatch of each operation costs more than the operation itself, time follows it.

``--clock cpu`` times with the process CPU time instead of the wall clock (CPU only): on a machine shared with
other jobs it does not count the time the process waits for a core, so ratios stay meaningful under load.
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from cfl_timm import AsymmetricFocalLoss, CyclicalFocalLoss, FocalLoss
from cfl_timm.loss.calibration_losses import CALIBRATION_LOSS_TYPES, create_calibration_loss

DEFAULT_SIZES = ('256x10', '256x1000', '128x21843')
AUTOCAST_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def autograd_reference(logits: torch.Tensor, target: torch.Tensor, eta: float = 0.5, gamma_hc: float = 3.0,
                       gamma_pos: float = 2.0, gamma_neg: float = 2.0, eps: float = 0.1) -> torch.Tensor:
    """The cyclical focal loss written as its formula with autograd, one-hot masks over (N, K)."""
    num_classes = logits.shape[1]
    logp = torch.log_softmax(logits.float(), dim=1)
    p = logp.exp()
    one_hot = torch.zeros_like(logp).scatter_(1, target.unsqueeze(1), 1.0)
    p_pos, p_neg = p * one_hot, (1 - p) * (1 - one_hot)
    focal = torch.pow(1 - p_pos - p_neg, gamma_pos * one_hot + gamma_neg * (1 - one_hot))
    hard = torch.pow(1 + p_pos + (1 - p_neg) * (1 - one_hot), gamma_hc * one_hot)
    hard = hard * one_hot + (1 - one_hot)
    weight = (1 - eta) * focal + eta * hard
    y = one_hot * (1 - eps) + eps / num_classes
    return -(y * weight * logp).sum(1).mean()


def adafocal_with_state():
    """AdaFocal after one update on a synthetic validation set: per-bin gammas of both signs (focal and inverse)."""
    loss = create_calibration_loss('adafocal')
    confidences = torch.linspace(0.05, 1.0, 5000)
    loss.update_from_validation(confidences, torch.arange(5000) % 3 == 0)
    return loss


def analytic_variant(loss):
    """``loss`` (a calibration loss) with its compiled-only paths switched off: compiled, it traces the analytic
    path."""
    loss._formula_rows = None
    loss._row_form = None
    return loss


def make_losses(num_epochs: int = 10, names=None, analytic_too: bool = False):
    cyclical = CyclicalFocalLoss(gamma_hc=3.0, gamma_pos=2.0, gamma_neg=2.0, cyclical_factor=4.0, epochs=num_epochs)
    cyclical.set_epoch(1.0)  # eta strictly between 0 and 1: every term of the loss is active
    calibration = {name: adafocal_with_state() if name == 'adafocal' else create_calibration_loss(name)
                   for name in CALIBRATION_LOSS_TYPES}
    losses = {
        'ce-ls0.1 (baseline)': lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1),
        'sym (gamma 2)': FocalLoss(gamma=2.0),
        'asym (2, 2, eps 0.1)': AsymmetricFocalLoss(gamma_pos=2.0, gamma_neg=2.0),
        'asym-cyclical (3, 2, 2, f 4)': cyclical,
        'autograd-ref (published structure)': lambda z, t: autograd_reference(z, t, eta=cyclical.eta),
        **calibration,
    }
    if names:  # a table name, or its first word ('asym-cyclical')
        known = {short: name for name in losses for short in (name, name.split(' (')[0])}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f'--losses: unknown {", ".join(unknown)}; choose from '
                             f'{", ".join(name.split(" (")[0] for name in list(losses)[1:])}')
        chosen = {known[name] for name in names}
        losses = {name: fn for i, (name, fn) in enumerate(losses.items()) if i == 0 or name in chosen}
    if analytic_too:
        for name in [name for name in losses if name in calibration]:
            if losses[name]._formula_rows is not None or losses[name]._row_form is not None:
                variant = adafocal_with_state() if name == 'adafocal' else create_calibration_loss(name)
                losses[f'{name} (analytic)'] = analytic_variant(variant)
    return losses


def with_autocast(fn, device: torch.device, dtype: torch.dtype):
    """``fn`` with its forward inside ``torch.autocast(device.type, dtype)``; the returned loss is backpropagated
    outside the context, as in a training step."""
    def forward(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return fn(logits, target)
    return forward


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_once(fn, logits: torch.Tensor, target: torch.Tensor, clock=time.perf_counter) -> float:
    logits.grad = None
    _sync(logits.device)
    start = clock()
    fn(logits, target).backward()
    _sync(logits.device)
    return clock() - start


def dispatched_ops(fn, logits: torch.Tensor, target: torch.Tensor) -> int:
    """ATen operator calls one forward + backward dispatches from Python and autograd (an op called inside another
    op is not counted; views included). Where each launch costs the host more than the kernel costs the device (a
    GPU at these sizes, a CPU at small K) the time follows this count."""
    logits.grad = None
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(logits, target).backward()
    logits.grad = None
    return sum(1 for e in prof.events() if e.name.startswith('aten::')
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith('aten::')))


def peak_memory(fn, logits: torch.Tensor, target: torch.Tensor) -> int:
    """Peak bytes allocated during one forward + backward (CUDA allocator stats, or the CPU profiler)."""
    logits.grad = None
    if logits.device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(logits.device)
        base = torch.cuda.memory_allocated(logits.device)
        fn(logits, target).backward()
        return torch.cuda.max_memory_allocated(logits.device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(logits, target).backward()
        # The profiler's running total only sees what happens inside the window: free the gradient here, or
        # every later measurement would start one (N, K) gradient higher.
        logits.grad = None
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, 'trace.json')
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)['traceEvents']
    totals = [e['args']['Total Allocated'] for e in events if e.get('name') == '[memory]']
    return max(totals, default=0)


def bench_size(num_rows: int, num_classes: int, device: torch.device, repeats: int, names=None,
               clock=time.perf_counter, compile_options: Optional[dict] = None,
               autocast_dtype: Optional[torch.dtype] = None, analytic_too: bool = False) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(num_rows, num_classes, generator=generator) * 3
    target = torch.randint(0, num_classes, (num_rows,), generator=generator)
    target[::2] = logits[::2].argmax(1)  # half of the rows correct
    logits, target = logits.to(device).requires_grad_(), target.to(device)
    losses = make_losses(names=names, analytic_too=analytic_too)
    for fn in losses.values():  # as train.py builds them: no finiteness check (a host sync) in the loop
        if hasattr(fn, 'check_finite'):
            fn.check_finite = False
    if compile_options is not None:
        torch._dynamo.reset()
        # Loss hyperparameters are constants: specialize Python floats (as train.py's --torchcompile does); torch
        # 2.14's symbolic floats fail a guard on the focal losses at K = 21843 (eps / K).
        torch._dynamo.config.specialize_float = True
        # The calibration losses share one forward code object and dynamo keeps one compiled entry per loss there:
        # above its default limit of 8 the later losses silently ran eager. Room for every loss, and an error, not
        # an eager fallback, if that is ever not enough.
        torch._dynamo.config.recompile_limit = max(8, 2 * len(losses))
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        losses = {name: torch.compile(fn, **compile_options) for name, fn in losses.items()}
    if autocast_dtype is not None:
        losses = {name: with_autocast(fn, device, autocast_dtype) for name, fn in losses.items()}
    for fn in losses.values():  # warm-up
        for _ in range(3):
            time_once(fn, logits, target)
    times = {name: [] for name in losses}
    for _ in range(repeats):  # interleaved rounds: drift in machine load hits every loss alike
        for name, fn in losses.items():
            # One untimed call first: the measured call then starts from this loss's own allocator and cache
            # state, not from the previous loss's (after the slow autograd reference the next loss otherwise paid
            # for re-faulting the memory it had released).
            time_once(fn, logits, target)
            times[name].append(time_once(fn, logits, target, clock))
    baseline = statistics.median(next(iter(times.values())))
    baseline_mem = None
    rows = []
    for name, fn in losses.items():
        median = statistics.median(times[name])
        memory = peak_memory(fn, logits, target)
        baseline_mem = baseline_mem or memory
        rows.append(dict(size=f'{num_rows}x{num_classes}', loss=name, median_ms=median * 1e3,
                         ratio=median / baseline, peak_mib=memory / 2**20, mem_ratio=memory / baseline_mem,
                         ops=dispatched_ops(fn, logits, target)))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=30, help='timed rounds per size (median reported)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--sizes', nargs='+', default=list(DEFAULT_SIZES), help='NxK sizes')
    parser.add_argument('--losses', nargs='+', default=None,
                        help="measure only these losses besides the baseline (a table name, or its first word: "
                             "'asym-cyclical')")
    parser.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                        help='wall clock, or process CPU time (CPU device only; robust to a shared machine)')
    parser.add_argument('--compile', action='store_true', help='torch.compile every loss and the baseline')
    parser.add_argument('--compile-backend', default='inductor', help='torch.compile backend (default: inductor)')
    parser.add_argument('--compile-mode', default=None, help='torch.compile mode (default: None)')
    parser.add_argument('--analytic-too', action='store_true',
                        help='with --compile: also time the analytic path of the losses that compile another one')
    parser.add_argument('--autocast', choices=tuple(AUTOCAST_DTYPES), default='none',
                        help='run each forward inside torch.autocast with this dtype (default: none, float32)')
    args = parser.parse_args(argv)
    autocast_dtype = AUTOCAST_DTYPES[args.autocast]
    compile_options = {'backend': args.compile_backend, 'mode': args.compile_mode} if args.compile else None
    if args.analytic_too and not args.compile:
        parser.error('--analytic-too compares compiled paths and needs --compile')
    if args.losses:
        try:
            make_losses(names=args.losses)
        except ValueError as error:
            parser.error(str(error))
    device = torch.device(args.device)
    if args.clock == 'cpu' and device.type != 'cpu':
        parser.error('--clock cpu measures CPU time and needs --device cpu')
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
        f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    compiled = f', every loss torch.compile({args.compile_backend}, mode={args.compile_mode})' if args.compile else ''
    precision = 'float32' if autocast_dtype is None else f'float32 logits, autocast {autocast_dtype}'
    print(f'# loss forward+backward, {precision}, {device.type} ({where}), torch {torch.__version__}, '
          f'median of {args.repeats} interleaved rounds, {args.clock} clock, load average '
          f'{" ".join(f"{v:.1f}" for v in os.getloadavg())}{compiled}')
    print('| N x K | loss | median ms | time vs CE | peak MiB | memory vs CE | ATen ops |')
    print('|---|---|---:|---:|---:|---:|---:|')
    for size in args.sizes:
        num_rows, num_classes = (int(v) for v in size.lower().split('x'))
        for row in bench_size(num_rows, num_classes, device, args.repeats, args.losses, clock, compile_options,
                              autocast_dtype, args.analytic_too):
            print(f"| {row['size']} | {row['loss']} | {row['median_ms']:.3f} | {row['ratio']:.2f}x | "
                  f"{row['peak_mib']:.2f} | {row['mem_ratio']:.2f}x | {row['ops']} |", flush=True)


if __name__ == '__main__':
    main()
