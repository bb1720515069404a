"""The package imports cleanly and lightly."""
import subprocess
import sys

import resnet_backbone


def test_version_and_exports():
    assert resnet_backbone.__version__ == '0.1.0'
    assert resnet_backbone.ResNetV1Custom.__name__ == 'ResNetV1Custom'


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)


def test_import_needs_neither_mmdet_models_nor_mmcv_ops():
    r = _run('import sys, resnet_backbone, torch\n'
             'm = resnet_backbone.ResNetV1Custom(depth=18, base_channels=4).eval()\n'
             'm(torch.rand(1, 3, 32, 32))\n'
             'bad = [k for k in ("mmdet.models", "mmcv.ops", "mmcv._ext") if k in sys.modules]\n'
             'print(bad); sys.exit(1 if bad else 0)')
    assert r.returncode == 0, r.stdout + r.stderr


def test_works_as_plain_module_without_mmdet():
    # sys.modules[name] = None makes "import mmdet" raise ImportError, as if uninstalled.
    r = _run('import sys; sys.modules["mmdet"] = None\n'
             'import torch, resnet_backbone\n'
             'from mmengine.registry import MODELS\n'
             'assert resnet_backbone.registry.PARENT is MODELS\n'
             'm = MODELS.build(dict(type="ResNetV1Custom", depth=18, base_channels=4)).eval()\n'
             'print([tuple(o.shape) for o in m(torch.rand(1, 3, 32, 32))])')
    assert r.returncode == 0, r.stderr
    assert '(1, 32, 1, 1)' in r.stdout


def test_ruff_clean():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, '-m', 'ruff', 'check', 'resnet_backbone', 'tools',
                        'tests'], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
