"""mmcv's compiled-op interface (``mmcv._ext``) on torchvision's and torch's ops.

mmcv-lite ships every ``mmcv/ops/*.py`` but no ``mmcv/_ext``; each of those files calls
``ext_loader.load_ext('_ext', [...])`` at import and later calls the functions by name,
with mmcv's argument names, writing into tensors it allocated. This module is loaded *as*
``mmcv._ext`` by the import hook (``resnet_backbone_ops_hook``, installed by a ``.pth``
file) when no compiled ``mmcv._ext`` is installed; a compiled one always wins.

It imports only torch and torchvision (not this package: it is loaded by file, before
anything of ours), so it is safe inside ``import mmcv.ops``. Every function follows the
compiled CPU kernel's semantics where they differ from torchvision's (NMS order on tied
scores, the float threshold, the DCN offset gradient on the padding line), or the CUDA
kernel's where mmcv has no CPU one (focal loss, deformable RoI pooling, CARAFE);
docs/ops.md lists them. A function mmcv names but this module does not provide raises one
line naming the op and the fix.

    >>> import torch
    >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5, offset=0).tolist()
    [0, 2]
"""
from __future__ import annotations

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision)

#: what the doctor and ``get_compiler_version`` report
BACKEND = 'torchvision'
FIX = 'MMCV_OPS=compiled bash tools/setup.sh'
_TV = torch.ops.torchvision


def get_compiler_version() -> str:
    return 'none: resnet_backbone torchvision backend (mmcv-lite, no compiled ops)'


def get_compiling_cuda_version() -> str:
    return 'not compiled'


# ---- NMS family ----------------------------------------------------------------------
def _f32(x: float) -> float:
    """``x`` as the C ``float`` mmcv's kernels receive (their threshold arguments are
    float; torchvision's are double, which moves the boundary, e.g. 0.6)."""
    return float(torch.tensor(x, dtype=torch.float32))


def _order(scores: torch.Tensor) -> torch.Tensor:
    # the same call mmcv's kernel makes; torchvision sorts stably, so tied scores would
    # otherwise keep another order
    return scores.sort(0, descending=True)[1]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        offset: int = 0) -> torch.Tensor:
    if boxes.numel() == 0:
        return boxes.new_empty(0, dtype=torch.long)
    order = _order(scores)
    b = boxes[order]
    if offset:
        # mmcv's legacy offset=1: widths and heights are x2 - x1 + 1
        b = torch.cat([b[:, :2], b[:, 2:4] + offset], dim=1)
    keep = _TV.nms(b.contiguous(), scores[order].contiguous(), _f32(iou_threshold))
    return order[keep]


def _iou_row(box: torch.Tensor, others: torch.Tensor, area: torch.Tensor,
             areas: torch.Tensor, offset: float) -> torch.Tensor:
    xx1 = torch.maximum(box[0], others[:, 0])
    yy1 = torch.maximum(box[1], others[:, 1])
    xx2 = torch.minimum(box[2], others[:, 2])
    yy2 = torch.minimum(box[3], others[:, 3])
    inter = (xx2 - xx1 + offset).clamp(min=0) * (yy2 - yy1 + offset).clamp(min=0)
    return inter / (area + areas - inter)


