"""The models a benchmark compares, by name, built with one set of weights.

Model names: a base (``mmdet``, ``ours-ref``, ``ours-fast``, ``torchvision``;
``ours-snap`` and ``ours-bf16``, the inference snapshot in float32 and bfloat16, eval
only) and modifiers: ``-compiled`` (``torch.compile``, Inductor, ``freezing=True`` for
eval), ``-cp`` (gradient checkpointing), ``-nchw`` (this model in NCHW although
``channels_last``), ``-nofuse`` (a snapshot with the oneDNN fused kernels off), ``-fold``
(ours-fast folding every BN on any device and without grad, as it does in a CPU train
step). ``ours-compiled`` is ``ours-fast-compiled``.

Every model loads :func:`shared_weights`: identical weights for all peers.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from resnet_backbone.io.checkpoint_loading import quiet_init_logging
from resnet_backbone.models.inference import check_compute_dtype, for_inference
from resnet_backbone.models.resnet import ResNetV1Custom
from resnet_backbone.spec import allowed

BASES = ('mmdet', 'ours-ref', 'ours-fast', 'torchvision', 'ours-snap', 'ours-bf16')
#: the inference snapshot's bases (eval only)
SNAPSHOTS = {'ours-snap': 'fp32', 'ours-bf16': 'bf16'}
MODIFIERS = ('compiled', 'cp', 'nchw', 'nofuse', 'fold')
ALIASES = {'ours-compiled': 'ours-fast-compiled'}
#: the like-for-like set (the compiled ones cost minutes of compile time: ``--models``)
DEFAULT_MODELS = ('mmdet', 'ours-ref', 'ours-fast', 'ours-snap', 'torchvision',
                  'mmdet-compiled', 'ours-compiled', 'ours-snap-compiled')
#: eager models only (no compile time)
EAGER_MODELS = ('mmdet', 'ours-ref', 'ours-fast', 'torchvision')
#: each technique of the fast path turned off alone (docs/speed.md, attribution)
ATTRIBUTION_MODELS = ('mmdet', 'ours-ref', 'ours-fast', 'ours-snap', 'ours-snap-nofuse',
                      'ours-snap-nchw')
#: the models ``profile=True`` profiles per stage (where they run)
PROFILED = ('mmdet', 'ours-fast', 'ours-snap', 'ours-bf16', 'torchvision')
#: the peers built from mmdet's or torchvision's code: only the depths they have
FOREIGN = ('mmdet', 'torchvision')
#: the overhead mode's models (``--overhead``): eager ones, with and without checkpointing
OVERHEAD_MODELS = ('mmdet', 'ours-fast', 'ours-ref', 'ours-snap', 'torchvision', 'mmdet-cp',
                   'ours-fast-cp')
@dataclass(frozen=True)
class ModelSpec:
    """A model name parsed: its base and modifiers."""

    name: str
    base: str
    compiled: bool = False
    cp: bool = False
    nchw: bool = False
    nofuse: bool = False
    fold: bool = False

    @property
    def eval_only(self) -> bool:
        return self.base in SNAPSHOTS


def model_names_help() -> str:
    return (f"bases {allowed(BASES, quote=False)}; modifiers "
            f"{allowed(['-' + m for m in MODIFIERS], quote=False)} (e.g. mmdet-compiled, "
            'ours-fast-cp, ours-snap-nofuse); ours-compiled = ours-fast-compiled')


def parse_model(name: str) -> ModelSpec:
    """Parse a model name (module docstring); one-line ``ValueError`` if it is not one."""
    rest = ALIASES.get(name, name)
    mods = []
    while True:
        for m in MODIFIERS:
            if rest.endswith('-' + m) and rest[:-len(m) - 1]:
                mods.append(m)
                rest = rest[:-len(m) - 1]
                break
        else:
            break
    bad = None
    if rest not in BASES or len(set(mods)) != len(mods):
        bad = 'not a model name'
    elif 'cp' in mods and rest == 'torchvision':
        bad = 'torchvision has no checkpointing'
    elif 'nofuse' in mods and rest not in SNAPSHOTS:
        bad = '-nofuse is for ours-snap and ours-bf16 only'
    elif 'fold' in mods and rest != 'ours-fast':
        bad = '-fold is for ours-fast only'
    elif rest in SNAPSHOTS and 'cp' in mods:
        bad = f'{rest} is an inference snapshot'
    elif rest == 'ours-bf16' and 'compiled' in mods:
        bad = 'ours-bf16 is an eager inference snapshot'
    if bad:
        raise ValueError(f'unknown model {name!r} ({bad}); allowed: {model_names_help()}')
    return ModelSpec(name, rest, *(m in mods for m in MODIFIERS))


def split_by_depth(depth: int, names: tuple[str, ...]) -> tuple[tuple[str, ...], dict]:
    """(the models that exist at ``depth``, {skipped name: one-line reason})."""
    from torchvision import models as tv_models  # only for the depth check
    mmdet_depths = _mmdet_depths()
    keep, skipped = [], {}
    for name in names:
        base = parse_model(name).base
        if base == 'mmdet' and depth not in mmdet_depths:
            skipped[name] = f"mmdet's ResNet has no depth {depth}"
        elif base == 'torchvision' and not hasattr(tv_models, f'resnet{depth}'):
            skipped[name] = f'torchvision has no resnet{depth}'
        else:
            keep.append(name)
    return tuple(keep), skipped


def _mmdet_depths() -> tuple[int, ...]:
    # mmdet.models pulls in mmcv.ops: only when asked
    from mmdet.models.backbones.resnet import ResNet
    return tuple(sorted(ResNet.arch_settings))


class TorchvisionFeatures(nn.Module):
    """torchvision's resnet run as a C2-C5 feature extractor (the same work as ours)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        import torchvision  # only when torchvision is compared
        net = getattr(torchvision.models, f'resnet{depth}')(weights=None)
        del net.fc
        self.net = net

    def forward(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        outs = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            outs.append(x)
        return tuple(outs)


def _freeze_like_mmdet(model: nn.Module, frozen_stages: int, norm_eval: bool) -> None:
    """Freeze torchvision's stem + first stages and keep its BNs in eval, like mmdet."""
    n = model.net
    parts = [n.conv1, n.bn1] if frozen_stages >= 0 else []
    parts += [getattr(n, f'layer{i}') for i in range(1, frozen_stages + 1)]
    for m in parts:
        for p in m.parameters():
            p.requires_grad = False
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and (norm_eval or any(m is q for p in parts
                                                                for q in p.modules())):
            m.eval()


def shared_weights(depth: int, frozen_stages: int = 1, norm_eval: bool = True,
                   seed: int = 0) -> dict:
    """The state dict every model loads: a seeded init (mmdet's where mmdet has the
    depth, else ours in reference mode, same keys), with BN statistics and affine
    parameters randomised so that every residual branch does real work."""
    kw = dict(depth=depth, out_indices=(0, 1, 2, 3), frozen_stages=frozen_stages,
              norm_eval=norm_eval)
    torch.manual_seed(seed)
    if depth in _mmdet_depths():
        from mmdet.models.backbones import ResNet  # pulls in mmcv.ops: only when needed
        ref = ResNet(**kw)
    else:
        ref = ResNetV1Custom(fast=False, **kw)
    with quiet_init_logging():
        ref.init_weights()
    with torch.no_grad():  # not zero-init: make every residual branch do real work
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    return ref.state_dict()


def build_models(depth: int, *, frozen_stages: int = 1, norm_eval: bool = True,
                 with_cp: bool = False, include: tuple[str, ...] = EAGER_MODELS,
                 seed: int = 0, compute_dtype: str = 'fp32') -> dict[str, nn.Module]:
    """The models to compare (eager, in float32 unless ``compute_dtype='bf16'``), sharing
    one set of weights (:func:`shared_weights`).

    A ``-compiled`` name gets its eager model here (:func:`run` compiles it); ``-cp``
    is that model with gradient checkpointing (``with_cp=True`` gives it to every model
    but torchvision). ``ours-snap`` and ``ours-bf16`` are the inference snapshot
    (:mod:`resnet_backbone.models.inference`). With ``compute_dtype='bf16'`` every model
    is cast to bfloat16, except ours-fast, ours-snap and ours-bf16, which become the bf16
    snapshot (folded in float32, then cast).
    """
    dtype = check_compute_dtype(compute_dtype)
    specs = [parse_model(n) for n in include]
    sd = shared_weights(depth, frozen_stages, norm_eval, seed)
    kw = dict(depth=depth, out_indices=(0, 1, 2, 3), frozen_stages=frozen_stages,
              norm_eval=norm_eval)
    models: dict[str, nn.Module] = {}
    for spec in specs:
        cp = spec.cp or (with_cp and spec.base != 'torchvision')
        if spec.base == 'mmdet':
            from mmdet.models.backbones import ResNet  # pulls in mmcv.ops: when compared
            m = ResNet(with_cp=cp, **kw)
            m.load_state_dict(sd)
            if cp:
                _quiet_reentrant_warning(m)
        elif spec.base == 'torchvision':
            m = TorchvisionFeatures(depth)
            m.net.load_state_dict(sd, strict=False)
            _freeze_like_mmdet(m, frozen_stages, norm_eval)
        else:
            m = ResNetV1Custom(fast=spec.base != 'ours-ref', with_cp=cp, **kw)
            m.load_state_dict(sd)
        if dtype == torch.bfloat16 and spec.base in ('ours-fast', *SNAPSHOTS):
            m = for_inference(m, 'bf16')
        elif spec.base in SNAPSHOTS:
            m = for_inference(m, SNAPSHOTS[spec.base])
        elif dtype != torch.float32:
            m = m.to(dtype)
        models[spec.name] = m
    return models


def _quiet_reentrant_warning(m: nn.Module) -> None:
    """mmdet 3.3's ``with_cp`` calls ``torch.utils.checkpoint`` without ``use_reentrant``,
    and torch warns at every call: silence that one message, around that model's forward
    only (its code, not ours; ours passes it)."""
    forward = m.forward

    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', category=UserWarning,
                                    message='torch.utils.checkpoint: the use_reentrant')
            return forward(*args, **kwargs)

    m.forward = quiet


def check_overhead_models(names: tuple[str, ...]) -> None:
    """One-line ``ValueError`` for a name the overhead mode cannot run: a compiled model
    runs Inductor's kernels, not aten ops, so there is nothing to count."""
    for name in names:
        if parse_model(name).compiled:
            raise ValueError(f'{name}: the overhead mode counts aten ops, and a compiled model '
                             'runs generated kernels instead; use eager models')
