"""Jisr node-to-node transport v1: the signed envelope, batch signing and its checks, without I/O.

Rules (the normative text is ``docs/transport-v1.md``; section numbers below refer to it):

- A message is ``MAGIC`` followed by five tagged, length-prefixed sections in a fixed order:
  signed part, body, proof, signature, OCSP response (§4). Anything else is refused.
- The signed part is canonical JSON (RFC 8785) and must arrive canonical: one meaning, one byte
  string (§5). Bodies are covered through their SHA-256 in the signed part.
- Signatures are CMS over the *root content* of a hash tree built over a batch of signed parts;
  each message carries its inclusion proof (§6). :class:`BatchSigner` makes them;
  :func:`verify_message` checks digest, proof and signature, using a cache of signatures it has
  already verified.
- Trust in the signer (certificate path, OCSP, which member the certificate belongs to) is the
  caller's job with ``certs.validation`` / ``certs.ocsp`` and the global configuration: this
  module returns the certificates and the OCSP bytes for that.
- Every refusal is a :class:`~gateway.faults.FaultError` with the code §9 names. Functions that
  check received bytes take ``prefix``: ``Server.ServerProxy`` on the provider node (requests),
  ``Server.ClientProxy`` on the consumer node (responses).
- Time is always passed in (``now``); nothing here reads the clock, except that a fresh message
  id is a random UUID.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import hashlib
import heapq
import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

from cryptography import x509

from certs.cms import CmsVerified, sign_detached, verify_detached
from certs.errors import MalformedSignatureError, SignatureError
from certs.signer import Signer
from config.errors import IdentifierError, JisrError
from gateway import hash_tree
from gateway.canonical import canonical_json
from gateway.faults import CLIENT_PROXY, SERVER_PROXY, FaultError
from gateway.hash_tree import InclusionProof
from gateway.identifiers import ClientId, MemberId, SecurityServerId, ServiceId, SubsystemId

CONTENT_TYPE: Final = "application/vnd.jisr.transport-v1"
EXCHANGE_PATH: Final = "/jisr/v1/exchange"
MAGIC: Final = b"JISR/T1\n"
VERSION: Final = 1
ROOT_TYPE: Final = "jisr-batch/1"

MAX_SIGNED_PART_BYTES: Final = 256 * 1024
MAX_PROOF_BYTES: Final = 9 + 32 * 20
MAX_SIGNATURE_BYTES: Final = 256 * 1024
MAX_OCSP_BYTES: Final = 64 * 1024
#: Default largest body (X-Road's default largest logged body); a node setting overrides it.
DEFAULT_MAX_BODY_BYTES: Final = 10 * 1024 * 1024

DEFAULT_MAX_CLOCK_SKEW: Final = dt.timedelta(seconds=300)
DEFAULT_REPLAY_WINDOW: Final = dt.timedelta(seconds=600)

_SECTION_NAMES: Final = ("signed part", "body", "proof", "signature", "ocsp")
_HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD_RE: Final = re.compile(r"[\x00\r\n]")
_CREATED_AT_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
)
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_METHOD_RE: Final = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_REQUEST_HASH_RE: Final = re.compile(r"[A-Za-z0-9+/]{86}==")

Protocol = Literal["REST", "SOAP"]
Headers = tuple[tuple[str, str], ...]


def _fault(prefix: str, name: str, message: str) -> FaultError:
    return FaultError(f"{prefix}.{name}", message)


#: Digests of large bodies hashed lately, by object identity; the body is kept in the entry, so
#: its id cannot be reused while the entry lives, and bytes never change. A body is checked
#: several times on its way through a node (signed part, framing, message log), and hashing
#: 100 KiB again each time cost more than the rest of that work.
_BODY_DIGESTS: dict[int, tuple[bytes, str]] = {}
_BODY_DIGESTS_MAX: Final = 16
#: Bodies smaller than this are hashed every time (cheaper than remembering them); larger
#: than the upper bound, too (so the memo never holds more than a few MiB).
_BODY_MEMO_RANGE: Final = (16 * 1024, 1024 * 1024)


def body_digest(body: bytes) -> str:
    """The ``body_sha256`` value for ``body``: lower-case hex SHA-256."""
    low, high = _BODY_MEMO_RANGE
    if not low <= len(body) <= high or type(body) is not bytes:
        return hashlib.sha256(body).hexdigest()
    known = _BODY_DIGESTS.get(id(body))
    if known is not None and known[0] is body:
        return known[1]
    digest = hashlib.sha256(body).hexdigest()
    if len(_BODY_DIGESTS) >= _BODY_DIGESTS_MAX:
        _BODY_DIGESTS.pop(next(iter(_BODY_DIGESTS)), None)
    _BODY_DIGESTS[id(body)] = (body, digest)
    return digest


def utc_time_formatter(digits: Literal[3, 6], what: str) -> Callable[[dt.datetime], str]:
    """A formatter of timezone-aware times as UTC with ``digits`` digits of the second's
    fraction (3: ``2026-11-01T12:00:00.000Z``, 6: ``2026-11-01T12:00:00.000000Z``); a naive time
    is refused with ``ValueError`` naming ``what``.

    The transport's ``created_at`` and the message-log records use one each. Formatted by hand
    (``%``-formatting of a tuple): strftime costs several times as much, and these run on every
    message sent and received and twice for every record logged (a four-digit year is what the
    parsers accept in any case). A closure, so a call costs what the hand-written function did.
    """
    template = "%04d-%02d-%02dT%02d:%02d:%02d." + ("%03dZ" if digits == 3 else "%06dZ")
    unit = 1000 if digits == 3 else 1
    naive = f"{what} must be timezone-aware"

    def format_time(when: dt.datetime) -> str:
        if when.tzinfo is None:
            raise ValueError(naive)
        u = when.astimezone(dt.UTC)
        return template % (
            u.year,
            u.month,
            u.day,
            u.hour,
            u.minute,
            u.second,
            u.microsecond // unit,
        )

    return format_time


#: ``created_at`` form: UTC with milliseconds, ``2026-11-01T12:00:00.000Z``.
format_time: Final = utc_time_formatter(3, "created_at")


def _to_millis(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    utc = when.astimezone(dt.UTC)
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000)


def _check_headers(headers: Sequence[tuple[str, str]]) -> Headers:
    result = []
    for pair in headers:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError("each header must be a [name, value] pair")
        name, value = pair
        if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
            raise ValueError(f"header name {name!r} is not an HTTP token")
        if not isinstance(value, str) or _HEADER_VALUE_BAD_RE.search(value):
            raise ValueError(f"header {name} has a value with CR, LF or NUL, or is not text")
        result.append((name, value))
    return tuple(result)


def client_json(client: ClientId) -> dict[str, str | None]:
    """A client id as the signed forms carry it (the message log's records too)."""
    return {
        "instance": client.instance,
        "member_class": client.member_class,
        "member_code": client.member_code,
        "subsystem_code": client.subsystem_code if isinstance(client, SubsystemId) else None,
    }


def service_json(service: ServiceId) -> dict[str, str | None]:
    """A service id as the signed forms carry it (the message log's records too)."""
    return {
        "instance": service.instance,
        "member_class": service.member_class,
        "member_code": service.member_code,
        "subsystem_code": service.subsystem_code,
        "service_code": service.service_code,
        "service_version": service.service_version,
    }


def _server_json(server: SecurityServerId | None) -> dict[str, str] | None:
    if server is None:
        return None
    return {
        "instance": server.instance,
        "member_class": server.member_class,
        "member_code": server.member_code,
        "server_code": server.server_code,
    }


def _optional_text(value: str | None, what: str) -> None:
    if value is not None and (not value or len(value) > 1024 or _HEADER_VALUE_BAD_RE.search(value)):
        raise ValueError(f"{what} must be 1..1024 characters without CR, LF or NUL")


@dataclasses.dataclass(frozen=True, slots=True)
class RequestPart:
    """The signed part of a request (§5.1): everything the provider node acts on."""

    protocol: Protocol
    message_id: str
    client: ClientId
    service: ServiceId
    method: str
    path: str
    query: str | None
    headers: Headers
    body_sha256: str
    created_at: dt.datetime
    user_id: str | None = None
    issue: str | None = None
    represented_party: str | None = None
    target_server: SecurityServerId | None = None

    kind: Literal["request"] = dataclasses.field(default="request", init=False)
    #: The canonical bytes once made: a part is encoded for its hash-tree leaf, the frame, the
    #: message log and the request hash, and the encoding is the same every time.
    _canonical: bytes | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "created_at", _to_millis(self.created_at))
        object.__setattr__(self, "headers", _check_headers(self.headers))
        _check_common(self.protocol, self.message_id, self.body_sha256)
        if not _METHOD_RE.fullmatch(self.method):
            raise ValueError(f"method {self.method!r} is not an upper-case HTTP method")
        if self.path and not self.path.startswith("/"):
            raise ValueError("path must be empty or start with '/'")
        for text, what in ((self.path, "path"), (self.query or "", "query")):
            if any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
                raise ValueError(f"{what} must be percent-encoded printable ASCII")
        _optional_text(self.user_id, "user_id")
        _optional_text(self.issue, "issue")
        _optional_text(self.represented_party, "represented_party")

    def to_json(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "kind": "request",
            "protocol": self.protocol,
            "id": self.message_id,
            "client": client_json(self.client),
            "service": service_json(self.service),
            "target_server": _server_json(self.target_server),
            "user_id": self.user_id,
            "issue": self.issue,
            "represented_party": self.represented_party,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": [list(h) for h in self.headers],
            "body_sha256": self.body_sha256,
            "created_at": format_time(self.created_at),
        }

    def to_bytes(self) -> bytes:
        """The canonical signed-part bytes: what is hashed into the tree and logged."""
        return _canonical_bytes_of(self)


