"""Checkpoint I/O that works on current torch and never loses a run.

What goes wrong with mmengine 0.10.7 checkpoints (1 only on torch >= 2.6), fixed here:

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
3. **A kill between two saves can leave no checkpoint at all.** mmengine's
   ``CheckpointHook`` deletes the oldest kept checkpoint *before* it writes the new one:
   with ``max_keep_ckpts=1`` a kill inside the write window leaves only a temporary
   file. :class:`SafeCheckpointHook` (registered in mmengine's ``HOOKS``; the tools put it
   in place of ``CheckpointHook`` in :func:`resnet_backbone.engine.training.load_config`) writes
   the new checkpoint (atomically), then ``last_checkpoint`` (atomically), and only then
   removes the old one, for any ``max_keep_ckpts``; likewise a new ``best_*.pth``
   (``save_best``) is written before the previous one is removed. A removal that a kill
   interrupted is finished when the run resumes, and the hidden temporary files
   (``.<name>.<pid>.XXXXXXXX.tmp``, see :func:`resnet_backbone.io.fileio.atomic_path`) that
   killed runs leave are removed when the next run starts in the same work dir (rank 0
   only; only files whose writing process is gone or that are a day old, so a run that
   is still writing keeps its file; :func:`remove_stale_temp_files`).
4. **A damaged checkpoint file ends in a long traceback** that does not name it.
   :func:`check_checkpoint_file` tells in one line (a :class:`CheckpointFileError`) what is
   wrong with a file (missing, empty, truncated, not a checkpoint) and what to do; the
   tools call it before anything is built or written.

What was measured on which stack, and the incidents behind these fixes:
docs/checkpoints.md.
"""
from __future__ import annotations

import contextlib
import functools
import os.path as osp
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import HOOKS
from mmengine.runner import checkpoint as mmengine_checkpoint

from ..errors import ToolError
from .fileio import (  # noqa: F401  (STALE_TEMP_AGE_S: part of this module's API)
    STALE_TEMP_AGE_S,
    atomic_write_bytes,
    remove_dead_writers_temp_files,
)

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
    """Let every ``torch.load(weights_only=True)`` in the process read mmengine Runner
    checkpoints (the tools call this: mmengine's own resume loads with plain
    ``torch.load``). Library code uses :func:`runner_checkpoint_globals` instead.

    Needed for resume on upstream mmengine 0.10.7 only: onedl-mmengine's loader has its
    own allow-list (docs/checkpoints.md). It is kept there for what else reads Runner
    checkpoints in the process with ``torch.load(weights_only=True)`` (the tests, a
    user's script), which :func:`_keep_allow_list_across_mmengine_loads` makes survive
    that loader."""
    allowed = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([g for g in RUNNER_CHECKPOINT_GLOBALS
                                          if g not in allowed])
    _keep_allow_list_across_mmengine_loads()


def _keep_allow_list_across_mmengine_loads() -> None:
    """onedl-mmengine compat: its loader must not shrink the process's allow-list.

    onedl-mmengine loads every checkpoint through
    ``mmengine.runner.checkpoint._safe_torch_load``, inside
    ``torch.serialization.safe_globals(<its list>)``, whose exit removes its globals from
    the process-wide list even where they were allowed before it; its list overlaps ours
    (docs/checkpoints.md). So that loader is wrapped to put back what it removed.
    Upstream mmengine 0.10.7 has no such function: nothing is done there.
    """
    load = getattr(mmengine_checkpoint, '_safe_torch_load', None)
    if load is None or getattr(load, '_keeps_allow_list', False):
        return

    @functools.wraps(load)
    def load_keeping_allow_list(*args, **kwargs):
        before = torch.serialization.get_safe_globals()
        try:
            return load(*args, **kwargs)
        finally:
            now = torch.serialization.get_safe_globals()
            lost = [g for g in before if g not in now]
            if lost:
                torch.serialization.add_safe_globals(lost)

    load_keeping_allow_list._keeps_allow_list = True
    mmengine_checkpoint._safe_torch_load = load_keeping_allow_list


@contextlib.contextmanager
def runner_checkpoint_globals() -> Iterator[None]:
    """A context in which ``torch.load(weights_only=True)`` reads Runner checkpoints; the
    process's allow-list is as it was afterwards.

    Not ``torch.serialization.safe_globals``: its exit removes the globals even when they
    were allowed before it, which broke a tool's later Runner load.
    """
    before = set(torch.serialization.get_safe_globals())
    added = [g for g in RUNNER_CHECKPOINT_GLOBALS if g not in before]
    torch.serialization.add_safe_globals(added)
    try:
        yield
    finally:
        if added:
            kept = [g for g in torch.serialization.get_safe_globals() if g not in added]
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(kept)


