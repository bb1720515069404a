"""Residual blocks: ``BasicBlock`` (ResNet-18/34) and ``Bottleneck`` (ResNet-50+).

The module layout and attribute names follow mmdet's ``ResNet`` blocks exactly
(``conv1``, ``bn1``/``gn1``, ``downsample``, plugin names, ...), so state dicts are
interchangeable and, in reference mode, outputs are bitwise equal.

What differs from mmdet:
- checkpointing (``with_cp``) is non-reentrant and covers every block that has a
  trainable parameter, including the first one after frozen stages
  (see :mod:`resnet_backbone.models.checkpointing`);
- blocks know how to freeze themselves (:meth:`ResBlock.freeze`);
- bad arguments raise one-line ``ValueError`` / ``TypeError`` instead of bare asserts;
- ``dcn`` dicts are copied, not mutated (mmdet pops ``fallback_on_stride`` from the dict
  shared by every block, so only the first block sees it); here every block whose 3x3
  conv is strided falls back to a plain conv.
"""
from __future__ import annotations

import copy

import torch
from mmcv.cnn import build_conv_layer, build_norm_layer, build_plugin_layer
from mmengine.model import BaseModule
from torch import nn

from ..spec import STYLES, check_choice
from .checkpointing import checkpointed, recomputing
from .fast import (
    conv_norm,
    conv_norm_add_relu_,
    conv_norm_relu_fused,
    foldable,
    fusion_ok,
    sequential_conv_norm,
    worth_folding,
)

PLUGIN_POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3')


