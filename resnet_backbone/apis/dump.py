"""Dump feature maps of many images to disk: arrays + geometry + index + overlays.

One file per image (``npz``, ``pt`` or ``safetensors``) holds every requested level and
a JSON metadata record (geometry, strides, per-level stats, weights used). An index
(``index.json`` and ``index.csv``) lists every image with its levels, shapes and stats.
Writes are atomic, images already dumped are skipped (unless ``overwrite``), and an
unreadable image is skipped with a one-line warning: an interrupted run is simply run
again.

**Fingerprints.** Each record stores ``meta['fingerprint']``, what produced it: the
config (:func:`~resnet_backbone.apis.features.config_digest`: the resolved model and test
pipeline), the weights (sha256 of the checkpoint file; the seed for random weights; a
digest of the tensors for a model passed in), the levels, the dtype, the format and the
package version. A file already in the output folder is reused only if its fingerprint
equals this run's. If any differs, the dump **stops before writing anything**, with one
line naming the first such file, what differs, and ``--overwrite`` (which removes those
stale records and redoes every image). Stale results are never reused, and earlier
results are never replaced unless asked. Without a config (an extractor built from a
model), the test pipeline and the data preprocessor's settings (mean, std, padding) stand
for the config.

**Replaced images.** Each record also stores ``meta['source']``, the size and mtime (ns)
of its image file when it was read. An image whose file changed since (replaced at the
same path) is re-dumped, that image only, without ``--overwrite``: the settings are the
same, the user changed the input, so the old features are plainly out of date.

**Skipped images.** Only a fault of the image itself is skipped with a warning: a missing
file, a file that does not decode, an image the test pipeline drops. Any other error (out
of memory, a dtype error, a bug in the model) stops the run.

**Completion marker.** The record (the arrays file) is written last, after the overlays,
and every file is written atomically: an existing record means the image is complete,
overlays included, so Ctrl-C or a kill at any moment leaves no partial file and no image
with arrays but without its overlays; running the same command again continues.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm  # a dependency of mmdet

from ..cli import ToolError
from ..io.fileio import atomic_path, atomic_write_bytes
from ..spec import check_choice
from ..version import __version__
from .features import (
    FeatureExtractor,
    UnreadableImageError,
    level_stats,
    settings_digest,
    state_dict_digest,
    unpad_to_original,
)
from .visualize import blend, channel_grid, feature_sheet, save_png

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
FORMATS = ('npz', 'pt', 'safetensors')
DTYPES = {'float32': torch.float32, 'float16': torch.float16}
OVERLAY_MODES = ('mean', 'topk')
NO_SUCH_FILE = 'no such file'


@dataclass
class DumpSummary:
    dumped: int = 0
    already_there: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    seconds: float = 0.0
    index: Path | None = None

    def line(self) -> str:
        per = f', {self.seconds / self.dumped:.2f} s/image' if self.dumped else ''
        return (f'dumped {self.dumped}, already there {self.already_there}, '
                f'skipped {self.skipped_words()}{per}; index: {self.index}')

    def skipped_words(self) -> str:
        """``'2 unreadable'``, ``'1 no such file'`` or ``'3 (2 unreadable, 1 no such file)'``."""
        missing = sum(reason == NO_SUCH_FILE for _, reason in self.skipped)
        unreadable = len(self.skipped) - missing
        if missing and unreadable:
            return f'{len(self.skipped)} ({unreadable} unreadable, {missing} {NO_SUCH_FILE})'
        return f'{missing} {NO_SUCH_FILE}' if missing else f'{unreadable} unreadable'

    @property
    def nothing_dumped(self) -> bool:
        """Every image was skipped: nothing dumped now, nothing there from before."""
        return bool(self.skipped) and not (self.dumped or self.already_there)


def collect_images(path: str | Path) -> tuple[list[Path], Path]:
    """Images named by ``path`` (a file, a folder searched recursively, or a ``.txt``
    list, one path per line, relative to the list's folder) and their common root."""
    path = Path(path)
    if path.is_dir():
        images = sorted(p for p in path.rglob('*')
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        return images, path
    if path.is_file() and path.suffix.lower() == '.txt':
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        images = [(path.parent / ln) if not Path(ln).is_absolute() else Path(ln)
                  for ln in lines if ln and not ln.startswith('#')]
        root = Path(_common_dir(images)) if images else path.parent
        return images, root
    if path.is_file():
        return [path], path.parent
    raise FileNotFoundError(f'--input {path}: no such file or folder')


def _common_dir(paths: Sequence[Path]) -> str:
    return os.path.commonpath([str(p.resolve().parent) for p in paths])


def _relative(image: Path, root: Path) -> Path:
    try:
        return image.resolve().relative_to(root.resolve())
    except ValueError:
        return Path(image.name)


def output_path(image: Path, root: Path, out_dir: Path, fmt: str) -> Path:
    rel = _relative(image, root)
    return out_dir / rel.parent / f'{rel.name}.{fmt}'


# ---------------------------------------------------------------- file formats
def save_levels(path: Path, levels: dict[str, torch.Tensor], meta: dict, fmt: str) -> None:
    """Write ``levels`` and the JSON ``meta`` record to ``path`` atomically."""
    meta_json = json.dumps(meta)
    with atomic_path(path) as tmp:
        if fmt == 'npz':
            with open(tmp, 'wb') as f:
                np.savez(f, __meta__=np.array(meta_json),
                         **{k: v.cpu().numpy() for k, v in levels.items()})
        elif fmt == 'pt':
            torch.save({'levels': {k: v.cpu() for k, v in levels.items()}, 'meta': meta_json},
                       tmp)
        elif fmt == 'safetensors':
            from safetensors.torch import save_file  # optional: only for this format
            save_file({k: v.cpu().contiguous() for k, v in levels.items()}, str(tmp),
                      metadata={'meta': meta_json})
        else:
            check_choice('format', fmt, FORMATS, quote=False)


def load_levels(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a dumped file back: (levels, meta)."""
    path = Path(path)
    if path.suffix == '.npz':
        with np.load(path) as z:
            meta = json.loads(str(z['__meta__']))
            return {k: torch.from_numpy(z[k]) for k in z.files if k != '__meta__'}, meta
    if path.suffix == '.pt':
        d = torch.load(path, weights_only=True)
        return d['levels'], json.loads(d['meta'])
    if path.suffix == '.safetensors':
        from safetensors import safe_open  # optional: only for this format
        with safe_open(str(path), framework='pt') as f:
            meta = json.loads(f.metadata()['meta'])
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    raise ValueError(f'{path}: unknown feature file type; allowed: .npz, .pt, .safetensors')


def read_meta(path: Path) -> dict:
    """The JSON record of a dumped file, without reading its arrays (npz members and
    safetensors metadata are read on their own; a ``.pt`` file is memory-mapped)."""
    if path.suffix == '.npz':
        with np.load(path) as z:
            return json.loads(str(z['__meta__']))
    if path.suffix == '.safetensors':
        from safetensors import safe_open  # optional: only for this format
        with safe_open(str(path), framework='pt') as f:
            return json.loads(f.metadata()['meta'])
    if path.suffix == '.pt':  # memory-mapped: the arrays' bytes are never read
        return json.loads(torch.load(path, weights_only=True, mmap=True)['meta'])
    return load_levels(path)[1]


# ---------------------------------------------------------------- fingerprints
def fingerprint(fx: FeatureExtractor, *, dtype: str, fmt: str) -> dict:
    """What produces this run's records; a record is reused only if it stored the same."""
    w = fx.weights
    if w.get('sha256'):
        weights = {'file_sha256': w['sha256']}
        if w.get('seed') is not None:
            weights['seed'] = w['seed']  # part of the detector is random (seeded)
    elif w.get('source') == 'random':
        weights = {'random_seed': w.get('seed')}
    else:  # a model passed in, or weights by URL: the tensors themselves
        weights = {'state_sha256': state_dict_digest(fx.model)}
    # no config (an extractor built from a model): its pipeline and preprocessor settings
    config = fx.config_sha256 or {'pipeline_and_preprocessor': settings_digest(fx)}
    return {'config': config, 'weights': weights, 'levels': list(fx.levels),
            'dtype': dtype, 'format': fmt, 'tool': f'resnet_backbone {__version__}'}


def fingerprint_difference(stored: dict | None, current: dict) -> str | None:
    """None if ``stored`` equals ``current``; else what differs, in words."""
    if not isinstance(stored, dict):
        return 'an older version that stored no fingerprint'
    if stored == current:
        return None
    words = {'config': 'another config (model or test pipeline)', 'weights': 'other weights'}
    parts = []
    for key in current:
        old, new = stored.get(key), current[key]
        if old == new:
            continue
        if key in words:
            parts.append(words[key])
        elif key == 'levels':
            parts.append(f"levels {','.join(old or [])} (now {','.join(new)})")
        else:
            parts.append(f'{key} {old} (now {new})')
    return ', '.join(parts) or 'another fingerprint'


# ---------------------------------------------------------------- the output folder
def check_out_dir(out_dir: str | Path) -> None:
    """Raise one line naming ``out_dir`` if it cannot be created or written; writes nothing."""
    out = Path(out_dir)
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ToolError(f'output folder {out} cannot be created: {probe} is a file, not a '
                        'folder; choose another output folder (--out)')
    if not os.access(probe, os.W_OK | os.X_OK):
        which = 'is' if probe == out else f'cannot be created: {probe} is'
        raise ToolError(f'output folder {out} {which} not writable; choose a writable '
                        'output folder (--out) or change its permissions')


@contextlib.contextmanager
def _writable(out_dir: Path) -> Iterator[None]:
    """Turn an OS error while writing into one line naming the output folder."""
    try:
        yield
    except OSError as exc:
        if not str(exc.filename or '').startswith(str(out_dir)):
            raise  # not about the output folder (e.g. an image PIL cannot read)
        reason = exc.strerror or type(exc).__name__
        raise ToolError(f'output folder {out_dir}: cannot write there ({reason}: '
                        f'{exc.filename}); choose a writable output folder (--out)') from exc


# ---------------------------------------------------------------- overlays
def overlay_stem(image: Path, root: Path, out_dir: Path) -> Path:
    rel = _relative(image, root)
    return out_dir / 'overlays' / rel.parent / rel.name


def write_overlays(image_path: Path, levels: dict[str, torch.Tensor], strides: dict[str, int],
                   meta: dict, stem: Path, mode: str = 'mean', topk: int = 9) -> Path:
    """Per-level heatmaps on the original image, and the side-by-side sheet (written
    last; every PNG atomically).

    ``mean``: mean of |activation| over channels; ``topk``: the ``topk`` channels with
    the highest mean activation, one tile each, in a grid per level.
    """
    image = np.asarray(Image.open(image_path).convert('RGB'))
    heats = {}
    for name, t in levels.items():
        fmap = t[0].float()
        heat = unpad_to_original(fmap.abs().mean(0), strides[name], meta).numpy()
        heats[name] = heat
        if mode == 'topk':
            order = fmap.flatten(1).mean(1).argsort(descending=True)[:topk].tolist()
            channel_grid(image, [unpad_to_original(fmap[c], strides[name], meta).numpy()
                                 for c in order], [f'{name} ch{c}' for c in order],
                         stem.with_name(f'{stem.name}.{name}.topk.png'))
        else:
            save_png(Image.fromarray(blend(image, heat)),
                     stem.with_name(f'{stem.name}.{name}.png'))
    return feature_sheet(image, heats, strides, stem.with_name(f'{stem.name}.sheet.png'))


def source_stamp(image: Path) -> dict | None:
    """What tells a replaced image file: its size and mtime (ns). None if it is gone."""
    try:
        st = image.stat()
    except OSError:
        return None
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


def _done(meta: dict, sheet: Path, overlay: bool, overlay_mode: str) -> bool:
    """A record (matching fingerprint) is a complete image, unless overlays are asked
    for and it was dumped without them (or in another mode)."""
    return not overlay or (meta.get('overlay') == overlay_mode and sheet.is_file())


# ---------------------------------------------------------------- the loop
def dump_features(fx: FeatureExtractor, images: Sequence[Path], root: Path, out_dir: Path, *,
                  fmt: str = 'npz', dtype: str = 'float32', overlay: bool = False,
                  overlay_mode: str = 'mean', overwrite: bool = False, config: str | None = None,
                  progress: bool = True) -> DumpSummary:
    """Dump ``images`` through ``fx`` into ``out_dir``; returns what happened.

    Files already there are reused if their fingerprint matches this run's; a mismatch
    raises :class:`~resnet_backbone.cli.ToolError` before anything is written, unless
    ``overwrite`` (then stale records are removed first and every image is redone). See
    the module docstring.
    """
    check_choice('format', fmt, FORMATS, quote=False)
    check_choice('dtype', dtype, DTYPES, quote=False)
    check_choice('overlay_mode', overlay_mode, OVERLAY_MODES, quote=False)
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    fp = fingerprint(fx, dtype=dtype, fmt=fmt)
    existing, stale = _existing_records(images, root, out_dir, fmt, fp)
    if stale and not overwrite:
        target, why = stale[0]
        raise ToolError(f'{len(stale)} of the {len(existing) + len(stale)} files already in '
                        f'{out_dir} were dumped with {why} (e.g. {target}); pass --overwrite '
                        'to redo every image with these settings, or choose another output '
                        'folder; nothing was written')
    with _writable(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        for target, _ in stale:  # overwrite: no stale record may outlive this run's start
            target.unlink(missing_ok=True)
    summary = DumpSummary()
    entries = []
    t0 = time.time()
    bar = tqdm(images, desc='dump', unit='img', disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    for image in bar:
        target = output_path(image, root, out_dir, fmt)
        stem = overlay_stem(image, root, out_dir)
        sheet = stem.with_name(f'{stem.name}.sheet.png')
        meta = existing.get(target)
        if meta is not None and not overwrite and _done(meta, sheet, overlay, overlay_mode):
            summary.already_there += 1
            entries.append(_entry(image, target, meta))
            continue
        source = source_stamp(image)  # before reading: a later change shows next run
        try:
            if not image.is_file():  # e.g. a stale line of a .txt list
                raise FileNotFoundError(NO_SUCH_FILE)
            record = fx(image)
        except (FileNotFoundError, UnreadableImageError) as exc:  # this image's fault only;
            # anything else (out of memory, a dtype error, a model bug) stops the run
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            summary.skipped.append((str(image), reason))
            tqdm.write(f'WARNING: skipped {image}: {reason}', file=sys.stderr)
            continue
        levels = {k: v.to(DTYPES[dtype]) for k, v in record.levels.items()}
        meta = dict(record.meta)
        meta['levels'] = {k: {'shape': list(v.shape), 'stride': record.strides[k],
                              'dtype': dtype, **level_stats(record.levels[k])}
                          for k, v in levels.items()}
        meta['weights'] = fx.weights
        meta['config'] = config
        meta['format'] = fmt
        meta['fingerprint'] = fp
        meta['source'] = source
        meta['overlay'] = overlay_mode if overlay else None
        with _writable(out_dir):
            if overlay:  # before the record: the record marks the image complete
                write_overlays(image, record.levels, record.strides, meta, stem,
                               mode=overlay_mode)
            save_levels(target, levels, meta, fmt)
        entries.append(_entry(image, target, meta))
        summary.dumped += 1
    summary.seconds = time.time() - t0
    with _writable(out_dir):
        summary.index = write_index(out_dir, entries, summary)
    return summary


def _existing_records(images: Sequence[Path], root: Path, out_dir: Path, fmt: str,
                      fp: dict) -> tuple[dict[Path, dict], list[tuple[Path, str]]]:
    """Records already in ``out_dir`` for ``images``: {target: meta} of those matching
    ``fp``, and [(target, what differs)] of the stale ones. An unreadable record (not
    written by this module), or one whose image file changed since (size or mtime), counts
    as absent and is redone. Only the records' metadata is read, never their arrays."""
    existing, stale = {}, []
    if not out_dir.is_dir():
        return existing, stale
    for image in images:
        target = output_path(image, root, out_dir, fmt)
        if not target.is_file():
            continue
        try:
            meta = read_meta(target)
        except Exception:  # noqa: BLE001 - unreadable: redo it
            continue
        why = fingerprint_difference(meta.get('fingerprint'), fp)
        if why is None:
            if meta.get('source') is None or meta['source'] != source_stamp(image):
                continue  # the image was replaced (or is gone): redo it, settings are the same
            existing[target] = meta
        else:
            stale.append((target, why))
    return existing, stale


def _entry(image: Path, target: Path, meta: dict) -> dict:
    return {'image': str(image), 'file': str(target), 'ori_shape': meta.get('ori_shape'),
            'img_shape': meta.get('img_shape'), 'pad_shape': meta.get('pad_shape'),
            'scale_factor': meta.get('scale_factor'), 'levels': meta.get('levels', {})}


def write_index(out_dir: Path, entries: list[dict], summary: DumpSummary) -> Path:
    """``index.json`` (everything) and ``index.csv`` (one row per image and level)."""
    index = {'images': entries,
             'skipped': [{'image': i, 'reason': r} for i, r in summary.skipped]}
    atomic_write_bytes(json.dumps(index, indent=1).encode(), out_dir / 'index.json')
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(['image', 'file', 'level', 'stride', 'shape', 'min', 'max', 'mean', 'std'])
    for e in entries:
        for name, lv in e['levels'].items():
            writer.writerow([e['image'], e['file'], name, lv['stride'],
                             'x'.join(str(s) for s in lv['shape']), f"{lv['min']:.6g}",
                             f"{lv['max']:.6g}", f"{lv['mean']:.6g}", f"{lv['std']:.6g}"])
    atomic_write_bytes(buf.getvalue().encode(), out_dir / 'index.csv')
    return out_dir / 'index.json'
