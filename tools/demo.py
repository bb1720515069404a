"""The main job: train a detector with ResNetV1Custom + FPN on the embedded data set.

``python tools/demo.py ARGS`` is the installed ``rb-demo ARGS``: both run
resnet_backbone/tools/demo.py, whose docstring and ``--help`` describe the arguments.
"""
import runpy

try:
    runpy.run_module('resnet_backbone.tools.demo', run_name='__main__', alter_sys=True)
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    from _shim import fail
    fail(exc)
