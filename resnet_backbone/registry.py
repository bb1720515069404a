"""Registry glue: make ``type='ResNetV1Custom'`` resolve in MMDetection configs.

Importing :mod:`resnet_backbone` runs this. It registers the backbones into mmdet's
``MODELS`` (found under ``default_scope='mmdet'``) when mmdet is installed, and into
mmengine's root ``MODELS`` otherwise. ``mmdet.registry`` is a light module: it does
not import ``mmdet.models`` nor ``mmcv.ops``.

It also adds a child registry with scope ``resnet_backbone``, so the fully-qualified
``type='resnet_backbone.ResNetV1Custom'`` resolves from any scope.
"""
from __future__ import annotations

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

from .resnet import ResNetV1cCustom, ResNetV1Custom, ResNetV1dCustom

try:
    from mmdet.registry import MODELS as PARENT
except ImportError:  # mmdet is optional for the bare backbone
    PARENT = MMENGINE_MODELS

MODELS = Registry('model', parent=PARENT, scope='resnet_backbone',
                  locations=['resnet_backbone'])

BACKBONES = (ResNetV1Custom, ResNetV1cCustom, ResNetV1dCustom)
for _cls in BACKBONES:
    for _registry in (PARENT, MODELS):
        if _cls.__name__ not in _registry.module_dict:
            _registry.register_module(module=_cls)
