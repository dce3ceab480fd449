"""The archive format: exchange containers, the linking file and the archive file around them.

Rules (the normative text is ``docs/archives-and-audit.md``):

- One **exchange container** (ASiC-E, :mod:`gateway.asic`) holds the evidence of one exchange
  as far as it is in one archive: the request's and/or the response's signed part, body (or
  only its digest when body logging was off), inclusion proof, root content, CMS signature,
  stapled OCSP response, signer chain, log record and batch timestamp with the record's proof.
  Files have fixed names per role (``request/...``, ``response/...``,
  ``META-INF/signature-<role>.p7s``, ``META-INF/timestamp-<role>.tst``); ``evidence.json``
  says which roles are present and carries the record metadata.
- One **archive** is a ZIP file per closed log period: ``linking.json``, the containers under
  ``containers/`` and the trust material under ``trust/``. The linking file lists every other
  entry with its SHA-256 and size, the span of the record hash chain the archive holds, and the
  SHA-256 of the previous archive's linking file, so a changed, deleted, added or reordered
  archive, container or record is detectable.
- All JSON here is canonical (sorted keys, no white space, UTF-8), so digests name content.
- This module only builds and reads; deciding whether evidence holds is :mod:`audit.verifier`'s
  job. Readers are strict about structure (unknown or missing fields, wrong types, unsafe
  names, size limits) and raise :class:`~audit.errors.ArchiveFormatError` naming the field.
- The archiver (``security_server.archiver``) writes through this module and the auditor reads
  through it, so the writer and the reader cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, Final, Literal, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from audit.errors import ArchiveFormatError
from gateway import hash_tree
from gateway.asic import (
    MAX_CONTAINER_BYTES,
    AsicEntry,
    AsicError,
    build_container,
    check_name,
    parse_container,
)
from gateway.canonical import canonical_json
from gateway.globalconf import GlobalConf
from gateway.log_record import (
    CONSUMER_DIRECTIONS,
    DIRECTIONS,
    REQUEST_DIRECTIONS,
    Direction,
    LogRecord,
    chain_hash,
)
from gateway.transport import decode_proof, encode_proof, root_content, utc_time_formatter

ARCHIVE_FORMAT: Final = "jisr-archive/1"
EVIDENCE_FORMAT: Final = "jisr-exchange/1"

LINKING_NAME: Final = "linking.json"
EVIDENCE_NAME: Final = "evidence.json"
CONTAINERS_DIR: Final = "containers/"
TRUST_DIR: Final = "trust/"
ANCHOR_NAME: Final = "trust/anchor.json"
CA_BUNDLE_NAME: Final = "trust/ca-certificates.pem"
TSA_BUNDLE_NAME: Final = "trust/tsa-certificates.pem"
OCSP_BUNDLE_NAME: Final = "trust/ocsp-responders.pem"
CONTAINER_SUFFIX: Final = ".asice"
ARCHIVE_SUFFIX: Final = ".zip"


MAX_LINKING_BYTES: Final = 64 * 1024 * 1024
MAX_TRUST_FILE_BYTES: Final = 32 * 1024 * 1024
MAX_ARCHIVE_ENTRIES: Final = 200_000

Role = Literal["request", "response"]
ROLES: Final[tuple[Role, ...]] = ("request", "response")

_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_TIME_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z")
_ARCHIVE_NAME_RE: Final = re.compile(r"archive-(\d{8,})-\d{8}T\d{6}Z\.zip")
_GLOBALCONF_RE: Final = re.compile(r"trust/globalconf-(\d{8,})\.json")


# --- names ---------------------------------------------------------------------------------------


def archive_name(sequence: int, period_start: dt.datetime) -> str:
    """``archive-<sequence, 8+ digits>-<period start, UTC>.zip``: sorts in chain order."""
    return f"archive-{sequence:08d}-{_utc(period_start).strftime('%Y%m%dT%H%M%SZ')}.zip"


def sequence_of_archive_name(name: str) -> int | None:
    match = _ARCHIVE_NAME_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def container_name(first_record_sequence: int) -> str:
    """Containers are named by the sequence number of their first log record."""
    return f"{CONTAINERS_DIR}{first_record_sequence:012d}{CONTAINER_SUFFIX}"


def globalconf_names(version: int) -> tuple[str, str]:
    """The document and signature entry names of one global-configuration version."""
    document = f"{TRUST_DIR}globalconf-{version:08d}.json"
    return document, document + ".p7s"


def globalconf_version_of(name: str) -> int | None:
    match = _GLOBALCONF_RE.fullmatch(name)
    return int(match.group(1)) if match else None


class MessageFiles:
    """The entry names of one role's evidence inside an exchange container."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.signed_part = f"{role}/signed-part.json"
        self.body = f"{role}/body.bin"
        self.proof = f"{role}/proof.bin"
        self.root_content = f"{role}/root-content.json"
        self.signature = f"META-INF/signature-{role}.p7s"
        self.ocsp = f"{role}/ocsp.der"
        self.chain = f"{role}/chain.pem"
        self.record = f"{role}/record.json"
        self.timestamp = f"META-INF/timestamp-{role}.tst"
        self.timestamp_proof = f"{role}/timestamp-proof.bin"
        self.timestamp_root = f"{role}/timestamp-root.hex"


