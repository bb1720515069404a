"""Runner set-up shared by ``tools/train.py`` and ``tools/test.py``.

The tools only parse arguments; everything here can be imported and tested. Compared
with mmdet's own tools, a config needs no ``custom_imports`` for our backbone, resume
works on current torch, checkpoint writes are atomic, a kill never loses the last
checkpoint (:class:`~resnet_backbone.io.checkpoint_io.SafeCheckpointHook` replaces
``CheckpointHook``), and ``--launcher pytorch`` also works on CPU-only machines (gloo).

Mistakes a user makes on the command line end in one line naming the fix, before the
Runner prints its config or writes anything: a misspelt backbone argument
(:func:`check_backbone_args`), a damaged checkpoint (:func:`check_load_from`), a
``--launcher`` without the launcher (:func:`check_launcher`), a data set that is not
there (:func:`prepare_data`).

The order in which :func:`load_config` applies the command line, so that what the user
typed explicitly wins:

1. the config file;
2. ``--data-root`` (also given as ``--cfg-options data_root=...``);
3. ``--train-ann`` / ``--val-ann`` / ``--img-dir`` and ``--classes`` (also given as
   ``--cfg-options metainfo.classes=[...]``), which set every split and every head's
   ``num_classes``;
4. ``--cfg-options``: applied last, it wins;
5. ``--max-iters`` (scales the LR schedule with the run);
6. each COCO evaluator follows its dataset's annotation file, unless the user set the
   evaluator's ``ann_file`` in ``--cfg-options``.
"""
from __future__ import annotations

import colorsys
import contextlib
import json
import logging
import os
import os.path as osp
import sys
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..data.shapes import generate
from ..errors import ToolError
from ..io.checkpoint_io import (
    allow_runner_checkpoint_globals,
    check_checkpoint_file,
    resumable_checkpoints,
    runner_checkpoint_globals,
    use_safe_checkpoint_hook,
)
from ..registry import check_backbone_kwargs
from .compat import (
    quiet_compiler_probe,
    register_mmdet_modules,
    silence_dependency_warnings,
    summarise_frozen_params,
)
from .distributed import init_cpu_process_group


def setup_environment() -> None:
    """What the tools set up for the whole process; idempotent. The library itself never
    calls it: registries (mmdet's modules and ours), the dependency warning filters, the
    Runner-checkpoint allow-list for ``torch.load(weights_only=True)``, and the one-line
    errors for empty data sets."""
    silence_dependency_warnings()
    quiet_compiler_probe()
    # mmdet is imported when a tool sets up, not when the package is: the backbone and
    # the registry work without mmdet
    register_mmdet_modules()
    allow_runner_checkpoint_globals()
    guard_empty_datasets()


def _dataloaders(cfg: Config):
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if loader is not None:
            yield loader


def _leaf_datasets(ds) -> list:
    """The dataset configs under wrappers (RepeatDataset, ClassBalancedDataset, Concat)."""
    if not isinstance(ds, dict):
        return []
    if isinstance(ds.get('datasets'), (list, tuple)):
        return [leaf for d in ds.datasets for leaf in _leaf_datasets(d)]
    if isinstance(ds.get('dataset'), dict):
        return _leaf_datasets(ds.dataset)
    return [ds]


def _split_dataset(cfg: Config, split: str, what: str):
    """The one dataset config of ``<split>_dataloader`` (None if there is no loader)."""
    loader = cfg.get(f'{split}_dataloader')
    if loader is None:
        return None
    leaves = _leaf_datasets(loader.dataset)
    if len(leaves) != 1:
        raise ToolError(f'{what}: the config\'s {split} set joins {len(leaves)} data sets; '
                        f'set their files in the config (or --cfg-options) instead')
    return leaves[0]


def _join(root, path):
    if not isinstance(path, str) or not path:
        return path
    if osp.isabs(path) or '://' in path or not root:
        return path
    return osp.join(root, path)


def dataset_ann_file(ds) -> str | None:
    """The annotation file a dataset config reads (``data_root`` joined as mmengine does)."""
    return _join(ds.get('data_root'), ds.get('ann_file')) if isinstance(ds, dict) else None


def _evaluators(cfg: Config, key: str) -> list:
    evs = cfg.get(key)
    return [ev for ev in (evs if isinstance(evs, list) else [evs])
            if isinstance(ev, dict) and isinstance(ev.get('ann_file'), str)]


