"""Feature extraction: values equal the model's own forward, geometry, alignment."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rel_err
from PIL import Image

import resnet_backbone.apis.dump.run as dump
from resnet_backbone import ResNetV1Custom, __version__
from resnet_backbone.apis.dump import dump_features, fingerprint, load_levels, read_meta
from resnet_backbone.apis.features import (
    FeatureExtractor,
    config_digest,
    extract,
    unpad_to_original,
)
from resnet_backbone.engine.training import load_config
from resnet_backbone.errors import ToolError

ROOT = Path(__file__).resolve().parents[1]
SHAPES = str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py')


@pytest.fixture(scope='module')
def fx():
    return FeatureExtractor.from_config(SHAPES, levels=['c1', 'c2', 'c3', 'c4', 'c5', 'p3',
                                                        'p4', 'p5', 'p6', 'p7'])


def test_levels_strides_and_weights_note(fx):
    assert fx.strides == {'c1': 2, 'c2': 4, 'c3': 8, 'c4': 16, 'c5': 32, 'p3': 8, 'p4': 16,
                          'p5': 32, 'p6': 64, 'p7': 128}
    assert fx.weights['source'] == 'random'
    assert FeatureExtractor(fx.model).levels == ['c2', 'c3', 'c4', 'c5']
    with pytest.raises(ValueError, match=r"^levels \['p2'\] are not available from this "
                                         r'model; allowed values: c1, c2'):
        FeatureExtractor(fx.model, levels=['c2', 'p2'])


def test_values_equal_the_models_own_forward(fx, tmp_path):
    img = (np.random.default_rng(0).random((90, 150, 3)) * 255).astype(np.uint8)
    path = tmp_path / 'x.png'
    Image.fromarray(img).save(path)
    rec = fx(path)
    # by hand: the same preprocessing, then mmdet's own backbone/extract_feat
    batch = fx.preprocess(path)
    with torch.no_grad():
        c = fx.model.backbone(batch['inputs'])
        p = fx.model.extract_feat(batch['inputs'])
    # the extractor runs the backbone's inference snapshot (BN folded once), the model's
    # own eval forward mmdet's ops: equal to float rounding
    for name, ref in zip(['c2', 'c3', 'c4', 'c5'], c):
        assert rel_err(rec.levels[name], ref) <= 1e-5, name
    for name, ref in zip(['p3', 'p4', 'p5', 'p6', 'p7'], p):
        assert rel_err(rec.levels[name], ref) <= 1e-5, name
    fx.backbone.fast = False  # the reference asked for: the extractor runs it as is
    rec = FeatureExtractor(fx.model, pipeline=fx.pipeline_cfg)(path)
    fx.backbone.fast = True
    for name, ref in zip(['c2', 'c3', 'c4', 'c5'], c):
        assert torch.equal(rec.levels[name], ref), name
    m = rec.meta
    # keep_ratio resize of 150x90 into 128x128 -> 128x77, padded to a multiple of 32
    assert m['ori_shape'] == (90, 150) and m['img_shape'] == (77, 128)
    assert m['pad_shape'] == (96, 128) and m['flip'] is False
    assert m['scale_factor'] == pytest.approx((128 / 150, 77 / 90), rel=1e-6)
    for name, t in rec.levels.items():
        s = rec.strides[name]
        assert tuple(t.shape[-2:]) == (-(-96 // s), 128 // s), name


def test_bare_backbone_extract():
    bb = ResNetV1Custom(depth=18, base_channels=8).eval()
    recs = list(extract(bb, [np.zeros((40, 40, 3), np.uint8)], levels=['c1', 'c5']))
    assert [tuple(v.shape) for v in recs[0].levels.values()] == [(1, 8, 32, 32), (1, 64, 2, 2)]
    assert recs[0].meta['pad_shape'] == (64, 64) and recs[0].meta['img_shape'] == (40, 40)


def test_overlay_peak_falls_inside_the_bright_square(tmp_path):
    """One bright square on a dark, non-square image (so resize AND padding happen): the
    c1/c2 heatmap, mapped back by unpad_to_original, peaks inside the square."""
    cfg = load_config(SHAPES)
    fx = FeatureExtractor.from_config(cfg, levels=['c1', 'c2'])
    with torch.no_grad():  # a stem that responds to brightness: positive conv weights
        fx.model.backbone.conv1.weight.fill_(1.0 / fx.model.backbone.conv1.weight[0].numel())
    img = np.full((100, 170, 3), 10, np.uint8)
    y0, y1, x0, x1 = 62, 84, 120, 146  # near the bottom-right, where padding sits
    img[y0:y1, x0:x1] = 250
    path = tmp_path / 'square.png'
    Image.fromarray(img).save(path)
    rec = fx(path)
    assert rec.meta['pad_shape'][0] > rec.meta['img_shape'][0]  # padding really happened
    for name in ('c1', 'c2'):
        heat = unpad_to_original(rec.levels[name][0].abs().mean(0), rec.strides[name],
                                 rec.meta)
        assert tuple(heat.shape) == (100, 170)
        yy, xx = np.unravel_index(int(heat.argmax()), tuple(heat.shape))
        assert y0 <= yy < y1 and x0 <= xx < x1, (name, yy, xx)


def test_neck_levels_named_by_position_at_odd_sizes(tmp_path):
    """800 / 64 is not an integer: the stride-64 map of Faster R-CNN's FPN (a max-pool
    of P5) must still be 'p6', not a second 'p5'."""
    fx = FeatureExtractor.from_config(
        str(ROOT / 'configs/shapes/faster-rcnn_r18_fpn_shapes.py'),
        levels=['p2', 'p3', 'p4', 'p5', 'p6'])
    img = (np.random.default_rng(1).random((170, 100, 3)) * 255).astype(np.uint8)  # W pads to 96
    Image.fromarray(img).save(tmp_path / 'odd.png')
    rec = fx(tmp_path / 'odd.png')
    ph, pw = rec.meta['pad_shape']
    assert [rec.strides[n] for n in rec.levels] == [4, 8, 16, 32, 64]
    for name, t in rec.levels.items():
        s = rec.strides[name]
        assert tuple(t.shape[-2:]) == (-(-ph // s), -(-pw // s)), name


def test_records_carry_a_fingerprint_of_what_made_them(fx, tmp_path):
    """Issue 11: a record stored nothing that would tell a re-run with another config,
    checkpoint, levels or dtype that it is stale."""
    img = tmp_path / 'in' / 'a.png'
    img.parent.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img)
    dump_features(fx, [img], img.parent, tmp_path / 'out', dtype='float16', progress=False)
    meta = read_meta(tmp_path / 'out' / 'a.png.safetensors')
    assert 'fingerprint' in meta, 'the record stores no fingerprint'
    fp = meta['fingerprint']
    cfg = load_config(SHAPES)
    assert fp == {'config': config_digest(cfg), 'weights': {'random_seed': 0},
                  'levels': fx.levels, 'dtype': 'float16', 'format': 'safetensors',
                  'tool': f'resnet_backbone {__version__}'}
    # the config hash follows the model and pipeline, not training-only settings
    cfg.train_cfg.max_iters = 7
    assert config_digest(cfg) == fp['config']
    cfg.model.neck.out_channels = 64
    assert config_digest(cfg) != fp['config']


def test_stale_records_stop_with_one_line_naming_overwrite(fx, tmp_path):
    """Issue 11: a re-run with other settings said 'already there' and kept stale files."""
    img = tmp_path / 'in' / 'a.png'
    img.parent.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img)
    out = tmp_path / 'out'
    dump_features(fx, [img], img.parent, out, dtype='float32', progress=False)
    before = (out / 'a.png.safetensors').read_bytes()
    with pytest.raises(ToolError) as info:
        dump_features(fx, [img], img.parent, out, dtype='float16', progress=False)
    msg = str(info.value)
    assert '\n' not in msg and '--overwrite' in msg and 'dtype float32 (now float16)' in msg
    assert (out / 'a.png.safetensors').read_bytes() == before  # nothing written
    s = dump_features(fx, [img], img.parent, out, dtype='float16', overwrite=True,
                      progress=False)
    assert s.dumped == 1
    assert read_meta(out / 'a.png.safetensors')['fingerprint']['dtype'] == 'float16'


def test_interrupted_overlay_leaves_no_record(fx, tmp_path, monkeypatch):
    """Issue 11: the record was written before the overlays, so Ctrl-C between them left
    an image that a re-run counted as done, without its overlays."""
    img = tmp_path / 'in' / 'a.png'
    img.parent.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img)
    out = tmp_path / 'out'

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(dump, 'write_overlays', interrupted)
    with pytest.raises(KeyboardInterrupt):
        dump.dump_features(fx, [img], img.parent, out, overlay=True, progress=False)
    assert not (out / 'a.png.safetensors').exists()  # not marked complete
    monkeypatch.undo()
    s = dump.dump_features(fx, [img], img.parent, out, overlay=True, progress=False)
    assert s.dumped == 1 and (out / 'overlays' / 'a.png.sheet.png').is_file()
    # a re-run that asks for overlays redoes an image dumped without them
    s = dump.dump_features(fx, [img], img.parent, out, progress=False)
    assert s.already_there == 1
    (out / 'overlays' / 'a.png.sheet.png').unlink()
    assert dump.dump_features(fx, [img], img.parent, out, overlay=True,
                              progress=False).dumped == 1
    assert not list(out.rglob('*.tmp'))


def _png(path: Path, value: int, shape=(40, 60, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def test_replaced_image_is_redumped(fx, tmp_path):
    """Issue 11 review: the fingerprint missed the image itself; an image replaced at
    the same path was reported 'already there' and kept its old features."""
    img = _png(tmp_path / 'in' / 'a.png', 0)
    out = tmp_path / 'out'
    dump_features(fx, [img], img.parent, out, progress=False)
    old = load_levels(out / 'a.png.safetensors')[0]['c5']
    _png(img, 200, (50, 60, 3))
    os.utime(img, ns=(1, 1))  # whatever the clock: the stamp differs
    s = dump_features(fx, [img], img.parent, out, progress=False)
    assert (s.dumped, s.already_there) == (1, 0), s.line()
    levels, meta = load_levels(out / 'a.png.safetensors')
    assert not torch.equal(levels['c5'], old)
    assert meta['source'] == {'size': img.stat().st_size, 'mtime_ns': 1}
    s = dump_features(fx, [img], img.parent, out, progress=False)
    assert (s.dumped, s.already_there) == (0, 1)


def test_fingerprint_without_config_covers_pipeline_and_preprocessor():
    """Issue 11 review: FeatureExtractor(model, pipeline=...) had config None in its
    fingerprint, so other pipelines or mean/std gave the same fingerprint."""
    bb = ResNetV1Custom(depth=18, base_channels=8).eval()
    load = [dict(type='LoadImageFromFile')]
    pack = [dict(type='PackDetInputs')]
    resize = [dict(type='Resize', scale=(64, 64), keep_ratio=True)]
    a = fingerprint(FeatureExtractor(bb, pipeline=load + pack), dtype='float32', fmt='npz')
    b = fingerprint(FeatureExtractor(bb, pipeline=load + resize + pack), dtype='float32',
                    fmt='npz')
    assert a['config'] is not None and a != b
    assert a == fingerprint(FeatureExtractor(bb, pipeline=load + pack), dtype='float32',
                            fmt='npz')
    other = FeatureExtractor(bb, pipeline=load + pack)
    other.model.data_preprocessor.mean.fill_(0.0)  # a non-persistent buffer
    assert fingerprint(other, dtype='float32', fmt='npz') != a


def test_only_image_faults_are_skipped(fx, tmp_path, monkeypatch):
    """Issue 11 review: any exception of fx(image) (out of memory, a model bug) was
    counted as 'skipped N unreadable', exit 0 if another image worked."""
    good = _png(tmp_path / 'in' / 'a.png', 0)
    bad = tmp_path / 'in' / 'b.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n not an image')
    s = dump_features(fx, [good, bad, tmp_path / 'in' / 'gone.png'], good.parent,
                      tmp_path / 'out', progress=False)
    assert s.dumped == 1 and len(s.skipped) == 2 and 'b.png' in s.skipped[0][1], s.skipped

    def oom(*args, **kwargs):
        raise RuntimeError('CUDA out of memory')
    monkeypatch.setattr(fx, '_forward', oom)
    with pytest.raises(RuntimeError, match='out of memory'):
        dump_features(fx, [_png(tmp_path / 'in' / 'c.png', 9)], good.parent,
                      tmp_path / 'out', progress=False)


@pytest.mark.parametrize('fmt', ['npz', 'pt', 'safetensors'])
def test_restart_reads_only_the_records_metadata(fx, tmp_path, monkeypatch, fmt):
    """Issue 11 review: a restart read every array of every record (read_meta ->
    load_levels) where only the metadata is needed."""
    img = _png(tmp_path / 'in' / 'a.png', 0)
    dump.dump_features(fx, [img], img.parent, tmp_path / 'out', fmt=fmt, progress=False)

    def no_arrays(*args, **kwargs):
        raise AssertionError('the arrays were read')
    monkeypatch.setattr(dump, 'load_levels', no_arrays)
    s = dump.dump_features(fx, [img], img.parent, tmp_path / 'out', fmt=fmt, progress=False)
    assert s.already_there == 1


class TimmLikeBackbone(torch.nn.Module):
    """A timm-style model used as a backbone: ``forward`` gives the maps, while
    ``forward_features`` (timm's name) gives only the last map and takes no levels."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.b = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)

    def forward_features(self, x):
        return self.b(self.a(x))

    def forward(self, x):
        a = self.a(x)
        return (a, self.b(a))


def test_timm_style_forward_features_is_not_taken_for_ours():
    """features.py picks our levels path by class, not by the method name timm also uses."""
    bb = TimmLikeBackbone().eval()
    fx = FeatureExtractor(bb)
    assert fx.strides == {'c2': 4, 'c3': 8} and fx.levels == ['c2', 'c3']
    rec = fx(np.zeros((64, 64, 3), dtype=np.uint8))
    batch = fx.preprocess(np.zeros((64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        want = bb(batch['inputs'])
    assert torch.equal(rec.levels['c2'], want[0]) and torch.equal(rec.levels['c3'], want[1])


def test_from_config_leaves_the_process_as_it_was():
    """No process-wide patching from a library call: mmengine's file backends, warning
    filters, torch's safe globals and mmdet's CocoDataset are what they were before."""
    code = f'''
import warnings
import torch
from mmengine.fileio import FileClient
from mmengine.fileio.backends import registry_utils
from mmdet.datasets import CocoDataset
from mmdet.utils import register_all_modules
from resnet_backbone.apis.features import FeatureExtractor

def state():
    return (dict(registry_utils.backends), dict(FileClient._backends),
            [f for f in warnings.filters  # (mmengine re-imports pkg_resources per config)
             if getattr(f[2], '__module__', '') != 'pkg_resources'],
            set(torch.serialization.get_safe_globals()),  # a set: its listing order is not kept
            CocoDataset.filter_data)

register_all_modules(init_default_scope=False)  # dependencies' import-time filters first
before = state()
fx = FeatureExtractor.from_config({SHAPES!r}, levels=['c5', 'p3'])
assert fx.weights['source'] == 'random', fx.weights
after = state()
names = ['backends', 'FileClient._backends', 'warnings.filters', 'safe globals',
         'CocoDataset.filter_data']
changed = [n for n, b, a in zip(names, before, after) if b != a]
assert not changed, changed
assert registry_utils.backends['local'].__name__ == 'LocalBackend'
'''
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


# ---------------------------------------------------------------- bad boxes (API)
TINY_OPTIONS = {'model.backbone.base_channels': 8, 'model.neck.in_channels': [8, 16, 32, 64],
                'model.neck.out_channels': 16, 'model.bbox_head.in_channels': 16,
                'model.bbox_head.feat_channels': 16}


@pytest.fixture(scope='module')
def tiny_fx():
    from mmengine.config import Config
    cfg = Config.fromfile(SHAPES)
    cfg.merge_from_dict(TINY_OPTIONS)
    return FeatureExtractor.from_config(cfg, levels=['c5'], seed=0)


def _image():
    return (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize('box,what', [([40, 5, 10, 30], 'x2 < x1'),
                                      ([5, 30, 40, 10], 'y2 < y1'),
                                      ([40, 30, 10, 5], 'x2 < x1 and y2 < y1')])
def test_inverted_box_is_one_line_naming_the_argument(tiny_fx, box, what):
    """Before: mmcv's C++ 'roi_width >= 0 && roi_height >= 0 INTERNAL ASSERT FAILED ...
    please report a bug to PyTorch' leaked from the Python API (the CLI's box-file
    parser already refused such rows)."""
    good = [1.0, 2.0, 20.0, 30.0]
    row = [float(v) for v in box]
    with pytest.raises(ValueError) as info:
        tiny_fx.roi_features(_image(), [good, box])
    msg = str(info.value)
    assert msg.startswith(f'boxes[1] = {row} has {what}; boxes are x1, y1, x2, y2 corners'), msg
    assert 'not x, y, w, h' in msg and '\n' not in msg and 'INTERNAL ASSERT' not in msg
    # the same through run_batch, where the argument is rois (one Boxes per sample)
    from resnet_backbone.apis.dump.rois import Boxes
    boxes = Boxes(torch.tensor([good, box]), torch.tensor([-1, -1]))
    with pytest.raises(ValueError, match=r'^rois\[0\]\.boxes\[1\] = '):
        tiny_fx.run_batch([tiny_fx.load(_image())], [boxes])
    # fixed as the message says, it works
    fixed = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]),
             max(box[1], box[3])]
    rec = tiny_fx.roi_features(_image(), [good, fixed])
    assert rec.rois.rois.shape == (2, 16, 7, 7)


def test_non_finite_box_is_one_line(tiny_fx):
    with pytest.raises(ValueError, match=r'^boxes\[0\] = \[nan, 0\.0, 4\.0, 4\.0\] is not '
                                         r'finite'):
        tiny_fx.roi_features(_image(), [[float('nan'), 0, 4, 4]])


def test_zero_area_and_empty_boxes_still_pass(tiny_fx):
    rec = tiny_fx.roi_features(_image(), [[5, 5, 5, 20]])
    assert rec.rois.records[0]['zero_area'] is True
    assert tiny_fx.roi_features(_image(), []).rois.rois.shape[0] == 0


def test_16bit_png_features_are_computed_as_before(tmp_path):
    """Display-only scaling: the maps of a 16-bit PNG file are those of the 8-bit image
    OpenCV's decoder makes of it (what the test pipeline always read)."""
    import cv2
    values = np.random.default_rng(0).integers(0, 65536, (40, 56), dtype=np.uint16)
    path = tmp_path / 'g16.png'
    Image.fromarray(values).save(path)
    fx = FeatureExtractor(ResNetV1Custom(depth=18, base_channels=4).eval(), levels='c1,c3')
    by_file = fx(path)
    by_array = fx(cv2.imread(str(path), cv2.IMREAD_COLOR))
    for lv in ('c1', 'c3'):
        assert torch.equal(by_file.levels[lv], by_array.levels[lv])


def test_16bit_pil_image_error_says_it_once():
    """Before: 'the PIL image image has values up to ...'."""
    fx = FeatureExtractor(ResNetV1Custom(depth=18, base_channels=4).eval(), levels='c3')
    im = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    with pytest.raises(ValueError) as info:
        fx(im)
    msg = str(info.value)
    assert msg.startswith('the PIL image has values up to 40000, beyond 0-255'), msg
    assert 'image image' not in msg and '>> 8' in msg


def test_from_config_warns_nothing(tmp_path):
    """Before: each from_config of a config with mmdet:: bases printed setuptools'
    'pkg_resources is deprecated' twice (mmengine reloads pkg_resources per base)."""
    import warnings
    tiny = tmp_path / 'tiny.py'
    tiny.write_text(f'_base_ = [{SHAPES!r}]\n'
                    'model = dict(backbone=dict(base_channels=8), neck=dict('
                    'in_channels=[8, 16, 32, 64], out_channels=16), bbox_head=dict('
                    'in_channels=16, feat_channels=16))\n')
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        for _ in range(2):
            fx = FeatureExtractor.from_config(tiny, levels=['c5'])
            fx(_image())
    said = [f'{w.category.__name__}: {w.message}' for w in seen]
    assert not [s for s in said if 'pkg_resources' in s or 'Deprecation' in s], said
    assert warnings.filters == before
