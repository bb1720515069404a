"""mmdet's extension points on our backbone: ``make_res_layer``, ``_make_stem_layer``,
``arch_settings`` and ``ResLayer(downsample_first=False)``, checked against mmdet itself.

Each subclass here is written the way mmdet writes its own (ResNeXt, RegNet, ...): the
test shows the hook is called and that the result is what mmdet builds.
"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize_, rel_err
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmdet.models.backbones import ResNet as MMResNet
from mmdet.models.backbones import ResNeXt as MMResNeXt
from mmdet.models.backbones.resnet import BasicBlock as MMBasicBlock
from mmdet.models.layers import ResLayer as MMResLayer
from torch import nn

from resnet_backbone import BasicBlock, Bottleneck, ResLayer, ResNetV1Custom


# ---------------------------------------------------------------- make_res_layer
class BottleneckX(Bottleneck):
    """mmdet's ResNeXt block on ours: the same few lines (grouped 3x3, wider convs)."""

    def __init__(self, inplanes, planes, groups=1, base_width=4, base_channels=64, **kwargs):
        super().__init__(inplanes, planes, **kwargs)
        width = self.planes if groups == 1 else \
            math.floor(self.planes * (base_width / base_channels)) * groups
        self.norm1_name, norm1 = build_norm_layer(self.norm_cfg, width, postfix=1)
        self.norm2_name, norm2 = build_norm_layer(self.norm_cfg, width, postfix=2)
        self.norm3_name, norm3 = build_norm_layer(self.norm_cfg, self.planes * self.expansion,
                                                  postfix=3)
        self.conv1 = build_conv_layer(self.conv_cfg, self.inplanes, width, kernel_size=1,
                                      stride=self.conv1_stride, bias=False)
        self.add_module(self.norm1_name, norm1)
        self.conv2 = build_conv_layer(self.conv_cfg, width, width, kernel_size=3,
                                      stride=self.conv2_stride, padding=self.dilation,
                                      dilation=self.dilation, groups=groups, bias=False)
        self.add_module(self.norm2_name, norm2)
        self.conv3 = build_conv_layer(self.conv_cfg, width, self.planes * self.expansion,
                                      kernel_size=1, bias=False)
        self.add_module(self.norm3_name, norm3)


class ResNeXtCustom(ResNetV1Custom):
    """mmdet's ResNeXt, on ours: a table and the hook, as in mmdet/models/backbones/resnext.py."""

    arch_settings = {50: (BottleneckX, (3, 4, 6, 3)), 101: (BottleneckX, (3, 4, 23, 3))}

    def __init__(self, depth, groups=1, base_width=4, **kwargs):
        self.groups = groups
        self.base_width = base_width
        super().__init__(depth, **kwargs)

    def make_res_layer(self, **kwargs):
        return ResLayer(groups=self.groups, base_width=self.base_width,
                        base_channels=self.base_channels, **kwargs)


def test_make_res_layer_override_builds_resnext_as_mmdet_does():
    kw = dict(groups=4, base_width=4, base_channels=8, out_indices=(0, 1, 2, 3))
    ref = randomize_(MMResNeXt(depth=50, **kw))
    ref.eval()  # (mmdet's train() returns None)
    ours = ResNeXtCustom(50, fast=False, **kw)
    # the hook was used: every stage is built of the subclass's block, grouped
    blocks = [m for m in ours.modules() if isinstance(m, Bottleneck)]
    assert blocks and all(type(b) is BottleneckX and b.conv2.groups == 4 for b in blocks)
    assert ours.layer1[0].conv2.out_channels == math.floor(8 * 4 / 8) * 4
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)
        got = ours(x)
        assert all(torch.equal(a, b) for a, b in zip(got, want))  # reference mode: bitwise
        ours.fast = True  # the folded path handles grouped convs
        assert max(rel_err(a, b) for a, b in zip(ours(x), want)) < 1e-5
    assert ours.out_channels == tuple(t.shape[1] for t in want)


def test_make_res_layer_receives_mmdets_keywords():
    seen = []

    class Spy(ResNetV1Custom):
        def make_res_layer(self, **kwargs):
            seen.append(sorted(kwargs))
            return super().make_res_layer(**kwargs)

    Spy(18, base_channels=4, num_stages=2, out_indices=(0, 1))
    assert seen == [sorted(['block', 'inplanes', 'planes', 'num_blocks', 'stride', 'dilation',
                            'style', 'avg_down', 'with_cp', 'conv_cfg', 'norm_cfg', 'dcn',
                            'plugins', 'init_cfg'])] * 2


def test_arch_settings_of_a_subclass_decide_the_depths():
    with pytest.raises(ValueError, match=r'^depth=18 is not supported; allowed values: '
                                         r'50, 101$'):
        ResNeXtCustom(18)
    assert ResNeXtCustom.feature_channels(50, base_channels=8) == [32, 64, 128, 256]