FILES: Final = {role: MessageFiles(role) for role in ROLES}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: Archive times: UTC with milliseconds, ``2026-11-01T12:00:00.000Z`` (the transport's form).
format_time: Final = utc_time_formatter(3, "archive times")


def _utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        raise ValueError("archive times must be timezone-aware")
    return when.astimezone(dt.UTC)


def _bad(what: str, path: str, problem: str) -> NoReturn:
    raise ArchiveFormatError(f"{what}: {path} {problem}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"member {key!r} appears twice")
        result[key] = value
    return result


def _load(data: bytes, what: str) -> Any:
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArchiveFormatError(f"{what} is not valid JSON: {exc}") from exc
    if canonical_json(value) != data:
        raise ArchiveFormatError(
            f"{what} is not in canonical form (sorted keys, no white space, UTF-8); it was "
            "rewritten after the archiver made it"
        )
    return value


class _Fields:
    """Typed access to one JSON object, with errors naming the field's path."""

    def __init__(self, value: object, what: str, path: str, keys: Sequence[str]) -> None:
        if not isinstance(value, dict):
            _bad(what, path or "the document", "must be an object")
        missing = [k for k in keys if k not in value]
        extra = sorted(set(value) - set(keys))
        if missing or extra:
            _bad(what, path or "the document", f"has missing {missing} or unknown {extra} members")
        self._value: dict[str, Any] = value
        self._what = what
        self._path = path

    def _at(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def raw(self, key: str) -> Any:
        return self._value[key]

    def text(self, key: str, *, optional: bool = False, limit: int = 1024) -> str:
        value = self._value[key]
        if value is None and optional:
            return ""
        if not isinstance(value, str) or len(value) > limit:
            _bad(self._what, self._at(key), f"must be a string of at most {limit} characters")
        return value

    def optional_text(self, key: str, limit: int = 1024) -> str | None:
        value = self._value[key]
        if value is None:
            return None
        return self.text(key, limit=limit)

    def integer(self, key: str, *, minimum: int = 0) -> int:
        value = self._value[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _bad(self._what, self._at(key), f"must be an integer of at least {minimum}")
        return value

    def hex64(self, key: str) -> str:
        value = self._value[key]
        if not isinstance(value, str) or not _HEX64_RE.fullmatch(value):
            _bad(self._what, self._at(key), "must be 64 lower-case hex digits")
        return value

    def time(self, key: str) -> dt.datetime:
        value = self._value[key]
        if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
            _bad(self._what, self._at(key), "must be a UTC time YYYY-MM-DDTHH:MM:SS.mmmZ")
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))

    def name(self, key: str) -> str:
        value = self.text(key, limit=255)
        try:
            return check_name(value)
        except AsicError as exc:
            _bad(self._what, self._at(key), exc.message)

    def array(self, key: str) -> list[Any]:
        value = self._value[key]
        if not isinstance(value, list):
            _bad(self._what, self._at(key), "must be an array")
        return value

    def boolean(self, key: str) -> bool:
        value = self._value[key]
        if not isinstance(value, bool):
            _bad(self._what, self._at(key), "must be true or false")
        return value


# --- the linking file ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ListedFile:
    """An entry of the archive (trust material) with its digest."""

    name: str
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "size": self.size}

    @classmethod
    def of(cls, name: str, data: bytes) -> ListedFile:
        return cls(name, sha256_hex(data), len(data))


@dataclasses.dataclass(frozen=True, slots=True)
class ListedContainer:
    """An exchange container with its digest and what a search needs to find it."""

    name: str
    sha256: str
    size: int
    message_id: str
    client: str
    service: str
    user_id: str | None
    issue: str | None
    created_at: dt.datetime
    roles: tuple[Role, ...]
    record_sequences: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "message_id": self.message_id,
            "client": self.client,
            "service": self.service,
            "user_id": self.user_id,
            "issue": self.issue,
            "created_at": format_time(self.created_at),
            "roles": list(self.roles),
            "record_sequences": list(self.record_sequences),
        }

    @classmethod
    def from_json(cls, value: object, path: str) -> ListedContainer:
        f = _Fields(
            value,
            "linking file",
            path,
            (
                "name",
                "sha256",
                "size",
                "message_id",
                "client",
                "service",
                "user_id",
                "issue",
                "created_at",
                "roles",
                "record_sequences",
            ),
        )
        roles = f.array("roles")
        if not roles or any(r not in ROLES for r in roles) or len(set(roles)) != len(roles):
            _bad("linking file", f"{path}.roles", "must list 'request' and/or 'response' once")
        sequences = f.array("record_sequences")
        if len(sequences) != len(roles) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sequences
        ):
            _bad("linking file", f"{path}.record_sequences", "must hold one sequence per role")
        name = f.name("name")
        if not (name.startswith(CONTAINERS_DIR) and name.endswith(CONTAINER_SUFFIX)):
            _bad("linking file", f"{path}.name", "must name a containers/*.asice entry")
        return cls(
            name=name,
            sha256=f.hex64("sha256"),
            size=f.integer("size"),
            message_id=f.text("message_id", limit=255),
            client=f.text("client"),
            service=f.text("service"),
            user_id=f.optional_text("user_id"),
            issue=f.optional_text("issue"),
            created_at=f.time("created_at"),
            roles=tuple(roles),
            record_sequences=tuple(sequences),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class PreviousArchive:
    """The archive before this one in the node's chain."""

    sequence: int
    name: str
    linking_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "name": self.name, "linking_sha256": self.linking_sha256}


