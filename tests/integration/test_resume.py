"""A run killed with SIGKILL mid-training resumes with --resume and finishes, with its
iteration counter, optimizer state and LR schedule continuing from the checkpoint."""
from __future__ import annotations

import os
import shutil
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


def _train(work, tiny_shapes, iters: int, *extra: str):
    opts = {k: v for k, v in tiny_cfg(iters, 2).items()
            if k not in ('train_cfg.max_iters', 'train_cfg.val_interval')}
    r = run_tool('train.py', CONFIG, '--work-dir', str(work), '--data-root', str(tiny_shapes),
                 '--max-iters', str(iters), *extra, '--cfg-options',
                 *(f'{k}={v}' for k, v in opts.items()))
    return r, r.stdout + r.stderr


@pytest.mark.timeout(900)
def test_resume_stays_in_its_work_dir_and_says_what_it_does(tiny_shapes, tmp_path):
    """Findings 3 and 5: a finished run is one line, a longer --max-iters says the schedule
    is not rescaled, a copied work dir resumes from its own files, and a damaged newest
    checkpoint is skipped with one line."""
    work = tmp_path / 'work'
    r, log = _train(work, tiny_shapes, 4)
    assert r.returncode == 0, log[-3000:]
    assert {p.name for p in work.glob('iter_*.pth')} == {'iter_2.pth', 'iter_4.pth'}
    assert (work / 'last_checkpoint').read_text().strip() == str(work / 'iter_4.pth')

    # the README's resume command on a finished run: one line, nothing trained (before:
    # exit 0 with only mmengine's 'Advance dataloader 4 steps' WARNING)
    r, log = _train(work, tiny_shapes, 4, '--resume')
    assert r.returncode == 0, log[-3000:]
    assert 'Iter(train)' not in log
    assert 'train.py: --resume: nothing to train: iter_4.pth is at iteration 4 and ' \
           'max_iters is 4 (the run is already finished)' in r.stderr

    # a copy of the work dir: last_checkpoint still names the original's iter_4.pth
    copy = tmp_path / 'copy'
    shutil.copytree(work, copy)
    data = (copy / 'iter_4.pth').read_bytes()
    (copy / 'iter_4.pth').write_bytes(data[:len(data) // 2])  # truncated in the copy only
    before = {p.name: p.stat().st_mtime_ns for p in work.iterdir()}
    r, log = _train(copy, tiny_shapes, 6, '--resume')
    assert r.returncode == 0, log[-3000:]
    # the copy's iter_2, not the original's iter_4
    assert 'resumed epoch: 0, iter: 2' in log, log[-3000:]
    assert '--resume: skipped iter_4.pth in ' in log and 'damaged (truncated or empty); ' \
           'resuming from iter_2.pth instead' in log
    # the schedule saved in iter_2.pth ends at 4: one WARNING line says it is not rescaled
    assert 'train.py: WARNING: --resume restores the LR schedule saved in iter_2.pth, which ' \
           'ends at iteration 4, not max_iters=6: it is not rescaled, so iterations 5-6 run ' \
           'at the rate where it ends' in r.stderr
    assert 'Iter(train) [6/6]' in log and 'Iter(train) [2/6]' not in log
    assert 'Advance dataloader 2 steps' in log  # still logged, at INFO (finding 12)
    assert not [ln for ln in log.splitlines() if 'WARNING' in ln and 'Advance' in ln]
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir()} == before  # untouched
    assert torch.load(copy / 'iter_4.pth', weights_only=True)['meta']['iter'] == 4
