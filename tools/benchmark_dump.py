"""Time a feature dump against the forward alone, on the same images, in one run.

``python tools/benchmark_dump.py ARGS`` is the installed ``rb-benchmark-dump ARGS``: both run
resnet_backbone/tools/benchmark_dump.py, whose docstring and ``--help`` describe the arguments.
"""
import sys

try:
    from resnet_backbone.tools.benchmark_dump import *  # noqa: F403  (its names, for tests)
    from resnet_backbone.tools.benchmark_dump import run
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    if '--debug' in sys.argv:
        raise
    why = str(exc) if exc.name != 'resnet_backbone' else (
        "resnet_backbone is not installed in this Python; run 'bash tools/setup.sh' "
        '(it runs pip install -e .)')
    sys.exit(f'benchmark_dump.py: error: {why}')

if __name__ == '__main__':
    run()
