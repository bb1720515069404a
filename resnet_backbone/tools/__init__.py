"""The command-line tools: each module's ``main(argv)`` is one tool, ``run()`` its entry.

Every tool is reachable three ways, all running the same ``main``:

=====================  =================================  =========================================
installed command      file in a checkout                 module
=====================  =================================  =========================================
``rb-train``           ``python tools/train.py``          ``python -m resnet_backbone.tools.train``
``rb-test``            ``python tools/test.py``           ``resnet_backbone.tools.test``
``rb-dump``            ``tools/dump_features.py``         ``resnet_backbone.tools.dump_features``
``rb-convert``         ``tools/convert_weights.py``       ``resnet_backbone.tools.convert_weights``
``rb-export``          ``tools/export.py``                ``resnet_backbone.tools.export``
``rb-benchmark``       ``benchmarks/benchmark.py``        ``resnet_backbone.tools.benchmark``
``rb-benchmark-dump``  ``benchmarks/benchmark_dump.py``   ``resnet_backbone.tools.benchmark_dump``
``rb-compare-dumps``   ``tools/compare_dumps.py``         ``resnet_backbone.tools.compare_dumps``
``rb-demo``            ``tools/demo.py``                  ``resnet_backbone.tools.demo``
``rb-doctor``          (none)                             ``python -m resnet_backbone.doctor``
=====================  =================================  =========================================

Each file under ``tools/`` is one ``runpy`` call that runs its module as ``python -m``
would (so ``python tools/train.py CONFIG`` works as mmdet users expect); the commands are
``[project.scripts]`` in pyproject.toml. The benchmarks are the other way round: their
code is measurement code in the checkout's ``benchmarks/`` (not installed, as timm and
mmdet keep theirs), and ``rb-benchmark`` / ``rb-benchmark-dump`` run it from the checkout
the package is installed from (:func:`benchmark_script`). Every tool ends through
:func:`~resnet_backbone.tools.runner.run_tool` (one line on error, exit 130 on Ctrl-C).
This package sits on top: it may import everything else in ``resnet_backbone``, and
nothing in the library imports it (the doctor imports the runner). This ``__init__`` and
the runner import only the standard library: the doctor must run when torch is broken.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from ..errors import ToolError

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


#: the checkout's measurement code, beside this package when it is installed from a
#: checkout (``pip install -e .``); an install from a wheel has none
BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` of the checkout, imported as ``python benchmarks/<name>.py``
    would run it (its folder first on ``sys.path``, for the modules beside it); a
    :class:`ToolError` saying how to get a checkout when this install has none."""
    # an install from a wheel has site-packages above the package, never a pyproject.toml
    if not ((BENCHMARKS.parent / 'pyproject.toml').is_file()
            and (BENCHMARKS / f'{name}.py').is_file()):
        raise ToolError(f'the benchmarks run from a checkout of resnet_backbone, and this '
                        f'install is not in one ({BENCHMARKS.parent} holds no pyproject.toml '
                        f"and benchmarks/{name}.py): clone the repository, run 'bash "
                        f"tools/setup.sh' in it, then 'python benchmarks/{name}.py --help'")
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)
