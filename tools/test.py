"""Evaluate a checkpoint with mmdet's COCO metric (mmengine Runner), like mmdet's tools/test.py.

``python tools/test.py ARGS`` is the installed ``rb-test ARGS``: both run
resnet_backbone/tools/test.py, whose docstring and ``--help`` describe the arguments.
"""
import runpy

try:
    runpy.run_module('resnet_backbone.tools.test', run_name='__main__', alter_sys=True)
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    from _shim import fail
    fail(exc)
