"""Region (RoI) features: boxes in original-image pixels -> RoIAlign features per box.

Everything numeric is mmdet's own:

- **The extractor.** A two-stage config (Faster / Mask R-CNN) uses its own
  ``roi_head.bbox_roi_extractor``. Any other detector gets the same piece built with
  mmdet's defaults: ``SingleRoIExtractor`` with ``RoIAlign`` 7x7, ``sampling_ratio=0``,
  ``aligned=True``, ``finest_scale=56``, over the neck's first four outputs (for RetinaNet
  P3-P6, strides 8-64; level 0 is then P3).
- **Box mapping.** Boxes go from the original image to the network input as the
  pipeline moved the image: ``scale_boxes`` by its ``scale_factor``, then ``bbox_flip``
  if it was flipped: the inverse of how a detector maps its predictions back.
- **Predictions** (``pred``) come from the detector's own ``predict`` pieces on the same
  neck outputs (its RPN and RoI head, or its bbox head), ``rescale=False``, then are
  mapped back to the original image for the record.
- **Level** per box: the extractor's own ``map_roi_levels``.
- **Labels** of ``gt`` boxes, by name (:func:`class_labels`): label i for the category
  named the i-th configured class, -1 for a category that is none of them; a file that
  shares no name with the classes is one line, before any box is labelled.

Per image the result is ``rois`` (N, C, 7, 7), ``roi_pooled`` (N, C: the mean over the
7x7 cells) and a record per box: ``box`` (x1, y1, x2, y2, original pixels), ``label``,
``score`` (None for given boxes), ``image_id`` (the COCO image id of ``gt`` boxes; None
for predictions and boxes of a file), ``level``, ``clipped``, ``zero_area``.

Edge cases, by design: an empty box list gives (0, C, 7, 7) and (0, C) arrays; a box
partly outside the image is clipped to it (``clipped: true``; the stored box is the
clipped one); a box of zero area (given so, or after clipping) keeps its row, with
the all-zero features RoIAlign returns for it (``zero_area: true``).

Example:
    >>> boxes = parse_box_rows([{'image': 'a.png', 'box': [0, 0, 10, 5]}], 'b.json')
    >>> boxes['a.png'].boxes.tolist(), boxes['a.png'].labels.tolist()
    ([[0.0, 0.0, 10.0, 5.0]], [-1])
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...errors import ToolError

ROI_SIZE = 7
FINEST_SCALE = 56


@dataclass
class Boxes:
    """Boxes of one image in original-image pixels: (N, 4) x1, y1, x2, y2."""

    boxes: torch.Tensor
    labels: torch.Tensor  # (N,) int64, -1 where unknown
    scores: torch.Tensor | None = None  # (N,) for predictions
    note: str | None = None  # e.g. 'not in the annotation file'
    image_id: int | str | None = None  # the COCO image id (gt boxes); None otherwise
    rows: list[int] | None = None  # a box file's row numbers (for messages); None otherwise

    @classmethod
    def empty(cls, note: str | None = None) -> Boxes:
        return cls(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), None, note)


@dataclass
class RoIFeatures:
    """The RoI features of one image (see the module docstring)."""

    rois: torch.Tensor  # (N, C, 7, 7)
    pooled: torch.Tensor  # (N, C)
    records: list[dict] = field(default_factory=list)
    note: str | None = None  # the boxes' note, e.g. 'not in the annotation file'
    image_id: int | str | None = None  # the boxes' COCO image id (gt), else None


# ---------------------------------------------------------------- the extractor
def roi_extractor(model: nn.Module, p_channels: int, p_strides: list[int]) -> tuple[nn.Module,
                                                                                  str]:
    """The config's ``roi_head.bbox_roi_extractor``, else mmdet's defaults built over the
    neck's first four levels; and where it came from, in words."""
    head = getattr(model, 'roi_head', None)
    own = getattr(head, 'bbox_roi_extractor', None)
    if own is not None:
        return own, 'the config\'s roi_head.bbox_roi_extractor'
    # mmdet.registry builds mmcv.ops.RoIAlign (compiled ops): only when RoIs are asked for
    from mmdet.registry import MODELS
    extractor = MODELS.build(dict(
        type='SingleRoIExtractor',
        roi_layer=dict(type='RoIAlign', output_size=ROI_SIZE, sampling_ratio=0,
                       aligned=True),
        out_channels=p_channels, featmap_strides=list(p_strides[:4]),
        finest_scale=FINEST_SCALE))
    strides = ', '.join(str(s) for s in p_strides[:4])
    return extractor.eval(), f"mmdet's SingleRoIExtractor defaults over strides {strides}"


