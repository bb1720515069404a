"""engine/compat: the dependency notices our tools drop, and only those."""
from __future__ import annotations

import warnings

import mmdet.utils

from resnet_backbone.engine import compat


def test_register_mmdet_modules_drops_only_onedls_optional_extra_notices(monkeypatch, capsys):
    """onedl-mmdetection 3.5.1 prints 'Could not import OneDL...' (twice) and warns
    'faster_coco_eval is not installed' when its registries load: in the STACK=onedl row
    every tool's first lines, and 10 tests failed on them. Those go; any other line or
    warning of the import stays."""
    def onedl_like(init_default_scope: bool = True) -> None:
        print(compat.ONEDL_OPTIONAL_PRINTED)
        print('a line of its own')
        print(compat.ONEDL_OPTIONAL_PRINTED)
        warnings.warn('faster_coco_eval is not installed, metrics will not be computed. '
                      'Please install it by: mim install onedl-mmdetection[optional]',
                      stacklevel=1)
        warnings.warn('another warning', stacklevel=1)

    monkeypatch.setattr(mmdet.utils, 'register_all_modules', onedl_like)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        compat.register_mmdet_modules()
    assert [str(w.message) for w in seen] == ['another warning']
    assert capsys.readouterr().out == 'a line of its own\n'

