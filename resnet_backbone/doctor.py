"""``python -m resnet_backbone.doctor``: check the installed stack, name what is broken.

Prints the versions of Python, torch (CPU or CUDA build), torchvision, mmengine, mmcv
(which ``mmcv._ext`` backend is active: mmcv's compiled ops, and whether they were built
for the installed torch, or this project's torchvision backend for mmcv-lite, with the
ops it does not provide), mmdet and
numpy, whether CUDA is available, and whether ``ResNetV1Custom`` resolves in mmdet's
registry; last, which row of the tested version matrix (docs/versions.md) the environment is
(Python minor version + the constraints file whose pins it matches). Exits 1 on a broken stack,
with one ``FIX:`` line per broken piece.

It must run whatever is broken, since that is when it is needed: it imports only the
standard library at the top, and ``resnet_backbone/__init__.py`` (which Python imports
first) keeps its import error instead of raising it when started as this module.
"""
from __future__ import annotations

import glob
import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

SETUP = "run 'bash tools/setup.sh' from the repo root"
# tools/setup.sh writes this next to mmcv's package when it installs an mmcv build:
# {"torch": <torch.__version__ it was built against>, "ext": <_ext file name>,
#  "ext_sha256": <its hash>, "source": <the wheel, or "adopted: ...">}
MMCV_RECORD = 'BUILT_WITH_TORCH.json'


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ''
    required: bool = True


def _version(module: str) -> str:
    return getattr(importlib.import_module(module), '__version__', 'unknown')


def _guard(name: str, fix: str, fn: Callable[[], str], required: bool = True) -> Check:
    try:
        return Check(name, True, fn(), required=required)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check(name, False, f'{type(exc).__name__}: {msg}', fix, required)


def _python() -> str:
    if sys.version_info < (3, 10):  # noqa: UP036  (the doctor may run on any Python)
        raise RuntimeError(f'Python {platform.python_version()} is older than 3.10')
    return platform.python_version()


def _torch() -> str:
    import torch
    build = f'CUDA {torch.version.cuda} build' if torch.version.cuda else 'CPU-only build'
    return f'{torch.__version__} ({build})'


def _torchvision() -> str:
    import torch
    import torchvision
    torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    return f'{torchvision.__version__} (ops load)'


def _mmcv() -> str:
    version = _version('mmcv')
    importlib.import_module('mmcv.cnn')  # what the backbone builds its layers with
    return f'{version} (mmcv.cnn loads)'


def _mmcv_ext() -> str:
    ext = importlib.import_module('mmcv._ext')
    if getattr(ext, 'BACKEND', None) != 'torchvision':
        return f'compiled ops load ({os.path.basename(getattr(ext, "__file__", "?"))})'
    importlib.import_module('mmcv.ops')  # asserts every name it calls, at import
    names = _mmcv_ext_names()
    missing = sorted(n for n in names if getattr(getattr(ext, n), 'missing', False))
    return (f"torchvision backend (resnet_backbone/ops/mmcv_ext.py, no compiled ops): "
            f"{len(names) - len(missing)} of mmcv's {len(names)} ops; unavailable: "
            f"{', '.join(_op_families(missing))} (MMCV_OPS=compiled bash tools/setup.sh "
            "builds them)")


def _mmcv_ext_names() -> list[str]:
    """Every ``mmcv._ext`` function mmcv's ops modules ask for, read from their source."""
    import mmcv
    names: set[str] = set()
    for path in glob.glob(os.path.join(os.path.dirname(mmcv.__file__), 'ops', '*.py')):
        with open(path) as f:
            for m in re.finditer(r"load_ext\(\s*'_ext',\s*\[(.*?)\]", f.read(), re.S):
                names.update(re.findall(r"'(\w+)'", m[1]))
    return sorted(names)


def _op_families(names: list[str]) -> list[str]:
    """Names grouped by op (``carafe_forward``, ``carafe_backward`` -> ``carafe``)."""
    families = dict.fromkeys(re.sub(r'_(forward|backward)(_\w+)?$', '', n) for n in names)
    return list(families)