class ResBlock(BaseModule):
    """Base class of the residual blocks: checkpointed forward and ``freeze()``."""

    expansion = 1
    with_cp: bool
    downsample: nn.Module | None
    norm1_name: str
    norm2_name: str
    #: fold eval-mode BN into the convs (see :mod:`resnet_backbone.models.fast`); the backbone
    #: sets it. False = mmdet's exact op order.
    fast: bool = False

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    @property
    def norm2(self) -> nn.Module:
        return getattr(self, self.norm2_name)

    def freeze(self) -> ResBlock:
        """Stop gradients into this block and keep its norm layers in eval mode.

        The owning backbone re-applies this after every ``train()`` call.
        """
        self.eval()
        for p in self.parameters():
            p.requires_grad = False
        return self

    def _head(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The branch up to (not including) its last conv."""
        raise NotImplementedError

    def _tail(self, out: torch.Tensor, output_unused: bool = False
              ) -> torch.Tensor:  # pragma: no cover - abstract
        """The branch's last conv + norm (+ plugins), before the shortcut is added."""
        raise NotImplementedError

    def _shortcut(self, x: torch.Tensor, output_unused: bool = False) -> torch.Tensor:
        if self.downsample is None:
            return x
        return sequential_conv_norm(self.downsample, x, self.fast, output_unused)

    def _conv_norm_pairs(self) -> list[tuple[nn.Module, nn.Module]]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor, owns_input: bool = False) -> torch.Tensor:
        """Run the block.

        Args:
            x: (N, C, H, W) input.
            owns_input: The caller gives up ``x``: nothing else reads it afterwards, so
                the fused inference path may reuse its memory for the output. The
                owning ``ResLayer`` sets it for its own intermediate maps only.
        """
        if self.with_cp and torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return self._checkpointed_forward(x)
        if self._fusable(x):
            return self._fused_forward(x, owns_input)
        return self.relu(self._residual(x))

    def _checkpointed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole residual (branch, shortcut, add) under one checkpoint: only ``x`` is
        kept. (Running the shortcut or the last conv outside it was measured: more bytes
        kept; the recompute skip in :meth:`_residual` saves that time without them. See
        :mod:`resnet_backbone.models.checkpointing`.)"""
        return self.relu(checkpointed(self._residual, x, self))

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        # In a checkpoint recompute the last conv and the shortcut feed only the add
        # (which saves nothing): their convs save their inputs and skip the work.
        unused = recomputing() and self._tail_feeds_only_the_add()
        out = self._tail(self._head(x), unused)
        out += self._shortcut(x, unused)
        return out

    def _tail_feeds_only_the_add(self) -> bool:
        return True

    def _fusable(self, x: torch.Tensor) -> bool:
        if not (self.fast and not self.with_plugins and not self.with_dcn
                and fusion_ok(x, self.parameters())):
            return False
        # every conv's output is at least as large as the block's (strided) output
        positions = x.shape[0] * -(-x.shape[2] // self.stride) * -(-x.shape[3] // self.stride)
        return all(foldable(c, n) and worth_folding(c, positions)
                   for c, n in self._conv_norm_pairs())

    def _fused_forward(self, x: torch.Tensor, owns_input: bool) -> torch.Tensor:
        """The fast inference path: every conv + BN (+ ReLU) as one oneDNN kernel, and the
        last conv accumulated in place into the shortcut (see :mod:`resnet_backbone.models.fast`).
        """
        *head, (conv, norm) = self._conv_norm_pairs()
        out = x
        for c, n in head:
            out = conv_norm_relu_fused(c, n, out)
        identity = self._shortcut(x)
        if _reusable(identity, x, owns_input):
            return conv_norm_add_relu_(conv, norm, out, identity)
        out = conv_norm(conv, norm, out, True)
        out += identity
        return self.relu(out)


def _reusable(identity: torch.Tensor, x: torch.Tensor, owns_input: bool) -> bool:
    """May the block's output be written into ``identity``?

    Yes for a fresh projection-shortcut output, and for the block input itself when the
    caller gave it up. It must also be a dense map (either memory format) and writable.
    """
    if not owns_input and identity.untyped_storage().data_ptr() == \
            x.untyped_storage().data_ptr():
        return False
    if identity.is_inference() and not torch.is_inference_mode_enabled():
        return False
    return identity.is_contiguous() or identity.is_contiguous(memory_format=torch.channels_last)


class BasicBlock(ResBlock):
    """Two 3x3 convs with a residual connection (ResNet-18/34).

    Example:
        >>> block = BasicBlock(8, 8)
        >>> block(torch.rand(1, 8, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = 'pytorch',
                 with_cp: bool = False, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, dcn: dict | None = None,
                 plugins: list | None = None, init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg)
        check_choice('style', style, STYLES)
        if dcn is not None:
            raise ValueError('dcn is only supported by Bottleneck blocks (depth >= 50); '
                             'got dcn with a BasicBlock depth (18 or 34)')
        if plugins:
            raise ValueError('plugins are only supported by Bottleneck blocks (depth >= 50); '
                             'got plugins with a BasicBlock depth (18 or 34)')
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN')
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix=1)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix=2)
        self.conv1 = build_conv_layer(conv_cfg, inplanes, planes, 3, stride=stride,
                                      padding=dilation, dilation=dilation, bias=False)
        self.add_module(self.norm1_name, norm1)
        self.conv2 = build_conv_layer(conv_cfg, planes, planes, 3, padding=1, bias=False)
        self.add_module(self.norm2_name, norm2)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation
        self.style = style
        self.with_cp = with_cp
        self.with_dcn = False
        self.with_plugins = False

    def _conv_norm_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.conv1, self.norm1), (self.conv2, self.norm2)]

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(conv_norm(self.conv1, self.norm1, x, self.fast))

    def _tail(self, out: torch.Tensor, output_unused: bool = False) -> torch.Tensor:
        return conv_norm(self.conv2, self.norm2, out, self.fast, output_unused)


