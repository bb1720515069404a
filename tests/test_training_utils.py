"""Config helpers shared by the tools: data root, schedule length, train options."""
from __future__ import annotations

from pathlib import Path

import pytest

from resnet_backbone.training import apply_train_options, load_config, set_data_root, set_max_iters

ROOT = Path(__file__).resolve().parents[1]
SHAPES = str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py')


def test_set_data_root_moves_datasets_and_evaluators():
    cfg = load_config(SHAPES)
    set_data_root(cfg, '/elsewhere/coco')
    assert cfg.train_dataloader.dataset.data_root == '/elsewhere/coco/'
    assert cfg.val_dataloader.dataset.data_root == '/elsewhere/coco/'
    assert cfg.val_evaluator.ann_file == '/elsewhere/coco/annotations/instances_val.json'
    assert cfg.test_evaluator.ann_file == '/elsewhere/coco/annotations/instances_val.json'


def test_set_max_iters_stretches_the_schedule():
    cfg = load_config(SHAPES)
    old = cfg.train_cfg.max_iters
    set_max_iters(cfg, 300)
    assert cfg.train_cfg.max_iters == cfg.train_cfg.val_interval == 300
    warmup, cosine = cfg.param_scheduler
    assert warmup.end == 50 and cosine.end == 300 and cosine.T_max == 250
    assert old != 300
    with pytest.raises(ValueError, match='^max_iters must be >= 1; got 0$'):
        set_max_iters(cfg, 0)


def test_train_options():
    cfg = load_config(SHAPES, work_dir='/tmp/nonexistent-work-dir-xyz')
    apply_train_options(cfg, auto_scale_lr=True, resume='auto')
    assert cfg.auto_scale_lr.enable is True
    assert cfg.resume is False  # nothing to resume from: starts fresh, says so
    cfg.pop('auto_scale_lr')
    with pytest.raises(ValueError, match=r'^--auto-scale-lr needs `auto_scale_lr'):
        apply_train_options(cfg, auto_scale_lr=True)


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='CPU-only behaviour')
def test_amp_on_cpu_is_a_one_line_error():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(ROOT / 'tools/train.py'), SHAPES, '--amp',
                        '--work-dir', '/tmp/nonexistent-work-dir-xyz'],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "train.py: error: --amp needs a CUDA GPU (mmengine's AmpOptimWrapper refuses the CPU); "
        'this machine has none, so drop --amp']
