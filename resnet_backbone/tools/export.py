"""Export the backbone (optionally with its FPN) to ONNX or TorchScript, and check it.

    python tools/export.py OUT.onnx [--config CFG [--checkpoint CKPT]] [--depth N]
        [--with-neck] [--size 512] [--batch 1] [--reference] [--static] [--no-check]
        [--no-strict]
    python tools/export.py OUT.pt --format torchscript ...

Installed as ``rb-export`` (same arguments); ``python tools/export.py`` runs the same code.

Any error prints one line and exits 1; Ctrl-C exits 130 and leaves no partial output
file; ``--debug`` (or ``RESNET_BACKBONE_DEBUG=1``) prints the full traceback.

Without ``--config`` the model is ``ResNetV1Custom(depth=...)`` (plus mmdet's FPN with
``--with-neck``), randomly initialised (depth 50 unless ``--depth``) unless
``--checkpoint`` names backbone weights in any dialect that ``tools/convert_weights.py``
reads; the depth, stem and shortcut layout are then inferred from the checkpoint, as
that tool does (``--depth`` overrides). With ``--config`` the detector's backbone (and
neck) are built from the config and ``--checkpoint`` is a detector checkpoint, or a
backbone-only file (the neck then stays random, and the tool says so). Checkpoints load
strictly: one that does not fit is one error line naming the file and the missing and
unexpected counts; ``--no-strict`` loads only what fits. ONNX files are checked with
onnxruntime at three input shapes; the largest error relative to each output's scale must
stay within 1e-4.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..apis import export as export_lib
from ..apis.export import build_export_model
from ..engine.training import setup_environment
from ..io.fileio import atomic_path
from ..spec import ARCH_LAYOUT, allowed
from . import prog
from .runner import ToolParser, run_tool

FORMATS = ('onnx', 'torchscript')


def parse_args(argv=None) -> argparse.Namespace:
    p = ToolParser(description=__doc__.splitlines()[0])
    p.add_argument('out', help='output file (.onnx or .pt)')
    p.add_argument('--format', choices=FORMATS, help='default: from the file extension')
    p.add_argument('--config', help='an mmdet config whose backbone (and neck) to export')
    p.add_argument('--checkpoint', help='weights: a detector checkpoint with --config, '
                                        'else backbone weights in any supported dialect')
    p.add_argument('--depth', type=int, choices=sorted(ARCH_LAYOUT),
                   help='default: inferred from --checkpoint, else 50')
    p.add_argument('--with-neck', action='store_true', help="include the FPN neck")
    p.add_argument('--size', type=int, default=512, help='example input height and width')
    p.add_argument('--batch', type=int, default=1, help='example batch size')
    p.add_argument('--reference', action='store_true',
                   help="export the reference mode (fast=False: mmdet's op order)")
    p.add_argument('--static', action='store_true', help='fixed input shape (ONNX)')
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime check')
    p.add_argument('--no-strict', action='store_true',
                   help='load a checkpoint that does not fit anyway: only the tensors that '
                        'fit, the rest random; the load report lists what did not load')
    args = p.parse_args(argv)
    fmt = args.format or {'.onnx': 'onnx', '.pt': 'torchscript', '.ts': 'torchscript'}.get(
        Path(args.out).suffix)
    if fmt is None:
        p.error(f"--format: cannot tell it from {args.out!r}; allowed values: "
                f"{allowed(FORMATS, quote=False)} (or name the file .onnx / .pt)")
    args.format = fmt
    for name in ('config', 'checkpoint'):
        value = getattr(args, name)
        if value is not None and '://' not in value and not Path(value).is_file():
            p.error(f'--{name}: no such file: {value}')
    if args.size < 32 or args.batch < 1:
        p.error(f'--size must be >= 32 and --batch >= 1; got {args.size}, {args.batch}')
    return args


def build(args) -> torch.nn.Module:
    """The module to export, from the parsed arguments
    (:func:`resnet_backbone.apis.export.build_export_model`)."""
    return build_export_model(args.config, args.checkpoint, depth=args.depth,
                              with_neck=args.with_neck, strict=not args.no_strict)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_environment()  # the tools' process set-up (warning filters, registries)
    model = build(args).eval()
    backbone = model.backbone if hasattr(model, 'neck') else model
    if hasattr(backbone, 'fast'):
        backbone.fast = not args.reference
    x = torch.rand(args.batch, 3, args.size, args.size)
    t0 = time.perf_counter()
    if args.format == 'onnx':
        print(f'[export] exporting to ONNX (torch.export, {"static" if args.static else "dynamic"}'
              f' shapes) ...', flush=True)
        path = export_lib.export_onnx(model, args.out, x, dynamic=not args.static)
    else:
        print('[export] tracing to TorchScript ...', flush=True)
        path = Path(args.out)
        traced = export_lib.trace(model, x)
        with atomic_path(path) as tmp:  # complete or absent, also after Ctrl-C
            traced.save(str(tmp))
    print(f'[export] wrote {path} ({path.stat().st_size / 2**20:.1f} MB) in '
          f'{time.perf_counter() - t0:.1f} s')
    if args.format != 'onnx' or args.no_check:
        return 0
    s = args.size
    shapes = [(args.batch, 3, s, s)] if args.static else [
        (args.batch, 3, s, s), (2, 3, s // 2 + 32, s), (1, 3, s - 31, s // 2 + 1)]
    print('[export] checking with onnxruntime ...', flush=True)
    failed = False
    for c in export_lib.check_onnx(path, model, shapes):
        print(f'[export]   input {c.shape}: max abs err {max(c.max_abs):.2e}, max rel err '
              f'{max(c.max_rel):.2e} -> {"ok" if c.ok else "FAIL"}')
        failed |= not c.ok
    if failed:
        print('[export] FAIL: onnxruntime differs from PyTorch by more than 1e-4 relative',
              file=sys.stderr)
        return 1
    print('[export] onnxruntime matches PyTorch within 1e-4')
    return 0


def run() -> None:
    """``rb-export`` / ``python tools/export.py``: :func:`main` with one-line errors."""
    sys.exit(run_tool(prog('export.py'), main))


if __name__ == '__main__':
    run()
