"""The cases behind the torchvision backend's equality tests, and the script that records
compiled mmcv's answers to them (``tests/reference/mmcv_ops.pt``).

Regenerate the reference in a venv whose mmcv has its compiled ops::

    MMCV_OPS=compiled bash tools/setup.sh
    .venv/bin/python tests/ops_reference.py            # ops and the six detectors

The cases are built from fixed seeds and stored with their answers, so the tests read the
inputs from the file and need no RNG to agree across torch versions.

Op level (``op_cases``): NMS with tied scores at four thresholds and mmcv's ``offset=1``;
soft-NMS (hard, linear, gaussian); ``nms_match``; ``bbox_overlaps``; RoIAlign forward and
backward with RoIs outside the image and tiny ones, aligned or not, sampling 0 or 2; DCN
and DCNv2 forward and backward with strides, groups, deformable groups, dilation, at
random, zero and integer offsets (the padding-line trap).

Detector level (``detector_results``): RetinaNet, Faster, Mask and Cascade R-CNN, and
Faster R-CNN with DCN and with DCNv2 (mmdet's R50-FPN zoo configs, backbone as
``ResNetV1Custom``), fixed random weights with BN gammas non-zero so the residual
branches and DCN are alive, two 320x320 images, ``score_thr=0``: the losses, the top
predictions, and a gradient summary (the sum of |grad| per parameter).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parent / 'reference' / 'mmcv_ops.pt'
DETECTORS = {
    'retinanet': 'retinanet/retinanet_r50_fpn_1x_coco.py',
    'faster_rcnn': 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mask_rcnn': 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'cascade_rcnn': 'cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py',
    'faster_rcnn_dcn': 'dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py',
    'faster_rcnn_dcnv2': 'dcnv2/faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py',
}
TOP = 30  # predictions kept per image in the reference


# ---------------------------------------------------------------- op level
def _boxes(g: torch.Generator, n: int, shift: float = 0.) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 50 - shift
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], 1)


def _zeros(*shape) -> tuple:
    """An output buffer, stored as its shape (the reference keeps no zero tensors)."""
    return ('zeros', tuple(int(n) for n in (shape[0] if len(shape) == 1
                                            and not isinstance(shape[0], int) else shape)))


def op_cases(seed: int = 0) -> list[dict]:
    """[{'op': family, 'fn': mmcv._ext function, 'args': [...], 'kwargs': {...},
    'out': [indices of args written in place]}]: the calls mmcv's wrappers make."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    b = _boxes(g, 300)
    s = (torch.rand(300, generator=g) * 10).round() / 10  # tied scores
    for thr in (0.3, 0.5, 0.6, 0.7):
        for off in (0, 1):
            cases.append(dict(op='nms', fn='nms', args=[b, s],
                              kwargs=dict(iou_threshold=thr, offset=off), out=[]))
    # IoU on the threshold: 60 / 100 rounds to float32(0.6) = 0.60000002 > 0.6; mmcv
    # compares in float (not suppressed), a double threshold would suppress
    edge = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 6.], [0., 0., 10., 5.]])
    for thr in (0.6, 0.5):
        cases.append(dict(op='nms', fn='nms', args=[edge, torch.tensor([0.9, 0.8, 0.7])],
                          kwargs=dict(iou_threshold=thr, offset=0), out=[]))
    for method in (0, 1, 2):
        cases.append(dict(op='softnms', fn='softnms', args=[b, s, _zeros(300, 5)],
                          kwargs=dict(iou_threshold=0.3, sigma=0.5, min_score=0.05,
                                      method=method, offset=0), out=[2]))
    cases.append(dict(op='nms_match', fn='nms_match', args=[torch.cat([b, s[:, None]], 1)],
                      kwargs=dict(iou_threshold=0.5), out=[]))
    b2 = _boxes(g, 60)
    for mode in (0, 1):
        cases.append(dict(op='bbox_overlaps', fn='bbox_overlaps',
                          args=[b[:100], b2, _zeros(100, 60)],
                          kwargs=dict(mode=mode, aligned=False, offset=0), out=[2]))
    x = torch.randn(2, 4, 20, 24, generator=g)
    rois = torch.cat([torch.randint(0, 2, (24, 1), generator=g).float(), _boxes(g, 24, 10)], 1)
    rois[:3, 3:] = rois[:3, 1:3] + 0.1  # tiny RoIs; the shift puts others outside
    empty = torch.zeros(0)
    for aligned in (True, False):
        for sr in (0, 2):
            kw = dict(aligned_height=7, aligned_width=7, spatial_scale=0.5, sampling_ratio=sr,
                      pool_mode=1, aligned=aligned)
            cases.append(dict(op='roi_align', fn='roi_align_forward',
                              args=[x, rois, _zeros(24, 4, 7, 7), empty, empty],
                              kwargs=kw, out=[2]))
            cases.append(dict(op='roi_align', fn='roi_align_backward',
                              args=[torch.randn(24, 4, 7, 7, generator=g), rois, empty, empty,
                                    _zeros(x.shape)], kwargs=kw, out=[4]))
    for stride, pad, dil, groups, dg, kind in [(1, 1, 1, 1, 1, 'random'), (2, 1, 1, 1, 1, 'zero'),
                                               (1, 2, 2, 2, 2, 'integer'),
                                               (2, 1, 1, 2, 1, 'random'),
                                               (1, 1, 1, 1, 2, 'zero'), (1, 0, 1, 1, 1, 'integer')]:
        n, ci, h, w, co, k = 2, 8, 11, 13, 6, 3
        x = torch.randn(n, ci, h, w, generator=g)
        weight = torch.randn(co, ci // groups, k, k, generator=g)
        ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
        wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
        shape = (n, 2 * dg * k * k, ho, wo)
        if kind == 'random':
            offset = torch.randn(shape, generator=g) * 2
        elif kind == 'zero':  # every border tap on the padding line: mmcv's init
            offset = torch.zeros(shape)
        else:
            offset = torch.randint(-2, 3, shape, generator=g).float()
        grad = torch.randn(n, co, ho, wo, generator=g)
        v1 = dict(kW=k, kH=k, dW=stride, dH=stride, padW=pad, padH=pad, dilationW=dil,
                  dilationH=dil, group=groups, deformable_group=dg, im2col_step=n)
        tag = f'dcn s{stride} p{pad} d{dil} g{groups} dg{dg} {kind}'
        cases.append(dict(op='dcn', tag=tag, fn='deform_conv_forward',
                          args=[x, weight, offset, _zeros(n, co, ho, wo), empty, empty],
                          kwargs=v1, out=[3]))
        cases.append(dict(op='dcn', tag=tag, fn='deform_conv_backward_input',
                          args=[x, offset, grad, _zeros(x.shape), _zeros(offset.shape),
                                weight, empty], kwargs=v1, out=[3, 4]))
        cases.append(dict(op='dcn', tag=tag, fn='deform_conv_backward_parameters',
                          args=[x, offset, grad, _zeros(weight.shape), empty, empty],
                          kwargs=dict(v1, scale=1), out=[3]))
        mask = torch.rand(n, dg * k * k, ho, wo, generator=g)
        bias = torch.randn(co, generator=g)
        v2 = dict(kernel_h=k, kernel_w=k, stride_h=stride, stride_w=stride, pad_h=pad,
                  pad_w=pad, dilation_h=dil, dilation_w=dil, group=groups,
                  deformable_group=dg, with_bias=True)
        cases.append(dict(op='dcnv2', tag=tag, fn='modulated_deform_conv_forward',
                          args=[x, weight, bias, empty, offset, mask,
                                _zeros(n, co, ho, wo), empty], kwargs=v2, out=[6]))
        cases.append(dict(op='dcnv2', tag=tag, fn='modulated_deform_conv_backward',
                          args=[x, weight, bias, empty, offset, mask, empty,
                                _zeros(x.shape), _zeros(weight.shape), _zeros(bias.shape),
                                _zeros(offset.shape), _zeros(mask.shape), grad], kwargs=v2,
                          out=[7, 8, 9, 10, 11]))
    # DyHead: one conv makes a level's offset and mask, and the DCNs of the levels above
    # (stride 1, a smaller map) and below (stride 2) use them too; mmcv's kernel reads the
    # offset slice's memory as a plane of the output's size
    offset_and_mask = torch.randn(2, 27, 8, 8, generator=g)
    offset, mask = offset_and_mask[:, :18], offset_and_mask[:, 18:].sigmoid()
    weight = torch.randn(6, 8, 3, 3, generator=g)
    bias = torch.randn(6, generator=g)
    for size, stride in ((8, 1), (4, 1), (16, 2)):
        x = torch.randn(2, 8, size, size, generator=g)
        o = (size + 2 - 3) // stride + 1
        v2 = dict(kernel_h=3, kernel_w=3, stride_h=stride, stride_w=stride, pad_h=1, pad_w=1,
                  dilation_h=1, dilation_w=1, group=1, deformable_group=1, with_bias=True)
        tag = f'dyhead {size}px stride {stride}'
        cases.append(dict(op='dcnv2', tag=tag, fn='modulated_deform_conv_forward',
                          args=[x, weight, bias, empty, offset, mask, _zeros(2, 6, o, o),
                                empty], kwargs=v2, out=[6]))
        cases.append(dict(op='dcnv2', tag=tag, fn='modulated_deform_conv_backward',
                          args=[x, weight, bias, empty, offset, mask, empty, _zeros(x.shape),
                                _zeros(weight.shape), _zeros(bias.shape),
                                _zeros(offset.shape), _zeros(mask.shape),
                                torch.randn(2, 6, o, o, generator=g)], kwargs=v2,
                          out=[7, 8, 9, 10, 11]))
    return cases


def run_case(ext, case: dict) -> list:
    """Call ``ext.<fn>`` on the case's inputs and fresh output buffers; return what it
    answers: its return value (if any) and every buffer it writes."""
    # inputs as they are (not cloned: a clone would make a sliced offset contiguous, and
    # mmcv reads the slice's memory), outputs fresh
    args = [torch.zeros(a[1]) if isinstance(a, tuple) and a[:1] == ('zeros',) else a
            for a in case['args']]
    ret = getattr(ext, case['fn'])(*args, **case['kwargs'])
    outs = [args[i] for i in case['out']]
    return ([ret] if ret is not None else []) + outs


# ---------------------------------------------------------------- detector level
def _det_inputs(with_masks: bool, seed: int = 0):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    size = 320
    inputs = torch.randn(2, 3, size, size, generator=g)
    samples = []
    for _ in range(2):
        xy = torch.rand(3, 2, generator=g) * 200
        wh = torch.rand(3, 2, generator=g) * 90 + 20
        boxes = torch.cat([xy, xy + wh], 1)
        gt = InstanceData(bboxes=boxes, labels=torch.randint(0, 80, (3,), generator=g))
        if with_masks:
            m = torch.zeros(3, size, size, dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
                m[i, y1:y2, x1:x2] = 1
            gt.masks = BitmapMasks(m.numpy(), size, size)
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size), scale_factor=(1., 1.),
                                             batch_input_shape=(size, size)))
        sample.gt_instances = gt
        samples.append(sample)
    return inputs, samples


