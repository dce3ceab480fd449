"""The node database's catalogue: clients, service descriptions, services, access rights, API keys.

Rules:

- PostgreSQL (asyncpg) is the truth; request handlers read an in-memory :class:`Snapshot`,
  never the database per request. The snapshot is rebuilt after every change made through
  this store, and :meth:`CatalogueStore.refresh_if_changed` (run every few seconds by the
  node) picks up changes other processes made (the ``jisr node`` commands write to the same
  database; the newest ``audit_log`` id tells that something changed).
- Every change writes one ``audit_log`` row (actor, action, details) in the same transaction,
  so a change without its audit row cannot exist.
- Input is checked before anything is written: identifiers, URLs, WSDL / OpenAPI documents
  (:mod:`security_server.catalogue`), access-right subjects and endpoint patterns
  (:mod:`security_server.access_rights`). A refused change leaves the database as it was and
  raises a :class:`CatalogueError` naming what was wrong: unknown provider or service (404),
  something that exists already (409), bad input (400).
- A service description is one WSDL (each operation a service), one OpenAPI 3 document (one
  service, its operations endpoints) or one plain REST base URL (one service). Enabling and
  disabling apply to a description, with a notice shown to callers while it is disabled.
- API keys are stored as SHA-256 hashes; the key itself is shown once, when created.
- A client's body logging switch (on by default) decides whether the message log keeps the
  bodies of its messages or only their digests; it is a catalogue change like the others.
- The database failing is a :class:`~config.errors.StorageError` naming what could not be read
  or changed (asyncpg's exceptions never leave this module); after a lost connection the pool
  is told to replace its connections (:func:`storage.errors.expire_if_lost`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import aiohttp
import asyncpg
from asyncpg.pool import PoolConnectionProxy
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from config.errors import StorageError, ValidationError
from gateway.identifiers import ClientId, ServiceId, parse_client
from security_server.access_rights import AccessRight, AccessRights
from security_server.catalogue import (
    MAX_DESCRIPTION_BYTES,
    ServiceEntry,
    check_service_url,
    parse_openapi,
    parse_wsdl,
    rest_service,
)
from security_server.runtime import ConnectionType, LocalClient, LocalService
from storage.errors import DATABASE_ERRORS, expire_if_lost

Connection = asyncpg.Connection | PoolConnectionProxy
Kind = Literal["wsdl", "openapi", "rest"]
Role = Literal["operator", "auditor"]
ROLES: tuple[Role, ...] = ("operator", "auditor")
CONNECTION_TYPES: tuple[ConnectionType, ...] = ("http", "https", "https_cert")
FETCH_TIMEOUT_S = 30.0


class CatalogueError(ValidationError):
    """A catalogue change was refused; nothing was written."""


class NotFound(CatalogueError):
    """The client, description, service or right named does not exist on this node."""

    http_status = 404


class AlreadyExists(CatalogueError):
    """The thing to add exists already; nothing was changed."""

    http_status = 409


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def cert_hash(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of a client TLS certificate's DER, as ``LocalClient`` holds it."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


async def fetch_description(
    url: str, *, session: aiohttp.ClientSession | None = None, timeout_s: float = FETCH_TIMEOUT_S
) -> bytes:
    """Download a WSDL or OpenAPI document from the information system, size-limited."""
    check_service_url(url)
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                raise CatalogueError(
                    f"downloading the service description from {url} failed with HTTP "
                    f"{resp.status}; check the URL"
                )
            body = await resp.content.read(MAX_DESCRIPTION_BYTES + 1)
            if len(body) > MAX_DESCRIPTION_BYTES:
                raise CatalogueError(
                    f"the service description at {url} is larger than {MAX_DESCRIPTION_BYTES} bytes"
                )
            return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CatalogueError(
            f"cannot download the service description from {url}: "
            f"{exc.__class__.__name__} {exc}".rstrip()
        ) from exc
    finally:
        if own:
            await session.close()


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The catalogue as of one moment; immutable, swapped whole."""

    clients: dict[str, LocalClient]
    services: dict[tuple[str, str], LocalService]
    by_provider: dict[str, tuple[LocalService, ...]]
    rights: AccessRights
    client_certs: tuple[bytes, ...]
    change_id: int

    @classmethod
    def empty(cls) -> Snapshot:
        return cls({}, {}, {}, AccessRights(()), (), -1)


