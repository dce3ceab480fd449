"""``jisr node``: set up, register and run a security server node.

Rules: every command is a thin layer over the Python functions the demo calls too
(``security_server.node_keys``, ``.registration``, ``.catalogue_store``, ``.node``). The key
passphrase comes from the environment variable the settings name
(``JISR_NODE_KEY_PASSPHRASE`` by default), never from the command line, and is never printed.
Catalogue commands (``add-client``, ``client``, ``service``, ``access``, ``api-key``) write to
the node database directly, with an audit row per change (actor ``cli:<user>``); a running node
picks the change up within seconds. ``archive`` runs one archiving pass beside a running node (the
passes take turns through a database lock) or without one; ``archive --every SECONDS`` keeps
running passes as a process of its own, for nodes whose own archiver is off
(``archive_interval_s = 0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import click

from config.errors import ConfigError, JisrError
from config.settings import MAX_ARCHIVE_INTERVAL_S, Settings
from gateway.identifiers import parse_client
from jisr.cli import settings_of
from jisr.processes import stop_on_signals
from security_server.catalogue import MAX_DESCRIPTION_BYTES
from security_server.catalogue_store import CatalogueStore
from security_server.node import (
    ArchiveRun,
    RunningNode,
    archive_node_log,
    open_node_database,
    run_blocking,
)
from security_server.node_dir import NodeDir, load_pem_certificates, passphrase_from_env, read_small
from security_server.node_keys import (
    add_member_key,
    import_certificate,
    initialise_node,
)
from security_server.registration import client_request, register_server

T = TypeVar("T")

_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The node's data directory (default: the data_dir setting, ./jisr-data).",
)


_BODY_LOGGING = click.option(
    "--body-logging",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="off: the message log keeps only the SHA-256 of this client's message bodies.",
)


def _node_dir(ctx: click.Context, data_dir: Path | None) -> NodeDir:
    return NodeDir(data_dir or settings_of(ctx).data_dir)


def _passphrase(settings: Settings) -> str:
    return passphrase_from_env(settings.node.key_passphrase_env)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _with_catalogue(node: NodeDir, work: Callable[[CatalogueStore], Awaitable[T]]) -> T:
    settings = node.load_settings()

    async def run() -> T:
        async with open_node_database(settings) as pool:
            store = CatalogueStore(pool)
            await store.load()
            return await work(store)

    return asyncio.run(run())


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=1, ensure_ascii=False))


@click.group()
def node() -> None:
    """Set up, register and run a security server node."""


# -- setup ---------------------------------------------------------------------------------


@node.command()
@_DATA_DIR
@click.option("--server-id", required=True, help="INSTANCE/CLASS/MEMBER/SERVERCODE")
@click.option(
    "--anchor",
    "anchor_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The configuration anchor file from the registry operator.",
)
@click.option("--address", default="", help="HOST:PORT other nodes use (default HOST:5500).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--client-http-port", type=int, default=None, help="default 8080; 0 = any")
@click.option("--client-https-port", type=int, default=None, help="default 8443; 0 = any")
@click.option("--server-port", type=int, default=None, help="default 5500; 0 = any")
@click.option("--admin-port", type=int, default=None, help="default 4000; 0 = any")
@click.option("--database-url", default="", help="PostgreSQL URL (default: embedded).")
@click.pass_context
def init(
    ctx: click.Context,
    data_dir: Path | None,
    server_id: str,
    anchor_file: Path,
    address: str,
    host: str,
    client_http_port: int | None,
    client_https_port: int | None,
    server_port: int | None,
    admin_port: int | None,
    database_url: str,
) -> None:
    """Create the data directory, install the anchor, make the keys and their CSRs."""
    passphrase = _passphrase(settings_of(ctx))
    ports = {
        name: value
        for name, value in (
            ("client_http_port", client_http_port),
            ("client_https_port", client_https_port),
            ("server_port", server_port),
            ("admin_port", admin_port),
        )
        if value is not None
    }
    result = initialise_node(
        _node_dir(ctx, data_dir).root,
        server_id=server_id,
        anchor=read_small(anchor_file, "the configuration anchor"),
        passphrase=passphrase,
        now=_now(),
        public_address=address,
        host=host,
        ports=ports,
        database_url=database_url,
    )
    click.echo(f"node {result.server_id} initialised in {result.node.root}")
    click.echo(f"anchor digest: {result.anchor_digest}  (compare it with the registry operator)")
    click.echo(f"authentication CSR: {result.auth_csr}  (have the CA issue an auth certificate)")
    click.echo(f"signing CSR: {result.signing_csr}  (have the CA issue a signing certificate)")
    click.echo(f"internal TLS certificate: {result.internal_tls_sha256}  (pin this in clients)")
    click.echo("next: jisr node import-cert FILE (for each certificate), then jisr node register")


@node.command("add-member-key")
@_DATA_DIR
@click.option("--member", required=True, help="INSTANCE/CLASS/CODE of a member hosted here.")
@click.pass_context
def add_member_key_command(ctx: click.Context, data_dir: Path | None, member: str) -> None:
    """Make a signing key and CSR for another member hosted on this node."""
    node_dir = _node_dir(ctx, data_dir)
    settings = node_dir.load_settings()
    csr = add_member_key(node_dir.root, member, _passphrase(settings))
    click.echo(f"signing CSR for {member}: {csr}")


@node.command("import-cert")
@_DATA_DIR
@click.argument("cert_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--chain",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="CA certificates (PEM) of the issuing chain.",
)
@click.pass_context
def import_cert(
    ctx: click.Context, data_dir: Path | None, cert_file: Path, chain: Path | None
) -> None:
    """Install a certificate issued for one of this node's keys."""
    node_dir = _node_dir(ctx, data_dir)
    installed = import_certificate(
        node_dir.root,
        read_small(cert_file, "the certificate"),
        chain=read_small(chain, "the CA chain") if chain else None,
        now=_now(),
    )
    click.echo(
        f"imported {installed.certificate.subject.rfc4514_string()} for key {installed.label} "
        f"-> {installed.path}"
    )