def build_detector(name: str, seed: int = 0):
    """mmdet's zoo config with ``ResNetV1Custom`` (reference mode), seeded weights, every
    BN gamma drawn in [0.3, 0.9] (mmdet zero-initialises norm3: at init the residual
    branches, and DCN, would not be exercised), ``score_thr=0``."""
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.logging import MMLogger

    import resnet_backbone  # noqa: F401  (registers ResNetV1Custom)
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs',
                                       DETECTORS[name]))
    cfg.model.backbone.type = 'ResNetV1Custom'
    cfg.model.backbone.fast = False
    cfg.model.backbone.init_cfg = None
    test = cfg.model.test_cfg
    for part in ([test.rcnn] if 'rcnn' in test else []) + ([test] if 'score_thr' in test else []):
        part.score_thr = 0.
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs one INFO block per parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.6 + 0.3)
    return model


def detector_results(name: str) -> dict:
    """Losses, top predictions and a gradient summary of one detector."""
    model = build_detector(name)
    inputs, samples = _det_inputs(with_masks='mask' in name)
    model.train()
    losses = model.loss(inputs, samples)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v)
                for k, v in losses.items() if 'loss' in k)
    total.backward()
    out = {'losses': {k: (v.detach() if isinstance(v, torch.Tensor)
                          else torch.stack([x.detach() for x in v]))
                      for k, v in losses.items() if 'loss' in k},
           'grad_abs_sum': {n: p.grad.double().abs().sum() for n, p in model.named_parameters()
                            if p.grad is not None}}
    model.eval()
    with torch.no_grad():
        preds = model.predict(inputs, samples, rescale=False)
    out['predictions'] = []
    for p in preds:
        inst = p.pred_instances
        order = inst.scores.argsort(descending=True, stable=True)[:TOP]
        item = {'bboxes': inst.bboxes[order], 'scores': inst.scores[order],
                'labels': inst.labels[order], 'count': len(inst)}
        if 'masks' in inst:
            item['mask_areas'] = inst.masks[order].flatten(1).sum(1)
        out['predictions'].append(item)
    return out


