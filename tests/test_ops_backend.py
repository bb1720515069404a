"""resnet_backbone's torchvision backend for ``mmcv._ext`` (resnet_backbone/ops/mmcv_ext.py)
against compiled mmcv.

Every install can run these: the answers of compiled mmcv are stored in
``tests/reference/mmcv_ops.pt`` with their inputs (``tests/ops_reference.py`` regenerates
it under ``MMCV_OPS=compiled``). Where a compiled ``mmcv._ext`` is installed as well, the
same cases run against it live. Ops compiled mmcv has no CPU kernel for (focal loss,
RoIPool, masked conv, deformable RoI pooling, CARAFE) are checked against their own references:
mmdet's Python focal loss, torchvision's RoIPool autograd, a plain convolution,
torchvision's RoIAlign, mmcv's CARAFE kernel written out as loops.
"""
from __future__ import annotations

import importlib

import ops_reference as R
import pytest
import torch

from resnet_backbone.ops import mmcv_ext as ours

#: rel. tolerance per op family against the stored reference: exact where the kernel is
#: scalar code (identical on every x86 host); DCN goes through a GEMM, whose rounding
#: depends on the host's SIMD width, and its offset gradient sums many terms
REL = {'nms': 0, 'softnms': 0, 'nms_match': 0, 'bbox_overlaps': 0, 'roi_align': 0,
       'dcn': 1e-5, 'dcnv2': 1e-5}
#: gaussian soft-NMS multiplies by C's expf, which glibc rounds within 1 ulp, not always
#: to nearest: torch's exp may differ by that ulp (the kept indices stay exact)
REL_GAUSSIAN = 1e-6
REL_OFFSET_GRAD = 1e-4


def _compiled():
    ext = importlib.import_module('mmcv._ext')
    return ext if getattr(ext, 'BACKEND', 'compiled') == 'compiled' else None


@pytest.fixture(scope='module')
def reference():
    return torch.load(R.REFERENCE, weights_only=False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0 and b.numel() == 0:
        return 0.
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def _agree(case: dict, got: list, want: list) -> None:
    assert len(got) == len(want), case['fn']
    for i, (a, b) in enumerate(zip(got, want)):
        where = f"{case['fn']} {case.get('tag', case['kwargs'])} output {i}"
        if not isinstance(b, torch.Tensor):  # nms_match: lists of indices
            assert a == b, where
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, where
        tol = REL[case['op']]
        # the offset gradient (output 4 of backward_input, 3 of the v2 backward)
        if (case['fn'], i) in {('deform_conv_backward_input', 1),
                               ('modulated_deform_conv_backward', 3)}:
            tol = REL_OFFSET_GRAD
        if case['fn'] == 'softnms' and case['kwargs']['method'] == 2:
            tol = REL_GAUSSIAN
        if tol == 0 or not b.is_floating_point():
            assert torch.equal(a, b), f'{where}: max diff {_rel(a, b):.2e}'
        else:
            assert _rel(a, b) <= tol, f'{where}: rel. error {_rel(a, b):.2e} > {tol}'


def test_ops_equal_the_compiled_reference(reference):
    """Each case, fed the stored inputs, answers as compiled mmcv did."""
    assert len(reference['cases']) == len(reference['answers']) > 40
    for case, want in zip(reference['cases'], reference['answers']):
        _agree(case, R.run_case(ours, case), want)


def test_reference_holds_the_cases_the_script_makes(reference):
    """The stored cases are the ones ops_reference.py builds (the file is not stale)."""
    fresh = R.op_cases()
    assert [c['fn'] for c in fresh] == [c['fn'] for c in reference['cases']]
    for a, b in zip(fresh, reference['cases']):
        assert a['kwargs'] == b['kwargs']
        for x, y in zip(a['args'], b['args']):
            assert type(x) is type(y)
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y), a['fn']


