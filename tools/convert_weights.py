"""Convert ResNet weights from torchvision / timm / detectron2 / mmpretrain / mmdet into a
clean ``ResNetV1Custom`` state dict, verify it with a strict load, print the load report.

    python tools/convert_weights.py IN OUT [--source ...] [--depth ...] [--stem ...]
        [--avg-down | --no-avg-down] [--style pytorch|caffe] [--allow-pickle] [--no-strict]

The dialect, depth, stem and shortcut layout are inferred from the keys; flags override.
OUT is a plain state dict (``torch.save``), loadable with ``weights_only=True`` and
usable as ``init_cfg=dict(type='Pretrained', checkpoint=OUT)``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

import torch  # noqa: E402

from resnet_backbone.resnet import ARCH_SETTINGS, ResNetV1Custom  # noqa: E402
from resnet_backbone.stem import STEM_TYPES  # noqa: E402
from resnet_backbone.weights import (  # noqa: E402
    SOURCES,
    IncompleteCheckpointError,
    convert,
    load_state_dict,
    read_checkpoint,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Convert ResNet weights to ResNetV1Custom.')
    p.add_argument('input', help='checkpoint file (.pth, .pt, .bin; .pkl with --allow-pickle)')
    p.add_argument('output', help='where to write the converted state dict (.pth)')
    p.add_argument('--source', choices=SOURCES, help='dialect (default: detected)')
    p.add_argument('--depth', type=int, choices=sorted(ARCH_SETTINGS))
    p.add_argument('--stem', choices=STEM_TYPES, help='stem type (default: inferred)')
    p.add_argument('--avg-down', action=argparse.BooleanOptionalAction, default=None)
    p.add_argument('--style', choices=('pytorch', 'caffe'))
    p.add_argument('--allow-pickle', action='store_true',
                   help='allow reading a pickled .pkl (detectron2); pickle can run code')
    p.add_argument('--no-strict', action='store_true',
                   help='write what matched even if keys are missing (report says what)')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        ckpt = read_checkpoint(args.input, allow_pickle=args.allow_pickle)
        converted = convert(ckpt, source=args.source)
    except (FileNotFoundError, PermissionError, ValueError) as exc:
        sys.exit(f'convert_weights.py: error: {exc}')
    implied = dict(converted.implied)
    for key, flag in (('depth', args.depth), ('stem_type', args.stem),
                      ('avg_down', args.avg_down), ('style', args.style)):
        if flag is not None:
            implied[key] = flag
    if 'depth' not in implied:
        sys.exit('convert_weights.py: error: cannot infer the depth from the keys; '
                 f'pass --depth (allowed values: {", ".join(map(str, ARCH_SETTINGS))})')
    kwargs = {k: v for k, v in implied.items() if v is not None}
    model = ResNetV1Custom(**kwargs)
    try:
        report = load_state_dict(model, converted.state_dict, source=converted.source,
                                 strict=not args.no_strict)
    except IncompleteCheckpointError as exc:
        print(exc.report.summary(), file=sys.stderr)
        sys.exit(f'convert_weights.py: error: {exc}')
    print(f'source: {converted.source}; backbone: ResNetV1Custom('
          + ', '.join(f'{k}={v!r}' for k, v in kwargs.items()) + ')')
    if converted.dropped:
        print(f'dropped {len(converted.dropped)} non-backbone keys '
              f'(e.g. {", ".join(converted.dropped[:3])})')
    print(report.summary())
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    main()
