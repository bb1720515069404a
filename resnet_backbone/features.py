"""Feature-map extraction with geometry: C1-C5 from the backbone, P-levels from the neck.

The maps are computed exactly as inference computes them: the model's own test pipeline
(resize, ...) and its own data preprocessor (normalisation, BGR->RGB, padding), then
the backbone, then the neck. Every map comes with the geometry needed to put it back on
the original image: ``stride``, ``ori_shape``, ``img_shape`` (after resize),
``pad_shape`` (after padding), ``scale_factor`` and the flip state.

Example:
    >>> import numpy as np
    >>> from resnet_backbone import ResNetV1Custom
    >>> from resnet_backbone.features import FeatureExtractor
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
from torch import nn

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


class _BareBackboneDetector(nn.Module):
    """Wraps a bare backbone with the pieces a detector would bring."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
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
    """

    def __init__(self, model: nn.Module, *, pipeline: Sequence[dict] | None = None,
                 levels: Sequence[str] | None = None) -> None:
        from mmcv.transforms import Compose
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
        self.model = model if hasattr(model, 'data_preprocessor') else \
            _BareBackboneDetector(model)
        self.model.eval()
        self.weights = {'source': 'as given', 'note': 'model passed in by the caller'}
        self.config_sha256: str | None = None  # set by from_config (see config_digest)
        self.backbone = self.model.backbone
        self.neck = getattr(self.model, 'neck', None)
        from mmengine.registry import DefaultScope
        with DefaultScope.overwrite_default_scope('mmdet'):
            self.pipeline = Compose(list(pipeline) if pipeline is not None
                                    else _default_pipeline())
        self.strides = self._probe_strides()
        default = [f'c{int(math.log2(s))}' for s in self._backbone_out_strides()]
        self.levels = list(levels) if levels is not None else default
        unknown = [lv for lv in self.levels if lv not in self.strides]
        if unknown:
            raise ValueError(f'levels {unknown} are not available from this model; allowed '
                             f"values: {', '.join(self.strides)}")

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config, checkpoint: str | None = None, *, device: str = 'cpu',
                    levels: Sequence[str] | None = None, seed: int = 0) -> FeatureExtractor:
        """Build the detector of ``config`` and load ``checkpoint`` (if any).

        Without a checkpoint the model keeps its ``init_cfg`` initialisation (a local
        ``Pretrained`` backbone file is loaded; otherwise weights are random, seeded);
        :attr:`weights` says which.
        """
        from mmengine.config import Config
        from mmengine.registry import DefaultScope

        from .training import setup_environment
        setup_environment()
        cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
        digest = config_digest(cfg)  # before the build: mmdet's builders edit cfg.model
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
            from mmdet.registry import MODELS
            torch.manual_seed(seed)
            model = MODELS.build(cfg.model)
            weights = cls._init_or_load(model, cfg, checkpoint, seed)
        model.to(device)
        fx = cls(model, pipeline=inference_pipeline(cfg), levels=levels)
        fx.weights = weights
        fx.config_sha256 = digest
        return fx

    @staticmethod
    def _init_or_load(model, cfg, checkpoint, seed) -> dict:
        if checkpoint is not None:
            from mmengine.runner.checkpoint import _load_checkpoint_to_model

            from .weights import read_checkpoint

            # our safe reader: an unreadable file is one line naming it, never torch's
            # advice to retry with weights_only=False
            ckpt = read_checkpoint(checkpoint)
            _load_checkpoint_to_model(model, ckpt, strict=False, logger='silent')
            meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
            if 'dataset_meta' in meta:
                model.dataset_meta = meta['dataset_meta']
            return {'source': 'checkpoint', 'checkpoint': str(checkpoint),
                    'sha256': file_digest(checkpoint)}
        init = cfg.model.get('backbone', {}).get('init_cfg')
        pretrained = init.get('checkpoint') if isinstance(init, dict) and \
            init.get('type') == 'Pretrained' else None
        if pretrained is not None and not Path(str(pretrained)).is_file():
            # a URL (torchvision://, open-mmlab://) cannot be fetched offline: random init
            model.backbone.init_cfg = None
            pretrained_note = f'{pretrained} not available locally'
        else:
            pretrained_note = None
        from .compat import quiet_init_logging
        with quiet_init_logging():
            model.init_weights()
        if pretrained is not None and pretrained_note is None:
            return {'source': 'pretrained-backbone', 'checkpoint': str(pretrained),
                    'sha256': file_digest(pretrained), 'seed': seed,
                    'note': 'backbone from init_cfg, the rest randomly initialised'}
        return {'source': 'random', 'seed': seed,
                'note': pretrained_note or 'no checkpoint given: random initialisation'}

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
            c_outs, p_outs, stem = self._raw_forward(x, want_neck=True)
        name = lambda t: int(math.log2(size // t.shape[-1]))  # noqa: E731
        self._names = ([f'c{name(t)}' for t in c_outs], [f'p{name(t)}' for t in p_outs])
        strides = {k: size // v.shape[-1] for k, v in stem.items()}
        for names, outs in zip(self._names, (c_outs, p_outs)):
            strides.update({n: size // t.shape[-1] for n, t in zip(names, outs)})
        return dict(sorted(strides.items(), key=lambda kv: (kv[0][0], kv[1])))

    # ---------------------------------------------------------------- forward
    def _raw_forward(self, x: torch.Tensor, want_neck: bool):
        """(backbone stage outputs, neck outputs, {'c1': stem} or {})."""
        stem = {}
        if hasattr(self.backbone, 'forward_features'):
            every = [f'c{i + 2}' for i in range(self.backbone.num_stages)]
            feats = self.backbone.forward_features(x, levels=['c1'] + every)
            stem = {'c1': feats.pop('c1')}
            c_outs = tuple(feats.values())
            backbone_outs = tuple(c_outs[i] for i in self.backbone.out_indices)
        else:
            c_outs = backbone_outs = tuple(self.backbone(x))
        p_outs = tuple(self.neck(backbone_outs)) if self.neck is not None and want_neck else ()
        return c_outs, p_outs, stem

    def _forward(self, x: torch.Tensor, levels: Sequence[str]) -> dict[str, torch.Tensor]:
        """The maps named in ``levels``, from one pass."""
        c_outs, p_outs, stem = self._raw_forward(
            x, want_neck=any(lv.startswith('p') for lv in levels))
        out = dict(stem)
        out.update(zip(self._names[0], c_outs))
        out.update(zip(self._names[1], p_outs))
        return {lv: out[lv] for lv in levels}

    def preprocess(self, image: str | Path | np.ndarray) -> dict:
        """Run the test pipeline and the data preprocessor on one image.

        ``image`` is a file path, or an (H, W, 3) uint8 array in BGR order (as
        ``mmcv.imread`` returns).
        """
        if isinstance(image, np.ndarray):
            data = dict(img=image, img_id=0, img_path=None, ori_shape=image.shape[:2],
                        img_shape=image.shape[:2])
            transforms = [t for t in self.pipeline.transforms
                          if 'LoadImage' not in type(t).__name__]
            for t in transforms:
                data = t(data)
        else:
            data = self.pipeline(dict(img_path=str(image), img_id=0))
        if data is None:
            raise ValueError(f'the test pipeline dropped image {image!r}')
        batch = dict(inputs=[data['inputs']], data_samples=[data['data_samples']])
        return self.model.data_preprocessor(batch, False)

    @torch.no_grad()
    def __call__(self, image: str | Path | np.ndarray) -> FeatureRecord:
        batch = self.preprocess(image)
        inputs = batch['inputs']
        sample = batch['data_samples'][0]
        feats = self._forward(inputs, self.levels)
        meta = {
            'image': str(image) if not isinstance(image, np.ndarray) else None,
            'ori_shape': _as_tuple(sample.metainfo.get('ori_shape')),
            'img_shape': _as_tuple(sample.metainfo.get('img_shape')),
            'pad_shape': _as_tuple(sample.metainfo.get('pad_shape')),
            'batch_input_shape': _as_tuple(sample.metainfo.get('batch_input_shape')),
            'scale_factor': _as_tuple(sample.metainfo.get('scale_factor', (1.0, 1.0))),
            'flip': bool(sample.metainfo.get('flip', False)),
            'flip_direction': sample.metainfo.get('flip_direction'),
        }
        return FeatureRecord(feats, {lv: self.strides[lv] for lv in feats}, meta)


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
    """min, max, mean, std of a map (float64 reductions)."""
    d = t.detach().double()
    return {'min': float(d.min()), 'max': float(d.max()), 'mean': float(d.mean()),
            'std': float(d.std()) if d.numel() > 1 else 0.0}


def unpad_to_original(heat: torch.Tensor, stride: int, meta: dict) -> torch.Tensor:
    """Map an (h, w) map at ``stride`` back onto the original image, (H_ori, W_ori).

    Cell (i, j) covers input pixels [i*s, (i+1)*s) x [j*s, (j+1)*s): the map is first
    stretched to the padded input, cropped to ``img_shape`` (padding removed), un-flipped,
    then resized to ``ori_shape``.
    """
    import torch.nn.functional as F
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

