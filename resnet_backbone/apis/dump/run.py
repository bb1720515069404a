"""Dump feature maps of a whole data set: overlapped, batched, distributed, resumable.

The run, per process (rank):

1. **Plan.** Every input image's output file is looked up in the manifests
   (:mod:`~resnet_backbone.apis.dump.store`): reading one JSON line per image, not the
   arrays files. An image is done when its latest record has this run's fingerprint, its
   image file is unchanged (size and mtime), its arrays file exists and (with
   ``--overlay``) its overlays were drawn the same way. A file that has no record (from
   an older version, or a kill between the file and its record) is read for its
   metadata, as before. Every rank plans every image, so all agree.
2. **Shard.** Image ``i`` (of the sorted input list) belongs to rank ``i % world_size``:
   disjoint and deterministic, whatever was done before.
3. **Load** in DataLoader workers (``workers``): decoding and the config's test pipeline.
4. **Batch** (``batch_size``) only images with the same padded input shape, so that each
   gets exactly its batch-1 input. In reference mode (``fast=False``, or a backbone not
   ours) the images of a batch still run one at a time: oneDNN and cuDNN choose kernels
   by batch size, and batched results differ from batch-1 in the last bits. An
   out-of-memory error in a batch retries that batch one image at a time (said once).
5. **Write** beside the next forward: writer threads (``writers``) behind a bounded queue
   take the maps, compute statistics (float32), cast to the storage dtype, draw overlays
   (:mod:`~resnet_backbone.apis.dump.overlay`), write the arrays file, then append the
   manifest record. Only the forward is on the critical path, and memory stays bounded.
6. **Index.** Rank 0 follows all ranks' manifests for one progress bar, then writes
   ``index.json``/``index.csv`` once.

**Fingerprints.** Each record stores what produced it: the config
(:func:`~resnet_backbone.apis.features.config_digest`), the weights (sha256 of the
checkpoint; the seed for random weights; a digest of the tensors for a model passed in),
the levels, the dtype, the format and the package version. If a file already in the
folder was made with anything else, the dump **stops before writing anything**, with one
line naming the first such file, what differs, and ``--overwrite`` (which removes those
files and redoes every image). An image whose file changed since it was dumped is redone,
that image only.

**Faults.** Only a fault of the image itself is skipped, with one line: a missing file,
a file that does not decode, an image the test pipeline drops. Any other error stops the
run; a write error (a full disk, a read-only folder) is one line naming the folder. Every
file is written atomically and its record after it, so Ctrl-C or a kill of any rank
leaves no partial file: running the same command again does only what is missing.
"""
from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm  # a dependency of mmdet

from ...errors import ToolError
from ...io.fileio import remove_dead_writers_temp_files
from ...spec import check_choice
from ..features import FeatureExtractor, FeatureRecord, PredictedBoxes, level_stats
from ..images import UnreadableImageError, build_pipeline, load_image
from .overlay import DEFAULT_MAX_SIDE, OVERLAY_MODES, OverlayScale, write_overlays
from .report import write_report
from .rois import lookup
from .store import (
    DTYPES,
    FORMATS,
    Manifest,
    ManifestTail,
    build_index,
    check_format_dtype,
    fingerprint,
    fingerprint_difference,
    index_entry,
    load_levels,
    read_manifests,
    read_meta,
    record,
    save_levels,
)

__all__ = ['DTYPES', 'FORMATS', 'OVERLAY_MODES', 'DumpOptions', 'DumpSummary', 'RoISource',
           'collect_images', 'dump_features', 'fingerprint', 'load_levels', 'output_path',
           'read_meta', 'save_levels']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
NO_SUCH_FILE = 'no such file'


