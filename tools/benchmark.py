"""Time ResNetV1Custom against mmdet's ResNet and torchvision's resnet, side by side.

    python tools/benchmark.py [--depth 50] [--batch 2] [--size 512] [--modes eval,train]
        [--with-cp] [--channels-last] [--amp-dtype bfloat16] [--device cpu]
        [--repeats 7] [--warmup 2] [--models mmdet,ours-fast,ours-ref,torchvision]
        [--malloc-tuned] [--json out.json] [--plot out.png]

Identical weights, interleaved repeats after warm-up, medians compared within one run.
Reports time per batch (mean ± sd), bytes saved for backward, peak CUDA memory on GPU,
achieved GFLOP/s and its fraction of this machine's fp32 matmul throughput, and the
page faults per step (on CPU, glibc maps every buffer above 32 MB afresh; each 4 KiB
page then faults once, which costs real time - ``--malloc-tuned`` takes that out).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from resnet_backbone.apis.benchmark import plot, run, save_json, table, tune_malloc  # noqa: E402

MODELS = ('mmdet', 'ours-fast', 'ours-ref', 'torchvision')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--depth', type=int, default=50, choices=(18, 34, 50, 101, 152))
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
    bad = [m for m in a.modes if m not in ('eval', 'train')]
    if bad:
        p.error(f'--modes {bad} not supported; allowed values: eval, train')
    allowed = MODELS + tuple(f'{m}-cp' for m in MODELS if m != 'torchvision')
    bad = [m for m in a.models if m not in allowed]
    if bad:
        p.error(f'--models {bad} not supported; allowed values: {", ".join(allowed)}')
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
    report = run(depth=a.depth, batch=a.batch, size=a.size, modes=a.modes, with_cp=a.with_cp,
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


if __name__ == '__main__':
    main()
