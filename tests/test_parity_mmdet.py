"""Parity with mmdet's ResNet / ResNetV1d: same kwargs -> same keys, outputs and grads.

These run the reference mode (``fast=False``), which promises bitwise equality.

Every case builds mmdet's model and ours with the same keyword arguments, randomises
mmdet's weights and BN statistics, loads them into ours with ``strict=True``, and
compares eval outputs bitwise (``torch.equal``) and train-mode gradients bitwise. The
op order is the same as mmdet's everywhere, so no tolerance is needed.
"""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
from conftest import backward_outputs, grads_by_name, randomize_
from mmdet.models.backbones import ResNet, ResNetV1d

from resnet_backbone import ResNetV1Custom

STEMS = {
    'classic': dict(),
    'deep': dict(deep_stem=True),
    'deep_avgdown': dict(deep_stem=True, avg_down=True),
}
VARIANTS = {
    'default': dict(),
    'out13_frozen1': dict(out_indices=(1, 3), frozen_stages=1),
    'dilated_c5': dict(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), frozen_stages=0),
    'frozen2_bn_train': dict(frozen_stages=2, norm_eval=False, out_indices=(0, 2, 3)),
    'three_stages': dict(num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                         out_indices=(0, 2)),
}
CASES = list(itertools.product((18, 34, 50, 101), ('pytorch', 'caffe'), STEMS, VARIANTS))


def eval_outputs(model, x):
    model.eval()  # mmdet's train()/eval() return None, so no chaining
    with torch.no_grad():
        return model(x)


def assert_same_outputs(ref, ours, x):
    r_out, o_out = eval_outputs(ref, x), eval_outputs(ours, x)
    assert len(r_out) == len(o_out)
    for r, o in zip(r_out, o_out):
        assert torch.equal(r, o)


def build_pair(depth: int, **kwargs):
    kwargs = dict(base_channels=4, **kwargs)
    ref = randomize_(ResNet(depth=depth, **copy.deepcopy(kwargs)))
    ours = ResNetV1Custom(depth=depth, fast=False, **copy.deepcopy(kwargs))  # reference mode
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize('depth,style,stem,variant', CASES)
def test_outputs_and_grads_bitwise_equal(depth, style, stem, variant):
    kwargs = dict(style=style, **STEMS[stem], **VARIANTS[variant])
    ref, ours = build_pair(depth, **kwargs)
    assert list(ref.state_dict()) == list(ours.state_dict())
    x = torch.rand(2, 3, 64, 64)

    ref.eval(), ours.eval()
    with torch.no_grad():
        r_out, o_out = ref(x), ours(x)
    assert len(r_out) == len(o_out) == len(ours.out_indices)
    for r, o, c, s in zip(r_out, o_out, ours.out_channels, ours.out_strides):
        assert torch.equal(r, o)
        assert o.shape[1] == c and o.shape[-1] == 64 // s

    ref.train(), ours.train()
    backward_outputs(ref(x))
    backward_outputs(ours(x))
    r_grads, o_grads = grads_by_name(ref), grads_by_name(ours)
    assert r_grads.keys() == o_grads.keys()
    for name in r_grads:
        if r_grads[name] is None:
            assert o_grads[name] is None, name
        else:
            assert torch.equal(r_grads[name], o_grads[name]), name
    # Running statistics moved identically in train mode (norm_eval=False case).
    for (n, rb), ob in zip(ref.named_buffers(), ours.buffers()):
        assert torch.equal(rb, ob), n


def test_resnetv1d_preset_matches_mmdet_resnetv1d():
    from resnet_backbone import ResNetV1dCustom
    ref = randomize_(ResNetV1d(depth=50, base_channels=4))
    ours = ResNetV1dCustom(depth=50, base_channels=4, fast=False)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert_same_outputs(ref, ours, torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize('norm_cfg', [
    dict(type='GN', num_groups=2, requires_grad=True),
    dict(type='BN', requires_grad=False),
])
def test_norm_cfg_keys_and_outputs_match(norm_cfg):
    ref, ours = build_pair(50, norm_cfg=norm_cfg)
    keys = list(ours.state_dict())
    assert keys == list(ref.state_dict())
    if norm_cfg['type'] == 'GN':
        assert 'gn1.weight' in keys and 'layer1.0.gn3.weight' in keys
    assert all(p.requires_grad == q.requires_grad
               for p, q in zip(ref.parameters(), ours.parameters()))
    assert_same_outputs(ref, ours, torch.rand(1, 3, 64, 64))


def test_plugins_match_mmdet():
    plugins = [
        dict(cfg=dict(type='ContextBlock', ratio=1. / 4), stages=(False, True, True, True),
             position='after_conv3'),
        dict(cfg=dict(type='GeneralizedAttention', spatial_range=-1, num_heads=2,
                      attention_type='0010', kv_stride=2),
             stages=(False, False, True, True), position='after_conv2'),
    ]
    ref, ours = build_pair(50, plugins=plugins)
    assert any('context_block' in k for k in ours.state_dict())
    assert any('gen_attention_block' in k for k in ours.state_dict())
    assert_same_outputs(ref, ours, torch.rand(1, 3, 64, 64))


def test_dcn_matches_mmdet_and_imports_ops_only_when_asked():
    dcn = dict(type='DCN', deform_groups=1, fallback_on_stride=False)
    kwargs = dict(dcn=dcn, stage_with_dcn=(False, True, True, True))
    ref = randomize_(ResNet(depth=50, base_channels=4, **copy.deepcopy(kwargs)))
    ours = ResNetV1Custom(depth=50, base_channels=4, fast=False, **kwargs)  # caller's dict
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert type(ours.layer2[0].conv2).__name__ == 'DeformConv2dPack'
    assert type(ours.layer1[0].conv2).__name__ == 'Conv2d'
    assert dcn == dict(type='DCN', deform_groups=1, fallback_on_stride=False)  # not mutated
    # mmcv's deformable conv refuses maps smaller than its kernel: C5 must be >= 3x3
    assert_same_outputs(ref, ours, torch.rand(1, 3, 128, 128))


def test_seeded_init_weights_match_mmdet():
    """Same seed -> same init (Kaiming convs, constant norms, zero-init residual)."""
    torch.manual_seed(123)
    ref = ResNet(depth=50, base_channels=4)
    ref.init_weights()
    torch.manual_seed(123)
    ours = ResNetV1Custom(depth=50, base_channels=4)
    ours.init_weights()
    for (n, r), o in zip(ref.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(r, o), n
    assert torch.count_nonzero(ours.layer1[0].norm3.weight) == 0  # zero_init_residual


def test_init_weights_is_quiet(capsys, caplog):
    import logging
    caplog.set_level(logging.INFO)
    ResNetV1Custom(depth=18, base_channels=4).init_weights()
    captured = capsys.readouterr()
    per_param = [r for r in caplog.records if 'layer1.0.conv1.weight' in r.getMessage()]
    assert not per_param and 'layer1.0.conv1.weight' not in captured.out + captured.err
