"""ResNetV2Custom (pre-activation ResNet): the unit's description, timm and Keras parity
from converted weights, layouts and metadata, the fast path, with_cp, freezing, errors,
the registry and the converter."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from conftest import OpCounter, backward_outputs, grads_by_name, randomize_, rel_err, run_cli

from resnet_backbone import ResNetV2Custom
from resnet_backbone.io import weights
from resnet_backbone.models.blocks import BlockDescription, PreActBottleneck, Step
from resnet_backbone.models.from_checkpoint import backbone_for_checkpoint
from resnet_backbone.registry import check_backbone_kwargs

#: Keras's ResNet50V2 taps for C2..C5 ('last' layout: before each subsampling unit)
KERAS_TAPS = ('conv2_block2_out', 'conv3_block3_out', 'conv4_block5_out', 'conv5_block3_out')


def small(seed: int = 0, **kw) -> ResNetV2Custom:
    kw.setdefault('base_channels', 4)
    kw.setdefault('stem_channels', 8)
    return randomize_(ResNetV2Custom(50, **kw), seed=seed)


# ---------------------------------------------------------------- the unit
def test_unit_description():
    proj = PreActBottleneck(8, 4, stride=2)
    assert proj.describe() == BlockDescription(
        (Step(None, 'bn0'), Step('conv1', 'bn1'), Step('conv2', 'bn2'),
         Step('conv3', None, act=False)), out_act=False, shortcut_input='preact')
    ident = PreActBottleneck(16, 4, stride=2)
    assert ident.describe().shortcut_input == 'x'
    assert isinstance(ident.downsample[0], torch.nn.MaxPool2d)  # x[:, :, ::2, ::2]
    assert ident.recompute_may_skip_tail()
    with pytest.raises(ValueError, match='needs a first step without a conv'):
        BlockDescription((Step('conv1', 'bn1'),), shortcut_input='preact')
    with pytest.raises(ValueError, match='needs a conv, a norm or both'):
        Step(None, None)


def test_unit_matches_its_formula():
    """preact = relu(bn0(x)); out = conv3(relu(bn2(conv2(relu(bn1(conv1(preact))))))) +
    shortcut, with the projection on preact and the identity on x (subsampled)."""
    for inplanes, stride in ((8, 2), (16, 2), (16, 1)):
        u = randomize_(PreActBottleneck(inplanes, 4, stride=stride, bias=True)).eval()
        x = torch.randn(2, inplanes, 9, 9)
        with torch.no_grad():
            pre = torch.relu(u.bn0(x))
            br = u.conv3(torch.relu(u.bn2(u.conv2(torch.relu(u.bn1(u.conv1(pre)))))))
            sc = u.downsample[0](pre) if inplanes != 16 else x[:, :, ::stride, ::stride]
            assert rel_err(u(x), br + sc) <= 1e-6


# ---------------------------------------------------------------- timm ('first')
@pytest.mark.parametrize('name,depth', [('resnetv2_50', 50), ('resnetv2_101', 101)])
def test_timm_parity(name, depth):
    """timm's BN + pre-activation resnetv2 (not the GN/WS ``_bit`` ones), random weights
    and BN statistics, converted: every level within 1e-5 relative."""
    timm = pytest.importorskip('timm')
    ref = randomize_(timm.create_model(name, pretrained=False)).eval()
    model, converted, kwargs = backbone_for_checkpoint(ref.state_dict())
    assert isinstance(model, ResNetV2Custom) and converted.source == 'timm'
    assert kwargs == dict(depth=depth, stride_in='first', stem_pool_padding='symmetric',
                          stem_channels=64, base_channels=64, conv_bias=False)
    report = weights.load_state_dict(model, converted.state_dict, log=False)
    assert report.complete and report.coverage == 100.0
    raw = model.eval()
    assert not hasattr(raw, 'post_norm')  # out_norm=False: timm's norm.* is dropped
    assert {'post_norm.weight', 'head.fc.weight'} <= set(converted.dropped)
    model = ResNetV2Custom(depth, out_norm=True)
    normed_report = weights.load_pretrained(model, ref.state_dict())
    assert normed_report.complete and normed_report.coverage == 100.0
    assert normed_report.fresh == ['norm_c2', 'norm_c3', 'norm_c4']  # out_norm's own
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        got = raw(x)
        assert [rel_err(a, b) for a, b in zip(got, want)] < [1e-5] * 4
        # out_norm: C5 is the final norm + ReLU, timm's norm=True level
        normed = ref.forward_intermediates(x, indices=[4], norm=True, intermediates_only=True)
        model.eval()
        assert rel_err(model(x)[-1], normed[0]) <= 1e-5


def test_timm_mapping_can_fail():
    """Swap two BN mappings (after conv1 <-> after conv2): the comparison sees it."""
    timm = pytest.importorskip('timm')
    ref = randomize_(timm.create_model('resnetv2_50', pretrained=False)).eval()
    sd = ref.state_dict()
    swapped = {k.replace('stages.0.blocks.1.norm2.', 'TMP.').replace(
        'stages.0.blocks.1.norm3.', 'stages.0.blocks.1.norm2.').replace(
        'TMP.', 'stages.0.blocks.1.norm3.'): v for k, v in sd.items()}
    # same shapes (64 channels each), so the load is complete: only the outputs differ
    model = ResNetV2Custom(50, out_norm=False).eval()
    weights.load_pretrained(model, swapped)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
        assert rel_err(model(x)[0], want) > 1e-3


# ---------------------------------------------------------------- Keras ('last')
@pytest.fixture(scope='module')
def keras_r50v2(tmp_path_factory):
    """Keras's ResNet50V2 (torch backend, ``weights=None``) with random weights and
    non-trivial BN statistics, its C2..C5 taps and final ReLU on one input, and its
    weights saved both ways: Keras 3 ``.weights.h5`` and the named HDF5 ``.h5``."""
    os.environ.setdefault('KERAS_BACKEND', 'torch')
    keras = pytest.importorskip('keras')
    if keras.backend.backend() != 'torch':
        pytest.skip('keras was imported with another backend')
    km = keras.applications.ResNet50V2(weights=None, include_top=False,
                                       input_shape=(None, None, 3))
    randomize_keras_(km)
    feat = keras.Model(km.input, [km.get_layer(n).output for n in (*KERAS_TAPS, 'post_relu')])
    x = np.random.default_rng(1).standard_normal((1, 128, 128, 3)).astype('float32')
    outs = [torch.from_numpy(keras.ops.convert_to_numpy(o)).permute(0, 3, 1, 2)
            for o in feat(x, training=False)]
    d = tmp_path_factory.mktemp('keras')
    km.save_weights(d / 'r50v2.weights.h5')
    from keras.src.legacy.saving import legacy_h5_format
    legacy_h5_format.save_weights_to_hdf5_group  # noqa: B018 - exists in this keras
    import h5py
    with h5py.File(d / 'r50v2.h5', 'w') as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, km)
    return dict(x=torch.from_numpy(x).permute(0, 3, 1, 2), outs=outs, dir=d)


def randomize_keras_(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for v in layer.weights:
            name, shape = v.path.split('/')[-1], tuple(v.shape)
            if name in ('moving_variance', 'gamma'):
                val = rng.uniform(0.5, 1.5, shape)
            elif name in ('moving_mean', 'beta', 'bias'):
                val = rng.normal(0.0, 0.1, shape)
            else:
                val = rng.normal(0.0, (2.0 / np.prod(shape[:-1])) ** 0.5, shape)
            v.assign(val.astype('float32'))


@pytest.mark.parametrize('file', ['r50v2.weights.h5', 'r50v2.h5'])
def test_keras_parity(keras_r50v2, file):
    """Converted Keras weights: C2..C5 taps within 1e-4 relative (measured ~4e-6), and
    the final norm + ReLU (out_norm) too."""
    path = keras_r50v2['dir'] / file
    model, converted, kwargs = backbone_for_checkpoint(str(path))
    assert converted.source == 'keras' and kwargs == dict(
        depth=50, stride_in='last', stem_pool_padding='zeros', stem_channels=64,
        base_channels=64, conv_bias=True)
    raw = ResNetV2Custom(50, stride_in='last', stem_pool_padding='zeros', out_norm=False)
    report = weights.load_pretrained(raw.eval(), str(path))
    model = ResNetV2Custom(out_norm=True, **kwargs)
    assert report.complete and report.coverage == 100.0
    assert "keras (implies stride_in='last', stem_pool_padding='zeros')" in report.source
    with torch.no_grad():
        got = raw(keras_r50v2['x'])
        errs = [rel_err(a, b) for a, b in zip(got, keras_r50v2['outs'])]
        assert max(errs) <= 1e-4, errs
        weights.load_pretrained(model.eval(), str(path))
        assert rel_err(model(keras_r50v2['x'])[-1], keras_r50v2['outs'][-1]) <= 1e-4


def test_keras_pool_padding_matters(keras_r50v2):
    """Keras's stem pool pads with zeros (its input has no ReLU in v2): PyTorch's -inf
    padding ('symmetric') differs at the borders, well beyond the tolerance."""
    model = ResNetV2Custom(50, stride_in='last', stem_pool_padding='symmetric', out_norm=False)
    weights.load_pretrained(model.eval(), str(keras_r50v2['dir'] / 'r50v2.h5'))
    with torch.no_grad():
        assert rel_err(model(keras_r50v2['x'])[0], keras_r50v2['outs'][0]) > 1e-3


def test_keras_layout_must_match(keras_r50v2):
    """'first' and 'last' have the same keys: loading Keras weights into 'first' would be
    silent, so a strict load refuses it in one line."""
    with pytest.raises(ValueError, match=r"keras weights imply stride_in='last' but the "
                                         r"model has stride_in='first'") as info:
        weights.load_pretrained(ResNetV2Custom(50), str(keras_r50v2['dir'] / 'r50v2.h5'))
    assert '\n' not in str(info.value)


def test_h5py_missing_is_one_line(tmp_path, monkeypatch):
    (tmp_path / 'w.h5').write_bytes(b'\x89HDF\r\n')
    monkeypatch.setitem(sys.modules, 'h5py', None)
    with pytest.raises(ImportError, match=r'needs h5py; fix: pip install h5py$'):
        weights.read_checkpoint(tmp_path / 'w.h5')


def test_convert_tool_builds_v2(keras_r50v2, capsys, monkeypatch, tmp_path):
    out = tmp_path / 'r50v2.pth'
    code, stdout, _ = run_cli(capsys, monkeypatch, 'convert_weights.py',
                              str(keras_r50v2['dir'] / 'r50v2.weights.h5'), str(out))
    assert code == 0
    assert "backbone: ResNetV2Custom(depth=50, stride_in='last', stem_pool_padding='zeros'" \
        in stdout
    assert "coverage 100.00%" in stdout
    # OUT is our own dialect now: it loads strictly into the same layout
    model = ResNetV2Custom(50, stride_in='last', stem_pool_padding='zeros')
    report = weights.load_pretrained(model, str(out))
    assert report.complete


# ---------------------------------------------------------------- layouts, metadata
@pytest.mark.parametrize('stride_in', ['first', 'last'])
@pytest.mark.parametrize('depth', [50, 101, 152, 200])
def test_metadata(stride_in, depth):
    m = ResNetV2Custom(depth, base_channels=2, stem_channels=4, stride_in=stride_in,
                       out_indices=(1, 3)).eval()
    assert m.out_channels == (16, 64) and m.out_strides == (8, 32)
    assert m.output_shape(include_stem=True) == {'c1': (4, 2), 'c3': (16, 8), 'c5': (64, 32)}
    assert ResNetV2Custom.feature_channels(depth, 2, (1, 3)) == [16, 64]
    assert [len(getattr(m, f'layer{i}')) for i in range(1, 5)] == \
        list(ResNetV2Custom.arch_settings[depth])
    x = torch.rand(1, 3, 77, 65)
    with torch.no_grad():
        outs = m(x)
        levels = m.forward_levels(x, 'c1,c3,c5')
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 10, 9), (64, 3, 3)]
    assert torch.equal(levels['c3'], outs[0]) and torch.equal(levels['c5'], outs[1])
    assert tuple(levels['c1'].shape) == (1, 4, 39, 33)


def test_last_layout_taps_before_the_subsampling_unit():
    """'last': C2..C4 are the activations entering each stage's last (strided) unit."""
    m = small(stride_in='last', out_norm=False).eval()
    seen = {}
    for i in (1, 2, 3):
        getattr(m, f'layer{i}')[-1].register_forward_pre_hook(
            lambda mod, args, i=i: seen.__setitem__(i, args[0].clone()))
    with torch.no_grad():
        outs = m(torch.rand(1, 3, 64, 64))
    for i in (1, 2, 3):
        assert torch.equal(outs[i - 1], seen[i])
    assert m.layer1[-1].stride == 2 and m.layer4[-1].stride == 1
    assert m.layer1[0].describe().shortcut_input == 'preact'  # projection, stride 1
    assert m.layer1[-1].describe().shortcut_input == 'x'  # subsampled identity


