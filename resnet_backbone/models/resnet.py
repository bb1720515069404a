"""``ResNetV1Custom``: the backbone.

A drop-in for mmdet's ``ResNet`` / ``ResNetV1d``: the same constructor keywords, the
same module tree and state-dict keys, the same outputs, and mmdet's two extension hooks
(``make_res_layer(**kwargs)`` and ``_make_stem_layer(in_channels, stem_channels)``), so
a ResNeXt-style variant is a subclass of a few lines, as in mmdet. On top of that it
fixes what mmdet gets subtly wrong (see README, "Differences from mmdet").
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn

from ..io import weights
from ..spec import (
    ARCH_LAYOUT,
    STEM_TYPES,
    STYLES,
    ShapeSpec,
    check_choice,
    choice_error,
    not_a_tensor_error,
    resolve_levels,
)
from .blocks import BasicBlock, Bottleneck, BottleneckX, ResBlock
from .contract import BackboneContract
from .fast import conv_norm, sequential_conv_norm
from .inference import for_inference
from .norm import check_norm_cfg, is_batch_norm, resolve_norm_cfg
from .resnet_v2 import ResNetV2Custom
from .stages import ResLayer
from .stem import build_stem, module_stride

#: block kind (see ``spec.ARCH_LAYOUT``) -> the class that builds it
BLOCKS: dict[str, type[ResBlock]] = {'basic': BasicBlock, 'bottleneck': Bottleneck}
#: depth -> (block type, blocks per stage), as mmdet's ``ResNet.arch_settings``
ARCH_SETTINGS: dict[int, tuple[type[ResBlock], tuple[int, int, int, int]]] = {
    depth: (BLOCKS[kind], counts) for depth, (kind, counts) in ARCH_LAYOUT.items()}


#: dtype -> the Tensor/Module method that converts to it (for the dtype-mismatch error)
_CAST = {torch.float16: 'half', torch.bfloat16: 'bfloat16', torch.float32: 'float',
         torch.float64: 'double'}


def _as_stage_tuple(name: str, value, num_stages: int, kind: type) -> tuple:
    """Validate a per-stage sequence (strides, dilations, with_cp, ...) of ``num_stages``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f'{name} must be a sequence of {num_stages} {kind.__name__}s '
                        f'(one per stage); got {value!r}')
    if len(value) != num_stages:
        raise ValueError(f'{name} must have one entry per stage: num_stages={num_stages} '
                         f'but len({name})={len(value)} ({tuple(value)!r})')
    if kind is int and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                               for v in value):
        raise ValueError(f'{name} must hold positive ints; got {tuple(value)!r}')
    if kind is bool and not all(isinstance(v, bool) for v in value):
        raise TypeError(f'{name} must hold bools; got {tuple(value)!r}')
    return tuple(value)