class Bottleneck(ResBlock):
    """1x1 -> 3x3 -> 1x1 bottleneck with a residual connection (ResNet-50+).

    ``style='pytorch'`` puts the stride on the 3x3 conv, ``'caffe'`` on the first 1x1.
    ``dcn`` replaces the 3x3 conv with a deformable one (needs mmcv's compiled ops);
    ``plugins`` inserts mmcv plugin layers after conv1/conv2/conv3.

    Example:
        >>> block = Bottleneck(16, 4)
        >>> block(torch.rand(1, 16, 16, 16)).shape
        torch.Size([1, 16, 16, 16])
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = 'pytorch',
                 with_cp: bool = False, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, dcn: dict | None = None,
                 plugins: list | None = None, init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg)
        check_choice('style', style, STYLES)
        if dcn is not None and not isinstance(dcn, dict):
            raise TypeError(f'dcn must be a dict such as dict(type="DCN") or None; got {dcn!r}')
        if plugins is not None and not isinstance(plugins, list):
            raise TypeError('plugins must be a list of dicts or None; '
                            f'got {type(plugins).__name__}')
        for p in plugins or []:
            if p.get('position') not in PLUGIN_POSITIONS:
                raise ValueError(f"plugin position={p.get('position')!r} is not supported; "
                                 f"allowed values: {', '.join(PLUGIN_POSITIONS)}")
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN')
        dcn = copy.deepcopy(dcn)
        self.inplanes = inplanes
        self.planes = planes
        self.stride = stride
        self.dilation = dilation
        self.style = style
        self.with_cp = with_cp
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.dcn = dcn
        self.with_dcn = dcn is not None
        self.plugins = plugins
        self.with_plugins = plugins is not None
        if self.with_plugins:
            self.after_conv1_plugins = [p['cfg'] for p in plugins if p['position'] == 'after_conv1']
            self.after_conv2_plugins = [p['cfg'] for p in plugins if p['position'] == 'after_conv2']
            self.after_conv3_plugins = [p['cfg'] for p in plugins if p['position'] == 'after_conv3']
        if style == 'pytorch':
            self.conv1_stride, self.conv2_stride = 1, stride
        else:
            self.conv1_stride, self.conv2_stride = stride, 1

        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix=1)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix=2)
        self.norm3_name, norm3 = build_norm_layer(norm_cfg, planes * self.expansion, postfix=3)
        self.conv1 = build_conv_layer(conv_cfg, inplanes, planes, kernel_size=1,
                                      stride=self.conv1_stride, bias=False)
        self.add_module(self.norm1_name, norm1)
        # ``fallback_on_stride``: a plain conv where the 3x3 conv is strided. (mmdet pops the
        # key from the dict shared by all blocks, so there only the first block falls back.)
        fallback = bool(dcn.pop('fallback_on_stride', False)) if dcn else False
        if not self.with_dcn or (fallback and self.conv2_stride > 1):
            self.conv2 = build_conv_layer(conv_cfg, planes, planes, kernel_size=3,
                                          stride=self.conv2_stride, padding=dilation,
                                          dilation=dilation, bias=False)
        else:
            if conv_cfg is not None:
                raise ValueError('conv_cfg must be None when dcn is set; '
                                 f'got conv_cfg={conv_cfg!r}')
            import mmcv.ops  # noqa: F401  (registers DCN/DCNv2; only imported when asked for)
            self.conv2 = build_conv_layer(dcn, planes, planes, kernel_size=3,
                                          stride=self.conv2_stride, padding=dilation,
                                          dilation=dilation, bias=False)
        self.add_module(self.norm2_name, norm2)
        self.conv3 = build_conv_layer(conv_cfg, planes, planes * self.expansion, kernel_size=1,
                                      bias=False)
        self.add_module(self.norm3_name, norm3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

        if self.with_plugins:
            self.after_conv1_plugin_names = self._make_plugins(planes, self.after_conv1_plugins)
            self.after_conv2_plugin_names = self._make_plugins(planes, self.after_conv2_plugins)
            self.after_conv3_plugin_names = self._make_plugins(planes * self.expansion,
                                                               self.after_conv3_plugins)

    def _make_plugins(self, in_channels: int, plugins: list[dict]) -> list[str]:
        names = []
        for plugin in plugins:
            plugin = plugin.copy()
            name, layer = build_plugin_layer(plugin, in_channels=in_channels,
                                             postfix=plugin.pop('postfix', ''))
            if hasattr(self, name):
                raise ValueError(f'plugins: duplicate plugin name {name!r} in one block; '
                                 'give each a distinct postfix')
            self.add_module(name, layer)
            names.append(name)
        return names

    # mmdet-compatible name
    make_block_plugins = _make_plugins

    def forward_plugin(self, x: torch.Tensor, plugin_names: list[str]) -> torch.Tensor:
        out = x
        for name in plugin_names:
            out = getattr(self, name)(out)
        return out

    @property
    def norm3(self) -> nn.Module:
        return getattr(self, self.norm3_name)

    def _conv_norm_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.conv1, self.norm1), (self.conv2, self.norm2), (self.conv3, self.norm3)]

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_norm(self.conv1, self.norm1, x, self.fast)
        out = self.relu(out)
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv1_plugin_names)
        out = conv_norm(self.conv2, self.norm2, out, self.fast)
        out = self.relu(out)
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv2_plugin_names)
        return out

    def _tail(self, out: torch.Tensor, output_unused: bool = False) -> torch.Tensor:
        out = conv_norm(self.conv3, self.norm3, out, self.fast, output_unused)
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv3_plugin_names)
        return out

    def _tail_feeds_only_the_add(self) -> bool:
        return not (self.with_plugins and self.after_conv3_plugin_names)