@contextlib.contextmanager
def safe_globals_kept() -> Iterator[None]:
    """torch's ``weights_only`` allow-list is as it was before the block afterwards,
    whatever the block added (e.g. a config's ``custom_imports`` of
    :mod:`resnet_backbone.engine.mmdet_tools`, read by a library call)."""
    before = list(torch.serialization.get_safe_globals())
    try:
        yield
    finally:
        now = list(torch.serialization.get_safe_globals())
        if any(g not in before for g in now):
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals([g for g in now if g in before])


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, with atomic ``put``/``put_text``."""

    @staticmethod
    def _atomic_write(data: bytes, filepath: str | Path) -> None:
        atomic_write_bytes(data, filepath)

    def put(self, obj: bytes, filepath: str | Path) -> None:
        self._atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        self._atomic_write(obj.encode(encoding), filepath)


#: The atomic backend's own name. :class:`SafeCheckpointHook` asks for it by name, so
#: mmengine's ``'local'`` backend stays mmengine's for everyone else in the process.
ATOMIC_BACKEND = 'resnet_backbone_atomic_local'
register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)  # our name only


def is_complete_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a complete ``torch.save`` file (its zip directory is intact)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


_CKPT_NUM = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')


def _checkpoint_number(path: Path) -> int:
    m = _CKPT_NUM.match(path.name)
    return int(m.group(1)) if m else -1


def resumable_checkpoints(work_dir: str | Path) -> tuple[Path | None, list[Path]]:
    """The checkpoint to resume from in ``work_dir`` and the newer ones that are damaged.

    Everything is resolved inside ``work_dir``: ``last_checkpoint`` is read for the file
    *name* it holds (a work dir copied elsewhere keeps an absolute path to the original
    folder, which must not be loaded). The file it names wins; when that file is
    truncated or empty (a kill, a full disk) the next older ``iter_N.pth`` /
    ``epoch_N.pth`` of the same kind does, and the damaged ones are returned so that the
    caller says so. Higher-numbered files of an earlier, longer run in the same work dir
    are not this run's. Without a usable ``last_checkpoint``, the highest-numbered
    complete checkpoint wins.

    Returns:
        ``(checkpoint or None, damaged newer checkpoints, newest first)``.
    """
    work_dir = Path(work_dir)
    numbered = [p for p in work_dir.glob('*.pth') if _CKPT_NUM.match(p.name)]
    pointer = work_dir / 'last_checkpoint'
    named = None
    if pointer.is_file():
        name = Path(pointer.read_text().strip()).name
        if name and (work_dir / name).is_file():
            named = work_dir / name
    if named is not None:
        kind = named.name.split('_')[0]
        order = [named] + sorted(
            (p for p in numbered if p.name.split('_')[0] == kind
             and _checkpoint_number(p) < _checkpoint_number(named)),
            key=_checkpoint_number, reverse=True)
    else:
        order = sorted(numbered, key=_checkpoint_number, reverse=True)
    damaged = []
    for path in order:
        if is_complete_checkpoint(path):
            return path, damaged
        damaged.append(path)
    return None, damaged


def find_resumable_checkpoint(work_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``work_dir``, or ``None``
    (:func:`resumable_checkpoints`)."""
    return resumable_checkpoints(work_dir)[0]


class CheckpointFileError(ToolError, ValueError):
    """A checkpoint file that cannot be read; the message is one line with the fix."""


class CheckpointReadError(ValueError):
    """A checkpoint file that ``torch.load`` (or pickle) could not read: empty, truncated,
    not a checkpoint, or holding objects a safe load refuses. The message is one line
    naming the file (see :func:`unreadable_checkpoint`)."""


#: The first bytes of a legacy (pre-zip, torch < 1.6) ``torch.save`` file: pickle
#: protocol 2 and torch's magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19'
_ZIP_MAGIC = b'PK\x03\x04'


def _read_head(path: str | Path) -> bytes:
    with open(path, 'rb') as f:
        return f.read(len(_LEGACY_TORCH_MAGIC))


