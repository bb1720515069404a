"""How our command-line tools end: one line on error, exit 130 on Ctrl-C.

Every tool (``resnet_backbone/tools/*.py``, the ``rb-*`` commands) runs its ``main``
through :func:`run_tool`. A failure prints one line ``<tool>: error: <what is wrong and
the fix>`` and exits 1; Ctrl-C prints one line ``<tool>: interrupted ...`` (with the
tool's resume hint) and exits 130. The full traceback is printed when ``--debug`` is on
the command line or the environment sets ``RESNET_BACKBONE_DEBUG=1``.

This module, like this package's ``__init__``, imports only the standard library (and
:mod:`resnet_backbone.errors`, which does too): the doctor uses it, and must work
whatever else is broken.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ToolError

DEBUG_ENV = 'RESNET_BACKBONE_DEBUG'


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    """True when ``--debug`` is in ``argv`` (default ``sys.argv``) or the env var is set."""
    argv = sys.argv[1:] if argv is None else argv
    return '--debug' in argv or os.environ.get(DEBUG_ENV, '') not in ('', '0')


def strip_debug(argv: Sequence[str] | None) -> list[str] | None:
    """``argv`` without ``--debug`` (argparse of each tool need not know the flag)."""
    if argv is None:
        argv = sys.argv[1:]
    return [a for a in argv if a != '--debug']


def one_line(exc: BaseException) -> str:
    """The exception as one line: its first non-empty message line, else its type name.

    torch's ``weights_only`` hint ("re-running torch.load with weights_only=False ...")
    is never passed on: it is dangerous advice for a file the user did not write.
    """
    text = str(exc).strip()
    if isinstance(exc, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1] if len(text) > 1 else text
    if 'Weights only load failed' in text:
        return weights_only_refusal(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if 'weights_only' not in ln] or lines
    if not lines:
        return type(exc).__name__
    line = lines[0]
    if isinstance(exc, (ToolError, ValueError, TypeError, FileNotFoundError,
                        PermissionError, OSError, KeyError)):
        return line
    return f'{type(exc).__name__}: {line}'


def weights_only_refusal(text: str, path: str = '') -> str:
    """One line for torch's "Weights only load failed" error, without its advice.

    torch suggests re-running with ``weights_only=False``, which executes whatever code
    the file carries: dangerous advice for a file the user did not write. Instead this
    names the refused class and says what to do with a file one trusts.
    """
    m = re.search(r'Unsupported global: GLOBAL (\S+)', text)
    what = f'it pickles {m.group(1)}' if m else 'it pickles Python objects'
    where = f'{path}: ' if path else ''
    return (f'{where}not a plain weights file ({what}, which a safe weights-only load '
            'refuses); if you trust it, re-save it as a state dict: '
            'torch.save(model.state_dict(), path)')


class ToolParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose mistakes are one line, as every other tool error
    is: ``<prog>: error: <what>``, exit 2 (argparse's code for a command-line mistake),
    without the usage block (``--help`` shows it)."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message}\n')


def run_tool(name: str, main: Callable[[list[str] | None], Any],
             argv: Sequence[str] | None = None, resume_hint: str = '') -> Any:
    """Run ``main(argv)`` as the command-line tool ``name``; see the module docstring.

    Args:
        name: the tool's file name, e.g. ``'train.py'``; it starts every message.
        main: the tool's entry point; it receives ``argv`` without ``--debug``.
        argv: the arguments (default ``sys.argv[1:]``).
        resume_hint: what to run to continue after Ctrl-C, e.g. ``'re-run with --resume'``.

    Returns:
        Whatever ``main`` returns (tests call the tools in-process).
    """
    debug = debug_enabled(argv)
    try:
        return main(strip_debug(argv))
    except KeyboardInterrupt:
        if debug:
            raise
        hint = f'; {resume_hint}' if resume_hint else ''
        print(f'{name}: interrupted (Ctrl-C){hint}', file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the whole point: one line for any failure
        if debug:
            raise
        print(f'{name}: error: {one_line(exc)} (full traceback: --debug or {DEBUG_ENV}=1)',
              file=sys.stderr)
        raise SystemExit(1) from None
