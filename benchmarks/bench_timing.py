"""Side-by-side timing of ResNetV1Custom against its peers, like for like, and the limit.

The peers: mmdet's ``ResNet``, torchvision's resnet, each of them and ours compiled by
Inductor, and ours in reference mode (``fast=False``). All models get identical weights
and the same memory format (``channels_last`` puts *every* model in channels_last; a
``-nchw`` model name keeps that one in NCHW). Timings are interleaved (one step of each
model in turn, ``repeats`` times, after a warm-up), so that drift on a shared machine
hits every model alike; ratios are of medians, taken in the same run. The first call of
each model is timed on its own (``first_s``: the compile time of a compiled model).

Besides time per batch (mean ± sd, median) it reports the bytes saved for backward in a
train step (counted with ``torch.autograd.graph.saved_tensors_hooks``, each storage once),
peak CUDA memory on a GPU, page faults per step, and achieved GFLOP/s as a fraction of
**this machine's convolution limit, measured in the same run**: the best of a few large
oneDNN channels_last convolutions, in float32 and in bfloat16 (:func:`conv_limit`). The
FLOPs are the model's conv (and matmul) FLOPs counted by ``torch.utils.flop_counter`` on
one reference forward (and train step), the same figure for every peer: the useful work,
whatever a model does to get it done. MKL's fp32 matmul rate is a labelled secondary
figure only (it is not this CPU's limit).

The models and their names (``mmdet``, ``ours-fast-cp``, ...): :mod:`bench_models`; the
tables, the plot and the JSON: :mod:`bench_report`; the command line:
``python benchmarks/benchmark.py`` (``rb-benchmark``).

The overhead mode (:func:`run_overhead`, ``--overhead``): a small input (R50, 2x3x64x64)
on one thread, where a step's time is mostly per-op cost, not convolution work. Per model
and mode it reports the median wall time per step (interleaved repeats) and the aten ops
dispatched per step, counted on one separate, untimed step with a ``TorchDispatchMode``
(forward, and backward in train: every op a GPU would launch, roughly). On a CPU it is
the proxy for the launch-bound GPU case; quote it beside the usual table.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

try:
    import resource  # POSIX only: page-fault counts
except ImportError:
    resource = None

from bench_models import (
    EAGER_MODELS,
    OVERHEAD_MODELS,
    PROFILED,
    ModelSpec,
    TorchvisionFeatures,
    build_models,
    check_overhead_models,
    parse_model,
    split_by_depth,
)
from resnet_backbone.models.compiled import inductor_freezing
from resnet_backbone.models.fast import always_fold, mkldnn_fusion
from resnet_backbone.models.inference import InferenceBackbone, check_compute_dtype
from resnet_backbone.models.resnet import ResNetV1Custom

#: (in, out, kernel, height=width) of the limit convolutions, batch 2: ResNet-50's
#: widest 3x3 and 1x1 shapes at about their real sizes, large enough to run at speed
LIMIT_CONVS = ((256, 256, 3, 64), (1024, 1024, 1, 32), (128, 128, 3, 128))


@dataclass
class Variant:
    """One model in one mode (``eval`` forward or ``train`` step)."""

    name: str
    mode: str
    dtype: str = 'fp32'
    times: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)
    first_s: float | None = None
    saved_bytes: int | None = None
    peak_cuda_bytes: int | None = None
    gflop: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def row(self, baseline: Variant | None, limit: float | None) -> dict:
        mean = statistics.fmean(self.times)
        sd = statistics.stdev(self.times) if len(self.times) > 1 else 0.0
        rate = self.gflop / self.median if self.gflop else None
        out = dict(name=self.name, mode=self.mode, dtype=self.dtype, mean_s=mean, sd_s=sd,
                   median_s=self.median, repeats=len(self.times), first_s=self.first_s,
                   saved_bytes=self.saved_bytes,
                   page_faults=int(statistics.median(self.faults)) if self.faults else None,
                   peak_cuda_bytes=self.peak_cuda_bytes, gflop=self.gflop,
                   gflops_per_s=rate,
                   fraction_of_limit=rate / limit if rate and limit else None)
        if baseline is not None:
            out['baseline'] = baseline.name
            out['time_vs_base'] = self.median / baseline.median
            if self.saved_bytes is not None and baseline.saved_bytes:
                out['saved_vs_base'] = self.saved_bytes / baseline.saved_bytes
        return out


def saved_bytes_of(step: Callable[[], None]) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``step``."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or meta tensors
            seen[(id(t), 0)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def _best_time(fn: Callable[[], object], device: str, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(device: str, n: int = 2048, repeats: int = 10) -> float:
    """fp32 matrix-multiply throughput (MKL on CPU), the best of ``repeats``. A
    secondary figure: MKL does not run at full speed on every CPU, so it is not the limit."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n ** 3 / _best_time(lambda: a @ b, device, repeats) / 1e9