# -- registration --------------------------------------------------------------------------


@node.command()
@_DATA_DIR
@click.pass_context
def register(ctx: click.Context, data_dir: Path | None) -> None:
    """Send the signed register_server request to the registry."""
    node_dir = _node_dir(ctx, data_dir)
    passphrase = _passphrase(node_dir.load_settings())

    async def run() -> Any:
        async with aiohttp.ClientSession() as session:
            return await register_server(node_dir, passphrase, session=session)

    state = asyncio.run(run())
    click.echo(f"management request {state.id} ({state.type}) is {state.state}")


@node.command("add-client")
@_DATA_DIR
@click.argument("client_id")
@click.option(
    "--connection-type",
    type=click.Choice(["http", "https", "https_cert"]),
    default="http",
    show_default=True,
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The information system's TLS certificate (for https_cert).",
)
@_BODY_LOGGING
@click.option("--local-only", is_flag=True, help="Do not send register_client to the registry.")
@click.pass_context
def add_client(
    ctx: click.Context,
    data_dir: Path | None,
    client_id: str,
    connection_type: str,
    tls_cert: Path | None,
    body_logging: str,
    local_only: bool,
) -> None:
    """Register a subsystem on this node and ask the registry to register it too."""
    node_dir = _node_dir(ctx, data_dir)
    settings = node_dir.load_settings()
    passphrase = "" if local_only else _passphrase(settings)
    client = parse_client(client_id)
    certs = (
        load_pem_certificates(read_small(tls_cert, "TLS certificate"), str(tls_cert))
        if tls_cert
        else []
    )

    async def add(store: CatalogueStore) -> bool:
        if store.client(client) is not None:
            # Re-running after a refused registry request must not fail on the local part.
            return False
        await store.add_client(
            _actor(),
            str(client),
            connection_type=connection_type,
            tls_certs=certs,
            body_logging=body_logging == "on",
        )
        return True

    if _with_catalogue(node_dir, add):
        click.echo(f"{client} added to this node ({connection_type}, body logging {body_logging})")
    else:
        click.echo(f"{client} is already a client of this node; its settings are unchanged")
    if local_only:
        return

    async def send() -> Any:
        async with aiohttp.ClientSession() as session:
            return await client_request(node_dir, passphrase, client, session=session)

    state = asyncio.run(send())
    click.echo(f"management request {state.id} ({state.type}) is {state.state}")


