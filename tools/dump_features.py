"""Dump backbone (C1-C5) and neck (P-levels) feature maps of images, with geometry.

``python tools/dump_features.py ARGS`` is the installed ``rb-dump ARGS``: both run
resnet_backbone/tools/dump_features.py, whose docstring and ``--help`` describe the arguments.
"""
import sys

try:
    from resnet_backbone.tools.dump_features import *  # noqa: F403  (its names, for tests)
    from resnet_backbone.tools.dump_features import run
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    if '--debug' in sys.argv:
        raise
    why = str(exc) if exc.name != 'resnet_backbone' else (
        "resnet_backbone is not installed in this Python; run 'bash tools/setup.sh' "
        '(it runs pip install -e .)')
    sys.exit(f'dump_features.py: error: {why}')

if __name__ == '__main__':
    run()
