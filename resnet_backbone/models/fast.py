"""Folding in the training module: conv + eval-mode BatchNorm as one conv, on the fly.

``bn(conv(x, W)) == conv(x, W * s) + (b - m * s)``. In a train step the folded conv keeps
fewer bytes for backward; that is all folding is for here, so it runs only where autograd
records the conv. Only exactly-equivalent pairs fold; ``fast=False`` is mmdet's op order,
bitwise. Design and measurements: ``docs/fast_path.md``.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import options
from .norm import FrozenBatchNorm2d


def mkldnn_fusion(enabled: bool) -> contextlib.AbstractContextManager:
    """Context manager to turn the inference snapshot's oneDNN fused kernels off or on
    (this thread/context); a thin wrapper over :func:`resnet_backbone.options.using`.

    Example:
        >>> with mkldnn_fusion(False):
        ...     pass  # the snapshot's folded convs run as plain F.conv2d + add + relu here
    """
    return options.using(mkldnn_fusion=bool(enabled))


def always_fold() -> contextlib.AbstractContextManager:
    """Context manager: fold every foldable conv whatever the input size (tests, export).

    A thin wrapper over :func:`resnet_backbone.options.using` (``fold_always=True``).

    Example:
        >>> with always_fold():
        ...     pass
    """
    return options.using(fold_always=True)


def _capturing() -> bool:
    """Is a graph being captured (trace, script, torch.compile/export, ONNX export)?"""
    # (no torch.onnx.is_in_onnx_export(): both ONNX exporters run under a jit trace or
    # torch.export, which these see, and it costs more than the three together)
    return torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing()


#: Fold only where the activation work it saves can outweigh the weight-sized work it
#: adds (refolding the weight each call; in backward, the weight gradient's chain rule):
#: output positions (N x H x W) x FOLD_MIN_RATIO >= weights per output channel.
FOLD_MIN_RATIO = 16.0
#: ... and only where the conv's output map is large enough for the BN input it keeps
#: out of backward to matter: below 2**18 elements (N x C x H x W) the fold's 16 extra
#: small ops per conv cost more than the bytes they save (docs/fast_path.md). Every
#: conv of ResNet-50 folds from 2x512x512 up; at 2x64x64 none does.
FOLD_MIN_ELEMENTS = 2 ** 18


def worth_folding(conv: nn.Conv2d, positions: int, device_type: str = 'cpu',
                  records: bool = True) -> bool:
    """Does the training module fold ``conv`` (with an eval-mode BN after it) here?

    - While tracing, compiling or exporting, and under ``fold_always``: yes (a captured
      graph folds once; tests and export want every fold).
    - Eager, with autograd recording nothing (``records=False``: no grad mode, frozen
      stages): no. Folding is for what backward keeps; without backward it only adds
      ops, and inference speed is the snapshot's (:mod:`.inference`).
    - Eager on a GPU: no. Folding adds small kernels per conv to save one BN pass, and
      a launch-bound step lost by it (``docs/benchmark.md``, GPU section).
    - Eager on a CPU: where the output map has ``FOLD_MIN_ELEMENTS`` and ``positions``
      (N x H_out x W_out) x ``FOLD_MIN_RATIO`` covers the weights per output channel.
    """
    if _capturing() or options.current().fold_always:  # capture first: dynamo cannot
        return True                                     # read a ContextVar
    if not records or device_type != 'cpu':
        return False
    return positions * conv.out_channels >= FOLD_MIN_ELEMENTS \
        and positions * FOLD_MIN_RATIO >= math.prod(conv.weight.shape[1:])


def records_grad(x: torch.Tensor, conv: nn.Module, norm: nn.Module) -> bool:
    """Will autograd record ``norm(conv(x))`` (grad mode, and something requires grad)?"""
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in conv.parameters())
        or any(p.requires_grad for p in norm.parameters()))


def _out_hw(x: torch.Tensor, kernel_size, stride, padding, dilation) -> list[int]:
    """Output height and width of a conv applied to ``x``."""
    return [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1)
            // stride[i] + 1 for i in range(2)]


def out_positions(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """N x H_out x W_out of ``conv`` applied to ``x``."""
    h, w = _out_hw(x, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    return x.shape[0] * h * w


def foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """True when ``norm(conv(x))`` can be computed as one conv, exactly."""
    if type(conv) is not nn.Conv2d or conv.bias is not None or conv.padding_mode != 'zeros':
        return False
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, _BatchNorm) and not norm.training and norm.track_running_stats \
        and norm.running_mean is not None


def _inv_scale_shift(gamma, beta, mean, var, eps
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rsqrt(var + eps)``, ``scale = gamma * rsqrt(var + eps)`` and ``shift = beta -
    mean * scale`` (``gamma``/``beta`` may be None: no affine)."""
    inv = torch.rsqrt(var + eps)
    scale = inv * gamma if gamma is not None else inv
    shift = torch.addcmul(beta, mean, scale, value=-1) if beta is not None \
        else -(mean * scale)
    return inv, scale, shift


