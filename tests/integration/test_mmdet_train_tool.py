"""mmdet's own tools/train.py (shipped in its pip package) trains our shapes config: the
config's ``custom_imports`` is all that registers ResNetV1Custom there."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mmdet
import pytest
import torch

from .conftest import CONFIG, tiny_cfg

MMDET_TRAIN = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'train.py'


@pytest.mark.integration
def test_mmdet_own_train_tool_trains_our_config(tiny_shapes, tmp_path):
    assert MMDET_TRAIN.is_file(), f'mmdet {mmdet.__version__} ships no {MMDET_TRAIN}'
    # the config reads data/shapes/ relative to the working directory: the tiny copy
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'shapes').symlink_to(tiny_shapes, target_is_directory=True)
    work = tmp_path / 'work'
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # as a user runs it
    env['OMP_NUM_THREADS'] = '1'
    r = subprocess.run([sys.executable, str(MMDET_TRAIN), CONFIG, '--work-dir', str(work),
                        '--cfg-options', *(f'{k}={v}' for k, v in tiny_cfg(2).items())],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert 'Iter(train) [2/2]' in log, log[-4000:]
    ckpt = torch.load(work / 'iter_2.pth', weights_only=True)
    assert ckpt['meta']['iter'] == 2
    assert any(k.startswith('backbone.layer1.0.conv1') for k in ckpt['state_dict'])
