"""Pictures a person would rather look at than read: detections drawn on images."""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: Sequence[int],
                    scores: Sequence[float], classes: Sequence[str],
                    palette: Sequence[tuple[int, int, int]], *, score_thr: float = 0.3,
                    scale: int = 2) -> Image.Image:
    """Draw boxes with ``class score`` tags on an RGB ``image`` (H, W, 3), upscaled."""
    pil = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                        Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    for box, label, score in zip(boxes, labels, scores):
        if score < score_thr:
            continue
        colour = tuple(palette[int(label) % len(palette)])
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        tag = f'{classes[int(label)]} {score:.2f}'
        tw = draw.textlength(tag)
        draw.rectangle([x0, max(y0 - 11, 0), x0 + tw + 4, max(y0 - 11, 0) + 11], fill=colour)
        draw.text((x0 + 2, max(y0 - 11, 0)), tag, fill=(255, 255, 255))
    return pil


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Save ``image`` as a PNG atomically: the file is complete or absent, never cut
    short by Ctrl-C or a kill."""
    from ..io.fileio import atomic_write_bytes
    buf = io.BytesIO()
    image.save(buf, format='PNG')
    path = Path(path)
    atomic_write_bytes(buf.getvalue(), path)
    return path


def save_grid(images: Sequence[Image.Image], path: str | Path, cols: int = 3) -> Path:
    """Tile equally sized images into one PNG."""
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new('RGB', (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h))
    return save_png(sheet, path)


def prediction_sheet(config, checkpoint: str, image_paths: Sequence[str | Path],
                     out_png: str | Path, *, score_thr: float = 0.3) -> Path:
    """Run a detector on ``image_paths`` and save a sheet with the predicted boxes."""
    from mmdet.apis import inference_detector, init_detector
    model = init_detector(config, checkpoint, device='cpu')
    meta = model.dataset_meta or {}
    classes = meta.get('classes', [str(i) for i in range(1000)])
    palette = meta.get('palette') or [(220, 20, 60)]
    tiles = []
    for path in image_paths:
        image = np.asarray(Image.open(path).convert('RGB'))
        pred = inference_detector(model, str(path)).pred_instances
        tiles.append(draw_detections(image, pred.bboxes.numpy(), pred.labels.tolist(),
                                     pred.scores.tolist(), classes, palette,
                                     score_thr=score_thr))
    return save_grid(tiles, out_png)


# ---------------------------------------------------------------- feature-map overlays
def colorize(heat: np.ndarray, cmap: str = 'inferno') -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 RGB, min-max normalised."""
    from matplotlib import colormaps
    lo, hi = float(heat.min()), float(heat.max())
    norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    return (colormaps[cmap](norm)[..., :3] * 255).astype(np.uint8)


def blend(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Heatmap (same H, W as the image) blended over the image."""
    mixed = (1 - alpha) * image_rgb.astype(np.float32) + alpha * colorize(heat)
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
                  strides: dict[str, int], path: str | Path, height: int = 256) -> Path:
    """Original image, then one overlay per level, side by side, labelled."""
    tiles = [_label(_fit(image_rgb, height), 'input')]
    for name, heat in heats.items():
        tag = f'{name} (stride {strides[name]})'
        tiles.append(_label(_fit(blend(image_rgb, heat), height), tag))
    sheet = Image.new('RGB', (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), height),
                      (255, 255, 255))
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width + 4
    return save_png(sheet, path)


def channel_grid(image_rgb: np.ndarray, heats: Sequence[np.ndarray], titles: Sequence[str],
                 path: str | Path, cols: int = 3, height: int = 160) -> Path:
    """Several overlays (e.g. the top-k channels of one level) in a grid."""
    tiles = [_label(_fit(blend(image_rgb, h), height), t) for h, t in zip(heats, titles)]
    return save_grid(tiles, path, cols=cols)