def fold_scale_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``norm(y) == y * scale + shift`` (eval mode)."""
    _, scale, shift = _inv_scale_shift(norm.weight, norm.bias, norm.running_mean,
                                       norm.running_var, norm.eps)
    return scale, shift


def folded_params(conv: nn.Conv2d, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the single conv equal to ``norm(conv(.))``."""
    scale, shift = fold_scale_shift(norm)
    return conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype), shift


class _FoldedConvBN(torch.autograd.Function):
    """``bn(conv(x, weight))`` with an eval-mode BN, as one conv on the folded weight:
    ``conv2d(x, weight * s) + (beta - mean * s)``, ``s = gamma * rsqrt(var + eps)``.

    One autograd node for the fold and the conv. Plain autograd through the fold would
    save the folded weight for the conv's backward *and* ``weight`` for the multiply's
    (two copies of every trainable conv weight) and record the BN arithmetic as a chain
    of small ops. This saves ``x``, ``weight``, ``s``, ``rsqrt(var + eps)`` and ``mean``,
    refolds the weight in backward (a weight-sized multiply), and writes the gradients of
    ``weight``, ``gamma`` and ``beta`` directly (the chain rule through the fold).
    """

    @staticmethod
    def forward(ctx, x, weight, gamma, beta, mean, var, eps, stride, padding, dilation,
                groups, output_unused=False):
        inv, scale, shift = _inv_scale_shift(gamma, beta, mean, var, eps)
        # the conv's dtype (a no-op unless the BN is kept in another one, e.g. fp32 BN
        # under fp16 convs)
        scale, shift = scale.to(weight.dtype).view(-1, 1, 1, 1), shift.to(weight.dtype)
        ctx.save_for_backward(x, weight, scale, inv, mean)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.affine = (gamma is not None, beta is not None)
        if output_unused:  # a checkpoint recompute that only needs what is saved
            return _empty_conv_output(x, weight, stride, padding, dilation)
        return F.conv2d(x, weight * scale, shift, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, scale, inv, mean = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        need_x, need_w, need_gamma, need_beta = ctx.needs_input_grad[:4]
        need_gamma, need_beta = need_gamma and ctx.affine[0], need_beta and ctx.affine[1]
        folded = weight * scale  # (scale is saved as (C, 1, 1, 1))
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_out, x, folded, [folded.shape[0]], stride, padding, dilation, False,
            [0] * len(padding), groups, [need_x, need_w or need_gamma, need_beta or need_gamma])
        grad_gamma = None
        if need_gamma:
            # d/ds of conv(x, W * s) + (beta - mean * s): <gw, W> per channel - mean * gb
            grad_scale = torch.addcmul(_per_channel_dot(gw, weight).to(inv.dtype), mean,
                                       gb.to(inv.dtype), value=-1)
            grad_gamma = grad_scale * inv
        # gw is ours: scale it in place (no second weight-sized buffer)
        grad_w = gw.mul_(scale) if need_w else None
        return (gx, grad_w, grad_gamma, gb.to(inv.dtype) if need_beta else None,
                None, None, None, None, None, None, None, None)