def to_input(boxes: torch.Tensor, meta: dict) -> tuple[torch.Tensor, list[bool]]:
    """Original-image boxes -> network-input boxes (clipped to the original first);
    returns them and, per box, whether clipping changed it."""
    from mmdet.structures.bbox import bbox_flip, scale_boxes  # mmdet's own box mapping
    oh, ow = (float(v) for v in meta['ori_shape'][:2])
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, ow)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, oh)
    changed = (clipped != boxes).any(dim=1).tolist() if len(boxes) else []
    out = scale_boxes(clipped.clone(), tuple(meta['scale_factor'][:2]))
    if meta.get('flip'):
        out = bbox_flip(out, tuple(int(v) for v in meta['img_shape'][:2]),
                        meta.get('flip_direction') or 'horizontal')
    return out, changed


def to_original(boxes: torch.Tensor, meta: dict) -> torch.Tensor:
    """Network-input boxes (a prediction with ``rescale=False``) -> original pixels."""
    from mmdet.structures.bbox import bbox_flip, scale_boxes  # mmdet's own box mapping
    out = boxes.clone()
    if meta.get('flip'):
        out = bbox_flip(out, tuple(int(v) for v in meta['img_shape'][:2]),
                        meta.get('flip_direction') or 'horizontal')
    sx, sy = (float(v) for v in meta['scale_factor'][:2])
    return scale_boxes(out, (1.0 / sx, 1.0 / sy))


def predict(model: nn.Module, p_outs: tuple, data_samples: list, *, score_thr: float,
            max_per_image: int) -> list[Boxes]:
    """The detector's predictions on the neck outputs it would compute itself, as
    network-input boxes (``rescale=False``), filtered by score and count."""
    from mmdet.models.detectors import (  # the detectors' own predict steps
        SingleStageDetector,
        TwoStageDetector,
    )
    if isinstance(model, TwoStageDetector):
        proposals = model.rpn_head.predict(p_outs, data_samples, rescale=False)
        results = model.roi_head.predict(p_outs, proposals, data_samples, rescale=False)
    elif isinstance(model, SingleStageDetector):
        results = model.bbox_head.predict(p_outs, data_samples, rescale=False)
    else:
        raise ToolError(f'--rois pred needs a single- or two-stage mmdet detector; '
                        f'{type(model).__name__} is neither: pass --rois gt or a box file')
    out = []
    for r in results:
        keep = r.scores >= score_thr
        scores, order = r.scores[keep].sort(descending=True)
        order = order[:max_per_image]
        out.append(Boxes(r.bboxes[keep][order].float().cpu(),
                         r.labels[keep][order].long().cpu(), scores[:max_per_image].cpu()))
    return out


@torch.no_grad()
def roi_features(extractor: nn.Module, p_outs: tuple, metas: list[dict],
                 boxes: list[Boxes], *, input_boxes: list[torch.Tensor] | None = None
                 ) -> list[RoIFeatures]:
    """RoIAlign features of every image's boxes, in one call of the extractor.

    ``boxes`` are in original pixels (mapped with :func:`to_input`); ``input_boxes``, if
    given, are the same boxes already in network-input pixels (predictions).
    """
    from mmdet.structures.bbox import bbox2roi  # mmdet's own (batch index, box) layout
    mapped, clipped = [], []
    for i, (b, meta) in enumerate(zip(boxes, metas)):
        if input_boxes is not None:
            mapped.append(input_boxes[i].float())
            clipped.append([False] * len(b.boxes))
        else:
            m, c = to_input(b.boxes.float(), meta)
            mapped.append(m)
            clipped.append(c)
    device = p_outs[0].device
    rois = bbox2roi([m.to(device) for m in mapped])
    feats = extractor(p_outs[:extractor.num_inputs], rois)
    levels = extractor.map_roi_levels(rois, extractor.num_inputs).tolist()
    out, start = [], 0
    for i, b in enumerate(boxes):
        n = len(b.boxes)
        f = feats[start:start + n]
        records = []
        for j in range(n):
            x1, y1, x2, y2 = (float(v) for v in b.boxes[j])
            if input_boxes is None and clipped[i][j]:
                o = metas[i]['ori_shape']
                x1, x2 = (min(max(v, 0.0), float(o[1])) for v in (x1, x2))
                y1, y2 = (min(max(v, 0.0), float(o[0])) for v in (y1, y2))
            records.append({
                'box': [x1, y1, x2, y2], 'label': int(b.labels[j]),
                'score': None if b.scores is None else float(b.scores[j]),
                'image_id': b.image_id,
                'level': int(levels[start + j]), 'clipped': bool(clipped[i][j]),
                'zero_area': (x2 - x1) * (y2 - y1) <= 0})
        out.append(RoIFeatures(f, f.mean(dim=(2, 3)), records, b.note, b.image_id))
        start += n
    return out


