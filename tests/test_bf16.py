"""The bf16 inference tier (resnet_backbone.models.bf16): accuracy against float32, the
fold-then-cast order, NaN propagation, the float32 fallback, and fp32 as the default.

Timing is not asserted here (the benchmark tool reports it); on a CPU without native
bf16 convolution (no avx512bw/vl/dq or avx_ne_convert) oneDNN runs bf16 emulated.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import hooks_of_test_tool, randomize_, rel_err
from torch import nn

from resnet_backbone.models.bf16 import (
    FoldedBlock,
    FoldedConv,
    Fp32Fallback,
    InferenceBackbone,
    fused_ops_work,
    inference_model,
)
from resnet_backbone.models.resnet import ResNetV1Custom

#: per-level tolerances of the tier against float32 (bf16 keeps 8 bits of mantissa)
MIN_COSINE = 0.999
MAX_REL_ERR = 3e-2


def _model(depth=18, **kw):
    kw.setdefault('base_channels', 16)
    return randomize_(ResNetV1Custom(depth=depth, **kw)).eval()


def _levels(ref, got):
    """(cosine, max relative error) per output level."""
    return [(float(F.cosine_similarity(g.double().flatten(), r.double().flatten(), dim=0)),
             rel_err(g.float(), r)) for g, r in zip(got, ref)]


@pytest.mark.parametrize('depth,channels_last', [(18, False), (18, True), (50, True)])
def test_every_level_close_to_fp32(depth, channels_last):
    torch.manual_seed(0)
    net = _model(depth, base_channels=16 if depth == 18 else 8)
    x = torch.rand(2, 3, 64, 64)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    tier = inference_model(net, 'bf16')
    assert all(isinstance(b, FoldedBlock) for layer in tier.layers for b in layer)
    with torch.no_grad():
        ref = net(x)
    got = tier(x)
    assert [o.dtype for o in got] == [torch.float32] * 4  # the input's dtype
    assert [o.shape for o in got] == [r.shape for r in ref]
    if channels_last:
        assert all(o.is_contiguous(memory_format=torch.channels_last) for o in got)
    for level, (cos, err) in enumerate(_levels(ref, got)):
        assert cos >= MIN_COSINE and err <= MAX_REL_ERR, (level, cos, err)
    # a bf16 input gives bf16 outputs, the same values
    got16 = tier(x.bfloat16())
    assert all(o.dtype == torch.bfloat16 for o in got16)
    for a, b in zip(got16, got):
        assert rel_err(a.float(), b) <= 2 * 2 ** -8


def test_bn_is_folded_in_fp32_then_cast():
    """Each folded weight and bias is the float32 fold rounded once to bf16. Folding in
    bf16 (casting W, gamma, var, mean, beta first) rounds three times and differs."""
    net = _model()
    tier = inference_model(net, 'bf16')
    block, folded = net.layer2[0], tier.layers[1][0]
    for conv, norm, got in ((block.conv1, block.bn1, folded.head[0]),
                            (block.conv2, block.bn2, folded.tail),
                            (block.downsample[0], block.downsample[1], folded.shortcut[0])):
        scale = torch.rsqrt(norm.running_var + norm.eps) * norm.weight
        want_w = (conv.weight * scale.reshape(-1, 1, 1, 1)).to(torch.bfloat16)
        want_b = (norm.bias - norm.running_mean * scale).to(torch.bfloat16)
        assert got.weight.dtype == torch.bfloat16
        assert torch.equal(got.weight, want_w) and torch.equal(got.bias, want_b)


def test_large_bn_means_stay_accurate():
    """A BN whose mean and beta nearly cancel (``beta - mean * scale`` small against
    both) is where folding in bf16 loses the bias; folded in fp32 and then cast, every
    level stays within the tier's tolerance."""
    net = _model()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                scale = torch.rsqrt(m.running_var + m.eps) * m.weight
                m.running_mean.copy_(40 + 10 * torch.rand(m.num_features, generator=g))
                m.bias.copy_(m.running_mean * scale
                             + 0.1 * torch.randn(m.num_features, generator=g))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
    for level, (cos, err) in enumerate(_levels(ref, inference_model(net, 'bf16')(x))):
        assert cos >= MIN_COSINE and err <= MAX_REL_ERR, (level, cos, err)


def test_nan_stays_nan():
    """The ReLU is never oneDNN's post-op (which maps NaN to 0): a NaN pixel in the input
    gives NaN exactly where the float32 reference has it."""
    net = _model().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 64, 64).to(memory_format=torch.channels_last)
    x[0, 1, 20, 30] = float('nan')
    with torch.no_grad():
        ref = net(x)
    got = inference_model(net, 'bf16')(x)
    for r, o in zip(ref, got):
        assert r.isnan().any() and torch.equal(r.isnan(), o.isnan())


