"""Build the backbone a weights file describes: :func:`backbone_for_checkpoint`.

The converter (:mod:`resnet_backbone.io.weights`) reads what the keys imply (depth, stem,
shortcut, widths, groups, the v2 layout); this module picks the class and builds it.
``tools/convert_weights.py`` and :func:`resnet_backbone.apis.export.trace` use it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..io import weights
from ..io.weights import Converted
from ..spec import ARCH_LAYOUT, choice_error
from .contract import BackboneContract
from .resnet import ResNetV1Custom, ResNeXtCustom
from .resnet_v2 import ResNetV2Custom

#: keywords of ResNetV1Custom/ResNeXtCustom that a ResNet v2 file cannot take
_V1_ONLY = ('stem_type', 'avg_down', 'style', 'groups')


def backbone_for_checkpoint(checkpoint: str | Path | Mapping, *, source: str | None = None,
                            allow_pickle: bool = False, **overrides
                            ) -> tuple[BackboneContract, Converted, dict]:
    """A backbone built as the checkpoint's keys imply, and the converted weights.

    Depth, stem, shortcut and widths come from the keys; ``overrides`` win (None means
    infer). Grouped 3x3 convs in the keys (``groups`` implied) give a ``ResNeXtCustom``;
    a ResNet v2 file (timm ``resnetv2_*``, Keras, TF-slim) a ``ResNetV2Custom`` in the
    file's layout (``stride_in``, ``stem_pool_padding``, ``conv_bias``), with the weights
    fitted to it; otherwise a ``ResNetV1Custom``.

    Args:
        checkpoint: a weights file (any dialect :mod:`~resnet_backbone.io.weights`
            reads) or a state dict.
        source: the dialect, when the keys do not tell it.
        allow_pickle: read a pickled (not ``weights_only``) file.
        **overrides: constructor keywords that win over the implied ones.

    Returns:
        ``(model, converted, kwargs)``: the backbone (not loaded for v1: load
        ``converted.state_dict``), the conversion, and the keywords it was built with.

    Raises:
        ValueError: the depth cannot be told from the keys and none is given, or a v1-only
            keyword for a v2 file (one line each).

    Example:
        >>> import torch
        >>> src = ResNetV1Custom(18, base_channels=4, stem_type='deep').state_dict()
        >>> model, converted, kwargs = backbone_for_checkpoint(src)
        >>> type(model).__name__, kwargs['stem_type'], kwargs['base_channels']
        ('ResNetV1Custom', 'deep', 4)
        >>> [tuple(o.shape) for o in model.eval()(torch.rand(1, 3, 32, 32))][-1]
        (1, 32, 1, 1)
    """
    ckpt = weights.read_checkpoint(checkpoint, allow_pickle=allow_pickle) \
        if not isinstance(checkpoint, Mapping) else checkpoint
    converted = weights.convert(ckpt, source=source)
    implied = dict(converted.implied)
    implied.update({k: v for k, v in overrides.items() if v is not None})
    if 'depth' not in implied:
        raise choice_error('cannot infer the depth from the keys; pass --depth', ARCH_LAYOUT)
    kwargs = {k: v for k, v in implied.items() if v is not None}
    if kwargs.pop('variant', None) == 'v2':  # timm resnetv2, Keras, TF-slim
        v1_only = sorted(k for k in _V1_ONLY if k in kwargs)
        if v1_only:
            raise ValueError(f'{", ".join(v1_only)} do not apply to a ResNet v2 checkpoint '
                             f'({converted.source}); drop them')
        model = ResNetV2Custom(**kwargs)
        weights.fit_to_model(model, converted)
        return model, converted, kwargs
    cls = ResNeXtCustom if kwargs.get('groups', 1) != 1 else ResNetV1Custom
    if cls is ResNetV1Custom:
        kwargs.pop('groups', None), kwargs.pop('base_width', None)
    return cls(**kwargs), converted, kwargs
