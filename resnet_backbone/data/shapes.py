"""A small, deterministic COCO-format detection data set of geometric shapes.

Each image holds 1-4 shapes of three classes (square, circle, triangle) with random
colours and sizes on a textured, noisy background; shapes may overlap (a later shape
occludes an earlier one, and the earlier one's mask and box are cut to what is
visible). Every object has a box and an instance mask (COCO RLE), so RetinaNet,
Faster R-CNN and Mask R-CNN all train on it.

    python -m resnet_backbone.data.shapes --out data/shapes     # or: generate(...)

The same seed gives byte-identical files. Layout (COCO-style)::

    data/shapes/
      annotations/instances_train.json, instances_val.json
      train/000000.png ...
      val/000000.png ...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

CLASSES = ('square', 'circle', 'triangle')


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour gradient + low-frequency blobs + pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 140, 3)
    slope = rng.uniform(-50, 50, (3, 2))
    img = base[:, None, None] + slope[:, 0, None, None] * xx + slope[:, 1, None, None] * yy
    for _ in range(3):  # texture: a few soft sinusoidal stripes
        f, phase = rng.uniform(2, 9), rng.uniform(0, 2 * math.pi)
        ang = rng.uniform(0, math.pi)
        img += rng.uniform(5, 20) * np.sin(2 * math.pi * f * (xx * math.cos(ang) + yy *
                                                              math.sin(ang)) + phase)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).transpose(1, 2, 0).astype(np.uint8)


def _polygon(cls: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    n = {'square': 4, 'circle': 48, 'triangle': 3}[cls]
    start = rot + (math.pi / 4 if cls == 'square' else -math.pi / 2)
    return [(cx + r * math.cos(start + 2 * math.pi * k / n),
             cy + r * math.sin(start + 2 * math.pi * k / n)) for k in range(n)]


def _render_mask(poly, size: int) -> np.ndarray:
    canvas = Image.new('L', (size, size), 0)
    ImageDraw.Draw(canvas).polygon(poly, fill=1)
    return np.asarray(canvas, dtype=bool)


def _make_image(rng: np.random.Generator, size: int, max_objects: int):
    img = _background(rng, size)
    objects = []  # (class index, mask)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls_id = int(rng.integers(0, len(CLASSES)))
        r = rng.uniform(0.08, 0.25) * size
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
        rot = rng.uniform(0, 2 * math.pi) if CLASSES[cls_id] != 'circle' else 0.0
        mask = _render_mask(_polygon(CLASSES[cls_id], cx, cy, r, rot), size)
        if mask.sum() < 30:
            continue
        # keep overlaps moderate: skip shapes that would hide > 40% of an earlier one
        if any((m & mask).sum() > 0.4 * m.sum() for _, m in objects):
            continue
        colour = rng.integers(0, 256, 3)
        while np.abs(colour.astype(int) - img[mask].mean(0)).sum() < 150:
            colour = rng.integers(0, 256, 3)
        shade = rng.normal(0, 8, (int(mask.sum()), 3))
        img[mask] = np.clip(colour + shade, 0, 255).astype(np.uint8)
        objects = [(c, m & ~mask) for c, m in objects] + [(cls_id, mask)]
    return img, [(c, m) for c, m in objects if m.sum() >= 20]


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def _split(root: Path, split: str, num: int, size: int, seed: int, max_objects: int) -> dict:
    rng = np.random.default_rng([seed, {'train': 0, 'val': 1}[split]])
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num):
        img, objects = _make_image(rng, size, max_objects)
        name = f'{i:06d}.png'
        Image.fromarray(img).save(root / split / name, optimize=False)
        images.append(dict(id=i, file_name=name, width=size, height=size))
        for cls_id, mask in objects:
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append(dict(id=len(annotations) + 1, image_id=i, category_id=cls_id + 1,
                                    bbox=[x0, y0, x1 - x0, y1 - y0], area=int(mask.sum()),
                                    segmentation=_rle(mask), iscrowd=0))
    return dict(images=images, annotations=annotations,
                categories=[dict(id=k + 1, name=n) for k, n in enumerate(CLASSES)])


def generate(out: str | Path = 'data/shapes', *, num_train: int = 400, num_val: int = 60,
             size: int = 128, seed: int = 0, max_objects: int = 4,
             force: bool = False) -> Path:
    """Write the data set under ``out`` (skipped if already there with the same settings).

    Returns the root folder. Takes a few seconds.
    """
    root = Path(out)
    settings = dict(num_train=num_train, num_val=num_val, size=size, seed=seed,
                    max_objects=max_objects, classes=list(CLASSES), version=1)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    stamp = root / '.settings'
    if not force and stamp.exists() and stamp.read_text().strip() == key:
        return root
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    for split, num in (('train', num_train), ('val', num_val)):
        coco = _split(root, split, num, size, seed, max_objects)
        (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(coco))
    stamp.write_text(key + '\n')
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description='Write the embedded synthetic shapes data set.')
    p.add_argument('--out', default='data/shapes')
    p.add_argument('--num-train', type=int, default=400)
    p.add_argument('--num-val', type=int, default=60)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--force', action='store_true', help='rewrite even if up to date')
    a = p.parse_args(argv)
    root = generate(a.out, num_train=a.num_train, num_val=a.num_val, size=a.size,
                    seed=a.seed, force=a.force)
    print(f'shapes data set ready at {root}')


if __name__ == '__main__':
    main()
