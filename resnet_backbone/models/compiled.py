"""``torch.compile`` (Inductor, frozen weights) for no-grad inference: the inference
snapshot's ``compile=True``.

The weights are graph constants, so the wrapper checks their version counters before
every call and compiles again after an in-place change: it never runs stale constants.

Example:
    >>> from resnet_backbone.models.resnet import ResNetV1Custom
    >>> net = ResNetV1Custom(depth=18, base_channels=8).eval()
    >>> fast = CompiledInference(net)  # compiles at the first call  # doctest: +SKIP
    >>> [tuple(o.shape) for o in fast(torch.rand(1, 3, 64, 64))]  # doctest: +SKIP
    [(1, 8, 16, 16), (1, 16, 8, 8), (1, 32, 4, 4), (1, 64, 2, 2)]
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time

import torch
from torch import nn

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def inductor_freezing():
    """Inductor's ``freezing`` on, for the graphs compiled inside (its config is global)."""
    import torch._inductor.config as cfg  # heavy (Inductor): imported only when compiling
    old = cfg.freezing
    cfg.freezing = True
    try:
        yield
    finally:
        cfg.freezing = old


class _NoCudaRuntimeNote(logging.Filter):
    """Inductor's import of ``torch.utils.cpp_extension`` logs "No CUDA runtime is found"
    as a WARNING on every machine without CUDA, where a CPU compile needs none: drop that
    one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'No CUDA runtime is found' not in record.getMessage()


_CPP_EXTENSION_LOG = logging.getLogger('torch.utils.cpp_extension')
if not any(isinstance(f, _NoCudaRuntimeNote) for f in _CPP_EXTENSION_LOG.filters):
    _CPP_EXTENSION_LOG.addFilter(_NoCudaRuntimeNote())


#: what Inductor looks for to build its CPU kernels (its own default list, plus $CXX)
CXX_NAMES = ('g++', 'c++', 'clang++')


def cpu_compiler() -> str | None:
    """The C++ compiler Inductor would build CPU kernels with, or None. The default install
    needs no compiler, so a machine may have none; on CUDA Inductor uses Triton instead."""
    for name in (os.environ.get('CXX'), *CXX_NAMES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def weights_stamp(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Where each parameter and buffer of ``module`` lives and its version counter: any
    in-place change (an optimiser step, ``load_state_dict``, a BN statistics update), a
    replaced tensor or a device move changes it. Python attribute reads only (no op)."""
    return tuple((t.data_ptr(), t._version)
                 for t in (*module.parameters(), *module.buffers()))


def _graph_count() -> int:
    # dynamo's own count of graphs compiled in this process; 0 where a torch lacks it
    counters = getattr(getattr(torch, '_dynamo', None), 'utils', None)
    counters = getattr(counters, 'counters', None)
    return int(counters['stats']['unique_graphs']) if counters is not None else 0


class CompiledInference(nn.Module):
    """``module.<method>`` compiled by Inductor (``freezing=True``), run under
    ``torch.no_grad``.

    Args:
        module: the module whose ``method`` to compile (e.g. a backbone, ``'forward'`` or
            ``'forward_levels'``). It is held, not copied: its weights are the graph's.
        method: the method's name.

    Attributes:
        compile_seconds: wall time of the calls that compiled a graph (the warm-up).
        graphs: graphs compiled by this wrapper.
    """

    def __init__(self, module: nn.Module, method: str = 'forward') -> None:
        super().__init__()
        self.module = module
        self.method = method
        self.compile_seconds = 0.0
        self.graphs = 0
        self._fn = None
        self._weights_version: tuple | None = None

    def _version(self) -> tuple:
        sync = getattr(self.module, 'sync', None)  # an inference snapshot: rebuild if stale
        if sync is not None:
            sync()
        return getattr(self.module, 'generation', 0), weights_stamp(self.module)

    def _compiled(self):
        version = self._version()
        if self._fn is None or version != self._weights_version:
            if self._fn is not None:
                logger.info('compile: the weights changed since the graph was compiled; '
                            'compiling again')
                # dynamo's caches are per code object, not per wrapper: only a reset
                # guarantees that no graph holding the old weights as constants runs again
                torch.compiler.reset()
            self._fn = torch.compile(getattr(self.module, self.method))
            self._weights_version = version
        return self._fn

    def forward(self, *args, **kwargs):
        on_cpu = any(isinstance(a, torch.Tensor) and a.device.type == 'cpu'
                     for a in (*args, *kwargs.values()))
        if on_cpu and cpu_compiler() is None:
            raise RuntimeError(
                'torch.compile (--compile, compile=True) needs a C++ compiler on CPU and '
                f'none is on PATH ({", ".join(CXX_NAMES)} or $CXX): install one '
                '(Debian/Ubuntu: apt-get install g++) or run without compiling')
        fn = self._compiled()
        before, t0 = _graph_count(), time.perf_counter()
        with torch.no_grad(), inductor_freezing():
            out = fn(*args, **kwargs)
        new = _graph_count() - before
        if new > 0:
            self.graphs += new
            self.compile_seconds += time.perf_counter() - t0
        return out

    def summary(self) -> str:
        """One line: graphs compiled and the warm-up time."""
        return (f'torch.compile: {self.graphs} graph(s) compiled in '
                f'{self.compile_seconds:.1f} s (warm-up, counted in the run time)')

