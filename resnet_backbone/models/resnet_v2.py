"""``ResNetV2Custom``: the pre-activation ResNet (He et al. 2016, "Identity Mappings in
Deep Residual Networks") as a detection backbone.

Three published layouts, selected by keywords (docs/resnet_v2.md, "The three layouts"):

- timm ``resnetv2_50/101`` (``stride_in='first'``, the defaults): the stride sits in a
  stage's first unit; no biases; PyTorch's stem pool (``'symmetric'``).
- Keras ``ResNet50V2/101V2/152V2`` (``stride_in='last'``, ``stem_pool_padding='zeros'``):
  the stride sits in a stage's last unit; the stem conv, every conv3 and every projection
  carry a bias; the stem pool zero-pads.
- TF-slim ``resnet_v2_50/101/152/200`` (``stride_in='last'``, ``stem_pool_padding=
  'same'``): Keras's layout with TensorFlow's SAME max-pool in the stem.

With ``stride_in='last'`` the stage outputs sit at strides 8/16/32/32, so C2..C4 are
taken from the activation *before* each stage's subsampling (last) unit, as TF-slim's
``store_non_strided_activations``: ``block1/unit_{n-1}``, ``block2/unit_{n-1}``,
``block3/unit_{n-1}`` and ``block4`` (R50: ``unit_2``, ``unit_3``, ``unit_5``), at strides
4/8/16/32. ``out_indices`` keeps its meaning in either layout.

Every unit is a :class:`~.blocks.PreActBottleneck`: one block description, run by the
generic code (reference, BN folded where a BN follows a conv, checkpointed).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmengine.model import Sequential
from torch import nn

from ..spec import ARCH_LAYOUT, check_bool, check_choice, resolve_levels
from .blocks import PreActBottleneck
from .contract import BackboneContract
from .stem import STEM_POOL_PADDINGS, build_stem_pool, module_stride

#: depth -> units per stage: the bottleneck depths of ``spec.ARCH_LAYOUT`` (TF-slim's
#: resnet_v2_50/101/152/200, Keras's 50V2/101V2/152V2)
V2_ARCH_SETTINGS: dict[int, tuple[int, int, int, int]] = {
    depth: counts for depth, (kind, counts) in ARCH_LAYOUT.items() if kind == 'bottleneck'}
#: where a stage's stride sits: its first unit (timm, the paper's PyTorch form) or its
#: last (TF-slim, Keras)
STRIDE_IN = ('first', 'last')
#: ``out_norm`` default, chosen by the measurement in docs/resnet_v2.md
OUT_NORM_DEFAULT = False
LEVEL_NAMES = ('c2', 'c3', 'c4', 'c5')


class ResNetV2Custom(BackboneContract):
    """Pre-activation ResNet (v2) backbone for detection: C2..C5 at strides 4/8/16/32.

    Args:
        depth: 50, 101, 152 or 200.
        in_channels: Input image channels.
        stem_channels: Width of the stem conv; defaults to ``base_channels`` (Keras and
            TF-slim keep 64 whatever the stage widths).
        base_channels: Bottleneck width of the first stage; stage ``i`` outputs
            ``base_channels * 2**i * 4`` channels.
        out_indices: Sorted stage indices whose levels are returned (0 = C2).
        stride_in: ``'first'`` (timm) or ``'last'`` (TF-slim, Keras); see the module doc.
        stem_pool_padding: ``'symmetric'`` (PyTorch/timm), ``'zeros'`` (Keras) or
            ``'same'`` (TensorFlow's SAME, TF-slim).
        conv_bias: The stem conv, every conv3 and every projection carry a bias. ``None``:
            as the layout's weights have them (``stride_in='last'``: yes; ``'first'``: no).
        out_norm: BN (``norm_cfg``) + ReLU on each returned level; the last stage's is the
            network's final norm (TF-slim's ``postnorm``, ``post_norm.*``). Without it the
            levels are the raw pre-activation sums and the final norm is not built (a
            checkpoint's ``post_norm.*`` is dropped at load, like a classifier).
        frozen_stages: -1 freezes nothing, 0 the stem, n the stem and stages 1..n (the
            final norm with stage 4; the other level norms are never frozen: no
            pretrained file has them).
        conv_cfg: mmcv conv config (``None`` = ``nn.Conv2d``).
        norm_cfg: mmcv norm config (BN, SyncBN, GN, FrozenBN, ...).
        norm_eval: Keep every BatchNorm in eval mode during training.
        with_cp: Gradient checkpointing, a bool or one bool per stage (exact gradients,
            BN statistics updated once).
        zero_init_residual: Zero-init every conv3 (each unit starts as its shortcut, as
            timm's ``zero_init_last``), unless pretrained.
        pretrained: Deprecated, use ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: mmengine init config; ``Pretrained`` reads timm, Keras (``.h5``) and
            TF-slim (``.npz``, a TF checkpoint prefix) weights (:mod:`~..io.weights`).
        fast: Fold every eval-mode BN that follows a conv into it (conv1/bn1, conv2/bn2);
            the pre-activation BN has no conv before it and runs as is.
        drop_path_rate: Stochastic depth, timm's linear rule over all units.

    Example:
        >>> m = ResNetV2Custom(50, base_channels=8, stride_in='last').eval()
        >>> [tuple(o.shape) for o in m(torch.rand(1, 3, 64, 64))]
        [(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]
        >>> m.out_strides
        (4, 8, 16, 32)
    """

    arch_settings = V2_ARCH_SETTINGS

    def __init__(self, depth: int, *, in_channels: int = 3, stem_channels: int | None = None,
                 base_channels: int = 64, out_indices: Sequence[int] = (0, 1, 2, 3),
                 stride_in: str = 'first', stem_pool_padding: str = 'symmetric',
                 conv_bias: bool | None = None, out_norm: bool = OUT_NORM_DEFAULT,
                 frozen_stages: int = -1, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, norm_eval: bool = True,
                 with_cp: bool | Sequence[bool] = False, zero_init_residual: bool = True,
                 pretrained: str | None = None, init_cfg: dict | list[dict] | None = None,
                 fast: bool = True, drop_path_rate: float = 0.0) -> None:
        super().__init__(init_cfg)
        # ---- validate: what every backbone takes (set as attributes), then v2's own
        block_init_cfg = self._init_common(
            depth, 4, in_channels=in_channels, stem_channels=stem_channels,
            base_channels=base_channels, out_indices=out_indices, frozen_stages=frozen_stages,
            conv_cfg=conv_cfg, norm_cfg=norm_cfg, norm_eval=norm_eval, with_cp=with_cp,
            zero_init_residual=zero_init_residual, pretrained=pretrained, init_cfg=init_cfg,
            drop_path_rate=drop_path_rate)
        check_choice('stride_in', stride_in, STRIDE_IN)
        check_choice('stem_pool_padding', stem_pool_padding, STEM_POOL_PADDINGS)
        check_bool('conv_bias', conv_bias, optional=True)

        # ---- v2's attributes; biases by default as the layout's weights have them
        self.stride_in, self.stem_pool_padding = stride_in, stem_pool_padding
        self.conv_bias = (stride_in == 'last') if conv_bias is None else conv_bias
        self.out_norm = check_bool('out_norm', out_norm)

        # ---- stem: a 7x7/2 conv (no norm, no activation), then the 3x3/2 max-pool
        self.conv1 = build_conv_layer(conv_cfg, in_channels, self.stem_channels, 7, stride=2,
                                      padding=3, bias=self.conv_bias)
        self.maxpool = build_stem_pool(stem_pool_padding)
        self._stem_conv_stride = module_stride(self.conv1)

        # ---- stages: the stride in the first unit ('first') or the last ('last'; the
        # last stage then has none), the projection wherever the width changes
        strides = (1, 2, 2, 2) if stride_in == 'first' else (2, 2, 2, 1)
        inplanes = self.stem_channels
        for i, n in enumerate(self.stage_blocks):
            planes, at = base_channels * 2 ** i, 0 if stride_in == 'first' else n - 1
            units = []
            for j in range(n):
                units.append(PreActBottleneck(
                    inplanes, planes, stride=strides[i] if j == at else 1,
                    with_cp=self.with_cp[i], conv_cfg=conv_cfg, norm_cfg=self.norm_cfg,
                    bias=self.conv_bias, init_cfg=block_init_cfg))
                inplanes = planes * PreActBottleneck.expansion
            self._add_stage(Sequential(*units), inplanes, 4 * 2 ** i)
        #: units of stage i run before its level is taken ('last': before the strided one)
        self._tap_after = tuple(n - 1 if stride_in == 'last' and i < 3 else n
                                for i, n in enumerate(self.stage_blocks))

        # ---- level norms: 'norm_c2'.. for the inner levels, the final norm for C5
        self.relu = nn.ReLU(inplace=True)
        self._level_norms: dict[int, str] = {}
        if self.out_norm:
            for i in self.out_indices:
                name = 'post_norm' if i == self.num_stages - 1 else f'norm_{LEVEL_NAMES[i]}'
                self.add_module(name, build_norm_layer(self.norm_cfg, self._stage_channels[i])[1])
                self._level_norms[i] = name
        self._finish_init(fast)

    @classmethod
    def _arch(cls, depth: int) -> tuple[type[PreActBottleneck], Sequence[int]]:
        """Every depth is built of :class:`~.blocks.PreActBottleneck` units."""
        return PreActBottleneck, cls.arch_settings[depth]

    def _zero_init_layer(self) -> str:
        """conv3: each unit starts as its shortcut (timm's ``zero_init_last``)."""
        return 'conv3'

    # ------------------------------------------------------------------ structure
    @property
    def modules_not_in_checkpoints(self) -> tuple[str, ...]:
        """The inner level norms (``norm_c2``..``norm_c4``): detection adapters that no
        pretrained file has; a strict load leaves them as initialised and says so."""
        return tuple(n for n in self._level_norms.values() if n != 'post_norm')

    # ------------------------------------------------------------------ freezing
    def _stem_modules(self) -> list[nn.Module]:
        """The stem conv (frozen with ``frozen_stages >= 0``)."""
        return [self.conv1]

    def _frozen_parts(self) -> list[nn.Module]:
        """The stem from ``frozen_stages=0`` on, and with stage 4 the final norm."""
        frozen = super()._frozen_parts()
        if self.frozen_stages == self.num_stages and 3 in self._level_norms:
            frozen.append(getattr(self, self._level_norms[3]))
        return frozen

    # ------------------------------------------------------------------ forward
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """C1: the stem conv's output, before the max-pool (no norm, no activation)."""
        return self.conv1(x)

    def _levels(self, x: torch.Tensor, wanted: set[int]) -> dict[int, torch.Tensor]:
        """The levels in ``wanted`` (stage indices), computed up to the deepest one."""
        feats: dict[int, torch.Tensor] = {}
        last = max(wanted)
        for i, name in enumerate(self.res_layers[:last + 1]):
            stage = getattr(self, name)
            tap = self._tap_after[i]
            for j, unit in enumerate(stage):
                if j == tap and i in wanted:
                    feats[i] = x  # 'last': the activation before the subsampling unit
                if i == last and j >= tap:
                    break
                x = unit(x)
            if tap == len(stage) and i in wanted:
                feats[i] = x
        for i, norm in self._level_norms.items():
            if i in feats:
                feats[i] = self.relu(getattr(self, norm)(feats[i]))
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the levels of ``out_indices`` (C2..C5 at strides 4/8/16/32), in order."""
        self._check_input(x)
        feats = self._levels(self.maxpool(self.forward_stem(x)), set(self.out_indices))
        return tuple(feats[i] for i in self.out_indices)

    def forward_levels(self, x: torch.Tensor, levels: Sequence[str] | str | None = None
                       ) -> dict[str, torch.Tensor]:
        """Named maps ``{'c1': ..., 'c2': ...}``: ``'c1'`` is the stem conv's output, ``'c2'``
        .. ``'c5'`` the taps (level-normed where the model has that level's norm).

        Args:
            x: (N, C, H, W) input.
            levels: names among ``'c1'``..``'c5'``, a sequence or a comma-separated
                string. Default: ``'c1'`` and the ``out_indices`` levels.
        """
        levels, _ = resolve_levels(levels, len(LEVEL_NAMES), self.out_indices)
        self._check_input(x)
        c1 = self.forward_stem(x)
        out = {'c1': c1}
        wanted = {LEVEL_NAMES.index(lv) for lv in levels if lv != 'c1'}
        if wanted:
            feats = self._levels(self.maxpool(c1), wanted)
            out.update({LEVEL_NAMES[i]: t for i, t in feats.items()})
        return {lv: out[lv] for lv in levels}
