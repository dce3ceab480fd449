"""The registry's repository over PostgreSQL (asyncpg).

Rules:

- Every write runs in one transaction together with its ``audit_log`` row: either both are
  stored or neither is. ``actor`` names who asked (an API key's name, ``cli``, ``node:<id>``).
- A write that changes what the global configuration contains also bumps
  ``instance.change_serial`` in that transaction, and afterwards calls the in-process
  ``on_change`` callback, so the publisher regenerates at once (and, from another process, on
  its next poll of the serial).
- asyncpg's constraint errors are translated here, once, into :mod:`registry.errors` with a
  message naming the object; callers never see asyncpg exceptions.
- Identifiers arrive as :mod:`gateway.identifiers` objects and must belong to this instance.
- Everything returned to the admin API is plain JSON data (``dict``); certificates are base64
  DER there, ``bytes`` here.
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import asyncpg

from config.errors import StorageError, ValidationError
from gateway.identifiers import MemberId, SecurityServerId, SubsystemId, check_part, parse_client
from registry.errors import (
    ConflictError,
    DuplicateError,
    NotFoundError,
    NotInitialised,
)

if TYPE_CHECKING:
    Connection = (
        asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    )
Role = Literal["operator", "auditor"]
ROLES: tuple[Role, ...] = ("operator", "auditor")
API_KEY_PREFIX = "jisr_"
#: Old configuration versions removed per transaction by :meth:`RegistryStore.prune_versions`.
PRUNE_CHUNK_VERSIONS = 500

#: What the admin API may change in the instance settings, with the lowest value allowed.
TUNABLE_SETTINGS = {
    "ocsp_freshness_s": 1,
    "timestamping_interval_s": 1,
    "conf_expiry_s": 30,
    "conf_refresh_s": 1,
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_api_key(key: str) -> str:
    """API keys are 256-bit random strings, so a plain SHA-256 is enough to store them."""
    return sha256_hex(key.encode("utf-8"))


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceSettings:
    instance_id: str
    ocsp_freshness_s: int
    timestamping_interval_s: int
    conf_expiry_s: int
    conf_refresh_s: int
    auto_approve: bool
    change_serial: int

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("change_serial")
        return data


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    role: Role


@dataclasses.dataclass(frozen=True, slots=True)
class ConfKey:
    key_id: str
    certificate: bytes
    key_ref: str
    state: Literal["announced", "active", "retired"]
    created_at: dt.datetime
    activated_at: dt.datetime | None
    first_published_version: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "certificate": b64(self.certificate),
            "state": self.state,
            "created_at": _iso(self.created_at),
            "activated_at": _iso(self.activated_at),
            "first_published_version": self.first_published_version,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ConfVersion:
    version: int
    document: bytes
    signature: bytes
    digest: str
    previous_digest: str | None
    signing_key_id: str
    change_serial: int
    generated_at: dt.datetime
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune of old configuration versions removed (or, in a dry run, would remove)."""

    removed: int
    oldest_version: int | None
    newest_version: int | None
    oldest_generated_at: dt.datetime | None
    newest_generated_at: dt.datetime | None
    #: Versions left in the table afterwards.
    kept: int
    dry_run: bool
    #: Transactions that removed something (0 in a dry run or when nothing was removed).
    chunks: int = 0

    def add(self, later: PruneResult) -> PruneResult:
        """This run's figures followed by a later chunk's."""
        return PruneResult(
            removed=self.removed + later.removed,
            oldest_version=_least(self.oldest_version, later.oldest_version),
            newest_version=_most(self.newest_version, later.newest_version),
            oldest_generated_at=_least(self.oldest_generated_at, later.oldest_generated_at),
            newest_generated_at=_most(self.newest_generated_at, later.newest_generated_at),
            kept=later.kept,
            dry_run=self.dry_run,
            chunks=self.chunks + later.chunks,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": self.removed,
            "oldest_version": self.oldest_version,
            "newest_version": self.newest_version,
            "oldest_generated_at": _iso(self.oldest_generated_at),
            "newest_generated_at": _iso(self.newest_generated_at),
            "kept": self.kept,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ConfContent:
    """Everything the global configuration is built from, read in one snapshot."""

    settings: InstanceSettings
    member_classes: list[dict[str, Any]]
    members: list[dict[str, Any]]
    security_servers: list[dict[str, Any]]
    approved_cas: list[dict[str, Any]]
    approved_tsas: list[dict[str, Any]]
    global_groups: list[dict[str, Any]]
    signing_keys: list[ConfKey]


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


#: The connection of an open read snapshot (see :meth:`RegistryStore.conf_content`).
_SNAPSHOT: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "registry_snapshot", default=None
)

#: Constraint name → what to tell the user when it is violated.
_DUPLICATE_MESSAGES = {
    "instance_pkey": "the registry is already initialised",
    "member_classes_pkey": "member class {member_class} already exists",
    "members_class_code_key": "member {member} already exists",
    "subsystems_member_code_key": "subsystem {subsystem} already exists",
    "security_servers_owner_code_key": "security server {server} is already registered",
    "auth_certs_sha256_key": "this authentication certificate is already registered "
    "for a security server",
    "server_clients_key": "{client} is already a client of {server}",
    "approved_cas_name_key": "an approved CA named {name!r} already exists",
    "ca_ocsp_responders_key": "the CA already lists OCSP responder {url}",
    "approved_tsas_name_key": "an approved TSA named {name!r} already exists",
    "global_groups_code_key": "global group {code!r} already exists",
    "global_group_members_key": "{client} is already a member of global group {code!r}",
    "management_requests_nonce_key": "a request with nonce {nonce!r} was already received; "
    "each request needs a fresh nonce",
    "conf_signing_keys_pkey": "configuration signing key {key_id} already exists",
    "conf_signing_keys_one_active": "another configuration signing key is already active",
    "globalconf_versions_pkey": "configuration version {version} was already published",
    "api_keys_name_key": "an API key named {name!r} already exists",
    "api_keys_hash_key": "this API key already exists",
}


def _duplicate(exc: asyncpg.UniqueViolationError, context: dict[str, Any]) -> DuplicateError:
    template = _DUPLICATE_MESSAGES.get(exc.constraint_name or "", "")
    try:
        message = template.format(**context) if template else ""
    except KeyError:
        message = ""
    return DuplicateError(message or f"already exists ({exc.constraint_name}); nothing changed")


