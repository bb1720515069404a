"""Feature-map extraction with geometry: C1-C5 from the backbone, P-levels from the neck.

The maps are computed exactly as inference computes them: the model's own test pipeline
(resize, ...) and its own data preprocessor (normalisation, BGR->RGB, padding), then
the backbone, then the neck. Every map comes with the geometry needed to put it back on
the original image: ``stride``, ``ori_shape``, ``img_shape`` (after resize),
``pad_shape`` (after padding), ``scale_factor`` and the flip state.

Example:
    >>> import numpy as np
    >>> from resnet_backbone import ResNetV1Custom
    >>> from resnet_backbone.apis.features import FeatureExtractor
    >>> fx = FeatureExtractor(ResNetV1Custom(depth=18, base_channels=8).eval(),
    ...                       levels=['c1', 'c2', 'c3', 'c4', 'c5'])
    >>> rec = fx(np.zeros((50, 70, 3), dtype=np.uint8))
    >>> [tuple(v.shape) for v in rec.levels.values()]  # doctest: +NORMALIZE_WHITESPACE
    [(1, 8, 32, 48), (1, 8, 16, 24), (1, 16, 8, 12), (1, 32, 4, 6), (1, 64, 2, 3)]
    >>> rec.meta['pad_shape'], rec.strides['c5']
    ((64, 96), 32)
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import Compose
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import DefaultScope
from PIL import Image
from torch import nn

from ..engine.compat import (
    pkg_resources_reloads_quiet,
    quiet_init_logging,
    register_mmdet_modules,
)
from ..io.checkpoint_io import safe_globals_kept
from ..io.weights import (
    _OPTIONAL,
    _URL_PREFIXES,
    IncompleteCheckpointError,
    UnknownDialectError,
    cached_checkpoint_file,
    convert,
    load_state_dict,
    read_checkpoint,
    unwrap_state_dict,
)
from ..models.compiled import CompiledInference
from ..models.inference import check_compute_dtype, inference_model
from ..models.resnet import ResNetV1Custom
from ..spec import choice_error
from .rois import Boxes, RoIFeatures, predict, roi_extractor, roi_features, to_original

#: ImageNet statistics (RGB), used for a bare backbone that has no data preprocessor.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class FeatureRecord:
    """The maps of one image and where they sit on it.

    Attributes:
        levels: name (``'c1'``..``'c5'``, ``'p2'``..``'p7'``) -> (1, C, h, w) tensor.
        strides: name -> stride w.r.t. the padded network input.
        meta: ``image``, ``ori_shape``, ``img_shape``, ``pad_shape``,
            ``batch_input_shape``, ``scale_factor``, ``flip``, ``flip_direction``.
    """

    levels: dict[str, torch.Tensor]
    strides: dict[str, int]
    meta: dict = field(default_factory=dict)
    rois: RoIFeatures | None = None  # with RoIs asked for (see resnet_backbone.apis.rois)


class _BareBackboneDetector(nn.Module):
    """Wraps a bare backbone with the pieces a detector would bring."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        # not at the top: mmdet.models imports mmcv.ops (compiled ops, seconds), which only
        # a bare backbone's preprocessing needs
        from mmdet.models.data_preprocessors import DetDataPreprocessor
        self.backbone = backbone
        self.data_preprocessor = DetDataPreprocessor(
            mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr_to_rgb=True, pad_size_divisor=32)


