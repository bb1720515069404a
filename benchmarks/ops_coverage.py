"""Which mmdet zoo detectors on a ResNet-family backbone train and predict with the
``mmcv._ext`` that this Python loads, and which of mmcv's compiled ops each one reaches.

For every mmdet zoo config (``mmdet/.mim/configs``, ``_base_`` excluded) whose resolved
``model.backbone.type`` is ``ResNet``, ``ResNeXt`` or ``ResNetV1d`` (the rule of the
ResNeXt zoo sweep in tests/test_resnext.py, widened to the ResNet family; mmdet 3.3 has
no zoo config on ``ResNetV1d``), on CPU:

1. build the detector with every pretrained checkpoint removed (no download: the
   ``init_cfg`` of type ``Pretrained``, ``pretrained=``, a distiller's ``teacher_ckpt``),
   SyncBN reverted to BN as mmengine's Runner does without a process group, then
   ``init_weights()``;
2. one loss step: ``model.train()``, a seeded synthetic batch of two images (128x128 and
   96x128 by default) with 2-3 random boxes each, their masks and a semantic map, through
   ``model.data_preprocessor``, ``model.loss``, ``parse_losses`` and ``backward()``;
3. one predict step: ``model.eval()``, ``model.predict`` under ``torch.no_grad()`` on
   two images (if that fails, again on the batch size of the config's
   ``test_dataloader``, one image in the zoo, as mmdet's own test runs it), with
   every ``test_cfg`` ``score_thr`` set to 0 (random weights score below the zoo's
   thresholds, and NMS would never run; ``--keep-score-thr`` keeps them).

A config that fails at the first size for another reason than a missing op is tried
once more at the next ``--sizes`` entry with both images that size (some heads need
larger maps, YOLACT one size per batch). Video models (``TrackDataPreprocessor``) get
clips of ``num_frames`` images; a model whose mmcv SyncBN needs a process group at build
gets a one-rank gloo group, as ``dist_train.sh CONFIG 1`` would give it. Every call into
``mmcv._ext`` is counted, per phase: the module is replaced in ``sys.modules`` by a
counting proxy before ``mmcv.ops`` imports it (each ``mmcv/ops/*.py`` binds the module
object at import and looks its functions up at call time).

Each config runs in a worker process (``--worker``, one at a time, one thread) that
stays up between configs; one that passes ``--timeout`` or grows past ``--max-rss-mb``
is killed or replaced, so a hang or a leak does not stop the sweep. Configs whose
``model`` settings are identical after the checkpoints are removed run once (the zoo
repeats a model across schedules and data sets); ``--no-dedupe`` runs each one.

``--reference-python PY`` re-runs the configs that failed under another interpreter
(e.g. one with mmcv's compiled ops), to tell "our backend lacks an op" from "fails on
CPU with compiled mmcv too"; ``--reference-json FILE`` takes those results from an
earlier run's JSON instead.

Writes ``--json`` (default docs/ops_coverage.json) after every config and ``--md``
(default docs/ops_coverage.md) at the end; progress lines go to stderr.

    python benchmarks/ops_coverage.py                                  # the whole sweep
    python benchmarks/ops_coverage.py --configs 'faster_rcnn/*' --limit 5 --json /tmp/c.json
    python benchmarks/ops_coverage.py --reference-python .venv/bin/python   # + compiled re-run
    python benchmarks/ops_coverage.py --render-only                    # md from the JSON
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import platform
import re
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FAMILY = ('ResNet', 'ResNeXt', 'ResNetV1d')
DEFAULT_JSON = ROOT / 'docs' / 'ops_coverage.json'
DEFAULT_MD = ROOT / 'docs' / 'ops_coverage.md'
RESULT_PREFIX = '@@ops_coverage '


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- selection (parent; no torch model is built here) ----------------------------------
def mim_configs() -> Path:
    """mmdet's packaged zoo configs, found without importing mmdet."""
    spec = importlib.util.find_spec('mmdet')
    if spec is None or not spec.submodule_search_locations:
        sys.exit('ops_coverage.py: error: mmdet is not installed in this Python')
    return Path(list(spec.submodule_search_locations)[0]) / '.mim' / 'configs'