# ---------------------------------------------------------------- box sources
def _match_name(table: dict[str, Boxes], image: str) -> str | None:
    """The table's name that is the longest path suffix of ``image``."""
    parts = Path(image).as_posix()
    best = None
    for name in table.get('__by_base__', {}).get(Path(image).name, []):
        if (parts == name or parts.endswith('/' + name)) and len(name) > len(best or ''):
            best = name
    return best


def _match(table: dict[str, Boxes], image: str) -> Boxes | None:
    """The entry whose name is the longest path suffix of ``image``."""
    name = _match_name(table, image)
    return None if name is None else table[name]


def _index(table: dict[str, Boxes]) -> dict:
    by_base: dict[str, list[str]] = {}
    for name in table:
        by_base.setdefault(Path(name).name, []).append(name)
    table['__by_base__'] = by_base
    return table


def lookup(table: dict, image: str, what: str) -> Boxes:
    """The boxes of ``image`` in a table from :func:`coco_boxes`/:func:`load_box_file`;
    an image the table does not name gets none (noted in its record)."""
    found = _match(table, image)
    return found if found is not None else Boxes.empty(f'not in {what}')


def unmatched_images(table: dict, images: list) -> dict[str, list[int] | None]:
    """The table's image names that no image of ``images`` looks up (see :func:`lookup`),
    with their rows (None where the table keeps none): rows the dump would not use."""
    used = {_match_name(table, str(image)) for image in images}
    return {name: b.rows for name, b in table.items()
            if name != '__by_base__' and name not in used}


def unmatched_line(table: dict, images: list, source: str, shown: int = 5) -> str | None:
    """One line naming the rows of box file ``source`` that match no input image (a
    misspelt name vanished silently before), or None if every row is used."""
    missing = unmatched_images(table, images)
    if not missing:
        return None
    rows = sum(len(r) if r else 1 for r in missing.values())
    named = [f'{name} (row{"s" * (len(r) > 1)} {", ".join(map(str, r))})' if r else name
             for name, r in list(missing.items())[:shown]]
    more = f' and {len(missing) - shown} more' if len(missing) > shown else ''
    verb = 'row names an image that is' if rows == 1 else 'rows name images that are'
    return (f'{source}: {rows} {verb} not among the inputs: {"; ".join(named)}{more}; '
            'fix the name or drop the row (its boxes are not dumped)')


@dataclass
class CocoFile:
    """A COCO annotation file, read (:func:`read_coco`): ``categories`` (id, name) in the
    file's order, ``files`` image id -> file_name, and the annotations."""

    path: Path
    categories: list[tuple[int, str]]
    files: dict
    annotations: list

    @property
    def names(self) -> list[str]:
        return [name for _, name in self.categories]


def read_coco(ann_file: str | Path) -> CocoFile:
    """Read a COCO annotation file (one line naming it if it cannot be)."""
    path = Path(ann_file)
    try:
        coco = json.loads(path.read_text())
        cats = [(c['id'], str(c['name'])) for c in coco['categories']]
        files = {im['id']: im['file_name'] for im in coco['images']}
        anns = coco['annotations']
        for a in anns:  # a bad box fails here, before the model is built, not mid-dump
            if len([float(v) for v in a['bbox']]) != 4:
                raise ValueError(f'annotation {a.get("id")}: bbox {a["bbox"]!r} is not x,y,w,h')
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ToolError(f'--ann-file {path}: not a readable COCO annotation file ({exc}); '
                        'pass the instances_*.json of the images') from None
    return CocoFile(path, cats, files, anns)


def class_labels(coco: CocoFile, classes: list[str], whose: str = "the config's") -> dict:
    """``{category_id: label}``: label i for the category named ``classes[i]``, -1 for a
    category that is none of them. By name, so neither the file's category order nor a
    class the file lacks changes a label (unlike mmdet's ``CocoDataset``, which numbers
    by the file's order; the training tools refuse such files). A file that shares no
    name with ``classes`` (every label would be -1) is one line naming the file, the
    classes and the file's names."""
    names = coco.names
    if not set(map(str, names)) & set(map(str, classes)):
        fix = ('pass the annotation file of the data the checkpoint was trained on'
               if 'checkpoint' in whose else
               "pass the annotation file of the model's data, or a config whose "
               'test_dataloader.dataset.metainfo.classes name its categories')
        raise ToolError(
            f'--ann-file {coco.path}: {whose} classes ({", ".join(classes)}) do not fit it: '
            f'none of them is among its categories ({", ".join(names) or "(none)"}), so '
            f'every box would get label -1; {fix}')
    index = {str(c): i for i, c in enumerate(classes)}
    return {cid: index.get(str(name), -1) for cid, name in coco.categories}