@dataclasses.dataclass(frozen=True, slots=True)
class ResponsePart:
    """The signed part of a response (§5.2), bound to its request by ``request_hash``."""

    protocol: Protocol
    message_id: str
    client: ClientId
    service: ServiceId
    status: int
    headers: Headers
    body_sha256: str
    request_hash: str
    created_at: dt.datetime
    user_id: str | None = None
    issue: str | None = None

    kind: Literal["response"] = dataclasses.field(default="response", init=False)
    #: The canonical bytes once made: a part is encoded for its hash-tree leaf, the frame, the
    #: message log and the request hash, and the encoding is the same every time.
    _canonical: bytes | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "created_at", _to_millis(self.created_at))
        object.__setattr__(self, "headers", _check_headers(self.headers))
        _check_common(self.protocol, self.message_id, self.body_sha256)
        if isinstance(self.status, bool) or not 100 <= self.status <= 599:
            raise ValueError(f"status {self.status!r} is not an HTTP status 100..599")
        if not _REQUEST_HASH_RE.fullmatch(self.request_hash):
            raise ValueError("request_hash must be base64 of a SHA-512 digest")
        _optional_text(self.user_id, "user_id")
        _optional_text(self.issue, "issue")

    @classmethod
    def answering(
        cls,
        request: RequestPart,
        *,
        status: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        created_at: dt.datetime,
    ) -> ResponsePart:
        """The response part for ``request``: echoes its ids and binds to its hash."""
        return cls(
            protocol=request.protocol,
            message_id=request.message_id,
            client=request.client,
            service=request.service,
            status=status,
            headers=tuple(headers),
            body_sha256=body_digest(body),
            request_hash=request_hash(request.to_bytes()),
            created_at=created_at,
            user_id=request.user_id,
            issue=request.issue,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "kind": "response",
            "protocol": self.protocol,
            "id": self.message_id,
            "client": client_json(self.client),
            "service": service_json(self.service),
            "user_id": self.user_id,
            "issue": self.issue,
            "status": self.status,
            "headers": [list(h) for h in self.headers],
            "body_sha256": self.body_sha256,
            "request_hash": self.request_hash,
            "created_at": format_time(self.created_at),
        }

    def to_bytes(self) -> bytes:
        return _canonical_bytes_of(self)


