"""Every config in configs/ builds and runs one training iteration on the embedded data, and
builds from mmdet's registry through its own ``custom_imports`` (as mmdet's tools/train.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from resnet_backbone.data.shapes import CLASSES
from resnet_backbone.engine.training import load_config, setup_environment

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)


def _set_num_classes(node, n):
    if isinstance(node, dict):
        if 'num_classes' in node:
            node['num_classes'] = n
        for v in node.values():
            _set_num_classes(v, n)
    elif isinstance(node, list):
        for v in node:
            _set_num_classes(v, n)


def shrink_for_test(cfg, data_root):
    """Tiny images, the embedded classes, no downloads, batch 2, no worker processes."""
    _set_num_classes(cfg.model, len(CLASSES))
    cfg.model.backbone.init_cfg = None  # pretrained URLs cannot be fetched here
    loader = cfg.train_dataloader
    loader.batch_size, loader.num_workers, loader.persistent_workers = 2, 0, False
    loader.dataset.metainfo = dict(classes=CLASSES)
    loader.dataset.data_root = str(data_root) + '/'
    loader.dataset.ann_file = 'annotations/instances_train.json'
    loader.dataset.data_prefix = dict(img='train/')
    loader.dataset.filter_cfg = dict(filter_empty_gt=True, min_size=1)
    for t in loader.dataset.pipeline:
        if t['type'] in ('Resize', 'RandomResize', 'RandomChoiceResize'):
            t.clear()
            t.update(type='Resize', scale=(64, 64), keep_ratio=True)


def test_every_config_is_listed():
    assert len(CONFIGS) >= 9
    names = ' '.join(CONFIGS)
    for part in ('retinanet', 'faster-rcnn', 'mask-rcnn', 'v1c', 'v1d', 'with-cp', 'shapes'):
        assert part in names


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds_and_trains_one_iteration(config, tiny_shapes):
    setup_environment()
    cfg = load_config(str(ROOT / config))
    assert cfg.model.backbone.type in ('ResNetV1Custom', 'ResNeXtCustom', 'ResNetV2Custom')
    shrink_for_test(cfg, tiny_shapes)
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        model = MODELS.build(cfg.model)
        model.init_weights()
        loader = Runner.build_dataloader(cfg.train_dataloader)
        optim = build_optim_wrapper(model, cfg.optim_wrapper)
        before = [p.detach().clone() for p in model.backbone.parameters() if p.requires_grad]
        log_vars = model.train_step(next(iter(loader)), optim)
    assert torch.isfinite(log_vars['loss'])
    after = [p for p in model.backbone.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), 'backbone did not train'


# Run in a fresh interpreter that has never imported resnet_backbone: only each config's
# own ``custom_imports`` may bring it in, as with mmdet's tools/train.py. The first config
# proves that the import registers ResNetV1Custom; every config must carry the same key.
_FRESH = r'''
import json, sys
from mmengine.config import Config
from mmengine.registry import DefaultScope
assert 'resnet_backbone' not in sys.modules, 'imported before any config'
built = {}
for path in sys.argv[1:]:
    cfg = Config.fromfile(path)  # imports custom_imports, as mmdet's tools/train.py does
    imports = cfg.get('custom_imports', {})
    if 'resnet_backbone' not in imports.get('imports', ()) or 'resnet_backbone' not in sys.modules:
        sys.exit(f'{path}: no custom_imports of resnet_backbone')
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
        from mmdet.registry import MODELS
        model = MODELS.build(cfg.model)
    built[path] = type(model.backbone).__module__
print(json.dumps(built))
'''


def test_every_config_builds_through_its_custom_imports_alone():
    """mmdet's own tools read a config with ``Config.fromfile`` and build its model from
    mmdet's registry; ResNetV1Custom is there only if the config imports the package."""
    r = subprocess.run([sys.executable, '-c', _FRESH, *CONFIGS], capture_output=True,
                       text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    built = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(built) == CONFIGS
    assert set(built.values()) == {'resnet_backbone.models.resnet',
                                   'resnet_backbone.models.resnet_v2'}, built
