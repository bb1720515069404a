"""Compare two feature dumps of the same images, level by level (and RoI by RoI).

What it is for: checking a converted checkpoint against the original, a float16 or
bfloat16 dump against float32, or the fast mode against the reference mode.

**Matching.** Images are matched by their arrays file's path relative to each dump
folder, without the format suffix (``sub/x.png.safetensors`` and ``sub/x.png.npz`` are
both ``sub/x.png``), so two dumps of the same input folder match wherever they were
written and whatever format they used. The image sets and the level names (from each
``index.json``) must be equal, and so must every map's shape; otherwise one line says
what differs (:class:`~resnet_backbone.errors.ToolError`), before any arrays file is read.

**Metrics**, for each image and level, with ``a`` the map of dump A (the reference) and
``b`` that of dump B, both read as float32 (float16 and bfloat16 convert exactly) and
reduced in float64, one image at a time (never all images at once):

- ``cosine = <a, b> / sqrt(<a, a> <b, b>)`` over the flattened ``(1, C, h, w)`` map;
  1 if both maps are all zeros, 0 if only one is; clipped to [-1, 1].
- ``scale = max |a|`` over the map (``max |b|`` if ``a`` is all zeros);
  ``max_rel = max |a - b| / scale`` and ``mean_rel = mean |a - b| / scale`` (0/0 := 0).
  The scale is the map's own range, not each element's value: elementwise ``|a-b|/|a|``
  is meaningless where ``a`` is near 0, which a ReLU map is at most of its positions.

Positions where either map is not finite (inf or NaN) are left out of all four and
counted in ``nonfinite``. Over the images, ``cosine_mean``/``mean_rel`` are the means
and ``cosine_min``/``max_rel`` the worst, with the image it came from
(``cosine_min_image``, ``max_rel_image``).

**RoI features.** Where both dumps store ``rois`` (N, C, 7, 7) and ``roi_pooled`` (N, C)
for an image, with the same N, each box is compared as above over its ``C*7*7`` (or
``C``) values, and the statistics run over all boxes of all images. A different N is a
note (one line naming the image) and that image's boxes are left out; boxes whose
coordinates differ are noted too (their features describe different regions). Any array
key that is not a level name of the index is not a level; keys other than these two are
ignored.

**Output.** :func:`compare_dumps` returns the result and saves it atomically as
``DIR_B/compare.json`` (the report's comparison section reads it); its schema is::

    {'a': str, 'b': str, 'images': int,
     'levels': {level: {'cosine_mean', 'cosine_min', 'max_rel', 'mean_rel', ...}},
     'rois': {'rois': {...the same four}, 'roi_pooled': {...}} or None,
     ...extra keys: 'dtypes', 'notes', per-statistic worst images, counts}

A statistic that has no value (no finite position at all) is written as ``null``.
:func:`format_table` renders it for the console.

Example:
    >>> import json, tempfile, torch
    >>> from resnet_backbone.apis.dump.store import save_levels
    >>> def dump(folder, scale):  # what rb-dump writes, by hand: one image, level c5
    ...     folder = Path(folder)
    ...     c5 = torch.arange(1., 9.).reshape(1, 2, 2, 2) * scale
    ...     meta = {'levels': {'c5': {'shape': [1, 2, 2, 2], 'stride': 32}}}
    ...     save_levels(folder / 'x.png.safetensors', {'c5': c5}, meta, 'safetensors')
    ...     entry = {'image': 'x.png', 'file': str(folder / 'x.png.safetensors'), **meta}
    ...     (folder / 'index.json').write_text(json.dumps({'images': [entry]}))
    ...     return folder
    >>> a, b = dump(tempfile.mkdtemp(), 1.0), dump(tempfile.mkdtemp(), 1.0 + 1e-3)
    >>> res = compare_dumps(a, b, progress=False)
    >>> res['images'], round(res['levels']['c5']['cosine_min'], 12)
    (1, 1.0)
    >>> round(res['levels']['c5']['max_rel'], 6)  # 8e-3 / 8
    0.001
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm  # a dependency of mmdet

from ...errors import ToolError
from ...io.fileio import atomic_write_bytes
from .store import FORMATS, load_levels, read_manifests

__all__ = ['ROI_KEYS', 'STAT_KEYS', 'compare_dumps', 'compare_maps', 'format_table']

#: the statistics the report reads, per level and per RoI array (a fixed schema)
STAT_KEYS = ('cosine_mean', 'cosine_min', 'max_rel', 'mean_rel')
#: the RoI arrays compared box by box where both dumps have them
ROI_KEYS = ('rois', 'roi_pooled')
RESULT_FILE = 'compare.json'
#: elements per float64 chunk: bounds the extra memory of one map to ~64 MiB
_CHUNK = 1 << 22
#: box coordinates (original-image pixels) further apart than this are a note
_BOX_TOL = 1e-3


# ---------------------------------------------------------------- one pair of arrays
def compare_maps(a: torch.Tensor, b: torch.Tensor) -> dict[str, float | int]:
    """Cosine, max and mean relative difference of two maps of the same shape, as
    defined in the module docstring, plus ``nonfinite`` (positions left out).

    Example:
        >>> a = torch.tensor([1., 2., 0., -4.])
        >>> compare_maps(a, a)
        {'cosine': 1.0, 'max_rel': 0.0, 'mean_rel': 0.0, 'nonfinite': 0}
        >>> r = compare_maps(a, torch.tensor([1., 2., 0.4, -4.]))
        >>> round(r['max_rel'], 6), round(r['mean_rel'], 6)  # 0.4 / 4 and 0.1 / 4
        (0.1, 0.025)
    """
    if a.shape != b.shape:
        raise ValueError(f'shapes differ: {tuple(a.shape)} and {tuple(b.shape)}')
    fa, fb = a.reshape(-1), b.reshape(-1)
    dot = na = nb = diff_sum = 0.0
    diff_max = amax_a = amax_b = 0.0
    count = nonfinite = 0
    for i in range(0, fa.numel(), _CHUNK):
        x, y = fa[i:i + _CHUNK].double(), fb[i:i + _CHUNK].double()
        finite = torch.isfinite(x) & torch.isfinite(y)
        bad = int(finite.numel() - int(finite.sum()))
        if bad:
            nonfinite += bad
            x, y = x[finite], y[finite]
        if x.numel() == 0:
            continue
        d = (x - y).abs_()
        dot += float(torch.dot(x, y))
        na += float(torch.dot(x, x))
        nb += float(torch.dot(y, y))
        diff_sum += float(d.sum())
        diff_max = max(diff_max, float(d.max()))
        amax_a = max(amax_a, float(x.abs().max()))
        amax_b = max(amax_b, float(y.abs().max()))
        count += x.numel()
    if count == 0:
        nan = float('nan')
        return {'cosine': nan, 'max_rel': nan, 'mean_rel': nan, 'nonfinite': nonfinite}
    if na == 0.0 or nb == 0.0:
        cosine = 1.0 if na == nb else 0.0
    else:
        # sqrt(na * nb), not sqrt(na) * sqrt(nb): for a == b it is na exactly, so cos is 1.0
        cosine = min(1.0, max(-1.0, dot / math.sqrt(na * nb)))
    scale = amax_a if amax_a > 0.0 else amax_b
    if scale == 0.0:  # both all zeros: no difference
        return {'cosine': cosine, 'max_rel': 0.0, 'mean_rel': 0.0, 'nonfinite': nonfinite}
    return {'cosine': cosine, 'max_rel': diff_max / scale,
            'mean_rel': diff_sum / count / scale, 'nonfinite': nonfinite}


@dataclass
class _Stats:
    """Running statistics of one level (or RoI array) over images (or boxes)."""

    n: int = 0
    cos_sum: float = 0.0
    cos_min: float = math.inf
    cos_min_at: str | None = None
    max_rel: float = -math.inf
    max_rel_at: str | None = None
    mean_rel_sum: float = 0.0
    nonfinite: int = 0
    undefined: int = 0  # maps without any finite position

    def add(self, r: dict, where: str) -> None:
        self.nonfinite += r['nonfinite']
        if math.isnan(r['cosine']):
            self.undefined += 1
            return
        self.n += 1
        self.cos_sum += r['cosine']
        self.mean_rel_sum += r['mean_rel']
        if r['cosine'] < self.cos_min:
            self.cos_min, self.cos_min_at = r['cosine'], where
        if r['max_rel'] > self.max_rel:
            self.max_rel, self.max_rel_at = r['max_rel'], where

    def result(self, unit: str) -> dict:
        none = self.n == 0
        return {'cosine_mean': None if none else self.cos_sum / self.n,
                'cosine_min': None if none else self.cos_min,
                'max_rel': None if none else self.max_rel,
                'mean_rel': None if none else self.mean_rel_sum / self.n,
                'cosine_min_' + unit: self.cos_min_at, 'max_rel_' + unit: self.max_rel_at,
                {'image': 'images', 'box': 'boxes'}[unit]: self.n, 'nonfinite': self.nonfinite,
                'undefined': self.undefined}


# ---------------------------------------------------------------- dump folders
@dataclass
class _Dump:
    """One dump folder as its index describes it."""

    folder: Path
    entries: dict[str, dict]  # matching name -> index entry
    files: dict[str, Path]  # matching name -> arrays file in this folder
    levels: list[str] = field(default_factory=list)


def _strip_format(rel: str) -> str:
    for fmt in FORMATS:
        if rel.endswith('.' + fmt):
            return rel[:-len(fmt) - 1]
    return rel


def _relative_name(file: str, folder: Path, known: Iterable[str]) -> str | None:
    """``file`` (as the index lists it) relative to ``folder``, or None.

    The index stores ``str(out_dir / rel)`` with ``out_dir`` as it was given to the dump
    (relative to that run's working directory, or absolute), so the folder may since
    have moved: then the manifests' own relative names (``known``) are matched against
    the end of the path.
    """
    p = Path(file)
    candidates = [folder, folder.resolve()]
    for base in candidates:
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            pass
    try:
        return p.resolve().relative_to(folder.resolve()).as_posix()
    except (ValueError, OSError):
        pass
    best = None
    for rel in known:
        parts = Path(rel).parts
        if p.parts[-len(parts):] == parts and (best is None or len(parts) > len(
                Path(best).parts)):
            best = rel
    return best


def _read_dump(folder: str | Path, which: str) -> _Dump:
    folder = Path(folder)
    index = folder / 'index.json'
    if not index.is_file():
        what = 'is not a folder' if not folder.is_dir() else 'has no index.json'
        raise ToolError(f'dump {which} ({folder}) {what}; dump features there first '
                        f'(rb-dump CONFIG --input IMAGES --out {folder})')
    try:
        data = json.loads(index.read_text())
        images = data['images']
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ToolError(f'{index} is not a dump index ({type(exc).__name__}: {exc}); '
                        f'rebuild it with rb-dump --rebuild-index --out {folder}') from None
    known = list(read_manifests(folder))
    entries, files = {}, {}
    for e in images:
        rel = _relative_name(e['file'], folder, known)
        if rel is None:
            raise ToolError(f"{index} lists {e['file']}, which is not in {folder} (was the "
                            f'folder moved?); rebuild the index there: rb-dump '
                            f'--rebuild-index --out {folder}')
        name = _strip_format(rel)
        entries[name], files[name] = e, folder / rel
    levels: list[str] = []
    for e in entries.values():  # every image has the same levels; keep the dump's order
        levels += [lv for lv in e.get('levels', {}) if lv not in levels]
    return _Dump(folder, entries, files, levels)


def _some(names: list[str]) -> str:
    return f' (e.g. {names[0]})' if names else ''


def _check_same(a: _Dump, b: _Dump) -> list[str]:
    """The matching names, or one line saying what differs between the two dumps."""
    only_a = sorted(set(a.entries) - set(b.entries))
    only_b = sorted(set(b.entries) - set(a.entries))
    if only_a or only_b:
        n = len(only_a)
        raise ToolError(f"{n} image{'' if n == 1 else 's'} only in A{_some(only_a)}, "
                        f'{len(only_b)} only in B{_some(only_b)}; compare dumps of the same '
                        'images '
                        f'(A: {a.folder}, B: {b.folder})')
    if not a.entries:
        raise ToolError(f'both dumps list no images (A: {a.folder}, B: {b.folder}); nothing '
                        'to compare')
    if set(a.levels) != set(b.levels):
        raise ToolError(f"levels differ: A has {','.join(a.levels)}, B has "
                        f"{','.join(b.levels)}; dump both with the same --levels")
    names = sorted(a.entries)
    for name in names:
        la, lb = a.entries[name].get('levels', {}), b.entries[name].get('levels', {})
        for lv in a.levels:
            if lv not in la or lv not in lb:
                side = 'A' if lv not in la else 'B'
                raise ToolError(f'{name}: level {lv} is missing from dump {side}\'s index; '
                                'rebuild that index (rb-dump --rebuild-index --out DIR)')
            _check_shape(name, lv, la[lv].get('shape'), lb[lv].get('shape'))
    return names


def _shape_words(shape) -> str:
    return 'x'.join(str(s) for s in shape) if shape is not None else '?'


def _check_shape(name: str, level: str, sa, sb) -> None:
    if sa is not None and sb is not None and list(sa) != list(sb):
        raise ToolError(f'{name}: level {level} has shape {_shape_words(sa)} in A and '
                        f'{_shape_words(sb)} in B; dump both with the same config (test '
                        'pipeline and input size)')


def _dtypes(d: _Dump) -> list[str]:
    seen: list[str] = []
    for e in d.entries.values():
        for lv in e.get('levels', {}).values():
            dt = lv.get('dtype')
            if dt and dt not in seen:
                seen.append(dt)
    return seen


# ---------------------------------------------------------------- RoI features
def _compare_rois(name: str, ta: dict, tb: dict, meta_a: dict, meta_b: dict,
                  stats: dict[str, _Stats], notes: list[str]) -> bool:
    """Compare one image's RoI arrays box by box; returns whether any were compared."""
    if not all(k in ta and k in tb for k in ROI_KEYS):
        return False
    na, nb = ta['rois'].shape[0], tb['rois'].shape[0]
    if na != nb:
        notes.append(f'{name}: {na} boxes in A and {nb} in B; its RoI features are not '
                     'compared')
        return False
    boxes_a = [r.get('box') for r in meta_a.get('rois') or []]
    boxes_b = [r.get('box') for r in meta_b.get('rois') or []]
    if len(boxes_a) == len(boxes_b) == na and na and None not in boxes_a + boxes_b:
        far = float((torch.tensor(boxes_a, dtype=torch.float64)
                     - torch.tensor(boxes_b, dtype=torch.float64)).abs().max())
        if far > _BOX_TOL:
            notes.append(f'{name}: the boxes differ by up to {far:.3g} px between A and B; '
                         'their RoI features describe different regions')
    for key in ROI_KEYS:
        xa, xb = ta[key], tb[key]
        if xa.shape != xb.shape:
            notes.append(f'{name}: {key} has shape {_shape_words(xa.shape)} in A and '
                         f'{_shape_words(xb.shape)} in B; not compared')
            continue
        for i in range(na):
            stats[key].add(compare_maps(xa[i], xb[i]), f'{name}#{i}')
    return True


# ---------------------------------------------------------------- the comparison
def compare_dumps(dir_a: str | Path, dir_b: str | Path, *, progress: bool = True,
                  save: bool = True) -> dict:
    """Compare dump B against dump A (the reference) image by image; see the module
    docstring for the matching, the metrics and the result's schema.

    Args:
        dir_a: the reference dump folder (its ``index.json``).
        dir_b: the dump to check; ``compare.json`` is written there.
        progress: a progress bar on stderr.
        save: write ``dir_b/compare.json`` (atomically).

    Returns:
        The result dict (what ``compare.json`` holds).

    Raises:
        ToolError: one line if a folder has no index, or if the image sets, the level
            names or a map's shape differ between the dumps.
    """
    a, b = _read_dump(dir_a, 'A'), _read_dump(dir_b, 'B')
    names = _check_same(a, b)
    levels = a.levels
    stats = {lv: _Stats() for lv in levels}
    roi_stats = {k: _Stats() for k in ROI_KEYS}
    notes: list[str] = []
    roi_images = 0
    roi_only: dict[str, int] = {'A': 0, 'B': 0}
    for name in tqdm(names, desc='compare', unit='img', disable=not progress,
                     file=sys.stderr, leave=False):
        ta, meta_a = load_levels(a.files[name])
        tb, meta_b = load_levels(b.files[name])
        for lv in levels:
            xa, xb = ta[lv], tb[lv]
            _check_shape(name, lv, list(xa.shape), list(xb.shape))  # the files, not the index
            stats[lv].add(compare_maps(xa, xb), name)
        has_a, has_b = (all(k in t for k in ROI_KEYS) for t in (ta, tb))
        if has_a != has_b:
            roi_only['A' if has_a else 'B'] += 1
        elif has_a and _compare_rois(name, ta, tb, meta_a, meta_b, roi_stats, notes):
            roi_images += 1
        del ta, tb  # one image's arrays at a time
    for side, n in roi_only.items():
        if n:
            notes.append(f"{n} image{' has' if n == 1 else 's have'} RoI features only "
                         f'in {side}; not compared')
    result = {
        'a': str(dir_a), 'b': str(dir_b), 'images': len(names),
        'levels': {lv: stats[lv].result('image') for lv in levels},
        'rois': ({k: roi_stats[k].result('box') for k in ROI_KEYS} if roi_images else None),
        'roi_images': roi_images,
        'dtypes': {'a': _dtypes(a), 'b': _dtypes(b)},
        'notes': notes,
    }
    if save:
        atomic_write_bytes(json.dumps(result, indent=1, allow_nan=False).encode(),
                           Path(dir_b) / RESULT_FILE)
    return result


# ---------------------------------------------------------------- console table
def _num(v: float | None, fmt: str) -> str:
    return '-' if v is None else format(v, fmt)


def _gap(cosine: float | None) -> str:
    """``1 - cosine``: what 9 decimals of a cosine near 1 cannot show."""
    return '-' if cosine is None else '0' if cosine == 1.0 else f'{1.0 - cosine:.1e}'


def format_table(result: dict) -> str:
    """The comparison as a console table: one row per level (and RoI array).

    Cosines are printed with 9 decimals, and ``1 - cosine_min`` in scientific notation
    (a float16 dump of a float32 one is ~1 - 2e-8; ``0`` only where it is exactly 1);
    relative differences in scientific notation. ``worst``: the image (or box) of the
    lowest cosine, where anything differs.

    Example:
        >>> s = {'cosine_mean': 1.0, 'cosine_min': 1.0, 'max_rel': 0.0, 'mean_rel': 0.0}
        >>> print(format_table({'a': 'A', 'b': 'B', 'images': 2, 'levels': {'c5': s},
        ...                     'rois': None}))  # doctest: +NORMALIZE_WHITESPACE
        A: A
        B: B
        2 images
        level  cosine mean  cosine min  1-cos min  max rel  mean rel  worst
        c5     1.000000000  1.000000000  0  0.0e+00  0.0e+00
    """
    dt = result.get('dtypes') or {}
    da = f" ({','.join(dt['a'])})" if dt.get('a') else ''
    db = f" ({','.join(dt['b'])})" if dt.get('b') else ''
    rows = [(lv, s, s.get('cosine_min_image')) for lv, s in result['levels'].items()]
    rows += [(k, s, s.get('cosine_min_box')) for k, s in (result.get('rois') or {}).items()]
    w = max([5] + [len(r[0]) for r in rows])
    lines = [f"A: {result['a']}{da}", f"B: {result['b']}{db}",
             f"{result['images']} images" + (f", RoI features of {result['roi_images']}"
                                            if result.get('roi_images') else ''),
             f"{'level':{w}s}  {'cosine mean':>11s}  {'cosine min':>11s}  {'1-cos min':>9s}  "
             f"{'max rel':>7s}  {'mean rel':>8s}  worst"]
    for name, s, worst in rows:
        worst = worst if s.get('max_rel') else ''  # no worst where nothing differs
        lines.append(f"{name:{w}s}  {_num(s['cosine_mean'], '.9f'):>11s}  "
                     f"{_num(s['cosine_min'], '.9f'):>11s}  {_gap(s['cosine_min']):>9s}  "
                     f"{_num(s['max_rel'], '.1e'):>7s}  "
                     f"{_num(s['mean_rel'], '.1e'):>8s}  {worst}".rstrip())
        if s.get('nonfinite'):
            lines[-1] += f"  ({s['nonfinite']} non-finite values left out)"
    lines += result.get('notes') or []
    return '\n'.join(lines)