SignedPart = RequestPart | ResponsePart

#: Signed parts by their canonical bytes, newest last: the parts this process made or parsed
#: lately. Parsing is a pure function of the bytes and parts are immutable, so the message
#: log's consistency check of a part made or received a moment ago need not parse it again.
_RECENT_PARTS: dict[bytes, SignedPart] = {}
_RECENT_PARTS_MAX: Final = 512


def _remember_part(data: bytes, part: SignedPart) -> None:
    if len(_RECENT_PARTS) >= _RECENT_PARTS_MAX:
        _RECENT_PARTS.pop(next(iter(_RECENT_PARTS)), None)
    _RECENT_PARTS[data] = part


def _canonical_bytes_of(part: SignedPart) -> bytes:
    data = part._canonical
    if data is None:
        data = canonical_json(part.to_json())
        object.__setattr__(part, "_canonical", data)
        # Every part was checked when it was built, so parsing its canonical bytes gives it
        # back (the transport tests hold that round trip).
        _remember_part(data, part)
    return data


def _check_common(protocol: str, message_id: str, digest: str) -> None:
    if protocol not in ("REST", "SOAP"):
        raise ValueError(f"protocol {protocol!r} is neither REST nor SOAP")
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= 255:
        raise ValueError("the message id must be 1..255 characters")
    if _HEADER_VALUE_BAD_RE.search(message_id):
        raise ValueError("the message id must not contain CR, LF or NUL")
    if not _HEX64_RE.fullmatch(digest):
        raise ValueError("body_sha256 must be 64 lower-case hex digits")


def request_hash(request_part_bytes: bytes) -> str:
    """``request_hash`` / ``X-Road-Request-Hash``: base64 SHA-512 of the request's signed part."""
    return base64.b64encode(hashlib.sha512(request_part_bytes).digest()).decode("ascii")


