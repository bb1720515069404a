"""The main job: train a detector with ResNetV1Custom + FPN on the embedded data set.

    python tools/demo.py [--config CONFIG] [--work-dir DIR] [--iters N] [--seed S] [--fresh]

Installed as ``rb-demo`` (same arguments); ``python tools/demo.py`` runs the same code.

1. generates the embedded shapes data set (seconds; skipped when up to date);
2. trains the config (default: RetinaNet + FPN, ResNetV1Custom-18, from scratch) with
   mmengine's Runner, logging progress, seeded (``--seed``, default 0) and deterministic:
   the same seed on the same machine gives the same mAP. A run that was stopped resumes
   from the newest complete checkpoint in the work dir, and says so (``--fresh`` starts
   over);
3. evaluates the final checkpoint with mmdet's COCO metric and prints bbox mAP and
   mAP@0.5;
4. saves ``<work-dir>/predictions.png``: val images with the predicted boxes.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..apis.visualize import prediction_sheet
from ..data.shapes import generate
from ..engine.training import (
    apply_train_options,
    build_runner,
    check_resume_schedule,
    load_config,
    saved_progress,
    set_max_iters,
    setup_environment,
)
from ..errors import ToolError
from ..io.checkpoint_io import resumable_checkpoints
from . import prog
from .runner import ToolParser, run_tool

#: the checkout this package runs from (an editable install): configs/, data/, work_dirs/
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py'
SEED = 0


#: what a demo run was started with, in its work dir: a re-run resumes only the same run
RUN_STAMP = 'demo_run.json'


def check_same_run(stamp: Path, run: dict, work_dir: str) -> None:
    """One line unless the work dir's checkpoints come from a run of this config, seed and
    data (a re-run with another config or seed evaluated the other run's weights)."""
    try:
        saved = json.loads(stamp.read_text())
    except (OSError, ValueError):
        saved = {}
    differs = [k.replace('_sha256', '') for k in run if saved.get(k) != run[k]]
    if differs:
        raise ToolError(f'{work_dir} holds checkpoints of another demo run (its '
                        f'{", ".join(differs)} differ{"s" if len(differs) == 1 else ""} or '
                        f'{RUN_STAMP} is missing); give --fresh to start over there, or '
                        'another --work-dir')


def main(argv=None) -> dict:
    p = ToolParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default=str(DEFAULT_CONFIG))
    p.add_argument('--work-dir', default=str(ROOT / 'work_dirs/demo'))
    p.add_argument('--data-root', default=str(ROOT / 'data/shapes'))
    p.add_argument('--iters', type=int, help="training iterations (default: the config's)")
    p.add_argument('--seed', type=int, default=SEED,
                   help=f'random seed of the weights, sampling and augmentation (default '
                        f'{SEED}); the same seed gives the same result on the same machine')
    p.add_argument('--fresh', action='store_true',
                   help='start over instead of resuming from a checkpoint in the work dir')
    args = p.parse_args(argv)
    if not Path(args.config).is_file():
        raise ToolError(f'config {args.config}: no such file; run the demo from a checkout '
                        "installed with 'bash tools/setup.sh', or pass --config")

    t0 = time.time()
    generate(args.data_root)
    print(f'[demo] embedded data set ready at {args.data_root} ({time.time() - t0:.1f} s)')

    setup_environment()
    cfg = load_config(args.config, work_dir=args.work_dir, data_root=args.data_root)
    if args.iters:
        set_max_iters(cfg, args.iters)
    cfg.train_cfg.val_interval = cfg.train_cfg.max_iters + 1  # evaluate once, below
    # deterministic: mmengine's torch.use_deterministic_algorithms; on the CPU every op
    # the demo runs has a deterministic kernel, and the data workers are seeded
    cfg.randomness = dict(seed=args.seed, deterministic=True)
    finished = False
    run = {'config_sha256': hashlib.sha256(Path(args.config).read_bytes()).hexdigest(),
           'seed': args.seed, 'data_root': str(Path(args.data_root).resolve())}
    stamp = Path(args.work_dir) / RUN_STAMP
    if not args.fresh and any(resumable_checkpoints(args.work_dir)):
        check_same_run(stamp, run, args.work_dir)
        apply_train_options(cfg, resume='auto')
    if cfg.get('resume'):
        it = saved_progress(cfg.load_from)[0] or 0
        max_iters = cfg.train_cfg.max_iters
        if it > max_iters:
            raise ToolError(f'{cfg.load_from} is at iteration {it}, past --iters {max_iters}; '
                            f'give --iters {it} or more, or --fresh to start over')
        finished = it == max_iters
        print(f'[demo] {Path(cfg.load_from).name} is already trained; evaluating it'
              if finished else f'[demo] resuming from {cfg.load_from} (iteration {it} of '
              f'{max_iters}; --fresh starts over)', flush=True)
        if finished:  # evaluate its weights (no optimizer state needed)
            cfg.resume = False
        else:
            check_resume_schedule(cfg, tool='demo.py')  # a saved schedule of another length
    else:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(run, indent=1) + '\n')
    t_train = time.time()
    runner = build_runner(cfg)
    if not finished:
        runner.train()
    train_s = time.time() - t_train
    metrics = runner.test()
    total_s = time.time() - t0

    ckpt = Path(cfg.load_from) if finished else \
        Path(args.work_dir) / f'iter_{cfg.train_cfg.max_iters}.pth'
    val_dir = Path(args.data_root) / 'val'
    sheet = prediction_sheet(cfg, str(ckpt), sorted(val_dir.glob('*.png'))[:6],
                             Path(args.work_dir) / 'predictions.png')
    print('\n[demo] ==== result ====')
    print(f'[demo] config      {Path(args.config).name}')
    print(f'[demo] training    {cfg.train_cfg.max_iters} iterations in {train_s / 60:.1f} min'
          f' (seed {args.seed})')
    if 'coco/bbox_mAP' in metrics:
        print(f"[demo] bbox mAP    {metrics['coco/bbox_mAP']:.3f}")
        print(f"[demo] bbox mAP@50 {metrics['coco/bbox_mAP_50']:.3f}")
    else:  # mmdet's metric returns nothing when no box passed the score threshold
        print('[demo] bbox mAP    0.000 (no box above the score threshold: train longer)')
    print(f'[demo] predictions {sheet}')
    print(f'[demo] total wall  {total_s / 60:.1f} min')
    return metrics


def run() -> None:
    """``rb-demo`` / ``python tools/demo.py``: :func:`main` with one-line errors."""
    run_tool(prog('demo.py'), main)


if __name__ == '__main__':
    run()
