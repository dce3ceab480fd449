"""The node assembly: database, keys, configuration, OCSP, catalogue, and the four listeners.

Rules:

- :func:`running_node` builds one :class:`security_server.runtime.NodeRuntime` from a data
  directory and serves, while its block runs:

  ========================= ========= ====================================================
  listener                  default   TLS
  ========================= ========= ====================================================
  client side, HTTP         8080      none (information systems on a trusted network)
  client side, HTTPS        8443      the internal self-signed certificate; a client
                                      certificate is asked for (optional) and must be one
                                      registered for an ``https_cert`` client
  server side (other nodes) 5500      mutual TLS with the authentication certificate;
                                      peers must chain to an approved CA of the global
                                      configuration
  admin API                 4000      none; bind it to a management network only
  ========================= ========= ====================================================

  Port 0 lets the OS choose; the bound URLs are written to ``DIR/run/endpoints.json``.
- The node starts even when the registry is unreachable (it serves its last good
  configuration, or refuses exchanges with ``OutdatedGlobalConf`` until it has one).
- Trust follows the configuration: when the approved CAs change, the server-side listener is
  re-bound on the same port with a new TLS context; when registered client certificates
  change, so is the client-side HTTPS listener. Connections already open finish normally.
- One :class:`trust_services.ocsp_client.ResponderPreference` per node process
  (``NodeRuntime.ocsp_preference``), shared by the refresher of the node's own OCSP responses
  and the checks of the other nodes' authentication certificates, so a responder found dead on
  one path is not asked first on the other.
- Background tasks: configuration polling, own OCSP refreshing, the message log's writer and
  its batch timestamper (:mod:`security_server.message_log`, :mod:`.timestamper`), the
  archiver (:mod:`security_server.archiver`; a directory, ``<data dir>/archives`` by default,
  or an S3 bucket), the retention job (deletes archived records older than
  ``retention_days``, hourly), and a catalogue watcher that picks up changes made by
  ``jisr node`` commands in other processes (every 2 s).
- The archiver's trust material comes from ``DIR/conf-history/``: the anchor and every
  accepted global-configuration version whose trust content changed. Archiving passes of all
  processes sharing the database take turns through a PostgreSQL advisory lock
  (:func:`archive_lock`), so worker processes and ``jisr node archive`` never write the same
  archive twice.
- Shutdown, in reverse: listeners (open requests get 5 s), background tasks, the archiver (a
  pass under way is cancelled; its records stay unarchived), the message log (queued records
  are written first), the timestamper, outgoing sessions, database pool, the embedded
  PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from config.errors import ConfigError, StorageError
from config.settings import NodeSettings, Settings
from gateway.globalconf import GlobalConf, format_time
from gateway.identifiers import SecurityServerId
from security_server.admin_api import AdminContext, admin_app
from security_server.catalogue_store import CatalogueStore
from security_server.conf_client import ConfClient
from security_server.log_stamps import TIMESTAMPED_THROUGH
from security_server.node_dir import (
    NodeDir,
    passphrase_from_env,
    sha256_fingerprint,
    write_atomically,
)
from security_server.node_keys import NodeKeys, NodeSigners
from security_server.own_ocsp import OwnOcsp
from security_server.runtime import Clock, NodeRuntime, TlsFiles, utc_now
from security_server.tls import server_context
from storage.database import open_pool
from storage.errors import DATABASE_ERRORS, expire_if_lost
from storage.migrations import apply_migrations
from storage.sessions import session_changed
from trust_services.ocsp_client import ResponderPreference

if TYPE_CHECKING:
    from security_server.archiver import (
        ArchiveLock,
        Archiver,
        ArchiveSource,
        ArchiveStore,
        ConfHistory,
    )
    from security_server.message_log import PostgresMessageLog
    from security_server.timestamper import Timestamper

log = structlog.get_logger(__name__)

DATABASE_NAME = "jisr_node"
MIGRATIONS = "security_server.migrations"
LOG_MIGRATIONS = "security_server.log_migrations"
WATCH_INTERVAL_S = 2.0
SHUTDOWN_TIMEOUT_S = 5.0
#: Seconds between runs of the retention job (the first runs at start).
RETENTION_INTERVAL_S = 3600.0
#: Advisory lock key of an archiving pass ("JLAR"); the timestamper's is "JLTS".
ARCHIVE_LOCK_KEY = 0x4A4C4152
CONF_HISTORY_DIR = "conf-history"
ARCHIVE_DIR = "archives"
#: Seconds between passes of an archiver built for ``archive_interval_s = 0`` (one pass at a
#: time, as ``jisr node archive --every`` runs it).
DEFAULT_ARCHIVE_INTERVAL_S = 60.0


@contextlib.asynccontextmanager
async def open_node_database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The node database, migrated; embedded PostgreSQL in ``DIR/postgres`` without a URL."""
    async with open_pool(
        configured_url=settings.database.url,
        data_dir=settings.data_dir,
        database=DATABASE_NAME,
        migrations=MIGRATIONS,
        min_size=settings.database.min_pool,
        max_size=settings.database.max_pool,
    ) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(conn, LOG_MIGRATIONS)
        yield pool