@dataclass
class DumpSummary:
    """What a dump did, over all ranks."""

    dumped: int = 0
    already_there: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    seconds: float = 0.0
    bytes: int = 0
    ranks: int = 1
    index: Path | None = None
    removed_temp: int = 0  # temporary files of killed writers removed at the start

    def line(self) -> str:
        rate = ''
        if self.dumped:
            mb = self.bytes / 1e6
            rate = (f', {self.seconds / self.dumped:.2f} s/image '
                    f'({self.dumped / self.seconds:.2f} images/s, '
                    f'{mb / self.seconds:.3g} MB/s, {mb / self.dumped:.3g} MB/image)')
        ranks = f' on {self.ranks} ranks' if self.ranks > 1 else ''
        temp = (f', removed {self.removed_temp} temporary '
                f'file{"s" * (self.removed_temp != 1)} of killed writers'
                if self.removed_temp else '')
        skipped = f', skipped {self.skipped_words()}' if self.skipped else ''
        return (f'dumped {self.dumped}{ranks}, already there {self.already_there}'
                f'{skipped}{rate}{temp}; index: {self.index}')

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


@dataclass
class RoISource:
    """Where a dump's RoI boxes come from: ``kind`` ``'gt'`` (a COCO annotation file),
    ``'file'`` (a JSON/CSV box file) with their ``table`` (see
    :mod:`resnet_backbone.apis.dump.rois`), or ``'pred'`` (the detector's predictions)."""

    kind: str
    table: dict | None = None
    path: str | None = None
    sha256: str | None = None
    score_thr: float = 0.3
    max_per_image: int = 100

    def fingerprint(self) -> dict:
        """What of it decides the stored features (part of the dump's fingerprint)."""
        if self.kind == 'pred':
            return {'kind': 'pred', 'score_thr': self.score_thr,
                    'max_per_image': self.max_per_image}
        return {'kind': self.kind, 'file_sha256': self.sha256}

    def request(self, images: Sequence[Path]):
        if self.kind == 'pred':
            return PredictedBoxes(self.score_thr, self.max_per_image)
        what = 'the annotation file' if self.kind == 'gt' else 'the box file'
        return [lookup(self.table, str(image), what) for image in images]


# ---------------------------------------------------------------- inputs and outputs
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


def overlay_stem(image: Path, root: Path, out_dir: Path) -> Path:
    rel = _relative(image, root)
    return out_dir / 'overlays' / rel.parent / rel.name


def source_stamp(image: Path) -> dict | None:
    """What tells a replaced image file: its size and mtime (ns). None if it is gone."""
    try:
        st = image.stat()
    except OSError:
        return None
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns}


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


# ---------------------------------------------------------------- the plan
@dataclass
class _Plan:
    todo: set[str] = field(default_factory=set)  # str(image)
    done: int = 0
    stale: list[tuple[Path, str]] = field(default_factory=list)  # (file, what differs)
    adopt: dict[str, dict] = field(default_factory=dict)  # str(image) -> record to append


def _plan(images: Sequence[Path], root: Path, out_dir: Path, fp: dict,
          options: DumpOptions) -> _Plan:
    """What is done and what is to do, from the manifests (see the module docs); raises
    one line, before anything is written, for files dumped with other settings."""
    plan = _Plan()
    fmt, overlay, overwrite = options.fmt, options.overlay, options.overwrite
    records = read_manifests(out_dir)
    for image in images:
        target = output_path(image, root, out_dir, fmt)
        rel = str(target.relative_to(out_dir))
        rec = records.get(rel)
        if not target.is_file():
            plan.todo.add(str(image))
            continue
        if rec is None or rec.get('status') != 'dumped':
            # a file without its record: an older version's, or a kill between the two
            try:
                meta = read_meta(target)
            except Exception:  # noqa: BLE001 - unreadable (not written here): redo it
                plan.todo.add(str(image))
                continue
            rec = {'fingerprint': meta.get('fingerprint'), 'source': meta.get('source'),
                   'overlay': meta.get('overlay'),
                   'overlay_max_side': meta.get('overlay_max_side'),
                   'meta': index_entry(str(image), rel, meta)}
            plan.adopt[str(image)] = rec
        why = fingerprint_difference(rec.get('fingerprint'), fp)
        if why is not None:
            plan.stale.append((target, why))
            plan.todo.add(str(image))
            plan.adopt.pop(str(image), None)
            continue
        stem = overlay_stem(image, root, out_dir)
        drawn = (rec.get('overlay') == options.overlay_mode
                 and rec.get('overlay_max_side') == options.overlay_max_side
                 and stem.with_name(f'{stem.name}.sheet.png').is_file())
        if (overwrite or rec.get('source') is None or rec['source'] != source_stamp(image)
                or (overlay and not drawn)):
            plan.todo.add(str(image))  # replaced image, no overlays yet, or --overwrite
            plan.adopt.pop(str(image), None)
        else:
            plan.done += 1
    if plan.stale and not overwrite:
        target, why = plan.stale[0]
        raise ToolError(f'{len(plan.stale)} of the files already in {out_dir} were dumped '
                        f'with {why} (e.g. {target}); pass --overwrite to redo every image '
                        'with these settings, or choose another output folder; nothing was '
                        'written')
    return plan