@dataclasses.dataclass(frozen=True, slots=True)
class RecordSpan:
    """The stretch of the node's record hash chain that an archive holds."""

    count: int
    first_sequence: int
    last_sequence: int
    first_prev_hash: str
    last_hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "first_prev_hash": self.first_prev_hash,
            "last_hash": self.last_hash,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class LinkingFile:
    """``linking.json``: what an archive holds and which archive came before it."""

    node: str
    sequence: int
    created_at: dt.datetime
    period_start: dt.datetime
    period_end: dt.datetime
    previous: PreviousArchive | None
    records: RecordSpan
    containers: tuple[ListedContainer, ...]
    trust: tuple[ListedFile, ...]

    @property
    def name(self) -> str:
        """The archive file name this linking file belongs in."""
        return archive_name(self.sequence, self.period_start)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ARCHIVE_FORMAT,
            "node": self.node,
            "sequence": self.sequence,
            "created_at": format_time(self.created_at),
            "period": {
                "start": format_time(self.period_start),
                "end": format_time(self.period_end),
            },
            "previous": self.previous.to_json() if self.previous else None,
            "records": self.records.to_json(),
            "containers": [c.to_json() for c in self.containers],
            "trust": [t.to_json() for t in self.trust],
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> LinkingFile:
        if len(data) > MAX_LINKING_BYTES:
            raise ArchiveFormatError(
                f"the linking file is {len(data)} bytes, over the limit of {MAX_LINKING_BYTES}"
            )
        what = "linking file"
        f = _Fields(
            _load(data, what),
            what,
            "",
            (
                "format",
                "node",
                "sequence",
                "created_at",
                "period",
                "previous",
                "records",
                "containers",
                "trust",
            ),
        )
        if f.raw("format") != ARCHIVE_FORMAT:
            _bad(what, "format", f"is {f.raw('format')!r}, not {ARCHIVE_FORMAT!r}")
        period = _Fields(f.raw("period"), what, "period", ("start", "end"))
        previous_value = f.raw("previous")
        previous = None
        if previous_value is not None:
            p = _Fields(previous_value, what, "previous", ("sequence", "name", "linking_sha256"))
            previous = PreviousArchive(
                p.integer("sequence", minimum=1),
                p.text("name", limit=255),
                p.hex64("linking_sha256"),
            )
        r = _Fields(
            f.raw("records"),
            what,
            "records",
            ("count", "first_sequence", "last_sequence", "first_prev_hash", "last_hash"),
        )
        records = RecordSpan(
            r.integer("count", minimum=1),
            r.integer("first_sequence", minimum=1),
            r.integer("last_sequence", minimum=1),
            r.hex64("first_prev_hash"),
            r.hex64("last_hash"),
        )
        containers = tuple(
            ListedContainer.from_json(c, f"containers[{i}]")
            for i, c in enumerate(f.array("containers"))
        )
        trust = []
        for i, t in enumerate(f.array("trust")):
            tf = _Fields(t, what, f"trust[{i}]", ("name", "sha256", "size"))
            name = tf.name("name")
            if not name.startswith(TRUST_DIR):
                _bad(what, f"trust[{i}].name", "must name a trust/ entry")
            trust.append(ListedFile(name, tf.hex64("sha256"), tf.integer("size")))
        names = [c.name for c in containers] + [t.name for t in trust]
        if len(set(names)) != len(names):
            _bad(what, "containers/trust", "list an entry twice")
        return cls(
            node=f.text("node", limit=1024),
            sequence=f.integer("sequence", minimum=1),
            created_at=f.time("created_at"),
            period_start=period.time("start"),
            period_end=period.time("end"),
            previous=previous,
            records=records,
            containers=containers,
            trust=tuple(trust),
        )


# --- the archive file ----------------------------------------------------------------------------


def _zip_time(when: dt.datetime) -> tuple[int, int, int, int, int, int]:
    utc = max(_utc(when), dt.datetime(1980, 1, 1, tzinfo=dt.UTC))
    return (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second - utc.second % 2)


class ArchiveWriter:
    """Writes one archive ZIP to a binary file, entry by entry, the linking file last.

    Containers are stored (they are compressed ZIPs already), JSON and PEM are deflated. The
    caller makes the file durable (fsync, rename); this class only produces the bytes.
    """

    def __init__(self, fileobj: IO[bytes], *, created_at: dt.datetime) -> None:
        self._zip = zipfile.ZipFile(fileobj, "w", allowZip64=True)
        self._when = _zip_time(created_at)
        self._names: set[str] = set()

    def _write(self, name: str, data: bytes, method: int) -> None:
        check_name(name)
        if name in self._names:
            raise ValueError(f"{name} is already in the archive")
        self._names.add(name)
        info = zipfile.ZipInfo(name, date_time=self._when)
        info.compress_type = method
        info.create_system = 3
        info.external_attr = 0o644 << 16
        self._zip.writestr(info, data)

    def add_container(self, name: str, data: bytes) -> None:
        self._write(name, data, zipfile.ZIP_STORED)

    def add_trust(self, name: str, data: bytes) -> None:
        self._write(name, data, zipfile.ZIP_DEFLATED)

    def discard(self) -> None:
        """Stop writing an archive that will not be finished (its file is then deleted)."""
        with contextlib.suppress(OSError, ValueError):
            self._zip.close()

    def finish(self, linking: LinkingFile) -> bytes:
        """Write the linking file and the ZIP directory; returns the linking file's bytes."""
        data = linking.to_bytes()
        self._write(LINKING_NAME, data, zipfile.ZIP_DEFLATED)
        self._zip.close()
        return data


