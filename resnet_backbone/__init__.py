"""resnet_backbone: a ResNet feature-extraction backbone for MMDetection.

``import resnet_backbone`` registers ``ResNetV1Custom`` (and the V1c/V1d presets) in
mmdet's ``MODELS`` registry. It imports neither ``mmdet.models`` nor ``mmcv.ops``.

When the torch / mmengine / mmcv stack is broken, ``import resnet_backbone`` raises one
``ImportError`` that names the broken package and the fix, without the cause's traceback
(set ``RESNET_BACKBONE_DEBUG=1`` to see it). The one exception is
``python -m resnet_backbone.doctor``: Python imports this package before the doctor, and
the doctor must run whatever is broken, so there the error is kept (and raised on first
use of a name from this package) instead.
"""
from __future__ import annotations

import os
import sys

from .version import __version__  # noqa: F401  (a leaf: importable with a broken stack)

__all__ = ['ARCH_SETTINGS', 'BasicBlock', 'Bottleneck', 'BottleneckX', 'DropPath',
           'FrozenBatchNorm2d', 'PreActBottleneck', 'ResLayer', 'ResNeXtCustom',
           'ResNetV1Custom', 'ResNetV1cCustom', 'ResNetV1dCustom', 'ResNetV2Custom',
           'ShapeSpec']

#: ``python -m <this>`` may import the package while its dependencies are broken
DOCTOR = 'resnet_backbone.doctor'
#: options of the python executable that take a separate argument (``-X dev``)
_PY_OPTS_WITH_ARG = ('-W', '-X', '--check-hash-based-pycs')


def _started_as_doctor(argv: list[str] | None = None) -> bool:
    """Was this interpreter started as ``python [options] -m resnet_backbone.doctor``, or
    as the ``rb-doctor`` command (its console script)?"""
    argv = list(getattr(sys, 'orig_argv', ()) if argv is None else argv)
    it = iter(argv[1:])
    for arg in it:
        if arg == '-m':
            return next(it, None) == DOCTOR
        if arg.startswith('-m'):
            return arg[2:] == DOCTOR
        if arg in _PY_OPTS_WITH_ARG:
            next(it, None)
        elif arg == '-c' or arg == '-' or not arg.startswith('-'):
            # -c CODE, stdin, or a script: only the rb-doctor script is the doctor
            return os.path.basename(arg) == 'rb-doctor'

    return False


#: how a broken install fails an import: a module missing or half installed
#: (ImportError, ModuleNotFoundError), a shared library that does not load (OSError:
#: torch's libtorch_cpu.so), a file cut short (SyntaxError). Anything else raised on
#: import (a warning that ``-W error`` turned into an exception, a dependency's own
#: RuntimeError) is no install fault: it is raised as it is, never blamed on the install.
_INSTALL_FAILURES = (ImportError, OSError, SyntaxError)


def _culprit(exc: BaseException) -> str:
    """The top-level package whose import failed (``mmcv`` for ``mmcv.cnn``).

    '' when the failure is in this package's own code (a bug, not a broken stack), or
    is not the kind a broken install gives (:data:`_INSTALL_FAILURES`).
    """
    if not isinstance(exc, _INSTALL_FAILURES):
        return ''
    name = getattr(exc, 'name', None)
    if isinstance(exc, ImportError) and name and name.split('.')[0] != __name__:
        return name.split('.')[0]
    if isinstance(exc, SyntaxError) and exc.filename:  # no frame of the broken file
        parts = exc.filename.replace('\\', '/').split('/')
        for i, part in enumerate(parts[:-1]):
            if part in ('site-packages', 'dist-packages') and parts[i + 1] != __name__:
                return parts[i + 1].removesuffix('.py')
        return ''
    culprit = ''
    tb = exc.__traceback__
    while tb is not None:  # the first frame outside this package and importlib
        module = str(tb.tb_frame.f_globals.get('__name__', ''))
        top = module.split('.')[0]
        if top and top not in (__name__, 'importlib') and not top.startswith('_frozen'):
            culprit = top
            break
        tb = tb.tb_next
    return culprit


def _import_error(exc: BaseException) -> ImportError:
    """One line: which dependency is broken, what it said, and the fix."""
    culprit = _culprit(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ''
    said = f'{type(exc).__name__}: {first}' if first else type(exc).__name__
    err = ImportError(f'resnet_backbone cannot be imported: {culprit} is broken ({said}); '
                      f"run 'bash tools/setup.sh' from the repo root, or "
                      f"'python -m resnet_backbone.doctor' to see what is wrong")
    err.name = culprit
    return err


def _warning_note(exc: Warning) -> str:
    """What a warning raised as an exception on import is: not a broken install."""
    return (f'resnet_backbone: this {type(exc).__name__} was raised as an exception by a '
            'warnings filter (-W error, PYTHONWARNINGS or warnings.filterwarnings); the '
            'install is fine: ignore this warning in that filter, or do not turn it into '
            'an error')


try:
    from .engine.compat import torchscript_deprecations_ignored
    with torchscript_deprecations_ignored():
        # mmengine.model -> mmengine.optim -> torch.distributed.optim, which scripts its
        # optimizers on import: 67 DeprecationWarnings from torch >= 2.13 (TorchScript is
        # deprecated) that no user can act on; ignored here only, for this one import
        import mmengine.model  # noqa: F401
    from . import registry  # noqa: F401  (registers the backbones)
    from .models.blocks import BasicBlock, Bottleneck, BottleneckX, DropPath, PreActBottleneck
    from .models.norm import FrozenBatchNorm2d
    from .models.resnet import (
        ARCH_SETTINGS,
        ResNetV1cCustom,
        ResNetV1Custom,
        ResNetV1dCustom,
        ResNeXtCustom,
    )
    from .models.resnet_v2 import ResNetV2Custom
    from .models.stages import ResLayer
    from .spec import ShapeSpec
except Exception as _exc:  # noqa: BLE001 - a broken stack fails in many ways (OSError, ...)
    if not _started_as_doctor():
        if not _culprit(_exc):
            if isinstance(_exc, Warning) and hasattr(_exc, 'add_note'):  # Python >= 3.11
                _exc.add_note(_warning_note(_exc))
            raise  # not an install fault: its own traceback says where
        if os.environ.get('RESNET_BACKBONE_DEBUG', '') not in ('', '0'):  # cli.debug_enabled
            raise _import_error(_exc) from _exc  # with the cause's traceback
        raise _import_error(_exc) from None  # one line: the cause is named in it
    _IMPORT_ERROR = _import_error(_exc) if _culprit(_exc) else _exc

    def __getattr__(name: str):
        # Only reached in the doctor's process: any name of the package re-raises the error.
        if name.startswith('__'):
            raise AttributeError(name)
        raise _IMPORT_ERROR
else:
    _IMPORT_ERROR = None
