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