def softnms(boxes: torch.Tensor, scores: torch.Tensor, dets: torch.Tensor,
            iou_threshold: float, sigma: float, min_score: float, method: int,
            offset: int) -> torch.Tensor:
    """mmcv's CPU soft-NMS (hard, linear or gaussian): the highest score left is swapped
    to the front, the rest are re-weighted by their overlap with it, and a box that falls
    below ``min_score`` is replaced by the last one. The re-weighting is vectorised; the
    order of the swaps is replayed exactly. Fills ``dets`` (N, 5), returns the kept
    indices."""
    n = boxes.size(0)
    if n == 0:
        return boxes.new_empty(0, dtype=torch.long)
    f = torch.float32
    cols = torch.cat([boxes[:, :4].to('cpu', f), scores.to('cpu', f)[:, None]], dim=1)
    cols = torch.cat([cols, ((cols[:, 2] - cols[:, 0] + offset)
                             * (cols[:, 3] - cols[:, 1] + offset))[:, None]], dim=1)
    inds = torch.arange(n, dtype=torch.long)
    thr, sig, low = _f32(iou_threshold), _f32(sigma), _f32(min_score)
    i = 0
    while i < n:
        m = i + int(torch.argmax(cols[i:n, 4]))  # the first maximum, as mmcv's '<' scan
        if m != i:
            cols[[i, m]] = cols[[m, i]]
            inds[[i, m]] = inds[[m, i]]
        if i + 1 < n:
            rest = cols[i + 1:n]
            ovr = _iou_row(cols[i, :4], rest[:, :4], cols[i, 5], rest[:, 5], offset)
            one = torch.ones_like(ovr)
            if method == 0:
                weight = torch.where(ovr >= thr, torch.zeros_like(ovr), one)
            elif method == 1:
                weight = torch.where(ovr >= thr, 1 - ovr, one)
            else:
                # C's expf is correctly rounded: exp in float64, then round to float
                weight = torch.exp((-(ovr * ovr) / sig).double()).to(f)
            rest[:, 4] *= weight
            below = (rest[:, 4] < low).tolist()
            # replay mmcv's in-place removal: slot p takes the last box and is re-read
            cur, p, left = list(range(n - i - 1)), 0, n - i - 1
            while p < left:
                if below[cur[p]]:
                    cur[p] = cur[left - 1]
                    left -= 1
                else:
                    p += 1
            keep = torch.tensor(cur[:left], dtype=torch.long)
            cols[i + 1:i + 1 + left] = rest[keep].clone()
            inds[i + 1:i + 1 + left] = inds[i + 1:n][keep].clone()
            n = i + 1 + left
        i += 1
    dets[:n] = cols[:n, :5].to(dets.dtype)
    return inds[:n].clone()


def nms_match(dets: torch.Tensor, iou_threshold: float) -> list[list[int]]:
    """mmcv's CPU ``nms_match`` (PISA): groups of [kept, its suppressed...]."""
    if dets.size(0) == 0:
        return []
    d = dets.detach().to('cpu', torch.float32)
    order = _order(d[:, 4]).tolist()
    areas = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
    suppressed = torch.zeros(d.size(0), dtype=torch.bool)
    thr = _f32(iou_threshold)
    matched = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        rest = torch.tensor(order[pos + 1:], dtype=torch.long)
        rest = rest[~suppressed[rest]]
        group = [i]
        if rest.numel():
            ovr = _iou_row(d[i, :4], d[rest, :4], areas[i], areas[rest], 0.)
            hit = rest[ovr >= thr]
            suppressed[hit] = True
            group += hit.tolist()
        matched.append(group)
    return matched


def bbox_overlaps(bboxes1: torch.Tensor, bboxes2: torch.Tensor, ious: torch.Tensor,
                  mode: int = 0, aligned: bool = False, offset: int = 0) -> None:
    """mmcv's ``bbox_overlaps`` kernel: IoU (mode 0) or IoF (mode 1) into ``ious``."""
    if aligned:
        lt = torch.maximum(bboxes1[:, :2], bboxes2[:, :2])
        rb = torch.minimum(bboxes1[:, 2:], bboxes2[:, 2:])
        wh = (rb - lt + offset).clamp(min=0)
        a2 = (bboxes2[:, 2] - bboxes2[:, 0] + offset) * (bboxes2[:, 3] - bboxes2[:, 1] + offset)
    else:
        lt = torch.maximum(bboxes1[:, None, :2], bboxes2[None, :, :2])
        rb = torch.minimum(bboxes1[:, None, 2:], bboxes2[None, :, 2:])
        wh = (rb - lt + offset).clamp(min=0)
        a2 = ((bboxes2[:, 2] - bboxes2[:, 0] + offset)
              * (bboxes2[:, 3] - bboxes2[:, 1] + offset))[None, :]
    inter = wh[..., 0] * wh[..., 1]
    a1 = (bboxes1[:, 2] - bboxes1[:, 0] + offset) * (bboxes1[:, 3] - bboxes1[:, 1] + offset)
    a1 = a1 if aligned else a1[:, None]
    union = a1 + a2 - inter if mode == 0 else a1
    ious.copy_((inter / union.clamp(min=torch.finfo(union.dtype).eps)).view_as(ious))


# ---- RoI ops -------------------------------------------------------------------------
def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor,
                      argmax_y: torch.Tensor, argmax_x: torch.Tensor, aligned_height: int,
                      aligned_width: int, spatial_scale: float, sampling_ratio: int,
                      pool_mode: int, aligned: bool) -> None:
    if pool_mode != 1:
        raise NotImplementedError(
            "mmcv's RoIAlign with pool_mode='max' is not in resnet_backbone's torchvision "
            f"backend (torchvision has the average only): use pool_mode='avg', or {FIX}")
    output.copy_(_TV.roi_align(input, rois.to(input.dtype), float(spatial_scale),
                               int(aligned_height), int(aligned_width), int(sampling_ratio),
                               bool(aligned)))


