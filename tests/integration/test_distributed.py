"""2-process torchrun (gloo on CPU) trains a few iterations with mmengine's DDP."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

from .conftest import CONFIG, ROOT, tiny_cfg

# Imported by both ranks through the config's custom_imports: after training, each rank
# saves what its Runner trains (the wrapper's class and the model's parameters).
PROBE = '''
import os
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DDPProbeHook(Hook):
    def __init__(self, out_dir):
        self.out_dir = out_dir

    def after_train(self, runner):
        model = runner.model
        inner = getattr(model, 'module', model)
        torch.save({'wrapper': type(model).__name__,
                    'params': {k: v.detach().clone() for k, v in inner.named_parameters()},
                    'seen': runner.iter},
                   os.path.join(self.out_dir, f"rank{os.environ['RANK']}.pt"))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(tiny_shapes, tmp_path):
    work = tmp_path / 'work'
    (tmp_path / 'ddp_probe.py').write_text(PROBE)
    config = tmp_path / 'probed.py'
    config.write_text(f'_base_ = {CONFIG!r}\n'
                      "custom_imports = dict(imports=['resnet_backbone', 'ddp_probe'], "
                      'allow_failed_imports=False)\n'
                      f"custom_hooks = [dict(type='DDPProbeHook', out_dir={str(tmp_path)!r})]\n")
    env = dict(os.environ, PORT=str(_free_port()), PYTHON=sys.executable, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path),
                                                        os.environ.get('PYTHONPATH')])))
    env.pop('MKL_NUM_THREADS', None)  # as a user's shell has it
    opts = [f'{k}={v}' for k, v in tiny_cfg(3).items()]
    r = subprocess.run(['bash', str(ROOT / 'tools/dist_train.sh'), str(config), '2',
                        '--work-dir', str(work), '--data-root', str(tiny_shapes),
                        '--cfg-options', *opts],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert 'Distributed training: True' in log
    assert 'Iter(train) [3/3]' in log
    # issue 29, finding 12: mmengine warned once per rank that it set MKL_NUM_THREADS
    assert 'NUM_THREADS' not in log and 'Warning' not in log, \
        [ln for ln in log.splitlines() if 'NUM_THREADS' in ln or 'Warning' in ln]
    ckpt = torch.load(work / 'iter_3.pth', weights_only=True)
    assert ckpt['meta']['iter'] == 3
    assert any(k.startswith('backbone.layer1.0.conv1') for k in ckpt['state_dict'])
    # Each rank trained its own half of the data; only DDP's gradient all-reduce keeps
    # the two copies equal. Without the wrapper they drift apart from the first step.
    ranks = [torch.load(tmp_path / f'rank{i}.pt', weights_only=True) for i in (0, 1)]
    assert [p['wrapper'] for p in ranks] == ['CPUDistributedDataParallel'] * 2, \
        [p['wrapper'] for p in ranks]
    assert [p['seen'] for p in ranks] == [3, 3]
    p0, p1 = ranks[0]['params'], ranks[1]['params']
    assert p0.keys() == p1.keys()
    assert all(torch.equal(p0[k], p1[k]) for k in p0), 'the ranks hold different weights'
