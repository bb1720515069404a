"""Compare two feature dumps of the same images: per level cosine similarity and max and
mean relative difference (and the RoI features where both dumps have them).

    python tools/compare_dumps.py DIR_A DIR_B [--no-progress]

Installed as ``rb-compare-dumps``; ``python tools/compare_dumps.py`` runs the same code.

DIR_A is the reference (e.g. the float32 dump), DIR_B the dump to check (float16 or
bfloat16, a converted checkpoint, the fast mode). Both are ``rb-dump --out`` folders of
the same images; images are matched by their path relative to the folder. Prints a
table, writes ``DIR_B/compare.json`` and rebuilds DIR_B's report (``index.html``) with a
section showing it. The metrics
are defined in resnet_backbone/apis/dump/compare.py and docs/dump_compare.md.
"""
from __future__ import annotations

import argparse

from ..apis.dump.compare import RESULT_FILE, compare_dumps, format_table
from ..apis.dump.report import write_report
from . import prog
from .runner import ToolParser, run_tool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ToolParser(prog=prog('compare_dumps.py'),
                   description=' '.join(__doc__.split('\n\n')[0].split()))  # 1st sentence
    p.add_argument('dir_a', metavar='DIR_A', help='the reference dump folder')
    p.add_argument('dir_b', metavar='DIR_B',
                   help=f'the dump folder to check; {RESULT_FILE} is written there')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Compare, print the table, write DIR_B/compare.json and DIR_B's report; returns the
    result."""
    args = parse_args(argv)
    result = compare_dumps(args.dir_a, args.dir_b, progress=not args.no_progress)
    print(format_table(result))
    print(f'written: {args.dir_b}/{RESULT_FILE}'.replace('//', '/'))
    page = write_report(args.dir_b)  # its comparison section now, not at the next dump
    if page is not None:
        print(f'report: {page}')
    return result


def run() -> None:
    """``rb-compare-dumps`` / ``python tools/compare_dumps.py``."""
    run_tool(prog('compare_dumps.py'), main)


if __name__ == '__main__':
    run()
