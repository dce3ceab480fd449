"""Errors of the benchmark harness, in Jisr's one exception tree.

Rules: each message names the process or step that failed and where its log is, so a failed
``make bench`` can be diagnosed from the one line it prints.
"""

from __future__ import annotations

from config.errors import JisrError


class BenchError(JisrError):
    """A process of the benchmark did not start, did not answer, or a step failed."""
