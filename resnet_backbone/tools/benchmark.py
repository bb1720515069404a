"""Time ResNetV1Custom against mmdet's ResNet and torchvision's resnet, side by side.

    python tools/benchmark.py [--depth 50] [--batch 2] [--size 512] [--modes eval,train]
        [--with-cp] [--channels-last] [--amp-dtype bfloat16] [--device cpu]
        [--repeats 7] [--warmup 2] [--models mmdet,ours-fast,ours-ref,torchvision]
        [--malloc-tuned] [--json out.json] [--plot out.png]

Installed as ``rb-benchmark`` (same arguments); ``python tools/benchmark.py`` runs the same code.

Identical weights, interleaved repeats after warm-up, medians compared within one run.
Reports time per batch (mean ± sd), bytes saved for backward, peak CUDA memory on GPU,
achieved GFLOP/s and its fraction of this machine's fp32 matmul throughput, and the
page faults per step (on CPU, glibc maps every buffer above 32 MB afresh; each 4 KiB
page then faults once, which costs real time - ``--malloc-tuned`` takes that out).
"""
from __future__ import annotations

import argparse
import sys

from ..apis.benchmark import plot, save_json, table, tune_malloc
from ..apis.benchmark import run as run_benchmark
from ..cli import run_tool
from ..spec import ARCH_LAYOUT, allowed
from . import prog

MODELS = ('mmdet', 'ours-fast', 'ours-ref', 'torchvision')
MODES = ('eval', 'train')


def mmdet_depths() -> list[int]:
    """The depths of :data:`~resnet_backbone.spec.ARCH_LAYOUT` that mmdet's ResNet (the
    weights every model shares) also builds."""
    # mmdet.models pulls in mmcv.ops: only for --depth checks
    from mmdet.models.backbones.resnet import ResNet
    return [d for d in sorted(ARCH_LAYOUT) if d in ResNet.arch_settings]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--depth', type=int, default=50, choices=sorted(ARCH_LAYOUT))
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--modes', default='eval,train', help='eval, train or both')
    p.add_argument('--with-cp', action='store_true', help='gradient checkpointing on')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--amp-dtype', choices=('bfloat16', 'float16'))
    p.add_argument('--device', default='cpu')
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--frozen-stages', type=int, default=1)
    p.add_argument('--models', default=','.join(MODELS),
                   help='comma-separated; add -cp for a checkpointed copy, e.g. ours-fast-cp')
    p.add_argument('--malloc-tuned', action='store_true',
                   help="keep freed memory in glibc's heap (no page faults per large buffer); "
                        'applies to every model alike')
    p.add_argument('--json', help='write the report as JSON here')
    p.add_argument('--plot', help='write a PNG bar chart here')
    a = p.parse_args(argv)
    a.modes = tuple(m.strip() for m in a.modes.split(','))
    a.models = tuple(m.strip() for m in a.models.split(','))
    bad = [m for m in a.modes if m not in MODES]
    if bad:
        p.error(f'--modes {bad} not supported; allowed values: {allowed(MODES, quote=False)}')
    choices = MODELS + tuple(f'{m}-cp' for m in MODELS if m != 'torchvision')
    bad = [m for m in a.models if m not in choices]
    if bad:
        p.error(f'--models {bad} not supported; allowed values: {allowed(choices, quote=False)}')
    if a.depth not in mmdet_depths():
        p.error(f"--depth {a.depth}: every model starts from mmdet's ResNet weights, and "
                f"mmdet's ResNet has no depth {a.depth}; allowed values: "
                f'{allowed(mmdet_depths(), quote=False)}')
    if a.repeats < 1 or a.warmup < 0:
        p.error('--repeats must be >= 1 and --warmup >= 0')
    if a.malloc_tuned:
        try:
            tune_malloc()  # here, so that a C library without mallopt is a one-line error
        except RuntimeError as e:
            p.error(str(e))
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    report = run_benchmark(
        depth=a.depth, batch=a.batch, size=a.size, modes=a.modes, with_cp=a.with_cp,
        channels_last=a.channels_last, amp_dtype=a.amp_dtype, device=a.device,
        repeats=a.repeats, warmup=a.warmup, frozen_stages=a.frozen_stages,
        include=a.models, malloc_tuned=a.malloc_tuned,
        log=lambda s: print(f'[bench] {s}', file=sys.stderr))
    print(table(report))
    if a.json:
        print(f'json: {save_json(report, a.json)}')
    if a.plot:
        print(f'plot: {plot(report, a.plot)}')
    return report


def run() -> None:
    """``rb-benchmark`` / ``python tools/benchmark.py``: :func:`main`, one-line errors."""
    run_tool(prog('benchmark.py'), main)


if __name__ == '__main__':
    run()
