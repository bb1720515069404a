"""with_cp: every trainable block checkpointed, exact grads, BN stats once, no warnings."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import OpCounter, backward_outputs, grads_by_name, randomize_
from mmcv.ops import SyncBatchNorm as MMSyncBN
from torch.nn.modules.batchnorm import _BatchNorm

import resnet_backbone.models.checkpointing as ckpt
from resnet_backbone import ResNetV1Custom, options
from resnet_backbone.models.blocks import Bottleneck
from resnet_backbone.models.fast import always_fold
from resnet_backbone.models.norm import is_batch_norm

pytestmark = pytest.mark.filterwarnings('error')  # `pytest -W error` for this module


@pytest.fixture(autouse=True)
def _fold_every_size():
    """Tiny inputs would not fold deep layers (see ``fast.worth_folding``); the
    recompute-skip counts assume every eval BN folds."""
    with always_fold():
        yield


def _pair(depth, frozen, stem='classic', norm_eval=True, **kw):
    common = dict(depth=depth, base_channels=4, frozen_stages=frozen, stem_type=stem,
                  norm_eval=norm_eval, **kw)
    plain = randomize_(ResNetV1Custom(**common))
    cp = ResNetV1Custom(with_cp=True, **common)
    cp.load_state_dict(plain.state_dict())
    return plain.train(), cp.train()


@pytest.mark.parametrize('frozen', [-1, 0, 1, 2])
@pytest.mark.parametrize('depth,stem', [(18, 'classic'), (50, 'classic'), (50, 'deep')])
def test_every_trainable_param_gets_the_same_grad(depth, stem, frozen, monkeypatch):
    plain, cp = _pair(depth, frozen, stem)
    calls = []
    real = ckpt.checkpoint
    monkeypatch.setattr(ckpt, 'checkpoint', lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.rand(2, 3, 64, 64)
    outs_p, outs_c = plain(x), cp(x)
    for p, c in zip(outs_p, outs_c):
        assert torch.equal(p, c)
    trainable_blocks = [b for i in range(4) for b in getattr(cp, f'layer{i + 1}')
                        if any(p.requires_grad for p in b.parameters())]
    # Every trainable block, including the first one after the frozen stages (which mmdet
    # leaves un-checkpointed because its input does not require grad).
    assert len(calls) == len(trainable_blocks) == sum(
        len(getattr(cp, f'layer{i + 1}')) for i in range(max(frozen, 0), 4))
    backward_outputs(outs_p)
    backward_outputs(outs_c)
    gp, gc = grads_by_name(plain), grads_by_name(cp)
    for (name, p) in cp.named_parameters():
        if p.requires_grad:
            assert gc[name] is not None, f'{name} got no gradient'
            torch.testing.assert_close(gc[name], gp[name], rtol=1e-5, atol=1e-6)
        else:
            assert gc[name] is None


def test_bn_running_stats_updated_once_per_step():
    plain, cp = _pair(50, frozen=-1, norm_eval=False)
    x = torch.rand(2, 3, 64, 64)
    backward_outputs(plain(x))
    backward_outputs(cp(x))
    for (name, b_plain), b_cp in zip(plain.named_buffers(), cp.buffers()):
        if name.endswith('num_batches_tracked'):
            assert int(b_cp) == int(b_plain) == 1, name
        else:
            torch.testing.assert_close(b_cp, b_plain, rtol=1e-5, atol=1e-6, msg=name)


def test_per_stage_with_cp_tuple(monkeypatch):
    model = ResNetV1Custom(depth=18, base_channels=4, with_cp=(False, True, False, True)).train()
    assert [b.with_cp for b in model.layer2] == [True, True]
    assert [b.with_cp for b in model.layer3] == [False, False]
    calls = []
    real = ckpt.checkpoint
    monkeypatch.setattr(ckpt, 'checkpoint', lambda *a, **k: calls.append(1) or real(*a, **k))
    model(torch.rand(1, 3, 32, 32))
    assert len(calls) == 4


def test_no_checkpoint_under_no_grad(monkeypatch):
    model = ResNetV1Custom(depth=18, base_channels=4, with_cp=True).train()
    monkeypatch.setattr(ckpt, 'checkpoint', lambda *a, **k: pytest.fail('checkpointed'))
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))


def _convs_in_backward(model, x):
    """aten convolutions run while backward runs (the checkpoint recomputes)."""
    outs = model(x)
    with OpCounter() as ops:
        backward_outputs(outs)
    return [op for op in ops.ops if op == 'aten.convolution.default']


@pytest.mark.parametrize('depth,per_block', [(18, 1), (50, 2)])
def test_recompute_skips_the_tail(depth, per_block):
    """Only the head of each branch is recomputed (conv1 for a BasicBlock, conv1 + conv2
    for a Bottleneck); the last conv and the shortcut feed only the add."""
    plain, cp = _pair(depth, frozen=1)
    x = torch.rand(2, 3, 64, 64)
    recomputed = _convs_in_backward(cp, x)
    blocks = sum(len(getattr(cp, f'layer{i}')) for i in (2, 3, 4))
    assert len(recomputed) == per_block * blocks
    assert not _convs_in_backward(plain, x)  # (the counter sees forward convs only)


def test_recompute_runs_the_tail_when_bn_trains():
    """With train-mode BN the last conv's output is what BN saves: it is recomputed."""
    _, cp = _pair(50, frozen=1, norm_eval=False)
    recomputed = _convs_in_backward(cp, torch.rand(2, 3, 64, 64))
    assert len(recomputed) == 3 * 13 + 3  # three convs per block + three shortcuts


