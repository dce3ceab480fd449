"""The global configuration: what the registry publishes and every node trusts.

Rules:

* The document is canonical JSON in UTF-8 (keys sorted, no whitespace, non-ASCII kept as
  UTF-8): exactly :func:`gateway.canonical.canonical_json`. A document that is not
  byte-for-byte in that form is refused, so ``GlobalConf.from_document(b).to_document() == b``
  always holds and a digest names one document only.
* Its digest is ``"sha256:" + lowercase hex SHA-256 of the document bytes``; version N+1
  carries version N's digest in ``previous_digest``.
* Parsing is strict: an unknown ``format``, a missing or unknown field, a wrong JSON type, a
  malformed identifier, a reference to something the document does not define, or a
  certificate that does not parse is refused with :class:`MalformedGlobalConf`, whose message
  names the field (``members[2].id``) and the problem.
* Validation runs whenever a :class:`GlobalConf` is made (from a document or by
  :func:`build_globalconf`), so an invalid configuration cannot exist in memory, and the
  registry finds its own mistakes before any node does.
* Lookups a node makes per message (``servers_for_client``, ``is_in_group``,
  ``auth_cert_registered``...) are dictionary look-ups on indexes built once per version.
* The registry signs the document bytes with a detached CMS signature (:func:`sign_globalconf`)
  by a configuration signing key the document lists as ``active``. A node accepts a download
  only through :func:`verify_globalconf`: signer trusted by the anchor or announced by the
  previous accepted version, strict parse, same instance, no rollback, unbroken digest chain
  between consecutive versions, not expired. Time is always an argument; nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, NoReturn, TypeVar
from urllib.parse import urljoin

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from certs.cms import sign_detached, verify_detached
from certs.errors import MalformedSignatureError, SignatureError
from certs.signer import Signer
from config.errors import ConfigError, IdentifierError
from gateway.anchor import Anchor

# Re-exported: the configuration's encodings have always been importable from here.
from gateway.canonical import canonical_json as canonical_json
from gateway.canonical import der_of as der_of
from gateway.canonical import digest_of as digest_of
from gateway.canonical import format_time as format_time
from gateway.canonical import parse_strict_json
from gateway.faults import CLIENT_PROXY, FaultError
from gateway.identifiers import (
    ClientId,
    MemberId,
    SecurityServerId,
    SubsystemId,
    check_part,
    parse_client,
)

FORMAT: Final = "jisr-globalconf/1"

#: A document larger than this is refused before it is parsed.
MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024

#: How far a document's ``generated_at`` may lie ahead of the node's clock.
CLOCK_SKEW: Final = dt.timedelta(seconds=60)

#: The default lifetime of a configuration (X-Road's 600 s).
DEFAULT_EXPIRY: Final = dt.timedelta(seconds=600)

SigningKeyState = Literal["active", "announced"]

_T = TypeVar("_T")

_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_KEY_ID_RE: Final = re.compile(r"[0-9a-f]{64}")
_TIME_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_REL_PATH_RE: Final = re.compile(r"[A-Za-z0-9._/-]+")


# --------------------------------------------------------------------------- errors


class GlobalConfError(FaultError):
    """A global configuration was refused; the code says why, as X-Road reports it."""

    fault_name: str = "InvalidMessage"

    def __init__(self, message: str, *, fault_name: str | None = None) -> None:
        super().__init__(f"{CLIENT_PROXY}.{fault_name or self.fault_name}", message)


class MalformedGlobalConf(GlobalConfError):
    """The document does not parse or does not validate (format, fields, identifiers)."""


class UntrustedGlobalConf(GlobalConfError):
    """The signature does not verify, or the signer is not a trusted configuration key."""

    fault_name = "InvalidSignatureValue"


class RejectedGlobalConf(GlobalConfError):
    """A valid, signed document this node must still refuse: instance, rollback, chain, clock."""


class OutdatedGlobalConf(GlobalConfError):
    """The configuration has expired; a node must not exchange messages with it."""

    fault_name = "OutdatedGlobalConf"


# --------------------------------------------------------------------------- encodings


def key_id_of(certificate: x509.Certificate) -> str:
    """A configuration signing key's id: hex SHA-256 of its certificate's DER."""
    return hashlib.sha256(der_of(certificate)).hexdigest()


def _b64_cert(certificate: x509.Certificate) -> str:
    return base64.b64encode(der_of(certificate)).decode("ascii")


# --------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True, slots=True)
class GlobalSettings:
    """Instance-wide settings every node applies (seconds)."""

    ocsp_freshness_s: int = 3600
    timestamping_interval_s: int = 60
    conf_expiry_s: int = 600
    conf_refresh_s: int = 60


@dataclasses.dataclass(frozen=True, slots=True)
class MemberClass:
    code: str
    description: str


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """A member and the subsystems registered for it."""

    id: MemberId
    name: str
    subsystems: tuple[SubsystemId, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SecurityServer:
    """A node: where it listens, the TLS certificates it may present, the clients it hosts."""

    id: SecurityServerId
    address: str
    auth_certs: tuple[x509.Certificate, ...] = ()
    clients: tuple[ClientId, ...] = ()

    @property
    def host(self) -> str:
        host = self.address.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


@dataclasses.dataclass(frozen=True, slots=True)
class OcspResponder:
    url: str
    certificate: x509.Certificate


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovedCa:
    """A certification authority whose certificates members and nodes may use."""

    name: str
    certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()
    ocsp: tuple[OcspResponder, ...] = ()
    profile: str = "jisr/1"


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovedTsa:
    name: str
    url: str
    certificate: x509.Certificate


@dataclasses.dataclass(frozen=True, slots=True)
class GlobalGroup:
    code: str
    description: str
    members: tuple[ClientId, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SigningKey:
    """A configuration signing key: ``active`` signs now, ``announced`` may sign the next one."""

    certificate: x509.Certificate
    state: SigningKeyState = "active"

    @property
    def key_id(self) -> str:
        return key_id_of(self.certificate)


@dataclasses.dataclass(frozen=True, slots=True)
class _Index:
    """Lookups precomputed once per configuration version."""

    members: dict[MemberId, Member]
    subsystems: frozenset[SubsystemId]
    clients: tuple[ClientId, ...]
    servers: dict[SecurityServerId, SecurityServer]
    servers_by_client: dict[ClientId, tuple[SecurityServer, ...]]
    auth_certs: frozenset[tuple[SecurityServerId, bytes]]
    server_by_auth_cert: dict[bytes, SecurityServer]
    groups: dict[str, frozenset[ClientId]]
    cas_by_subject: dict[bytes, tuple[tuple[ApprovedCa, x509.Certificate], ...]]
    ocsp_responders: tuple[OcspResponder, ...]
    tsa_by_der: dict[bytes, ApprovedTsa]
    signing_certs: dict[bytes, SigningKey]


@dataclasses.dataclass(frozen=True)
class GlobalConf:
    """One version of the global configuration, validated on construction.

    Build one with :func:`build_globalconf` (registry) or :meth:`from_document` (node).
    """

    instance: str
    version: int
    generated_at: dt.datetime
    expires_at: dt.datetime
    previous_digest: str | None
    settings: GlobalSettings
    member_classes: tuple[MemberClass, ...]
    members: tuple[Member, ...]
    security_servers: tuple[SecurityServer, ...]
    approved_cas: tuple[ApprovedCa, ...]
    approved_tsas: tuple[ApprovedTsa, ...]
    global_groups: tuple[GlobalGroup, ...]
    signing_keys: tuple[SigningKey, ...]
    _index: _Index = dataclasses.field(init=False, repr=False, compare=False)
    _document: bytes = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _validate(self))
        # Serialised once: nodes compare and digest it on every download.
        object.__setattr__(self, "_document", canonical_json(self.to_obj()))

    # ---- document form

    @classmethod
    def from_document(cls, document: bytes) -> GlobalConf:
        """Parse and validate a document; refuse anything but the canonical form."""
        if not isinstance(document, bytes | bytearray):
            raise MalformedGlobalConf("the global configuration document must be bytes")
        if len(document) > MAX_DOCUMENT_BYTES:
            raise MalformedGlobalConf(
                f"the global configuration document is {len(document)} bytes; at most "
                f"{MAX_DOCUMENT_BYTES} are accepted"
            )
        obj = _load_json(bytes(document), "the global configuration document")
        conf = _conf_from_obj(obj)
        if conf.to_document() != document:
            raise MalformedGlobalConf(
                "the global configuration document is not in canonical JSON form (keys sorted, "
                "no whitespace, UTF-8); it was altered after the registry generated it"
            )
        return conf

    def to_obj(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "instance": self.instance,
            "version": self.version,
            "generated_at": format_time(self.generated_at),
            "expires_at": format_time(self.expires_at),
            "previous_digest": self.previous_digest,
            "settings": dataclasses.asdict(self.settings),
            "member_classes": [
                {"code": c.code, "description": c.description} for c in self.member_classes
            ],
            "members": [
                {
                    "id": str(m.id),
                    "name": m.name,
                    "subsystems": [s.subsystem_code for s in m.subsystems],
                }
                for m in self.members
            ],
            "security_servers": [
                {
                    "id": str(s.id),
                    "address": s.address,
                    "auth_certs": [_b64_cert(c) for c in s.auth_certs],
                    "clients": [str(c) for c in s.clients],
                }
                for s in self.security_servers
            ],
            "approved_cas": [
                {
                    "name": ca.name,
                    "certificate": _b64_cert(ca.certificate),
                    "intermediates": [_b64_cert(c) for c in ca.intermediates],
                    "ocsp": [
                        {"url": o.url, "certificate": _b64_cert(o.certificate)} for o in ca.ocsp
                    ],
                    "profile": ca.profile,
                }
                for ca in self.approved_cas
            ],
            "approved_tsas": [
                {"name": t.name, "url": t.url, "certificate": _b64_cert(t.certificate)}
                for t in self.approved_tsas
            ],
            "global_groups": [
                {
                    "code": g.code,
                    "description": g.description,
                    "members": [str(m) for m in g.members],
                }
                for g in self.global_groups
            ],
            "signing_keys": [
                {"key_id": k.key_id, "certificate": _b64_cert(k.certificate), "state": k.state}
                for k in self.signing_keys
            ],
        }

    def to_document(self) -> bytes:
        """The canonical bytes the registry signs and serves."""
        return self._document

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of :meth:`to_document`; the next version's ``previous_digest``."""
        return digest_of(self.to_document())

    # ---- lookups (O(1) on indexes built once)

    def is_expired(self, now: dt.datetime) -> bool:
        return now >= self.expires_at

    def member(self, member_id: MemberId) -> Member | None:
        return self._index.members.get(member_id)

    def is_member(self, member_id: MemberId) -> bool:
        return member_id in self._index.members

    def has_subsystem(self, subsystem: SubsystemId) -> bool:
        return subsystem in self._index.subsystems

    def has_client(self, client: ClientId) -> bool:
        """A registered member or subsystem."""
        if isinstance(client, SubsystemId):
            return client in self._index.subsystems
        return client in self._index.members

    def clients(self) -> tuple[ClientId, ...]:
        """Every member followed by its subsystems, in document order (for ``listClients``)."""
        return self._index.clients

    def server(self, server_id: SecurityServerId) -> SecurityServer | None:
        return self._index.servers.get(server_id)

    def servers_for_client(self, client: ClientId) -> list[SecurityServer]:
        """The nodes that host ``client``; a provider's request may go to any of them."""
        return list(self._index.servers_by_client.get(client, ()))

    def auth_cert_registered(self, server_id: SecurityServerId, cert: x509.Certificate) -> bool:
        """Whether ``cert`` is one of the TLS certificates the node ``server_id`` may present."""
        return (server_id, der_of(cert)) in self._index.auth_certs

    def server_by_auth_cert(self, cert: x509.Certificate) -> SecurityServer | None:
        """The node a TLS peer presenting ``cert`` is, if any."""
        return self._index.server_by_auth_cert.get(der_of(cert))

    def group_members(self, group_code: str) -> frozenset[ClientId]:
        """The clients listed in a global group; empty for an unknown group."""
        return self._index.groups.get(group_code, frozenset())

    def has_group(self, group_code: str) -> bool:
        return group_code in self._index.groups

    def is_in_group(self, client: ClientId, group_code: str) -> bool:
        """Exact membership: a subsystem is in a group only if the group lists that subsystem."""
        return client in self._index.groups.get(group_code, frozenset())

    def approved_ca_for(self, cert: x509.Certificate) -> ApprovedCa | None:
        """The approved CA whose root or one of whose intermediates issued ``cert``.

        The issuer is found by name and then confirmed by checking the signature, so a
        look-alike CA with the same name is not mistaken for an approved one. Whether the
        certificate is valid, or revoked, is a separate check (path validation, OCSP).
        """
        for ca, issuer in self._index.cas_by_subject.get(cert.issuer.public_bytes(), ()):
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca
        return None

    @property
    def ocsp_responders(self) -> tuple[OcspResponder, ...]:
        """Every approved CA's OCSP responders, in document order."""
        return self._index.ocsp_responders

    @property
    def tsas(self) -> tuple[ApprovedTsa, ...]:
        return self.approved_tsas

    def tsa_for(self, cert: x509.Certificate) -> ApprovedTsa | None:
        """The approved TSA whose certificate is ``cert``, if any."""
        return self._index.tsa_by_der.get(der_of(cert))

    def signing_key_for(self, cert: x509.Certificate) -> SigningKey | None:
        return self._index.signing_certs.get(der_of(cert))

    @property
    def active_signing_keys(self) -> tuple[SigningKey, ...]:
        return tuple(k for k in self.signing_keys if k.state == "active")