# --- parsing the signed part -------------------------------------------------------------------

_REQUEST_KEYS: Final = frozenset(
    {"version", "kind", "protocol", "id", "client", "service", "target_server", "user_id"}
    | {"issue", "represented_party", "method", "path", "query", "headers", "body_sha256"}
    | {"created_at"}
)
_RESPONSE_KEYS: Final = frozenset(
    {"version", "kind", "protocol", "id", "client", "service", "user_id", "issue", "status"}
    | {"headers", "body_sha256", "request_hash", "created_at"}
)
_CLIENT_KEYS: Final = frozenset({"instance", "member_class", "member_code", "subsystem_code"})
_SERVICE_KEYS: Final = _CLIENT_KEYS | {"service_code", "service_version"}
_SERVER_KEYS: Final = frozenset({"instance", "member_class", "member_code", "server_code"})


class _Invalid(Exception):
    """Internal: a reason the signed part is refused (turned into one fault by the caller)."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _Invalid(f"member {key!r} appears twice")
        result[key] = value
    return result


def _refuse_number(text: str) -> object:
    raise _Invalid(f"number {text!r} is not an integer")


#: One decoder for every signed part (``json.loads`` with options builds a new one per call).
_DECODER: Final = json.JSONDecoder(parse_float=_refuse_number, parse_constant=_refuse_number)


def _object(value: object, keys: frozenset[str], what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} must be an object")
    if set(value) != keys:
        missing = sorted(keys - set(value))
        extra = sorted(set(value) - keys)
        raise _Invalid(f"{what} has missing members {missing} or unknown members {extra}")
    return value


def _str(obj: Mapping[str, object], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise _Invalid(f"{key!r} must be a string")
    return value


def _opt_str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj[key]
    if value is not None and not isinstance(value, str):
        raise _Invalid(f"{key!r} must be a string or null")
    return value


def _parse_client(value: object) -> ClientId:
    o = _object(value, _CLIENT_KEYS, "client")
    sub = _opt_str(o, "subsystem_code")
    inst, cls, code = _str(o, "instance"), _str(o, "member_class"), _str(o, "member_code")
    return MemberId(inst, cls, code) if sub is None else SubsystemId(inst, cls, code, sub)


def _parse_service(value: object) -> ServiceId:
    o = _object(value, _SERVICE_KEYS, "service")
    return ServiceId(
        _str(o, "instance"),
        _str(o, "member_class"),
        _str(o, "member_code"),
        _opt_str(o, "subsystem_code"),
        _str(o, "service_code"),
        _opt_str(o, "service_version"),
    )


def _parse_server(value: object) -> SecurityServerId | None:
    if value is None:
        return None
    o = _object(value, _SERVER_KEYS, "target_server")
    return SecurityServerId(
        _str(o, "instance"), _str(o, "member_class"), _str(o, "member_code"), _str(o, "server_code")
    )


def _parse_headers(value: object) -> Headers:
    if not isinstance(value, list):
        raise _Invalid("'headers' must be an array of [name, value] pairs")
    pairs = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise _Invalid("each header must be a [name, value] pair")
        pairs.append((item[0], item[1]))
    return _check_headers(pairs)


def _parse_time(text: str) -> dt.datetime:
    if not _CREATED_AT_RE.fullmatch(text):
        raise _Invalid("'created_at' must look like 2026-11-01T12:00:00.000Z")
    # The pattern fixed every field's position; the constructor refuses out-of-range values
    # (month 13, second 60) as strptime did, at a fraction of its cost.
    return dt.datetime(
        int(text[0:4]),
        int(text[5:7]),
        int(text[8:10]),
        int(text[11:13]),
        int(text[14:16]),
        int(text[17:19]),
        int(text[20:23]) * 1000,
        tzinfo=dt.UTC,
    )


def parse_signed_part(data: bytes, *, prefix: str = SERVER_PROXY) -> SignedPart:
    """Parse and check signed-part bytes as received (§5); refuse non-canonical encodings.

    Faults: ``InvalidMessage`` for anything malformed, ``InvalidProtocolVersion`` for a version
    other than 1.
    """
    known = _RECENT_PARTS.get(data) if type(data) is bytes else None
    if known is not None:
        return known
    try:
        # No duplicate-member hook on this path: a part whose members repeat cannot equal the
        # canonical encoding of what was parsed, so the check below refuses it (and names the
        # repeated member).
        text = data.decode("utf-8")
        value = _DECODER.decode(text)
        if not isinstance(value, dict):
            raise _Invalid("it is not a JSON object")
        version = value.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise _Invalid("'version' must be an integer")
        if version != VERSION:
            raise _fault(
                prefix,
                "InvalidProtocolVersion",
                f"the signed part has transport version {version}; this node speaks version "
                f"{VERSION} only",
            )
        kind = value.get("kind")
        part: SignedPart
        if kind == "request":
            o = _object(value, _REQUEST_KEYS, "the request's signed part")
            part = RequestPart(
                protocol=_str(o, "protocol"),  # type: ignore[arg-type]  # checked in __post_init__
                message_id=_str(o, "id"),
                client=_parse_client(o["client"]),
                service=_parse_service(o["service"]),
                method=_str(o, "method"),
                path=_str(o, "path"),
                query=_opt_str(o, "query"),
                headers=_parse_headers(o["headers"]),
                body_sha256=_str(o, "body_sha256"),
                created_at=_parse_time(_str(o, "created_at")),
                user_id=_opt_str(o, "user_id"),
                issue=_opt_str(o, "issue"),
                represented_party=_opt_str(o, "represented_party"),
                target_server=_parse_server(o["target_server"]),
            )
        elif kind == "response":
            o = _object(value, _RESPONSE_KEYS, "the response's signed part")
            status = o["status"]
            if isinstance(status, bool) or not isinstance(status, int):
                raise _Invalid("'status' must be an integer")
            part = ResponsePart(
                protocol=_str(o, "protocol"),  # type: ignore[arg-type]  # checked in __post_init__
                message_id=_str(o, "id"),
                client=_parse_client(o["client"]),
                service=_parse_service(o["service"]),
                status=status,
                headers=_parse_headers(o["headers"]),
                body_sha256=_str(o, "body_sha256"),
                request_hash=_str(o, "request_hash"),
                created_at=_parse_time(_str(o, "created_at")),
                user_id=_opt_str(o, "user_id"),
                issue=_opt_str(o, "issue"),
            )
        else:
            raise _Invalid('\'kind\' must be "request" or "response"')
        if canonical_json(part.to_json()) != data:
            json.loads(text, object_pairs_hook=_no_duplicates)  # the precise reason, if it is that
            raise _Invalid("it is not in canonical form (RFC 8785: sorted members, no spaces)")
        # The received bytes are the canonical form: kept, so encoding the part again (the
        # request hash of a response) costs nothing.
        object.__setattr__(part, "_canonical", data)
        _remember_part(data, part)
    except FaultError:
        raise
    except (_Invalid, ValueError, IdentifierError, RecursionError) as exc:
        # UnicodeDecodeError and json.JSONDecodeError are ValueErrors.
        reason = exc.message if isinstance(exc, JisrError) else str(exc)
        raise _fault(
            prefix, "InvalidMessage", f"the message's signed part is malformed: {reason}"
        ) from exc
    return part


# --- proofs and root content -------------------------------------------------------------------


def root_content(root: bytes, size: int) -> bytes:
    """The bytes a batch signature signs (§6.2): names the hash, the root and the tree size."""
    if len(root) != hash_tree.HASH_SIZE:
        raise ValueError("the root must be a SHA-256 digest")
    return (f'{{"alg":"sha256","root":"{root.hex()}","size":{size},"type":"{ROOT_TYPE}"}}').encode(
        "ascii"
    )


def encode_proof(proof: InclusionProof) -> bytes:
    """Section 3 bytes (§6.3)."""
    return struct.pack(">IIB", proof.leaf_index, proof.tree_size, len(proof.path)) + b"".join(
        proof.path
    )


def decode_proof(data: bytes, *, prefix: str = SERVER_PROXY) -> InclusionProof:
    """Parse section 3; a malformed proof is ``MalformedSignature``."""
    if len(data) < 9:
        raise _fault(prefix, "MalformedSignature", "the inclusion proof is shorter than 9 bytes")
    index, size, count = struct.unpack(">IIB", data[:9])
    if len(data) != 9 + 32 * count:
        raise _fault(
            prefix,
            "MalformedSignature",
            f"the inclusion proof announces {count} hashes but holds {len(data) - 9} bytes",
        )
    path = tuple(data[9 + 32 * i : 41 + 32 * i] for i in range(count))
    try:
        return InclusionProof(index, size, path)
    except ValueError as exc:
        raise _fault(
            prefix, "MalformedSignature", f"the inclusion proof is invalid: {exc}"
        ) from exc


# --- framing -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TransportMessage:
    """A decoded message: the parsed signed part plus every section's bytes as received."""

    signed_part: SignedPart
    signed_part_bytes: bytes
    body: bytes
    proof_bytes: bytes
    signature: bytes
    ocsp: bytes


