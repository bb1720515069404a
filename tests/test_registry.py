"""ResNetV1Custom resolves in mmdet's registry in every way a config can name it."""
from __future__ import annotations

import subprocess
import sys

from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT
from mmengine.registry import DefaultScope

import resnet_backbone


def test_resolves_under_default_scope_mmdet():
    with DefaultScope.overwrite_default_scope('mmdet'):
        for name in ('ResNetV1Custom', 'ResNetV1cCustom', 'ResNetV1dCustom'):
            model = MODELS.build(dict(type=name, depth=18, base_channels=4))
            assert type(model).__name__ == name


def test_fully_qualified_type_string():
    for registry in (MODELS, ROOT):
        model = registry.build(dict(type='resnet_backbone.ResNetV1Custom', depth=18,
                                    base_channels=4))
        assert isinstance(model, resnet_backbone.ResNetV1Custom)


def test_custom_imports_in_a_fresh_process(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("custom_imports = dict(imports=['resnet_backbone'], "
                   "allow_failed_imports=False)\n"
                   "default_scope = 'mmdet'\n"
                   "model = dict(type='ResNetV1Custom', depth=18, base_channels=4)\n")
    code = ('import sys\n'
            'from mmengine.config import Config\n'
            'from mmengine.registry import init_default_scope\n'
            f'cfg = Config.fromfile({str(cfg)!r})\n'
            'assert "resnet_backbone" in sys.modules\n'
            'init_default_scope(cfg.default_scope)\n'
            'from mmdet.registry import MODELS\n'
            'print(type(MODELS.build(cfg.model)).__name__)\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'ResNetV1Custom'


def test_config_dict_roundtrip():
    cfg = Config(dict(model=dict(type='ResNetV1Custom', depth=50, deep_stem=True,
                                 avg_down=True)))
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    assert model.stem_type == 'deep' and model.avg_down


def test_resnext_keys_on_resnet_name_resnext():
    """Issue 29, finding 12: ``groups=32, base_width=4`` on ResNetV1Custom said only
    'unknown key' (the README's variants table listed them as its keywords)."""
    import pytest

    from resnet_backbone.registry import check_backbone_kwargs
    with pytest.raises(ValueError) as info:
        check_backbone_kwargs('ResNetV1Custom', dict(depth=50, groups=32, base_width=4))
    msg = str(info.value)
    assert msg.startswith("model.backbone.groups: unknown key for ResNetV1Custom; groups is "
                          "ResNeXt's: use type='ResNeXtCustom'; model.backbone.base_width: "
                          "unknown key for ResNetV1Custom; base_width is ResNeXt's: use "
                          "type='ResNeXtCustom'")
    check_backbone_kwargs('ResNeXtCustom', dict(depth=50, groups=32, base_width=4))