# --------------------------------------------------------------------------- builder


def build_globalconf(
    instance: str,
    version: int,
    generated_at: dt.datetime,
    expiry: dt.timedelta | None,
    previous_digest: str | None,
    settings: GlobalSettings,
    member_classes: Iterable[MemberClass],
    members: Iterable[Member],
    servers: Iterable[SecurityServer],
    cas: Iterable[ApprovedCa],
    tsas: Iterable[ApprovedTsa],
    groups: Iterable[GlobalGroup],
    signing_keys: Iterable[SigningKey],
) -> GlobalConf:
    """Assemble and validate one version (registry side).

    ``generated_at`` is truncated to whole seconds (the document's precision);
    ``expires_at`` is ``generated_at + expiry``, with ``expiry`` defaulting to
    ``settings.conf_expiry_s``. Raises :class:`MalformedGlobalConf` naming the first problem.
    """
    if generated_at.tzinfo is None:
        raise MalformedGlobalConf("generated_at must be a timezone-aware time")
    generated_at = generated_at.astimezone(dt.UTC).replace(microsecond=0)
    if expiry is None:
        expiry = dt.timedelta(seconds=settings.conf_expiry_s)
    expires_at = generated_at + dt.timedelta(seconds=int(expiry.total_seconds()))
    return GlobalConf(
        instance=instance,
        version=version,
        generated_at=generated_at,
        expires_at=expires_at,
        previous_digest=previous_digest,
        settings=settings,
        member_classes=tuple(member_classes),
        members=tuple(members),
        security_servers=tuple(servers),
        approved_cas=tuple(cas),
        approved_tsas=tuple(tsas),
        global_groups=tuple(groups),
        signing_keys=tuple(signing_keys),
    )


