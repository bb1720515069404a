"""Stochastic depth (``drop_path_rate``): timm's per-block schedule and mask, training only,
off in eval and in frozen stages, and exact under ``with_cp`` (the recompute drops the
same samples as the forward, and may still skip the tail conv)."""
from __future__ import annotations

import pytest
import timm
import torch
from conftest import backward_outputs, grads_by_name, randomize_
from timm.layers import drop_path as timm_drop_path

from resnet_backbone import DropPath, ResNetV1Custom, ResNeXtCustom
from resnet_backbone.models.blocks import BasicBlock, Bottleneck, ResBlock
from resnet_backbone.models.fast import always_fold


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (ResBlock, timm.models.resnet.Bottleneck,
                                                         timm.models.resnet.BasicBlock))]


def block_rates(model: torch.nn.Module) -> list[float]:
    """Each block's drop rate as its DropPath module says (0 where it has none)."""
    rates = []
    for b in blocks(model):
        dp = b._modules.get('drop_path')
        rates.append(float(getattr(dp, 'drop_prob', 0.0)) if dp is not None else 0.0)
    return rates


@pytest.mark.parametrize('depth', [18, 50, 101])
@pytest.mark.parametrize('rate', [0.1, 0.35])
def test_per_block_rates_are_timms(depth, rate):
    ours = ResNetV1Custom(depth, base_channels=4, drop_path_rate=rate)
    ref = timm.create_model(f'resnet{depth}', pretrained=False, drop_path_rate=rate)
    assert block_rates(ours) == block_rates(ref)  # exactly: the same float formula
    assert ours.drop_path_rates() == block_rates(ours)
    assert block_rates(ours)[0] == 0.0 and block_rates(ours)[-1] == pytest.approx(rate)
    # the rate 0 block gets no module, as in timm
    assert 'drop_path' not in ours.layer1[0]._modules


def test_resnext_rates_are_timms():
    ours = ResNeXtCustom(50, groups=4, base_width=4, base_channels=8, drop_path_rate=0.2)
    ref = timm.create_model('resnext50_32x4d', pretrained=False, drop_path_rate=0.2)
    assert block_rates(ours) == block_rates(ref)


def test_zero_rate_changes_nothing():
    plain = randomize_(ResNetV1Custom(50, base_channels=8, fast=False))
    zero = ResNetV1Custom(50, base_channels=8, fast=False, drop_path_rate=0.0)
    zero.load_state_dict(plain.state_dict())
    assert not any(isinstance(m, DropPath) for m in zero.modules())
    assert [n for n, _ in zero.named_modules()] == [n for n, _ in plain.named_modules()]
    assert all(b.describe().drop_path is None for b in blocks(zero))
    x = torch.rand(2, 3, 32, 32)
    plain.train(), zero.train()
    assert all(torch.equal(a, b) for a, b in zip(zero(x), plain(x)))


@pytest.mark.parametrize('fast', [False, True])
def test_eval_is_identity(fast):
    plain = randomize_(ResNetV1Custom(50, base_channels=8, fast=fast))
    drop = ResNetV1Custom(50, base_channels=8, fast=fast, drop_path_rate=0.5)
    drop.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    plain.eval(), drop.eval()
    with torch.no_grad(), always_fold():  # fast: the fused kernels run the eval blocks
        assert all(torch.equal(a, b) for a, b in zip(drop(x), plain(x)))


def test_training_drops_whole_samples_of_the_branch():
    """A block in training: each sample gets either ``relu(shortcut)`` (dropped) or
    ``relu(shortcut + branch / keep)``, and the mask is timm's on the same seed."""
    block = randomize_(Bottleneck(16, 4).set_drop_path(0.5))
    block.eval()  # BN statistics fixed: the branch is a per-sample function
    block.drop_path.train()
    x = torch.rand(64, 16, 8, 8)
    with torch.no_grad():
        branch = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(
            block.relu(block.bn1(block.conv1(x))))))))
        torch.manual_seed(7)
        got = block(x)
        torch.manual_seed(7)
        want = torch.relu(x + timm_drop_path(branch, 0.5, training=True))
    assert torch.equal(got, want)
    dropped = sum(torch.equal(g, torch.relu(s)) for g, s in zip(got, x))
    assert 0 < dropped < 64  # some samples dropped, some kept


