"""Time ResNetV1Custom against its peers, like for like, next to the machine's conv limit.

    python benchmarks/benchmark.py [--depth 50] [--batch 2] [--size 512] [--modes eval,train]
        [--with-cp] [--channels-last] [--amp-dtype bfloat16] [--compute-dtype bf16]
        [--device cpu] [--repeats 7] [--warmup 2] [--frozen-stages 1]
        [--models mmdet,ours-ref,ours-fast,torchvision,mmdet-compiled,ours-compiled]
        [--malloc-tuned] [--profile] [--json out.json] [--plot out.png]
    python benchmarks/benchmark.py --overhead [--depth 50] [--batch 2] [--size 64] [--repeats 20]
        [--threads 1] [--models mmdet,ours-fast,ours-ref,torchvision,mmdet-cp,ours-fast-cp]
        [--json out.json]

Run from a checkout; ``rb-benchmark`` (same arguments) runs this file when the package is
installed from the checkout (``pip install -e .``, as tools/setup.sh does).

Identical weights, the same memory format for every model (``--channels-last``),
interleaved repeats after warm-up, medians compared within one run. Reports time per
batch (median, sd), the first call's time (a compiled model's compile time), bytes saved
for backward, peak CUDA memory on GPU, page faults per step, and achieved GFLOP/s as a
fraction of this machine's conv limit, measured in the same run (the best of a few large
oneDNN channels_last convs, fp32 and bf16). The default models include two compiled
ones (minutes of compile time); ``--models mmdet,ours-ref,ours-fast,torchvision`` skips
them. ``--models`` also takes ``ours-bf16`` (the bf16 inference tier), ``-cp``,
``-nchw`` and ``-nofuse`` variants (see :mod:`bench_models`).
``--profile`` adds time per stage and its fraction of the limit. On CPU, glibc maps
every buffer above 32 MB afresh and each 4 KiB page then faults once: ``--malloc-tuned``
takes that out; run it beside a default run and quote both. Every argument is checked,
in one line, before any model is built.

``--overhead``: a small input (default 2x3x64x64) on one thread (``--threads``), where a
step costs mostly per-op overhead. Per model and mode: the aten ops dispatched per step
(counted with a ``TorchDispatchMode`` on one untimed step, forward + backward) and the
median wall time per step (``--repeats``, default 20, interleaved), each as a ratio to
mmdet's. On a CPU it is the proxy for the launch-bound GPU case: quote it beside the
usual table. ``--json`` writes its report; compiled models, ``--profile`` and ``--plot``
do not apply.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from bench_models import DEFAULT_MODELS, OVERHEAD_MODELS, check_overhead_models, parse_model
from bench_report import overhead_table, plot, save_json, table
from bench_timing import run as run_benchmark
from bench_timing import run_overhead, tune_malloc
from resnet_backbone.errors import ToolError
from resnet_backbone.spec import ARCH_LAYOUT, allowed
from resnet_backbone.tools import prog
from resnet_backbone.tools.runner import ToolParser, run_tool

MODES = ('eval', 'train')
#: the smallest input that leaves C5 (stride 32) at least one pixel
MIN_SIZE = 32
#: (--size, --repeats) defaults: the usual table, and --overhead
DEFAULTS = {'table': (512, 7), 'overhead': (64, 20)}


def default_models(overhead: bool = False) -> str:
    return ','.join(OVERHEAD_MODELS if overhead else DEFAULT_MODELS)


def parse_args(argv=None) -> argparse.Namespace:
    p = ToolParser(description=__doc__.splitlines()[0])
    p.add_argument('--depth', type=int, default=50, choices=sorted(ARCH_LAYOUT),
                   help='mmdet and torchvision have 18-152; at 200 they are skipped (a note '
                        'says so) and ours run alone')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--size', type=int, default=None,
                   help=f'input height (and width, unless --width), >= {MIN_SIZE} (default '
                        f"{DEFAULTS['table'][0]}; {DEFAULTS['overhead'][0]} with --overhead)")
    p.add_argument('--width', type=int, help=f'input width (default: --size), >= {MIN_SIZE}; '
                   'e.g. --size 800 --width 1344, a COCO-sized detection input')
    p.add_argument('--modes', default='eval,train', help='eval, train or both')
    p.add_argument('--with-cp', action='store_true', help='gradient checkpointing on')
    p.add_argument('--channels-last', action='store_true', help='every model and input in '
                   'channels_last (a -nchw model name keeps that model in NCHW)')
    p.add_argument('--amp-dtype', choices=('bfloat16', 'float16'))
    p.add_argument('--compute-dtype', choices=('fp32', 'bf16'), default='fp32',
                   help='bf16: every model in bfloat16 (eval only); ours-fast becomes the '
                        'bf16 inference tier (BN folded in fp32, then cast)')
    p.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    p.add_argument('--repeats', type=int, default=None,
                   help=f"interleaved timed steps per model (default {DEFAULTS['table'][1]}; "
                        f"{DEFAULTS['overhead'][1]} with --overhead)")
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--frozen-stages', type=int, default=1, help='-1 (none) .. 4')
    p.add_argument('--models', default=None,
                   help=f'comma-separated (default {default_models()}); ours-bf16, and -cp, '
                        '-nchw, -nofuse, -compiled variants, e.g. ours-fast-cp, ours-snap-nofuse')
    p.add_argument('--malloc-tuned', action='store_true',
                   help="keep freed memory in glibc's heap (no page faults per large buffer); "
                        'applies to every model alike')
    p.add_argument('--profile', action='store_true',
                   help='also time each stage of the eager models, with its fraction of '
                        'the conv limit')
    p.add_argument('--overhead', action='store_true',
                   help='the overhead mode: aten ops and wall time per step on a small input '
                        'and one thread (module docstring)')
    p.add_argument('--threads', type=int, default=None,
                   help="torch threads for the run, restored after (default: 1 with "
                        "--overhead, torch's own otherwise)")
    p.add_argument('--json', help='write the report as JSON here')
    p.add_argument('--plot', help='write a PNG bar chart here')
    a = p.parse_args(argv)
    a.modes = tuple(m.strip() for m in a.modes.split(','))
    a.models = tuple(m.strip() for m in (a.models or default_models(a.overhead)).split(','))
    size, repeats = DEFAULTS['overhead' if a.overhead else 'table']
    a.size = size if a.size is None else a.size
    a.repeats = repeats if a.repeats is None else a.repeats
    if a.threads is None and a.overhead:
        a.threads = 1
    bad = [m for m in a.modes if m not in MODES]
    if bad:
        p.error(f'--modes {bad} not supported; allowed values: {allowed(MODES, quote=False)}')
    return a


def check_args(a: argparse.Namespace) -> None:
    """Every check that needs no model: each failure is one line (a :class:`ToolError`),
    raised before anything is built or measured."""
    for name, value, low in (('--batch', a.batch, 1), ('--size', a.size, MIN_SIZE),
                             ('--width', a.size if a.width is None else a.width, MIN_SIZE),
                             ('--repeats', a.repeats, 1), ('--warmup', a.warmup, 0),
                             ('--threads', 1 if a.threads is None else a.threads, 1)):
        if value < low:
            why = ' (C5 is the input / 32)' if name in ('--size', '--width') else ''
            raise ToolError(f'{name} must be >= {low}{why}; got {value}')
    num_stages = len(ARCH_LAYOUT[a.depth][1])
    if not -1 <= a.frozen_stages <= num_stages:
        raise ToolError(f'--frozen-stages {a.frozen_stages}: ResNet-{a.depth} has '
                        f'{num_stages} stages; allowed values: -1 (none) .. {num_stages}')
    check_device(a.device)
    for name in a.models:
        try:
            parse_model(name)
        except ValueError as e:
            raise ToolError(f'--models: {e}') from None
    if a.overhead:
        for flag in ('profile', 'plot'):
            if getattr(a, flag):
                raise ToolError(f'--{flag} does not apply to --overhead (it has its own table)')
        try:
            check_overhead_models(a.models)
        except ValueError as e:
            raise ToolError(f'--models: {e}') from None
    if a.compute_dtype == 'bf16' and 'train' in a.modes:
        raise ToolError('--compute-dtype bf16 is an inference tier: pass --modes eval '
                        '(for training in bf16 use --amp-dtype bfloat16)')
    if a.compute_dtype == 'bf16' and a.amp_dtype:
        raise ToolError('--compute-dtype bf16 and --amp-dtype: pick one')
    for flag in ('json', 'plot'):
        if getattr(a, flag):
            check_writable(f'--{flag}', getattr(a, flag))
    if a.malloc_tuned:
        try:
            tune_malloc()  # here, so that a C library without mallopt is a one-line error
        except RuntimeError as e:
            raise ToolError(str(e)) from None


def check_device(device: str) -> None:
    """One line for a device name torch does not know, or a CUDA device not here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ToolError(f'--device {device!r} is not a device; allowed values: cpu, cuda, '
                        'cuda:N') from None
    if dev.type not in ('cpu', 'cuda'):
        raise ToolError(f'--device {device!r}: the benchmark runs on cpu or cuda; allowed '
                        'values: cpu, cuda, cuda:N')
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ToolError(f'--device {device}: no CUDA GPU is available here (torch '
                            f'{torch.__version__}, CUDA build: {torch.version.cuda}); use '
                            '--device cpu')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ToolError(f'--device {device}: only {torch.cuda.device_count()} CUDA '
                            'device(s) here')


