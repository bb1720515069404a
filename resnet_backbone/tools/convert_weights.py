"""Convert ResNet weights from torchvision / timm / detectron2 / mmpretrain / mmdet into a
clean ``ResNetV1Custom`` state dict, verify it with a strict load, print the load report.

    python tools/convert_weights.py IN OUT [--source ...] [--depth ...] [--stem ...]
        [--avg-down | --no-avg-down] [--style pytorch|caffe] [--allow-pickle] [--no-strict]

Installed as ``rb-convert`` (same arguments); ``python tools/convert_weights.py`` runs the
same code.

The dialect, depth, stem and shortcut layout are inferred from the keys; flags override.
timm and torchvision files (identical keys) are told apart by the module names a saved
state dict records; a file without them is reported as 'torchvision/timm'. A whole
pickled model (``torch.save(model)``) is refused in one line: save ``model.state_dict()``.
OUT is a plain state dict (``torch.save``), loadable with ``weights_only=True`` and
usable as ``init_cfg=dict(type='Pretrained', checkpoint=OUT)``.

OUT holds only tensors read from IN: with ``--no-strict`` the keys IN lacks are left out
(never written with a fresh random initialisation), so loading OUT later reports them
missing. OUT is written atomically, and only after a successful load. An unreadable IN
(empty, truncated, not a checkpoint) is one error line naming it. Errors print one
line (``--debug`` or ``RESNET_BACKBONE_DEBUG=1`` for the traceback); exit 1, or 130 on
Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..errors import ToolError
from ..io.fileio import atomic_path
from ..io.weights import (
    SOURCES,
    IncompleteCheckpointError,
    UnknownDialectError,
    load_state_dict,
    loaded_state_dict,
    read_checkpoint,
)
from ..models.from_checkpoint import backbone_for_checkpoint
from ..spec import ARCH_LAYOUT, STEM_TYPES, STYLES
from . import prog
from .runner import ToolParser, run_tool


def parse_args(argv=None) -> argparse.Namespace:
    p = ToolParser(
        description='Convert ResNet weights to ResNetV1Custom. OUT holds only tensors read '
                    'from INPUT, never random-initialised ones.',
        epilog='Errors are one line; --debug (or RESNET_BACKBONE_DEBUG=1) shows the '
               'traceback.')
    p.add_argument('input', help='checkpoint file (.pth, .pt, .bin; .pkl with --allow-pickle)')
    p.add_argument('output', help='where to write the converted state dict (.pth)')
    p.add_argument('--source', choices=SOURCES, help='dialect (default: detected)')
    p.add_argument('--depth', type=int, choices=sorted(ARCH_LAYOUT))
    p.add_argument('--stem', choices=STEM_TYPES, help='stem type (default: inferred)')
    p.add_argument('--avg-down', action=argparse.BooleanOptionalAction, default=None)
    p.add_argument('--style', choices=STYLES)
    p.add_argument('--allow-pickle', action='store_true',
                   help='allow reading a pickled .pkl (detectron2); pickle can run code')
    p.add_argument('--no-strict', action='store_true',
                   help='write only the tensors that loaded even if keys are missing: the '
                        'missing ones are left out of OUT (not random-initialised), so a '
                        'later load of OUT reports them missing; the report lists them')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    ckpt = read_checkpoint(args.input, allow_pickle=args.allow_pickle)
    try:
        model, converted, kwargs = backbone_for_checkpoint(
            ckpt, source=args.source, depth=args.depth, stem_type=args.stem,
            avg_down=args.avg_down, style=args.style)
    except UnknownDialectError as exc:  # the flag, not the API's source=...
        raise ToolError(f'{args.input}: {exc.message("--source")}') from None
    try:  # the report is printed once, below (not also logged)
        report = load_state_dict(model, converted.state_dict, source=converted.label,
                                 strict=not args.no_strict, log=False,
                                 checkpoint=args.input)
    except IncompleteCheckpointError as exc:
        print(exc.report.summary(), file=sys.stderr)
        raise ToolError(f'{exc}; nothing written (--no-strict writes only what loaded)') \
            from None
    print(f'source: {converted.label}; backbone: {type(model).__name__}('
          + ', '.join(f'{k}={v!r}' for k, v in kwargs.items()) + ')')
    if converted.dropped:
        print(f'dropped {len(converted.dropped)} non-backbone keys '
              f'(e.g. {", ".join(converted.dropped[:3])})')
    print(report.summary())
    state = loaded_state_dict(model, report)
    left_out = report.missing + [k for k, _, _ in report.mismatched]
    if left_out:
        print(f'not written: {len(left_out)} tensors the input lacks ({", ".join(left_out)}); '
              f'OUT holds only the {len(report.loaded)} loaded tensors, so loading it '
              'reports them missing')
    out = Path(args.output)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    print(f'wrote {out} ({len(state)} tensors)')
    return 0


def run() -> None:
    """``rb-convert`` / ``python tools/convert_weights.py``: :func:`main`, one-line errors."""
    sys.exit(run_tool(prog('convert_weights.py'), main))


if __name__ == '__main__':
    run()