# -- clients -------------------------------------------------------------------------------


@node.group()
def client() -> None:
    """This node's clients (members and subsystems) and their settings."""


@client.command("set")
@_DATA_DIR
@click.argument("client_id")
@click.option(
    "--body-logging",
    type=click.Choice(["on", "off"]),
    required=True,
    help="off: the message log keeps only the SHA-256 of this client's message bodies.",
)
@click.pass_context
def client_set(
    ctx: click.Context, data_dir: Path | None, client_id: str, body_logging: str
) -> None:
    """Change a client's settings on this node (the registry is not involved)."""

    async def change(store: CatalogueStore) -> None:
        await store.set_body_logging(_actor(), client_id, body_logging == "on")

    _with_catalogue(_node_dir(ctx, data_dir), change)
    click.echo(
        f"{parse_client(client_id)}: body logging {body_logging} (a running node applies it "
        "within seconds, to messages logged from then on)"
    )


@client.command("list")
@_DATA_DIR
@click.pass_context
def client_list(ctx: click.Context, data_dir: Path | None) -> None:
    """Clients of this node as JSON: connection type, TLS certificate hashes, body logging."""

    async def read(store: CatalogueStore) -> Any:
        return store.list_clients()

    _echo_json(_with_catalogue(_node_dir(ctx, data_dir), read))


# -- services ------------------------------------------------------------------------------


def _document(value: str) -> tuple[str | None, bytes | None]:
    """A URL is fetched by the store; anything else is a local file."""
    if value.startswith(("http://", "https://")):
        return value, None
    path = Path(value)
    try:
        if path.stat().st_size > MAX_DESCRIPTION_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_DESCRIPTION_BYTES} bytes")
        return None, path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the service description {path}: {exc}") from exc


@node.group()
def service() -> None:
    """Service descriptions and services of this node's providers."""


@service.command("add")
@_DATA_DIR
@click.option("--provider", required=True, help="The provider subsystem (a client here).")
@click.option("--wsdl", help="WSDL URL or file: each operation becomes a service.")
@click.option("--openapi", help="OpenAPI 3 (JSON) URL or file: one service with endpoints.")
@click.option("--rest", help="REST base URL: one service without endpoints.")
@click.option("--service-code", help="Service code (required with --openapi and --rest).")
@click.option("--address", help="Service address, overriding the document's.")
@click.pass_context
def service_add(
    ctx: click.Context,
    data_dir: Path | None,
    provider: str,
    wsdl: str | None,
    openapi: str | None,
    rest: str | None,
    service_code: str | None,
    address: str | None,
) -> None:
    """Add a service description."""
    if sum(x is not None for x in (wsdl, openapi, rest)) != 1:
        raise click.UsageError("give exactly one of --wsdl, --openapi, --rest")
    if (openapi or rest) and not service_code:
        raise click.UsageError("--openapi and --rest need --service-code")
    node_dir = _node_dir(ctx, data_dir)

    async def add(store: CatalogueStore) -> int:
        if wsdl is not None:
            url, doc = _document(wsdl)
            return await store.add_wsdl(_actor(), provider, url=url, document=doc, address=address)
        if openapi is not None:
            url, doc = _document(openapi)
            assert service_code is not None
            return await store.add_openapi(
                _actor(), provider, service_code, url=url, document=doc, address=address
            )
        assert rest is not None
        assert service_code is not None
        return await store.add_rest(_actor(), provider, service_code, rest)

    description_id = _with_catalogue(node_dir, add)
    click.echo(f"service description {description_id} added for {provider}")


def _enable(
    ctx: click.Context, data_dir: Path | None, provider: str, code: str, on: bool, notice: str
) -> None:
    async def change(store: CatalogueStore) -> None:
        description_id = await store.description_of(provider, code)
        await store.set_enabled(_actor(), description_id, on, notice)

    _with_catalogue(_node_dir(ctx, data_dir), change)
    click.echo(f"{provider}/{code} {'enabled' if on else 'disabled'}")


