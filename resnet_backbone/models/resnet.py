"""``ResNetV1Custom``: the backbone.

A drop-in for mmdet's ``ResNet`` / ``ResNetV1d``: the same constructor keywords, the
same module tree and state-dict keys, the same outputs, and mmdet's two extension hooks
(``make_res_layer(**kwargs)`` and ``_make_stem_layer(in_channels, stem_channels)``), so
a ResNeXt-style variant is a subclass of a few lines, as in mmdet. On top of that it
fixes what mmdet gets subtly wrong (see README, "Differences from mmdet").
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..spec import (
    ARCH_LAYOUT,
    STYLES,
    check_bool,
    check_choice,
    per_stage,
    resolve_levels,
    resolve_stem_type,
)
from .blocks import BasicBlock, Bottleneck, BottleneckX, ResBlock
from .contract import BackboneContract
from .fast import conv_norm, sequential_conv_norm
from .inference import for_inference
from .stages import ResLayer
from .stem import build_stem, module_stride

#: block kind (see ``spec.ARCH_LAYOUT``) -> the class that builds it
BLOCKS: dict[str, type[ResBlock]] = {'basic': BasicBlock, 'bottleneck': Bottleneck}
#: depth -> (block type, blocks per stage), as mmdet's ``ResNet.arch_settings``
ARCH_SETTINGS: dict[int, tuple[type[ResBlock], tuple[int, int, int, int]]] = {
    depth: (BLOCKS[kind], counts) for depth, (kind, counts) in ARCH_LAYOUT.items()}


def _check_dcn_and_plugins(dcn: dict | None, stage_with_dcn: tuple[bool, ...],
                           plugins: list[dict] | None, block: type[ResBlock], depth: int,
                           num_stages: int) -> None:
    """One line where ``dcn`` or ``plugins`` cannot apply as given."""
    if dcn is not None and issubclass(block, BasicBlock):
        raise ValueError(f'dcn is only supported by Bottleneck blocks (depth >= 50); '
                         f'got dcn with depth={depth}')
    if dcn is not None and not any(stage_with_dcn):
        # mmdet (default stage_with_dcn=(False,)*4) silently builds no DCN here
        example = tuple(i > 0 or num_stages == 1 for i in range(num_stages))
        raise ValueError(f'dcn is set but stage_with_dcn={stage_with_dcn!r} selects no '
                         f'stage, so no DCN would be built; set stage_with_dcn, e.g. '
                         f'stage_with_dcn={example!r}, or drop dcn')
    for p in plugins or []:
        stages = p.get('stages')
        if stages is not None and len(stages) != num_stages:
            raise ValueError(f'plugins: stages must have one entry per stage: '
                             f'num_stages={num_stages} but len(stages)={len(stages)}')


class ResNetV1Custom(BackboneContract):
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

    def __init__(self, depth: int, *, in_channels: int = 3, stem_channels: int | None = None,
                 base_channels: int = 64, num_stages: int = 4,
                 strides: Sequence[int] | None = None, dilations: Sequence[int] | None = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3), style: str = 'pytorch',
                 stem_type: str | None = None, deep_stem: bool = False, avg_down: bool = False,
                 frozen_stages: int = -1, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, norm_eval: bool = True, dcn: dict | None = None,
                 stage_with_dcn: Sequence[bool] | None = None,
                 plugins: list[dict] | None = None, with_cp: bool | Sequence[bool] = False,
                 zero_init_residual: bool = True, pretrained: str | None = None,
                 init_cfg: dict | list[dict] | None = None, fast: bool = True,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(init_cfg)
        # ---- validate: what every backbone takes (set as attributes), then V1's own
        block_init_cfg = self._init_common(
            depth, num_stages, in_channels=in_channels, stem_channels=stem_channels,
            base_channels=base_channels, out_indices=out_indices, frozen_stages=frozen_stages,
            conv_cfg=conv_cfg, norm_cfg=norm_cfg, norm_eval=norm_eval, with_cp=with_cp,
            zero_init_residual=zero_init_residual, pretrained=pretrained, init_cfg=init_cfg,
            drop_path_rate=drop_path_rate)
        check_choice('style', style, STYLES)
        stem_type = resolve_stem_type(stem_type, check_bool('deep_stem', deep_stem))
        strides = per_stage('strides', strides, num_stages, int,
                            default=(1, 2, 2, 2)[:num_stages])
        dilations = per_stage('dilations', dilations, num_stages, int,
                              default=(1,) * num_stages)
        stage_with_dcn = per_stage('stage_with_dcn', stage_with_dcn, num_stages, bool,
                                   default=(False,) * num_stages)
        _check_dcn_and_plugins(dcn, stage_with_dcn, plugins, self.block, depth, num_stages)

        # ---- V1's attributes (mmdet's names)
        self.stem_type, self.deep_stem = stem_type, stem_type == 'deep'
        self.strides, self.dilations, self.style = strides, dilations, style
        self.avg_down = check_bool('avg_down', avg_down)
        self.dcn, self.stage_with_dcn, self.plugins = dcn, stage_with_dcn, plugins

        # ---- stem, then stages (registration order = mmdet's, so seeded inits agree)
        self.inplanes = self.stem_channels
        self._make_stem_layer(in_channels, self.stem_channels)
        self._check_stem()
        self._stem_conv_stride = module_stride(*self._stem_modules())
        stride = self._stem_conv_stride * module_stride(self.maxpool)
        for i, num_blocks in enumerate(self.stage_blocks):
            planes = base_channels * 2 ** i
            layer = self.make_res_layer(
                block=self.block, inplanes=self.inplanes, planes=planes, num_blocks=num_blocks,
                stride=strides[i], dilation=dilations[i], style=style, avg_down=avg_down,
                with_cp=self.with_cp[i], conv_cfg=conv_cfg, norm_cfg=self.norm_cfg,
                dcn=dcn if stage_with_dcn[i] else None,
                plugins=self.make_stage_plugins(plugins, i) if plugins is not None else None,
                init_cfg=block_init_cfg)
            self.inplanes = planes * self.block.expansion
            stride *= strides[i]
            self._add_stage(layer, self.inplanes, stride)
        self._finish_init(fast)

    def _zero_init_layer(self) -> str | None:
        """mmdet's: the last norm of a BasicBlock/Bottleneck; none for other blocks."""
        return 'norm2' if issubclass(self.block, BasicBlock) else \
            'norm3' if issubclass(self.block, Bottleneck) else None

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

    def _stem_modules(self) -> list[nn.Module]:
        """The stem's layers with parameters (frozen with ``frozen_stages >= 0``)."""
        if 'stem' in self._modules:
            return [self.stem]
        return [self.conv1, self.norm1]

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


