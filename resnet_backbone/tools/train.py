"""Train a detector from an mmdet config (mmengine Runner), like mmdet's tools/train.py.

    python tools/train.py configs/shapes/retinanet_r18_fpn_shapes.py [--work-dir DIR]
        [--resume [CKPT]] [--amp] [--auto-scale-lr] [--max-iters N] [--cfg-options k=v ...]
        [--data-root DIR] [--train-ann FILE --val-ann FILE --img-dir DIR]
        [--classes a,b,c] [--launcher {none,pytorch,slurm}]

Installed as ``rb-train`` (same arguments); ``python tools/train.py`` runs the same code.

Your own COCO-format data in any layout: ``--train-ann``, ``--val-ann`` and ``--img-dir``
(the folder the JSON's ``file_name`` entries are relative to), ``--classes`` for its
category names (every split, and every head's ``num_classes``). A config that points at
the embedded ``data/shapes/`` generates it on first use. ``--cfg-options`` is applied
after these flags and wins; each COCO evaluator follows its dataset's annotation file
unless you set its ``ann_file`` yourself.

``ResNetV1Custom`` is registered for you: a config of your own needs no
``custom_imports`` (this project's configs carry it for mmdet's own tools/train.py).
``--resume`` without a path resumes from the newest complete checkpoint in the work dir; a kill
loses at most one checkpoint interval. Errors end in one line (``--debug`` or
``RESNET_BACKBONE_DEBUG=1`` for the traceback); Ctrl-C exits 130 and says how to resume.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmengine.config import DictAction

from ..engine.distributed import process_group_closed
from ..engine.training import (
    add_data_arguments,
    apply_train_options,
    build_runner,
    check_data_arguments,
    check_resume_schedule,
    check_schedule,
    load_config,
    prepare_data,
    setup_environment,
)
from . import prog
from .runner import ToolParser, run_tool


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a whole number >= 1; got {text!r}')
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = ToolParser(description='Train a detector with ResNetV1Custom.',
                                epilog='--debug (or RESNET_BACKBONE_DEBUG=1): show the full '
                                       'traceback of an error')
    p.add_argument('config', help='config file path')
    p.add_argument('--work-dir', help='where logs and checkpoints go')
    p.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CKPT',
                   help='resume from CKPT, or (no value) from the newest complete '
                        'checkpoint in the work dir')
    p.add_argument('--amp', action='store_true', help='automatic mixed precision')
    p.add_argument('--auto-scale-lr', action='store_true',
                   help='scale the LR by total batch size / auto_scale_lr.base_batch_size')
    p.add_argument('--max-iters', type=positive_int, metavar='N',
                   help='train for N iterations, the LR schedule scaled to match (the '
                        'warm-up kept in iterations, at most a quarter of the run; later '
                        'phases kept while they fit, else scaled by N / the config\'s '
                        'max_iters); setting train_cfg.max_iters in --cfg-options does not '
                        'scale it, and a WARNING says so. With --resume the saved schedule '
                        'is restored, not rescaled (a WARNING line says so)')
    add_data_arguments(p)
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config keys, e.g. optim_wrapper.optimizer.lr=5e-4; '
                        'applied after the other flags, so it wins')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not Path(args.config).is_file():
        p.error(f'config {args.config!r}: no such file')
    if args.resume not in (None, 'auto') and not Path(args.resume).is_file():
        p.error(f'--resume {args.resume}: no such checkpoint file')
    check_data_arguments(p, args)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_environment()
    cfg = load_config(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
                      data_root=args.data_root, launcher=args.launcher,
                      classes=args.classes, train_ann=args.train_ann, val_ann=args.val_ann,
                      img_dir=args.img_dir, max_iters=args.max_iters)
    try:
        apply_train_options(cfg, amp=args.amp, auto_scale_lr=args.auto_scale_lr,
                            resume=args.resume)
    except ValueError as exc:  # a bad option: one line, not a traceback
        sys.exit(f'train.py: error: {exc}')
    prepare_data(cfg, ('train', 'val'), tool='train.py')  # makes data/shapes/ if missing
    check_schedule(cfg, tool='train.py')
    if not check_resume_schedule(cfg, tool='train.py'):
        return  # the run is already finished: said in one line
    with process_group_closed():
        build_runner(cfg).train()


def run() -> None:
    """``rb-train`` / ``python tools/train.py``: :func:`main` with one-line errors."""
    run_tool(prog('train.py'), main, resume_hint='re-run the same command with --resume to '
                                                 'continue from the last complete checkpoint')


if __name__ == '__main__':
    run()