def strip_checkpoints(node: Any) -> Any:
    """``node`` (a config's ``model``, as plain dicts) without anything that fetches
    weights: ``init_cfg`` of type ``Pretrained`` (or naming a ``checkpoint``) becomes
    None, ``pretrained`` and ``teacher_ckpt`` become None."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ('pretrained', 'teacher_ckpt'):
                out[key] = None
            elif key == 'init_cfg' and _fetches(value):
                out[key] = None
            else:
                out[key] = strip_checkpoints(value)
        return out
    if isinstance(node, (list, tuple)):
        return type(node)(strip_checkpoints(v) for v in node)
    return node


def _fetches(init_cfg: Any) -> bool:
    items = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(i, dict) and (i.get('type') == 'Pretrained' or 'checkpoint' in i)
               for i in items)


def select(root: Path, patterns: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    """(selected, skipped, near): the zoo configs on a FAMILY backbone that match
    ``patterns``, each ``{config, backbone, detector, model_key}``; ``skipped``, those
    that match but could not be read (``{config, error}``); ``near``, those left out
    whose backbone is a ResNet variant of another type or sits deeper than
    ``model.backbone`` (``{config, backbone}``)."""
    import warnings

    from mmengine.config import Config
    warnings.filterwarnings('ignore')  # the zoo's own deprecations; a sweep reads them all

    def wanted(rel: str) -> bool:
        return not patterns or any(fnmatch.fnmatch(rel, p) or p in rel for p in patterns)

    selected: list[dict] = []
    skipped: list[dict] = []
    near: list[dict] = []
    paths = [p for p in sorted(root.rglob('*.py'))
             if '_base_' not in p.relative_to(root).parts and wanted(str(p.relative_to(root)))]
    for i, path in enumerate(paths, 1):
        rel = str(path.relative_to(root))
        if i % 100 == 0:
            log(f'[select] {i}/{len(paths)} configs read')
        try:
            model = Config.fromfile(str(path)).get('model')
        except Exception as exc:  # noqa: BLE001 (a sweep: record it and go on)
            skipped.append(dict(config=rel, error=first_line(exc)))
            continue
        backbone = (model or {}).get('backbone') or {}
        if backbone.get('type') not in FAMILY:
            inner = ((model or {}).get('detector') or {}).get('backbone') or {}
            if re.search(r'Res(Ne[XS]t|Net|2Net)', str(backbone.get('type'))):
                near.append(dict(config=rel, backbone=str(backbone['type'])))
            elif inner.get('type') in FAMILY:
                near.append(dict(config=rel, backbone=f'{inner["type"]} in model.detector '
                                                      f'({model.get("type")})'))
            continue
        model = strip_checkpoints(model.to_dict())
        selected.append(dict(config=rel, backbone=backbone['type'],
                             detector=str(model.get('type')),
                             model_key=json.dumps(model, sort_keys=True, default=str)))
    return selected, skipped, near


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f'{type(exc).__name__}: {text.splitlines()[0] if text else ""}'.strip()


# ---- the worker (one config at a time; runs in the Python that is being tested) -------
class CountingExt:
    """Stands in for ``mmcv._ext``: hands out the real module's functions wrapped to count
    their calls (into ``counts``, by name; those the backend lacks also into
    ``missing``)."""

    def __init__(self, real: Any) -> None:
        self.__dict__['_real'] = real
        self.__dict__['_wrapped'] = {}
        self.__dict__['counts'] = Counter()
        self.__dict__['missing'] = Counter()

    def __getattr__(self, name: str) -> Any:
        if name.startswith('__'):
            return getattr(self._real, name)
        wrapped = self._wrapped.get(name)
        if wrapped is None:
            fn = getattr(self._real, name)  # AttributeError as the real module gives it
            if not callable(fn):
                return fn
            counts, missing = self.counts, self.missing

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                counts[name] += 1
                if getattr(fn, 'missing', False):
                    missing[name] += 1
                return fn(*args, **kwargs)

            wrapped.__name__ = name
            self._wrapped[name] = wrapped
        return wrapped

    def take(self) -> dict[str, int]:
        out = dict(sorted(self.counts.items()))
        self.counts.clear()
        return out


def install_counting_ext() -> tuple[CountingExt, str]:
    """Put the counting proxy in place of ``mmcv._ext``; must run before ``mmcv.ops`` is
    imported. Returns it and the backend name."""
    import types

    import mmcv
    real = importlib.import_module('mmcv._ext')
    counter = CountingExt(real)
    proxy = types.ModuleType('mmcv._ext')
    proxy.__getattr__ = counter.__getattr__  # type: ignore[attr-defined]
    for dunder in ('__file__', '__spec__', '__loader__', '__package__'):
        setattr(proxy, dunder, getattr(real, dunder, None))  # importlib and pkgutil read them
    proxy.BACKEND = getattr(real, 'BACKEND', 'compiled')  # type: ignore[attr-defined]
    sys.modules['mmcv._ext'] = proxy
    mmcv._ext = proxy  # type: ignore[attr-defined]
    # a module that bound the real one already (nothing should have, but be sure)
    for mod in list(sys.modules.values()):
        if getattr(mod, 'ext_module', None) is real:
            mod.ext_module = proxy
    return counter, proxy.BACKEND


def zero_score_thr(node: Any, in_test_cfg: bool = False) -> Any:
    """``node`` with every ``score_thr`` inside a ``test_cfg`` set to 0: with random
    weights no score passes the zoo's thresholds, and the post-processing (NMS, mask
    pasting) would never run."""
    if isinstance(node, dict):
        return {k: (0.0 if in_test_cfg and k == 'score_thr' and isinstance(v, (int, float))
                    else zero_score_thr(v, in_test_cfg or k == 'test_cfg'))
                for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(zero_score_thr(v, in_test_cfg) for v in node)
    return node


def _num_classes(node: Any) -> list[int]:
    found: list[int] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'num_classes' and isinstance(value, int) and value > 0:
                found.append(value)
            else:
                found += _num_classes(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found += _num_classes(value)
    return found


def synthetic_batch(model_cfg: dict, size: int, seed: int = 0, n: int = 2,
                    same_size: bool = False) -> dict:
    """``n`` (at most two) seeded images, ``size`` x ``size`` and 3/4 ``size`` x ``size``
    (both ``size`` x ``size`` with ``same_size``), uint8 BGR as PackDetInputs gives them,
    each with 2-3 random boxes, their labels, box-shaped masks, a semantic map, and
    proposals when the detector has no RPN. The meta keys are PackDetInputs' (and
    ``border``, which CenterNet's test-time crop adds). A video model (its data
    preprocessor is ``TrackDataPreprocessor``) gets ``n`` clips of ``num_frames`` such
    images instead, the same instances (``instances_ids``) in every frame."""
    import numpy as np
    import torch
    from mmdet.structures import DetDataSample, TrackDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData, PixelData

    gen = torch.Generator().manual_seed(seed)
    classes = min(_num_classes(model_cfg) or [1])
    labels_hi = min(classes, 10)
    needs_proposals = 'roi_head' in model_cfg and 'rpn_head' not in model_cfg
    video = (model_cfg.get('data_preprocessor') or {}).get('type') == 'TrackDataPreprocessor'
    frames = int((model_cfg.get('track_head') or {}).get('num_frames', 2)) if video else 1
    shapes = [(size, size)] * 2 if same_size else [(size, size), (size * 3 // 4, size)]
    inputs: list = []
    samples: list = []
    for i, (h, w) in enumerate(shapes[:n]):
        imgs, frame_samples = [], []
        for f in range(frames):
            imgs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen))
            if f == 0:
                k = 2 + int(torch.randint(0, 2, (1,), generator=gen))  # CrowdDet needs two
                lo = torch.rand(k, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6])
                wh = 16 + torch.rand(k, 2, generator=gen) * torch.tensor(
                    [w * 0.4 - 16, h * 0.4 - 16])
                boxes = torch.cat([lo, lo + wh], 1).floor()
                masks = np.zeros((k, h, w), dtype=np.uint8)
                for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                    masks[j, y1:y2, x1:x2] = 1
                labels = torch.randint(0, labels_hi, (k,), generator=gen)
            sample = DetDataSample(metainfo=dict(
                img_id=i * frames + f, img_path=f'synthetic_{i}_{f}.jpg', ori_shape=(h, w),
                img_shape=(h, w), scale_factor=(1.0, 1.0), flip=False, flip_direction=None,
                border=np.array([0, h, 0, w], dtype=np.float32)))  # CenterNet's test crop
            sample.gt_instances = InstanceData(bboxes=boxes.clone(), labels=labels.clone(),
                                               masks=BitmapMasks(masks.copy(), h, w))
            sample.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4),
                                                    labels=torch.zeros(0, dtype=torch.long))
            sem = torch.randint(0, labels_hi, (1, h, w), generator=gen)
            sample.gt_sem_seg = PixelData(sem_seg=sem)
            if needs_proposals:
                p = torch.rand(50, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
                psize = 8 + torch.rand(50, 2, generator=gen) * torch.tensor(
                    [w * 0.3, h * 0.3])
                sample.proposals = InstanceData(bboxes=torch.cat([p, p + psize], 1),
                                                scores=torch.rand(50, generator=gen))
            if video:
                sample.gt_instances.instances_ids = torch.arange(k)
                sample.set_metainfo(dict(frame_id=f, video_id=i, video_length=frames))
            frame_samples.append(sample)
        if video:
            inputs.append(torch.stack(imgs))
            samples.append(TrackDataSample(video_data_samples=frame_samples))
        else:
            inputs.append(imgs[0])
            samples.append(frame_samples[0])
    return dict(inputs=inputs, data_samples=samples)


def _where(exc: BaseException) -> str:
    """The deepest traceback frame in mmdet, mmcv, mmengine or this project."""
    import traceback
    frames = traceback.extract_tb(exc.__traceback__)
    best = frames[-1] if frames else None
    for frame in frames:
        if any(k in frame.filename for k in ('/mmdet/', '/mmcv/', '/mmengine/',
                                             'resnet_backbone')):
            best = frame
    if best is None:
        return ''
    name = best.filename
    for marker in ('site-packages/', str(ROOT) + '/'):
        if marker in name:
            name = name.split(marker, 1)[1]
    return f'{name}:{best.lineno} in {best.name}'


def _failure(exc: BaseException) -> dict:
    import traceback
    match = re.search(r"mmcv op '(\w+)'", str(exc))
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return dict(ok=False, error_type=type(exc).__name__, error=first_line(exc)[:300],
                where=_where(exc), missing_op=match.group(1) if match else None,
                traceback=''.join(tb)[-2500:])


def single_rank_group() -> bool:
    """A gloo process group of one rank, this process (a file store: no port)."""
    import tempfile

    import torch.distributed as dist
    if dist.is_initialized():
        return False
    store = os.path.join(tempfile.mkdtemp(prefix='ops_coverage_pg_'), 'store')
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=0, world_size=1)
    return True


#: where the worker's result lines go (set by ``worker``); phases announce themselves on
#: it, so that a timeout can say where it happened
_RESULTS: list = []


def run_phase(name: str, fn: Any, counter: CountingExt) -> dict:
    if _RESULTS:
        _RESULTS[0].write(RESULT_PREFIX + json.dumps(dict(phase=name)) + '\n')
    counter.take()
    counter.missing.clear()
    start = time.perf_counter()
    try:
        extra = fn() or {}
        out = dict(ok=True, **extra)
    except Exception as exc:  # noqa: BLE001 (a sweep)
        out = _failure(exc)
    out['seconds'] = round(time.perf_counter() - start, 3)
    out['ext'] = counter.take()
    if counter.missing:
        out['ext_missing'] = dict(counter.missing)
    return out


def run_one(rel: str, sizes: list[int], budget: float, counter: CountingExt,
            keep_score_thr: bool = False) -> dict:
    """Build, one loss step, one predict step, for one config; see the module docstring."""
    import gc

    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config, ConfigDict
    from mmengine.logging import MessageHub
    from mmengine.model import revert_sync_batchnorm

    start = time.perf_counter()
    root = mim_configs()
    result: dict[str, Any] = dict(config=rel, attempts=[])
    cfg = Config.fromfile(str(root / rel))
    model_cfg = strip_checkpoints(cfg.model.to_dict())
    if model_cfg.get('backbone'):
        model_cfg['backbone']['init_cfg'] = None
    if not keep_score_thr:
        model_cfg = zero_score_thr(model_cfg)
    teacher = model_cfg.get('teacher_config')
    if isinstance(teacher, str) and teacher.startswith('configs/'):
        # distillers name the teacher relative to mmdet's repository root
        model_cfg['teacher_config'] = str(root / teacher[len('configs/'):])
    test_batch = int((cfg.get('test_dataloader') or {}).get('batch_size', 1) or 1)
    for attempt_no, size in enumerate(sizes):
        torch.manual_seed(0)
        attempt: dict[str, Any] = dict(size=size)
        model = None
        holder: dict[str, Any] = {}

        # each closure runs within its own iteration: the defaults bind it (ruff B023)
        def build(holder: dict = holder) -> dict:
            extra: dict[str, Any] = {}
            try:
                m = MODELS.build(ConfigDict(model_cfg))
            except ValueError as exc:
                # mmcv's SyncBN (MMSyncBN) asks for the process group as it is built:
                # run as the one rank that ``dist_train.sh CONFIG 1`` would start
                if 'process group' not in str(exc):
                    raise
                holder['group'] = single_rank_group()
                extra['process_group'] = 'gloo, 1 rank (MMSyncBN is built against one)'
                m = MODELS.build(ConfigDict(model_cfg))
            m = revert_sync_batchnorm(m)
            m.init_weights()
            holder['model'] = m
            return dict(params_m=round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
                        **extra)

        def train(holder: dict = holder, size: int = size, attempt_no: int = attempt_no
                  ) -> dict:
            m = holder['model']
            m.train()
            # what the Runner's loop records and some heads read (BoxInst's warm-up)
            hub = MessageHub.get_current_instance()
            hub.update_info('iter', 0)
            hub.update_info('epoch', 0)
            data = m.data_preprocessor(
                synthetic_batch(model_cfg, size, same_size=attempt_no > 0), True)
            losses = m.loss(data['inputs'], data['data_samples'])
            loss, _ = m.parse_losses(losses)
            loss.backward()
            value = float(loss.detach())
            return dict(loss=value if value == value and abs(value) != float('inf')
                        else str(value))

        def test(n: int = 2, holder: dict = holder, size: int = size,
                 attempt_no: int = attempt_no) -> dict:
            m = holder['model']
            m.eval()
            with torch.no_grad():
                data = m.data_preprocessor(
                    synthetic_batch(model_cfg, size, 1, n, same_size=attempt_no > 0), False)
                out = m.predict(data['inputs'], data['data_samples'])
            return dict(detections=[len(o.pred_instances) if 'pred_instances' in o else None
                                    for o in out])

        attempt['build'] = run_phase('build', build, counter)
        if attempt['build']['ok']:
            attempt['train'] = run_phase('train', train, counter)
            attempt['test'] = run_phase('test', test, counter)
            first = attempt['test']
            if not first['ok'] and not first.get('missing_op') and test_batch < 2:
                # the zoo tests one image at a time (Guided Anchoring's masked conv
                # asserts it): what mmdet's own test would run
                attempt['test'] = run_phase('test', lambda: test(test_batch), counter)
                attempt['test'].update(batch=test_batch, batch2_failure=dict(
                    error=first['error'], where=first['where']))
        model = holder.pop('model', None)
        del model
        if holder.pop('group', False):
            torch.distributed.destroy_process_group()
        gc.collect()
        result['attempts'].append(attempt)
        phases = [attempt[k] for k in ('build', 'train', 'test') if k in attempt]
        failed = [p for p in phases if not p['ok']]
        if not failed or any(p.get('missing_op') for p in failed):
            break  # passed, or an op is missing (a larger input will not bring it)
        if time.perf_counter() - start > budget / 3 or attempt_no + 1 == len(sizes):
            break
    last = result['attempts'][-1]
    result['size'] = last['size']
    result['ok_build'] = last['build']['ok']
    result['ok_train'] = bool(last.get('train', {}).get('ok'))
    result['ok_test'] = bool(last.get('test', {}).get('ok'))
    result['seconds'] = round(time.perf_counter() - start, 2)
    return result


def worker(mem_limit_mb: int = 0) -> None:
    """Read config names (JSON lines) on stdin, answer one result line each; its address
    space is capped at ``mem_limit_mb`` (0: no cap), so a config that would take the
    machine's memory fails with an allocation error instead."""
    import logging
    import resource
    import warnings

    if mem_limit_mb > 0:
        cap = mem_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    result_fd = os.dup(1)
    os.dup2(2, 1)  # whatever mmdet prints goes to stderr, not into the result stream
    out = os.fdopen(result_fd, 'w', buffering=1)
    _RESULTS[:] = [out]
    warnings.filterwarnings('ignore')
    import torch
    torch.set_num_threads(1)
    counter, backend = install_counting_ext()
    import mmcv
    import mmdet
    import mmengine
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    register_all_modules(init_default_scope=True)
    MMLogger.get_instance('mmengine').setLevel(logging.ERROR)
    logging.getLogger('mmengine').setLevel(logging.ERROR)
    out.write(RESULT_PREFIX + json.dumps(dict(ready=True, backend=backend, versions=dict(
        python=platform.python_version(), torch=torch.__version__, mmcv=mmcv.__version__,
        mmdet=mmdet.__version__, mmengine=mmengine.__version__),
        ext_file=getattr(sys.modules['mmcv._ext'], '__file__', None))) + '\n')
    for line in sys.stdin:
        job = json.loads(line)
        try:
            res = run_one(job['config'], job['sizes'], job['budget'], counter,
                          job.get('keep_score_thr', False))
        except Exception as exc:  # noqa: BLE001 (reading the config itself failed)
            res = dict(config=job['config'], attempts=[], ok_build=False, ok_train=False,
                       ok_test=False, error=first_line(exc))
        res['backend'] = backend
        res['rss_mb'] = _rss_mb()
        out.write(RESULT_PREFIX + json.dumps(res, default=str) + '\n')


