"""benchmarks/ops_coverage.py, the zoo sweep behind docs/ops_coverage.md: what it changes in a
config before running it, how it counts calls into ``mmcv._ext``, and that the committed
report is what the committed data renders to."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tool():
    spec = importlib.util.spec_from_file_location('ops_coverage',
                                                  ROOT / 'benchmarks/ops_coverage.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checkpoints_are_stripped_and_nothing_else(tool):
    model = dict(type='FasterRCNN', backbone=dict(
        type='ResNet', depth=50, init_cfg=dict(type='Pretrained', checkpoint='torchvision://x')),
        roi_head=dict(init_cfg=[dict(type='Normal', std=0.01)]), pretrained='open-mmlab://y',
        teacher_ckpt='t.pth')
    out = tool.strip_checkpoints(model)
    assert out['backbone'] == dict(type='ResNet', depth=50, init_cfg=None)
    assert out['roi_head'] == model['roi_head']  # an init that fetches nothing stays
    assert out['pretrained'] is None and out['teacher_ckpt'] is None
    assert model['backbone']['init_cfg']['type'] == 'Pretrained'  # the input is not changed


def test_score_thresholds_are_zeroed_only_in_test_cfg(tool):
    model = dict(train_cfg=dict(score_thr=0.3), test_cfg=dict(
        rpn=dict(score_thr=0.05), rcnn=dict(score_thr=0.05, nms=dict(iou_threshold=0.5))))
    out = tool.zero_score_thr(model)
    assert out['train_cfg']['score_thr'] == 0.3
    assert out['test_cfg']['rpn']['score_thr'] == 0.0
    assert out['test_cfg']['rcnn'] == dict(score_thr=0.0, nms=dict(iou_threshold=0.5))


def test_counting_proxy_counts_calls_and_missing_ops(tool):
    from resnet_backbone.ops import mmcv_ext
    counter = tool.CountingExt(mmcv_ext)
    counter.get_compiler_version()
    counter.get_compiler_version()
    with pytest.raises(NotImplementedError):
        counter.psamask_forward()
    assert counter.take() == {'get_compiler_version': 2, 'psamask_forward': 1}
    assert dict(counter.missing) == {'psamask_forward': 1}
    assert counter.take() == {}


def test_committed_report_is_the_committed_data_rendered(tool):
    data = json.loads((ROOT / 'docs/ops_coverage.json').read_text())
    md = (ROOT / 'docs/ops_coverage.md').read_text()
    assert tool.render_md(data) == md
    ok = sum(tool.passed(r) for r in data['results'])
    assert ok / len(data['results']) >= 0.95  # the target, as committed
    assert not [r['config'] for r in data['results']
                if not tool.passed(r) and tool.failure(r) and tool.failure(r).get('missing_op')]