# ---------------------------------------------------------------- loading
@dataclass
class _Item:
    index: int
    image: Path
    source: dict | None
    sample: dict | None = None
    reason: str | None = None  # why it was skipped


class _Images(Dataset):
    """The test pipeline on image files, in DataLoader workers; a fault of an image is an
    item with a reason, never an exception (the worker goes on)."""

    def __init__(self, pipeline_cfg: Sequence[dict], images: Sequence[Path]) -> None:
        self.pipeline_cfg, self.images = list(pipeline_cfg), list(images)
        self._pipeline = None

    def __getstate__(self) -> dict:  # a worker builds its own transforms
        return {**self.__dict__, '_pipeline': None}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> _Item:
        image = self.images[i]
        item = _Item(i, image, source_stamp(image))  # before reading: a later change shows
        try:
            if not image.is_file():  # e.g. a stale line of a .txt list
                raise FileNotFoundError(NO_SUCH_FILE)
            if self._pipeline is None:
                self._pipeline = build_pipeline(self.pipeline_cfg)
            item.sample = load_image(self._pipeline, image)
        except (FileNotFoundError, UnreadableImageError) as exc:  # this image's fault only
            item.reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return item


def _identity(item):
    return item


def _batches(items: Iterator[_Item], fx: FeatureExtractor,
             batch_size: int) -> Iterator[list[_Item]]:
    """Groups of up to ``batch_size`` loaded items with one padded shape; a skipped item
    alone. At most 4 batches' worth are held back waiting for company."""
    held: dict[tuple[int, int], list[_Item]] = {}
    count = 0
    for item in items:
        if item.sample is None or batch_size == 1:
            yield [item]
            continue
        group = held.setdefault(fx.padded_shape(item.sample), [])
        group.append(item)
        count += 1
        if len(group) == batch_size or count >= 4 * batch_size:
            key = (fx.padded_shape(item.sample) if len(group) == batch_size
                   else max(held, key=lambda k: len(held[k])))
            out = held.pop(key)
            count -= len(out)
            yield out
    yield from (g for g in held.values() if g)