def conv_limit(device: str = 'cpu', dtype: torch.dtype = torch.float32, repeats: int = 3,
               shapes: tuple[tuple[int, int, int, int], ...] | None = None) -> dict:
    """This machine's convolution limit: the best GFLOP/s of a few large channels_last
    convolutions (oneDNN on CPU), each the best of ``repeats`` calls (on a shared machine
    the median mostly measures the others).

    Returns:
        ``{'gflops_per_s': best, 'per_conv': {'256->256 3x3 @64': GFLOP/s, ...}}``.
    """
    per = {}
    with torch.no_grad():
        for cin, cout, k, hw in shapes or LIMIT_CONVS:
            x = torch.randn(2, cin, hw, hw, device=device, dtype=dtype).to(
                memory_format=torch.channels_last)
            w = torch.randn(cout, cin, k, k, device=device, dtype=dtype).to(
                memory_format=torch.channels_last)
            flop = 2 * 2 * cout * hw * hw * cin * k * k
            t = _best_time(lambda x=x, w=w, k=k: F.conv2d(x, w, padding=k // 2), device,
                           repeats)
            per[f'{cin}->{cout} {k}x{k} @{hw}'] = flop / t / 1e9
    return dict(gflops_per_s=max(per.values()), per_conv=per)


def native_bf16() -> bool:
    """Does oneDNN run bf16 convolutions natively on this CPU?"""
    check = getattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _minor_faults() -> int:
    """Page faults of this process so far. On CPU they are a real cost: glibc serves each
    buffer above 32 MB with a fresh mmap, and every 4 KiB page of it faults once."""
    if resource is None:  # not on POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def tune_malloc() -> None:
    """Keep freed memory in glibc's heap: no mmap per large buffer, no trimming (idempotent).

    Process-wide, so it applies to every model in the run alike. It takes the page-fault
    cost out of the comparison (what jemalloc/tcmalloc do for PyTorch on CPU).
    """
    name = ctypes.util.find_library('c')
    libc = ctypes.CDLL(name) if name else None
    mallopt = getattr(libc, 'mallopt', None)
    # M_TRIM_THRESHOLD = -1, M_MMAP_MAX = -4 (malloc.h)
    if mallopt is None or not (mallopt(-4, 0) and mallopt(-1, 2**31 - 1)):
        raise RuntimeError('--malloc-tuned needs glibc (mallopt); this C library has none')


def _sync(device: str) -> None:
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def _autocast_factory(device: str, amp_dtype: str | None):
    if not amp_dtype:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=str(device).split(':')[0],
                                  dtype=getattr(torch, amp_dtype))


def _eval_step(m, x, autocast):
    with torch.no_grad(), autocast():
        m(x)


def _train_step(m, x, autocast):
    with autocast():
        loss = sum(o.float().mean() for o in m(x))
    loss.backward()
    m.zero_grad(set_to_none=True)


def _forward(m: nn.Module, x: torch.Tensor, autocast) -> None:
    """A train-mode forward (what it saves for backward is what is counted)."""
    with autocast():
        sum(o.float().mean() for o in m(x))


