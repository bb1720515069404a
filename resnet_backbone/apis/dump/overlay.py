"""Feature-map overlays for a dump: at a bounded size, on one colour scale per level.

- **Bounded.** An overlay is drawn at most ``max_side`` pixels on its longer side
  (default 1024), never at the photo's own size: the photo is decoded reduced (JPEG's
  draft mode decodes at 1/2, 1/4 or 1/8 directly) and each heatmap is sampled straight
  at the overlay's pixels (:func:`heat_on_image`). A 12-megapixel photo costs what a
  1024-pixel one does.
- **One scale per level, per run.** mmengine's ``draw_featmap`` stretches every map to
  its own min-max, so a dim image looks as hot as a bright one. Here each level's colour
  range is fixed once per dump folder (:class:`OverlayScale`: the 1st and 99th
  percentiles of that level's map on the first readable image) and kept in
  ``overlays/scale.json``; every overlay of the folder uses it, so images compare.

Example:
    >>> import torch
    >>> meta = {'img_shape': (64, 96), 'ori_shape': (128, 192), 'flip': False}
    >>> heat_on_image(torch.rand(2, 3), 32, meta, (32, 48)).shape
    (32, 48)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ...io.fileio import atomic_write_bytes
from ..visualize import blend, channel_grid, display_rgb, feature_sheet, save_png

OVERLAY_MODES = ('mean', 'topk')
DEFAULT_MAX_SIDE = 1024
TOPK = 9
SCALE_FILE = Path('overlays') / 'scale.json'


def overlay_size(ori_shape, max_side: int) -> tuple[int, int]:
    """(H, W) of an overlay: the original image's, reduced to ``max_side`` at most."""
    oh, ow = (int(v) for v in ori_shape[:2])
    f = min(1.0, max_side / max(oh, ow))
    return max(1, round(oh * f)), max(1, round(ow * f))


def open_bounded(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """The image at ``path`` as 8-bit RGB (H, W, 3) of ``size`` (H, W), decoded reduced
    where the format allows (JPEG draft), EXIF orientation applied as OpenCV's decoder
    does, 16-bit values scaled to 8 bits (:func:`~.visualize.display_rgb`), not clipped."""
    with Image.open(path) as im:
        h, w = size
        im.draft('RGB', (w, h))  # JPEG: decode at the smallest 1/2^k scale >= the size
        im = display_rgb(ImageOps.exif_transpose(im))
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR, reducing_gap=2.0)
        return np.asarray(im)


def heat_on_image(fmap: torch.Tensor, stride: int, meta: dict,
                  size: tuple[int, int]) -> np.ndarray:
    """An (h, w) map at ``stride`` sampled at the pixels of an (H, W) = ``size`` picture
    of the original image: padding removed, flip undone, bilinear.

    Cell (i, j) covers network-input pixels [i*s, (i+1)*s) x [j*s, (j+1)*s); the network
    input is the original image resized to ``img_shape`` (and maybe flipped). The picture
    is sampled directly (one ``grid_sample``), so its cost depends on ``size`` only.
    """
    h, w = fmap.shape[-2:]
    ih, iw = (float(v) for v in meta['img_shape'][:2])
    out_h, out_w = size
    ys = (torch.arange(out_h, dtype=torch.float32) + 0.5) * ih / out_h  # input pixel edge
    xs = (torch.arange(out_w, dtype=torch.float32) + 0.5) * iw / out_w  # coordinates
    direction = (meta.get('flip_direction') or 'horizontal') if meta.get('flip') else ''
    if direction in ('horizontal', 'diagonal'):
        xs = iw - xs
    if direction in ('vertical', 'diagonal'):
        ys = ih - ys
    gy = 2 * ys / (stride * h) - 1  # grid_sample, align_corners=False: -1..1 spans
    gx = 2 * xs / (stride * w) - 1  # the map's h*s x w*s input pixels
    grid = torch.stack(torch.meshgrid(gy, gx, indexing='ij')[::-1], dim=-1)[None]
    out = F.grid_sample(fmap[None, None].float(), grid, mode='bilinear',
                        padding_mode='border', align_corners=False)
    return out[0, 0].numpy()


