"""Pictures a person would rather look at than read: detections drawn on images."""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io.fileio import atomic_write_bytes

#: Detections drawn on a prediction picture score at least this. The detector's own
#: ``test_cfg.score_thr`` is far lower (0.05) because the COCO mAP needs the low-scoring
#: tail; a picture for a person shows what the model is reasonably sure of.
SCORE_THRESHOLD = 0.3
#: Boxes overlapping by more than this IoU are one object, whatever their classes: the
#: picture keeps only the highest-scoring one (mmdet's NMS runs per class, so one circle
#: can come out as "circle 0.69" and "square 0.44" on nearly the same box).
NMS_IOU = 0.5
#: height of one ``class score`` tag in pixels (PIL's default font is 11 px tall)
TAG_HEIGHT = 11


def legend(score_thr: float = SCORE_THRESHOLD, iou: float = NMS_IOU) -> str:
    """The line a prediction sheet prints above the images: what it shows."""
    return (f'score >= {score_thr:g}, one box per object (boxes overlapping by IoU > {iou:g} '
            'are one object: the highest-scoring class is shown)')


def select_detections(boxes: np.ndarray, scores: Sequence[float], *,
                      score_thr: float = SCORE_THRESHOLD, iou: float = NMS_IOU) -> list[int]:
    """Indices of the detections to draw, highest score first.

    Drops scores below ``score_thr``, then runs NMS across classes: of boxes that
    overlap by IoU > ``iou`` only the highest-scoring one stays, with its own label.

    Example:
        >>> boxes = np.array([[10, 10, 50, 50], [12, 11, 51, 50], [60, 60, 90, 90.]])
        >>> select_detections(boxes, [0.44, 0.69, 0.1])  # one object, two classes; a low one
        [1]
    """
    from torchvision.ops import nms  # torchvision.ops loads compiled ops: only when drawing boxes
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32)).reshape(-1)
    keep = torch.nonzero(scores_t >= score_thr).flatten()
    if keep.numel() == 0:
        return []
    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)[keep]
    kept = keep[nms(boxes_t, scores_t[keep], iou)]  # nms returns them by score, descending
    return [int(i) for i in kept]


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_tags(boxes: Sequence[Sequence[float]], widths: Sequence[float],
               image_size: tuple[int, int], height: int = TAG_HEIGHT) -> list[tuple]:
    """Where each box's tag goes: ``(x0, y0, x1, y1)``, no two overlapping.

    A tag sits on the box's top edge, just above it; if that would leave the image or
    cover an earlier tag, just below the top edge inside the box, then just below the
    box, then the free place nearest the box's bottom edge (down or up). Earlier boxes
    (the higher scores, see :func:`select_detections`) keep the better places. Only when
    no free place is left in the image at all does a tag overlap one (it then sits at
    its first choice).
    """
    img_w, img_h = image_size
    placed: list[tuple] = []
    for box, width in zip(boxes, widths):
        x0, y0, _, y1 = (float(v) for v in box)
        x = min(max(x0, 0.0), max(img_w - width, 0.0))
        first = [y0 - height, y0, y1]
        rest = sorted(range(0, max(img_h - height, 0) + 1),
                      key=lambda y, y1=y1: (abs(y - y1), y))  # nearest the box first
        rect = None
        for y in [*first, *rest]:
            if y < 0 or y + height > img_h:
                continue
            cand = (x, float(y), x + width, float(y + height))
            if not any(_overlap(cand, other) for other in placed):
                rect = cand
                break
        if rect is None:  # the image is full of tags
            y = min(max(y0 - height, 0.0), max(img_h - height, 0.0))
            rect = (x, y, x + width, y + height)
        placed.append(rect)
    return placed


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: Sequence[int],
                    scores: Sequence[float], classes: Sequence[str],
                    palette: Sequence[tuple[int, int, int]], *,
                    score_thr: float = SCORE_THRESHOLD, iou: float = NMS_IOU,
                    scale: int = 2) -> Image.Image:
    """Draw one box per object with a ``class score`` tag on an RGB ``image`` (H, W, 3),
    upscaled ``scale`` times.

    What is drawn is :func:`select_detections` (scores >= ``score_thr``, NMS across
    classes at ``iou``); the tags are placed by :func:`place_tags`, so none covers
    another.
    """
    pil = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                        Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    keep = select_detections(boxes, scores, score_thr=score_thr, iou=iou)
    scaled = [[float(v) * scale for v in boxes[i]] for i in keep]
    tags = [f'{classes[int(labels[i])]} {float(scores[i]):.2f}' for i in keep]
    rects = place_tags(scaled, [draw.textlength(t) + 4 for t in tags], pil.size)
    for i, box in zip(keep, scaled):
        colour = tuple(palette[int(labels[i]) % len(palette)])
        draw.rectangle(box, outline=colour, width=2)
    for i, tag, rect in zip(keep, tags, rects):  # tags last: no box line crosses one
        colour = tuple(palette[int(labels[i]) % len(palette)])
        draw.rectangle(rect, fill=colour)
        draw.text((rect[0] + 2, rect[1]), tag, fill=(255, 255, 255))
    return pil


