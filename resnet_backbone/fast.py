"""The fast path: conv + eval-mode BatchNorm folded into one conv, on the fly.

A BatchNorm in eval mode (frozen stages, ``norm_eval=True``, ``model.eval()``) is an
affine map per channel, so ``bn(conv(x, W))`` equals ``conv(x, W * s) + (b - m * s)``
with ``s = gamma / sqrt(var + eps)``. Folding saves one full pass over the activation
in the forward pass, and the BN's input no longer has to be kept for backward.

The folded weight is recomputed from the live parameters and buffers at every call, so
it never goes stale after an optimizer step or a ``load_state_dict``, and autograd
flows through it into ``W``, ``gamma`` and ``beta`` when they are trainable.

Only exactly-equivalent cases fold: a plain ``nn.Conv2d`` without bias and with zero
padding, followed by a ``BatchNorm2d``/``SyncBatchNorm`` in eval mode (or our
``FrozenBatchNorm2d``). Everything else (train-mode BN, GN, DCN, custom convs) runs as
usual. The result differs from the unfolded one only by float rounding (about 1e-6
relative); ``fast=False`` on the backbone is the bitwise reference (mmdet's op order).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .norm import FrozenBatchNorm2d


def foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """True when ``norm(conv(x))`` can be computed as one conv, exactly."""
    if type(conv) is not nn.Conv2d or conv.bias is not None or conv.padding_mode != 'zeros':
        return False
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, _BatchNorm) and not norm.training and norm.track_running_stats \
        and norm.running_mean is not None


def folded_params(conv: nn.Conv2d, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the single conv equal to ``norm(conv(.))``."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype), shift


def conv_norm(conv: nn.Module, norm: nn.Module, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """``norm(conv(x))``, folded into one conv when ``fast`` and exactly equivalent."""
    if fast and foldable(conv, norm):
        weight, bias = folded_params(conv, norm)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation,
                        conv.groups)
    return norm(conv(x))


def sequential_conv_norm(seq: nn.Sequential, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """Run ``seq`` (pool?, conv, norm, relu?, ...), folding each conv + norm pair."""
    mods = list(seq)
    i = 0
    while i < len(mods):
        m = mods[i]
        if fast and i + 1 < len(mods) and foldable(m, mods[i + 1]):
            x = conv_norm(m, mods[i + 1], x, True)
            i += 2
        else:
            x = m(x)
            i += 1
    return x
