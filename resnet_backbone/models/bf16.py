"""The bf16 inference tier: an eval-only snapshot of a backbone that computes in bfloat16.

:func:`inference_model` (``compute_dtype='bf16'``) copies a trained backbone into an
inference-only module:

- every conv + eval-mode BN is **folded in float32** (``W * s`` and ``b - m * s``, from
  the float32 parameters and statistics), and only the folded weight and bias are then
  cast to bfloat16: one rounding per value. Folding in bf16 would round ``W``, ``s`` and
  the product each, and ``b - m * s`` cancels badly in bf16 (``tests/test_bf16.py``
  checks both);
- convs run in bf16 through oneDNN: conv + bias as one kernel, each block's last conv
  accumulated in place into its shortcut (as the fp32 fast path does; a torch without
  the private ops, or one where they disagree with ``F.conv2d``, gets the plain ops);
- the ReLU runs as ``torch.relu_`` after the kernel, never as oneDNN's post-op, so a NaN
  in the input stays NaN in the output, as in the reference;
- a block this tier cannot run exactly as its description says (plugins, a non-ReLU
  activation, GN or any norm that does not fold, DCN or another conv type, a subclass
  with its own forward) falls back to running *that block* in float32, through the
  backbone's own code, with its input and output cast: the tier never computes
  something other than the block;
- the input may be float32 or bf16; the outputs come back in the input's dtype, so a
  float32 neck and head downstream need no change. fp32 stays the default everywhere.

It is a snapshot: the weights are those of the backbone when it was taken (rebuild it
after training). It has no gradients (its forward runs under ``torch.no_grad``) and
refuses ``train()``.

Example:
    >>> from resnet_backbone.models.resnet import ResNetV1Custom
    >>> net = ResNetV1Custom(depth=18, base_channels=8).eval()
    >>> fast = inference_model(net, 'bf16')
    >>> [tuple(o.shape) for o in fast(torch.rand(1, 3, 64, 64))][-1]
    (1, 64, 2, 2)
    >>> fast(torch.rand(1, 3, 64, 64))[0].dtype
    torch.float32
"""
from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import resolve_levels
from .fast import _capturing, foldable

#: ``compute_dtype`` names -> torch dtypes (fp32: the model as it is)
COMPUTE_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}

_mkldnn_ops = torch.ops.mkldnn


def check_compute_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``compute_dtype`` name; one-line ``ValueError`` otherwise."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f'compute_dtype {name!r} not supported; allowed values: '
                         f'{", ".join(COMPUTE_DTYPES)}')
    return COMPUTE_DTYPES[name]


