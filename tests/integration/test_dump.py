"""tools/dump_features.py on the embedded val images plus one corrupt file."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import pytest
import torch
from conftest import rel_err
from mmcv.transforms import Compose
from mmengine.registry import DefaultScope

from resnet_backbone.apis.dump import (
    collect_images,
    dump_features,
    load_levels,
    output_path,
    read_meta,
)
from resnet_backbone.apis.features import FeatureExtractor
from resnet_backbone.engine.training import load_config

from .conftest import CONFIG, ROOT, run_tool

ARTIFACTS = ROOT / 'test-artifacts'

LEVELS = ['c1', 'c2', 'c3', 'c4', 'c5', 'p3', 'p4', 'p5', 'p6', 'p7']


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    fx = FeatureExtractor.from_config(CONFIG, seed=7)
    path = tmp_path_factory.mktemp('ckpt') / 'model.pth'
    torch.save({'state_dict': fx.model.state_dict(), 'meta': {'note': 'test weights'}}, path)
    return path


def by_hand(cfg, model, image):
    """mmdet's own test pipeline and data preprocessor, then its own extract_feat."""
    pipeline = [t for t in cfg.test_dataloader.dataset.pipeline
                if t['type'] != 'LoadAnnotations']
    with DefaultScope.overwrite_default_scope('mmdet'):
        data = Compose(pipeline)(dict(img_path=str(image), img_id=0))
    batch = model.data_preprocessor(dict(inputs=[data['inputs']],
                                         data_samples=[data['data_samples']]), False)
    with torch.no_grad():
        return (model.backbone(batch['inputs']), model.extract_feat(batch['inputs']),
                batch['data_samples'][0].metainfo)


def test_dump_tool_end_to_end(tiny_shapes, checkpoint, tmp_path):
    inputs = tmp_path / 'images'
    inputs.mkdir()
    for src in sorted((tiny_shapes / 'val').glob('*.png')):
        (inputs / src.name).write_bytes(src.read_bytes())
    (inputs / 'sub').mkdir()
    (inputs / 'sub' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')
    out = tmp_path / 'out'
    args = [CONFIG, str(checkpoint), '--input', str(inputs), '--out', str(out), '--levels',
            ','.join(LEVELS), '--overlay']
    r = run_tool('dump_features.py', *args)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [ln for ln in r.stderr.splitlines() if 'WARNING: skipped' in ln]
    assert len(warnings) == 1 and 'corrupt.png' in warnings[0]
    assert 'dumped 4, already there 0, skipped 1 unreadable' in r.stderr
    assert ', batch 1, weights: ' in r.stderr  # batch 1: not a word about batching

    index = json.loads((out / 'index.json').read_text())
    assert len(index['images']) == 4 and len(index['skipped']) == 1
    csv_rows = (out / 'index.csv').read_text().splitlines()
    assert len(csv_rows) == 1 + 4 * len(LEVELS)

    cfg = load_config(CONFIG)
    model = FeatureExtractor.from_config(cfg, str(checkpoint)).model
    images, root = collect_images(inputs)
    for image in images[:4]:
        levels, meta = load_levels(output_path(image, root, out, 'safetensors'))
        assert meta['weights']['source'] == 'checkpoint'
        c, p, info = by_hand(cfg, model, image)
        assert tuple(meta['pad_shape']) == tuple(info['pad_shape'])
        assert tuple(meta['img_shape']) == tuple(info['img_shape'])
        assert tuple(meta['ori_shape']) == tuple(info['ori_shape'])
        ph, pw = meta['pad_shape']
        for name, ref in zip(['c2', 'c3', 'c4', 'c5', 'p3', 'p4', 'p5', 'p6', 'p7'],
                             list(c) + list(p)):
            s = meta['levels'][name]['stride']
            assert tuple(levels[name].shape[-2:]) == (math.ceil(ph / s), math.ceil(pw / s))
            # the dump runs the backbone's inference snapshot (BN folded once), the
            # model's own eval forward mmdet's ops: equal to float rounding
            assert rel_err(levels[name], ref) <= 1e-5, name
        stats = meta['levels']['c3']
        assert stats['max'] == pytest.approx(float(levels['c3'].max()))
        sheet = out / 'overlays' / f'{image.name}.sheet.png'
        assert sheet.is_file() and (out / 'overlays' / f'{image.name}.c2.png').is_file()
    # keep one sheet where a person can look at it after the run (git-ignored)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(sheet, ARTIFACTS / 'dump_overlay_sheet.png')

    # a killed writer's temporary file (its pid is gone) and a live writer's (this
    # process: another rank, or another run, still writing)
    gone = subprocess.Popen(['true'])
    gone.wait()
    dead = out / 'sub' / f'.{image.name}.safetensors.{gone.pid}.abcd_123.tmp'
    dead.parent.mkdir(exist_ok=True)
    dead.write_bytes(b'half a file')
    live = out / 'overlays' / f'.{image.name}.c2.png.{os.getpid()}.x1y2z3w4.tmp'
    live.write_bytes(b'being written')

    # re-run: nothing redone, the corrupt file reported again; --overwrite redoes all
    r = run_tool('dump_features.py', *args)
    assert 'dumped 0, already there 4, skipped 1 unreadable' in r.stderr
    assert 'removed 1 temporary file of killed writers' in r.stderr
    assert not dead.exists() and live.read_bytes() == b'being written'
    assert len(json.loads((out / 'index.json').read_text())['images']) == 4
    r = run_tool('dump_features.py', *args, '--overwrite')
    assert 'dumped 4, already there 0, skipped 1 unreadable' in r.stderr


@pytest.mark.parametrize('fmt', ['npz', 'pt', 'safetensors'])
def test_formats_and_float16(tiny_shapes, checkpoint, tmp_path, fmt):
    fx = FeatureExtractor.from_config(CONFIG, str(checkpoint), levels=['c2', 'p3'])
    images, root = collect_images(tiny_shapes / 'val')
    summary = dump_features(fx, images[:1], root, tmp_path, fmt=fmt, dtype='float16',
                            progress=False)
    assert summary.dumped == 1
    path = output_path(images[0], root, tmp_path, fmt)
    levels, meta = load_levels(path)
    assert read_meta(path) == meta  # the index's reader agrees with the full reader
    ref = fx(images[0])
    for name in ('c2', 'p3'):
        assert levels[name].dtype == torch.float16
        assert torch.equal(levels[name], ref.levels[name].half())
    assert meta['levels']['c2']['dtype'] == 'float16'


def test_bad_inputs_are_one_line_errors(tmp_path, checkpoint):
    r = run_tool('dump_features.py', CONFIG, '--input', str(tmp_path / 'nope'), '--out',
                 str(tmp_path / 'o'))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith('no such file or folder')
    (tmp_path / 'empty').mkdir()  # no images: said before the model is built
    r = run_tool('dump_features.py', CONFIG, '--input', str(tmp_path / 'empty'), '--out',
                 str(tmp_path / 'o'), '--levels', 'c2,q9')
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"dump_features.py: error: no images found in {tmp_path / 'empty'}")
    (tmp_path / 'one').mkdir()
    (tmp_path / 'one' / 'x.png').write_bytes(b'never read: the levels stop the run first')
    r = run_tool('dump_features.py', CONFIG, '--input', str(tmp_path / 'one'), '--out',
                 str(tmp_path / 'o'), '--levels', 'c2,q9')
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(
        "dump_features.py: error: levels ['q9'] are not available from this model")
