"""ResNeXt (``ResNeXtCustom``, grouped bottlenecks) against mmdet's ``ResNeXt``, its zoo
configs, and torchvision / timm ``resnext50_32x4d`` weights.

Reference mode (``fast=False``) promises bitwise mmdet's outputs and gradients; the fast
path (BN folded into the grouped convs) stays within the fast-path tolerance; ``with_cp``
gives the gradients of the plain run.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
from functools import cache
from pathlib import Path

import mmdet
import pytest
import timm
import torch
import torchvision
from conftest import backward_outputs, grads_by_name, randomize_, rel_err
from mmdet.models.backbones import ResNeXt
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.feature_extraction import create_feature_extractor

from resnet_backbone import BottleneckX, ResNeXtCustom
from resnet_backbone.io.weights import convert, load_pretrained
from resnet_backbone.models.fast import always_fold
from resnet_backbone.models.from_checkpoint import backbone_for_checkpoint
from resnet_backbone.registry import check_backbone_kwargs

REL = 1e-5  # the fast path's tolerance (tests/test_fast_path.py)
STEMS = {'classic': dict(), 'deep': dict(deep_stem=True),
         'deep_avgdown': dict(deep_stem=True, avg_down=True)}
# (groups, base_width) with base_channels=8: widths 8 (plain), 8 (4x2d), 32 (8x4d)
GROUPS_WIDTHS = [(1, 4), (4, 2), (8, 4)]
CASES = [(d, g, w, s, stem) for d, (g, w), s, stem in itertools.product(
    (50, 101), GROUPS_WIDTHS, ('pytorch', 'caffe'), STEMS)]


def build_pair(depth: int, **kwargs) -> tuple[ResNeXt, ResNeXtCustom]:
    kwargs = dict(base_channels=8, **kwargs)
    ref = randomize_(ResNeXt(depth=depth, **copy.deepcopy(kwargs)))
    ours = ResNeXtCustom(depth=depth, fast=False, **copy.deepcopy(kwargs))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def module_tree(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(name, repr) of every leaf module: the tree as a config swap must keep it."""
    return [(n, repr(m)) for n, m in model.named_modules() if not list(m.children())]


@pytest.mark.parametrize('depth,groups,base_width,style,stem', CASES)
def test_reference_mode_is_bitwise_mmdets_resnext(depth, groups, base_width, style, stem):
    ref, ours = build_pair(depth, groups=groups, base_width=base_width, style=style,
                           frozen_stages=1, **STEMS[stem])
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    assert module_tree(ours) == module_tree(ref)
    width = math.floor(8 * base_width / 8) * groups if groups > 1 else 8
    assert ours.layer1[0].conv2.groups == groups and ours.layer1[0].conv1.out_channels == width
    x = torch.rand(2, 3, 32, 32)
    ref.eval(), ours.eval()
    with torch.no_grad():
        r_out, o_out = ref(x), ours(x)
    assert len(r_out) == len(o_out) == 4
    for r, o, c in zip(r_out, o_out, ours.out_channels):
        assert torch.equal(r, o) and o.shape[1] == c
    if depth != 50:  # gradients: depth 50 covers every block kind (keeps the file fast)
        return
    ref.train(), ours.train()
    backward_outputs(ref(x))
    backward_outputs(ours(x))
    r_grads, o_grads = grads_by_name(ref), grads_by_name(ours)
    assert r_grads.keys() == o_grads.keys()
    for name, g in r_grads.items():
        assert (g is None and o_grads[name] is None) or torch.equal(g, o_grads[name]), name