def _mmcv_built_for_torch() -> str:
    """mmcv._ext links torch's C++ ABI: an mmcv built against another torch may import
    and then crash or compute garbage. Compare setup's record with the installed torch."""
    import mmcv
    import torch
    if getattr(importlib.import_module('mmcv._ext'), 'BACKEND', None) == 'torchvision':
        return 'nothing built: mmcv-lite, ops from torchvision (built with torch)'
    pkg = os.path.dirname(mmcv.__file__)
    path = os.path.join(pkg, MMCV_RECORD)
    if not os.path.exists(path):
        return (f'unknown: no {MMCV_RECORD} in {pkg} (mmcv was not installed by '
                'tools/setup.sh, which records it)')
    with open(path) as f:
        record = json.load(f)
    ext = os.path.join(pkg, record['ext'])
    if not os.path.exists(ext):
        return f'unknown: the recorded build {record["ext"]} is gone (mmcv was reinstalled)'
    with open(ext, 'rb') as f:
        if hashlib.sha256(f.read()).hexdigest() != record['ext_sha256']:
            return (f'unknown: {MMCV_RECORD} describes another build of {record["ext"]} '
                    '(mmcv was reinstalled outside tools/setup.sh)')
    if record['torch'] != torch.__version__:
        raise RuntimeError(f'mmcv._ext was built for torch {record["torch"]}, but torch '
                           f'{torch.__version__} is installed')
    adopted = (' (adopted by setup from an older install, not verified)'
               if str(record.get('source', '')).startswith('adopted') else '')
    return f'mmcv._ext built for torch {record["torch"]}, the installed one{adopted}'


STACK_PINS = ('torch', 'torchvision', 'mmengine', 'mmcv', 'mmdet', 'numpy')
STACKS = {'constraints.txt': 'default stack', 'constraints-latest.txt': 'STACK=latest',
          'constraints-onedl.txt': 'STACK=onedl'}
#: The maintained forks install the same import packages under these distribution names;
#: a constraints file that pins one of them means that piece.
FORKS = {'mmengine': 'onedl-mmengine', 'mmcv': 'onedl-mmcv', 'mmdet': 'onedl-mmdetection'}


def _installed_versions() -> dict[str, str]:
    """Version (local label dropped) of each stack distribution, upstream and fork."""
    installed = {}
    for name in (*STACK_PINS, *FORKS.values()):
        try:
            installed[name] = importlib.metadata.version(name).split('+')[0]
        except importlib.metadata.PackageNotFoundError:
            installed[name] = 'not installed'
    # mmcv-lite (the default) and the fork built without ops are the pinned mmcv's Python
    for name, lite in (('mmcv', 'mmcv-lite'), ('onedl-mmcv', 'onedl-mmcv-lite')):
        if installed[name] == 'not installed':
            try:
                installed[name] = importlib.metadata.version(lite).split('+')[0]
            except importlib.metadata.PackageNotFoundError:
                pass
    return installed


_MARKER = re.compile(r'^python_version\s*(<=|>=|==|!=|<|>)\s*["\']([0-9.]+)["\']$')


def read_pins(path: str, python: tuple[int, int] | None = None) -> dict[str, str]:
    r"""``NAME==VERSION`` pins of a constraints file that apply on ``python`` (default: this one).

    A pin may carry a ``; python_version OP "X.Y"`` marker, as pip reads it (constraints.txt
    pins numpy and onnxruntime per Python, since their pinned releases need >= 3.11). Only that
    marker is understood here: the doctor imports nothing outside the standard library, so it
    cannot lean on ``packaging``. Any other marker is a ``LookupError`` naming the line.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False) as f:
        ...     _ = f.write('numpy==2.4.6; python_version >= "3.11"\n'
        ...                 'numpy==2.2.6; python_version < "3.11"  # the newest for 3.10\n')
        >>> read_pins(f.name, (3, 10)), read_pins(f.name, (3, 13))
        ({'numpy': '2.2.6'}, {'numpy': '2.4.6'})
    """
    python = python or sys.version_info[:2]
    ops = {'<': tuple.__lt__, '<=': tuple.__le__, '>': tuple.__gt__, '>=': tuple.__ge__,
           '==': tuple.__eq__, '!=': tuple.__ne__}
    pins: dict[str, str] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            spec, _, marker = line.split('#')[0].partition(';')
            if '==' not in spec:
                continue
            if marker.strip():
                m = _MARKER.match(marker.strip())
                if not m:
                    raise LookupError(f'{os.path.basename(path)} line {number}: the doctor '
                                      f'understands only python_version markers, not '
                                      f'{marker.strip()!r}')
                if not ops[m[1]](python, tuple(int(x) for x in m[2].split('.'))):
                    continue
            name, version = (x.strip() for x in spec.split('==', 1))
            pins[name] = version
    return pins


