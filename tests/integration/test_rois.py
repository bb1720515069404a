"""RoI features (issue 20, part 1) against the Faster R-CNN config's own
``bbox_roi_extractor``, on a resized and flipped input, and the edge cases."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmcv.transforms import Compose
from mmdet.structures.bbox import bbox2roi
from mmengine.registry import DefaultScope
from PIL import Image

from resnet_backbone.apis.dump import collect_images, load_levels, output_path
from resnet_backbone.apis.dump.rois import Boxes, coco_boxes, load_box_file, lookup
from resnet_backbone.apis.features import FeatureExtractor, PredictedBoxes
from resnet_backbone.engine.training import load_config
from resnet_backbone.errors import ToolError

from .conftest import ROOT

FASTER = str(ROOT / 'configs/shapes/faster-rcnn_r18_fpn_shapes.py')
RETINA = str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py')


def flipped_cfg():
    """The Faster R-CNN shapes config whose test pipeline also flips every image."""
    cfg = load_config(FASTER)
    pipeline = cfg.test_dataloader.dataset.pipeline
    pipeline.insert(2, dict(type='RandomFlip', prob=1.0))
    for t in pipeline:
        if t['type'] == 'PackDetInputs':
            t['meta_keys'] = tuple(t['meta_keys']) + ('flip', 'flip_direction')
    return cfg


@pytest.fixture(scope='module')
def fx():
    torch.manual_seed(0)
    return FeatureExtractor.from_config(flipped_cfg(), levels=['c5'], seed=3)


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / 'photo.png'  # 100x150: resized to 85x128 by the pipeline, flipped
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((100, 150, 3)) * 255).astype(np.uint8)).save(path)
    return path


def by_hand(fx, photo, cfg=None):
    """mmdet's pipeline, preprocessor and extract_feat, with nothing of ours (the flipped
    config unless ``cfg``)."""
    cfg = flipped_cfg() if cfg is None else cfg
    pipeline = [t for t in cfg.test_dataloader.dataset.pipeline if 'Annotations' not in t['type']]
    with DefaultScope.overwrite_default_scope('mmdet'):
        data = Compose(pipeline)(dict(img_path=str(photo), img_id=0))
    model = fx.model
    batch = model.data_preprocessor(dict(inputs=[data['inputs']],
                                         data_samples=[data['data_samples']]), False)
    with torch.no_grad():
        x = model.extract_feat(batch['inputs'])
    return model, batch, x


def extractor_by_hand(model, x, input_boxes):
    ext = model.roi_head.bbox_roi_extractor
    with torch.no_grad():
        return ext(x[:ext.num_inputs], bbox2roi([input_boxes]))


def test_given_boxes_equal_the_configs_own_extractor_on_a_flipped_resized_input(fx, photo):
    boxes = torch.tensor([[10., 12., 60., 50.], [70., 5., 149., 99.], [0., 0., 150., 100.]])
    rec = fx.roi_features(photo, Boxes(boxes, torch.tensor([0, 1, 2])))
    assert rec.meta['flip'] and rec.meta['img_shape'] == (85, 128)
    model, batch, x = by_hand(fx, photo)
    info = batch['data_samples'][0].metainfo
    sx, sy = info['scale_factor']
    w = info['img_shape'][1]
    mapped = boxes * torch.tensor([sx, sy, sx, sy])  # resize, then a horizontal flip
    mapped = torch.stack([w - mapped[:, 2], mapped[:, 1], w - mapped[:, 0], mapped[:, 3]], 1)
    ref = extractor_by_hand(model, x, mapped)
    torch.testing.assert_close(rec.rois.rois, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rec.rois.pooled, ref.mean(dim=(2, 3)), rtol=1e-6, atol=1e-6)
    assert [r['box'] for r in rec.rois.records] == boxes.tolist()
    assert [r['label'] for r in rec.rois.records] == [0, 1, 2]


def test_plain_box_arrays_are_accepted_and_a_wrong_shape_is_one_line(fx, photo):
    import resnet_backbone.apis as apis
    assert apis.Boxes is Boxes and apis.PredictedBoxes is PredictedBoxes
    rows = [[10., 12., 60., 50.], [70., 5., 149., 99.]]
    ref = fx.roi_features(photo, Boxes(torch.tensor(rows), torch.tensor([-1, -1])))
    for given in (rows, np.array(rows, dtype=np.float64), torch.tensor(rows)):
        rec = fx.roi_features(photo, given)
        torch.testing.assert_close(rec.rois.rois, ref.rois.rois, rtol=0, atol=0)
        assert [(r['box'], r['label'], r['score']) for r in rec.rois.records] == [
            (b, -1, None) for b in rows]
    assert fx.roi_features(photo, []).rois.records == []
    for bad, shape in (([1., 2., 3., 4.], '(4,)'), (np.zeros((2, 5)), '(2, 5)')):
        with pytest.raises(ValueError, match=rf'^boxes must be \(N, 4\).*got shape '
                                             rf'{re.escape(shape)}$') as e:
            fx.roi_features(photo, bad)
        assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match='^boxes must be numbers'):
        fx.roi_features(photo, [['a', 'b', 'c', 'd']])


def test_predicted_boxes_map_back_as_mmdet_maps_them(fx, photo):
    rec = fx.roi_features(photo, PredictedBoxes(score_thr=0.0, max_per_image=10))
    model, batch, x = by_hand(fx, photo)
    with torch.no_grad():
        ours_input = model.roi_head.predict(
            x, model.rpn_head.predict(x, batch['data_samples'], rescale=False),
            batch['data_samples'], rescale=False)[0]
        theirs = model.predict(batch['inputs'], batch['data_samples'], rescale=True)[0]
    keep = ours_input.scores.argsort(descending=True)[:10]
    ref = extractor_by_hand(model, x, ours_input.bboxes[keep])
    # the extractor's backbone is the inference snapshot (BN folded once), the model's own
    # extract_feat runs mmdet's ops: the same boxes, features equal to float rounding
    torch.testing.assert_close(rec.rois.rois, ref, rtol=1e-5, atol=1e-5)
    # mmdet's own rescale (no un-flip in plain predict) equals our boxes flipped back
    pred = theirs.pred_instances.bboxes[theirs.pred_instances.scores.argsort(
        descending=True)[:10]]
    ow = rec.meta['ori_shape'][1]
    ours = torch.tensor([r['box'] for r in rec.rois.records])
    flipped = torch.stack([ow - ours[:, 2], ours[:, 1], ow - ours[:, 0], ours[:, 3]], 1)
    torch.testing.assert_close(flipped, pred, rtol=0, atol=1e-3)
    assert len(rec.rois.records) == 10 and all(r['score'] is not None
                                               for r in rec.rois.records)
    assert all(r['image_id'] is None for r in rec.rois.records)  # predictions: no COCO id


def test_edge_cases_empty_outside_and_zero_area(fx, photo):
    empty = fx.roi_features(photo, Boxes.empty())
    assert tuple(empty.rois.rois.shape) == (0, 128, 7, 7)
    assert tuple(empty.rois.pooled.shape) == (0, 128) and empty.rois.records == []

    outside = torch.tensor([[-30., 20., 60., 140.]])  # beyond the left and bottom edges
    inside = torch.tensor([[0., 20., 60., 100.]])
    a = fx.roi_features(photo, Boxes(outside, torch.tensor([-1])))
    b = fx.roi_features(photo, Boxes(inside, torch.tensor([-1])))
    assert a.rois.records[0]['clipped'] and a.rois.records[0]['box'] == inside[0].tolist()
    torch.testing.assert_close(a.rois.rois, b.rois.rois, rtol=0, atol=0)

    flat = fx.roi_features(photo, Boxes(torch.tensor([[40., 30., 40., 60.]]),
                                        torch.tensor([-1])))
    assert flat.rois.records[0]['zero_area']
    assert not flat.rois.rois.any()  # RoIAlign's result for an empty box: all zero


def test_single_stage_gets_mmdets_default_extractor(photo):
    fx = FeatureExtractor.from_config(RETINA, levels=['c5'])
    ext, origin = fx.roi_extractor()
    assert "mmdet's SingleRoIExtractor defaults over strides 8, 16, 32, 64" == origin
    assert ext.finest_scale == 56 and ext.roi_layers[0].output_size == (7, 7)
    assert ext.roi_layers[0].aligned and ext.roi_layers[0].sampling_ratio == 0
    rec = fx.roi_features(photo, Boxes(torch.tensor([[0., 0., 100., 80.]]),
                                       torch.tensor([-1])))
    assert tuple(rec.rois.rois.shape) == (1, 128, 7, 7)


@pytest.mark.parametrize('kind', ['csv', 'json'])
def test_a_bad_row_in_a_box_file_is_one_line(kind, tmp_path):
    path = tmp_path / f'boxes.{kind}'
    if kind == 'csv':
        path.write_text('image,x1,y1,x2,y2\na.png,0,0,10,10\na.png,30,0,10,10\n')
        where = f'{path} row 2: x2 < x1 or y2 < y1'
    else:
        path.write_text(json.dumps({'a.png': [[0, 0, 10, 10], [0, 0, 'ten', 10]]}))
        where = f'{path} row 2: box'
    with pytest.raises(ToolError) as e:
        load_box_file(path)
    assert str(e.value).startswith(where) and '\n' not in str(e.value)


def flip_mapped(boxes, info):
    """Original-image boxes mapped into a resized, horizontally flipped input by hand."""
    sx, sy = info['scale_factor']
    w = info['img_shape'][1]
    mapped = boxes * torch.tensor([sx, sy, sx, sy])
    return torch.stack([w - mapped[:, 2], mapped[:, 1], w - mapped[:, 0], mapped[:, 3]], 1)


def rel(a, b) -> float:
    return float((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-12)) if b.numel() else 0.0


def test_dump_tool_rois_gt_and_from_a_file(tmp_path, fx):
    """--rois gt on the embedded val images (batched): boxes from the annotation file, the
    dumped features equal the config's own extractor on them, image ids in the records
    and the index; the same on a flipped, resized input; --rois FILE; the fingerprint
    keeps RoI settings apart."""
    from resnet_backbone.data.shapes import generate
    data = generate(tmp_path / 'shapes', num_train=1, num_val=3, size=64)
    ann = json.loads((data / 'annotations' / 'instances_val.json').read_text())
    out = tmp_path / 'gt'
    base = [sys.executable, str(ROOT / 'tools' / 'dump_features.py'), FASTER, '--input',
            str(data / 'val'), '--levels', 'c5', '--workers', '0']
    r = subprocess.run([*base, '--out', str(out), '--rois', 'gt', '--ann-file',
                        str(data / 'annotations' / 'instances_val.json'), '--batch-size', '2'],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    images, root = collect_images(data / 'val')
    index = json.loads((out / 'index.json').read_text())
    plain_cfg = load_config(FASTER)
    tool_fx = FeatureExtractor.from_config(plain_cfg, levels=['c5'])  # the tool's weights
    ids = {}
    for image in images:
        levels, meta = load_levels(output_path(image, root, out, 'safetensors'))
        file_id = next(im['id'] for im in ann['images'] if im['file_name'].endswith(image.name))
        ids[str(image)] = file_id
        mine = [a['bbox'] for a in ann['annotations']
                if a['image_id'] == file_id and not a.get('iscrowd', 0)]
        assert levels['rois'].shape[0] == levels['roi_pooled'].shape[0] == len(meta['rois'])
        assert len(mine) == len(meta['rois']) > 0
        assert meta['roi_extractor'] == "the config's roi_head.bbox_roi_extractor"
        assert [r['image_id'] for r in meta['rois']] == [file_id] * len(mine)
        assert meta['image_id'] == file_id
        # the config's own bbox_roi_extractor on the annotation boxes mapped by hand
        model, batch, x = by_hand(tool_fx, image, plain_cfg)
        info = batch['data_samples'][0].metainfo
        assert tuple(meta['scale_factor']) == tuple(info['scale_factor'])
        sx, sy = info['scale_factor']
        boxes = torch.tensor([[bx, by, bx + bw, by + bh] for bx, by, bw, bh in mine])
        ref = extractor_by_hand(model, x, boxes * torch.tensor([sx, sy, sx, sy]))
        assert rel(levels['rois'], ref) <= 1e-6, (image, rel(levels['rois'], ref))
        assert rel(levels['roi_pooled'], ref.mean(dim=(2, 3))) <= 1e-6
    assert {e['image']: e['image_id'] for e in index['images']} == ids
    assert all(r['image_id'] == e['image_id'] for e in index['images'] for r in e['rois'])

    # gt boxes on a flipped, resized input: the config's own extractor on them by hand
    table = coco_boxes(data / 'annotations' / 'instances_val.json', None)
    gt = lookup(table, str(images[0]), 'the annotation file')
    rec = fx.roi_features(images[0], gt)
    assert rec.meta['flip'] and rec.rois.image_id == ids[str(images[0])]
    model, batch, x = by_hand(fx, images[0])
    ref = extractor_by_hand(model, x, flip_mapped(gt.boxes, batch['data_samples'][0].metainfo))
    assert rel(rec.rois.rois, ref) <= 1e-6

    boxes = tmp_path / 'boxes.csv'
    boxes.write_text(f'image,x1,y1,x2,y2,label\n{images[0].name},1,2,30,40,2\n')
    r = subprocess.run([*base, '--out', str(tmp_path / 'file'), '--rois', str(boxes)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    levels, meta = load_levels(output_path(images[0], root, tmp_path / 'file', 'safetensors'))
    assert meta['rois'][0]['box'] == [1.0, 2.0, 30.0, 40.0] and meta['rois'][0]['label'] == 2
    assert meta['rois'][0]['image_id'] is None and meta['image_id'] is None  # not COCO's
    _, other = load_levels(output_path(images[1], root, tmp_path / 'file', 'safetensors'))
    assert other['rois'] == [] and other['rois_note'] == 'not in the box file'
    # the same folder without --rois: another fingerprint, so it stops
    r = subprocess.run([*base, '--out', str(tmp_path / 'file')], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 1 and '--overwrite' in r.stderr.strip().splitlines()[-1]
