"""Atomic checkpoint writes, resumable-checkpoint discovery, and the weights_only allow-list."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from resnet_backbone.checkpoint_io import (
    AtomicLocalBackend,
    find_resumable_checkpoint,
    is_complete_checkpoint,
)


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
    from mmengine.runner.checkpoint import save_checkpoint

    from resnet_backbone.checkpoint_io import use_atomic_checkpoint_writes
    use_atomic_checkpoint_writes()
    calls = []
    real = AtomicLocalBackend._atomic_write
    monkeypatch.setattr(AtomicLocalBackend, '_atomic_write',
                        staticmethod(lambda d, p: calls.append(p) or real(d, p)))
    save_checkpoint({'state_dict': {'w': torch.ones(2)}}, str(tmp_path / 'a.pth'))
    assert calls and is_complete_checkpoint(tmp_path / 'a.pth')


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
            'from resnet_backbone.checkpoint_io import allow_runner_checkpoint_globals\n'
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
