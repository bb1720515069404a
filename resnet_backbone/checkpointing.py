"""Gradient checkpointing for residual blocks, done right.

mmdet calls ``torch.utils.checkpoint.checkpoint(fn, x)``. On current torch that warns
on every forward (no explicit ``use_reentrant``), and it skips any block whose input
does not require grad (the first block after frozen stages), because the reentrant
variant would silently give that block's parameters no gradient. It also lets a
train-mode BatchNorm update its running statistics twice per step (once in forward,
once in the recompute; pytorch#96136).

Here: the non-reentrant variant (correct gradients whatever the input), explicit so it
never warns, and a recompute context that restores BatchNorm's running statistics
after the recompute (which normalises with batch statistics anyway, so outputs and
gradients are unchanged).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _running_stats_restored(norms: list[_BatchNorm]) -> Iterator[None]:
    """Put the running statistics back as they were once the recompute is done.

    (Switching ``track_running_stats`` off instead would change what batch_norm saves
    for backward, which the checkpoint's recompute check rejects.)
    """
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)
              if b is not None] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, bufs in zip(norms, saved):
                live = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked)
                        if b is not None]
                for b, old in zip(live, bufs):
                    b.copy_(old)


def checkpointed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 module: nn.Module) -> torch.Tensor:
    """Run ``fn(x)`` under non-reentrant checkpointing on behalf of ``module``.

    Train-mode BatchNorm layers inside ``module`` update their running statistics in
    the forward pass only, never again in the backward recompute.
    """
    norms = [m for m in module.modules()
             if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    if not norms or torch.compiler.is_compiling():
        # Nothing to restore; or torch.compile, which has no custom context_fn and
        # replays buffer updates from the forward graph only (its recompute lives in the
        # backward graph and does not touch the running statistics).
        return checkpoint(fn, x, use_reentrant=False)

    def context_fn():
        return contextlib.nullcontext(), _running_stats_restored(norms)

    return checkpoint(fn, x, use_reentrant=False, context_fn=context_fn)
