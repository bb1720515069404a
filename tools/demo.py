"""Quick-start job (interim): train a RetinaNet-R18-FPN whose backbone is ResNetV1Custom.

This is the smaller real job the README's first command runs until the embedded data
set, the training tool and COCO evaluation land (issue 4). It builds mmdet's own
``retinanet_r50_fpn_1x_coco`` config with ``type='ResNetV1Custom', depth=18``, draws a
small fixed set of synthetic images (bright rectangles of 3 classes on noise), trains
on them for a few dozen SGD steps on the CPU, and prints the losses, which fall.

    .venv/bin/python tools/demo.py [--iters 40] [--size 128]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

import resnet_backbone  # noqa: F401  (registers ResNetV1Custom)
from resnet_backbone.compat import silence_dependency_warnings


def synthetic_batch(n: int, size: int, seed: int) -> dict:
    """n noisy images, each with 1-2 filled rectangles; class = colour channel."""
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for i in range(n):
        img = rng.integers(0, 60, (3, size, size), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(rng.integers(1, 3)):
            w, h = rng.integers(size // 5, size // 2, 2)
            x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
            c = int(rng.integers(0, 3))
            img[c, y0:y0 + h, x0:x0 + w] = 230
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(c)
        s = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                        scale_factor=(1.0, 1.0), img_id=i))
        s.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                                      labels=torch.tensor(labels))
        inputs.append(torch.from_numpy(img))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=40, help='SGD steps (default 40)')
    parser.add_argument('--size', type=int, default=128, help='image size (default 128)')
    parser.add_argument('--batch', type=int, default=4, help='batch size (default 4)')
    args = parser.parse_args()
    torch.manual_seed(0)
    silence_dependency_warnings()
    # mmengine logs one INFO line per parameter when a model is initialised outside a
    # Runner; a WARNING-level current logger keeps this job's output to its own lines.
    MMLogger.get_instance('resnet_backbone_demo', log_level='WARNING')
    register_all_modules(init_default_scope=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'cfg.py'
        path.write_text("_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
                        "model = dict(\n"
                        "    backbone=dict(_delete_=True, type='ResNetV1Custom', depth=18,\n"
                        "                  frozen_stages=-1, norm_eval=False),\n"
                        "    neck=dict(in_channels=[64, 128, 256, 512]),\n"
                        "    bbox_head=dict(num_classes=3))\n")
        cfg = Config.fromfile(str(path))
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optim = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    batch = synthetic_batch(args.batch, args.size, seed=0)
    print(f'RetinaNet-R18-FPN with ResNetV1Custom, {args.batch} synthetic images of '
          f'{args.size}px, {args.iters} SGD steps on the CPU')
    t0 = time.time()
    first = last = None
    for it in range(1, args.iters + 1):
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode='loss')
        loss, log_vars = model.parse_losses(losses)
        optim.zero_grad()
        loss.backward()
        optim.step()
        first = first if first is not None else loss.item()
        last = loss.item()
        if it == 1 or it % 10 == 0 or it == args.iters:
            print(f'iter {it:4d}/{args.iters}  loss {loss.item():.4f}  '
                  f"(cls {log_vars['loss_cls']:.4f}, bbox {log_vars['loss_bbox']:.4f})"
                  f'  {time.time() - t0:.1f} s')
    print(f'loss {first:.4f} -> {last:.4f} ({last / first:.2f}x) in {time.time() - t0:.1f} s')


if __name__ == '__main__':
    main()
