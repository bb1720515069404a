"""The command-line tools: each module's ``main(argv)`` is one tool, ``run()`` its entry.

Every tool is reachable three ways, all running the same ``main``:

=====================  ===========================  ==========================================
installed command      file in a checkout           module
=====================  ===========================  ==========================================
``rb-train``           ``python tools/train.py``    ``python -m resnet_backbone.tools.train``
``rb-test``            ``python tools/test.py``     ``resnet_backbone.tools.test``
``rb-dump``            ``tools/dump_features.py``   ``resnet_backbone.tools.dump_features``
``rb-convert``         ``tools/convert_weights.py`` ``resnet_backbone.tools.convert_weights``
``rb-export``          ``tools/export.py``          ``resnet_backbone.tools.export``
``rb-benchmark``       ``tools/benchmark.py``       ``resnet_backbone.tools.benchmark``
``rb-benchmark-dump``  ``tools/benchmark_dump.py``  ``resnet_backbone.tools.benchmark_dump``
``rb-compare-dumps``   ``tools/compare_dumps.py``   ``resnet_backbone.tools.compare_dumps``
``rb-demo``            ``tools/demo.py``            ``resnet_backbone.tools.demo``
``rb-doctor``          (none)                       ``python -m resnet_backbone.doctor``
=====================  ===========================  ==========================================

Each file under ``tools/`` is one ``runpy`` call that runs its module as ``python -m``
would (so ``python tools/train.py CONFIG`` works as mmdet users expect); the commands are
``[project.scripts]`` in pyproject.toml. Every tool ends through
:func:`~resnet_backbone.tools.runner.run_tool` (one line on error, exit 130 on Ctrl-C).
This package sits on top: it may import everything else in ``resnet_backbone``, and
nothing in the library imports it (the doctor imports the runner). This ``__init__`` and
the runner import only the standard library: the doctor must run when torch is broken.
"""
from __future__ import annotations

import sys
from pathlib import Path

#: installed command -> the module whose ``run()`` it calls (``[project.scripts]``)
COMMANDS = {
    'rb-train': 'train',
    'rb-test': 'test',
    'rb-dump': 'dump_features',
    'rb-convert': 'convert_weights',
    'rb-export': 'export',
    'rb-benchmark': 'benchmark',
    'rb-benchmark-dump': 'benchmark_dump',
    'rb-compare-dumps': 'compare_dumps',
    'rb-demo': 'demo',
}


def prog(default: str) -> str:
    """The name errors start with: the command as the user typed it (``rb-train`` or
    ``train.py``), else ``default``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ''
    return name if name and name not in ('-c', '-m', '__main__.py') else default
