"""Where does ours' with_cp step spend its extra time vs mmdet's? One profiled train step
each, R50 8x3x800x1344, bf16 autocast, channels_last, on CUDA (benchmarks/gpu/bundle.sh says
how to run it on the lent GPU). Results: docs/benchmark.md, "GPU (H200)"."""
import sys
import time
from pathlib import Path

import torch
from mmdet.models.backbones import ResNet
from torch.profiler import ProfilerActivity, profile

from resnet_backbone.models.resnet import ResNetV1Custom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench_models
from bench_models import shared_weights  # noqa: E402

kw = dict(depth=50, out_indices=(0, 1, 2, 3), frozen_stages=1, norm_eval=True)
sd = shared_weights(50, 1, True, 0)
x = torch.randn(8, 3, 800, 1344, device='cuda').contiguous(memory_format=torch.channels_last)


def build(cls, **extra):
    m = cls(**kw, **extra)
    m.load_state_dict(sd)
    m.to('cuda', memory_format=torch.channels_last)
    m.train()
    return m


def step(m):
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = sum(o.float().mean() for o in m(x))
    loss.backward()
    m.zero_grad(set_to_none=True)


out = open(sys.argv[1], 'w')
for name, m in [('mmdet-cp', build(ResNet, with_cp=True)),
                ('ours-cp', build(ResNetV1Custom, with_cp=True)),
                ('mmdet', build(ResNet)), ('ours', build(ResNetV1Custom))]:
    for _ in range(4):
        step(m)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        step(m)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / 5
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(m)
        torch.cuda.synchronize()
    ev = prof.key_averages()
    cuda_total = sum(e.self_device_time_total for e in ev) / 1e3
    head = f'== {name}: wall {wall * 1e3:.1f} ms/step, CUDA kernel time {cuda_total:.1f} ms'
    print(head, flush=True)
    out.write(head + '\n')
    out.write(ev.table(sort_by='self_device_time_total', row_limit=18, max_name_column_width=60))
    out.write('\n')
    ops = {e.key: e.count for e in ev if e.key.startswith('aten::')}
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:25]
    out.write('aten counts: ' + ', '.join(f'{k} {v}' for k, v in top) + '\n\n')
    del m
    torch.cuda.empty_cache()
out.close()