def is_torch_save_file(path: str | Path) -> bool:
    """True if ``path`` starts like a ``torch.save`` file (zip archive, or the legacy
    format), whatever its name: such a ``.pkl`` is read as a ``.pth``. Header only."""
    try:
        head = _read_head(path)
    except OSError:
        return False
    return head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC)


def checkpoint_file_problem(path: str | Path) -> str | None:
    """What is wrong with ``path`` as a ``torch.save`` file, or ``None`` if it looks complete.

    Cheap: reads the header and the zip directory (at the end of the file), not the tensors.
    """
    path = Path(path)
    if not path.exists():
        return 'no such file'
    if path.is_dir():
        return 'is a folder, not a checkpoint file'
    try:
        size = path.stat().st_size
        head = _read_head(path)
    except OSError as exc:
        return f'cannot be read ({exc.strerror or exc})'
    if size == 0:
        return 'is empty (0 bytes)'
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return None  # legacy format: no directory to check; torch.load reads it
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        if head.startswith(_ZIP_MAGIC):
            return (f'is truncated ({size} bytes, its zip directory is missing): it was cut '
                    'short while being written or copied')
        return f'is not a PyTorch checkpoint ({size} bytes with no torch.save header)'
    if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
        return 'is a zip file but not a torch.save checkpoint (it has no data.pkl)'
    return None


