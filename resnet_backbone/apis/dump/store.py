"""What a feature dump leaves on disk: array files, per-rank manifests, the index.

- **Array files**, one per image (``safetensors``, ``npz`` or ``pt``): every requested
  level and a JSON metadata record. Written atomically (complete or absent).
- **Manifests**, ``manifests/rank-<R>.jsonl``: one JSON line per image, appended and
  flushed right after its array file, by the rank that wrote it. An image is done when
  its line says so and its file exists; a re-run reads these lines (one small file per
  rank) instead of opening every array file. A line cut short by a kill is ignored.
- **The index**, ``index.json`` and ``index.csv``: built from the manifests (the latest
  line per file whose file exists) at the end of a run, or again with
  ``rb-dump --rebuild-index --out DIR``.

Example:
    >>> import tempfile, torch
    >>> out = Path(tempfile.mkdtemp())
    >>> nbytes = save_levels(out / 'a.png.safetensors', {'c5': torch.ones(1, 4, 2, 2)},
    ...                      {'levels': {}}, 'safetensors')
    >>> levels, meta = load_levels(out / 'a.png.safetensors')
    >>> tuple(levels['c5'].shape), nbytes > 64
    ((1, 4, 2, 2), True)
"""
from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ...errors import ToolError
from ...io.fileio import atomic_path, atomic_write_bytes
from ...spec import check_choice
from ...version import __version__
from ..features import FeatureExtractor, settings_digest, state_dict_digest

#: safetensors first: the default (uncompressed, no zip CRC; measured in docs/dumping.md)
FORMATS = ('safetensors', 'npz', 'pt')
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
MANIFESTS = 'manifests'


def check_format_dtype(fmt: str, dtype: str) -> None:
    """One line for a storage choice that cannot work: numpy has no bfloat16."""
    check_choice('format', fmt, FORMATS, quote=False)
    check_choice('dtype', dtype, DTYPES, quote=False)
    if fmt == 'npz' and dtype == 'bfloat16':
        raise ToolError('--dtype bfloat16 cannot be stored in --format npz (numpy has no '
                        'bfloat16 type); use --format safetensors or pt, or --dtype float16')


# ---------------------------------------------------------------- array files
def save_levels(path: Path, levels: dict[str, torch.Tensor], meta: dict, fmt: str) -> int:
    """Write ``levels`` and the JSON ``meta`` record to ``path`` atomically; returns the
    file's size in bytes."""
    meta_json = json.dumps(meta)
    with atomic_path(path) as tmp:
        if fmt == 'safetensors':
            from safetensors.torch import save_file  # optional: only for this format
            save_file({k: v.cpu().contiguous() for k, v in levels.items()}, str(tmp),
                      metadata={'meta': meta_json})
        elif fmt == 'npz':
            with open(tmp, 'wb') as f:
                np.savez(f, __meta__=np.array(meta_json),
                         **{k: v.cpu().numpy() for k, v in levels.items()})
        elif fmt == 'pt':
            torch.save({'levels': {k: v.cpu() for k, v in levels.items()}, 'meta': meta_json},
                       tmp)
        else:
            check_choice('format', fmt, FORMATS, quote=False)
        size = tmp.stat().st_size
    return size


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
    raise ValueError(f'{path}: unknown feature file type; allowed: .safetensors, .npz, .pt')


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
    fp = {'config': config, 'weights': weights, 'levels': list(fx.levels),
          'dtype': dtype, 'format': fmt, 'tool': f'resnet_backbone {__version__}'}
    # only when set: fp32 eager records keep the fingerprint they were written with
    if getattr(fx, 'compute_dtype', 'fp32') != 'fp32':
        fp['compute_dtype'] = fx.compute_dtype
    if getattr(fx, 'compile', False):
        fp['compiled'] = True  # Inductor's rounding differs from eager's (within 1e-5)
    return fp


def fingerprint_difference(stored: dict | None, current: dict) -> str | None:
    """None if ``stored`` equals ``current``; else what differs, in words."""
    if not isinstance(stored, dict):
        return 'an older version that stored no fingerprint'
    if stored == current:
        return None
    words = {'config': 'another config (model or test pipeline)', 'weights': 'other weights'}
    parts = []
    for key in dict.fromkeys([*current, *stored]):
        old, new = stored.get(key), current.get(key)
        if old == new:
            continue
        if key in words:
            parts.append(words[key])
        elif key == 'compute_dtype':
            parts.append(f"compute dtype {old or 'fp32'} (now {new or 'fp32'})")
        elif key == 'compiled':
            parts.append('a compiled backbone (now eager)' if old else
                         'the eager backbone (now compiled)')
        elif key == 'levels':
            parts.append(f"levels {','.join(old or [])} (now {','.join(new)})")
        else:
            parts.append(f'{key} {old} (now {new})')
    return ', '.join(parts) or 'another fingerprint'


# ---------------------------------------------------------------- manifests
def manifest_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / MANIFESTS / f'rank-{rank:05d}.jsonl'


