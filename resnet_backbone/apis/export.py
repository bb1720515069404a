"""Export: ONNX (checked with onnxruntime), TorchScript by tracing, and torch.compile.

What works (torch 2.13, checked by ``tests/test_export.py`` and ``tools/export.py``):

- **ONNX** through ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter),
  with dynamic batch, height and width. The backbone alone and backbone + FPN. Eval-mode
  BN folds into the exported convs either way; ``fast=False`` exports mmdet's op order.
  onnxruntime agrees with eager PyTorch to about 1e-6 relative (the check allows 1e-4).
- **torch.jit.trace**: works, one graph per input rank; deprecated by torch 2.13 in
  favour of torch.export, so :func:`trace` silences exactly that deprecation.
- **torch.jit.script**: not supported. The backbone, like mmdet's, dispatches in Python
  (layers looked up by name, config-driven norm layers, keyword-only constructors);
  scripting is deprecated too. Use tracing, torch.export or torch.compile.
- **torch.compile**: a single graph (``fullgraph=True``) in eval and in a train step,
  with or without ``with_cp``. The oneDNN fused inference kernels of the fast path are
  eager-only: under tracing, export and compile the plain aten ops run instead, which
  the compilers fuse themselves.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ToolError
from ..io.checkpoint_loading import quiet_init_logging
from ..io.fileio import atomic_path
from ..io.weights import IncompleteCheckpointError, UnknownDialectError, load_state_dict
from ..models.from_checkpoint import backbone_for_checkpoint
from ..models.resnet import ResNetV1Custom
from ..spec import ARCH_LAYOUT, check_choice
from .features import FeatureExtractor

#: largest allowed error of onnxruntime vs eager, relative to the output's largest value
ONNX_TOLERANCE = 1e-4


class BackboneWithNeck(nn.Module):
    """Backbone followed by a neck (e.g. FPN) as one module that returns a tuple.

    Example:
        >>> from mmdet.models.necks import FPN
        >>> from resnet_backbone import ResNetV1Custom
        >>> bb = ResNetV1Custom(depth=18, base_channels=8)
        >>> model = BackboneWithNeck(bb, FPN(list(bb.out_channels), 16, num_outs=5)).eval()
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 64, 64))][:2]
        [(1, 16, 16, 16), (1, 16, 8, 8)]
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.neck(self.backbone(x)))


def default_fpn(backbone: nn.Module, out_channels: int = 256, num_outs: int = 5) -> nn.Module:
    """mmdet's ``FPN`` over every backbone output (Faster R-CNN's neck settings)."""
    from mmdet.models.necks import FPN  # mmdet.models pulls in mmcv.ops: only with a neck
    neck = FPN(in_channels=list(backbone.out_channels), out_channels=out_channels,
               num_outs=num_outs)
    with quiet_init_logging():
        neck.init_weights()
    return neck


def _kwargs_text(kwargs: dict) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in kwargs.items())


def build_export_model(config: str | None = None, checkpoint: str | None = None, *,
                       depth: int | None = None, with_neck: bool = False, strict: bool = True,
                       log=print) -> nn.Module:
    """The module ``tools/export.py`` exports: a backbone, or a :class:`BackboneWithNeck`.

    Args:
        config: an mmdet config: its detector's backbone (and neck) are exported, and
            ``checkpoint`` is a detector checkpoint or a backbone-only file (the neck then
            stays random, and ``log`` says so).
        checkpoint: without ``config``, backbone weights in any dialect that
            :func:`~resnet_backbone.models.from_checkpoint.backbone_for_checkpoint`
            reads; the depth, stem and shortcut layout are inferred from it (``depth``
            overrides).
        depth: without ``config``: the depth (default: inferred from ``checkpoint``, else
            50; without a checkpoint the weights are random, seed 0).
        with_neck: add the config's neck, or (no config) mmdet's FPN (:func:`default_fpn`).
        strict: a checkpoint that does not fit is a one-line
            :class:`~resnet_backbone.errors.ToolError` with the missing and unexpected counts;
            ``False`` loads only the tensors that fit.
        log: where the ``[export] weights: ...`` lines go.

    Example:
        >>> m = build_export_model(depth=18, log=lambda s: None)
        >>> type(m).__name__, m.depth
        ('ResNetV1Custom', 18)
    """
    if depth is not None:
        check_choice('depth', depth, ARCH_LAYOUT)
    if config:
        fx = FeatureExtractor.from_config(config, checkpoint, strict=strict)
        log(f'[export] weights: {fx.weights["source"]} ({fx.weights.get("note", "")})'
            .replace(' ()', ''))
        detector = fx.model
        if with_neck:
            if not getattr(detector, 'with_neck', False):
                raise ToolError(f'--with-neck: {config} has no neck')
            return BackboneWithNeck(detector.backbone, detector.neck)
        return detector.backbone
    torch.manual_seed(0)
    if checkpoint:
        try:  # the architecture the checkpoint implies, as convert_weights.py infers it
            backbone, converted, kwargs = backbone_for_checkpoint(checkpoint, depth=depth)
        except UnknownDialectError as exc:
            raise ToolError(f'{checkpoint}: '
                            f'{exc.message("--source to tools/convert_weights.py")}') from None
        try:
            report = load_state_dict(backbone, converted.state_dict, source=converted.label,
                                     strict=strict, log=False, checkpoint=checkpoint)
        except IncompleteCheckpointError as exc:
            r = exc.report
            raise ToolError(
                f'checkpoint {checkpoint} does not fit ResNetV1Custom({_kwargs_text(kwargs)}): '
                f'{len(r.missing)} missing, {len(r.unexpected)} unexpected, '
                f'{len(r.mismatched)} shape-mismatched tensors (coverage {r.coverage:.2f}%); '
                + ('drop --depth to infer it from the checkpoint, or ' if depth else '')
                + 'pass --no-strict to load only what fits') from None
        log(f'[export] weights: {checkpoint}: ResNetV1Custom({_kwargs_text(kwargs)})')
        log(f'[export] {report.summary()}')
    else:
        backbone = ResNetV1Custom(depth=depth or 50)
        with quiet_init_logging():
            backbone.init_weights()
        log('[export] weights: random (seed 0); pass --checkpoint for real ones')
    return BackboneWithNeck(backbone, default_fpn(backbone)) if with_neck else backbone


