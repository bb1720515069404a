"""The inference options of the Python API and the tools (issue 22): the bf16 tier and
``torch.compile`` in ``FeatureExtractor`` (``compute_dtype=``, ``compile=``), ``rb-dump
--compute-dtype/--compile`` (and the fingerprint that keeps such dumps apart) and
``rb-test --compile``."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import hooks_of_test_tool, randomize_, rel_err
from PIL import Image

from resnet_backbone import ResNetV1Custom
from resnet_backbone.apis.dump import dump_features, read_meta
from resnet_backbone.apis.features import FeatureExtractor
from resnet_backbone.errors import ToolError
from resnet_backbone.models.compiled import (
    CompiledInference,
    cpu_compiler,
)
from resnet_backbone.models.inference import InferenceBackbone, inference_model
from resnet_backbone.models.resnet_v2 import ResNetV2Custom

#: torch.compile builds CPU kernels with a C++ compiler; the default install needs none
NEEDS_CXX = pytest.mark.skipif(cpu_compiler() is None, reason='no C++ compiler on PATH: '
                               'torch.compile cannot build CPU kernels')


ROOT = Path(__file__).resolve().parents[1]
SHAPES = str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py')
LEVELS = ['c1', 'c2', 'c3', 'c4', 'c5', 'p3']


def _cos(a, b) -> float:
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def _net():
    torch.manual_seed(0)
    return randomize_(ResNetV1Custom(depth=18, base_channels=8)).eval()


def test_tier_forward_levels_names_and_values():
    """The tier names its levels as the backbone does (c1 = the stem before the
    max-pool) and its c2..c5 are its own forward's outputs."""
    net = _net()
    tier = inference_model(net, 'bf16')
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = net.forward_levels(x, levels=['c1', 'c2', 'c3', 'c4', 'c5'])
    got = tier.forward_levels(x, levels='c1,c2,c3,c4,c5')
    assert list(got) == list(ref)
    for name in ref:
        assert got[name].dtype == torch.float32 and got[name].shape == ref[name].shape
        assert _cos(got[name], ref[name]) >= 0.999, name
    assert list(tier.forward_levels(x)) == list(net.forward_levels(x))  # the same default
    for a, b in zip(tier(x), [got[f'c{i}'] for i in (2, 3, 4, 5)]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"^levels \['c6'\] are not available"):
        tier.forward_levels(x, levels=['c6'])


@pytest.fixture(scope='module')
def fx32():
    return FeatureExtractor.from_config(SHAPES, levels=LEVELS)


def test_feature_extractor_bf16_is_close_to_fp32(fx32):
    """compute_dtype='bf16': the backbone runs as the tier, taken from the loaded
    weights; maps (backbone and neck) come back in float32, close to fp32's."""
    fx16 = FeatureExtractor(fx32.model, pipeline=fx32.pipeline_cfg, levels=LEVELS,
                            compute_dtype='bf16')
    assert isinstance(fx16._run_backbone.__self__, InferenceBackbone)
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    ref, got = fx32(image), fx16(image)
    for name in LEVELS:
        a, b = got.levels[name], ref.levels[name]
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert _cos(a, b) >= 0.999 and 0 < rel_err(a, b) <= 3e-2, name
    snap = FeatureExtractor(fx32.model, compute_dtype='fp32')._run_backbone.__self__
    assert isinstance(snap, InferenceBackbone) and snap.dtype == torch.float32
    assert snap.source is fx32.backbone  # fp32: the snapshot of the backbone itself


def test_feature_extractor_compute_dtype_errors(fx32):
    with pytest.raises(ValueError, match=r"^compute_dtype 'fp16' not supported; allowed "
                                         r'values: fp32, bf16$'):
        FeatureExtractor(fx32.model, compute_dtype='fp16')
    with pytest.raises(ValueError, match=r"^compute_dtype='bf16' runs ResNetV1Custom "
                                         r'backbones .* this backbone is ResNetV2Custom'):
        FeatureExtractor(ResNetV2Custom(depth=50, base_channels=8), compute_dtype='bf16')


def _img(tmp_path) -> Path:
    img = tmp_path / 'in' / 'a.png'
    img.parent.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img)
    return img


