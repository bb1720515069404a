"""Evaluate a checkpoint with mmdet's COCO metric (mmengine Runner), like mmdet's tools/test.py.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out preds.pkl]
        [--data-root DIR] [--val-ann FILE --img-dir DIR] [--classes a,b,c]
        [--cfg-options k=v ...] [--launcher {none,pytorch,slurm}] [--compute-dtype bf16]
        [--compile]

Installed as ``rb-test`` (same arguments); ``python tools/test.py`` runs the same code.

``--val-ann`` (alias ``--test-ann``), ``--img-dir`` and ``--classes`` as in
tools/train.py; the COCO evaluator follows the test set's annotation file unless
``--cfg-options`` sets ``test_evaluator.ann_file`` (a WARNING line then names both files
when they differ).

``--out`` saves the raw predictions (mmdet's ``DumpDetResults``, a pickle);
``--json-prefix P`` also writes COCO-format result files ``P.bbox.json`` (and
``P.segm.json``) that any COCO tool can read. The checkpoint must fit the config's
detector strictly (else one line with the missing/unexpected counts; ``--no-strict``
evaluates it anyway, what does not fit left random). ``--compute-dtype bf16`` evaluates with
the backbone's bf16 inference tier (:mod:`resnet_backbone.models.inference`: BN folded in
float32, then cast; taken after the checkpoint is loaded; neck and heads stay float32);
fp32 is the default. ``--compile`` runs the backbone compiled by Inductor
(:mod:`resnet_backbone.models.compiled`). Errors (e.g. a damaged checkpoint) end in
one line (``--debug`` or ``RESNET_BACKBONE_DEBUG=1`` for the traceback).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from mmdet.registry import MODELS
from mmengine.config import DictAction
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import DefaultScope

from ..engine.distributed import process_group_closed
from ..engine.training import (
    add_data_arguments,
    build_runner,
    check_data_arguments,
    check_load_from,
    load_config,
    prepare_data,
    setup_environment,
)
from ..io.checkpoint_loading import CheckpointMismatchError, load_detector_checkpoint
from ..models.compiled import CompiledInference
from ..models.inference import COMPUTE_DTYPES, inference_model
from . import prog
from .runner import ToolParser, run_tool


def parse_args(argv=None) -> argparse.Namespace:
    p = ToolParser(description='Evaluate a detector checkpoint (COCO metric).',
                                epilog='--debug (or RESNET_BACKBONE_DEBUG=1): show the full '
                                       'traceback of an error')
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--work-dir', help='where the evaluation logs go')
    p.add_argument('--out', help='save predictions to this .pkl file')
    p.add_argument('--json-prefix', help='also write COCO-format results PREFIX.bbox.json')
    add_data_arguments(p, train=False)
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config keys; applied after the other flags, so it wins')
    p.add_argument('--no-strict', action='store_true',
                   help="evaluate a checkpoint that does not fit the config's model "
                        "(mmengine's non-strict load: what does not fit stays random)")
    p.add_argument('--compute-dtype', choices=list(COMPUTE_DTYPES), default='fp32',
                   help="bf16: the backbone's bf16 inference tier (BN folded in fp32, then "
                        'cast); not the storage dtype of any output')
    p.add_argument('--compile', action='store_true',
                   help='run the backbone compiled by torch.compile (Inductor, weights '
                        'frozen); each new input size compiles first (the warm-up is logged)')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if not Path(args.config).is_file():
        p.error(f'config {args.config!r}: no such file')
    if not Path(args.checkpoint).is_file():
        p.error(f'checkpoint {args.checkpoint!r}: no such file')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        p.error(f'--out must end with .pkl or .pickle; got {args.out!r}')
    check_data_arguments(p, args)
    return args


def check_checkpoint_fits(cfg, checkpoint: str) -> None:
    """One line unless ``checkpoint`` is a detector checkpoint that loads strictly into
    the config's model (:func:`resnet_backbone.io.checkpoint_loading.load_detector_checkpoint`).

    mmengine's Runner loads non-strictly: an R18 checkpoint on an R50 config logged one
    WARNING and printed an mAP of mostly random weights. ``--no-strict`` skips this.
    """

    cfg.load_from = checkpoint
    check_load_from(cfg, 'checkpoint')  # a damaged file: its own one line
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
        model = MODELS.build(cfg.model)
    record = load_detector_checkpoint(model, checkpoint)  # CheckpointMismatchError
    if record.get('loaded') != 'detector':
        raise CheckpointMismatchError(
            f'checkpoint {checkpoint} holds backbone weights only, not a detector: its '
            'neck and heads would be evaluated with random weights; give a checkpoint '
            'trained with this config, or --no-strict')


class BackboneComputeDtypeHook(Hook):
    """Swap the detector's backbone for its inference snapshot in ``compute_dtype``, compiled
    if asked, once the checkpoint is loaded (``before_test`` runs after the Runner's
    load); after the test, one line on the compile warm-up."""

    def __init__(self, compute_dtype: str, compile: bool = False) -> None:  # noqa: A002
        self.compute_dtype = compute_dtype
        self.compile = compile
        self.compiled: CompiledInference | None = None

    def before_test(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model.backbone = inference_model(model.backbone, self.compute_dtype)
        if self.compile:
            model.backbone = self.compiled = CompiledInference(model.backbone)

    def after_test(self, runner) -> None:
        if self.compiled is not None:
            runner.logger.info(self.compiled.summary())


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_environment()
    work_dir = args.work_dir or str(Path('work_dirs') / Path(args.config).stem / 'test')
    cfg = load_config(args.config, work_dir=work_dir, cfg_options=args.cfg_options,
                      data_root=args.data_root, launcher=args.launcher,
                      classes=args.classes, val_ann=args.val_ann, img_dir=args.img_dir)
    if not args.no_strict:  # before data is made or the Runner writes its work dir
        check_checkpoint_fits(cfg, args.checkpoint)
    prepare_data(cfg, ('test',), tool='test.py')
    cfg.load_from = args.checkpoint
    if args.json_prefix:
        evaluator = cfg.test_evaluator
        evaluator.outfile_prefix = args.json_prefix
    with process_group_closed():
        runner = build_runner(cfg, checkpoint_arg='checkpoint')
        if args.out:
            # mmdet.evaluation is heavy: only with --out
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        if args.compute_dtype != 'fp32' or args.compile:
            runner.register_hook(BackboneComputeDtypeHook(args.compute_dtype, args.compile),
                                 'LOWEST')
        return runner.test()


def run() -> None:
    """``rb-test`` / ``python tools/test.py``: :func:`main` with one-line errors."""
    run_tool(prog('test.py'), main)


if __name__ == '__main__':
    run()