def message_log_options(ns: NodeSettings) -> dict[str, Any]:
    """The :class:`PostgresMessageLog` keyword arguments the node settings ask for."""
    if ns.timestamp_failure_period_s < 1:
        raise ConfigError(
            "timestamp_failure_period_s must be at least 1 second (X-Road's default is 14400)"
        )
    if ns.retention_days < 0:
        raise ConfigError("retention_days must be 0 (delete once archived) or more")
    return {
        "timestamp_immediately": ns.timestamp_immediately,
        "acceptable_period": dt.timedelta(seconds=ns.timestamp_failure_period_s),
        "retention": dt.timedelta(days=ns.retention_days),
        "log_bodies": ns.log_bodies,
        "max_body_bytes": ns.max_body_bytes,
    }


def archive_directory(settings: Settings) -> Path:
    """Where archives go without an S3 URL: ``archive_dir``, relative to the data directory."""
    configured = settings.node.archive_dir
    return settings.data_dir / (configured or ARCHIVE_DIR)


def archive_store(settings: Settings) -> ArchiveStore:
    """The archive store the settings name: an S3 bucket for ``archive_url``, else a directory.

    Raises ConfigError for a malformed URL, a missing boto3, or a directory that cannot be
    created.
    """
    from security_server.archiver import DirectoryStore, s3_store

    ns = settings.node
    if ns.archive_url:
        if not ns.archive_url.startswith("s3://"):
            raise ConfigError(
                f"archive_url {ns.archive_url!r} is not an s3://bucket/prefix URL; leave it "
                "empty to archive to archive_dir"
            )
        return s3_store(
            ns.archive_url,
            staging=settings.data_dir / "archive-staging",
            endpoint_url=ns.archive_s3_endpoint or None,
        )
    directory = archive_directory(settings)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the archive directory {directory}: {exc.strerror or exc}; set "
            "archive_dir to a writable directory"
        ) from exc
    return DirectoryStore(directory)


def archive_lock(pool: asyncpg.Pool) -> ArchiveLock:
    """The log's archiving turn as a PostgreSQL advisory lock, shared by every process that
    uses the same database (session lock on one pooled connection; a lost connection drops it,
    and the pool's full session reset on release unlocks it in any case)."""

    @contextlib.asynccontextmanager
    async def hold(wait: bool) -> AsyncIterator[bool]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                conn = await stack.enter_async_context(pool.acquire())
                session_changed(conn)
                if wait:
                    await conn.execute("SELECT pg_advisory_lock($1)", ARCHIVE_LOCK_KEY)
                    held = True
                else:
                    held = bool(
                        await conn.fetchval("SELECT pg_try_advisory_lock($1)", ARCHIVE_LOCK_KEY)
                    )
            except DATABASE_ERRORS as exc:
                # A dead pooled connection (the database restarted): the next pass gets a new one.
                await expire_if_lost(pool, exc)
                raise StorageError(f"cannot take the message log's archiving turn: {exc}") from exc
            try:
                yield held
            finally:
                if held:
                    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                        await conn.execute("SELECT pg_advisory_unlock($1)", ARCHIVE_LOCK_KEY)

    return hold