def fold_then_cast(conv: nn.Conv2d, norm: nn.Module | None, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the one conv equal to ``norm(conv(.))``: computed in float32
    from float32 copies of every tensor, then cast to ``dtype`` (one rounding each)."""
    w = conv.weight.detach().float()
    bias = conv.bias.detach().float() if conv.bias is not None \
        else torch.zeros(w.shape[0], device=w.device)
    if norm is None:
        return w.to(dtype), bias.to(dtype)
    scale = torch.rsqrt(norm.running_var.detach().float() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach().float()
    shift = (bias - norm.running_mean.detach().float()) * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach().float()
    return (w * scale.reshape(-1, 1, 1, 1)).to(dtype), shift.to(dtype)


@functools.cache
def fused_ops_work(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Do oneDNN's private fused conv ops run in ``dtype`` here and agree with
    ``F.conv2d``? Probed once per process, in a helper thread (as
    :func:`resnet_backbone.models.fast.fused_ops_work` does)."""
    result: list[bool] = []
    probe = threading.Thread(target=lambda: result.append(_probe(dtype)), daemon=True,
                             name='resnet_backbone-onednn-bf16-probe')
    probe.start()
    probe.join()
    return bool(result and result[0])


def _probe(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 6, 6, generator=g).to(dtype)
    w = torch.randn(8, 8, 3, 3, generator=g).to(dtype)
    b = torch.randn(8, generator=g).to(dtype)
    geometry = ([1, 1], [1, 1], [1, 1], 1)
    try:
        with torch.no_grad():
            want = F.conv2d(x, w, b, 1, 1)
            got = _mkldnn_ops._convolution_pointwise(x, w, b, *geometry, 'none', [], None)
            acc = torch.randn(want.shape, generator=g).to(dtype)
            into = acc.clone()
            _mkldnn_ops._convolution_pointwise_.binary(into, x, w, b, *geometry, 'add', 1.0,
                                                       None, [], None)
    except Exception:  # noqa: BLE001 - missing op, changed signature: all mean no
        return False
    tol = dict(rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    return isinstance(got, torch.Tensor) and got.dtype == dtype \
        and torch.allclose(got.float(), want.float(), **tol) \
        and torch.allclose(into.float(), acc.float() + want.float(), **tol)


def _fused_ok(x: torch.Tensor) -> bool:
    return not _capturing() and x.device.type == 'cpu' and x.dtype == torch.bfloat16 \
        and fused_ops_work(torch.bfloat16)


class FoldedConv(nn.Module):
    """A conv with its BN folded in (weight and bias as buffers, in the compute dtype),
    optionally followed by an in-place ReLU (which keeps NaN)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module | None, act: bool,
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_ok(x):
            out = _mkldnn_ops._convolution_pointwise(x, self.weight, self.bias,
                                                     *self._geometry(), 'none', [], None)
        else:
            out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                           self.dilation, self.groups)
        return out.relu_() if self.act else out

    def add_relu_(self, x: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """``acc = relu(acc + self(x))`` in place (one oneDNN kernel where it works)."""
        if _fused_ok(x) and acc.dtype == x.dtype and _dense(acc):
            _mkldnn_ops._convolution_pointwise_.binary(
                acc, x, self.weight, self.bias, *self._geometry(), 'add', 1.0, None, [], None)
        else:
            acc += self(x)
        return acc.relu_()

    def extra_repr(self) -> str:
        return (f'{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, '
                f'kernel_size={tuple(self.weight.shape[2:])}, stride={tuple(self.stride)}, '
                f'groups={self.groups}, act={self.act}, dtype={self.weight.dtype}')


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


class Fp32Fallback(nn.Module):
    """A module this tier cannot run in its compute dtype: run in float32, through its own
    code, eval mode, with its input cast up and its output cast back."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).float().eval()

    def _apply(self, fn, recurse=True):  # a dtype cast of the tier keeps this in float32
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
        desc = block.describe()
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
        describe = getattr(block, 'describe', None)
        runs = getattr(block, '_runs_as_described', None)
        if describe is None or runs is None or not runs():
            return False
        desc = describe()
        *head, tail = desc.steps
        if not (desc.out_act and desc.tail_feeds_only_the_add and desc.drop_path is None
                and type(getattr(block, 'relu', None)) is nn.ReLU
                and all(s.act and not s.plugins for s in head)):
            return False
        convs = [(getattr(block, s.conv), getattr(block, s.norm)) for s in desc.steps]
        if not all(foldable(c, n) for c, n in convs):
            return False
        shortcut = getattr(block, desc.shortcut) if desc.shortcut else None
        return shortcut is None or _foldable_sequential(shortcut)

    def forward(self, x: torch.Tensor, owns_input: bool = False) -> torch.Tensor:
        out = x
        for step in self.head:
            out = step(out)
        if self.shortcut is not None:
            return self.tail.add_relu_(out, self.shortcut(x))  # a fresh map: write into it
        if owns_input:  # the caller gave ``x`` up: the output may reuse its memory
            return self.tail.add_relu_(out, x)
        y = self.tail(out)
        y += x
        return y.relu_()


def _sequential_items(seq: nn.Sequential) -> list[tuple[str, nn.Module, ...]] | None:
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


class InferenceBackbone(nn.Module):
    """An eval-only snapshot of a ResNetV1Custom-style backbone in a compute dtype; see
    the module docstring. Built by :func:`inference_model`."""

    def __init__(self, backbone: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        for name in ('res_layers', 'out_indices', 'maxpool'):
            if not hasattr(backbone, name):
                raise TypeError(f'the bf16 inference tier runs ResNetV1Custom-style '
                                f'backbones; {type(backbone).__name__} has no {name!r}')
        self.dtype = dtype
        self.out_indices = tuple(backbone.out_indices)
        was_training = backbone.training
        backbone.eval()  # every BN in eval mode, so that it folds
        try:
            self.stem = self._stem(backbone, dtype)
            self.maxpool = copy.deepcopy(backbone.maxpool)
            self.layers = nn.ModuleList(
                nn.ModuleList(FoldedBlock(b, dtype) if FoldedBlock.supports(b)
                              else Fp32Fallback(b) for b in getattr(backbone, name))
                for name in backbone.res_layers)
        finally:
            backbone.train(was_training)
        super().train(False)

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
                               'take a new snapshot with inference_model()')
        return super().train(False)

    def _levels(self, x: torch.Tensor, stages: int) -> dict[str, torch.Tensor]:
        """``c1`` (the stem, before the max-pool) and ``c2``.. for the first ``stages``
        stages, in the tier's dtype; one pass."""
        feats = {}
        with torch.no_grad():
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
        """The ``out_indices`` maps, in the input's dtype."""
        feats = self._levels(x, max(self.out_indices) + 1)
        return tuple(feats[f'c{i + 2}'].to(x.dtype) for i in self.out_indices)

    def forward_levels(self, x: torch.Tensor, levels: Sequence[str] | str | None = None
                       ) -> dict[str, torch.Tensor]:
        """Named maps, as :meth:`ResNetV1Custom.forward_levels` names them (``c1`` the stem
        before the max-pool, ``c2``.. every stage; default ``c1`` and the ``out_indices``
        maps), computed in the tier's dtype and returned in the input's.

        Raises:
            ValueError: an unknown level (one line listing the available ones).
        """
        levels, built = resolve_levels(levels, len(self.layers), self.out_indices)
        feats = self._levels(x, max(built.index(lv) for lv in levels))
        return {lv: feats[lv].to(x.dtype) for lv in levels}


def inference_model(backbone: nn.Module, compute_dtype: str = 'bf16') -> nn.Module:
    """An eval-only copy of ``backbone`` that computes in ``compute_dtype``.

    Args:
        backbone: A ResNetV1Custom-style backbone (ours, ResNeXtCustom), any mode; it is
            not changed.
        compute_dtype: ``'bf16'`` for the tier (module docstring); ``'fp32'`` returns
            ``backbone`` itself, unchanged (the default everywhere).

    Returns:
        The snapshot (an :class:`InferenceBackbone`) or ``backbone``.

    Raises:
        ValueError: an unknown ``compute_dtype`` (one line).
        TypeError: a backbone of another structure.
    """
    dtype = check_compute_dtype(compute_dtype)
    if dtype == torch.float32:
        return backbone
    return InferenceBackbone(backbone, dtype)