def _mean_heat(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.float().abs().mean(0)


def _topk_channels(fmap: torch.Tensor, k: int = TOPK) -> list[int]:
    return fmap.float().flatten(1).mean(1).argsort(descending=True)[:k].tolist()


def _range(values: torch.Tensor) -> list[float]:
    v = values.float().flatten().numpy()
    lo, hi = np.percentile(v, [1, 99])
    return [float(lo), float(hi) if hi > lo else float(lo) + 1e-6]


class OverlayScale:
    """Each level's colour ranges for one dump folder, ``{level: {'mean': [lo, hi],
    'topk': [lo, hi]}}``, from the first readable image (named with it), tied to the
    fingerprint of the run that measured it."""

    def __init__(self, ranges: dict[str, dict[str, list[float]]], image: str,
                 fingerprint: dict) -> None:
        self.ranges, self.image, self.fingerprint = ranges, image, fingerprint

    @classmethod
    def measure(cls, levels: dict[str, torch.Tensor], image: str,
                fingerprint: dict) -> OverlayScale:
        """From one image's maps ``{level: (1, C, h, w)}``."""
        ranges = {name: {'mean': _range(_mean_heat(t[0])),
                         'topk': _range(t[0][_topk_channels(t[0])])}
                  for name, t in levels.items()}
        return cls(ranges, image, fingerprint)

    @classmethod
    def load(cls, out_dir: Path, fingerprint: dict) -> OverlayScale | None:
        """The folder's scale if it was measured with this fingerprint, else None."""
        try:
            d = json.loads((Path(out_dir) / SCALE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if d.get('fingerprint') != fingerprint:
            return None
        return cls(d['ranges'], d['image'], fingerprint)

    def save(self, out_dir: Path) -> None:
        atomic_write_bytes(json.dumps(self.as_dict(), indent=1).encode(),
                           Path(out_dir) / SCALE_FILE)

    def as_dict(self) -> dict:
        return {'image': self.image, 'ranges': self.ranges, 'fingerprint': self.fingerprint,
                'how': 'per level: the 1st and 99th percentiles of the mean |activation| '
                       '(mean) and of the top-9 channels (topk) on this image'}


def write_overlays(image_path: Path, levels: dict[str, torch.Tensor], strides: dict[str, int],
                   meta: dict, stem: Path, scale: OverlayScale, *, mode: str = 'mean',
                   max_side: int = DEFAULT_MAX_SIDE, topk: int = TOPK) -> Path:
    """Per-level heatmaps on the image, at most ``max_side`` px, and the side-by-side
    sheet (written last; every PNG atomically). Returns the sheet's path.

    ``mean``: mean of |activation| over channels; ``topk``: the ``topk`` channels with
    the highest mean activation, one tile each, in a grid per level.
    """
    size = overlay_size(meta['ori_shape'], max_side)
    image = open_bounded(image_path, size)
    heats = {}
    for name, t in levels.items():
        fmap = t[0]
        heats[name] = heat_on_image(_mean_heat(fmap), strides[name], meta, size)
        ranges = scale.ranges[name]
        if mode == 'topk':
            order = _topk_channels(fmap, topk)
            channel_grid(image, [heat_on_image(fmap[c], strides[name], meta, size)
                                 for c in order], [f'{name} ch{c}' for c in order],
                         stem.with_name(f'{stem.name}.{name}.topk.png'),
                         value_range=tuple(ranges['topk']))
        else:
            picture = blend(image, heats[name], value_range=tuple(ranges['mean']))
            save_png(Image.fromarray(picture), stem.with_name(f'{stem.name}.{name}.png'))
    return feature_sheet(image, heats, strides, stem.with_name(f'{stem.name}.sheet.png'),
                         ranges={k: tuple(v['mean']) for k, v in scale.ranges.items()})
