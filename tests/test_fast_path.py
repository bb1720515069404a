"""The fast path (BN folded into convs on the fly) against the reference mode."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import OpCounter, backward_outputs, grads_by_name, randomize_, rel_err
from torch.nn.modules.batchnorm import _BatchNorm

import resnet_backbone.models.fast as fast_mod
from resnet_backbone import ResNetV1Custom, options
from resnet_backbone.apis.export import trace
from resnet_backbone.models.fast import always_fold, mkldnn_fusion

REL = 1e-5


@pytest.fixture(autouse=True)
def _fold_every_size():
    """Tiny inputs would not fold deep layers (see ``fast.worth_folding``); these
    tests check the fold itself, so every eval BN folds."""
    with always_fold():
        yield


def pair(**kw):
    ref = randomize_(ResNetV1Custom(fast=False, base_channels=8, **kw))
    fast = ResNetV1Custom(fast=True, base_channels=8, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def bn_calls(model, x):
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1))
             for m in model.modules() if isinstance(m, _BatchNorm)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return len(calls)


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152, 200])
@pytest.mark.parametrize('stem,avg_down', [('classic', False), ('deep', False),
                                           ('deep', True), ('small', False)])
def test_fast_eval_matches_reference(depth, stem, avg_down):
    ref, fast = pair(depth=depth, stem_type=stem, avg_down=avg_down)
    x = torch.rand(2, 3, 64, 64)
    ref.eval(), fast.eval()
    assert bn_calls(ref, x) > 0 and bn_calls(fast, x) == 0  # every BN really folded
    with torch.no_grad():
        for r, f in zip(ref(x), fast(x)):
            # fp32 rounding adds up over the blocks: R152's C5 measured 1.2e-5 at 1 thread
            assert rel_err(f, r) <= REL * max(1, depth / 50)


@pytest.mark.parametrize('depth,stem', [(18, 'classic'), (50, 'classic'), (50, 'deep')])
@pytest.mark.parametrize('frozen', [-1, 1])
def test_fast_train_step_matches_reference(depth, stem, frozen):
    """norm_eval=True (the detection default): every BN is in eval mode and folded, and
    gradients through the folded weights equal the reference's. In float64, with a seeded
    input: in float32 the folded and unfolded BN weight gradients differed by 4.5e-6
    relative at 1 thread on an AVX-512 host (R50, layer3.0.bn2.weight), too close to a
    1e-5 tolerance for the result not to depend on the host's reduction order; in float64
    they agree to 1e-14, so 1e-10 leaves rounding no say and still sees a wrong formula.
    (float64 takes the same folded autograd path; the fused kernels, float32 only, are
    checked in a train step by test_fused_path_in_a_frozen_train_step.)"""
    ref, fast = pair(depth=depth, stem_type=stem, frozen_stages=frozen, norm_eval=True)
    ref.double().train(), fast.double().train()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64)
    outs_r, outs_f = ref(x), fast(x)
    for r, f in zip(outs_r, outs_f):
        assert f.dtype == torch.float64 and rel_err(f, r) <= 1e-10
    backward_outputs(outs_r)
    backward_outputs(outs_f)
    gr, gf = grads_by_name(ref), grads_by_name(fast)
    assert sum(g is not None for g in gr.values()) > 10
    for name in gr:
        if gr[name] is None:
            assert gf[name] is None, name
        else:
            assert rel_err(gf[name], gr[name]) <= 1e-10, name


def test_train_mode_bn_is_not_folded():
    ref, fast = pair(depth=18, norm_eval=False)
    ref.train(), fast.train()
    x = torch.rand(2, 3, 32, 32)
    assert bn_calls(fast, x) == bn_calls(ref, x) > 0


def test_fold_never_goes_stale():
    """After an optimizer step and after a load_state_dict, the fast output equals the
    reference output of the same weights (a cached fold would still show the old ones)."""
    model = randomize_(ResNetV1Custom(depth=50, base_channels=8, frozen_stages=1))
    x = torch.rand(2, 3, 64, 64)

    def both_modes():
        model.eval()
        with torch.no_grad():
            model.fast = True
            fast = model(x)
            model.fast = False
            ref = model(x)
        model.fast = True
        return fast, ref

    before, _ = both_modes()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    sum(o.tanh().mean() for o in model(x)).backward()  # BN folded here (norm_eval=True)
    opt.step()
    fast, ref = both_modes()
    assert rel_err(fast[-1], before[-1]) > 100 * REL  # the step really changed the outputs
    for f, r in zip(fast, ref):
        assert torch.isfinite(r).all() and rel_err(f, r) <= REL
    fresh = randomize_(ResNetV1Custom(depth=50, base_channels=8), seed=5)
    model.load_state_dict(fresh.state_dict())
    fast, ref = both_modes()
    for f, r in zip(fast, ref):
        assert rel_err(f, r) <= REL
    with torch.no_grad():
        assert rel_err(fast[-1], fresh.eval()(x)[-1]) <= REL


def test_channels_last_end_to_end():
    ref, fast = pair(depth=50)
    fast = fast.to(memory_format=torch.channels_last).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        outs = fast(x.to(memory_format=torch.channels_last))
        for r, f in zip(ref.eval()(x), outs):
            assert f.is_contiguous(memory_format=torch.channels_last)
            assert rel_err(f, r) <= REL


def test_fast_flag_validation_and_switch():
    model = ResNetV1Custom(depth=18, base_channels=4)
    assert model.fast is True and all(b.fast for b in model.layer1)
    model.fast = False
    assert not any(b.fast for b in model.layer4)
    with pytest.raises(TypeError, match=r"^fast must be True or False; got 'yes'$"):
        model.fast = 'yes'


# ---- oneDNN fused inference kernels (conv+BN+ReLU, conv+BN+add+ReLU in place) ----

def fused_calls(model, x):
    """Number of fused oneDNN kernel calls in one forward, counted by the dispatcher."""
    with OpCounter() as ops:
        model(x)
    return ops.count('mkldnn._convolution_pointwise')


@pytest.mark.parametrize('depth,stem,avg_down', [(18, 'classic', False), (50, 'classic', False),
                                                 (50, 'deep', True), (34, 'small', False)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_fused_kernels_equal_unfused_folded_ops(depth, stem, avg_down, channels_last):
    """The fused kernels run the same oneDNN convolution with the add and ReLU as
    post-ops, so they agree with F.conv2d + add + relu on the folded weights to fp32
    rounding (bitwise at 2 threads)."""
    ref, fast = pair(depth=depth, stem_type=stem, avg_down=avg_down)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fast = fast.to(memory_format=fmt).eval()
    x = torch.rand(2, 3, 64, 64).to(memory_format=fmt)
    with torch.no_grad():
        assert fused_calls(fast, x) > 0
        fused = fast(x)
        with mkldnn_fusion(False):
            assert fused_calls(fast, x) == 0
            plain = fast(x)
        for f, p, r in zip(fused, plain, ref.eval()(x)):
            # bitwise at 2 threads; at 1 thread oneDNN orders the post-op conv's reduction
            # differently from the plain one's (R50's levels measured up to 1.5e-6)
            assert rel_err(f, p) <= 5e-6
            assert rel_err(f, r) <= REL


def test_fused_path_in_a_frozen_train_step():
    """Frozen stages record nothing for autograd, so they take the fused kernels in a train
    step too; the trainable stages do not, and gradients still match the reference.

    float32, as the fused kernels run in float32 only. The two models differ by rounding
    (folded vs unfolded BN, fused vs plain convs): 4.5e-6 relative at most, measured at 1
    thread on an AVX-512 host. Every BN is in eval mode (norm_eval), so no batch statistic
    projects the gradients onto a small, cancelling remainder (as train-mode BN does:
    2.9e-2 there); 1e-4 leaves 20x for other hosts' reduction orders. What this test is
    for - a fused kernel in a trainable stage, or an in-place add into a tensor autograd
    saved - moves gradients by O(1e-1), and a fused kernel off by 1e-4 relative already
    fails it; the exact formula is checked in float64 by
    test_fast_train_step_matches_reference."""
    ref, fast = pair(depth=50, frozen_stages=1, norm_eval=True)
    ref.train(), fast.train()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # the stem conv, then layer1's 3 blocks x (2 conv+ReLU + 1 conv+add+ReLU); nothing after
    assert fused_calls(fast, x) == 1 + 3 * 3
    outs_r, outs_f = ref(x), fast(x)
    backward_outputs(outs_r)
    backward_outputs(outs_f)
    gr, gf = grads_by_name(ref), grads_by_name(fast)
    assert sum(g is not None for g in gr.values()) > 10
    for name in gr:
        if gr[name] is not None:
            assert rel_err(gf[name], gr[name]) <= 1e-4, name


def test_fused_path_leaves_callers_tensors_alone():
    """The in-place add only ever writes into a map the block itself made, or one its own
    ResLayer hands over - never into a tensor a caller or a forward hook still holds."""
    ref, fast = pair(depth=50)
    ref.eval()
    fast.eval()
    x = torch.rand(2, 3, 64, 64)
    kept = []
    handle = fast.layer1[0].register_forward_hook(lambda m, a, out: kept.append(out.clone())
                                                  or kept.append(out))
    with torch.no_grad():
        fast(x)
        handle.remove()
        copy, live = kept
        assert torch.equal(copy, live)  # the next block did not reuse the hooked output
        block = fast.layer1[1]  # no downsample: the shortcut is the input itself
        inp = torch.rand(2, 32, 16, 16)
        before = inp.clone()
        block(inp)
        assert torch.equal(inp, before)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = ref(x)
        want_block = ref.layer1[1](inp)
    with torch.inference_mode():  # inference tensors take the fused path too
        with OpCounter() as ops:
            got = fast(x)
        assert ops.count('mkldnn._convolution_pointwise') > 0
        inp = inp.clone()  # an inference tensor: writable in inference mode
        got_block = block(inp)
        assert torch.equal(inp, before)  # its own input is still not the output buffer
    for g, w in zip(got, want):
        assert rel_err(g, w) <= REL
    assert rel_err(got_block, want_block) <= REL


def test_fusion_off_where_other_tools_trace():
    """jit.trace sees plain aten convolutions (which export and other backends know)."""
    _, fast = pair(depth=18)
    fast.eval()
    x = torch.rand(1, 3, 32, 32)
    traced = trace(fast, x)
    graph = str(traced.inlined_graph)
    assert 'mkldnn::_convolution_pointwise' not in graph and 'aten::_convolution' in graph
    with torch.no_grad():
        for a, b in zip(traced(x), fast(x)):
            assert rel_err(a, b) <= REL


def test_small_inputs_fold_only_where_it_pays():
    """Folding adds weight-sized work per call; deep layers of a small input skip it and
    run conv + BN as the reference does, with the same outputs."""
    ref, fast = pair(depth=50)
    ref.eval(), fast.eval()
    small = torch.rand(1, 3, 32, 32)  # layer4 runs at 1x1: 1 position vs 288+ weights
    with options.using(fold_always=False):  # undo the autouse fixture
        assert 0 < bn_calls(fast, small) < bn_calls(ref, small)
        assert bn_calls(fast, torch.rand(1, 3, 1024, 1024)) == 0  # layer4: 32x32 >= 576
        with torch.no_grad():
            for r, f in zip(ref(small), fast(small)):
                assert rel_err(f, r) <= REL


def test_eager_gpu_runs_take_the_reference_ops():
    """On a GPU an eager step is launch-bound and folding made R50 1.6-1.9x slower
    (docs/benchmark.md): off a CPU no BN folds in eager mode, unless ``fold_always``.
    The meta device stands in for CUDA here (anything but 'cpu' counts)."""
    from resnet_backbone.models.fast import worth_folding
    ref, fast = pair(depth=18)
    fast.eval()
    big = torch.rand(2, 3, 256, 256)
    with options.using(fold_always=False):  # undo the autouse fixture
        assert bn_calls(fast, big) == 0  # CPU: every conv folds at this size
        fast.to('meta')
        n_bn = sum(isinstance(m, _BatchNorm) for m in fast.modules())
        assert bn_calls(fast, big.to('meta')) == n_bn
        conv = fast.layer1[0].conv1
        assert worth_folding(conv, 10 ** 6, 'cpu') and not worth_folding(conv, 10 ** 6, 'cuda')
    assert worth_folding(conv, 10 ** 6, 'cuda')  # fold_always (the fixture): tests, export
    assert bn_calls(fast, big.to('meta')) == 0


# ---- the private oneDNN ops are probed once; without them the plain folded ops run ----

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
    fast_mod.fused_ops_work.cache_clear()
    probes, logs = [], []
    real = fast_mod._probe_fused_ops
    monkeypatch.setattr(fast_mod, '_probe_fused_ops', lambda: probes.append(1) or real())
    monkeypatch.setattr(fast_mod, 'print_log', lambda msg, **kw: logs.append((msg, kw)))
    yield probes, logs
    fast_mod.fused_ops_work.cache_clear()


@pytest.mark.parametrize('ops', [SimpleNamespace(), _Raising()], ids=['missing', 'raises'])
def test_broken_private_op_falls_back_to_folded_ops(ops, fresh_probe, monkeypatch):
    probes, logs = fresh_probe
    monkeypatch.setattr(fast_mod, '_mkldnn_ops', ops)
    ref, fast = pair(depth=50)
    fast.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        with OpCounter() as counter:
            outs = fast(x)
            again = fast(x)
        with mkldnn_fusion(False):
            folded = fast(x)
        want = ref.eval()(x)
    assert counter.count('mkldnn._convolution_pointwise') == 0
    for o, a, f, r in zip(outs, again, folded, want):
        assert torch.equal(o, f) and torch.equal(a, f)
        assert rel_err(o, r) <= REL
    assert len(probes) == 1  # once per process, not per call
    assert len(logs) == 1 and logs[0][1]['level'] == logging.DEBUG
    assert 'using the plain folded ops' in logs[0][0]


def test_working_private_op_is_probed_once_and_used(fresh_probe):
    probes, logs = fresh_probe
    _, fast = pair(depth=18)
    fast.eval()
    with torch.no_grad():
        assert fused_calls(fast, torch.rand(1, 3, 32, 32)) > 0  # the probe is not counted
        assert fused_calls(fast, torch.rand(1, 3, 32, 32)) > 0
    assert len(probes) == 1 and not logs


@pytest.mark.parametrize('name', ['_global_forward_hooks', '_global_forward_pre_hooks'])
def test_unknown_global_hook_registry_means_hooked(monkeypatch, name):
    """The in-place reuse between blocks reads torch's private global-hook registries;
    where a torch release no longer has one, every map counts as hooked (no reuse)."""
    from torch.nn.modules import module as torch_module

    from resnet_backbone.models import stages
    _, fast = pair(depth=18)
    prev, block = fast.layer1[0], fast.layer1[1]
    assert not stages._hooked(prev, block)
    monkeypatch.setattr(torch_module, name, None)  # renamed or gone in a future torch
    assert stages._hooked(prev, block)
