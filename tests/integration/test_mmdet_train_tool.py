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
MMDET_TEST = MMDET_TRAIN.with_name('test.py')


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

    # issue 29, finding 9: mmdet's own test.py and train.py --resume read our checkpoint
    # (the config's custom_imports installs the Runner-checkpoint allow-list); without it
    # both died with 'Unsupported global: mmengine.logging.history_buffer.HistoryBuffer'
    def mmdet_tool(tool, *args):
        r = subprocess.run([sys.executable, str(tool), CONFIG, *args, '--cfg-options',
                            *(f'{k}={v}' for k, v in tiny_cfg(3).items())],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        return r, r.stdout + r.stderr

    r, log = mmdet_tool(MMDET_TEST, str(work / 'iter_2.pth'), '--work-dir', str(work / 't'))
    assert r.returncode == 0 and 'Unsupported global' not in log, log[-4000:]
    assert 'coco/bbox_mAP' in log, log[-4000:]
    r, log = mmdet_tool(MMDET_TRAIN, '--work-dir', str(work), '--resume')
    assert r.returncode == 0 and 'Unsupported global' not in log, log[-4000:]
    assert 'Iter(train) [3/3]' in log and 'Iter(train) [1/3]' not in log, log[-4000:]