def build_archiver(
    settings: Settings,
    node_dir: NodeDir,
    source: ArchiveSource,
    pool: asyncpg.Pool,
    *,
    clock: Clock = utc_now,
) -> Archiver:
    """The node's archiver, as ``running_node`` and ``jisr node archive`` both use it.

    The configuration history is brought up to date with the version in ``DIR/globalconf``.
    """
    from security_server.archiver import Archiver, ConfHistory, PostgresArchiveRows

    ns = settings.node  # archive_period is checked when the settings are loaded
    # archive_interval_s = 0: no archiver in the node (``jisr node archive --every``).
    interval_s = float(ns.archive_interval_s or DEFAULT_ARCHIVE_INTERVAL_S)
    history = ConfHistory(
        node_dir.root / CONF_HISTORY_DIR, anchor=node_dir.anchor_file.read_bytes()
    )
    remember_current_conf(history, node_dir)
    return Archiver(
        source,
        archive_store(settings),
        history,
        period=typing.cast(typing.Literal["hour", "day"], ns.archive_period),
        interval_s=interval_s,
        clock=clock,
        lock=archive_lock(pool),
        rows=PostgresArchiveRows(pool),
    )


def remember_current_conf(history: ConfHistory, node_dir: NodeDir) -> None:
    """Keep the held configuration's trust for archives; a node without one has none yet."""
    from security_server.archiver import ArchiverError

    try:
        history.remember_from(node_dir.globalconf_dir)
    except ArchiverError as exc:
        log.info("no global configuration to keep for archives yet", detail=exc.message)


async def purge_periodically(
    message_log: PostgresMessageLog, interval_s: float = RETENTION_INTERVAL_S
) -> None:
    """The retention job: delete records archived longer ago than the retention period."""
    while True:
        try:
            await message_log.purge_expired()
        except StorageError as exc:
            log.warning("message log retention job failed", error=exc.message)
        except Exception:  # the job must outlive whatever one run hits
            log.exception("message log retention job crashed")
        await asyncio.sleep(interval_s)


@dataclasses.dataclass(frozen=True, slots=True)
class ArchiveRun:
    """What :func:`archive_node_log` did, and what it left for later."""

    #: (archive name, where it is stored) of each archive written, oldest first.
    written: list[tuple[str, str]]
    #: Records timestamped by the pass run first (0 when none ran or none waited).
    timestamped: int
    #: Why that timestamping pass failed, if it did (the archives then stop before the gap).
    timestamping_error: str | None
    archived_through: int
    #: Records after the last archive: still waiting for a timestamp, or in an open period.
    unarchived: int
    untimestamped: int


