"""Issue 21: what users hand to the feature extractor, the converter and the export tool.

Each test names the finding it reproduces; all use tiny models (base_channels 8) and
run the tools in-process (their ``__main__`` block through ``runpy``).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from resnet_backbone import ResNetV1Custom
from resnet_backbone.apis.features import FeatureExtractor
from resnet_backbone.engine.training import load_config

ROOT = Path(__file__).resolve().parents[1]
SHAPES = str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py')
CONVERT = ROOT / 'tools' / 'convert_weights.py'
EXPORT = ROOT / 'tools' / 'export.py'
TORCH_HINT = re.compile(r'weights_only`?\s*(=|set to)\s*`?False')


cli = run_cli  # the shared in-process tool runner (tests/conftest.py)


def error_line(err: str, tool: str) -> str:
    """The tool's one error line: the last line, the only one naming the tool, no traceback."""
    assert 'Traceback' not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    mine = [ln for ln in lines if ln.startswith(f'{tool}: error:')]
    assert len(mine) == 1 and lines[-1] == mine[0], err[-2000:]
    return mine[0]


def tiny_cfg():
    """The shapes RetinaNet with an 8-wide ResNet-18: fast to build and run."""
    cfg = load_config(SHAPES)
    cfg.model.backbone.base_channels = 8
    cfg.model.neck.in_channels = [8, 16, 32, 64]
    return cfg


def torchvision_like(model: ResNetV1Custom) -> dict:
    """A torchvision-layout file of ``model``'s weights: its keys plus a classifier."""
    sd = dict(model.state_dict())
    width = sd['layer4.1.conv2.weight'].shape[0]
    sd['fc.weight'], sd['fc.bias'] = torch.zeros(10, width), torch.zeros(10)
    return sd


# ---------------------------------------------------------------- finding 12: inputs
@pytest.fixture(scope='module')
def fx():
    return FeatureExtractor(ResNetV1Custom(depth=18, base_channels=8).eval(), levels=['c5'])


def test_images_a_user_hands_in(fx):
    """Before: a 2-D array raised IndexError, a tensor or PIL image 'File name too long'
    or FileNotFoundError. Now every form gives the maps of the same picture."""
    rgb = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    ref = fx(bgr).levels['c5']
    alpha = np.full((40, 56, 1), 255, np.uint8)
    same = {
        'BGRA array': np.concatenate([bgr, alpha], -1),
        'float array 0-255': bgr.astype(np.float64),
        'PIL RGB': Image.fromarray(rgb),
        'PIL RGBA': Image.fromarray(rgb).convert('RGBA'),
        'uint8 tensor (C, H, W)': torch.from_numpy(rgb).permute(2, 0, 1),
        'float tensor (1, C, H, W) 0-255': torch.from_numpy(rgb).permute(2, 0, 1)[None].float(),
    }
    for what, image in same.items():
        assert torch.equal(fx(image).levels['c5'], ref), what
    gray = rgb[..., 0]
    ref_gray = fx(np.repeat(gray[..., None], 3, -1)).levels['c5']
    for what, image in {'2-D array': gray, '(H, W, 1) array': gray[..., None],
                        'PIL L': Image.fromarray(gray),
                        '2-D tensor': torch.from_numpy(gray)}.items():
        assert torch.equal(fx(image).levels['c5'], ref_gray), what
    assert fx(Image.fromarray(rgb)).meta['ori_shape'] == (40, 56)


@pytest.mark.parametrize('image,words', [
    (np.full((20, 20, 3), 0.5, np.float32), 'values in [0, 1] (max 0.5); pass pixel values 0-255'),
    (torch.full((3, 20, 20), 0.5), 'values in [0, 1] (max 0.5); pass pixel values 0-255'),
    (np.full((20, 20, 3), -1.0), 'negative values'),
    (np.full((20, 20, 3), 4000, np.uint16), 'beyond 0-255'),
    (np.zeros((3, 20, 20), np.uint8), 'looks channels first'),
    (torch.zeros(2, 3, 20, 20), 'pass one image at a time'),
    ([np.zeros((20, 20, 3), np.uint8)], 'cannot read an image from a list'),
    (b'bytes', 'cannot read an image from a bytes'),
])
def test_refused_inputs_are_one_line(fx, image, words):
    """Before: a float image in [0, 1] was silently read as 0-255 (almost black);
    other types gave 'File name too long' or FileNotFoundError."""
    with pytest.raises((ValueError, TypeError)) as info:
        fx(image)
    msg = str(info.value)
    assert '\n' not in msg and words in msg, msg


def test_missing_file_and_levels_string(fx, tmp_path):
    """Before: levels='c5' reported "levels ['c', '5']"; a missing path was an mmcv
    FileNotFoundError naming no cause."""
    with pytest.raises(FileNotFoundError, match=r"^image '.*nope\.png': no such file$"):
        fx(tmp_path / 'nope.png')
    bb = ResNetV1Custom(depth=18, base_channels=8).eval()
    assert list(bb.forward_levels(torch.zeros(1, 3, 32, 32), levels='c5')) == ['c5']
    assert list(bb.forward_levels(torch.zeros(1, 3, 32, 32), levels='c2,c5')) == ['c2', 'c5']
    assert FeatureExtractor(bb, levels='c5').levels == ['c5']


