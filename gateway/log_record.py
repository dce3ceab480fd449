"""Message-log records: what a node logs per message, the canonical form, the hash chain and
the batch-timestamp proof, without I/O.

Rules (the normative text is ``docs/message-log.md``):

- A :class:`LogEntry` is one signed message as the node sent or received it: the signed part,
  the body (or only its digest when body logging is off), the CMS signature over the batch
  root, the inclusion proof, the signer's certificate chain, the stapled OCSP response, and the
  ids an auditor searches by.
- A :class:`LogRecord` is an entry as appended to one node's log: a sequence number (1, 2, 3,
  ... per node, no gaps), the time it was logged, the previous record's hash and its own.
- The canonical bytes of a record (:func:`canonical_bytes`) are RFC 8785 canonical JSON holding
  the ids and times as values and every binary part as its SHA-256; the body is covered by the
  digest the signed part already signs, so a record whose body was never stored verifies
  exactly like one whose body was.
- ``record_hash = SHA-256(previous record_hash || canonical bytes)``; the first record of a
  node's log follows :data:`GENESIS_HASH` (32 zero bytes). :func:`verify_chain` detects a
  changed, removed, inserted or reordered record.
- Records are timestamped in batches: one RFC 3161 token over the root of an RFC 6962 hash
  tree whose leaves are ``leaf_hash(record_hash)``; each record keeps its inclusion proof
  (:func:`verify_record_timestamp`). The timestamp is not part of the chain: it is added after
  the record is written.
- Time is always passed in; nothing here reads a clock, a database or the network.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Sequence
from typing import Final, Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.tsa import TimestampError, TimestampInfo, verify_token
from config.errors import IdentifierError, JisrError
from gateway import hash_tree
from gateway.canonical import canonical_json
from gateway.faults import FaultError
from gateway.hash_tree import InclusionProof
from gateway.identifiers import ClientId, MemberId, SecurityServerId, ServiceId, SubsystemId
from gateway.transport import (
    RequestPart,
    ResponsePart,
    SignedPart,
    body_digest,
    client_json,
    decode_proof,
    encode_proof,
    parse_signed_part,
    service_json,
    utc_time_formatter,
)

#: Names the canonical form; a verifier refuses records of a format it does not know.
FORMAT: Final = "jisr-log/1"
#: The ``previous hash`` of a node's first record.
GENESIS_HASH: Final = bytes(32)
HASH_SIZE: Final = 32

Direction = Literal["request_out", "response_in", "request_in", "response_out"]
Protocol = Literal["REST", "SOAP"]

#: Directions logged by the consumer's node (its client proxy) and by the provider's node.
CONSUMER_DIRECTIONS: Final = frozenset({"request_out", "response_in"})
PROVIDER_DIRECTIONS: Final = frozenset({"request_in", "response_out"})
DIRECTIONS: Final = frozenset(get_args(Direction))
#: Directions of a request (the other two are of its response).
REQUEST_DIRECTIONS: Final = frozenset({"request_out", "request_in"})
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_TIME_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


class LogIntegrityError(JisrError):
    """A stored or archived log record is malformed, or the chain does not verify.

    ``seq`` names the first record concerned (None when the problem is not one record's).
    """

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


# --- the entry ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LogEntry:
    """One signed message as this node sent or received it.

    ``body`` is None when body logging is off for the node or the subsystem; ``body_digest``
    (the signed part's ``body_sha256``) is always kept, so the record still verifies.
    ``request_hash`` is the response's binding to its request (None for requests).
    ``certificates`` holds the signer's chain as DER, signer first. ``conf_version`` is the
    version of the global configuration in force when the message was checked or sent.
    """

    direction: Direction
    message_id: str
    client: ClientId
    service: ServiceId
    user_id: str | None
    issue: str | None
    protocol: Protocol
    created_at: dt.datetime
    signed_part: bytes
    body: bytes | None
    body_digest: str
    signature: bytes
    proof: bytes
    certificates: tuple[bytes, ...]
    ocsp: bytes
    request_hash: str | None
    conf_version: int

    def __post_init__(self) -> None:
        # Cheap structural checks only: the content checks are check_entry's, so that a
        # tampered record can still be read and reported instead of failing to load.
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r} is not one of {sorted(DIRECTIONS)}")
        if self.protocol not in ("REST", "SOAP"):
            raise ValueError(f"protocol {self.protocol!r} is neither REST nor SOAP")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
        utc = self.created_at.astimezone(dt.UTC)
        # The signed part carries milliseconds; keep exactly that.
        object.__setattr__(
            self, "created_at", utc.replace(microsecond=utc.microsecond // 1000 * 1000)
        )
        if not isinstance(self.message_id, str) or not self.message_id:
            raise ValueError("the message id must be a non-empty string")
        if not _HEX64_RE.fullmatch(self.body_digest):
            raise ValueError("body_digest must be 64 lower-case hex digits (SHA-256)")
        if (self.request_hash is None) != (self.direction in REQUEST_DIRECTIONS):
            raise ValueError("a response entry needs its request_hash; a request entry has none")
        if isinstance(self.conf_version, bool) or not isinstance(self.conf_version, int):
            raise ValueError("conf_version must be an integer")
        object.__setattr__(self, "certificates", tuple(self.certificates))

    @property
    def is_request(self) -> bool:
        return self.direction in REQUEST_DIRECTIONS

    @classmethod
    def for_message(
        cls,
        direction: Direction,
        signed_part: SignedPart,
        *,
        signed_part_bytes: bytes,
        body: bytes,
        log_body: bool,
        signature: bytes,
        proof: InclusionProof | bytes,
        certificates: Sequence[x509.Certificate | bytes],
        ocsp: bytes,
        conf_version: int,
    ) -> LogEntry:
        """The entry for a transport message, its ids taken from the parsed signed part.

        ``log_body`` False keeps only the body's digest (the node's or the subsystem's privacy
        switch).
        """
        return cls(
            direction=direction,
            message_id=signed_part.message_id,
            client=signed_part.client,
            service=signed_part.service,
            user_id=signed_part.user_id,
            issue=signed_part.issue,
            protocol=signed_part.protocol,
            created_at=signed_part.created_at,
            signed_part=signed_part_bytes,
            body=body if log_body else None,
            body_digest=signed_part.body_sha256,
            signature=signature,
            proof=encode_proof(proof) if isinstance(proof, InclusionProof) else proof,
            certificates=tuple(
                c.public_bytes(Encoding.DER) if isinstance(c, x509.Certificate) else c
                for c in certificates
            ),
            ocsp=ocsp,
            request_hash=signed_part.request_hash
            if isinstance(signed_part, ResponsePart)
            else None,
            conf_version=conf_version,
        )

    def without_body(self) -> LogEntry:
        """The same entry with only the body's digest kept."""
        return dataclasses.replace(self, body=None)


def check_entry(entry: LogEntry) -> list[str]:
    """What is inconsistent in ``entry``: the body against its digest, and every id, time and
    digest against the signed part (which is what the signature covers). Empty when sound."""
    problems: list[str] = []
    if entry.body is not None and body_digest(entry.body) != entry.body_digest:
        problems.append("the stored body does not match body_digest")
    try:
        part = parse_signed_part(entry.signed_part)
    except FaultError as exc:
        problems.append(f"the signed part does not parse: {exc.message}")
        return problems
    if isinstance(part, RequestPart) != entry.is_request:
        problems.append(f"a {entry.direction} entry holds the signed part of a {part.kind}")
        return problems
    expected: tuple[tuple[str, object, object], ...] = (
        ("message_id", entry.message_id, part.message_id),
        ("client", entry.client, part.client),
        ("service", entry.service, part.service),
        ("user_id", entry.user_id, part.user_id),
        ("issue", entry.issue, part.issue),
        ("protocol", entry.protocol, part.protocol),
        ("created_at", entry.created_at, part.created_at),
        ("body_digest", entry.body_digest, part.body_sha256),
        (
            "request_hash",
            entry.request_hash,
            part.request_hash if isinstance(part, ResponsePart) else None,
        ),
    )
    for name, got, signed in expected:
        if got != signed:
            problems.append(f"{name} {got!s} differs from the signed part's {signed!s}")
    try:
        decode_proof(entry.proof)
    except FaultError as exc:
        problems.append(f"the inclusion proof is malformed: {exc.message}")
    return problems


# --- canonical form and chain ------------------------------------------------------------------


#: Times in the canonical form: UTC with microseconds, ``2026-11-01T12:00:00.000000Z`` (formatted
#: by hand, twice for every record written; see :func:`gateway.transport.utc_time_formatter`).
format_time: Final = utc_time_formatter(6, "times in a log record")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _node_obj(node: SecurityServerId) -> dict[str, str]:
    return {
        "instance": node.instance,
        "member_class": node.member_class,
        "member_code": node.member_code,
        "server_code": node.server_code,
    }


def canonical_object(
    node: SecurityServerId, seq: int, logged_at: dt.datetime, entry: LogEntry
) -> dict[str, object]:
    """The canonical form as a JSON value (see :func:`canonical_bytes`)."""
    return {
        "format": FORMAT,
        "node": _node_obj(node),
        "seq": seq,
        "logged_at": format_time(logged_at),
        "direction": entry.direction,
        "message_id": entry.message_id,
        "client": client_json(entry.client),
        "service": service_json(entry.service),
        "user_id": entry.user_id,
        "issue": entry.issue,
        "protocol": entry.protocol,
        "created_at": format_time(entry.created_at),
        "signed_part_sha256": _sha256_hex(entry.signed_part),
        "body_sha256": entry.body_digest,
        "signature_sha256": _sha256_hex(entry.signature),
        "proof_sha256": _sha256_hex(entry.proof),
        "certificates_sha256": [_sha256_hex(c) for c in entry.certificates],
        "ocsp_sha256": _sha256_hex(entry.ocsp),
        "request_hash": entry.request_hash,
        "conf_version": entry.conf_version,
    }


def canonical_bytes(
    node: SecurityServerId, seq: int, logged_at: dt.datetime, entry: LogEntry
) -> bytes:
    """The bytes a record's hash covers: RFC 8785 JSON (members sorted by name, no spaces,
    UTF-8, integers only) of :func:`canonical_object`."""
    return canonical_json(canonical_object(node, seq, logged_at, entry))


def chain_hash(previous_hash: bytes, canonical: bytes) -> bytes:
    """``SHA-256(previous record_hash || canonical bytes)``."""
    if len(previous_hash) != HASH_SIZE:
        raise ValueError("the previous record hash must be 32 bytes")
    return hashlib.sha256(previous_hash + canonical).digest()


# --- timestamps --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TimestampBatch:
    """One RFC 3161 token over the hash-tree root of ``size`` record hashes."""

    batch_id: int
    root: bytes
    size: int
    token: bytes
    tsa_url: str
    gen_time: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class RecordTimestamp:
    """A record's share of a batch timestamp: the batch and the record's inclusion proof."""

    batch: TimestampBatch
    proof: InclusionProof


def timestamp_leaf(record_hash: bytes) -> bytes:
    """The tree leaf of a record: ``leaf_hash(record_hash)`` (RFC 6962, 0x00 prefix)."""
    return hash_tree.leaf_hash(record_hash)


def batch_tree(record_hashes: Sequence[bytes]) -> tuple[bytes, list[InclusionProof]]:
    """The root a batch token timestamps, and each record's proof, in the order given."""
    return hash_tree.build([timestamp_leaf(h) for h in record_hashes])


def verify_record_timestamp(
    record_hash: bytes,
    stamp: RecordTimestamp,
    *,
    tsa_certs: Sequence[x509.Certificate],
    at: dt.datetime | None = None,
) -> TimestampInfo:
    """Check that ``record_hash`` is in the batch whose token one of ``tsa_certs`` signed.

    The token's imprint must be the SHA-256 tree root itself (the root is already a SHA-256
    digest, so ``openssl ts -verify -digest <root hex>`` checks the same token).
    Raises :class:`~certs.tsa.TimestampError`.
    """
    batch = stamp.batch
    if stamp.proof.tree_size != batch.size:
        raise TimestampError(
            f"the record's proof is for a tree of {stamp.proof.tree_size}, the batch "
            f"{batch.batch_id} has {batch.size} records"
        )
    if not hash_tree.verify_proof(timestamp_leaf(record_hash), stamp.proof, batch.root):
        raise TimestampError(
            f"the record's inclusion proof does not lead to the root of batch {batch.batch_id}"
        )
    info = verify_token(batch.token, digest=batch.root, tsa_certs=tsa_certs, at=at)
    if info.message_imprint.hash != "sha256":
        raise TimestampError("a batch token must timestamp the root with SHA-256")
    return info


# --- records -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LogRecord:
    """An entry appended to a node's log. ``timestamp`` is added later and is not chained."""

    node: SecurityServerId
    seq: int
    logged_at: dt.datetime
    entry: LogEntry
    prev_hash: bytes
    record_hash: bytes
    timestamp: RecordTimestamp | None = None

    @classmethod
    def append(
        cls,
        node: SecurityServerId,
        seq: int,
        logged_at: dt.datetime,
        entry: LogEntry,
        prev_hash: bytes,
    ) -> LogRecord:
        """The record that follows the record with hash ``prev_hash`` (its hash computed)."""
        if seq < 1:
            raise ValueError("sequence numbers start at 1")
        canonical = canonical_bytes(node, seq, logged_at, entry)
        return cls(node, seq, logged_at, entry, prev_hash, chain_hash(prev_hash, canonical))

    def canonical_bytes(self) -> bytes:
        return canonical_bytes(self.node, self.seq, self.logged_at, self.entry)


_CANONICAL_KEYS: Final = frozenset(
    {"format", "node", "seq", "logged_at", "direction", "message_id", "client", "service"}
    | {"user_id", "issue", "protocol", "created_at", "signed_part_sha256", "body_sha256"}
    | {"signature_sha256", "proof_sha256", "certificates_sha256", "ocsp_sha256"}
    | {"request_hash", "conf_version"}
)


def _int(obj: dict[str, object], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key!r} must be an integer")
    return value


def _opt_text(obj: dict[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string or null")
    return value


def _text(obj: dict[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    return value


def _time(text: str, key: str) -> dt.datetime:
    if not _TIME_RE.fullmatch(text):
        raise ValueError(f"{key!r} must look like 2026-11-01T12:00:00.000000Z")
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def _obj(value: object, key: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} must be an object")
    return value


def parse_record(
    canonical: bytes,
    *,
    signed_part: bytes,
    body: bytes | None,
    signature: bytes,
    proof: bytes,
    certificates: Sequence[bytes],
    ocsp: bytes,
    prev_hash: bytes,
    record_hash: bytes,
    timestamp: RecordTimestamp | None = None,
) -> LogRecord:
    """Rebuild a stored or archived record from its canonical bytes and its binary parts.

    The ids, times and body digest come from ``canonical``; the binary parts are taken as given,
    so a changed part shows up in :func:`verify_chain` as a hash mismatch. Raises
    :class:`LogIntegrityError` when ``canonical`` is not a canonical record of this format.
    """
    seq: int | None = None
    try:
        value = json.loads(canonical.decode("utf-8"))
        top = _obj(value, "record")
        raw_seq = top.get("seq")
        seq = raw_seq if isinstance(raw_seq, int) and not isinstance(raw_seq, bool) else None
        if set(top) != _CANONICAL_KEYS:
            raise ValueError(
                f"it has unknown members {sorted(set(top) - _CANONICAL_KEYS)} or lacks "
                f"{sorted(_CANONICAL_KEYS - set(top))}"
            )
        if top["format"] != FORMAT:
            raise ValueError(f"its format is {top['format']!r}, not {FORMAT!r}")
        node_o = _obj(top["node"], "node")
        node = SecurityServerId(
            _text(node_o, "instance"),
            _text(node_o, "member_class"),
            _text(node_o, "member_code"),
            _text(node_o, "server_code"),
        )
        client_o = _obj(top["client"], "client")
        sub = _opt_text(client_o, "subsystem_code")
        inst = _text(client_o, "instance")
        cls_, code = _text(client_o, "member_class"), _text(client_o, "member_code")
        client: ClientId = (
            MemberId(inst, cls_, code) if sub is None else SubsystemId(inst, cls_, code, sub)
        )
        service_o = _obj(top["service"], "service")
        service = ServiceId(
            _text(service_o, "instance"),
            _text(service_o, "member_class"),
            _text(service_o, "member_code"),
            _opt_text(service_o, "subsystem_code"),
            _text(service_o, "service_code"),
            _opt_text(service_o, "service_version"),
        )
        entry = LogEntry(
            direction=_text(top, "direction"),  # type: ignore[arg-type]  # checked by LogEntry
            message_id=_text(top, "message_id"),
            client=client,
            service=service,
            user_id=_opt_text(top, "user_id"),
            issue=_opt_text(top, "issue"),
            protocol=_text(top, "protocol"),  # type: ignore[arg-type]  # checked by LogEntry
            created_at=_time(_text(top, "created_at"), "created_at"),
            signed_part=signed_part,
            body=body,
            body_digest=_text(top, "body_sha256"),
            signature=signature,
            proof=proof,
            certificates=tuple(certificates),
            ocsp=ocsp,
            request_hash=_opt_text(top, "request_hash"),
            conf_version=_int(top, "conf_version"),
        )
        if seq is None or seq < 1:
            raise ValueError("'seq' must be a positive integer")
        record = LogRecord(
            node=node,
            seq=seq,
            logged_at=_time(_text(top, "logged_at"), "logged_at"),
            entry=entry,
            prev_hash=prev_hash,
            record_hash=record_hash,
            timestamp=timestamp,
        )
        # The other digests are recomputed from the parts given; if the stored ones differ,
        # the canonical form rebuilt below differs too.
        stored = canonical_object(record.node, record.seq, record.logged_at, record.entry)
        for key in ("signed_part_sha256", "signature_sha256", "proof_sha256", "ocsp_sha256"):
            stored[key] = top[key]
        stored["certificates_sha256"] = top["certificates_sha256"]
        if canonical_json(stored) != canonical:
            raise ValueError("it is not in canonical form (RFC 8785: sorted members, no spaces)")
    except (ValueError, IdentifierError, RecursionError) as exc:
        # UnicodeDecodeError and json.JSONDecodeError are ValueErrors.
        reason = exc.message if isinstance(exc, JisrError) else str(exc)
        where = f"record {seq}" if seq is not None else "a record"
        raise LogIntegrityError(f"{where} is malformed: {reason}", seq=seq) from exc
    return record


# --- verification ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ChainProblem:
    """Why the chain does not verify at record ``seq``."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.reason}"


@dataclasses.dataclass(frozen=True, slots=True)
class ChainSummary:
    """A verified run of records: ``first_seq..last_seq`` ending in ``head_hash``."""

    count: int
    first_seq: int | None
    last_seq: int | None
    head_hash: bytes | None


def chain_problems(
    records: Iterable[LogRecord],
    *,
    previous_hash: bytes | None = None,
    previous_seq: int | None = None,
    check_entries: bool = True,
) -> list[ChainProblem]:
    """Every problem found walking ``records`` in order (empty when the chain holds).

    The first record must follow ``previous_hash`` / ``previous_seq`` when given (for example
    the last record of the previous archive); record 1 must follow :data:`GENESIS_HASH`;
    otherwise the first record's own ``prev_hash`` is taken as the start. Each record must have
    the next sequence number, name the previous record's hash, hash to its ``record_hash``, and
    (``check_entries``) agree with its own signed part (:func:`check_entry`).
    """
    problems: list[ChainProblem] = []
    prev_hash = previous_hash
    prev_seq = previous_seq
    node: SecurityServerId | None = None
    for record in records:
        seq = record.seq
        if prev_seq is not None and seq != prev_seq + 1:
            if seq <= prev_seq:
                reason = f"it comes after record {prev_seq} (records were reordered or repeated)"
            else:
                reason = f"records {prev_seq + 1}..{seq - 1} are missing after record {prev_seq}"
            problems.append(ChainProblem(seq, reason))
        if prev_hash is None and seq == 1:
            prev_hash = GENESIS_HASH
        if prev_hash is not None and not hmac.compare_digest(record.prev_hash, prev_hash):
            problems.append(
                ChainProblem(seq, "its previous hash is not the hash of the record before it")
            )
        if node is not None and record.node != node:
            problems.append(ChainProblem(seq, f"it belongs to node {record.node}, not {node}"))
        node = record.node
        computed = chain_hash(record.prev_hash, record.canonical_bytes())
        if not hmac.compare_digest(computed, record.record_hash):
            problems.append(
                ChainProblem(
                    seq,
                    "its content does not hash to its record hash (an id, a time, the signed "
                    "part, signature, proof, certificates or OCSP response was changed)",
                )
            )
        if check_entries:
            problems.extend(ChainProblem(seq, p) for p in check_entry(record.entry))
        prev_hash = record.record_hash
        prev_seq = seq
    return problems


def verify_chain(
    records: Iterable[LogRecord],
    *,
    previous_hash: bytes | None = None,
    previous_seq: int | None = None,
    check_entries: bool = True,
) -> ChainSummary:
    """Check ``records`` as one unbroken run of a node's log (see :func:`chain_problems`).

    Raises :class:`LogIntegrityError` naming the first problem and how many there are.
    """
    items = list(records)
    problems = chain_problems(
        items,
        previous_hash=previous_hash,
        previous_seq=previous_seq,
        check_entries=check_entries,
    )
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise LogIntegrityError(
            f"the message log does not verify: {problems[0]}{more}", seq=problems[0].seq
        )
    if not items:
        return ChainSummary(0, None, None, None)
    return ChainSummary(len(items), items[0].seq, items[-1].seq, items[-1].record_hash)