#: PIL modes of more than 8 bits per value; ``convert('RGB')`` clips them at 255, so a
#: 16-bit grayscale PNG (mode ``I;16``) would be drawn almost white
_WIDE_MODES = ('I', 'I;16', 'I;16L', 'I;16B', 'I;16N', 'F')


def display_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB for drawing on: only for display, never for the model.

    PIL's ``convert('RGB')`` clips values above 255, so a 16-bit grayscale PNG comes
    out white. Wider values are scaled down instead: integers by the bits they need
    (16-bit: the high byte, which is what OpenCV's decoder, and so the model's
    ``LoadImageFromFile``, makes of the same file; 32-bit likewise), floats by
    their maximum when it exceeds 255. 8-bit modes convert as before.

    Example:
        >>> im = Image.fromarray(np.full((2, 2), 40000, dtype=np.uint16))
        >>> im.mode, display_rgb(im).getpixel((0, 0))
        ('I;16', (156, 156, 156))
    """
    if image.mode not in _WIDE_MODES:
        return image.convert('RGB')
    values = np.asarray(image)
    if values.dtype.kind == 'f':
        finite = values[np.isfinite(values)]
        hi = float(finite.max()) if finite.size else 0.0
        scaled = np.nan_to_num(values) * (255.0 / hi if hi > 255 else 1.0)
    else:
        hi = int(values.max()) if values.size else 0
        bits = 16 if image.mode.startswith('I;16') or hi < 1 << 16 else 32
        scaled = values.astype(np.int64) >> (bits - 8)
    gray = np.asarray(scaled).clip(0, 255).astype(np.uint8)
    return Image.fromarray(gray, 'L').convert('RGB')


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Save ``image`` as a PNG atomically: the file is complete or absent, never cut
    short by Ctrl-C or a kill. zlib level 1: a dump writes thousands of these, and level
    6 (PIL's default) encodes several times slower for files about 10-20% smaller."""
    buf = io.BytesIO()
    image.save(buf, format='PNG', compress_level=1)
    path = Path(path)
    atomic_write_bytes(buf.getvalue(), path)
    return path


def save_grid(images: Sequence[Image.Image], path: str | Path, cols: int = 3,
              caption: str = '') -> Path:
    """Tile equally sized images into one PNG, with an optional caption line on top."""
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    top = 16 if caption else 0
    sheet = Image.new('RGB', (cols * w, rows * h + top), (255, 255, 255))
    if caption:
        ImageDraw.Draw(sheet).text((4, 2), caption, fill=(0, 0, 0))
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h + top))
    return save_png(sheet, path)


