"""Stage building: one ``ResLayer`` (a sequence of blocks) per ResNet stage.

Mirrors mmdet's ``ResLayer``: the first block carries the stride and a projection
shortcut when the stride or the width changes. With ``avg_down`` (ResNet-V1d) the
shortcut is ``AvgPool(k=stride, s=stride, ceil_mode=True, count_include_pad=False)``
followed by a stride-1 1x1 conv; the pool is there even at stride 1 (kernel 1), which
keeps mmdet's key layout (``downsample.1`` is the conv, ``downsample.2`` the norm).
"""
from __future__ import annotations

import torch
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmengine.model import Sequential
from torch import nn
from torch.nn.modules import module as _module

from .blocks import ResBlock


def make_shortcut(block: type[ResBlock], inplanes: int, planes: int, stride: int,
                  avg_down: bool, conv_cfg: dict | None, norm_cfg: dict) -> nn.Sequential | None:
    """The projection shortcut of a stage's first block, or ``None`` when not needed."""
    if stride == 1 and inplanes == planes * block.expansion:
        return None
    layers: list[nn.Module] = []
    conv_stride = stride
    if avg_down:
        conv_stride = 1
        layers.append(nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True,
                                   count_include_pad=False))
    layers += [
        build_conv_layer(conv_cfg, inplanes, planes * block.expansion, kernel_size=1,
                         stride=conv_stride, bias=False),
        build_norm_layer(norm_cfg, planes * block.expansion)[1],
    ]
    return nn.Sequential(*layers)


class ResLayer(Sequential):
    """One ResNet stage: ``num_blocks`` blocks, the first one strided.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        inplanes: Input channels.
        planes: Bottleneck width; the output has ``planes * block.expansion`` channels.
        num_blocks: Number of blocks.
        stride: Stride of the first block.
        avg_down: Use the ResNet-V1d shortcut (avg-pool, then a stride-1 1x1 conv).
        conv_cfg: mmcv conv config (``None`` = ``nn.Conv2d``).
        norm_cfg: mmcv norm config.
        **kwargs: Passed to every block (``dilation``, ``style``, ``with_cp``, ``dcn``,
            ``plugins``, ``init_cfg``).

    Example:
        >>> from resnet_backbone.models.blocks import Bottleneck
        >>> import torch
        >>> stage = ResLayer(Bottleneck, 8, 4, num_blocks=2, stride=2)
        >>> stage(torch.rand(1, 8, 16, 16)).shape
        torch.Size([1, 16, 8, 8])
    """

    def __init__(self, block: type[ResBlock], inplanes: int, planes: int, num_blocks: int,
                 stride: int = 1, avg_down: bool = False, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, **kwargs) -> None:
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN')
        self.block = block
        downsample = make_shortcut(block, inplanes, planes, stride, avg_down, conv_cfg, norm_cfg)
        layers = [block(inplanes=inplanes, planes=planes, stride=stride, downsample=downsample,
                        conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs)]
        inplanes = planes * block.expansion
        for _ in range(1, num_blocks):
            layers.append(block(inplanes=inplanes, planes=planes, stride=1, conv_cfg=conv_cfg,
                                norm_cfg=norm_cfg, **kwargs))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each block after the first gets a map only this loop holds, so the fused
        # inference path may write its output there (``owns_input``) - unless a hook
        # could be holding on to it.
        prev = None
        for block in self:
            if prev is not None and isinstance(block, ResBlock) and not _hooked(prev, block):
                x = block(x, owns_input=True)
            else:
                x = block(x)
            prev = block
        return x


def _hooked(prev: nn.Module, block: nn.Module) -> bool:
    """Could a forward hook see (and keep) the map passed from ``prev`` to ``block``?"""
    return bool(prev._forward_hooks or block._forward_pre_hooks or block._forward_hooks
                or _module._global_forward_hooks or _module._global_forward_pre_hooks)
