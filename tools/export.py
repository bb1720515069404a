"""Export the backbone (optionally with its FPN) to ONNX or TorchScript, and check it.

    python tools/export.py OUT.onnx [--config CFG [--checkpoint CKPT]] [--depth N]
        [--with-neck] [--size 512] [--batch 1] [--reference] [--static] [--no-check]
        [--no-strict]
    python tools/export.py OUT.pt --format torchscript ...

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

import torch  # noqa: E402

FORMATS = ('onnx', 'torchscript')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('out', help='output file (.onnx or .pt)')
    p.add_argument('--format', choices=FORMATS, help='default: from the file extension')
    p.add_argument('--config', help='an mmdet config whose backbone (and neck) to export')
    p.add_argument('--checkpoint', help='weights: a detector checkpoint with --config, '
                                        'else backbone weights in any supported dialect')
    p.add_argument('--depth', type=int, choices=(18, 34, 50, 101, 152, 200),
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
                f"{', '.join(FORMATS)} (or name the file .onnx / .pt)")
    args.format = fmt
    for name in ('config', 'checkpoint'):
        value = getattr(args, name)
        if value is not None and '://' not in value and not Path(value).is_file():
            p.error(f'--{name}: no such file: {value}')
    if args.size < 32 or args.batch < 1:
        p.error(f'--size must be >= 32 and --batch >= 1; got {args.size}, {args.batch}')
    return args


def build(args) -> torch.nn.Module:
    from resnet_backbone.apis.export import BackboneWithNeck, default_fpn
    if args.config:
        from resnet_backbone.apis.features import FeatureExtractor
        fx = FeatureExtractor.from_config(args.config, args.checkpoint,
                                          strict=not args.no_strict)
        print(f'[export] weights: {fx.weights["source"]} ({fx.weights.get("note", "")})'
              .replace(' ()', ''))
        detector = fx.model
        backbone = detector.backbone
        if args.with_neck:
            if not getattr(detector, 'with_neck', False):
                raise SystemExit(f'--with-neck: {args.config} has no neck')
            return BackboneWithNeck(backbone, detector.neck)
        return backbone
    from resnet_backbone import ResNetV1Custom
    torch.manual_seed(0)
    if args.checkpoint:
        from resnet_backbone.cli import ToolError
        from resnet_backbone.io.weights import (
            IncompleteCheckpointError,
            UnknownDialectError,
            load_state_dict,
        )
        from resnet_backbone.models.resnet import backbone_for_checkpoint
        try:  # the architecture the checkpoint implies, as convert_weights.py infers it
            backbone, converted, kwargs = backbone_for_checkpoint(args.checkpoint,
                                                                  depth=args.depth)
        except UnknownDialectError as exc:
            raise ToolError(f'{args.checkpoint}: '
                            f'{exc.message("--source to tools/convert_weights.py")}') from None
        try:
            report = load_state_dict(backbone, converted.state_dict, source=converted.label,
                                     strict=not args.no_strict, log=False,
                                     checkpoint=args.checkpoint)
        except IncompleteCheckpointError as exc:
            r = exc.report
            raise ToolError(
                f'checkpoint {args.checkpoint} does not fit ResNetV1Custom('
                + ', '.join(f'{k}={v!r}' for k, v in kwargs.items()) + f'): {len(r.missing)} '
                f'missing, {len(r.unexpected)} unexpected, {len(r.mismatched)} shape-'
                f'mismatched tensors (coverage {r.coverage:.2f}%); '
                + ('drop --depth to infer it from the checkpoint, or ' if args.depth else '')
                + 'pass --no-strict to load only what fits') from None
        print(f'[export] weights: {args.checkpoint}: ResNetV1Custom('
              + ', '.join(f'{k}={v!r}' for k, v in kwargs.items()) + ')')
        print(f'[export] {report.summary()}')
    else:
        backbone = ResNetV1Custom(depth=args.depth or 50)
        from resnet_backbone.engine.compat import quiet_init_logging
        with quiet_init_logging():
            backbone.init_weights()
        print('[export] weights: random (seed 0); pass --checkpoint for real ones')
    return BackboneWithNeck(backbone, default_fpn(backbone)) if args.with_neck else backbone


def main(argv=None) -> int:
    args = parse_args(argv)
    from resnet_backbone.apis.export import check_onnx, export_onnx, trace
    model = build(args).eval()
    backbone = model.backbone if hasattr(model, 'neck') else model
    if hasattr(backbone, 'fast'):
        backbone.fast = not args.reference
    x = torch.rand(args.batch, 3, args.size, args.size)
    t0 = time.perf_counter()
    if args.format == 'onnx':
        print(f'[export] exporting to ONNX (torch.export, {"static" if args.static else "dynamic"}'
              f' shapes) ...', flush=True)
        path = export_onnx(model, args.out, x, dynamic=not args.static)
    else:
        print('[export] tracing to TorchScript ...', flush=True)
        from resnet_backbone.io.fileio import atomic_path
        path = Path(args.out)
        traced = trace(model, x)
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
    for c in check_onnx(path, model, shapes):
        print(f'[export]   input {c.shape}: max abs err {max(c.max_abs):.2e}, max rel err '
              f'{max(c.max_rel):.2e} -> {"ok" if c.ok else "FAIL"}')
        failed |= not c.ok
    if failed:
        print('[export] FAIL: onnxruntime differs from PyTorch by more than 1e-4 relative',
              file=sys.stderr)
        return 1
    print('[export] onnxruntime matches PyTorch within 1e-4')
    return 0


if __name__ == '__main__':
    try:
        from resnet_backbone.cli import run_tool
    except ImportError as exc:  # the package names the broken dependency and the fix
        sys.exit(f'export.py: error: {exc}')
    sys.exit(run_tool('export.py', main))
