"""Train a detector from an mmdet config (mmengine Runner), like mmdet's tools/train.py.

``python tools/train.py ARGS`` is the installed ``rb-train ARGS``: both run
resnet_backbone/tools/train.py, whose docstring and ``--help`` describe the arguments.
"""
import runpy

try:
    runpy.run_module('resnet_backbone.tools.train', run_name='__main__', alter_sys=True)
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    from _shim import fail
    fail(exc)
