"""The vocabulary every layer shares: the architecture table, stem types, styles,
output shapes, the one choice check (:func:`check_choice`, :func:`choice_error`) and
the one "not a tensor" message (:func:`not_a_tensor_error`).

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

from collections.abc import Iterable, Sequence
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

    Not detectron2's ``ShapeSpec`` and not interchangeable with it: detectron2's has four
    fields, ``(channels, height, width, stride)``, so positional code written for one
    reads the wrong field of the other. Ours describes a map for any input size, so it
    has only the two fields that do not depend on the input.

    Example:
        >>> ShapeSpec(channels=256, stride=4)
        ShapeSpec(channels=256, stride=4)
    """

    channels: int
    stride: int


def allowed(values: Iterable | str, *, quote: bool = True) -> str:
    """The allowed values as every error message lists them.

    Args:
        values: the values, or a ready-made description such as ``'-1..4'``.
        quote: ``repr`` each value (``'a', 'b'``) or not (``a, b``, for names a user
            types on a command line).

    Example:
        >>> allowed(['pytorch', 'caffe']), allowed(['c1', 'c2'], quote=False)
        ("'pytorch', 'caffe'", 'c1, c2')
    """
    if isinstance(values, str):
        return values
    return ', '.join(repr(v) if quote else str(v) for v in values)


def choice_error(problem: str, choices: Iterable | str, suffix: str = '', *,
                 quote: bool = True) -> ValueError:
    """The one-line ``ValueError`` of a "not one of these" check: ``'<problem>; allowed
    values: <choices><suffix>'``.

    Args:
        problem: what is wrong, naming the argument (``"levels ['c9'] are not available"``).
        choices: the allowed values (see :func:`allowed`).
        suffix: appended as is, e.g. ``' (num_stages=4)'`` or ``'; use ...'``.
        quote: see :func:`allowed`.

    Example:
        >>> str(choice_error('format=png is not supported', ['pt', 'npz'], quote=False))
        'format=png is not supported; allowed values: pt, npz'
    """
    return ValueError(f'{problem}; allowed values: {allowed(choices, quote=quote)}{suffix}')


def resolve_levels(levels: Sequence[str] | str | None, num_stages: int,
                   out_indices: Iterable[int]) -> tuple[list[str], list[str]]:
    """The level names a ``forward_levels`` call asks for, and every name it can give.

    ``c1`` is the stem (before the max-pool), ``c2``.. one per built stage.

    Args:
        levels: names as a sequence or a comma-separated string; ``None``: ``c1`` and the
            ``out_indices`` levels.
        num_stages: stages built.
        out_indices: the backbone's returned stages.

    Returns:
        ``(levels, built)``.

    Raises:
        ValueError: an unknown name (one line listing the available ones).

    Example:
        >>> resolve_levels('c1, c5', 4, (0, 1, 2, 3))[0]
        ['c1', 'c5']
    """
    built = ['c1'] + [f'c{i + 2}' for i in range(num_stages)]
    if isinstance(levels, str):  # 'c5' or 'c2,c5': names, not characters
        levels = [lv.strip() for lv in levels.split(',')]
    if levels is None:
        levels = ['c1'] + [f'c{i + 2}' for i in out_indices]
    unknown = [lv for lv in levels if lv not in built]
    if unknown:
        raise choice_error(f'levels {unknown!r} are not available', built)
    return list(levels), built


def check_choice(name: str, value: object, choices: Iterable, hint: str = '', *,
                 quote: bool = True) -> None:
    """Raise the one-line ``ValueError`` every "not one of these" check gives.

    Args:
        name: the argument, as the user wrote it.
        value: what was given.
        choices: the allowed values.
        hint: an optional fix appended to the message.
        quote: see :func:`allowed`.

    Raises:
        ValueError: ``"<name>=<value!r> is not supported; allowed values: ..."``.

    Example:
        >>> check_choice('depth', 42, (18, 50))
        Traceback (most recent call last):
        ...
        ValueError: depth=42 is not supported; allowed values: 18, 50
    """
    choices = tuple(choices)
    # bool is an int: depth=True must not pass as depth 1
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices) \
            or value not in choices:
        raise choice_error(f'{name}={value!r} is not supported', choices,
                           f'; {hint}' if hint else '', quote=quote)


def _type_name(value: object) -> str:
    cls = type(value)
    module = cls.__module__.split('.')[0]
    return cls.__qualname__ if module == 'builtins' else f'{module}.{cls.__qualname__}'


def not_a_tensor_error(name: str, value: object, shape: str = '(N, C, H, W)') -> TypeError:
    """The one-line ``TypeError`` for an input that is no ``torch.Tensor``, with the
    conversion for what it is (no torch import: this module is a leaf).

    Example:
        >>> import numpy as np
        >>> str(not_a_tensor_error('x', np.zeros(3)))  # doctest: +ELLIPSIS
        'x must be a torch.Tensor (N, C, H, W), got numpy.ndarray; convert it with torch...'
    """
    got = _type_name(value)
    if got == 'numpy.ndarray':
        fix = (f'torch.from_numpy({name}).float() (an (H, W, C) image: '
               f'torch.from_numpy({name}).permute(2, 0, 1)[None].float())')
    elif got.startswith('PIL.'):
        fix = f'torchvision.transforms.functional.pil_to_tensor({name})[None].float()'
    elif isinstance(value, (list, tuple)):
        fix = f'torch.tensor({name}) (several tensors: torch.stack({name}))'
    else:
        fix = f'torch.as_tensor({name})'
    return TypeError(f'{name} must be a torch.Tensor {shape}, got {got}; convert it with {fix}')
