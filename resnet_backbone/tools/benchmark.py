"""``rb-benchmark``: runs ``benchmarks/benchmark.py`` of the checkout this package is
installed from, with the same arguments (its docstring and ``--help`` describe them).

The benchmarks are measurement code: they live in the checkout's ``benchmarks/``, beside
the package, not in it. Without a checkout this says so in one line.
"""
from __future__ import annotations

from . import benchmark_script, prog
from .runner import run_tool


def main(argv=None) -> dict:
    return benchmark_script('benchmark').main(argv)


def run() -> None:
    """``rb-benchmark``: :func:`main`, one-line errors."""
    run_tool(prog('benchmark.py'), main)


if __name__ == '__main__':
    run()