def test_classifier_is_one_line():
    """Before: a torchvision ResNet gave 'math domain error'."""
    import torchvision
    with pytest.raises(TypeError) as info:
        FeatureExtractor(torchvision.models.resnet18(num_classes=10))
    msg = str(info.value)
    assert '\n' not in msg and 'returns a tensor of shape (1, 10)' in msg
    assert 'load_pretrained' in msg


# ---------------------------------------------------------------- finding 13
def test_timm_and_torchvision_told_apart():
    """Before: timm's resnets were reported as 'torchvision' (the keys are identical);
    the module names a saved state dict records tell them apart."""
    import timm
    import torchvision

    from resnet_backbone.io.weights import convert
    assert convert(timm.create_model('resnet18').state_dict()).source == 'timm'
    assert convert(torchvision.models.resnet18().state_dict()).source == 'torchvision'
    plain = dict(torchvision.models.resnet18().state_dict())  # no module names recorded
    assert convert(plain).label == 'torchvision/timm (identical keys)'
    assert convert(plain).source == 'torchvision'  # the key mapping is the same


def test_timm_file_reported_once_as_timm(tmp_path, capfd):
    """Before: 'source: torchvision', and the load report printed twice (logged, then
    printed)."""
    import timm
    src = tmp_path / 'timm_r18.pth'
    torch.save(timm.create_model('resnet18').state_dict(), src)
    tool = _module(CONVERT)
    capfd.readouterr()
    assert tool.main([str(src), str(tmp_path / 'out.pth')]) == 0
    out, err = capfd.readouterr()
    assert 'source: timm;' in out
    assert (out + err).count('load report') == 1, out + err


def test_unknown_file_names_the_flag(tmp_path, capsys, monkeypatch):
    """Before: a MobileNet file's error said 'pass source=...'; the flag is --source."""
    src = tmp_path / 'mobilenet.pth'
    torch.save({'features.0.0.weight': torch.zeros(8, 3, 3, 3),
                'classifier.1.weight': torch.zeros(10, 8)}, src)
    code, _, err = cli(capsys, monkeypatch, CONVERT, str(src), str(tmp_path / 'out.pth'))
    line = error_line(err, 'convert_weights.py')
    assert code == 1 and 'source=' not in line and 'pass --source' in line
    assert 'does not look like a ResNet checkpoint' in line and str(src) in line


def test_base_channels_zero_refused():
    """Before: base_channels=0 built a model (in_channels=0 was refused)."""
    for bad in (0, -8, 8.0):
        with pytest.raises(ValueError, match=r'^base_channels must be a positive int; got'):
            ResNetV1Custom(depth=18, base_channels=bad)


# ---------------------------------------------------------------- finding 7
@pytest.mark.parametrize('name,flags', [('whole.pth', ()), ('whole.pkl', ('--allow-pickle',)),
                                        ('whole.pkl', ())])
def test_whole_pickled_model_is_one_line(name, flags, tmp_path, capsys, monkeypatch):
    """Before: a 17-line UnpicklingError advising weights_only=False; with
    --allow-pickle on a .pkl copy, a failure in persistent_load / 'truncated or corrupt'."""
    src = tmp_path / name
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), src)
    code, _, err = cli(capsys, monkeypatch, CONVERT, str(src), str(tmp_path / 'out.pth'),
                       *flags)
    line = error_line(err, 'convert_weights.py')
    assert code == 1 and str(src) in line and 'save model.state_dict() instead' in line, line
    assert 'torch.nn.modules.container.Sequential' in line and not TORCH_HINT.search(line)
    assert not (tmp_path / 'out.pth').exists()


# ---------------------------------------------------------------- finding 8
def _module(path: Path):
    """The module that ``tools/<name>.py`` runs (``resnet_backbone.tools.<name>``)."""
    import importlib
    return importlib.import_module(f'resnet_backbone.tools.{path.stem}')


def test_export_infers_the_depth_from_the_checkpoint(tmp_path, capsys, monkeypatch):
    """Before: the default --depth 50 met an R18 file: a 6.8 kB IncompleteCheckpointError."""
    from conftest import randomize_
    src_model = randomize_(ResNetV1Custom(depth=18, base_channels=8)).eval()
    src = tmp_path / 'tv_r18.pth'
    torch.save(torchvision_like(src_model), src)
    tool = _module(EXPORT)
    model = tool.build(tool.parse_args([str(tmp_path / 'o.pt'), '--checkpoint', str(src)]))
    assert model.depth == 18 and model.base_channels == 8
    for k, v in src_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # an explicit depth that does not fit: one line naming the file and the counts
    code, _, err = cli(capsys, monkeypatch, EXPORT, str(tmp_path / 'o.pt'), '--checkpoint',
                       str(src), '--depth', '50')
    line = error_line(err, 'export.py')
    assert code == 1 and len(line) < 600 and str(src) in line
    assert re.search(r'\d+ missing, 0 unexpected, \d+ shape-mismatched', line), line
    assert not (tmp_path / 'o.pt').exists()


