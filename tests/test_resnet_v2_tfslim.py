"""ResNet v2 exact to TF-slim (issue 17): TensorFlow's SAME stem pool and TF-slim weights.

The reference is Keras's ResNet v2 (torch backend, its own ``stack_residual_blocks_v2``)
with the stem pool replaced by ``MaxPooling2D(3, 2, padding='same')``: shown equal to
TF-slim's ``resnet_v2_50`` within 4.2e-6 (issue 17). Its weights are written out under
TF-slim's variable names as an ``.npz``, converted, and every C2..C5 tap compared. The
widths are reduced (base depths 8/16/32/64, stem 64: the same code path as full width).
"""
from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err

from resnet_backbone import ResNetV2Custom
from resnet_backbone.io import weights
from resnet_backbone.models.from_checkpoint import backbone_for_checkpoint
from resnet_backbone.models.stem import SamePadMaxPool2d

TAPS = ('conv2_block2_out', 'conv3_block3_out', 'conv4_block5_out', 'conv5_block3_out')
INPUTS = ((2, 128, 128), (1, 96, 160))


def tf_same_pool(x: torch.Tensor) -> torch.Tensor:
    """TF's SAME rule written out as the issue states it, per dimension."""
    def pads(n):
        total = max((math.ceil(n / 2) - 1) * 2 + 3 - n, 0)
        return total // 2, total - total // 2
    (hb, ha), (wb, wa) = pads(x.shape[-2]), pads(x.shape[-1])
    return F.max_pool2d(F.pad(x, (wb, wa, hb, ha), value=-math.inf), 3, 2)


def test_same_pool_is_tf_same_on_every_size():
    pool = SamePadMaxPool2d()
    for h in range(1, 14):
        for w in (1, 2, 7, 8):
            x = torch.randn(1, 2, h, w)
            assert torch.equal(pool(x), tf_same_pool(x)), (h, w)
    x = torch.randn(1, 1, 8, 8)  # even: not PyTorch's symmetric padding
    assert not torch.equal(pool(x), F.max_pool2d(x, 3, 2, padding=1))


def keras_to_tf_slim(layer: str, var: str, scope: str = 'resnet_v2_50') -> str:
    """A Keras ResNet v2 variable's TF-slim name (written independently of the converter)."""
    tf_var = {'kernel': 'weights', 'bias': 'biases'}.get(var, var)
    if layer == 'conv1_conv':
        return f'{scope}/conv1/{tf_var}'
    if layer == 'post_bn':
        return f'{scope}/postnorm/{var}'
    m = re.match(r'^conv(\d)_block(\d+)_(.*)$', layer)
    unit = f'{scope}/block{int(m.group(1)) - 1}/unit_{m.group(2)}/bottleneck_v2'
    part = m.group(3)
    if part == 'preact_bn':
        return f'{unit}/preact/{var}'
    if part == '0_conv':
        return f'{unit}/shortcut/{tf_var}'
    if part.endswith('_conv'):
        return f'{unit}/conv{part[0]}/{tf_var}'
    return f'{unit}/conv{part[0]}/BatchNorm/{var}'


@pytest.fixture(scope='module')
def tf_slim_reference(tmp_path_factory):
    """The modified Keras model (SAME stem pool), reduced widths, random weights and BN
    statistics; its taps on both inputs; its weights as TF-slim ``.npz`` files."""
    os.environ.setdefault('KERAS_BACKEND', 'torch')
    keras = pytest.importorskip('keras')
    if keras.backend.backend() != 'torch':
        pytest.skip('keras was imported with another backend')
    from keras import layers
    from keras.src.applications import resnet
    from test_resnet_v2 import randomize_keras_

    inp = keras.Input((None, None, 3))
    x = layers.ZeroPadding2D(3, name='conv1_pad')(inp)  # as keras's ResNet stem
    x = layers.Conv2D(64, 7, strides=2, use_bias=True, name='conv1_conv')(x)
    x = layers.MaxPooling2D(3, strides=2, padding='same', name='pool1_pool')(x)  # TF-slim's
    for stage, (filters, blocks) in enumerate(((8, 3), (16, 4), (32, 6), (64, 3))):
        x = resnet.stack_residual_blocks_v2(x, filters, blocks, stride1=1 if stage == 3 else 2,
                                            name=f'conv{stage + 2}')
    x = layers.BatchNormalization(epsilon=1.001e-5, name='post_bn')(x)
    layers.Activation('relu', name='post_relu')(x)
    km = keras.Model(inp, x)
    randomize_keras_(km, seed=5)
    feat = keras.Model(km.input, [km.get_layer(n).output for n in TAPS])
    rng = np.random.default_rng(2)
    inputs, outs = [], []
    for n, h, w in INPUTS:
        xn = rng.standard_normal((n, h, w, 3)).astype('float32')
        inputs.append(torch.from_numpy(xn).permute(0, 3, 1, 2))
        outs.append([torch.from_numpy(keras.ops.convert_to_numpy(o)).permute(0, 3, 1, 2)
                     for o in feat(xn, training=False)])
    variables = {keras_to_tf_slim(layer.name, v.path.split('/')[-1]):
                 keras.ops.convert_to_numpy(v) for layer in km.layers for v in layer.weights}
    d = tmp_path_factory.mktemp('tfslim')
    extra = {'global_step': np.array(1000),
             'resnet_v2_50/logits/weights': np.zeros((1, 1, 256, 10), 'float32')}
    np.savez(d / 'slash.npz', **variables, **extra)
    np.savez(d / 'under.npz', **{k.replace('/', '__'): v for k, v in variables.items()})
    return dict(inputs=inputs, outs=outs, dir=d, n=len(variables))


