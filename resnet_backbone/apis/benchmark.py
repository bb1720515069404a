"""Side-by-side timing of ResNetV1Custom against mmdet's ResNet and torchvision's resnet.

All models get identical weights. Timings are interleaved (one step of each model in
turn, ``repeats`` times, after ``warmup`` steps each), so that drift on a shared machine
hits every model alike; ratios are of medians, taken in the same run. Besides time per
batch (mean ± sd, median) it reports the bytes saved for backward in a train step
(counted with ``torch.autograd.graph.saved_tensors_hooks``, each storage once; exact and
deterministic), peak CUDA memory on a GPU, and achieved GFLOP/s (FLOPs from
``torch.utils.flop_counter``) next to this machine's measured fp32 matmul throughput.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

try:
    import resource  # POSIX only: page-fault counts
except ImportError:
    resource = None

from ..engine.compat import quiet_init_logging
from ..models.fast import mkldnn_fusion
from ..models.resnet import ResNetV1Custom


@dataclass
class Variant:
    """One model in one mode (``eval`` forward or ``train`` step)."""

    name: str
    mode: str
    times: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)
    saved_bytes: int | None = None
    peak_cuda_bytes: int | None = None
    gflop: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def row(self, baseline: Variant | None) -> dict:
        mean = statistics.fmean(self.times)
        sd = statistics.stdev(self.times) if len(self.times) > 1 else 0.0
        out = dict(name=self.name, mode=self.mode, mean_s=mean, sd_s=sd, median_s=self.median,
                   repeats=len(self.times), saved_bytes=self.saved_bytes,
                   page_faults=int(statistics.median(self.faults)) if self.faults else None,
                   peak_cuda_bytes=self.peak_cuda_bytes, gflop=self.gflop,
                   gflops_per_s=(self.gflop / self.median) if self.gflop else None)
        if baseline is not None:
            out['time_vs_mmdet'] = self.median / baseline.median
            if self.saved_bytes is not None and baseline.saved_bytes:
                out['saved_vs_mmdet'] = self.saved_bytes / baseline.saved_bytes
        return out


class _TorchvisionFeatures(nn.Module):
    """torchvision's resnet run as a C2-C5 feature extractor (the same work as ours)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        import torchvision  # only when torchvision is compared
        net = getattr(torchvision.models, f'resnet{depth}')(weights=None)
        del net.fc
        self.net = net

    def forward(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        outs = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            outs.append(x)
        return tuple(outs)


def _freeze_like_mmdet(model: nn.Module, frozen_stages: int, norm_eval: bool) -> None:
    """Freeze torchvision's stem + first stages and keep its BNs in eval, like mmdet."""
    n = model.net
    parts = [n.conv1, n.bn1] if frozen_stages >= 0 else []
    parts += [getattr(n, f'layer{i}') for i in range(1, frozen_stages + 1)]
    for m in parts:
        for p in m.parameters():
            p.requires_grad = False
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and (norm_eval or any(m is q for p in parts
                                                                for q in p.modules())):
            m.eval()


def build_models(depth: int, *, frozen_stages: int = 1, norm_eval: bool = True,
                 with_cp: bool = False, include: tuple[str, ...] = ('mmdet', 'ours-fast',
                                                                   'ours-ref', 'torchvision'),
                 seed: int = 0) -> dict[str, nn.Module]:
    """The models to compare, sharing one set of weights (mmdet's seeded init).

    A name with a ``-cp`` suffix (``mmdet-cp``, ``ours-fast-cp``) is that model with
    gradient checkpointing, so that cp on and off are compared within one run.
    """
    # mmdet.models pulls in mmcv.ops: only when mmdet is compared
    from mmdet.models.backbones import ResNet

    kw = dict(depth=depth, out_indices=(0, 1, 2, 3), frozen_stages=frozen_stages,
              norm_eval=norm_eval)
    torch.manual_seed(seed)
    ref = ResNet(**kw)
    with quiet_init_logging():
        ref.init_weights()
    with torch.no_grad():  # not zero-init: make every residual branch do real work
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    sd = ref.state_dict()
    models: dict[str, nn.Module] = {}
    for name in include:
        base, cp = (name[:-3], True) if name.endswith('-cp') else (name, with_cp)
        if base == 'mmdet':
            models[name] = ResNet(with_cp=cp, **kw)
        elif base in ('ours-fast', 'ours-ref'):
            models[name] = ResNetV1Custom(fast=base == 'ours-fast', with_cp=cp, **kw)
        elif base == 'torchvision' and not cp:  # torchvision has no checkpointing
            tv = _TorchvisionFeatures(depth)
            tv.net.load_state_dict(sd, strict=False)
            _freeze_like_mmdet(tv, frozen_stages, norm_eval)
            models[name] = tv
            continue
        else:
            raise ValueError(f'unknown model {name!r}; allowed values: mmdet, ours-fast, '
                             'ours-ref, torchvision, each but torchvision also with -cp')
        models[name].load_state_dict(sd)
    return models


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


def matmul_gflops(device: str, n: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matrix-multiply throughput: the best of ``repeats`` (the
    machine's attainable rate; on a shared machine the median mostly measures others)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


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


def run(*, depth: int = 50, batch: int = 2, size: int = 512, modes: tuple[str, ...] = (
        'eval', 'train'), with_cp: bool = False, channels_last: bool = False,
        amp_dtype: str | None = None, device: str = 'cpu', repeats: int = 5, warmup: int = 2,
        frozen_stages: int = 1, norm_eval: bool = True,
        include: tuple[str, ...] = ('mmdet', 'ours-fast', 'ours-ref', 'torchvision'),
        malloc_tuned: bool = False, log: Callable[[str], None] = print) -> dict:
    """Benchmark and return a JSON-ready report (see the module docstring)."""
    if malloc_tuned:
        tune_malloc()
    models = build_models(depth, frozen_stages=frozen_stages, norm_eval=norm_eval,
                          with_cp=with_cp, include=include)
    # channels_last is part of *our* fast path; the baselines run as users run them
    ours_fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_default = torch.rand(batch, 3, size, size, device=device)
    x_ours = x_default.to(memory_format=ours_fmt)
    inputs = {}
    for name, m in models.items():
        fmt = ours_fmt if name.startswith('ours') else torch.contiguous_format
        m.to(device=device, memory_format=fmt)
        inputs[name] = x_ours if name.startswith('ours') else x_default
    autocast = (lambda: torch.autocast(device_type=str(device).split(':')[0],
                                       dtype=getattr(torch, amp_dtype))) if amp_dtype \
        else contextlib.nullcontext

    def eval_step(m, x):
        with torch.no_grad(), autocast():
            m(x)

    def train_step(m, x):
        with autocast():
            loss = sum(o.float().mean() for o in m(x))
        loss.backward()
        m.zero_grad(set_to_none=True)

    variants: list[tuple[Variant, Callable[[], None]]] = []
    for mode in modes:
        for name, m in models.items():
            x = inputs[name]
            step = eval_step if mode == 'eval' else train_step
            m.train(mode == 'train')
            fn = partial(step, m, x)
            variant = Variant(name, mode)
            variants.append((variant, fn))
            if mode == 'train':
                variant.saved_bytes = saved_bytes_of(partial(_forward, m, x, autocast))
            else:
                # the fused oneDNN kernels are invisible to the FLOP counter; the math
                # (and so the FLOP count) is the same with them off
                with FlopCounterMode(display=False) as fc, mkldnn_fusion(False):
                    eval_step(m, x)
                variant.gflop = fc.get_total_flops() / 1e9
    # each variant keeps its own train/eval state between turns
    states = {id(v): (v.mode == 'train') for v, _ in variants}
    models_of = {id(v): models[v.name] for v, _ in variants}
    log(f'warm-up: {warmup} steps x {len(variants)} variants')
    for v, fn in variants:
        models_of[id(v)].train(states[id(v)])
        for _ in range(warmup):
            fn()
    for r in range(repeats):
        for v, fn in variants:
            m = models_of[id(v)]
            m.train(states[id(v)])
            if str(device).startswith('cuda'):
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            f0 = _minor_faults()
            t0 = time.perf_counter()
            fn()
            _sync(device)
            v.times.append(time.perf_counter() - t0)
            v.faults.append(_minor_faults() - f0)
            if str(device).startswith('cuda'):
                v.peak_cuda_bytes = max(v.peak_cuda_bytes or 0, torch.cuda.max_memory_allocated())
        log(f'repeat {r + 1}/{repeats} done')
    rows = []
    for v, _ in variants:
        base = next((b for b, _ in variants if b.name == 'mmdet' and b.mode == v.mode), None)
        rows.append(v.row(base))
    machine = matmul_gflops(device)
    for row in rows:
        if row['gflops_per_s']:
            row['fraction_of_matmul'] = row['gflops_per_s'] / machine
    settings = dict(depth=depth, batch=batch, size=size, modes=list(modes), with_cp=with_cp,
                    channels_last_ours=channels_last, amp_dtype=amp_dtype, device=device,
                    repeats=repeats, warmup=warmup, frozen_stages=frozen_stages,
                    norm_eval=norm_eval, malloc_tuned=malloc_tuned, torch=torch.__version__,
                    threads=torch.get_num_threads())
    return dict(settings=settings, matmul_gflops_per_s=machine, results=rows)


def _forward(m: nn.Module, x: torch.Tensor, autocast) -> None:
    """A train-mode forward (what it saves for backward is what is counted)."""
    with autocast():
        sum(o.float().mean() for o in m(x))


def _cell(value, fmt: str, width: int) -> str:
    """``value`` formatted, or ``-`` where the figure does not apply (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f'{value:>{width}{fmt}}'


def table(report: dict) -> str:
    """A plain-text table of a report; ``-`` marks a cell that does not apply."""
    head = (f"{'model':<12} {'mode':<6} {'mean±sd (s)':>17} {'median':>8} {'vs mmdet':>9} "
            f"{'saved MiB':>9} {'saved vs':>9} {'GFLOP/s':>8} {'of matmul':>9} {'faults':>7}")
    lines = [head, '-' * len(head)]
    for r in report['results']:
        saved = r['saved_bytes'] / 2**20 if r['saved_bytes'] else None
        lines.append(
            f"{r['name']:<12} {r['mode']:<6} {r['mean_s']:>8.3f}±{r['sd_s']:<8.3f} "
            f"{r['median_s']:>8.3f} {_cell(r.get('time_vs_mmdet'), '.3f', 9)} "
            f"{_cell(saved, '.1f', 9)} {_cell(r.get('saved_vs_mmdet'), '.3f', 9)} "
            f"{_cell(r['gflops_per_s'] or None, '.1f', 8)} "
            f"{_cell(r.get('fraction_of_matmul'), '.3f', 9)} "
            f"{_cell(r.get('page_faults'), 'd', 7)}")
    lines.append(f"machine fp32 matmul: {report['matmul_gflops_per_s']:.1f} GFLOP/s; "
                 f"settings: {json.dumps(report['settings'])}")
    return '\n'.join(lines)


def plot(report: dict, path: str | Path) -> Path:
    """Bar charts relative to mmdet: median time (eval and train) and bytes saved for
    backward (train), with the 1.0 line and each bar's value."""
    import matplotlib  # matplotlib is slow to import: only for --plot
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # after use("Agg")
    rows = [r for r in report['results'] if 'time_vs_mmdet' in r]
    saved = [r for r in rows if r.get('saved_vs_mmdet') is not None]
    panels = [('median time / mmdet', rows, 'time_vs_mmdet')]
    if saved:
        panels.append(('saved for backward / mmdet', saved, 'saved_vs_mmdet'))
    widths = [max(3, len(p[1])) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) * 1.05 + 1, 4),
                             gridspec_kw=dict(width_ratios=widths), squeeze=False)
    for ax, (label, data, key) in zip(axes[0], panels):
        values = [r[key] for r in data]
        bars = ax.bar(range(len(data)), values, color=[
            '#888' if r['name'].startswith('mmdet') else '#2a7' if r['name'].startswith('ours')
            else '#57c' for r in data])
        ax.bar_label(bars, [f'{v:.2f}' for v in values], fontsize=7)
        ax.axhline(1.0, color='k', lw=0.8)
        ax.set_xticks(range(len(data)), [f"{r['name']}\n{r['mode']}" for r in data],
                      fontsize=7)
        ax.set_ylabel(label)
    s = report['settings']
    fig.suptitle(f"R{s['depth']} {s['batch']}x3x{s['size']}x{s['size']} on {s['device']}"
                 f"{' (ours channels_last)' if s['channels_last_ours'] else ''}"
                 f"{' with_cp' if s['with_cp'] else ''}; medians of {s['repeats']} "
                 'interleaved repeats', fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return path