async def archive_node_log(
    node_dir: NodeDir,
    *,
    close_open_period: bool = False,
    settings: Settings | None = None,
    pool: asyncpg.Pool | None = None,
    clock: Clock = utc_now,
) -> ArchiveRun:
    """``jisr node archive``: one archiving pass over the node's log, beside a running node or
    without one (the passes take turns through the archive lock).

    With ``close_open_period`` a timestamping pass runs first (with the global configuration
    held in ``DIR/globalconf``), then the current period is archived too: everything logged so
    far ends up in archives, unless a TSA did not answer.
    """
    from security_server.message_log import PostgresMessageLog
    from security_server.timestamper import Timestamper

    node_dir.require()
    settings = settings or node_dir.load_settings()
    if pool is None:
        async with open_node_database(settings) as own_pool:
            return await archive_node_log(
                node_dir,
                close_open_period=close_open_period,
                settings=settings,
                pool=own_pool,
                clock=clock,
            )
    server_id = SecurityServerId.parse(settings.node.server_id)
    message_log = PostgresMessageLog(pool, server_id, clock=clock)
    timestamped, error = 0, None
    if close_open_period:
        from certs.tsa import TimestampError

        async with aiohttp.ClientSession() as session:
            conf = ConfClient(node_dir.globalconf_dir, node_dir.load_anchor(), clock=clock)
            conf.load_cached()
            try:
                timestamped = await Timestamper(
                    pool, conf, session, clock=clock
                ).timestamp_pending()
            except (TimestampError, StorageError) as exc:
                error = exc.message
                log.warning("timestamping before archiving failed", error=error)
    archiver = build_archiver(settings, node_dir, message_log, pool, clock=clock)
    await archiver.archive_once(close_open_period=close_open_period, wait=True)
    through = await message_log.archived_through()
    try:
        row = await pool.fetchrow(
            "SELECT count(*) AS unarchived, "  # noqa: S608 (constant SQL text)
            f"count(*) FILTER (WHERE seq > {TIMESTAMPED_THROUGH}) AS waiting "
            "FROM message_log WHERE seq > $1",
            through,
        )
    except DATABASE_ERRORS as exc:
        raise StorageError(f"cannot count the records left to archive: {exc}") from exc
    assert row is not None
    return ArchiveRun(
        written=list(archiver.written),
        timestamped=timestamped,
        timestamping_error=error,
        archived_through=through,
        unarchived=int(row["unarchived"]),
        untimestamped=int(row["waiting"]),
    )


def approved_roots(conf: GlobalConf | None) -> tuple[x509.Certificate, ...]:
    """Every approved CA certificate (roots and intermediates) of the configuration."""
    if conf is None:
        return ()
    found: dict[bytes, x509.Certificate] = {}
    for ca in conf.approved_cas:
        for cert in (ca.certificate, *ca.intermediates):
            found[cert.fingerprint(hashes.SHA256())] = cert
    return tuple(found[k] for k in sorted(found))


def server_side_context(tls: TlsFiles, roots: tuple[x509.Certificate, ...]) -> ssl.SSLContext:
    """mTLS for other nodes; with no approved CA yet every handshake fails (nothing trusted)."""
    ctx = server_context(
        tls.cert_file,
        tls.key_file,
        password=tls.key_passphrase,
        client_roots=roots,
        require_client_cert=True,
    )
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_side_context(
    node: NodeDir, passphrase: bytes, client_certs: tuple[bytes, ...]
) -> ssl.SSLContext:
    """HTTPS for information systems; registered client certificates are the only roots."""
    certs = [x509.load_der_x509_certificate(der) for der in client_certs]
    ctx = server_context(
        node.internal_cert_file,
        node.internal_key_file,
        password=passphrase,
        client_roots=certs,
        require_client_cert=False,
    )
    if certs:
        # A registered certificate is trusted as itself, whoever issued it.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose a free port in "
            "node.toml or another address"
        ) from exc
    return sock


