"""Time a feature dump against the forward alone, on the same images, in one run.

    python benchmarks/benchmark_dump.py [CONFIG] [--images 8] [--levels c2,c3,c4,c5]
        [--big] [--batch-size 1] [--workers 2] [--writers 1] [--device cpu] [--json F]
        [--dtype float32|float16|bfloat16] [--compute-dtype fp32|bf16]

Run from a checkout; ``rb-benchmark-dump`` runs this file when the package is installed
from the checkout (``pip install -e .``, as tools/setup.sh does).

CONFIG defaults to configs/coco/retinanet_rv1custom-r50_fpn_1x_coco.py (its test pipeline
resizes to 1333x800), random weights. The images are photo-like JPEGs of 512-1280 px
generated once (seeded). Rows, each timed over the same images after one warm-up image:

- ``forward only``: the test pipeline and backbone + neck, one image after another,
  nothing kept: the floor a dump can reach;
- ``dump``: the default dump (safetensors, storage ``--dtype``, float32 by default) into a
  fresh folder;
- ``dump --overlay``: the same with overlays (mean mode);
- with ``--big``: one 4000x3000 photo with ``--overlay`` over 9 levels (c2-c5, p3-p7),
  against its own forward, each in a fresh process (decoding included, no workers) whose
  peak RSS (``VmHWM``) is reported, and its RSS once the model is built.

The ratio column is wall time over the forward-only wall time of the same run. With
``--compute-dtype bf16`` every row, the forward-only one included, runs the backbone's
bf16 inference tier (as ``rb-dump --compute-dtype bf16``).
"""
from __future__ import annotations

import argparse
import inspect
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from resnet_backbone.apis import FeatureExtractor
from resnet_backbone.apis.dump import DTYPES, collect_images, dump_features
from resnet_backbone.engine.training import setup_environment
from resnet_backbone.errors import ToolError
from resnet_backbone.models.inference import COMPUTE_DTYPES
from resnet_backbone.tools import prog
from resnet_backbone.tools.runner import ToolParser, run_tool