def roi_align_backward(grad_output: torch.Tensor, rois: torch.Tensor, argmax_y: torch.Tensor,
                       argmax_x: torch.Tensor, grad_input: torch.Tensor, aligned_height: int,
                       aligned_width: int, spatial_scale: float, sampling_ratio: int,
                       pool_mode: int, aligned: bool) -> None:
    n, c, h, w = grad_input.shape
    args = (float(spatial_scale), int(aligned_height), int(aligned_width))
    rois = rois.to(grad_output.dtype)
    backward = getattr(_TV, '_roi_align_backward', None)  # torchvision-private: guarded
    if backward is not None:
        grad = backward(grad_output.contiguous(), rois, *args, n, c, h, w,
                        int(sampling_ratio), bool(aligned))
    else:
        with torch.enable_grad():
            x = grad_input.new_zeros(grad_input.shape, requires_grad=True)
            out = _TV.roi_align(x, rois, *args, int(sampling_ratio), bool(aligned))
            grad, = torch.autograd.grad(out, x, grad_output)
    grad_input.add_(grad)


def roi_pool_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor,
                     argmax: torch.Tensor, pooled_height: int, pooled_width: int,
                     spatial_scale: float) -> None:
    out, arg = _TV.roi_pool(input, rois.to(input.dtype), float(spatial_scale),
                            int(pooled_height), int(pooled_width))
    output.copy_(out)
    argmax.copy_(arg)


def roi_pool_backward(grad_output: torch.Tensor, rois: torch.Tensor, argmax: torch.Tensor,
                      grad_input: torch.Tensor, pooled_height: int, pooled_width: int,
                      spatial_scale: float) -> None:
    # each output bin's gradient goes to the input element it took its max from
    n, c, h, w = grad_input.shape
    batch = rois[:, 0].long()
    arg = argmax.long()
    valid = arg >= 0
    plane = (batch[:, None, None, None] * c
             + torch.arange(c, device=arg.device)[None, :, None, None]) * (h * w)
    index = (plane + arg.clamp(min=0))[valid]
    grad_input.view(-1).index_add_(0, index, grad_output[valid].to(grad_input.dtype))


# ---- deformable RoI pooling (mmcv has a CUDA kernel only; this follows it) ------------
#: samples x channels gathered at once (bounds the memory of a large RoI batch)
_DROI_CHUNK = 1 << 24


def _droi_samples(rois, offset, ph_n: int, pw_n: int, scale: float, ratio: int,
                  gamma: float, dtype):
    """Per group of RoIs that share a sampling grid (gh, gw): their indices and the
    sample points ``y``, ``x`` (n, PH, PW, gh, gw), computed in mmcv's kernel's order."""
    r = rois.to(dtype)
    scale_t = torch.tensor(scale, dtype=dtype)
    sw, sh = r[:, 1] * scale_t - 0.5, r[:, 2] * scale_t - 0.5
    rw, rh = (r[:, 3] * scale_t - 0.5) - sw, (r[:, 4] * scale_t - 0.5) - sh
    bh, bw = rh / ph_n, rw / pw_n
    if ratio > 0:
        gh = gw = torch.full_like(rh, ratio, dtype=torch.long)
    else:
        gh, gw = torch.ceil(bh).long(), torch.ceil(bw).long()
    sw = sw[:, None, None].expand(-1, ph_n, pw_n)
    sh = sh[:, None, None].expand(-1, ph_n, pw_n)
    if offset.numel():
        g = torch.tensor(gamma, dtype=dtype)
        sw = sw + g * rw[:, None, None] * offset[:, 0].to(dtype)
        sh = sh + g * rh[:, None, None] * offset[:, 1].to(dtype)
    ph = torch.arange(ph_n, dtype=dtype, device=rois.device)[None, :, None]
    pw = torch.arange(pw_n, dtype=dtype, device=rois.device)[None, None, :]
    y0 = sh + ph * bh[:, None, None]
    x0 = sw + pw * bw[:, None, None]
    for gy, gx in sorted(set(zip(gh.tolist(), gw.tolist()))):
        idx = torch.nonzero((gh == gy) & (gw == gx)).flatten()
        if gy <= 0 or gx <= 0:
            yield idx, None, None, gy, gx, rw[idx], rh[idx]
            continue
        iy = torch.arange(gy, dtype=dtype, device=rois.device) + 0.5
        ix = torch.arange(gx, dtype=dtype, device=rois.device) + 0.5
        y = (y0[idx][..., None, None]
             + (iy[:, None] * bh[idx, None, None, None, None]) / gy)
        x = (x0[idx][..., None, None]
             + (ix[None, :] * bw[idx, None, None, None, None]) / gx)
        yield idx, y.expand(-1, -1, -1, gy, gx), x.expand(-1, -1, -1, gy, gx), gy, gx, \
            rw[idx], rh[idx]


