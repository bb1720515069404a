"""Narrow fixes for dependencies of the pinned stack: process-wide ones applied by our
tools (not on import), and blocks that hold a filter only while our own call runs.

- mmengine 0.10.7's ``is_installed`` (used whenever a config names an ``mmdet::`` base)
  does ``importlib.reload(pkg_resources)``, and setuptools (pinned < 81 because mmcv
  2.1.0's build needs ``pkg_resources``) warns with a ``UserWarning`` on every such
  (re)load: twice per ``Config.fromfile`` of a shapes config. The tools ignore exactly
  that message (:func:`silence_dependency_warnings`); the library's own
  ``Config.fromfile`` runs in :func:`pkg_resources_reloads_quiet`.
- torch 2.13 deprecates TorchScript, and ``torch.distributed.optim`` (imported by
  ``mmengine.optim``, which ``mmengine.model`` imports) scripts its functional optimizers
  on import: 66 ``torch.jit.script`` and one ``torch.jit.interface``
  ``DeprecationWarning``, torch's own calls, on every ``import resnet_backbone``
  (and, under ``-W error::DeprecationWarning``, a failed import). The package imports
  ``mmengine.model`` first in :func:`torchscript_deprecations_ignored`.
- onedl-mmdetection 3.5.1 (``STACK=onedl``) says two things on importing its registries
  (``register_all_modules``) that concern only its optional extras:
  ``faster_coco_eval is not installed`` (a ``UserWarning``; our configs evaluate with
  ``CocoMetric``, not its ``FasterCocoMetric``) and ``Could not import OneDL. Skipping
  OneDL datasets.``, logged at DEBUG through ``print_log`` without a logger, which
  ``print()``s it (twice). :func:`register_mmdet_modules` drops exactly those two.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

#: setuptools < 81's warning on every (re)import of pkg_resources
PKG_RESOURCES_DEPRECATED = 'pkg_resources is deprecated as an API'
#: torch >= 2.13's warnings for TorchScript calls (torch.distributed.optim's, on import)
TORCHSCRIPT_DEPRECATED = r'`torch\.jit\.(script|interface)` is deprecated'


def silence_dependency_warnings() -> None:
    """Ignore the known, harmless warnings our pinned dependencies emit on every run
    (for the whole process: the tools' set-up only, never the library's)."""
    warnings.filterwarnings('ignore', message=PKG_RESOURCES_DEPRECATED, category=UserWarning)


def quiet_compiler_probe() -> None:
    """mmengine's ``collect_env`` (the environment block of every Runner's log) runs
    ``<CC> --version`` through the shell without capturing its stderr: on a machine with no
    C compiler, which the default install does not need, every tool's output then starts
    with ``/bin/sh: 1: gcc: not found``. The Runner's call sends that probe's stderr to
    /dev/null (the log says ``GCC: n/a`` as before); idempotent."""
    import mmengine.runner.runner as runner  # on use: it imports the whole Runner stack

    original = runner.collect_env
    if getattr(original, 'quiet', False):
        return

    @functools.wraps(original)
    def collect_env():
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, 'w') as null:
                os.dup2(null.fileno(), 2)
                return original()
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    collect_env.quiet = True
    runner.collect_env = collect_env


@contextlib.contextmanager
def pkg_resources_reloads_quiet() -> Iterator[None]:
    """The block without setuptools' ``pkg_resources is deprecated`` ``UserWarning``
    (mmengine's ``Config.fromfile`` reloads ``pkg_resources`` for each ``mmdet::``
    base: module docstring); the filters are as before afterwards, without the ones
    each reload of ``pkg_resources`` appends."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=PKG_RESOURCES_DEPRECATED,
                                category=UserWarning)
        yield


@contextlib.contextmanager
def torchscript_deprecations_ignored() -> Iterator[None]:
    """The block without torch's ``torch.jit.script``/``torch.jit.interface is
    deprecated`` ``DeprecationWarning`` (module docstring); the filters are as before
    afterwards. Not our calls: torch's, while a dependency imports it."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=TORCHSCRIPT_DEPRECATED,
                                category=DeprecationWarning)
        yield


#: what onedl-mmdetection 3.5.1 prints (a DEBUG line, through print_log without a logger)
#: and warns about its optional extras when its registries are imported
ONEDL_OPTIONAL_PRINTED = 'Could not import OneDL. Skipping OneDL datasets.'
ONEDL_OPTIONAL_WARNING = r'faster_coco_eval is not installed, metrics will not be computed'


@contextlib.contextmanager
def _without_printed_line(line: str) -> Iterator[None]:
    """Print what the block prints, except lines equal to ``line``."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        kept = [ln for ln in buffer.getvalue().splitlines(keepends=True)
                if ln.rstrip('\n') != line]
        sys.stdout.write(''.join(kept))


def register_mmdet_modules() -> None:
    """mmdet's ``register_all_modules(init_default_scope=False)``, without the two notices
    onedl-mmdetection gives there about its optional extras (module docstring);
    everything else it prints or warns passes."""
    from mmdet.utils import register_all_modules  # mmdet: only when a tool or extractor sets up
    with warnings.catch_warnings(), _without_printed_line(ONEDL_OPTIONAL_PRINTED):
        warnings.filterwarnings('ignore', message=ONEDL_OPTIONAL_WARNING, category=UserWarning)
        register_all_modules(init_default_scope=False)


class _FrozenParamsSkipped(logging.Filter):
    """Drops mmengine's per-tensor ``<name> is skipped since its requires_grad=False``."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (record.levelno == logging.WARNING
                    and msg.endswith(' is skipped since its requires_grad=False'))


def summarise_frozen_params(runner) -> None:
    """One INFO line for the frozen tensors instead of one WARNING each.

    mmengine 0.10.7's ``DefaultOptimWrapperConstructor`` warns once per parameter with
    ``requires_grad=False`` (15 lines for a frozen R18 stem + stage, ~33 for R50), though
    freezing is the detection default (``frozen_stages=1``) and nothing is wrong. Exactly
    that message is dropped from the runner's logger; what is frozen is said once here.
    """
    frozen = [name for name, p in runner.model.named_parameters() if not p.requires_grad]
    runner.logger.addFilter(_FrozenParamsSkipped())
    if frozen:
        parts = sorted({'.'.join(n.removeprefix('module.').split('.')[:2]) for n in frozen})
        shown = ', '.join(parts[:6]) + (', ...' if len(parts) > 6 else '')
        runner.logger.info(f'{len(frozen)} parameter tensors are frozen (requires_grad=False) '
                           f'and left out of the optimizer: {shown}')
