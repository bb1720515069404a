"""Convert ResNet weights from torchvision / timm / detectron2 / mmpretrain / mmdet into a

``python tools/convert_weights.py ARGS`` is the installed ``rb-convert ARGS``: both run
resnet_backbone/tools/convert_weights.py, whose docstring and ``--help`` describe the arguments.
"""
import sys

try:
    from resnet_backbone.tools.convert_weights import *  # noqa: F403  (its names, for tests)
    from resnet_backbone.tools.convert_weights import run
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    if '--debug' in sys.argv:
        raise
    why = str(exc) if exc.name != 'resnet_backbone' else (
        "resnet_backbone is not installed in this Python; run 'bash tools/setup.sh' "
        '(it runs pip install -e .)')
    sys.exit(f'convert_weights.py: error: {why}')

if __name__ == '__main__':
    run()