def _bilinear_corners(y, x, h: int, w: int):
    """mmcv's ``bilinear_interpolate(_gradient)``: the four corners and weights of each
    sample (weights 0 outside [-1, h] x [-1, w]; clamped to the last row or column)."""
    valid = (y >= -1) & (y <= h) & (x >= -1) & (x <= w)
    yc, xc = y.clamp(min=0), x.clamp(min=0)
    yl, xl = yc.long(), xc.long()
    ylast, xlast = yl >= h - 1, xl >= w - 1
    yl, xl = yl.clamp(max=h - 1), xl.clamp(max=w - 1)
    yh = torch.where(ylast, yl, yl + 1)
    xh = torch.where(xlast, xl, xl + 1)
    yc = torch.where(ylast, yl.to(y.dtype), yc)
    xc = torch.where(xlast, xl.to(x.dtype), xc)
    ly, lx = yc - yl, xc - xl
    hy, hx = 1 - ly, 1 - lx
    v = valid.to(y.dtype)
    return valid, (yl, xl, yh, xh), (hy * hx * v, hy * lx * v, ly * hx * v, ly * lx * v)


def _droi_chunks(idx, y, c: int):
    per = y[0].numel() * c if len(idx) else 1
    step = max(1, _DROI_CHUNK // max(per, 1))
    for start in range(0, len(idx), step):
        yield slice(start, start + step)


def deform_roi_pool_forward(input, rois, offset, output, pooled_height: int,
                            pooled_width: int, spatial_scale: float, sampling_ratio: int,
                            gamma: float) -> None:
    _, c, h, w = input.shape
    flat = input.permute(0, 2, 3, 1).reshape(-1, c)  # (b*h*w, c)
    batch = rois[:, 0].long()
    out = output.new_zeros(output.shape)
    for idx, y, x, gy, gx, _, _ in _droi_samples(rois, offset, pooled_height, pooled_width,
                                                  spatial_scale, sampling_ratio, gamma,
                                                  input.dtype):
        if y is None:
            continue  # an empty grid: mmcv writes 0
        for part in _droi_chunks(idx, y, c):
            i = idx[part]
            _, (yl, xl, yh, xh), ws = _bilinear_corners(y[part], x[part], h, w)
            base = (batch[i] * (h * w))[:, None, None, None, None]
            acc = 0
            for (yy, xx), wt in zip(((yl, xl), (yl, xh), (yh, xl), (yh, xh)), ws):
                acc = acc + wt[..., None] * flat[base + yy * w + xx]
            # (n, PH, PW, gh, gw, c) -> mean over the grid -> (n, c, PH, PW)
            out[i] = (acc.sum((3, 4)) / (gy * gx)).permute(0, 3, 1, 2)
    output.copy_(out)


def deform_roi_pool_backward(grad_output, input, rois, offset, grad_input, grad_offset,
                             pooled_height: int, pooled_width: int, spatial_scale: float,
                             sampling_ratio: int, gamma: float) -> None:
    b, c, h, w = input.shape
    flat = input.permute(0, 2, 3, 1).reshape(-1, c)
    gflat = grad_input.new_zeros(b * h * w, c)
    batch = rois[:, 0].long()
    has_offset = offset.numel() > 0
    for idx, y, x, gy, gx, rw, rh in _droi_samples(rois, offset, pooled_height,
                                                    pooled_width, spatial_scale,
                                                    sampling_ratio, gamma, input.dtype):
        if y is None:
            continue
        for part in _droi_chunks(idx, y, c):
            i = idx[part]
            yp, xp = y[part], x[part]
            valid, (yl, xl, yh, xh), ws = _bilinear_corners(yp, xp, h, w)
            g = (grad_output[i] / (gy * gx)).permute(0, 2, 3, 1)[:, :, :, None, None, :]
            base = (batch[i] * (h * w))[:, None, None, None, None]
            rows = [base + yy * w + xx for yy, xx in ((yl, xl), (yl, xh), (yh, xl), (yh, xh))]
            for row, wt in zip(rows, ws):
                gflat.index_add_(0, row.reshape(-1), (g * wt[..., None]).reshape(-1, c))
            if has_offset:
                # mmcv's formula: the sample's own (unclamped) y and x against the corner
                # indices, so the border band extrapolates and the last row gives 0
                v00, v10, v01, v11 = (flat[r] for r in rows)
                yf, xf = yp[..., None], xp[..., None]
                yl_, yh_ = yl[..., None].to(yp.dtype), yh[..., None].to(yp.dtype)
                xl_, xh_ = xl[..., None].to(xp.dtype), xh[..., None].to(xp.dtype)
                gamma_t = torch.tensor(gamma, dtype=input.dtype)
                m = valid[..., None].to(input.dtype) * g
                ogx = (v11 * (yf - yl_) + v10 * (yh_ - yf) + v01 * (yl_ - yf)
                       + v00 * (yf - yh_)) * m
                ogy = (v11 * (xf - xl_) + v01 * (xh_ - xf) + v10 * (xl_ - xf)
                       + v00 * (xf - xh_)) * m
                grad_offset[i, 0] += gamma_t * rw[part, None, None] * ogx.sum((3, 4, 5))
                grad_offset[i, 1] += gamma_t * rh[part, None, None] * ogy.sum((3, 4, 5))
    grad_input.add_(gflat.view(b, h, w, c).permute(0, 3, 1, 2))


# ---- CARAFE upsampling (mmcv has CUDA kernels only; this follows them) --------------
def _carafe(features, masks, kernel_size: int, group_size: int, scale_factor: int):
    """out[n, c, y, x] = sum over the k x k window around (y // s, x // s) of features
    (zero outside) times mask[n, g(c) * k * k + i * k + j, y, x], g(c) = c // (C / G):
    one shifted, nearest-upsampled copy of the features per window position."""
    n, c, h, w = features.shape
    k, r, s = kernel_size, (kernel_size - 1) // 2, scale_factor
    padded = torch.nn.functional.pad(features, (r, r, r, r))
    grouped = masks.view(n, group_size, 1, k * k, h * s, w * s)
    out = features.new_zeros(n, group_size, c // group_size, h * s, w * s)
    for i in range(k):
        for j in range(k):
            window = padded[:, :, i:i + h, j:j + w]
            up = window.repeat_interleave(s, 2).repeat_interleave(s, 3)
            out = out + up.view_as(out) * grouped[:, :, :, i * k + j]
    return out.view(n, c, h * s, w * s)


def _carafe_grads(top_grad, features, masks, kernel_size, group_size, scale_factor):
    with torch.enable_grad():
        f = features.detach().requires_grad_()
        m = masks.detach().requires_grad_()
        out = _carafe(f, m, kernel_size, group_size, scale_factor)
        return torch.autograd.grad(out, (f, m), top_grad)


def carafe_naive_forward(features, masks, output, kernel_size: int, group_size: int,
                         scale_factor: int) -> None:
    output.copy_(_carafe(features, masks, kernel_size, group_size, scale_factor))


def carafe_naive_backward(top_grad, features, masks, bottom_grad, mask_grad,
                          kernel_size: int, group_size: int, scale_factor: int) -> None:
    gf, gm = _carafe_grads(top_grad, features, masks, kernel_size, group_size, scale_factor)
    bottom_grad.add_(gf)
    mask_grad.add_(gm)


def carafe_forward(features, masks, rfeatures, routput, rmasks, output, kernel_size: int,
                   group_size: int, scale_factor: int) -> None:
    rfeatures.copy_(features)  # what mmcv saves for backward (its kernel: NHWC scratch)
    output.copy_(_carafe(features, masks, kernel_size, group_size, scale_factor))


def carafe_backward(top_grad, rfeatures, masks, rtop_grad, rbottom_grad_hs, rbottom_grad,
                    rmask_grad, bottom_grad, mask_grad, kernel_size: int, group_size: int,
                    scale_factor: int) -> None:
    gf, gm = _carafe_grads(top_grad, rfeatures, masks, kernel_size, group_size,
                           scale_factor)
    bottom_grad.add_(gf)
    mask_grad.add_(gm)


# ---- focal loss (mmdet calls it on CUDA only; the formulas are mmcv's CUDA kernel's) -----
_FLT_MIN = torch.finfo(torch.float32).tiny


def _focal_terms(input: torch.Tensor, target: torch.Tensor):
    classes = torch.arange(input.size(1), device=input.device)
    flag_p = (target.long()[:, None] == classes[None, :]).to(input.dtype)
    p = 1. / (1. + torch.exp(-input))
    # mmcv clamps log's argument at FLT_MIN instead of the stable log-sigmoid form:
    # at large logits the two differ, and mmcv's is the reference
    log_p = torch.log(p.clamp(min=_FLT_MIN))
    log_1p = torch.log((1. - p).clamp(min=_FLT_MIN))
    return flag_p, p, log_p, log_1p


def sigmoid_focal_loss_forward(input: torch.Tensor, target: torch.Tensor,
                               weight: torch.Tensor, output: torch.Tensor, gamma: float,
                               alpha: float) -> None:
    flag_p, p, log_p, log_1p = _focal_terms(input, target)
    term_p = torch.pow(1. - p, gamma) * log_p
    term_n = torch.pow(p, gamma) * log_1p
    out = -flag_p * alpha * term_p - (1. - flag_p) * (1. - alpha) * term_n
    if weight.numel():
        out = out * weight[target.long()][:, None]
    output.copy_(out)


def sigmoid_focal_loss_backward(input: torch.Tensor, target: torch.Tensor,
                                weight: torch.Tensor, grad_input: torch.Tensor, gamma: float,
                                alpha: float) -> None:
    flag_p, p, log_p, log_1p = _focal_terms(input, target)
    term_p = torch.pow(1. - p, gamma) * (1. - p - gamma * p * log_p)
    term_n = torch.pow(p, gamma) * (gamma * (1. - p) * log_1p - p)
    grad = -flag_p * alpha * term_p - (1. - flag_p) * (1. - alpha) * term_n
    if weight.numel():
        grad = grad * weight[target.long()][:, None]
    grad_input.copy_(grad)


# ---- deformable convolution ----------------------------------------------------------
def _zero_offset_grad_off_image(grad_offset: torch.Tensor, offset: torch.Tensor,
                                height: int, width: int, kh: int, kw: int, sh: int, sw: int,
                                ph: int, pw: int, dh: int, dw: int) -> None:
    """mmcv's col2im_coord gives a sample point at or beyond the padding line (y or x
    <= -1, or >= the size) no offset gradient; torchvision takes a one-sided difference
    at exactly -1, which every integer offset (mmcv zero-initialises conv_offset) hits."""
    b, _, ho, wo = offset.shape
    off = offset.reshape(b, -1, kh * kw, 2, ho, wo)
    dev, dt = offset.device, offset.dtype
    base_h = ((torch.arange(ho, device=dev) * sh - ph)[None, :]
              + (torch.arange(kh, device=dev) * dh)[:, None])          # (kh, ho)
    base_w = ((torch.arange(wo, device=dev) * sw - pw)[None, :]
              + (torch.arange(kw, device=dev) * dw)[:, None])          # (kw, wo)
    base_h = base_h[:, None, :, None].expand(kh, kw, ho, wo).reshape(kh * kw, ho, wo)
    base_w = base_w[None, :, None, :].expand(kh, kw, ho, wo).reshape(kh * kw, ho, wo)
    y = base_h.to(dt) + off[:, :, :, 0]
    x = base_w.to(dt) + off[:, :, :, 1]
    out = (y <= -1) | (y >= height) | (x <= -1) | (x >= width)
    grad_offset.view(b, -1, kh * kw, 2, ho, wo).masked_fill_(out[:, :, :, None], 0)


def _dcn_backward(grad_output, input, weight, offset, mask, bias, stride, pad, dil, groups,
                  deform_groups, use_mask):
    """(grad_input, grad_weight, grad_offset, grad_mask, grad_bias) in one pass: the
    torchvision-private backward where it exists, else autograd through the forward."""
    backward = getattr(_TV, '_deform_conv2d_backward', None)
    args = (*stride, *pad, *dil, groups, deform_groups, use_mask)
    if backward is not None:
        return backward(grad_output, input, weight, offset, mask, bias, *args)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (input, weight, offset, mask, bias)]
        out = _TV.deform_conv2d(*leaves, *args)
        gi, gw, go, gm, gb = torch.autograd.grad(out, leaves, grad_output, allow_unused=True)
    return gi, gw, go, gm, gb


def _dcn_forward(input, weight, offset, mask, bias, stride, pad, dil, groups, deform_groups,
                 use_mask):
    return _TV.deform_conv2d(input, weight, offset, mask, bias, *stride, *pad, *dil, groups,
                             deform_groups, use_mask)


def _v1_args(kW, kH, dW, dH, padW, padH, dilationW, dilationH):
    return (dH, dW), (padH, padW), (dilationH, dilationW)


def deform_conv_forward(input, weight, offset, output, columns, ones, kW, kH, dW, dH, padW,
                        padH, dilationW, dilationH, group, deformable_group,
                        im2col_step) -> None:
    stride, pad, dil = _v1_args(kW, kH, dW, dH, padW, padH, dilationW, dilationH)
    no_mask = input.new_zeros(input.size(0), 1)  # what torchvision passes without a mask
    bias = input.new_zeros(weight.size(0))
    output.copy_(_dcn_forward(input, weight, offset, no_mask, bias, stride, pad, dil, group,
                              deformable_group, False))


#: mmcv calls deform_conv_backward_input, then deform_conv_backward_parameters with the
#: same tensors: one torchvision backward gives both, kept here between the two calls
_V1_WEIGHT_GRAD: list = []


def _v1_key(input, offset, grad_output):
    return tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in (input, offset, grad_output))