# ---------------------------------------------------------------- fast path, with_cp
@pytest.mark.parametrize('stride_in', ['first', 'last'])
def test_fast_path_folds_every_bn_after_a_conv(stride_in):
    ref = small(stride_in=stride_in, fast=False).eval()
    fast = small(stride_in=stride_in, fast=True).eval()
    x = torch.rand(2, 3, 64, 64)
    from resnet_backbone.models.fast import always_fold
    with torch.no_grad(), always_fold():
        want = ref(x)
        with OpCounter() as ops:
            got = fast(x)
    assert max(rel_err(a, b) for a, b in zip(got, want)) <= 1e-5
    units = sum(ResNetV2Custom.arch_settings[50])
    # only the preact BNs (one per unit) and the 4 level norms run as batch_norm ops
    assert ops.count('aten.native_batch_norm') + ops.count('aten._native_batch_norm_legit') \
        + ops.count('aten.batch_norm') <= units + 4
    assert ops.count('aten.convolution') == 1 + units * 3 + 4


@pytest.mark.parametrize('stride_in', ['first', 'last'])
def test_with_cp_exact_and_bn_stats_once(stride_in):
    """Checkpointed units: the same outputs, gradients and running statistics (updated
    once) as without; with drop_path too (the recompute drops the same samples)."""
    kw = dict(stride_in=stride_in, norm_eval=False, drop_path_rate=0.2, out_norm=True)
    ref, cp = small(**kw), small(with_cp=True, **kw)
    ref.train(), cp.train()
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(3)
    out_ref = ref(x)
    backward_outputs(out_ref)
    torch.manual_seed(3)
    out_cp = cp(x)
    backward_outputs(out_cp)
    assert all(torch.equal(a, b) for a, b in zip(out_cp, out_ref))
    gr, gc = grads_by_name(ref), grads_by_name(cp)
    for name, g in gr.items():
        assert g is not None and rel_err(gc[name], g) <= 1e-5, name
    for (name, b), (_, b_ref) in zip(cp.named_buffers(), ref.named_buffers()):
        assert torch.equal(b, b_ref), name