@service.command("enable")
@_DATA_DIR
@click.option("--provider", required=True)
@click.option("--service-code", required=True)
@click.pass_context
def service_enable(
    ctx: click.Context, data_dir: Path | None, provider: str, service_code: str
) -> None:
    """Enable a service (and the rest of its description)."""
    _enable(ctx, data_dir, provider, service_code, True, "")


@service.command("disable")
@_DATA_DIR
@click.option("--provider", required=True)
@click.option("--service-code", required=True)
@click.option("--notice", default="", help="Shown to callers while disabled.")
@click.pass_context
def service_disable(
    ctx: click.Context, data_dir: Path | None, provider: str, service_code: str, notice: str
) -> None:
    """Disable a service (and the rest of its description) with a notice."""
    _enable(ctx, data_dir, provider, service_code, False, notice)


@service.command("set")
@_DATA_DIR
@click.option("--provider", required=True)
@click.option("--service-code", required=True)
@click.option("--address", help="Where the information system serves it.")
@click.option("--timeout", "timeout_s", type=int, help="Seconds to wait for the service.")
@click.option("--tls-verify/--no-tls-verify", default=None, help="Verify the service's TLS.")
@click.pass_context
def service_set(
    ctx: click.Context,
    data_dir: Path | None,
    provider: str,
    service_code: str,
    address: str | None,
    timeout_s: int | None,
    tls_verify: bool | None,
) -> None:
    """Change a service's address, timeout or TLS verification."""

    async def change(store: CatalogueStore) -> None:
        await store.update_service(
            _actor(),
            provider,
            service_code,
            address=address,
            timeout_s=timeout_s,
            tls_verify=tls_verify,
        )

    _with_catalogue(_node_dir(ctx, data_dir), change)
    click.echo(f"{provider}/{service_code} updated")


@service.command("list")
@_DATA_DIR
@click.option("--provider")
@click.pass_context
def service_list(ctx: click.Context, data_dir: Path | None, provider: str | None) -> None:
    """Services of this node as JSON."""

    async def read(store: CatalogueStore) -> Any:
        return store.list_services(provider)

    _echo_json(_with_catalogue(_node_dir(ctx, data_dir), read))


# -- access rights -------------------------------------------------------------------------


@node.group()
def access() -> None:
    """Access rights to this node's services."""


def _right_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            _DATA_DIR,
            click.option("--provider", required=True),
            click.option("--service", "service_code", required=True, help="Service code."),
            click.option("--subject", required=True, help="A client id or group:CODE."),
            click.option("--method", help="REST method for an endpoint right (or *)."),
            click.option("--path", help="REST path pattern, e.g. '/citizens/*'."),
        ]
    ):
        f = option(f)
    return f


@access.command("grant")
@_right_options
@click.pass_context
def access_grant(
    ctx: click.Context,
    data_dir: Path | None,
    provider: str,
    service_code: str,
    subject: str,
    method: str | None,
    path: str | None,
) -> None:
    """Allow a client or a global group to call a service (or one REST endpoint)."""

    async def grant(store: CatalogueStore) -> int:
        return await store.grant(
            _actor(), provider, service_code, subject, method=method, path=path
        )

    right_id = _with_catalogue(_node_dir(ctx, data_dir), grant)
    click.echo(f"access right {right_id} granted")


@access.command("revoke")
@_right_options
@click.pass_context
def access_revoke(
    ctx: click.Context,
    data_dir: Path | None,
    provider: str,
    service_code: str,
    subject: str,
    method: str | None,
    path: str | None,
) -> None:
    """Revoke an access right (the same fields it was granted with)."""

    async def revoke(store: CatalogueStore) -> None:
        await store.revoke(_actor(), provider, service_code, subject, method=method, path=path)

    _with_catalogue(_node_dir(ctx, data_dir), revoke)
    click.echo("access right revoked")


@access.command("list")
@_DATA_DIR
@click.option("--provider")
@click.option("--service", "service_code")
@click.pass_context
def access_list(
    ctx: click.Context, data_dir: Path | None, provider: str | None, service_code: str | None
) -> None:
    """Access rights as JSON."""

    async def read(store: CatalogueStore) -> Any:
        return await store.list_rights(provider, service_code)

    _echo_json(_with_catalogue(_node_dir(ctx, data_dir), read))


