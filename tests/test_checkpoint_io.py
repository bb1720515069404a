"""Atomic checkpoint writes, resumable-checkpoint discovery, and the weights_only allow-list."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_backbone.io.checkpoint_io import (
    AtomicLocalBackend,
    find_resumable_checkpoint,
    is_complete_checkpoint,
    resumable_checkpoints,
)

ROOT = Path(__file__).resolve().parents[1]


def test_interrupted_put_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / 'iter_10.pth'
    AtomicLocalBackend().put(b'old complete bytes', target)

    def killed(fd):
        raise KeyboardInterrupt('killed during save')
    monkeypatch.setattr(os, 'fsync', killed)
    with pytest.raises(KeyboardInterrupt):
        AtomicLocalBackend().put(b'new bytes that never land', target)
    assert target.read_bytes() == b'old complete bytes'
    assert [p.name for p in tmp_path.iterdir()] == ['iter_10.pth']


def test_mmengine_save_checkpoint_goes_through_the_atomic_backend(tmp_path, monkeypatch):
    """The hook's backend_args select the atomic backend by its own name; mmengine's
    'local' backend stays mmengine's for the rest of the process (before, setting up
    replaced it for every caller with force=True)."""
    from mmengine.fileio import get_file_backend
    from mmengine.fileio.backends import LocalBackend
    from mmengine.runner.checkpoint import save_checkpoint

    from resnet_backbone.engine.training import setup_environment
    from resnet_backbone.io.checkpoint_io import SafeCheckpointHook
    setup_environment()
    assert type(get_file_backend(str(tmp_path))) is LocalBackend
    hook = SafeCheckpointHook(interval=1, by_epoch=False)
    calls = []
    real = AtomicLocalBackend._atomic_write
    monkeypatch.setattr(AtomicLocalBackend, '_atomic_write',
                        staticmethod(lambda d, p: calls.append(p) or real(d, p)))
    save_checkpoint({'state_dict': {'w': torch.ones(2)}}, str(tmp_path / 'a.pth'),
                    backend_args=hook.backend_args)
    assert calls and is_complete_checkpoint(tmp_path / 'a.pth')
    remote = SafeCheckpointHook(interval=1, by_epoch=False, out_dir='s3://bucket/run')
    assert remote.backend_args is None  # a remote out_dir keeps its own backend


def test_find_resumable_skips_truncated_and_bad_pointer(tmp_path):
    for i in (8, 16):
        torch.save({'meta': {'iter': i}}, tmp_path / f'iter_{i}.pth')
    data = (tmp_path / 'iter_16.pth').read_bytes()
    (tmp_path / 'iter_24.pth').write_bytes(data[: len(data) // 2])  # truncated by a kill
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_24.pth'))
    assert not is_complete_checkpoint(tmp_path / 'iter_24.pth')
    assert find_resumable_checkpoint(tmp_path) == tmp_path / 'iter_16.pth'
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_8.pth'))
    assert find_resumable_checkpoint(tmp_path) == tmp_path / 'iter_8.pth'
    assert find_resumable_checkpoint(tmp_path / 'empty') is None


def test_resume_resolves_inside_the_work_dir_and_names_what_it_skipped(tmp_path):
    """Finding 5: a copied work dir's last_checkpoint holds the original's absolute path;
    the copy's own file of that name is the one to resume from, and a damaged newest one is
    returned as skipped (the tool says so). Before, the original's file was loaded."""
    original, copy = tmp_path / 'original', tmp_path / 'copy'
    for folder in (original, copy):
        folder.mkdir()
        for i in (2, 4):
            torch.save({'meta': {'iter': i, 'where': folder.name}}, folder / f'iter_{i}.pth')
        (folder / 'last_checkpoint').write_text(str(original / 'iter_4.pth'))
    found, damaged = resumable_checkpoints(copy)
    assert (found, damaged) == (copy / 'iter_4.pth', [])
    data = (copy / 'iter_4.pth').read_bytes()
    (copy / 'iter_4.pth').write_bytes(data[:len(data) // 3])
    assert resumable_checkpoints(copy) == (copy / 'iter_2.pth', [copy / 'iter_4.pth'])
    (copy / 'iter_2.pth').write_bytes(b'')
    assert resumable_checkpoints(copy) == (None, [copy / 'iter_4.pth', copy / 'iter_2.pth'])
    (copy / 'last_checkpoint').write_text('/nowhere/iter_9.pth')  # names no file here
    assert resumable_checkpoints(copy) == (None, [copy / 'iter_4.pth', copy / 'iter_2.pth'])
    assert resumable_checkpoints(original) == (original / 'iter_4.pth', [])
    # a higher-numbered file of an earlier, longer run is not this run's: the pointer wins
    torch.save({'meta': {'iter': 100}}, original / 'iter_100.pth')
    (original / 'last_checkpoint').write_text('iter_2.pth')  # (a relative name, too)
    assert resumable_checkpoints(original) == (original / 'iter_2.pth', [])
    torch.save({'meta': {'epoch': 12}}, original / 'epoch_12.pth')  # another kind
    (original / 'iter_2.pth').write_bytes(b'')
    assert resumable_checkpoints(original) == (None, [original / 'iter_2.pth'])


class _SneakyGetattr:
    """Pickles as getattr(HistoryBuffer, '__init__'): a getattr that is not a statistics
    method, as a crafted file would use to walk towards code."""

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


def test_allow_list_is_needed_and_sufficient(tmp_path):
    """A Runner-style checkpoint fails with weights_only=True unless allow-listed; an
    unrelated class stays refused after allow-listing (no blanket weights_only=False)."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(np.float64(1.5))
    buf.update(3)
    ckpt = {'meta': {'message_hub': {'log_scalars': {'loss': buf}}, 'seed': np.int64(3)},
            'state_dict': {'w': torch.ones(1)}}
    torch.save(ckpt, tmp_path / 'ckpt.pth')
    torch.save({'x': subprocess.CompletedProcess([], 0)}, tmp_path / 'evil.pth')
    torch.save({'x': _SneakyGetattr()}, tmp_path / 'evil2.pth')
    code = ('import sys, torch\n'
            f'p = {str(tmp_path)!r}\n'
            'try:\n'
            '    torch.load(p + "/ckpt.pth", weights_only=True); print("loaded-before")\n'
            'except Exception as e: print("refused-before")\n'
            'from resnet_backbone.io.checkpoint_io import allow_runner_checkpoint_globals\n'
            'allow_runner_checkpoint_globals()\n'
            'c = torch.load(p + "/ckpt.pth", weights_only=True)\n'
            'print("loaded-after", c["meta"]["message_hub"]["log_scalars"]["loss"].mean())\n'
            'for name in ("evil", "evil2"):\n'
            '    try:\n'
            '        torch.load(p + f"/{name}.pth", weights_only=True); print(name + "-loaded")\n'
            '    except Exception: print(name + "-refused")\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['refused-before', 'loaded-after', '2.25', 'evil-refused',
                                'evil2-refused']


# --- SafeCheckpointHook: the old checkpoint goes only after the new one is complete ------

class _FakeRunner:
    """Just what CheckpointHook touches; ``save_checkpoint`` records what a kill inside
    the write window would leave (the files and ``last_checkpoint`` at that moment)."""

    def __init__(self, work_dir, name):
        import logging

        from mmengine.logging import MessageHub
        self.work_dir = str(work_dir)
        self.message_hub = MessageHub.get_instance(name)
        self.logger = logging.getLogger(name)
        self.iter, self.epoch = 0, 0
        self.at_write = []

    def save_checkpoint(self, out_dir, filename, *args, meta=None, **kwargs):
        from resnet_backbone.io.fileio import atomic_path
        pointer = os.path.join(self.work_dir, 'last_checkpoint')
        with atomic_path(os.path.join(out_dir, filename)) as tmp:
            torch.save({'meta': meta, 'message_hub': self.message_hub.state_dict()}, tmp)
            # the write window: the temporary file exists, the target does not yet
            named = open(pointer).read() if os.path.exists(pointer) else None
            self.at_write.append((sorted(p for p in os.listdir(out_dir)
                                         if p.endswith('.pth')), named))


def _train(hook, runner, iters, interval):
    hook.before_train(runner)
    for it in range(runner.iter, iters):
        runner.iter = it
        if (it + 1) % interval == 0:
            hook._save_checkpoint(runner)


@pytest.mark.filterwarnings('ignore:"FileClient" will be deprecated')
@pytest.mark.parametrize('max_keep', [1, 2, 3])
def test_old_checkpoint_removed_only_after_new_one_is_complete(tmp_path, max_keep):
    """While iter_i is being written, the max_keep newest complete checkpoints before it
    still exist and last_checkpoint names the newest. mmengine's CheckpointHook deleted
    the oldest first: with max_keep_ckpts=1 a kill there left no checkpoint at all."""
    from resnet_backbone.io.checkpoint_io import SafeCheckpointHook
    runner = _FakeRunner(tmp_path, f'safe-hook-{max_keep}-{tmp_path.name}')
    hook = SafeCheckpointHook(interval=1, by_epoch=False, max_keep_ckpts=max_keep)
    _train(hook, runner, 6, 1)
    for i, (files, named) in enumerate(runner.at_write, start=1):
        expected = [f'iter_{j}.pth' for j in range(max(1, i - max_keep), i)]
        gone = sorted(set(expected) - set(files))
        assert not gone, f'writing iter_{i}: {gone} already deleted; a kill here loses them'
        if i > 1:
            assert named is not None and os.path.basename(named) == f'iter_{i - 1}.pth', (
                f'writing iter_{i}: last_checkpoint names {named}, not the newest complete '
                'checkpoint')
    kept = sorted(p.name for p in tmp_path.glob('*.pth'))
    assert kept == sorted(f'iter_{i}.pth' for i in range(7 - max_keep, 7))
    assert open(tmp_path / 'last_checkpoint').read() == str(tmp_path / 'iter_6.pth')
    assert find_resumable_checkpoint(tmp_path) == tmp_path / 'iter_6.pth'


def _resume_hook(tmp_path, ckpt, name, max_keep=1):
    """before_train of a fresh hook, as a --resume of ``ckpt`` runs it."""
    from mmengine.logging import MessageHub

    from resnet_backbone.io.checkpoint_io import SafeCheckpointHook
    saved = torch.load(ckpt, weights_only=False)
    runner = _FakeRunner(tmp_path, name)
    runner.message_hub = MessageHub.get_instance(f'{name}-hub')
    runner.message_hub.load_state_dict(saved['message_hub'])
    runner.iter = saved['meta']['iter']
    SafeCheckpointHook(interval=1, by_epoch=False, max_keep_ckpts=max_keep).before_train(runner)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


@pytest.mark.filterwarnings('ignore:"FileClient" will be deprecated')
def test_stale_temp_files_of_killed_runs_go_at_the_next_start(tmp_path):
    """Temporary checkpoint files that kill -9 left (our pattern only, writer gone or a
    day old) are removed when the next run starts in the work dir; before, they piled up
    forever. A live writer's file stays."""
    from resnet_backbone.io.checkpoint_io import STALE_TEMP_AGE_S, SafeCheckpointHook
    _train(SafeCheckpointHook(interval=1, by_epoch=False, max_keep_ckpts=1),
           _FakeRunner(tmp_path, f'stale-{tmp_path.name}'), 2, 1)
    dead, live = _dead_pid(), os.getppid()
    stale = [tmp_path / f'.iter_3.pth.{dead}.ab_12xyz.tmp',
             tmp_path / f'.last_checkpoint.{dead}.q1w2e3r4.tmp',
             tmp_path / f'.best_coco_bbox_mAP_iter_2.pth.{os.getpid()}.zzzzzzzz.tmp']
    aged = [tmp_path / '.iter_4.pth.ab_12xyz.tmp',  # no pid (older versions): by age
            tmp_path / f'.iter_5.pth.{live}.ab_12xyz.tmp']  # a day old: pid reused
    others = [tmp_path / '.notes.txt.ab_12xyz.tmp', tmp_path / 'iter_9.pth.tmp',
              tmp_path / '.iter_3.pth.tmp', tmp_path / '.iter_3.pth.TOOLONG12.tmp',
              tmp_path / f'.iter_3.pth.{live}.abcdefgh.tmp',  # a live writer's
              tmp_path / '.iter_6.pth.abcdefgh.tmp']  # no pid, recent
    for p in stale + aged + others:
        p.write_bytes(b'partial')
    for p in aged:
        old = p.stat().st_mtime - STALE_TEMP_AGE_S - 60
        os.utime(p, (old, old))
    _resume_hook(tmp_path, tmp_path / 'iter_2.pth', f'stale-resumed-{tmp_path.name}')
    assert not [p.name for p in stale + aged if p.exists()], 'stale temporary files were kept'
    assert all(p.exists() for p in others), 'a file that is not ours, or live, was removed'
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth']


_HOLD_A_WRITE = """
import sys, time
from resnet_backbone.io.fileio import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b'half a checkpoint')
    print(tmp.name, flush=True)
    time.sleep(120)
"""


def test_a_second_run_leaves_a_live_writers_temp_file_alone(tmp_path):
    """A run started in the work dir of a run that is writing a checkpoint must not
    delete that run's temporary file; once the writer is killed, the next start does.
    (Before: remove_stale_temp_files deleted every ``.iter_N.pth.XXXXXXXX.tmp``.)"""
    from resnet_backbone.io.checkpoint_io import remove_stale_temp_files
    writer = subprocess.Popen([sys.executable, '-c', _HOLD_A_WRITE, str(tmp_path / 'iter_4.pth')],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        tmp = tmp_path / writer.stdout.readline().strip()
        assert tmp.is_file() and tmp.name.startswith('.iter_4.pth.')
        assert remove_stale_temp_files(tmp_path) == []
        assert tmp.is_file(), "the live writer's temporary file was deleted"
    finally:
        writer.kill()
        writer.wait()
    assert remove_stale_temp_files(tmp_path) == [tmp] and not tmp.exists()


class _BestRunner(_FakeRunner):
    """Records, for each write, the file being written and the best_* files on disk."""

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        bests = sorted(p for p in os.listdir(out_dir) if p.startswith('best_'))
        self.best_at_write = getattr(self, 'best_at_write', []) + [(filename, bests)]
        super().save_checkpoint(out_dir, filename, *args, **kwargs)


@pytest.mark.filterwarnings('ignore:"FileClient" will be deprecated')
@pytest.mark.parametrize('keys', [['mAP'], ['mAP', 'AR']])
def test_previous_best_removed_only_after_the_new_best_is_written(tmp_path, keys):
    """While best_*_iter_N.pth is written, the previous best of that metric still exists.
    mmengine's _save_best_checkpoint removed it first: a kill there left no best file."""
    from resnet_backbone.io.checkpoint_io import SafeCheckpointHook
    runner = _BestRunner(tmp_path, f'best-{len(keys)}-{tmp_path.name}')
    hook = SafeCheckpointHook(interval=1, by_epoch=False, max_keep_ckpts=1,
                              save_best=keys if len(keys) > 1 else keys[0],
                              rule=['greater'] * len(keys) if len(keys) > 1 else 'greater')
    _train(hook, runner, 1, 1)
    scores = {2: 0.1, 3: 0.3, 4: 0.2, 5: 0.4}  # iter 4 is no better: best_*_iter_3 stays
    for it, score in scores.items():
        runner.iter = it
        hook._save_best_checkpoint(runner, {k: score for k in keys})
        if it == 4:
            assert sorted(p.name for p in tmp_path.glob('best_*')) == [
                f'best_{k}_iter_3.pth' for k in sorted(keys)]
    for filename, bests in runner.best_at_write:
        if filename.startswith('best_') and not filename.endswith('iter_2.pth'):
            key = filename.split('_iter_')[0]
            assert [b for b in bests if b.startswith(key + '_iter_')], (
                f'writing {filename}: the previous best was already deleted ({bests})')
    assert sorted(p.name for p in tmp_path.glob('best_*')) == [
        f'best_{k}_iter_5.pth' for k in sorted(keys)]


@pytest.mark.filterwarnings('ignore:"FileClient" will be deprecated')
def test_removal_cut_by_a_kill_is_finished_on_resume(tmp_path):
    """A kill after iter_2 is renamed but before iter_1 is removed leaves iter_1 behind;
    resuming iter_2 removes it. (mmengine's hook removed iter_1 before writing iter_2,
    so this state did not arise before; the test checks the new bookkeeping.)"""
    from resnet_backbone.io.checkpoint_io import SafeCheckpointHook
    hook = SafeCheckpointHook(interval=1, by_epoch=False, max_keep_ckpts=1)
    hook._remove_steps = lambda runner, steps: None  # killed just before the removal
    _train(hook, _FakeRunner(tmp_path, f'cut-{tmp_path.name}'), 2, 1)
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_1.pth', 'iter_2.pth'], (
        'iter_1 must survive until iter_2 is complete')
    _resume_hook(tmp_path, tmp_path / 'iter_2.pth', f'cut-resumed-{tmp_path.name}')
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth']


def test_load_config_puts_the_safe_hook_in_place():
    from mmengine.registry import HOOKS

    from resnet_backbone.engine.training import load_config, setup_environment
    from resnet_backbone.io.checkpoint_io import SafeCheckpointHook
    setup_environment()
    cfg = load_config(str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py'))
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import HOOKS as MMDET_HOOKS
        hook = MMDET_HOOKS.build(dict(cfg.default_hooks.checkpoint))
    assert type(hook) is SafeCheckpointHook and HOOKS.get('SafeCheckpointHook') is not None


# --- one line for a damaged checkpoint file ---------------------------------------------

def test_check_checkpoint_file_names_the_file_and_the_problem(tmp_path):
    from resnet_backbone.io.checkpoint_io import CheckpointFileError, check_checkpoint_file
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.ones(3)}}, good)
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert check_checkpoint_file(good) == good and check_checkpoint_file(legacy) == legacy
    data = good.read_bytes()
    cases = {'truncated.pth': (data[: len(data) // 2], 'is truncated'),
             'empty.pth': (b'', r'is empty \(0 bytes\)'),
             'random.pth': (os.urandom(4096), 'is not a PyTorch checkpoint')}
    for name, (content, problem) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointFileError,
                           match=rf'^load_from {tmp_path / name}: {problem}.*; fix it$') as e:
            check_checkpoint_file(tmp_path / name, 'load_from', 'fix it')
        assert '\n' not in str(e.value) and isinstance(e.value, ValueError)
    import zipfile
    with zipfile.ZipFile(tmp_path / 'other.zip', 'w') as zf:
        zf.writestr('a.txt', 'x')
    with pytest.raises(CheckpointFileError, match='not a torch.save checkpoint'):
        check_checkpoint_file(tmp_path / 'other.zip')


# --- one checker of checkpoint files ----------------------------------------------------

def test_weights_reads_checkpoints_through_the_same_checker(tmp_path):
    """weights.read_checkpoint's one line comes from checkpoint_io (one implementation,
    one set of magic numbers); before, weights had its own copy of each."""
    from resnet_backbone.io import checkpoint_io, weights
    assert weights.unreadable_checkpoint is checkpoint_io.unreadable_checkpoint
    assert weights.CheckpointReadError is checkpoint_io.CheckpointReadError
    assert weights._is_torch_save_file is checkpoint_io.is_torch_save_file
    assert not hasattr(weights, '_ZIP_MAGIC')
    good = tmp_path / 'good.pth'
    torch.save({'w': torch.ones(3)}, good)
    data = good.read_bytes()
    for name, content, problem in [('t.pth', data[: len(data) // 2], 'it is truncated'),
                                   ('e.pth', b'', r'it is empty \(0 bytes\)'),
                                   ('r.pth', os.urandom(4096), 'it is not a PyTorch checkpoint')]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(checkpoint_io.CheckpointReadError,
                           match=rf"^checkpoint '{tmp_path / name}' cannot be read: {problem}"):
            weights.read_checkpoint(tmp_path / name)


# --- tools/test.py loads strictly ------------------------------------------------------

def _test_tool():
    import importlib
    return importlib.import_module('resnet_backbone.tools.test')  # what tools/test.py runs


class _PastTheCheck(Exception):
    pass


@pytest.fixture(scope='module')
def r18_retinanet_checkpoint(tmp_path_factory):
    from mmengine.registry import DefaultScope

    from resnet_backbone.engine.training import load_config, setup_environment
    setup_environment()
    cfg = load_config(str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py'))
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        model = MODELS.build(cfg.model)
    folder = tmp_path_factory.mktemp('ckpts')
    torch.save({'state_dict': model.state_dict()}, folder / 'det.pth')
    torch.save({k[len('backbone.'):]: v for k, v in model.state_dict().items()
                if k.startswith('backbone.')}, folder / 'backbone.pth')
    return folder


@pytest.mark.parametrize('case', ['mismatch', 'backbone-only', 'no-strict', 'fits'])
def test_test_tool_refuses_a_checkpoint_that_does_not_fit(case, r18_retinanet_checkpoint,
                                                          tmp_path, monkeypatch):
    """An R18 detector checkpoint on an R34 config: one line with the counts, before any
    data or work dir. (Before: mmengine's non-strict load logged one WARNING and test.py
    printed the mAP of mostly random weights.) --no-strict evaluates it anyway."""
    from resnet_backbone.io.checkpoint_loading import CheckpointMismatchError
    tool = _test_tool()

    def past(*args, **kwargs):
        raise _PastTheCheck
    monkeypatch.setattr(tool, 'prepare_data', past, raising=False)
    monkeypatch.setattr(tool, 'build_runner', past)
    ckpt = r18_retinanet_checkpoint / ('backbone.pth' if case == 'backbone-only'
                                       else 'det.pth')
    argv = [str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py'), str(ckpt),
            '--work-dir', str(tmp_path / 'work')]
    if case in ('mismatch', 'no-strict'):
        argv += ['--cfg-options', 'model.backbone.depth=34']
    if case == 'no-strict':
        argv.append('--no-strict')
    if case in ('no-strict', 'fits'):
        with pytest.raises(_PastTheCheck):
            tool.main(argv)
        return
    with pytest.raises(CheckpointMismatchError) as info:
        tool.main(argv)
    msg = str(info.value)
    assert '\n' not in msg and str(ckpt) in msg and '--no-strict' in msg, msg
    if case == 'mismatch':
        assert re.search(r'\d+ missing, 0 unexpected', msg), msg
    else:
        assert 'backbone weights only' in msg, msg
    assert not (tmp_path / 'work').exists()


def test_reading_a_checkpoint_leaves_torchs_allow_list_alone(tmp_path):
    """weights.read_checkpoint reads Runner checkpoints (HistoryBuffer in the message hub)
    inside a scoped allow-list; before, every call added to torch's process-wide list."""
    from mmengine.logging.history_buffer import HistoryBuffer

    from resnet_backbone.io.checkpoint_io import (
        RUNNER_CHECKPOINT_GLOBALS,
        allow_runner_checkpoint_globals,
    )
    from resnet_backbone.io.weights import read_checkpoint
    hub = HistoryBuffer()
    hub.update(1.0)
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {'hub': hub}}, tmp_path / 'r.pth')
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # as in a process that set nothing up
    try:
        ckpt = read_checkpoint(tmp_path / 'r.pth')
        assert torch.equal(ckpt['state_dict']['w'], torch.ones(1))
        assert torch.serialization.get_safe_globals() == []
        # a tool allowed them for the whole process (mmengine's Runner loads with plain
        # torch.load): a read in between must leave them allowed
        allow_runner_checkpoint_globals()
        read_checkpoint(tmp_path / 'r.pth')
        assert set(RUNNER_CHECKPOINT_GLOBALS) <= set(torch.serialization.get_safe_globals())
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def test_allow_list_survives_a_loader_that_scopes_its_own(tmp_path, monkeypatch):
    """onedl-mmengine 0.10.12 loads every checkpoint (resume, load_from) through
    ``mmengine.runner.checkpoint._safe_torch_load``, inside ``torch.serialization.
    safe_globals(<its list>)``, whose exit removed the globals its list shares with ours
    from the process's list: a later ``torch.load(weights_only=True)`` of a Runner
    checkpoint was refused (``Unsupported global: ...HistoryBuffer``). Its loader is
    copied here, so this runs on the upstream stack too."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.runner import checkpoint as mmengine_checkpoint

    from resnet_backbone.io.checkpoint_io import (
        RUNNER_CHECKPOINT_GLOBALS,
        allow_runner_checkpoint_globals,
    )

    def onedl_safe_torch_load(file, map_location=None, weights_only=None):
        # onedl-mmengine 0.10.12's get_torch_safe_globals() and _safe_torch_load, on torch >= 2.6
        allowlist = [slice, getattr, np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                     np._core.multiarray.scalar, type(np.dtype(np.uint32)),
                     type(np.dtype(np.float64)), type(np.dtype(np.int64)), HistoryBuffer]
        with torch.serialization.safe_globals(allowlist):
            return torch.load(file, map_location=map_location, weights_only=True)
    monkeypatch.setattr(mmengine_checkpoint, '_safe_torch_load', onedl_safe_torch_load,
                        raising=False)
    buf = HistoryBuffer()
    buf.update(np.float64(1.5))
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {'hub': buf}}, tmp_path / 'r.pth')
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # as in a process that set nothing up
    try:
        allow_runner_checkpoint_globals()
        allow_runner_checkpoint_globals()  # idempotent: the loader is wrapped once
        # what --resume does on onedl-mmengine (load_from_local calls it by this name)
        ckpt = mmengine_checkpoint._safe_torch_load(tmp_path / 'r.pth', map_location='cpu')
        assert ckpt['meta']['hub'].current() == 1.5
        assert set(RUNNER_CHECKPOINT_GLOBALS) <= set(torch.serialization.get_safe_globals())
        # the test_resume.py case: the process's own load after a resume
        assert torch.load(tmp_path / 'r.pth', weights_only=True)['meta']['hub'].current() == 1.5
        assert mmengine_checkpoint._safe_torch_load.__wrapped__ is onedl_safe_torch_load
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)
