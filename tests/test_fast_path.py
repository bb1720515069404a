"""The fast path (BN folded into convs on the fly) against the reference mode."""
from __future__ import annotations

import pytest
import torch
from conftest import backward_outputs, grads_by_name, randomize_
from torch.nn.modules.batchnorm import _BatchNorm

from resnet_backbone import ResNetV1Custom

REL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


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
            assert rel_err(f, r) <= REL


@pytest.mark.parametrize('depth,stem', [(18, 'classic'), (50, 'classic'), (50, 'deep')])
@pytest.mark.parametrize('frozen', [-1, 1])
def test_fast_train_step_matches_reference(depth, stem, frozen):
    """norm_eval=True (the detection default): every BN is in eval mode and folded, and
    gradients through the folded weights equal the reference's."""
    ref, fast = pair(depth=depth, stem_type=stem, frozen_stages=frozen, norm_eval=True)
    ref.train(), fast.train()
    x = torch.rand(2, 3, 64, 64)
    outs_r, outs_f = ref(x), fast(x)
    for r, f in zip(outs_r, outs_f):
        assert rel_err(f, r) <= REL
    backward_outputs(outs_r)
    backward_outputs(outs_f)
    gr, gf = grads_by_name(ref), grads_by_name(fast)
    for name in gr:
        if gr[name] is None:
            assert gf[name] is None, name
        else:
            assert rel_err(gf[name], gr[name]) <= REL, name


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
