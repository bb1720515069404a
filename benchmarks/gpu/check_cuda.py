"""CUDA checks that CPU CI cannot make: ours vs mmdet's ResNet on the GPU, the fast path,
the bf16 tier, with_cp gradients, autocast, channels_last, and one 2x3x800x1344 train
step's peak memory. Prints one line per check; JSON to argv[1]. On a CPU it runs tiny
(the autocast checks are then trivial). How to run it on the lent GPU: benchmarks/gpu/bundle.sh.

Results of 2026-12-01 (H200): docs/benchmark.md, "GPU (H200)".
"""
import json
import sys
import time
from pathlib import Path

import torch
from mmdet.models.backbones import ResNet

from resnet_backbone.models.fast import always_fold
from resnet_backbone.models.inference import inference_model
from resnet_backbone.models.resnet import ResNetV1Custom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench_models
from bench_models import shared_weights  # noqa: E402

dev = 'cuda' if torch.cuda.is_available() else 'cpu'
size, batch = (512, 2) if dev == 'cuda' else (64, 1)
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
results = {}


def rel(a, b):
    return max(((x.float() - y.float()).abs().max() / y.float().abs().max()).item()
               for x, y in zip(a, b))


def report(name, value, ok):
    results[name] = dict(value=value, ok=bool(ok))
    print(f"[{'ok ' if ok else 'BAD'}] {name}: {value}", flush=True)


kw = dict(depth=50, out_indices=(0, 1, 2, 3), frozen_stages=1, norm_eval=True)
sd = shared_weights(50, 1, True, 0)
torch.manual_seed(1)
x = torch.randn(batch, 3, size, size, device=dev)


def build(cls, **extra):
    m = cls(**kw, **extra)
    m.load_state_dict(sd)
    m.to(dev)
    m.eval()  # mmdet's ResNet.train() returns None, so no chaining
    return m


mm = build(ResNet)
ref = build(ResNetV1Custom, fast=False)
fast = build(ResNetV1Custom, fast=True)
with torch.no_grad():
    o_mm, o_ref, o_fast = mm(x), ref(x), fast(x)
    eq = all(torch.equal(a, b) for a, b in zip(o_mm, o_ref))
    report('eval fp32: ours fast=False vs mmdet ResNet, bitwise (cudnn deterministic)',
           'equal' if eq else f'max rel {rel(o_ref, o_mm):.2e}', eq)
    r = rel(o_fast, o_mm)
    report('eval fp32: ours fast=True vs mmdet, max rel', f'{r:.2e}', r < 1e-4)
    xc = x.contiguous(memory_format=torch.channels_last)
    fast_cl = fast.to(memory_format=torch.channels_last)
    r = rel(fast_cl(xc), o_mm)
    report('eval fp32 channels_last: ours fast vs mmdet NCHW, max rel', f'{r:.2e}', r < 1e-4)
    bf = inference_model(build(ResNetV1Custom, fast=True), 'bf16')
    r = rel(bf(x), o_mm)
    report('eval bf16 tier vs mmdet fp32, max rel', f'{r:.2e}', r < 5e-2)
    nan = x.clone()
    nan[0, :, 5, 5] = float('nan')
    report('NaN input stays NaN (fast path)', bool(torch.isnan(fast(nan)[-1]).any()),
           torch.isnan(fast(nan)[-1]).any())


def grads(m, amp=None):
    m.train()
    m.zero_grad(set_to_none=True)
    ctx = torch.autocast('cuda', dtype=amp) if amp and dev == 'cuda' else torch.autocast(
        'cpu', enabled=False)
    with ctx:
        loss = sum(o.float().mean() for o in m(x))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]


l_mm, g_mm = grads(build(ResNet))
l_ref, g_ref = grads(build(ResNetV1Custom, fast=False))
l_cp, g_cp = grads(build(ResNetV1Custom, fast=True, with_cp=True))
report('train fp32: ours fast=False grads vs mmdet, bitwise',
       all(torch.equal(a, b) for a, b in zip(g_ref, g_mm)),
       all(torch.equal(a, b) for a, b in zip(g_ref, g_mm)))
r = rel(g_cp, g_mm)
report('train fp32: ours fast with_cp grads vs mmdet, max rel', f'{r:.2e}', r < 1e-3)
l_amp, g_amp = grads(build(ResNetV1Custom, fast=True), torch.bfloat16)
l_mma, g_mma = grads(build(ResNet), torch.bfloat16)
with always_fold():
    l_fold, g_fold = grads(build(ResNetV1Custom, fast=True), torch.bfloat16)
e_mm, e_ours, e_fold = rel(g_mma, g_mm), rel(g_amp, g_mm), rel(g_fold, g_mm)
# off CUDA the autocast context is off: all three run fp32, mmdet's error is 0 and only
# the fold's rounding (about 1e-6) is left to check
report('train bf16 autocast: grads vs mmdet fp32, max rel: mmdet / ours / ours folded',
       f'{e_mm:.2e} / {e_ours:.2e} / {e_fold:.2e}',
       e_ours <= 1.5 * e_mm and e_fold <= 3 * e_mm if dev == 'cuda'
       else e_ours <= 1e-5 and e_fold <= 1e-5)
report('train bf16 autocast: ours fast grads vs mmdet bf16, bitwise (GPU: reference ops)',
       all(torch.equal(a, b) for a, b in zip(g_amp, g_mma)),
       all(torch.equal(a, b) for a, b in zip(g_amp, g_mma)))

if dev == 'cuda':
    # peak memory of one R50 train step, bf16 autocast + channels_last, 2x3x800x1344
    xb = torch.randn(2, 3, 800, 1344, device=dev).contiguous(memory_format=torch.channels_last)
    for name, m in [('mmdet', build(ResNet)), ('mmdet with_cp', build(ResNet, with_cp=True)),
                    ('ours', build(ResNetV1Custom)),
                    ('ours with_cp', build(ResNetV1Custom, with_cp=True))]:
        m.to(memory_format=torch.channels_last)
        m.train()
        ts = []
        for _ in range(6):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            with torch.autocast('cuda', dtype=torch.bfloat16):
                loss = sum(o.float().mean() for o in m(xb))
            loss.backward()
            m.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        ts = sorted(ts[1:])
        results[f'step {name}'] = dict(median_s=ts[len(ts) // 2], peak_MiB=peak)
        print(f'[info] 2x3x800x1344 bf16-autocast channels_last train step, {name}: '
              f'median {ts[len(ts) // 2] * 1e3:.1f} ms, peak above the weights {peak:.0f} MiB',
              flush=True)
        del m

json.dump(results, open(sys.argv[1], 'w') if len(sys.argv) > 1 else sys.stdout, indent=1)
print('\nall ok' if all(v.get('ok', True) for v in results.values()) else '\nSOME BAD')
