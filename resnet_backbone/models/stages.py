"""Stage building: one ``ResLayer`` (a sequence of blocks) per ResNet stage.

Mirrors mmdet's ``ResLayer`` (arguments, module order, keys): the first block (the last
with ``downsample_first=False``) carries the stride and a projection shortcut when the
stride or the width changes. With ``avg_down`` (ResNet-V1d) the
shortcut is ``AvgPool(k=stride, s=stride, ceil_mode=True, count_include_pad=False)``
followed by a stride-1 1x1 conv; the pool is there even at stride 1 (kernel 1), which
keeps mmdet's key layout (``downsample.1`` is the conv, ``downsample.2`` the norm).
"""
from __future__ import annotations

import torch  # noqa: F401  (the examples in the docstrings use it)
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmengine.model import Sequential
from torch import nn

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
    """One ResNet stage: ``num_blocks`` blocks, one of them strided (mmdet's ``ResLayer``).

    Args:
        block: ``BasicBlock``, ``Bottleneck`` or a subclass (any block taking mmdet's
            block arguments).
        inplanes: Input channels.
        planes: Bottleneck width; the output has ``planes * block.expansion`` channels.
        num_blocks: Number of blocks.
        stride: Stride of the strided block.
        avg_down: Use the ResNet-V1d shortcut (avg-pool, then a stride-1 1x1 conv).
        conv_cfg: mmcv conv config (``None`` = ``nn.Conv2d``).
        norm_cfg: mmcv norm config.
        downsample_first: As mmdet: ``True`` (ResNet) puts the stride and the projection
            shortcut in the first block; ``False`` (HourglassNet) runs ``num_blocks - 1``
            blocks at ``inplanes`` width first and strides/projects in the last one.
            ``False`` needs ``block.expansion == 1`` when ``num_blocks > 1`` (those
            blocks must output ``inplanes`` channels).
        **kwargs: Passed to every block (``dilation``, ``style``, ``with_cp``, ``dcn``,
            ``plugins``, ``init_cfg``, or a custom block's own, e.g. ``groups``).

    Raises:
        ValueError: ``downsample_first=False`` with a block whose ``expansion`` is not 1.

    Example:
        >>> from resnet_backbone.models.blocks import BasicBlock, Bottleneck
        >>> import torch
        >>> stage = ResLayer(Bottleneck, 8, 4, num_blocks=2, stride=2)
        >>> stage(torch.rand(1, 8, 16, 16)).shape
        torch.Size([1, 16, 8, 8])
        >>> last = ResLayer(BasicBlock, 8, 16, num_blocks=3, stride=2, downsample_first=False)
        >>> last(torch.rand(1, 8, 16, 16)).shape, last[2].downsample is not None
        (torch.Size([1, 16, 8, 8]), True)
    """

    def __init__(self, block: type[ResBlock], inplanes: int, planes: int, num_blocks: int,
                 stride: int = 1, avg_down: bool = False, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, downsample_first: bool = True,
                 **kwargs) -> None:
        if not isinstance(downsample_first, bool):
            raise TypeError(f'downsample_first must be True or False; got {downsample_first!r}')
        if not downsample_first and num_blocks > 1 and block.expansion != 1:
            raise ValueError(
                f'downsample_first=False needs a block with expansion 1 (BasicBlock, as '
                f'HourglassNet uses it); {block.__name__}.expansion={block.expansion} would '
                f'not chain its first {num_blocks - 1} blocks; use downsample_first=True')
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN')
        self.block = block
        downsample = make_shortcut(block, inplanes, planes, stride, avg_down, conv_cfg, norm_cfg)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs)
        if downsample_first:
            layers = [block(inplanes=inplanes, planes=planes, stride=stride,
                            downsample=downsample, **common)]
            inplanes = planes * block.expansion
            layers += [block(inplanes=inplanes, planes=planes, stride=1, **common)
                       for _ in range(1, num_blocks)]
        else:  # mmdet's HourglassNet order: width-keeping blocks, then the strided one
            layers = [block(inplanes=inplanes, planes=inplanes, stride=1, **common)
                      for _ in range(num_blocks - 1)]
            layers.append(block(inplanes=inplanes, planes=planes, stride=stride,
                                downsample=downsample, **common))
        super().__init__(*layers)