class Listener:
    """One listening socket of a runner; re-bindable on the same port with a new TLS context."""

    def __init__(
        self,
        runner: web.AppRunner,
        name: str,
        host: str,
        port: int,
        ssl_context: Callable[[], ssl.SSLContext | None],
    ) -> None:
        self.runner = runner
        self.name = name
        self.host = host
        self.port = port
        self._context = ssl_context
        self._site: web.SockSite | None = None
        self.https = False

    async def start(self) -> str:
        ctx = self._context()
        sock = _bind(self.host, self.port)
        try:
            self.port = sock.getsockname()[1]
            self.https = ctx is not None
            site = web.SockSite(self.runner, sock, ssl_context=ctx)
            await site.start()
        except BaseException:
            sock.close()
            raise
        self._site = site
        return self.url

    async def restart(self) -> None:
        """Stop accepting, then accept again on the same port with a freshly built context."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        await self.start()
        log.info("listener re-bound", listener=self.name, url=self.url)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}"


@dataclasses.dataclass
class RunningNode:
    """A started node: its runtime, the URLs it listens on and its moving parts."""

    runtime: NodeRuntime
    node_dir: NodeDir
    endpoints: dict[str, str]
    conf: ConfClient
    ocsp: OwnOcsp
    catalogue: CatalogueStore
    internal_tls_sha256: str
    listeners: dict[str, Listener]
    message_log: PostgresMessageLog
    timestamper: Timestamper
    archiver: Archiver

    def message_log_status(self) -> dict[str, Any]:
        """What this process knows of its log without asking the database."""
        state = self.timestamper.state
        oldest = state.oldest_untimestamped
        return {
            "oldest_untimestamped": format_time(oldest) if oldest else None,
            "timestamping_last_success": format_time(state.last_success)
            if state.last_success
            else None,
            "timestamping_last_error": state.last_error,
            "archives_written": [name for name, _ in self.archiver.written[-10:]],
        }

    def status(self) -> dict[str, Any]:
        """What the admin API's ``/status`` shows."""
        now = self.runtime.clock()
        certificates = []
        own = [("auth", self.runtime.tls.certificate)]
        signers = self.runtime.signers
        if isinstance(signers, NodeSigners):
            own += [
                (f"sign {member}", signers.signer_for(member).certificate)
                for member in signers.members
            ]
        for role, cert in own:
            verdict = self.ocsp.verdict_for(cert)
            certificates.append(
                {
                    "role": role,
                    "subject": cert.subject.rfc4514_string(),
                    "serial": f"{cert.serial_number:x}",
                    "not_after": format_time(cert.not_valid_after_utc),
                    "valid_now": cert.not_valid_before_utc <= now <= cert.not_valid_after_utc,
                    "ocsp": None
                    if verdict is None
                    else {
                        "state": verdict.status.state,
                        "this_update": format_time(verdict.this_update),
                        "next_update": format_time(verdict.next_update)
                        if verdict.next_update
                        else None,
                    },
                }
            )
        return {
            "server_id": str(self.runtime.server_id),
            "global_configuration": self.conf.status().to_json(),
            "certificates": certificates,
            "endpoints": self.endpoints,
            "internal_tls_sha256": self.internal_tls_sha256,
            "message_log": self.message_log_status(),
        }


async def _run_exchange_imports() -> tuple[Any, Any, Any, Any, Any]:
    # Imported here: the exchange handlers and the message log are large and pull in the whole
    # gateway; the rest of the assembly (and its tests) does not need them.
    from security_server.client_proxy import client_proxy_app
    from security_server.message_log import PostgresMessageLog
    from security_server.server_proxy import server_proxy_app
    from security_server.timestamper import Timestamper
    from security_server.transport_client import TransportClient

    return client_proxy_app, server_proxy_app, TransportClient, PostgresMessageLog, Timestamper