# -- API keys and running ------------------------------------------------------------------


@node.group("api-key")
def api_key() -> None:
    """Keys for the node admin API."""


@api_key.command("create")
@_DATA_DIR
@click.option("--name", help="A name for the key (default: the role and a random suffix).")
@click.option("--role", type=click.Choice(["operator", "auditor"]), required=True)
@click.pass_context
def api_key_create(ctx: click.Context, data_dir: Path | None, name: str | None, role: str) -> None:
    """Create an admin API key; it is printed once and stored only as a hash."""
    name = name or f"{role}-{secrets.token_hex(3)}"

    async def create(store: CatalogueStore) -> str:
        return await store.create_api_key(_actor(), name, role)

    click.echo(_with_catalogue(_node_dir(ctx, data_dir), create))


@node.command()
@_DATA_DIR
@click.option(
    "--now",
    "close_open_period",
    is_flag=True,
    help="Timestamp what waits, then archive the current period too, without waiting for it "
    "to end (before maintenance, or to hand evidence over at once).",
)
@click.option(
    "--every",
    type=click.IntRange(1, MAX_ARCHIVE_INTERVAL_S),
    default=None,
    metavar="SECONDS",
    help="Keep running: a pass every SECONDS until SIGTERM or Ctrl+C (the node's own archiver "
    "switched off with archive_interval_s = 0).",
)
@click.pass_context
def archive(
    ctx: click.Context, data_dir: Path | None, close_open_period: bool, every: int | None
) -> None:
    """Archive the message log's closed periods (all timestamped records with --now)."""
    node_dir = _node_dir(ctx, data_dir).require()
    if every is not None:
        asyncio.run(_archive_every(node_dir, every, close_open_period))
        return
    _echo_archive_run(asyncio.run(archive_node_log(node_dir, close_open_period=close_open_period)))


def _echo_archive_run(run: ArchiveRun) -> None:
    if run.timestamped:
        click.echo(f"timestamped {run.timestamped} record(s)")
    if run.timestamping_error:
        click.echo(f"warning: timestamping failed: {run.timestamping_error}", err=True)
    for name, location in run.written:
        click.echo(f"wrote {name} -> {location}")
    if not run.written:
        click.echo("no archive written: no closed period with timestamped records")
    click.echo(f"records archived through {run.archived_through}")
    if run.unarchived:
        reason = (
            f"{run.untimestamped} of them wait for a timestamp"
            if run.untimestamped
            else "their period is still open (use --now to close it)"
        )
        click.echo(f"{run.unarchived} record(s) not archived yet: {reason}")


async def _archive_every(node_dir: NodeDir, every: int, close_open_period: bool) -> None:
    """``archive --every``: passes until SIGINT or SIGTERM. A pass under way is finished (its
    archive stored and marked) before the process ends; a failed pass is reported and the
    next one tries again, like the node's own archiver."""
    settings = node_dir.load_settings()
    with stop_on_signals() as stop:
        async with open_node_database(settings) as pool:
            click.echo(f"archiving every {every} s; stop with SIGTERM or Ctrl+C")
            while not stop.is_set():
                try:
                    run = await archive_node_log(
                        node_dir,
                        close_open_period=close_open_period,
                        settings=settings,
                        pool=pool,
                    )
                except JisrError as exc:
                    click.echo(f"error: the archiving pass failed: {exc.message}", err=True)
                except Exception as exc:  # the loop outlives one pass, as the node's does
                    click.echo(f"error: the archiving pass failed: {exc!r}", err=True)
                else:
                    if run.written or run.timestamping_error:
                        _echo_archive_run(run)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)
    click.echo("archiving stopped")


@node.command()
@_DATA_DIR
@click.pass_context
def serve(ctx: click.Context, data_dir: Path | None) -> None:
    """Run the node until SIGTERM or Ctrl-C."""
    node_dir = _node_dir(ctx, data_dir).require()

    def ready(running: RunningNode) -> None:
        urls = " ".join(f"{k}={v}" for k, v in running.endpoints.items())
        click.echo(f"jisr node ready: {running.runtime.server_id} {urls}", err=False)

    try:
        run_blocking(node_dir, ready)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise ConfigError(f"the node stopped: {exc}") from exc