def _per_channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum((1, 2, 3))`` without a weight-sized temporary (a batched dot)."""
    if a.stride() == b.stride():
        # same layout: the O dimension is outermost in both contiguous and channels_last
        # weights, so each output channel's elements are one contiguous run of memory
        n = a.shape[0]
        run = math.prod(a.shape[1:])
        if a.is_contiguous() or a.is_contiguous(memory_format=torch.channels_last):
            flat_a = a.as_strided((n, 1, run), (run, run, 1))
            flat_b = b.as_strided((n, run, 1), (run, 1, 1))
            return torch.bmm(flat_a, flat_b).reshape(n)
    return (a * b).sum((1, 2, 3))


def _empty_conv_output(x, weight, stride, padding, dilation) -> torch.Tensor:
    size = [x.shape[0], weight.shape[0],
            *_out_hw(x, weight.shape[2:], stride, padding, dilation)]
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    return torch.empty(size, dtype=x.dtype, device=x.device, memory_format=fmt)


def autocast_available(device_type: str) -> bool:
    """Does torch have autocast for ``device_type``? (Asking a device without it, meta for
    one, whether autocast is on raises.)"""
    available = getattr(torch.amp, 'is_autocast_available', lambda d: d in ('cpu', 'cuda'))
    return available(device_type)


def _autocast_on(device_type: str) -> bool:
    return autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def conv_norm(conv: nn.Module, norm: nn.Module, x: torch.Tensor, fast: bool,
              output_unused: bool = False) -> torch.Tensor:
    """``norm(conv(x))``, folded into one conv when ``fast`` and exactly equivalent.

    Args:
        conv: The conv module.
        norm: The norm module that follows it.
        x: The input.
        fast: Fold where :func:`foldable` and :func:`worth_folding` say so; ``False`` runs
            ``norm(conv(x))`` as is (the reference).
        output_unused: The caller is a checkpoint recompute that needs only what this
            conv saves for backward, not its output; a folded conv then returns an
            uninitialised tensor. Only for an output that provably feeds nothing.

    Returns:
        ``norm(conv(x))`` (or, with ``output_unused``, possibly an uninitialised map).
    """
    if not (fast and foldable(conv, norm)
            and worth_folding(conv, out_positions(conv, x), x.device.type,
                              records_grad(x, conv, norm))):
        return norm(conv(x))
    # jit.trace records a custom autograd Function as an opaque node whose value names
    # change between invocations, so its default check_trace fails: trace plain ops
    if torch.is_grad_enabled() and conv.weight.requires_grad \
            and not _autocast_on(x.device.type) and not torch.jit.is_tracing():
        return _FoldedConvBN.apply(x, conv.weight, norm.weight, norm.bias, norm.running_mean,
                                   norm.running_var, norm.eps, conv.stride, conv.padding,
                                   conv.dilation, conv.groups, output_unused)
    weight, bias = folded_params(conv, norm)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def sequential_conv_norm(seq: nn.Sequential, x: torch.Tensor, fast: bool,
                         output_unused: bool = False) -> torch.Tensor:
    """Run ``seq`` (pool?, conv, norm, relu?, ...), folding each conv + norm where
    :func:`conv_norm` does.

    Args:
        seq: The modules, e.g. a projection shortcut.
        x: The input.
        fast: As in :func:`conv_norm`.
        output_unused: Passed to the last conv + norm when nothing follows it (see
            :func:`conv_norm`).
    """
    mods = list(seq)
    i = 0
    while i < len(mods):
        m = mods[i]
        if fast and i + 1 < len(mods) and foldable(m, mods[i + 1]):
            x = conv_norm(m, mods[i + 1], x, True, output_unused and i + 2 == len(mods))
            i += 2
        else:
            x = m(x)
            i += 1
    return x
