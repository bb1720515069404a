"""Six mmdet detectors on the torchvision backend against compiled mmcv (the stored
reference, tests/reference/mmcv_ops.pt; live too where a compiled mmcv._ext is installed).

RetinaNet, Faster, Mask and Cascade R-CNN, and Faster R-CNN with DCN and DCNv2 (see
tests/ops_reference.py): a loss step with its gradients, then a predict step.
"""
from __future__ import annotations

import importlib

import ops_reference as R
import pytest
import torch

from resnet_backbone.ops import mmcv_ext as ours

pytestmark = [
    pytest.mark.integration,
    # mmdet's zoo configs, built as they are, warn from mmdet's code
    pytest.mark.filterwarnings('ignore:"deformable_groups" is deprecated:DeprecationWarning'),
]

#: against the stored reference, computed at one thread on another host: there, GEMMs
#: round otherwise (~1e-7), and with random weights the RPN's scores sit ~1e-7 apart, so a
#: proposal at the cut or a sampled RoI may change and move a gradient sum by up to ~1%
#: (measured: 0.14% from a thread-count change alone). The DCN offset convs' gradients,
#: which mmcv zeroes on the padding line, differ by 2-70% where that is not followed.
REL_LOSS = 1e-3
REL_GRAD = 2e-2
#: live, on one host: what the issue asks
REL_GRAD_LIVE = 1e-5
REL_OFFSET_GRAD_LIVE = 1e-4


def _compiled():
    ext = importlib.import_module('mmcv._ext')
    return ext if getattr(ext, 'BACKEND', 'compiled') == 'compiled' else None


def _ours(name: str) -> dict:
    undo = R.swapped_ext(ours)  # a no-op where mmcv._ext is already this backend
    try:
        return R.detector_results(name)
    finally:
        undo()


@pytest.fixture(autouse=True)
def one_thread():
    """The reference was computed at one thread: a thread count changes GEMM rounding."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def reference():
    return torch.load(R.REFERENCE, weights_only=False)['detectors']


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _same_predictions(got: dict, want: dict, top: int = 10) -> None:
    """The scores, sorted, agree within 1e-4; each of the reference's ``top`` best boxes
    is among our 30 best with its label, its score and its box (within 0.01 px). Random
    weights leave the scores near the prior, so neighbours differ by ~1e-7: another host's
    rounding may reorder them, never move one 20 places."""
    assert _rel(got['scores'], want['scores']) <= 1e-4
    for i in range(top):
        hit = ((got['labels'] == want['labels'][i])
               & ((got['scores'] - want['scores'][i]).abs() <= 1e-4 * want['scores'][i])
               & ((got['bboxes'] - want['bboxes'][i]).abs().amax(1) <= 1e-2))
        assert hit.any(), f'reference prediction {i} (score {want["scores"][i]:.6f}) not found'
        if 'mask_areas' in want:
            j = int(hit.nonzero()[0])
            assert abs(int(got['mask_areas'][j]) - int(want['mask_areas'][i])) <= 2


@pytest.mark.parametrize('name', list(R.DETECTORS))
def test_detector_matches_compiled_mmcv_reference(name, reference):
    want = reference[name]
    got = _ours(name)
    assert got['losses'].keys() == want['losses'].keys()
    for k in want['losses']:
        assert _rel(got['losses'][k], want['losses'][k]) <= REL_LOSS, k
    assert got['grad_abs_sum'].keys() == want['grad_abs_sum'].keys()
    for k, v in want['grad_abs_sum'].items():
        assert _rel(got['grad_abs_sum'][k], v) <= REL_GRAD, f'gradient of {k}'
    for g, w in zip(got['predictions'], want['predictions'], strict=True):
        assert g['count'] == w['count']
        _same_predictions(g, w)


@pytest.mark.skipif(_compiled() is None, reason='no compiled mmcv._ext here (the default '
                    'install): the stored reference stands in for it')
@pytest.mark.parametrize('name', list(R.DETECTORS))
def test_detector_equals_compiled_mmcv_live(name):
    want = R.detector_results(name)  # compiled mmcv._ext
    got = _ours(name)
    for k in want['losses']:
        assert torch.equal(got['losses'][k], want['losses'][k]), k
    for k, v in want['grad_abs_sum'].items():
        tol = REL_OFFSET_GRAD_LIVE if 'conv_offset' in k else REL_GRAD_LIVE
        assert _rel(got['grad_abs_sum'][k], v) <= tol, f'gradient of {k}'
    for g, w in zip(got['predictions'], want['predictions'], strict=True):
        for key in w:
            assert torch.equal(torch.as_tensor(g[key]), torch.as_tensor(w[key])), key
