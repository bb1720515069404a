"""The fast path: conv + eval-mode BatchNorm folded into one conv, on the fly.

A BatchNorm in eval mode (frozen stages, ``norm_eval=True``, ``model.eval()``) is an
affine map per channel, so ``bn(conv(x, W))`` equals ``conv(x, W * s) + (b - m * s)``
with ``s = gamma / sqrt(var + eps)``. Folding saves one full pass over the activation
in the forward pass, and the BN's input no longer has to be kept for backward. It runs
on the CPU and in captured graphs; eager GPU runs keep the reference ops (see
:func:`worth_folding`).

The folded weight is recomputed from the live parameters and buffers at every call, so
it never goes stale after an optimizer step or a ``load_state_dict``, and autograd
flows through it into ``W``, ``gamma`` and ``beta`` when they are trainable.

Only exactly-equivalent cases fold: a plain ``nn.Conv2d`` without bias and with zero
padding, followed by a ``BatchNorm2d``/``SyncBatchNorm`` in eval mode (or our
``FrozenBatchNorm2d``). Everything else (train-mode BN, GN, DCN, custom convs) runs as
usual. The result differs from the unfolded one only by float rounding; ``fast=False``
on the backbone is the bitwise reference (mmdet's op order).

Where autograd records nothing (``torch.no_grad``/inference, or frozen stages in a
train step) on a CPU float32 tensor in eager mode, the folded convs also go through
oneDNN's fused kernels: conv + bias in one pass, and the block's last conv accumulated
*into* its shortcut tensor (conv + add, no new buffer): every large buffer saved is a
fresh ``mmap`` and its page faults saved (figures: ``docs/fast_path.md``). Results equal
the unfused folded ops (same oneDNN convolution, same post-op order),
:func:`mkldnn_fusion` turns them off, and a torch without the private ops (probed once,
:func:`fused_ops_work`) runs the unfused folded ops. Settings are per context:
:mod:`resnet_backbone.options`.

The ReLU is *not* a oneDNN post-op: oneDNN's ReLU is ``max(x, 0)`` with the zero as
the operand an x86 ``max`` returns for a NaN, so it turns NaN into 0 (always for
conv + ReLU, in channels_last for conv + add + ReLU). A NaN or Inf in the input or
the weights must reach the loss as it does in the reference, so the ReLU runs as
``torch.relu_`` on the fused kernel's output, in place (no new buffer).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import options
from .norm import FrozenBatchNorm2d

_MKLDNN_AVAILABLE = torch.backends.mkldnn.is_available()
#: where the private oneDNN ops are looked up (a test replaces it to simulate a torch
#: without them)
_mkldnn_ops = torch.ops.mkldnn


def mkldnn_fusion(enabled: bool) -> contextlib.AbstractContextManager:
    """Context manager to turn the oneDNN fused kernels off or on (this thread/context).

    A thin wrapper over :func:`resnet_backbone.options.using` (``mkldnn_fusion=``).

    Example:
        >>> with mkldnn_fusion(False):
        ...     pass  # folded convs run as plain F.conv2d + add + relu here
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
    return torch.compiler.is_compiling() or torch.jit.is_scripting() \
        or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def fusion_ok(x: torch.Tensor, params: Iterable[torch.Tensor]) -> bool:
    """True when the oneDNN fused inference kernels may run on ``x``.

    Eager CPU float32 only, no autocast, the ``mkldnn_fusion`` option on, and nothing for
    autograd to record (no grad mode, or neither ``x`` nor any of ``params`` requires
    grad). Tracing, scripting, ``torch.compile`` and ONNX export always take the plain
    ops, which they understand. The private oneDNN ops must also pass
    :func:`fused_ops_work` (probed once).

    Args:
        x: The input the kernels would read.
        params: The parameters of the modules they would replace.
    """
    if _capturing():  # checked first: dynamo treats it as a constant and stops here
        return False
    if not (options.current().mkldnn_fusion and _MKLDNN_AVAILABLE and x.device.type == 'cpu'
            and x.dtype == torch.float32) or torch.is_autocast_enabled('cpu'):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return False
    return fused_ops_work()


