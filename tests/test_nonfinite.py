"""Non-finite values (NaN, Inf) reach the outputs and the loss exactly as in the reference.

A NaN in the data or a diverged weight must show up in the loss: that is how a user
learns that the data or the learning rate is broken. oneDNN's fused ReLU post-op maps
NaN to 0, so a fast path that used it returned finite features from a corrupt input
(issue 11). Every forward path, the inference snapshot's included, is compared with the
reference mode (``fast=False``, mmdet's op order): the NaN and Inf masks of every output
level must be identical.
"""
from __future__ import annotations

import pytest
import torch
from conftest import OpCounter, reference_and_fast

from resnet_backbone.models.fast import always_fold

BAD = {'nan': float('nan'), 'inf': float('inf'), '-inf': float('-inf')}


_pair = reference_and_fast


def _corrupt(value: float, channels_last: bool) -> torch.Tensor:
    x = torch.rand(2, 3, 64, 64)
    x[0, 1, 20, 33] = value  # one bad pixel in the first image only
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _assert_same_nonfinite(outs_fast, outs_ref):
    for level, (f, r) in enumerate(zip(outs_fast, outs_ref)):
        f, r = f.detach(), r.detach()
        assert int(r.isnan().sum()) + int(r.isinf().sum()) > 0, \
            f'level {level}: the reference itself is finite; the test proves nothing'
        assert torch.equal(f.isnan(), r.isnan()), \
            f'level {level}: {int(f.isnan().sum())} NaNs, the reference has {int(r.isnan().sum())}'
        assert torch.equal(f.isinf(), r.isinf()), f'level {level}: Inf mask differs'


@pytest.mark.parametrize('value', list(BAD))
@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('channels_last', [False, True])
def test_eval_forward_propagates_nonfinite(value, depth, channels_last):
    """Eval (no_grad): the training module with every BN folded, and the inference
    snapshot, whose fused oneDNN kernels and in-place add run here."""
    ref, fast = _pair(depth=depth)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ref, fast = ref.eval(), fast.to(memory_format=fmt).eval()
    x = _corrupt(BAD[value], channels_last)
    with torch.no_grad():
        want = ref(x)
        with always_fold():
            _assert_same_nonfinite(fast(x), want)
    snapshot = fast.for_inference()
    with OpCounter() as ops:
        outs = snapshot(x)
    assert ops.count('mkldnn._convolution_pointwise') > 0  # the fused path did run
    _assert_same_nonfinite(outs, want)


@pytest.mark.parametrize('value', ['nan', 'inf'])
@pytest.mark.parametrize('with_cp', [False, True])
@pytest.mark.parametrize('frozen_stages', [-1, 1])
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('fast_mode', [True, False])
def test_train_step_loss_is_nonfinite(value, with_cp, frozen_stages, channels_last, fast_mode):
    """A train step (the detection default: frozen stem + stage 1, norm_eval) on a
    corrupt input gives the same non-finite outputs and a non-finite loss, in both modes."""
    kw = dict(depth=50, frozen_stages=frozen_stages, norm_eval=frozen_stages >= 0,
              with_cp=with_cp)
    ref, model = _pair(**kw)
    if not fast_mode:
        model = ref
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    ref.train()
    x = _corrupt(BAD[value], channels_last)
    with always_fold():
        outs = model(x)
        loss = sum(o.sum() for o in outs)
        assert not torch.isfinite(loss), 'a corrupt input gave a finite loss'
        loss.backward()
        with torch.no_grad():
            _assert_same_nonfinite(outs, ref(x))


def test_nonfinite_weight_reaches_the_output():
    """A diverged weight (NaN after a bad step) shows in the output, as in the reference."""
    ref, fast = _pair(depth=18)
    with torch.no_grad():
        for m in (ref, fast):
            m.layer2[0].conv1.weight[3, 2, 1, 1] = float('nan')
    ref, fast = ref.eval(), fast.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), always_fold():
        outs_f, outs_r = fast(x), ref(x)
    for outs in (outs_f, fast.for_inference()(x)):
        for level, (f, r) in enumerate(zip(outs, outs_r)):
            assert torch.equal(f.isnan(), r.isnan()), f'level {level}'
    assert outs_r[-1].isnan().any()