def test_offline_url_is_one_line(tmp_path, capsys, monkeypatch):
    """Before: an offline torchvision:// name was a traceback."""
    import urllib.error
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))

    def offline(*args, **kwargs):
        raise urllib.error.URLError('[Errno -2] Name or service not known')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    code, _, err = cli(capsys, monkeypatch, EXPORT, str(tmp_path / 'o.pt'), '--checkpoint',
                       'torchvision://resnet18')
    line = error_line(err, 'export.py')
    assert code == 1 and "'torchvision://resnet18' could not be fetched" in line
    assert str(tmp_path / 'torch_home' / 'hub' / 'checkpoints') in line


# ---------------------------------------------------------------- finding 5
def test_url_resolved_in_torch_hub_cache(tmp_path, monkeypatch):
    """Before: with the file in torch's hub cache, init_weights loaded it but
    FeatureExtractor.from_config recorded {'source': 'random', 'note':
    'torchvision://resnet18 not available locally'}."""
    from conftest import randomize_
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    # where torch.hub.load_state_dict_from_url keeps torchvision's resnet18 file
    cached = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'
    cached.parent.mkdir(parents=True)
    fake = randomize_(ResNetV1Custom(depth=18, base_channels=8))
    torch.save(torchvision_like(fake), cached)
    cfg = tiny_cfg()
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint='torchvision://resnet18')
    fx = FeatureExtractor.from_config(cfg)
    w = fx.weights
    assert w['source'] == 'pretrained-backbone' and w['file'] == str(cached), w
    assert w['coverage']['backbone'] == 100.0 and len(w['sha256']) == 64
    assert torch.equal(fx.model.backbone.conv1.weight, fake.conv1.weight)
    # training's init_weights reads the same file
    bb = ResNetV1Custom(depth=18, base_channels=8,
                        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet18'))
    bb.init_weights()
    assert torch.equal(bb.conv1.weight, fake.conv1.weight)
    # not in the cache: random, and the note says where it looked
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint='torchvision://resnet34')
    w = FeatureExtractor.from_config(cfg).weights
    assert w['source'] == 'random' and str(cached.parent / 'resnet34-b627a593.pth') in w['note']
    from resnet_backbone.io.weights import cached_checkpoint_file
    assert cached_checkpoint_file('torchvision://resnet18') == cached
    assert cached_checkpoint_file('https://x.org/a/b/r50-123.pth') == cached.parent / 'r50-123.pth'


# ---------------------------------------------------------------- finding 1
def test_checkpoint_must_fit_the_config(tmp_path):
    """Before: a file that fit nothing loaded nothing (non-strict, silent), and the
    weights record said 'checkpoint'."""
    from conftest import randomize_
    cfg = tiny_cfg()
    backbone = randomize_(ResNetV1Custom(depth=18, base_channels=8))
    bb_file = tmp_path / 'backbone_only.pth'
    torch.save(backbone.state_dict(), bb_file)
    fx = FeatureExtractor.from_config(cfg, str(bb_file))
    w = fx.weights
    assert w['source'] == 'backbone-checkpoint' and w['loaded'] == 'backbone', w
    assert w['coverage']['backbone'] == 100.0 and 0 < w['coverage']['detector'] < 100
    assert 'neck and heads are randomly initialised' in w['note']
    assert torch.equal(fx.model.backbone.conv1.weight, backbone.conv1.weight)
    # a detector checkpoint of this config: all of it
    det_file = tmp_path / 'det.pth'
    torch.save({'state_dict': fx.model.state_dict()}, det_file)
    w = FeatureExtractor.from_config(cfg, str(det_file)).weights
    assert w['source'] == 'checkpoint' and w['coverage'] == {'detector': 100.0}
    # ... on another config (R34): one line, naming the file and the counts
    other = tiny_cfg()
    other.model.backbone.depth = 34
    with pytest.raises(ValueError) as info:
        FeatureExtractor.from_config(other, str(det_file))
    assert type(info.value).__name__ == 'CheckpointMismatchError'
    msg = str(info.value)
    assert '\n' not in msg and str(det_file) in msg and '--no-strict' in msg
    assert re.search(r"does not fit this config's detector: \d+ missing, 0 unexpected", msg)
    # a backbone-only file of another depth: the same
    with pytest.raises(ValueError, match=r"does not fit this config's backbone"):
        FeatureExtractor.from_config(other, str(bb_file))
    # the explicit opt-out loads what fits, and records what did not
    w = FeatureExtractor.from_config(other, str(det_file), strict=False).weights
    assert w['strict'] is False and w['missing'] > 0 and w['coverage']['detector'] < 100
