"""Compare two feature dumps of the same images, level by level.

``python tools/compare_dumps.py ARGS`` is the installed ``rb-compare-dumps ARGS``: both run
resnet_backbone/tools/compare_dumps.py, whose docstring and ``--help`` describe the arguments.
"""
import sys

try:
    from resnet_backbone.tools.compare_dumps import *  # noqa: F403  (its names, for tests)
    from resnet_backbone.tools.compare_dumps import run
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    if '--debug' in sys.argv:
        raise
    why = str(exc) if exc.name != 'resnet_backbone' else (
        "resnet_backbone is not installed in this Python; run 'bash tools/setup.sh' "
        '(it runs pip install -e .)')
    sys.exit(f'compare_dumps.py: error: {why}')

if __name__ == '__main__':
    run()