def _default_pipeline() -> list[dict]:
    return [dict(type='LoadImageFromFile'),
            dict(type='PackDetInputs', meta_keys=(
                'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                'flip_direction'))]


def inference_pipeline(cfg) -> list[dict]:
    """The config's test pipeline, ready for images without annotations.

    ``LoadAnnotations`` is dropped (as mmdet's ``DetInferencer`` does) and the packed
    meta keys always include the flip state.
    """
    pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
    pipeline = [t for t in pipeline if 'LoadAnnotations' not in str(t['type'])]
    for t in pipeline:
        if 'PackDetInputs' in str(t['type']) and 'meta_keys' in t:
            t['meta_keys'] = tuple(dict.fromkeys(
                tuple(t['meta_keys']) + ('img_shape', 'ori_shape', 'scale_factor', 'flip',
                                         'flip_direction')))
    return pipeline


def _as_tuple(value) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (float(value),)
    return tuple(float(v) if isinstance(v, (float, np.floating)) else int(v) for v in value)


def build_pipeline(pipeline_cfg: Sequence[dict]) -> Compose:
    """The transforms of a test pipeline config, in mmdet's scope (also in a DataLoader
    worker process, which starts without mmdet's registrations)."""
    register_mmdet_modules()
    with DefaultScope.overwrite_default_scope('mmdet'):
        return Compose(copy.deepcopy(list(pipeline_cfg)))


@dataclass(frozen=True)
class PredictedBoxes:
    """Ask for RoI features of the detector's own predictions."""

    score_thr: float = 0.3
    max_per_image: int = 100


#: RoI features for given boxes (one Boxes per sample) or for the predictions
RoIRequest = Sequence[Boxes] | PredictedBoxes


class UnreadableImageError(ValueError):
    """An input image that cannot be used: its file does not decode, or the test pipeline
    dropped it. A fault of that one image (a dump skips it), unlike any other error."""


class FeatureExtractor:
    """Extract named, geometry-tagged feature maps from a detector or a bare backbone.

    Args:
        model: An mmdet detector (uses its ``data_preprocessor``, ``backbone`` and
            ``neck``), or a bare backbone (ImageNet normalisation, padding to 32).
        pipeline: Test pipeline (list of transform configs). Default for a detector
            built by :meth:`from_config`: the config's test pipeline; otherwise a plain
            load-and-pack (no resize).
        levels: Names to return; default: the backbone outputs (``c2``..``c5`` as its
            ``out_indices`` say). ``c1`` is the stem before the max-pool (our backbone
            only); ``pN`` are neck outputs, named by their stride 2**N.
        compute_dtype: ``'fp32'`` (default) or ``'bf16'``: a ResNetV1Custom backbone (and
            its presets) runs as its inference snapshot in that dtype
            (:mod:`resnet_backbone.models.inference`: BN folded once, fused kernels;
            taken again whenever the backbone's weights change); ``fast=False`` keeps
            the reference in fp32. Maps come back in float32 and the neck stays float32.
        compile: run the backbone compiled by Inductor
            (:class:`~resnet_backbone.models.compiled.CompiledInference`; the first call
            at a new input size compiles, :attr:`compile_summary` says for how long).

    The backbone's levels come from :meth:`ResNetV1Custom.forward_levels` when the
    backbone is ours (``isinstance``, never by a method name: timm's ``forward_features``
    means something else), else from its ``forward`` (a tuple of maps).

    Example:
        >>> fx = FeatureExtractor(ResNetV1Custom(depth=18, base_channels=8),
        ...                       levels='c1,c5')
        >>> rec = fx(np.zeros((64, 64, 3), dtype=np.uint8))
        >>> {k: tuple(v.shape) for k, v in rec.levels.items()}, rec.strides
        ({'c1': (1, 8, 32, 32), 'c5': (1, 64, 2, 2)}, {'c1': 2, 'c5': 32})
    """

    def __init__(self, model: nn.Module, *, pipeline: Sequence[dict] | None = None,
                 levels: Sequence[str] | str | None = None, compute_dtype: str = 'fp32',
                 compile: bool = False) -> None:  # noqa: A002 - the issue's name for it
        register_mmdet_modules()
        self.model = model if hasattr(model, 'data_preprocessor') else \
            _BareBackboneDetector(model)
        self.model.eval()
        self.weights = {'source': 'as given', 'note': 'model passed in by the caller'}
        self.config_sha256: str | None = None  # set by from_config (see config_digest)
        self.backbone = self.model.backbone
        self.neck = getattr(self.model, 'neck', None)
        self.compute_dtype, self.compile = compute_dtype, bool(compile)
        self._run_backbone = self._backbone_runner()
        self.pipeline_cfg = copy.deepcopy(list(pipeline) if pipeline is not None
                                          else _default_pipeline())
        self.pipeline = build_pipeline(self.pipeline_cfg)
        self.strides = self._probe_strides()
        default = [f'c{int(math.log2(s))}' for s in self._backbone_out_strides()]
        if isinstance(levels, str):  # 'c5' or 'c2,c5': names, not characters
            levels = [lv.strip() for lv in levels.split(',')]
        self.levels = list(levels) if levels is not None else default
        unknown = [lv for lv in self.levels if lv not in self.strides]
        if unknown:
            raise choice_error(f'levels {unknown} are not available from this model',
                               self.strides, quote=False)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: str | Path | Config, checkpoint: str | Path | None = None, *,
                    device: str = 'cpu', levels: Sequence[str] | str | None = None,
                    seed: int = 0, strict: bool = True, compute_dtype: str = 'fp32',
                    compile: bool = False) -> FeatureExtractor:  # noqa: A002
        """Build the detector of ``config`` and load ``checkpoint`` (if any).

        The checkpoint is loaded strictly, with the same load report as
        ``init_cfg=dict(type='Pretrained')``: a detector checkpoint must fit the whole
        detector; a backbone-only file (from ``tools/convert_weights.py``, torchvision,
        timm, ... in any dialect of :mod:`resnet_backbone.io.weights`) must fit the backbone,
        and the neck and heads keep their seeded random initialisation. Anything else
        raises :class:`CheckpointMismatchError`, one line naming the file and the
        missing and unexpected counts. ``strict=False`` loads whatever fits, and says
        what did not. :attr:`weights` records what was loaded and its coverage.

        Without a checkpoint the model keeps its ``init_cfg`` initialisation: a
        ``Pretrained`` backbone file is loaded, a local path or a ``torchvision://`` /
        ``open-mmlab://`` name found where mmengine's loader looks for it (torch.hub's
        cache); otherwise the weights are random (seeded), and :attr:`weights` says why.

        It changes nothing process-wide beyond registering mmdet's modules (what importing
        them does): the tools' :func:`~resnet_backbone.engine.training.setup_environment`
        (warning filters, file backends, dataset guards) is theirs to call.

        Args:
            config: a config file or a loaded ``Config`` (with ``--cfg-options`` applied).
            checkpoint: a detector checkpoint or backbone-only weights; ``None`` keeps the
                config's initialisation.
            device: where the model runs.
            levels: as in :class:`FeatureExtractor`.
            seed: seeds the random initialisation of whatever the checkpoint does not fill.
            strict: refuse a checkpoint that does not fit (see above).
            compute_dtype: as in :class:`FeatureExtractor` (the tier is taken after the
                checkpoint is loaded).
            compile: as in :class:`FeatureExtractor`.

        Returns:
            The extractor; :attr:`weights` and :attr:`config_sha256` say what it holds.
        """
        register_mmdet_modules()
        if isinstance(config, Config):
            cfg = config
        else:
            # mmengine reloads pkg_resources per mmdet:: base; the config's custom_imports
            # (resnet_backbone.engine.mmdet_tools, for mmdet's own tools) allow-lists the
            # Runner checkpoint classes process-wide, which a library call must not do
            with pkg_resources_reloads_quiet(), safe_globals_kept():
                cfg = Config.fromfile(str(config))
        digest = config_digest(cfg)  # before the build: mmdet's builders edit cfg.model
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
            torch.manual_seed(seed)
            model = MMDET_MODELS.build(cfg.model)
            if checkpoint is not None:
                weights = load_detector_checkpoint(model, checkpoint, seed=seed,
                                                   strict=strict)
            else:
                weights = cls._init(model, cfg, seed)
        model.to(device)
        fx = cls(model, pipeline=inference_pipeline(cfg), levels=levels,
                 compute_dtype=compute_dtype, compile=compile)
        fx.weights = weights
        fx.config_sha256 = digest
        return fx

    @staticmethod
    def _init(model, cfg, seed) -> dict:
        """The config's own initialisation; what it loaded, or why the weights are random."""
        init = cfg.model.get('backbone', {}).get('init_cfg')
        pretrained = init.get('checkpoint') if isinstance(init, dict) and \
            init.get('type') == 'Pretrained' else None
        note = local = None
        if pretrained is not None:
            name = str(pretrained)
            local = cached_checkpoint_file(name) if name.startswith(_URL_PREFIXES) \
                else Path(name)
            if local is None or not local.is_file():
                # never downloaded here: only what mmengine's loader would find locally
                model.backbone.init_cfg = None
                note = (f'{name} is not in the local cache ({local}): random '
                        'initialisation; fetch it once with network access (training does) '
                        'or pass a checkpoint' if name.startswith(_URL_PREFIXES) else
                        f'{name}: no such file: random initialisation')
        with quiet_init_logging():
            model.init_weights()
        if pretrained is not None and note is None:
            report = getattr(model.backbone, 'load_report', None)
            weights = {'source': 'pretrained-backbone', 'checkpoint': str(pretrained),
                       'file': str(local), 'sha256': file_digest(local), 'seed': seed,
                       'note': 'backbone from init_cfg, the rest randomly initialised'}
            if report is not None:
                weights['coverage'] = {'backbone': round(report.coverage, 4),
                                       'detector': round(_share(model, model.backbone,
                                                                report), 4)}
            return weights
        return {'source': 'random', 'seed': seed,
                'note': note or 'no checkpoint given: random initialisation'}

    def _backbone_runner(self) -> nn.Module:
        """The module whose call computes the backbone's maps: the backbone or its
        inference snapshot, either compiled; ``forward_levels`` for ours, ``forward``
        otherwise."""
        ours = isinstance(self.backbone, ResNetV1Custom)
        if check_compute_dtype(self.compute_dtype) != torch.float32 and not ours:
            raise ValueError(
                f"compute_dtype={self.compute_dtype!r} runs ResNetV1Custom backbones (and "
                f'its presets); this backbone is {type(self.backbone).__name__}: use '
                "compute_dtype='fp32'")
        module = inference_model(self.backbone, self.compute_dtype)
        method = 'forward_levels' if ours else 'forward'
        if self.compile:
            return CompiledInference(module, method)
        return getattr(module, method)

    @property
    def compile_summary(self) -> str | None:
        """One line on the compile warm-up so far; ``None`` when not compiled."""
        return self._run_backbone.summary() if self.compile else None

    # ---------------------------------------------------------------- geometry
    def _backbone_out_strides(self) -> tuple[int, ...]:
        if hasattr(self.backbone, 'out_strides'):
            return tuple(self.backbone.out_strides)
        return tuple(self.strides[n] for n in self._names[0])

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _probe_strides(self) -> dict[str, int]:
        """Every available level and its stride, from one forward pass on a 512x512 input.

        Outputs are named by their position, fixed here: at other input sizes a map's
        size need not divide the input (800 / 64 -> 13 cells), so it is no name key.
        """
        size = 512
        x = torch.zeros(1, 3, size, size, device=self._device())
        with torch.no_grad():
            c_outs, p_outs, stem = self._raw_forward(x, want_neck=True, check_size=size)
        name = lambda t: int(math.log2(size // t.shape[-1]))  # noqa: E731
        self._names = ([f'c{name(t)}' for t in c_outs], [f'p{name(t)}' for t in p_outs])
        self._p_channels = p_outs[0].shape[1] if p_outs else None
        strides = {k: size // v.shape[-1] for k, v in stem.items()}
        for names, outs in zip(self._names, (c_outs, p_outs)):
            strides.update({n: size // t.shape[-1] for n, t in zip(names, outs)})
        return dict(sorted(strides.items(), key=lambda kv: (kv[0][0], kv[1])))

    # ---------------------------------------------------------------- forward
    def _raw_forward(self, x: torch.Tensor, want_neck: bool, check_size: int | None = None):
        """(backbone stage outputs, neck outputs, {'c1': stem} or {}); ``check_size``: the
        input is (1, 3, check_size, check_size), and a backbone whose output is no tuple
        of feature maps raises one line (a classifier passed as a backbone)."""
        stem = {}
        # the probe (a 512x512 zero image, once, for the geometry) runs the eager fp32
        # backbone: compiled it would compile a shape no image has, and a bf16 tier
        # emulated on a CPU without bf16 units takes seconds at that size
        run = self.backbone if check_size is not None else None
        if isinstance(self.backbone, ResNetV1Custom):  # by class: timm's names mean other things
            every = [f'c{i + 2}' for i in range(self.backbone.num_stages)]
            feats = (run.forward_levels if run is not None else self._run_backbone)(
                x, levels=['c1'] + every)
            stem = {'c1': feats.pop('c1')}
            c_outs = tuple(feats.values())
            backbone_outs = tuple(c_outs[i] for i in self.backbone.out_indices)
        else:
            out = (run or self._run_backbone)(x)
            if check_size is not None:
                _check_feature_maps(self.backbone, out, check_size)
            c_outs = backbone_outs = tuple(out)
        p_outs = tuple(self.neck(backbone_outs)) if self.neck is not None and want_neck else ()
        return c_outs, p_outs, stem

    def _forward(self, x: torch.Tensor, levels: Sequence[str], want_neck: bool = False
                 ) -> tuple[dict[str, torch.Tensor], tuple]:
        """The maps named in ``levels`` from one pass, and the neck outputs (computed when
        a level or ``want_neck`` asks for them)."""
        c_outs, p_outs, stem = self._raw_forward(
            x, want_neck=want_neck or any(lv.startswith('p') for lv in levels))
        out = dict(stem)
        out.update(zip(self._names[0], c_outs))
        out.update(zip(self._names[1], p_outs))
        return {lv: out[lv] for lv in levels}, p_outs

    def roi_extractor(self) -> tuple[nn.Module, str]:
        """The RoI extractor (see :func:`resnet_backbone.apis.rois.roi_extractor`) and
        where it came from; built once."""
        if getattr(self, '_roi', None) is None:
            if self._p_channels is None:
                raise ValueError('RoI features need a detector with a neck (FPN levels); '
                                 f'{type(self.model).__name__} has none')
            strides = [self.strides[n] for n in self._names[1]]
            extractor, origin = roi_extractor(self.model, self._p_channels, strides)
            self._roi = (extractor.to(self._device()), origin)
        return self._roi

    def load(self, image: ImageInput) -> dict:
        """Run the test pipeline on one image (see :func:`load_image`)."""
        return load_image(self.pipeline, image)

    def collate(self, samples: Sequence[dict]) -> dict:
        """The data preprocessor on loaded samples (:meth:`load`): normalised, padded,
        stacked ``{'inputs': (N, 3, H, W), 'data_samples': [...]}``."""
        batch = dict(inputs=[d['inputs'] for d in samples],
                     data_samples=[d['data_samples'] for d in samples])
        return self.model.data_preprocessor(batch, False)

    def preprocess(self, image: ImageInput) -> dict:
        """The test pipeline and the data preprocessor on one image (see :meth:`load`)."""
        return self.collate([self.load(image)])

    def padded_shape(self, sample: dict) -> tuple[int, int]:
        """The (H, W) the data preprocessor pads a loaded sample to when it is alone.

        Samples with equal padded shapes get exactly their batch-1 input in one batch
        (each is padded to the same size with the same value), so only they are batched.
        """
        h, w = (int(v) for v in sample['inputs'].shape[-2:])
        div = int(getattr(self.model.data_preprocessor, 'pad_size_divisor', 1) or 1)
        return (math.ceil(h / div) * div, math.ceil(w / div) * div)

    @torch.no_grad()
    def run_batch(self, samples: Sequence[dict], rois: RoIRequest | None = None
                  ) -> list[FeatureRecord]:
        """The maps of loaded samples (:meth:`load`), in one forward pass; one record per
        sample, its maps (1, C, h, w) views into the batch's.

        ``rois``: also RoI features (:mod:`resnet_backbone.apis.rois`), for a list of
        :class:`~resnet_backbone.apis.rois.Boxes` per sample (original-image pixels) or
        for the detector's own predictions (:class:`PredictedBoxes`).

        An image's maps equal its batch-1 maps only if the batch shares one padded shape
        (:meth:`padded_shape`), and then within the kernels' rounding: oneDNN and cuDNN
        choose kernels by batch size. :func:`~resnet_backbone.apis.dump.dump_features`
        batches only where that is allowed.
        """
        batch = self.collate(samples)
        feats, p_outs = self._forward(batch['inputs'], self.levels, want_neck=rois is not None)
        metas = []
        for sample in batch['data_samples']:
            info = sample.metainfo
            metas.append({
                'image': info.get('img_path'),
                'ori_shape': _as_tuple(info.get('ori_shape')),
                'img_shape': _as_tuple(info.get('img_shape')),
                'pad_shape': _as_tuple(info.get('pad_shape')),
                'batch_input_shape': _as_tuple(info.get('batch_input_shape')),
                'scale_factor': _as_tuple(info.get('scale_factor', (1.0, 1.0))),
                'flip': bool(info.get('flip', False)),
                'flip_direction': info.get('flip_direction'),
            })
        regions = [None] * len(metas)
        if rois is not None:
            regions = self._regions(rois, p_outs, batch['data_samples'], metas)
        return [FeatureRecord({k: v[i:i + 1] for k, v in feats.items()},
                              {lv: self.strides[lv] for lv in feats}, meta, regions[i])
                for i, meta in enumerate(metas)]

    def _regions(self, rois: RoIRequest, p_outs: tuple, data_samples: list,
                 metas: list[dict]) -> list[RoIFeatures]:
        extractor, _ = self.roi_extractor()
        if isinstance(rois, PredictedBoxes):
            preds = predict(self.model, p_outs, data_samples, score_thr=rois.score_thr,
                            max_per_image=rois.max_per_image)
            originals = [Boxes(to_original(p.boxes, m), p.labels, p.scores)
                         for p, m in zip(preds, metas)]
            return roi_features(extractor, p_outs, metas, originals,
                                input_boxes=[p.boxes for p in preds])
        if len(rois) != len(metas):
            raise ValueError(f'rois: {len(rois)} box lists for {len(metas)} images')
        for i, b in enumerate(rois):
            check_boxes(b.boxes, f'rois[{i}].boxes')
        return roi_features(extractor, p_outs, metas, list(rois))

    def roi_features(self, image: ImageInput,
                     boxes: Boxes | PredictedBoxes | torch.Tensor | np.ndarray | Sequence
                     ) -> FeatureRecord:
        """The maps of one image and the RoI features of ``boxes`` or of the detector's
        predictions: ``record.rois`` (:class:`~resnet_backbone.apis.rois.RoIFeatures`:
        ``rois`` (N, C, 7, 7), ``pooled`` (N, C), one record per box).

        ``boxes``: an (N, 4) tensor, numpy array or list of ``x1, y1, x2, y2`` in
        original-image pixels (labels -1, no scores); a
        :class:`~resnet_backbone.apis.rois.Boxes` (with labels and scores); or
        :class:`PredictedBoxes` for the detector's own predictions. Another shape is a
        one-line ``ValueError``.

        Example: ``fx.roi_features('photo.jpg', [[10, 20, 110, 90]]).rois.pooled``.
        """
        if not isinstance(boxes, (Boxes, PredictedBoxes)):
            try:
                array = (boxes.detach().float().cpu() if isinstance(boxes, torch.Tensor)
                         else torch.from_numpy(np.asarray(boxes, dtype=np.float32)))
            except (TypeError, ValueError):
                raise ValueError('boxes must be numbers: an (N, 4) array of x1, y1, x2, y2 '
                                 f'in original-image pixels; got {type(boxes).__name__}'
                                 ) from None
            if array.numel() == 0:
                array = array.reshape(0, 4)  # no boxes: an empty result, not an error
            if array.dim() != 2 or array.shape[1] != 4:
                raise ValueError(f'boxes must be (N, 4): x1, y1, x2, y2 in original-image '
                                 f'pixels, one row per box (one box: [[x1, y1, x2, y2]]); '
                                 f'got shape {tuple(array.shape)}')
            boxes = Boxes(array, torch.full((len(array),), -1, dtype=torch.long))
        if isinstance(boxes, Boxes):
            check_boxes(boxes.boxes, 'boxes')
        request = boxes if isinstance(boxes, PredictedBoxes) else [boxes]
        return self.run_batch([self.load(image)], request)[0]

    def __call__(self, image: ImageInput) -> FeatureRecord:
        """The maps of one image (see :meth:`load` for what ``image`` may be)."""
        return self.run_batch([self.load(image)])[0]


def check_boxes(boxes: torch.Tensor, arg: str) -> None:
    """Raise one line naming ``arg`` and the first bad box unless every row of the (N, 4)
    ``boxes`` is finite with x2 >= x1 and y2 >= y1 (else mmcv's RoIAlign stops on a C++
    ``roi_width >= 0 && roi_height >= 0 INTERNAL ASSERT FAILED``, or pools NaN).

    Example:
        >>> check_boxes(torch.tensor([[30., 10, 20, 40]]), 'boxes')  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: boxes[0] = [30.0, 10.0, 20.0, 40.0] has x2 < x1; boxes are x1, y1, ...
    """
    if len(boxes) == 0:
        return
    b = boxes.detach().float().cpu()
    finite = torch.isfinite(b).all(dim=1)
    bad_x, bad_y = b[:, 2] < b[:, 0], b[:, 3] < b[:, 1]
    bad = ~finite | bad_x | bad_y
    if not bool(bad.any()):
        return
    i = int(bad.nonzero()[0])
    row = [round(float(v), 3) for v in b[i]]
    if not bool(finite[i]):
        raise ValueError(f'{arg}[{i}] = {row} is not finite; pass finite x1, y1, x2, y2 '
                         'in original-image pixels')
    what = ' and '.join(w for w, f in (('x2 < x1', bad_x[i]), ('y2 < y1', bad_y[i])) if f)
    raise ValueError(f'{arg}[{i}] = {row} has {what}; boxes are x1, y1, x2, y2 corners in '
                     'original-image pixels (not x, y, w, h): pass the top-left corner '
                     'first, e.g. [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]')


#: what :meth:`FeatureExtractor.preprocess` accepts (see :func:`as_image_array`)
ImageInput = str | Path | np.ndarray | torch.Tensor | Image.Image


def load_image(pipeline: Compose, image: ImageInput) -> dict:
    """Run a test ``pipeline`` (:func:`build_pipeline`) on one image: ``{'inputs':
    (3, H, W) uint8 tensor, 'data_samples': DetDataSample}``, what a DataLoader worker
    hands over.

    ``image`` is anything :func:`as_image_array` accepts: a file path, a numpy array
    (BGR, as ``mmcv.imread`` returns), a PIL image or a tensor (RGB, as torchvision
    reads them), grayscale or with alpha, with pixel values 0-255. A missing file
    raises ``FileNotFoundError``; a file that does not decode, or an image the
    pipeline drops, :class:`UnreadableImageError`.
    """
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f'image {str(image)!r}: no such file')
        data = dict(img_path=str(image), img_id=0)
        for t in pipeline.transforms:  # as Compose does, telling decode errors apart
            try:
                data = t(data)
            except Exception as exc:  # noqa: BLE001 - only the loading step's: bad input
                if 'LoadImage' not in type(t).__name__:
                    raise  # a later transform failing is no fault of the image
                said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UnreadableImageError(
                    f'image {str(image)!r} cannot be decoded ({said})') from exc
            if data is None:
                break
    else:
        array = as_image_array(image)
        data = dict(img=array, img_id=0, img_path=None, ori_shape=array.shape[:2],
                    img_shape=array.shape[:2])
        transforms = [t for t in pipeline.transforms
                      if 'LoadImage' not in type(t).__name__]
        for t in transforms:
            data = t(data)
    if data is None:
        raise UnreadableImageError(f'the test pipeline dropped image {_describe(image)}')
    return data


def _describe(image) -> str:
    if isinstance(image, (str, Path)):
        return repr(str(image))
    shape = getattr(image, 'shape', None) or getattr(image, 'size', None)
    return f'({type(image).__name__}, shape {tuple(shape) if shape is not None else "?"})'


def as_image_array(image) -> np.ndarray:
    """One image as the (H, W, 3) BGR array, 0-255, that mmdet's test pipeline expects.

    Accepted, with pixel values **0-255** (the model normalises them itself):

    - numpy arrays in **BGR** order (as ``mmcv.imread``/``cv2.imread`` return): (H, W)
      grayscale, (H, W, 1), (H, W, 2) gray + alpha, (H, W, 3) BGR, (H, W, 4) BGRA;
    - PIL images (any mode that converts to RGB: L, RGB, RGBA, P, ...);
    - tensors in **RGB** order, channels first (as ``torchvision.io.read_image``
      returns): (H, W), (C, H, W) or (1, C, H, W) with C = 1, 2, 3 or 4.

    uint8 is taken as is; other integer and float dtypes must hold 0-255 values. Alpha is
    dropped and grayscale is repeated into three channels. Refused, with one line saying
    what to pass: a float image whose values lie in [0, 1] (scale it: ``img * 255``),
    negative values (already normalised: pass the raw image), values above 255 (e.g.
    16-bit: scale to 8 bits), NaN/Inf, channels-first numpy arrays, a batch of several
    images, and any other type.
    """
    order = 'BGR'
    if isinstance(image, np.ndarray):
        array, what = image, 'numpy array'
    elif isinstance(image, torch.Tensor):
        what, order = 'tensor', 'RGB'
        t = image.detach().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f'got a batch of {t.shape[0]} images (tensor of shape '
                                 f'{tuple(t.shape)}); pass one image at a time, e.g. '
                                 'extract(fx, list(batch))')
            t = t[0]
        if t.dim() == 3:
            if t.shape[0] not in (1, 2, 3, 4):
                raise ValueError(f'tensor images are channels first, (C, H, W) with C = 1, '
                                 f'2, 3 or 4; got shape {tuple(image.shape)} (for an (H, W, '
                                 'C) tensor pass t.permute(2, 0, 1))')
            t = t.permute(1, 2, 0)
        if t.dtype == torch.bfloat16:
            t = t.float()
        array = t.numpy()
    elif _is_pil(image):
        what, order = 'PIL', 'RGB'  # 'a PIL image', not 'a PIL image image'
        if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
            array = np.asarray(image)  # 16/32-bit values: checked below, not clipped
        else:
            array = np.asarray(image.convert('RGB'))
    else:
        many = ('; for several images use extract(fx, images)'
                if isinstance(image, (list, tuple)) else '')
        raise TypeError(f'cannot read an image from a {type(image).__name__}; pass a file '
                        'path, a numpy array (H, W[, C]) in BGR order, a PIL image, or a '
                        f'(C, H, W) tensor in RGB order, with pixel values 0-255{many}')
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        hint = ''
        if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4):
            hint = ' (this one looks channels first: pass array.transpose(1, 2, 0))'
        elif array.ndim == 4 and array.shape[0] == 1:
            hint = ' (a batch of one: pass array[0])'
        raise ValueError(f'a {what} image must be (H, W) or (H, W, C) with C = 1, 2, 3 or '
                         f'4 channels; got shape {tuple(array.shape)}{hint}')
    if 0 in array.shape[:2]:
        raise ValueError(f'the {what} image is empty: shape {tuple(array.shape)}')
    array = _check_pixel_values(array, what)
    channels = array.shape[-1]
    if channels in (2, 4):
        array = array[..., :channels - 1]  # drop alpha
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif order == 'RGB':
        array = array[..., ::-1]
    return np.ascontiguousarray(array)


def _is_pil(image) -> bool:
    return isinstance(image, Image.Image)


def _check_pixel_values(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as uint8 or float32 holding 0-255 values; one line for anything else."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer)
                                   or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f'a {what} image of dtype {array.dtype} is not supported; pass '
                        'uint8 (or float) pixel values 0-255')
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f'the {what} image holds NaN or Inf values; pass finite pixel '
                         'values 0-255')
    lo, hi = float(array.min()), float(array.max())
    if lo < 0:
        raise ValueError(f'the {what} image has negative values (min {lo:.3g}): it looks '
                         'already normalised; pass the raw pixel values 0-255 (the model '
                         'normalises them with its own mean and std)')
    if hi > 255:
        sixteen = (' (16-bit: keep the high byte, (np.asarray(img) >> 8).astype(np.uint8), '
                   'as cv2.imread does with a 16-bit file)'
                   if np.issubdtype(array.dtype, np.integer) and hi < 1 << 16 else '')
        raise ValueError(f'the {what} image has values up to {hi:.6g}, beyond 0-255 (e.g. '
                         f'16-bit): scale it to 8-bit pixel values 0-255 first{sixteen}')
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.uint8)
    if 0 < hi <= 1:
        raise ValueError(f'the {what} image is float with values in [0, 1] (max {hi:.3g}); '
                         'pass pixel values 0-255, e.g. img * 255 (values in [0, 1] would '
                         'be read as almost black)')
    return array.astype(np.float32)


def _check_feature_maps(backbone: nn.Module, out, size: int) -> None:
    """Raise one line unless ``out`` (the backbone's output for a (1, 3, size, size)
    input) is a tuple of (N, C, H, W) maps, e.g. for a classifier passed as a backbone."""
    ok = isinstance(out, (tuple, list)) and out and all(
        isinstance(t, torch.Tensor) and t.dim() == 4 and 0 < t.shape[-1] <= size
        and size % t.shape[-1] == 0 for t in out)
    if ok:
        return
    got = (f'a tensor of shape {tuple(out.shape)}' if isinstance(out, torch.Tensor)
           else f'a {type(out).__name__}')
    raise TypeError(
        f'{type(backbone).__name__} returns {got} for a (1, 3, {size}, {size}) input, not '
        'feature maps: FeatureExtractor takes an mmdet detector or a backbone that returns '
        'a tuple of (N, C, H, W) maps; for a torchvision or timm ResNet, load its weights '
        'into ours: m = ResNetV1Custom(depth=...); '
        'resnet_backbone.io.weights.load_pretrained(m, model.state_dict())')


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the config's model; the message is one line naming
    the file, the missing and unexpected counts, and ``--no-strict``/``strict=False``."""


def _share(model: nn.Module, part: nn.Module, report) -> float:
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
            share = _share(model, backbone, report)
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


def config_digest(cfg) -> str:
    """sha256 (hex) of what a config contributes to the feature maps: the resolved
    ``model`` (after ``_base_`` inheritance and ``--cfg-options``) and the inference
    pipeline. Training-only settings (schedule, optimizer, data roots) do not change it.
    """
    text = json.dumps({'model': cfg.model, 'pipeline': inference_pipeline(cfg)},
                      sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def settings_digest(fx: FeatureExtractor) -> str:
    """sha256 (hex) of what turns an image into the model's input when no config says it:
    the test pipeline ``fx`` was given and its data preprocessor's settings (``mean`` and
    ``std`` are non-persistent buffers, outside :func:`state_dict_digest`)."""
    dp = fx.model.data_preprocessor
    settings = {k: v for k, v in sorted(vars(dp).items())
                if k != 'training' and isinstance(v, (bool, int, float, str, type(None)))}
    buffers = {n: [str(b.dtype), list(b.shape), b.detach().cpu().flatten().tolist()]
               for n, b in dp.named_buffers()}
    text = json.dumps({'pipeline': fx.pipeline_cfg, 'preprocessor': type(dp).__name__,
                       'settings': settings, 'buffers': buffers,
                       'batch_augments': repr(getattr(dp, 'batch_augments', None))},
                      sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def state_dict_digest(model: nn.Module) -> str:
    """sha256 (hex) of a model's tensors (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def extract(model: nn.Module | FeatureExtractor, images: Iterable[str | Path | np.ndarray], *,
            levels: Sequence[str] | None = None) -> Iterator[FeatureRecord]:
    """Yield a :class:`FeatureRecord` per image (see :class:`FeatureExtractor`)."""
    fx = model if isinstance(model, FeatureExtractor) else FeatureExtractor(model, levels=levels)
    for image in images:
        yield fx(image)


