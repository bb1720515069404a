"""The public surface: what users import, register, and type stays as it is.

Frozen lists, so that a reorganisation of the package (issue: the house) cannot drop or
rename a public name, a registry entry, a command or one of its flags. A change here is
a change users see: make it on purpose, and say so in the changelog.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

PACKAGE_ALL = ['ARCH_SETTINGS', 'BasicBlock', 'Bottleneck', 'BottleneckX', 'DropPath',
               'FrozenBatchNorm2d', 'PreActBottleneck', 'ResLayer', 'ResNeXtCustom',
               'ResNetV1Custom', 'ResNetV1cCustom', 'ResNetV1dCustom', 'ResNetV2Custom',
               'ShapeSpec']
APIS_ALL = ['Boxes', 'FeatureExtractor', 'PredictedBoxes', 'RoIFeatures']
REGISTERED = ['ResNeXtCustom', 'ResNetV1Custom', 'ResNetV1cCustom', 'ResNetV1dCustom',
              'ResNetV2Custom']
#: module paths that configs and docs name (custom_imports, python -m, from ... import)
MODULE_NAMES = {
    'resnet_backbone.engine.mmdet_tools': [],
    'resnet_backbone.options': ['using'],
    'resnet_backbone.data.shapes': [],
    'resnet_backbone.doctor': ['main'],
    'resnet_backbone.apis.dump': ['dump_features'],
    'resnet_backbone.apis.export': ['trace'],
}
#: installed command -> its long flags (without --help and --debug)
COMMANDS = {
    'rb-benchmark': ('amp-dtype batch channels-last compute-dtype depth device frozen-stages '
                     'json malloc-tuned models modes overhead plot profile repeats size '
                     'threads warmup width with-cp'),
    'rb-benchmark-dump': ('_child batch-size big compute-dtype device dtype images json levels '
                          'repeats workers writers'),
    'rb-compare-dumps': 'no-progress',
    'rb-convert': 'allow-pickle avg-down depth no-avg-down no-strict source stem style',
    'rb-demo': 'config data-root fresh iters seed work-dir',
    'rb-dump': ('ann-file batch-size cfg-options compile compute-dtype device dtype '
                'format input launcher levels max-per-image no-strict out overlay '
                'overlay-max-side overlay-mode overwrite rebuild-index report-only rois '
                'score-thr workers writers'),
    'rb-export': ('batch checkpoint config depth format no-check no-strict reference size '
                  'static with-neck'),
    'rb-test': ('cfg-options classes compile compute-dtype data-root img-dir '
                'json-prefix launcher local-rank local_rank no-strict out test-ann '
                'val-ann work-dir'),
    'rb-train': ('amp auto-scale-lr cfg-options classes data-root img-dir launcher '
                 'local-rank local_rank max-iters resume train-ann val-ann work-dir'),
}


def test_package_names():
    import resnet_backbone
    import resnet_backbone.apis as apis
    assert sorted(resnet_backbone.__all__) == PACKAGE_ALL
    assert sorted(apis.__all__) == APIS_ALL
    for name in PACKAGE_ALL:
        getattr(resnet_backbone, name)
    for name in APIS_ALL:
        getattr(apis, name)


def test_registry_names():
    from mmdet.registry import MODELS

    import resnet_backbone  # noqa: F401  (registers)
    assert sorted(k for k in MODELS.module_dict if k.endswith('Custom')) == REGISTERED


@pytest.mark.parametrize('module', sorted(MODULE_NAMES))
def test_documented_modules(module):
    mod = importlib.import_module(module)
    for name in MODULE_NAMES[module]:
        assert hasattr(mod, name), f'{module}.{name}'


def test_commands_are_installed():
    scripts = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']
    assert sorted(scripts) == sorted([*COMMANDS, 'rb-doctor'])


class _Parsed(Exception):
    pass


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_command_flags(command, monkeypatch):
    """Each command's parser, caught as its main() parses: the same long flags."""
    scripts = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']
    seen: list[list[str]] = []

    def grab(self, *args, **kwargs):
        seen.append(sorted(s[2:] for s in self._option_string_actions
                           if s.startswith('--') and s != '--help'))
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', grab)
    module = importlib.import_module(scripts[command].split(':')[0])
    with pytest.raises(_Parsed):
        module.main(['x'])
    assert ' '.join(seen[0]) == COMMANDS[command]
