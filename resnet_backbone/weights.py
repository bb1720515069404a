"""Weight conversion between ResNet dialects and ``ResNetV1Custom`` keys.

torchvision, timm ``resnet*`` and mmdet's ``ResNet`` share one key layout
(``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ``layer1.0.downsample.0/1``),
which is also ours for ``stem_type='classic'``; only the classifier (``fc.*``) is dropped.

timm's deep-stem models (``resnet50c``/``resnet50d``) keep the stem as
``conv1 = Sequential(conv, bn, act, conv, bn, act, conv)`` plus a top-level ``bn1``;
ours (and mmdet's ``deep_stem``) is ``stem = Sequential(conv, bn, relu, conv, bn, relu,
conv, bn, relu)``. The documented mapping:

==================  ==================
timm                ResNetV1Custom
==================  ==================
``conv1.0.weight``  ``stem.0.weight``
``conv1.1.*``       ``stem.1.*``
``conv1.3.weight``  ``stem.3.weight``
``conv1.4.*``       ``stem.4.*``
``conv1.6.weight``  ``stem.6.weight``
``bn1.*``           ``stem.7.*``
==================  ==================

timm's ``avg_down`` shortcut is ``downsample = (pool or Identity, conv, bn)``, the same
indices as mmdet's ``(AvgPool, conv, norm)``, so ``layerN.0.downsample.1/2`` map 1:1.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_TIMM_DEEP_STEM = {'conv1.0.': 'stem.0.', 'conv1.1.': 'stem.1.', 'conv1.3.': 'stem.3.',
                   'conv1.4.': 'stem.4.', 'conv1.6.': 'stem.6.', 'bn1.': 'stem.7.'}
_HEAD = re.compile(r'^(fc|head|classifier)\.')


def is_timm_deep_stem(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for timm deep-stem checkpoints (``conv1.0.weight`` instead of ``conv1.weight``)."""
    return 'conv1.0.weight' in state_dict and 'conv1.weight' not in state_dict


def from_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``resnet*`` (classic or deep stem) -> ``ResNetV1Custom`` keys, head dropped."""
    deep = is_timm_deep_stem(state_dict)
    out = {}
    for key, value in state_dict.items():
        if _HEAD.match(key):
            continue
        if deep:
            for old, new in _TIMM_DEEP_STEM.items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
        out[key] = value
    return out


def from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``resnet*`` -> ``ResNetV1Custom`` keys (same layout), ``fc.*`` dropped."""
    return {k: v for k, v in state_dict.items() if not _HEAD.match(k)}