class ArchiveReader:
    """Reads one archive ZIP with the size and name limits of the format."""

    def __init__(self, source: IO[bytes] | str, *, label: str) -> None:
        self.label = label
        try:
            self._zip = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise ArchiveFormatError(f"{label} is not a readable ZIP archive: {exc}") from exc
        infos = self._zip.infolist()
        if len(infos) > MAX_ARCHIVE_ENTRIES:
            raise ArchiveFormatError(
                f"{label} has {len(infos)} entries; at most {MAX_ARCHIVE_ENTRIES}"
            )
        self._infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in self._infos:
                raise ArchiveFormatError(f"{label}: entry {info.filename} appears twice")
            try:
                check_name(info.filename)
            except AsicError as exc:
                raise ArchiveFormatError(f"{label}: {exc.message}") from exc
            if info.flag_bits & 0x1 or info.compress_type not in (
                zipfile.ZIP_STORED,
                zipfile.ZIP_DEFLATED,
            ):
                raise ArchiveFormatError(
                    f"{label}: entry {info.filename} is encrypted or uses an unsupported "
                    "compression method"
                )
            self._infos[info.filename] = info

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._infos)

    def read(self, name: str, limit: int) -> bytes:
        info = self._infos.get(name)
        if info is None:
            raise ArchiveFormatError(f"{self.label} has no entry {name}")
        if info.file_size > limit:
            raise ArchiveFormatError(
                f"{self.label}: entry {name} is {info.file_size} bytes, over the limit of {limit}"
            )
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ArchiveFormatError(f"{self.label}: entry {name} is damaged: {exc}") from exc

    def linking_bytes(self) -> bytes:
        return self.read(LINKING_NAME, MAX_LINKING_BYTES)

    def read_container(self, name: str) -> bytes:
        return self.read(name, MAX_CONTAINER_BYTES)

    def read_trust(self, name: str) -> bytes:
        return self.read(name, MAX_TRUST_FILE_BYTES)

    def trust_entries(self) -> Iterator[tuple[str, bytes]]:
        for name in self._infos:
            if name.startswith(TRUST_DIR):
                yield name, self.read_trust(name)


def read_linking(reader: ArchiveReader) -> LinkingFile:
    """The archive's linking file, parsed strictly."""
    try:
        return LinkingFile.from_bytes(reader.linking_bytes())
    except ArchiveFormatError as exc:
        raise ArchiveFormatError(f"{reader.label}: {exc.message}") from exc


def trust_files(entries: Mapping[str, bytes]) -> tuple[ListedFile, ...]:
    return tuple(ListedFile.of(name, data) for name, data in sorted(entries.items()))


# --- the exchange container ----------------------------------------------------------------------

_MEDIA_TYPES: Final = {
    ".json": "application/json",
    ".bin": "application/octet-stream",
    ".der": "application/ocsp-response",
    ".pem": "application/pem-certificate-chain",
    ".hex": "text/plain",
    ".p7s": "application/pkcs7-signature",
    ".tst": "application/vnd.etsi.timestamp-token",
}


def _media_type(name: str) -> str:
    for suffix, media_type in _MEDIA_TYPES.items():
        if name.endswith(suffix):
            return media_type
    return "application/octet-stream"


def chain_pem(certificates: Sequence[bytes]) -> bytes:
    """DER certificates as one PEM bundle, signer first (what ``openssl`` reads)."""
    out = []
    for der in certificates:
        b64 = base64.b64encode(der).decode("ascii")
        lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
        out.append(
            "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
        )
    return "".join(out).encode("ascii")


def chain_ders(pem: bytes) -> tuple[bytes, ...]:
    """The DER certificates of a PEM bundle, in order (their bytes exactly as logged)."""
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ArchiveFormatError("the certificate chain is not ASCII PEM") from exc
    ders = []
    for match in _PEM_RE.finditer(text):
        try:
            ders.append(base64.b64decode("".join(match.group(1).split()), validate=True))
        except (ValueError, binascii.Error) as exc:
            raise ArchiveFormatError("a certificate in the chain is not valid base64") from exc
    if not ders or _PEM_RE.sub("", text).strip():
        raise ArchiveFormatError("the certificate chain is not a sequence of PEM certificates")
    return tuple(ders)


_PEM_RE: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """Where an exported container's evidence came from."""

    archive: str
    container: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"archive": self.archive, "container": self.container, "sha256": self.sha256}


@dataclasses.dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """One role's evidence as read from a container, not yet verified."""

    role: Role
    seq: int
    prev_hash: bytes
    record_hash: bytes
    batch_id: int
    tsa_url: str
    signed_part: bytes
    body: bytes | None
    proof: bytes
    root_content: bytes
    signature: bytes
    ocsp: bytes
    chain_pem: bytes
    record: bytes
    timestamp_token: bytes
    timestamp_proof: bytes
    timestamp_root: bytes

    @property
    def files(self) -> MessageFiles:
        return FILES[self.role]


@dataclasses.dataclass(frozen=True, slots=True)
class ExchangeEvidence:
    """An exchange container as read: the index and each role's evidence."""

    node: str
    message_id: str
    client: str
    service: str
    messages: tuple[ArchivedMessage, ...]
    sources: tuple[Source, ...]
    #: Trust material carried by an exported container (``trust/...``); empty in archives.
    trust: Mapping[str, bytes]

    def message(self, role: Role) -> ArchivedMessage | None:
        return next((m for m in self.messages if m.role == role), None)


