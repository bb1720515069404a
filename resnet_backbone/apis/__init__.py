"""What users call: feature extraction, dumping, pictures, export.

The names below are imported on first use (``from resnet_backbone.apis import Boxes``),
so that importing one light module of this package does not import mmdet.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

#: name -> the module of this package (or of a subpackage) that defines it
_EXPORTS = {'FeatureExtractor': 'features', 'PredictedBoxes': 'features',
            'Boxes': 'dump.rois', 'RoIFeatures': 'dump.rois'}
__all__ = sorted(_EXPORTS)


def lazy_names(package: str, exports: dict[str, str]
               ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose ``exports`` (name -> its
    module, relative to ``package``) are imported on first use."""

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(importlib.import_module(f'.{exports[name]}', package), name)
        raise AttributeError(f'module {package!r} has no attribute {name!r}')

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[package]), *exports])
    return __getattr__, __dir__


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
