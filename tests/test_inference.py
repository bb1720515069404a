"""The inference snapshot (resnet_backbone.models.inference), float32 and bfloat16:
against the reference mode, the fused oneDNN kernels against the plain ops (and their
probe), the in-place add never touching a caller's tensor, the fold-then-cast order,
NaN propagation, the float32 fallback, and the rebuild after a weight change.

Timing is not asserted here (the benchmark tool reports it); on a CPU without native
bf16 convolution (no avx512bw/vl/dq or avx_ne_convert) oneDNN runs bf16 emulated.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import OpCounter, hooks_of_test_tool, randomize_, reference_and_fast, rel_err
from torch import nn

import resnet_backbone.models.inference as inference_mod
from resnet_backbone.apis.export import trace
from resnet_backbone.models.fast import mkldnn_fusion
from resnet_backbone.models.inference import (
    FoldedBlock,
    FoldedConv,
    Fp32Fallback,
    InferenceBackbone,
    for_inference,
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
    assert inference_model(net, 'fp32').dtype == torch.float32
    net.fast = False  # the reference asked for: the tools run the backbone itself
    assert inference_model(net, 'fp32') is net
    net.fast = True
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
    net = _model().to(memory_format=torch.channels_last)
    tier = inference_model(net, 'bf16')
    x = torch.rand(2, 3, 64, 64).to(memory_format=torch.channels_last, dtype=torch.bfloat16)
    fused = tier(x)
    monkeypatch.setattr(inference_mod, '_fused_ok', lambda x, w: False)
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


# ---- float32: against the reference mode; the fused kernels and the in-place add ------
REL = 1e-5


def _pair(**kw):
    ref, fast = reference_and_fast(**kw)
    return ref.eval(), fast.eval()


def fused_calls(model, x):
    """Fused oneDNN kernel calls in one forward, counted by the dispatcher."""
    with OpCounter() as ops:
        model(x)
    return ops.count('mkldnn._convolution_pointwise')


@pytest.mark.parametrize('depth,stem,avg_down', [(18, 'classic', False), (50, 'classic', False),
                                                 (50, 'deep', True), (34, 'small', False)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_fp32_snapshot_fused_kernels_equal_the_plain_ops_and_the_reference(
        depth, stem, avg_down, channels_last):
    """The fused kernels run the same oneDNN convolution with the add as a post-op, so
    they agree with F.conv2d + add + relu on the folded weights to fp32 rounding."""
    ref, fast = _pair(depth=depth, stem_type=stem, avg_down=avg_down)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    snap = fast.to(memory_format=fmt).for_inference()
    x = torch.rand(2, 3, 64, 64).to(memory_format=fmt)
    assert all(isinstance(b, FoldedBlock) for layer in snap.layers for b in layer)
    assert fused_calls(snap, x) > 0
    fused = snap(x)
    with mkldnn_fusion(False):
        assert fused_calls(snap, x) == 0
        plain = snap(x)
    with torch.no_grad():
        want = ref(x)
    for f, p, r in zip(fused, plain, want):
        # bitwise at 2 threads; at 1 thread oneDNN orders the post-op conv's reduction
        # differently from the plain one's (R50's levels measured up to 1.5e-6)
        assert rel_err(f, p) <= 5e-6
        assert rel_err(f, r) <= REL


def test_snapshot_leaves_callers_tensors_alone():
    """The in-place add only ever writes into a map the snapshot itself made and gave
    up: the input, and every level it returns, are left as they are; in inference mode
    too."""
    ref, fast = _pair(depth=50)
    snap = fast.for_inference()
    x = torch.rand(2, 3, 64, 64)
    before = x.clone()
    levels = snap.forward_levels(x, ['c1', 'c2', 'c3', 'c4', 'c5'])
    assert torch.equal(x, before)
    with torch.no_grad():
        want = ref.forward_levels(x, ['c1', 'c2', 'c3', 'c4', 'c5'])
    for name in want:  # c2 is not overwritten by layer3's blocks, and so on
        assert rel_err(levels[name], want[name]) <= REL, name
    block = snap.layers[0][1]  # no projection: the shortcut is the input itself
    inp = torch.rand(2, 32, 16, 16)
    kept = inp.clone()
    block(inp)
    assert torch.equal(inp, kept)
    with torch.inference_mode():  # inference tensors take the fused path too
        inp = inp.clone()
        with OpCounter() as ops:
            got = snap(x)
            block(inp)
        assert ops.count('mkldnn._convolution_pointwise') > 0
        assert torch.equal(inp, kept)
    for g, w in zip(got, ref(x)):
        assert rel_err(g, w) <= REL


def test_snapshot_is_rebuilt_after_the_weights_change():
    """After an optimiser step and after a load_state_dict the snapshot takes the new
    weights (one INFO line), never the old ones."""
    net = randomize_(ResNetV1Custom(depth=18, base_channels=8, frozen_stages=1))
    snap = net.for_inference()
    x = torch.rand(2, 3, 64, 64)
    first = snap(x)
    assert snap.generation == 1 and snap(x)[0].equal(first[0]) and snap.generation == 1
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()
    sum(o.tanh().mean() for o in net(x)).backward()
    opt.step()
    net.layer2[0].conv1.eval()  # a mode set by hand survives the rebuild
    got = snap(x)
    assert snap.generation == 2 and net.training  # rebuilt; the backbone's mode kept
    assert not net.layer2[0].conv1.training and net.layer2[0].conv2.training
    with torch.no_grad():
        want = net.eval()(x)
    assert rel_err(got[-1], first[-1]) > 100 * REL  # the step really changed the outputs
    for g, w in zip(got, want):
        assert rel_err(g, w) <= REL
    fresh = randomize_(ResNetV1Custom(depth=18, base_channels=8), seed=5).eval()
    net.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        want = fresh(x)
    for g, w in zip(snap(x), want):
        assert rel_err(g, w) <= REL


def test_snapshot_traces_to_plain_ops():
    """jit.trace sees plain aten convolutions (which export and other backends know)."""
    _, fast = _pair(depth=18)
    snap = fast.for_inference()
    x = torch.rand(1, 3, 32, 32)
    graph = str(trace(snap, x).inlined_graph)
    assert 'mkldnn::_convolution_pointwise' not in graph and 'aten::_convolution' in graph


# ---- the private oneDNN ops are probed once; without them the plain ops run ----------
class _Raising:
    """Stands in for ``torch.ops.mkldnn`` after a signature change: every op raises."""

    def __getattr__(self, name):
        def op(*args, **kwargs):
            raise RuntimeError(f'{name}() got an unexpected argument')
        op.binary = op
        return op


@pytest.fixture
def fresh_probe(monkeypatch):
    """Forget the probe's verdict before and after the test (it is cached per process)."""
    inference_mod.fused_ops_work.cache_clear()
    probes, logs = [], []
    real = inference_mod._probe_fused_ops
    monkeypatch.setattr(inference_mod, '_probe_fused_ops',
                        lambda dtype: probes.append(dtype) or real(dtype))
    monkeypatch.setattr(inference_mod, 'print_log', lambda msg, **kw: logs.append((msg, kw)))
    yield probes, logs
    inference_mod.fused_ops_work.cache_clear()