def deform_conv_backward_input(input, offset, gradOutput, gradInput, gradOffset, weight,
                               columns, kW, kH, dW, dH, padW, padH, dilationW, dilationH,
                               group, deformable_group, im2col_step) -> None:
    stride, pad, dil = _v1_args(kW, kH, dW, dH, padW, padH, dilationW, dilationH)
    gi, gw, go, _, _ = _dcn_backward(gradOutput, input, weight, offset,
                                     input.new_zeros(input.size(0), 1),
                                     input.new_zeros(weight.size(0)), stride, pad, dil,
                                     group, deformable_group, False)
    _zero_offset_grad_off_image(go, offset, input.size(2), input.size(3), kH, kW, *stride,
                                *pad, *dil)
    gradInput.copy_(gi)
    gradOffset.copy_(go)
    _V1_WEIGHT_GRAD[:] = [(_v1_key(input, offset, gradOutput), gw)]


def deform_conv_backward_parameters(input, offset, gradOutput, gradWeight, columns, ones, kW,
                                    kH, dW, dH, padW, padH, dilationW, dilationH, group,
                                    deformable_group, scale, im2col_step) -> None:
    cached = _V1_WEIGHT_GRAD[:]
    _V1_WEIGHT_GRAD.clear()
    if cached and cached[0][0] == _v1_key(input, offset, gradOutput):
        gw = cached[0][1]
    else:  # the weight's gradient does not depend on the weight: any of its shape will do
        stride, pad, dil = _v1_args(kW, kH, dW, dH, padW, padH, dilationW, dilationH)
        _, gw, _, _, _ = _dcn_backward(gradOutput, input, gradWeight.new_zeros(gradWeight.shape),
                                       offset, input.new_zeros(input.size(0), 1),
                                       input.new_zeros(gradWeight.size(0)), stride, pad, dil,
                                       group, deformable_group, False)
    gradWeight.add_(gw, alpha=scale)


