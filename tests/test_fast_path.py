"""The fast path (BN folded into convs on the fly) against the reference mode."""
from __future__ import annotations

import pytest
import torch
from conftest import (
    OpCounter,
    backward_outputs,
    grads_by_name,
    randomize_,
    reference_and_fast,
    rel_err,
)
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnet_backbone import ResNetV1Custom, options
from resnet_backbone.models.fast import always_fold, worth_folding

REL = 1e-5


@pytest.fixture(autouse=True)
def _fold_every_size():
    """Tiny inputs would not fold deep layers (see ``fast.worth_folding``); these
    tests check the fold itself, so every eval BN folds."""
    with always_fold():
        yield


pair = reference_and_fast


def bn_calls(model, x, grad=False):
    """BN modules run in one forward; ``grad``: as in a train step (autograd recording)."""
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1))
             for m in model.modules() if isinstance(m, _BatchNorm)]
    with torch.set_grad_enabled(grad):
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


# ---- the training module: two ways to run a block, no inference tricks ----

def test_training_module_runs_no_inference_tricks():
    """No fused oneDNN kernel and no in-place write into a map it did not make, in eval
    and in a frozen train step: those belong to the inference snapshot."""
    _, fast = pair(depth=50, frozen_stages=1, norm_eval=True)
    x = torch.rand(2, 3, 64, 64)
    before = x.clone()
    for mode in ('eval', 'train'):
        fast.train(mode == 'train')
        with OpCounter() as ops, torch.set_grad_enabled(mode == 'train'):
            outs = fast(x)
            if mode == 'train':
                backward_outputs(outs)
        assert ops.count('mkldnn.') == 0, mode
    assert torch.equal(x, before)


def test_no_grad_runs_the_reference_ops():
    """Where autograd records nothing, folding would only add ops: the training module
    runs mmdet's ops there, op for op, and folds in the train step (norm_eval)."""
    ref, fast = pair(depth=50, frozen_stages=1, norm_eval=True)
    x = torch.rand(2, 3, 64, 64)
    with options.using(fold_always=False):  # undo the autouse fixture
        ref.eval(), fast.eval()
        with torch.no_grad():
            with OpCounter() as ops_ref:
                want = ref(x)
            with OpCounter() as ops_fast:
                got = fast(x)
        assert ops_fast.ops == ops_ref.ops
        for g, w in zip(got, want):
            assert torch.equal(g, w)
        ref, fast = _full_width_pair(50)  # the size rule reads the real widths
        x = torch.rand(1, 3, 256, 256)
        assert bn_calls(fast, x, grad=True) < bn_calls(ref, x, grad=True)


def _full_width_pair(depth: int) -> tuple[nn.Module, nn.Module]:
    """(reference, fast) at the real width (``base_channels=64``): the size rule reads
    the real channel counts."""
    ref = randomize_(ResNetV1Custom(depth=depth, fast=False, norm_eval=True))
    fast = ResNetV1Custom(depth=depth, fast=True, norm_eval=True)
    fast.load_state_dict(ref.state_dict())
    return ref.train(), fast.train()


def test_small_inputs_fold_only_where_it_pays():
    """Folding adds weight-sized work and 16 small ops per conv; in a train step, convs
    whose output map is small (``FOLD_MIN_ELEMENTS``) or whose positions are few for its
    weights (``FOLD_MIN_RATIO``) run conv + BN as the reference does, same outputs."""
    ref, fast = _full_width_pair(50)
    medium = torch.rand(1, 3, 256, 256)  # layer1 folds (64x64 x 64); layer4 does not
    with options.using(fold_always=False):  # undo the autouse fixture
        assert 0 < bn_calls(fast, medium, grad=True) < bn_calls(ref, medium, grad=True)
        # the overhead benchmark's size: no conv folds, the step is mmdet's ops
        small = torch.rand(2, 3, 64, 64)
        assert bn_calls(fast, small, grad=True) == bn_calls(ref, small, grad=True)
        for r, f in zip(ref(small), fast(small)):
            assert torch.equal(f, r)
        conv = fast.layer4[0].conv2  # 3x3, 512 -> 512: 2**18 elements at 512 positions
        assert worth_folding(conv, 512, 'cpu') and not worth_folding(conv, 511, 'cpu')
        wide = nn.Conv2d(4096, 1024, 3, bias=False)  # 36,864 weights per channel
        assert not worth_folding(wide, 2 ** 11, 'cpu')  # 2,048 positions x 16 < 36,864
    with options.using(fold_always=False):  # at 2x512x512 every conv of R50 folds
        assert bn_calls(fast, torch.rand(2, 3, 512, 512), grad=True) == 0


def test_eager_gpu_runs_take_the_reference_ops():
    """On a GPU an eager step is launch-bound and folding made R50 1.6-1.9x slower
    (docs/benchmark.md): off a CPU no BN folds in eager mode, unless ``fold_always``.
    The meta device stands in for CUDA here (anything but 'cpu' counts)."""
    _, fast = _full_width_pair(18)
    big = torch.rand(2, 3, 256, 256)
    n_bn = sum(isinstance(m, _BatchNorm) for m in fast.modules())
    with options.using(fold_always=False):  # undo the autouse fixture
        assert bn_calls(fast, big, grad=True) < n_bn  # CPU: layer1 folds at this size
        fast.to('meta')
        assert bn_calls(fast, big.to('meta'), grad=True) == n_bn
        conv = fast.layer1[0].conv1
        assert worth_folding(conv, 10 ** 6, 'cpu') and not worth_folding(conv, 10 ** 6, 'cuda')
        assert not worth_folding(conv, 10 ** 6, 'cpu', records=False)  # nothing to keep
    assert worth_folding(conv, 10 ** 6, 'cuda')  # fold_always (the fixture): tests, export
    assert bn_calls(fast, big.to('meta'), grad=True) == 0