def test_mask_statistics_match_timm():
    """Same seed, same draws: keep probability 1 - p, kept samples scaled by 1 / (1 - p)."""
    x = torch.ones(20000, 1, 1, 1)
    for p in (0.1, 0.3):
        torch.manual_seed(3)
        ours = DropPath(p).train()(x)
        torch.manual_seed(3)
        ref = timm_drop_path(x, p, training=True)
        assert torch.equal(ours, ref)
        kept = ours.flatten() != 0
        assert abs(float(kept.float().mean()) - (1 - p)) < 0.02
        assert torch.equal(ours.flatten()[kept], torch.full_like(ours.flatten()[kept],
                                                                 1 / (1 - p)))


def test_frozen_stages_are_unaffected():
    kw = dict(base_channels=8, frozen_stages=2, norm_eval=False, fast=False)
    plain = randomize_(ResNetV1Custom(50, **kw))
    drop = ResNetV1Custom(50, drop_path_rate=0.9, **kw)
    drop.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 32, 32)
    for _ in range(2):  # train() re-applies the freeze, DropPath included
        plain.train(), drop.train()
        frozen = [m for name in ('layer1', 'layer2') for m in getattr(drop, name).modules()
                  if isinstance(m, DropPath)]
        live = [m for name in ('layer3', 'layer4') for m in getattr(drop, name).modules()
                if isinstance(m, DropPath)]
        assert frozen and not any(m.active for m in frozen)
        assert live and all(m.active for m in live)
        with torch.no_grad():
            want = plain.forward_levels(x, ['c2', 'c3', 'c5'])
            got = drop.forward_levels(x, ['c2', 'c3', 'c5'])
        assert torch.equal(got['c2'], want['c2']) and torch.equal(got['c3'], want['c3'])
        assert not torch.equal(got['c5'], want['c5'])  # the live stages do drop


def test_description_and_paths():
    block = Bottleneck(16, 4).set_drop_path(0.2)
    assert block.describe().drop_path == 'drop_path'
    # the mask is a constant per sample: the tail still feeds only the add
    assert block.describe().tail_feeds_only_the_add and block.recompute_may_skip_tail()
    assert BasicBlock(8, 8).set_drop_path(0.2).describe().drop_path == 'drop_path'
    assert Bottleneck(16, 4).set_drop_path(0.2).set_drop_path(0.0).describe().drop_path is None
    assert list(block.state_dict()) == list(Bottleneck(16, 4).state_dict())
    with pytest.raises(ValueError, match=r'^drop_path_rate must be a float in \[0, 1\); '
                                         r'got 1\.0$'):
        ResNetV1Custom(18, drop_path_rate=1.0)


@pytest.mark.parametrize('fast,norm_eval', [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize('depth', [18, 50])
def test_with_cp_gradients_equal_plain_under_the_same_seed(depth, fast, norm_eval):
    """The recompute drops the samples the forward dropped (the checkpoint restores the
    RNG state), so gradients equal the plain run's; with folded convs (fast + norm_eval)
    the recompute also skips the tail conv, which stays exact with the mask in between."""
    kw = dict(base_channels=8, drop_path_rate=0.5, fast=fast, norm_eval=norm_eval)
    plain = randomize_(ResNetV1Custom(depth, **kw))
    cp = ResNetV1Custom(depth, with_cp=True, **kw)
    cp.load_state_dict(plain.state_dict())
    if fast and norm_eval:
        assert all(b.recompute_may_skip_tail() for b in blocks(cp))
    x = torch.rand(4, 3, 32, 32)
    results = []
    for model in (plain, cp):
        model.train()
        xi = x.clone().requires_grad_()
        with always_fold():
            torch.manual_seed(11)
            outs = model(xi)
            backward_outputs(outs)
        results.append((outs, xi.grad, grads_by_name(model), torch.rand(3)))
    (out_p, gx_p, gp, rng_p), (out_c, gx_c, gc, rng_c) = results
    assert all(torch.equal(a, b) for a, b in zip(out_p, out_c))
    torch.testing.assert_close(gx_c, gx_p, rtol=1e-6, atol=1e-7)
    for name, g in gp.items():
        assert g is not None, name
        torch.testing.assert_close(gc[name], g, rtol=1e-6, atol=1e-7, msg=name)
    assert torch.equal(rng_p, rng_c)  # the recompute left the global RNG as it found it
    # rate 0.5 over a batch of 4: the last blocks dropped some samples and kept others
    torch.manual_seed(11)
    masks = [timm_drop_path(torch.ones(4, 1, 1, 1), r, training=True).flatten()
             for r in plain.drop_path_rates() if r > 0]
    assert any(bool((m == 0).any()) for m in masks)