class Manifest:
    """One rank's append-only record of what it wrote: a JSON line per image, flushed as
    written. Thread-safe (the dump's writer threads share it)."""

    def __init__(self, out_dir: Path, rank: int) -> None:
        self.path = manifest_path(out_dir, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, 'a', encoding='utf-8')  # noqa: SIM115 - closed in close()
        if _ends_mid_line(self.path):  # a line cut short by a kill: start a line of our own
            self._file.write('\n')
            self._file.flush()

    def append(self, record: dict) -> None:
        line = json.dumps(record, separators=(',', ':')) + '\n'
        with self._lock:
            self._file.write(line)
            self._file.flush()  # a kill after this line keeps it

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _ends_mid_line(path: Path) -> bool:
    """True if ``path`` is not empty and its last byte is not a newline."""
    with open(path, 'rb') as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b'\n'


def read_manifests(out_dir: Path) -> dict[str, dict]:
    """The latest record per output file (its path relative to ``out_dir``), from every
    rank's manifest. Lines that do not parse (cut short by a kill) are ignored."""
    latest: dict[str, dict] = {}
    folder = Path(out_dir) / MANIFESTS
    if not folder.is_dir():
        return latest
    for path in sorted(folder.glob('rank-*.jsonl')):
        with open(path, encoding='utf-8') as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(rec, dict) or 'file' not in rec:
                    continue
                old = latest.get(rec['file'])
                if old is None or rec.get('time', 0) >= old.get('time', 0):
                    latest[rec['file']] = rec
    return latest


class ManifestTail:
    """New records appended to the manifests since it was made (every rank's): how rank 0
    follows the other ranks' progress for one bar, without any collective call."""

    def __init__(self, out_dir: Path) -> None:
        self.folder = Path(out_dir) / MANIFESTS
        self.offsets = {p: p.stat().st_size for p in self._files()}

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob('rank-*.jsonl')) if self.folder.is_dir() else []

    def poll(self, skip: Path | None = None) -> list[dict]:
        """Records appended since the last poll (whole lines only), except ``skip``'s."""
        new = []
        for path in self._files():
            if path == skip:
                continue
            start = self.offsets.get(path, 0)
            with open(path, 'rb') as f:
                f.seek(start)
                chunk = f.read()
            end = chunk.rfind(b'\n') + 1  # a line being written waits for the next poll
            self.offsets[path] = start + end
            for line in chunk[:end].splitlines():
                try:
                    new.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return new


# ---------------------------------------------------------------- the index
def index_entry(image: str, file: str, meta: dict) -> dict:
    entry = {'image': image, 'file': file, 'ori_shape': meta.get('ori_shape'),
             'img_shape': meta.get('img_shape'), 'pad_shape': meta.get('pad_shape'),
             'scale_factor': meta.get('scale_factor'), 'levels': meta.get('levels', {})}
    if 'rois' in meta:  # the boxes (original pixels), labels, scores, image ids, levels
        entry['rois'] = meta['rois']
        entry['image_id'] = meta.get('image_id')  # COCO's (--rois gt), else None
    return entry


def build_index(out_dir: Path, images: list[str] | None = None) -> tuple[Path, int, int]:
    """Write ``index.json`` and ``index.csv`` from the manifests: every file whose latest
    record says dumped and which exists, and the images whose latest record says skipped.
    ``images``: only these input images (a run's own), else every record. Returns
    (index path, images listed, images skipped)."""
    out_dir = Path(out_dir)
    wanted = set(images) if images is not None else None
    entries, skipped = [], []
    for rel, rec in sorted(read_manifests(out_dir).items()):
        if wanted is not None and rec.get('image') not in wanted:
            continue
        if rec.get('status') == 'skipped':
            skipped.append({'image': rec['image'], 'reason': rec.get('reason', '')})
        elif rec.get('status') == 'dumped' and (out_dir / rel).is_file():
            entries.append(index_entry(rec['image'], str(out_dir / rel), rec.get('meta', {})))
    index = {'images': entries, 'skipped': skipped}
    atomic_write_bytes(json.dumps(index, indent=1).encode(), out_dir / 'index.json')
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(['image', 'file', 'level', 'stride', 'shape', 'min', 'max', 'mean', 'std',
                     'zeros', 'nonfinite'])
    for e in entries:
        for name, lv in e['levels'].items():
            writer.writerow([e['image'], e['file'], name, lv['stride'],
                             'x'.join(str(s) for s in lv['shape']),
                             *(f"{lv[k]:.6g}" for k in ('min', 'max', 'mean', 'std')),
                             f"{lv.get('zeros', float('nan')):.6g}", lv.get('nonfinite', '')])
    atomic_write_bytes(buf.getvalue().encode(), out_dir / 'index.csv')
    return out_dir / 'index.json', len(entries), len(skipped)


def record(status: str, image: str, rel: str, *, rank: int, **fields) -> dict:
    """One manifest line: ``status`` is ``'dumped'`` or ``'skipped'``."""
    return {'status': status, 'image': image, 'file': rel, 'rank': rank,
            'time': time.time(), 'pid': os.getpid(), **fields}