def _with_preset(name: str, kwargs: dict, **preset) -> dict:
    """``kwargs`` with a preset class's fixed keywords; one line if ``kwargs`` differ."""
    clash = sorted(k for k in preset if k in kwargs and kwargs[k] != preset[k])
    if clash:
        raise ValueError(f'{name} fixes {", ".join(f"{k}={preset[k]!r}" for k in clash)}; '
                         f'use ResNetV1Custom to change {", ".join(clash)}')
    return {**kwargs, **preset}


class ResNetV1cCustom(ResNetV1Custom):
    """ResNet-V1c: ``ResNetV1Custom(stem_type='deep')`` (three 3x3 convs in the stem).

    Example:
        >>> ResNetV1cCustom(18, base_channels=4).stem_type
        'deep'
    """

    def __init__(self, depth: int, **kwargs) -> None:
        super().__init__(depth, **_with_preset('ResNetV1cCustom', kwargs, stem_type='deep'))


class ResNetV1dCustom(ResNetV1Custom):
    """ResNet-V1d, mmdet's ``ResNetV1d``: ``ResNetV1Custom(stem_type='deep',
    avg_down=True)`` (the deep stem, and an avg-pool before each strided projection).

    Example:
        >>> m = ResNetV1dCustom(50, base_channels=4)
        >>> m.stem_type, type(m.layer2[0].downsample[0]).__name__
        ('deep', 'AvgPool2d')
    """

    def __init__(self, depth: int, **kwargs) -> None:
        super().__init__(depth, **_with_preset('ResNetV1dCustom', kwargs, stem_type='deep',
                                               avg_down=True))


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

    arch_settings = {depth: (BottleneckX, ARCH_LAYOUT[depth][1]) for depth in (50, 101, 152)}

    def __init__(self, depth: int, *, groups: int = 1, base_width: int = 4, **kwargs) -> None:
        # set before the stages are built: make_res_layer reads them (as in mmdet)
        self.groups = groups
        self.base_width = base_width
        super().__init__(depth, **kwargs)

    def make_res_layer(self, **kwargs) -> nn.Module:
        """A stage of :class:`BottleneckX` with this backbone's groups and widths."""
        return ResLayer(groups=self.groups, base_width=self.base_width,
                        base_channels=self.base_channels, **kwargs)