def count_gflop(depth: int, batch: int, size: int, frozen_stages: int, norm_eval: bool,
                modes: tuple[str, ...], width: int | None = None) -> dict[str, float]:
    """The model's FLOPs per mode (conv + matmul, ``torch.utils.flop_counter``): one
    eval forward, one train step (forward + backward of what is trained), counted on
    ours in reference mode (mmdet's ops) in float32. The useful work of every peer."""
    m = ResNetV1Custom(depth=depth, out_indices=(0, 1, 2, 3), frozen_stages=frozen_stages,
                       norm_eval=norm_eval, fast=False)
    x = torch.rand(batch, 3, size, width or size)
    out = {}
    for mode in modes:
        m.train(mode == 'train')
        step = _eval_step if mode == 'eval' else _train_step
        with FlopCounterMode(display=False) as fc:
            step(m, x, contextlib.nullcontext)
        out[mode] = fc.get_total_flops() / 1e9
    return out


def run(*, depth: int = 50, batch: int = 2, size: int = 512, width: int | None = None,
        modes: tuple[str, ...] = ('eval', 'train'), with_cp: bool = False,
        channels_last: bool = False,
        amp_dtype: str | None = None, device: str = 'cpu', repeats: int = 5, warmup: int = 2,
        frozen_stages: int = 1, norm_eval: bool = True,
        include: tuple[str, ...] = EAGER_MODELS, compute_dtype: str = 'fp32',
        malloc_tuned: bool = False, profile: bool = False,
        log: Callable[[str], None] = print) -> dict:
    """Benchmark and return a JSON-ready report (see the module docstring). The input is
    ``batch x 3 x size x width`` (``width`` defaults to ``size``)."""
    width = width or size
    dtype = check_compute_dtype(compute_dtype)
    models, skipped = _models_for(depth, include, frozen_stages=frozen_stages,
                                  norm_eval=norm_eval, with_cp=with_cp,
                                  compute_dtype=compute_dtype, malloc_tuned=malloc_tuned,
                                  log=log)
    specs = {n: parse_model(n) for n in models}
    if (dtype == torch.bfloat16 or any(s.base == 'ours-bf16' for s in specs.values())) \
            and str(device).startswith('cpu') and not native_bf16():
        log('note: this CPU has no native bf16 convolution (oneDNN needs avx512bw/vl/dq or '
            'avx_ne_convert): bf16 runs emulated here, slower than fp32')
    autocast = _autocast_factory(device, amp_dtype)
    x32 = torch.rand(batch, 3, size, width, device=device)
    gflop = count_gflop(depth, batch, size, frozen_stages, norm_eval, modes, width)
    lim = {'fp32': conv_limit(device, torch.float32), 'bf16': conv_limit(device, torch.bfloat16)}
    log(f"conv limit: fp32 {lim['fp32']['gflops_per_s']:.1f}, bf16 "
        f"{lim['bf16']['gflops_per_s']:.1f} GFLOP/s")

    variants: list[tuple[Variant, Callable[[], None], nn.Module, bool]] = []
    eager_of: dict[str, nn.Module] = {}
    for name, m in models.items():
        spec = specs[name]
        x, v_dtype = _placed(m, spec, x32, channels_last, device, dtype)
        eager_of[name] = m
        runner = torch.compile(m) if spec.compiled else m
        for mode in modes:
            step = _step(spec, mode, dtype, runner, x, autocast, log)
            if step is None:
                continue
            if spec.compiled and mode == 'eval':
                step = _under(inductor_freezing, step)
            v = Variant(name, mode, v_dtype, gflop=gflop.get(mode))
            if mode == 'train' and not spec.compiled:
                m.train(True)
                v.saved_bytes = saved_bytes_of(_as_named(spec, partial(_forward, m, x, autocast)))
            variants.append((v, step, m, mode == 'train'))

    log(f'warm-up: {max(1, warmup)} steps x {len(variants)} variants (the first timed alone)')
    for v, fn, m, training in variants:
        m.train(training)
        t0 = time.perf_counter()
        fn()
        v.first_s = time.perf_counter() - t0
        for _ in range(warmup - 1):
            fn()
    for r in range(repeats):
        for v, fn, m, training in variants:
            m.train(training)
            if str(device).startswith('cuda'):
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()  # every model's weights
            _sync(device)
            f0 = _minor_faults()
            t0 = time.perf_counter()
            fn()
            _sync(device)
            v.times.append(time.perf_counter() - t0)
            v.faults.append(_minor_faults() - f0)
            if str(device).startswith('cuda'):
                v.peak_cuda_bytes = max(v.peak_cuda_bytes or 0,
                                        torch.cuda.max_memory_allocated() - resident)
        log(f'repeat {r + 1}/{repeats} done')
    # the limit again after the models: the better of before and after is the limit
    after = {'fp32': conv_limit(device, torch.float32), 'bf16': conv_limit(device, torch.bfloat16)}
    limits = {k: max(lim[k]['gflops_per_s'], after[k]['gflops_per_s']) for k in lim}
    rows = []
    for v, *_ in variants:
        base = _baseline(v, [b for b, *_ in variants])
        # under bf16 autocast the convs run in bf16: their limit is the bf16 one
        rows.append(v.row(base, limits['bf16' if amp_dtype == 'bfloat16' else v.dtype]))
    settings = dict(depth=depth, batch=batch, size=size, width=width, modes=list(modes),
                    with_cp=with_cp, channels_last=channels_last, amp_dtype=amp_dtype,
                    compute_dtype=compute_dtype, device=device, repeats=repeats,
                    warmup=warmup, frozen_stages=frozen_stages, norm_eval=norm_eval,
                    malloc_tuned=malloc_tuned, torch=torch.__version__,
                    threads=torch.get_num_threads(), models=list(models))
    report = dict(settings=settings, skipped=skipped, gflop=gflop,
                  conv_limit_gflops_per_s=limits,
                  conv_limit_detail=dict(before=lim, after=after),
                  matmul_gflops_per_s=matmul_gflops(device),
                  native_bf16=native_bf16() if str(device).startswith('cpu') else None,
                  results=rows)
    if profile:
        # the plain models of PROFILED only: a profile repeats every step per stage
        report['profile'] = profile_stages(
            {n: eager_of[n] for n in models if n in PROFILED}, x32, modes, channels_last,
            limits, device, repeats=max(3, min(repeats, 5)), log=log)
    return report


