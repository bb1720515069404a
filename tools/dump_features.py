"""Dump backbone (C1-C5) and neck (P-levels) feature maps of images, with geometry.

``python tools/dump_features.py ARGS`` is the installed ``rb-dump ARGS``: both run
resnet_backbone/tools/dump_features.py, whose docstring and ``--help`` describe the arguments.
"""
import runpy

try:
    runpy.run_module('resnet_backbone.tools.dump_features', run_name='__main__', alter_sys=True)
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    from _shim import fail
    fail(exc)
