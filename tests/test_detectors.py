"""ResNetV1Custom inside mmdet detectors (RetinaNet / Faster R-CNN R50-FPN from mmdet::)."""
from __future__ import annotations

import warnings

import pytest
import torch
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

import resnet_backbone  # noqa: F401

BASES = {
    'retinanet': 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'faster_rcnn': 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
}


def detector_cfg(base: str, tmp_path) -> Config:
    path = tmp_path / 'cfg.py'
    path.write_text(f"_base_ = '{base}'\n")
    cfg = Config.fromfile(str(path))
    backbone = cfg.model.backbone
    assert backbone.type == 'ResNet'
    backbone.type = 'ResNetV1Custom'  # every other key kept, as a user would
    backbone.pop('init_cfg')  # torchvision:// weights cannot be downloaded here
    return cfg


def tiny_batch(n: int = 2, size: int = 64):
    samples = []
    for i in range(n):
        s = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                        scale_factor=(1.0, 1.0), img_id=i))
        s.gt_instances = InstanceData(bboxes=torch.tensor([[8., 8., 40., 44.]]),
                                      labels=torch.tensor([i % 3]))
        samples.append(s)
    inputs = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8) for _ in range(n)]
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('name', list(BASES))
def test_detector_train_step_with_resnetv1custom(name, tmp_path):
    register_all_modules(init_default_scope=False)
    cfg = detector_cfg(BASES[name], tmp_path)
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'ResNetV1Custom'
    assert list(model.backbone.out_channels) == list(cfg.model.neck.in_channels)
    model.init_weights()
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        data = model.data_preprocessor(tiny_batch(), True)
        losses = model(**data, mode='loss')
        total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v)
                    for k, v in losses.items() if 'loss' in k)
        total.backward()
    ours = [w for w in caught if 'resnet_backbone' in str(w.filename)]
    assert not ours, [str(w.message) for w in ours]
    assert torch.isfinite(total)
    bb = model.backbone
    assert bb.frozen_stages == 1
    assert all(p.grad is None for p in bb.layer1.parameters())
    assert all(p.grad is not None for p in bb.layer4.parameters() if p.requires_grad)