def test_dump_fingerprint_keeps_compute_dtype_and_compile_apart(fx32, tmp_path):
    """A dump made in bf16 (or compiled) is never reused as an fp32 eager one, nor the
    other way round; an fp32 eager record keeps the fingerprint it always had."""
    img, out = _img(tmp_path), tmp_path / 'out'
    dump_features(fx32, [img], img.parent, out, progress=False)
    assert 'compute_dtype' not in read_meta(out / 'a.png.safetensors')['fingerprint']
    fx16 = FeatureExtractor(fx32.model, pipeline=fx32.pipeline_cfg, levels=LEVELS,
                            compute_dtype='bf16')
    fx16.weights, fx16.config_sha256 = fx32.weights, fx32.config_sha256
    with pytest.raises(ToolError, match=r'compute dtype fp32 \(now bf16\).*--overwrite'):
        dump_features(fx16, [img], img.parent, out, progress=False)
    s = dump_features(fx16, [img], img.parent, out, overwrite=True, progress=False)
    assert s.dumped == 1
    assert read_meta(out / 'a.png.safetensors')['fingerprint']['compute_dtype'] == 'bf16'
    with pytest.raises(ToolError, match=r'compute dtype bf16 \(now fp32\)'):
        dump_features(fx32, [img], img.parent, out, progress=False)
    fxc = FeatureExtractor(fx32.model, pipeline=fx32.pipeline_cfg, levels=LEVELS,
                           compile=True)  # nothing compiles until a forward runs
    fxc.weights, fxc.config_sha256 = fx32.weights, fx32.config_sha256
    with pytest.raises(ToolError, match=r'the eager backbone \(now compiled\), compute '
                                        r'dtype bf16 \(now fp32\)'):
        dump_features(fxc, [img], img.parent, out, progress=False)


def test_dump_tool_passes_compute_dtype_and_compile(monkeypatch, tmp_path):
    """rb-dump --compute-dtype bf16 --compile reach FeatureExtractor.from_config."""
    tool = importlib.import_module('resnet_backbone.tools.dump_features')
    seen = {}

    class Stop(Exception):
        pass

    def fake(cls, *a, **k):
        seen.update(k)
        raise Stop
    monkeypatch.setattr(FeatureExtractor, 'from_config', classmethod(fake))
    img = _img(tmp_path)
    with pytest.raises(Stop):
        tool.main([SHAPES, '--input', str(img), '--out', str(tmp_path / 'o'),
                   '--compute-dtype', 'bf16', '--compile'])
    assert seen['compute_dtype'] == 'bf16' and seen['compile'] is True
    with pytest.raises(Stop):
        tool.main([SHAPES, '--input', str(img), '--out', str(tmp_path / 'o')])
    assert seen['compute_dtype'] == 'fp32' and seen['compile'] is False


def test_test_tool_compile_wraps_the_backbone(monkeypatch):
    """rb-test --compile registers the hook; its before_test (after the checkpoint load)
    wraps the backbone's inference snapshot in CompiledInference, and after_test logs the
    warm-up. No compile runs here (that is the slow test below)."""
    (hook, _), = hooks_of_test_tool(monkeypatch, SHAPES, 'ckpt.pth', '--work-dir',
                                    '/nonexistent/w', '--compile')
    det = SimpleNamespace(backbone=_net())
    hook.before_test(SimpleNamespace(model=det))
    assert isinstance(det.backbone, CompiledInference)
    snap = det.backbone.module  # fp32: the float32 inference snapshot, compiled
    assert isinstance(snap, InferenceBackbone) and snap.dtype == torch.float32
    lines = []
    hook.after_test(SimpleNamespace(logger=SimpleNamespace(info=lines.append)))
    assert lines == ['torch.compile: 0 graph(s) compiled in 0.0 s (warm-up, counted in '
                     'the run time)']


@NEEDS_CXX
@pytest.mark.slow
def test_compiled_matches_eager_and_never_runs_stale_weights():
    """compile=True: maps equal eager within 1e-5 (fp32); the warm-up is counted; after an
    in-place weight change the graph (whose weights are frozen constants) is compiled
    again instead of running the old weights."""
    net = _net()
    fx = FeatureExtractor(net, levels=['c1', 'c5'], compile=True)
    eager = FeatureExtractor(net, levels=['c1', 'c5'])
    image = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    got, want = fx(image), eager(image)
    for name in ('c1', 'c5'):
        assert rel_err(got.levels[name], want.levels[name]) <= 1e-5, name
    assert fx._run_backbone.graphs == 1 and fx._run_backbone.compile_seconds > 0
    assert fx.compile_summary.startswith('torch.compile: 1 graph(s) compiled in ')
    with torch.no_grad():
        net.layer4[1].conv2.weight.mul_(3.0)
    got, want = fx(image), eager(image)
    assert rel_err(got.levels['c5'], want.levels['c5']) <= 1e-5  # not the old weights
    assert fx._run_backbone.graphs == 2


def test_compile_without_a_cxx_compiler_is_one_line(monkeypatch):
    """The default install needs no compiler, so a machine may have none: torch.compile
    on CPU then says so in one line instead of Inductor's InvalidCxxCompiler traceback."""
    from resnet_backbone.models import compiled
    from resnet_backbone.models.resnet import ResNetV1Custom
    monkeypatch.setattr(compiled, 'cpu_compiler', lambda: None)
    net = compiled.CompiledInference(ResNetV1Custom(depth=18, base_channels=8).eval())
    with pytest.raises(RuntimeError) as info:
        net(torch.rand(1, 3, 32, 32))
    msg = str(info.value)
    assert msg.startswith('torch.compile (--compile, compile=True) needs a C++ compiler')
    assert 'apt-get install g++' in msg and '\n' not in msg
