"""Shared helpers for the test suites (tiny models, random weights, comparisons)."""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

TOOLS = Path(__file__).resolve().parents[1] / 'tools'


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and BN buffer with random values (so that zero-init or
    identity BN cannot hide a wiring difference)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith('num_batches_tracked'):
                continue
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(('running_mean', 'bias')):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 1:  # norm weight
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return model


def reference_and_fast(**kw) -> tuple[nn.Module, nn.Module]:
    """(``fast=False``, ``fast=True``) ResNetV1Custom with ``base_channels=8`` and the
    same random weights (:func:`randomize_`); ``kw`` are the other constructor keywords."""
    from resnet_backbone import ResNetV1Custom
    ref = randomize_(ResNetV1Custom(fast=False, base_channels=8, **kw))
    fast = ResNetV1Custom(fast=True, base_channels=8, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest error of ``a`` relative to the reference ``b``'s largest value: the one
    measure every tolerance test here uses."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def grads_by_name(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (p.grad.clone() if p.grad is not None else None)
            for n, p in model.named_parameters()}


class OpCounter:
    """Context manager that records the aten/mkldnn ops dispatched while it is active
    (``.ops``: one ``str(func)`` per call), e.g. to count convolutions."""

    def __enter__(self) -> OpCounter:
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = self.ops = []

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                ops.append(str(func))
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def count(self, prefix: str) -> int:
        return sum(op.startswith(prefix) for op in self.ops)


def run_cli(capsys, monkeypatch, tool: str | Path, *args: str) -> tuple[int, str, str]:
    """Run a tool as ``python tools/<tool> args`` would (its ``__main__`` block), in-process
    (saves the ~10 s of imports a subprocess pays); returns (exit code, stdout, stderr).
    ``tool`` is a path, or a file name under ``tools/``."""
    path = Path(tool) if Path(tool).is_absolute() else TOOLS / tool
    monkeypatch.setattr(sys, 'argv', [str(path), *args])
    capsys.readouterr()
    try:
        runpy.run_path(str(path), run_name='__main__')
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def hooks_of_test_tool(monkeypatch, *argv: str) -> list[tuple[object, str]]:
    """The hooks ``rb-test ARGV`` registers on its Runner, as ``(hook, priority)``, with
    the checkpoint check, the data preparation and the Runner faked (nothing is run)."""
    import importlib
    tool = importlib.import_module('resnet_backbone.tools.test')
    hooks = []

    class FakeRunner:
        def register_hook(self, hook, priority):
            hooks.append((hook, priority))

        def test(self):
            return {}
    with monkeypatch.context() as m:
        for name in ('check_checkpoint_fits', 'prepare_data'):
            m.setattr(tool, name, lambda *a, **k: None)
        m.setattr(tool, 'build_runner', lambda *a, **k: FakeRunner())
        m.setattr(tool.Path, 'is_file', lambda self: True)
        tool.main(list(argv))
    return hooks


def backward_outputs(outs, seed: int = 1) -> None:
    """Backprop a random linear functional of the outputs (not just their sum)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
    loss.backward()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _mmengine_log_streams():
    """After each test, point mmengine's logger handlers that wrote to that test's captured
    (now closed) stdout back at the current one. mmengine makes a logger once per process
    and binds it to the ``sys.stdout`` of that moment: made inside a ``capsys`` test, every
    later test of the worker that logged through it printed ``--- Logging error ---``
    tracebacks (test_dump_rois before test_data_options)."""
    yield
    from mmengine.logging import MMLogger
    for logger in list(MMLogger._instance_dict.values()):
        for handler in logger.handlers:
            if getattr(getattr(handler, 'stream', None), 'closed', False):
                handler.stream = sys.stdout  # (setStream flushes the closed one first)


@pytest.fixture(scope='session')
def tiny_shapes(tmp_path_factory):
    """A tiny embedded data set (8 train / 4 val images of 64 px), made once per run."""
    from resnet_backbone.data.shapes import generate
    return generate(tmp_path_factory.mktemp('shapes'), num_train=8, num_val=4, size=64)


#: Test files by running time, longest first (from `--durations` of a CI run). With
#: ``--dist loadfile --no-loadscope-reorder`` (make test) xdist hands files out in this
#: collection order; by default it sorts them by test count, and the 2-test README walk
#: ran alone at the end while the other worker idled. Longest first keeps both busy.
LONGEST_FIRST = (
    'integration/test_readme.py',
    'test_resnext.py',
    'integration/test_demo.py',
    'integration/test_faults_train.py',
    'integration/test_own_data.py',
    'integration/test_train_eval.py',
    'integration/test_dump_scale.py',
    'integration/test_dump_compare.py',
    'integration/test_faults_dump.py',
    'test_export.py',
    'integration/test_resume.py',
    'integration/test_distributed.py',
    'integration/test_rois.py',
    'integration/test_dump.py',
    'integration/test_detection_default.py',
    'test_benchmark.py',
    'test_resnet_v2.py',
    'test_resnet_v2_tfslim.py',
)


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item) -> int:
        path = Path(str(item.fspath)).resolve()
        rel = path.relative_to(tests).as_posix() if path.is_relative_to(tests) else ''
        return rank.get(rel, len(rank))
    items.sort(key=key)  # stable: a file's own order is kept


def pytest_configure(config):
    """Under xdist, each worker (and every process it starts) gets its share of the cores.

    torch's default is one OpenMP thread per core in every process: ``-n 2`` on 2 cores
    ran 4 spinning threads, and tests/test_parity_mmdet.py -k 101 took 129 s instead of
    19 s (2026-11-30). An OMP_NUM_THREADS set by the user is kept."""
    workers = os.environ.get('PYTEST_XDIST_WORKER_COUNT')
    if workers and 'OMP_NUM_THREADS' not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ['OMP_NUM_THREADS'] = str(threads)  # the tools the tests start
        torch.set_num_threads(threads)
