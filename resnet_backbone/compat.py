"""Narrow fixes for dependencies of the pinned stack, applied by our tools (not on import).

- mmengine 0.10.7's ``is_installed`` (used whenever a config names an ``mmdet::`` base)
  does ``importlib.reload(pkg_resources)``, and setuptools (pinned < 81 because mmcv
  2.1.0's build needs ``pkg_resources``) warns with a ``UserWarning`` on every such
  (re)load. We ignore exactly that message, nothing else.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


def silence_dependency_warnings() -> None:
    """Ignore the known, harmless warnings our pinned dependencies emit on every run."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)


@contextlib.contextmanager
def quiet_init_logging() -> Iterator[None]:
    """Hold mmengine's current logger at WARNING: ``init_weights`` of a top-level
    module outside a Runner logs one INFO line per parameter."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        yield
    finally:
        logger.setLevel(level)