class RegistryStore:
    """The registry database. Create with :meth:`__init__` on an open asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, *, on_change: Callable[[], None] | None = None) -> None:
        self.pool = pool
        self.on_change = on_change

    # -- plumbing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(
        self,
        actor: str,
        action: str,
        details: dict[str, Any],
        *,
        changes_conf: bool = True,
        audited: bool = True,
    ) -> AsyncIterator[Connection]:
        """A transaction that ends with the audit row; duplicates and missing refs translated."""
        changed = False
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn
                if audited:
                    await _audit_row(conn, actor, action, details)
                if changes_conf:
                    await conn.execute("UPDATE instance SET change_serial = change_serial + 1")
                    changed = True
        except asyncpg.UniqueViolationError as exc:
            raise _duplicate(exc, details) from exc
        except asyncpg.ForeignKeyViolationError as exc:
            raise ConflictError(
                f"{action} refused: it refers to something that does not exist or is still "
                f"referred to by other objects ({exc.constraint_name}); nothing changed"
            ) from exc
        except asyncpg.CheckViolationError as exc:
            raise ValidationError(
                f"{action} refused: a value is out of range ({exc.constraint_name})"
            ) from exc
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"{action} failed in the registry database: {exc}") from exc
        if changed and self.on_change is not None:
            self.on_change()

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            snapshot = _SNAPSHOT.get()
            if snapshot is not None:
                return list(await snapshot.fetch(query, *args))
            async with self.pool.acquire() as conn:
                return list(await conn.fetch(query, *args))
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"reading the registry database failed: {exc}") from exc

    async def audit(self, actor: str, action: str, details: dict[str, Any]) -> None:
        """Record an event that changes nothing else (a refused request, a login failure)."""
        async with self._write(actor, action, details, changes_conf=False):
            pass

    # -- instance ---------------------------------------------------------------------------

    async def initialise(
        self,
        actor: str,
        instance_id: str,
        *,
        ocsp_freshness_s: int = 3600,
        timestamping_interval_s: int = 60,
        conf_expiry_s: int = 600,
        conf_refresh_s: int = 60,
        auto_approve: bool = False,
    ) -> InstanceSettings:
        check_part(instance_id, "instance")
        details = {
            "instance_id": instance_id,
            "ocsp_freshness_s": ocsp_freshness_s,
            "timestamping_interval_s": timestamping_interval_s,
            "conf_expiry_s": conf_expiry_s,
            "conf_refresh_s": conf_refresh_s,
            "auto_approve": auto_approve,
        }
        async with self._write(actor, "instance.initialise", details) as conn:
            await conn.execute(
                "INSERT INTO instance (instance_id, ocsp_freshness_s, timestamping_interval_s, "
                "conf_expiry_s, conf_refresh_s, auto_approve) VALUES ($1, $2, $3, $4, $5, $6)",
                instance_id,
                ocsp_freshness_s,
                timestamping_interval_s,
                conf_expiry_s,
                conf_refresh_s,
                auto_approve,
            )
        return await self.settings()

    async def is_initialised(self) -> bool:
        rows = await self._fetch("SELECT 1 FROM instance")
        return bool(rows)

    async def settings(self) -> InstanceSettings:
        rows = await self._fetch("SELECT * FROM instance")
        if not rows:
            raise NotInitialised(
                "the registry database is not initialised; run `jisr registry init --instance "
                "<INSTANCE>` first"
            )
        r = rows[0]
        return InstanceSettings(
            instance_id=r["instance_id"],
            ocsp_freshness_s=r["ocsp_freshness_s"],
            timestamping_interval_s=r["timestamping_interval_s"],
            conf_expiry_s=r["conf_expiry_s"],
            conf_refresh_s=r["conf_refresh_s"],
            auto_approve=r["auto_approve"],
            change_serial=r["change_serial"],
        )

    async def update_settings(self, actor: str, changes: dict[str, Any]) -> InstanceSettings:
        unknown = set(changes) - set(TUNABLE_SETTINGS) - {"auto_approve"}
        if unknown:
            raise ValidationError(
                f"unknown instance setting(s) {', '.join(sorted(unknown))}; changeable: "
                f"{', '.join(sorted([*TUNABLE_SETTINGS, 'auto_approve']))}"
            )
        for name, value in changes.items():
            if name == "auto_approve":
                if not isinstance(value, bool):
                    raise ValidationError("auto_approve must be true or false")
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(f"{name} must be an integer number of seconds")
            if value < TUNABLE_SETTINGS[name]:
                raise ValidationError(f"{name} must be at least {TUNABLE_SETTINGS[name]} s")
        await self.settings()
        if not changes:
            return await self.settings()
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=1))
        async with self._write(actor, "instance.update", dict(changes)) as conn:
            await conn.execute(f"UPDATE instance SET {sets}", *changes.values())  # noqa: S608 (column names are checked against TUNABLE_SETTINGS above)
        return await self.settings()

    async def _check_instance(self, instance: str) -> None:
        own = (await self.settings()).instance_id
        if instance != own:
            raise ValidationError(
                f"identifier belongs to instance {instance!r} but this registry serves {own!r}"
            )

    # -- member classes and members ------------------------------------------------------

    async def add_member_class(self, actor: str, code: str, description: str = "") -> None:
        check_part(code, "member class")
        details = {"member_class": code, "description": description}
        async with self._write(actor, "member_class.add", details) as conn:
            await conn.execute(
                "INSERT INTO member_classes (code, description) VALUES ($1, $2)", code, description
            )

    async def list_member_classes(self) -> list[dict[str, Any]]:
        rows = await self._fetch("SELECT code, description FROM member_classes ORDER BY code")
        return [dict(r) for r in rows]

    async def delete_member_class(self, actor: str, code: str) -> None:
        await self._delete_named(
            actor,
            "member_class.delete",
            "DELETE FROM member_classes WHERE code = $1",
            code,
            f"member class {code} does not exist",
            key="member_class",
        )

    async def _member_pk(self, conn: Connection, member: MemberId) -> int:
        pk = await conn.fetchval(
            "SELECT id FROM members WHERE member_class = $1 AND member_code = $2",
            member.member_class,
            member.member_code,
        )
        if pk is None:
            raise NotFoundError(f"member {member} does not exist; add it first")
        return int(pk)

    async def _subsystem_pk(self, conn: Connection, subsystem: SubsystemId) -> tuple[int, int]:
        member_pk = await self._member_pk(conn, subsystem.member)
        pk = await conn.fetchval(
            "SELECT id FROM subsystems WHERE member_id = $1 AND subsystem_code = $2",
            member_pk,
            subsystem.subsystem_code,
        )
        if pk is None:
            raise NotFoundError(f"subsystem {subsystem} does not exist; add it first")
        return member_pk, int(pk)

    async def _client_pks(
        self, conn: Connection, client: MemberId | SubsystemId
    ) -> tuple[int, int | None]:
        if isinstance(client, SubsystemId):
            return await self._subsystem_pk(conn, client)
        return await self._member_pk(conn, client), None

    async def add_member(self, actor: str, member: MemberId, name: str) -> None:
        await self._check_instance(member.instance)
        if not name.strip():
            raise ValidationError(f"member {member} needs a name (the organisation's full name)")
        details = {"member": str(member), "name": name, "member_class": member.member_class}
        async with self._write(actor, "member.add", details) as conn:
            known = await conn.fetchval(
                "SELECT 1 FROM member_classes WHERE code = $1", member.member_class
            )
            if not known:
                raise NotFoundError(
                    f"member class {member.member_class} does not exist; add it first"
                )
            await conn.execute(
                "INSERT INTO members (member_class, member_code, name) VALUES ($1, $2, $3)",
                member.member_class,
                member.member_code,
                name,
            )

    async def rename_member(self, actor: str, member: MemberId, name: str) -> None:
        await self._check_instance(member.instance)
        details = {"member": str(member), "name": name}
        async with self._write(actor, "member.rename", details) as conn:
            pk = await self._member_pk(conn, member)
            await conn.execute("UPDATE members SET name = $1 WHERE id = $2", name, pk)

    async def delete_member(self, actor: str, member: MemberId) -> None:
        await self._check_instance(member.instance)
        async with self._write(actor, "member.delete", {"member": str(member)}) as conn:
            pk = await self._member_pk(conn, member)
            await conn.execute("DELETE FROM members WHERE id = $1", pk)

    async def list_members(self) -> list[dict[str, Any]]:
        instance = (await self.settings()).instance_id
        rows = await self._fetch(
            "SELECT m.id, m.member_class, m.member_code, m.name, "
            "COALESCE(array_agg(s.subsystem_code ORDER BY s.subsystem_code) "
            "FILTER (WHERE s.id IS NOT NULL), '{}') AS subsystems "
            "FROM members m LEFT JOIN subsystems s ON s.member_id = m.id "
            "GROUP BY m.id ORDER BY m.member_class, m.member_code"
        )
        return [
            {
                "id": f"{instance}/{r['member_class']}/{r['member_code']}",
                "name": r["name"],
                "subsystems": list(r["subsystems"]),
            }
            for r in rows
        ]

    async def get_member(self, member: MemberId) -> dict[str, Any]:
        for entry in await self.list_members():
            if entry["id"] == str(member):
                return entry
        raise NotFoundError(f"member {member} does not exist")

    async def add_subsystem(self, actor: str, subsystem: SubsystemId) -> None:
        await self._check_instance(subsystem.instance)
        details = {"subsystem": str(subsystem)}
        async with self._write(actor, "subsystem.add", details) as conn:
            member_pk = await self._member_pk(conn, subsystem.member)
            await conn.execute(
                "INSERT INTO subsystems (member_id, subsystem_code) VALUES ($1, $2)",
                member_pk,
                subsystem.subsystem_code,
            )

    async def ensure_subsystem(self, conn: Connection, subsystem: SubsystemId) -> None:
        """Create ``subsystem`` if missing, inside the caller's transaction (client requests)."""
        member_pk = await self._member_pk(conn, subsystem.member)
        await conn.execute(
            "INSERT INTO subsystems (member_id, subsystem_code) VALUES ($1, $2) "
            "ON CONFLICT ON CONSTRAINT subsystems_member_code_key DO NOTHING",
            member_pk,
            subsystem.subsystem_code,
        )

    async def delete_subsystem(self, actor: str, subsystem: SubsystemId) -> None:
        await self._check_instance(subsystem.instance)
        async with self._write(actor, "subsystem.delete", {"subsystem": str(subsystem)}) as conn:
            _, pk = await self._subsystem_pk(conn, subsystem)
            await conn.execute("DELETE FROM subsystems WHERE id = $1", pk)

    # -- security servers --------------------------------------------------------------------

    async def _server_pk(self, conn: Connection, server: SecurityServerId) -> int:
        owner_pk = await self._member_pk(conn, server.owner)
        pk = await conn.fetchval(
            "SELECT id FROM security_servers WHERE owner_id = $1 AND server_code = $2",
            owner_pk,
            server.server_code,
        )
        if pk is None:
            raise NotFoundError(f"security server {server} is not registered")
        return int(pk)

    async def add_server(
        self,
        actor: str,
        server: SecurityServerId,
        address: str,
        auth_certs: Sequence[bytes],
        *,
        conn: Connection | None = None,
    ) -> None:
        """Register a node; with ``conn`` it joins that transaction (management execution)."""
        await self._check_instance(server.instance)
        check_address(address)
        details = {
            "server": str(server),
            "address": address,
            "auth_certs": [sha256_hex(c) for c in auth_certs],
        }
        if conn is not None:
            await self._insert_server(conn, server, address, auth_certs)
            return
        async with self._write(actor, "server.add", details) as own:
            await self._insert_server(own, server, address, auth_certs)

    async def _insert_server(
        self, conn: Connection, server: SecurityServerId, address: str, auth_certs: Sequence[bytes]
    ) -> None:
        owner_pk = await self._member_pk(conn, server.owner)
        pk = await conn.fetchval(
            "INSERT INTO security_servers (owner_id, server_code, address) VALUES ($1, $2, $3) "
            "RETURNING id",
            owner_pk,
            server.server_code,
            address,
        )
        for der in auth_certs:
            await conn.execute(
                "INSERT INTO auth_certs (server_id, certificate, sha256) VALUES ($1, $2, $3)",
                pk,
                der,
                sha256_hex(der),
            )

    async def set_server_address(self, actor: str, server: SecurityServerId, address: str) -> None:
        check_address(address)
        details = {"server": str(server), "address": address}
        async with self._write(actor, "server.address", details) as conn:
            pk = await self._server_pk(conn, server)
            await conn.execute(
                "UPDATE security_servers SET address = $1 WHERE id = $2", address, pk
            )

    async def delete_server(
        self, actor: str, server: SecurityServerId, *, conn: Connection | None = None
    ) -> None:
        if conn is not None:
            await conn.execute(
                "DELETE FROM security_servers WHERE id = $1", await self._server_pk(conn, server)
            )
            return
        async with self._write(actor, "server.delete", {"server": str(server)}) as own:
            await own.execute(
                "DELETE FROM security_servers WHERE id = $1", await self._server_pk(own, server)
            )

    async def add_server_client(
        self,
        actor: str,
        server: SecurityServerId,
        client: MemberId | SubsystemId,
        *,
        conn: Connection | None = None,
    ) -> None:
        await self._check_instance(client.instance)
        if conn is not None:
            await self._insert_client(conn, server, client)
            return
        details = {"server": str(server), "client": str(client)}
        async with self._write(actor, "server.client.add", details) as own:
            await self._insert_client(own, server, client)

    async def _insert_client(
        self, conn: Connection, server: SecurityServerId, client: MemberId | SubsystemId
    ) -> None:
        server_pk = await self._server_pk(conn, server)
        member_pk, subsystem_pk = await self._client_pks(conn, client)
        await conn.execute(
            "INSERT INTO server_clients (server_id, member_id, subsystem_id) VALUES ($1, $2, $3)",
            server_pk,
            member_pk,
            subsystem_pk,
        )

    async def remove_server_client(
        self,
        actor: str,
        server: SecurityServerId,
        client: MemberId | SubsystemId,
        *,
        conn: Connection | None = None,
    ) -> None:
        if conn is not None:
            await self._delete_client(conn, server, client)
            return
        details = {"server": str(server), "client": str(client)}
        async with self._write(actor, "server.client.remove", details) as own:
            await self._delete_client(own, server, client)

    async def _delete_client(
        self, conn: Connection, server: SecurityServerId, client: MemberId | SubsystemId
    ) -> None:
        server_pk = await self._server_pk(conn, server)
        member_pk, subsystem_pk = await self._client_pks(conn, client)
        done = await conn.execute(
            "DELETE FROM server_clients WHERE server_id = $1 AND member_id = $2 "
            "AND subsystem_id IS NOT DISTINCT FROM $3",
            server_pk,
            member_pk,
            subsystem_pk,
        )
        if done == "DELETE 0":
            raise NotFoundError(f"{client} is not a client of {server}")

    async def list_servers(self) -> list[dict[str, Any]]:
        instance = (await self.settings()).instance_id
        servers = await self._fetch(
            "SELECT ss.id, m.member_class, m.member_code, ss.server_code, ss.address "
            "FROM security_servers ss JOIN members m ON m.id = ss.owner_id "
            "ORDER BY m.member_class, m.member_code, ss.server_code"
        )
        certs = await self._fetch("SELECT server_id, certificate FROM auth_certs ORDER BY id")
        clients = await self._fetch(
            "SELECT sc.server_id, m.member_class, m.member_code, s.subsystem_code "
            "FROM server_clients sc JOIN members m ON m.id = sc.member_id "
            "LEFT JOIN subsystems s ON s.id = sc.subsystem_id "
            "ORDER BY m.member_class, m.member_code, s.subsystem_code NULLS FIRST"
        )
        result = []
        for s in servers:
            result.append(
                {
                    "id": f"{instance}/{s['member_class']}/{s['member_code']}/{s['server_code']}",
                    "address": s["address"],
                    "auth_certs": [
                        b64(c["certificate"]) for c in certs if c["server_id"] == s["id"]
                    ],
                    "clients": [
                        "/".join(
                            p
                            for p in (
                                instance,
                                c["member_class"],
                                c["member_code"],
                                c["subsystem_code"],
                            )
                            if p is not None
                        )
                        for c in clients
                        if c["server_id"] == s["id"]
                    ],
                }
            )
        return result

    async def get_server(self, server: SecurityServerId) -> dict[str, Any]:
        for entry in await self.list_servers():
            if entry["id"] == str(server):
                return entry
        raise NotFoundError(f"security server {server} is not registered")

    # -- trust services ------------------------------------------------------------------------

    async def add_ca(
        self,
        actor: str,
        name: str,
        certificate: bytes,
        *,
        intermediates: Sequence[bytes] = (),
        ocsp: Sequence[tuple[str, bytes | None]] = (),
        profile: str = "jisr/1",
    ) -> None:
        if not name.strip():
            raise ValidationError("an approved CA needs a name")
        details = {
            "name": name,
            "certificate_sha256": sha256_hex(certificate),
            "ocsp": [url for url, _ in ocsp],
            "profile": profile,
        }
        async with self._write(actor, "ca.add", details) as conn:
            pk = await conn.fetchval(
                "INSERT INTO approved_cas (name, certificate, intermediates, profile) "
                "VALUES ($1, $2, $3, $4) RETURNING id",
                name,
                certificate,
                list(intermediates),
                profile,
            )
            for url, cert in ocsp:
                await conn.execute(
                    "INSERT INTO ca_ocsp_responders (ca_id, url, certificate) VALUES ($1, $2, $3)",
                    pk,
                    url,
                    cert,
                )

    async def _delete_named(
        self,
        actor: str,
        action: str,
        delete_sql: str,
        name: str,
        missing: str,
        *,
        key: str = "name",
    ) -> None:
        """Run ``delete_sql`` (one ``$1`` for the name) with its audit row (``{key: name}``);
        :class:`NotFoundError` with the message ``missing`` (404) if it deleted nothing."""
        async with self._write(actor, action, {key: name}) as conn:
            if await conn.execute(delete_sql, name) == "DELETE 0":
                raise NotFoundError(missing)

    async def delete_ca(self, actor: str, name: str) -> None:
        await self._delete_named(
            actor,
            "ca.delete",
            "DELETE FROM approved_cas WHERE name = $1",
            name,
            f"no approved CA is named {name!r}",
        )

    async def list_cas(self) -> list[dict[str, Any]]:
        cas = await self._fetch("SELECT * FROM approved_cas ORDER BY name")
        responders = await self._fetch("SELECT * FROM ca_ocsp_responders ORDER BY id")
        return [
            {
                "name": ca["name"],
                "certificate": b64(ca["certificate"]),
                "intermediates": [b64(i) for i in ca["intermediates"]],
                "ocsp": [
                    {
                        "url": o["url"],
                        "certificate": b64(o["certificate"]) if o["certificate"] else None,
                    }
                    for o in responders
                    if o["ca_id"] == ca["id"]
                ],
                "profile": ca["profile"],
            }
            for ca in cas
        ]

    async def add_tsa(self, actor: str, name: str, url: str, certificate: bytes) -> None:
        if not name.strip():
            raise ValidationError("an approved TSA needs a name")
        details = {"name": name, "url": url, "certificate_sha256": sha256_hex(certificate)}
        async with self._write(actor, "tsa.add", details) as conn:
            await conn.execute(
                "INSERT INTO approved_tsas (name, url, certificate) VALUES ($1, $2, $3)",
                name,
                url,
                certificate,
            )

    async def delete_tsa(self, actor: str, name: str) -> None:
        await self._delete_named(
            actor,
            "tsa.delete",
            "DELETE FROM approved_tsas WHERE name = $1",
            name,
            f"no approved TSA is named {name!r}",
        )

    async def list_tsas(self) -> list[dict[str, Any]]:
        rows = await self._fetch("SELECT name, url, certificate FROM approved_tsas ORDER BY name")
        return [
            {"name": r["name"], "url": r["url"], "certificate": b64(r["certificate"])} for r in rows
        ]

    # -- global groups -------------------------------------------------------------------------

    async def add_group(self, actor: str, code: str, description: str = "") -> None:
        check_part(code, "global group code")
        async with self._write(
            actor, "group.add", {"code": code, "description": description}
        ) as conn:
            await conn.execute(
                "INSERT INTO global_groups (code, description) VALUES ($1, $2)", code, description
            )

    async def _group_pk(self, conn: Connection, code: str) -> int:
        pk = await conn.fetchval("SELECT id FROM global_groups WHERE code = $1", code)
        if pk is None:
            raise NotFoundError(f"global group {code!r} does not exist")
        return int(pk)

    async def delete_group(self, actor: str, code: str) -> None:
        await self._delete_named(
            actor,
            "group.delete",
            "DELETE FROM global_groups WHERE code = $1",
            code,
            f"global group {code!r} does not exist",
            key="code",
        )

    async def add_group_member(self, actor: str, code: str, client: MemberId | SubsystemId) -> None:
        await self._check_instance(client.instance)
        details = {"code": code, "client": str(client)}
        async with self._write(actor, "group.member.add", details) as conn:
            group_pk = await self._group_pk(conn, code)
            member_pk, subsystem_pk = await self._client_pks(conn, client)
            await conn.execute(
                "INSERT INTO global_group_members (group_id, member_id, subsystem_id) "
                "VALUES ($1, $2, $3)",
                group_pk,
                member_pk,
                subsystem_pk,
            )

    async def remove_group_member(
        self, actor: str, code: str, client: MemberId | SubsystemId
    ) -> None:
        details = {"code": code, "client": str(client)}
        async with self._write(actor, "group.member.remove", details) as conn:
            group_pk = await self._group_pk(conn, code)
            member_pk, subsystem_pk = await self._client_pks(conn, client)
            done = await conn.execute(
                "DELETE FROM global_group_members WHERE group_id = $1 AND member_id = $2 "
                "AND subsystem_id IS NOT DISTINCT FROM $3",
                group_pk,
                member_pk,
                subsystem_pk,
            )
            if done == "DELETE 0":
                raise NotFoundError(f"{client} is not a member of global group {code!r}")

    async def list_groups(self) -> list[dict[str, Any]]:
        instance = (await self.settings()).instance_id
        groups = await self._fetch("SELECT id, code, description FROM global_groups ORDER BY code")
        members = await self._fetch(
            "SELECT g.group_id, m.member_class, m.member_code, s.subsystem_code "
            "FROM global_group_members g JOIN members m ON m.id = g.member_id "
            "LEFT JOIN subsystems s ON s.id = g.subsystem_id "
            "ORDER BY m.member_class, m.member_code, s.subsystem_code NULLS FIRST"
        )
        return [
            {
                "code": g["code"],
                "description": g["description"],
                "members": [
                    "/".join(
                        p
                        for p in (
                            instance,
                            m["member_class"],
                            m["member_code"],
                            m["subsystem_code"],
                        )
                        if p is not None
                    )
                    for m in members
                    if m["group_id"] == g["id"]
                ],
            }
            for g in groups
        ]

    # -- management requests ---------------------------------------------------------------------

    async def insert_request(
        self,
        actor: str,
        *,
        type_: str,
        server: str,
        client: str | None,
        payload: dict[str, Any],
        raw: bytes,
        signatures: dict[str, Any],
        nonce: str,
    ) -> int:
        details = {"type": type_, "server": server, "client": client, "nonce": nonce}
        async with self._write(actor, "request.submit", details, changes_conf=False) as conn:
            pk = await conn.fetchval(
                "INSERT INTO management_requests (type, server, client, payload, raw, "
                "signatures, nonce) VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb, $7) "
                "RETURNING id",
                type_,
                server,
                client,
                json.dumps(payload),
                raw,
                json.dumps(signatures),
                nonce,
            )
        return int(pk)

    async def nonce_seen(self, nonce: str) -> bool:
        return bool(await self._fetch("SELECT 1 FROM management_requests WHERE nonce = $1", nonce))

    async def list_requests(self, state: str | None = None) -> list[dict[str, Any]]:
        if state is not None and state not in {"submitted", "approved", "declined", "executed"}:
            raise ValidationError(
                f"unknown request state {state!r}; use submitted, approved, declined or executed"
            )
        rows = await self._fetch(
            "SELECT * FROM management_requests WHERE ($1::text IS NULL OR state = $1) ORDER BY id",
            state,
        )
        return [_request_json(r) for r in rows]

    async def get_request(self, request_id: int) -> dict[str, Any]:
        rows = await self._fetch("SELECT * FROM management_requests WHERE id = $1", request_id)
        if not rows:
            raise NotFoundError(f"management request {request_id} does not exist")
        return _request_json(rows[0])

    @asynccontextmanager
    async def deciding(
        self, actor: str, request_id: int, decision: Literal["approve", "decline"], reason: str
    ) -> AsyncIterator[tuple[Connection, dict[str, Any]]]:
        """Lock a submitted request; the body executes it on the connection given.

        The request's new state, the execution's effects and the audit row commit together.
        """
        details = {"request": request_id, "decision": decision, "reason": reason}
        async with self._write(
            actor, f"request.{decision}", details, changes_conf=decision == "approve"
        ) as conn:
            row = await conn.fetchrow(
                "SELECT * FROM management_requests WHERE id = $1 FOR UPDATE", request_id
            )
            if row is None:
                raise NotFoundError(f"management request {request_id} does not exist")
            if row["state"] != "submitted":
                raise ConflictError(
                    f"management request {request_id} is already {row['state']}; only submitted "
                    "requests can be approved or declined"
                )
            yield conn, _request_json(row)
            if decision == "approve":
                await conn.execute(
                    "UPDATE management_requests SET state = 'executed', decided_by = $2, "
                    "decided_at = now(), executed_at = now(), reason = $3 WHERE id = $1",
                    request_id,
                    actor,
                    reason or None,
                )
            else:
                await conn.execute(
                    "UPDATE management_requests SET state = 'declined', decided_by = $2, "
                    "decided_at = now(), reason = $3 WHERE id = $1",
                    request_id,
                    actor,
                    reason or None,
                )

    # -- configuration signing keys and versions --------------------------------------------------

    async def add_conf_key(self, actor: str, key_id: str, certificate: bytes, key_ref: str) -> None:
        details = {"key_id": key_id, "certificate_sha256": sha256_hex(certificate)}
        async with self._write(actor, "conf_key.add", details) as conn:
            await conn.execute(
                "INSERT INTO conf_signing_keys (key_id, certificate, key_ref, state) "
                "VALUES ($1, $2, $3, 'announced')",
                key_id,
                certificate,
                key_ref,
            )

    async def list_conf_keys(self) -> list[ConfKey]:
        rows = await self._fetch("SELECT * FROM conf_signing_keys ORDER BY created_at, key_id")
        return [_conf_key(r) for r in rows]

    async def active_conf_key(self) -> ConfKey:
        rows = await self._fetch("SELECT * FROM conf_signing_keys WHERE state = 'active'")
        if not rows:
            raise NotInitialised(
                "no configuration signing key is active; run `jisr registry init` or "
                "`jisr registry conf-key add` and `conf-key activate`"
            )
        return _conf_key(rows[0])

    async def activate_conf_key(self, actor: str, key_id: str, *, first: bool = False) -> None:
        """Make ``key_id`` the signing key; the old one is retired.

        Unless ``first`` (bootstrap, when no configuration exists yet), the key must already
        have been published as announced, so nodes have it before anything is signed with it.
        """
        async with self._write(actor, "conf_key.activate", {"key_id": key_id}) as conn:
            row = await conn.fetchrow(
                "SELECT * FROM conf_signing_keys WHERE key_id = $1 FOR UPDATE", key_id
            )
            if row is None:
                raise NotFoundError(f"configuration signing key {key_id} does not exist")
            if row["state"] != "announced":
                raise ConflictError(
                    f"configuration signing key {key_id} is {row['state']}; only an announced "
                    "key can be activated"
                )
            if row["first_published_version"] is None and not first:
                raise ConflictError(
                    f"configuration signing key {key_id} has not been published yet; wait until "
                    "a configuration version lists it (at most conf_regenerate_interval_s), "
                    "so that nodes can verify what it signs, then activate it"
                )
            await conn.execute(
                "UPDATE conf_signing_keys SET state = 'retired', retired_at = now() "
                "WHERE state = 'active'"
            )
            await conn.execute(
                "UPDATE conf_signing_keys SET state = 'active', activated_at = now() "
                "WHERE key_id = $1",
                key_id,
            )

    async def retire_conf_key(self, actor: str, key_id: str) -> None:
        async with self._write(actor, "conf_key.retire", {"key_id": key_id}) as conn:
            row = await conn.fetchrow(
                "SELECT state FROM conf_signing_keys WHERE key_id = $1", key_id
            )
            if row is None:
                raise NotFoundError(f"configuration signing key {key_id} does not exist")
            if row["state"] == "active":
                raise ConflictError(
                    f"configuration signing key {key_id} is active; activate another key first"
                )
            await conn.execute(
                "UPDATE conf_signing_keys SET state = 'retired', retired_at = now() "
                "WHERE key_id = $1",
                key_id,
            )

    async def conf_content(self) -> ConfContent:
        """Read everything a configuration version needs, in one consistent snapshot.

        The reads share one REPEATABLE READ transaction, so a change committed meanwhile is
        either wholly in the content (and in ``settings.change_serial``) or wholly absent.
        """
        try:
            async with (
                self.pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                token = _SNAPSHOT.set(conn)
                try:
                    return ConfContent(
                        settings=await self.settings(),
                        member_classes=await self.list_member_classes(),
                        members=await self.list_members(),
                        security_servers=await self.list_servers(),
                        approved_cas=await self.list_cas(),
                        approved_tsas=await self.list_tsas(),
                        global_groups=await self.list_groups(),
                        signing_keys=[
                            k for k in await self.list_conf_keys() if k.state != "retired"
                        ],
                    )
                finally:
                    _SNAPSHOT.reset(token)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"reading the registry database failed: {exc}") from exc

    async def latest_version(self) -> ConfVersion | None:
        rows = await self._fetch("SELECT * FROM globalconf_versions ORDER BY version DESC LIMIT 1")
        return _conf_version(rows[0]) if rows else None

    async def get_version(self, version: int) -> ConfVersion:
        rows = await self._fetch("SELECT * FROM globalconf_versions WHERE version = $1", version)
        if not rows:
            raise NotFoundError(await self._missing_version(version))
        return _conf_version(rows[0])

    async def _missing_version(self, version: int) -> str:
        """Why ``version`` is not there: pruned, not published yet, or none at all."""
        (row,) = await self._fetch(
            "SELECT min(version) AS oldest, max(version) AS newest FROM globalconf_versions"
        )
        oldest, newest = row["oldest"], row["newest"]
        if newest is None:
            return (
                f"configuration version {version} does not exist: no global configuration has "
                "been published yet"
            )
        if version < oldest:
            return (
                f"configuration version {version} is no longer kept by the registry (old "
                f"versions are pruned; the oldest kept is {oldest}); read globalconf/current "
                f"for the version in force ({newest})"
            )
        if version > newest:
            return (
                f"configuration version {version} has not been published; the newest is "
                f"{newest} (see globalconf/current)"
            )
        return f"configuration version {version} does not exist"

    async def list_versions(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self._fetch(
            "SELECT version, digest, previous_digest, signing_key_id, generated_at, expires_at "
            "FROM globalconf_versions ORDER BY version DESC LIMIT $1",
            limit,
        )
        return [
            {
                "version": r["version"],
                "digest": r["digest"],
                "previous_digest": r["previous_digest"],
                "signing_key_id": r["signing_key_id"],
                "generated_at": _iso(r["generated_at"]),
                "expires_at": _iso(r["expires_at"]),
            }
            for r in rows
        ]

    async def store_version(self, version: ConfVersion, listed_key_ids: Sequence[str]) -> None:
        """Store a signed version; refused if ``version`` is not exactly the next one."""
        details = {"version": version.version, "digest": version.digest}
        # Not audited: a version every minute would drown the operators' actions; the
        # globalconf_versions table is the record of what was published.
        async with self._write(
            "publisher", "globalconf.publish", details, changes_conf=False, audited=False
        ) as conn:
            latest = await conn.fetchval("SELECT max(version) FROM globalconf_versions")
            expected = (latest or 0) + 1
            if version.version != expected:
                raise ConflictError(
                    f"configuration version {version.version} is not the next one ({expected}); "
                    "another publisher is running against this database"
                )
            await conn.execute(
                "INSERT INTO globalconf_versions (version, document, signature, digest, "
                "previous_digest, signing_key_id, change_serial, generated_at, expires_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                version.version,
                version.document,
                version.signature,
                version.digest,
                version.previous_digest,
                version.signing_key_id,
                version.change_serial,
                version.generated_at,
                version.expires_at,
            )
            await conn.execute(
                "UPDATE conf_signing_keys SET first_published_version = $1 "
                "WHERE key_id = ANY($2::text[]) AND first_published_version IS NULL",
                version.version,
                list(listed_key_ids),
            )

    async def prune_versions(
        self,
        actor: str,
        *,
        keep_versions: int,
        keep_since: dt.datetime,
        now: dt.datetime,
        dry_run: bool = False,
        chunk_size: int = PRUNE_CHUNK_VERSIONS,
        guard: AbstractAsyncContextManager[Any] | None = None,
        after_chunk: Callable[[PruneResult], Awaitable[None]] | None = None,
    ) -> PruneResult:
        """Delete the versions that no node can still be directed to and the policy lets go.

        A version is deleted only if all of these hold: it is not among the ``keep_versions``
        newest (at least 1, so the version ``globalconf/current`` names always stays), it was
        generated before ``keep_since``, and it expired at or before ``now`` (an unexpired
        version may still be named by a mirror's pointer, and a node would still accept it).

        The deletion runs in chunks of at most ``chunk_size`` versions, oldest first, each in
        its own short transaction, so that a long backlog never holds a publication up for
        long. Each chunk's ``SHARE ROW EXCLUSIVE`` lock on the versions table conflicts with
        the lock :meth:`store_version` takes to insert, so a chunk and a publication never
        overlap, whichever processes run them; readers of the table are not blocked.
        ``guard`` (the publisher's lock) is entered around each chunk and released between
        them, as is the table lock, so a publication can go between two chunks. The run
        removes only what was prunable when it started (up to the newest such version then),
        so it ends however many versions are published meanwhile.

        Every chunk that removes something is audited (``globalconf.prune``) in its own
        transaction, with that chunk's figures, its number (``chunk``), the total removed by
        the run so far (``total_removed``) and whether it was the last (``done``); the result
        gives the run's totals. ``after_chunk`` is awaited after each such chunk, outside the
        locks, with that chunk's figures. A dry run (one query, nothing written) or a prune
        that finds nothing writes no row.
        """
        if isinstance(keep_versions, bool) or not isinstance(keep_versions, int):
            raise ValidationError("keep_versions must be an integer")
        if keep_versions < 1:
            raise ValidationError(
                f"keep_versions {keep_versions} must be at least 1: the newest configuration "
                "version is the one nodes are directed to and is never pruned"
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValidationError(f"chunk_size {chunk_size!r} must be a whole number, at least 1")
        if guard is None:
            guard = nullcontext()
        details: dict[str, Any] = {
            "keep_versions": keep_versions,
            "keep_since": _iso(keep_since),
        }
        selection = (
            "FROM globalconf_versions WHERE version < ("
            "  SELECT min(version) FROM ("
            "    SELECT version FROM globalconf_versions ORDER BY version DESC LIMIT $1"
            "  ) AS newest"
            ") AND generated_at < $2 AND expires_at <= $3"
        )
        # ``kept``: the table as the statement found it (a DELETE in its WITH is not seen by
        # the rest of the statement) less what ``pruned`` holds.
        summary = (
            "SELECT count(*) AS count, min(version) AS oldest, max(version) AS newest, "
            "min(generated_at) AS oldest_at, max(generated_at) AS newest_at, "
            "(SELECT count(*) FROM globalconf_versions) - count(*) AS kept FROM pruned"
        )
        # The oldest ``$5`` prunable versions up to ``$4``.
        oldest_chunk = (
            "FROM globalconf_versions WHERE version IN (SELECT version " + selection + " AND "
            "version <= $4 ORDER BY version LIMIT $5)"
        )
        if dry_run:
            async with guard:
                (row,) = await self._fetch(
                    f"WITH pruned AS (SELECT version, generated_at {selection}) {summary}",
                    keep_versions,
                    keep_since,
                    now,
                )
            return _prune_result(row, dry_run=True)

        run: PruneResult | None = None
        bound: int | None = None  # the newest version prunable when the run started
        for chunk in itertools.count(1):
            async with (
                guard,
                self._write(
                    actor, "globalconf.prune", details, changes_conf=False, audited=False
                ) as conn,
            ):
                await conn.execute("LOCK TABLE globalconf_versions IN SHARE ROW EXCLUSIVE MODE")
                if bound is None:
                    bound = await conn.fetchval(
                        f"SELECT max(version) {selection}", keep_versions, keep_since, now
                    )
                    if bound is None:
                        kept = await conn.fetchval("SELECT count(*) FROM globalconf_versions")
                        return PruneResult(0, None, None, None, None, kept, dry_run=False)
                (row,) = await conn.fetch(
                    f"WITH pruned AS (DELETE {oldest_chunk} RETURNING version, generated_at) "
                    f"{summary}",
                    keep_versions,
                    keep_since,
                    now,
                    bound,
                    chunk_size,
                )
                more = await conn.fetchval(
                    f"SELECT EXISTS (SELECT 1 {selection} AND version <= $4)",
                    keep_versions,
                    keep_since,
                    now,
                    bound,
                )
                part = _prune_result(row, dry_run=False)
                if part.removed:
                    run = part if run is None else run.add(part)
                    await _audit_row(
                        conn,
                        actor,
                        "globalconf.prune",
                        details
                        | {k: v for k, v in part.to_json().items() if k != "dry_run"}
                        | {"chunk": chunk, "total_removed": run.removed, "done": not more},
                    )
            if part.removed and after_chunk is not None:
                await after_chunk(part)
            if not more or not part.removed:  # done, or another prune took the rest
                break
        return run if run is not None else part

    # -- API keys and the audit log ---------------------------------------------------------------

    async def create_api_key(self, actor: str, name: str, role: str) -> str:
        """Create a key and return it; only its hash is stored, so show it to the user once."""
        if role not in ROLES:
            raise ValidationError(f"unknown role {role!r}; use operator or auditor")
        if not name.strip():
            raise ValidationError("an API key needs a name (who or what uses it)")
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        details = {"name": name, "role": role}
        async with self._write(actor, "api_key.create", details, changes_conf=False) as conn:
            await conn.execute(
                "INSERT INTO api_keys (name, key_hash, role) VALUES ($1, $2, $3)",
                name,
                hash_api_key(key),
                role,
            )
        return key

    async def revoke_api_key(self, actor: str, name: str) -> None:
        async with self._write(actor, "api_key.revoke", {"name": name}, changes_conf=False) as conn:
            done = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
                name,
            )
            if done == "UPDATE 0":
                raise NotFoundError(f"no active API key is named {name!r}")

    async def list_api_keys(self) -> list[dict[str, Any]]:
        rows = await self._fetch(
            "SELECT name, role, created_at, revoked_at FROM api_keys ORDER BY id"
        )
        return [
            {
                "name": r["name"],
                "role": r["role"],
                "created_at": _iso(r["created_at"]),
                "revoked_at": _iso(r["revoked_at"]),
            }
            for r in rows
        ]

    async def authenticate(self, key: str) -> ApiKey | None:
        rows = await self._fetch(
            "SELECT id, name, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_api_key(key),
        )
        if not rows:
            return None
        return ApiKey(rows[0]["id"], rows[0]["name"], rows[0]["role"])

    async def list_audit(
        self, *, after_id: int = 0, limit: int = 100, action: str | None = None
    ) -> list[dict[str, Any]]:
        rows = await self._fetch(
            "SELECT * FROM audit_log WHERE id > $1 AND ($3::text IS NULL OR action = $3) "
            "ORDER BY id LIMIT $2",
            after_id,
            max(1, min(limit, 1000)),
            action,
        )
        return [
            {
                "id": r["id"],
                "at": _iso(r["at"]),
                "actor": r["actor"],
                "action": r["action"],
                "details": json.loads(r["details"]),
            }
            for r in rows
        ]


def _prune_result(row: asyncpg.Record, *, dry_run: bool) -> PruneResult:
    return PruneResult(
        removed=row["count"],
        oldest_version=row["oldest"],
        newest_version=row["newest"],
        oldest_generated_at=row["oldest_at"],
        newest_generated_at=row["newest_at"],
        kept=row["kept"],
        dry_run=dry_run,
        chunks=1 if row["count"] and not dry_run else 0,
    )


_Ordered = TypeVar("_Ordered", int, dt.datetime)


def _least(a: _Ordered | None, b: _Ordered | None) -> _Ordered | None:
    return b if a is None else a if b is None else min(a, b)


def _most(a: _Ordered | None, b: _Ordered | None) -> _Ordered | None:
    return b if a is None else a if b is None else max(a, b)


async def _audit_row(conn: Connection, actor: str, action: str, details: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, details) VALUES ($1, $2, $3::jsonb)",
        actor,
        action,
        json.dumps(details, default=str),
    )


