"""tools/export.py end to end, and torch.compile with Inductor (a real C++ build)."""
from __future__ import annotations

import re
import warnings

import torch

from .conftest import CONFIG, run_tool


def test_export_tool_backbone_and_fpn_from_a_config(tmp_path):
    out = tmp_path / 'retinanet_backbone_fpn.onnx'
    r = run_tool('export.py', str(out), '--config', CONFIG, '--with-neck', '--size', '96')
    assert r.returncode == 0, r.stderr[-3000:]
    checks = re.findall(r'max rel err (\S+) -> ok', r.stdout)
    assert len(checks) == 3 and all(float(e) <= 1e-4 for e in checks), r.stdout
    assert 'onnxruntime matches PyTorch within 1e-4' in r.stdout
    import onnx
    names = [o.name for o in onnx.load(str(out)).graph.output]
    assert names == ['p3', 'p4', 'p5', 'p6', 'p7']  # RetinaNet: FPN from C3, two extra levels
    assert 'Warning' not in r.stdout + r.stderr


def test_export_tool_torchscript_and_errors(tmp_path):
    out = tmp_path / 'r18.pt'
    r = run_tool('export.py', str(out), '--depth', '18', '--size', '64')
    assert r.returncode == 0, r.stderr[-3000:]
    with warnings.catch_warnings():  # torch 2.13 deprecates all of torch.jit
        warnings.filterwarnings('ignore', '`torch.jit.load` is deprecated', DeprecationWarning)
        loaded = torch.jit.load(str(out))
    assert [tuple(t.shape) for t in loaded(torch.rand(1, 3, 64, 64))] == [
        (1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    bad = run_tool('export.py', str(tmp_path / 'x.bin'))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "--format: cannot tell it from '" + str(tmp_path / 'x.bin') + "'; allowed values: "
        'onnx, torchscript (or name the file .onnx / .pt)')
    assert not (tmp_path / 'x.bin').exists()


def test_export_checkpoint_that_does_not_fit_the_config(tmp_path):
    """Issue 21, finding 1. (Before the fix: a checkpoint of another detector loaded
    nothing, silently, and export.py wrote a random-weight ONNX file.)"""
    from resnet_backbone.apis.features import FeatureExtractor
    faster = FeatureExtractor.from_config(
        str(CONFIG).replace('retinanet_r18', 'faster-rcnn_r18'))
    ckpt = tmp_path / 'faster_rcnn.pth'
    torch.save({'state_dict': faster.model.state_dict()}, ckpt)
    out = tmp_path / 'retinanet.onnx'
    r = run_tool('export.py', str(out), '--config', CONFIG, '--checkpoint', str(ckpt),
                 '--size', '64')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"export.py: error: checkpoint {ckpt} does not fit this config's "
                           'detector: '), line
    assert re.search(r'\d+ missing, [1-9]\d* unexpected', line) and '--no-strict' in line
    assert not out.exists()
