"""Runner set-up shared by ``tools/train.py`` and ``tools/test.py``.

The tools only parse arguments; everything here can be imported and tested. Compared
with mmdet's own tools, a config needs no ``custom_imports`` for our backbone, resume
works on current torch, checkpoint writes are atomic, and ``--launcher pytorch`` also
works on CPU-only machines (gloo).
"""
from __future__ import annotations

import logging
import os.path as osp
from pathlib import Path

from mmengine.config import Config
from mmengine.logging import print_log

from .checkpoint_io import (
    allow_runner_checkpoint_globals,
    find_resumable_checkpoint,
    use_atomic_checkpoint_writes,
)
from .compat import silence_dependency_warnings
from .distributed import init_cpu_process_group


def setup_environment() -> None:
    """Registries, warning filters and checkpoint I/O fixes; idempotent."""
    silence_dependency_warnings()
    from mmdet.utils import register_all_modules

    import resnet_backbone  # noqa: F401  (registers ResNetV1Custom: no custom_imports needed)
    register_all_modules(init_default_scope=False)
    allow_runner_checkpoint_globals()
    use_atomic_checkpoint_writes()


def _dataloaders(cfg: Config):
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if loader is not None:
            yield loader


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point every dataset and COCO evaluator of ``cfg`` at ``data_root``.

    ``--cfg-options data_root=...`` is not enough because configs derive paths such as
    the evaluator's ``ann_file`` from it when they are parsed.
    """
    old = cfg.get('data_root')
    new = data_root.rstrip('/') + '/'
    cfg.data_root = new
    for loader in _dataloaders(cfg):
        ds = loader.dataset
        while 'dataset' in ds:  # RepeatDataset / ClassBalancedDataset wrappers
            ds = ds.dataset
        ds.data_root = new
    for key in ('val_evaluator', 'test_evaluator'):
        evaluators = cfg.get(key)
        for ev in (evaluators if isinstance(evaluators, list) else [evaluators]):
            if isinstance(ev, dict) and isinstance(ev.get('ann_file'), str):
                name = ev.ann_file[len(old):] if old and ev.ann_file.startswith(old) \
                    else osp.join('annotations', osp.basename(ev.ann_file))
                ev.ann_file = new + name


def load_config(config: str, *, work_dir: str | None = None, cfg_options: dict | None = None,
                data_root: str | None = None, launcher: str = 'none') -> Config:
    """Read ``config`` and apply the command-line overrides, as mmdet's tools do."""
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if data_root is not None:
        set_data_root(cfg, data_root)
    cfg.default_scope = cfg.get('default_scope', 'mmdet')
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    if init_cpu_process_group(launcher):
        wrapper = dict(cfg.get('model_wrapper_cfg') or {})
        wrapper['type'] = 'CPUDistributedDataParallel'
        cfg.model_wrapper_cfg = wrapper
    return cfg


def set_max_iters(cfg: Config, max_iters: int) -> None:
    """Change an iteration-based schedule's length, stretching the LR schedule with it.

    Schedulers that ended at the old ``max_iters`` end at the new one (and a cosine's
    ``T_max`` follows), so a shorter or longer run still anneals to the end.
    """
    if max_iters < 1:
        raise ValueError(f'max_iters must be >= 1; got {max_iters}')
    old = cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = max_iters
    if cfg.train_cfg.get('val_interval', old) >= old:
        cfg.train_cfg.val_interval = max_iters
    for sched in cfg.get('param_scheduler') or []:
        if sched.get('end') == old:
            sched.end = max_iters
            if 'T_max' in sched:
                sched.T_max = max_iters - sched.get('begin', 0)
        elif sched.get('end', 0) > max_iters:
            sched.end = max_iters


def apply_train_options(cfg: Config, *, amp: bool = False, auto_scale_lr: bool = False,
                        resume: str | None = None) -> None:
    """``--amp``, ``--auto-scale-lr`` and ``--resume [CKPT]`` (``'auto'`` = latest)."""
    if amp:
        import torch
        if not torch.cuda.is_available():
            raise ValueError("--amp needs a CUDA GPU (mmengine's AmpOptimWrapper refuses the "
                             'CPU); this machine has none, so drop --amp')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ValueError('--auto-scale-lr needs `auto_scale_lr = dict(enable=False, '
                             'base_batch_size=N)` in the config; it has none')
        cfg.auto_scale_lr.enable = True
    if resume == 'auto':
        found = find_resumable_checkpoint(cfg.work_dir)
        if found is None:
            print_log(f'--resume: no complete checkpoint in {cfg.work_dir}; starting fresh',
                      logger='current')
            cfg.resume = False
        else:
            cfg.resume = True
            cfg.load_from = str(found)
    elif resume is not None:
        if not Path(resume).is_file():
            raise FileNotFoundError(f'--resume {resume}: no such checkpoint file')
        cfg.resume = True
        cfg.load_from = resume


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# mmengine 0.10.7's own CheckpointHook builds a deprecated FileClient on every run and
# then warns about it (twice). Nothing a user can change; these exact lines are dropped.
_MMENGINE_SELF_WARNINGS = ('"FileClient" will be deprecated in future',
                           '"HardDiskBackend" is the alias of "LocalBackend"')


def build_runner(cfg: Config):
    """``Runner.from_cfg`` (or the config's ``runner_type``), minus mmengine's self-warnings."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.logger.addFilter(_DropMessages(_MMENGINE_SELF_WARNINGS))
    return runner