def encode_message(
    signed_part: SignedPart,
    body: bytes,
    proof: InclusionProof,
    signature: bytes,
    ocsp: bytes,
) -> tuple[str, bytes]:
    """Frame a signed message (§4); returns the HTTP Content-Type and the bytes to send."""
    if body_digest(body) != signed_part.body_sha256:
        raise ValueError("the body does not match the signed part's body_sha256")
    sections = (signed_part.to_bytes(), body, encode_proof(proof), signature, ocsp)
    # Joined in one go: the body (up to megabytes) is copied once, not once per concatenation.
    pieces = [MAGIC]
    for tag, value in enumerate(sections, start=1):
        pieces += (struct.pack(">BI", tag, len(value)), value)
    return CONTENT_TYPE, b"".join(pieces)


def max_message_bytes(max_body_bytes: int) -> int:
    """The largest framed message a receiver with ``max_body_bytes`` accepts."""
    limits = (MAX_SIGNED_PART_BYTES, MAX_PROOF_BYTES, MAX_SIGNATURE_BYTES, MAX_OCSP_BYTES)
    return len(MAGIC) + 5 * 5 + max_body_bytes + sum(limits)


def _too_large(prefix: str, message: str) -> FaultError:
    name = "InvalidResponse" if prefix == CLIENT_PROXY else "RequestTooLarge"
    return _fault(prefix, name, message)


