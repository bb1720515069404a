"""The feature dump's RoI inputs (findings of a new-user probe): box-file rows that match
no input image, annotation classes that do not fit the model's, and both checked before
the model is built (a bad label was refused only after 43 s of model building)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import resnet_backbone.apis.dump.rois as rois
import resnet_backbone.tools.dump_features as tool
from resnet_backbone.apis.dump import collect_images, load_levels, output_path
from resnet_backbone.apis.dump.rois import coco_boxes, load_box_file, lookup
from resnet_backbone.engine.training import load_config
from resnet_backbone.errors import ToolError

SHAPES = str(Path(__file__).resolve().parents[1] / 'configs/shapes/retinanet_r18_fpn_shapes.py')

#: The shapes RetinaNet, 8 channels wide: a dump of a few 48x64 images takes a second.
TINY = ['--cfg-options', 'model.backbone.base_channels=8', 'model.neck.in_channels=[8,16,32,64]',
        'model.neck.out_channels=16', 'model.bbox_head.in_channels=16',
        'model.bbox_head.feat_channels=16']


class Built(Exception):
    """The model build was reached."""


@pytest.fixture()
def no_build(monkeypatch):
    """The tool stops where it would build the model; the list holds the calls."""
    calls = []

    def from_config(*args, **kwargs):
        calls.append(args)
        raise Built
    monkeypatch.setattr(tool.FeatureExtractor, 'from_config', staticmethod(from_config))
    return calls


def make_images(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(folder / name)
    return folder


def coco_file(path, categories, images=('a.png',)):
    """A COCO file: ``categories`` [(id, name)] in this order, one box per category on
    the first image."""
    path.write_text(json.dumps({
        'categories': [{'id': i, 'name': n} for i, n in categories],
        'images': [{'id': k + 1, 'file_name': f, 'width': 64, 'height': 48}
                   for k, f in enumerate(images)],
        'annotations': [{'id': k + 1, 'image_id': 1, 'category_id': i, 'iscrowd': 0,
                         'bbox': [k, k, 10, 10], 'area': 100}
                        for k, (i, _) in enumerate(categories)]}))
    return path


def test_a_box_file_row_for_no_input_image_is_one_warning_before_the_build(
        tmp_path, capsys, no_build):
    """A row for ``rocket_bigg.jpg`` (a typo) vanished without a word: now one WARNING
    line names the file, the image and its row, before the model is built."""
    inputs = make_images(tmp_path / 'in', ['a.png', 'rocket_big.png'])
    boxes = tmp_path / 'boxes.csv'
    boxes.write_text('image,x1,y1,x2,y2,label\na.png,0,0,10,10,1\nrocket_big.png,1,1,9,9,0\n'
                     'a.png,2,2,20,20,0\nrocket_bigg.jpg,0,0,5,5,2\n')
    with pytest.raises(Built):
        tool.main([SHAPES, '--input', str(inputs), '--out', str(tmp_path / 'out'),
                   '--rois', str(boxes)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if 'not among' in ln]
    assert lines == [f'WARNING: {boxes}: 1 row names an image that is not among the inputs: '
                     'rocket_bigg.jpg (row 4); fix the name or drop the row (its boxes are '
                     'not dumped)'], lines

    # by lookup's own rule: a longer path must match too; several rows of one name
    table = load_box_file(boxes)
    images, _ = collect_images(inputs)
    assert rois.unmatched_line(table, images, 'b.csv') is not None
    typo = tmp_path / 'x' / 'rocket_bigg.jpg'
    assert rois.unmatched_line(table, [*images, typo], 'b.csv') is None
    rows = [{'image': 'in/a.png', 'box': [0, 0, 1, 1]},
            {'image': 'other/a.png', 'box': [0, 0, 1, 1]},
            {'image': 'other/a.png', 'box': [0, 0, 2, 2]}]
    table = load_box_file(_json(tmp_path / 'b.json', rows))
    assert rois.unmatched_line(table, images, 'b.json') == (
        'b.json: 2 rows name images that are not among the inputs: other/a.png (rows 2, 3); '
        'fix the name or drop the row (its boxes are not dumped)')


def _json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_a_box_file_dump_with_an_unmatched_row(tmp_path, capsys):
    """The whole tool on a tiny model: the warning, then the matched rows dumped."""
    inputs = make_images(tmp_path / 'in', ['a.png', 'b.png'])
    boxes = tmp_path / 'boxes.csv'
    boxes.write_text('image,x1,y1,x2,y2,label\na.png,0,0,10,10,1\nc.png,0,0,5,5,2\n')
    out = tmp_path / 'out'
    tool.main([SHAPES, '--input', str(inputs), '--out', str(out), '--rois', str(boxes),
               '--levels', 'c5', '--workers', '0', *TINY])
    err = capsys.readouterr().err
    assert err.count('1 row names an image that is not among the inputs: c.png (row 2)') == 1
    images, root = collect_images(inputs)
    _, meta = load_levels(output_path(images[0], root, out, 'safetensors'))
    assert [r['box'] for r in meta['rois']] == [[0.0, 0.0, 10.0, 10.0]]
    assert meta['rois'][0]['label'] == 1


def test_a_bad_box_file_is_refused_before_the_model_is_built(tmp_path, no_build):
    """A text label was refused only after the model was built (43 s on a real one)."""
    inputs = make_images(tmp_path / 'in', ['a.png'])
    boxes = tmp_path / 'boxes.csv'
    boxes.write_text('image,x1,y1,x2,y2,label\na.png,0,0,10,10,car\n')
    args = [SHAPES, '--input', str(inputs), '--out', str(tmp_path / 'out')]
    with pytest.raises(ToolError, match=rf'^{boxes} row 1: .*not a number'):
        tool.main([*args, '--rois', str(boxes)])
    with pytest.raises(ToolError, match='--score-thr must lie in'):
        tool.main([*args, '--rois', 'pred', '--score-thr', '2'])
    with pytest.raises(ToolError, match='not a readable COCO annotation file'):
        tool.main([*args, '--rois', 'gt', '--ann-file', str(boxes)])
    assert no_build == []


def test_gt_classes_that_do_not_fit_the_annotation_file(tmp_path, no_build):
    """Config classes not in the file gave every box label -1, silently (rb-train refuses
    the same file). Now one line before the build: the file, the config's classes, the
    file's names, and the fix. Labels go by name, so a file in another category order,
    or lacking a class, labels every box right (as before this check)."""
    inputs = make_images(tmp_path / 'in', ['a.png'])
    args = [SHAPES, '--input', str(inputs), '--out', str(tmp_path / 'out'), '--rois', 'gt']
    other = coco_file(tmp_path / 'pets.json', [(1, 'cat'), (2, 'dog')])
    with pytest.raises(ToolError) as e:
        tool.main([*args, '--ann-file', str(other)])
    assert str(e.value) == (
        f"--ann-file {other}: the config's classes (square, circle, triangle) do not fit "
        "it: none of them is among its categories (cat, dog), so every box would get label "
        "-1; pass the annotation file of the model's data, or a config whose "
        'test_dataloader.dataset.metainfo.classes name its categories')
    assert no_build == []

    classes = ['square', 'circle', 'triangle']
    shuffled = coco_file(tmp_path / 'shuffled.json',
                         [(1, 'circle'), (2, 'square'), (3, 'triangle')])
    assert lookup(coco_boxes(shuffled, classes), 'a.png', 'f').labels.tolist() == [1, 0, 2]
    one_missing = coco_file(tmp_path / 'two.json', [(1, 'square'), (2, 'triangle')])
    assert lookup(coco_boxes(one_missing, classes), 'a.png', 'f').labels.tolist() == [0, 2]
    # another category of the file keeps its boxes, label -1
    wider = coco_file(tmp_path / 'wider.json',
                      [(9, 'square'), (2, 'hexagon'), (5, 'circle'), (1, 'triangle')])
    assert lookup(coco_boxes(wider, classes), 'a.png', 'f').labels.tolist() == [0, -1, 1, 2]


def test_gt_labels_follow_the_checkpoints_classes(tmp_path):
    """With a checkpoint its own classes (dataset_meta) number the labels, checked the
    same way after the load; a config without classes numbers them by its dataset
    type's (CocoDataset: COCO's 80), as mmdet does."""
    ann = coco_file(tmp_path / 'pets.json', [(4, 'cat'), (2, 'dog')])
    cfg = load_config(SHAPES)
    args = SimpleNamespace(rois='gt', ann_file=str(ann), checkpoint='model.pth')
    source, coco = tool.read_rois(args, cfg, [tmp_path / 'a.png'])
    assert source.table is None  # the checkpoint's classes are not known yet

    def fx(classes):
        return SimpleNamespace(model=SimpleNamespace(dataset_meta={'classes': classes}),
                               roi_extractor=lambda: (None, 'mmdet defaults'))
    done = tool.finish_rois(source, coco, cfg, fx(('cat', 'dog')))
    assert lookup(done.table, 'a.png', 'f').labels.tolist() == [0, 1]
    source.table = None
    done = tool.finish_rois(source, coco, cfg, fx(('dog', 'cat')))  # by name, any order
    assert lookup(done.table, 'a.png', 'f').labels.tolist() == [1, 0]
    source.table = None
    with pytest.raises(ToolError, match=r"the checkpoint's classes \(fox\) do not fit it: "
                                        r'none of them'):
        tool.finish_rois(source, coco, cfg, fx(('fox',)))

    from resnet_backbone.engine.compat import register_mmdet_modules
    register_mmdet_modules()
    del cfg.test_dataloader.dataset['metainfo']
    classes = tool.config_classes(cfg)
    assert len(classes) == 80 and classes[:2] == ['person', 'bicycle']