def _as_mmcv_reads(t: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """The (N, C, ho, wo) tensor mmcv's modulated DCN kernel reads from ``t``: it takes
    each image's data pointer and indexes it as a contiguous plane of the *output's* size,
    whatever ``t``'s own size and strides. mmdet's DyHead relies on it: its upper level's
    DCN gets the middle level's (larger) offset and mask, sliced from one tensor."""
    n, c = t.shape[:2]
    if tuple(t.shape[2:]) == (ho, wo) and t.is_contiguous():
        return t
    return t.as_strided((n, c, ho, wo), (t.stride(0), ho * wo, wo, 1), t.storage_offset())


def _out_size(input, kernel_h, kernel_w, stride, pad, dil) -> tuple[int, int]:
    return tuple((input.size(2 + i) + 2 * pad[i] - (dil[i] * ((kernel_h, kernel_w)[i] - 1) + 1))
                 // stride[i] + 1 for i in range(2))


def modulated_deform_conv_forward(input, weight, bias, ones, offset, mask, output, columns,
                                  kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                  dilation_h, dilation_w, group, deformable_group,
                                  with_bias) -> None:
    b = bias if with_bias else input.new_zeros(weight.size(0))
    stride, pad, dil = (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w)
    ho, wo = _out_size(input, kernel_h, kernel_w, stride, pad, dil)
    output.copy_(_dcn_forward(input, weight, _as_mmcv_reads(offset, ho, wo),
                              _as_mmcv_reads(mask, ho, wo), b, stride, pad, dil, group,
                              deformable_group, True))


def modulated_deform_conv_backward(input, weight, bias, ones, offset, mask, columns,
                                   grad_input, grad_weight, grad_bias, grad_offset, grad_mask,
                                   grad_output, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                   pad_w, dilation_h, dilation_w, group, deformable_group,
                                   with_bias) -> None:
    b = bias if with_bias else input.new_zeros(weight.size(0))
    stride, pad, dil = (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w)
    ho, wo = _out_size(input, kernel_h, kernel_w, stride, pad, dil)
    offset, mask = _as_mmcv_reads(offset, ho, wo), _as_mmcv_reads(mask, ho, wo)
    gi, gw, go, gm, gb = _dcn_backward(grad_output, input, weight, offset.contiguous(),
                                       mask.contiguous(), b, stride, pad, dil, group,
                                       deformable_group, True)
    _zero_offset_grad_off_image(go, offset, input.size(2), input.size(3), kernel_h, kernel_w,
                                *stride, *pad, *dil)
    grad_input.copy_(gi)
    grad_weight.copy_(gw)
    # written where mmcv writes them (the same reading of the tensors' memory)
    _as_mmcv_reads(grad_offset, ho, wo).copy_(go)
    _as_mmcv_reads(grad_mask, ho, wo).copy_(gm)
    if with_bias:
        grad_bias.copy_(gb)


# ---- masked convolution (Guided Anchoring) ---------------------------------------------
def masked_im2col_forward(im, mask_h_idx, mask_w_idx, col, kernel_h, kernel_w, pad_h,
                          pad_w) -> None:
    _, c, h, w = im.shape
    padded = torch.nn.functional.pad(im[0], (pad_w, pad_w, pad_h, pad_h))
    di = torch.arange(kernel_h, device=im.device)
    dj = torch.arange(kernel_w, device=im.device)
    hh = mask_h_idx.long()[None, None, :] + di[:, None, None]   # (kh, 1, m) in padded coords
    ww = mask_w_idx.long()[None, None, :] + dj[None, :, None]   # (1, kw, m)
    patches = padded[:, hh, ww]                                  # (c, kh, kw, m)
    col.copy_(patches.reshape(c * kernel_h * kernel_w, -1))


def masked_col2im_forward(col, mask_h_idx, mask_w_idx, im, height, width, channels) -> None:
    im[0, :, mask_h_idx.long(), mask_w_idx.long()] = col.view(channels, -1).to(im.dtype)


# ---- multi-scale deformable attention (mmcv calls it on CUDA only) ---------------------
def _msda(value, spatial_shapes, sampling_locations, attention_weights):
    # mmcv's own reference implementation (grid_sample); imported on use, when
    # mmcv.ops has finished importing
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations,
                                               attention_weights)


def ms_deform_attn_forward(value, value_spatial_shapes, value_level_start_index,
                           sampling_locations, attention_weights, im2col_step):
    return _msda(value, value_spatial_shapes, sampling_locations, attention_weights)


def ms_deform_attn_backward(value, value_spatial_shapes, value_level_start_index,
                            sampling_locations, attention_weights, grad_output, grad_value,
                            grad_sampling_loc, grad_attn_weight, im2col_step) -> None:
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (value, sampling_locations,
                                                        attention_weights)]
        out = _msda(leaves[0], value_spatial_shapes, leaves[1], leaves[2])
        grads = torch.autograd.grad(out, leaves, grad_output)
    for dst, g in zip((grad_value, grad_sampling_loc, grad_attn_weight), grads):
        dst.add_(g.view_as(dst))


# ---- everything else mmcv names ------------------------------------------------------
PROVIDED = sorted(name for name, obj in list(globals().items())
                  if callable(obj) and not name.startswith('_')
                  and getattr(obj, '__module__', None) == __name__
                  and name not in {'get_compiler_version', 'get_compiling_cuda_version'})


class MissingOp(NotImplementedError):
    """An op mmcv names that this backend does not provide."""


def _missing(name: str):
    def op(*args, **kwargs):
        raise MissingOp(f"mmcv op '{name}' is not in resnet_backbone's torchvision backend "
                        f"(mmcv-lite has no compiled ops): build mmcv's own with {FIX}")
    op.__name__ = op.__qualname__ = name
    op.missing = True
    return op


_NOT_OPS = ('_', 'pytest', 'setup', 'teardown', 'setUp', 'tearDown')


def __getattr__(name: str):
    # mmcv asserts every name it will call at import (112 in mmcv 2.1, more in its forks):
    # each missing one is a function that raises the one line above, when it is called
    # not an op: private names, and what tools ask any module for (pytest's doctest
    # collection asks for pytest_plugins, setup_module, ...; a stub there broke it)
    if name.startswith(_NOT_OPS):
        raise AttributeError(name)
    return _missing(name)

