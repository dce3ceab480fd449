"""Files written so that a crash or a concurrent reader never sees half of one.

Rules: :func:`write_atomically` writes a temporary file in the target's own directory (so the
rename cannot cross file systems), flushes and fsyncs it, sets its mode, then renames it over
the target. A reader sees the old bytes or the new ones; a crash leaves the old file and at
worst a stray ``.<name>.*.tmp`` beside it, never a truncated target. The temporary file is
created with mode 0600, so secrets written with ``mode=0o600`` are never readable by others,
not even for a moment. Every package may use this module; it imports nothing of Jisr's.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new bytes only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
