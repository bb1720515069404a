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
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch import nn

from ..engine.compat import pkg_resources_reloads_quiet, register_mmdet_modules
from ..io.checkpoint_io import safe_globals_kept
from ..io.checkpoint_loading import (
    coverage_share,
    file_digest,
    load_detector_checkpoint,
    quiet_init_logging,
)
from ..io.weights import _URL_PREFIXES, cached_checkpoint_file
from ..models.compiled import CompiledInference
from ..models.inference import check_compute_dtype, inference_model
from ..models.resnet import ResNetV1Custom
from ..spec import choice_error
from .dump.rois import Boxes, RoIFeatures, predict, roi_extractor, roi_features, to_original
from .images import (
    ImageInput,
    build_pipeline,
    default_pipeline,
    inference_pipeline,
    load_image,
)

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
    rois: RoIFeatures | None = None  # with RoIs asked for (see resnet_backbone.apis.dump.rois)


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


def _as_tuple(value) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (float(value),)
    return tuple(float(v) if isinstance(v, (float, np.floating)) else int(v) for v in value)


@dataclass(frozen=True)
class PredictedBoxes:
    """Ask for RoI features of the detector's own predictions."""

    score_thr: float = 0.3
    max_per_image: int = 100


#: RoI features for given boxes (one Boxes per sample) or for the predictions
RoIRequest = Sequence[Boxes] | PredictedBoxes


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
                                          else default_pipeline())
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
        and the neck and heads keep their seeded random initialisation
        (:func:`~resnet_backbone.io.checkpoint_loading.load_detector_checkpoint`). Anything
        else raises its ``CheckpointMismatchError``, one line naming the file and the
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
                share = coverage_share(model, model.backbone, report)
                weights['coverage'] = {'backbone': round(report.coverage, 4),
                                       'detector': round(share, 4)}
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
        """The RoI extractor (see :func:`resnet_backbone.apis.dump.rois.roi_extractor`) and
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
        """Run the test pipeline on one image (see
        :func:`~resnet_backbone.apis.images.load_image`)."""
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

        ``rois``: also RoI features (:mod:`resnet_backbone.apis.dump.rois`), for a list of
        :class:`~resnet_backbone.apis.dump.rois.Boxes` per sample (original-image pixels) or
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
        predictions: ``record.rois`` (:class:`~resnet_backbone.apis.dump.rois.RoIFeatures`:
        ``rois`` (N, C, 7, 7), ``pooled`` (N, C), one record per box).

        ``boxes``: an (N, 4) tensor, numpy array or list of ``x1, y1, x2, y2`` in
        original-image pixels (labels -1, no scores); a
        :class:`~resnet_backbone.apis.dump.rois.Boxes` (with labels and scores); or
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

