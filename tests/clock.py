"""The clock tests set and move by hand, instead of waiting for time to pass.

Every part of Jisr that reads the time takes a ``clock``: a callable returning an aware UTC
datetime. Tests pass a :class:`Clock` and move it.
"""

from __future__ import annotations

import datetime as dt


class Clock:
    """Returns ``now``; ``step`` is added after every reading (zero: it stands still)."""

    def __init__(self, now: dt.datetime, step: dt.timedelta = dt.timedelta()) -> None:
        if now.tzinfo is None:
            raise ValueError("a test clock tells aware (UTC) times")
        self.now = now
        self.step = step

    def __call__(self) -> dt.datetime:
        now = self.now
        self.now += self.step
        return now

    def advance(self, **delta: float) -> None:
        """Move the clock forward by ``datetime.timedelta(**delta)``."""
        self.now += dt.timedelta(**delta)