DEFAULT_CONFIG = 'configs/coco/retinanet_rv1custom-r50_fpn_1x_coco.py'
BIG_LEVELS = 'c2,c3,c4,c5,p3,p4,p5,p6,p7'


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs (smooth colour fields plus noise) of 512-1280 px."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(512, 1281, 2))
        small = rng.random((max(h // 32, 2), max(w // 32, 2), 3)) * 255
        base = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((w, h),
                                                                          Image.BICUBIC))
        noise = rng.normal(0, 12, (h, w, 3))
        paths.append(folder / f'photo{i:02d}.jpg')
        Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(paths[-1],
                                                                           quality=90)
    return paths


def make_big_photo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    small = Image.fromarray((rng.random((94, 125, 3)) * 255).astype(np.uint8))
    path = folder / 'phone_4000x3000.jpg'
    small.resize((4000, 3000), Image.BICUBIC).save(path, quality=90)
    return path


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux: ``VmHWM`` of /proc/self/status, which
    starts afresh at exec; ``ru_maxrss`` would not (it keeps the forking parent's peak)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forward_only(fx, images) -> float:
    t0 = time.perf_counter()
    for image in images:
        if hasattr(fx, 'run_batch'):
            fx.run_batch([fx.load(image)])
        else:  # an older checkout (this file copied there to time the code before)
            fx(image)
    return time.perf_counter() - t0


def _extractor(args, levels: str):
    """The model under test, computing in ``--compute-dtype`` (passed only when it is not
    fp32: an older checkout's ``from_config`` has no such keyword)."""
    extra = {}
    if args.compute_dtype != 'fp32':
        if 'compute_dtype' not in inspect.signature(FeatureExtractor.from_config).parameters:
            raise ToolError(f'--compute-dtype {args.compute_dtype}: this checkout\'s '
                            'FeatureExtractor has no compute dtype; drop the flag')
        extra['compute_dtype'] = args.compute_dtype
    return FeatureExtractor.from_config(args.config, device=args.device, levels=levels,
                                        **extra)


def _dump(fx, images, root, out, **kwargs):
    """dump_features with the keywords this checkout's version takes (an older one has
    no batch_size, workers or writers: those rows then time its one sequential loop)."""
    known = inspect.signature(dump_features).parameters
    return dump_features(fx, images, root, out,
                         **{k: v for k, v in kwargs.items() if k in known})


def parse_args(argv=None) -> argparse.Namespace:
    p = ToolParser(description=__doc__.splitlines()[0])
    p.add_argument('config', nargs='?', default=DEFAULT_CONFIG)
    p.add_argument('--images', type=int, default=8)
    p.add_argument('--levels', default='c2,c3,c4,c5')
    p.add_argument('--big', action='store_true', help='also the 4000x3000 photo case')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--writers', type=int, default=1)
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', default='float32', choices=list(DTYPES),
                   help="the dumps' storage dtype (rb-dump --dtype); not what the model "
                        'computes in')
    p.add_argument('--compute-dtype', default='fp32', choices=list(COMPUTE_DTYPES),
                   help='what the model computes in, for every row (rb-dump '
                        "--compute-dtype: bf16 is the backbone's bf16 inference tier)")
    p.add_argument('--json', help='write the rows here')
    p.add_argument('--repeats', type=int, default=1,
                   help='run the rows this many times, interleaved; the medians are shown')
    p.add_argument('--_child', help=argparse.SUPPRESS)  # internal: one big-photo case
    return p.parse_args(argv)


def _child(args) -> None:
    """One case of the big photo in this fresh process; prints its JSON row."""
    setup_environment()
    case, photo, out = args._child.split('|')
    fx = _extractor(args, BIG_LEVELS)
    images, root = collect_images(photo)
    built = peak_rss_mib()  # the model built and probed, before the photo
    t0 = time.perf_counter()
    if case == 'forward':
        forward_only(fx, images)
    else:
        # workers=0: decoding in this process too, so its peak RSS is the whole dump's
        _dump(fx, images, root, Path(out), overlay=True, progress=False, workers=0,
              writers=args.writers, dtype=args.dtype)
    seconds = time.perf_counter() - t0
    rss = peak_rss_mib()
    print(json.dumps({'seconds': seconds, 'peak_rss_mib': rss, 'rss_before_mib': built}))


def _big(args, tmp: Path) -> list[dict]:
    photo = make_big_photo(tmp / 'big')
    rows = {}
    for case in ('forward', 'dump'):
        cmd = [sys.executable, str(Path(__file__).resolve()), args.config,
               '--device', args.device, '--workers', str(args.workers), '--writers',
               str(args.writers), '--dtype', args.dtype, '--compute-dtype',
               args.compute_dtype, '--_child', f'{case}|{photo}|{tmp / "big_out"}']
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[case] = json.loads(r.stdout.strip().splitlines()[-1])
    base = rows['forward']['seconds']
    return [{'case': '4000x3000 photo: forward only (9 levels)', **rows['forward'],
             'ratio': 1.0},
            {'case': '4000x3000 photo: dump --overlay (9 levels)', **rows['dump'],
             'ratio': rows['dump']['seconds'] / base}]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args._child:
        return _child(args)
    setup_environment()
    fx = _extractor(args, args.levels)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(tmp / 'photos', args.images + 1)
        images, root = collect_images(tmp / 'photos')
        warm, images = images[:1], images[1:]
        forward_only(fx, warm)
        opts = dict(progress=False, batch_size=args.batch_size, workers=args.workers,
                    writers=args.writers, dtype=args.dtype)
        runs: dict[str, list[dict]] = {}
        for rep in range(args.repeats):  # interleaved: a load change hits every row alike
            runs.setdefault('forward only', []).append(
                {'seconds': forward_only(fx, images)})
            for name, extra in (('dump', {}), ('dump --overlay', {'overlay': True})):
                out = tmp / f"{name.replace(' ', '_')}_{rep}"
                t0 = time.perf_counter()
                s = _dump(fx, images, root, out, **opts, **extra)
                seconds = time.perf_counter() - t0  # the whole call: plan, loop, index
                nbytes = sum(p.stat().st_size for p in out.rglob('*') if p.is_file())
                runs.setdefault(name, []).append(
                    {'seconds': seconds, 'mb_per_s': nbytes / 1e6 / seconds,
                     'mb_per_image': nbytes / 1e6 / max(s.dumped, 1)})
        rows = []
        for name, reps in runs.items():
            row = {'case': name}
            for key in reps[0]:
                row[key] = float(np.median([r[key] for r in reps]))
            rows.append(row)
        base = rows[0]['seconds']
        for r in rows:
            r['ratio'] = r['seconds'] / base
            r['s_per_image'] = r['seconds'] / len(images)
        if args.big:
            rows += _big(args, tmp)
    print(f'{len(images)} photos of 512-1280 px, medians of {args.repeats}, '
          f'{Path(args.config).name}, levels '
          f'{args.levels}, batch {args.batch_size}, workers {args.workers}, writers '
          f'{args.writers}, storage {args.dtype}, compute {args.compute_dtype}, {args.device}')
    print(f"{'case':44s} {'wall s':>8s} {'s/image':>8s} {'x forward':>9s} {'MB/s':>7s} "
          f"{'peak RSS MiB':>12s} {'(model only)':>12s}")
    for r in rows:
        per = f"{r['s_per_image']:8.3f}" if 's_per_image' in r else f"{'-':>8s}"
        mbs = f"{r['mb_per_s']:7.0f}" if 'mb_per_s' in r else f"{'-':>7s}"
        rss = f"{r['peak_rss_mib']:12.0f}" if 'peak_rss_mib' in r else f"{'-':>12s}"
        base_rss = (f"{r['rss_before_mib']:12.0f}" if 'rss_before_mib' in r
                    else f"{'-':>12s}")
        print(f"{r['case']:44s} {r['seconds']:8.2f} {per} {r['ratio']:9.2f} {mbs} {rss} "
              f"{base_rss}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def run() -> None:
    """``python benchmarks/benchmark_dump.py`` / ``rb-benchmark-dump``."""
    run_tool(prog('benchmark_dump.py'), main)


if __name__ == '__main__':
    run()