@dataclasses.dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """A timestamped log record in the form an archive needs.

    What the archive only copies stays bytes, exactly as stored: the canonical record, the
    signed part, body, signature, proof, certificates, OCSP response, the batch token and the
    record's encoded proof in its timestamp batch. The few values an archive lists (ids,
    times, the configuration version) are taken from the canonical record.
    """

    seq: int
    node: str
    logged_at: dt.datetime
    direction: Direction
    message_id: str
    client: str
    service: str
    user_id: str | None
    issue: str | None
    created_at: dt.datetime
    conf_version: int
    record: bytes
    signed_part: bytes
    body: bytes | None
    signature: bytes
    proof: bytes
    certificates: tuple[bytes, ...]
    ocsp: bytes
    prev_hash: bytes
    record_hash: bytes
    batch_id: int
    tsa_url: str
    token: bytes
    batch_root: bytes
    batch_proof: bytes

    @property
    def is_request(self) -> bool:
        return self.direction in REQUEST_DIRECTIONS

    @property
    def role(self) -> Role:
        return "request" if self.is_request else "response"

    @property
    def exchange_key(self) -> tuple[str, str, bool]:
        """What the records of one exchange container share: message id, client, side."""
        return (self.message_id, self.client, self.direction in CONSUMER_DIRECTIONS)

    @classmethod
    def of(cls, record: LogRecord | ArchiveRecord) -> ArchiveRecord:
        """The archive form of a parsed, timestamped log record."""
        if isinstance(record, ArchiveRecord):
            return record
        stamp = record.timestamp
        if stamp is None:
            raise ValueError(f"record {record.seq} is not timestamped yet; archive it later")
        entry = record.entry
        return cls(
            seq=record.seq,
            node=str(record.node),
            logged_at=record.logged_at,
            direction=entry.direction,
            message_id=entry.message_id,
            client=str(entry.client),
            service=str(entry.service),
            user_id=entry.user_id,
            issue=entry.issue,
            created_at=entry.created_at,
            conf_version=entry.conf_version,
            record=record.canonical_bytes(),
            signed_part=entry.signed_part,
            body=entry.body,
            signature=entry.signature,
            proof=entry.proof,
            certificates=tuple(entry.certificates),
            ocsp=entry.ocsp,
            prev_hash=record.prev_hash,
            record_hash=record.record_hash,
            batch_id=stamp.batch.batch_id,
            tsa_url=stamp.batch.tsa_url,
            token=stamp.batch.token,
            batch_root=stamp.batch.root,
            batch_proof=encode_proof(stamp.proof),
        )

    @classmethod
    def from_stored(
        cls,
        record: bytes,
        *,
        signed_part: bytes,
        body: bytes | None,
        signature: bytes,
        proof: bytes,
        certificates: Sequence[bytes],
        ocsp: bytes,
        prev_hash: bytes,
        record_hash: bytes,
        batch_id: int,
        tsa_url: str,
        token: bytes,
        batch_root: bytes,
        batch_proof: bytes,
    ) -> ArchiveRecord:
        """A record as the message log stores it (its columns), read without rebuilding the
        record: the canonical bytes must hash, after ``prev_hash``, to ``record_hash`` (so the
        values taken from them are the chained ones) and the proof must be well formed.
        Raises :class:`ArchiveFormatError` naming the record otherwise."""
        if len(prev_hash) != 32 or chain_hash(prev_hash, record) != record_hash:
            raise ArchiveFormatError(
                "a stored record does not hash to its record hash; the log was changed"
            )
        try:
            top = json.loads(record)
            seq = top["seq"]
            node, client, service = top["node"], top["client"], top["service"]
            value = cls(
                seq=seq,
                node=_slash(node, ("instance", "member_class", "member_code", "server_code")),
                logged_at=_record_time(top["logged_at"]),
                direction=top["direction"],
                message_id=top["message_id"],
                client=_slash(
                    client, ("instance", "member_class", "member_code", "subsystem_code")
                ),
                service=_slash(
                    service,
                    (
                        "instance",
                        "member_class",
                        "member_code",
                        "subsystem_code",
                        "service_code",
                        "service_version",
                    ),
                ),
                user_id=top["user_id"],
                issue=top["issue"],
                created_at=_record_time(top["created_at"]),
                conf_version=top["conf_version"],
                record=record,
                signed_part=signed_part,
                body=body,
                signature=signature,
                proof=proof,
                certificates=tuple(certificates),
                ocsp=ocsp,
                prev_hash=prev_hash,
                record_hash=record_hash,
                batch_id=batch_id,
                tsa_url=tsa_url,
                token=token,
                batch_root=batch_root,
                batch_proof=batch_proof,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArchiveFormatError(f"a stored record cannot be read: {exc}") from exc
        if (
            not isinstance(value.seq, int)
            or isinstance(value.seq, bool)
            or value.seq < 1
            or value.direction not in DIRECTIONS
            or not isinstance(value.message_id, str)
            or not isinstance(value.conf_version, int)
            or not all(isinstance(v, str | None) for v in (value.user_id, value.issue))
        ):
            raise ArchiveFormatError("a stored record has members of the wrong type")
        if len(batch_proof) < 9 or len(batch_proof) != 9 + 32 * batch_proof[8]:
            raise ArchiveFormatError(f"record {value.seq}: its timestamp proof is malformed")
        return value


def _slash(value: object, keys: Sequence[str]) -> str:
    """An identifier's slash form (``str()`` of the identifier), null parts left out."""
    if not isinstance(value, dict):
        raise TypeError("an identifier must be an object")
    parts = []
    for key in keys:
        part = value[key]
        if part is not None:
            if not isinstance(part, str) or "/" in part:
                raise ValueError(f"identifier part {key!r} is not a plain string")
            parts.append(part)
    return "/".join(parts)


def _record_time(text: object) -> dt.datetime:
    """A canonical record's time (``2026-11-01T12:00:00.250000Z``)."""
    if not isinstance(text, str) or not text.endswith("Z"):
        raise ValueError(f"{text!r} is not a record time")
    return dt.datetime.fromisoformat(text[:-1]).replace(tzinfo=dt.UTC)


def archived_message(record: LogRecord | ArchiveRecord) -> ArchivedMessage:
    """A timestamped log record as the evidence files a container holds for it."""
    item = ArchiveRecord.of(record)
    proof = decode_proof(item.proof)
    root = hash_tree.root_from_proof(hash_tree.leaf_hash(item.signed_part), proof)
    if root is None:
        raise ValueError(f"record {item.seq}: the logged inclusion proof leads to no root")
    return ArchivedMessage(
        role=item.role,
        seq=item.seq,
        prev_hash=item.prev_hash,
        record_hash=item.record_hash,
        batch_id=item.batch_id,
        tsa_url=item.tsa_url,
        signed_part=item.signed_part,
        body=item.body,
        proof=item.proof,
        root_content=root_content(root, proof.tree_size),
        signature=item.signature,
        ocsp=item.ocsp,
        chain_pem=chain_pem(item.certificates),
        record=item.record,
        timestamp_token=item.token,
        timestamp_proof=item.batch_proof,
        timestamp_root=item.batch_root.hex().encode("ascii"),
    )


def evidence_entries(
    node: str,
    message_id: str,
    client: str,
    service: str,
    messages: Sequence[ArchivedMessage],
    *,
    trust: Mapping[str, bytes] | None = None,
    sources: Sequence[Source] = (),
) -> list[AsicEntry]:
    """The entries of an exchange container: ``evidence.json``, each message's files, the
    trust material (exported containers only), then signatures and tokens under META-INF."""
    if not 1 <= len(messages) <= 2:
        raise ValueError("an exchange container holds one request and/or one response")
    if len({m.role for m in messages}) != len(messages):
        raise ValueError("an exchange container holds at most one message per role")
    entries: list[AsicEntry] = []
    meta_entries: list[AsicEntry] = []
    index_messages = []
    for message in sorted(messages, key=lambda m: ROLES.index(m.role)):
        names = message.files
        files: list[tuple[str, bytes]] = [(names.signed_part, message.signed_part)]
        if message.body is not None:
            files.append((names.body, message.body))
        files += [
            (names.proof, message.proof),
            (names.root_content, message.root_content),
            (names.ocsp, message.ocsp),
            (names.chain, message.chain_pem),
            (names.record, message.record),
            (names.timestamp_proof, message.timestamp_proof),
            (names.timestamp_root, message.timestamp_root),
        ]
        entries.extend(AsicEntry(n, d, _media_type(n)) for n, d in files)
        meta_entries.append(AsicEntry(names.signature, message.signature))
        meta_entries.append(AsicEntry(names.timestamp, message.timestamp_token))
        index_messages.append(
            {
                "role": message.role,
                "seq": message.seq,
                "prev_hash": message.prev_hash.hex(),
                "record_hash": message.record_hash.hex(),
                "body_logged": message.body is not None,
                "timestamp": {"batch_id": message.batch_id, "tsa_url": message.tsa_url},
            }
        )
    index = {
        "format": EVIDENCE_FORMAT,
        "node": node,
        "message_id": message_id,
        "client": client,
        "service": service,
        "messages": index_messages,
        "sources": [s.to_json() for s in sources],
    }
    trust_entries = [
        AsicEntry(name, data, _media_type(name)) for name, data in sorted((trust or {}).items())
    ]
    for item in trust_entries:
        if not item.name.startswith(TRUST_DIR):
            raise ValueError(f"trust material must be under {TRUST_DIR}, not {item.name}")
    return [
        AsicEntry(EVIDENCE_NAME, canonical_json(index), "application/json"),
        *entries,
        *trust_entries,
        *meta_entries,
    ]


def exchange_entries(
    records: Sequence[LogRecord | ArchiveRecord],
    *,
    trust: Mapping[str, bytes] | None = None,
    sources: Sequence[Source] = (),
) -> list[AsicEntry]:
    """The entries of the container for ``records`` (one request and/or one response of one
    exchange, each timestamped)."""
    if not records:
        raise ValueError("an exchange container holds one request and/or one response")
    items = [ArchiveRecord.of(r) for r in records]
    first = items[0]
    for item in items[1:]:
        if (item.message_id, item.client) != (first.message_id, first.client):
            raise ValueError("the records of one container must belong to one exchange")
    return evidence_entries(
        first.node,
        first.message_id,
        first.client,
        first.service,
        [archived_message(r) for r in items],
        trust=trust,
        sources=sources,
    )


def build_exchange_container(
    records: Sequence[LogRecord | ArchiveRecord],
    *,
    modified: dt.datetime,
    trust: Mapping[str, bytes] | None = None,
    sources: Sequence[Source] = (),
) -> bytes:
    """The ASiC-E container of one exchange (see :func:`exchange_entries`)."""
    return build_container(
        exchange_entries(records, trust=trust, sources=sources), modified=modified
    )


def read_exchange_container(data: bytes, *, label: str) -> ExchangeEvidence:
    """Read a container's structure; nothing in it is trusted yet."""
    try:
        container = parse_container(data)
    except AsicError as exc:
        raise ArchiveFormatError(f"{label}: {exc.message}") from exc
    content = container.as_mapping()
    index_bytes = content.get(EVIDENCE_NAME)
    if index_bytes is None:
        raise ArchiveFormatError(
            f"{label} has no {EVIDENCE_NAME}; it is not a Jisr evidence container"
        )
    what = f"{label}: {EVIDENCE_NAME}"
    f = _Fields(
        _load(index_bytes, what),
        what,
        "",
        ("format", "node", "message_id", "client", "service", "messages", "sources"),
    )
    if f.raw("format") != EVIDENCE_FORMAT:
        _bad(what, "format", f"is {f.raw('format')!r}, not {EVIDENCE_FORMAT!r}")
    used = {EVIDENCE_NAME}
    messages: list[ArchivedMessage] = []
    raw_messages = f.array("messages")
    if not 1 <= len(raw_messages) <= 2:
        _bad(what, "messages", "must hold one or two messages")
    for i, raw in enumerate(raw_messages):
        m = _Fields(
            raw,
            what,
            f"messages[{i}]",
            ("role", "seq", "prev_hash", "record_hash", "body_logged", "timestamp"),
        )
        role = m.raw("role")
        if role not in ROLES or any(x.role == role for x in messages):
            _bad(what, f"messages[{i}].role", "must be 'request' or 'response', each once")
        ts = _Fields(m.raw("timestamp"), what, f"messages[{i}].timestamp", ("batch_id", "tsa_url"))
        names = FILES[role]
        body_logged = m.boolean("body_logged")
        required = [
            names.signed_part,
            names.proof,
            names.root_content,
            names.signature,
            names.ocsp,
            names.chain,
            names.record,
            names.timestamp,
            names.timestamp_proof,
            names.timestamp_root,
        ]
        if body_logged:
            required.append(names.body)
        elif names.body in content:
            _bad(what, f"messages[{i}].body_logged", f"is false but {names.body} is present")
        missing = [n for n in required if n not in content]
        if missing:
            raise ArchiveFormatError(f"{label}: the {role}'s {', '.join(missing)} is missing")
        used.update(required)
        messages.append(
            ArchivedMessage(
                role=role,
                seq=m.integer("seq", minimum=1),
                prev_hash=bytes.fromhex(m.hex64("prev_hash")),
                record_hash=bytes.fromhex(m.hex64("record_hash")),
                batch_id=ts.integer("batch_id"),
                tsa_url=ts.text("tsa_url"),
                signed_part=content[names.signed_part],
                body=content[names.body] if body_logged else None,
                proof=content[names.proof],
                root_content=content[names.root_content],
                signature=content[names.signature],
                ocsp=content[names.ocsp],
                chain_pem=content[names.chain],
                record=content[names.record],
                timestamp_token=content[names.timestamp],
                timestamp_proof=content[names.timestamp_proof],
                timestamp_root=content[names.timestamp_root],
            )
        )
    sources = []
    for i, raw in enumerate(f.array("sources")):
        s = _Fields(raw, what, f"sources[{i}]", ("archive", "container", "sha256"))
        sources.append(
            Source(s.text("archive", limit=255), s.text("container", limit=255), s.hex64("sha256"))
        )
    trust = {n: d for n, d in content.items() if n.startswith(TRUST_DIR)}
    used.update(trust)
    unexpected = sorted(set(content) - used)
    if unexpected:
        raise ArchiveFormatError(
            f"{label} holds entries the evidence index does not account for: "
            + ", ".join(unexpected)
        )
    return ExchangeEvidence(
        node=f.text("node"),
        message_id=f.text("message_id", limit=255),
        client=f.text("client"),
        service=f.text("service"),
        messages=tuple(sorted(messages, key=lambda x: ROLES.index(x.role))),
        sources=tuple(sources),
        trust=trust,
    )


# --- writing a whole archive ---------------------------------------------------------------------


def _pem_bundle(certificates: Iterable[x509.Certificate]) -> bytes:
    seen: dict[bytes, bytes] = {}
    for cert in certificates:
        der = cert.public_bytes(serialization.Encoding.DER)
        seen.setdefault(der, cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(seen.values())


def trust_material(
    anchor: bytes | None, versions: Iterable[tuple[bytes, bytes]]
) -> dict[str, bytes]:
    """The ``trust/`` entries for an anchor and global-configuration versions (document,
    signature): the signed documents themselves, plus PEM bundles of the approved CA, TSA and
    OCSP responder certificates for use with ``openssl`` (derived from the documents)."""
    entries: dict[str, bytes] = {}
    if anchor is not None:
        entries[ANCHOR_NAME] = anchor
    cas: list[x509.Certificate] = []
    tsas: list[x509.Certificate] = []
    responders: list[x509.Certificate] = []
    for document, signature in versions:
        conf = GlobalConf.from_document(document)
        doc_name, sig_name = globalconf_names(conf.version)
        entries[doc_name] = document
        entries[sig_name] = signature
        for ca in conf.approved_cas:
            cas.extend((ca.certificate, *ca.intermediates))
            responders.extend(o.certificate for o in ca.ocsp)
        tsas.extend(t.certificate for t in conf.approved_tsas)
    for name, certs in (
        (CA_BUNDLE_NAME, cas),
        (TSA_BUNDLE_NAME, tsas),
        (OCSP_BUNDLE_NAME, responders),
    ):
        if certs:
            entries[name] = _pem_bundle(certs)
    return entries


class ArchiveBuilder:
    """Writes an archive record by record, holding in memory only exchanges still open.

    Records must come in sequence order, consecutive, chained (each one's previous-record hash
    is the record hash of the one before) and timestamped. An exchange's container is written
    as soon as it has both its request and its response; the rest are written by
    :meth:`finish`. Containers are named by their first record, so the order they are written
    in does not matter. Besides the open exchanges, only what the linking file lists is kept
    (one small entry per container), so a builder fed page by page holds one page at a time.
    """

    def __init__(self, fileobj: IO[bytes], *, created_at: dt.datetime) -> None:
        self._writer = ArchiveWriter(fileobj, created_at=created_at)
        self._created_at = created_at
        self._open: dict[tuple[str, str, bool], list[ArchiveRecord]] = {}
        self._listed: list[ListedContainer] = []
        self._node: str | None = None
        self._first_seq: int | None = None
        self._first_prev_hash: bytes | None = None
        self._last_seq: int | None = None
        self._last_hash: bytes | None = None
        #: The global-configuration versions the records added name.
        self.conf_versions: set[int] = set()
        self.count = 0

    @property
    def last_seq(self) -> int | None:
        return self._last_seq

    @property
    def first_seq(self) -> int | None:
        return self._first_seq

    def add(self, record: LogRecord | ArchiveRecord) -> None:
        item = ArchiveRecord.of(record)
        if self._last_seq is not None:
            if item.seq != self._last_seq + 1:
                raise ValueError(f"record {item.seq} does not follow record {self._last_seq}")
            if item.prev_hash != self._last_hash:
                raise ValueError(
                    f"record {item.seq} does not chain to record {self._last_seq} (its "
                    "previous-record hash is not that record's hash)"
                )
        key = item.exchange_key
        group = self._open.get(key)
        if group is not None and any(r.role == item.role for r in group):
            self._write(self._open.pop(key))
            group = None
        if group is None:
            group = self._open[key] = []
        group.append(item)
        if len(group) == len(ROLES):
            self._write(self._open.pop(key))
        if self._first_seq is None:
            self._node = item.node
            self._first_seq = item.seq
            self._first_prev_hash = item.prev_hash
        self._last_seq = item.seq
        self._last_hash = item.record_hash
        self.conf_versions.add(item.conf_version)
        self.count += 1

    def discard(self) -> None:
        """Give up this archive: nothing more is written (the caller deletes the file)."""
        self._open.clear()
        self._writer.discard()

    def _write(self, group: list[ArchiveRecord]) -> None:
        name = container_name(group[0].seq)
        data = build_exchange_container(group, modified=self._created_at)
        self._writer.add_container(name, data)
        first = group[0]
        self._listed.append(
            ListedContainer(
                name=name,
                sha256=sha256_hex(data),
                size=len(data),
                message_id=first.message_id,
                client=first.client,
                service=first.service,
                user_id=first.user_id,
                issue=first.issue,
                created_at=first.created_at,
                roles=tuple(r.role for r in group),
                record_sequences=tuple(r.seq for r in group),
            )
        )

    def finish(
        self,
        *,
        sequence: int,
        previous: PreviousArchive | None,
        period_start: dt.datetime,
        period_end: dt.datetime,
        trust: Mapping[str, bytes],
    ) -> tuple[LinkingFile, bytes]:
        """Write the open exchanges, the trust material and the linking file."""
        if (
            self._node is None
            or self._first_seq is None
            or self._first_prev_hash is None
            or self._last_seq is None
            or self._last_hash is None
        ):
            raise ValueError("an archive holds at least one record")
        for group in self._open.values():
            self._write(group)
        self._open.clear()
        for name, data in sorted(trust.items()):
            self._writer.add_trust(name, data)
        linking = LinkingFile(
            node=self._node,
            sequence=sequence,
            created_at=self._created_at,
            period_start=period_start,
            period_end=period_end,
            previous=previous,
            records=RecordSpan(
                count=self.count,
                first_sequence=self._first_seq,
                last_sequence=self._last_seq,
                first_prev_hash=self._first_prev_hash.hex(),
                last_hash=self._last_hash.hex(),
            ),
            containers=tuple(sorted(self._listed, key=lambda c: c.name)),
            trust=trust_files(trust),
        )
        return linking, self._writer.finish(linking)


def write_archive(
    fileobj: IO[bytes],
    records: Iterable[LogRecord | ArchiveRecord],
    *,
    sequence: int,
    previous: PreviousArchive | None,
    period_start: dt.datetime,
    period_end: dt.datetime,
    created_at: dt.datetime,
    trust: Mapping[str, bytes],
) -> tuple[LinkingFile, bytes]:
    """Write the archive of ``records`` (consecutive, timestamped, in sequence order).

    Returns the linking file and its bytes (whose SHA-256 the next archive names).
    """
    builder = ArchiveBuilder(fileobj, created_at=created_at)
    for record in records:
        builder.add(record)
    return builder.finish(
        sequence=sequence,
        previous=previous,
        period_start=period_start,
        period_end=period_end,
        trust=trust,
    )
