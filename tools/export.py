"""Export the backbone (optionally with its FPN) to ONNX or TorchScript, and check it.

``python tools/export.py ARGS`` is the installed ``rb-export ARGS``: both run
resnet_backbone/tools/export.py, whose docstring and ``--help`` describe the arguments.
"""
import sys

try:
    from resnet_backbone.tools.export import *  # noqa: F403  (its names, for tests)
    from resnet_backbone.tools.export import run
except ImportError as exc:  # not installed, or a broken dependency: one line, and the fix
    if '--debug' in sys.argv:
        raise
    why = str(exc) if exc.name != 'resnet_backbone' else (
        "resnet_backbone is not installed in this Python; run 'bash tools/setup.sh' "
        '(it runs pip install -e .)')
    sys.exit(f'export.py: error: {why}')

if __name__ == '__main__':
    run()
