"""Normalisation helpers: a registered ``FrozenBN`` and the "is this a BatchNorm" test.

mmcv's ``build_norm_layer`` builds BN / SyncBN / GN for us (and names them ``bn1``,
``gn1``, ... exactly like mmdet). It has no frozen BatchNorm, so one is written here
and registered as ``norm_cfg=dict(type='FrozenBN')``.
"""
from __future__ import annotations

import torch
from mmengine.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose affine parameters and statistics are fixed buffers.

    It has the same state-dict keys as ``nn.BatchNorm2d`` (``num_batches_tracked`` is
    accepted and dropped on load), so BN checkpoints load into it strictly.

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
