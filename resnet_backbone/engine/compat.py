"""Narrow fixes for dependencies of the pinned stack, applied by our tools (not on import).

- mmengine 0.10.7's ``is_installed`` (used whenever a config names an ``mmdet::`` base)
  does ``importlib.reload(pkg_resources)``, and setuptools (pinned < 81 because mmcv
  2.1.0's build needs ``pkg_resources``) warns with a ``UserWarning`` on every such
  (re)load. We ignore exactly that message, nothing else.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from mmengine.logging import MMLogger


def silence_dependency_warnings() -> None:
    """Ignore the known, harmless warnings our pinned dependencies emit on every run."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)


@contextlib.contextmanager
def quiet_init_logging() -> Iterator[None]:
    """Hold mmengine's current logger at WARNING: ``init_weights`` of a top-level
    module outside a Runner logs one INFO line per parameter."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        yield
    finally:
        logger.setLevel(level)


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