def swapped_ext(ext) -> Callable[[], None]:
    """Point every loaded ``mmcv.ops`` module's ``ext_module`` at ``ext``; returns the undo."""
    import mmcv.ops  # noqa: F401
    saved = [(m, m.ext_module) for name, m in list(sys.modules.items())
             if name.startswith('mmcv.ops.') and hasattr(m, 'ext_module')]
    for m, _ in saved:
        m.ext_module = ext

    def undo() -> None:
        for m, old in saved:
            m.ext_module = old
    return undo


def main() -> None:
    import mmcv._ext as ext
    if getattr(ext, 'BACKEND', 'compiled') != 'compiled':
        sys.exit('tests/ops_reference.py: mmcv._ext is the torchvision backend here; the '
                 'reference must come from compiled mmcv: MMCV_OPS=compiled bash tools/setup.sh')
    torch.set_num_threads(1)
    cases = op_cases()
    ref = {'torch': torch.__version__, 'cases': cases,
           'answers': [run_case(ext, c) for c in cases],
           'detectors': {}}
    for name in DETECTORS:
        print(f'[ops_reference] {name} ...', file=sys.stderr)
        ref['detectors'][name] = detector_results(name)
    REFERENCE.parent.mkdir(exist_ok=True)
    torch.save(ref, REFERENCE)
    print(f'[ops_reference] wrote {REFERENCE} ({REFERENCE.stat().st_size // 1024} KiB)',
          file=sys.stderr)


if __name__ == '__main__':
    main()
