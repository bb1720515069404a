"""engine/compat: the dependency notices our tools drop, and only those."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import mmdet.utils
import pytest

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



@pytest.mark.parametrize('quiet', [True, False])
def test_no_stray_shell_line_without_a_c_compiler(quiet):
    """The default install needs no compiler; mmengine's environment report then made
    every tool print '/bin/sh: 1: gcc: not found' (found by a run with no compiler on
    PATH). The tools' set-up sends that probe's stderr to /dev/null."""
    code = ('from resnet_backbone.engine.compat import quiet_compiler_probe\n'
            + ('quiet_compiler_probe()\n' if quiet else '')
            + 'import mmengine.runner.runner as r\nprint(r.collect_env()["GCC"])\n')
    env = dict(os.environ, PATH='/nonexistent')  # the shell finds no gcc
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'n/a'
    assert ('not found' in out.stderr) is not quiet, out.stderr
