"""Writing test archives with the archive format's own writer, and rewriting them to tamper."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from audit.archive_format import (
    LINKING_NAME,
    LinkingFile,
    PreviousArchive,
    trust_material,
    write_archive,
)
from gateway.log_record import LogRecord
from tests.audit.evidence import Federation


def write_test_archive(
    directory: Path,
    federation: Federation,
    records: Sequence[LogRecord],
    *,
    sequence: int = 1,
    previous: tuple[Path, LinkingFile] | None = None,
    period_start: dt.datetime,
    period: dt.timedelta = dt.timedelta(hours=1),
) -> tuple[Path, LinkingFile]:
    trust = trust_material(federation.anchor_bytes(), federation.versions)
    previous_ref = None
    if previous is not None:
        path, linking = previous
        previous_ref = PreviousArchive(
            linking.sequence, path.name, hashlib.sha256(linking.to_bytes()).hexdigest()
        )
    buffer = io.BytesIO()
    linking, _ = write_archive(
        buffer,
        records,
        sequence=sequence,
        previous=previous_ref,
        period_start=period_start,
        period_end=period_start + period,
        created_at=period_start + period + dt.timedelta(minutes=1),
        trust=trust,
    )
    path = directory / linking.name
    path.write_bytes(buffer.getvalue())
    return path, linking


def rewrite_zip(
    path: Path,
    change: Callable[[str, bytes], bytes | None],
    *,
    add: dict[str, bytes] | None = None,
) -> None:
    """Rewrite a ZIP in place, each entry replaced by ``change(name, data)`` (None removes it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info, data)
        for name, data in (add or {}).items():
            dst.writestr(name, data)
    path.write_bytes(out.getvalue())


def rewrite_container(
    archive: Path, container: str, change: Callable[[str, bytes], bytes | None]
) -> None:
    """Change entries of one container inside an archive, keeping the container valid ASiC."""

    def outer(name: str, data: bytes) -> bytes | None:
        if name != container:
            return data
        inner_path = archive.with_suffix(".inner")
        inner_path.write_bytes(data)
        rewrite_zip(inner_path, change)
        result = inner_path.read_bytes()
        inner_path.unlink()
        return result

    rewrite_zip(archive, outer)


def read_linking(path: Path) -> LinkingFile:
    with zipfile.ZipFile(path) as zf:
        return LinkingFile.from_bytes(zf.read(LINKING_NAME))


def flip_byte(data: bytes, at: int = -1) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x01
    return bytes(changed)