def _received_whole(items: Iterator[_Item]) -> Iterator[_Item]:
    """``items`` (a DataLoader's iterator) with a Ctrl-C that arrives while an item is
    being received held back until it is in, then raised; a second Ctrl-C stops at once.

    Why: a worker passes each tensor's file descriptor over a socket with a handshake.
    Cut mid-way, the worker's resource-sharer thread printed a traceback under the
    tool's one-line message. A worker that Ctrl-C (sent to the process group) ended
    makes the receive fail; with a Ctrl-C held, that failure is the Ctrl-C.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield from items  # no Python Ctrl-C handling here to hold back
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    while True:
        signal.signal(signal.SIGINT, hold)
        try:
            item = next(items)
        except StopIteration:
            return
        except Exception:
            if held:
                raise KeyboardInterrupt from None
            raise
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if held:
            raise KeyboardInterrupt
        yield item


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text
                                              or 'out of memory' in text)


class _Forward:
    """The model on a batch: batched only where that equals batch 1 within the fast
    path's tolerance, and one image at a time after an out-of-memory error."""

    def __init__(self, fx: FeatureExtractor, say: Callable[[str], None],
                 rois: RoISource | None = None) -> None:
        self.fx, self.say, self.rois = fx, say, rois
        self.exact = not getattr(fx.backbone, 'fast', False)  # reference mode: bitwise
        self.seconds = 0.0
        self._warned = False

    def _one(self, sample: dict, image: Path) -> FeatureRecord:
        request = self.rois.request([image]) if self.rois else None
        return self.fx.run_batch([sample], request)[0]

    def __call__(self, samples: list[dict], images: list[Path]) -> list[FeatureRecord]:
        t0 = time.perf_counter()
        try:
            if self.exact or len(samples) == 1:
                return [self._one(s, i) for s, i in zip(samples, images)]
            try:
                return self.fx.run_batch(samples,
                                         self.rois.request(images) if self.rois else None)
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not _out_of_memory(exc):
                    raise
            # out of the except block: the failed batch's tensors, which its traceback
            # holds, are freed before the retry
            if not self._warned:
                self._warned = True
                self.say(f'WARNING: out of memory in a batch of {len(samples)}: retrying '
                         'it one image at a time (said once; later batches do the same)')
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return [self._one(s, i) for s, i in zip(samples, images)]
        finally:
            self.seconds += time.perf_counter() - t0


# ---------------------------------------------------------------- writing
class _Writers:
    """Writer threads behind a bounded queue. The first error stops them (the rest of
    the queue is dropped) and is raised in the caller's thread at its next call."""

    def __init__(self, job: Callable, threads: int, depth: int) -> None:
        self.job, self.error, self.cancelled = job, None, False
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.threads = [threading.Thread(target=self._loop, daemon=True, name=f'dump-writer-{i}')
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            try:
                if item is None:
                    return
                if self.error is None and not self.cancelled:
                    self.job(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                if self.error is None:
                    self.error = exc
            finally:
                self.q.task_done()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item) -> None:
        if not self.threads:
            self.job(item)
            return
        while True:
            self.check()
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self, cancel: bool = False) -> None:
        """Wait for the writes in flight; ``cancel``: drop what has not started."""
        self.cancelled = cancel
        for _ in self.threads:
            self.q.put(None)
        for t in self.threads:
            t.join()
        if not cancel:
            self.check()


# ---------------------------------------------------------------- distribution
def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist_info()[1] > 1:
        dist.barrier()


def _broadcast(obj):
    if _dist_info()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def skipped_prefix(rank: int, world: int) -> str:
    """``'[rank 1] '`` before a line about that rank's image, in a run of several."""
    return f'[rank {rank}] ' if world > 1 else ''


def _gather(obj) -> list:
    if _dist_info()[1] == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- the run
