"""mmdet's own ResNet test suite, run against our classes.

Source: open-mmlab/mmdetection, ``tests/test_models/test_backbones/test_resnet.py`` at
commit 067c8f7f4131cbadb4fe7023333bfc753b7e2e8b, and the helpers it imports from
``tests/test_models/test_backbones/utils.py`` (``is_block``, ``is_norm``,
``check_norm_state``, at commit 2f9a54a32655df8057641e38d8e41dd76922737f). That file is
not in mmdet's pip package.

Rewritten here case by case rather than copied (same functions, same cases in the same
order, same assertions), with the mechanical swap:

- mmdet ``ResNet`` -> ``ResNetV1Custom``, ``ResNetV1d`` -> ``ResNetV1dCustom``;
- ``mmdet.models.backbones.resnet.BasicBlock``/``Bottleneck`` -> ours
  (``resnet_backbone.BasicBlock``/``Bottleneck``);
- ``mmdet.models.utils.ResLayer`` -> ``resnet_backbone.ResLayer``;
- ``utils.is_block`` -> ``isinstance(m, ResBlock)`` (our blocks' base class).

What differs on purpose (README, "Differences from mmdet's ResNet": bad arguments give one
line ``ValueError``/``TypeError`` instead of bare asserts and ``KeyError``) is adapted
with ``pytest.raises((AssertionError, ValueError))`` (or ``(KeyError, ValueError)``) and a
``# differs:`` comment; the full list is in docs/mmdet_test_suite.md. Inputs are smaller
than mmdet's (16x16 block inputs instead of 56x56) to keep the file fast; the shapes
asserted follow from them.
"""
from __future__ import annotations

import pytest
import torch
from mmcv.ops import DeformConv2dPack
from torch.nn.modules import AvgPool2d, GroupNorm
from torch.nn.modules.batchnorm import _BatchNorm

from resnet_backbone import BasicBlock, Bottleneck, ResLayer
from resnet_backbone import ResNetV1Custom as ResNet
from resnet_backbone import ResNetV1dCustom as ResNetV1d
from resnet_backbone.models.blocks import ResBlock

#: bad arguments: mmdet asserts, ours raises a one-line ValueError (README table)
ASSERT_OR_VALUE = (AssertionError, ValueError)
HW = 16  # mmdet uses 56x56 block inputs


# ---------------------------------------------------------------- utils.py's helpers
def is_block(module) -> bool:
    return isinstance(module, ResBlock)


def is_norm(module) -> bool:
    return isinstance(module, (GroupNorm, _BatchNorm))


def check_norm_state(modules, train_state: bool) -> bool:
    return all(m.training == train_state for m in modules if isinstance(m, _BatchNorm))


def params_all_zeros(module) -> bool:
    """mmcv's ``assert_params_all_zeros``: weight (and bias) all zero."""
    return all(torch.equal(p, torch.zeros_like(p)) for n, p in module.named_parameters()
               if n in ('weight', 'bias'))


CONTEXT = dict(type='ContextBlock', ratio=1. / 16)
GEN_ATTENTION = dict(type='GeneralizedAttention', spatial_range=-1, num_heads=8,
                     attention_type='0010', kv_stride=2)


def _feat_shapes(model, size=32):
    return [tuple(f.shape) for f in model(torch.randn(1, 3, size, size))]


# ---------------------------------------------------------------- test_resnet_basic_block
def test_resnet_basic_block():
    dcn = dict(type='DCN', deform_groups=1, fallback_on_stride=False)
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError (not implemented: dcn)
        BasicBlock(64, 64, dcn=dcn)
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError (not implemented: plugins)
        BasicBlock(64, 64, plugins=[dict(cfg=CONTEXT, position='after_conv3')])
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError (not implemented: plugins)
        BasicBlock(64, 64, plugins=[dict(cfg=GEN_ATTENTION, position='after_conv2')])

    block = BasicBlock(64, 64)
    assert block.conv1.in_channels == 64 and block.conv1.out_channels == 64
    assert block.conv1.kernel_size == (3, 3)
    assert block.conv2.in_channels == 64 and block.conv2.out_channels == 64
    assert block.conv2.kernel_size == (3, 3)
    assert block(torch.randn(1, 64, HW, HW)).shape == (1, 64, HW, HW)

    block = BasicBlock(64, 64, with_cp=True)
    assert block.with_cp
    assert block(torch.randn(1, 64, HW, HW)).shape == (1, 64, HW, HW)


