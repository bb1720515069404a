"""Run-time options of the fast path, one immutable object per context (stdlib only).

Every setting that changes how a block runs lives in one frozen :class:`Options`
held in a :class:`contextvars.ContextVar`. A change made with :func:`using` is seen by
the code running inside the ``with`` block, in this thread (or asyncio task) only, and
is undone on exit, nested changes included. A new thread starts from the defaults.

Example:
    >>> current().mkldnn_fusion
    True
    >>> with using(mkldnn_fusion=False):
    ...     current().mkldnn_fusion
    False
    >>> current().mkldnn_fusion
    True
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar


@dataclasses.dataclass(frozen=True)
class Options:
    """The fast path's settings (the defaults are what a plain forward uses).

    Attributes:
        mkldnn_fusion: Let folded convs run as oneDNN fused kernels (conv + bias, conv +
            add in place) where autograd records nothing. ``False``: plain ``F.conv2d``
            + add + ReLU on the folded weights (bitwise the same results).
        fold_always: Fold every foldable conv + eval BN whatever the input size
            (tests, export). ``False``: fold only where it pays (``fast.worth_folding``).
        recomputing: A checkpoint is recomputing a forward for backward (set by
            :mod:`resnet_backbone.models.checkpointing`, not by users).
    """

    mkldnn_fusion: bool = True
    fold_always: bool = False
    recomputing: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, bool):
                raise TypeError(f'{field.name} must be True or False; got {value!r}')


# (a frozen dataclass: sharing one default instance is safe)
_CURRENT: ContextVar[Options] = ContextVar('resnet_backbone_options',
                                           default=Options())  # noqa: B039


def current() -> Options:
    """The options in effect here (this thread / task, innermost :func:`using`)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(options: Options | None = None, **changes: bool) -> Iterator[Options]:
    """Run the ``with`` block under other options; the previous ones come back on exit.

    Args:
        options: Start from these options instead of the current ones (e.g. the options
            a forward pass ran under, replayed by its checkpoint recompute).
        **changes: Fields of :class:`Options` to change, e.g. ``fold_always=True``.

    Yields:
        The options in effect inside the block.

    Raises:
        TypeError: For an unknown option name or a value that is not a bool.
    """
    names = {f.name for f in dataclasses.fields(Options)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f'unknown option {unknown[0]!r}; allowed: {", ".join(sorted(names))}')
    new = dataclasses.replace(options if options is not None else current(), **changes)
    token = _CURRENT.set(new)
    try:
        yield new
    finally:
        _CURRENT.reset(token)
