"""Time a feature dump against the forward alone, on the same images, in one run.

``python tools/benchmark_dump.py ARGS`` is the installed ``rb-benchmark-dump ARGS``: both run
resnet_backbone/tools/benchmark_dump.py, whose docstring and ``--help`` describe the arguments.
"""
import runpy

try:
    runpy.run_module('resnet_backbone.tools.benchmark_dump', run_name='__main__', alter_sys=True)
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    from _shim import fail
    fail(exc)