def _geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def conv_norm_relu_fused(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``relu(norm(conv(x)))``: conv + bias as one oneDNN kernel, then an in-place ReLU
    that keeps NaN (callers check :func:`fusion_ok`)."""
    weight, bias = folded_params(conv, norm)
    out = _mkldnn_ops._convolution_pointwise(x, weight, bias, *_geometry(conv), 'none', [], None)
    return out.relu_()  # not oneDNN's 'relu' post-op: it maps NaN to 0 (module docstring)


def conv_norm_add_relu_(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor,
                        acc: torch.Tensor) -> torch.Tensor:
    """``acc = relu(acc + norm(conv(x)))`` in place: conv + add as one oneDNN kernel, then
    an in-place ReLU that keeps NaN; returns ``acc``."""
    weight, bias = folded_params(conv, norm)
    _mkldnn_ops._convolution_pointwise_.binary(
        acc, x, weight, bias, *_geometry(conv), 'add', 1.0, None, [], None)
    return acc.relu_()  # oneDNN's fused ReLU maps NaN to 0 in channels_last


@functools.cache
def fused_ops_work() -> bool:
    """Do torch's private oneDNN fused ops exist and compute what this module expects?

    ``torch.ops.mkldnn._convolution_pointwise`` is private: it may be missing from a build
    or change its signature. It is probed once per process, at first use, on tiny tensors
    in a helper thread (so the caller's dispatch modes, op counters, grad and autocast
    state neither see nor change it). On any failure the fast path runs the plain folded
    ops instead (same results) and one DEBUG log line says why.
    """
    result: list[str | None] = []
    probe = threading.Thread(target=lambda: result.append(_probe_fused_ops()),
                             name='resnet_backbone-onednn-probe', daemon=True)
    probe.start()
    probe.join()
    failure = result[0] if result else 'the probe thread died'
    if failure is not None:
        print_log('resnet_backbone: oneDNN fused kernels unavailable, using the plain folded '
                  f'ops ({failure})', logger='current', level=logging.DEBUG)
    return failure is None


def _probe_fused_ops() -> str | None:
    """Run both fused ops once against ``F.conv2d``; ``None`` if they agree, else why not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 5, 5, generator=g)
    weight = torch.randn(3, 4, 3, 3, generator=g)
    bias = torch.randn(3, generator=g)
    geometry = ([1, 1], [2, 1], [1, 1], 1)  # padding, stride, dilation, groups
    try:
        with torch.no_grad():
            want = F.conv2d(x, weight, bias, geometry[1], geometry[0], geometry[2], geometry[3])
            acc = torch.randn(want.shape, generator=g)
            got = _mkldnn_ops._convolution_pointwise(x, weight, bias, *geometry, 'none', [],
                                                     None)
            into = acc.clone()
            _mkldnn_ops._convolution_pointwise_.binary(into, x, weight, bias, *geometry, 'add',
                                                       1.0, None, [], None)
    except Exception as exc:  # missing op, changed signature, unsupported build: all mean no
        return f'{type(exc).__name__}: {exc}'.splitlines()[0]
    if not isinstance(got, torch.Tensor) or got.shape != want.shape \
            or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        return '_convolution_pointwise differs from F.conv2d'
    if not torch.allclose(into, acc + want, rtol=1e-4, atol=1e-5):
        return '_convolution_pointwise_.binary differs from F.conv2d + add'
    return None


#: Fold only where the activation work it saves can outweigh the weight-sized work it
#: adds (refolding the weight each call; in backward, the weight gradient's chain rule):
#: output positions (N x H x W) x FOLD_MIN_RATIO >= weights per output channel. 16 keeps
#: every conv of ResNet-50 folded from 2x512x512 up (layer4's 3x3: 512 x 16 >= 4608) and
#: leaves deep layers of small inputs unfolded (measurements: ``docs/fast_path.md``).
FOLD_MIN_RATIO = 16.0


def worth_folding(conv: nn.Conv2d, positions: int, device_type: str = 'cpu') -> bool:
    """Is folding ``conv`` cheaper than running its BN, for ``positions`` output
    positions (N x H_out x W_out) on ``device_type``? Always yes while tracing, compiling
    or exporting, and under ``fold_always``; never in eager mode on a GPU.

    On a GPU folding adds several small kernels per conv (the scale, the shift, the
    weight multiply) to save one BN pass; measured, that lost in eval at every batch and
    in training at detection's usual 2 images per GPU (``docs/benchmark.md``, GPU
    section), so eager GPU runs take the reference ops.
    """
    if _capturing() or options.current().fold_always:  # capture first: dynamo cannot
        return True                                     # read a ContextVar
    if device_type != 'cpu':
        return False
    per_channel = conv.weight[0].numel()
    return positions * FOLD_MIN_RATIO >= per_channel


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


