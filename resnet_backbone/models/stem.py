"""The stem: everything before the first residual stage.

Three layouts, chosen by ``stem_type``:

- ``'classic'``: 7x7 stride-2 conv + norm + ReLU, then a 3x3 stride-2 max-pool.
  Keys ``conv1.weight``, ``bn1.*`` (as mmdet, torchvision and timm).
- ``'deep'`` (ResNet-V1c/V1d): three 3x3 convs (stride 2, 1, 1; widths stem//2,
  stem//2, stem), each with norm + ReLU, then the max-pool. Keys ``stem.0/1/3/4/6/7.*``
  (as mmdet's ``deep_stem``).
- ``'small'``: one 3x3 stride-1 conv + norm + ReLU and no max-pool, for CIFAR-sized
  inputs. Keys ``conv1.weight``, ``bn1.*``.

The stem modules are attached to the backbone directly (not under a ``Stem`` parent),
because that is where every checkpoint in the field keeps them. A subclass of the
backbone may build its own stem in ``_make_stem_layer`` (mmdet's hook); its strides are
then read off its modules by :func:`module_stride`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer, build_norm_layer
from torch import nn

from ..spec import STEM_TYPES, check_choice


@dataclass(frozen=True)
class StemSpec:
    """What a stem contributes to the backbone.

    Attributes:
        modules: name -> module, in registration order, to attach to the backbone.
        norm_name: name of the norm layer for the single-conv stems (``bn1``/``gn1``).
    """

    modules: dict[str, nn.Module]
    norm_name: str | None


def module_stride(*modules: nn.Module) -> int:
    """The product of the strides of every conv and pooling layer in ``modules``.

    Anything with ``kernel_size`` and ``stride`` counts (``nn.Conv2d``, mmcv's DCN, the
    pools); a non-square stride counts by its first (height) entry.

    Example:
        >>> module_stride(nn.Conv2d(3, 8, 7, stride=2), nn.MaxPool2d(3, 2), nn.ReLU())
        4
    """
    stride = 1
    for module in modules:
        for m in module.modules():
            s = getattr(m, 'stride', None)
            if s is None or not hasattr(m, 'kernel_size'):
                continue
            stride *= int(s[0] if isinstance(s, (tuple, list)) else s)
    return stride


def build_stem(stem_type: str, in_channels: int, stem_channels: int,
               conv_cfg: dict | None, norm_cfg: dict) -> StemSpec:
    """Build the stem layers for ``stem_type`` ('classic', 'deep' or 'small').

    Args:
        stem_type: one of ``spec.STEM_TYPES``.
        in_channels: image channels.
        stem_channels: output channels of the stem.
        conv_cfg: mmcv conv config (``None`` = ``nn.Conv2d``).
        norm_cfg: mmcv norm config.

    Returns:
        The modules to attach and the norm's name.

    Example:
        >>> spec = build_stem('classic', 3, 8, None, dict(type='BN'))
        >>> list(spec.modules), spec.norm_name
        (['conv1', 'bn1', 'relu', 'maxpool'], 'bn1')
    """
    if stem_type == 'deep':
        half = stem_channels // 2
        stem = nn.Sequential(
            build_conv_layer(conv_cfg, in_channels, half, kernel_size=3, stride=2, padding=1,
                             bias=False),
            build_norm_layer(norm_cfg, half)[1],
            nn.ReLU(inplace=True),
            build_conv_layer(conv_cfg, half, half, kernel_size=3, stride=1, padding=1,
                             bias=False),
            build_norm_layer(norm_cfg, half)[1],
            nn.ReLU(inplace=True),
            build_conv_layer(conv_cfg, half, stem_channels, kernel_size=3, stride=1, padding=1,
                             bias=False),
            build_norm_layer(norm_cfg, stem_channels)[1],
            nn.ReLU(inplace=True))
        return StemSpec({'stem': stem, 'maxpool': nn.MaxPool2d(3, stride=2, padding=1)}, None)
    if stem_type in ('classic', 'small'):
        small = stem_type == 'small'
        conv1 = build_conv_layer(conv_cfg, in_channels, stem_channels,
                                 kernel_size=3 if small else 7, stride=1 if small else 2,
                                 padding=1 if small else 3, bias=False)
        norm_name, norm1 = build_norm_layer(norm_cfg, stem_channels, postfix=1)
        maxpool = nn.Identity() if small else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        modules = {'conv1': conv1, norm_name: norm1, 'relu': nn.ReLU(inplace=True),
                   'maxpool': maxpool}
        return StemSpec(modules, norm_name)
    check_choice('stem_type', stem_type, STEM_TYPES)
    raise AssertionError(f'STEM_TYPES lists {stem_type!r} but build_stem has no branch for it')


#: ``stem_pool_padding`` of a 3x3 stride-2 max-pool: 'symmetric' (PyTorch, timm: -inf
#: padding of 1 on every side), 'zeros' (Keras: a ZeroPadding2D of 1, then VALID), 'same'
#: (TensorFlow's SAME, TF-slim: -inf, pad_before = pad_total // 2, the rest after)
STEM_POOL_PADDINGS = ('symmetric', 'zeros', 'same')


class ZeroPadMaxPool2d(nn.Module):
    """Keras's stem pool: ``ZeroPadding2D(1)`` then ``MaxPooling2D(3, 2)`` (VALID).

    Unlike PyTorch's ``MaxPool2d(3, 2, padding=1)`` (which pads with -inf), a border
    window here also sees the zeros: it differs wherever a border window's values are all
    negative, which a stem without norm/ReLU (ResNet v2) produces.

    Example:
        >>> ZeroPadMaxPool2d()(-torch.ones(1, 1, 4, 4))[0, 0, 0]
        tensor([0., 0.])
    """

    kernel_size = 3
    stride = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, (1, 1, 1, 1)), self.kernel_size, self.stride)


class SamePadMaxPool2d(nn.Module):
    """TensorFlow's ``max_pool2d(3, stride=2, padding='SAME')`` exactly (TF-slim's pool1).

    Per spatial dimension of size ``n``: ``pad_total = max((ceil(n / 2) - 1) * 2 + 3 - n,
    0)``, ``pad_before = pad_total // 2``, the rest after, with -inf. For this kernel and
    stride that is ``n % 2`` before and 1 after: on an even size window ``i`` covers
    ``2i..2i+2`` (PyTorch's ``padding=1`` covers ``2i-1..2i+1``); on an odd size the two
    agree. The padding is computed from the input's shape at run time, as plain integer
    arithmetic, so it traces, compiles and exports with dynamic sizes.

    Example:
        >>> x = torch.arange(4.).reshape(1, 1, 1, 4).expand(1, 1, 3, 4)
        >>> SamePadMaxPool2d()(x)[0, 0, 0]  # windows (0,1,2), (2,3,pad): TF's
        tensor([2., 3.])
        >>> nn.MaxPool2d(3, 2, padding=1)(x)[0, 0, 0]  # windows (pad,0,1), (1,2,3)
        tensor([1., 3.])
    """

    kernel_size = 3
    stride = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        # (ceil(n/2) - 1) * 2 + 3 - n is 1 for an even n and 2 for an odd one (never < 0)
        x = F.pad(x, (w % 2, 1, h % 2, 1), value=float('-inf'))
        return F.max_pool2d(x, self.kernel_size, self.stride)


def build_stem_pool(padding: str) -> nn.Module:
    """The 3x3 stride-2 stem max-pool with ``padding`` (one of ``STEM_POOL_PADDINGS``).

    Example:
        >>> build_stem_pool('same')
        SamePadMaxPool2d()
    """
    check_choice('stem_pool_padding', padding, STEM_POOL_PADDINGS)
    if padding == 'same':
        return SamePadMaxPool2d()
    if padding == 'zeros':
        return ZeroPadMaxPool2d()
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