@pytest.mark.parametrize('ops', [SimpleNamespace(), _Raising()], ids=['missing', 'raises'])
def test_broken_private_op_falls_back_to_the_plain_ops(ops, fresh_probe, monkeypatch):
    probes, logs = fresh_probe
    monkeypatch.setattr(inference_mod, '_mkldnn_ops', ops)
    ref, fast = _pair(depth=50)
    snap = fast.for_inference()
    x = torch.rand(2, 3, 64, 64)
    with OpCounter() as counter:
        outs = snap(x)
        again = snap(x)
    with mkldnn_fusion(False):
        plain = snap(x)
    with torch.no_grad():
        want = ref(x)
    assert counter.count('mkldnn._convolution_pointwise') == 0
    for o, a, f, r in zip(outs, again, plain, want):
        assert torch.equal(o, f) and torch.equal(a, f)
        assert rel_err(o, r) <= REL
    assert probes == [torch.float32]  # once per process and dtype, not per call
    assert len(logs) == 1 and logs[0][1]['level'] == logging.DEBUG
    assert 'using the plain ops' in logs[0][0]


def test_working_private_op_is_probed_once_and_used(fresh_probe):
    probes, logs = fresh_probe
    snap = _pair(depth=18)[1].for_inference()
    assert fused_calls(snap, torch.rand(1, 3, 32, 32)) > 0  # the probe is not counted
    assert fused_calls(snap, torch.rand(1, 3, 32, 32)) > 0
    assert probes == [torch.float32] and not logs


def test_for_inference_arguments():
    net = _model()
    assert isinstance(for_inference(net), InferenceBackbone)
    with pytest.raises(ValueError, match="^compute_dtype 'fp16' not supported"):
        net.for_inference('fp16')
    with pytest.raises(TypeError, match='the inference snapshot runs ResNetV1Custom-style'):
        for_inference(nn.Conv2d(3, 3, 1))


def test_weights_are_prepacked_once_per_input_shape():
    """The fused kernels get each weight reordered into oneDNN's layout once per input
    shape (Inductor's freezing does the same), with the plain weight's answers to fp32
    rounding; a new shape reorders again."""
    _, fast = _pair(depth=18)
    snap = fast.for_inference()
    x = torch.rand(2, 3, 64, 64)
    with OpCounter() as first:
        packed = snap(x)
    with OpCounter() as second:
        again = snap(x)
    n_convs = sum(isinstance(m, FoldedConv) for m in snap.modules())
    assert first.count('mkldnn._reorder_convolution_weight') == n_convs
    assert second.count('mkldnn._reorder_convolution_weight') == 0
    with OpCounter() as other:
        snap(torch.rand(1, 3, 32, 32))
    assert other.count('mkldnn._reorder_convolution_weight') == n_convs
    with OpCounter() as plain_ops, mkldnn_fusion(False):
        plain = snap(x)  # F.conv2d on the plain weight
    assert plain_ops.count('mkldnn._reorder_convolution_weight') == 0
    for a, b, c in zip(packed, again, plain):
        # the reordered weight may take another oneDNN algorithm: fp32 rounding apart
        assert torch.equal(a, b) and rel_err(a, c) <= 5e-6


@pytest.mark.parametrize('channels_last', [False, True])
def test_maps_come_back_in_the_input_memory_format(channels_last):
    """The fused kernels write channels_last; the snapshot hands maps back in the input's
    layout, as the backbone does. Compiled mmcv's RoIAlign reads its input's memory as
    NCHW whatever the strides: channels_last maps from an NCHW input gave silently wrong
    RoI features (and RoI-head predictions) there."""
    _, fast = _pair(depth=18)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=fmt)
    snap = fast.for_inference()
    want = fast.eval()(x)
    for got, ref in zip(snap(x), want):
        assert got.is_contiguous(memory_format=fmt) and ref.is_contiguous(memory_format=fmt)
        assert got.stride() == ref.stride()
    for name, got in snap.forward_levels(x, ['c1', 'c2', 'c5']).items():
        assert got.is_contiguous(memory_format=fmt), name
