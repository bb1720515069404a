"""The seam: ``resnet_backbone_ops_hook.pth`` makes every interpreter of this install find
the torchvision backend as ``mmcv._ext``, and a compiled ``mmcv._ext`` wins over it.

Each case starts a fresh interpreter, as mmdet's own tools, DataLoader workers and
torchrun ranks do, with a stand-in ``mmcv`` package first on its path.
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = ("import mmcv._ext as e; print(getattr(e, 'BACKEND', 'compiled'), "
         "e.__name__, os.path.basename(e.__file__))")


def _fresh(tmp_path: Path, code: str, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    return subprocess.run([sys.executable, *flags, '-c', 'import os; ' + code],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.fixture
def fake_mmcv(tmp_path: Path) -> Path:
    """An mmcv package with no compiled ops, as mmcv-lite installs it."""
    (tmp_path / 'mmcv').mkdir()
    (tmp_path / 'mmcv' / '__init__.py').write_text("__version__ = '2.1.0'\n")
    return tmp_path / 'mmcv'


def test_pth_is_part_of_the_distribution():
    """Installed beside the packages and listed in the RECORD, so that `pip uninstall
    resnet-backbone` removes it with the rest."""
    files = {str(f) for f in importlib.metadata.files('resnet-backbone')}
    assert 'resnet_backbone_ops_hook.pth' in files
    pth = importlib.metadata.distribution('resnet-backbone').locate_file(
        'resnet_backbone_ops_hook.pth')
    assert Path(pth).read_text().strip() == 'import resnet_backbone_ops_hook'


def test_a_fresh_interpreter_gets_the_torchvision_backend(tmp_path, fake_mmcv):
    r = _fresh(tmp_path, PROBE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['torchvision', 'mmcv._ext', 'mmcv_ext.py']


def test_a_compiled_ext_wins(tmp_path, fake_mmcv):
    (fake_mmcv / '_ext.py').write_text('# stands in for _ext.cpython-*.so\n')
    r = _fresh(tmp_path, PROBE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['compiled', 'mmcv._ext', '_ext.py']


def test_without_site_there_is_no_hook(tmp_path, fake_mmcv):
    """`python -S` skips .pth files: then mmcv-lite has no ops, as without this project
    (the hook is the .pth, nothing else patches mmcv)."""
    r = _fresh(tmp_path, 'import sys; sys.path.append(os.getcwd()); ' + PROBE, '-S')
    assert r.returncode == 1 and "No module named 'mmcv._ext'" in r.stderr, r.stderr


def test_the_hook_imports_no_torch_at_startup(tmp_path):
    r = _fresh(tmp_path, "import sys; print('torch' in sys.modules, "
                         "'resnet_backbone_ops_hook' in sys.modules)")
    assert r.stdout.split() == ['False', 'True'], r.stderr
