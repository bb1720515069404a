"""Dump backbone (C1-C5) and neck (P-levels) feature maps of images, with geometry.

    python tools/dump_features.py CONFIG [CHECKPOINT] --input PATH --out DIR
        [--levels c2,c3,c4,c5,p3] [--format npz|pt|safetensors] [--dtype float16|float32]
        [--overlay] [--overlay-mode mean|topk] [--device cpu] [--overwrite] [--no-strict]

Installed as ``rb-dump`` (same arguments); ``python tools/dump_features.py`` runs the same code.

PATH is one image, a folder (searched recursively), or a .txt list of paths. Each image
gets one file with every level and a JSON metadata record (stride, ori/img/pad shape,
scale factor, flip, stats, weights); DIR/index.json and DIR/index.csv list them all.
The maps are computed with the config's own test pipeline and data preprocessor, as
inference computes them. Without CHECKPOINT the weights are random (or the backbone's
pretrained file, if local or in torch's hub cache), and the metadata says so.

CHECKPOINT is loaded strictly: a detector checkpoint must fit the config's detector, a
backbone-only file (e.g. from tools/convert_weights.py) its backbone (the neck and
heads are then random, and the metadata records what loaded and its coverage).
Anything else stops with one line; --no-strict loads only what fits. The tool exits 1
when no image could be dumped (unreadable, or no such file).

Each record stores a fingerprint of what produced it (config, weights file sha256,
levels, dtype, format, package version). Files already in DIR are reused only if their
fingerprint matches; if one differs, the tool stops before writing anything, with one
line that names --overwrite (which redoes every image). The record is written after the
overlays, and every file atomically, so Ctrl-C (exit 130) leaves no partial file: run
the same command again to continue where it stopped. Errors are one line; --debug (or
RESNET_BACKBONE_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmengine.config import DictAction

from ..apis.dump import (
    DTYPES,
    FORMATS,
    OVERLAY_MODES,
    check_out_dir,
    collect_images,
    dump_features,
)
from ..apis.features import FeatureExtractor
from ..cli import ToolError, run_tool
from ..engine.training import load_config, setup_environment
from . import prog


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Dump feature maps with their geometry.',
        epilog='Files already in --out are reused only if their fingerprint (config, '
               'weights, levels, dtype, format, version) matches; otherwise the tool stops '
               'and names --overwrite. Ctrl-C: run the same command again to continue. '
               '--debug (or RESNET_BACKBONE_DEBUG=1) shows tracebacks.')
    p.add_argument('config', help='mmdet config file')
    p.add_argument('checkpoint', nargs='?', help='checkpoint (default: random weights)')
    p.add_argument('--input', required=True, help='image, folder, or .txt list of images')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--levels', help='comma-separated, e.g. c1,c2,c3,c4,c5,p2,p3 '
                                    '(default: the backbone outputs)')
    p.add_argument('--format', default='npz', choices=FORMATS)
    p.add_argument('--dtype', default='float32', choices=list(DTYPES))
    p.add_argument('--overlay', action='store_true', help='also write heatmap PNGs')
    p.add_argument('--overlay-mode', default='mean', choices=OVERLAY_MODES,
                   help='channel mean, or the top-k channels in a grid')
    p.add_argument('--device', default='cpu')
    p.add_argument('--overwrite', action='store_true',
                   help='redo every image, also those already dumped, and replace files '
                        'dumped with other settings (whose fingerprint differs)')
    p.add_argument('--no-strict', action='store_true',
                   help='load a checkpoint that does not fit the config anyway: only the '
                        'tensors that fit, the rest random (seeded); the load report and '
                        'the metadata say what loaded. Default: a checkpoint must fit the '
                        'detector, or (a backbone-only file) its backbone')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    args = p.parse_args(argv)
    if not Path(args.config).is_file():
        p.error(f'config {args.config!r}: no such file')
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        p.error(f'checkpoint {args.checkpoint!r}: no such file')
    if not Path(args.input).exists():
        p.error(f'--input {args.input}: no such file or folder')
    return args


def main(argv=None):
    args = parse_args(argv)
    check_out_dir(args.out)  # before the model is built: fail fast, write nothing
    setup_environment()
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    levels = [lv.strip() for lv in args.levels.split(',')] if args.levels else None
    try:
        fx = FeatureExtractor.from_config(cfg, args.checkpoint, device=args.device,
                                          levels=levels, strict=not args.no_strict)
    except ValueError as exc:  # e.g. an unknown level: one line, not a traceback
        raise ToolError(str(exc)) from exc
    images, root = collect_images(args.input)
    if not images:
        raise ToolError(f'no images found in {args.input}')
    note = f" ({fx.weights['note']})" if fx.weights.get('note') else ''
    print(f'[dump] {len(images)} images, levels {", ".join(fx.levels)}, weights: '
          f"{fx.weights['source']}{note}", file=sys.stderr)
    summary = dump_features(fx, images, root, Path(args.out), fmt=args.format,
                            dtype=args.dtype, overlay=args.overlay,
                            overlay_mode=args.overlay_mode, overwrite=args.overwrite,
                            config=str(args.config))
    print(f'[dump] {summary.line()}', file=sys.stderr)
    if summary.nothing_dumped:
        first, reason = summary.skipped[0]
        raise ToolError(f'none of the {len(summary.skipped)} images could be dumped '
                        f'(skipped {summary.skipped_words()}, e.g. {first}: {reason}); '
                        'check --input')
    return summary


def resume_hint(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    if '--overwrite' in argv:
        return 'run it again without --overwrite to continue where it stopped'
    return 'run the same command again to continue where it stopped'


def run() -> None:
    """``rb-dump`` / ``python tools/dump_features.py``: :func:`main` with one-line errors."""
    run_tool(prog('dump_features.py'), main, resume_hint=resume_hint())


if __name__ == '__main__':
    run()
