"""Fault injection for the fault tests' subprocesses: the library itself has no test hooks.

A test puts this folder first on ``PYTHONPATH`` (:func:`fault_env`), so that Python
imports this file at start-up in that process and in every process it starts (torchrun's
ranks), and sets one of:

- ``RB_TEST_DUMP_KILL_AFTER=RANK:N``: the dump rank ``RANK`` (torchrun's ``RANK``; 0
  without a launcher) kills itself with SIGKILL, no clean-up of any kind, as a crashed
  node would, right after the manifest record of its N-th written image.
- ``RB_TEST_PAUSE_IN_CKPT_WRITE=SECONDS``: each atomic write of a ``.pth`` file sleeps
  that long inside its write window (its temporary file complete on disk, not yet
  renamed), so that a test can reliably kill a run there.

Each patch is applied right after the library module it patches is first imported (a
``sys.meta_path`` finder), so nothing is imported early and the library's own code runs
around it. Only a test should put this file on a path: it shadows any other
``sitecustomize``.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

KILL_ENV = 'RB_TEST_DUMP_KILL_AFTER'
PAUSE_ENV = 'RB_TEST_PAUSE_IN_CKPT_WRITE'
HERE = Path(__file__).resolve().parent


def fault_env(env: dict, **faults: str) -> dict:
    """``env`` with ``faults`` (``KILL_ENV``/``PAUSE_ENV`` values) and this folder first on
    ``PYTHONPATH``."""
    path = os.pathsep.join(p for p in (str(HERE), env.get('PYTHONPATH', '')) if p)
    return {**env, **faults, 'PYTHONPATH': path}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after ``name`` is first imported."""

    def __init__(self, name: str, patch: Callable) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and the lookup below must not find this finder
        spec = importlib.util.find_spec(fullname)
        exec_module = spec.loader.exec_module

        def exec_then_patch(module) -> None:
            exec_module(module)
            self.patch(module)
        spec.loader.exec_module = exec_then_patch
        return spec


def _kill_after_nth_record(store) -> None:
    who, n = (int(v) for v in os.environ[KILL_ENV].split(':'))
    if int(os.environ.get('RANK', '0')) != who:
        return
    append, written = store.Manifest.append, [0]

    def append_then_die(self, record: dict) -> None:
        append(self, record)
        if record.get('status') == 'dumped' and not record.get('adopted'):
            written[0] += 1
            if written[0] >= n:
                os.kill(os.getpid(), signal.SIGKILL)
    store.Manifest.append = append_then_die


def _pause_in_checkpoint_writes(fileio) -> None:
    pause, atomic_path = float(os.environ[PAUSE_ENV]), fileio.atomic_path

    @contextlib.contextmanager
    def paused(path):
        with atomic_path(path) as tmp:
            yield tmp
            if str(path).endswith('.pth'):  # written, not yet renamed: the window
                time.sleep(pause)
    fileio.atomic_path = paused


if os.environ.get(KILL_ENV):
    sys.meta_path.insert(0, _PatchAfterImport('resnet_backbone.apis.dump.store',
                                              _kill_after_nth_record))
if os.environ.get(PAUSE_ENV):
    sys.meta_path.insert(0, _PatchAfterImport('resnet_backbone.io.fileio',
                                              _pause_in_checkpoint_writes))
