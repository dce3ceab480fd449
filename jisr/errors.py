"""Errors of the ``jisr`` tools themselves, in Jisr's one exception tree.

Rules: each message names the process that failed and where its log is, so that a failed
``jisr demo`` (or benchmark run) can be diagnosed from the one line it prints::

    JisrError
    └── ChildProcessFailed        a child process failed, or did not finish in time
        └── ChildNotReady         it exited or stayed silent before it was ready
"""

from __future__ import annotations

from config.errors import JisrError


class ChildProcessFailed(JisrError):
    """A child process exited with an error, did not finish in time or announced too little."""


class ChildNotReady(ChildProcessFailed):
    """A child process exited, or stayed silent, before it said that it was ready."""
