"""The prediction picture: one box per object, a documented score threshold, tags that
do not cover each other."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from resnet_backbone.apis.visualize import (
    NMS_IOU,
    SCORE_THRESHOLD,
    TAG_HEIGHT,
    draw_detections,
    legend,
    place_tags,
    save_grid,
    select_detections,
)

CLASSES = ('square', 'circle', 'triangle')
PALETTE = [(220, 20, 60), (0, 160, 60), (30, 60, 230)]


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_one_box_per_object_whatever_its_classes():
    """The demo drew one circle twice: 'circle 0.69' and 'square 0.44' on nearly one box
    (mmdet's NMS runs per class). Across classes only the higher score stays."""
    boxes = np.array([[20, 20, 60, 60],    # square 0.44 ...
                      [21, 19, 61, 60],    # ... and circle 0.69 on the same object
                      [70, 70, 100, 100],  # a triangle elsewhere, 0.9
                      [5, 80, 30, 110]])   # below the threshold
    scores = [0.44, 0.69, 0.9, SCORE_THRESHOLD - 0.01]
    assert select_detections(boxes, scores) == [2, 1]
    # apart (IoU below NMS_IOU), both stay
    boxes[1] = [40, 20, 80, 60]
    assert select_detections(boxes, scores) == [2, 1, 0]
    assert select_detections(boxes[:0], []) == []


def test_the_threshold_and_the_rule_are_on_the_sheet(tmp_path):
    assert 0 < SCORE_THRESHOLD < 1 and 0 < NMS_IOU < 1
    line = legend()
    assert f'score >= {SCORE_THRESHOLD:g}' in line and 'one box per object' in line
    tile = Image.new('RGB', (64, 64), (255, 255, 255))
    with_caption = Image.open(save_grid([tile] * 2, tmp_path / 's.png', cols=2,
                                        caption=line))
    without = Image.open(save_grid([tile] * 2, tmp_path / 'n.png', cols=2))
    assert with_caption.height == without.height + 16
    top = np.asarray(with_caption)[:16]
    assert (top < 128).any(), 'no caption text drawn'


@pytest.mark.parametrize('layout', ['same corner', 'stacked', 'at the top edge'])
def test_tags_never_overlap(layout):
    """Tags of boxes whose top-left corners are close went on top of each other."""
    if layout == 'same corner':
        boxes = [[40, 40, 120, 120], [42, 41, 100, 90], [44, 43, 140, 130], [40, 45, 90, 95]]
    elif layout == 'stacked':
        boxes = [[30, 30 + 4 * i, 150, 60 + 4 * i] for i in range(6)]
    else:
        boxes = [[10 + 3 * i, 0, 60 + 3 * i, 40] for i in range(4)]
    widths = [70.0] * len(boxes)
    rects = place_tags(boxes, widths, (256, 256))
    for r in rects:
        assert 0 <= r[0] and r[2] <= 256 and 0 <= r[1] and r[3] <= 256, r
        assert r[3] - r[1] == TAG_HEIGHT
    for a, b in itertools.combinations(rects, 2):
        assert not _overlaps(a, b), (a, b)
    # the first (highest-scoring) box keeps the usual place, just above its top edge
    if layout != 'at the top edge':
        assert rects[0][1] == boxes[0][1] - TAG_HEIGHT


def test_drawn_picture_has_one_tag_per_object():
    """End to end on pixels: two classes on one object give one box colour, not two."""
    image = np.full((64, 64, 3), 255, np.uint8)
    boxes = np.array([[10, 10, 40, 40], [11, 10, 41, 41]], dtype=np.float32)
    pic = np.asarray(draw_detections(image, boxes, [0, 1], [0.44, 0.69], CLASSES, PALETTE))
    colours = {tuple(c) for c in pic.reshape(-1, 3)}
    assert PALETTE[1] in colours and PALETTE[0] not in colours


# ---------------------------------------------------------------- 16-bit images
def _png16(tmp_path, rgb: bool = False):
    """A seeded 16-bit PNG written by PIL (grayscale, mode I;16) or cv2 (BGR); returns
    its path and what OpenCV's decoder (the model's LoadImageFromFile) makes of it."""
    import cv2
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, size=(24, 40, 3) if rgb else (24, 40), dtype=np.uint16)
    path = tmp_path / ('rgb16.png' if rgb else 'gray16.png')
    if rgb:
        assert cv2.imwrite(str(path), values)
    else:
        Image.fromarray(values).save(path)
        assert Image.open(path).mode == 'I;16'
    seen = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]  # uint8, as RGB
    return path, seen