def test_frozen_stages_and_norm_eval():
    m = small(frozen_stages=2, norm_eval=True, out_norm=True).train()
    assert not m.conv1.weight.requires_grad
    assert all(not p.requires_grad for p in m.layer2.parameters())
    assert all(p.requires_grad for p in m.layer3.parameters())
    assert all(p.requires_grad for p in m.norm_c2.parameters())  # adapters stay trainable
    assert not any(mod.training for mod in m.modules()
                   if isinstance(mod, torch.nn.BatchNorm2d))
    m4 = small(frozen_stages=4, norm_eval=False, out_norm=True).train()
    assert not m4.post_norm.weight.requires_grad and not m4.post_norm.training
    assert m4.norm_c4.training


@pytest.mark.parametrize('norm_cfg', [dict(type='GN', num_groups=2), dict(type='FrozenBN'),
                                      dict(type='SyncBN')])
def test_norm_cfg(norm_cfg):
    m = small(norm_cfg=norm_cfg).eval()
    with torch.no_grad():
        assert len(m(torch.rand(1, 3, 32, 32))) == 4
    if norm_cfg['type'] == 'GN':
        assert 'layer1.0.gn0.weight' in m.state_dict()


# ---------------------------------------------------------------- errors, registry
@pytest.mark.parametrize('kwargs,pattern', [
    (dict(depth=34), r"^depth=34 is not supported; allowed values: 50, 101, 152, 200$"),
    (dict(depth=50, stride_in='middle'),
     r"^stride_in='middle' is not supported; allowed values: 'first', 'last'$"),
    (dict(depth=50, stem_pool_padding='valid'),
     r"^stem_pool_padding='valid' is not supported; allowed values: 'symmetric', 'zeros', "
     r"'same'$"),
    (dict(depth=50, out_indices=(0, 4)), r'^out_indices=\(0, 4\) out of range'),
    (dict(depth=50, frozen_stages=5), r'^frozen_stages=5 is out of range'),
    (dict(depth=50, out_norm='yes'), r'^out_norm must be True or False'),
])
def test_errors_are_one_line(kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern) as info:
        ResNetV2Custom(**kwargs)
    assert '\n' not in str(info.value)


def test_registry_builds_it():
    from mmdet.registry import MODELS
    m = MODELS.build(dict(type='ResNetV2Custom', depth=50, base_channels=4,
                          stride_in='last', stem_pool_padding='same'))
    assert isinstance(m, ResNetV2Custom) and m.out_strides == (4, 8, 16, 32)
    with pytest.raises(ValueError, match=r"stem_pool_paddin: unknown key for ResNetV2Custom; "
                                         r"did you mean 'stem_pool_padding'\?"):
        check_backbone_kwargs('ResNetV2Custom', dict(depth=50, stem_pool_paddin='same'))
