"""Integration suite: real training runs (a few iterations), resume, torchrun. CI runs it."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py')


def pytest_collection_modifyitems(items):
    for item in items:
        if 'integration' in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def tiny_cfg(iters: int, ckpt_interval: int = 1000) -> dict:
    """Config overrides for a few fast iterations on the tiny data set."""
    d = {'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
         'train_dataloader.batch_size': 2, 'default_hooks.logger.interval': 1,
         'default_hooks.checkpoint.interval': ckpt_interval,
         'default_hooks.checkpoint.max_keep_ckpts': -1,
         # keep every prediction, so that even a barely trained model gets a COCO score
         'model.test_cfg.score_thr': 0.0}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        d[f'{loader}.num_workers'] = 0
        d[f'{loader}.persistent_workers'] = False
    return d


def tiny_options(iters: int, ckpt_interval: int = 1000) -> list[str]:
    """The same overrides as ``--cfg-options`` arguments."""
    return ['--cfg-options', *(f'{k}={v}' for k, v in tiny_cfg(iters, ckpt_interval).items())]


def run_tool(tool: str, *args: str, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / 'tools' / tool), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


@pytest.fixture(autouse=True)
def _runner_checkpoints_loadable():
    """Tests read Runner checkpoints with torch.load(weights_only=True), as the tools do."""
    from resnet_backbone.io.checkpoint_io import allow_runner_checkpoint_globals
    allow_runner_checkpoint_globals()


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: a shell starts
    background jobs with SIGINT ignored, the child would inherit that, and Python then
    installs no KeyboardInterrupt handler (the Ctrl-C tests would pass or fail by how
    pytest was started)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
