"""The inference snapshot: an eval-only copy of a backbone that owns every inference trick.

BN folded once (in float32, then cast), oneDNN's fused kernels on prepacked weights, the
in-place residual add, bf16, and Inductor (``compile=True``). Blocks it cannot run exactly
run through their own code in float32. ReLU runs as ``relu_`` (NaN kept). Rebuilt when
the source's weights change; refuses ``train()``. Design: ``docs/fast_path.md``.

Example:
    >>> from resnet_backbone.models.resnet import ResNetV1Custom
    >>> net = ResNetV1Custom(depth=18, base_channels=8).eval()
    >>> snap = for_inference(net, 'bf16')
    >>> [tuple(o.shape) for o in snap(torch.rand(1, 3, 64, 64))][-1]
    (1, 64, 2, 2)
    >>> snap(torch.rand(1, 3, 64, 64))[0].dtype
    torch.float32
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import nn

from .. import options
from ..spec import resolve_levels
from .compiled import CompiledInference, weights_stamp
from .fast import _capturing, _inv_scale_shift, autocast_available, foldable

#: ``compute_dtype`` names -> torch dtypes
COMPUTE_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}

#: where the private oneDNN ops are looked up (a test replaces it to simulate a torch
#: without them)
_mkldnn_ops = torch.ops.mkldnn


def check_compute_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``compute_dtype`` name; one-line ``ValueError`` otherwise."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f'compute_dtype {name!r} not supported; allowed values: '
                         f'{", ".join(COMPUTE_DTYPES)}')
    return COMPUTE_DTYPES[name]


def fold_then_cast(conv: nn.Conv2d, norm: nn.Module, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the one conv equal to ``norm(conv(.))`` (a foldable pair):
    computed from float32 copies of every tensor, then cast to ``dtype`` (one rounding)."""
    def f32(t):
        return None if t is None else t.detach().float()
    _, scale, shift = _inv_scale_shift(f32(norm.weight), f32(norm.bias),
                                       f32(norm.running_mean), f32(norm.running_var), norm.eps)
    return (f32(conv.weight) * scale.reshape(-1, 1, 1, 1)).to(dtype), shift.to(dtype)


# ---- oneDNN's private fused kernels: probed once per dtype ---------------------------
def _in_a_thread(probe, died):
    """``probe()`` run in a helper thread, so that the caller's dispatch modes, op
    counters, grad and autocast state neither see nor change it; ``died`` if it raised."""
    result = []
    thread = threading.Thread(target=lambda: result.append(probe()), daemon=True,
                              name='resnet_backbone-onednn-probe')
    thread.start()
    thread.join()
    return result[0] if result else died


@functools.cache
def fused_ops_work(dtype: torch.dtype = torch.float32) -> bool:
    """Do oneDNN's private fused conv ops, on a weight reordered into their layout, run in
    ``dtype`` here and agree with ``F.conv2d``? Probed once per process and dtype, at
    first use, in a helper thread (so the caller's dispatch modes, op counters, grad and
    autocast state neither see nor change it). A failure logs one DEBUG line; the plain
    ops then run."""
    failure = _in_a_thread(lambda: _probe_fused_ops(dtype), 'the probe thread died')
    if failure is not None:
        print_log(f'resnet_backbone: oneDNN fused kernels unavailable in {dtype}, using the '
                  f'plain ops ({failure})', logger='current', level=logging.DEBUG)
    return failure is None