def _models_for(depth: int, include: tuple[str, ...], *, frozen_stages: int,
                norm_eval: bool, with_cp: bool, compute_dtype: str, malloc_tuned: bool,
                log: Callable[[str], None]) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Both modes' start: glibc tuned if asked, the peers that lack ``depth`` skipped (one
    line each), the rest built with shared weights. Returns (models, skipped)."""
    if malloc_tuned:
        tune_malloc()
    include, skipped = split_by_depth(depth, tuple(include))
    for name, why in skipped.items():
        log(f'skipped {name}: {why}')
    models = build_models(depth, frozen_stages=frozen_stages, norm_eval=norm_eval,
                          with_cp=with_cp, include=include, compute_dtype=compute_dtype)
    return models, skipped


def _placed(m: nn.Module, spec: ModelSpec, x32: torch.Tensor, channels_last: bool,
            device: str, dtype: torch.dtype) -> tuple[torch.Tensor, str]:
    """Move ``m`` to ``device`` in the memory format its name asks for; returns its input
    and its dtype's name (``'bf16'`` or ``'fp32'``)."""
    fmt = torch.channels_last if channels_last and not spec.nchw else torch.contiguous_format
    m.to(device=device, memory_format=fmt)
    v_dtype = 'bf16' if dtype == torch.bfloat16 or spec.base == 'ours-bf16' else 'fp32'
    return x32.to(dtype=torch.bfloat16 if v_dtype == 'bf16' else torch.float32,
                  memory_format=fmt), v_dtype


def _step(spec: ModelSpec, mode: str, dtype: torch.dtype, runner: Callable, x: torch.Tensor,
          autocast, log: Callable[[str], None]) -> Callable[[], None] | None:
    """One eval or train step of ``runner`` under its name's options; ``None`` (and one
    line) for a train step an inference snapshot or a bf16 run does not have."""
    if mode == 'train' and (spec.eval_only or dtype != torch.float32):
        log(f'{spec.name} train: not run (an inference snapshot)')
        return None
    return _as_named(spec, partial(_eval_step if mode == 'eval' else _train_step,
                                   runner, x, autocast))