def unreadable_checkpoint(path: str | Path, exc: BaseException) -> CheckpointReadError:
    """One line for a checkpoint that ``torch.load(weights_only=True)`` (or pickle)
    could not read: the file, what is wrong with it (:func:`checkpoint_file_problem`),
    and the fix.

    torch's own message is not passed on: it suggests re-running with
    ``weights_only=False``, which lets the file run arbitrary code, and that is
    dangerous advice for a file the user did not write.
    """
    path = Path(path)
    refused = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(exc))
    problem = checkpoint_file_problem(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if refused and size:
        why = (f'it holds a pickled Python object ({refused.group(1)}), e.g. a whole model '
               'saved with torch.save(model), which a safe load refuses; save '
               'model.state_dict() instead, where it was made: '
               'torch.save(model.state_dict(), path)')
    elif problem is None:  # header and zip directory intact, the contents are not
        why = (f'it is corrupt ({size} bytes; its header looks like a checkpoint but the '
               'contents cannot be read); re-download or re-save it')
    elif problem.startswith('is not a PyTorch checkpoint'):
        why = f'it {problem}; check the path, or re-download or re-save it'
    else:
        why = f'it {problem}; re-download or re-save it'
    return CheckpointReadError(f'checkpoint {str(path)!r} cannot be read: {why}')


def check_checkpoint_file(path: str | Path, what: str = 'checkpoint',
                          fix: str = 'give a complete checkpoint file') -> Path:
    """Raise a one-line :class:`CheckpointFileError` unless ``path`` is a readable checkpoint.

    Args:
        path: the file.
        what: how the user named it, e.g. ``'--resume'`` or ``'load_from'``.
        fix: what to do about it; ends the message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    problem = checkpoint_file_problem(path)
    if problem is not None:
        raise CheckpointFileError(f'{what} {path}: {problem}; {fix}')
    return Path(path)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temporary checkpoint files that killed runs left in ``folder``.

    Only our atomic writer's pattern (``.<name>.<pid>.XXXXXXXX.tmp``, see
    :func:`resnet_backbone.io.fileio.atomic_path`) for checkpoint files (``<name>`` ends with
    ``.pth``, or is ``last_checkpoint``) is touched, and only when its writer is gone:
    the process ``<pid>`` no longer runs on this host, or the file was last written more
    than :data:`STALE_TEMP_AGE_S` ago. So a second run started in the same work dir
    leaves the first run's checkpoint write alone. (Names without a pid, from versions
    before it was added, go by age only. The pid is this host's: runs on several hosts
    writing one work dir at once are not supported.) Call it when a run starts, on rank
    0, before anything is written.
    """
    return remove_dead_writers_temp_files(
        folder, recursive=False,
        only=lambda name: name.endswith('.pth') or name == 'last_checkpoint')


_PENDING_REMOVAL = 'ckpt_ids_to_remove'


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` that never removes a checkpoint before its successor
    is complete.

    Each save: (1) the new checkpoint is written atomically, (2) ``last_checkpoint`` is
    rewritten atomically to name it, (3) only then the checkpoint that falls out of
    ``max_keep_ckpts`` is removed. The step to remove is recorded in the message hub
    (hence in the new checkpoint) first, so that a removal a kill interrupted is done when
    that checkpoint is resumed. At the start of training, rank 0 also removes the stale
    temporary checkpoint files of killed runs (:func:`remove_stale_temp_files`).
    ``save_best`` likewise writes the new ``best_*.pth`` before it removes the previous
    one. Everything else (intervals, ``save_last``, resume bookkeeping) is mmengine's.

    Files are written through :class:`AtomicLocalBackend` (``backend_args`` selects it by
    its own name, :data:`ATOMIC_BACKEND`) when ``out_dir`` is a local folder and the
    config names no backend of its own.
    """

    def __init__(self, *args, **kwargs) -> None:
        out_dir = kwargs.get('out_dir')
        local = out_dir is None or '://' not in str(out_dir)
        if local and kwargs.get('backend_args') is None and \
                kwargs.get('file_client_args') is None:
            kwargs['backend_args'] = {'backend': ATOMIC_BACKEND}
        super().__init__(*args, **kwargs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not is_main_process():
            return
        if isinstance(self.file_backend, LocalBackend):
            for folder in {str(self.out_dir), str(runner.work_dir)}:
                for p in remove_stale_temp_files(folder):
                    runner.logger.info(f'removed {p.name}, a partial checkpoint that a '
                                       'killed run left')
        pending = runner.message_hub.get_info(_PENDING_REMOVAL) or []
        kept = set(getattr(self, 'keep_ckpt_ids', ()))
        self._remove_steps(runner, [s for s in pending if s not in kept])
        runner.message_hub.update_info(_PENDING_REMOVAL, [])

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine's, except that a previous ``best_*.pth`` is removed only after the new
        one is written (mmengine removes it first: a kill in the write window left no
        best checkpoint). A kill between the write and the removal leaves both files."""
        if not self.save_best:
            return
        single = len(self.key_indicators) == 1
        old = ({None: self.best_ckpt_path} if single else dict(self.best_ckpt_path_dict))
        # hidden from mmengine's method, which would remove them before writing
        if single:
            self.best_ckpt_path = None
        else:
            self.best_ckpt_path_dict = {k: None for k in self.best_ckpt_path_dict}
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            new = {None: self.best_ckpt_path} if single else self.best_ckpt_path_dict
            for key, path in old.items():  # not improved: the previous best stays the best
                if new.get(key) is None:
                    new[key] = path
            if single:
                self.best_ckpt_path = new[None]
        if not is_main_process():
            return
        for key, path in old.items():
            if path and path != new.get(key):
                if self.file_backend.isfile(path):
                    self.file_backend.remove(path)
                elif self.file_backend.isdir(path):  # deepspeed saves folders
                    self.file_backend.rmtree(path)
                else:
                    continue
                runner.logger.info(f'The previous best checkpoint {path} is removed')

    def _remove_steps(self, runner, steps) -> None:
        for step in steps:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed saves folders
                self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        to_remove = []
        if self.max_keep_ckpts > 0:
            # _save_checkpoint and _save_best_checkpoint may both call this for one step
            if not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
                if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                    to_remove.append(self.keep_ckpt_ids.popleft())
                self.keep_ckpt_ids.append(step)
                runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        # recorded in the new checkpoint: resuming it finishes an interrupted removal
        runner.message_hub.update_info(_PENDING_REMOVAL, to_remove)

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        # model-parallel-like training pulls sharded states from all ranks; rank 0 goes on
        if not is_main_process():
            return
        atomic_write_bytes(str(self.last_ckpt).encode(),
                           osp.join(runner.work_dir, 'last_checkpoint'))
        self._remove_steps(runner, to_remove)
        runner.message_hub.update_info(_PENDING_REMOVAL, [])


_CHECKPOINT_HOOK_NAMES = ('CheckpointHook', 'mmengine.CheckpointHook')


def use_safe_checkpoint_hook(cfg) -> bool:
    """Put :class:`SafeCheckpointHook` in place of ``CheckpointHook`` in ``cfg.default_hooks``.

    Returns True if it did (a config that names another checkpoint hook is left alone).
    """
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(hook, dict) and (hook.get('type') in _CHECKPOINT_HOOK_NAMES
                                   or hook.get('type') is CheckpointHook):
        hook['type'] = 'SafeCheckpointHook'
        return True
    return False
