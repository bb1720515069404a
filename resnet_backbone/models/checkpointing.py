"""Gradient checkpointing for residual blocks: non-reentrant, BN statistics updated once.

The recompute restores every BatchNorm's running statistics, replays the forward's
:class:`~resnet_backbone.options.Options`, and skips a last conv that provably feeds only
the residual add. Design and measurements: ``docs/fast_path.md``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import options
from .norm import is_batch_norm


def recomputing() -> bool:
    """True while :func:`checkpointed` recomputes a forward for backward (this context).

    Never under ``torch.compile``: its recompute lives in the compiled backward graph,
    not in :func:`checkpointed`'s context (and dynamo cannot read a ContextVar).
    """
    if torch.compiler.is_compiling():
        return False
    return options.current().recomputing


def _stat_buffers(norm: nn.Module) -> list[torch.Tensor]:
    return [b for b in (getattr(norm, name, None) for name in
                        ('running_mean', 'running_var', 'num_batches_tracked'))
            if isinstance(b, torch.Tensor)]


@contextlib.contextmanager
def _recompute_context(norms: list[nn.Module], forward_options: options.Options
                       ) -> Iterator[None]:
    with options.using(forward_options, recomputing=True), _running_stats_restored(norms):
        yield


@contextlib.contextmanager
def _running_stats_restored(norms: list[nn.Module]) -> Iterator[None]:
    """Put the running statistics back as they were once the recompute is done.

    (Switching ``track_running_stats`` off instead would change what batch_norm saves
    for backward, which the checkpoint's recompute check rejects.)
    """
    saved = [[b.clone() for b in _stat_buffers(m)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, bufs in zip(norms, saved):
                for b, old in zip(_stat_buffers(m), bufs):
                    b.copy_(old)


def updates_running_stats(module: nn.Module) -> bool:
    """Does ``module`` update BatchNorm running statistics in its forward pass?

    Every BatchNorm flavour (``norm.is_batch_norm``: torch's BN/SyncBN and mmcv's
    ``MMSyncBN``) in train mode that tracks running statistics.
    """
    return is_batch_norm(module) and module.training \
        and getattr(module, 'track_running_stats', True)


def checkpointed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 module: nn.Module, preserve_rng_state: bool = True) -> torch.Tensor:
    """Run ``fn(x)`` under non-reentrant checkpointing on behalf of ``module``.

    Train-mode BatchNorm layers inside ``module`` update their running statistics in
    the forward pass only, never again in the backward recompute, and the recompute
    runs under the options the forward ran under.

    Args:
        fn: The computation to checkpoint (a block's residual branch + shortcut + add).
        x: Its input; the only tensor kept between forward and backward.
        module: The module ``fn`` belongs to (its BatchNorm layers are protected).
        preserve_rng_state: Save the RNG state and replay it in the recompute; needed only
            where ``fn`` draws random numbers (drop path, dropout). Saving it costs a CPU
            and a CUDA RNG state copy per call.

    Returns:
        ``fn(x)``.
    """
    if torch.compiler.is_compiling():
        # torch.compile has no custom context_fn; it replays buffer updates from the
        # forward graph only (its recompute lives in the backward graph and does not touch
        # the running statistics) and prunes unused recompute itself.
        return checkpoint(fn, x, use_reentrant=False, preserve_rng_state=preserve_rng_state)
    norms = [m for m in module.modules() if updates_running_stats(m)]
    forward_options = options.current()

    def context_fn():
        return contextlib.nullcontext(), _recompute_context(norms, forward_options)

    return checkpoint(fn, x, use_reentrant=False, context_fn=context_fn,
                      preserve_rng_state=preserve_rng_state)
