"""Time ResNetV1Custom against mmdet's ResNet and torchvision's resnet, side by side.

``python tools/benchmark.py ARGS`` is the installed ``rb-benchmark ARGS``: both run
resnet_backbone/tools/benchmark.py, whose docstring and ``--help`` describe the arguments.
"""
import runpy

try:
    runpy.run_module('resnet_backbone.tools.benchmark', run_name='__main__', alter_sys=True)
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    from _shim import fail
    fail(exc)
