"""Dump backbone (C1-C5) and neck (P-levels) feature maps of images, with geometry.

    python tools/dump_features.py CONFIG [CHECKPOINT] --input PATH --out DIR
        [--levels c2,c3,c4,c5,p3] [--format safetensors|npz|pt]
        [--dtype float32|float16|bfloat16] [--batch-size N] [--workers N] [--writers N]
        [--overlay] [--overlay-mode mean|topk] [--overlay-max-side PX] [--device cpu]
        [--overwrite] [--no-strict] [--launcher none|pytorch|slurm]
    python tools/dump_features.py --rebuild-index DIR     (or --report-only DIR)
    bash tools/dist_dump.sh CONFIG NPROC [CHECKPOINT] --input PATH --out DIR ...

Installed as ``rb-dump`` (same arguments); ``python tools/dump_features.py`` runs the same code.

Decoding runs in --workers DataLoader processes and writing in --writers threads beside
the forward; --batch-size batches images of one padded shape (see
:mod:`resnet_backbone.apis.dump.run`). With --launcher (torchrun: tools/dist_dump.sh) each
rank dumps its own shard, and rank 0 writes one index at the end.

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

--rois FILE and --rois gt are read and checked before the model is built: a bad row, or
an annotation file that shares no category name with the model's classes (gt labels
go by name), stop with one line; rows of a box file that name no input image are one
WARNING line (--input may well choose a subset of the file's images). With --launcher
every rank's skipped images are named by rank 0, with their rank.

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

import torch.distributed as dist
from mmengine.config import DictAction

from ..apis.dump.overlay import DEFAULT_MAX_SIDE, OVERLAY_MODES
from ..apis.dump.report import report_only, write_report
from ..apis.dump.rois import CocoFile, coco_boxes, load_box_file, read_coco, unmatched_line
from ..apis.dump.run import RoISource, check_out_dir, collect_images, dump_features
from ..apis.dump.store import DTYPES, FORMATS, build_index, check_format_dtype
from ..apis.features import FeatureExtractor
from ..engine.distributed import init_process_group, process_group_closed
from ..engine.training import check_launcher, load_config, setup_environment
from ..errors import ToolError
from ..io.checkpoint_loading import file_digest
from ..models.inference import COMPUTE_DTYPES
from . import prog
from .runner import ToolParser, run_tool


def parse_args(argv=None) -> argparse.Namespace:
    p = ToolParser(
        description='Dump feature maps with their geometry.',
        epilog='Files already in --out are reused only if their fingerprint (config, '
               'weights, levels, dtype, compute dtype, compile, format, version) matches; '
               'otherwise the tool stops and names --overwrite. Ctrl-C: run the same '
               'command again to continue. --debug (or RESNET_BACKBONE_DEBUG=1) shows tracebacks.')
    p.add_argument('config', nargs='?', help='mmdet config file')
    p.add_argument('checkpoint', nargs='?', help='checkpoint (default: random weights)')
    p.add_argument('--input', help='image, folder, or .txt list of images')
    p.add_argument('--out', help='output folder')
    p.add_argument('--rebuild-index', nargs='?', const=True, default=None, metavar='DIR',
                   help='only (re)write DIR/index.json and index.csv from its manifests '
                        '(DIR: this, else --out)')
    p.add_argument('--report-only', nargs='?', const=True, default=None, metavar='DIR',
                   help='only (re)write the report DIR/index.html from DIR/index.json '
                        '(DIR: this, else --out)')
    p.add_argument('--levels', help='comma-separated, e.g. c1,c2,c3,c4,c5,p2,p3 '
                                    '(default: the backbone outputs)')
    p.add_argument('--format', default='safetensors', choices=FORMATS,
                   help='safetensors (default: uncompressed, the fastest to write), npz, pt')
    p.add_argument('--dtype', default='float32', choices=list(DTYPES),
                   help='storage dtype of the arrays (what the model computes in is '
                        '--compute-dtype)')
    p.add_argument('--compute-dtype', default='fp32', choices=list(COMPUTE_DTYPES),
                   help="bf16: the backbone's bf16 inference tier (BN folded in fp32, then "
                        'cast; the neck stays fp32); not the storage --dtype')
    p.add_argument('--compile', action='store_true',
                   help='run the backbone compiled by torch.compile (Inductor); each new '
                        'input size compiles first (the warm-up is reported)')
    p.add_argument('--batch-size', type=int, default=1,
                   help='images per forward (only images of one padded shape are batched)')
    p.add_argument('--workers', type=int, default=2,
                   help='DataLoader worker processes for decoding and the test pipeline')
    p.add_argument('--writers', type=int, default=1,
                   help='threads writing arrays and overlays beside the forward')
    p.add_argument('--rois', metavar='{gt,pred,FILE}',
                   help='also RoIAlign features per box: gt (the boxes of --ann-file, by '
                        'default the config\'s test annotations), pred (the detector\'s '
                        'predictions) or a JSON/CSV file of boxes in original pixels')
    p.add_argument('--ann-file', help='COCO annotations for --rois gt')
    p.add_argument('--score-thr', type=float, default=0.3, help='--rois pred: lowest score')
    p.add_argument('--max-per-image', type=int, default=100,
                   help='--rois pred: most boxes per image')
    p.add_argument('--launcher', default='none', choices=['none', 'pytorch', 'slurm'],
                   help='distributed launcher (tools/dist_dump.sh uses pytorch)')
    p.add_argument('--overlay', action='store_true', help='also write heatmap PNGs')
    p.add_argument('--overlay-mode', default='mean', choices=OVERLAY_MODES,
                   help='channel mean, or the top-k channels in a grid')
    p.add_argument('--overlay-max-side', type=int, default=DEFAULT_MAX_SIDE,
                   help='longer side of an overlay in pixels (never the photo\'s full size)')
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
    for name in ('rebuild_index', 'report_only'):
        value = getattr(args, name)
        if value is None:
            continue
        flag = f'--{name.replace("_", "-")}'
        folder = args.out if value is True else value
        if folder is None:
            p.error(f'{flag} needs the dump folder: {flag} DIR (or --out DIR)')
        if value is not True and args.out is not None and Path(value) != Path(args.out):
            p.error(f'{flag} {value} and --out {args.out} name two folders; give one')
        args.out = folder
        return args
    if args.out is None:
        p.error('the following arguments are required: --out')
    if args.config is None:
        p.error('the following arguments are required: config (or --rebuild-index DIR)')
    if args.input is None:
        p.error('the following arguments are required: --input')
    for name in ('batch_size', 'overlay_max_side'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be 1 or more; got {getattr(args, name)}')
    for name in ('workers', 'writers'):
        if getattr(args, name) < 0:
            p.error(f'--{name} must be 0 or more; got {getattr(args, name)}')
    if not Path(args.config).is_file():
        p.error(f'config {args.config!r}: no such file')
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        p.error(f'checkpoint {args.checkpoint!r}: no such file')
    if not Path(args.input).exists():
        p.error(f'--input {args.input}: no such file or folder')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        return report_only(args.out)
    if args.rebuild_index:
        return rebuild_index(args.out)
    check_out_dir(args.out)  # before the model is built: fail fast, write nothing
    check_format_dtype(args.format, args.dtype)
    check_dump_launcher(args.launcher)  # one line, not torch's or SLURM's error
    setup_environment()
    with process_group_closed():
        return _dump(args)


_HOW_TO_LAUNCH = {
    'pytorch': 'start it with torchrun (bash tools/dist_dump.sh CONFIG NPROC [CHECKPOINT] '
               '--input PATH --out DIR does that), or drop --launcher to run one process',
    'slurm': 'start it with srun (srun -n NPROC python tools/dump_features.py CONFIG '
             '--input PATH --out DIR --launcher slurm), or drop --launcher to run one '
             'process'}


def check_dump_launcher(launcher: str) -> None:
    """rb-train's one-line launcher check (:func:`~resnet_backbone.engine.training.
    check_launcher`), with the dump's own launch commands in its hint."""
    try:
        check_launcher(launcher)
    except ToolError as exc:
        what, sep, _ = str(exc).partition('; ')
        if not sep or launcher not in _HOW_TO_LAUNCH:
            raise
        raise ToolError(f'{what}; {_HOW_TO_LAUNCH[launcher]}') from None


def read_rois(args, cfg, images: list[Path], *, rank: int = 0
              ) -> tuple[RoISource | None, CocoFile | None]:
    """``--rois``, before the model is built: the box file or annotation file read and
    checked (a bad row stopped the run only after the model was built), and one WARNING
    line (rank 0) naming the box-file rows that match no input image. Returns the source
    and, for ``gt``, the annotation file (labelled again by :func:`finish_rois` when the
    checkpoint names its own classes)."""
    if args.rois is None:
        if args.ann_file:
            raise ToolError('--ann-file is for --rois gt; add --rois gt')
        return None, None
    if args.rois == 'pred':
        if not 0 <= args.score_thr <= 1 or args.max_per_image < 1:
            raise ToolError('--score-thr must lie in [0, 1] and --max-per-image be 1 or '
                            f'more; got {args.score_thr} and {args.max_per_image}')
        return RoISource('pred', score_thr=args.score_thr,
                         max_per_image=args.max_per_image), None
    if args.rois == 'gt':
        ann = args.ann_file or _config_ann_file(cfg)
        coco = read_coco(ann)
        # with a checkpoint its own classes (dataset_meta) decide: labelled after the load
        table = coco_boxes(coco, config_classes(cfg)) if args.checkpoint is None else None
        return RoISource('gt', table, str(ann), file_digest(ann)), coco
    table = load_box_file(args.rois)
    # a warning, not an error: --input chooses which images to dump, and a box file may
    # well cover more of them (one image, or a .txt subset, of a data set's boxes)
    line = unmatched_line(table, images, args.rois)
    if line and rank == 0:
        print(f'WARNING: {line}', file=sys.stderr, flush=True)
    return RoISource('file', table, args.rois, file_digest(args.rois)), None


def finish_rois(rois: RoISource | None, coco: CocoFile | None, cfg,
                fx: FeatureExtractor) -> RoISource | None:
    """``--rois`` after the model is built: whether it can pool RoIs, and the ``gt``
    labels by the checkpoint's classes (else the config's)."""
    if rois is None:
        return None
    try:
        fx.roi_extractor()
    except ValueError as exc:
        raise ToolError(f'--rois: {exc}') from None
    if coco is not None and rois.table is None:
        own = list((getattr(fx.model, 'dataset_meta', None) or {}).get('classes') or [])
        rois.table = (coco_boxes(coco, own, "the checkpoint's") if own
                      else coco_boxes(coco, config_classes(cfg)))
    return rois


def config_classes(cfg) -> list[str]:
    """The class names the config's test set numbers labels by: its ``metainfo.classes``,
    else its dataset type's own (mmdet's ``CocoDataset``: COCO's 80), as mmdet would."""
    ds = cfg.get('test_dataloader', {}).get('dataset', {})
    classes = (ds.get('metainfo') or {}).get('classes')
    if classes:
        return [str(c) for c in classes]
    from mmdet.registry import DATASETS  # registered by setup_environment
    kind = DATASETS.get(ds.get('type')) if isinstance(ds.get('type'), str) else ds.get('type')
    return [str(c) for c in (getattr(kind, 'METAINFO', None) or {}).get('classes', ())]


def _config_ann_file(cfg) -> str:
    ds = cfg.get('test_dataloader', {}).get('dataset', {})
    ann = ds.get('ann_file')
    if not ann:
        raise ToolError('--rois gt: the config\'s test set names no ann_file; pass --ann-file')
    path = Path(ds.get('data_root') or '') / ann
    if not path.is_file():
        raise ToolError(f'--rois gt: the config\'s test annotations {path} do not exist; '
                        'pass --ann-file (or set data_root with --cfg-options)')
    return str(path)


def rebuild_index(out: str) -> Path:
    """``--rebuild-index``: index.json/index.csv of DIR from its manifests alone."""
    out_dir = Path(out)
    if not (out_dir / 'manifests').is_dir():
        raise ToolError(f'--out {out_dir}: no dump there (no manifests folder); pass the '
                        'output folder of a dump')
    index, listed, skipped = build_index(out_dir)
    report = write_report(out_dir)
    print(f'[dump] index of {listed} images ({skipped} skipped): {index}; report: {report}',
          file=sys.stderr)
    return index


def _dump(args):
    device = init_process_group(args.launcher, args.device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    levels = [lv.strip() for lv in args.levels.split(',')] if args.levels else None
    images, root = collect_images(args.input)
    if not images:
        raise ToolError(f'no images found in {args.input}')
    rois, coco = read_rois(args, cfg, images, rank=rank)  # before the (slow) model build
    try:
        fx = FeatureExtractor.from_config(cfg, args.checkpoint, device=device,
                                          levels=levels, strict=not args.no_strict,
                                          compute_dtype=args.compute_dtype,
                                          compile=args.compile)
    except ValueError as exc:  # e.g. an unknown level: one line, not a traceback
        raise ToolError(str(exc)) from exc
    if rank == 0:
        note = f" ({fx.weights['note']})" if fx.weights.get('note') else ''
        ranks = f' on {dist.get_world_size()} ranks' if dist.is_initialized() else ''
        mode = ('' if args.batch_size == 1  # nothing is batched: nothing to say about it
                else ' (batched by padded shape)' if getattr(fx.backbone, 'fast', False)
                else ' (reference mode: one image per forward, bitwise batch 1)')
        compute = ''.join([f', compute {args.compute_dtype}' * (args.compute_dtype != 'fp32'),
                           ', compiled' * args.compile])
        print(f'[dump] {len(images)} images{ranks}, levels {", ".join(fx.levels)}, '
              f'batch {args.batch_size}{mode}{compute}, weights: {fx.weights["source"]}'
              f'{note}', file=sys.stderr)
    rois = finish_rois(rois, coco, cfg, fx)
    summary = dump_features(fx, images, root, Path(args.out), fmt=args.format,
                            dtype=args.dtype, overlay=args.overlay,
                            overlay_mode=args.overlay_mode,
                            overlay_max_side=args.overlay_max_side, overwrite=args.overwrite,
                            config=str(args.config), batch_size=args.batch_size,
                            workers=args.workers, writers=args.writers, rois=rois)
    if rank == 0:
        print(f'[dump] {summary.line()}', file=sys.stderr)
        if fx.compile_summary:
            print(f'[dump] {fx.compile_summary}', file=sys.stderr)
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
