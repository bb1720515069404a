"""``BackboneContract``: the base class of the backbones, holding once what they share.

- The arguments every backbone takes (depth, channels, ``out_indices``,
  ``frozen_stages``, ``with_cp``, norm, init, drop path): checked with one-line errors
  and set as attributes (:meth:`~BackboneContract._init_common`).
- Freezing (``frozen_stages``, ``norm_eval``), ``train``, ``init_weights`` (any weight
  dialect, strict), and ``forward``'s input check.
- What necks and tools read: ``out_channels``, ``out_strides``, ``output_shape()``,
  ``feature_channels()``, ``drop_path_rates()`` and the ``fast`` switch.

A backbone's ``__init__`` calls :meth:`~BackboneContract._init_common`, builds its stem
(and sets ``_stem_conv_stride``), registers each stage with
:meth:`~BackboneContract._add_stage` and ends with :meth:`~BackboneContract._finish_init`.
It provides ``_stem_modules()`` and ``_zero_init_layer()``.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn

from ..io import weights
from ..spec import (
    ShapeSpec,
    check_bool,
    check_choice,
    check_frozen_stages,
    check_out_indices,
    check_rate,
    not_a_tensor_error,
    per_stage,
    positive_int,
)
from .blocks import ResBlock
from .norm import check_norm_cfg, is_batch_norm, resolve_norm_cfg

#: dtype -> the Tensor/Module method that converts to it (for the dtype-mismatch error)
_CAST = {torch.float16: 'half', torch.bfloat16: 'bfloat16', torch.float32: 'float',
         torch.float64: 'double'}


class BackboneContract(BaseModule):
    """Base class of ``ResNetV1Custom`` and ``ResNetV2Custom`` (see the module docstring).

    Example:
        >>> from resnet_backbone import ResNetV1Custom, ResNetV2Custom
        >>> m = ResNetV2Custom(50, base_channels=4, out_indices=(1, 3))
        >>> isinstance(m, BackboneContract), m.out_channels, m.out_strides
        (True, (32, 128), (8, 32))
        >>> [tuple(o.shape) for o in m(torch.rand(1, 3, 64, 64))]
        [(1, 32, 8, 8), (1, 128, 2, 2)]
    """

    #: depth -> (block class, blocks per stage); see :meth:`_arch`
    arch_settings: dict
    #: stride of the stem's convs (C1's stride), set by the backbone with its stem
    _stem_conv_stride: int

    @classmethod
    def _arch(cls, depth: int) -> tuple[type[ResBlock], Sequence[int]]:
        """``(block class, blocks per stage)`` of ``depth``, from ``arch_settings``."""
        return cls.arch_settings[depth]

    # ------------------------------------------------------------------ building
    def _init_common(self, depth: int, num_stages: int, *, in_channels: int,
                     stem_channels: int | None, base_channels: int,
                     out_indices: Sequence[int], frozen_stages: int, conv_cfg: dict | None,
                     norm_cfg: dict | None, norm_eval: bool, with_cp: bool | Sequence[bool],
                     zero_init_residual: bool, pretrained: str | None,
                     init_cfg: dict | list[dict] | None, drop_path_rate: float) -> dict | None:
        """Check the arguments every backbone takes and set them as attributes
        (mmdet's names); set ``init_cfg`` as mmdet does.

        Returns:
            The blocks' ``init_cfg``: zero-init of the last layer of each residual branch
            (``zero_init_residual``, unless pretrained), or None.
        """
        check_choice('depth', depth, self.arch_settings)  # a subclass's own table
        check_choice('num_stages', num_stages, (1, 2, 3, 4))
        self.depth, self.num_stages = depth, num_stages
        self.in_channels = positive_int('in_channels', in_channels)
        self.base_channels = positive_int('base_channels', base_channels)
        self.stem_channels = positive_int('stem_channels', stem_channels, optional=True) \
            or base_channels
        self.out_indices = check_out_indices(out_indices, num_stages)
        self.frozen_stages = check_frozen_stages(frozen_stages, num_stages)
        self.with_cp = per_stage('with_cp', with_cp, num_stages, bool, broadcast=True)
        self.norm_eval = check_bool('norm_eval', norm_eval)
        self.zero_init_residual = check_bool('zero_init_residual', zero_init_residual)
        self.drop_path_rate = check_rate('drop_path_rate', drop_path_rate)
        self.conv_cfg = conv_cfg
        # type='FrozenBN' -> our FrozenBatchNorm2d in every scope (mmdet's fails BN loads)
        self.norm_cfg = resolve_norm_cfg(norm_cfg)
        check_norm_cfg(self.norm_cfg)
        self.block, stage_blocks = self._arch(depth)
        self.stage_blocks = stage_blocks[:num_stages]
        self.res_layers: list[str] = []
        self._stage_channels: tuple[int, ...] = ()
        self._stage_strides: tuple[int, ...] = ()
        return self._init_config(pretrained, init_cfg)

    def _init_config(self, pretrained: str | None,
                     init_cfg: dict | list[dict] | None) -> dict | None:
        """mmdet's init config: ``pretrained`` (deprecated) or Kaiming/constant; returns
        the blocks' zero-init config (see :meth:`_init_common`)."""
        if init_cfg and pretrained:
            raise ValueError('init_cfg and pretrained cannot both be set; use only '
                             "init_cfg=dict(type='Pretrained', checkpoint=...)")
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a str (checkpoint path) or None; '
                            f'got {type(pretrained).__name__}')
        if pretrained is not None:
            warnings.warn('pretrained is deprecated, please use "init_cfg" instead',
                          DeprecationWarning, stacklevel=4)  # the user's constructor call
            self.init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        elif init_cfg is None:
            self.init_cfg = [dict(type='Kaiming', layer='Conv2d'),
                             dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])]
            last = self._zero_init_layer()
            if self.zero_init_residual and last is not None:
                return dict(type='Constant', val=0, override=dict(name=last))
        return None

    def _zero_init_layer(self) -> str | None:
        """The block layer that ``zero_init_residual`` zeroes (None: none)."""
        return None

    def _add_stage(self, stage: nn.Module, channels: int, stride: int) -> None:
        """Register the next stage as ``layer{i}``, with its output channels and stride."""
        name = f'layer{len(self.res_layers) + 1}'
        self.add_module(name, stage)
        self.res_layers.append(name)
        self._stage_channels += (channels,)
        self._stage_strides += (stride,)
        self.feat_dim = channels

    def _finish_init(self, fast: bool) -> None:
        """Give the blocks their drop-path rates, set ``fast``, freeze the frozen stages."""
        for block, rate in zip(self._blocks(), self.drop_path_rates()):
            block.set_drop_path(rate)
        self.fast = fast
        self._freeze_stages()

    # ------------------------------------------------------------------ structure
    def _blocks(self) -> list[ResBlock]:
        """Every residual block, stage by stage, in order."""
        return [m for name in self.res_layers for m in getattr(self, name).modules()
                if isinstance(m, ResBlock)]

    def _stem_modules(self) -> list[nn.Module]:  # pragma: no cover - abstract
        """The stem's parameterised modules: frozen from ``frozen_stages=0`` on; their
        dtype is the one ``forward`` takes."""
        raise NotImplementedError

    def drop_path_rates(self) -> list[float]:
        """Each block's stochastic-depth rate, in order: timm's linear rule,
        ``drop_path_rate * i / (n - 1)`` for block ``i`` of ``n``.

        Example:
            >>> from resnet_backbone import ResNetV1Custom
            >>> ResNetV1Custom(18, base_channels=4, drop_path_rate=0.1).drop_path_rates()[-1]
            0.1
        """
        n = len(self._blocks())
        return [self.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]

    @property
    def fast(self) -> bool:
        """Fold eval-mode BN into the convs it follows (True) or run the plain ops."""
        return self._fast

    @fast.setter
    def fast(self, value: bool) -> None:
        self._fast = check_bool('fast', value)
        for m in self.modules():
            if isinstance(m, ResBlock):
                m.fast = value

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each returned map, in ``out_indices`` order (FPN ``in_channels``)."""
        return tuple(self._stage_channels[i] for i in self.out_indices)

    @property
    def out_strides(self) -> tuple[int, ...]:
        """Stride (w.r.t. the input) of each returned map, in ``out_indices`` order:
        4/8/16/32 for C2..C5 (in both v2 layouts too)."""
        return tuple(self._stage_strides[i] for i in self.out_indices)

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
            >>> from resnet_backbone import ResNetV1Custom
            >>> ResNetV1Custom.feature_channels(18)
            [64, 128, 256, 512]
        """
        check_choice('depth', depth, cls.arch_settings)
        expansion = cls._arch(depth)[0].expansion
        return [base_channels * 2 ** i * expansion for i in out_indices]

    # ------------------------------------------------------------------ freezing
    def _frozen_parts(self) -> list[nn.Module]:
        """What ``frozen_stages`` freezes besides the stages: the stem from 0 on."""
        return self._stem_modules() if self.frozen_stages >= 0 else []

    def _freeze_stages(self) -> None:
        for m in self._frozen_parts():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            stage = getattr(self, f'layer{i}')
            stage.eval()
            for block in stage:
                block.freeze()

    def train(self, mode: bool = True) -> BackboneContract:
        """Set train/eval mode; frozen parts and (with ``norm_eval``) every BN stay in eval
        (SyncBN and mmcv's MMSyncBN too)."""
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
        detectron2, mmpretrain, mmdet, Keras, TF-slim; see :mod:`resnet_backbone.io.weights`),
        is converted, loaded strictly unless ``strict=False`` is in the init_cfg, and a
        load report is logged and kept in ``self.load_report``. Extra init_cfg keys:
        ``source``, ``strict``, ``prefix``, ``allow_pickle``.
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
        """One line for an input ``forward`` cannot take: no tensor, not 4-D, the wrong
        channels, or a dtype other than the weights' (outside autocast)."""
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
