"""Same weights as torchvision / timm -> same C1..C5 features, bitwise."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from conftest import randomize_
from torchvision.models.feature_extraction import create_feature_extractor

from resnet_backbone import ResNetV1Custom
from resnet_backbone.io.weights import convert

TV_DEPTHS = [18, 34, 50, 101, 152]


@pytest.mark.parametrize('depth', TV_DEPTHS)
def test_torchvision_weights_give_equal_features(depth):
    tv = randomize_(getattr(torchvision.models, f'resnet{depth}')(weights=None)).eval()
    sd = tv.state_dict()
    ours = ResNetV1Custom(depth=depth, fast=False).eval()  # reference mode: bitwise
    converted = convert(sd, source='torchvision').state_dict
    missing, unexpected = ours.load_state_dict(converted, strict=True)
    assert not missing and not unexpected
    assert {k for k in sd if not k.startswith('fc.')} == set(ours.state_dict())
    extractor = create_feature_extractor(
        tv, return_nodes={'relu': 'c1', 'layer1': 'c2', 'layer2': 'c3', 'layer3': 'c4',
                          'layer4': 'c5'})
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = extractor(x)
        feats = ours.forward_levels(x, levels=['c1', 'c2', 'c3', 'c4', 'c5'])
        outs = ours(x)
    for name in ref:
        assert torch.equal(ref[name], feats[name]), name
    for o, name in zip(outs, ['c2', 'c3', 'c4', 'c5']):
        assert torch.equal(o, ref[name])


@pytest.mark.parametrize('name,kwargs', [
    ('resnet50', dict()),
    ('resnet50d', dict(stem_type='deep', avg_down=True)),
])
def test_timm_weights_give_equal_features(name, kwargs):
    tm = randomize_(timm.create_model(name, pretrained=False, features_only=True)).eval()
    # features_only models keep the backbone keys (minus fc) of the classifier model
    sd = timm.create_model(name, pretrained=False).state_dict()
    sd.update(tm.state_dict())
    ours = ResNetV1Custom(depth=50, fast=False, **kwargs).eval()  # reference mode
    ours.load_state_dict(convert(sd, source='timm').state_dict, strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = tm(x)  # [act1 (stride 2), layer1..layer4]
        feats = ours.forward_levels(x, levels=['c1', 'c2', 'c3', 'c4', 'c5'])
    assert [f.shape[-1] for f in ref] == [32, 16, 8, 4, 2]
    for r, key in zip(ref, feats):
        assert torch.equal(r, feats[key]), key