def check_address(address: str) -> str:
    """A node's external address: ``host:port``, no scheme, no path (as the conf requires)."""
    if (
        not isinstance(address, str)
        or len(address) > 255
        or any(c.isspace() or c in "/@?#\\" for c in address)
    ):
        raise ValidationError(
            f"security server address {address!r} is not of the form HOST:PORT "
            "(e.g. ss1.ndc.gov.iq:5500)"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(
            f"security server address {address!r} is not of the form HOST:PORT with a port "
            "1-65535 (e.g. ss1.ndc.gov.iq:5500)"
        )
    return address


def parse_client_id(text: str) -> MemberId | SubsystemId:
    """A client identifier (member or subsystem) from its string form."""
    return parse_client(text)


def _request_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": r["id"],
        "type": r["type"],
        "server": r["server"],
        "client": r["client"],
        "payload": json.loads(r["payload"]),
        "state": r["state"],
        "reason": r["reason"],
        "decided_by": r["decided_by"],
        "submitted_at": _iso(r["submitted_at"]),
        "decided_at": _iso(r["decided_at"]),
        "executed_at": _iso(r["executed_at"]),
    }


def _conf_key(r: asyncpg.Record) -> ConfKey:
    return ConfKey(
        key_id=r["key_id"],
        certificate=bytes(r["certificate"]),
        key_ref=r["key_ref"],
        state=r["state"],
        created_at=r["created_at"],
        activated_at=r["activated_at"],
        first_published_version=r["first_published_version"],
    )


def _conf_version(r: asyncpg.Record) -> ConfVersion:
    return ConfVersion(
        version=r["version"],
        document=bytes(r["document"]),
        signature=bytes(r["signature"]),
        digest=r["digest"],
        previous_digest=r["previous_digest"],
        signing_key_id=r["signing_key_id"],
        change_serial=r["change_serial"],
        generated_at=r["generated_at"],
        expires_at=r["expires_at"],
    )
