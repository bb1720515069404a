"""The one line a ``tools/*.py`` file ends with when it cannot run its module.

Each of those files runs ``resnet_backbone.tools.<name>`` as ``python -m`` would (one
``runpy`` call). When this Python has no ``resnet_backbone``, or a dependency it imports
is broken, that fails with an ``ImportError``: this prints what is wrong and the fix in
one line, and exits 1 (``--debug`` or ``RESNET_BACKBONE_DEBUG=1``: the traceback).
"""
import os
import sys


def fail(exc: ImportError) -> None:
    """Exit with ``<file>: error: <why>``; re-raise ``exc`` in debug mode."""
    if '--debug' in sys.argv or os.environ.get('RESNET_BACKBONE_DEBUG', '') not in ('', '0'):
        raise exc
    # runpy reports a missing package as the cause of its own ImportError
    cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
    if cause.name == 'resnet_backbone':
        why = ("resnet_backbone is not installed in this Python; run 'bash tools/setup.sh' "
               '(it runs pip install -e .)')
    else:
        why = str(exc)
    sys.exit(f'{os.path.basename(sys.argv[0])}: error: {why}')
