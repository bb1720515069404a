"""Normalisation helpers: a registered ``FrozenBN`` and the "is this a BatchNorm" test.

mmcv's ``build_norm_layer`` builds BN / SyncBN / GN for us (and names them ``bn1``,
``gn1``, ... exactly like mmdet). It has no frozen BatchNorm, so one is written here
and registered as ``norm_cfg=dict(type='FrozenBN')``.

``norm_cfg=dict(type='FrozenBN')`` given to our backbone always means
:class:`FrozenBatchNorm2d` (see :func:`resolve_norm_cfg`), even under
``default_scope='mmdet'``, where the string would otherwise resolve to mmdet's own
``FrozenBN``.
"""
from __future__ import annotations

import inspect
import logging

import torch
from mmengine.logging import print_log
from mmengine.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..spec import choice_error


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose affine parameters and statistics are fixed buffers.

    It has the same state-dict keys as ``nn.BatchNorm2d`` (``num_batches_tracked`` is
    accepted and dropped on load), so BN checkpoints load into it strictly. Our
    backbone builds it for ``norm_cfg=dict(type='FrozenBN')`` in every registry scope
    (mmdet's ``FrozenBN`` is never used there; see :func:`resolve_norm_cfg`).

    Example:
        >>> bn = FrozenBatchNorm2d(4)
        >>> bn(torch.ones(1, 4, 2, 2)).shape
        torch.Size([1, 4, 2, 2])
    """

    _abbr_ = 'bn'  # same key names as BN (``bn1.weight``), as detectron2 and torchvision do

    def __init__(self, num_features: int, eps: float = 1e-5, **unused) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer('weight', torch.ones(num_features))
        self.register_buffer('bias', torch.zeros(num_features))
        self.register_buffer('running_mean', torch.zeros(num_features))
        self.register_buffer('running_var', torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + 'num_batches_tracked', None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f'{self.num_features}, eps={self.eps}'


if 'FrozenBN' not in MODELS.module_dict:
    MODELS.register_module('FrozenBN', module=FrozenBatchNorm2d)


_FROZEN_BN_LOGGED = False


def resolve_norm_cfg(norm_cfg: dict | None) -> dict:
    """A copy of ``norm_cfg`` (default ``BN``) with ``type='FrozenBN'`` resolved to ours.

    Why: mmdet registers its own ``FrozenBN`` (no ``num_batches_tracked`` handling, so BN
    checkpoints fail a strict load); under ``default_scope='mmdet'`` the string would
    resolve to it, so the string is replaced by :class:`FrozenBatchNorm2d`, the class this
    backbone documents and tests. The replacement is logged once per process at DEBUG,
    and ``backbone.norm_cfg`` shows the class.

    Example:
        >>> resolve_norm_cfg(dict(type='FrozenBN'))['type'].__name__
        'FrozenBatchNorm2d'
        >>> resolve_norm_cfg(None)
        {'type': 'BN', 'requires_grad': True}
    """
    global _FROZEN_BN_LOGGED
    norm_cfg = dict(norm_cfg) if norm_cfg is not None else dict(type='BN', requires_grad=True)
    if norm_cfg.get('type') == 'FrozenBN':
        norm_cfg['type'] = FrozenBatchNorm2d
        if not _FROZEN_BN_LOGGED:
            _FROZEN_BN_LOGGED = True
            print_log("norm_cfg type='FrozenBN' builds resnet_backbone's FrozenBatchNorm2d "
                      "(not mmdet's FrozenBN): it loads BN checkpoints strictly",
                      logger='current', level=logging.DEBUG)
    return norm_cfg


def is_batch_norm(module: nn.Module) -> bool:
    """True for every BatchNorm flavour that keeps running statistics.

    Besides ``torch``'s ``_BatchNorm`` family (BN, SyncBN), this also catches
    mmcv's ``MMSyncBN``, which is a plain ``nn.Module`` with running buffers: mmdet's
    ``norm_eval`` misses it because it tests ``isinstance(m, _BatchNorm)`` only.
    """
    if isinstance(module, _BatchNorm):
        return True
    buffers = module._buffers
    return 'running_mean' in buffers and 'running_var' in buffers and hasattr(module, 'momentum')


_NORM_BASES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, FrozenBatchNorm2d)


def _is_norm_class(cls) -> bool:
    return inspect.isclass(cls) and (issubclass(cls, _NORM_BASES)
                                     or getattr(cls, '_abbr_', None) in ('bn', 'gn', 'ln', 'in'))


def norm_types() -> list[str]:
    """Names of the norm layers ``norm_cfg=dict(type=...)`` resolves in the current scope.

    Example:
        >>> norm_types()[:4]
        ['BN', 'FrozenBN', 'GN', 'SyncBN']
    """
    names: set[str] = set()
    with MODELS.switch_scope_and_registry(None) as registry:
        while registry is not None:
            names.update(n for n, c in registry.module_dict.items() if _is_norm_class(c))
            registry = registry.parent
    return sorted(names, key=lambda n: (n not in ('BN', 'SyncBN', 'GN', 'FrozenBN'), n))


def check_norm_cfg(norm_cfg: dict) -> None:
    """Raise a one-line error for a ``norm_cfg`` that mmcv's ``build_norm_layer`` rejects.

    mmcv says ``Cannot find None in registry`` for an unknown type (it prints the lookup
    result, not the name) and fails a bare ``assert`` for GN without ``num_groups``. The
    lookup here is mmcv's: the current default scope's ``MODELS``, then its parents.

    Args:
        norm_cfg: the config, e.g. ``dict(type='GN', num_groups=32)``.

    Raises:
        TypeError: ``norm_cfg`` is not a dict.
        ValueError: unknown ``type`` (listing the registered ones), or GN without
            ``num_groups``.
    """
    if not isinstance(norm_cfg, dict):
        raise TypeError(f'norm_cfg must be a dict such as dict(type=\'BN\'); got {norm_cfg!r}')
    layer_type = norm_cfg.get('type')
    if inspect.isclass(layer_type):
        cls = layer_type
    else:
        cls = None
        if isinstance(layer_type, str):
            try:
                with MODELS.switch_scope_and_registry(None) as registry:
                    cls = registry.get(layer_type)
            except (KeyError, ImportError):
                cls = None
        if cls is None:
            raise choice_error(f'norm_cfg type={layer_type!r} is not a registered norm layer',
                               norm_types())
    if cls is nn.GroupNorm and 'num_groups' not in norm_cfg:
        raise ValueError(f'norm_cfg type={layer_type!r} needs num_groups, e.g. '
                         f'dict(type={layer_type!r}, num_groups=32, requires_grad=True)')
