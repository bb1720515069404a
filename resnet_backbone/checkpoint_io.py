"""Checkpoint I/O that works on current torch and never loses a run.

Two problems with mmengine 0.10.7 on torch >= 2.6, fixed here:

1. **Resume fails.** ``torch.load`` now defaults to ``weights_only=True`` and mmengine's
   Runner checkpoints hold a few non-tensor objects in ``meta['message_hub']``
   (``HistoryBuffer`` with numpy arrays and scalars), so ``--resume`` raises
   ``UnpicklingError: Unsupported global``. :func:`allow_runner_checkpoint_globals`
   allow-lists exactly the classes mmengine puts there (:data:`RUNNER_CHECKPOINT_GLOBALS`)
   and nothing else: ``weights_only`` stays on for every file.
2. **A kill during a save can truncate the checkpoint.** mmengine writes checkpoints
   with a plain ``open(path, 'wb')``. :class:`AtomicLocalBackend` writes to a temporary
   file in the same folder, fsyncs it and renames it over the target, so a checkpoint
   file is either complete or absent. :func:`find_resumable_checkpoint` picks the newest
   complete checkpoint even if ``last_checkpoint`` itself is damaged.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.logging.history_buffer import HistoryBuffer

from .fileio import atomic_write_bytes

_HISTORY_BUFFER_METHODS = ('min', 'max', 'mean', 'current')


def _history_buffer_method(obj, name: str):
    """The one ``getattr`` mmengine checkpoints need, and nothing more.

    ``HistoryBuffer.__getstate__`` stores its statistics methods, which pickle writes as
    ``getattr(HistoryBuffer, 'min')``. Allow-listing the real ``builtins.getattr`` would
    let a crafted file reach any attribute (and from there, code), so the GLOBAL
    ``builtins.getattr`` resolves to this function, which only answers for those methods.
    """
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}) in a '
        'checkpoint: only HistoryBuffer statistics methods are allowed')


#: Exactly what mmengine's Runner stores besides tensors and builtins (found by loading
#: its checkpoints with ``weights_only=True`` until nothing was refused).
RUNNER_CHECKPOINT_GLOBALS: list = [
    HistoryBuffer,
    (_history_buffer_method, 'builtins.getattr'),
    (_history_buffer_method, '__builtin__.getattr'),  # protocol-2 spelling
    np.ndarray,
    np.dtype,
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    type(np.dtype(np.int64)),
]


def allow_runner_checkpoint_globals() -> None:
    """Let ``torch.load(weights_only=True)`` read mmengine Runner checkpoints."""
    torch.serialization.add_safe_globals(RUNNER_CHECKPOINT_GLOBALS)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, with atomic ``put``/``put_text``."""

    @staticmethod
    def _atomic_write(data: bytes, filepath: str | Path) -> None:
        atomic_write_bytes(data, filepath)

    def put(self, obj: bytes, filepath: str | Path) -> None:
        self._atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        self._atomic_write(obj.encode(encoding), filepath)


def use_atomic_checkpoint_writes() -> None:
    """Make mmengine's local file backend (used by ``save_checkpoint``) atomic."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')


def is_complete_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a complete ``torch.save`` file (its zip directory is intact)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


_CKPT_NUM = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')


def find_resumable_checkpoint(work_dir: str | Path) -> Path | None:
    """The checkpoint to resume from in ``work_dir``, or ``None``.

    ``last_checkpoint`` wins when it names a complete file; otherwise the newest
    complete ``iter_N.pth`` / ``epoch_N.pth`` does.
    """
    work_dir = Path(work_dir)
    pointer = work_dir / 'last_checkpoint'
    if pointer.is_file():
        named = Path(pointer.read_text().strip())
        if not named.is_absolute():
            named = work_dir / named.name
        if is_complete_checkpoint(named):
            return named
    candidates = sorted(
        (int(m.group(1)), p) for p in work_dir.glob('*.pth')
        if (m := _CKPT_NUM.match(p.name)))
    for _, path in reversed(candidates):
        if is_complete_checkpoint(path):
            return path
    return None