def _same_file(a: str, b: str) -> bool:
    return osp.normpath(osp.abspath(a)) == osp.normpath(osp.abspath(b))


def _user_set(options, *keys: str) -> bool:
    """Whether ``--cfg-options`` set one of ``keys`` (or a dict or list above it)."""
    for opt in options or ():
        for key in keys:
            parts, want = opt.split('.'), key.split('.')
            if want[:len(parts)] == parts:  # the option sets the key or a node above it
                return True
            # list entries: val_evaluator.0.ann_file sets val_evaluator's ann_file
            if [p for p in parts if not p.isdigit()] == want:
                return True
    return False


def follow_dataset_ann_files(cfg: Config, options=None, before=None) -> None:
    """Point each COCO evaluator at its dataset's annotation file.

    An evaluator moves when its dataset's file differs from ``before`` (the files the
    config itself named: an override moved the data set), unless ``--cfg-options`` set
    the evaluator's ``ann_file`` (``options``: the keys the user set).
    """
    for split in ('val', 'test'):
        key = f'{split}_evaluator'
        loader = cfg.get(f'{split}_dataloader')
        leaves = _leaf_datasets(loader.dataset) if loader is not None else []
        if len(leaves) != 1 or _user_set(options, f'{key}.ann_file'):
            continue
        ann = dataset_ann_file(leaves[0])
        if not ann or (before is not None and before.get(split) == ann):
            continue
        for ev in _evaluators(cfg, key):
            ev.ann_file = ann


def _dataset_files(cfg: Config) -> dict:
    out = {}
    for split in ('val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        leaves = _leaf_datasets(loader.dataset) if loader is not None else []
        if len(leaves) == 1:
            out[split] = dataset_ann_file(leaves[0])
    return out


def set_data_root(cfg: Config, data_root: str, *, evaluators: bool = True) -> None:
    """Point every dataset (and, unless ``evaluators=False``, each COCO evaluator, which
    follows its dataset's annotation file) of ``cfg`` at ``data_root``.

    ``--cfg-options data_root=...`` alone is not enough because configs derive paths such
    as the evaluator's ``ann_file`` from it when they are parsed; :func:`load_config`
    takes it as ``--data-root``.
    """
    before = _dataset_files(cfg)
    new = data_root.rstrip('/') + '/'
    cfg.data_root = new
    for loader in _dataloaders(cfg):
        for ds in _leaf_datasets(loader.dataset):
            ds.data_root = new
    if evaluators:
        follow_dataset_ann_files(cfg, before=before)


def set_data_files(cfg: Config, *, train_ann: str | None = None, val_ann: str | None = None,
                   img_dir: str | None = None) -> None:
    """``--train-ann FILE``, ``--val-ann FILE`` (val and test sets), ``--img-dir DIR`` (the
    folder the annotation files' ``file_name`` entries are relative to, for every split).

    Relative paths are taken from the current directory (made absolute, so the config's
    ``data_root`` no longer applies to them).
    """
    for split, ann, flag in (('train', train_ann, '--train-ann'), ('val', val_ann, '--val-ann'),
                             ('test', val_ann, '--val-ann')):
        if ann is not None:
            ds = _split_dataset(cfg, split, flag)
            if ds is not None:
                ds.ann_file = osp.abspath(ann)
    if img_dir is not None:
        for split in ('train', 'val', 'test'):
            ds = _split_dataset(cfg, split, '--img-dir')
            if ds is not None:
                ds.data_prefix = dict(ds.get('data_prefix') or {},
                                      img=osp.abspath(img_dir).rstrip('/') + '/')


def add_data_arguments(p, train: bool = True) -> None:
    """The argparse flags --data-root, --train-ann/--val-ann, --img-dir and --classes of
    tools/train.py (``train=False``: tools/test.py, --val-ann alias --test-ann)."""
    g = p.add_argument_group(
        'data', 'Point the config at other COCO-format data. --cfg-options is applied '
                'after these and wins.')
    g.add_argument('--data-root', metavar='DIR',
                   help="COCO-layout folder: the config's annotation files and image folders "
                        "relative to it (default: the config's data_root; --cfg-options "
                        'data_root=DIR is the same)')
    if train:
        g.add_argument('--train-ann', metavar='FILE', help='training annotations (COCO JSON)')
    g.add_argument('--val-ann', *(() if train else ('--test-ann',)), metavar='FILE',
                   help='annotations to evaluate on (COCO JSON); the evaluator follows it')
    g.add_argument('--img-dir', metavar='DIR',
                   help="the folder the annotation files' file_name entries are relative "
                        'to (every split)')
    g.add_argument('--classes', metavar='A,B,C',
                   help='class names, comma-separated, as in the annotation files\' '
                        'categories: every split uses them and every head\'s num_classes '
                        'follows (--cfg-options metainfo.classes=[A,B,C] is the same)')


def check_data_arguments(p, args) -> None:
    """``p.error`` (exit 2, one line) for a data flag naming a missing file."""
    for flag in ('train_ann', 'val_ann'):
        value = getattr(args, flag, None)
        if value is not None and not Path(value).is_file():
            p.error(f'--{flag.replace("_", "-")} {value}: no such file')
    if args.img_dir is not None and not Path(args.img_dir).is_dir():
        p.error(f'--img-dir {args.img_dir}: no such folder')


def parse_classes(text) -> tuple[str, ...]:
    """``'a,b,c'`` (``--classes``) or a list/tuple (``metainfo.classes=[a,b]``) -> names."""
    items = text.split(',') if isinstance(text, str) else list(text)
    names = tuple(str(c).strip() for c in items if str(c).strip())
    if not names:
        raise ToolError(f'--classes {text!r}: no class names; give them comma-separated, '
                        'e.g. --classes cat,dog')
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ToolError(f'--classes: {", ".join(dup)} given twice; each class name once')
    return names


def _palette(n: int) -> list[tuple[int, int, int]]:
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.9))
            for k in range(n)]


