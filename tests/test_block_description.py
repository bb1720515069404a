"""Blocks describe their computation once; every way of running it follows from that.

The checkpoint recompute may skip a block's last conv only where the description proves
that conv feeds the residual add and nothing else. A subclass that changes the tail (a
learnable scale after conv3, an extra step) or overrides ``forward`` must get exact
gradients under ``with_cp=True``, folded (``fast=True``) or not.
"""
from __future__ import annotations

import pytest
import torch
from conftest import OpCounter, backward_outputs, grads_by_name, randomize_, rel_err
from mmcv.cnn import build_norm_layer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnet_backbone.models.blocks import BasicBlock, BlockDescription, Bottleneck, Step
from resnet_backbone.models.fast import always_fold
from resnet_backbone.models.inference import FoldedBlock
from resnet_backbone.models.stages import ResLayer

pytestmark = pytest.mark.filterwarnings('error')


@pytest.fixture(autouse=True)
def _fold_every_size():
    with always_fold():
        yield


class ChannelScale(nn.Module):
    """``x * gamma`` per channel (a LayerScale-like learnable scale)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.reshape(1, -1, 1, 1)


class ScaledBottleneck(Bottleneck):
    """conv3's output times a learnable scale, before the add."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scale = ChannelScale(self.planes * self.expansion)

    def describe(self) -> BlockDescription:
        desc = super().describe()
        return desc.with_last_step(plugins=(*desc.steps[-1].plugins, 'scale'))


class FourConvBottleneck(Bottleneck):
    """One more conv + norm after conv3: conv3 is no longer the tail, conv4 is."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        channels = self.planes * self.expansion
        self.conv4 = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm4_name, norm4 = build_norm_layer(self.norm_cfg, channels, postfix=4)
        self.add_module(self.norm4_name, norm4)

    def describe(self) -> BlockDescription:
        desc = super().describe()
        *head, conv3 = desc.steps
        return BlockDescription((*head, Step(conv3.conv, conv3.norm, act=True),
                                 Step('conv4', self.norm4_name, act=False)))


class ForwardOverride(BasicBlock):
    """Overrides ``forward``: runs the generic code, then scales the output."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.full((1,), 1.5))

    def forward(self, x: torch.Tensor, owns_input: bool = False) -> torch.Tensor:
        return super().forward(x) * self.gain


BLOCKS = {'scaled': (ScaledBottleneck, 16, 4), 'four_convs': (FourConvBottleneck, 16, 4),
          'forward_override': (ForwardOverride, 8, 8), 'bottleneck': (Bottleneck, 16, 4),
          'basic': (BasicBlock, 8, 8)}


def _layer(name: str, with_cp: bool, fast: bool, norm_eval: bool) -> ResLayer:
    block, inplanes, planes = BLOCKS[name]
    layer = ResLayer(block, inplanes, planes, num_blocks=2, stride=2, with_cp=with_cp)
    randomize_(layer)
    for b in layer:
        b.fast = fast
    layer.train()
    if norm_eval:  # eval BN: the folded convs (and so the recompute skip) are in play
        for m in layer.modules():
            if isinstance(m, _BatchNorm):
                m.eval()
    return layer


@pytest.mark.parametrize('name', list(BLOCKS))
@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('norm_eval', [True, False])
def test_checkpointed_gradients_equal_plain(name, fast, norm_eval):
    plain = _layer(name, with_cp=False, fast=fast, norm_eval=norm_eval)
    cp = _layer(name, with_cp=True, fast=fast, norm_eval=norm_eval)
    cp.load_state_dict(plain.state_dict())
    x = torch.rand(2, BLOCKS[name][1], 16, 16)
    xp, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_p, out_c = plain(xp), cp(xc)
    assert torch.equal(out_p, out_c)
    backward_outputs([out_p])
    backward_outputs([out_c])
    torch.testing.assert_close(xc.grad, xp.grad, rtol=1e-6, atol=0)
    gp, gc = grads_by_name(plain), grads_by_name(cp)
    assert gp.keys() == gc.keys()
    for key in gp:
        assert gp[key] is not None and gc[key] is not None, key
        torch.testing.assert_close(gc[key], gp[key], rtol=1e-6, atol=1e-7, msg=key)


def test_only_a_tail_that_feeds_only_the_add_is_skipped():
    assert Bottleneck(16, 4).recompute_may_skip_tail()
    assert BasicBlock(8, 8).recompute_may_skip_tail()
    assert FourConvBottleneck(16, 4).recompute_may_skip_tail()  # conv4 feeds only the add
    assert not ScaledBottleneck(16, 4).recompute_may_skip_tail()
    assert not ForwardOverride(8, 8).recompute_may_skip_tail()
    plugin = dict(type='ContextBlock', ratio=1. / 4)
    assert Bottleneck(16, 4, plugins=[dict(cfg=plugin, position='after_conv2')]
                      ).recompute_may_skip_tail()
    assert not Bottleneck(16, 4, plugins=[dict(cfg=plugin, position='after_conv3')]
                          ).recompute_may_skip_tail()


def test_descriptions_of_the_mmdet_blocks():
    desc = Bottleneck(16, 4, style='caffe', stride=2).describe()
    assert desc == BlockDescription((Step('conv1', 'bn1'), Step('conv2', 'bn2'),
                                     Step('conv3', 'bn3', act=False)))
    plugin = dict(type='ContextBlock', ratio=1. / 4)
    block = Bottleneck(16, 4, norm_cfg=dict(type='GN', num_groups=2),
                       plugins=[dict(cfg=dict(plugin, postfix=1), position='after_conv1'),
                                dict(cfg=dict(plugin, postfix=3), position='after_conv3')])
    assert block.describe().steps == (
        Step('conv1', 'gn1', plugins=('context_block1',)), Step('conv2', 'gn2'),
        Step('conv3', 'gn3', act=False, plugins=('context_block3',)))
    assert BasicBlock(8, 8).describe() == BlockDescription(
        (Step('conv1', 'bn1'), Step('conv2', 'bn2', act=False)))
    with pytest.raises(ValueError, match='one or more Step'):
        BlockDescription(())


@pytest.mark.parametrize('name,fused', [('bottleneck', True), ('four_convs', True),
                                        ('scaled', False), ('forward_override', False)])
def test_snapshot_folds_what_the_description_lets_it_run_exactly(name, fused):
    """The inference snapshot's folded block (fused kernels, one conv + add per block,
    the rest conv + ReLU) takes any description it can run exactly; others run through
    their own code. Outputs equal the reference."""
    fast = _layer(name, with_cp=False, fast=True, norm_eval=True).eval()
    ref = _layer(name, with_cp=False, fast=False, norm_eval=True).eval()
    ref.load_state_dict(fast.state_dict())
    assert all(FoldedBlock.supports(b) is fused for b in fast)
    x = torch.rand(2, BLOCKS[name][1], 16, 16)
    if fused:
        folded = [FoldedBlock(b, torch.float32) for b in fast]
        with torch.no_grad(), OpCounter() as ops:
            out = x
            for j, block in enumerate(folded):
                out = block(out, owns_input=j > 0)  # as the snapshot's loop hands maps on
        assert ops.count('mkldnn._convolution_pointwise_.binary') == len(folded)
        assert rel_err(out, ref(x)) <= 1e-5
