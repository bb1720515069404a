"""A run killed with SIGKILL mid-training resumes with --resume and finishes, with its
iteration counter, optimizer state and LR schedule continuing from the checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from resnet_backbone.engine.training import apply_train_options, build_runner, load_config
from resnet_backbone.io.checkpoint_io import find_resumable_checkpoint

from .conftest import CONFIG, ROOT, run_tool, tiny_cfg, tiny_options

MAX_ITERS, INTERVAL = 24, 8


def _train_until_killed(tiny_shapes, work) -> None:
    cmd = [sys.executable, str(ROOT / 'tools/train.py'), CONFIG, '--work-dir', str(work),
           '--data-root', str(tiny_shapes), *tiny_options(MAX_ITERS, INTERVAL)]
    log = open(work.parent / 'first_run.log', 'w')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.time() + 300
    try:
        # kill once the second checkpoint is written and training has moved past it
        while time.time() < deadline and proc.poll() is None:
            text = (work.parent / 'first_run.log').read_text()
            if f'Iter(train) [{2 * INTERVAL + 2}/{MAX_ITERS}]' in text:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        proc.wait(timeout=60)
    finally:
        log.close()
    assert proc.returncode == -signal.SIGKILL, 'training was not killed mid-run'
    assert not (work / f'iter_{MAX_ITERS}.pth').exists()


@pytest.mark.timeout(900)
def test_sigkill_then_resume(tiny_shapes, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    _train_until_killed(tiny_shapes, work)
    ckpt = find_resumable_checkpoint(work)
    assert ckpt is not None and ckpt.name == f'iter_{2 * INTERVAL}.pth'
    saved = torch.load(ckpt, weights_only=True)  # allow-listed globals, weights_only kept
    assert saved['meta']['iter'] == 2 * INTERVAL

    # In-process: what --resume restores, before any further step.
    cfg = load_config(CONFIG, work_dir=str(work), data_root=str(tiny_shapes),
                      cfg_options=tiny_cfg(MAX_ITERS, INTERVAL))
    apply_train_options(cfg, resume='auto')
    runner = build_runner(cfg)
    # what Runner.train() does before its first step, in the same order
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.param_schedulers = runner.build_param_scheduler(runner.param_schedulers)
    runner.load_or_resume()
    assert runner.iter == 2 * INTERVAL
    state = runner.optim_wrapper.optimizer.state_dict()
    ref = saved['optimizer']
    assert state['state'] and state['state'].keys() == ref['state'].keys()
    for k in ref['state']:
        for name, t in ref['state'][k].items():
            assert torch.equal(state['state'][k][name], t), (k, name)
    assert len(runner.param_schedulers) == len(saved['param_schedulers']) == 2
    for sched, sched_ref in zip(runner.param_schedulers, saved['param_schedulers']):
        assert sched._global_step == sched_ref['_global_step'] == 2 * INTERVAL
        assert sched.last_step == sched_ref['last_step']  # warm-up: 16; cosine: not begun
    assert runner.param_schedulers[0].last_step == 2 * INTERVAL
    lr_now = runner.optim_wrapper.get_lr()['lr'][0]
    assert lr_now == saved['optimizer']['param_groups'][0]['lr']
    assert lr_now > cfg.param_scheduler[0].start_factor * cfg.optim_wrapper.optimizer.lr

    # The real thing: the tool resumes and finishes at MAX_ITERS.
    r = run_tool('train.py', CONFIG, '--work-dir', str(work), '--data-root', str(tiny_shapes),
                 '--resume', *tiny_options(MAX_ITERS, INTERVAL))
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert f'resumed epoch: 0, iter: {2 * INTERVAL}' in log
    assert f'Iter(train) [{2 * INTERVAL + 1}/{MAX_ITERS}]' in log
    assert f'Iter(train) [1/{MAX_ITERS}]' not in log
    # the LR logged at the first resumed iteration is the one the killed run logged there
    first_log = (tmp_path / 'first_run.log').read_text()
    step = f'Iter(train) [{2 * INTERVAL + 1}/{MAX_ITERS}]'
    lr_of = lambda text: next(ln for ln in text.splitlines() if step in ln).split(' lr: ')[1].split()[0]  # noqa: E731,E501
    assert lr_of(log) == lr_of(first_log)
    final = torch.load(work / f'iter_{MAX_ITERS}.pth', weights_only=True)
    assert final['meta']['iter'] == MAX_ITERS


# Two Runners in one test process (in the same second) share mmengine's named global
# instances (visualizer, logger, scope); real runs build one Runner per process.
@pytest.mark.filterwarnings('ignore:.*has been created, the method `get_instance`')
def test_load_from_mmdet_zoo_style_checkpoint(tiny_shapes, tmp_path):
    """A checkpoint shaped like mmdet's model zoo files (state_dict + meta with version,
    classes, epoch, config text) loads through ``load_from`` with weights_only kept."""
    cfg = load_config(CONFIG, work_dir=str(tmp_path / 'a'), data_root=str(tiny_shapes),
                      cfg_options=tiny_cfg(1))
    donor = build_runner(cfg).model
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(0.5)  # distinguishable from a fresh init
    zoo = {'meta': {'mmdet_version': '3.3.0', 'epoch': 12, 'iter': 87960,
                    'CLASSES': ('square', 'circle', 'triangle'),
                    'dataset_meta': {'classes': ('square', 'circle', 'triangle')},
                    'config': 'model = dict(...)', 'time': 'Tue Nov 23 2021',
                    'hook_msgs': {'last_ckpt': 'work_dirs/epoch_12.pth'}},
           'state_dict': donor.state_dict()}
    path = tmp_path / 'zoo.pth'
    torch.save(zoo, path)
    cfg = load_config(CONFIG, work_dir=str(tmp_path / 'b'), data_root=str(tiny_shapes),
                      cfg_options=tiny_cfg(1) | {'load_from': str(path)})
    runner = build_runner(cfg)
    runner.load_or_resume()
    assert runner.iter == 0  # load_from initialises, it does not resume
    for (name, p), q in zip(runner.model.state_dict().items(), donor.state_dict().values()):
        assert torch.equal(p, q), name