def _class_heads(node, path='model'):
    """(path, dict) of every ``num_classes`` in the model config except the RPN's."""
    if isinstance(node, dict):
        if 'num_classes' in node:
            yield path, node
        for k, v in node.items():
            if k != 'rpn_head':
                yield from _class_heads(v, f'{path}.{k}')
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _class_heads(v, f'{path}.{i}')


def set_classes(cfg: Config, classes) -> None:
    """Class names for every split at once, and ``num_classes`` of every head to match
    (``bbox_head``, ``roi_head.bbox_head``, ``roi_head.mask_head``, ...; not the RPN)."""
    classes = parse_classes(classes)
    meta = dict(cfg.get('metainfo') or {})
    meta.update(classes=classes, palette=_palette(len(classes)))
    cfg.metainfo = meta
    for loader in _dataloaders(cfg):
        for ds in _leaf_datasets(loader.dataset):
            ds.metainfo = dict(ds.get('metainfo') or {}, classes=classes,
                               palette=_palette(len(classes)))
    for _, head in _class_heads(cfg.get('model')):
        head.num_classes = len(classes)


def check_num_classes(cfg: Config) -> None:
    """One line when the training set's class names and a head's ``num_classes`` differ."""
    ds = None
    for split in ('train', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        leaves = _leaf_datasets(loader.dataset) if loader is not None else []
        if leaves:
            ds = leaves[0]
            break
    classes = ((ds or {}).get('metainfo') or {}).get('classes')
    if not classes:
        return
    for path, head in _class_heads(cfg.get('model')):
        if head.num_classes != len(classes):
            raise ToolError(f'{path}.num_classes={head.num_classes}, but the data set has '
                            f'{len(classes)} classes ({", ".join(map(str, classes))}); drop '
                            f'the num_classes override: --classes sets every head to match')


def _pop_option_overrides(options: dict, data_root, classes):
    """Take ``data_root`` and ``metainfo.*`` out of ``--cfg-options``: they are variables the
    config expanded when it was read, so merging them would change nothing."""
    if 'data_root' in options:
        value = str(options.pop('data_root'))
        if data_root is not None and value.rstrip('/') != str(data_root).rstrip('/'):
            raise ToolError(f'--cfg-options data_root={value} and --data-root {data_root} '
                            'disagree; give the data root once, as --data-root')
        data_root = value
    meta = {}
    for key in [k for k in options if k == 'metainfo' or k.startswith('metainfo.')]:
        value = options.pop(key)
        if key == 'metainfo':
            meta.update(dict(value))
        else:
            meta[key.split('.', 1)[1]] = value
    if 'classes' in meta:
        value = meta.pop('classes')
        value = parse_classes([value] if isinstance(value, str) and ',' not in value
                              else value)
        if classes is not None and parse_classes(classes) != value:
            raise ToolError(f'--cfg-options metainfo.classes={list(value)} and --classes '
                            f'{classes} disagree; give the class names once, as --classes')
        classes = value
    return data_root, classes, meta


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




def check_backbone_args(cfg: Config) -> None:
    """One-line error for a ``model.backbone`` key our backbone does not take (a typo),
    by the registry's one check (:func:`resnet_backbone.registry.check_backbone_kwargs`)."""
    backbone = (cfg.get('model') or {}).get('backbone')
    if not isinstance(backbone, dict):
        return
    try:
        check_backbone_kwargs(backbone.get('type'), backbone)
    except ValueError as exc:
        raise ToolError(f'{exc} (fix the config or --cfg-options)') from None


def load_config(config: str, *, work_dir: str | None = None, cfg_options: dict | None = None,
                data_root: str | None = None, launcher: str = 'none',
                classes=None, train_ann: str | None = None, val_ann: str | None = None,
                img_dir: str | None = None, max_iters: int | None = None) -> Config:
    """Read ``config`` and apply the command-line overrides, as mmdet's tools do, in the
    order of the module docstring (``--cfg-options`` after the data flags: it wins).

    Also puts :class:`~resnet_backbone.io.checkpoint_io.SafeCheckpointHook` in place of
    mmengine's ``CheckpointHook`` and checks the backbone's arguments and ``launcher``.
    """
    check_launcher(launcher)
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    options = dict(cfg_options or {})
    data_root, classes, meta = _pop_option_overrides(options, data_root, classes)
    before = _dataset_files(cfg)
    schedule_length = (cfg.get('train_cfg') or {}).get('max_iters')
    if data_root is not None:
        set_data_root(cfg, data_root, evaluators=False)
    set_data_files(cfg, train_ann=train_ann, val_ann=val_ann, img_dir=img_dir)
    if classes is not None:
        set_classes(cfg, classes)
    for key, value in meta.items():  # e.g. metainfo.palette: every split
        for loader in _dataloaders(cfg):
            for ds in _leaf_datasets(loader.dataset):
                ds.metainfo = dict(ds.get('metainfo') or {}, **{key: value})
    if options:
        cfg.merge_from_dict(options)
    if max_iters is not None:
        set_max_iters(cfg, max_iters, old=schedule_length)
    follow_dataset_ann_files(cfg, options, before)
    use_safe_checkpoint_hook(cfg)
    check_backbone_args(cfg)
    if classes is not None:
        check_num_classes(cfg)
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


_INF = int(1e9)  # mmengine's "no end" for a scheduler


def _iter_schedulers(cfg: Config) -> list:
    scheds = cfg.get('param_scheduler') or []
    scheds = scheds if isinstance(scheds, (list, tuple)) else [scheds]
    return [s for s in scheds if isinstance(s, dict) and not s.get('by_epoch', True)]


#: The most of a run a warm-up may take after --max-iters: a 50-iteration warm-up in a
#: 40-iteration run keeps 10 iterations (a warm-up scaled with the run to 2 iterations
#: jumped to the full rate, and the loss to 9-11).
WARMUP_FRACTION = 0.25


_WARMUP_TYPES = ('LinearLR', 'ConstantLR', 'LinearParamScheduler', 'ConstantParamScheduler',
                 'LinearMomentum', 'ConstantMomentum')


def _is_warmup(s, old: int) -> bool:
    """A warm-up: a linear or constant scheduler from 0 that starts below the full rate
    and ends in the first :data:`WARMUP_FRACTION` of the run (not a flat or decaying
    first phase of a longer schedule, which scales with the run)."""
    factor = s.get('start_factor', s.get('factor', 1 / 3))  # mmengine's defaults
    return (str(s.get('type')).split('.')[-1] in _WARMUP_TYPES and s.get('begin', 0) == 0
            and 0 < s.get('end', _INF) <= WARMUP_FRACTION * old
            and isinstance(factor, (int, float)) and factor < 1)


def set_max_iters(cfg: Config, max_iters: int, old: int | None = None) -> None:
    """Change an iteration-based schedule's length, scaling the LR schedule with it.

    Schedulers that ended at the old length (``old``, default the config's
    ``train_cfg.max_iters``) end at the new one (a cosine's ``T_max`` follows), so a
    shorter or longer run still anneals to the end. A warm-up (:func:`_is_warmup`) keeps
    its length in iterations, capped at :data:`WARMUP_FRACTION` of the new run. Other
    boundaries (milestones, other phases) keep their
    iteration while they lie in the first half of the new run; otherwise every one scales
    by ``max_iters / old``.
    """
    if max_iters < 1:
        raise ValueError(f'max_iters must be >= 1; got {max_iters}')
    train_cfg = cfg.get('train_cfg') or {}
    if 'max_iters' not in train_cfg:
        raise ToolError(f'--max-iters: this config trains by epochs '
                        f'(train_cfg.max_epochs={train_cfg.get("max_epochs")}); set '
                        'train_cfg.max_epochs with --cfg-options instead')
    old = old or train_cfg.max_iters
    cfg.train_cfg.max_iters = max_iters
    if cfg.train_cfg.get('val_interval', old) >= old:
        cfg.train_cfg.val_interval = max_iters
    scheds = _iter_schedulers(cfg)
    warm_ends = {s.end for s in scheds if _is_warmup(s, old)}
    warm_cap = max(1, round(WARMUP_FRACTION * max_iters))
    inner = [b for s in scheds
             for b in (s.get('begin', 0), s.get('end', _INF), *s.get('milestones', ()))
             if b < old and b not in warm_ends]

    def new(b, boundary=True):
        if b >= old:
            return max_iters if b < _INF else b
        last = max(1, max_iters - 1)  # the last boundary inside the run
        if boundary and b in warm_ends:  # a warm-up's end (and the begin after it); a
            # warm-up needs 2 iterations to reach the full rate (mmengine's LinearLR)
            return max(min(2, last), min(b, warm_cap, last))
        if 2 * max(inner, default=0) <= max_iters:  # the early phases fit: keep them
            return b
        if b == 0:
            return 0
        return max(min(2, last), min(last, round(b * max_iters / old)))

    for s in scheds:
        begin, end = s.get('begin', 0), s.get('end', _INF)
        t_max_follows = s.get('T_max') == end - begin
        nb, ne = new(begin), new(end)
        if ne <= nb:  # a phase squeezed to nothing keeps one iteration
            nb = max(0, ne - 1)
        if 'begin' in s or nb != begin:
            s.begin = nb
        if 'end' in s:
            s.end = ne
        if 'milestones' in s:
            s.milestones = [new(m, boundary=False) for m in s.milestones]
        if 'T_max' in s:
            s.T_max = ne - nb if t_max_follows else max(1, new(s.T_max))


def check_schedule(cfg: Config, tool: str = '') -> str | None:
    """One WARNING line (stderr; also returned) when the LR schedule outlasts the run: a
    scheduler's ``end`` or a milestone lies beyond ``train_cfg.max_iters`` (or, for an
    epoch-based schedule, ``max_epochs``), so the rate never reaches where the schedule
    meant it to go (e.g. after ``--cfg-options train_cfg.max_iters=N``)."""
    train_cfg = cfg.get('train_cfg') or {}
    by_epoch = 'max_iters' not in train_cfg
    limit = train_cfg.get('max_epochs') if by_epoch else train_cfg.get('max_iters')
    if not isinstance(limit, int):
        return None
    scheds = cfg.get('param_scheduler') or []
    scheds = scheds if isinstance(scheds, (list, tuple)) else [scheds]
    late = []
    for s in scheds:
        if not isinstance(s, dict) or bool(s.get('by_epoch', True)) != by_epoch:
            continue
        end = s.get('end', _INF)
        if limit < end < _INF:
            late.append(f'{s.get("type")} end={end}')
        begin = s.get('begin', 0)  # milestones count from the scheduler's begin
        beyond = [m for m in s.get('milestones', ()) if begin + m > limit]
        if beyond:
            late.append(f'{s.get("type")} milestones {beyond}')
    if not late:
        return None
    key, flag = (('max_epochs', 'set the schedulers\' end/milestones too') if by_epoch else
                 ('max_iters', f'use --max-iters {limit} (tools/train.py) instead of '
                               'train_cfg.max_iters to scale the schedule with the run'))
    msg = (f'{tool + ": " if tool else ""}WARNING: the LR schedule outlasts '
           f'train_cfg.{key}={limit} ({", ".join(late)}): the run ends '
           f'before the learning rate gets where the schedule takes it; {flag}')
    print(msg, file=sys.stderr, flush=True)
    return msg


EMBEDDED_DATA = ('data', 'shapes')
_EMBEDDED_FILES = ('annotations/instances_train.json', 'annotations/instances_val.json')


def _embedded_root(ds) -> str | None:
    """The root when ``ds`` is the embedded data set at a ``.../data/shapes/`` folder."""
    root = ds.get('data_root')
    if not isinstance(root, str) or ds.get('ann_file') not in _EMBEDDED_FILES:
        return None
    return root if tuple(Path(osp.normpath(root)).parts[-2:]) == EMBEDDED_DATA else None


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock (several ranks may start at once); a no-op where unsupported."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as f:
        try:
            import fcntl  # POSIX only: elsewhere the lock is skipped
            fcntl.flock(f, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield


def _generate_embedded(root: str, tool: str) -> None:
    with _file_lock(Path(root) / '.generating.lock'):
        if all(osp.isfile(osp.join(root, f)) for f in _EMBEDDED_FILES):
            return  # another rank made it meanwhile
        print(f'{tool}: the embedded shapes data set is not there yet; generating it at '
              f'{root} (once, a few seconds)', file=sys.stderr, flush=True)
        generate(root)


def prepare_data(cfg: Config, splits=('train', 'val'), tool: str = '') -> None:
    """Before the Runner is built: make the embedded data set if a config points at a
    missing ``data/shapes/`` (:func:`resnet_backbone.data.shapes.generate`), else one line
    naming a missing annotation file or image folder and ``--data-root``; one WARNING line
    when a val/test set and its COCO evaluator read different annotation files.

    ``splits``: the loaders the tool uses (train.py: train, and val when it evaluates;
    test.py: test).
    """
    prefix = f'{tool}: ' if tool else ''
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if loader is None:
            continue
        if split == 'val' and (cfg.get('val_cfg') is None or cfg.get('val_evaluator') is None):
            continue
        for ds in _leaf_datasets(loader.dataset):
            ann = dataset_ann_file(ds)
            if not isinstance(ann, str) or '://' in ann:
                continue
            if not osp.isfile(ann):
                root = _embedded_root(ds)
                if root is not None:
                    _generate_embedded(root, tool or 'resnet_backbone')
                    continue
                flag = '--train-ann' if split == 'train' else '--val-ann'
                raise ToolError(
                    f'{ann}: no such file (the {split} set\'s annotations); point --data-root '
                    f'DIR at your COCO-layout folder (DIR/{ds.get("ann_file")}), or give '
                    f'{flag} FILE and --img-dir DIR for another layout')
            img = _join(ds.get('data_root'), (ds.get('data_prefix') or {}).get('img'))
            if isinstance(img, str) and '://' not in img and not osp.isdir(img):
                raise ToolError(f'{img}: no such image folder (the {split} set\'s images); '
                                f'point --data-root at the folder that holds it, or give '
                                f'--img-dir DIR (the folder the file_name entries of {ann} '
                                f'are relative to)')
        if split == 'train':
            continue
        leaves = _leaf_datasets(loader.dataset)
        ann = dataset_ann_file(leaves[0]) if len(leaves) == 1 else None
        for ev in _evaluators(cfg, f'{split}_evaluator'):
            if '://' in ev.ann_file:
                continue
            if not osp.isfile(ev.ann_file):
                raise ToolError(f'{ev.ann_file}: no such file ({split}_evaluator.ann_file); '
                                f'drop the override to use the {split} set\'s annotation '
                                f'file, or point --data-root at the folder that holds it')
            if isinstance(ann, str) and not ev.get('format_only') and \
                    not _same_file(ann, ev.ann_file):
                print(f'{prefix}WARNING: the {split} set reads {ann} but its evaluator '
                      f'scores against {ev.ann_file} ({split}_evaluator.ann_file); the '
                      'metric is wrong unless they hold the same images', file=sys.stderr,
                      flush=True)


def categories_of(ann_file: str) -> list[str]:
    """The category names of a COCO annotation file ([] if it cannot be read)."""
    try:
        with open(ann_file) as f:
            return [str(c.get('name')) for c in json.load(f).get('categories', [])]
    except (OSError, ValueError, AttributeError):
        return []


class NoImagesError(ToolError):
    """No image of a data set survived the class filter; the message lists the file's
    category names."""


def _explain_empty(ds, why: str, names: list[str]) -> NoImagesError:
    classes = ', '.join(map(str, ds.metainfo.get('classes', ())))
    cats = ', '.join(names) if names else '(none)'
    return NoImagesError(f'{ds.ann_file}: {why.format(classes=classes)}; the file\'s '
                         f'categories are: {cats}; give those with --classes '
                         f'{",".join(names) or "a,b"} (train.py and test.py)')


class ClassesMismatchError(NoImagesError):
    """The configured classes do not match the annotation file's categories (a name that
    is not there, or an order other than the file's); the message is one line."""


def check_class_names(classes, file_names: list[str], where: str) -> None:
    """One line unless ``classes`` are categories of the file, in the file's order.

    mmdet's ``CocoDataset`` (and ``CocoMetric``) number the labels in the *file's*
    category order, whatever order the names are given in, while every name a user sees
    follows the given order: another order would silently put the wrong name on every
    box. A name missing from the file would silently drop all its boxes. A subset, in the
    file's order, is fine.

    Args:
        classes: The configured class names (``--classes``, ``metainfo.classes``).
        file_names: The file's category names, in the file's order.
        where: The annotation file, for the message.

    Raises:
        ClassesMismatchError: A name not in the file, or names out of the file's order.

    Example:
        >>> check_class_names(['face', 'helmet'], ['face', 'cup', 'helmet'], 'a.json')
    """
    # one name, as mmdet (pycocotools) takes it: classes=('square') is a string
    classes = [classes] if isinstance(classes, str) else [str(c) for c in classes]
    cats = ', '.join(file_names)
    twice = sorted({n for n in file_names if n in classes and file_names.count(n) > 1})
    if twice:  # mmdet gives both ids labels, the second one past the last class
        raise ClassesMismatchError(
            f'{where}: the category name {", ".join(map(repr, twice))} appears more than '
            'once in the file\'s categories; give each category its own name in the file')
    missing = [c for c in classes if c not in file_names]
    in_file_order = [n for n in file_names if n in classes]
    if len(missing) == len(classes):
        raise ClassesMismatchError(
            f'{where}: none of the classes ({", ".join(classes)}) is a category of this '
            f'file; the file\'s categories are: {cats}; give those with --classes '
            f'{",".join(file_names)} (train.py and test.py)')
    if missing:
        raise ClassesMismatchError(
            f'{where}: class {", ".join(repr(c) for c in missing)} is not a category of this '
            f'file (its categories, in order: {cats}); fix the spelling in --classes '
            '(or metainfo.classes), or add the category to this file (labels and the '
            'COCO metric number the file\'s categories)')
    if classes != in_file_order:
        raise ClassesMismatchError(
            f'{where}: the classes {",".join(classes)} are not in the file\'s category '
            f'order ({cats}); labels are numbered in the file\'s order (as mmdet does), so '
            f'every name would be wrong: give --classes {",".join(in_file_order)} (every '
            'split\'s file must list the categories in that same order)')


def guard_empty_datasets() -> None:
    """mmdet's ``CocoDataset``: one line listing the annotation file's category names when
    a configured class is not in the file or the classes are not in the file's order
    (:func:`check_class_names`), or no image survives the filter (mmdet itself ends in
    ``ValueError: need at least one array to concatenate``). Idempotent."""
    from mmdet.datasets import CocoDataset  # mmdet.datasets is heavy: only when set up
    if getattr(CocoDataset.filter_data, '_resnet_backbone_guard', False):
        return
    original = CocoDataset.filter_data
    original_load = CocoDataset.load_data_list

    def load_data_list(self):
        # checked on the COCO object mmdet builds anyway (it deletes it after loading): a
        # second parse of a large annotation file would cost seconds
        dataset = self

        class CheckedCOCO(type(self).COCOAPI):
            def get_cat_ids(self, *args, **kwargs):
                names = [str(c.get('name')) for c in self.dataset.get('categories', [])]
                classes = dataset.metainfo.get('classes')
                if names and classes:  # (a file without categories: predict only)
                    check_class_names(classes, names, dataset.ann_file)
                return super().get_cat_ids(*args, **kwargs)

        self.COCOAPI = CheckedCOCO  # this dataset only
        try:
            return original_load(self)
        finally:
            del self.COCOAPI

    def filter_data(self):
        kept = original(self)
        if not getattr(self, 'cat_ids', None) and self.data_list:
            names = categories_of(self.ann_file)
            if names:  # (a file without categories: images to predict on, no metric)
                raise _explain_empty(self, 'none of the classes ({classes}) is a category of '
                                           'this file', names)
        if not kept and self.data_list and not self.test_mode:
            raise _explain_empty(self, f'no image of {len(self.data_list)} is left after '
                                       'filtering for the classes ({classes})',
                                 categories_of(self.ann_file))
        return kept

    filter_data._resnet_backbone_guard = True
    CocoDataset.filter_data = filter_data
    CocoDataset.load_data_list = load_data_list


def apply_train_options(cfg: Config, *, amp: bool = False, auto_scale_lr: bool = False,
                        resume: str | None = None) -> None:
    """``--amp``, ``--auto-scale-lr`` and ``--resume [CKPT]`` (``'auto'`` = latest)."""
    if amp:
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
        found, damaged = resumable_checkpoints(cfg.work_dir)
        if damaged:
            print_log(f'--resume: skipped {", ".join(p.name for p in damaged)} in '
                      f'{cfg.work_dir}: damaged (truncated or empty); resuming from '
                      f'{found.name if found else "nothing"} instead, and the damaged '
                      'file will be overwritten', logger='current', level=logging.WARNING)
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


def saved_progress(checkpoint: str) -> tuple[int | None, int | None]:
    """(iteration reached, where its iteration-based LR schedule ends) of a Runner
    checkpoint; ``None`` for what it does not hold. Read memory-mapped: no tensor data is
    loaded."""
    with runner_checkpoint_globals():
        saved = torch.load(checkpoint, map_location='cpu', weights_only=True, mmap=True)
    meta = saved.get('meta') or {}
    scheds = saved.get('param_schedulers') or []
    scheds = scheds if isinstance(scheds, list) else [scheds]
    ends = [s['end'] for s in scheds if isinstance(s, dict) and not s.get('by_epoch', True)
            and isinstance(s.get('end'), int) and s['end'] < _INF]
    it = meta.get('iter')
    return (it if isinstance(it, int) else None), (max(ends) if ends else None)


def check_resume_schedule(cfg: Config, tool: str = '') -> bool:
    """Before a resumed iteration-based run: one line on what it will do, when that is
    not simply "finish the saved run". False when nothing is left to train.

    mmengine restores the LR schedulers as saved (their ``end`` and ``T_max``), so a
    resume with another ``--max-iters`` does not rescale the schedule: past the saved
    schedule's end the rate stays where it ended. That is said in one WARNING line; a
    run that already reached ``max_iters`` is one line and trains nothing.
    """
    checkpoint = cfg.get('load_from')
    max_iters = (cfg.get('train_cfg') or {}).get('max_iters')
    if not cfg.get('resume') or not isinstance(checkpoint, str) or '://' in checkpoint \
            or not isinstance(max_iters, int):
        return True
    it, end = saved_progress(checkpoint)
    prefix = f'{tool}: ' if tool else ''
    name = Path(checkpoint).name
    if it is not None and it >= max_iters:
        print(f'{prefix}--resume: nothing to train: {name} is at iteration {it} and '
              f'max_iters is {max_iters} (the run is already finished); give a larger '
              '--max-iters to train on, or a new --work-dir to start over',
              file=sys.stderr, flush=True)
        return False
    if end is not None and end != max_iters:
        span = f'iteration {end + 1}' if end + 1 == max_iters else \
            f'iterations {end + 1}-{max_iters}'
        after = (f'{span} run at the rate where it ends'
                 if end < max_iters else f'the run stops at {max_iters}, before it anneals')
        print(f'{prefix}WARNING: --resume restores the LR schedule saved in {name}, which '
              f'ends at iteration {end}, not max_iters={max_iters}: it is not rescaled, so '
              f'{after}; for a full {max_iters}-iteration schedule train in a new '
              '--work-dir', file=sys.stderr, flush=True)
    return True


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
    """Drops log records whose message starts with one of ``prefixes``; with
    ``demote=True`` keeps them, a WARNING logged at INFO instead."""

    def __init__(self, prefixes: tuple[str, ...], demote: bool = False) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.demote = demote

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefixes):
            return True
        if self.demote and record.levelno == logging.WARNING:
            record.levelno, record.levelname = logging.INFO, 'INFO'
        return self.demote


# mmengine's IterBasedTrainLoop logs every resume's skipping of the data already trained
# on as a WARNING; it is what a resume is meant to do, so it is INFO here.
_MMENGINE_NOTICES = ('Advance dataloader',)

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
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.logger.addFilter(_DropMessages(_MMENGINE_SELF_WARNINGS))
    runner.logger.addFilter(_DropMessages(_MMENGINE_NOTICES, demote=True))
    summarise_frozen_params(runner)
    return runner