def _rss_mb() -> int:
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 2**20
    except OSError:
        return 0


# ---- the parent: workers, timeouts, the sweep ------------------------------------------
class Worker:
    """One worker process under ``python``; ``ask`` sends a config and waits for its
    result up to a deadline."""

    def __init__(self, python: str, stderr_path: str | None, mem_limit_mb: int = 0) -> None:
        self.python = python
        err = open(stderr_path, 'ab') if stderr_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), '--worker', '--mem-limit-mb',
             str(mem_limit_mb)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT))
        self.buf = b''
        self.phase = ''
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.info = self._read(time.monotonic() + 300)
        if self.info is None:
            self.kill()
            raise RuntimeError(f'the worker under {python} did not start')

    def _read(self, deadline: float) -> dict | None:
        while True:
            while b'\n' in self.buf:
                line, self.buf = self.buf.split(b'\n', 1)
                text = line.decode(errors='replace')
                if text.startswith(RESULT_PREFIX):
                    msg = json.loads(text[len(RESULT_PREFIX):])
                    if 'phase' in msg and 'config' not in msg:
                        self.phase = msg['phase']
                        continue
                    return msg
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                return None  # it died
            self.buf += chunk

    def ask(self, config: str, sizes: list[int], timeout: float,
            keep_score_thr: bool = False) -> dict | None:
        job = json.dumps(dict(config=config, sizes=sizes, budget=timeout,
                              keep_score_thr=keep_score_thr)) + '\n'
        self.phase = ''
        try:
            self.proc.stdin.write(job.encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        return self._read(time.monotonic() + timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def sweep(jobs: list[dict], python: str, args: argparse.Namespace, label: str,
          on_result: Any) -> dict:
    """Run ``jobs`` (``{config, ...}``) through workers under ``python``, one at a time;
    ``on_result(job, result)`` after each. Returns the worker's ready line."""
    worker_ = Worker(python, args.worker_log, args.mem_limit_mb)
    info = dict(worker_.info)
    log(f'[{label}] worker under {python}: mmcv._ext backend {info["backend"]} '
        f'({info.get("ext_file")})')
    try:
        for i, job in enumerate(jobs, 1):
            t0 = time.monotonic()
            res = worker_.ask(job['config'], args.sizes, args.timeout, args.keep_score_thr)
            if res is None:
                alive = worker_.proc.poll() is None
                res = dict(config=job['config'], attempts=[], ok_build=False,
                           ok_train=False, ok_test=False, backend=info['backend'],
                           seconds=round(time.monotonic() - t0, 1),
                           error=(f'Timeout: no result in {args.timeout:.0f} s' if alive
                                  else f'WorkerDied: exit code {worker_.proc.returncode}')
                           + (f' (in its {worker_.phase} step)' if worker_.phase else ''))
                worker_.kill()
                worker_ = Worker(python, args.worker_log, args.mem_limit_mb)
            elif res.get('rss_mb', 0) > args.max_rss_mb:
                worker_.kill()
                worker_ = Worker(python, args.worker_log, args.mem_limit_mb)
            on_result(job, res)
            log(f'[{label} {i}/{len(jobs)}] {job["config"]}: {status_word(res)} '
                f'{res.get("seconds", 0):.1f}s ext={",".join(ext_used(res)) or "-"}')
    finally:
        worker_.kill()
    return info


def status_word(res: dict) -> str:
    if res.get('ok_train') and res.get('ok_test'):
        return 'ok'
    return f'FAIL ({failure_reason(res)})'


def ext_used(res: dict, phase: str | None = None) -> list[str]:
    if not res.get('attempts'):
        return []
    last = res['attempts'][-1]
    names: set[str] = set()
    for p in ([phase] if phase else ['build', 'train', 'test']):
        names |= set(last.get(p, {}).get('ext', {}))
    return sorted(names)


def failure(res: dict) -> dict | None:
    """The first failing phase of the last attempt (with its ``phase`` name), or None."""
    if not res.get('attempts'):
        return dict(phase='run', error=res.get('error', 'no result'), where='',
                    missing_op=None)
    last = res['attempts'][-1]
    for phase in ('build', 'train', 'test'):
        if phase in last and not last[phase]['ok']:
            return dict(last[phase], phase=phase)
    return None


def failure_group(res: dict) -> str:
    """A failure's cause without the numbers that differ between configs."""
    f = failure(res)
    if f is None:
        return 'ok'
    if f.get('missing_op'):
        return f'MissingOp: {f["missing_op"]} is not in the torchvision backend'
    text = re.sub(r'\d+', 'N', re.sub(r'\s+', ' ', f.get('error', ''))).strip()
    if text.endswith(':') and f.get('where'):  # a bare assert: where says which
        text += ' ' + re.sub(r':\d+ in ', ' in ', f['where'])
    return text[:160]


def _ref_summary(results: list[dict]) -> str:
    refs = [r.get('reference') for r in results]
    if all(x is None for x in refs):
        return 'not re-run'
    verdicts = Counter('passes' if passed(x) else 'fails too' for x in refs if x)
    return ', '.join(f'{v} ({n})' if len(results) > 1 else v
                     for v, n in verdicts.most_common())


def failure_reason(res: dict) -> str:
    f = failure(res)
    if f is None:
        return 'ok'
    if f.get('missing_op'):
        return f'missing op {f["missing_op"]} ({f["phase"]})'
    return f'{f["phase"]}: {f["error"]}'


# ---- report ---------------------------------------------------------------------------
def passed(res: dict) -> bool:
    return bool(res.get('ok_train') and res.get('ok_test'))


def render_md(data: dict) -> str:
    results: list[dict] = data['results']
    n = len(results)
    ok = sum(passed(r) for r in results)
    meta = data['meta']
    models = {r.get('same_model_as') or r['config'] for r in results}
    lines = [
        '# mmcv ops coverage of the mmdet zoo (ResNet-family backbones)',
        '',
        f'Written by `benchmarks/ops_coverage.py` (its docstring says what each config goes '
        f'through: build without checkpoints, one loss step with `backward()`, one '
        f'`predict`, on CPU). Backend: **`mmcv._ext` = {meta["backend"]}** '
        f'({", ".join(f"{k} {v}" for k, v in meta["versions"].items())}); '
        f'backbones {", ".join(meta["family"])}; '
        f'{meta["host"]}; sweep took {meta["seconds"] / 60:.1f} min.',
        '',
        f'**{ok} of {n} configs ({100 * ok / max(n, 1):.1f}%) pass train + test** '
        f'({len(models)} distinct models; a config whose `model` equals an earlier '
        f"one's after the checkpoints are removed takes that one's result).",
        '',
    ]
    fails = [r for r in results if not passed(r)]
    lines += ['## Configs that do not pass', '']
    if not fails:
        lines += ['None.', '']
    else:
        ref_meta = data.get('reference_meta') or {}
        ref_name = (f'with `mmcv._ext` = {ref_meta["backend"]}' if ref_meta.get('backend')
                    else 'reference run')
        groups: dict[str, list[dict]] = {}
        for r in fails:
            groups.setdefault(failure_group(r), []).append(r)
        ids = {key: f'F{i}' for i, key in enumerate(groups, 1)}
        lines += ['Grouped by cause (the first failing step of the last attempt); the last '
                  f'column is the same config {ref_name}'
                  + (f' ({ref_meta["python"]})' if ref_meta.get('python') else '') + '.', '',
                  f'| | cause | configs | models | {ref_name} |', '|---|---|---:|---:|---|']
        for key, rs in groups.items():
            models_ = {r.get('same_model_as') or r['config'] for r in rs}
            lines.append(f'| {ids[key]} | {_md(key)} | {len(rs)} | {len(models_)} | '
                         f'{_ref_summary(rs)} |')
        lines.append('')
        notes = data.get('notes') or []
        if notes:
            lines += ['What they mean:', ''] + [f'- {x}' for x in notes] + ['']
        lines += ['| config | step | cause | where | ' + ref_name + ' |',
                  '|---|---|---|---|---|']
        for r in fails:
            f = failure(r) or {}
            lines.append(f'| {r["config"]} | {f.get("phase", "")} | '
                         f'{ids[failure_group(r)]} | {_md(f.get("where", ""))} | '
                         f'{_ref_summary([r])} |')
        lines.append('')
    usage_train: Counter = Counter()
    usage_test: Counter = Counter()
    usage_any: Counter = Counter()
    for r in results:
        tr, te = set(ext_used(r, 'train')), set(ext_used(r, 'test'))
        usage_train.update(tr)
        usage_test.update(te)
        usage_any.update(tr | te | set(ext_used(r, 'build')))
    lines += ['## `mmcv._ext` functions reached', '',
              'How many configs call each function (in the loss step, the predict step, '
              'either).', '', '| function | train | test | configs |', '|---|---:|---:|---:|']
    for name, count in sorted(usage_any.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f'| `{name}` | {usage_train[name]} | {usage_test[name]} | {count} |')
    none = sum(1 for r in results if not ext_used(r))
    lines += ['', f'{none} configs reach no `mmcv._ext` function.', '']
    near = data.get('not_selected') or []
    if near:
        lines += ['## ResNet variants left out', '',
                  f'Not in the sweep: the backbone type is not one of '
                  f'{", ".join(data["meta"]["family"])}, or the ResNet sits in a wrapped '
                  f'detector rather than at `model.backbone`.', '']
        kinds = Counter(n['backbone'] for n in near)
        lines += [f'- {k}: {v} config{"s" * (v > 1)}' for k, v in sorted(kinds.items())]
        lines.append('')
    skipped = data.get('skipped') or []
    if skipped:
        lines += ['## Zoo configs that could not be read (backbone unknown)', '']
        lines += [f'- {s["config"]}: `{_md(s["error"])}`' for s in skipped] + ['']
    lines += ['## Every config', '',
              '| config | backbone | detector | size | train | test | s | `mmcv._ext` '
              'functions |', '|---|---|---|---:|:-:|:-:|---:|---|']
    for r in results:
        same = r.get('same_model_as')
        lines.append(
            f'| {r["config"]} | {r.get("backbone", "")} | {r.get("detector", "")} | '
            f'{r.get("size", "")} | {_mark(r.get("ok_train"))} | {_mark(r.get("ok_test"))} | '
            f'{"=" if same else r.get("seconds", "")} | '
            f'{", ".join(ext_used(r)) or "-"} |')
    lines += ['', '`s` is the seconds the config took (build, train, test; `=` when it '
              'shares an earlier config\'s model and result).', '']
    return '\n'.join(lines)


def _mark(ok: Any) -> str:
    return 'ok' if ok else '**no**'


def _md(text: str) -> str:
    return str(text).replace('|', '\\|').replace('`', "'").replace('\n', ' ')[:220]


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(data, indent=1, default=str) + '\n')
    os.replace(tmp, path)


# ---- command line ---------------------------------------------------------------------
def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog='ops_coverage.py', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--configs', nargs='*', default=[], metavar='PATTERN',
                   help='zoo configs to run, by glob or substring of the path under '
                        'configs/ (default: all on a ResNet-family backbone)')
    p.add_argument('--limit', type=int, default=0, help='run only the first N selected')
    p.add_argument('--sizes', type=int, nargs='+', default=[128, 256],
                   help='input sizes to try in turn on a non-op failure (default 128 256)')
    p.add_argument('--timeout', type=float, default=300.0,
                   help='seconds per config, all attempts (default 300)')
    p.add_argument('--max-rss-mb', type=int, default=6000,
                   help='replace the worker when it grows past this (default 6000)')
    p.add_argument('--keep-score-thr', action='store_true',
                   help="keep the zoo's test_cfg score_thr (default: 0, so that NMS and "
                        'the rest of the post-processing run on random weights)')
    p.add_argument('--mem-limit-mb', type=int, default=14000,
                   help="cap on a worker's address space, so that one config cannot take "
                        "the machine's memory (default 14000; 0: none)")
    p.add_argument('--no-dedupe', action='store_true',
                   help='run configs whose model settings repeat an earlier one too')
    p.add_argument('--json', type=Path, default=DEFAULT_JSON)
    p.add_argument('--md', type=Path, default=DEFAULT_MD)
    p.add_argument('--resume', action='store_true',
                   help='keep the results already in --json (same backend) and run the rest')
    p.add_argument('--rerun-failed', action='store_true',
                   help='with --resume: run the configs that failed there again')
    p.add_argument('--reference-python', metavar='PY',
                   help='re-run the failing configs under this Python (e.g. compiled mmcv)')
    p.add_argument('--reference-json', type=Path, metavar='FILE',
                   help="take the failing configs' reference results from this earlier "
                        'run instead')
    p.add_argument('--note', action='append', default=[], metavar='TEXT',
                   help='a note for the report (repeatable; kept by --resume)')
    p.add_argument('--render-only', action='store_true',
                   help='only write --md from --json')
    p.add_argument('--worker-log', metavar='FILE',
                   help="append the workers' stderr here (default: discarded)")
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.mem_limit_mb)
        return 0
    if args.render_only:
        data = json.loads(args.json.read_text())
        args.md.write_text(render_md(data))
        log(f'wrote {args.md}')
        return 0
    # a kill (SIGTERM) ends the sweep through its ``finally``, which stops the worker
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    root = mim_configs()
    log(f'[select] reading the zoo configs under {root}')
    selected, skipped, near = select(root, args.configs)
    if args.limit:
        selected = selected[:args.limit]
    log(f'[select] {len(selected)} configs on {"/".join(FAMILY)}; '
        f'{len({s["model_key"] for s in selected})} distinct models; '
        f'{len(skipped)} unreadable')
    previous: dict[str, dict] = {}
    prior_seconds = 0.0  # the resumed run's own
    if args.resume and args.json.exists():
        old = json.loads(args.json.read_text())
        previous = {r['config']: r for r in old['results']}
        prior_seconds = float(old['meta'].get('seconds', 0.0))
        args.note = [n for n in old.get('notes', []) if n not in args.note] + args.note
    data: dict[str, Any] = dict(meta={}, results=[], skipped=skipped, not_selected=near,
                                notes=args.note)
    by_config: dict[str, dict] = {}
    first_of: dict[str, str] = {}
    jobs: list[dict] = []
    for s in selected:
        rep = first_of.setdefault(s['model_key'], s['config'])
        if rep != s['config'] and not args.no_dedupe:
            continue
        if s['config'] in previous and 'attempts' in previous[s['config']] and not (
                args.rerun_failed and not passed(previous[s['config']])):
            by_config[s['config']] = previous[s['config']]
            continue
        jobs.append(s)

    def assemble(seconds: float, info: dict) -> None:
        results = []
        for s in selected:
            rep = s['config'] if args.no_dedupe else first_of[s['model_key']]
            res = by_config.get(rep)
            if res is None:
                continue
            entry = dict(res, config=s['config'], backbone=s['backbone'],
                         detector=s['detector'])
            entry.pop('same_model_as', None)
            if rep != s['config']:
                entry['same_model_as'] = rep
            results.append(entry)
        data['results'] = results
        data['meta'] = dict(
            backend=info.get('backend'), versions=info.get('versions', {}),
            ext_file=info.get('ext_file'), family=list(FAMILY), sizes=args.sizes,
            timeout_s=args.timeout, score_thr_zeroed=not args.keep_score_thr,
            python=sys.executable, seconds=round(prior_seconds + seconds, 1),
            host=f'{platform.machine()} {os.cpu_count()} CPUs, 1 thread per worker, CPU only',
            configs=len(selected), distinct_models=len(set(first_of.values())))

    info: dict = {}

    def on_result(job: dict, res: dict) -> None:
        by_config[job['config']] = res
        assemble(time.monotonic() - t0, info)
        write_json(args.json, data)

    if jobs:
        info.update(sweep(jobs, sys.executable, args, 'sweep', on_result))
    elif previous:
        info.update(json.loads(args.json.read_text())['meta'])
    else:
        info.update(dict(backend=None))
    assemble(time.monotonic() - t0, info)
    failing = [c for c, r in by_config.items() if not passed(r)]
    reference: dict[str, dict] = {}
    if args.reference_json:
        ref_data = json.loads(args.reference_json.read_text())
        reference = {r['config']: r for r in ref_data['results']}
        data['reference_meta'] = dict(python=ref_data['meta'].get('python'),
                                      backend=ref_data['meta'].get('backend'),
                                      versions=ref_data['meta'].get('versions'),
                                      ext_file=ref_data['meta'].get('ext_file'))
    elif args.reference_python and failing:
        def on_ref(job: dict, res: dict) -> None:
            reference[job['config']] = res

        ref_info = sweep([dict(config=c) for c in failing], args.reference_python, args,
                         'reference', on_ref)
        data['reference_meta'] = dict(python=args.reference_python,
                                      backend=ref_info.get('backend'),
                                      versions=ref_info.get('versions'))
    for c in failing:
        if c in reference:
            ref = dict(reference[c])
            for a in ref.get('attempts', []):  # tracebacks: the main run has ours
                for p in ('build', 'train', 'test'):
                    if p in a:
                        a[p].pop('traceback', None)
            by_config[c]['reference'] = ref
    assemble(time.monotonic() - t0, info)
    write_json(args.json, data)
    args.md.write_text(render_md(data))
    n = len(data['results'])
    ok = sum(passed(r) for r in data['results'])
    log(f'[done] {ok}/{n} configs pass train + test ({100 * ok / max(n, 1):.1f}%) in '
        f'{(time.monotonic() - t0) / 60:.1f} min; wrote {args.json} and {args.md}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