class OneProcessMMSyncBN(MMSyncBN):
    """mmcv's ``MMSyncBN`` (a plain ``nn.Module``, not a ``_BatchNorm``) on one CPU
    process: mmcv has no CPU sync-BN kernels, and on one process sync BN is BN, so the
    normalisation runs as ``F.batch_norm``; the statistics bookkeeping is mmcv's."""

    _abbr_ = 'bn'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training or not self.track_running_stats, self.momentum,
                            self.eps)


def test_mmsyncbn_running_stats_updated_once_per_step(monkeypatch):
    monkeypatch.setattr(torch.distributed, 'get_world_size', lambda group=None: 1)
    kw = dict(norm_cfg=dict(type=OneProcessMMSyncBN))
    plain = randomize_(Bottleneck(16, 4, **kw)).train()
    cp = Bottleneck(16, 4, with_cp=True, **kw).train()
    cp.load_state_dict(plain.state_dict())
    assert not isinstance(cp.bn1, _BatchNorm) and is_batch_norm(cp.bn1)
    x = torch.rand(2, 16, 8, 8)
    backward_outputs([plain(x)])
    backward_outputs([cp(x)])
    checked = 0
    for (name, b_plain), b_cp in zip(plain.named_buffers(), cp.buffers()):
        if name.endswith('num_batches_tracked'):
            assert int(b_cp) == int(b_plain) == 1, name
            checked += 1
        else:
            torch.testing.assert_close(b_cp, b_plain, rtol=1e-6, atol=1e-7, msg=name)
    assert checked == 3


def test_recompute_replays_the_forward_options():
    """The recompute folds exactly as the forward did even where backward runs under
    other options (here: without always_fold, so small deep layers would not fold)."""
    plain, cp = _pair(50, frozen=1)
    x = torch.rand(1, 3, 32, 32)  # layer4 at 1x1: folds only under always_fold
    outs_p, outs_c = plain(x), cp(x)
    backward_outputs(outs_p)
    with options.using(fold_always=False):
        backward_outputs(outs_c)
    gp, gc = grads_by_name(plain), grads_by_name(cp)
    for name, p in cp.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(gc[name], gp[name], rtol=1e-5, atol=1e-6)
