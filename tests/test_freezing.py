"""frozen_stages and norm_eval: no grads, eval mode kept, statistics untouched."""
from __future__ import annotations

import logging

import mmdet.models  # noqa: F401  (registers mmdet's own, different 'FrozenBN')
import pytest
import torch
from conftest import backward_outputs, randomize_
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from torch.nn.modules.batchnorm import _BatchNorm

from resnet_backbone import FrozenBatchNorm2d, ResNetV1Custom
from resnet_backbone.models import norm
from resnet_backbone.models.norm import is_batch_norm


def frozen_modules(model: ResNetV1Custom):
    mods = [model.stem] if model.stem_type == 'deep' else [model.conv1, model.norm1]
    return mods + [getattr(model, f'layer{i}') for i in range(1, model.frozen_stages + 1)]


@pytest.mark.parametrize('with_cp', [False, True])
@pytest.mark.parametrize('stem', ['classic', 'deep'])
@pytest.mark.parametrize('frozen', [0, 1, 3, 4])
def test_frozen_parts_get_no_grad_and_keep_stats(frozen, stem, with_cp):
    model = randomize_(ResNetV1Custom(depth=50, base_channels=4, frozen_stages=frozen,
                                      stem_type=stem, norm_eval=False, with_cp=with_cp))
    assert model.train() is model
    frozen_mods = frozen_modules(model)
    before = {n: b.clone() for m in frozen_mods for n, b in m.named_buffers()}
    frozen_params = [p for m in frozen_mods for p in m.parameters()]
    assert frozen_params and not any(p.requires_grad for p in frozen_params)
    x = torch.rand(2, 3, 64, 64)
    for _ in range(2):  # two steps, with a train() in between
        outs = model(x)
        if frozen < 4:
            backward_outputs(outs)
        else:  # everything frozen: nothing to backprop through
            assert not any(o.requires_grad for o in outs)
        model.train()
        assert all(not m.training for fm in frozen_mods for m in fm.modules())
    assert all(p.grad is None for p in frozen_params)
    after = {n: b for m in frozen_mods for n, b in m.named_buffers()}
    assert all(torch.equal(before[n], after[n]) for n in before)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if frozen < 4:
        assert trainable and all(p.grad is not None for p in trainable)
        # norm_eval=False: the unfrozen BNs are in train mode and their stats moved
        assert model.layer4[0].norm1.training
    else:
        assert not trainable


@pytest.mark.parametrize('norm_cfg', [dict(type='BN'), dict(type='SyncBN')])
def test_norm_eval_keeps_every_batchnorm_in_eval(norm_cfg):
    model = ResNetV1Custom(depth=18, base_channels=4, norm_cfg=norm_cfg, norm_eval=True)
    assert model.train() is model
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert model.layer1[0].conv1.training  # only the norms are switched
    assert model.eval() is model and not model.training


def test_is_batch_norm_catches_duck_typed_syncbn():
    class MMSyncBNLike(torch.nn.Module):  # mmcv.ops.SyncBatchNorm is a plain Module
        def __init__(self):
            super().__init__()
            self.momentum = 0.1
            self.register_buffer('running_mean', torch.zeros(2))
            self.register_buffer('running_var', torch.ones(2))
    assert is_batch_norm(MMSyncBNLike()) and not is_batch_norm(torch.nn.GroupNorm(1, 2))


@pytest.mark.parametrize('scope', [None, 'mmdet'])
def test_frozen_bn_option_loads_bn_checkpoints_strictly(scope):
    bn = randomize_(ResNetV1Custom(depth=18, base_channels=4))
    with DefaultScope.overwrite_default_scope(scope):
        frozen = ResNetV1Custom(depth=18, base_channels=4, norm_cfg=dict(type='FrozenBN'))
    assert isinstance(frozen.layer1[0].bn1, FrozenBatchNorm2d)
    frozen.load_state_dict(bn.state_dict(), strict=True)
    assert 'bn1.weight' in frozen.state_dict() and not list(frozen.named_parameters(
        prefix='')) == [] and all('bn' not in n for n, _ in frozen.named_parameters())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(bn.eval()(x), frozen.train()(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_bn_replacement_is_visible(monkeypatch):
    """type='FrozenBN' becomes our class: shown by norm_cfg and logged once at DEBUG."""
    logger = MMLogger.get_current_instance()
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(logging.DEBUG)
    monkeypatch.setattr(norm, '_FROZEN_BN_LOGGED', False)
    monkeypatch.setattr(logger, 'level', logging.DEBUG)
    logger.addHandler(handler)
    try:
        for _ in range(2):
            with DefaultScope.overwrite_default_scope('mmdet'):
                model = ResNetV1Custom(depth=18, base_channels=4,
                                       norm_cfg=dict(type='FrozenBN'))
    finally:
        logger.removeHandler(handler)
    assert model.norm_cfg['type'] is FrozenBatchNorm2d
    said = [r for r in records if 'FrozenBN' in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG
    assert "builds resnet_backbone's FrozenBatchNorm2d (not mmdet's FrozenBN)" in \
        said[0].getMessage()