def check_writable(flag: str, path: str) -> None:
    """Make the file's folder and check a file can be created in it, before the run."""
    target = Path(path)
    if target.is_dir():
        raise ToolError(f'{flag} {path}: is a folder; give a file name')
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix='.rb-benchmark-'):
            pass
        if target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(f'{path} is read-only')
    except OSError as e:
        raise ToolError(f'{flag} {path}: cannot write there ({e.strerror or e}); '
                        'nothing was run') from None


def main(argv=None) -> dict:
    a = parse_args(argv)
    check_args(a)
    def log(s: str) -> None:
        print(f'[bench] {s}', file=sys.stderr)
    common = dict(depth=a.depth, batch=a.batch, size=a.size, width=a.width, modes=a.modes,
                  with_cp=a.with_cp, channels_last=a.channels_last, amp_dtype=a.amp_dtype,
                  device=a.device, repeats=a.repeats, warmup=a.warmup,
                  frozen_stages=a.frozen_stages, include=a.models,
                  compute_dtype=a.compute_dtype, malloc_tuned=a.malloc_tuned, log=log)
    if a.overhead:
        report = run_overhead(threads=a.threads, **common)
        print(overhead_table(report))
    else:
        before = torch.get_num_threads()
        if a.threads is not None:
            torch.set_num_threads(a.threads)
        try:
            report = run_benchmark(profile=a.profile, **common)
        finally:
            torch.set_num_threads(before)
        print(table(report))
    if a.json:
        print(f'json: {save_json(report, a.json)}')
    if a.plot:
        print(f'plot: {plot(report, a.plot)}')
    return report


def run() -> None:
    """``python benchmarks/benchmark.py`` / ``rb-benchmark``: :func:`main`, one-line errors."""
    run_tool(prog('benchmark.py'), main)


if __name__ == '__main__':
    run()