@contextlib.asynccontextmanager
async def running_node(
    node_dir: NodeDir,
    passphrase: str,
    *,
    pool: asyncpg.Pool | None = None,
    settings: Settings | None = None,
    clock: Clock = utc_now,
) -> AsyncIterator[RunningNode]:
    """Start the node described by ``node_dir``; stop it when the block ends.

    ``pool`` lets a caller (tests, the demo) supply an open, migrated database; otherwise the
    node opens its own from the settings (embedded PostgreSQL by default).
    """
    node_dir.require()
    settings = settings or node_dir.load_settings()
    if pool is None:
        async with (
            open_node_database(settings) as own_pool,
            running_node(
                node_dir, passphrase, pool=own_pool, settings=settings, clock=clock
            ) as running,
        ):
            yield running
        return
    async with pool.acquire() as conn:
        await apply_migrations(conn, MIGRATIONS)
        await apply_migrations(conn, LOG_MIGRATIONS)

    ns = settings.node
    server_id = SecurityServerId.parse(ns.server_id)
    keys = NodeKeys(node_dir)
    tls = keys.tls_files(passphrase)
    signers = keys.load_signers(passphrase)
    if server_id.owner not in signers:
        log.warning("no signing certificate for the owner member", member=str(server_id.owner))
    (
        client_proxy_app,
        server_proxy_app,
        transport_class,
        log_class,
        timestamper_class,
    ) = await _run_exchange_imports()

    stack = contextlib.AsyncExitStack()
    async with stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        conf = ConfClient(
            node_dir.globalconf_dir,
            node_dir.load_anchor(),
            session=session,
            poll_s=float(ns.conf_poll_s),
            clock=clock,
        )
        conf.load_cached()
        await conf.poll_once()
        # One per node: the own-certificate refresher and the peer checks (the transport
        # client takes it from the runtime) learn which responder answers for a CA together.
        ocsp_preference = ResponderPreference()
        ocsp = OwnOcsp(
            node_dir.ocsp_dir,
            session,
            [tls.certificate, *(s.certificate for s in signers.values())],
            conf=lambda: conf.latest,
            clock=clock,
            preference=ocsp_preference,
        )
        await ocsp.refresh_due()
        catalogue = CatalogueStore(pool, session=session)
        await catalogue.load()
        runtime = NodeRuntime(
            settings=ns,
            server_id=server_id,
            conf=conf,
            signers=NodeSigners(signers, ocsp.response_for),
            catalogue=catalogue,
            tls=tls,
            clock=clock,
            ocsp_preference=ocsp_preference,
        )
        transport = transport_class(runtime)
        stack.push_async_callback(transport.close)
        timestamper = timestamper_class(pool, conf, session, clock=clock)
        await timestamper.start()
        stack.push_async_callback(timestamper.close)
        from security_server.message_log import set_body_compression

        compression = await set_body_compression(pool, ns.log_body_compression)
        log.info("message log body storage", compression=compression)
        message_log = log_class(
            pool, server_id, clock=clock, timestamper=timestamper, **message_log_options(ns)
        )
        await message_log.start()
        # Closed after the listeners (pushed later, so cleaned up earlier): queued records are
        # written before the log stops.
        stack.push_async_callback(message_log.close)
        archiver = build_archiver(settings, node_dir, message_log, pool, clock=clock)
        from security_server.archiver import on_conf_change

        conf.on_change.append(on_conf_change(archiver.history, node_dir.globalconf_dir))
        if ns.archive_interval_s > 0:  # 0: archived by `jisr node archive --every` instead
            await archiver.start()
        stack.push_async_callback(archiver.close)

        used: dict[str, object] = {
            "roots": approved_roots(conf.latest),
            "client_certs": catalogue.client_certificates,
        }
        passphrase_bytes = passphrase.encode("utf-8")
        client_runner = web.AppRunner(
            client_proxy_app(runtime, transport=transport, message_log=message_log),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        server_runner = web.AppRunner(
            server_proxy_app(runtime, transport=transport, message_log=message_log, database=pool),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        holder: dict[str, RunningNode] = {}
        admin_runner = web.AppRunner(
            admin_app(
                AdminContext(
                    catalogue,
                    lambda: holder["node"].status(),
                    conf=conf,
                    clock=clock,
                    message_log=message_log,
                )
            ),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        for runner in (client_runner, server_runner, admin_runner):
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
        listeners = {
            "client_http": Listener(
                client_runner, "client_http", ns.host, ns.client_http_port, lambda: None
            ),
            "client_https": Listener(
                client_runner,
                "client_https",
                ns.host,
                ns.client_https_port,
                lambda: client_side_context(
                    node_dir, passphrase_bytes, catalogue.client_certificates
                ),
            ),
            "server": Listener(
                server_runner,
                "server",
                ns.host,
                ns.server_port,
                lambda: server_side_context(tls, approved_roots(conf.latest)),
            ),
            "admin": Listener(admin_runner, "admin", ns.host, ns.admin_port, lambda: None),
        }
        endpoints = {name: await listener.start() for name, listener in listeners.items()}
        internal_sha = sha256_fingerprint(
            x509.load_pem_x509_certificate(node_dir.internal_cert_file.read_bytes())
        )
        running = RunningNode(
            runtime=runtime,
            node_dir=node_dir,
            endpoints=endpoints,
            conf=conf,
            ocsp=ocsp,
            catalogue=catalogue,
            internal_tls_sha256=internal_sha,
            listeners=listeners,
            message_log=message_log,
            timestamper=timestamper,
            archiver=archiver,
        )
        holder["node"] = running
        changed = asyncio.Event()
        conf.on_change.append(lambda _conf: changed.set())

        async def watch() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=WATCH_INTERVAL_S)
                changed.clear()
                try:
                    await catalogue.refresh_if_changed()
                    roots = approved_roots(conf.latest)
                    if roots != used["roots"]:
                        used["roots"] = roots
                        await listeners["server"].restart()
                    certs = catalogue.client_certificates
                    if certs != used["client_certs"]:
                        used["client_certs"] = certs
                        await listeners["client_https"].restart()
                except Exception:  # the watcher must outlive a database hiccup
                    log.exception("node watcher pass failed")

        tasks = [
            asyncio.create_task(conf.run(), name="globalconf-client"),
            asyncio.create_task(ocsp.run(), name="own-ocsp"),
            asyncio.create_task(watch(), name="node-watcher"),
            asyncio.create_task(purge_periodically(message_log), name="message-log-retention"),
        ]

        async def stop_tasks() -> None:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        stack.push_async_callback(stop_tasks)
        write_atomically(
            node_dir.endpoints_file,
            json.dumps(
                {
                    "server_id": str(server_id),
                    **endpoints,
                    "internal_tls_sha256": internal_sha,
                    "pid": os.getpid(),
                },
                indent=1,
            ).encode(),
        )
        stack.callback(node_dir.endpoints_file.unlink, missing_ok=True)
        log.info("node started", server_id=str(server_id), **endpoints)
        yield running


async def serve_node(
    node_dir: NodeDir,
    passphrase: str,
    *,
    stop: asyncio.Event | None = None,
    ready: Callable[[RunningNode], Awaitable[None] | None] | None = None,
) -> None:
    """``jisr node serve``: run until SIGTERM/SIGINT (or ``stop``), then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with running_node(node_dir, passphrase) as running:
            if ready is not None:
                maybe = ready(running)
                if maybe is not None:
                    await maybe
            await stop.wait()
            log.info("node stopping", server_id=str(running.runtime.server_id))
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run_blocking(node_dir: NodeDir, ready: Callable[[RunningNode], None]) -> None:
    """Run :func:`serve_node` on uvloop when it is installed, else on asyncio's loop."""
    settings = node_dir.load_settings()
    passphrase = passphrase_from_env(settings.node.key_passphrase_env)
    coro = serve_node(node_dir, passphrase, ready=ready)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


__all__ = [
    "DATABASE_NAME",
    "MIGRATIONS",
    "ArchiveRun",
    "Listener",
    "RunningNode",
    "approved_roots",
    "archive_directory",
    "archive_lock",
    "archive_node_log",
    "archive_store",
    "build_archiver",
    "client_side_context",
    "message_log_options",
    "open_node_database",
    "purge_periodically",
    "run_blocking",
    "running_node",
    "serve_node",
    "server_side_context",
]
