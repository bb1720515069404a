"""The main job: train a detector with ResNetV1Custom + FPN on the embedded data set.

``python tools/demo.py ARGS`` is the installed ``rb-demo ARGS``: both run
resnet_backbone/tools/demo.py, whose docstring and ``--help`` describe the arguments.
"""
import sys

try:
    from resnet_backbone.tools.demo import *  # noqa: F403  (its names, for tests)
    from resnet_backbone.tools.demo import run
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    if '--debug' in sys.argv:
        raise
    why = str(exc) if exc.name != 'resnet_backbone' else (
        "resnet_backbone is not installed in this Python; run 'bash tools/setup.sh' "
        '(it runs pip install -e .)')
    sys.exit(f'demo.py: error: {why}')

if __name__ == '__main__':
    run()