# --------------------------------------------------------------------------- validation


def _bad(path: str, problem: str) -> NoReturn:
    if path == "pointer":
        raise MalformedGlobalConf(f"the global configuration pointer {problem}")
    where = "document" if path == "document" else f"field {path}"
    raise MalformedGlobalConf(f"global configuration {where} {problem}")


def _check_text(value: object, path: str, *, allow_empty: bool = False, limit: int = 4096) -> str:
    if not isinstance(value, str):
        _bad(path, f"must be a string, got {_json_type(value)}")
    if not value and not allow_empty:
        _bad(path, "must not be empty")
    if len(value) > limit:
        _bad(path, f"is {len(value)} characters long; at most {limit} are allowed")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            _bad(path, "contains a lone UTF-16 surrogate (\\ud800-\\udfff), not valid Unicode")
    return value


def _check_url(value: object, path: str) -> str:
    url = _check_text(value, path, limit=2048)
    if not url.isascii() or not url.isprintable():
        _bad(path, f"{url!r} must be printable ASCII (percent-encode anything else)")
    if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
        _bad(path, f"{url!r} is not an http:// or https:// URL")
    if any(c.isspace() for c in url):
        _bad(path, f"{url!r} contains whitespace")
    return url


def _check_address(value: object, path: str) -> str:
    address = _check_text(value, path, limit=512)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        _bad(path, f"{address!r} is not of the form HOST:PORT (port 1-65535)")
    if any(c.isspace() or c == "/" for c in host):
        _bad(path, f"{address!r} has whitespace or '/' in its host")
    return address


