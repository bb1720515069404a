"""The error the library raises for a user's mistake: its message is the one line to read.

Library code (``apis``, ``io``, ``engine``) raises it, and so do the tools; the tools'
runner (:func:`resnet_backbone.tools.runner.run_tool`) prints its message without a
traceback. It lives here, below both, so that the library does not import the command
line.

Example:
    >>> str(ToolError('--input: no such folder: /nonexistent; pass an existing folder'))
    '--input: no such folder: /nonexistent; pass an existing folder'
"""
from __future__ import annotations


class ToolError(Exception):
    """An error whose message is already the one line a user should read."""