def _probe_fused_ops(dtype: torch.dtype) -> str | None:
    """Run both fused ops once against ``F.conv2d``; ``None`` if they agree, else why not."""
    if not torch.backends.mkldnn.is_available():
        return 'oneDNN is not available in this torch build'
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 9, 9, generator=g).to(dtype).to(memory_format=torch.channels_last)
    weight = torch.randn(8, 16, 3, 3, generator=g).to(dtype)
    bias = torch.randn(8, generator=g).to(dtype)
    geometry = ([1, 1], [2, 1], [1, 1], 1)  # padding, stride, dilation, groups
    try:
        with torch.no_grad():
            want = F.conv2d(x, weight, bias, geometry[1], geometry[0], geometry[2],
                            geometry[3])
            acc = torch.randn(want.shape, generator=g).to(dtype)
            packed = _mkldnn_ops._reorder_convolution_weight(weight, *geometry, list(x.shape))
            got = _mkldnn_ops._convolution_pointwise(x, packed, bias, *geometry, 'none', [],
                                                     None)
            into = acc.clone()
            _mkldnn_ops._convolution_pointwise_.binary(into, x, packed, bias, *geometry,
                                                       'add', 1.0, None, [], None)
    except Exception as exc:  # missing op, changed signature, unsupported build: all mean no
        return f'{type(exc).__name__}: {exc}'.splitlines()[0]
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else \
        dict(rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != dtype \
            or not torch.allclose(got.float(), want.float(), **tol):
        return '_convolution_pointwise differs from F.conv2d'
    if not torch.allclose(into.float(), acc.float() + want.float(), **tol):
        return '_convolution_pointwise_.binary differs from F.conv2d + add'
    return None


def _fused_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # eager CPU, the weights' dtype, the option on; captured graphs get the plain ops,
    # which trace, export and Inductor understand
    return not _capturing() and x.device.type == 'cpu' and x.dtype == weight.dtype \
        and options.current().mkldnn_fusion and fused_ops_work(x.dtype)


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off: the snapshot computes in its own dtype, whatever the caller's
    autocast says (a device without autocast has nothing to turn off)."""
    return torch.autocast(device_type, enabled=False) if autocast_available(device_type) \
        else contextlib.nullcontext()


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in ``x``'s dtype and memory format, as the backbone itself returns it: the
    fused kernels write channels_last, and compiled mmcv ops (RoIAlign in the neck's
    heads) read any input as NCHW memory, ignoring its strides."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return t.to(x.dtype).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


# ---- the snapshot's modules -----------------------------------------------------------
class FoldedConv(nn.Module):
    """A conv with its BN folded in (weight and bias as buffers, in the compute dtype),
    optionally followed by an in-place ReLU (which keeps NaN)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module, act: bool,
                 dtype: torch.dtype) -> None:
        super().__init__()
        weight, bias = fold_then_cast(conv, norm, dtype)
        self.register_buffer('weight', weight)
        self.register_buffer('bias', bias)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.act = act

    def _geometry(self):
        return self.padding, self.stride, self.dilation, self.groups

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        """The weight reordered once into oneDNN's layout for inputs of ``x``'s shape
        (what Inductor's freezing does); one shape kept, so a data set of many sizes
        holds one extra copy of the weights, not one per size."""
        key = (tuple(x.shape), x.dtype, self.weight.data_ptr(), self.weight._version)
        cached = self.__dict__.get('_packed_weight')
        if cached is None or cached[0] != key:
            packed = _mkldnn_ops._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups,
                list(x.shape))
            cached = self.__dict__['_packed_weight'] = (key, packed)
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_ok(x, self.weight):
            out = _mkldnn_ops._convolution_pointwise(x, self._packed(x), self.bias,
                                                     *self._geometry(), 'none', [], None)
        else:
            out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                           self.dilation, self.groups)
        return out.relu_() if self.act else out  # not oneDNN's ReLU: it maps NaN to 0

    def add_relu_(self, x: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """``acc = relu(acc + self(x))`` in place (one oneDNN kernel where it works)."""
        if _fused_ok(x, self.weight) and acc.dtype == x.dtype and _dense(acc):
            _mkldnn_ops._convolution_pointwise_.binary(
                acc, x, self._packed(x), self.bias, *self._geometry(), 'add', 1.0, None, [],
                None)
        else:
            acc += self(x)
        return acc.relu_()

    def extra_repr(self) -> str:
        return (f'{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, '
                f'kernel_size={tuple(self.weight.shape[2:])}, stride={tuple(self.stride)}, '
                f'groups={self.groups}, act={self.act}, dtype={self.weight.dtype}')


class Fp32Fallback(nn.Module):
    """A module the snapshot cannot fold: run in float32, through its own code, in eval
    mode, on a copy, with its input cast up and its output cast back."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).float().eval()
        self.module.requires_grad_(False)

    def _apply(self, fn, recurse=True):  # a dtype cast of the snapshot keeps this float32
        super()._apply(fn, recurse)
        self.module.float()
        return self

    def forward(self, x: torch.Tensor, owns_input: bool = False) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


class FoldedBlock(nn.Module):
    """A residual block whose description is conv+BN+ReLU steps, a last conv+BN that
    feeds only the add, an optional (pool?, conv, BN) shortcut and a ReLU after the add."""

    def __init__(self, block: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        desc = block.description
        *head, tail = desc.steps
        self.head = nn.ModuleList([
            FoldedConv(getattr(block, s.conv), getattr(block, s.norm), True, dtype)
            for s in head])
        self.tail = FoldedConv(getattr(block, tail.conv), getattr(block, tail.norm), False,
                               dtype)
        shortcut = getattr(block, desc.shortcut) if desc.shortcut else None
        self.shortcut = None if shortcut is None else _fold_sequential(shortcut, dtype)

    @staticmethod
    def supports(block: nn.Module) -> bool:
        """Can :class:`FoldedBlock` run ``block`` exactly as its description says?"""
        runs = getattr(block, '_runs_as_described', None)
        if getattr(block, 'description', None) is None or runs is None or not runs():
            return False
        desc = block.description
        *head, tail = desc.steps
        if not (desc.out_act and desc.tail_feeds_only_the_add and desc.drop_path is None
                and desc.shortcut_input == 'x'
                and all(s.conv is not None and s.norm is not None for s in desc.steps)
                and type(getattr(block, 'relu', None)) is nn.ReLU
                and all(s.act and not s.plugins for s in head)):
            return False
        convs = [(getattr(block, s.conv), getattr(block, s.norm)) for s in desc.steps]
        if not all(foldable(c, n) for c, n in convs):
            return False
        shortcut = getattr(block, desc.shortcut) if desc.shortcut else None
        return shortcut is None or _foldable_sequential(shortcut)

    def forward(self, x: torch.Tensor, owns_input: bool = False) -> torch.Tensor:
        """``owns_input``: the caller gives ``x`` up (nothing reads it afterwards), so the
        output may be written into it."""
        out = x
        for step in self.head:
            out = step(out)
        if self.shortcut is not None:
            return self.tail.add_relu_(out, self.shortcut(x))  # a fresh map: write into it
        # (a captured graph writes no input in place: its compiler plans the buffers)
        if owns_input and not _capturing() and _dense(x) \
                and not (x.is_inference() and not torch.is_inference_mode_enabled()):
            return self.tail.add_relu_(out, x)
        y = self.tail(out)
        y += x
        return y.relu_()


def _sequential_items(seq: nn.Sequential) -> list[tuple] | None:
    """(pool|conv, norm, relu?) items of a stem or shortcut ``Sequential``; ``None`` if it
    holds anything else."""
    mods, items, i = list(seq), [], 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d, nn.Identity)):
            items.append(('keep', m))
            i += 1
        elif i + 1 < len(mods) and foldable(m, mods[i + 1]):
            act = i + 2 < len(mods) and type(mods[i + 2]) is nn.ReLU
            items.append(('conv', m, mods[i + 1], act))
            i += 3 if act else 2
        else:
            return None
    return items


def _foldable_sequential(seq: nn.Module) -> bool:
    return isinstance(seq, nn.Sequential) and _sequential_items(seq) is not None


def _fold_sequential(seq: nn.Sequential, dtype: torch.dtype) -> nn.Sequential:
    out = []
    for item in _sequential_items(seq):
        if item[0] == 'keep':
            out.append(copy.deepcopy(item[1]))
        else:
            out.append(FoldedConv(item[1], item[2], item[3], dtype))
    return nn.Sequential(*out)


def supported(backbone: nn.Module) -> bool:
    """Is ``backbone`` built the way the snapshot reads (a ResNetV1Custom-style stem,
    max-pool and ``res_layers``)?"""
    return all(hasattr(backbone, name) for name in ('res_layers', 'out_indices', 'maxpool'))


class InferenceBackbone(nn.Module):
    """An eval-only snapshot of a ResNetV1Custom-style backbone in a compute dtype; see
    the module docstring. Built by :func:`for_inference`.

    Attributes:
        dtype: The compute dtype.
        generation: How many times the snapshot was built (1 + rebuilds after its
            source's weights changed).
    """

    def __init__(self, backbone: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        if not supported(backbone):
            raise TypeError(f'the inference snapshot runs ResNetV1Custom-style backbones; '
                            f'{type(backbone).__name__} has no res_layers, out_indices and '
                            'maxpool')
        self.dtype = dtype
        self._source = (backbone,)  # a tuple: not a submodule (no second state dict)
        self.generation = 0
        self._build()
        super().train(False)

    @property
    def source(self) -> nn.Module:
        """The backbone the snapshot was taken from."""
        return self._source[0]

    def _build(self) -> None:
        backbone, dtype = self.source, self.dtype
        self.out_indices = tuple(backbone.out_indices)
        # every BN in eval mode, so that it folds; afterwards each module gets its own
        # mode back (not ``train(True)``, which would undo modes a user set by hand)
        modes = [(m, m.training) for m in backbone.modules()]
        backbone.eval()
        try:
            self.stem = self._stem(backbone, dtype)
            self.maxpool = copy.deepcopy(backbone.maxpool)
            self.layers = nn.ModuleList(
                nn.ModuleList(FoldedBlock(b, dtype) if FoldedBlock.supports(b)
                              else Fp32Fallback(b) for b in getattr(backbone, name))
                for name in backbone.res_layers)
        finally:
            for m, mode in modes:
                m.training = mode
        self._stamp = weights_stamp(backbone)
        self.generation += 1

    def sync(self) -> bool:
        """Rebuild from the source if its weights changed since the snapshot was taken.

        Returns:
            Whether it rebuilt.
        """
        if weights_stamp(self.source) == self._stamp:
            return False
        print_log('inference snapshot: the backbone\'s weights changed; taking it again',
                  logger='current', level=logging.INFO)
        self._build()
        return True

    @staticmethod
    def _stem(backbone: nn.Module, dtype: torch.dtype) -> nn.Module:
        stem = backbone._modules.get('stem')
        if stem is not None:
            return _fold_sequential(stem, dtype) if _foldable_sequential(stem) \
                else Fp32Fallback(stem)
        conv, norm, relu = backbone.conv1, backbone.norm1, backbone.relu
        if foldable(conv, norm) and type(relu) is nn.ReLU:
            return FoldedConv(conv, norm, True, dtype)
        return Fp32Fallback(nn.Sequential(conv, norm, relu))

    def train(self, mode: bool = True) -> InferenceBackbone:
        if mode:
            raise RuntimeError('an inference snapshot cannot train; train the backbone and '
                               'take a new snapshot with for_inference()')
        return super().train(False)

    def _levels(self, x: torch.Tensor, stages: int) -> dict[str, torch.Tensor]:
        """``c1`` (the stem, before the max-pool) and ``c2``.. for the first ``stages``
        stages, in the snapshot's dtype; one pass."""
        if not torch.compiler.is_compiling():  # a compiled graph is checked by its wrapper
            self.sync()
        feats = {}
        with torch.no_grad(), _no_autocast(x.device.type):
            x = self.stem(x.to(self.dtype))
            feats['c1'] = x
            x = self.maxpool(x)
            for i, layer in enumerate(self.layers[:stages]):
                for j, block in enumerate(layer):
                    # each block after a layer's first gets a map only this loop holds
                    x = block(x, owns_input=j > 0)
                feats[f'c{i + 2}'] = x
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The ``out_indices`` maps, in the input's dtype and memory format."""
        feats = self._levels(x, max(self.out_indices) + 1)
        return tuple(_like(feats[f'c{i + 2}'], x) for i in self.out_indices)

    def forward_levels(self, x: torch.Tensor, levels: Sequence[str] | str | None = None
                       ) -> dict[str, torch.Tensor]:
        """Named maps, as :meth:`ResNetV1Custom.forward_levels` names them (``c1`` the stem
        before the max-pool, ``c2``.. every stage; default ``c1`` and the ``out_indices``
        maps), computed in the snapshot's dtype, returned in the input's dtype and memory
        format.

        Raises:
            ValueError: an unknown level (one line listing the available ones).
        """
        levels, built = resolve_levels(levels, len(self.layers), self.out_indices)
        feats = self._levels(x, max(built.index(lv) for lv in levels))
        return {lv: _like(feats[lv], x) for lv in levels}


def for_inference(backbone: nn.Module, dtype: str = 'fp32', compile: bool = False,  # noqa: A002
                  method: str = 'forward') -> nn.Module:
    """An eval-only snapshot of ``backbone`` for fast inference (module docstring).

    Args:
        backbone: A ResNetV1Custom-style backbone (ours, ResNeXtCustom), any mode; it is
            not changed.
        dtype: ``'fp32'`` or ``'bf16'``: the compute dtype.
        compile: Wrap the snapshot in :class:`~.compiled.CompiledInference` (Inductor).
        method: With ``compile``: the method to compile (``'forward'`` or
            ``'forward_levels'``).

    Returns:
        The snapshot (an :class:`InferenceBackbone`), compiled with ``compile``.

    Raises:
        ValueError: an unknown ``dtype`` (one line).
        TypeError: a backbone of another structure.
    """
    snapshot = InferenceBackbone(backbone, check_compute_dtype(dtype))
    return CompiledInference(snapshot, method) if compile else snapshot


def inference_model(backbone: nn.Module, compute_dtype: str = 'fp32') -> nn.Module:
    """What the tools run for inference in ``compute_dtype``: the snapshot where it
    applies, else ``backbone`` itself.

    ``'fp32'`` gives ``backbone`` itself where it asks for the reference (``fast=False``:
    mmdet's ops, bitwise) or is not built the way the snapshot reads; otherwise the
    snapshot. ``'bf16'`` always gives the snapshot.

    Raises:
        ValueError: an unknown ``compute_dtype`` (one line).
        TypeError: ``'bf16'`` for a backbone of another structure.
    """
    dtype = check_compute_dtype(compute_dtype)
    if dtype == torch.float32 and not (getattr(backbone, 'fast', False)
                                       and supported(backbone)):
        return backbone
    return InferenceBackbone(backbone, dtype)