def decode_message(
    content_type: str | None,
    data: bytes,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    prefix: str = SERVER_PROXY,
    kind: Literal["request", "response"] | None = None,
) -> TransportMessage:
    """Split and check a received message (§4, §5); signatures are checked by verify_message.

    Faults: ``InvalidContentType``, ``RequestTooLarge`` (``InvalidResponse`` for responses),
    ``InvalidMessage`` (also when ``kind`` is given and the message is of the other kind),
    ``InvalidProtocolVersion``.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != CONTENT_TYPE:
        raise _fault(
            prefix,
            "InvalidContentType",
            f"content type {content_type!r} is not {CONTENT_TYPE}; the peer is not speaking "
            "Jisr transport v1",
        )
    if len(data) > max_message_bytes(max_body_bytes):
        raise _too_large(prefix, f"the message of {len(data)} bytes exceeds this node's limit")
    if not data.startswith(MAGIC):
        raise _fault(prefix, "InvalidMessage", "the message does not start with JISR/T1")
    limits = (
        MAX_SIGNED_PART_BYTES,
        max_body_bytes,
        MAX_PROOF_BYTES,
        MAX_SIGNATURE_BYTES,
        MAX_OCSP_BYTES,
    )
    view = memoryview(data)
    pos = len(MAGIC)
    values: list[bytes] = []
    for tag, (name, limit) in enumerate(zip(_SECTION_NAMES, limits, strict=True), start=1):
        if len(data) - pos < 5:
            raise _fault(prefix, "InvalidMessage", f"the message ends before section {tag}")
        got, length = struct.unpack_from(">BI", data, pos)
        if got != tag:
            raise _fault(
                prefix,
                "InvalidMessage",
                f"expected section {tag} ({name}) but found tag {got}; sections must appear "
                "once each, in order",
            )
        if length > limit:
            raise _too_large(prefix, f"the {name} of {length} bytes exceeds the limit of {limit}")
        pos += 5
        if len(data) - pos < length:
            raise _fault(prefix, "InvalidMessage", f"the {name} runs past the end of the message")
        values.append(bytes(view[pos : pos + length]))
        pos += length
    if pos != len(data):
        raise _fault(prefix, "InvalidMessage", f"{len(data) - pos} bytes follow the last section")
    signed, body, proof, signature, ocsp = values
    part = parse_signed_part(signed, prefix=prefix)
    if kind is not None and part.kind != kind:
        raise _fault(prefix, "InvalidMessage", f"expected a {kind} but received a {part.kind}")
    return TransportMessage(part, signed, body, proof, signature, ocsp)


# --- signing -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Sealed:
    """One message's share of a batch signature: its proof and the signature over the root."""

    signed_part: SignedPart
    proof: InclusionProof
    signature: bytes