def test_what_does_not_fold_runs_in_fp32_through_its_own_code():
    """GN does not fold: the stem and every block fall back to float32 (their own
    forward), with the input and output cast; the results still match."""
    net = _model(norm_cfg=dict(type='GN', num_groups=4))
    tier = inference_model(net, 'bf16')
    assert isinstance(tier.stem, Fp32Fallback)
    assert all(isinstance(b, Fp32Fallback) for layer in tier.layers for b in layer)
    tier.to(torch.bfloat16)  # a cast of the tier keeps the fallbacks in float32
    assert all(p.dtype == torch.float32 for p in tier.stem.parameters())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
    for level, (cos, err) in enumerate(_levels(ref, tier(x))):
        assert cos >= MIN_COSINE and err <= MAX_REL_ERR, (level, cos, err)


def test_fp32_is_the_default_and_the_snapshot_is_inference_only():
    net = _model()
    assert inference_model(net, 'fp32') is net
    with pytest.raises(ValueError, match="compute_dtype 'fp16' not supported; allowed "
                                         'values: fp32, bf16'):
        inference_model(net, 'fp16')
    net.train()
    tier = inference_model(net, 'bf16')
    assert net.training and not tier.training  # the backbone's mode is given back
    with pytest.raises(RuntimeError, match='an inference snapshot cannot train'):
        tier.train()
    assert isinstance(tier, InferenceBackbone)
    assert not any(p.requires_grad for p in tier.parameters())
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    assert not any(o.requires_grad for o in tier(x))


@pytest.mark.skipif(not fused_ops_work(torch.bfloat16),
                    reason='oneDNN has no bf16 convolution on this CPU')
def test_fused_kernels_match_the_plain_ops(monkeypatch):
    """Where the fused bf16 kernels run, they agree with F.conv2d + add + ReLU within bf16
    rounding (one rounding of the sum against two)."""
    from resnet_backbone.models import bf16
    net = _model().to(memory_format=torch.channels_last)
    tier = inference_model(net, 'bf16')
    x = torch.rand(2, 3, 64, 64).to(memory_format=torch.channels_last, dtype=torch.bfloat16)
    fused = tier(x)
    monkeypatch.setattr(bf16, '_fused_ok', lambda x: False)
    plain = tier(x)
    for a, b in zip(fused, plain):
        assert rel_err(a.float(), b.float()) <= 2 ** -6


def test_folded_conv_geometry():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)
    bn = nn.BatchNorm2d(6).eval()
    randomize_(nn.Sequential(conv, bn))
    f = FoldedConv(conv, bn, act=False, dtype=torch.bfloat16)
    x = torch.rand(1, 4, 9, 9)
    with torch.no_grad():
        want = bn(conv(x))
    assert rel_err(f(x.bfloat16()).float(), want) <= 2e-2


def test_test_tool_swaps_the_backbone_after_the_checkpoint_loads(monkeypatch):
    """tools/test.py --compute-dtype bf16 registers a hook whose ``before_test`` (run
    after the Runner loads the checkpoint) puts the detector's backbone in the bf16 tier;
    the detector's features stay within the tier's tolerance. fp32 registers nothing."""
    from pathlib import Path
    from types import SimpleNamespace

    from mmengine.registry import DefaultScope

    from resnet_backbone.engine.training import load_config, setup_environment
    from resnet_backbone.tools.test import BackboneComputeDtypeHook
    root = Path(__file__).resolve().parents[1]
    config = str(root / 'configs/shapes/retinanet_r18_fpn_shapes.py')
    args = [config, 'ckpt.pth', '--work-dir', '/nonexistent/w']
    assert hooks_of_test_tool(monkeypatch, *args) == []
    (hook, priority), = hooks_of_test_tool(monkeypatch, *args, '--compute-dtype', 'bf16')
    assert isinstance(hook, BackboneComputeDtypeHook) and priority == 'LOWEST'

    setup_environment()
    cfg = load_config(config)
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        det = MODELS.build(cfg.model)
    randomize_(det.backbone)
    det.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = det.extract_feat(x)
    hook.before_test(SimpleNamespace(model=det))
    assert isinstance(det.backbone, InferenceBackbone)
    with torch.no_grad():
        got = det.extract_feat(x)
    assert all(g.dtype == torch.float32 for g in got)
    for level, (cos, err) in enumerate(_levels(ref, got)):
        assert cos >= MIN_COSINE and err <= MAX_REL_ERR, (level, cos, err)