def prediction_sheet(config, checkpoint: str, image_paths: Sequence[str | Path],
                     out_png: str | Path, *, score_thr: float = SCORE_THRESHOLD,
                     iou: float = NMS_IOU) -> Path:
    """Run a detector on ``image_paths`` and save a sheet with the predicted boxes: one
    per object, scores >= ``score_thr`` (see :func:`draw_detections`), and a caption
    line saying so (:func:`legend`)."""
    from mmdet.apis import (  # mmdet.apis pulls in mmcv.ops: only for predictions
        inference_detector,
        init_detector,
    )
    model = init_detector(config, checkpoint, device='cpu')
    meta = model.dataset_meta or {}
    classes = meta.get('classes', [str(i) for i in range(1000)])
    palette = meta.get('palette') or [(220, 20, 60)]
    tiles = []
    for path in image_paths:
        with Image.open(path) as im:
            image = np.asarray(display_rgb(im))  # 16-bit: scaled, not clipped white
        pred = inference_detector(model, str(path)).pred_instances
        tiles.append(draw_detections(image, pred.bboxes.numpy(), pred.labels.tolist(),
                                     pred.scores.tolist(), classes, palette,
                                     score_thr=score_thr, iou=iou))
    return save_grid(tiles, out_png, caption=legend(score_thr, iou))


# ---------------------------------------------------------------- feature-map overlays
def colorize(heat: np.ndarray, cmap: str = 'inferno',
             value_range: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 RGB: ``value_range`` (lo, hi) maps to the ends of
    the colour map (values outside are clipped); default the map's own min-max."""
    from matplotlib import colormaps  # matplotlib is slow to import: only for heatmaps
    lo, hi = value_range if value_range is not None else (float(heat.min()), float(heat.max()))
    norm = ((heat - lo) / (hi - lo)).clip(0, 1) if hi > lo else np.zeros_like(heat)
    return (colormaps[cmap](norm)[..., :3] * 255).astype(np.uint8)


def blend(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.55,
          value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Heatmap (same H, W as the image) blended over the image (see :func:`colorize`)."""
    mixed = (1 - alpha) * image_rgb.astype(np.float32) + alpha * colorize(
        heat, value_range=value_range)
    return mixed.clip(0, 255).astype(np.uint8)


def _label(tile: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, draw.textlength(text) + 6, 13], fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    return tile


def _fit(array: np.ndarray, height: int) -> Image.Image:
    im = Image.fromarray(array)
    w = max(1, round(im.width * height / im.height))
    return im.resize((w, height), Image.BILINEAR)


def feature_sheet(image_rgb: np.ndarray, heats: dict[str, np.ndarray],
                  strides: dict[str, int], path: str | Path, height: int = 256,
                  ranges: dict[str, tuple[float, float]] | None = None) -> Path:
    """Original image, then one overlay per level, side by side, labelled; ``ranges``:
    each level's colour range (default: each map's own min-max)."""
    tiles = [_label(_fit(image_rgb, height), 'input')]
    for name, heat in heats.items():
        tag = f'{name} (stride {strides[name]})'
        rng = (ranges or {}).get(name)
        tiles.append(_label(_fit(blend(image_rgb, heat, value_range=rng), height), tag))
    sheet = Image.new('RGB', (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), height),
                      (255, 255, 255))
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width + 4
    return save_png(sheet, path)


def channel_grid(image_rgb: np.ndarray, heats: Sequence[np.ndarray], titles: Sequence[str],
                 path: str | Path, cols: int = 3, height: int = 160,
                 value_range: tuple[float, float] | None = None) -> Path:
    """Several overlays (e.g. the top-k channels of one level) in a grid, on one colour
    range (default: each map's own min-max)."""
    tiles = [_label(_fit(blend(image_rgb, h, value_range=value_range), height), t)
             for h, t in zip(heats, titles)]
    return save_grid(tiles, path, cols=cols)