def _check_int(value: object, path: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _bad(path, f"must be an integer, got {_json_type(value)}")
    if value < minimum:
        _bad(path, f"must be at least {minimum}, got {value}")
    return value


def _check_cert(value: object, path: str) -> x509.Certificate:
    if not isinstance(value, x509.Certificate):
        _bad(path, f"must be an X.509 certificate, got {type(value).__name__}")
    return value


def _check_id_part(value: object, path: str) -> str:
    try:
        return check_part(value, path)  # type: ignore[arg-type]
    except IdentifierError as exc:
        _bad(path, f"is invalid: {exc.message}")


def _unique(seen: set[Any], key: object, path: str, what: str) -> None:
    if key in seen:
        _bad(path, f"{what} {key} appears more than once")
    seen.add(key)


def _validate(conf: GlobalConf) -> _Index:
    """Check every rule of the format; return the lookup indexes built on the way."""
    instance = _check_id_part(conf.instance, "instance")
    _check_int(conf.version, "version", minimum=1)
    for name in ("generated_at", "expires_at"):
        value = getattr(conf, name)
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            _bad(name, "must be a timezone-aware datetime")
        if value.utcoffset() != dt.timedelta(0) or value.microsecond:
            _bad(name, "must be in UTC with whole seconds")
    if conf.expires_at <= conf.generated_at:
        _bad("expires_at", "must be later than generated_at")
    if conf.previous_digest is not None and (
        not isinstance(conf.previous_digest, str) or not _DIGEST_RE.fullmatch(conf.previous_digest)
    ):
        _bad("previous_digest", "must be null or 'sha256:' followed by 64 lowercase hex digits")
    if not isinstance(conf.settings, GlobalSettings):
        _bad("settings", "must be a GlobalSettings")
    for field in dataclasses.fields(GlobalSettings):
        _check_int(getattr(conf.settings, field.name), f"settings.{field.name}", minimum=1)

    classes: set[str] = set()
    for i, mc in enumerate(conf.member_classes):
        path = f"member_classes[{i}]"
        _unique(classes, _check_id_part(mc.code, f"{path}.code"), f"{path}.code", "member class")
        _check_text(mc.description, f"{path}.description", allow_empty=True)

    members: dict[MemberId, Member] = {}
    subsystems: set[SubsystemId] = set()
    clients: list[ClientId] = []
    for i, m in enumerate(conf.members):
        path = f"members[{i}]"
        if not isinstance(m.id, MemberId):
            _bad(f"{path}.id", "must be a member identifier INSTANCE/CLASS/CODE")
        if m.id.instance != instance:
            _bad(f"{path}.id", f"{m.id} belongs to instance {m.id.instance}, not {instance}")
        if m.id.member_class not in classes:
            _bad(f"{path}.id", f"member class {m.id.member_class} is not in member_classes")
        if m.id in members:
            _bad(f"{path}.id", f"member {m.id} appears more than once")
        _check_text(m.name, f"{path}.name", limit=1024)
        members[m.id] = m
        clients.append(m.id)
        for j, sub in enumerate(m.subsystems):
            sub_path = f"{path}.subsystems[{j}]"
            if not isinstance(sub, SubsystemId) or sub.member != m.id:
                _bad(sub_path, f"must be a subsystem of {m.id}")
            _unique(subsystems, sub, sub_path, "subsystem")
            clients.append(sub)

    def known_client(client: object, path: str) -> ClientId:
        if isinstance(client, SubsystemId):
            if client not in subsystems:
                _bad(path, f"subsystem {client} is not registered under any member")
        elif isinstance(client, MemberId):
            if client not in members:
                _bad(path, f"member {client} is not in members")
        else:
            _bad(path, "must be a member or subsystem identifier")
        return client

    servers: dict[SecurityServerId, SecurityServer] = {}
    by_client: dict[ClientId, list[SecurityServer]] = {}
    auth_certs: set[tuple[SecurityServerId, bytes]] = set()
    by_auth_cert: dict[bytes, SecurityServer] = {}
    for i, s in enumerate(conf.security_servers):
        path = f"security_servers[{i}]"
        if not isinstance(s.id, SecurityServerId):
            _bad(f"{path}.id", "must be a security server identifier INSTANCE/CLASS/CODE/SERVER")
        if s.id.owner not in members:
            _bad(f"{path}.id", f"the owner {s.id.owner} of {s.id} is not in members")
        if s.id in servers:
            _bad(f"{path}.id", f"security server {s.id} appears more than once")
        servers[s.id] = s
        _check_address(s.address, f"{path}.address")
        for j, cert in enumerate(s.auth_certs):
            der = der_of(_check_cert(cert, f"{path}.auth_certs[{j}]"))
            if der in by_auth_cert:
                _bad(
                    f"{path}.auth_certs[{j}]",
                    f"the certificate is already registered for {by_auth_cert[der].id}",
                )
            by_auth_cert[der] = s
            auth_certs.add((s.id, der))
        hosted: set[ClientId] = set()
        for j, client in enumerate(s.clients):
            cpath = f"{path}.clients[{j}]"
            _unique(hosted, known_client(client, cpath), cpath, "client")
            by_client.setdefault(client, []).append(s)

    cas_by_subject: dict[bytes, list[tuple[ApprovedCa, x509.Certificate]]] = {}
    responders: list[OcspResponder] = []
    ca_names: set[str] = set()
    for i, ca in enumerate(conf.approved_cas):
        path = f"approved_cas[{i}]"
        _unique(ca_names, _check_text(ca.name, f"{path}.name", limit=1024), path, "CA name")
        issuers = [_check_cert(ca.certificate, f"{path}.certificate")]
        issuers += [
            _check_cert(c, f"{path}.intermediates[{j}]") for j, c in enumerate(ca.intermediates)
        ]
        for issuer in issuers:
            cas_by_subject.setdefault(issuer.subject.public_bytes(), []).append((ca, issuer))
        for j, o in enumerate(ca.ocsp):
            _check_url(o.url, f"{path}.ocsp[{j}].url")
            _check_cert(o.certificate, f"{path}.ocsp[{j}].certificate")
            responders.append(o)
        _check_text(ca.profile, f"{path}.profile", limit=256)

    tsa_by_der: dict[bytes, ApprovedTsa] = {}
    tsa_names: set[str] = set()
    for i, tsa in enumerate(conf.approved_tsas):
        path = f"approved_tsas[{i}]"
        _unique(tsa_names, _check_text(tsa.name, f"{path}.name", limit=1024), path, "TSA name")
        _check_url(tsa.url, f"{path}.url")
        tsa_by_der[der_of(_check_cert(tsa.certificate, f"{path}.certificate"))] = tsa

    groups: dict[str, frozenset[ClientId]] = {}
    for i, g in enumerate(conf.global_groups):
        path = f"global_groups[{i}]"
        code = _check_id_part(g.code, f"{path}.code")
        if code in groups:
            _bad(f"{path}.code", f"global group {code} appears more than once")
        _check_text(g.description, f"{path}.description", allow_empty=True)
        listed: set[ClientId] = set()
        for j, client in enumerate(g.members):
            cpath = f"{path}.members[{j}]"
            _unique(listed, known_client(client, cpath), cpath, "group member")
        groups[code] = frozenset(listed)

    signing: dict[bytes, SigningKey] = {}
    for i, key in enumerate(conf.signing_keys):
        path = f"signing_keys[{i}]"
        der = der_of(_check_cert(key.certificate, f"{path}.certificate"))
        if der in signing:
            _bad(f"{path}.certificate", "the signing key appears more than once")
        if key.state not in ("active", "announced"):
            _bad(f"{path}.state", f"must be 'active' or 'announced', got {key.state!r}")
        signing[der] = key
    if not any(k.state == "active" for k in conf.signing_keys):
        _bad("signing_keys", "must list at least one key in state 'active'")

    return _Index(
        members=members,
        subsystems=frozenset(subsystems),
        clients=tuple(clients),
        servers=servers,
        servers_by_client={c: tuple(v) for c, v in by_client.items()},
        auth_certs=frozenset(auth_certs),
        server_by_auth_cert=by_auth_cert,
        groups=groups,
        cas_by_subject={k: tuple(v) for k, v in cas_by_subject.items()},
        ocsp_responders=tuple(responders),
        tsa_by_der=tsa_by_der,
        signing_certs=signing,
    )


# --------------------------------------------------------------------------- parsing


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _load_json(data: bytes, what: str) -> object:
    """Strict JSON: UTF-8 only, no duplicate keys, no NaN or Infinity."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedGlobalConf(f"{what} is not valid UTF-8: {exc}") from exc
    try:
        return parse_strict_json(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedGlobalConf(f"{what} is not valid JSON: {exc}") from exc


def _object(value: object, path: str, keys: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        _bad(path, f"must be an object, got {_json_type(value)}")
    missing = [k for k in keys if k not in value]
    if missing:
        _bad(path, f"is missing field(s) {', '.join(missing)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        _bad(path, f"has unknown field(s) {', '.join(unknown)}")
    return value


def _array(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        _bad(path, f"must be an array, got {_json_type(value)}")
    return value


def _time(value: object, path: str) -> dt.datetime:
    text = _check_text(value, path, limit=32)
    if not _TIME_RE.fullmatch(text):
        _bad(path, f"{text!r} is not an RFC 3339 UTC time of the form 2026-11-22T10:00:00Z")
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        _bad(path, f"{text!r} is not a valid time: {exc}")


def _cert(value: object, path: str) -> x509.Certificate:
    text = _check_text(value, path, limit=64 * 1024)
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        _bad(path, f"is not valid base64: {exc}")
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        _bad(path, f"is not a DER X.509 certificate: {exc}")


def _ident(parse: Callable[[str], _T], value: object, path: str) -> _T:
    text = _check_text(value, path, limit=2048)
    try:
        return parse(text)
    except IdentifierError as exc:
        _bad(path, f"is invalid: {exc.message}")


_TOP_KEYS: Final = (
    "format",
    "instance",
    "version",
    "generated_at",
    "expires_at",
    "previous_digest",
    "settings",
    "member_classes",
    "members",
    "security_servers",
    "approved_cas",
    "approved_tsas",
    "global_groups",
    "signing_keys",
)


def _conf_from_obj(obj: object) -> GlobalConf:
    if isinstance(obj, dict) and "format" in obj and obj["format"] != FORMAT:
        _bad(
            "format",
            f"{obj.get('format')!r} is not a format this node understands (expected {FORMAT!r})",
        )
    top = _object(obj, "document", _TOP_KEYS)
    instance = _check_id_part(top["instance"], "instance")
    version = _check_int(top["version"], "version", minimum=1)
    previous = top["previous_digest"]
    if previous is not None:
        _check_text(previous, "previous_digest", limit=128)

    fields = [f.name for f in dataclasses.fields(GlobalSettings)]
    raw_settings = _object(top["settings"], "settings", fields)
    settings = GlobalSettings(
        **{name: _check_int(raw_settings[name], f"settings.{name}", minimum=1) for name in fields}
    )

    member_classes = []
    for i, raw in enumerate(_array(top["member_classes"], "member_classes")):
        item = _object(raw, f"member_classes[{i}]", ("code", "description"))
        member_classes.append(
            MemberClass(
                _check_text(item["code"], f"member_classes[{i}].code"),
                _check_text(
                    item["description"], f"member_classes[{i}].description", allow_empty=True
                ),
            )
        )

    members = []
    for i, raw in enumerate(_array(top["members"], "members")):
        path = f"members[{i}]"
        item = _object(raw, path, ("id", "name", "subsystems"))
        member_id: MemberId = _ident(MemberId.parse, item["id"], f"{path}.id")
        subs = []
        for j, code in enumerate(_array(item["subsystems"], f"{path}.subsystems")):
            code = _check_id_part(code, f"{path}.subsystems[{j}]")
            subs.append(
                SubsystemId(member_id.instance, member_id.member_class, member_id.member_code, code)
            )
        members.append(Member(member_id, _check_text(item["name"], f"{path}.name"), tuple(subs)))

    servers = []
    for i, raw in enumerate(_array(top["security_servers"], "security_servers")):
        path = f"security_servers[{i}]"
        item = _object(raw, path, ("id", "address", "auth_certs", "clients"))
        servers.append(
            SecurityServer(
                _ident(SecurityServerId.parse, item["id"], f"{path}.id"),
                _check_text(item["address"], f"{path}.address"),
                tuple(
                    _cert(c, f"{path}.auth_certs[{j}]")
                    for j, c in enumerate(_array(item["auth_certs"], f"{path}.auth_certs"))
                ),
                tuple(
                    _ident(parse_client, c, f"{path}.clients[{j}]")
                    for j, c in enumerate(_array(item["clients"], f"{path}.clients"))
                ),
            )
        )

    cas = []
    for i, raw in enumerate(_array(top["approved_cas"], "approved_cas")):
        path = f"approved_cas[{i}]"
        item = _object(raw, path, ("name", "certificate", "intermediates", "ocsp", "profile"))
        responders = []
        for j, raw_o in enumerate(_array(item["ocsp"], f"{path}.ocsp")):
            o = _object(raw_o, f"{path}.ocsp[{j}]", ("url", "certificate"))
            responders.append(
                OcspResponder(
                    _check_text(o["url"], f"{path}.ocsp[{j}].url"),
                    _cert(o["certificate"], f"{path}.ocsp[{j}].certificate"),
                )
            )
        cas.append(
            ApprovedCa(
                _check_text(item["name"], f"{path}.name"),
                _cert(item["certificate"], f"{path}.certificate"),
                tuple(
                    _cert(c, f"{path}.intermediates[{j}]")
                    for j, c in enumerate(_array(item["intermediates"], f"{path}.intermediates"))
                ),
                tuple(responders),
                _check_text(item["profile"], f"{path}.profile"),
            )
        )

    tsas = []
    for i, raw in enumerate(_array(top["approved_tsas"], "approved_tsas")):
        path = f"approved_tsas[{i}]"
        item = _object(raw, path, ("name", "url", "certificate"))
        tsas.append(
            ApprovedTsa(
                _check_text(item["name"], f"{path}.name"),
                _check_text(item["url"], f"{path}.url"),
                _cert(item["certificate"], f"{path}.certificate"),
            )
        )

    groups = []
    for i, raw in enumerate(_array(top["global_groups"], "global_groups")):
        path = f"global_groups[{i}]"
        item = _object(raw, path, ("code", "description", "members"))
        groups.append(
            GlobalGroup(
                _check_text(item["code"], f"{path}.code"),
                _check_text(item["description"], f"{path}.description", allow_empty=True),
                tuple(
                    _ident(parse_client, c, f"{path}.members[{j}]")
                    for j, c in enumerate(_array(item["members"], f"{path}.members"))
                ),
            )
        )

    keys = []
    for i, raw in enumerate(_array(top["signing_keys"], "signing_keys")):
        path = f"signing_keys[{i}]"
        item = _object(raw, path, ("key_id", "certificate", "state"))
        key_id = _check_text(item["key_id"], f"{path}.key_id", limit=64)
        state = _check_text(item["state"], f"{path}.state", limit=32)
        if state not in ("active", "announced"):
            _bad(f"{path}.state", f"must be 'active' or 'announced', got {state!r}")
        key = SigningKey(_cert(item["certificate"], f"{path}.certificate"), state)  # type: ignore[arg-type]
        if not _KEY_ID_RE.fullmatch(key_id) or key_id != key.key_id:
            _bad(
                f"{path}.key_id",
                f"{key_id!r} is not the SHA-256 of the key's certificate ({key.key_id})",
            )
        keys.append(key)

    return GlobalConf(
        instance=instance,
        version=version,
        generated_at=_time(top["generated_at"], "generated_at"),
        expires_at=_time(top["expires_at"], "expires_at"),
        previous_digest=previous,
        settings=settings,
        member_classes=tuple(member_classes),
        members=tuple(members),
        security_servers=tuple(servers),
        approved_cas=tuple(cas),
        approved_tsas=tuple(tsas),
        global_groups=tuple(groups),
        signing_keys=tuple(keys),
    )


# --------------------------------------------------------------------------- pointer


@dataclasses.dataclass(frozen=True, slots=True)
class GlobalConfPointer:
    """The small ``{base}/globalconf/current`` document naming the newest version's files.

    ``document`` and ``signature`` are paths relative to ``{base}/globalconf/``; the files
    they name are immutable, so mirrors and caches may keep them forever. The pointer itself
    is not signed: everything it leads to is verified by :func:`verify_globalconf`.
    """

    version: int
    document: str
    signature: str

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise MalformedGlobalConf("the configuration pointer's version must be an integer")
        if self.version < 1:
            raise MalformedGlobalConf("the configuration pointer's version must be at least 1")
        for name in ("document", "signature"):
            _check_relative_path(getattr(self, name), name)

    @classmethod
    def for_version(cls, version: int) -> GlobalConfPointer:
        """The registry's layout: ``v/N/conf.json`` and ``v/N/conf.json.p7s``."""
        return cls(version, f"v/{version}/conf.json", f"v/{version}/conf.json.p7s")

    def to_bytes(self) -> bytes:
        return canonical_json(
            {"version": self.version, "document": self.document, "signature": self.signature}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> GlobalConfPointer:
        if len(data) > 64 * 1024:
            raise MalformedGlobalConf(
                f"the configuration pointer is {len(data)} bytes; at most 65536 are accepted"
            )
        obj = _object(
            _load_json(data, "the configuration pointer"),
            "pointer",
            ("version", "document", "signature"),
        )
        return cls(obj["version"], obj["document"], obj["signature"])

    def urls(self, pointer_url: str) -> tuple[str, str]:
        """Absolute URLs of the document and its signature, given where the pointer was read."""
        return urljoin(pointer_url, self.document), urljoin(pointer_url, self.signature)


def _check_relative_path(value: object, name: str) -> None:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 1024
        or not _REL_PATH_RE.fullmatch(value)
        or any(part in ("", ".", "..") for part in value.split("/"))
    ):
        raise MalformedGlobalConf(
            f"the configuration pointer's {name} {value!r} is not a plain relative path "
            "(letters, digits, '.', '_', '-' and '/', no '..'); the registry must serve paths "
            "below its globalconf/ directory"
        )


# --------------------------------------------------------------------------- signing


def sign_globalconf(conf: GlobalConf, signer: Signer, *, now: dt.datetime) -> tuple[bytes, bytes]:
    """The document bytes and their detached CMS signature (DER), as the registry serves them.

    The signer must be a key the configuration itself lists as ``active``: nodes learn the
    next key from ``announced`` entries, so signing with a key the document does not list
    would strand every node once the anchor's keys are retired.
    """
    key = conf.signing_key_for(signer.certificate)
    if key is None or key.state != "active":
        raise ConfigError(
            f"the configuration signing key {key_id_of(signer.certificate)} is not listed as "
            f"'active' in signing_keys of version {conf.version}; list it as active (after "
            "announcing it in an earlier version) or sign with the active key"
        )
    document = conf.to_document()
    return document, sign_detached(document, signer, signing_time=now)


def verify_globalconf(
    document: bytes,
    signature: bytes,
    *,
    anchor: Anchor,
    previous: GlobalConf | None,
    now: dt.datetime,
) -> GlobalConf:
    """Accept a downloaded configuration on a node, or raise a :class:`GlobalConfError`.

    Trusted signers are the anchor's certificates and, when ``previous`` is given, every key
    that ``previous`` lists (``active`` or ``announced``: a key announced in version N may
    sign N+1). ``previous`` must itself have been accepted by this function. Checks, in
    order: size, signature, signer trust, strict parsing, instance, version sequence against
    ``previous`` (no rollback; same version only with the same bytes; N+1 must name N's
    digest), ``generated_at`` not ahead of ``now`` by more than :data:`CLOCK_SKEW`, and
    ``expires_at`` after ``now``.
    """
    if len(document) > MAX_DOCUMENT_BYTES:
        raise MalformedGlobalConf(
            f"the global configuration document is {len(document)} bytes; at most "
            f"{MAX_DOCUMENT_BYTES} are accepted"
        )
    try:
        verified = verify_detached(signature, document)
    except MalformedSignatureError as exc:
        raise UntrustedGlobalConf(
            f"the global configuration signature is malformed: {exc.message}",
            fault_name="MalformedSignature",
        ) from exc
    except SignatureError as exc:
        raise UntrustedGlobalConf(
            f"the global configuration signature does not verify: {exc.message}"
        ) from exc

    signer = verified.signer
    announced = previous is not None and previous.signing_key_for(signer) is not None
    if not anchor.trusts(signer) and not announced:
        raise UntrustedGlobalConf(
            f"the global configuration is signed by a key ({key_id_of(signer)}) that is "
            "neither in the anchor nor announced in the previous configuration; if the "
            "registry rotated its key while this node was offline, install a new anchor"
        )

    conf = GlobalConf.from_document(document)
    if conf.instance != anchor.instance:
        raise RejectedGlobalConf(
            f"the global configuration is for instance {conf.instance}, but this node's anchor "
            f"is for instance {anchor.instance}; check the configuration source URL"
        )

    if previous is not None:
        if previous.instance != anchor.instance:
            raise RejectedGlobalConf(
                f"the previously accepted configuration is for instance {previous.instance}, "
                f"not the anchor's {anchor.instance}; discard it and download again"
            )
        if conf.version < previous.version:
            raise RejectedGlobalConf(
                f"the global configuration version {conf.version} is older than the version "
                f"{previous.version} already accepted: rollback refused"
            )
        if conf.version == previous.version and conf.to_document() != previous.to_document():
            raise RejectedGlobalConf(
                f"the global configuration version {conf.version} differs from the version "
                f"{previous.version} already accepted although they have the same number: "
                "refused (a registry publishes each version once)"
            )
        if conf.version == previous.version + 1 and conf.previous_digest != previous.digest:
            raise RejectedGlobalConf(
                f"the global configuration version {conf.version} names previous_digest "
                f"{conf.previous_digest}, but the accepted version {previous.version} has "
                f"digest {previous.digest}: the chain of versions is broken, refused"
            )

    if conf.generated_at > now + CLOCK_SKEW:
        raise RejectedGlobalConf(
            f"the global configuration was generated at {format_time(conf.generated_at)}, "
            f"later than this node's clock ({format_time(now)}) allows; check the clocks of "
            "the node and the registry"
        )
    if conf.expires_at <= now:
        raise OutdatedGlobalConf(
            f"the global configuration version {conf.version} expired at "
            f"{format_time(conf.expires_at)} (now {format_time(now)}); the registry has not "
            "published a newer one, or this node cannot download it"
        )
    return conf