@pytest.mark.parametrize('rgb', [False, True], ids=['gray-PIL', 'rgb-cv2'])
def test_16bit_png_is_displayed_as_the_model_sees_it(tmp_path, rgb):
    """Before: PIL's convert('RGB') clipped a 16-bit grayscale PNG at 255, so the input
    tile and every overlay's background were (almost) white."""
    from resnet_backbone.apis.dump.overlay import open_bounded
    from resnet_backbone.apis.visualize import display_rgb
    path, seen = _png16(tmp_path, rgb)
    shown = open_bounded(path, seen.shape[:2])
    assert shown.dtype == np.uint8 and shown.shape == seen.shape
    np.testing.assert_array_equal(shown, seen)  # the high byte: OpenCV's 8 bits
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(display_rgb(im)), seen)


def test_display_rgb_other_wide_modes():
    from resnet_backbone.apis.visualize import display_rgb
    eight = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert display_rgb(eight).getpixel((3, 2)) == (11, 11, 11)  # 8-bit: unchanged
    i32 = Image.fromarray(np.array([[0, 1 << 20, (1 << 31) - 1]], dtype=np.int32))
    assert i32.mode == 'I'
    assert [display_rgb(i32).getpixel((x, 0))[0] for x in range(3)] == [0, 0, 127]
    f = Image.fromarray(np.array([[0, 500, 1000]], dtype=np.float32))
    assert [display_rgb(f).getpixel((x, 0))[0] for x in range(3)] == [0, 127, 255]


def test_16bit_png_overlays_and_sheet_are_not_washed_out(tmp_path):
    """The dump's per-level overlay and sheet of a dark 16-bit image: the input tile
    shows the image (not white), the maps are drawn over it as for its 8-bit twin."""
    import torch

    from resnet_backbone.apis.dump.overlay import OverlayScale, write_overlays
    path, seen = _png16(tmp_path)
    eight = tmp_path / 'gray8.png'
    Image.fromarray(seen[..., 0]).save(eight)
    torch.manual_seed(0)
    levels = {'c2': torch.rand(1, 4, 6, 10), 'c3': torch.rand(1, 8, 3, 5)}
    strides = {'c2': 4, 'c3': 8}
    meta = {'ori_shape': (24, 40), 'img_shape': (24, 40), 'flip': False}
    scale = OverlayScale.measure(levels, str(path), {})
    sheets = {}
    for name, image in (('16', path), ('8', eight)):
        stem = tmp_path / 'out' / name / 'img'
        stem.parent.mkdir(parents=True)
        sheets[name] = np.asarray(Image.open(write_overlays(image, levels, strides, meta,
                                                            stem, scale, max_side=64)))
        overlay = np.asarray(Image.open(stem.with_name('img.c2.png')))
        sheets[name + '.c2'] = overlay
    np.testing.assert_array_equal(sheets['16'], sheets['8'])
    np.testing.assert_array_equal(sheets['16.c2'], sheets['8.c2'])
    assert sheets['16'][:, :40].mean() < 200  # the input tile is no white box


def test_prediction_sheet_draws_16bit_images(tmp_path, monkeypatch):
    """The prediction sheet read its images with convert('RGB') too (white tiles)."""
    import mmdet.apis
    import torch
    from mmengine.structures import InstanceData

    from resnet_backbone.apis.visualize import prediction_sheet
    path, seen = _png16(tmp_path)
    model = type('M', (), {'dataset_meta': {'classes': ('a',), 'palette': [(0, 255, 0)]}})()
    pred = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long),
                        scores=torch.zeros(0))
    monkeypatch.setattr(mmdet.apis, 'init_detector', lambda *a, **k: model)
    monkeypatch.setattr(mmdet.apis, 'inference_detector',
                        lambda *a, **k: type('R', (), {'pred_instances': pred})())
    sheet = np.asarray(Image.open(prediction_sheet('cfg.py', 'ckpt.pth', [path],
                                                   tmp_path / 'p.png')))
    tile = sheet[16:16 + 48, :80]  # below the caption, upscaled 2x (NEAREST)
    np.testing.assert_array_equal(tile[::2, ::2], seen)