def _as_named(spec: ModelSpec, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` under the options its model name's modifiers set (``-nofuse``, ``-fold``),
    for the timed steps and the saved-bytes count alike."""
    if spec.nofuse:
        fn = _under(lambda: mkldnn_fusion(False), fn)
    if spec.fold:
        fn = _under(always_fold, fn)
    return fn


def _under(make_context: Callable, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` run inside a fresh ``make_context()`` at every call."""
    def step():
        with make_context():
            fn()
    return step


def _baseline(v: Variant, all_variants: list[Variant]) -> Variant | None:
    """mmdet in the same mode (and dtype) if it ran, else the first model of that mode."""
    same = [b for b in all_variants if b.mode == v.mode]
    return next((b for b in same if b.name == 'mmdet'), same[0] if same else None)


# ---------------------------------------------------------------------------- overhead
class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while it is active (``ops``), and per op
    (``by_op``): forward and, in a train step, backward (autograd carries the mode into
    the backward pass), the recomputation of a checkpointed block included."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        key = str(func)
        self.by_op[key] = self.by_op.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def count_ops(step: Callable[[], None]) -> OpCounter:
    """Run ``step`` once under an :class:`OpCounter` and return the counter."""
    with OpCounter() as counter:
        step()
    return counter


def run_overhead(*, depth: int = 50, batch: int = 2, size: int = 64, width: int | None = None,
                 modes: tuple[str, ...] = ('eval', 'train'), with_cp: bool = False,
                 channels_last: bool = False, amp_dtype: str | None = None,
                 device: str = 'cpu', repeats: int = 20, warmup: int = 2,
                 frozen_stages: int = 1, norm_eval: bool = True,
                 include: tuple[str, ...] = OVERHEAD_MODELS, compute_dtype: str = 'fp32',
                 threads: int | None = 1, malloc_tuned: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """The overhead mode (module docstring): per model and mode, the median wall time per
    step and the aten ops dispatched per step, each with its ratio to mmdet's (same mode).

    The models are :func:`build_models`' (shared weights). Each variant runs one step,
    then ``warmup - 1`` more, then one untimed step under an :class:`OpCounter`; then
    ``repeats`` interleaved timed steps. ``threads`` sets ``torch.set_num_threads`` for
    the run (restored after; ``None`` leaves it). Returns a JSON-ready report
    (``kind='overhead'``); :func:`overhead_table` prints it.
    """
    check_overhead_models(tuple(include))
    width = width or size
    dtype = check_compute_dtype(compute_dtype)
    models, skipped = _models_for(depth, include, frozen_stages=frozen_stages,
                                  norm_eval=norm_eval, with_cp=with_cp,
                                  compute_dtype=compute_dtype, malloc_tuned=malloc_tuned,
                                  log=log)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used_threads = torch.get_num_threads()
        autocast = _autocast_factory(device, amp_dtype)
        x32 = torch.rand(batch, 3, size, width, device=device)
        variants = []  # (row, step, model, training)
        for name, m in models.items():
            spec = parse_model(name)
            x, v_dtype = _placed(m, spec, x32, channels_last, device, dtype)
            for mode in modes:
                step = _step(spec, mode, dtype, m, x, autocast, log)
                if step is None:
                    continue
                row = dict(name=name, mode=mode, dtype=v_dtype, times=[])
                variants.append((row, step, m, mode == 'train'))
        log(f'warm-up: {max(1, warmup)} steps x {len(variants)} variants, then one counted')
        for row, step, m, training in variants:
            m.train(training)
            for _ in range(max(1, warmup)):
                step()
            _sync(device)
            counter = count_ops(step)  # untimed: the mode's Python call per op is slow
            row['ops'] = counter.ops
            row['ops_by_name'] = dict(sorted(counter.by_op.items(), key=lambda kv: -kv[1]))
        for r in range(repeats):
            for row, step, m, training in variants:
                m.train(training)
                _sync(device)
                t0 = time.perf_counter()
                step()
                _sync(device)
                row['times'].append(time.perf_counter() - t0)
            if (r + 1) % 5 == 0 or r + 1 == repeats:
                log(f'repeat {r + 1}/{repeats} done')
    finally:
        torch.set_num_threads(before)
    rows = [_overhead_row(row) for row, *_ in variants]
    for row in rows:
        same = [b for b in rows if b['mode'] == row['mode']]
        base = next((b for b in same if b['name'] == 'mmdet'), same[0])
        row['baseline'] = base['name']
        row['ops_vs_base'] = row['ops'] / base['ops'] if base['ops'] else None
        row['time_vs_base'] = row['median_ms'] / base['median_ms']
        row['ops_by_name'] = row.pop('ops_by_name')  # the long one last
    settings = dict(depth=depth, batch=batch, size=size, width=width, modes=list(modes),
                    with_cp=with_cp, channels_last=channels_last, amp_dtype=amp_dtype,
                    compute_dtype=compute_dtype, device=device, repeats=repeats,
                    warmup=warmup, frozen_stages=frozen_stages, norm_eval=norm_eval,
                    malloc_tuned=malloc_tuned, torch=torch.__version__,
                    threads=used_threads, models=list(models))
    return dict(kind='overhead', settings=settings, skipped=skipped, results=rows)


def _overhead_row(row: dict) -> dict:
    """A variant's figures: median and sd of its times (ms), and time per op (µs)."""
    times = [t * 1e3 for t in row.pop('times')]
    median = statistics.median(times)
    by_op = row.pop('ops_by_name')
    return dict(row, median_ms=median, sd_ms=statistics.stdev(times) if len(times) > 1 else 0.0,
                repeats=len(times), us_per_op=median * 1e3 / row['ops'] if row['ops'] else None,
                ops_by_name=by_op)


# ---------------------------------------------------------------------------- profile
def _stages(m: nn.Module) -> list[tuple[str, Callable]] | None:
    """The model as (stage name, map -> map) in order, or ``None`` if it has no known
    structure (torchvision's wrapper is driven through its ``net``)."""
    if isinstance(m, InferenceBackbone):
        def layer_fn(layer):
            def fn(x):
                for j, block in enumerate(layer):
                    x = block(x, owns_input=j > 0)
                return x
            return fn
        return [('stem', lambda x: m.maxpool(m.stem(x)))] + [
            (f'layer{i + 1}', layer_fn(layer)) for i, layer in enumerate(m.layers)]
    if isinstance(m, TorchvisionFeatures):
        n = m.net
        return [('stem', lambda x: n.maxpool(n.relu(n.bn1(n.conv1(x)))))] + [
            (f'layer{i}', getattr(n, f'layer{i}')) for i in range(1, 5)]
    if hasattr(m, 'forward_stem'):
        stem = [('stem', lambda x: m.maxpool(m.forward_stem(x)))]
    elif hasattr(m, 'conv1') and hasattr(m, 'res_layers') and not getattr(m, 'deep_stem', 0):
        stem = [('stem', lambda x: m.maxpool(m.relu(m.norm1(m.conv1(x)))))]
    else:
        return None
    return stem + [(name, getattr(m, name)) for name in m.res_layers]


def profile_stages(models: dict[str, nn.Module], x32: torch.Tensor, modes: tuple[str, ...],
                   channels_last: bool, limits: dict, device: str, repeats: int = 3,
                   nofuse: set | None = None, nchw: set | None = None,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Time per stage (stem, layer1..4) and its fraction of the conv limit, per eager
    model and mode: forward (eval), forward and backward (train; stages detached from
    each other, each input requiring grad where an earlier stage trains, as in the real
    step). Medians of ``repeats``; FLOPs per stage counted on the same call."""
    rows = []
    for name, m in models.items():
        stages = _stages(m)
        if stages is None:
            continue
        bf16 = next((p.dtype for p in m.buffers()), torch.float32) == torch.bfloat16 or \
            next((p.dtype for p in m.parameters()), torch.float32) == torch.bfloat16
        fmt = torch.channels_last if channels_last and name not in (nchw or ()) \
            else torch.contiguous_format
        x = x32.to(dtype=torch.bfloat16 if bf16 else torch.float32, memory_format=fmt)
        limit = limits['bf16' if bf16 else 'fp32']
        ctx = (lambda: mkldnn_fusion(False)) if name in (nofuse or ()) else contextlib.nullcontext
        for mode in modes:
            if mode == 'train' and isinstance(m, InferenceBackbone):
                continue
            m.train(mode == 'train')
            with ctx():
                flops = _stage_flops(stages, x, mode, m)
                times = [_stage_times(stages, x, mode, m, device) for _ in range(repeats + 1)]
            times = times[1:]  # the first is a warm-up
            for i, (stage, _) in enumerate(stages):
                fwd = statistics.median(t[i][0] for t in times)
                bwd = statistics.median(t[i][1] for t in times) if mode == 'train' else 0.0
                total = fwd + bwd
                rows.append(dict(model=name, mode=mode, stage=stage, fwd_s=fwd,
                                 bwd_s=bwd if mode == 'train' else None, gflop=flops[i],
                                 fraction_of_limit=flops[i] / total / limit if total else None))
        log(f'profiled {name}')
    return rows


def _stage_inputs_need_grad(stages, m) -> list[bool]:
    """Does stage i's input require grad in a real train step (an earlier stage trains)?"""
    need, out = False, []
    for _, fn in stages:
        out.append(need)
        mods = [fn] if isinstance(fn, nn.Module) else []
        if not mods:  # the stem: trainable if the model's stem parameters are
            first = [p for n, p in m.named_parameters() if 'layer' not in n]
            need = need or any(p.requires_grad for p in first)
        else:
            need = need or any(p.requires_grad for p in fn.parameters())
    return out


def _run_stages(stages, x, mode, m, device, timed):
    training = mode == 'train'
    needs = _stage_inputs_need_grad(stages, m) if training else [False] * len(stages)
    n_out = len(stages) - 1  # C2..C5: the outputs of every layer (out_indices 0..3)
    outs, ins, fwd = [], [], []
    with torch.set_grad_enabled(training):
        h = x
        for i, (_, fn) in enumerate(stages):
            inp = h.detach().requires_grad_(needs[i]) if training else h
            _sync(device)
            t0 = time.perf_counter()
            h = fn(inp)
            _sync(device)
            fwd.append(time.perf_counter() - t0 if timed else 0.0)
            ins.append(inp)
            outs.append(h)
    bwd = [0.0] * len(stages)
    if training:
        grad_next = None
        for i in range(len(stages) - 1, -1, -1):
            out = outs[i]
            g = torch.full_like(out, 1.0 / out.numel()) if i >= len(stages) - n_out else None
            if grad_next is not None:
                g = grad_next if g is None else g + grad_next
            if g is None or not out.requires_grad:
                grad_next = None
                continue
            _sync(device)
            t0 = time.perf_counter()
            torch.autograd.backward(out, g)
            _sync(device)
            bwd[i] = time.perf_counter() - t0 if timed else 0.0
            grad_next = ins[i].grad
        m.zero_grad(set_to_none=True)
    return list(zip(fwd, bwd))


def _stage_times(stages, x, mode, m, device):
    return _run_stages(stages, x, mode, m, device, timed=True)


def _stage_flops(stages, x, mode, m) -> list[float]:
    """GFLOP per stage (forward, plus backward in train), with the fused kernels off (the
    flop counter cannot see them; the math is the same)."""
    out = []
    with mkldnn_fusion(False):
        for i in range(len(stages)):
            with FlopCounterMode(display=False) as fc:
                _run_prefix_stage(stages, x, mode, m, i)
            out.append(fc.get_total_flops() / 1e9)
    return out


def _run_prefix_stage(stages, x, mode, m, i):
    """Run stage ``i`` (and its backward in train) on its real input; the stages before it
    run outside the flop counter's view (their counts are their own)."""
    training = mode == 'train'
    needs = _stage_inputs_need_grad(stages, m) if training else [False] * len(stages)
    with torch.set_grad_enabled(False):
        h = x
        with _flop_counter_paused():
            for _, fn in stages[:i]:
                h = fn(h)
    with torch.set_grad_enabled(training):
        inp = h.detach().requires_grad_(needs[i]) if training else h
        out = stages[i][1](inp)
        if training and out.requires_grad:
            torch.autograd.backward(out, torch.full_like(out, 1.0 / out.numel()))
    m.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _flop_counter_paused():
    """Run without the enclosing ``FlopCounterMode`` counting (a dispatch mode is
    suspended with ``_python_dispatch._disable_current_modes``)."""
    from torch.utils._python_dispatch import _disable_current_modes  # private: used here only
    with _disable_current_modes():
        yield
