"""tools/train.py + tools/test.py end to end on the embedded data, a handful of iterations."""
from __future__ import annotations

import json
import math
import pickle

import torch

from .conftest import CONFIG, run_tool, tiny_options


def test_train_then_evaluate(tiny_shapes, tmp_path):
    work = tmp_path / 'work'
    # --max-iters scales the LR schedule to the run (train_cfg.max_iters alone would warn)
    r = run_tool('train.py', CONFIG, '--work-dir', str(work), '--data-root', str(tiny_shapes),
                 '--max-iters', '4', *tiny_options(4))
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert 'Iter(train) [4/4]' in log
    assert 'coco/bbox_mAP' in log
    # no warning of ours or our dependencies in a standard run
    assert 'Warning' not in log and 'WARNING' not in log, [
        line for line in log.splitlines() if 'arn' in line]
    ckpt = work / 'iter_4.pth'
    assert ckpt.is_file()
    preds = tmp_path / 'preds.pkl'
    r = run_tool('test.py', CONFIG, str(ckpt), '--work-dir', str(tmp_path / 'test'),
                 '--data-root', str(tiny_shapes), '--out', str(preds), '--json-prefix',
                 str(tmp_path / 'res'), '--cfg-options', 'test_dataloader.num_workers=0',
                 'test_dataloader.persistent_workers=False', 'model.test_cfg.score_thr=0.0')
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in (r.stdout + r.stderr).splitlines() if 'coco/bbox_mAP:' in ln)
    value = float(line.split('coco/bbox_mAP:')[1].split()[0])
    assert math.isfinite(value) and 0.0 <= value <= 1.0
    with open(preds, 'rb') as f:
        dumped = pickle.load(f)
    assert len(dumped) == 4 and 'pred_instances' in dumped[0]
    assert isinstance(json.loads((tmp_path / 'res.bbox.json').read_text()), list)
    meta = torch.load(ckpt, weights_only=True)['meta']
    assert meta['iter'] == 4


RESNEXT = CONFIG.replace('retinanet_r18_fpn_shapes.py', 'retinanet_x50-8x4d_fpn_shapes.py')


def test_resnext_config_trains_and_evaluates(tiny_shapes, tmp_path):
    """The ResNeXtCustom RetinaNet config: a few iterations, then the COCO evaluation."""
    work = tmp_path / 'work'
    r = run_tool('train.py', RESNEXT, '--work-dir', str(work), '--data-root', str(tiny_shapes),
                 '--max-iters', '4', *tiny_options(4))
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert 'Iter(train) [4/4]' in log and 'coco/bbox_mAP' in log
    state = torch.load(work / 'iter_4.pth', weights_only=True)['state_dict']
    assert state['backbone.layer1.0.conv2.weight'].shape == (32, 4, 3, 3)  # 8 groups x 4


RESNET_V2 = CONFIG.replace('retinanet_r18_fpn_shapes.py', 'retinanet_r50v2_fpn_shapes.py')


def test_resnet_v2_config_trains_and_evaluates(tiny_shapes, tmp_path):
    """The ResNetV2Custom RetinaNet config: a few iterations, then the COCO evaluation,
    with no warning in the log."""
    work = tmp_path / 'work'
    r = run_tool('train.py', RESNET_V2, '--work-dir', str(work), '--data-root',
                 str(tiny_shapes), '--max-iters', '4', *tiny_options(4))
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert 'Iter(train) [4/4]' in log and 'coco/bbox_mAP' in log
    assert 'Warning' not in log and 'WARNING' not in log, [
        line for line in log.splitlines() if 'arn' in line]
    state = torch.load(work / 'iter_4.pth', weights_only=True)['state_dict']
    assert state['backbone.layer1.0.bn0.weight'].shape == (16,)  # the preact norm
    assert 'backbone.layer4.2.conv3.bias' not in state  # 'first' layout: no biases


def test_bad_arguments_fail_in_one_line(tmp_path):
    r = run_tool('test.py', CONFIG, str(tmp_path / 'missing.pth'))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith("checkpoint '" + str(
        tmp_path / 'missing.pth') + "': no such file")
    r = run_tool('train.py', CONFIG, '--resume', str(tmp_path / 'nope.pth'),
                 '--work-dir', str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith('nope.pth: no such checkpoint file')