@pytest.mark.skipif(_compiled() is None, reason='no compiled mmcv._ext here (the default '
                    'install): the stored reference stands in for it')
def test_ops_equal_compiled_mmcv_live():
    compiled = _compiled()
    for case in R.op_cases(seed=1):
        _agree(case, R.run_case(ours, case), R.run_case(compiled, case))


def test_padding_line_offset_gradient_is_mmcv_s():
    """At zero offset a 3x3 DCN with padding 1 samples exactly on y or x = -1 along the
    border: mmcv gives those points no offset gradient, torchvision a one-sided one."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, 5, generator=g)
    w = torch.randn(2, 2, 3, 3, generator=g)
    off = torch.zeros(1, 18, 5, 5)
    gout = torch.randn(1, 2, 5, 5, generator=g)
    kw = dict(kW=3, kH=3, dW=1, dH=1, padW=1, padH=1, dilationW=1, dilationH=1, group=1,
              deformable_group=1, im2col_step=1)
    gi, go = torch.zeros_like(x), torch.zeros_like(off)
    ours.deform_conv_backward_input(x, off, gout, gi, go, w, torch.zeros(0), **kw)
    go = go.view(1, 9, 2, 5, 5)
    # kernel row 0 at output row 0 samples y = -1: both its offset gradients are zero
    assert torch.count_nonzero(go[0, 0:3, :, 0, :]) == 0
    assert torch.count_nonzero(go[0, 3:6, :, 1:, 1:-1]) > 0  # inside: not zero
    tv = torch.ops.torchvision._deform_conv2d_backward(
        gout, x, w, off, torch.zeros(1, 1), torch.zeros(2), 1, 1, 1, 1, 1, 1, 1, 1, False)[2]
    assert torch.count_nonzero(tv.view(1, 9, 2, 5, 5)[0, 0:3, :, 0, :]) > 0


# ---------------------------------------------------------------- no compiled CPU kernel
@pytest.fixture
def our_ops():
    """mmcv.ops' wrappers calling this backend, also where a compiled mmcv._ext is loaded."""
    undo = R.swapped_ext(ours)
    yield
    undo()


def test_sigmoid_focal_loss_follows_mmcv_s_cuda_formula(our_ops):
    """Against mmdet's Python focal loss (what mmdet runs on CPU) and its autograd
    gradient; at a large negative logit mmcv's kernel clamps log(p) at log(FLT_MIN)."""
    from mmcv.ops import sigmoid_focal_loss
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
    g = torch.Generator().manual_seed(4)
    pred = (torch.randn(16, 5, generator=g) * 3).requires_grad_()
    target = torch.randint(0, 6, (16,), generator=g)  # 5 = background
    got = sigmoid_focal_loss(pred, target, 2.0, 0.25, None, 'none')
    ref_pred = pred.detach().clone().requires_grad_()
    onehot = torch.nn.functional.one_hot(target, 6)[:, :5].float()
    want = py_sigmoid_focal_loss(ref_pred, onehot, gamma=2.0, alpha=0.25, reduction='none')
    # mmdet's loss is the stable BCE form, mmcv's takes log(max(p, FLT_MIN)): they part
    # at the tiniest terms (5.0561e-11 against 5.0580e-11 here), never at the large ones
    assert _rel(got, want) < 1e-4
    g_out = torch.randn(16, 5, generator=g)
    got.backward(g_out)
    want.backward(g_out)
    assert _rel(pred.grad, ref_pred.grad) < 1e-4
    far = torch.tensor([[-100.]])
    loss = sigmoid_focal_loss(far, torch.tensor([0]), 2.0, 0.25, None, 'none')
    # -alpha * (1 - p)^gamma * log(max(p, FLT_MIN)), p = sigmoid(-100) < FLT_MIN
    flt_min = torch.finfo(torch.float32).tiny
    assert torch.allclose(loss, torch.tensor([[-0.25 * torch.log(torch.tensor(flt_min))]]))


