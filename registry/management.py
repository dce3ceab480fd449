"""Management requests from nodes: verify, store, approve or decline, execute.

Rules:

- A request is canonical JSON bytes (keys sorted, no whitespace, UTF-8)::

      {"type": "register_server" | "register_client" | "delete_client" | "delete_server",
       "server": "INST/CLASS/MEMBER/CODE", "client": "INST/CLASS/MEMBER[/SUB]",
       "address": "host:port", "auth_cert": "<b64 DER>",
       "created_at": "2026-11-22T10:00:00Z", "nonce": "<16..128 chars>"}

  ``client`` only in client requests; ``address`` and ``auth_cert`` only in register_server.
  It arrives as ``{"request": b64, "signatures": {"auth"?, "owner"}, "ocsp": {"auth"?,
  "owner"}}``: detached CMS signatures over the request bytes and the stapled OCSP responses
  for their signer certificates.
- ``owner`` is signed with a signing certificate of the member that owns the server (subject
  serialNumber = member id). ``auth`` (register_server only) is signed with the node's
  authentication key and its signer certificate must be exactly ``auth_cert`` whose CN names
  the server: proof that the node holds the key it registers.
- Every signer certificate must chain to an approved CA's root (through that CA's listed
  intermediates or ones the signature carries; :func:`certs.validation.validate_path` at the
  registry's now), conform to its profile, and come with a *good* OCSP
  response from that CA (or its listed responder) no older than the instance's
  ``ocsp_freshness_s``.
- ``created_at`` must be within :data:`MAX_CLOCK_DIFFERENCE` of now and the nonce never seen
  before (nonces are kept with the stored requests, so a replay is refused forever).
- A refused request changes nothing except one ``request.refused`` audit row naming the
  problem (not the request body), so the operator can see attempts. Accepted requests are
  stored ``submitted``; with ``auto_approve`` they are approved and executed at once.
- Execution happens in the same transaction as the state change; if it fails (the server was
  registered meanwhile), nothing changes and the request stays ``submitted``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
import re
from typing import Any, Final, Literal

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.cms import verify_detached
from certs.errors import CertValidityError, PathValidationError, WrongProfileError
from certs.ocsp import verify_response
from certs.profiles import AUTHENTICATION, SIGNING, Profile
from certs.validation import validate_path
from config.errors import IdentifierError, JisrError, PkiError
from gateway.canonical import canonical_json, parse_strict_json
from gateway.identifiers import MemberId, SecurityServerId, SubsystemId, parse_client
from registry.errors import DuplicateError, NotFoundError, RequestRefused
from registry.store import RegistryStore, check_address

log = structlog.get_logger(__name__)

#: Largest request body accepted (two signatures with chains and two OCSP responses fit).
MAX_BODY_BYTES: Final = 256 * 1024
#: Largest signed request inside the body.
MAX_REQUEST_BYTES: Final = 32 * 1024
#: How far ``created_at`` may be from the registry's clock.
MAX_CLOCK_DIFFERENCE: Final = dt.timedelta(minutes=5)

RequestType = Literal["register_server", "register_client", "delete_client", "delete_server"]
_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "register_server": ("type", "server", "address", "auth_cert", "created_at", "nonce"),
    "register_client": ("type", "server", "client", "created_at", "nonce"),
    "delete_client": ("type", "server", "client", "created_at", "nonce"),
    "delete_server": ("type", "server", "created_at", "nonce"),
}
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_\-+/=.]{16,128}")
_TIME_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


@dataclasses.dataclass(frozen=True, slots=True)
class ManagementRequest:
    """A parsed request; the raw bytes are what the signatures cover."""

    type: RequestType
    server: SecurityServerId
    client: MemberId | SubsystemId | None
    address: str | None
    auth_cert: x509.Certificate | None
    created_at: dt.datetime
    nonce: str
    raw: bytes
    payload: dict[str, Any]


def _refuse(message: str, fault: str = "Client.InvalidRequest") -> RequestRefused:
    return RequestRefused(message, fault_code=fault)


def _b64(value: object, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 4:
        raise _refuse(f"{what} must be a base64 string of at most {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refuse(f"{what} is not valid base64: {exc}") from exc


def parse_request(raw: bytes) -> ManagementRequest:
    """Parse and check the form of the signed request bytes (no trust decisions here)."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise _refuse(f"the request is {len(raw)} bytes; at most {MAX_REQUEST_BYTES} are accepted")
    try:
        obj = parse_strict_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse(f"the request is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise _refuse("the request must be a JSON object")
    kind = obj.get("type")
    if kind not in _FIELDS:
        raise _refuse(
            f"unknown request type {kind!r}; use register_server, register_client, "
            "delete_client or delete_server"
        )
    fields = _FIELDS[kind]
    missing = [f for f in fields if f not in obj]
    unknown = sorted(set(obj) - set(fields))
    if missing or unknown:
        raise _refuse(
            f"{kind} request: missing field(s) {', '.join(missing) or 'none'}, unknown "
            f"field(s) {', '.join(unknown) or 'none'}; expected exactly {', '.join(fields)}"
        )
    if canonical_json(obj) != raw:
        raise _refuse(
            "the request is not canonical JSON (keys sorted, no whitespace, UTF-8); sign "
            "exactly the canonical bytes"
        )
    for name in fields:
        if not isinstance(obj[name], str):
            raise _refuse(f"request field {name} must be a string")
    try:
        server = SecurityServerId.parse(obj["server"])
        client = parse_client(obj["client"]) if "client" in obj else None
    except IdentifierError as exc:
        raise _refuse(exc.message, exc.fault_code) from exc
    if not _TIME_RE.fullmatch(obj["created_at"]):
        raise _refuse("created_at must be an RFC 3339 UTC time like 2026-11-22T10:00:00Z")
    created_at = dt.datetime.strptime(obj["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.UTC
    )
    if not _NONCE_RE.fullmatch(obj["nonce"]):
        raise _refuse("nonce must be 16 to 128 characters of base64 or URL-safe base64")
    address = auth_cert = None
    if kind == "register_server":
        try:
            address = check_address(obj["address"])
        except JisrError as exc:
            raise _refuse(exc.message) from exc
        der = _b64(obj["auth_cert"], "auth_cert", 16 * 1024)
        try:
            auth_cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise _refuse(f"auth_cert is not a DER X.509 certificate: {exc}") from exc
    return ManagementRequest(
        type=kind,
        server=server,
        client=client,
        address=address,
        auth_cert=auth_cert,
        created_at=created_at,
        nonce=obj["nonce"],
        raw=raw,
        payload=obj,
    )


def _parse_body(body: bytes) -> tuple[bytes, dict[str, bytes], dict[str, bytes]]:
    if len(body) > MAX_BODY_BYTES:
        raise _refuse(f"the request body is {len(body)} bytes; at most {MAX_BODY_BYTES}")
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse(f"the request body is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict) or set(obj) != {"request", "signatures", "ocsp"}:
        raise _refuse('the request body must be {"request": ..., "signatures": ..., "ocsp": ...}')
    raw = _b64(obj["request"], "request", MAX_REQUEST_BYTES)
    parts: list[dict[str, bytes]] = []
    for section in ("signatures", "ocsp"):
        value = obj[section]
        if not isinstance(value, dict) or not set(value) <= {"auth", "owner"}:
            raise _refuse(
                f'{section} must be an object with keys "owner" and, to register a server, "auth"'
            )
        parts.append({k: _b64(v, f"{section}.{k}", 64 * 1024) for k, v in value.items()})
    return raw, parts[0], parts[1]


@dataclasses.dataclass(frozen=True, slots=True)
class _TrustedCa:
    name: str
    root: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    responders: tuple[x509.Certificate, ...]


class ManagementService:
    """Verifies and records requests; approves and declines them for the operator."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store

    async def submit(self, body: bytes, *, now: dt.datetime, remote: str = "") -> dict[str, Any]:
        """Verify and store a request; return its id and state. Refusals raise RequestRefused."""
        try:
            request, signers = await self._verify(body, now=now)
            if await self.store.nonce_seen(request.nonce):
                raise _refuse(
                    f"nonce {request.nonce!r} was already used: replayed request refused; sign "
                    "a new request with a fresh nonce",
                    "Client.DuplicateMessageId",
                )
            request_id = await self.store.insert_request(
                f"node:{request.server}",
                type_=request.type,
                server=str(request.server),
                client=str(request.client) if request.client else None,
                payload=request.payload,
                raw=request.raw,
                signatures={k: base64.b64encode(v).decode() for k, v in signers.items()},
                nonce=request.nonce,
            )
        except (RequestRefused, DuplicateError, NotFoundError) as exc:
            await self.store.audit(
                f"remote:{remote}" if remote else "remote",
                "request.refused",
                {"problem": exc.message},
            )
            if isinstance(exc, RequestRefused):
                raise
            raise _refuse(exc.message) from exc
        if (await self.store.settings()).auto_approve:
            try:
                await self.decide("auto-approve", request_id, "approve", "auto_approve is on")
            except JisrError as exc:
                # The request was valid when stored; it waits for the operator instead.
                log.warning("auto-approval failed", request=request_id, error=exc.message)
        return await self.store.get_request(request_id)

    async def _verify(
        self, body: bytes, *, now: dt.datetime
    ) -> tuple[ManagementRequest, dict[str, bytes]]:
        raw, signatures, ocsp_responses = _parse_body(body)
        request = parse_request(raw)
        settings = await self.store.settings()
        if request.server.instance != settings.instance_id:
            raise _refuse(
                f"server {request.server} belongs to instance {request.server.instance}, but "
                f"this registry serves {settings.instance_id}"
            )
        if abs(now - request.created_at) > MAX_CLOCK_DIFFERENCE:
            raise _refuse(
                f"created_at {request.payload['created_at']} is more than "
                f"{int(MAX_CLOCK_DIFFERENCE.total_seconds())} s from the registry's clock; "
                "check the node's clock and sign a new request"
            )
        await self._check_state(request)

        needed = {"owner", "auth"} if request.type == "register_server" else {"owner"}
        if set(signatures) != needed or set(ocsp_responses) != needed:
            raise _refuse(
                f"a {request.type} request needs exactly the signature(s) and OCSP response(s) "
                f"{', '.join(sorted(needed))}",
                "Client.MissingSignature",
            )
        cas = await self._trusted_cas()
        max_age = dt.timedelta(seconds=settings.ocsp_freshness_s)

        owner_cert, carried = self._check_signature(signatures["owner"], raw, "owner")
        self._check_certificate(
            owner_cert, carried, ocsp_responses["owner"], SIGNING, cas, now, max_age
        )
        owner_id = owner_cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
        if not owner_id or owner_id[0].value != str(request.server.owner):
            raise _refuse(
                f"the owner signature is by {owner_cert.subject.rfc4514_string()}, not by a "
                f"signing certificate of {request.server.owner}, the owner of {request.server}",
                "Client.InvalidSignatureValue",
            )
        if request.type == "register_server":
            assert request.auth_cert is not None
            auth_cert, carried = self._check_signature(signatures["auth"], raw, "auth")
            if auth_cert.public_bytes(Encoding.DER) != request.auth_cert.public_bytes(Encoding.DER):
                raise _refuse(
                    "the auth signature was not made with the key of auth_cert: proof of "
                    "possession of the authentication key failed",
                    "Client.InvalidSignatureValue",
                )
            self._check_certificate(
                auth_cert, carried, ocsp_responses["auth"], AUTHENTICATION, cas, now, max_age
            )
            cn = auth_cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            if not cn or cn[0].value != str(request.server):
                raise _refuse(
                    f"auth_cert was issued to {auth_cert.subject.rfc4514_string()}, not to "
                    f"node {request.server}",
                    "Client.IncorrectCertificate",
                )
        return request, signatures

    async def _check_state(self, request: ManagementRequest) -> None:
        """Refuse early what could not be executed, so the operator sees only sensible ones."""
        members = {m["id"]: m for m in await self.store.list_members()}
        owner = str(request.server.owner)
        if owner not in members:
            raise _refuse(
                f"member {owner} is not registered; ask the registry operator to add it first",
                "Client.UnknownMember",
            )
        servers = {s["id"]: s for s in await self.store.list_servers()}
        server = servers.get(str(request.server))
        if request.type == "register_server":
            if server is not None:
                raise _refuse(f"security server {request.server} is already registered")
            assert request.auth_cert is not None
            der = base64.b64encode(request.auth_cert.public_bytes(Encoding.DER)).decode()
            if any(der in s["auth_certs"] for s in servers.values()):
                raise _refuse("auth_cert is already registered for another security server")
            return
        if server is None:
            raise _refuse(f"security server {request.server} is not registered")
        if request.client is None:
            return
        client = request.client
        if str(client.member) not in members:
            raise _refuse(f"member {client.member} is not registered", "Client.UnknownMember")
        listed = str(client) in server["clients"]
        if request.type == "register_client" and listed:
            raise _refuse(f"{client} is already a client of {request.server}")
        if request.type == "delete_client" and not listed:
            raise _refuse(f"{client} is not a client of {request.server}")

    async def _trusted_cas(self) -> list[_TrustedCa]:
        result = []
        for ca in await self.store.list_cas():
            root = x509.load_der_x509_certificate(base64.b64decode(ca["certificate"]))
            result.append(
                _TrustedCa(
                    ca["name"],
                    root,
                    tuple(
                        x509.load_der_x509_certificate(base64.b64decode(c))
                        for c in ca["intermediates"]
                    ),
                    tuple(
                        x509.load_der_x509_certificate(base64.b64decode(o["certificate"]))
                        for o in ca["ocsp"]
                        if o["certificate"]
                    ),
                )
            )
        return result

    @staticmethod
    def _check_signature(
        signature: bytes, raw: bytes, which: str
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """The signer and the other certificates the signature carries (possible intermediates)."""
        try:
            verified = verify_detached(signature, raw)
            return verified.signer, tuple(c for c in verified.certificates if c != verified.signer)
        except PkiError as exc:
            raise _refuse(
                f"the {which} signature does not verify: {exc.message}",
                "Client.InvalidSignatureValue",
            ) from exc

    @staticmethod
    def _check_certificate(
        cert: x509.Certificate,
        carried: tuple[x509.Certificate, ...],
        ocsp_der: bytes,
        profile: Profile,
        cas: list[_TrustedCa],
        now: dt.datetime,
        max_age: dt.timedelta,
    ) -> None:
        subject = cert.subject.rfc4514_string()
        for ca in cas:
            try:
                path = validate_path(
                    cert,
                    intermediates=[*ca.intermediates, *carried],
                    roots=[ca.root],
                    at=now,
                    profile=profile,
                )
            except WrongProfileError as exc:
                raise _refuse(exc.message, "Client.IncorrectCertificate") from exc
            except CertValidityError as exc:
                raise _refuse(exc.message, "Client.CertValidityTime") from exc
            except PathValidationError:
                continue
            issuer = path[1]
            try:
                verdict = verify_response(
                    ocsp_der,
                    cert,
                    issuer,
                    trusted_responders=list(ca.responders),
                    now=now,
                    max_age=max_age,
                )
            except PkiError as exc:
                raise _refuse(
                    f"OCSP response for {subject} is not acceptable: {exc.message}",
                    "Client.CertValidation",
                ) from exc
            if verdict.status.state != "good":
                raise _refuse(
                    f"certificate {subject} is {verdict.status.state} according to OCSP"
                    + (
                        f" (revoked {verdict.status.revoked_at:%Y-%m-%d %H:%M} UTC)"
                        if verdict.status.revoked_at
                        else ""
                    ),
                    "Client.CertValidation",
                )
            return
        raise _refuse(
            f"certificate {subject} was not issued by an approved certification authority "
            f"(issuer {cert.issuer.rfc4514_string()})",
            "Client.InvalidCertPath",
        )

    async def decide(
        self,
        actor: str,
        request_id: int,
        decision: Literal["approve", "decline"],
        reason: str = "",
    ) -> dict[str, Any]:
        """Approve (and execute) or decline a submitted request, atomically."""
        async with self.store.deciding(actor, request_id, decision, reason) as (conn, row):
            if decision == "approve":
                await self._execute(conn, row)
        return await self.store.get_request(request_id)

    async def _execute(self, conn: Any, row: dict[str, Any]) -> None:
        payload = row["payload"]
        server = SecurityServerId.parse(payload["server"])
        store = self.store
        if row["type"] == "register_server":
            await store.add_server(
                "", server, payload["address"], [base64.b64decode(payload["auth_cert"])], conn=conn
            )
        elif row["type"] == "delete_server":
            await store.delete_server("", server, conn=conn)
        else:
            client = parse_client(payload["client"])
            if row["type"] == "register_client":
                if isinstance(client, SubsystemId):
                    await store.ensure_subsystem(conn, client)
                await store.add_server_client("", server, client, conn=conn)
            else:
                await store.remove_server_client("", server, client, conn=conn)