def coco_boxes(ann_file: str | Path | CocoFile, classes: list[str] | None,
               whose: str = "the config's") -> dict:
    """``{file_name: Boxes}`` from a COCO annotation file; labels follow ``classes`` (the
    model's class names) by :func:`class_labels`, -1 for a category not among them (all
    -1 without ``classes``); each ``Boxes`` keeps its COCO ``image_id``. Crowd
    annotations are left out, as mmdet's CocoDataset does."""
    coco = ann_file if isinstance(ann_file, CocoFile) else read_coco(ann_file)
    labels = class_labels(coco, list(classes), whose) if classes else {}
    files = coco.files
    rows: dict[str, list] = {name: [] for name in files.values()}
    ids = {name: image_id for image_id, name in files.items()}
    for a in coco.annotations:
        if a.get('iscrowd', 0) or a.get('image_id') not in files:
            continue
        x, y, w, h = (float(v) for v in a['bbox'])
        rows[files[a['image_id']]].append(([x, y, x + w, y + h],
                                           labels.get(a.get('category_id'), -1)))
    table = {f: Boxes(torch.tensor([r[0] for r in v], dtype=torch.float32).reshape(-1, 4),
                      torch.tensor([r[1] for r in v], dtype=torch.long), image_id=ids[f])
             for f, v in rows.items()}
    return _index(table)


def parse_box_rows(rows: list, source: str) -> dict:
    """``{image: Boxes}`` from rows ``{'image', 'box': [x1, y1, x2, y2]}`` (or ``x1`` ..
    ``y2`` keys), optional ``label`` (int) and ``score``; one line naming ``source`` and
    the row for a bad one."""
    per: dict[str, list] = {}
    for n, row in enumerate(rows, 1):
        where = f'{source} row {n}'
        if not isinstance(row, dict) or 'image' not in row:
            raise ToolError(f'{where}: expected an image and a box, got {row!r}; rows are '
                            'image,x1,y1,x2,y2[,label][,score] in original-image pixels')
        box = row.get('box', [row.get(k) for k in ('x1', 'y1', 'x2', 'y2')])
        try:
            box = [float(v) for v in box]
            label = int(row['label']) if row.get('label') not in (None, '') else -1
            score = float(row['score']) if row.get('score') not in (None, '') else None
        except (TypeError, ValueError):
            raise ToolError(f'{where}: box {box!r}, label or score is not a number; rows '
                            'are image,x1,y1,x2,y2[,label][,score]') from None
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ToolError(f'{where}: a box is 4 finite numbers x1,y1,x2,y2; got {box!r}')
        if box[2] < box[0] or box[3] < box[1]:
            raise ToolError(f'{where}: x2 < x1 or y2 < y1 in {box}; boxes are x1,y1,x2,y2 '
                            '(corners, original-image pixels), not x,y,w,h')
        per.setdefault(str(row['image']), []).append((box, label, score, n))
    table = {}
    for image, items in per.items():
        scores = [it[2] for it in items]
        table[image] = Boxes(torch.tensor([it[0] for it in items], dtype=torch.float32),
                             torch.tensor([it[1] for it in items], dtype=torch.long),
                             None if all(s is None for s in scores) else
                             torch.tensor([float('nan') if s is None else s for s in scores]),
                             rows=[it[3] for it in items])
    return _index(table)


def load_box_file(path: str | Path) -> dict:
    """Boxes per image from a JSON file (``{image: [[x1, y1, x2, y2], ...]}``, or a list
    of rows) or a CSV file with a header ``image,x1,y1,x2,y2[,label][,score]``."""
    path = Path(path)
    if not path.is_file():
        raise ToolError(f'--rois {path}: no such file; pass gt, pred or a JSON/CSV box file')
    if path.suffix.lower() == '.csv':
        with open(path, newline='') as f:
            reader = csv.DictReader(f)
            missing = {'image', 'x1', 'y1', 'x2', 'y2'} - set(reader.fieldnames or [])
            if missing:
                raise ToolError(f'{path}: the CSV header lacks {", ".join(sorted(missing))}; '
                                'it must be image,x1,y1,x2,y2[,label][,score]')
            return parse_box_rows(list(reader), str(path))
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ToolError(f'{path}: not valid JSON ({exc}); give a .json or .csv box file') \
            from None
    if isinstance(data, dict):
        rows = []
        for image, boxes in data.items():
            if not isinstance(boxes, list):
                raise ToolError(f'{path}: the boxes of {image!r} must be a list of '
                                '[x1, y1, x2, y2] (or of {"box", "label", "score"})')
            for b in boxes:
                rows.append({'image': image, **(b if isinstance(b, dict) else {'box': b})})
        return parse_box_rows(rows, str(path))
    if isinstance(data, list):
        return parse_box_rows(data, str(path))
    raise ToolError(f'{path}: expected {{image: [boxes]}} or a list of rows, got '
                    f'{type(data).__name__}')