def _matrix_row(root: str | None = None) -> str:
    """The version-matrix row (docs/versions.md): Python X.Y + the stack whose pins match
    what is installed."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = sorted(glob.glob(os.path.join(root, 'constraints*.txt')))
    if not files:
        raise LookupError(f'no constraints*.txt in {root} (not a source checkout)')
    installed = _installed_versions()
    py = f'Python {sys.version_info[0]}.{sys.version_info[1]}'
    first_diffs = None
    for path in sorted(files, key=lambda f: os.path.basename(f) != 'constraints.txt'):
        pins = read_pins(path)
        dists = [FORKS[n] if FORKS.get(n) in pins else n for n in STACK_PINS]
        diffs = [f'{n} {installed[n]} (pinned {pins[n]})' for n in dists
                 if n in pins and installed[n] != pins[n]]
        name = os.path.basename(path)
        if not diffs:
            return (f'{py} + {STACKS.get(name, name)} ({name}: torch {installed["torch"]}, '
                    f'torchvision {installed["torchvision"]})')
        first_diffs = first_diffs or (name, diffs)
    raise LookupError(f'{py}, but no constraints file matches: {first_diffs[0]} differs in '
                      + ', '.join(first_diffs[1]))


def _cuda() -> str:
    import torch
    if torch.cuda.is_available():
        return f'yes, {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}'
    return 'no (CPU only; fine for this project)'


def _registry() -> str:
    from mmdet.registry import MODELS

    from resnet_backbone import ResNetV1Custom  # noqa: F401  (registers; re-raises a
    # failed import of the package, kept by its __init__ in the doctor's process)
    cls = MODELS.get('ResNetV1Custom')
    if cls is None:
        raise LookupError("ResNetV1Custom is not in mmdet's MODELS registry")
    return f'ResNetV1Custom -> {cls.__module__}.{cls.__qualname__}'


def run_checks() -> list[Check]:
    """Run every check; never raises."""
    return [
        _guard('python', 'install Python >= 3.10 and re-run setup', _python),
        _guard('torch', SETUP + ' (installs torch from the registry)', _torch),
        _guard('torchvision', "torchvision's ops need the registry build of torch, not the "
               "local '+cpu' wheel: " + SETUP, _torchvision),
        _guard('mmengine', SETUP, lambda: _version('mmengine')),
        _guard('mmcv', SETUP + ' (builds mmcv from source)', _mmcv),
        _guard('mmcv._ext', "mmcv has no compiled ops and resnet_backbone's torchvision "
               "backend is not found (its .pth hook is installed with this project): "
               + SETUP + " (or MMCV_OPS=compiled bash tools/setup.sh, which builds mmcv's "
               "own)", _mmcv_ext),
        _guard('mmcv build', "rebuild mmcv for the installed torch: " + SETUP + " (it builds "
               "mmcv once per torch version and records which)", _mmcv_built_for_torch),
        _guard('mmdet', SETUP, lambda: _version('mmdet')),
        _guard('numpy', SETUP, lambda: _version('numpy')),
        _guard('cuda', '', _cuda, required=False),
        _guard('registry', "make sure 'import resnet_backbone' works (pip install -e .) and "
               "that configs use default_scope='mmdet'", _registry),
        _guard('matrix row', '', _matrix_row, required=False),
    ]


def main(argv: list[str] | None = None) -> int:
    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = 'ok ' if c.ok else ('BAD' if c.required else '-- ')
        print(f'[{mark}] {c.name:<{width}}  {c.detail}')
    broken = [c for c in checks if c.required and not c.ok]
    if broken:
        print()
        for c in broken:
            # a failure that only repeats an earlier one (names its module, or says the
            # same thing) gets no FIX line
            cause = next((b.name for b in broken[:broken.index(c)]
                          if re.search(rf'\b{re.escape(b.name)}\b', c.detail)
                          or b.detail == c.detail), None)
            if cause is None:
                print(f'FIX: {c.name} is broken ({c.detail}); {c.fix}')
        return 1
    print('\nall good: the stack is complete.')
    return 0


def cli(argv: list[str] | None = None) -> None:
    """``rb-doctor`` and ``python -m resnet_backbone.doctor``: ``--help`` says what is
    checked; it takes no other argument (a mistyped one is one line, exit 2)."""
    from resnet_backbone.tools import prog  # stdlib only, like this module
    from resnet_backbone.tools.runner import ToolParser, run_tool

    def checked(args: list[str] | None) -> int:
        ToolParser(prog=prog('python -m resnet_backbone.doctor'),
                   description='Check the installed stack and name what is broken.'
                   ).parse_args(args)
        return main()

    sys.exit(run_tool(prog('python -m resnet_backbone.doctor'), checked, argv))


if __name__ == '__main__':
    cli()
