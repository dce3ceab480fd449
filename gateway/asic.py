"""ASiC-E containers (ETSI EN 319 162-1): a ZIP of data objects with signatures beside them.

Rules:

- Sans-IO: :func:`build_container` turns entries into bytes and :func:`parse_container` bytes
  into entries; neither touches a file, a clock or the network.
- The first ZIP entry is ``mimetype``, stored uncompressed with no extra field, holding exactly
  :data:`MIMETYPE`, so the media type can be read at byte offset 38 as ASiC requires.
- ``META-INF/manifest.xml`` (OASIS OpenDocument manifest form) lists every data object (every
  entry outside ``META-INF/``) with its media type, and nothing else. Entries under
  ``META-INF/`` (signatures, timestamp tokens) are not listed, as in OpenDocument.
- Entry names are relative, ASCII ``[A-Za-z0-9._-]`` segments separated by ``/``; absolute
  names, ``.``/``..`` segments, backslashes and duplicates are refused, so a container can be
  unpacked anywhere without escaping the target directory.
- Building is deterministic: the same entries and time give the same bytes, so a container's
  digest names its content. The ZIP is written here directly (local headers, central
  directory, end record; no ZIP64, no data descriptors), which costs a fraction of
  :mod:`zipfile`'s per-entry work; :mod:`zipfile` and ``unzip`` read it like any other ZIP.
- Each entry is stored or deflated, whichever the content calls for: DER and CMS objects
  (signatures, timestamp tokens, OCSP responses), inclusion proofs, hex digests and anything
  under :data:`MIN_DEFLATE_BYTES` are stored; the rest is deflated at level 1 and stored
  instead when deflating does not make it smaller (already-compressed data). A reader accepts
  both methods for every entry but ``mimetype`` (always stored).
- Parsing is bounded before anything is decompressed: total size, entry count and the declared
  size of every entry are checked first, only stored and deflated entries are read, and the
  CRC of each is checked by the reader. A container that breaks a rule raises
  :class:`AsicError` naming the entry and the rule.
- What the signatures cover is not decided here; the caller (the archiver, the auditor) knows
  which data object each signature and token is over.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

from config.errors import ValidationError
from gateway.faults import FaultError
from gateway.xml_safety import parse_xml

MIMETYPE: Final = "application/vnd.etsi.asic-e+zip"
MANIFEST_NAME: Final = "META-INF/manifest.xml"
MANIFEST_NS: Final = "urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"

#: Largest container parsed: two 10 MiB bodies and their evidence fit with room to spare.
MAX_CONTAINER_BYTES: Final = 64 * 1024 * 1024
#: Largest single entry, once decompressed.
MAX_ENTRY_BYTES: Final = 32 * 1024 * 1024
#: Largest sum of all decompressed entries.
MAX_TOTAL_BYTES: Final = 96 * 1024 * 1024
MAX_ENTRIES: Final = 1024
MAX_MANIFEST_BYTES: Final = 1024 * 1024
MAX_NAME_LENGTH: Final = 255

#: Entries shorter than this are stored: deflate's own framing would eat what it saves.
MIN_DEFLATE_BYTES: Final = 128
#: Deflate level of the entries that are compressed: level 1 keeps most of level 6's saving on
#: JSON, PEM and XML at a third of the CPU.
DEFLATE_LEVEL: Final = 1
#: Media types (and name suffixes) of content that does not compress: DER structures with
#: signatures or hashes, inclusion proofs, and hex digests.
_INCOMPRESSIBLE_TYPES: Final = frozenset(
    {
        "application/pkcs7-signature",
        "application/vnd.etsi.timestamp-token",
        "application/ocsp-response",
        "application/pkix-cert",
        "application/timestamp-reply",
    }
)
_INCOMPRESSIBLE_SUFFIXES: Final = (".p7s", ".tst", ".der", ".hex", "proof.bin")
#: Bodies this long are probed (their first :data:`_PROBE_BYTES` deflated) before being
#: deflated whole, so that an already-compressed body costs only the probe.
_PROBE_FROM: Final = 64 * 1024
_PROBE_BYTES: Final = 16 * 1024
_PROBE_RATIO: Final = 0.95

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
_MEDIA_TYPE_RE: Final = re.compile(r"[^\s]+")
_ZIP_EPOCH: Final = dt.datetime(1980, 1, 1, tzinfo=dt.UTC)
_LOCAL_HEADER: Final = b"PK\x03\x04"
_MANIFEST: Final = f"{{{MANIFEST_NS}}}"


class AsicError(ValidationError):
    """A container does not follow the ASiC-E rules Jisr builds and reads."""


@dataclasses.dataclass(frozen=True, slots=True)
class AsicEntry:
    """One file of a container: its name, its bytes and (for data objects) its media type."""

    name: str
    data: bytes
    media_type: str = "application/octet-stream"

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.media_type, str) or not _MEDIA_TYPE_RE.fullmatch(self.media_type):
            raise AsicError(f"entry {self.name}: media type {self.media_type!r} is not valid")

    @property
    def is_data_object(self) -> bool:
        """Whether the manifest lists this entry (everything outside ``META-INF/``)."""
        return not self.name.startswith("META-INF/")


@dataclasses.dataclass(frozen=True, slots=True)
class AsicContainer:
    """A parsed container: its entries in ZIP order, without ``mimetype`` and the manifest."""

    entries: tuple[AsicEntry, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for entry in self.entries:
            if entry.name in seen:
                raise AsicError(f"entry {entry.name} appears twice")
            seen.add(entry.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self.entries)

    def __iter__(self) -> Iterator[AsicEntry]:
        return iter(self.entries)

    def get(self, name: str) -> bytes | None:
        for entry in self.entries:
            if entry.name == name:
                return entry.data
        return None

    def as_mapping(self) -> Mapping[str, bytes]:
        return {e.name: e.data for e in self.entries}


#: Names already checked and found good: containers repeat the same few names, and a
#: check is a regular expression and a split. Bounded; only good names are kept.
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX: Final = 4096


def check_name(name: str) -> str:
    """Refuse an entry name that could escape a directory or be read two ways."""
    if type(name) is str and name in _GOOD_NAMES:  # a list or dict is not hashable
        return name
    if (
        not isinstance(name, str)
        or len(name) > MAX_NAME_LENGTH
        or not _NAME_RE.fullmatch(name)
        or any(part in (".", "..") for part in name.split("/"))
    ):
        raise AsicError(
            f"entry name {name!r} is not allowed: use relative names of letters, digits, '.', "
            f"'_' and '-' separated by '/', at most {MAX_NAME_LENGTH} characters"
        )
    if name in ("mimetype", MANIFEST_NAME):
        raise AsicError(f"entry name {name} is reserved for the container itself")
    if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES.add(name)
    return name


def _zip_time(when: dt.datetime) -> tuple[int, int, int, int, int, int]:
    if when.tzinfo is None:
        raise ValueError("the container time must be timezone-aware")
    utc = max(when.astimezone(dt.UTC), _ZIP_EPOCH)
    # ZIP stores local times with two-second resolution and no zone; UTC is written.
    return (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second - utc.second % 2)


_MANIFEST_HEAD: Final = (
    "<?xml version='1.0' encoding='UTF-8' standalone='yes'?>\n"
    f'<manifest:manifest xmlns:manifest="{MANIFEST_NS}" manifest:version="1.2">'
    f'<manifest:file-entry manifest:full-path="/" manifest:media-type="{MIMETYPE}"/>'
)
_XML_ATTRIBUTE_ESCAPES: Final = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
)


def manifest_xml(entries: Sequence[AsicEntry]) -> bytes:
    """The ``META-INF/manifest.xml`` listing the data objects among ``entries``.

    Written as text (the bytes lxml's serialiser gives for the same tree): entry names are
    restricted to characters that need no escaping, media types to non-blank text, escaped.
    """
    parts = [_MANIFEST_HEAD]
    for entry in entries:
        if entry.is_data_object:
            media_type = entry.media_type.translate(_XML_ATTRIBUTE_ESCAPES)
            parts.append(
                f'<manifest:file-entry manifest:full-path="{entry.name}" '
                f'manifest:media-type="{media_type}"/>'
            )
    parts.append("</manifest:manifest>")
    return "".join(parts).encode("utf-8")


def _dos_time(when: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    year, month, day, hour, minute, second = when
    return (hour << 11) | (minute << 5) | (second // 2), ((year - 1980) << 9) | (month << 5) | day


def _stored(entry: AsicEntry) -> bool:
    """Whether ``entry`` is stored without trying to deflate it."""
    return (
        len(entry.data) < MIN_DEFLATE_BYTES
        or entry.media_type in _INCOMPRESSIBLE_TYPES
        or entry.name.endswith(_INCOMPRESSIBLE_SUFFIXES)
    )


def _deflate(data: bytes) -> bytes | None:
    """``data`` deflated (raw, level :data:`DEFLATE_LEVEL`), or None when that does not make
    it smaller. Long data is probed first, so incompressible data costs only the probe."""
    if len(data) >= _PROBE_FROM:
        probe = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
        sample = probe.compress(data[:_PROBE_BYTES]) + probe.flush()
        if len(sample) > _PROBE_BYTES * _PROBE_RATIO:
            return None
    compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    packed = compressor.compress(data) + compressor.flush()
    return packed if len(packed) < len(data) else None


#: Version 2.0 (deflate), made on Unix (3), as :mod:`zipfile` writes.
_VERSION: Final = 20
_MADE_BY: Final = (3 << 8) | _VERSION
_FILE_ATTRIBUTES: Final = 0o100644 << 16
_LOCAL: Final = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL: Final = struct.Struct("<4sHHHHHHIIIHHHHHII")
_END: Final = struct.Struct("<4sHHHHIIH")
#: The most a plain (not ZIP64) ZIP can hold: offsets and sizes are 32-bit.
_ZIP32_LIMIT: Final = 0xFFFFFFFF


def _zip(
    members: Sequence[tuple[str, bytes, bool]], when: tuple[int, int, int, int, int, int]
) -> bytes:
    """A ZIP of ``(name, data, compress)`` members in order; ``compress`` deflates unless
    deflating does not help. Names are ASCII (checked by :func:`check_name`)."""
    time, date = _dos_time(when)
    out: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for name, data, compress in members:
        encoded_name = name.encode("ascii")
        crc = zlib.crc32(data)
        packed = _deflate(data) if compress else None
        method = zipfile.ZIP_STORED if packed is None else zipfile.ZIP_DEFLATED
        content = data if packed is None else packed
        common = (_VERSION, 0, method, time, date, crc, len(content), len(data))
        header = _LOCAL.pack(b"PK\x03\x04", *common, len(encoded_name), 0)
        # comment length, disk number, internal attributes, external attributes, offset
        trailer = (0, 0, 0, _FILE_ATTRIBUTES, offset)
        central.append(
            _CENTRAL.pack(b"PK\x01\x02", _MADE_BY, *common, len(encoded_name), 0, *trailer)
            + encoded_name
        )
        out += (header, encoded_name, content)
        offset += len(header) + len(encoded_name) + len(content)
    directory = b"".join(central)
    if offset + len(directory) > _ZIP32_LIMIT:
        raise AsicError("the container would exceed 4 GiB; it cannot be written")
    out.append(directory)
    out.append(
        _END.pack(b"PK\x05\x06", 0, 0, len(central), len(central), len(directory), offset, 0)
    )
    return b"".join(out)


def build_container(
    entries: Sequence[AsicEntry], *, modified: dt.datetime, compress: bool = True
) -> bytes:
    """The container bytes: ``mimetype``, the manifest, then ``entries`` in the order given.

    ``modified`` is written as every entry's time; the same arguments give the same bytes.
    Entries worth deflating are deflated (see the module's rules) unless ``compress`` is false.
    """
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise AsicError("two entries have the same name; every name must be unique")
    if len(entries) + 2 > MAX_ENTRIES:
        raise AsicError(f"a container holds at most {MAX_ENTRIES - 2} entries")
    members = [
        ("mimetype", MIMETYPE.encode("ascii"), False),
        (MANIFEST_NAME, manifest_xml(entries), compress),
    ]
    members += [(e.name, e.data, compress and not _stored(e)) for e in entries]
    return _zip(members, _zip_time(modified))


def _check_mimetype_header(data: bytes) -> None:
    expected = MIMETYPE.encode("ascii")
    if len(data) < 30 or data[:4] != _LOCAL_HEADER:
        raise AsicError("the container is not a ZIP file (it does not start with a local header)")
    flags, method = struct.unpack_from("<HH", data, 6)
    name_len, extra_len = struct.unpack_from("<HH", data, 26)
    if data[30 : 30 + name_len] != b"mimetype":
        raise AsicError("the first entry of the container is not 'mimetype' (ASiC requires it)")
    if method != 0 or extra_len != 0 or flags & 0x1:
        raise AsicError(
            "the 'mimetype' entry must be stored uncompressed, unencrypted and without an "
            "extra field, so its content starts at byte 38"
        )
    start = 30 + name_len
    if data[start : start + len(expected)] != expected:
        raise AsicError(f"the 'mimetype' entry does not hold {MIMETYPE}")


def _read_manifest(data: bytes) -> dict[str, str]:
    try:
        root = parse_xml(data, max_bytes=MAX_MANIFEST_BYTES, what="ASiC manifest")
    except FaultError as exc:
        raise AsicError(f"{MANIFEST_NAME}: {exc.message}") from exc
    if root.tag != f"{_MANIFEST}manifest":
        raise AsicError(f"{MANIFEST_NAME}: the root element is not manifest:manifest")
    listed: dict[str, str] = {}
    for child in root:
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions carry no entries
        if child.tag != f"{_MANIFEST}file-entry":
            raise AsicError(f"{MANIFEST_NAME}: unexpected element {child.tag}")
        path = child.get(f"{_MANIFEST}full-path")
        media_type = child.get(f"{_MANIFEST}media-type")
        if path is None or media_type is None:
            raise AsicError(f"{MANIFEST_NAME}: a file-entry lacks full-path or media-type")
        if path == "/":
            if media_type != MIMETYPE:
                raise AsicError(f"{MANIFEST_NAME}: the root entry's media type is not {MIMETYPE}")
            continue
        if path in listed:
            raise AsicError(f"{MANIFEST_NAME}: {path} is listed twice")
        listed[path] = media_type
    return listed


def parse_container(
    data: bytes,
    *,
    max_bytes: int = MAX_CONTAINER_BYTES,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> AsicContainer:
    """Read and check a container; its entries come back without ``mimetype`` and manifest."""
    if len(data) > max_bytes:
        raise AsicError(f"the container is {len(data)} bytes, over the limit of {max_bytes} bytes")
    _check_mimetype_header(data)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise AsicError(f"the container is not a readable ZIP file: {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise AsicError(f"the container has {len(infos)} entries; at most {MAX_ENTRIES}")
        if not infos or infos[0].filename != "mimetype":
            raise AsicError("the container's central directory does not list 'mimetype' first")
        total = 0
        names: set[str] = set()
        for info in infos:
            name = info.filename
            if name in names:
                raise AsicError(f"entry {name} appears twice")
            names.add(name)
            if info.is_dir():
                raise AsicError(f"entry {name} is a directory; containers hold files only")
            if name not in ("mimetype", MANIFEST_NAME):
                check_name(name)
            if info.flag_bits & 0x1:
                raise AsicError(f"entry {name} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise AsicError(
                    f"entry {name} uses compression method {info.compress_type}; only stored "
                    "and deflated entries are accepted"
                )
            if info.file_size > max_entry_bytes:
                raise AsicError(
                    f"entry {name} is {info.file_size} bytes, over the limit of "
                    f"{max_entry_bytes} bytes"
                )
            total += info.file_size
        if total > max_total_bytes:
            raise AsicError(
                f"the entries add up to {total} bytes, over the limit of {max_total_bytes} bytes"
            )
        if MANIFEST_NAME not in names:
            raise AsicError(f"the container has no {MANIFEST_NAME}")
        contents: dict[str, bytes] = {}
        try:
            for info in infos:
                contents[info.filename] = zf.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise AsicError(f"an entry of the container is damaged: {exc}") from exc
    listed = _read_manifest(contents[MANIFEST_NAME])
    entries: list[AsicEntry] = []
    for info in infos[1:]:
        name = info.filename
        if name == MANIFEST_NAME:
            continue
        if name.startswith("META-INF/"):
            entries.append(AsicEntry(name, contents[name]))
            continue
        media_type = listed.pop(name, None)
        if media_type is None:
            raise AsicError(f"entry {name} is not listed in {MANIFEST_NAME}")
        entries.append(AsicEntry(name, contents[name], media_type))
    if listed:
        raise AsicError(
            f"{MANIFEST_NAME} lists {', '.join(sorted(listed))}, which the container lacks"
        )
    return AsicContainer(tuple(entries))
