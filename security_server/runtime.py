"""What the node's request handlers need, as narrow interfaces.

The exchange code (``client_proxy``, ``server_proxy``, ``transport_client``, ``metaservices``)
depends only on these protocols; the node assembly (``node``) provides the real
implementations (global configuration from the registry, keys from the key store, services and
access rights from the node database), and tests provide small in-memory ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509

from certs.signer import Signer
from config.settings import NodeSettings
from gateway.globalconf import GlobalConf
from gateway.identifiers import ClientId, MemberId, SecurityServerId, ServiceId
from gateway.log_record import LogEntry
from security_server.access_rights import AccessRights
from trust_services.ocsp_client import ResponderPreference

Clock = Callable[[], dt.datetime]
ConnectionType = Literal["http", "https", "https_cert"]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ConfSource(Protocol):
    """The global configuration in force."""

    def current(self, now: dt.datetime) -> GlobalConf:
        """The verified configuration; raises ``Server.ClientProxy.OutdatedGlobalConf`` when
        there is none or it has expired (the node then refuses to exchange)."""
        ...


class MemberSigners(Protocol):
    """Signing keys of the members whose subsystems this node hosts."""

    def signer_for(self, member: MemberId) -> Signer:
        """The member's signer; raises ``Server.ClientProxy.CannotCreateSignature`` if the node
        has no usable signing key and certificate for that member."""
        ...

    def ocsp_for(self, cert: x509.Certificate) -> bytes | None:
        """The latest good OCSP response (DER) for one of this node's own certificates."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class LocalClient:
    """A client subsystem (or member) registered on this node."""

    client_id: ClientId
    connection_type: ConnectionType = "http"
    tls_cert_hashes: frozenset[str] = frozenset()
    body_logging: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class LocalService:
    """A service this node provides, with where and how to reach the information system."""

    service_id: ServiceId
    kind: Literal["wsdl", "openapi", "rest"]
    address: str
    timeout_s: float = 30.0
    tls_verify: bool = True
    enabled: bool = True
    disabled_notice: str = ""
    #: The description document (WSDL or OpenAPI bytes) for getWsdl / getOpenAPI.
    description: bytes | None = None
    endpoints: tuple[tuple[str, str], ...] = ()


class LocalCatalogue(Protocol):
    """This node's clients, services and access rights, as of the last change."""

    def client(self, client_id: ClientId) -> LocalClient | None: ...

    def service(self, service_id: ServiceId) -> LocalService | None:
        """The service, matched by provider and code (a version in ``service_id`` must match
        the registered version when one is registered)."""
        ...

    def services_of(self, provider: ClientId) -> Sequence[LocalService]: ...

    @property
    def access_rights(self) -> AccessRights: ...


class MessageLog(Protocol):
    """The node's message log (``security_server.message_log.PostgresMessageLog``)."""

    async def record(self, entry: LogEntry) -> None:
        """Durably store one message before the exchange continues; raises
        FaultError(...LoggingFailed) if it cannot (fail closed). Batches writes: many
        concurrent record() calls share one database round trip, but none returns before its
        own record is committed. The fault's prefix follows ``entry.direction``
        (``Server.ClientProxy`` on the consumer's node, ``Server.ServerProxy`` on the
        provider's)."""
        ...

    def check_accepting(self, now: dt.datetime, *, prefix: str = "Server.ClientProxy") -> None:
        """Raise FaultError(Server.ClientProxy/ServerProxy.TimestampingFailed), with
        ``prefix``, when timestamping has failed for longer than the acceptable period
        (default 14,400 s)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class TlsFiles:
    """The node's authentication certificate (with chain) and its encrypted key, for mTLS."""

    cert_file: Path
    key_file: Path
    key_passphrase: bytes
    certificate: x509.Certificate


@dataclasses.dataclass(slots=True)
class NodeRuntime:
    """Everything the request handlers of one node use; built once at start-up."""

    settings: NodeSettings
    server_id: SecurityServerId
    conf: ConfSource
    signers: MemberSigners
    catalogue: LocalCatalogue
    tls: TlsFiles
    clock: Clock = utc_now
    #: The node's one OCSP responder preference: its own certificates' refresher
    #: (``own_ocsp.OwnOcsp``), the other nodes' authentication certificates
    #: (``peer_trust.PeerAuthStatus``, through the transport client) and registration requests
    #: sent from the node process all ask the responder that last answered for a CA first.
    ocsp_preference: ResponderPreference = dataclasses.field(default_factory=ResponderPreference)
