"""The browsable report of a dump folder: ``index.html`` (filled in by issue 20)."""
from __future__ import annotations

from pathlib import Path


def write_report(out_dir: str | Path) -> Path | None:
    """Write ``out_dir/index.html`` from ``index.json``; returns its path."""
    return None
