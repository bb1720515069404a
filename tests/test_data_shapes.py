"""The embedded data set: deterministic, COCO-valid, with boxes and masks."""
from __future__ import annotations

import hashlib
import json

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from resnet_backbone.data.shapes import CLASSES, generate


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob('*') if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = generate(tmp_path / 'a', num_train=6, num_val=2, size=64, seed=3)
    b = generate(tmp_path / 'b', num_train=6, num_val=2, size=64, seed=3)
    c = generate(tmp_path / 'c', num_train=6, num_val=2, size=64, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_coco_layout_boxes_and_masks(tiny_shapes):
    coco = COCO(str(tiny_shapes / 'annotations' / 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == 8 and all(
        (tiny_shapes / 'train' / img['file_name']).is_file() for img in coco.dataset['images'])
    anns = coco.dataset['annotations']
    assert len(anns) >= 8
    for ann in anns:
        m = mask_utils.decode(ann['segmentation'])
        ys, xs = np.nonzero(m)
        x, y, w, h = ann['bbox']
        # the box is the tight box of the (visible part of the) mask
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert ann['area'] == int(m.sum()) > 0


def test_regenerate_is_skipped_when_up_to_date(tmp_path):
    root = generate(tmp_path, num_train=2, num_val=1, size=64)
    ann = root / 'annotations' / 'instances_train.json'
    ann.write_text(json.dumps({'marker': True}))
    generate(tmp_path, num_train=2, num_val=1, size=64)
    assert json.loads(ann.read_text()) == {'marker': True}
    generate(tmp_path, num_train=2, num_val=1, size=64, force=True)
    assert 'images' in json.loads(ann.read_text())
