"""The vocabulary every layer shares: the architecture table, stem types, styles,
output shapes, the one choice check (:func:`check_choice`, :func:`choice_error`), the
backbones' argument checks (:func:`positive_int`, :func:`check_bool`, :func:`per_stage`,
:func:`check_out_indices`, ...) and the one "not a tensor" message
(:func:`not_a_tensor_error`).

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

#: depth -> (block kind, blocks per stage). The one source of truth for the layouts:
#: ``models.resnet.ARCH_SETTINGS`` maps the kinds onto the block classes, ResNeXt and
#: ResNet v2 take the bottleneck depths' counts.
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


# ---------------------------------------------------------------- argument checks
# One-line errors, each naming the argument, what is wrong with it and what it takes.
# ``bool`` is an int to Python; where a count or an index is meant, True is refused.

def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool``.

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: object, *, optional: bool = False) -> int | None:
    """``value`` if it is an int >= 1 (or None where ``optional``), else a one-line error.

    Raises:
        ValueError: ``'<name> must be a positive int; got <value!r>'``.

    Example:
        >>> positive_int('base_channels', 64)
        64
        >>> positive_int('in_channels', True)
        Traceback (most recent call last):
        ...
        ValueError: in_channels must be a positive int; got True
    """
    if (optional and value is None) or (is_int(value) and value >= 1):
        return value
    or_none = ' or None' if optional else ''
    raise ValueError(f'{name} must be a positive int{or_none}; got {value!r}')


def check_bool(name: str, value: object, *, optional: bool = False) -> bool | None:
    """``value`` if it is True or False (or None where ``optional``), else a one-line error.

    Raises:
        TypeError: ``'<name> must be True or False; got <value!r>'``.

    Example:
        >>> check_bool('conv_bias', None, optional=True) is None
        True
        >>> check_bool('norm_eval', 'yes')
        Traceback (most recent call last):
        ...
        TypeError: norm_eval must be True or False; got 'yes'
    """
    if isinstance(value, bool) or (optional and value is None):
        return value
    allowed_values = 'True, False or None' if optional else 'True or False'
    raise TypeError(f'{name} must be {allowed_values}; got {value!r}')


def check_rate(name: str, value: object) -> float:
    """``value`` as a float if it is a number in [0, 1), else a one-line error.

    Example:
        >>> check_rate('drop_path_rate', 0)
        0.0
    """
    if is_int(value) or isinstance(value, float):
        if 0.0 <= value < 1.0:
            return float(value)
    raise ValueError(f'{name} must be a float in [0, 1); got {value!r}')


def per_stage(name: str, value: object, num_stages: int, kind: type, *,
              default: Sequence | None = None, broadcast: bool = False) -> tuple:
    """One entry per stage: positive ints (``kind=int``: strides, dilations) or bools
    (``kind=bool``: with_cp, stage_with_dcn), as a tuple.

    Args:
        name: the argument.
        value: what was given; None takes ``default``.
        num_stages: how many entries it needs.
        kind: ``int`` or ``bool``.
        default: the value for None.
        broadcast: a single ``kind`` value counts for every stage (``with_cp=True``).

    Raises:
        TypeError: not a sequence, or (bools) an entry that is no bool.
        ValueError: the wrong length, or (ints) an entry that is no positive int.

    Example:
        >>> per_stage('with_cp', True, 2, bool, broadcast=True)
        (True, True)
        >>> per_stage('strides', (1, 2), 3, int)
        Traceback (most recent call last):
        ...
        ValueError: strides must have one entry per stage: num_stages=3 but len(strides)=2 ((1, 2))
    """
    if value is None and default is not None:
        value = default
    if broadcast and isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return (value,) * num_stages
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        single = f' or one {kind.__name__} for all' if broadcast else ''
        raise TypeError(f'{name} must be a sequence of {num_stages} {kind.__name__}s '
                        f'(one per stage){single}; got {value!r}')
    if len(value) != num_stages:
        raise ValueError(f'{name} must have one entry per stage: num_stages={num_stages} '
                         f'but len({name})={len(value)} ({tuple(value)!r})')
    if kind is int and not all(is_int(v) and v >= 1 for v in value):
        raise ValueError(f'{name} must hold positive ints; got {tuple(value)!r}')
    if kind is bool and not all(isinstance(v, bool) for v in value):
        raise TypeError(f'{name} must hold bools (True or False); got {tuple(value)!r}')
    return tuple(value)


def check_out_indices(out_indices: object, num_stages: int) -> tuple[int, ...]:
    """``out_indices`` as a tuple if it is a non-empty, sorted, unique sequence of stage
    indices in ``0..num_stages - 1``, else a one-line error.

    Raises:
        TypeError: not a non-empty sequence (an int: ``3`` for ``(3,)``).
        ValueError: an index out of range (or no int), or unsorted or repeated indices.

    Example:
        >>> check_out_indices([1, 3], 4)
        (1, 3)
        >>> check_out_indices((2, 1), 4)
        Traceback (most recent call last):
        ...
        ValueError: out_indices=(2, 1) must be sorted and unique, e.g. (1, 2)
    """
    if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence) \
            or not out_indices:
        example = (out_indices,) if is_int(out_indices) else tuple(range(num_stages))
        raise TypeError(f'out_indices must be a non-empty sequence of stage indices '
                        f'in 0..{num_stages - 1}, e.g. {example!r}; got {out_indices!r}')
    out_indices = tuple(out_indices)
    if not all(is_int(i) and 0 <= i < num_stages for i in out_indices):
        raise choice_error(f'out_indices={out_indices!r} out of range', range(num_stages),
                           f' (num_stages={num_stages})')
    if list(out_indices) != sorted(set(out_indices)):
        raise ValueError(f'out_indices={out_indices!r} must be sorted and unique, e.g. '
                         f'{tuple(sorted(set(out_indices)))!r}')
    return out_indices


def check_frozen_stages(frozen_stages: object, num_stages: int) -> int:
    """``frozen_stages`` if it is an int in ``-1..num_stages``, else a one-line error.

    Example:
        >>> check_frozen_stages(5, 4)
        Traceback (most recent call last):
        ...
        ValueError: frozen_stages=5 is out of range; allowed values: -1..4 (num_stages=4)
    """
    if not (is_int(frozen_stages) and -1 <= frozen_stages <= num_stages):
        raise choice_error(f'frozen_stages={frozen_stages!r} is out of range',
                           f'-1..{num_stages}', f' (num_stages={num_stages})')
    return frozen_stages


def resolve_stem_type(stem_type: str | None, deep_stem: bool) -> str:
    """The stem layout from ``stem_type`` and mmdet's alias ``deep_stem``.

    Example:
        >>> resolve_stem_type(None, True), resolve_stem_type('small', False)
        ('deep', 'small')
    """
    if stem_type is None:
        return 'deep' if deep_stem else 'classic'
    check_choice('stem_type', stem_type, STEM_TYPES)
    if deep_stem and stem_type != 'deep':
        raise ValueError(f"deep_stem=True conflicts with stem_type={stem_type!r}; "
                         "use stem_type='deep' (deep_stem is its alias) or drop deep_stem")
    return stem_type
