"""Finding exchanges in archives, reading them, and exporting one as standalone evidence.

Rules:

- Search reads only the linking files (and the ``evidence.json`` of loose containers), which
  list every container's ids and time, so a search never opens the containers themselves.
  Criteria are exact matches; ``since`` is inclusive and ``until`` exclusive, on the time the
  exchange's first message was created.
- What search finds is what the archive *claims*; ``jisr audit verify`` is what checks it. An
  export carries the evidence byte for byte, so it verifies exactly as it did in its archives.
- An export gathers the request and the response of one exchange (from one archive or two,
  when the exchange was cut between archives) into one ASiC-E container with the trust material
  of the archives they came from, and names its sources (archive, container, SHA-256).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509

from audit.archive_format import (
    CONTAINER_SUFFIX,
    ArchivedMessage,
    ArchiveReader,
    ExchangeEvidence,
    Source,
    evidence_entries,
    read_exchange_container,
    read_linking,
    sha256_hex,
)
from audit.errors import ArchiveFormatError, AuditError
from gateway.asic import build_container
from gateway.faults import FaultError
from gateway.transport import RequestPart, parse_signed_part


@dataclasses.dataclass(frozen=True, slots=True)
class Criteria:
    """What to look for; None matches anything."""

    message_id: str | None = None
    client: str | None = None
    service: str | None = None
    user_id: str | None = None
    issue: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def matches(
        self,
        *,
        message_id: str,
        client: str,
        service: str,
        user_id: str | None,
        issue: str | None,
        created_at: dt.datetime,
    ) -> bool:
        exact = (
            (self.message_id, message_id),
            (self.client, client),
            (self.service, service),
            (self.user_id, user_id),
            (self.issue, issue),
        )
        if any(wanted is not None and wanted != got for wanted, got in exact):
            return False
        if self.since is not None and created_at < self.since:
            return False
        return self.until is None or created_at < self.until


@dataclasses.dataclass(frozen=True, slots=True)
class Found:
    """One container that matched: where it is and what its listing says."""

    file: Path
    archive: str | None  # the archive file name, None for a loose container
    container: str
    message_id: str
    client: str
    service: str
    user_id: str | None
    issue: str | None
    created_at: dt.datetime
    roles: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.archive}:{self.container}" if self.archive else self.container

    def to_json(self) -> dict[str, object]:
        return {
            "where": self.where,
            "message_id": self.message_id,
            "client": self.client,
            "service": self.service,
            "user_id": self.user_id,
            "issue": self.issue,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "roles": list(self.roles),
        }


def _candidates(path: Path) -> list[Path]:
    if not path.exists():
        raise AuditError(f"{path} does not exist; give an archive, a directory or a container")
    if path.is_dir():
        return sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in (".zip", CONTAINER_SUFFIX)
        )
    return [path]


def _is_container(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(38)[30:38] == b"mimetype"


def search(path: Path, criteria: Criteria, *, limit: int | None = None) -> list[Found]:
    """Containers in ``path`` whose listing matches ``criteria``, oldest first."""
    found: list[Found] = []
    for file in _candidates(path):
        found.extend(_search_file(file, criteria))
    found.sort(key=lambda f: (f.created_at, f.where))
    return found[:limit] if limit is not None else found


def _search_file(file: Path, criteria: Criteria) -> Iterator[Found]:
    try:
        if _is_container(file):
            evidence = read_exchange_container(file.read_bytes(), label=file.name)
            first = parse_signed_part(evidence.messages[0].signed_part)
            if criteria.matches(
                message_id=evidence.message_id,
                client=evidence.client,
                service=evidence.service,
                user_id=first.user_id,
                issue=first.issue,
                created_at=first.created_at,
            ):
                yield Found(
                    file,
                    None,
                    file.name,
                    evidence.message_id,
                    evidence.client,
                    evidence.service,
                    first.user_id,
                    first.issue,
                    first.created_at,
                    tuple(m.role for m in evidence.messages),
                )
            return
        with ArchiveReader(str(file), label=file.name) as reader:
            linking = read_linking(reader)
    except (ArchiveFormatError, OSError, ValueError) as exc:
        message = exc.message if isinstance(exc, ArchiveFormatError) else str(exc)
        raise AuditError(
            f"{file} cannot be searched: {message}; run `jisr audit verify` on it"
        ) from exc
    for listed in linking.containers:
        if criteria.matches(
            message_id=listed.message_id,
            client=listed.client,
            service=listed.service,
            user_id=listed.user_id,
            issue=listed.issue,
            created_at=listed.created_at,
        ):
            yield Found(
                file,
                file.name,
                listed.name,
                listed.message_id,
                listed.client,
                listed.service,
                listed.user_id,
                listed.issue,
                listed.created_at,
                listed.roles,
            )


def load(found: Found) -> ExchangeEvidence:
    """The container a search found, read (not verified)."""
    if found.archive is None:
        return read_exchange_container(found.file.read_bytes(), label=found.where)
    with ArchiveReader(str(found.file), label=found.file.name) as reader:
        return read_exchange_container(reader.read_container(found.container), label=found.where)


def _container_bytes(found: Found) -> bytes:
    if found.archive is None:
        return found.file.read_bytes()
    with ArchiveReader(str(found.file), label=found.file.name) as reader:
        return reader.read_container(found.container)


def _trust_of(found: Found) -> dict[str, bytes]:
    if found.archive is None:
        return dict(load(found).trust)
    with ArchiveReader(str(found.file), label=found.file.name) as reader:
        return dict(reader.trust_entries())


def export(path: Path, message_id: str, client: str | None = None) -> tuple[bytes, list[Found]]:
    """One exchange's evidence from the archives in ``path`` as a standalone ASiC-E container.

    Returns the container and the containers it was gathered from.
    """
    matches = search(path, Criteria(message_id=message_id, client=client))
    if not matches:
        raise AuditError(
            f"no exchange with message id {message_id!r}"
            + (f" from {client}" if client else "")
            + f" in {path}"
        )
    exchanges = {(m.client, m.service) for m in matches}
    if len(exchanges) > 1:
        raise AuditError(
            f"message id {message_id!r} belongs to several exchanges "
            f"({', '.join(sorted(c for c, _ in exchanges))}); name the client with --client"
        )
    messages: dict[str, ArchivedMessage] = {}
    trust: dict[str, bytes] = {}
    sources: list[Source] = []
    evidence: ExchangeEvidence | None = None
    for found in matches:
        data = _container_bytes(found)
        evidence = read_exchange_container(data, label=found.where)
        for message in evidence.messages:
            if message.role in messages:
                raise AuditError(
                    f"the archives hold the {message.role} of {message_id!r} twice (records "
                    f"{messages[message.role].seq} and {message.seq}); the node logged both "
                    "sides, export from one node's archives"
                )
            messages[message.role] = message
        trust.update(_trust_of(found))
        sources.append(Source(found.archive or "", found.container, sha256_hex(data)))
    assert evidence is not None
    entries = evidence_entries(
        evidence.node,
        evidence.message_id,
        evidence.client,
        evidence.service,
        list(messages.values()),
        trust=trust,
        sources=sources,
    )
    newest = max(m.created_at for m in matches)
    return build_container(entries, modified=newest), matches


def _body_text(body: bytes | None, limit: int) -> str:
    if body is None:
        return "(not logged: body logging was off; only its SHA-256 was kept)"
    if not body:
        return "(empty)"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(body)} bytes of binary content)"
    if any(ord(c) < 0x20 and c not in "\t\r\n" for c in text):
        return f"({len(body)} bytes of binary content)"
    return text if len(text) <= limit else text[:limit] + f"... ({len(body)} bytes)"


def describe(evidence: ExchangeEvidence, *, body_limit: int = 2000) -> list[str]:
    """The exchange as lines of text for a person (unverified: run verify for that)."""
    lines = [
        f"message id  {evidence.message_id}",
        f"client      {evidence.client}",
        f"service     {evidence.service}",
        f"node        {evidence.node}",
    ]
    for message in evidence.messages:
        lines.append("")
        try:
            part = parse_signed_part(message.signed_part)
        except FaultError as exc:
            lines.append(f"{message.role}: the signed part cannot be read: {exc.message}")
            continue
        record = _record_fields(message.record)
        lines.append(
            f"{message.role.upper()}  record {message.seq} ({record.get('direction', '?')}), "
            f"logged {record.get('logged_at', '?')}"
        )
        lines.append(f"  created     {part.created_at.isoformat().replace('+00:00', 'Z')}")
        if isinstance(part, RequestPart):
            query = f"?{part.query}" if part.query is not None else ""
            lines.append(f"  protocol    {part.protocol} {part.method} {part.path}{query}")
            lines.append(f"  user id     {part.user_id or '-'}")
            lines.append(f"  issue       {part.issue or '-'}")
            if part.represented_party:
                lines.append(f"  represented {part.represented_party}")
        else:
            lines.append(f"  status      {part.status}")
            lines.append(f"  request hash {part.request_hash}")
        for name, value in part.headers:
            lines.append(f"  header      {name}: {value}")
        try:
            signer = x509.load_pem_x509_certificate(message.chain_pem)
            lines.append(f"  signed by   {signer.subject.rfc4514_string()}")
        except ValueError:
            lines.append("  signed by   (the certificate chain cannot be read)")
        lines.append(f"  body sha256 {part.body_sha256}")
        lines.append(f"  body        {_body_text(message.body, body_limit)}")
    return lines


def _record_fields(record: bytes) -> dict[str, object]:
    try:
        value = json.loads(record)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