def test_roi_pool_matches_torchvision_autograd(our_ops):
    from mmcv.ops import roi_pool
    from torchvision.ops import roi_pool as tv_roi_pool
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 16, 16, generator=g, requires_grad=True)
    rois = torch.cat([torch.tensor([[0.], [1.], [1.]]), R._boxes(g, 3) / 4], 1)
    y = roi_pool(x, rois, (4, 4), 0.5)
    x2 = x.detach().clone().requires_grad_()
    y2 = tv_roi_pool(x2, rois, (4, 4), 0.5)
    assert torch.equal(y, y2)
    go = torch.randn(y.shape, generator=g)
    y.backward(go)
    y2.backward(go)
    assert torch.equal(x.grad, x2.grad)


# mmcv's masked_conv2d calls a deprecated addmm overload (its code, not ours)
@pytest.mark.filterwarnings('ignore:This overload of addmm is deprecated:UserWarning')
def test_masked_conv_equals_a_plain_conv_where_the_mask_is_set(our_ops):
    from mmcv.ops import masked_conv2d
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 9, 11, generator=g)
    w = torch.randn(4, 3, 3, 3, generator=g)
    b = torch.randn(4, generator=g)
    mask = (torch.rand(1, 9, 11, generator=g) > 0.6).float()
    got = masked_conv2d(x, mask, w, b, 1)
    want = torch.nn.functional.conv2d(x, w, b, padding=1) * mask[:, None]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


_DROI_ROIS = torch.tensor([[0, 1.3, 2.2, 9.7, 11.1], [1, -3., -2., 5., 4.],
                           [0, 10., 8., 40., 30.], [1, 3., 3., 3.2, 3.1],
                           [0, 0., 0., 16.9, 12.9], [1, 5., 5., 4., 4.]])


@pytest.mark.parametrize('sampling_ratio,scale', [(0, 1.0), (0, 0.5), (2, 1.0), (2, 0.5)])
def test_deform_roi_pool_is_torchvision_s_aligned_roi_align_shifted_by_its_offset(
        our_ops, sampling_ratio, scale):
    """mmcv's kernel (CUDA only) is RoIAlign with aligned=True whose bins each move by
    gamma * RoI size * offset: at zero offset it is torchvision's RoIAlign, forward and
    backward; a constant offset is the same RoI shifted. RoIs at, past and across the
    border, tiny and inverted."""
    from mmcv.ops import deform_roi_pool
    from torchvision.ops import roi_align
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, 13, 17, generator=g, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    rois = _DROI_ROIS
    args = ((3, 4), scale, sampling_ratio)
    got = deform_roi_pool(x, rois, None, *args, 0.1)
    want = roi_align(x2, rois, *args, aligned=True)
    assert (got - want).abs().max() <= 2e-7
    go = torch.randn(got.shape, generator=g)
    got.backward(go)
    want.backward(go)
    assert (x.grad - x2.grad).abs().max() <= 1e-5  # summed in another order
    off = torch.zeros(len(rois), 2, 3, 4)
    off[:, 0], off[:, 1] = 0.7, -1.3
    w, h = rois[:, 3] - rois[:, 1], rois[:, 4] - rois[:, 2]
    shift = torch.stack([w * 0.07, h * -0.13], 1).repeat(1, 2)
    shifted = torch.cat([rois[:, :1], rois[:, 1:] + shift], 1)
    got = deform_roi_pool(x.detach(), rois, off, *args, 0.1)
    assert (got - roi_align(x.detach(), shifted, *args, aligned=True)).abs().max() <= 2e-6