@pytest.mark.parametrize('file', ['slash.npz', 'under.npz'])
def test_tf_slim_npz_matches_the_reference(tf_slim_reference, file):
    """Strict load of the TF-slim .npz; every C2..C5 tap within 1e-4 relative on 128x128
    and 96x160 inputs."""
    path = tf_slim_reference['dir'] / file
    model, converted, kwargs = backbone_for_checkpoint(str(path))
    assert converted.source == 'tf-slim'
    assert kwargs == dict(depth=50, stride_in='last', stem_pool_padding='same',
                          stem_channels=64, base_channels=8, conv_bias=True)
    model = ResNetV2Custom(out_norm=False, **kwargs).eval()
    report = weights.load_pretrained(model, str(path))
    assert report.complete and report.coverage == 100.0
    assert len(report.loaded) == tf_slim_reference['n'] - 4  # less the unused post_norm
    assert "tf-slim (implies stride_in='last', stem_pool_padding='same')" in report.source
    with torch.no_grad():
        for x, want in zip(tf_slim_reference['inputs'], tf_slim_reference['outs']):
            errs = [rel_err(a, b) for a, b in zip(model(x), want)]
            assert max(errs) <= 1e-4, (tuple(x.shape), errs)


def test_symmetric_pool_differs(tf_slim_reference):
    """The same weights with PyTorch's symmetric pool: C2 is off by far more than the
    tolerance (every window is shifted by one on even sizes)."""
    path = tf_slim_reference['dir'] / 'slash.npz'
    for padding in ('symmetric', 'zeros'):
        model = ResNetV2Custom(50, base_channels=8, stem_channels=64, stride_in='last',
                               stem_pool_padding=padding, out_norm=False).eval()
        weights.load_pretrained(model, str(path))
        with torch.no_grad():
            for x, want in zip(tf_slim_reference['inputs'], tf_slim_reference['outs']):
                assert rel_err(model(x)[0], want[0]) > 1e-2, padding


def test_tf_checkpoint_without_tensorflow_is_one_line(tmp_path, monkeypatch):
    import sys
    (tmp_path / 'model.ckpt.index').write_bytes(b'')
    monkeypatch.setitem(sys.modules, 'tensorflow', None)
    with pytest.raises(ImportError, match=r'TensorFlow checkpoint: reading it needs '
                                          r'tensorflow .*np\.savez') as info:
        weights.read_checkpoint(tmp_path / 'model.ckpt')
    assert '\n' not in str(info.value)


def small_same(**kw) -> ResNetV2Custom:
    from conftest import randomize_
    return randomize_(ResNetV2Custom(50, base_channels=2, stem_channels=4, stride_in='last',
                                     stem_pool_padding='same', **kw)).eval()


def test_same_pool_onnx_dynamic_sizes(tmp_path):
    """Exported with dynamic height/width: odd and even sizes both follow TF's rule."""
    pytest.importorskip('onnxruntime')
    from resnet_backbone.apis.export import check_onnx, export_onnx
    model = small_same()
    path = export_onnx(model, tmp_path / 'v2.onnx', torch.rand(1, 3, 64, 64))
    for c in check_onnx(path, model, [(1, 3, 64, 64), (1, 3, 77, 65), (2, 3, 96, 161)]):
        assert c.ok, c


@pytest.mark.slow
def test_same_pool_torch_compile():
    """fullgraph=True with dynamic sizes: the SAME pool's padding follows each size."""
    model = small_same()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True, dynamic=True)
    with torch.no_grad():
        for shape in ((1, 3, 64, 64), (1, 3, 65, 77), (1, 3, 66, 70)):
            x = torch.rand(shape)
            for a, b in zip(compiled(x), model(x)):
                assert rel_err(a, b) <= 1e-5, shape