@dataclass(frozen=True)
class DumpOptions:
    """How a dump runs and what it stores: :func:`dump_features`'s keywords, checked once.

    Attributes:
        fmt: the arrays files' format, one of :data:`FORMATS`.
        dtype: the storage dtype, one of :data:`DTYPES` (statistics are taken in float32).
        overlay: also draw overlays (:mod:`~resnet_backbone.apis.dump.overlay`).
        overlay_mode: how a level's channels become one heatmap, one of
            :data:`OVERLAY_MODES`.
        overlay_max_side: the overlays' longer side, at most (pixels).
        overwrite: remove the files dumped with other settings and redo every image.
        config: the config file, recorded with every image.
        progress: a progress bar (rank 0 only).
        batch_size: images per forward (same padded shape only; see the module docs).
        workers: DataLoader worker processes for decoding and the test pipeline
            (0: in this process).
        writers: threads that write beside the forward (0: write in this thread).
        rois: also RoI features per image (:class:`RoISource`): arrays ``rois`` (N, C,
            7, 7) and ``roi_pooled`` (N, C) beside the levels, and ``meta['rois']``.
    """

    fmt: str = 'safetensors'
    dtype: str = 'float32'
    overlay: bool = False
    overlay_mode: str = 'mean'
    overlay_max_side: int = DEFAULT_MAX_SIDE
    overwrite: bool = False
    config: str | None = None
    progress: bool = True
    batch_size: int = 1
    workers: int = 0
    writers: int = 1
    rois: RoISource | None = None

    def __post_init__(self) -> None:
        check_format_dtype(self.fmt, self.dtype)
        check_choice('overlay_mode', self.overlay_mode, OVERLAY_MODES, quote=False)
        for name in ('batch_size', 'overlay_max_side'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ToolError(f'{name} must be a positive integer; got {value!r}')
        for name in ('workers', 'writers'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ToolError(f'{name} must be 0 or more; got {value!r}')

    def fingerprint(self, fx: FeatureExtractor) -> dict:
        """What every record of this dump must have been made with (see the module docs)."""
        fp = fingerprint(fx, dtype=self.dtype, fmt=self.fmt)
        if self.rois is not None:  # only then: records dumped without RoIs keep theirs
            fp['rois'] = self.rois.fingerprint()
        return fp


@dataclass
class _Shard:
    """One rank's share of a run: who it is, what it writes into, what it was handed."""

    rank: int
    world: int
    run_id: str
    fp: dict  # this run's fingerprint (DumpOptions.fingerprint)
    manifest: Manifest
    total: int  # images to do on all ranks: the progress bar's length
    scale: OverlayScale | None = None
    ready: dict[str, FeatureRecord] = field(default_factory=dict)  # str(image) -> done
    tail: ManifestTail | None = None  # rank 0's follower of the other ranks' manifests


def dump_features(fx: FeatureExtractor, images: Sequence[Path], root: Path, out_dir: Path, *,
                  fmt: str = 'safetensors', dtype: str = 'float32', overlay: bool = False,
                  overlay_mode: str = 'mean', overlay_max_side: int = DEFAULT_MAX_SIDE,
                  overwrite: bool = False, config: str | None = None, progress: bool = True,
                  batch_size: int = 1, workers: int = 0, writers: int = 1,
                  rois: RoISource | None = None) -> DumpSummary:
    """Dump ``images`` through ``fx`` into ``out_dir``; returns what happened (all ranks).

    Called by every rank of a distributed run (an initialised ``torch.distributed``
    process group), each doing its shard. Files already there are reused if their
    fingerprint matches this run's; a mismatch raises
    :class:`~resnet_backbone.errors.ToolError` before anything is written, unless
    ``overwrite`` (then stale files are removed first and every image is redone). See
    the module docstring.

    Args:
        fx: the model.
        images: the input images (:func:`collect_images`); ``root``: their common folder,
            which the output paths mirror.
        out_dir: the dump folder.
        fmt, dtype, overlay, overlay_mode, overlay_max_side, overwrite, config, progress,
            batch_size, workers, writers, rois: the fields of :class:`DumpOptions`.
    """
    options = DumpOptions(
        fmt=fmt, dtype=dtype, overlay=overlay, overlay_mode=overlay_mode,
        overlay_max_side=overlay_max_side, overwrite=overwrite, config=config,
        progress=progress, batch_size=batch_size, workers=workers, writers=writers, rois=rois)
    rank, world = _dist_info()
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    images = list(images)
    fp = options.fingerprint(fx)
    plan = _plan(images, root, out_dir, fp, options)
    mine = [img for i, img in enumerate(images) if i % world == rank]
    todo = [img for img in mine if str(img) in plan.todo]
    # rank 0 follows the other ranks' manifests from before the run id exists: no record
    # of this run can be written before its tail starts, so none is missed by the bar
    tail = ManifestTail(out_dir) if progress and rank == 0 and world > 1 else None
    removed = _remove_killed_writers_files(out_dir) if rank == 0 else 0
    run_id = _broadcast(uuid.uuid4().hex)  # after the removal: see there
    t0 = time.time()
    with _writable(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        own = {output_path(i, root, out_dir, fmt) for i in mine}
        for target, _ in plan.stale:  # overwrite: no stale file may outlive this run's start
            if target in own:
                target.unlink(missing_ok=True)
        shard = _Shard(rank, world, run_id, fp, Manifest(out_dir, rank), len(plan.todo),
                       tail=tail)
        try:
            _adopt(plan, {str(i) for i in mine}, shard)
            if overlay:
                shard.scale, ready = _overlay_scale(fx, images, out_dir, fp, rank, rois)
                shard.ready = {k: v for k, v in ready.items() if k in {str(i) for i in todo}}
            mine_stats = _run(fx, todo, root, out_dir, shard, options)
        finally:
            shard.manifest.close()
        mine_stats['already'] = len(mine) - len(todo)
        seconds = time.time() - t0  # this rank's own time, not its wait for the others
        summary = _summarise(mine_stats, rank, world)
        summary.removed_temp, summary.seconds = removed, seconds
        _barrier()
        if rank == 0:
            summary.index = build_index(out_dir, [str(i) for i in images])[0]
            write_report(out_dir)
        else:
            summary.index = out_dir / 'index.json'
        _barrier()
    return summary


def _remove_killed_writers_files(out_dir: Path) -> int:
    """Rank 0 removes the temporary files of killed writers before the run id is sent:
    no rank passes that broadcast before rank 0 joins it, so no write of this run has
    started on any host (the pids in the names are only this host's)."""
    if not out_dir.is_dir():
        return 0
    with _writable(out_dir):
        return len(remove_dead_writers_temp_files(out_dir))


def _adopt(plan: _Plan, mine: set[str], shard: _Shard) -> None:
    """Append the records of this rank's files that have none (an older version's, or a
    kill between a file and its record); they are not progress of this run."""
    for image, rec in plan.adopt.items():
        if image in mine:
            shard.manifest.append(record(
                'dumped', image, rec['meta']['file'], rank=shard.rank, run=shard.run_id,
                adopted=True, **{k: v for k, v in rec.items() if k != 'meta'},
                meta=rec['meta']))


def _summarise(mine_stats: dict, rank: int, world: int) -> DumpSummary:
    """All ranks' counts in one summary; rank 0 names the skipped images it has not
    named yet (those whose records it did not see come in)."""
    summary = DumpSummary(ranks=world)
    shown = mine_stats.pop('shown', set())
    for who, s in enumerate(_gather(mine_stats)):
        summary.dumped += s['dumped']
        summary.bytes += s['bytes']
        summary.already_there += s['already']
        summary.skipped += [tuple(x) for x in s['skipped']]
        for image, reason in s['skipped']:
            if rank == 0 and image not in shown:
                print(f'{skipped_prefix(who, world)}WARNING: skipped {image}: {reason}',
                      file=sys.stderr, flush=True)
    return summary


def _overlay_scale(fx: FeatureExtractor, images: Sequence[Path], out_dir: Path, fp: dict,
                   rank: int, rois: RoISource | None
                   ) -> tuple[OverlayScale | None, dict[str, FeatureRecord]]:
    """The folder's per-level colour ranges: kept from an earlier run with the same
    fingerprint, else measured by rank 0 on the first readable image. Also that image's
    record, ``{str(image): record}``, so that the run does not compute it twice."""
    scale, ready = OverlayScale.load(out_dir, fp), {}
    if scale is None and rank == 0:
        for image in images:
            try:
                sample = fx.load(image)
            except (FileNotFoundError, UnreadableImageError):
                continue
            rec = fx.run_batch([sample], rois.request([image]) if rois else None)[0]
            scale = OverlayScale.measure(rec.levels, str(image), fp)
            scale.save(out_dir)
            ready[str(image)] = rec
            break
    _barrier()
    return (scale if rank == 0 else OverlayScale.load(out_dir, fp)), ready


#: Rank 0 stops waiting for the other ranks' records after this long without one (s).
STALL_S = 600.0


def _write(fx: FeatureExtractor, item: _Item, rec: FeatureRecord, root: Path, out_dir: Path,
           shard: _Shard, options: DumpOptions) -> int:
    """One image's overlays, then its arrays file, then its manifest record (which marks
    it done); returns the bytes written."""
    dtype, overlay = DTYPES[options.dtype], options.overlay
    target = output_path(item.image, root, out_dir, options.fmt)
    levels32 = {k: v.detach() for k, v in rec.levels.items()}
    meta = dict(rec.meta)
    meta['levels'] = {k: {'shape': list(v.shape), 'stride': rec.strides[k],
                          'dtype': options.dtype, **level_stats(v)}
                      for k, v in levels32.items()}
    meta.update(weights=fx.weights, config=options.config, format=options.fmt,
                fingerprint=shard.fp, source=item.source,
                overlay=options.overlay_mode if overlay else None,
                overlay_max_side=options.overlay_max_side if overlay else None)
    if overlay and shard.scale is not None:  # before the arrays: the record marks completion
        stem = overlay_stem(item.image, root, out_dir)
        meta['overlay_scale'] = {k: shard.scale.ranges[k] for k in levels32}
        write_overlays(item.image, {k: v.cpu() for k, v in levels32.items()},
                       rec.strides, meta, stem, shard.scale, mode=options.overlay_mode,
                       max_side=options.overlay_max_side)
    stored = {k: v.to(dtype).cpu() for k, v in levels32.items()}
    if rec.rois is not None:  # beside the levels, same storage dtype
        stored['rois'] = rec.rois.rois.to(dtype).cpu()
        stored['roi_pooled'] = rec.rois.pooled.to(dtype).cpu()
        meta['rois'] = rec.rois.records
        meta['image_id'] = rec.rois.image_id  # the COCO image id (--rois gt), else None
        meta['roi_extractor'] = fx.roi_extractor()[1]
        if rec.rois.note:
            meta['rois_note'] = rec.rois.note
    nbytes = save_levels(target, stored, meta, options.fmt)
    rel = str(target.relative_to(out_dir))
    shard.manifest.append(record(
        'dumped', str(item.image), rel, rank=shard.rank, run=shard.run_id, fingerprint=shard.fp,
        source=item.source, overlay=meta['overlay'],
        overlay_max_side=meta['overlay_max_side'], bytes=nbytes,
        meta=index_entry(str(item.image), rel, meta)))
    return nbytes


class _Progress:
    """Rank 0's bar over all ranks (the others' records followed in their manifests),
    and the one place skipped images are named.

    Skipped images are named by rank 0 alone, every rank's with its rank (the others'
    from their manifests as they come in): another rank's stderr may be another node's
    console (torchrun shows its own node's ranks) or filtered by the launcher, and on
    rank 0's console its lines broke into the progress bar, with no rank named.
    """

    def __init__(self, shard: _Shard, show: bool) -> None:
        self.shard = shard
        self.tail = shard.tail if show and shard.world > 1 else None
        self.bar = tqdm(total=shard.total, desc='dump', unit='img',
                        disable=not show or shard.total == 0,  # no bar: nothing to do
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        self.lock = threading.Lock()
        self.started, self.seen_bytes = time.time(), 0
        self.shown: set[str] = set()

    def tick(self, n: int, nbytes: int) -> None:
        with self.lock:
            self.seen_bytes += nbytes
            rate = self.seen_bytes / 1e6 / max(time.time() - self.started, 1e-9)
            self.bar.set_postfix_str(f'{rate:.3g} MB/s', refresh=False)
            self.bar.update(n)

    def say(self, line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    def skipped(self, image: str, reason: str | None, who: int) -> None:
        self.shown.add(image)
        self.say(f'{skipped_prefix(who, self.shard.world)}WARNING: skipped {image}: {reason}')

    def follow_others(self) -> None:
        if self.tail is None:
            return
        shard = self.shard
        new = [r for r in self.tail.poll(skip=shard.manifest.path)
               if r.get('run') == shard.run_id and r.get('rank') != shard.rank
               and not r.get('adopted')]
        if new:
            self.tick(len(new), sum(r.get('bytes', 0) for r in new))
        for r in new:
            if r.get('status') == 'skipped':
                self.skipped(r.get('image'), r.get('reason'), r.get('rank'))

    def wait_for_others(self) -> None:
        """Keep the bar moving until every rank's records are in (a rank that died ends
        the whole job under torchrun; a stall of :data:`STALL_S` ends the wait here)."""
        last_n, last_change = self.bar.n, time.time()
        while (self.tail is not None and self.bar.n < self.shard.total
               and time.time() - last_change < STALL_S):
            time.sleep(0.5)
            self.follow_others()
            if self.bar.n != last_n:
                last_n, last_change = self.bar.n, time.time()


def _run(fx: FeatureExtractor, todo: list[Path], root: Path, out_dir: Path, shard: _Shard,
         options: DumpOptions) -> dict:
    """This rank's loop: load -> batch -> forward -> writers. Returns its counts."""
    stats = {'dumped': 0, 'bytes': 0, 'skipped': []}
    progress = _Progress(shard, options.progress and shard.rank == 0)

    def write(job: tuple[_Item, FeatureRecord]) -> None:
        nbytes = _write(fx, *job, root, out_dir, shard, options)
        with progress.lock:
            stats['dumped'] += 1
            stats['bytes'] += nbytes
        progress.tick(1, nbytes)

    def skip(item: _Item) -> None:
        stats['skipped'].append((str(item.image), item.reason))
        if shard.rank == 0:
            progress.skipped(str(item.image), item.reason, shard.rank)
        rel = str(output_path(item.image, root, out_dir, options.fmt).relative_to(out_dir))
        shard.manifest.append(record('skipped', str(item.image), rel, rank=shard.rank,
                                     run=shard.run_id, reason=item.reason))
        progress.tick(1, 0)

    forward = _Forward(fx, progress.say, options.rois)
    loader = DataLoader(_Images(fx.pipeline_cfg, todo), batch_size=None, shuffle=False,
                        num_workers=options.workers, collate_fn=_identity)
    pool = _Writers(write, options.writers,
                    depth=max(2, options.writers) * options.batch_size)
    clean = False
    try:
        last_poll = 0.0
        for batch in _batches(_received_whole(iter(loader)), fx, options.batch_size):
            pool.check()
            if batch[0].sample is None:
                skip(batch[0])
                continue
            need = [i for i in batch if str(i.image) not in shard.ready]  # not measured yet
            computed = dict(zip(map(id, need), forward([i.sample for i in need],
                                                       [i.image for i in need]) if need else []))
            for item in batch:
                rec = shard.ready.pop(str(item.image), None) or computed[id(item)]
                item.sample = None  # the input is no longer needed: free it
                pool.put((item, rec))
            computed = rec = None  # the writers own these maps now: not held here too
            if time.time() - last_poll > 1.0:
                progress.follow_others()
                last_poll = time.time()
        clean = True
    finally:
        pool.close(cancel=not clean)
        if not clean:
            progress.bar.close()  # the error line that follows starts on a line of its own
    progress.wait_for_others()
    progress.bar.close()
    stats['forward_seconds'] = forward.seconds
    stats['shown'] = progress.shown  # not gathered: rank 0's own account
    return stats