def test_deform_roi_pool_offset_gradient(our_ops):
    """Inside the map: the derivative (float64 finite differences). In the border band
    (-1 < y < 0) mmcv's kernel differentiates with the sample's unclamped y against the
    clamped corners, a value worked out by hand from its formula."""
    from mmcv.ops import deform_roi_pool
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 13, 17, generator=g, dtype=torch.float64)
    rois = _DROI_ROIS[[0, 4]].double()
    off = ((torch.rand(2, 2, 3, 4, generator=g, dtype=torch.float64) - 0.5) * 0.5)
    assert torch.autograd.gradcheck(
        lambda o: deform_roi_pool(x, rois, o, (3, 4), 1.0, 2, 0.1),
        (off.requires_grad_(),), eps=1e-6, atol=1e-6)
    # one bin, one sample at x = 0.3, y = -0.5 on [[1, 2], [3, 5]]; RoI 1 x 1, gamma 0.1
    img = torch.tensor([[[[1., 2.], [3., 5.]]]])
    o = torch.zeros(1, 2, 1, 1, requires_grad=True)
    out = deform_roi_pool(img, torch.tensor([[0, 0.3, -0.5, 1.3, 0.5]]), o, (1, 1),
                          1.0, 1, 0.1)
    assert torch.allclose(out, torch.tensor([[[[1.3]]]]))  # clamped to row 0
    out.sum().backward()
    # x: 0.1 * (5 * -0.5 + 2 * 1.5 + 3 * 0.5 + 1 * -1.5); y: 0.1 * (5*.3 + 3*.7 - 2*.3 - .7)
    assert torch.allclose(o.grad.flatten(), torch.tensor([0.05, 0.23]))


def _carafe_loops(f, m, k: int, groups: int, s: int) -> torch.Tensor:
    """mmcv's CARAFEForward kernel, written out loop by loop from its CUDA source."""
    n_, c_, h, w = f.shape
    out = torch.zeros(n_, c_, h * s, w * s, dtype=f.dtype)
    fl, ml = f.tolist(), m.tolist()
    per_group, r = -(-c_ // groups), (k - 1) // 2
    for n in range(n_):
        for c in range(c_):
            for ph in range(h * s):
                for pw in range(w * s):
                    dph, dpw, v = ph // s, pw // s, 0.
                    for iy in range(dph - r, dph + r + 1):
                        for ix in range(dpw - r, dpw + r + 1):
                            if 0 <= iy < h and 0 <= ix < w:
                                mc = ((c // per_group) * k + iy - dph + r) * k + ix - dpw + r
                                v += fl[n][c][iy][ix] * ml[n][mc][ph][pw]
                    out[n, c, ph, pw] = v
    return out


@pytest.mark.parametrize('k,groups,s', [(5, 3, 2), (3, 1, 3)])
def test_carafe_follows_mmcv_s_kernel(our_ops, k, groups, s):
    """mmcv has CUDA kernels only: against its forward kernel written out as loops
    (windows at the border, groups, scale), and the gradients in float64."""
    from mmcv.ops import carafe, carafe_naive
    g = torch.Generator().manual_seed(9)
    f = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64)
    m = torch.randn(2, groups * k * k, 3 * s, 4 * s, generator=g, dtype=torch.float64)
    want = _carafe_loops(f, m, k, groups, s)
    assert torch.allclose(carafe(f, m, k, groups, s), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(carafe_naive(f, m, k, groups, s), want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: carafe(a, b, k, groups, s),
                                    (f.requires_grad_(), m.requires_grad_()),
                                    fast_mode=True)


def test_a_missing_op_says_which_and_how_to_get_it():
    with pytest.raises(NotImplementedError) as info:
        ours.psamask_forward(torch.zeros(1))
    msg = str(info.value)
    assert "'psamask_forward'" in msg and 'MMCV_OPS=compiled bash tools/setup.sh' in msg
    assert '\n' not in msg
    with pytest.raises(NotImplementedError, match="pool_mode='max'"):
        ours.roi_align_forward(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), torch.zeros(1),
                               torch.zeros(0), torch.zeros(0), aligned_height=1,
                               aligned_width=1, spatial_scale=1., sampling_ratio=0,
                               pool_mode=0, aligned=True)
