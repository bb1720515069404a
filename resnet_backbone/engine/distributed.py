"""Multi-process training on mmengine's DDP, also on machines without a GPU.

mmengine 0.10.7 assumes CUDA under a distributed launcher: ``init_dist('pytorch')``
calls ``torch.cuda.set_device`` and the Runner wraps the model with
``device_ids=[LOCAL_RANK]``; both fail on a CPU machine. On such a machine we
(1) create the process group ourselves with the ``gloo`` backend before the Runner
looks (the Runner then skips ``init_dist``), and (2) wrap with
:class:`CPUDistributedDataParallel`, which drops ``device_ids`` for CPU modules.
Everything else (samplers, gradient all-reduce, rank-0 checkpoints) is mmengine's.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module(force=True)
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also accepts a CPU module."""

    def __init__(self, module: torch.nn.Module, device_ids=None, **kwargs) -> None:
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


def init_cpu_process_group(launcher: str) -> bool:
    """Initialise a gloo process group when launched distributed without CUDA.

    Returns True if it did (the config must then use :class:`CPUDistributedDataParallel`).
    """
    if launcher == 'none' or torch.cuda.is_available() or dist.is_initialized():
        return False
    if launcher == 'slurm':  # map slurm's variables onto torch's
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
        os.environ.setdefault('MASTER_PORT', '29500')
        os.environ.setdefault('MASTER_ADDR', os.environ.get('SLURM_LAUNCH_NODE_IPADDR',
                                                            '127.0.0.1'))
    dist.init_process_group(backend='gloo')
    return True


def init_process_group(launcher: str, device: str = 'cpu') -> str:
    """Join the job's process group for a tool that is no Runner (the dump); returns the
    device this rank computes on.

    With CUDA: mmengine's ``init_dist`` (nccl; the rank's GPU, ``cuda:LOCAL_RANK``, when
    ``device`` is ``'cuda'``); without: a gloo group (:func:`init_cpu_process_group`).
    ``launcher='none'`` joins nothing and returns ``device``.
    """
    if launcher == 'none' or dist.is_initialized():
        return device
    if torch.cuda.is_available():
        from mmengine.dist import init_dist  # mmengine.dist: only for a distributed run
        init_dist(launcher)
        if device == 'cuda':
            return f'cuda:{torch.cuda.current_device()}'
        return device
    init_cpu_process_group(launcher)
    return device


@contextlib.contextmanager
def process_group_closed() -> Iterator[None]:
    """Destroy the default process group when the job ends, on success or error.

    Left to interpreter exit, gloo's worker threads are sometimes torn down while still
    joinable: the process aborts with "terminate called without an active exception"
    (exit -6) after the job itself finished (seen once in a CI torchrun run).
    """
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
