"""Imported by this project's configs (``custom_imports``) for mmdet's own tools.

mmdet's ``tools/test.py`` and ``tools/train.py --resume`` load checkpoints with
mmengine's loader, which calls ``torch.load`` with torch's default ``weights_only=True``
(torch >= 2.6); a Runner checkpoint then fails with ``Unsupported global:
mmengine.logging.history_buffer.HistoryBuffer``. Importing this module allow-lists
exactly the classes mmengine's Runner puts in its checkpoints
(:func:`resnet_backbone.io.checkpoint_io.allow_runner_checkpoint_globals`, what our own
tools do at start), so those tools read our checkpoints with ``weights_only`` kept on.
The library itself never imports it.
"""
from __future__ import annotations

from ..io.checkpoint_io import allow_runner_checkpoint_globals
from .compat import quiet_compiler_probe

allow_runner_checkpoint_globals()
# and, with no C compiler (the default install needs none), no stray
# '/bin/sh: 1: gcc: not found' from mmengine's environment report
quiet_compiler_probe()