# ---------------------------------------------------------------- _make_stem_layer
class FiveByFiveStem(ResNetV1Custom):
    """A RegNet-like stem: one 5x5 stride-2 conv, no max-pool."""

    def _make_stem_layer(self, in_channels, stem_channels):
        self.conv1 = build_conv_layer(self.conv_cfg, in_channels, stem_channels, 5, stride=2,
                                      padding=2, bias=False)
        self.norm1_name, norm1 = build_norm_layer(self.norm_cfg, stem_channels, postfix=1)
        self.add_module(self.norm1_name, norm1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()


class ModuleStem(ResNetV1Custom):
    """A stem that is one module (not a Sequential): it is run as is."""

    class Stem(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, stride=4, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return self.bn(self.conv(x)).relu()

    def _make_stem_layer(self, in_channels, stem_channels):
        self.stem = self.Stem(in_channels, stem_channels)
        self.maxpool = nn.Identity()


def _by_hand(model, stem_out):
    x, outs = stem_out, []
    for name in model.res_layers:
        x = getattr(model, name)(x)
        outs.append(x)
    return outs


def test_make_stem_layer_override_is_used():
    model = randomize_(FiveByFiveStem(18, base_channels=8, frozen_stages=0, fast=False)).eval()
    assert model.conv1.kernel_size == (5, 5) and isinstance(model.maxpool, nn.Identity)
    assert model.out_strides == (2, 4, 8, 16)  # read off the stem: stride 2, no pool
    assert model.output_shape(include_stem=True)['c1'].stride == 2
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = _by_hand(model, model.relu(model.norm1(model.conv1(x))))
        got = model(x)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert model.forward_levels(x, 'c1')['c1'].shape == (1, 8, 16, 16)
    model.train()  # frozen_stages=0 freezes the subclass's stem
    assert not model.norm1.training
    assert not any(p.requires_grad for p in model.conv1.parameters())


def test_make_stem_layer_override_with_one_module():
    model = randomize_(ModuleStem(18, base_channels=8, frozen_stages=0)).eval()
    assert model.out_strides == (4, 8, 16, 32)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = _by_hand(model, model.stem(x))
        assert all(torch.equal(a, b) for a, b in zip(model(x), want))
    model.train()
    assert not any(p.requires_grad for p in model.stem.parameters())


@pytest.mark.parametrize('deep_stem', [False, True])
def test_mmdets_own_make_stem_layer_gives_our_stem(deep_stem):
    """mmdet's ``ResNet._make_stem_layer``, borrowed as is: the hook's semantics are mmdet's."""

    class Borrowed(ResNetV1Custom):
        _make_stem_layer = MMResNet._make_stem_layer

    kw = dict(base_channels=8, stem_type='deep' if deep_stem else 'classic', fast=False)
    ours = randomize_(ResNetV1Custom(18, **kw)).eval()
    borrowed = Borrowed(18, **kw).eval()
    assert list(borrowed.state_dict()) == list(ours.state_dict())
    borrowed.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(borrowed(x), ours(x)))
    assert borrowed.out_strides == ours.out_strides


def test_make_stem_layer_that_breaks_the_contract_is_one_line():
    class NoPool(ResNetV1Custom):
        def _make_stem_layer(self, in_channels, stem_channels):
            self.stem = nn.Conv2d(in_channels, stem_channels, 3, 2, 1)

    with pytest.raises(TypeError, match=r"^NoPool\._make_stem_layer must attach self\.stem, "
                                        r"or self\.conv1 \+ self\.norm1_name \+ self\.relu, "
                                        r"and self\.maxpool \(nn\.Identity\(\) for none\)"):
        NoPool(18)


# ---------------------------------------------------------------- ResLayer(downsample_first)
@pytest.mark.parametrize('avg_down', [False, True])
@pytest.mark.parametrize('stride,planes', [(2, 16), (1, 16), (2, 8)])
def test_downsample_first_false_matches_mmdets_reslayer(stride, planes, avg_down):
    torch.manual_seed(0)
    kw = dict(stride=stride, avg_down=avg_down, downsample_first=False)
    ref = randomize_(MMResLayer(MMBasicBlock, 8, planes, 3, **kw))
    ours = ResLayer(BasicBlock, 8, planes, 3, **kw)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    # mmdet's layout: width-keeping blocks first, the strided/projecting one last
    assert ours[0].downsample is None and ours[1].downsample is None
    assert (ours[2].downsample is not None) == (stride != 1 or planes != 8)
    x = torch.randn(2, 8, 16, 16)
    for mode in (False, True):
        ref.train(mode)
        ours.train(mode)
        with torch.no_grad():
            assert torch.equal(ours(x), ref(x)), f'train={mode}'


def test_downsample_first_false_with_bottleneck_is_one_line():
    with pytest.raises(ValueError, match=r'^downsample_first=False needs a block with '
                                         r'expansion 1 .*; use downsample_first=True$'):
        ResLayer(Bottleneck, 16, 4, 2, stride=2, downsample_first=False)
    ResLayer(Bottleneck, 16, 4, 1, stride=2, downsample_first=False)  # one block: fine