class BatchSigner:
    """Collects signed parts of one member and signs them all with one CMS signature (§6).

    Sans-IO: the caller decides when a batch is complete (a size or a few milliseconds) and
    calls :meth:`sign` with the time; a batch of one is an ordinary signature.
    """

    def __init__(self, signer: Signer, *, max_batch: int = 1024) -> None:
        if not 1 <= max_batch <= hash_tree.MAX_LEAVES:
            raise ValueError(f"max_batch must be 1..{hash_tree.MAX_LEAVES}")
        self._signer = signer
        self._max_batch = max_batch
        self._pending: list[SignedPart] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self._max_batch

    def add(self, signed_part: SignedPart) -> int:
        """Queue a message; returns its position in the result of the next :meth:`sign`."""
        if self.full:
            raise ValueError("the batch is full; call sign() first")
        self._pending.append(signed_part)
        return len(self._pending) - 1

    def sign(self, *, now: dt.datetime, prefix: str = CLIENT_PROXY) -> list[Sealed]:
        """Sign every queued message at once; the queue is emptied even when signing fails.

        Fault: ``CannotCreateSignature`` when the key cannot sign.
        """
        batch, self._pending = self._pending, []
        if not batch:
            return []
        root, proofs = hash_tree.build([hash_tree.leaf_hash(p.to_bytes()) for p in batch])
        try:
            signature = sign_detached(
                root_content(root, len(batch)), self._signer, signing_time=now
            )
        except JisrError as exc:
            raise _fault(
                prefix, "CannotCreateSignature", f"cannot sign the message batch: {exc.message}"
            ) from exc
        return [Sealed(p, proof, signature) for p, proof in zip(batch, proofs, strict=True)]


def encode_sealed(sealed: Sealed, body: bytes, ocsp: bytes) -> tuple[str, bytes]:
    """Frame a message signed by :class:`BatchSigner` or :func:`sign_one`."""
    return encode_message(sealed.signed_part, body, sealed.proof, sealed.signature, ocsp)


def sign_one(
    signed_part: SignedPart, signer: Signer, *, now: dt.datetime, prefix: str = CLIENT_PROXY
) -> Sealed:
    """Sign a single message (a tree of one)."""
    batch = BatchSigner(signer, max_batch=1)
    batch.add(signed_part)
    return batch.sign(now=now, prefix=prefix)[0]


# --- verification ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedMessage:
    """A message whose digest, proof and signature hold; trust in the signer is still open."""

    signed_part: SignedPart
    signer: x509.Certificate
    #: The certificates carried in the signature (the signer's first among them, no root).
    certificates: tuple[x509.Certificate, ...]
    signing_time: dt.datetime | None
    ocsp: bytes
    root_content: bytes
    from_cache: bool


class VerifiedSignatureCache:
    """Batch signatures already verified (§6.5), keyed by SHA-256 of the signature bytes.

    Bounded in entries and in age, so a stream of distinct signatures cannot grow it without
    limit and old entries do not outlive the replay window.
    """

    def __init__(
        self, *, max_entries: int = 10_000, max_age: dt.timedelta = DEFAULT_REPLAY_WINDOW
    ) -> None:
        self._max_entries = max_entries
        self._max_age = max_age
        self._entries: collections.OrderedDict[bytes, tuple[dt.datetime, bytes, CmsVerified]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, *, now: dt.datetime) -> tuple[bytes, CmsVerified] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, content, verified = entry
        if now - stored_at > self._max_age:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return content, verified

    def put(self, key: bytes, content: bytes, verified: CmsVerified, *, now: dt.datetime) -> None:
        self._entries[key] = (now, content, verified)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


def verify_message(
    msg: TransportMessage,
    *,
    verified_cache: VerifiedSignatureCache | None,
    now: dt.datetime,
    prefix: str = SERVER_PROXY,
) -> VerifiedMessage:
    """Check body digest, proof, batch signature and OCSP presence (§9 rows 9-13).

    Certificate path, validity, OCSP contents and the signer's member (rows 14-17) are the
    caller's checks, with the returned certificates and OCSP bytes.
    """
    part = msg.signed_part
    if body_digest(msg.body) != part.body_sha256:
        raise _fault(
            prefix,
            "InvalidSignatureValue",
            "the body does not match the signed body_sha256 (it was changed in transit)",
        )
    if not msg.signature:
        raise _fault(prefix, "MissingSignature", "the message carries no signature")
    proof = decode_proof(msg.proof_bytes, prefix=prefix)
    root = hash_tree.root_from_proof(hash_tree.leaf_hash(msg.signed_part_bytes), proof)
    if root is None:
        raise _fault(prefix, "MalformedSignature", "the inclusion proof does not lead to a root")
    content = root_content(root, proof.tree_size)
    key = hashlib.sha256(msg.signature).digest()
    cached = verified_cache.get(key, now=now) if verified_cache is not None else None
    if cached is not None:
        cached_content, verified = cached
        if cached_content != content:
            raise _fault(
                prefix,
                "InvalidSignatureValue",
                "the signed part or its proof was changed: it does not lead to the root this "
                "batch signature covers",
            )
        from_cache = True
    else:
        try:
            verified = verify_detached(msg.signature, content)
        except MalformedSignatureError as exc:
            raise _fault(prefix, "MalformedSignature", exc.message) from exc
        except SignatureError as exc:
            raise _fault(
                prefix,
                "InvalidSignatureValue",
                "the signature does not cover this message (the signed part, proof or "
                f"signature was changed): {exc.message}",
            ) from exc
        if verified_cache is not None:
            verified_cache.put(key, content, verified, now=now)
        from_cache = False
    if not msg.ocsp:
        raise _fault(
            prefix,
            "CertValidation",
            "the message carries no OCSP response for its signing certificate",
        )
    return VerifiedMessage(
        part,
        verified.signer,
        verified.certificates,
        verified.signing_time,
        msg.ocsp,
        content,
        from_cache,
    )


