"""Runner set-up shared by ``tools/train.py`` and ``tools/test.py``.

The tools only parse arguments; everything here can be imported and tested. Compared
with mmdet's own tools, a config needs no ``custom_imports`` for our backbone, resume
works on current torch, checkpoint writes are atomic, a kill never loses the last
checkpoint (:class:`~resnet_backbone.checkpoint_io.SafeCheckpointHook` replaces
``CheckpointHook``), and ``--launcher pytorch`` also works on CPU-only machines (gloo).

Mistakes a user makes on the command line end in one line naming the fix, before the
Runner prints its config or writes anything: a misspelt backbone argument
(:func:`check_backbone_args`), a damaged checkpoint (:func:`check_load_from`), a
``--launcher`` without the launcher (:func:`check_launcher`).
"""
from __future__ import annotations

import difflib
import inspect
import logging
import os
import os.path as osp
from pathlib import Path

from mmengine.config import Config
from mmengine.logging import print_log

from .checkpoint_io import (
    allow_runner_checkpoint_globals,
    check_checkpoint_file,
    find_resumable_checkpoint,
    use_atomic_checkpoint_writes,
    use_safe_checkpoint_hook,
)
from .cli import ToolError
from .compat import silence_dependency_warnings, summarise_frozen_params
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


_LAUNCH_VARS = {'pytorch': ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'),
                'slurm': ('SLURM_PROCID', 'SLURM_NTASKS')}
_HOW_TO_LAUNCH = {
    'pytorch': 'start it with torchrun (bash tools/dist_train.sh CONFIG NPROC or '
               'tools/dist_test.sh do that), or drop --launcher to run one process',
    'slurm': 'start it with srun (srun -n NPROC python tools/train.py CONFIG --launcher '
             'slurm), or drop --launcher to run one process'}


def check_launcher(launcher: str) -> None:
    """One-line error when ``--launcher`` is given but the process was not launched so."""
    if launcher == 'none':
        return
    if launcher not in _LAUNCH_VARS:
        raise ToolError(f"--launcher {launcher}: not supported; use none, pytorch or slurm")
    missing = [v for v in _LAUNCH_VARS[launcher] if v not in os.environ]
    if missing:
        raise ToolError(f'--launcher {launcher}: {", ".join(missing)} not set, so this '
                        f'process was not started by the launcher; {_HOW_TO_LAUNCH[launcher]}')


def _backbone_class(type_):
    from .registry import BACKBONES
    if isinstance(type_, type):
        return type_ if type_ in BACKBONES else None
    if isinstance(type_, str):
        name = type_.split('.')[-1]
        if type_ in (name, f'resnet_backbone.{name}', f'mmdet.{name}'):
            return next((c for c in BACKBONES if c.__name__ == name), None)
    return None


def _init_params(cls) -> list[str] | None:
    """The keyword arguments ``cls`` accepts (following ``**kwargs`` to the base class)."""
    for klass in cls.__mro__:
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        names = [n for n, p in params.items() if n != 'self'
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names
    return None


def check_backbone_args(cfg: Config) -> None:
    """One-line error for a ``model.backbone`` key our backbone does not take (a typo)."""
    backbone = (cfg.get('model') or {}).get('backbone')
    if not isinstance(backbone, dict):
        return
    cls = _backbone_class(backbone.get('type'))
    params = _init_params(cls) if cls is not None else None
    if params is None:
        return
    for key in backbone:
        if key == 'type' or key in params or key.startswith('_'):  # _scope_, _delete_
            continue
        close = difflib.get_close_matches(key, params, n=1)
        hint = f"did you mean '{close[0]}'?" if close else \
            f'see the arguments in the {cls.__name__} docstring'
        raise ToolError(f'model.backbone.{key}: {cls.__name__} has no argument {key!r}; '
                        f'{hint} (fix the config or --cfg-options)')


def load_config(config: str, *, work_dir: str | None = None, cfg_options: dict | None = None,
                data_root: str | None = None, launcher: str = 'none') -> Config:
    """Read ``config`` and apply the command-line overrides, as mmdet's tools do.

    Also puts :class:`~resnet_backbone.checkpoint_io.SafeCheckpointHook` in place of
    mmengine's ``CheckpointHook`` and checks the backbone's arguments and ``launcher``.
    """
    check_launcher(launcher)
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    use_safe_checkpoint_hook(cfg)
    check_backbone_args(cfg)
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
        check_checkpoint_file(resume, '--resume', _RESUME_FIX)
        cfg.resume = True
        cfg.load_from = resume


_RESUME_FIX = ('name a complete one, or give --resume without a path to pick the newest '
               'complete checkpoint of the work dir')
_CHECKPOINT_FIX = {
    'load_from': 'point load_from at a complete checkpoint (copy or download it again)',
    'checkpoint': "give a complete checkpoint (the work dir's last_checkpoint names the "
                  'newest)',
}


def check_load_from(cfg: Config, what: str = 'load_from') -> None:
    """One-line error, before the Runner is built, if ``cfg.load_from`` is a damaged file.

    ``what`` names it for the user (``'load_from'``, or ``'checkpoint'`` for test.py);
    when ``cfg.resume`` is set it is ``--resume``. URLs and ``scheme://`` paths are left to
    mmengine.
    """
    path = cfg.get('load_from')
    if not isinstance(path, str) or not path or '://' in path:
        return
    if cfg.get('resume'):
        what, fix = '--resume', _RESUME_FIX
    else:
        fix = _CHECKPOINT_FIX.get(what, _CHECKPOINT_FIX['load_from'])
    check_checkpoint_file(path, what, fix)


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


def build_runner(cfg: Config, checkpoint_arg: str = 'load_from'):
    """``Runner.from_cfg`` (or the config's ``runner_type``), minus mmengine's self-warnings.

    ``cfg.load_from`` is checked first (:func:`check_load_from`; ``checkpoint_arg`` is how
    the user gave it), so a damaged file is one line and nothing is written.
    """
    check_load_from(cfg, checkpoint_arg)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.logger.addFilter(_DropMessages(_MMENGINE_SELF_WARNINGS))
    summarise_frozen_params(runner)
    return runner
