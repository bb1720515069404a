"""Compare two feature dumps of the same images, level by level.

``python tools/compare_dumps.py ARGS`` is the installed ``rb-compare-dumps ARGS``: both run
resnet_backbone/tools/compare_dumps.py, whose docstring and ``--help`` describe the arguments.
"""
import runpy

try:
    runpy.run_module('resnet_backbone.tools.compare_dumps', run_name='__main__', alter_sys=True)
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    from _shim import fail
    fail(exc)