class ResNetV1Custom(BackboneContract, BaseModule):
    """ResNet backbone for detection, a drop-in for mmdet's ``ResNet``.

    Args:
        depth: 18, 34, 50, 101, 152 or 200.
        in_channels: Input image channels.
        stem_channels: Stem width; defaults to ``base_channels``.
        base_channels: Width of the first stage (bottleneck width for 50+).
        num_stages: Number of residual stages, 1-4.
        strides: Stride of the first block of each stage (default ``(1, 2, 2, 2)``).
        dilations: Dilation of each stage (default all 1).
        out_indices: Sorted stage indices whose outputs are returned (0 = C2).
        style: ``'pytorch'`` (stride on the 3x3 conv) or ``'caffe'`` (on the first 1x1).
        stem_type: ``'classic'`` (7x7), ``'deep'`` (three 3x3, ResNet-V1c) or ``'small'``
            (one 3x3 stride 1, no max-pool). Defaults to ``'deep'`` if ``deep_stem`` else
            ``'classic'``.
        deep_stem: mmdet's alias for ``stem_type='deep'``.
        avg_down: ResNet-V1d shortcut (avg-pool, then a stride-1 1x1 conv).
        frozen_stages: -1 freezes nothing, 0 the stem, n the stem and stages 1..n.
        conv_cfg: mmcv conv config for every conv (``None`` = ``nn.Conv2d``).
        norm_cfg: mmcv norm config: ``BN``, ``SyncBN``, ``GN``, ``FrozenBN``, ...
        norm_eval: Keep every BatchNorm (SyncBN and mmcv's MMSyncBN too) in eval mode
            during training.
        dcn: Deformable conv config for the 3x3 convs of ``stage_with_dcn`` stages
            (Bottleneck only; imports ``mmcv.ops``).
        stage_with_dcn: Per-stage flags for ``dcn``.
        plugins: mmcv plugin configs, ``dict(cfg=..., position='after_conv1|2|3',
            stages=(bool, ...))``, Bottleneck only.
        with_cp: Gradient checkpointing, a bool or one bool per stage. Non-reentrant:
            every block with a trainable parameter is checkpointed, gradients are
            exact, and BN statistics are updated once per step.
        zero_init_residual: Zero-init the last norm of each block (unless pretrained).
        pretrained: Deprecated, use ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: mmengine init config.
        fast: In a train step, fold every eval-mode BatchNorm (``norm_eval``) into its
            conv on the fly on the CPU, and in compiled or exported graphs, where it
            pays (``fast.worth_folding``); it keeps fewer bytes for backward. Within
            ~1e-6 relative of the reference. :meth:`for_inference` takes the fast
            inference snapshot. ``fast=False`` is the reference mode: mmdet's op order,
            bitwise its outputs.
        drop_path_rate: Stochastic depth: the drop rate of the last block; block ``i`` of
            ``n`` (over all stages) gets ``drop_path_rate * i / (n - 1)``, timm's linear
            rule. Per sample, on the residual branch, in training only (off in eval and
            in frozen stages). 0 (the default) adds nothing: bitwise no change.

    Extension points (mmdet's names and semantics): a subclass may set ``arch_settings``
    (depth -> (block class, blocks per stage)), override :meth:`make_res_layer` (e.g. to
    pass ``groups``/``base_width`` to a ResNeXt block) and :meth:`_make_stem_layer`.

    Example:
        >>> import torch
        >>> from resnet_backbone import ResNetV1Custom
        >>> model = ResNetV1Custom(depth=50, base_channels=8, out_indices=(0, 1, 2, 3)).eval()
        >>> outs = model(torch.rand(1, 3, 64, 64))
        >>> [tuple(o.shape) for o in outs]
        [(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]
        >>> model.out_channels, model.out_strides
        ((32, 64, 128, 256), (4, 8, 16, 32))
    """

    arch_settings = ARCH_SETTINGS

    def __init__(self,
                 depth: int,
                 *,
                 in_channels: int = 3,
                 stem_channels: int | None = None,
                 base_channels: int = 64,
                 num_stages: int = 4,
                 strides: Sequence[int] | None = None,
                 dilations: Sequence[int] | None = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 style: str = 'pytorch',
                 stem_type: str | None = None,
                 deep_stem: bool = False,
                 avg_down: bool = False,
                 frozen_stages: int = -1,
                 conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None,
                 norm_eval: bool = True,
                 dcn: dict | None = None,
                 stage_with_dcn: Sequence[bool] | None = None,
                 plugins: list[dict] | None = None,
                 with_cp: bool | Sequence[bool] = False,
                 zero_init_residual: bool = True,
                 pretrained: str | None = None,
                 init_cfg: dict | list[dict] | None = None,
                 fast: bool = True,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(init_cfg)
        # ---- validation: one-line errors naming the argument and the allowed values
        arch_settings = self.arch_settings  # a subclass's own table (ResNeXt-style)
        check_choice('depth', depth, arch_settings)
        check_choice('num_stages', num_stages, (1, 2, 3, 4))
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int; got {in_channels!r}')
        if not isinstance(base_channels, int) or isinstance(base_channels, bool) or \
                base_channels < 1:
            raise ValueError(f'base_channels must be a positive int; got {base_channels!r}')
        check_choice('style', style, STYLES)
        if stem_type is None:
            stem_type = 'deep' if deep_stem else 'classic'
        else:
            check_choice('stem_type', stem_type, STEM_TYPES)
        if deep_stem and stem_type != 'deep':
            raise ValueError(f"deep_stem=True conflicts with stem_type={stem_type!r}; "
                             "use stem_type='deep' (deep_stem is its alias) or drop deep_stem")
        strides = _as_stage_tuple('strides', strides if strides is not None
                                  else (1, 2, 2, 2)[:num_stages], num_stages, int)
        dilations = _as_stage_tuple('dilations', dilations if dilations is not None
                                    else (1,) * num_stages, num_stages, int)
        if isinstance(out_indices, int) or not isinstance(out_indices, Sequence) or \
                not out_indices:
            raise TypeError(f'out_indices must be a non-empty sequence of stage indices '
                            f'in 0..{num_stages - 1}; got {out_indices!r}')
        out_indices = tuple(out_indices)
        if any(not isinstance(i, int) or not 0 <= i < num_stages for i in out_indices):
            raise choice_error(f'out_indices={out_indices!r} out of range', range(num_stages),
                               f' (num_stages={num_stages})')
        if list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f'out_indices={out_indices!r} must be sorted and unique, e.g. '
                             f'{tuple(sorted(set(out_indices)))!r}')
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
            raise choice_error(f'frozen_stages={frozen_stages!r} is out of range',
                               f'-1..{num_stages}', f' (num_stages={num_stages})')
        if isinstance(with_cp, bool):
            with_cp = (with_cp,) * num_stages
        with_cp = _as_stage_tuple('with_cp', with_cp, num_stages, bool)
        if stage_with_dcn is None:
            stage_with_dcn = (False,) * num_stages
        stage_with_dcn = _as_stage_tuple('stage_with_dcn', stage_with_dcn, num_stages, bool)
        if dcn is not None and issubclass(arch_settings[depth][0], BasicBlock):
            raise ValueError(f'dcn is only supported by Bottleneck blocks (depth >= 50); '
                             f'got dcn with depth={depth}')
        if dcn is not None and not any(stage_with_dcn):
            # mmdet (default stage_with_dcn=(False,)*4) silently builds no DCN here
            example = tuple(i > 0 or num_stages == 1 for i in range(num_stages))
            raise ValueError(f'dcn is set but stage_with_dcn={stage_with_dcn!r} selects no '
                             f'stage, so no DCN would be built; set stage_with_dcn, e.g. '
                             f'stage_with_dcn={example!r}, or drop dcn')
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be a float in [0, 1); got {drop_path_rate!r}')
        if init_cfg and pretrained:
            raise ValueError('init_cfg and pretrained cannot both be set; use only '
                             "init_cfg=dict(type='Pretrained', checkpoint=...)")
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a str (checkpoint path) or None; '
                            f'got {type(pretrained).__name__}')
        for p in plugins or []:
            stages = p.get('stages')
            if stages is not None and len(stages) != num_stages:
                raise ValueError(f'plugins: stages must have one entry per stage: '
                                 f'num_stages={num_stages} but len(stages)={len(stages)}')
        # type='FrozenBN' -> our FrozenBatchNorm2d in every scope (mmdet's fails BN loads)
        norm_cfg = resolve_norm_cfg(norm_cfg)
        check_norm_cfg(norm_cfg)

        # ---- init config, exactly as mmdet
        block, stage_blocks = arch_settings[depth]
        self.zero_init_residual = zero_init_residual
        block_init_cfg = None
        if isinstance(pretrained, str):
            warnings.warn('pretrained is deprecated, please use "init_cfg" instead',
                          DeprecationWarning, stacklevel=2)
            self.init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        elif init_cfg is None:
            self.init_cfg = [dict(type='Kaiming', layer='Conv2d'),
                             dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])]
            last = 'norm2' if issubclass(block, BasicBlock) else \
                'norm3' if issubclass(block, Bottleneck) else None
            if zero_init_residual and last is not None:
                block_init_cfg = dict(type='Constant', val=0, override=dict(name=last))

        self.depth = depth
        self.stem_type = stem_type
        self.deep_stem = stem_type == 'deep'
        self.stem_channels = stem_channels if stem_channels is not None else base_channels
        self.base_channels = base_channels
        self.num_stages = num_stages
        self.strides = strides
        self.dilations = dilations
        self.out_indices = out_indices
        self.style = style
        self.avg_down = avg_down
        self.frozen_stages = frozen_stages
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.with_cp = with_cp
        self.norm_eval = norm_eval
        self.dcn = dcn
        self.stage_with_dcn = stage_with_dcn
        self.plugins = plugins
        self.block = block
        self.stage_blocks = stage_blocks[:num_stages]

        # ---- stem, then stages (registration order = mmdet's, so seeded inits agree)
        self.in_channels = in_channels
        self.inplanes = self.stem_channels
        self._make_stem_layer(in_channels, self.stem_channels)
        self._check_stem()
        self._stem_conv_stride = module_stride(*self._stem_modules())
        stride = self._stem_conv_stride * module_stride(self.maxpool)

        self.res_layers: list[str] = []
        channels, out_strides = [], []
        for i, num_blocks in enumerate(self.stage_blocks):
            planes = base_channels * 2 ** i
            layer = self.make_res_layer(
                block=block, inplanes=self.inplanes, planes=planes, num_blocks=num_blocks,
                stride=strides[i], dilation=dilations[i], style=style, avg_down=avg_down,
                with_cp=with_cp[i], conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                dcn=dcn if stage_with_dcn[i] else None,
                plugins=self.make_stage_plugins(plugins, i) if plugins is not None else None,
                init_cfg=block_init_cfg)
            self.inplanes = planes * block.expansion
            self.add_module(f'layer{i + 1}', layer)
            self.res_layers.append(f'layer{i + 1}')
            stride *= strides[i]
            channels.append(self.inplanes)
            out_strides.append(stride)
        self._stage_channels = tuple(channels)
        self._stage_strides = tuple(out_strides)
        self.feat_dim = self.inplanes
        self.drop_path_rate = float(drop_path_rate)
        for block, rate in zip(self._blocks(), self.drop_path_rates()):
            block.set_drop_path(rate)
        self.fast = fast
        self._freeze_stages()

    def output_shape(self, include_stem: bool = False) -> dict[str, ShapeSpec]:
        """``{'c2': ShapeSpec(channels, stride), ...}`` for the returned maps.

        With ``include_stem``, ``'c1'`` (the stem output before the max-pool) comes first.
        """
        shapes = {}
        if include_stem:
            shapes['c1'] = ShapeSpec(self.stem_channels, self._stem_conv_stride)
        for i in self.out_indices:
            shapes[f'c{i + 2}'] = ShapeSpec(self._stage_channels[i], self._stage_strides[i])
        return shapes

    @classmethod
    def feature_channels(cls, depth: int, base_channels: int = 64,
                         out_indices: Sequence[int] = (0, 1, 2, 3)) -> list[int]:
        """Output channels without building the model, e.g. for an FPN's ``in_channels``.

        Args:
            depth: a key of ``arch_settings``.
            base_channels: width of the first stage.
            out_indices: stage indices (0 = C2).

        Example:
            >>> ResNetV1Custom.feature_channels(18)
            [64, 128, 256, 512]
        """
        check_choice('depth', depth, cls.arch_settings)
        expansion = cls.arch_settings[depth][0].expansion
        return [base_channels * 2 ** i * expansion for i in out_indices]

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    # ------------------------------------------------------------------ mmdet's hooks
    def make_res_layer(self, **kwargs) -> nn.Module:
        """Build one stage; mmdet's hook, with its keyword arguments.

        ``__init__`` calls it once per stage with ``block``, ``inplanes``, ``planes``,
        ``num_blocks``, ``stride``, ``dilation``, ``style``, ``avg_down``, ``with_cp``
        (this stage's bool), ``conv_cfg``, ``norm_cfg``, ``dcn``, ``plugins`` and
        ``init_cfg``. Override it to pass a custom block its own arguments, as mmdet's
        ResNeXt does::

            def make_res_layer(self, **kwargs):
                return ResLayer(groups=self.groups, base_width=self.base_width,
                                base_channels=self.base_channels, **kwargs)

        The stage must output ``planes * block.expansion`` channels at ``stride``.

        Returns:
            The stage, registered as ``layer{i + 1}``.
        """
        return ResLayer(**kwargs)

    def _make_stem_layer(self, in_channels: int, stem_channels: int) -> None:
        """Build the stem and attach it; mmdet's hook, with its semantics.

        The default builds the ``stem_type`` layout (:func:`~.stem.build_stem`). An
        override attaches, as mmdet's does, either ``self.stem`` (run as is; a
        ``Sequential`` of conv/norm/ReLU is folded in fast mode) or ``self.conv1`` with
        ``self.norm1_name`` (the norm's attribute name) and ``self.relu``, and always
        ``self.maxpool`` (``nn.Identity()`` for none). ``self.conv_cfg``,
        ``self.norm_cfg``, ``self.deep_stem`` and ``self.stem_type`` are set before the
        call. The strides (``out_strides``) are read off the conv and pool layers.

        Args:
            in_channels: image channels.
            stem_channels: channels the first stage receives.
        """
        stem = build_stem(self.stem_type, in_channels, stem_channels, self.conv_cfg,
                          self.norm_cfg)
        for name, module in stem.modules.items():
            self.add_module(name, module)
        if stem.norm_name is not None:
            self.norm1_name = stem.norm_name

    def _check_stem(self) -> None:
        """One line when an overridden ``_make_stem_layer`` broke mmdet's contract."""
        has = lambda name: isinstance(getattr(self, name, None), nn.Module)  # noqa: E731
        conv_layout = has('conv1') and has('relu') and \
            isinstance(getattr(self, 'norm1_name', None), str) and has(self.norm1_name)
        if (has('stem') or conv_layout) and has('maxpool'):
            return
        raise TypeError(f'{type(self).__name__}._make_stem_layer must attach self.stem, or '
                        'self.conv1 + self.norm1_name + self.relu, and self.maxpool '
                        "(nn.Identity() for none), as mmdet's ResNet._make_stem_layer does")

    def make_stage_plugins(self, plugins: list[dict], stage_idx: int) -> list[dict]:
        """The plugins of stage ``stage_idx`` (mmdet's semantics of ``stages``)."""
        stage_plugins = []
        for plugin in plugins:
            plugin = plugin.copy()
            stages = plugin.pop('stages', None)
            if stages is None or stages[stage_idx]:
                stage_plugins.append(plugin)
        return stage_plugins

    # ------------------------------------------------------------------ freezing
    def _stem_modules(self) -> list[nn.Module]:
        if 'stem' in self._modules:
            return [self.stem]
        return [self.conv1, self.norm1]

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            for m in self._stem_modules():
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            stage = getattr(self, f'layer{i}')
            stage.eval()
            for block in stage:
                block.freeze()

    def train(self, mode: bool = True) -> ResNetV1Custom:
        """Set train/eval mode; frozen parts and (with ``norm_eval``) every BN stay in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if is_batch_norm(m):
                    m.eval()
        return self

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """mmengine's init, except ``init_cfg=dict(type='Pretrained', ...)``.

        mmengine's ``PretrainedInit`` loads keys as they are, non-strictly, and only logs
        what did not match. Here the checkpoint may be in any dialect (torchvision, timm,
        detectron2, mmpretrain, mmdet; see :mod:`resnet_backbone.io.weights`), is converted,
        loaded strictly unless ``strict=False`` is in the init_cfg, and a load report is
        logged and kept in ``self.load_report``. Extra init_cfg keys: ``source``,
        ``strict``, ``prefix``, ``allow_pickle``.
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            self.load_report = weights.load_pretrained(
                self, cfg['checkpoint'], source=cfg.get('source'),
                strict=cfg.get('strict', True), prefix=cfg.get('prefix'),
                allow_pickle=cfg.get('allow_pickle', False))
            self._is_init = True
            return
        super().init_weights()

    def _dump_init_info(self) -> None:
        # mmengine logs one INFO line per parameter here when no file handler is set up.
        # One DEBUG line is enough.
        print_log(f'{type(self).__name__}: initialised {len(self._params_init_info)} '
                  'parameter tensors', logger='current', level=logging.DEBUG)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):  # else "... has no attribute 'dim'"
            raise not_a_tensor_error('x', x)
        if torch.jit.is_tracing():  # shapes are traced values there; the trace is fixed
            return
        if x.dim() != 4:
            raise ValueError(f'{type(self).__name__} expects a 4-D (N, C, H, W) input; '
                             f'got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'input has {x.shape[1]} channels but in_channels='
                             f'{self.in_channels}; pass (N, {self.in_channels}, H, W)')
        weight = next((p for m in self._stem_modules() for p in m.parameters()), None)
        if weight is None:
            return
        if x.dtype != weight.dtype and not (
                x.is_floating_point() and torch.is_autocast_enabled(x.device.type)):
            # else the first conv fails with a long dtype-mismatch traceback
            to_w = f'x.{_CAST[weight.dtype]}()' if weight.dtype in _CAST else \
                f'x.to({weight.dtype})'
            to_x = f'model.{_CAST[x.dtype]}()' if x.dtype in _CAST else f'model.to({x.dtype})'
            fix = (f'pass {to_w}, convert the model with {to_x}, or run under torch.autocast'
                   if x.is_floating_point() else f'pass {to_w}')
            raise TypeError(f'input dtype is {x.dtype} but the model\'s parameters are '
                            f'{weight.dtype}; {fix}')

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """C1: the stem output *before* the max-pool (stride 2, or 1 for 'small')."""
        if 'stem' in self._modules:
            if isinstance(self.stem, nn.Sequential):
                return sequential_conv_norm(self.stem, x, self._fast)
            return self.stem(x)
        return self.relu(conv_norm(self.conv1, self.norm1, x, self._fast))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the maps of ``out_indices`` (C2..C5), in order."""
        self._check_input(x)
        x = self.maxpool(self.forward_stem(x))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def forward_levels(self, x: torch.Tensor, levels: Sequence[str] | str | None = None
                       ) -> dict[str, torch.Tensor]:
        """Named maps ``{'c1': ..., 'c2': ..., ...}`` for dumping and inspection.

        Not timm's ``forward_features`` (which returns the last map) nor its
        ``forward_intermediates``: a dict of the named levels, computed in one pass that
        stops after the deepest level asked for.

        Args:
            x: (N, C, H, W) input.
            levels: names among ``'c1'`` (stem, before the max-pool) and ``'c2'``..``'c5'``
                (every built stage, not only ``out_indices``), as a sequence or a
                comma-separated string. Default: ``'c1'`` and the ``out_indices`` maps.

        Returns:
            ``{level: (N, C, H, W) map}`` in the order asked for.

        Raises:
            ValueError: an unknown level (one line listing the available ones).

        Example:
            >>> m = ResNetV1Custom(depth=18, base_channels=8).eval()
            >>> {k: tuple(v.shape) for k, v in m.forward_levels(
            ...     torch.rand(1, 3, 64, 64), levels=['c1', 'c5']).items()}
            {'c1': (1, 8, 32, 32), 'c5': (1, 64, 2, 2)}
        """
        levels, built = resolve_levels(levels, self.num_stages, self.out_indices)
        self._check_input(x)
        feats = {}
        x = self.forward_stem(x)
        feats['c1'] = x
        x = self.maxpool(x)
        last = max(built.index(lv) for lv in levels)
        for i, name in enumerate(self.res_layers[:last]):
            x = getattr(self, name)(x)
            feats[f'c{i + 2}'] = x
        return {lv: feats[lv] for lv in levels}

    def for_inference(self, dtype: str = 'fp32', compile: bool = False,  # noqa: A002
                      method: str = 'forward') -> nn.Module:
        """An eval-only snapshot for fast inference: BN folded once, oneDNN's fused
        kernels and the in-place add on the CPU, float32 or bfloat16, optionally compiled
        (:mod:`resnet_backbone.models.inference`). It is rebuilt when this backbone's
        weights change; this backbone is not changed.

        Args:
            dtype: ``'fp32'`` or ``'bf16'``.
            compile: Run it compiled by Inductor.
            method: With ``compile``: ``'forward'`` or ``'forward_levels'``.

        Example:
            >>> m = ResNetV1Custom(depth=18, base_channels=8)
            >>> [tuple(o.shape) for o in m.for_inference()(torch.rand(1, 3, 64, 64))][-1]
            (1, 64, 2, 2)
        """
        return for_inference(self, dtype, compile, method)


def _preset(name: str, doc: str, **preset):
    def __init__(self, depth: int, **kwargs) -> None:
        clash = sorted(k for k in preset if k in kwargs and kwargs[k] != preset[k])
        if clash:
            raise ValueError(f'{name} fixes {", ".join(f"{k}={preset[k]!r}" for k in clash)}; '
                             f'use ResNetV1Custom to change {", ".join(clash)}')
        kwargs.update(preset)
        ResNetV1Custom.__init__(self, depth, **kwargs)

    return type(name, (ResNetV1Custom,), {'__init__': __init__, '__doc__': doc})


ResNetV1cCustom = _preset(
    'ResNetV1cCustom', 'ResNet-V1c: ``ResNetV1Custom(stem_type="deep")``.', stem_type='deep')
ResNetV1dCustom = _preset(
    'ResNetV1dCustom', "ResNet-V1d, mmdet's ``ResNetV1d``: "
    '``ResNetV1Custom(stem_type="deep", avg_down=True)``.', stem_type='deep', avg_down=True)


class ResNeXtCustom(ResNetV1Custom):
    """ResNeXt, a drop-in for mmdet's ``ResNeXt``: grouped bottlenecks (:class:`BottleneckX`).

    mmdet's ResNeXt over its ResNet, on ours: an ``arch_settings`` table and the
    ``make_res_layer`` hook. Swapping ``type='ResNeXt'`` for ``'ResNeXtCustom'`` in an
    mmdet config gives the same module tree and state-dict keys and, with ``fast=False``,
    bitwise the same outputs. Everything else is :class:`ResNetV1Custom`'s (``fast``,
    ``with_cp``, ``drop_path_rate``, stems, ...).

    Args:
        depth: 50, 101 or 152.
        groups: Groups of each 3x3 conv (32 in ``x101-32x4d``); 1 is a plain ResNet.
        base_width: Width per group in the first stage (4 in ``x101-32x4d``).
        **kwargs: :class:`ResNetV1Custom`'s keywords.

    Example:
        >>> m = ResNeXtCustom(depth=50, groups=4, base_width=4, base_channels=16).eval()
        >>> m.layer1[0].conv2.groups, m.layer1[0].conv2.out_channels, m.out_channels
        (4, 16, (64, 128, 256, 512))
    """

    arch_settings = {50: (BottleneckX, (3, 4, 6, 3)), 101: (BottleneckX, (3, 4, 23, 3)),
                     152: (BottleneckX, (3, 8, 36, 3))}

    def __init__(self, depth: int, *, groups: int = 1, base_width: int = 4, **kwargs) -> None:
        # set before the stages are built: make_res_layer reads them (as in mmdet)
        self.groups = groups
        self.base_width = base_width
        super().__init__(depth, **kwargs)

    def make_res_layer(self, **kwargs) -> nn.Module:
        """A stage of :class:`BottleneckX` with this backbone's groups and widths."""
        return ResLayer(groups=self.groups, base_width=self.base_width,
                        base_channels=self.base_channels, **kwargs)


