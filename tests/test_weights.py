"""Weights from torchvision, timm, detectron2, mmpretrain-style and mmdet checkpoints:
strict loads, 100% coverage, equal features; bad checkpoints fail loudly."""
from __future__ import annotations

import copy
import logging
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from conftest import randomize_
from mmdet.models.backbones import ResNet
from torchvision.models.feature_extraction import create_feature_extractor

from resnet_backbone import ResNetV1Custom
from resnet_backbone.io.weights import (
    IncompleteCheckpointError,
    convert,
    detect_source,
    load_pretrained,
    read_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
X = torch.rand(1, 3, 64, 64)
LEVELS = ['c1', 'c2', 'c3', 'c4', 'c5']


def ours_from(sd, **kwargs):
    """Build our backbone from what the checkpoint implies, load strictly."""
    conv = convert(sd)
    model = ResNetV1Custom(fast=False,  # reference mode: features compared bitwise
                           **{**{k: v for k, v in conv.implied.items() if v is not None},
                              **kwargs}).eval()
    report = load_pretrained(model, sd, strict=True)
    assert report.complete and report.coverage == 100.0
    return model, conv


def features(model):
    with torch.no_grad():
        return model.forward_levels(X, levels=LEVELS)


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_torchvision_weights_give_equal_features(depth):
    """torchvision weights, their dialect detected or named: depth read off the keys, fc
    dropped, a strict load with 100% coverage into the implied model and into a plain
    ResNetV1Custom(depth=...), and C1..C5 and forward()'s outputs bitwise torchvision's."""
    tv = randomize_(getattr(torchvision.models, f'resnet{depth}')(weights=None)).eval()
    sd = tv.state_dict()
    model, conv = ours_from(sd)  # dialect detected, the model its keys imply
    assert conv.source == 'torchvision' and conv.implied['depth'] == depth
    assert conv.dropped == ['fc.weight', 'fc.bias']
    ours = ResNetV1Custom(depth=depth, fast=False).eval()  # what a config builds
    missing, unexpected = ours.load_state_dict(convert(sd, source='torchvision').state_dict,
                                               strict=True)
    assert not missing and not unexpected
    assert {k for k in sd if not k.startswith('fc.')} == set(ours.state_dict())
    ref = create_feature_extractor(tv, {'relu': 'c1', 'layer1': 'c2', 'layer2': 'c3',
                                        'layer3': 'c4', 'layer4': 'c5'})
    with torch.no_grad():
        expected = ref(X)
        outs = ours(X)
    for m in (model, ours):
        for name, t in features(m).items():
            assert torch.equal(t, expected[name]), name
    for o, name in zip(outs, ['c2', 'c3', 'c4', 'c5']):
        assert torch.equal(o, expected[name]), name


@pytest.mark.parametrize('name,implied', [
    ('resnet50', dict(stem_type='classic', avg_down=False)),
    ('resnet50d', dict(stem_type='deep', avg_down=True)),
])
def test_timm_weights_give_equal_features(name, implied):
    """timm weights, their dialect detected or named: stem and avg_down read off the keys,
    a strict load into the implied model and into a plain ResNetV1Custom(depth=50, ...),
    and C1..C5 bitwise those of timm's features_only model."""
    tm = randomize_(timm.create_model(name, pretrained=False)).eval()
    model, conv = ours_from(tm.state_dict())
    assert conv.source in ('timm', 'torchvision')  # resnet50's keys are torchvision's
    assert {k: conv.implied[k] for k in implied} == implied
    ours = ResNetV1Custom(depth=50, fast=False, **implied).eval()  # what a config builds
    ours.load_state_dict(convert(tm.state_dict(), source='timm').state_dict, strict=True)
    fe = timm.create_model(name, pretrained=False, features_only=True).eval()
    fe.load_state_dict({k: v for k, v in tm.state_dict().items() if not k.startswith('fc.')})
    with torch.no_grad():
        expected = fe(X)  # [act1 (stride 2), layer1..layer4]
    assert [f.shape[-1] for f in expected] == [32, 16, 8, 4, 2]
    for m in (model, ours):
        for t, ref in zip(features(m).values(), expected):
            assert torch.equal(t, ref)


def to_detectron2(sd):
    """detectron2's documented renaming of a torchvision-layout ResNet state dict."""
    out = {}
    for k, v in sd.items():
        if k.startswith('fc.') or k.endswith('num_batches_tracked'):
            continue
        k = re.sub(r'^conv1\.', 'stem.conv1.', k)
        k = re.sub(r'^bn1\.', 'stem.conv1.norm.', k)
        k = re.sub(r'^layer(\d)', lambda m: f'res{int(m.group(1)) + 1}', k)
        k = re.sub(r'\.bn(\d)\.', r'.conv\1.norm.', k)
        k = k.replace('.downsample.0.', '.shortcut.').replace('.downsample.1.', '.shortcut.norm.')
        out[k] = v
    return out


def test_detectron2_dialect_and_pkl_roundtrip(tmp_path):
    tv = randomize_(torchvision.models.resnet50(weights=None))
    d2 = to_detectron2(tv.state_dict())
    assert 'res2.0.conv1.norm.running_mean' in d2 and 'res3.0.shortcut.norm.weight' in d2
    assert detect_source(d2) == 'detectron2'
    model, conv = ours_from(d2)
    assert conv.implied['style'] == 'caffe' and model.style == 'caffe'
    # reference: mmdet's caffe-style ResNet (stride_in_1x1) with the same weights
    ref = ResNet(depth=50, style='caffe')
    ref.eval()  # mmdet's eval() returns None
    ref.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')})
    with torch.no_grad():
        expected = ref(X)
    for t, r in zip(model(X), expected):
        assert torch.equal(t, r)
    # detectron2's file format: a pickled dict of numpy arrays under 'model'
    pkl = tmp_path / 'R-50.pkl'
    with open(pkl, 'wb') as f:
        pickle.dump({'model': {k: v.numpy() for k, v in d2.items()},
                     '__author__': 'test', 'matching_heuristics': True}, f)
    with pytest.raises(PermissionError, match='is a pickle'):
        read_checkpoint(pkl)
    with pytest.warns(UserWarning, match='pickle can run code'):
        again = ResNetV1Custom(depth=50, style='caffe', fast=False).eval()
        load_pretrained(again, str(pkl), allow_pickle=True)
    with torch.no_grad():
        for a, b in zip(again(X), model(X)):
            assert torch.equal(a, b)


def test_mmdet_detector_checkpoint_with_meta(tmp_path):
    bb = randomize_(ResNet(depth=50, deep_stem=True, avg_down=True))
    bb.eval()
    sd = {f'backbone.{k}': v for k, v in bb.state_dict().items()}
    sd['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 256, 1, 1)
    sd['bbox_head.retina_cls.weight'] = torch.zeros(9, 256, 3, 3)
    path = tmp_path / 'retinanet.pth'
    torch.save({'meta': {'mmdet_version': '3.3.0', 'epoch': 12, 'CLASSES': ('a', 'b')},
                'state_dict': sd}, path)
    ckpt = read_checkpoint(path)
    model, conv = ours_from(ckpt)
    assert conv.source == 'mmdet' and conv.implied['stem_type'] == 'deep'
    assert conv.implied['avg_down'] is True and len(conv.dropped) == 2
    with torch.no_grad():
        for a, b in zip(model(X), bb(X)):
            assert torch.equal(a, b)


def test_mmpretrain_convmodule_stem():
    bb = randomize_(ResNet(depth=18, deep_stem=True))
    bb.eval()
    sd = {}
    for k, v in bb.state_dict().items():
        k = re.sub(r'^stem\.(\d)\.', lambda m: {'0': 'stem.0.conv.', '1': 'stem.0.bn.',
                                                 '3': 'stem.1.conv.', '4': 'stem.1.bn.',
                                                 '6': 'stem.2.conv.', '7': 'stem.2.bn.'}
                   [m.group(1)], k)
        sd['backbone.' + k] = v
    sd['head.fc.weight'] = torch.zeros(1000, 512)
    model, conv = ours_from({'state_dict': sd})
    assert conv.source == 'mmpretrain'
    with torch.no_grad():
        for a, b in zip(model(X), bb(X)):
            assert torch.equal(a, b)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_corrupted_checkpoints_fail_strict_and_report_non_strict():
    tv = torchvision.models.resnet18(weights=None).state_dict()
    broken = copy.copy(tv)
    for k in [k for k in broken if k.startswith('layer4.1.conv2')]:
        del broken[k]
    broken['layer3.0.conv1.weight'] = torch.zeros(256, 128, 1, 1)  # wrong shape
    model = ResNetV1Custom(depth=18)
    with pytest.raises(IncompleteCheckpointError) as info:
        load_pretrained(model, broken, strict=True)
    msg = str(info.value)
    assert "missing ['layer4.1.conv2.weight']" in msg
    assert 'layer3.0.conv1.weight: checkpoint (256, 128, 1, 1) vs model (256, 128, 3, 3)' in msg
    from mmengine.logging import MMLogger
    logger, seen = MMLogger.get_current_instance(), _Records()
    logger.addHandler(seen)  # the report goes to mmengine's current logger
    try:
        report = load_pretrained(model, broken, strict=False)
    finally:
        logger.removeHandler(seen)
    assert 0 < report.coverage < 100 and not report.complete
    assert report.missing == ['layer4.1.conv2.weight']
    warnings = [r for r in seen.records if r.levelno == logging.WARNING]
    logged = '\n'.join('WARNING - ' + r.getMessage() for r in warnings)
    assert re.search(r'WARNING - load report \(torchvision\): .*coverage 7\d\.\d\d%', logged)
    assert 'missing: layer4.1.conv2.weight' in logged


def test_init_cfg_pretrained_converts_on_load(tmp_path):
    tm = randomize_(timm.create_model('resnet50d', pretrained=False)).eval()
    path = tmp_path / 'resnet50d_timm.pth'
    torch.save(tm.state_dict(), path)
    model = ResNetV1Custom(depth=50, stem_type='deep', avg_down=True, fast=False,
                           init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert model.load_report.source == 'timm' and model.load_report.coverage == 100.0
    fe = timm.create_model('resnet50d', pretrained=False, features_only=True).eval()
    fe.load_state_dict({k: v for k, v in tm.state_dict().items() if not k.startswith('fc.')})
    with torch.no_grad():
        for t, ref in zip(model.eval().forward_levels(X, LEVELS).values(), fe(X)):
            assert torch.equal(t, ref)
    # a mismatching checkpoint is a loud error, not a log line
    bad = ResNetV1Custom(depth=50, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(IncompleteCheckpointError, match='strict load from timm weights failed'):
        bad.init_weights()


def test_url_checkpoint_offline_is_one_clear_error():
    model = ResNetV1Custom(depth=18, init_cfg=dict(type='Pretrained',
                                                   checkpoint='open-mmlab://nonexistent_zz'))
    with pytest.raises(FileNotFoundError, match=r"^checkpoint 'open-mmlab://nonexistent_zz' "
                                                r'could not be fetched .*convert it with '
                                                r'tools/convert_weights.py'):
        model.init_weights()


def test_convert_weights_tool(tmp_path):
    tm = randomize_(timm.create_model('resnet50d', pretrained=False))
    src, out = tmp_path / 'in.pth', tmp_path / 'out.pth'
    torch.save(tm.state_dict(), src)
    r = subprocess.run([sys.executable, str(ROOT / 'tools/convert_weights.py'), str(src),
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'source: timm' in r.stdout and "stem_type='deep'" in r.stdout
    assert 'coverage 100.00%' in r.stdout
    sd = torch.load(out, weights_only=True)
    model = ResNetV1Custom(depth=50, stem_type='deep', avg_down=True)
    model.load_state_dict(sd, strict=True)
    r = subprocess.run([sys.executable, str(ROOT / 'tools/convert_weights.py'), str(src),
                        str(out), '--depth', '101'], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(
        f'convert_weights.py: error: {src}: strict load from timm weights failed')


def test_gn_target_gets_gn_key_names():
    sd = torchvision.models.resnet18(weights=None).state_dict()
    keys = set(convert(sd, target_cfg={'norm_cfg': {'type': 'GN'}}).state_dict)
    gn_model = ResNetV1Custom(depth=18, norm_cfg=dict(type='GN', num_groups=8))
    assert {'gn1.weight', 'layer1.0.gn2.bias', 'layer2.0.downsample.1.weight'} <= keys
    assert set(gn_model.state_dict()) <= keys  # all GN affine params are provided


def _convert_tool():
    import importlib
    return importlib.import_module('resnet_backbone.tools.convert_weights')  # tools/ runs it


def test_no_strict_conversion_writes_only_what_loaded(tmp_path, capsys):
    """Issue 11: --no-strict wrote every key of a fresh model, so a key missing from the
    input came out random-initialised, and loading the output claimed 100% coverage."""
    sd = torchvision.models.resnet18(weights=None).state_dict()
    gone = 'layer2.0.conv2.weight'
    del sd[gone]
    src, out = tmp_path / 'in.pth', tmp_path / 'out.pth'
    torch.save(sd, src)
    tool = _convert_tool()
    assert tool.main([str(src), str(out), '--no-strict']) == 0
    written = torch.load(out, weights_only=True)
    assert gone not in written, 'a key the input lacks was written (random-initialised)'
    assert set(written) == set(sd) - {'fc.weight', 'fc.bias'}
    assert f'not written: 1 tensors the input lacks ({gone})' in capsys.readouterr().out
    model = ResNetV1Custom(depth=18)
    report = load_pretrained(model, str(out), strict=False)
    assert report.missing == [gone] and report.coverage < 100.0
    with pytest.raises(IncompleteCheckpointError, match=re.escape(f"missing ['{gone}']")):
        load_pretrained(ResNetV1Custom(depth=18), str(out), strict=True)
    with pytest.raises(SystemExit):
        tool.parse_args(['--help'])
    help_text = ' '.join(capsys.readouterr().out.split())
    assert 'missing ones are left out of OUT (not random-initialised)' in help_text


def test_no_strict_keeps_no_step_counter_of_a_layer_it_lacked():
    """Issue 11 review: --no-strict output kept every BatchNorm's num_batches_tracked,
    so a file without layer4 still gave layer4.*.num_batches_tracked."""
    from resnet_backbone.io.weights import load_state_dict, loaded_state_dict
    sd = torchvision.models.resnet18(weights=None).state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith('layer4.')}
    model = ResNetV1Custom(depth=18)
    report = load_pretrained(model, sd, strict=False)
    out = loaded_state_dict(model, report)
    assert not [k for k in out if k.startswith('layer4.')], 'layer4 counters were kept'
    assert 'layer3.1.bn2.num_batches_tracked' in out and 'bn1.num_batches_tracked' in out
    # a complete file: every counter kept, so the output loads strictly
    full = ResNetV1Custom(depth=18)
    report = load_pretrained(full, torchvision.models.resnet18(weights=None).state_dict())
    out = loaded_state_dict(full, report)
    assert set(out) == set(full.state_dict())
    load_state_dict(ResNetV1Custom(depth=18), out, strict=True, log=False)


def test_load_report_prints_a_short_summary():
    """Before: print(m.load_report) listed every key (318 for an R50), the dataclass's
    repr. Now the counts, the first few names of each kind and how to see them all."""
    tv = torchvision.models.resnet18(weights=None).state_dict()
    full = load_pretrained(ResNetV1Custom(depth=18), tv)
    assert repr(full) == str(full)
    assert str(full) == ('<LoadReport torchvision: 120 loaded, 0 missing, '
                         '0 unexpected, 0 mismatched; coverage 100.00%; every key: '
                         '.summary() or .loaded/.missing/.unexpected/.mismatched>')
    part = dict(tv)
    for k in [k for k in part if k.startswith('layer4.')]:
        del part[k]
    part['extra.weight'] = torch.zeros(1)
    report = load_pretrained(ResNetV1Custom(depth=18), part, strict=False)
    text = str(report)
    assert '\n' not in text and len(text) < 400, text
    assert (f'{len(report.loaded)} loaded, {len(report.missing)} missing, 1 unexpected, '
            '0 mismatched') in text
    assert f"missing ['{report.missing[0]}', " in text
    assert f'... {len(report.missing) - 3} more]' in text
    assert "unexpected ['extra.weight']" in text and '.summary()' in text
    assert report.missing[-1] not in text and report.missing[-1] in report.summary()
