"""Train the same detector with mmdet's ResNet and with ours, and compare loss and mAP.

    python benchmarks/compare_training.py [--iters 600] [--out docs/detection_default]
        [--config configs/shapes/retinanet_r18_fpn_shapes.py] [--frozen-stages 1]

Runs ``tools/train.py`` once per backbone setting, seeded and deterministic, in the
detection default (``frozen_stages=1, norm_eval=True``): mmdet's ``ResNet`` (two seeds,
to show how far two equally valid runs drift apart), ours in reference mode, ours fast,
and ours fast with ``with_cp``. Writes ``OUT.md`` (final mAP, loss at checkpoints of the
run) and ``OUT.png`` (loss curves). Each run takes minutes on a CPU; the runs go one
after the other, so the timings compare too.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNS = {  # name -> (seed, extra --cfg-options)
    'mmdet': (0, ['model.backbone.type=ResNet']),
    'mmdet seed 1': (1, ['model.backbone.type=ResNet']),
    'ours reference': (0, ['model.backbone.fast=False']),
    'ours fast': (0, ['model.backbone.fast=True']),
    'ours fast + with_cp': (0, ['model.backbone.fast=True', 'model.backbone.with_cp=True']),
}


def _schedule(iters: int) -> list[str]:
    """The shapes schedule (linear warm-up to 50, cosine to the end) stretched to ``iters``."""
    return [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'param_scheduler.1.end={iters}', f'param_scheduler.1.T_max={iters - 50}',
            f'default_hooks.checkpoint.interval={iters}']


def _scalars(work: Path) -> tuple[list[tuple[int, float]], dict]:
    files = sorted(work.glob('*/vis_data/scalars.json'))
    losses, metrics = [], {}
    for line in files[-1].read_text().splitlines():
        rec = json.loads(line)
        if 'loss' in rec:
            losses.append((int(rec['iter']), float(rec['loss'])))
        if 'coco/bbox_mAP' in rec:
            metrics = {k: v for k, v in rec.items() if k.startswith('coco/')}
    return losses, metrics


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default=str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py'))
    p.add_argument('--iters', type=int, default=600)
    p.add_argument('--frozen-stages', type=int, default=1)
    p.add_argument('--work-dir', default=str(ROOT / 'work_dirs/compare_training'))
    p.add_argument('--out', default=str(ROOT / 'docs/detection_default'))
    p.add_argument('--runs', default=','.join(RUNS), help='comma-separated subset of the runs')
    a = p.parse_args(argv)
    results = {}
    for name in a.runs.split(','):
        seed, extra = RUNS[name]
        work = Path(a.work_dir) / name.replace(' ', '_').replace('+', 'cp')
        cmd = [sys.executable, str(ROOT / 'tools/train.py'), a.config, '--work-dir', str(work),
               '--cfg-options', *_schedule(a.iters), f'randomness.seed={seed}',
               'randomness.deterministic=True', f'model.backbone.frozen_stages={a.frozen_stages}',
               f'model.backbone.norm_eval={a.frozen_stages >= 0}',
               'default_hooks.logger.interval=10', *extra]
        print(f'[compare] {name}: {" ".join(cmd[2:])}', file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f'compare_training.py: error: run {name!r} failed: '
                     f'{(r.stderr.strip().splitlines() or ["?"])[-1]}')
        losses, metrics = _scalars(work)
        results[name] = dict(losses=losses, metrics=metrics,
                             minutes=(time.perf_counter() - t0) / 60)
        print(f'[compare] {name}: bbox mAP {metrics.get("coco/bbox_mAP")}, '
              f'{results[name]["minutes"]:.1f} min', file=sys.stderr, flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps(results, indent=1))
    logged = sorted(dict(next(iter(results.values()))['losses']))
    marks = sorted({min(logged, key=lambda i, m=m: abs(i - m))
                    for m in (1, a.iters // 4, a.iters // 2, 3 * a.iters // 4, a.iters)})
    lines = ['| run | bbox mAP | mAP@0.5 | ' + ' | '.join(f'loss @{m}' for m in marks)
             + ' | minutes |', '|---' * (len(marks) + 4) + '|']
    for name, res in results.items():
        by_iter = dict(res['losses'])
        near = [by_iter[min(by_iter, key=lambda i, m=m: abs(i - m))] for m in marks]
        m = res['metrics']
        lines.append(f'| {name} | {m.get("coco/bbox_mAP", float("nan")):.3f} | '
                     f'{m.get("coco/bbox_mAP_50", float("nan")):.3f} | '
                     + ' | '.join(f'{v:.4f}' for v in near) + f' | {res["minutes"]:.1f} |')
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, res in results.items():
        it, loss = zip(*res['losses'])
        ax.plot(it, loss, label=f'{name} (mAP {res["metrics"].get("coco/bbox_mAP", 0):.3f})',
                lw=1)
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss')
    ax.set_title(f'RetinaNet R18, frozen_stages={a.frozen_stages}, norm_eval: loss per backbone')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix('.png'), dpi=110)
    print(f'wrote {out.with_suffix(".md")}, {out.with_suffix(".png")}')


if __name__ == '__main__':
    main()