def backbone_for_checkpoint(checkpoint: str | Path | Mapping, *, source: str | None = None,
                            allow_pickle: bool = False, **overrides):
    """A ``ResNetV1Custom`` built as the checkpoint's keys imply (depth, stem, shortcut,
    widths; ``overrides`` win, None means infer), and the converted weights. Grouped 3x3
    convs in the keys (``groups`` implied) give a ``ResNeXtCustom``; a ResNet v2 file
    (timm ``resnetv2_*``, Keras, TF-slim) a ``ResNetV2Custom`` in the file's layout
    (``stride_in``, ``stem_pool_padding``, ``conv_bias``).

    The same inference as ``tools/convert_weights.py``; raises ``ValueError`` (one line)
    when the depth cannot be told from the keys and no ``depth`` is given.
    """
    ckpt = weights.read_checkpoint(checkpoint, allow_pickle=allow_pickle) \
        if not isinstance(checkpoint, Mapping) else checkpoint
    converted = weights.convert(ckpt, source=source)
    implied = dict(converted.implied)
    implied.update({k: v for k, v in overrides.items() if v is not None})
    if 'depth' not in implied:
        raise choice_error('cannot infer the depth from the keys; pass --depth', ARCH_SETTINGS)
    kwargs = {k: v for k, v in implied.items() if v is not None}
    if kwargs.pop('variant', None) == 'v2':  # timm resnetv2, Keras, TF-slim
        v1_only = sorted(k for k in ('stem_type', 'avg_down', 'style', 'groups')
                         if k in kwargs)
        if v1_only:
            raise ValueError(f'{", ".join(v1_only)} do not apply to a ResNet v2 checkpoint '
                             f'({converted.source}); drop them')
        model = ResNetV2Custom(**kwargs)
        weights.fit_to_model(model, converted)
        return model, converted, kwargs
    cls = ResNeXtCustom if kwargs.get('groups', 1) != 1 else ResNetV1Custom
    if cls is ResNetV1Custom:
        kwargs.pop('groups', None), kwargs.pop('base_width', None)
    return cls(**kwargs), converted, kwargs
