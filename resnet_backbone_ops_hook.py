"""Makes ``import mmcv._ext`` find resnet_backbone's torchvision-backed ops when mmcv has no
compiled ones (mmcv-lite, the default install: no compiler needed).

``resnet_backbone_ops_hook.pth``, installed into site-packages with this project, imports
this module at every interpreter start, so the hook is there whatever imports mmcv first:
mmdet's own tools, pytest, DataLoader workers, subprocesses, torchrun ranks. It appends a
finder to ``sys.meta_path``: Python's own path finder runs first, so a compiled
``mmcv._ext`` always wins; the finder answers only for ``mmcv._ext`` and only when that
finds nothing. Standard library only, and nothing is imported until mmcv asks
(docs/ops.md says why this seam).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

NAME = 'mmcv._ext'


def implementation() -> str | None:
    """The file loaded as ``mmcv._ext`` (``resnet_backbone/ops/mmcv_ext.py``), found
    without importing the package."""
    spec = importlib.util.find_spec('resnet_backbone')
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], 'ops', 'mmcv_ext.py')
    return path if os.path.exists(path) else None


class TorchvisionOpsFinder(importlib.abc.MetaPathFinder):
    """Answers ``mmcv._ext`` with resnet_backbone's implementation; asked only after
    Python's path finder found no compiled one."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        impl = implementation()
        if impl is None:
            return None
        return importlib.util.spec_from_file_location(NAME, impl)


def install() -> None:
    if not any(isinstance(f, TorchvisionOpsFinder) for f in sys.meta_path):
        sys.meta_path.append(TorchvisionOpsFinder())


install()
