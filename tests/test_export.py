"""Export: ONNX checked with onnxruntime, jit.trace, torch.compile (single graph)."""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import backward_outputs, grads_by_name, randomize_, rel_err

from resnet_backbone import ResNetV1Custom
from resnet_backbone.apis.export import (
    ONNX_TOLERANCE,
    BackboneWithNeck,
    check_onnx,
    default_fpn,
    export_onnx,
    trace,
)


def small(seed: int = 0, **kw) -> ResNetV1Custom:
    return randomize_(ResNetV1Custom(base_channels=8, **kw), seed=seed).eval()


@pytest.mark.parametrize('depth,fast,neck', [(18, True, False), (50, False, False),
                                             (18, True, True)])
def test_onnx_matches_onnxruntime(tmp_path, depth, fast, neck):
    """Dynamic batch/height/width: shapes other than the example's run too."""
    model = small(depth=depth, fast=fast)
    if neck:
        model = BackboneWithNeck(model, default_fpn(model, out_channels=16)).eval()
    path = export_onnx(model, tmp_path / 'm.onnx', torch.rand(1, 3, 64, 64))
    import onnx
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == (['p2', 'p3', 'p4', 'p5', 'p6'] if neck
                                              else ['c2', 'c3', 'c4', 'c5'])
    checks = check_onnx(path, model, [(1, 3, 64, 64), (2, 3, 96, 160), (1, 3, 77, 65)])
    for c in checks:
        assert c.ok, c
        assert max(c.max_rel) < ONNX_TOLERANCE / 10  # in practice ~1e-6
    # and the check can fail: other weights, same graph
    other = small(seed=1, depth=depth, fast=fast)
    if neck:
        other = BackboneWithNeck(other, default_fpn(other, out_channels=16)).eval()
    assert not all(c.ok for c in check_onnx(path, other, [(1, 3, 64, 64)]))


def test_jit_trace_matches_eager():
    model = small(depth=50, frozen_stages=1)
    x = torch.rand(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # trace() itself emits nothing
        traced = trace(model, x)
    with torch.no_grad():
        for a, b in zip(traced(torch.rand(1, 3, 96, 64)), model(torch.rand(1, 3, 96, 64))):
            assert a.shape == b.shape
        y = torch.rand(2, 3, 64, 64)
        for a, b in zip(traced(y), model(y)):  # traced: all folded; eager: by input size
            assert rel_err(a, b) <= 1e-5


def test_jit_script_is_reported_unsupported():
    """Documented as unsupported; if torch ever scripts it, the docs must change."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        with pytest.raises((RuntimeError, ValueError)):  # torch's frontend errors
            torch.jit.script(ResNetV1Custom(depth=18, base_channels=4))


@pytest.mark.slow
@pytest.mark.parametrize('with_cp,norm_eval', [(False, True), (True, True), (True, False)])
def test_torch_compile_single_graph(with_cp, norm_eval):
    """fullgraph=True fails on any graph break. aot_eager runs dynamo and AOTAutograd
    (the same graph Inductor gets) without a C++ build, so it stays a fast unit test.
    With train-mode BN under with_cp, running statistics move once, as in eager mode.

    Compiled and compared in float64 with a seeded input: in float32, train-mode BN's
    weight gradients cancel, and the reduction order (threads, vector width) moved
    layer2.0.conv1.weight's gradient by 2.9e-2 relative at 1 thread on an AVX-512 host;
    in float64 the same comparison is ~1e-15, far below the tolerances here (the capture
    path, ``fast._capturing``, is checked before any dtype test, so float64 compiles the
    same graph)."""
    kw = dict(depth=50, frozen_stages=1, with_cp=with_cp, norm_eval=norm_eval)
    ref = small(**kw).double()
    model = small(**kw).double()
    model.load_state_dict(ref.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64)
    with torch.no_grad():  # compiled: every BN folded; eager: by input size
        for a, b in zip(compiled(x), ref(x)):
            assert rel_err(a, b) <= 1e-10
    model.train(), ref.train()
    backward_outputs(compiled(x))
    backward_outputs(ref(x))
    for (name, b), (_, b_ref) in zip(model.named_buffers(), ref.named_buffers()):
        # statistics updated twice would move by the momentum (0.1)
        if b.is_floating_point():
            assert torch.allclose(b, b_ref, rtol=1e-10, atol=1e-12), name
        else:  # num_batches_tracked
            assert torch.equal(b, b_ref), name
    gm, gr = grads_by_name(model), grads_by_name(ref)
    assert sum(g is not None for g in gr.values()) > 10
    for name, g in gr.items():
        if g is None:
            assert gm[name] is None, name
        else:
            # float64: rounding is ~1e-15 relative even where train-mode BN's weight
            # gradients cancel; a wiring error is O(1e-1)
            assert gm[name].dtype == torch.float64 and rel_err(gm[name], g) <= 1e-9, name


def test_plain_jit_trace_with_its_default_check():
    """``torch.jit.trace(model.eval(), x)`` as users call it: gradients enabled and the
    default ``check_trace=True`` (issue 21: the graphs differed across invocations)."""
    model = ResNetV1Custom(depth=18, base_channels=8).eval()
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', category=FutureWarning)  # torch >= 2.14's wording
        traced = torch.jit.trace(model, x)
    with torch.no_grad():
        for a, b in zip(traced(x), model(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