def output_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    """``c<i>`` for a bare backbone, ``p<i>`` for a neck: level i has stride 2**i.

    Levels are found from a 256x256 probe (every level's size divides it exactly).
    """
    prefix = 'p' if isinstance(model, BackboneWithNeck) else 'c'
    probe = torch.zeros(1, example.shape[1], 256, 256, dtype=example.dtype,
                        device=example.device)
    with torch.no_grad():
        outs = model(probe)
    return [f'{prefix}{round(math.log2(256 / o.shape[-1]))}' for o in outs]


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, *,
                dynamic: bool = True, opset: int | None = None) -> Path:
    """Export ``model`` (in eval mode) to ONNX at ``path`` with torch.export's exporter.

    Args:
        model: The backbone, or a :class:`BackboneWithNeck`.
        path: Output ``.onnx`` file (weights embedded; written atomically).
        example: An example input batch.
        dynamic: Batch, height and width are dynamic axes (``n``, ``h``, ``w``).
        opset: ONNX opset; ``None`` = the exporter's default.
    """
    path = Path(path)
    model = model.eval()
    names = output_names(model, example)
    shapes = None
    if dynamic:
        dim = torch.export.Dim
        shapes = ({0: dim('n', min=1, max=1024), 2: dim('h', min=32, max=8192),
                   3: dim('w', min=32, max=8192)},)
    with warnings.catch_warnings():
        # torch's own exporter calls a pytree API that torch 2.13 deprecated
        # (``isinstance(treespec, LeafSpec)``); nothing a caller can change.
        warnings.filterwarnings('ignore', message=r'.*isinstance\(treespec, LeafSpec\).*',
                                category=FutureWarning)
        warnings.filterwarnings('ignore', message=r'.*isinstance\(treespec, LeafSpec\).*',
                                category=DeprecationWarning)
        with torch.no_grad():
            program = torch.onnx.export(model, (example,), None, dynamo=True,
                                        input_names=['image'], output_names=names,
                                        dynamic_shapes=shapes, opset_version=opset,
                                        verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)
    return path


@dataclass
class OnnxCheck:
    """onnxruntime vs eager PyTorch for one input shape."""

    shape: tuple[int, ...]
    max_abs: list[float]
    max_rel: list[float]  # max |ort - torch| / max |torch|, per output

    @property
    def ok(self) -> bool:
        return all(r <= ONNX_TOLERANCE for r in self.max_rel)


def check_onnx(path: str | Path, model: nn.Module,
               shapes: Sequence[Sequence[int]]) -> list[OnnxCheck]:
    """Run ``path`` in onnxruntime and ``model`` in eager mode on random inputs."""
    import onnxruntime as ort  # optional: only to check an ONNX file
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    model = model.eval()
    gen = torch.Generator().manual_seed(0)
    checks = []
    for shape in shapes:
        x = torch.rand(*shape, generator=gen)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = [t.float() for t in model(x)]
        if len(got) != len(want):
            raise RuntimeError(f'{path}: onnxruntime gave {len(got)} outputs, the model '
                               f'{len(want)}')
        abs_err = [float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want)]
        rel_err = [a / max(float(w.abs().max()), 1e-12) for a, w in zip(abs_err, want)]
        checks.append(OnnxCheck(tuple(shape), abs_err, rel_err))
    return checks


def trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript by ``torch.jit.trace`` (eval mode, no grad)."""
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.13 deprecates torch.jit.* in favour of torch.export/compile (2.14 says it
        # as a FutureWarning); tracing still works and is what older deployment stacks load
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings('ignore', category=category,
                                    message=r'`torch\.jit\.trace(_method)?` is deprecated')
        return torch.jit.trace(model, example, check_trace=False)