# ---------------------------------------------------------------- test_resnet_bottleneck
def test_resnet_bottleneck():
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; style in pytorch/caffe
        Bottleneck(64, 64, style='tensorflow')
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; positions after_conv1..3
        Bottleneck(64, 16, plugins=[dict(cfg=CONTEXT, position='after_conv4')])
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; duplicate plugin name
        Bottleneck(64, 16, plugins=[dict(cfg=CONTEXT, position='after_conv3'),
                                    dict(cfg=CONTEXT, position='after_conv3')])
    with pytest.raises(KeyError):  # unknown plugin type (mmcv's own error, as in mmdet)
        Bottleneck(64, 16, plugins=[dict(cfg=dict(type='WrongPlugin'), position='after_conv3')])

    block = Bottleneck(64, 16, with_cp=True)
    assert block.with_cp
    assert block(torch.randn(1, 64, HW, HW)).shape == (1, 64, HW, HW)

    block = Bottleneck(64, 64, stride=2, style='pytorch')
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    block = Bottleneck(64, 64, stride=2, style='caffe')
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)

    dcn = dict(type='DCN', deform_groups=1, fallback_on_stride=False)
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; conv_cfg must be None
        Bottleneck(64, 64, dcn=dcn, conv_cfg=dict(type='Conv'))
    block = Bottleneck(64, 64, dcn=dcn)
    assert isinstance(block.conv2, DeformConv2dPack)

    block = Bottleneck(64, 16)
    assert block(torch.randn(1, 64, HW, HW)).shape == (1, 64, HW, HW)

    # 1 ContextBlock after conv3
    block = Bottleneck(64, 16, plugins=[dict(cfg=CONTEXT, position='after_conv3')])
    assert block.context_block.in_channels == 64
    assert block(torch.randn(1, 64, HW, HW)).shape == (1, 64, HW, HW)

    # 1 GeneralizedAttention after conv2
    block = Bottleneck(64, 16, plugins=[dict(cfg=GEN_ATTENTION, position='after_conv2')])
    assert block.gen_attention_block.in_channels == 16
    assert block(torch.randn(1, 64, HW, HW)).shape == (1, 64, HW, HW)

    # GeneralizedAttention and NonLocal2d after conv2, ContextBlock after conv3
    block = Bottleneck(64, 16, plugins=[
        dict(cfg=GEN_ATTENTION, position='after_conv2'),
        dict(cfg=dict(type='NonLocal2d'), position='after_conv2'),
        dict(cfg=CONTEXT, position='after_conv3')])
    assert block.gen_attention_block.in_channels == 16
    assert block.nonlocal_block.in_channels == 16
    assert block.context_block.in_channels == 64
    assert block(torch.randn(1, 64, HW, HW)).shape == (1, 64, HW, HW)

    # 1 ContextBlock after conv2, 2 after conv3 (postfixes 1, 2, 3)
    block = Bottleneck(64, 16, plugins=[
        dict(cfg=dict(CONTEXT, postfix=1), position='after_conv2'),
        dict(cfg=dict(CONTEXT, postfix=2), position='after_conv3'),
        dict(cfg=dict(CONTEXT, postfix=3), position='after_conv3')])
    assert block.context_block1.in_channels == 16
    assert block.context_block2.in_channels == 64
    assert block.context_block3.in_channels == 64
    assert block(torch.randn(1, 64, HW, HW)).shape == (1, 64, HW, HW)


@pytest.mark.skip(reason="SimplifiedBasicBlock is SCNet's block, not part of this backbone")
def test_simplied_basic_block():
    """mmdet tests ``mmdet.models.layers.SimplifiedBasicBlock`` here; we have no such block."""


