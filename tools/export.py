"""Export the backbone (optionally with its FPN) to ONNX or TorchScript, and check it.

``python tools/export.py ARGS`` is the installed ``rb-export ARGS``: both run
resnet_backbone/tools/export.py, whose docstring and ``--help`` describe the arguments.
"""
import runpy

try:
    runpy.run_module('resnet_backbone.tools.export', run_name='__main__', alter_sys=True)
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    from _shim import fail
    fail(exc)