def check_response(
    request: RequestPart, response: SignedPart, *, prefix: str = CLIENT_PROXY
) -> ResponsePart:
    """The consumer node's binding check (§9): the response answers exactly this request."""
    if not isinstance(response, ResponsePart):
        raise _fault(prefix, "InconsistentResponse", "the peer answered with a request")
    expected = (
        request.protocol,
        request.message_id,
        request.client,
        request.service,
        request.user_id,
        request.issue,
    )
    got = (
        response.protocol,
        response.message_id,
        response.client,
        response.service,
        response.user_id,
        response.issue,
    )
    if got != expected:
        raise _fault(
            prefix,
            "InconsistentResponse",
            "the response's protocol, id, client, service, user id or issue differ from the "
            "request's",
        )
    if response.request_hash != request_hash(request.to_bytes()):
        raise _fault(
            prefix, "InconsistentResponse", "the response's request_hash is not this request's"
        )
    return response


def check_clock_skew(
    created_at: dt.datetime,
    now: dt.datetime,
    *,
    max_skew: dt.timedelta = DEFAULT_MAX_CLOCK_SKEW,
    prefix: str = SERVER_PROXY,
) -> None:
    """Refuse a message made too far from this node's clock (§8): ``InvalidMessage``."""
    if abs(now - created_at) > max_skew:
        raise _fault(
            prefix,
            "InvalidMessage",
            f"the message was created at {format_time(created_at)}, more than "
            f"{int(max_skew.total_seconds())} s from this node's clock ({format_time(now)}); "
            "check both nodes' time synchronisation",
        )


class ReplayGuard:
    """Seen (client, message id) pairs within a window (§8), for one process.

    Entries expire ``window`` after they were accepted; the window must be at least twice the
    allowed clock skew so that a replay always fails one of the two checks. A node with several
    processes keeps the same set in PostgreSQL instead.
    """

    def __init__(
        self,
        window: dt.timedelta = DEFAULT_REPLAY_WINDOW,
        *,
        max_skew: dt.timedelta = DEFAULT_MAX_CLOCK_SKEW,
        max_entries: int = 1_000_000,
    ) -> None:
        if window < 2 * max_skew:
            raise ValueError("the replay window must be at least twice the allowed clock skew")
        self._window = window
        self._max_skew = max_skew
        self._max_entries = max_entries
        self._seen: dict[tuple[str, str], dt.datetime] = {}
        self._expiry: list[tuple[dt.datetime, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def _forget_expired(self, now: dt.datetime) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            expires, key = heapq.heappop(self._expiry)
            if self._seen.get(key) == expires:
                del self._seen[key]

    def check_time(
        self, created_at: dt.datetime, now: dt.datetime, *, prefix: str = SERVER_PROXY
    ) -> None:
        """Only the clock-skew half (``InvalidMessage``), for a caller that keeps the seen
        pairs elsewhere (a node's shared replay store)."""
        check_clock_skew(created_at, now, max_skew=self._max_skew, prefix=prefix)

    def check_and_remember(
        self,
        client: ClientId,
        message_id: str,
        created_at: dt.datetime,
        now: dt.datetime,
        *,
        prefix: str = SERVER_PROXY,
    ) -> None:
        """Accept a request once; faults ``InvalidMessage`` (skew) or ``DuplicateMessageId``."""
        check_clock_skew(created_at, now, max_skew=self._max_skew, prefix=prefix)
        self._forget_expired(now)
        key = (str(client), message_id)
        if key in self._seen:
            raise _fault(
                prefix,
                "DuplicateMessageId",
                f"message id {message_id!r} from {client} was already received; every request "
                "needs a new X-Road-Id",
            )
        if len(self._seen) >= self._max_entries:
            raise _fault(
                prefix,
                "InternalError",
                "too many requests in the replay window to remember them all; try again later",
            )
        expires = now + self._window
        self._seen[key] = expires
        heapq.heappush(self._expiry, (expires, key))