def fold_scale_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``norm(y) == y * scale + shift`` (eval mode)."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def folded_params(conv: nn.Conv2d, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the single conv equal to ``norm(conv(.))``."""
    scale, shift = fold_scale_shift(norm)
    return conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype), shift


class _FoldedConv(torch.autograd.Function):
    """``conv2d(x, weight * scale) + shift`` that keeps ``weight``, not the folded copy.

    Plain autograd through ``weight * scale`` saves the folded weight for the conv's
    backward *and* ``weight`` for the multiply's: two copies of every trainable conv
    weight. This saves ``x``, ``weight`` and
    ``scale`` and refolds the weight in backward (a weight-sized multiply). Forward and
    gradient formulas are the ones autograd would use, in the same order.
    """

    @staticmethod
    def forward(ctx, x, weight, scale, shift, stride, padding, dilation, groups,
                output_unused=False):
        ctx.save_for_backward(x, weight, scale)
        ctx.geometry = (stride, padding, dilation, groups)
        if output_unused:  # a checkpoint recompute that only needs what is saved
            return _empty_conv_output(x, weight, stride, padding, dilation)
        folded = weight * scale.reshape(-1, 1, 1, 1)
        return F.conv2d(x, folded, shift, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, scale = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        need_x, need_w, need_scale, need_shift = ctx.needs_input_grad[:4]
        folded = weight * scale.reshape(-1, 1, 1, 1)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_out, x, folded, [folded.shape[0]], stride, padding, dilation, False,
            [0] * len(padding), groups, [need_x, need_w or need_scale, need_shift])
        grad_scale = _per_channel_dot(gw, weight) if need_scale else None
        # gw is ours: scale it in place (no second weight-sized buffer)
        grad_w = gw.mul_(scale.reshape(-1, 1, 1, 1)) if need_w else None
        return gx, grad_w, grad_scale, gb, None, None, None, None, None


def _per_channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum((1, 2, 3))`` without a weight-sized temporary (a batched dot)."""
    if a.stride() == b.stride():
        # same layout: the O dimension is outermost in both contiguous and channels_last
        # weights, so each output channel's elements are one contiguous run of memory
        n = a.shape[0]
        run = a[0].numel()
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
            and worth_folding(conv, out_positions(conv, x), x.device.type)):
        return norm(conv(x))
    # jit.trace records a custom autograd Function as an opaque node whose value names
    # change between invocations, so its default check_trace fails: trace plain ops
    if torch.is_grad_enabled() and conv.weight.requires_grad \
            and not torch.is_autocast_enabled(x.device.type) and not torch.jit.is_tracing():
        scale, shift = fold_scale_shift(norm)
        return _FoldedConv.apply(x, conv.weight, scale.to(conv.weight.dtype), shift,
                                 conv.stride, conv.padding, conv.dilation, conv.groups,
                                 output_unused)
    weight, bias = folded_params(conv, norm)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def conv_norm_relu(conv: nn.Module, norm: nn.Module, relu: nn.Module, x: torch.Tensor,
                   fast: bool) -> torch.Tensor:
    """``relu(norm(conv(x)))``: one fused kernel where possible, else folded or as is.

    Args:
        conv: The conv module.
        norm: The norm module that follows it.
        relu: The activation module (fused only when it is an ``nn.ReLU``).
        x: The input.
        fast: As in :func:`conv_norm`.
    """
    if fast and foldable(conv, norm) and isinstance(relu, nn.ReLU) \
            and fusion_ok(x, (*conv.parameters(), *norm.parameters())) \
            and worth_folding(conv, out_positions(conv, x), x.device.type):
        return conv_norm_relu_fused(conv, norm, x)
    return relu(conv_norm(conv, norm, x, fast))


def sequential_conv_norm(seq: nn.Sequential, x: torch.Tensor, fast: bool,
                         output_unused: bool = False) -> torch.Tensor:
    """Run ``seq`` (pool?, conv, norm, relu?, ...), folding each conv + norm (+ ReLU).

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
            if i + 2 < len(mods) and isinstance(mods[i + 2], nn.ReLU):
                x = conv_norm_relu(m, mods[i + 1], mods[i + 2], x, True)
                i += 3
            else:
                x = conv_norm(m, mods[i + 1], x, True, output_unused and i + 2 == len(mods))
                i += 2
        else:
            x = m(x)
            i += 1
    return x
