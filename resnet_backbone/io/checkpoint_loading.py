"""A checkpoint into a detector: a whole-detector file, or backbone-only weights.

:func:`load_detector_checkpoint` tells the two apart by their keys, loads strictly with
the load report of ``init_cfg=dict(type='Pretrained')`` (a backbone-only file in any
dialect of :mod:`resnet_backbone.io.weights`, the rest of the detector initialised from
its config, seeded) and returns what it loaded as a record (file, sha256, coverage).
A file that does not fit is one line, a :class:`CheckpointMismatchError`.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / 'a.bin'
    >>> _ = path.write_bytes(b'abc')
    >>> file_digest(path)[:16], file_digest('https://example.com/a.pth')
    ('ba7816bf8f01cfea', None)
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from mmengine.logging import MMLogger, print_log
from torch import nn

from .weights import (
    _OPTIONAL,
    IncompleteCheckpointError,
    UnknownDialectError,
    convert,
    load_state_dict,
    read_checkpoint,
    unwrap_state_dict,
)

__all__ = ['CheckpointMismatchError', 'coverage_share', 'file_digest',
           'load_detector_checkpoint']


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the config's model; the message is one line naming
    the file, the missing and unexpected counts, and ``--no-strict``/``strict=False``."""


def coverage_share(model: nn.Module, part: nn.Module, report) -> float:
    """% of ``model``'s parameter and buffer elements that ``report``'s load into
    ``part`` filled (step counters excluded, as in the load report)."""
    total = sum(t.numel() for k, t in model.state_dict().items() if not _OPTIONAL.search(k))
    own = part.state_dict()
    covered = sum(own[k].numel() for k in report.loaded if not _OPTIONAL.search(k))
    return 100.0 * covered / max(total, 1)


def load_detector_checkpoint(model: nn.Module, checkpoint: str | Path, *, seed: int = 0,
                             strict: bool = True) -> dict:
    """Load ``checkpoint`` into the detector ``model``; returns the weights record.

    A detector checkpoint (keys of the neck or heads besides ``backbone.``) is loaded
    into the whole detector, a backbone-only file (any dialect; see
    :mod:`resnet_backbone.io.weights`) into ``model.backbone`` after the rest was
    initialised from the config (seeded). Both strictly unless ``strict=False``, with
    the load report of ``init_cfg=dict(type='Pretrained')`` in the log. A strict load
    that does not fit raises :class:`CheckpointMismatchError` (one line).
    """
    name = str(checkpoint)
    ckpt = read_checkpoint(checkpoint)  # one line naming an unreadable file
    sd = unwrap_state_dict(ckpt)
    parts = {n for n, _ in model.named_children()} - {'backbone', 'data_preprocessor'}
    detector_file = any(k.split('.', 1)[0] in parts for k in sd)
    fix = ('pass a checkpoint made with this config (or its backbone alone), or '
           '--no-strict (strict=False) to load only the tensors that fit')
    record = {'source': 'checkpoint', 'checkpoint': name, 'sha256': file_digest(checkpoint)}
    try:
        if detector_file:
            report = load_state_dict(model, sd, source='detector checkpoint', strict=strict,
                                     checkpoint=name)
            record.update(loaded='detector', coverage={'detector': round(report.coverage, 4)})
        else:
            backbone = model.backbone
            try:
                converted = convert(ckpt, target_cfg={
                    'norm_cfg': getattr(backbone, 'norm_cfg', None) or {}})
            except UnknownDialectError as exc:
                raise CheckpointMismatchError(
                    f'{name}: neither a detector checkpoint nor backbone weights: '
                    f'{exc.message("the file converted with tools/convert_weights.py")}'
                ) from None
            # the rest of the detector: the config's initialisation, seeded; the
            # backbone's own init_cfg is skipped (the file replaces it)
            backbone.init_cfg = None
            torch.manual_seed(seed)
            with quiet_init_logging():
                model.init_weights()
            report = load_state_dict(backbone, converted.state_dict,
                                     source=f'backbone-only {converted.label} checkpoint',
                                     strict=strict, checkpoint=name)
            share = coverage_share(model, backbone, report)
            record.update(source='backbone-checkpoint', loaded='backbone',
                          dialect=converted.label, seed=seed,
                          coverage={'backbone': round(report.coverage, 4),
                                    'detector': round(share, 4)},
                          note=f'backbone-only checkpoint: {report.coverage:.2f}% of the '
                               f'backbone loaded from it ({share:.2f}% of the detector); '
                               f'the neck and heads are randomly initialised (seed {seed})')
            print_log(f'{name}: {record["note"]}', logger='current', level=logging.WARNING)
    except IncompleteCheckpointError as exc:
        r = exc.report
        what = 'detector' if detector_file else 'backbone'
        raise CheckpointMismatchError(
            f'checkpoint {name} does not fit this config\'s {what}: {len(r.missing)} '
            f'missing, {len(r.unexpected)} unexpected, {len(r.mismatched)} shape-mismatched '
            f'tensors (coverage {r.coverage:.2f}%, e.g. '
            f'{(r.missing or r.unexpected or [k for k, _, _ in r.mismatched])[0]}); {fix}'
        ) from None
    if not report.complete:  # strict=False: say what did not load, keep the counts
        record.update(strict=False, seed=seed, missing=len(report.missing),
                      unexpected=len(report.unexpected), mismatched=len(report.mismatched))
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    if isinstance(meta, dict) and 'dataset_meta' in meta:
        model.dataset_meta = meta['dataset_meta']
    return record


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file's bytes (hex), or None for a name that is no local file (a URL)."""
    path = Path(str(path))
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()



@contextlib.contextmanager
def quiet_init_logging() -> Iterator[None]:
    """Hold mmengine's current logger at WARNING: ``init_weights`` of a top-level
    module outside a Runner logs one INFO line per parameter."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        yield
    finally:
        logger.setLevel(level)
