"""Convert ResNet weights from torchvision / timm / detectron2 / mmpretrain / mmdet into a

``python tools/convert_weights.py ARGS`` is the installed ``rb-convert ARGS``: both run
resnet_backbone/tools/convert_weights.py, whose docstring and ``--help`` describe the arguments.
"""
import runpy

try:
    runpy.run_module('resnet_backbone.tools.convert_weights', run_name='__main__', alter_sys=True)
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    from _shim import fail
    fail(exc)
