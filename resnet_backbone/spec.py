"""The vocabulary every layer shares: the architecture table, stem types, styles,
output shapes and the one choice check.

A leaf: it imports only the standard library, so the weight converters
(:mod:`resnet_backbone.io`) and the network (:mod:`resnet_backbone.models`) can both use
the table without importing each other.

Example:
    >>> from resnet_backbone.spec import ARCH_LAYOUT, check_choice
    >>> ARCH_LAYOUT[50]
    ('bottleneck', (3, 4, 6, 3))
    >>> check_choice('style', 'pytorch', STYLES)
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

#: depth -> (block kind, blocks per stage). The one source of truth for the layouts;
#: ``models.resnet.ARCH_SETTINGS`` maps the kinds onto the block classes.
ARCH_LAYOUT: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),  # TF-slim resnet_v2_200 layout, v1 units
}
#: block kind -> output channels / planes
EXPANSION = {'basic': 1, 'bottleneck': 4}
#: 'classic' 7x7 conv, 'deep' three 3x3 convs (V1c), 'small' one 3x3 conv, no max-pool
STEM_TYPES = ('classic', 'deep', 'small')
#: where a bottleneck puts its stride: 'pytorch' in the 3x3 conv, 'caffe' in the first 1x1
STYLES = ('pytorch', 'caffe')


class ShapeSpec(NamedTuple):
    """Channels and stride (w.r.t. the input) of one feature map.

    detectron2's ``ShapeSpec`` also carries height and width; ours describes a map for
    any input size, so it has only the two fields that do not depend on it.
    """

    channels: int
    stride: int


def allowed(values: Iterable) -> str:
    """``"'a', 'b'"``: the allowed values as an error message lists them."""
    return ', '.join(repr(v) for v in values)


def check_choice(name: str, value, choices: Iterable, hint: str = '') -> None:
    """Raise the one-line ``ValueError`` every "not one of these" check gives.

    Args:
        name: the argument, as the user wrote it.
        value: what was given.
        choices: the allowed values.
        hint: an optional fix appended to the message.
    """
    choices = tuple(choices)
    # bool is an int: depth=True must not pass as depth 1
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices) \
            or value not in choices:
        raise ValueError(f'{name}={value!r} is not supported; allowed values: '
                         f'{allowed(choices)}' + (f'; {hint}' if hint else ''))
