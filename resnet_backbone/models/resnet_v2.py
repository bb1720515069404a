"""``ResNetV2Custom``: the pre-activation ResNet (He et al. 2016, "Identity Mappings in
Deep Residual Networks") as a detection backbone.

Three published layouts, selected by keywords (README, "ResNet v2 layouts"):

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

import logging
import warnings
from collections.abc import Sequence

import torch
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule, Sequential
from torch import nn

from ..io import weights
from ..spec import ShapeSpec, check_choice, choice_error, not_a_tensor_error, resolve_levels
from .blocks import PreActBottleneck
from .contract import BackboneContract
from .norm import check_norm_cfg, is_batch_norm, resolve_norm_cfg
from .stem import STEM_POOL_PADDINGS, build_stem_pool

#: depth -> units per stage (TF-slim's resnet_v2_50/101/152/200, Keras's 50V2/101V2/152V2)
V2_ARCH_SETTINGS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
#: where a stage's stride sits: its first unit (timm, the paper's PyTorch form) or its
#: last (TF-slim, Keras)
STRIDE_IN = ('first', 'last')
#: ``out_norm`` default, chosen by the measurement in docs/resnet_v2.md
OUT_NORM_DEFAULT = False
LEVEL_NAMES = ('c2', 'c3', 'c4', 'c5')


class ResNetV2Custom(BackboneContract, BaseModule):
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

    def __init__(self,
                 depth: int,
                 *,
                 in_channels: int = 3,
                 stem_channels: int | None = None,
                 base_channels: int = 64,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 stride_in: str = 'first',
                 stem_pool_padding: str = 'symmetric',
                 conv_bias: bool | None = None,
                 out_norm: bool = OUT_NORM_DEFAULT,
                 frozen_stages: int = -1,
                 conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None,
                 norm_eval: bool = True,
                 with_cp: bool | Sequence[bool] = False,
                 zero_init_residual: bool = True,
                 pretrained: str | None = None,
                 init_cfg: dict | list[dict] | None = None,
                 fast: bool = True,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(init_cfg)
        num_stages = 4
        check_choice('depth', depth, self.arch_settings)
        check_choice('stride_in', stride_in, STRIDE_IN)
        check_choice('stem_pool_padding', stem_pool_padding, STEM_POOL_PADDINGS)
        for name, value in (('in_channels', in_channels), ('base_channels', base_channels),
                            ('stem_channels', stem_channels)):
            if value is None and name == 'stem_channels':
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int; got {value!r}')
        for name, value in (('out_norm', out_norm), ('norm_eval', norm_eval),
                            ('zero_init_residual', zero_init_residual)):
            if not isinstance(value, bool):
                raise TypeError(f'{name} must be True or False; got {value!r}')
        if conv_bias is not None and not isinstance(conv_bias, bool):
            raise TypeError(f'conv_bias must be True, False or None; got {conv_bias!r}')
        if isinstance(out_indices, int) or not isinstance(out_indices, Sequence) or \
                not out_indices:
            raise TypeError(f'out_indices must be a non-empty sequence of stage indices '
                            f'in 0..{num_stages - 1}; got {out_indices!r}')
        out_indices = tuple(out_indices)
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_stages
               for i in out_indices):
            raise choice_error(f'out_indices={out_indices!r} out of range', range(num_stages),
                               f' (num_stages={num_stages})')
        if list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f'out_indices={out_indices!r} must be sorted and unique, e.g. '
                             f'{tuple(sorted(set(out_indices)))!r}')
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) \
                or not -1 <= frozen_stages <= num_stages:
            raise choice_error(f'frozen_stages={frozen_stages!r} is out of range',
                               f'-1..{num_stages}', f' (num_stages={num_stages})')
        if isinstance(with_cp, bool):
            with_cp = (with_cp,) * num_stages
        if isinstance(with_cp, (str, bytes)) or not isinstance(with_cp, Sequence) \
                or len(with_cp) != num_stages or not all(isinstance(v, bool) for v in with_cp):
            raise TypeError(f'with_cp must be a bool or a sequence of {num_stages} bools '
                            f'(one per stage); got {with_cp!r}')
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be a float in [0, 1); got {drop_path_rate!r}')
        if init_cfg and pretrained:
            raise ValueError('init_cfg and pretrained cannot both be set; use only '
                             "init_cfg=dict(type='Pretrained', checkpoint=...)")
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a str (checkpoint path) or None; '
                            f'got {type(pretrained).__name__}')
        norm_cfg = resolve_norm_cfg(norm_cfg)
        check_norm_cfg(norm_cfg)

        block_init_cfg = None
        if isinstance(pretrained, str):
            warnings.warn('pretrained is deprecated, please use "init_cfg" instead',
                          DeprecationWarning, stacklevel=2)
            self.init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        elif init_cfg is None:
            self.init_cfg = [dict(type='Kaiming', layer='Conv2d'),
                             dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])]
            if zero_init_residual:
                block_init_cfg = dict(type='Constant', val=0, override=dict(name='conv3'))

        self.depth = depth
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.stem_channels = stem_channels if stem_channels is not None else base_channels
        self.num_stages = num_stages
        self.out_indices = out_indices
        self.stride_in = stride_in
        self.stem_pool_padding = stem_pool_padding
        self.conv_bias = (stride_in == 'last') if conv_bias is None else conv_bias
        self.out_norm = out_norm
        self.frozen_stages = frozen_stages
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.norm_eval = norm_eval
        self.with_cp = tuple(with_cp)
        self.zero_init_residual = zero_init_residual
        self.stage_blocks = self.arch_settings[depth]

        # ---- stem: a 7x7/2 conv (no norm, no activation), then the 3x3/2 max-pool
        self.conv1 = build_conv_layer(conv_cfg, in_channels, self.stem_channels, 7, stride=2,
                                      padding=3, bias=self.conv_bias)
        self.maxpool = build_stem_pool(stem_pool_padding)

        # ---- stages: the stride in the first unit ('first') or the last ('last'; the
        # last stage then has none), the projection wherever the width changes
        strides = (1, 2, 2, 2) if stride_in == 'first' else (2, 2, 2, 1)
        inplanes = self.stem_channels
        self.res_layers: list[str] = []
        channels = []
        for i, n in enumerate(self.stage_blocks):
            planes = base_channels * 2 ** i
            units = []
            for j in range(n):
                at = 0 if stride_in == 'first' else n - 1
                units.append(PreActBottleneck(
                    inplanes, planes, stride=strides[i] if j == at else 1,
                    with_cp=self.with_cp[i], conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                    bias=self.conv_bias, init_cfg=block_init_cfg))
                inplanes = planes * PreActBottleneck.expansion
            self.add_module(f'layer{i + 1}', Sequential(*units))
            self.res_layers.append(f'layer{i + 1}')
            channels.append(inplanes)
        self._stage_channels = tuple(channels)
        self._stage_strides = (4, 8, 16, 32)
        #: units of stage i run before its level is taken ('last': before the strided one)
        self._tap_after = tuple(n - 1 if stride_in == 'last' and i < 3 else n
                                for i, n in enumerate(self.stage_blocks))
        self.feat_dim = inplanes

        # ---- level norms: 'norm_c2'.. for the inner levels, the final norm for C5
        self.relu = nn.ReLU(inplace=True)
        self._level_norms: dict[int, str] = {}
        if out_norm:
            for i in out_indices:
                name = 'post_norm' if i == num_stages - 1 else f'norm_{LEVEL_NAMES[i]}'
                self.add_module(name, build_norm_layer(norm_cfg, channels[i])[1])
                self._level_norms[i] = name

        self.drop_path_rate = float(drop_path_rate)
        for block, rate in zip(self._blocks(), self.drop_path_rates()):
            block.set_drop_path(rate)
        self.fast = fast
        self._freeze_stages()

    # ------------------------------------------------------------------ structure
    @property
    def modules_not_in_checkpoints(self) -> tuple[str, ...]:
        """The inner level norms (``norm_c2``..``norm_c4``): detection adapters that no
        pretrained file has; a strict load leaves them as initialised and says so."""
        return tuple(n for n in self._level_norms.values() if n != 'post_norm')

    def output_shape(self, include_stem: bool = False) -> dict[str, ShapeSpec]:
        """``{'c2': ShapeSpec(channels, stride), ...}`` for the returned maps; with
        ``include_stem``, ``'c1'`` (the stem conv's output, before the pool) first."""
        shapes = {'c1': ShapeSpec(self.stem_channels, 2)} if include_stem else {}
        for i in self.out_indices:
            shapes[LEVEL_NAMES[i]] = ShapeSpec(self._stage_channels[i], self._stage_strides[i])
        return shapes

    @classmethod
    def feature_channels(cls, depth: int, base_channels: int = 64,
                         out_indices: Sequence[int] = (0, 1, 2, 3)) -> list[int]:
        """Output channels without building the model.

        Example:
            >>> ResNetV2Custom.feature_channels(50, base_channels=16)
            [64, 128, 256, 512]
        """
        check_choice('depth', depth, cls.arch_settings)
        return [base_channels * 2 ** i * PreActBottleneck.expansion for i in out_indices]

    # ------------------------------------------------------------------ freezing
    def _stem_modules(self) -> list[nn.Module]:
        return [self.conv1]

    def _freeze_stages(self) -> None:
        frozen: list[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen.append(self.conv1)
        if self.frozen_stages == self.num_stages and 3 in self._level_norms:
            frozen.append(getattr(self, self._level_norms[3]))
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            stage = getattr(self, f'layer{i}')
            stage.eval()
            for block in stage:
                block.freeze()

    def train(self, mode: bool = True) -> ResNetV2Custom:
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
        """mmengine's init, except ``Pretrained``: converted (timm, Keras, TF-slim or our
        own keys), loaded strictly unless ``strict=False``, reported
        (``self.load_report``)."""
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
        print_log(f'{type(self).__name__}: initialised {len(self._params_init_info)} '
                  'parameter tensors', logger='current', level=logging.DEBUG)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):  # else "... has no attribute 'dim'"
            raise not_a_tensor_error('x', x)
        if torch.jit.is_tracing():
            return
        if x.dim() != 4:
            raise ValueError(f'{type(self).__name__} expects a 4-D (N, C, H, W) input; '
                             f'got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'input has {x.shape[1]} channels but in_channels='
                             f'{self.in_channels}; pass (N, {self.in_channels}, H, W)')
        weight = self.conv1.weight
        if x.dtype != weight.dtype and not (
                x.is_floating_point() and torch.is_autocast_enabled(x.device.type)):
            raise TypeError(f"input dtype is {x.dtype} but the model's parameters are "
                            f'{weight.dtype}; pass x.to({weight.dtype}), convert the model, '
                            'or run under torch.autocast')

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
