"""What users call: feature extraction, dumping, pictures, export, benchmark.

The names below are imported on first use (``from resnet_backbone.apis import Boxes``),
so that importing one light module of this package does not import mmdet.
"""
from __future__ import annotations

import importlib

#: name -> the module of this package (or of a subpackage) that defines it
_EXPORTS = {'FeatureExtractor': 'features', 'PredictedBoxes': 'features',
            'Boxes': 'dump.rois', 'RoIFeatures': 'dump.rois'}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