def level_stats(t: torch.Tensor) -> dict[str, float]:
    """min, max, mean, std (over the finite values), the fraction of exact zeros and the
    count of non-finite values of a map. Reduced in float32 by torch (pairwise sums:
    within ~1e-6 relative of float64), without a float64 copy of the map."""
    d = t.detach()
    d = d if d.dtype == torch.float32 else d.float()
    finite = torch.isfinite(d)
    nonfinite = int(d.numel() - int(finite.sum()))
    if nonfinite:
        d = d[finite]
    if d.numel() == 0:
        nan = float('nan')
        return {'min': nan, 'max': nan, 'mean': nan, 'std': nan, 'zeros': 0.0,
                'nonfinite': nonfinite}
    lo, hi = torch.aminmax(d)
    std, mean = torch.std_mean(d) if d.numel() > 1 else (d.new_zeros(()), d.reshape(()))
    zeros = float((d == 0).sum()) / t.numel()
    return {'min': float(lo), 'max': float(hi), 'mean': float(mean), 'std': float(std),
            'zeros': zeros, 'nonfinite': nonfinite}


def unpad_to_original(heat: torch.Tensor, stride: int, meta: dict) -> torch.Tensor:
    """Map an (h, w) map at ``stride`` back onto the original image, (H_ori, W_ori).

    Cell (i, j) covers input pixels [i*s, (i+1)*s) x [j*s, (j+1)*s): the map is first
    stretched to the padded input, cropped to ``img_shape`` (padding removed), un-flipped,
    then resized to ``ori_shape``.
    """
    h, w = heat.shape[-2:]
    full = F.interpolate(heat[None, None].float(), size=(h * stride, w * stride),
                         mode='bilinear', align_corners=False)
    ih, iw = (int(v) for v in meta['img_shape'][:2])
    full = full[..., :ih, :iw]
    if meta.get('flip'):
        direction = meta.get('flip_direction') or 'horizontal'
        dims = {'horizontal': [-1], 'vertical': [-2], 'diagonal': [-2, -1]}[direction]
        full = full.flip(dims)
    oh, ow = (int(v) for v in meta['ori_shape'][:2])
    return F.interpolate(full, size=(oh, ow), mode='bilinear', align_corners=False)[0, 0]