@pytest.mark.parametrize('groups,base_width', [(4, 4), (8, 4)])
@pytest.mark.parametrize('stem', ['classic', 'deep_avgdown'])
def test_fast_path_with_grouped_convs(groups, base_width, stem):
    """Eval (folded, and the fused oneDNN kernels) within the fast-path tolerance of the
    reference; train with norm_eval (folded grouped convs with gradients) in float64, where
    rounding cannot hide a wrong formula: outputs and every gradient within 1e-10."""
    kw = dict(groups=groups, base_width=base_width, base_channels=8, **STEMS[stem])
    ref = randomize_(ResNeXtCustom(50, fast=False, **kw))
    fast = ResNeXtCustom(50, fast=True, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with always_fold():  # tiny inputs would leave deep layers unfolded
        ref.eval(), fast.eval()
        with torch.no_grad():
            for r, f in zip(ref(x), fast(x)):
                assert rel_err(f, r) <= REL
        # float32 gradients of grouped convs differ by up to ~4e-5 (rounding: 1e-14 here)
        ref.double().train(), fast.double().train()  # norm_eval=True: every BN folds
        outs_r, outs_f = ref(x.double()), fast(x.double())
        for r, f in zip(outs_r, outs_f):
            assert rel_err(f, r) <= 1e-10
        backward_outputs(outs_r)
        backward_outputs(outs_f)
    gr, gf = grads_by_name(ref), grads_by_name(fast)
    for name, g in gr.items():
        assert rel_err(gf[name], g) <= 1e-10, name


@pytest.mark.parametrize('fast,norm_eval', [(False, False), (True, True)])
def test_with_cp_gradients_equal_plain(fast, norm_eval):
    kw = dict(groups=4, base_width=4, base_channels=8, fast=fast, norm_eval=norm_eval)
    plain = randomize_(ResNeXtCustom(50, **kw))
    cp = ResNeXtCustom(50, with_cp=True, **kw)
    cp.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with always_fold():
        plain.train(), cp.train()
        out_p, out_c = plain(x), cp(x)
        for a, b in zip(out_p, out_c):
            assert torch.equal(a, b)
        backward_outputs(out_p)
        backward_outputs(out_c)
    gp, gc = grads_by_name(plain), grads_by_name(cp)
    for name, g in gp.items():
        assert g is not None, name
        torch.testing.assert_close(gc[name], g, rtol=1e-6, atol=1e-7, msg=name)
    # BN statistics were updated once per step, not again in the recompute
    for (name, a), b in zip(plain.named_buffers(), cp.buffers()):
        assert torch.equal(a, b), name


def test_arguments_and_config_keys():
    with pytest.raises(ValueError, match=r'^depth=18 is not supported; allowed values: '
                                         r'50, 101, 152$'):
        ResNeXtCustom(18)
    with pytest.raises(ValueError, match=r'give 4 planes a width of 0; raise base_width'):
        BottleneckX(16, 4, groups=4, base_width=1, base_channels=64)
    with pytest.raises(ValueError, match=r'^groups must be a positive int; got 0$'):
        BottleneckX(16, 4, groups=0)
    check_backbone_kwargs('ResNeXtCustom', dict(depth=50, groups=32, base_width=4))
    with pytest.raises(ValueError, match=r"^model\.backbone\.group: unknown key for "
                                         r"ResNeXtCustom; did you mean 'groups'\?"):
        check_backbone_kwargs('ResNeXtCustom', dict(depth=50, group=32))
    assert ResNeXtCustom.feature_channels(101) == [256, 512, 1024, 2048]


def test_registered_in_mmdets_registry():
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        model = MODELS.build(dict(type='ResNeXtCustom', depth=50, groups=4, base_width=4,
                                  base_channels=8))
    assert type(model) is ResNeXtCustom and model.layer3[0].conv2.groups == 4


# ---------------------------------------------------------------- mmdet's zoo configs
MIM_CONFIGS = Path(mmdet.__file__).parent / '.mim' / 'configs'


@cache
def zoo_resnext_setups() -> dict[str, list[str]]:
    """{backbone dict (JSON, without init_cfg): [zoo configs using it]} for every mmdet zoo
    config whose resolved ``model.backbone.type`` is ``'ResNeXt'``.

    Candidates are the files that mention ResNeXt and, transitively, those that name one
    of them (their ``_base_``); each is then read with ``Config.fromfile``.
    """
    texts = {p: p.read_text() for p in MIM_CONFIGS.rglob('*.py')
             if '_base_' not in p.relative_to(MIM_CONFIGS).parts}
    found = {p for p, t in texts.items() if 'ResNeXt' in t}
    while True:
        names = {p.name for p in found}
        more = {p for p, t in texts.items() if p not in found and any(n in t for n in names)}
        if not more:
            break
        found |= more
    setups: dict[str, list[str]] = {}
    for path in sorted(found):
        backbone = Config.fromfile(str(path)).get('model', {}).get('backbone')
        if backbone is None or backbone.get('type') != 'ResNeXt':
            continue
        backbone = backbone.to_dict()
        backbone.pop('init_cfg', None)  # open-mmlab:// weights cannot be fetched here
        setups.setdefault(json.dumps(backbone, sort_keys=True), []).append(
            str(path.relative_to(MIM_CONFIGS)))
    return setups


def test_zoo_resnext_configs_are_found():
    setups = zoo_resnext_setups()
    configs = [c for cs in setups.values() for c in cs]
    assert len(configs) >= 90 and len(setups) >= 15  # mmdet 3.3: 95 configs, 18 setups
    assert 'faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py' in configs
    kinds = [json.loads(s) for s in setups]
    assert {(k['groups'], k['base_width']) for k in kinds} == {(32, 4), (64, 4), (32, 8)}
    assert any('dcn' in k for k in kinds) and any('plugins' in k for k in kinds) \
        and any(k.get('conv_cfg') for k in kinds)


@pytest.mark.slow  # ~5 min on 2 cores: 18 full-size backbones and detectors, DCN on CPU
# mmdet's own zoo configs, built as they are, warn from mmdet's and mmcv's code (old
# argument names in the zoo's DCN and head settings); none of it is ours
@pytest.mark.filterwarnings('ignore:"deformable_groups" is deprecated:DeprecationWarning')
@pytest.mark.filterwarnings('ignore:DeprecationWarning. `num_anchors` is deprecated:UserWarning')
@pytest.mark.filterwarnings('ignore:Default ``avg_non_ignore`` is False:UserWarning')
def test_every_zoo_resnext_config_takes_resnextcustom():
    """For each distinct backbone of mmdet's ResNeXt configs: the detector builds with
    ``type='ResNeXtCustom'`` (nothing else changed), its backbone has mmdet's keys and
    module tree, and with shared weights its outputs equal mmdet's: bitwise in reference
    mode, and within the fast-path tolerance by default (``fast=True``).

    DCN setups are compared in reference mode only: DCN convs are never folded, and with
    random offset convs a 1e-7 difference upstream moves the sampling points (mmcv inits
    those convs to zero); mmcv's CPU DCN is also slow, and needs C5 at least 3x3."""
    register_all_modules(init_default_scope=False)
    for setup, configs in zoo_resnext_setups().items():
        dcn = '"dcn"' in setup
        x = torch.rand(1, 3, 96, 96) if dcn else torch.rand(1, 3, 32, 32)
        cfg = Config.fromfile(str(MIM_CONFIGS / configs[0]))
        cfg.model.backbone = dict(json.loads(setup), type='ResNeXtCustom')
        with DefaultScope.overwrite_default_scope('mmdet'):
            from mmdet.registry import MODELS
            detector = MODELS.build(cfg.model)
            ref = randomize_(MODELS.build(json.loads(setup)))
        ref.eval()  # (mmdet's train() returns None: no chaining)
        ours = detector.backbone.eval()
        assert type(ours) is ResNeXtCustom and ours.fast, configs[0]
        assert module_tree(ours) == module_tree(ref), configs[0]
        ours.load_state_dict(ref.state_dict(), strict=True)
        with torch.no_grad():
            want = ref(x)
            if not dcn:
                assert all(rel_err(a, b) <= REL for a, b in zip(ours(x), want)), configs[0]
            ours.fast = False
            assert all(torch.equal(a, b) for a, b in zip(ours(x), want)), configs[0]
        neck = cfg.model.get('neck')
        if isinstance(neck, dict) and 'in_channels' in neck:
            assert list(ours.out_channels) == list(neck.in_channels), configs[0]
        del detector, ref, ours


# ---------------------------------------------------------------- torchvision / timm weights
def _randomize_bn_(model: torch.nn.Module) -> torch.nn.Module:
    """Random (non-trivial) BN statistics and affine parameters, random conv weights."""
    randomize_(model)
    assert all(not torch.equal(m.running_var, torch.ones_like(m.running_var))
               for m in model.modules() if isinstance(m, _BatchNorm))
    return model


@pytest.mark.parametrize('library', ['torchvision', 'timm'])
def test_resnext50_32x4d_weights_load_with_equal_features(library, tmp_path):
    if library == 'torchvision':
        src = _randomize_bn_(torchvision.models.resnext50_32x4d(weights=None)).eval()
        act = 'relu'
    else:
        src = _randomize_bn_(timm.create_model('resnext50_32x4d', pretrained=False)).eval()
        act = 'act1'
    path = tmp_path / f'{library}_resnext50_32x4d.pth'
    torch.save(src.state_dict(), path)  # a saved file, module names and all
    converted = convert(torch.load(path, weights_only=True))
    assert converted.source == library
    assert {k: converted.implied[k] for k in ('depth', 'groups', 'base_width',
                                              'base_channels')} == \
        dict(depth=50, groups=32, base_width=4, base_channels=64)
    extractor = create_feature_extractor(src, {act: 'c1', 'layer1': 'c2', 'layer2': 'c3',
                                               'layer3': 'c4', 'layer4': 'c5'})
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = extractor(x)
    for fast in (False, True):
        ours = ResNeXtCustom(depth=50, groups=32, base_width=4, fast=fast,
                             init_cfg=dict(type='Pretrained', checkpoint=str(path)))
        ours.init_weights()  # the converter, strict
        assert ours.load_report.complete and ours.load_report.coverage == 100.0
        ours.eval()
        with torch.no_grad():
            got = ours.forward_levels(x, ['c1', 'c2', 'c3', 'c4', 'c5'])
        for level, ref in want.items():
            assert rel_err(got[level], ref) <= REL, (fast, level)
            if not fast:  # reference mode: the same ops as theirs
                assert torch.equal(got[level], ref), level
        if library == 'timm':
            with torch.no_grad():
                assert rel_err(got['c5'], src.forward_features(x)) <= REL
    built, _, kwargs = backbone_for_checkpoint(str(path))
    assert type(built) is ResNeXtCustom and built.layer1[0].conv2.groups == 32
    assert kwargs['base_channels'] == 64 and kwargs['base_width'] == 4
    report = load_pretrained(built, str(path), strict=True)
    assert report.complete
