"""Every bad argument gets a one-line ValueError/TypeError naming it and the allowed values."""
from __future__ import annotations

import pytest
import torch

from resnet_backbone import ResNetV1Custom, ResNetV1dCustom

BAD = [
    (dict(depth=42), ValueError, r"^depth=42 is not supported; allowed values: 18, 34, 50, "
                                 r"101, 152, 200$"),
    (dict(depth=18, stem_type='wide'), ValueError,
     r"^stem_type='wide' is not supported; allowed values: 'classic', 'deep', 'small'$"),
    (dict(depth=50, style='tf'), ValueError,
     r"^style='tf' is not supported; allowed values: 'pytorch', 'caffe'$"),
    (dict(depth=18, out_indices=(0, 4)), ValueError,
     r"^out_indices=\(0, 4\) out of range; allowed values: 0, 1, 2, 3 \(num_stages=4\)$"),
    (dict(depth=18, out_indices=(2, 1)), ValueError,
     r"^out_indices=\(2, 1\) must be sorted and unique, e\.g\. \(1, 2\)$"),
    (dict(depth=18, out_indices=3), TypeError, r"^out_indices must be a non-empty sequence"),
    (dict(depth=18, frozen_stages=5), ValueError,
     r"^frozen_stages=5 is out of range; allowed values: -1\.\.4 \(num_stages=4\)$"),
    (dict(depth=18, num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(0, 1),
          frozen_stages=3),
     ValueError, r"^frozen_stages=3 is out of range; allowed values: -1\.\.2"),
    (dict(depth=18, num_stages=5), ValueError,
     r"^num_stages=5 is not supported; allowed values: 1, 2, 3, 4$"),
    (dict(depth=18, strides=(1, 2, 2)), ValueError,
     r"^strides must have one entry per stage: num_stages=4 but len\(strides\)=3"),
    (dict(depth=18, dilations=(1, 1, 1, 1, 1)), ValueError,
     r"^dilations must have one entry per stage: num_stages=4 but len\(dilations\)=5"),
    (dict(depth=50, stage_with_dcn=(False, True)), ValueError,
     r"^stage_with_dcn must have one entry per stage: num_stages=4"),
    (dict(depth=18, with_cp=(True, False)), ValueError,
     r"^with_cp must have one entry per stage: num_stages=4 but len\(with_cp\)=2"),
    (dict(depth=18, with_cp='yes'), TypeError, r"^with_cp must be a sequence of 4 bools"),
    (dict(depth=18, deep_stem=True, stem_type='small'), ValueError,
     r"^deep_stem=True conflicts with stem_type='small'"),
    (dict(depth=18, dcn=dict(type='DCN'), stage_with_dcn=(True,) * 4), ValueError,
     r"^dcn is only supported by Bottleneck blocks \(depth >= 50\)"),
    (dict(depth=50, pretrained=3), TypeError, r"^pretrained must be a str"),
    (dict(depth=50, pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='a')),
     ValueError, r"^init_cfg and pretrained cannot both be set"),
    (dict(depth=50, plugins=[dict(cfg=dict(type='ContextBlock', ratio=0.25),
                                  position='after_conv4')]),
     ValueError, r"^plugin position='after_conv4' is not supported; allowed values: "
                 r"after_conv1, after_conv2, after_conv3$"),
]


@pytest.mark.parametrize('kwargs,exc,pattern', BAD, ids=[str(b[0])[:60] for b in BAD])
def test_constructor_errors(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        ResNetV1Custom(**kwargs)
    assert '\n' not in str(info.value)


def test_preset_clash():
    with pytest.raises(ValueError, match=r"^ResNetV1dCustom fixes avg_down=True; use "
                                         r"ResNetV1Custom to change avg_down$"):
        ResNetV1dCustom(depth=50, avg_down=False)


@pytest.mark.parametrize('shape,pattern', [
    ((3, 32, 32), r"^ResNetV1Custom expects a 4-D \(N, C, H, W\) input; got shape \(3, 32, 32\)$"),
    ((1, 1, 32, 32), r"^input has 1 channels but in_channels=3; pass \(N, 3, H, W\)$"),
])
def test_forward_input_errors(shape, pattern):
    model = ResNetV1Custom(depth=18, base_channels=4)
    with pytest.raises(ValueError, match=pattern):
        model(torch.rand(shape))


def test_forward_features_level_error():
    model = ResNetV1Custom(depth=18, base_channels=4, num_stages=3, strides=(1, 2, 2),
                           dilations=(1, 1, 1), out_indices=(0, 1, 2))
    with pytest.raises(ValueError, match=r"^levels \['c5'\] are not available; allowed "
                                         r"values: 'c1', 'c2', 'c3', 'c4'$"):
        model.forward_features(torch.rand(1, 3, 32, 32), levels=['c2', 'c5'])