# ---------------------------------------------------------------- test_resnet_res_layer
def test_resnet_res_layer():
    x = torch.randn(1, 64, HW, HW)
    # 3 Bottlenecks without downsample
    layer = ResLayer(Bottleneck, 64, 16, 3)
    assert len(layer) == 3
    for i in range(len(layer)):
        assert layer[i].conv1.in_channels == 64 and layer[i].conv1.out_channels == 16
        assert layer[i].downsample is None
    assert layer(x).shape == (1, 64, HW, HW)

    # 3 Bottlenecks with downsample
    layer = ResLayer(Bottleneck, 64, 64, 3)
    assert layer[0].downsample[0].out_channels == 256
    assert all(layer[i].downsample is None for i in range(1, len(layer)))
    assert layer(x).shape == (1, 256, HW, HW)

    # stride=2
    layer = ResLayer(Bottleneck, 64, 64, 3, stride=2)
    assert layer[0].downsample[0].out_channels == 256
    assert layer[0].downsample[0].stride == (2, 2)
    assert all(layer[i].downsample is None for i in range(1, len(layer)))
    assert layer(x).shape == (1, 256, HW // 2, HW // 2)

    # stride=2 and average downsample
    layer = ResLayer(Bottleneck, 64, 64, 3, stride=2, avg_down=True)
    assert isinstance(layer[0].downsample[0], AvgPool2d)
    assert layer[0].downsample[1].out_channels == 256
    assert layer[0].downsample[1].stride == (1, 1)
    assert all(layer[i].downsample is None for i in range(1, len(layer)))
    assert layer(x).shape == (1, 256, HW // 2, HW // 2)

    # 3 BasicBlocks, stride=2, downsample_first=False
    layer = ResLayer(BasicBlock, 64, 64, 3, stride=2, downsample_first=False)
    assert layer[2].downsample[0].out_channels == 64
    assert layer[2].downsample[0].stride == (2, 2)
    assert all(layer[i].downsample is None for i in range(len(layer) - 1))
    assert layer(x).shape == (1, 64, HW // 2, HW // 2)


# ---------------------------------------------------------------- test_resnest_stem
def test_resnest_stem():
    for kw, stem in ((dict(), 64), (dict(base_channels=3), 3), (dict(stem_channels=3), 3),
                     (dict(stem_channels=3, base_channels=2), 3)):
        model = ResNet(50, **kw)
        assert model.stem_channels == stem
        assert model.conv1.out_channels == stem
        assert model.norm1.num_features == stem
        assert model.layer1[0].conv1.in_channels == stem

    model = ResNetV1d(depth=50, stem_channels=6)
    model.train()
    assert model.stem[0].out_channels == 3 and model.stem[1].num_features == 3
    assert model.stem[3].out_channels == 3 and model.stem[4].num_features == 3
    assert model.stem[6].out_channels == 6 and model.stem[7].num_features == 6
    assert model.layer1[0].conv1.in_channels == 6


# ---------------------------------------------------------------- test_resnet_backbone
def test_resnet_backbone_bad_arguments():
    """The argument checks at the top of mmdet's test_resnet_backbone."""
    with pytest.raises((KeyError, ValueError)):  # differs: ValueError; depth 18..152
        ResNet(20)
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; 1 <= num_stages <= 4
        ResNet(50, num_stages=0)
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; len(stage_with_dcn)
        ResNet(50, dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
               stage_with_dcn=(True, ))
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; len(plugin stages)
        ResNet(50, plugins=[dict(cfg=CONTEXT, stages=(False, True, True),
                                 position='after_conv3')])
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; 1 <= num_stages <= 4
        ResNet(50, num_stages=5)
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; len(strides/dilations)
        ResNet(50, strides=(1, ), dilations=(1, 1), num_stages=3)
    with pytest.raises(TypeError):  # pretrained must be a str path
        ResNet(50, pretrained=0)
    with pytest.raises(ASSERT_OR_VALUE):  # differs: ValueError; style in pytorch/caffe
        ResNet(50, style='tensorflow')


def test_resnet_backbone_norm_eval_and_frozen_stages():
    model = ResNet(50, norm_eval=True, base_channels=1)
    model.train()
    assert check_norm_state(model.modules(), False)

    # differs: the deprecation is a DeprecationWarning here (mmdet: a UserWarning whose
    # text starts 'DeprecationWarning:'); nothing is downloaded by the constructor
    with pytest.warns(DeprecationWarning, match='pretrained is deprecated'):
        model = ResNet(depth=50, norm_eval=True, pretrained='torchvision://resnet50')
    model.train()
    assert check_norm_state(model.modules(), False)

    frozen_stages = 1
    model = ResNet(50, frozen_stages=frozen_stages, base_channels=1)
    model.train()
    assert model.norm1.training is False
    for layer in (model.conv1, model.norm1):
        assert all(p.requires_grad is False for p in layer.parameters())
    for i in range(1, frozen_stages + 1):
        layer = getattr(model, f'layer{i}')
        assert all(m.training is False for m in layer.modules() if isinstance(m, _BatchNorm))
        assert all(p.requires_grad is False for p in layer.parameters())

    model = ResNetV1d(depth=50, frozen_stages=frozen_stages, base_channels=2)
    assert len(model.stem) == 9
    model.train()
    assert check_norm_state(model.stem, False)
    assert all(p.requires_grad is False for p in model.stem.parameters())
    for i in range(1, frozen_stages + 1):
        layer = getattr(model, f'layer{i}')
        assert all(m.training is False for m in layer.modules() if isinstance(m, _BatchNorm))
        assert all(p.requires_grad is False for p in layer.parameters())


def test_resnet_backbone_forward():
    model = ResNet(18)
    model.train()
    assert _feat_shapes(model) == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2),
                                   (1, 512, 1, 1)]

    model = ResNet(18, with_cp=True)
    assert all(m.with_cp for m in model.modules() if is_block(m))

    model = ResNet(50, base_channels=1)
    assert all(isinstance(m, _BatchNorm) for m in model.modules() if is_norm(m))
    model.train()
    assert _feat_shapes(model) == [(1, 4, 8, 8), (1, 8, 4, 4), (1, 16, 2, 2), (1, 32, 1, 1)]

    model = ResNet(50, out_indices=(0, 1, 2), base_channels=1)
    model.train()
    assert _feat_shapes(model) == [(1, 4, 8, 8), (1, 8, 4, 4), (1, 16, 2, 2)]

    model = ResNet(50, with_cp=True, base_channels=1)
    assert all(m.with_cp for m in model.modules() if is_block(m))
    model.train()
    assert _feat_shapes(model) == [(1, 4, 8, 8), (1, 8, 4, 4), (1, 16, 2, 2), (1, 32, 1, 1)]

    model = ResNet(50, base_channels=4,
                   norm_cfg=dict(type='GN', num_groups=2, requires_grad=True))
    assert all(isinstance(m, GroupNorm) for m in model.modules() if is_norm(m))
    model.train()
    assert _feat_shapes(model) == [(1, 16, 8, 8), (1, 32, 4, 4), (1, 64, 2, 2),
                                   (1, 128, 1, 1)]


def test_resnet_backbone_plugins():
    # GeneralizedAttention + NonLocal2d after conv2, ContextBlock after conv3, by stage
    plugins = [dict(cfg=GEN_ATTENTION, stages=(False, True, True, True),
                    position='after_conv2'),
               dict(cfg=dict(type='NonLocal2d'), position='after_conv2'),
               dict(cfg=CONTEXT, stages=(False, True, True, False), position='after_conv3')]
    model = ResNet(50, plugins=plugins, base_channels=8)
    for m in model.layer1.modules():
        if is_block(m):
            assert not hasattr(m, 'context_block') and not hasattr(m, 'gen_attention_block')
            assert m.nonlocal_block.in_channels == 8
    for name, width in (('layer2', 16), ('layer3', 32)):
        for m in getattr(model, name).modules():
            if is_block(m):
                assert m.nonlocal_block.in_channels == width
                assert m.gen_attention_block.in_channels == width
                assert m.context_block.in_channels == width * 4
    for m in model.layer4.modules():
        if is_block(m):
            assert m.nonlocal_block.in_channels == 64
            assert m.gen_attention_block.in_channels == 64
            assert not hasattr(m, 'context_block')
    model.train()
    assert _feat_shapes(model) == [(1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2),
                                   (1, 256, 1, 1)]

    # two ContextBlocks after conv3 (postfixes 1, 2) in layers 2 and 3
    plugins = [dict(cfg=dict(CONTEXT, postfix=1), stages=(False, True, True, False),
                    position='after_conv3'),
               dict(cfg=dict(CONTEXT, postfix=2), stages=(False, True, True, False),
                    position='after_conv3')]
    model = ResNet(50, plugins=plugins, base_channels=8)
    for name in ('layer1', 'layer4'):
        for m in getattr(model, name).modules():
            if is_block(m):
                assert not any(hasattr(m, f'context_block{p}') for p in ('', '1', '2'))
    for name, width in (('layer2', 64), ('layer3', 128)):
        for m in getattr(model, name).modules():
            if is_block(m):
                assert not hasattr(m, 'context_block')
                assert m.context_block1.in_channels == width
                assert m.context_block2.in_channels == width
    model.train()
    assert _feat_shapes(model) == [(1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2),
                                   (1, 256, 1, 1)]


def test_resnet_backbone_zero_init_and_v1d():
    model = ResNet(50, zero_init_residual=True, base_channels=1)
    model.init_weights()
    for m in model.modules():
        if isinstance(m, Bottleneck):
            assert params_all_zeros(m.norm3)
        elif isinstance(m, BasicBlock):
            assert params_all_zeros(m.norm2)
    model.train()
    assert _feat_shapes(model) == [(1, 4, 8, 8), (1, 8, 4, 4), (1, 16, 2, 2), (1, 32, 1, 1)]

    model = ResNetV1d(depth=50, base_channels=2)
    model.train()
    assert _feat_shapes(model) == [(1, 8, 8, 8), (1, 16, 4, 4), (1, 32, 2, 2), (1, 64, 1, 1)]