def _client(text: str, what: str = "client") -> ClientId:
    if not isinstance(text, str):
        raise CatalogueError(f"{what} must be a client identifier string")
    return parse_client(text)


def _right_details(
    client: ClientId, service_code: str, subject: str, method: str | None, path: str | None
) -> dict[str, str | None]:
    """An access right as granted or revoked: the method upper-case, an empty path none (also
    what the change's audit row records)."""
    return {
        "provider": str(client),
        "service_code": service_code,
        "subject": subject,
        "method": method.upper() if method else None,
        "path": path or None,
    }


class CatalogueStore:
    """:class:`security_server.runtime.LocalCatalogue` over the node database."""

    def __init__(self, pool: asyncpg.Pool, *, session: aiohttp.ClientSession | None = None):
        self.pool = pool
        self._session = session
        self._snapshot = Snapshot.empty()

    # -- the LocalCatalogue interface (snapshot reads) ----------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def client(self, client_id: ClientId) -> LocalClient | None:
        return self._snapshot.clients.get(str(client_id))

    def service(self, service_id: ServiceId) -> LocalService | None:
        found = self._snapshot.services.get((str(service_id.provider), service_id.service_code))
        if found is None:
            return None
        registered = found.service_id.service_version
        wanted = service_id.service_version
        if registered is not None and wanted is not None and registered != wanted:
            return None
        return found

    def services_of(self, provider: ClientId) -> Sequence[LocalService]:
        return self._snapshot.by_provider.get(str(provider), ())

    @property
    def access_rights(self) -> AccessRights:
        return self._snapshot.rights

    @property
    def client_certificates(self) -> tuple[bytes, ...]:
        """DER of every registered client TLS certificate (the HTTPS listener trusts these)."""
        return self._snapshot.client_certs

    # -- loading -------------------------------------------------------------------------------

    async def _change_id(self, conn: Connection) -> int:
        value = await conn.fetchval("SELECT coalesce(max(id), 0) FROM audit_log")
        return int(value)

    @asynccontextmanager
    async def _reading(self, what: str) -> AsyncIterator[Connection]:
        """A pooled connection for reads; a database failure becomes a StorageError."""
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except DATABASE_ERRORS as exc:
            await expire_if_lost(self.pool, exc)
            raise StorageError(
                f"cannot read {what} from the node database ({exc.__class__.__name__}: {exc}); "
                "check that the database is running, then try again"
            ) from exc

    async def load(self) -> Snapshot:
        """Rebuild the snapshot from the database."""
        async with (
            self._reading("the catalogue") as conn,
            conn.transaction(isolation="repeatable_read"),
        ):
            change_id = await self._change_id(conn)
            clients = await conn.fetch("SELECT * FROM local_clients ORDER BY client_id")
            descriptions = {
                r["id"]: r for r in await conn.fetch("SELECT * FROM service_descriptions")
            }
            services = await conn.fetch("SELECT * FROM services ORDER BY provider, service_code")
            endpoints = await conn.fetch(
                "SELECT * FROM endpoints ORDER BY provider, service_code, method, path"
            )
            rights = await conn.fetch("SELECT * FROM access_rights ORDER BY id")
        local_clients = {
            r["client_id"]: LocalClient(
                client_id=parse_client(r["client_id"]),
                connection_type=r["connection_type"],
                tls_cert_hashes=frozenset(r["tls_cert_hashes"]),
                body_logging=r["body_logging"],
            )
            for r in clients
        }
        eps: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for e in endpoints:
            eps.setdefault((e["provider"], e["service_code"]), []).append((e["method"], e["path"]))
        local_services: dict[tuple[str, str], LocalService] = {}
        by_provider: dict[str, list[LocalService]] = {}
        for s in services:
            d = descriptions[s["description_id"]]
            provider = parse_client(s["provider"])
            service = LocalService(
                service_id=ServiceId.for_client(provider, s["service_code"], s["service_version"]),
                kind=d["kind"],
                address=s["address"],
                timeout_s=float(s["timeout_s"]),
                tls_verify=s["tls_verify"],
                enabled=d["enabled"],
                disabled_notice=d["disabled_notice"],
                description=d["document"],
                endpoints=tuple(eps.get((s["provider"], s["service_code"]), ())),
            )
            local_services[(s["provider"], s["service_code"])] = service
            by_provider.setdefault(s["provider"], []).append(service)
        access = AccessRights(
            (
                parse_client(r["provider"]),
                AccessRight(r["service_code"], r["subject"], r["method"], r["path_pattern"]),
            )
            for r in rights
        )
        certs = tuple(c for r in clients for c in r["tls_certs"])
        snapshot = Snapshot(
            local_clients,
            local_services,
            {k: tuple(v) for k, v in by_provider.items()},
            access,
            certs,
            change_id,
        )
        self._snapshot = snapshot
        return snapshot

    async def refresh_if_changed(self) -> bool:
        """Reload when another process changed the catalogue; True if reloaded."""
        async with self._reading("the catalogue's last change") as conn:
            change_id = await self._change_id(conn)
        if change_id == self._snapshot.change_id:
            return False
        await self.load()
        return True

    @asynccontextmanager
    async def _change(
        self, actor: str, action: str, details: dict[str, Any]
    ) -> AsyncIterator[Connection]:
        """One transaction with its audit row; the snapshot is rebuilt after it commits."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn
                await conn.execute(
                    "INSERT INTO audit_log (actor, action, details) VALUES ($1, $2, $3::jsonb)",
                    actor,
                    action,
                    json.dumps(details),
                )
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists(
                f"{action}: this already exists on the node ({_describe(details)}); nothing "
                "was changed"
            ) from exc
        except DATABASE_ERRORS as exc:
            outcome = (
                "the connection was lost, so the change may have been committed or not; check "
                "the audit log before repeating it"
                if await expire_if_lost(self.pool, exc)
                else "nothing was changed"
            )
            raise StorageError(
                f"{action} failed in the node database ({exc.__class__.__name__}: {exc}); "
                + outcome
            ) from exc
        await self.load()

    # -- clients -------------------------------------------------------------------------------

    async def add_client(
        self,
        actor: str,
        client_id: str,
        *,
        connection_type: str = "http",
        tls_certs: Iterable[x509.Certificate] = (),
        body_logging: bool = True,
    ) -> LocalClient:
        """Register a member or subsystem locally (the registry is told separately)."""
        client = _client(client_id)
        _check_switch(body_logging, "body_logging")
        if connection_type not in CONNECTION_TYPES:
            raise CatalogueError(
                f"connection type {connection_type!r} is unknown; use http, https or https_cert"
            )
        certs = list(tls_certs)
        if connection_type == "https_cert" and not certs:
            raise CatalogueError(
                "connection type https_cert needs the information system's TLS certificate"
            )
        details = {
            "client": str(client),
            "connection_type": connection_type,
            "body_logging": body_logging,
        }
        async with self._change(actor, "client.add", details) as conn:
            await conn.execute(
                "INSERT INTO local_clients (client_id, connection_type, tls_cert_hashes, "
                "tls_certs, body_logging) VALUES ($1, $2, $3, $4, $5)",
                str(client),
                connection_type,
                [cert_hash(c) for c in certs],
                [c.public_bytes(Encoding.DER) for c in certs],
                body_logging,
            )
        found = self.client(client)
        assert found is not None
        return found

    async def set_connection_type(
        self,
        actor: str,
        client_id: str,
        connection_type: str,
        tls_certs: Iterable[x509.Certificate] | None = None,
    ) -> LocalClient:
        client = _client(client_id)
        if connection_type not in CONNECTION_TYPES:
            raise CatalogueError(
                f"connection type {connection_type!r} is unknown; use http, https or https_cert"
            )
        certs = None if tls_certs is None else list(tls_certs)
        details = {"client": str(client), "connection_type": connection_type}
        async with self._change(actor, "client.update", details) as conn:
            row = await conn.fetchrow(
                "SELECT tls_certs FROM local_clients WHERE client_id = $1 FOR UPDATE", str(client)
            )
            if row is None:
                raise NotFound(f"{client} is not a client of this node; add it first")
            ders = [c.public_bytes(Encoding.DER) for c in certs] if certs is not None else None
            if connection_type == "https_cert" and not (ders or row["tls_certs"]):
                raise CatalogueError(
                    "connection type https_cert needs the information system's TLS certificate"
                )
            await conn.execute(
                "UPDATE local_clients SET connection_type = $2, "
                "tls_certs = coalesce($3, tls_certs), "
                "tls_cert_hashes = coalesce($4, tls_cert_hashes) WHERE client_id = $1",
                str(client),
                connection_type,
                ders,
                [cert_hash(c) for c in certs] if certs is not None else None,
            )
        found = self.client(client)
        assert found is not None
        return found

    async def set_body_logging(self, actor: str, client_id: str, enabled: bool) -> LocalClient:
        """Switch whether the message log keeps the bodies of ``client_id``'s messages.

        Off, the log keeps each body's SHA-256 only (the records verify the same way): for a
        subsystem whose messages carry data the node should not hold a second copy of. The
        switch applies to this node's log, to messages logged after the running node reloads
        its catalogue (within seconds); records already written keep what they hold.
        """
        client = _client(client_id)
        _check_switch(enabled, "body_logging")
        details = {"client": str(client), "body_logging": enabled}
        async with self._change(actor, "client.body_logging", details) as conn:
            done = await conn.execute(
                "UPDATE local_clients SET body_logging = $2 WHERE client_id = $1",
                str(client),
                enabled,
            )
            if done == "UPDATE 0":
                raise NotFound(f"{client} is not a client of this node; add it first")
        found = self.client(client)
        assert found is not None
        return found

    async def remove_client(self, actor: str, client_id: str) -> None:
        client = _client(client_id)
        async with self._change(actor, "client.remove", {"client": str(client)}) as conn:
            done = await conn.execute("DELETE FROM local_clients WHERE client_id = $1", str(client))
            if done == "DELETE 0":
                raise NotFound(f"{client} is not a client of this node")

    def list_clients(self) -> list[dict[str, Any]]:
        return [
            {
                "client_id": str(c.client_id),
                "connection_type": c.connection_type,
                "tls_cert_hashes": sorted(c.tls_cert_hashes),
                "body_logging": c.body_logging,
            }
            for c in self._snapshot.clients.values()
        ]

    # -- service descriptions --------------------------------------------------------------

    async def _provider(self, conn: Connection, provider: str) -> ClientId:
        client = _client(provider, "provider")
        exists = await conn.fetchval(
            "SELECT 1 FROM local_clients WHERE client_id = $1", str(client)
        )
        if not exists:
            raise NotFound(
                f"provider {client} is not a client of this node; add it with `jisr node "
                "add-client` first"
            )
        return client

    async def _add_description(
        self,
        actor: str,
        provider: str,
        kind: Kind,
        url: str,
        document: bytes | None,
        entries: Sequence[ServiceEntry],
    ) -> int:
        details = {
            "provider": provider,
            "kind": kind,
            "url": url,
            "services": [e.service_code for e in entries],
        }
        async with self._change(actor, "service_description.add", details) as conn:
            client = await self._provider(conn, provider)
            taken = await conn.fetch(
                "SELECT service_code FROM services WHERE provider = $1 AND service_code = ANY($2)",
                str(client),
                [e.service_code for e in entries],
            )
            if taken:
                raise AlreadyExists(
                    f"provider {client} already has service(s) "
                    f"{', '.join(r['service_code'] for r in taken)} from another description; "
                    "remove that description first or use another service code"
                )
            description_id = await conn.fetchval(
                "INSERT INTO service_descriptions (provider, kind, url, document) "
                "VALUES ($1, $2, $3, $4) RETURNING id",
                str(client),
                kind,
                url,
                document,
            )
            for entry in entries:
                await conn.execute(
                    "INSERT INTO services (provider, service_code, service_version, "
                    "description_id, address) VALUES ($1, $2, $3, $4, $5)",
                    str(client),
                    entry.service_code,
                    entry.service_version,
                    description_id,
                    entry.address,
                )
                await conn.executemany(
                    "INSERT INTO endpoints (provider, service_code, method, path) "
                    "VALUES ($1, $2, $3, $4)",
                    [(str(client), entry.service_code, m, p) for m, p in entry.endpoints],
                )
        return int(description_id)

    async def _description(
        self, url: str | None, document: bytes | None, whose: str
    ) -> tuple[bytes, str]:
        """The description's bytes (downloaded from ``url`` when not given) and its source:
        the URL, or the document's SHA-256 when it was given inline."""
        if document is None:
            if url is None:
                raise CatalogueError(f"give {whose} URL or its content")
            document = await fetch_description(url, session=self._session)
        return document, url or "sha256:" + hashlib.sha256(document).hexdigest()

    async def add_wsdl(
        self,
        actor: str,
        provider: str,
        *,
        url: str | None = None,
        document: bytes | None = None,
        address: str | None = None,
    ) -> int:
        """A WSDL from ``url`` (downloaded) or given as ``document``; operations → services."""
        document, source = await self._description(url, document, "the WSDL's")
        entries = parse_wsdl(document, address)
        return await self._add_description(actor, provider, "wsdl", source, document, entries)

    async def add_openapi(
        self,
        actor: str,
        provider: str,
        service_code: str,
        *,
        url: str | None = None,
        document: bytes | None = None,
        address: str | None = None,
    ) -> int:
        """An OpenAPI 3 document (downloaded from ``url`` or given); its operations → endpoints."""
        document, source = await self._description(url, document, "the OpenAPI document's")
        entry = parse_openapi(document, service_code, address)
        return await self._add_description(actor, provider, "openapi", source, document, [entry])

    async def add_rest(self, actor: str, provider: str, service_code: str, base_url: str) -> int:
        """A REST service known only by its base URL."""
        entry = rest_service(service_code, base_url)
        return await self._add_description(actor, provider, "rest", entry.address, None, [entry])

    async def remove_description(self, actor: str, description_id: int) -> None:
        details = {"description_id": description_id}
        async with self._change(actor, "service_description.remove", details) as conn:
            done = await conn.execute(
                "DELETE FROM service_descriptions WHERE id = $1", description_id
            )
            if done == "DELETE 0":
                raise NotFound(f"service description {description_id} does not exist")

    async def description_of(self, provider: str, service_code: str) -> int:
        client = _client(provider, "provider")
        async with self._reading("the services") as conn:
            found = await conn.fetchval(
                "SELECT description_id FROM services WHERE provider = $1 AND service_code = $2",
                str(client),
                service_code,
            )
        if found is None:
            raise NotFound(f"provider {client} has no service {service_code!r} on this node")
        return int(found)

    async def set_enabled(
        self, actor: str, description_id: int, enabled: bool, notice: str = ""
    ) -> None:
        """Enable, or disable with a notice that callers see, one service description."""
        if len(notice) > 1000:
            raise CatalogueError("the disabled notice is longer than 1000 characters")
        details = {"description_id": description_id, "notice": notice}
        action = "service_description.enable" if enabled else "service_description.disable"
        async with self._change(actor, action, details) as conn:
            done = await conn.execute(
                "UPDATE service_descriptions SET enabled = $2, disabled_notice = $3 WHERE id = $1",
                description_id,
                enabled,
                "" if enabled else notice,
            )
            if done == "UPDATE 0":
                raise NotFound(f"service description {description_id} does not exist")

    async def list_descriptions(self, provider: str | None = None) -> list[dict[str, Any]]:
        async with self._reading("the service descriptions") as conn:
            rows = await conn.fetch(
                "SELECT d.id, d.provider, d.kind, d.url, d.enabled, d.disabled_notice, "
                "d.created_at, array_remove(array_agg(s.service_code ORDER BY s.service_code), "
                "NULL) AS services FROM service_descriptions d LEFT JOIN services s "
                "ON s.description_id = d.id WHERE $1::text IS NULL OR d.provider = $1 "
                "GROUP BY d.id ORDER BY d.id",
                str(_client(provider, "provider")) if provider else None,
            )
        return [
            {
                "id": r["id"],
                "provider": r["provider"],
                "kind": r["kind"],
                "url": r["url"],
                "enabled": r["enabled"],
                "disabled_notice": r["disabled_notice"],
                "services": list(r["services"]),
                "created_at": r["created_at"].astimezone(dt.UTC).isoformat(),
            }
            for r in rows
        ]

    # -- services ------------------------------------------------------------------------------

    async def update_service(
        self,
        actor: str,
        provider: str,
        service_code: str,
        *,
        address: str | None = None,
        timeout_s: int | None = None,
        tls_verify: bool | None = None,
    ) -> LocalService:
        """Change where and how the information system is reached for one service."""
        client = _client(provider, "provider")
        if address is not None:
            check_service_url(address)
        if timeout_s is not None and not 0 < timeout_s <= 3600:
            raise CatalogueError(f"timeout {timeout_s} s is not between 1 and 3600 seconds")
        details = {
            "provider": str(client),
            "service_code": service_code,
            "address": address,
            "timeout_s": timeout_s,
            "tls_verify": tls_verify,
        }
        async with self._change(actor, "service.update", details) as conn:
            done = await conn.execute(
                "UPDATE services SET address = coalesce($3, address), "
                "timeout_s = coalesce($4, timeout_s), tls_verify = coalesce($5, tls_verify) "
                "WHERE provider = $1 AND service_code = $2",
                str(client),
                service_code,
                address,
                timeout_s,
                tls_verify,
            )
            if done == "UPDATE 0":
                raise NotFound(f"provider {client} has no service {service_code!r} on this node")
        found = self._snapshot.services[(str(client), service_code)]
        return found

    def list_services(self, provider: str | None = None) -> list[dict[str, Any]]:
        wanted = str(_client(provider, "provider")) if provider else None
        return [
            service_json(s)
            for (prov, _), s in sorted(self._snapshot.services.items())
            if wanted is None or prov == wanted
        ]

    # -- access rights -------------------------------------------------------------------------

    async def grant(
        self,
        actor: str,
        provider: str,
        service_code: str,
        subject: str,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> int:
        """Allow ``subject`` (a client or ``group:CODE``) to call a service or one endpoint."""
        client = _client(provider, "provider")
        details = _right_details(client, service_code, subject, method, path)
        right = AccessRight(service_code, subject, details["method"], details["path"])
        async with self._change(actor, "access_right.grant", details) as conn:
            exists = await conn.fetchval(
                "SELECT 1 FROM services WHERE provider = $1 AND service_code = $2",
                str(client),
                service_code,
            )
            if not exists:
                raise NotFound(
                    f"provider {client} has no service {service_code!r} on this node; add its "
                    "service description first"
                )
            right_id = await conn.fetchval(
                "INSERT INTO access_rights (provider, service_code, subject, method, "
                "path_pattern) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                str(client),
                service_code,
                right.subject,
                right.method,
                right.path_pattern,
            )
        return int(right_id)

    async def revoke(
        self,
        actor: str,
        provider: str,
        service_code: str,
        subject: str,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        client = _client(provider, "provider")
        details = _right_details(client, service_code, subject, method, path)
        async with self._change(actor, "access_right.revoke", details) as conn:
            done = await conn.execute(
                "DELETE FROM access_rights WHERE provider = $1 AND service_code = $2 AND "
                "subject = $3 AND coalesce(method, '') = coalesce($4, '') AND "
                "coalesce(path_pattern, '') = coalesce($5, '')",
                str(client),
                service_code,
                subject,
                details["method"],
                details["path"],
            )
            if done == "DELETE 0":
                raise NotFound(f"no such access right: {_describe(details)}")

    async def revoke_by_id(self, actor: str, right_id: int) -> None:
        async with self._change(actor, "access_right.revoke", {"id": right_id}) as conn:
            done = await conn.execute("DELETE FROM access_rights WHERE id = $1", right_id)
            if done == "DELETE 0":
                raise NotFound(f"access right {right_id} does not exist")

    async def list_rights(
        self, provider: str | None = None, service_code: str | None = None
    ) -> list[dict[str, Any]]:
        async with self._reading("the access rights") as conn:
            rows = await conn.fetch(
                "SELECT * FROM access_rights WHERE ($1::text IS NULL OR provider = $1) AND "
                "($2::text IS NULL OR service_code = $2) ORDER BY provider, service_code, id",
                str(_client(provider, "provider")) if provider else None,
                service_code,
            )
        return [
            {
                "id": r["id"],
                "provider": r["provider"],
                "service_code": r["service_code"],
                "subject": r["subject"],
                "method": r["method"],
                "path": r["path_pattern"],
            }
            for r in rows
        ]

    # -- API keys ------------------------------------------------------------------------------

    async def create_api_key(self, actor: str, name: str, role: str) -> str:
        """A new API key; returned once, stored only as its hash."""
        if role not in ROLES:
            raise CatalogueError(f"role {role!r} is unknown; use operator or auditor")
        if not name or len(name) > 100 or not name.isprintable():
            raise CatalogueError("an API key needs a printable name of 1-100 characters")
        key = "jisr_" + secrets.token_urlsafe(32)
        async with self._change(actor, "api_key.create", {"name": name, "role": role}) as conn:
            if await conn.fetchval("SELECT 1 FROM api_keys WHERE name = $1", name):
                raise AlreadyExists(f"an API key named {name!r} exists already")
            await conn.execute(
                "INSERT INTO api_keys (key_hash, name, role) VALUES ($1, $2, $3)",
                hash_api_key(key),
                name,
                role,
            )
        return key

    async def revoke_api_key(self, actor: str, name: str) -> None:
        async with self._change(actor, "api_key.revoke", {"name": name}) as conn:
            done = await conn.execute("DELETE FROM api_keys WHERE name = $1", name)
            if done == "DELETE 0":
                raise NotFound(f"no API key is named {name!r}")

    async def list_api_keys(self) -> list[dict[str, Any]]:
        async with self._reading("the API keys") as conn:
            rows = await conn.fetch("SELECT name, role, created_at FROM api_keys ORDER BY name")
        return [
            {
                "name": r["name"],
                "role": r["role"],
                "created_at": r["created_at"].astimezone(dt.UTC).isoformat(),
            }
            for r in rows
        ]

    async def authenticate(self, key: str) -> tuple[str, Role] | None:
        """(name, role) of the API key, or None when it is unknown."""
        async with self._reading("the API keys") as conn:
            row = await conn.fetchrow(
                "SELECT name, role FROM api_keys WHERE key_hash = $1", hash_api_key(key)
            )
        if row is None:
            return None
        return row["name"], row["role"]

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        async with self._reading("the audit log") as conn:
            rows = await conn.fetch(
                "SELECT * FROM audit_log ORDER BY id DESC LIMIT $1", max(1, min(limit, 1000))
            )
        return [
            {
                "id": r["id"],
                "at": r["at"].astimezone(dt.UTC).isoformat(),
                "actor": r["actor"],
                "action": r["action"],
                "details": json.loads(r["details"]),
            }
            for r in rows
        ]


def service_json(service: LocalService) -> dict[str, Any]:
    return {
        "service_id": str(service.service_id),
        "provider": str(service.service_id.provider),
        "service_code": service.service_id.service_code,
        "service_version": service.service_id.service_version,
        "kind": service.kind,
        "address": service.address,
        "timeout_s": service.timeout_s,
        "tls_verify": service.tls_verify,
        "enabled": service.enabled,
        "disabled_notice": service.disabled_notice,
        "endpoints": [{"method": m, "path": p} for m, p in service.endpoints],
    }


def _check_switch(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise CatalogueError(f"{name} must be true or false, not {value!r}")


def _describe(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in details.items() if v is not None)


__all__ = [
    "AlreadyExists",
    "CatalogueError",
    "CatalogueStore",
    "NotFound",
    "Snapshot",
    "cert_hash",
    "fetch_description",
    "hash_api_key",
    "service_json",
]
