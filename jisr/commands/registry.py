"""``jisr registry``: set up, run and operate the central registry.

Rules:

- Commands that need the registry's keys or must work before any API key exists operate on
  the database and data directory directly (from the settings): ``init``, ``serve``,
  ``conf-key ...``, ``export-anchor``, and ``conf-version prune`` (it applies the retention
  settings of the registry host). Run them on the registry host.
- Every other command is a client of the admin API (``--url``, default the settings'
  ``public_url`` or ``http://host:port``), authenticated with the API key held in the
  environment variable named by ``--api-key-env`` (default ``JISR_REGISTRY_API_KEY``), so
  each change is audited under that key's name and works from any machine.
- Secrets never appear on the command line: the key passphrase and API keys come from
  environment variables. ``init`` and ``api-key create`` print a new API key once.
- Results are printed as JSON, for people and scripts alike.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import click
from cryptography.hazmat.primitives.serialization import Encoding

from config.errors import ConfigError, RegistryError
from config.settings import Settings
from jisr.cli import settings_of
from jisr.commands.credential_files import load_certificates
from jisr.processes import stop_on_signals
from registry.conf_keys import (
    announce_new_key,
    export_anchor,
    initialise_registry,
    passphrase_from_env,
)
from registry.errors import ConflictError
from registry.publisher import prune_old_versions
from registry.server import open_store, run_registry
from registry.store import RegistryStore

T = TypeVar("T")

DEFAULT_API_KEY_ENV = "JISR_REGISTRY_API_KEY"


def _run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _echo(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _base_url(settings: Settings) -> str:
    reg = settings.registry
    return (reg.public_url or f"http://{reg.host}:{reg.port}").rstrip("/")


async def _with_store(settings: Settings, action: Callable[[RegistryStore], Awaitable[T]]) -> T:
    async with open_store(settings) as (store, _pool):
        return await action(store)


def _cert_b64(path: Path) -> str:
    """A certificate file (PEM or DER) as base64 DER for the API."""
    cert = load_certificates(path, "certificate")[0]
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


# -- the group and its API client ----------------------------------------------------------------


class ApiClient:
    """Calls the admin API; errors become :class:`RegistryError` with the server's message."""

    def __init__(self, url: str, key_env: str) -> None:
        self.url = url.rstrip("/")
        self.key_env = key_env

    def call(self, method: str, path: str, body: object = None) -> Any:
        key = os.environ.get(self.key_env, "")
        if not key:
            raise ConfigError(
                f"no API key: put a registry API key in the environment variable {self.key_env} "
                "(or name another variable with --api-key-env)"
            )
        return _run(self._call(method, path, body, key))

    async def _call(self, method: str, path: str, body: object, key: str) -> Any:
        url = f"{self.url}/api/v1{path}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
                session.request(
                    method, url, json=body, headers={"Authorization": f"Bearer {key}"}
                ) as resp,
            ):
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {"type": "HttpError", "message": (await resp.text())[:500]}
                if resp.status >= 400:
                    message = data.get("message") if isinstance(data, dict) else str(data)
                    raise RegistryError(f"the registry refused ({resp.status}): {message}")
                return data
        except aiohttp.ClientError as exc:
            raise ConfigError(
                f"cannot reach the registry admin API at {self.url}: {exc}; check --url and "
                "that `jisr registry serve` is running"
            ) from exc


@click.group()
@click.option("--url", help="Admin API base URL (default: registry public_url or host:port).")
@click.option(
    "--api-key-env",
    default=DEFAULT_API_KEY_ENV,
    show_default=True,
    help="Environment variable holding the API key.",
)
@click.pass_context
def registry(ctx: click.Context, url: str | None, api_key_env: str) -> None:
    """The central registry: members, nodes, trust services, global configuration."""
    ctx.ensure_object(dict)
    ctx.meta["registry_api"] = lambda: ApiClient(url or _base_url(settings_of(ctx)), api_key_env)


def _api(ctx: click.Context) -> ApiClient:
    factory: Callable[[], ApiClient] = ctx.meta["registry_api"]
    return factory()


# -- direct commands: init, serve, conf-key, export-anchor ---------------------------------------


@registry.command()
@click.option("--instance", required=True, help="X-Road instance identifier, e.g. IQ.")
@click.option(
    "--auto-approve/--no-auto-approve",
    default=None,
    help="Approve node management requests at once (default: the registry settings).",
)
@click.pass_context
def init(ctx: click.Context, instance: str, auto_approve: bool | None) -> None:
    """Create the database schema, the first signing key and the first operator API key."""
    settings = settings_of(ctx)
    reg = settings.registry
    if auto_approve is not None:
        reg = dataclasses.replace(reg, auto_approve=auto_approve)
    passphrase = passphrase_from_env(reg.key_passphrase_env)

    async def action(store: RegistryStore) -> tuple[str, str]:
        if await store.is_initialised():
            raise ConflictError(
                f"the registry database is already initialised for instance "
                f"{(await store.settings()).instance_id}; nothing changed"
            )
        return await initialise_registry(
            store,
            settings.data_dir,
            passphrase,
            instance=instance,
            settings=reg,
            now=dt.datetime.now(dt.UTC),
        )

    key_id, api_key = _run(_with_store(settings, action))
    click.echo(f"registry initialised for instance {instance}")
    click.echo(f"configuration signing key: {key_id}")
    click.echo("first operator API key (shown once; keep it in a secret store):")
    click.echo(api_key)


@registry.command()
@click.option("--host", default=None, help="Address to listen on (default: settings).")
@click.option("--port", type=int, default=None, help="Port (default: settings; 0 = any free).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the global configuration, management requests and the admin API."""
    settings = settings_of(ctx)
    reg = dataclasses.replace(
        settings.registry,
        host=host if host is not None else settings.registry.host,
        port=port if port is not None else settings.registry.port,
    )
    settings = dataclasses.replace(settings, registry=reg)

    async def main() -> None:
        with stop_on_signals() as stop:
            await run_registry(
                settings, ready=lambda url: click.echo(f"registry listening on {url}"), stop=stop
            )

    asyncio.run(main())


@registry.group("conf-key")
def conf_key() -> None:
    """Global-configuration signing keys (rollover: add, wait for publication, activate)."""


@conf_key.command("add")
@click.pass_context
def conf_key_add(ctx: click.Context) -> None:
    """Create a key and announce it in the next configuration version."""
    settings = settings_of(ctx)
    passphrase = passphrase_from_env(settings.registry.key_passphrase_env)

    async def action(store: RegistryStore) -> str:
        return await announce_new_key(
            store, settings.data_dir, passphrase, actor="cli", now=dt.datetime.now(dt.UTC)
        )

    _echo({"key_id": _run(_with_store(settings, action)), "state": "announced"})


@conf_key.command("activate")
@click.argument("key_id")
@click.pass_context
def conf_key_activate(ctx: click.Context, key_id: str) -> None:
    """Sign with KEY_ID from the next version on (it must have been published once)."""

    async def action(store: RegistryStore) -> None:
        await store.activate_conf_key("cli", key_id)

    _run(_with_store(settings_of(ctx), action))
    _echo({"key_id": key_id, "state": "active"})


@conf_key.command("retire")
@click.argument("key_id")
@click.pass_context
def conf_key_retire(ctx: click.Context, key_id: str) -> None:
    """Withdraw an announced key that will not be activated."""

    async def action(store: RegistryStore) -> None:
        await store.retire_conf_key("cli", key_id)

    _run(_with_store(settings_of(ctx), action))
    _echo({"key_id": key_id, "state": "retired"})


@conf_key.command("list")
@click.pass_context
def conf_key_list(ctx: click.Context) -> None:
    """List signing keys with their states."""

    async def action(store: RegistryStore) -> list[dict[str, Any]]:
        return [k.to_json() for k in await store.list_conf_keys()]

    _echo(_run(_with_store(settings_of(ctx), action)))


@registry.group("conf-version")
def conf_version() -> None:
    """Published global-configuration versions."""


@conf_version.command("prune")
@click.option(
    "--dry-run", is_flag=True, help="Show what would be removed; remove nothing, audit nothing."
)
@click.pass_context
def conf_version_prune(ctx: click.Context, dry_run: bool) -> None:
    """Remove old versions now, by registry.conf_keep_versions and conf_keep_days.

    The newest version and every version not yet expired are always kept. Versions are
    deleted in chunks of 500, each its own transaction, so a running `serve` can publish
    between them. `serve` does the same after each version it publishes; this is for doing it
    at once (or seeing its effect).
    """
    settings = settings_of(ctx)
    reg = settings.registry

    async def action(store: RegistryStore) -> dict[str, Any]:
        await store.settings()  # an uninitialised database is refused with its message
        result = await prune_old_versions(
            store,
            actor="cli",
            keep_versions=reg.conf_keep_versions,
            keep_days=reg.conf_keep_days,
            now=dt.datetime.now(dt.UTC),
            dry_run=dry_run,
        )
        return result.to_json() | {
            "keep_versions": reg.conf_keep_versions,
            "keep_days": reg.conf_keep_days,
        }

    _echo(_run(_with_store(settings, action)))


@registry.command("export-anchor")
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="URL of a globalconf/current pointer (repeatable; default: this registry's).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write the anchor to.",
)
@click.pass_context
def export_anchor_command(ctx: click.Context, sources: tuple[str, ...], out: Path) -> None:
    """Write the configuration anchor for node operators and print its digest."""
    settings = settings_of(ctx)
    urls = list(sources) or [f"{_base_url(settings)}/globalconf/current"]

    async def action(store: RegistryStore) -> tuple[bytes, str]:
        anchor = await export_anchor(store, urls, now=dt.datetime.now(dt.UTC))
        return anchor.to_bytes(), anchor.digest

    data, digest = _run(_with_store(settings, action))
    out.write_bytes(data)
    click.echo(f"anchor written to {out}")
    click.echo(f"digest {digest}  (compare it with the node operator out of band)")


# -- API client commands -------------------------------------------------------------------------


@registry.group()
def instance() -> None:
    """Instance-wide settings published in the global configuration."""


@instance.command("show")
@click.pass_context
def instance_show(ctx: click.Context) -> None:
    """Show the instance settings."""
    _echo(_api(ctx).call("GET", "/instance"))


@instance.command("set")
@click.option("--auto-approve/--no-auto-approve", default=None)
@click.option("--ocsp-freshness-s", type=int, default=None)
@click.option("--timestamping-interval-s", type=int, default=None)
@click.option("--conf-expiry-s", type=int, default=None)
@click.option("--conf-refresh-s", type=int, default=None)
@click.pass_context
def instance_set(ctx: click.Context, /, **changes: object) -> None:
    """Change instance settings; the next configuration version carries them."""
    body = {name: value for name, value in changes.items() if value is not None}
    if not body:
        raise click.UsageError("name at least one setting to change")
    _echo(_api(ctx).call("PATCH", "/instance", body))


@registry.group("member-class")
def member_class() -> None:
    """Member classes (GOV, COM, ...)."""


@member_class.command("add")
@click.argument("code")
@click.option("--description", default="", help="What the class is for.")
@click.pass_context
def member_class_add(ctx: click.Context, code: str, description: str) -> None:
    """Add a member class."""
    _echo(_api(ctx).call("POST", "/member-classes", {"code": code, "description": description}))


@registry.group()
def member() -> None:
    """Members (organisations)."""


@member.command("add")
@click.argument("member_id")
@click.argument("name")
@click.pass_context
def member_add(ctx: click.Context, member_id: str, name: str) -> None:
    """Add MEMBER_ID (INSTANCE/CLASS/CODE) named NAME."""
    _echo(_api(ctx).call("POST", "/members", {"id": member_id, "name": name}))


@member.command("list")
@click.pass_context
def member_list(ctx: click.Context) -> None:
    """List members and their subsystems."""
    _echo(_api(ctx).call("GET", "/members"))


@registry.group()
def subsystem() -> None:
    """Subsystems of members."""


@subsystem.command("add")
@click.argument("subsystem_id")
@click.pass_context
def subsystem_add(ctx: click.Context, subsystem_id: str) -> None:
    """Add SUBSYSTEM_ID (INSTANCE/CLASS/CODE/SUBSYSTEM)."""
    parts = subsystem_id.split("/")
    if len(parts) != 4:
        raise click.BadParameter("expected INSTANCE/CLASS/CODE/SUBSYSTEM", param_hint="ID")
    _echo(_api(ctx).call("POST", f"/members/{parts[1]}/{parts[2]}/subsystems", {"code": parts[3]}))


@registry.group()
def server() -> None:
    """Security servers (nodes)."""


@server.command("list")
@click.pass_context
def server_list(ctx: click.Context) -> None:
    """List nodes with addresses, authentication certificates and clients."""
    _echo(_api(ctx).call("GET", "/security-servers"))


@registry.group()
def ca() -> None:
    """Approved certification authorities."""


@ca.command("add")
@click.argument("name")
@click.option("--cert", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--intermediate", type=click.Path(exists=True, path_type=Path), multiple=True)
@click.option("--ocsp-url", help="The CA's OCSP responder URL.")
@click.option(
    "--ocsp-cert",
    type=click.Path(exists=True, path_type=Path),
    help="Delegated OCSP responder certificate (omit when the CA signs its responses).",
)
@click.option("--profile", default="jisr/1", show_default=True)
@click.pass_context
def ca_add(
    ctx: click.Context,
    name: str,
    cert: Path,
    intermediate: tuple[Path, ...],
    ocsp_url: str | None,
    ocsp_cert: Path | None,
    profile: str,
) -> None:
    """Approve a CA whose certificates members and nodes may use."""
    ocsp = []
    if ocsp_url:
        ocsp.append({"url": ocsp_url, "certificate": _cert_b64(ocsp_cert) if ocsp_cert else None})
    elif ocsp_cert:
        raise click.BadParameter("--ocsp-cert needs --ocsp-url", param_hint="--ocsp-cert")
    body = {
        "name": name,
        "certificate": _cert_b64(cert),
        "intermediates": [_cert_b64(p) for p in intermediate],
        "ocsp": ocsp,
        "profile": profile,
    }
    _echo(_api(ctx).call("POST", "/approved-cas", body))


@registry.group()
def tsa() -> None:
    """Approved timestamping authorities."""


@tsa.command("add")
@click.argument("name")
@click.option("--url", "tsa_url", required=True, help="The TSA's RFC 3161 URL.")
@click.option("--cert", type=click.Path(exists=True, path_type=Path), required=True)
@click.pass_context
def tsa_add(ctx: click.Context, name: str, tsa_url: str, cert: Path) -> None:
    """Approve a TSA."""
    body = {"name": name, "url": tsa_url, "certificate": _cert_b64(cert)}
    _echo(_api(ctx).call("POST", "/approved-tsas", body))


@registry.group()
def group() -> None:
    """Global groups."""


@group.command("add")
@click.argument("code")
@click.option("--description", default="")
@click.pass_context
def group_add(ctx: click.Context, code: str, description: str) -> None:
    """Add a global group."""
    _echo(_api(ctx).call("POST", "/global-groups", {"code": code, "description": description}))


@group.command("add-member")
@click.argument("code")
@click.argument("client")
@click.pass_context
def group_add_member(ctx: click.Context, code: str, client: str) -> None:
    """Add CLIENT (member or subsystem id) to group CODE."""
    _echo(_api(ctx).call("POST", f"/global-groups/{code}/members", {"client": client}))


@registry.group()
def requests() -> None:
    """Management requests from nodes."""


@requests.command("list")
@click.option(
    "--state", type=click.Choice(["submitted", "approved", "declined", "executed"]), default=None
)
@click.pass_context
def requests_list(ctx: click.Context, state: str | None) -> None:
    """List requests (all, or in one state)."""
    _echo(_api(ctx).call("GET", "/management-requests" + (f"?state={state}" if state else "")))


@requests.command("approve")
@click.argument("request_id", type=int)
@click.option("--reason", default="")
@click.pass_context
def requests_approve(ctx: click.Context, request_id: int, reason: str) -> None:
    """Approve and execute a submitted request."""
    path = f"/management-requests/{request_id}/approve"
    _echo(_api(ctx).call("POST", path, {"reason": reason}))


@requests.command("decline")
@click.argument("request_id", type=int)
@click.option("--reason", default="")
@click.pass_context
def requests_decline(ctx: click.Context, request_id: int, reason: str) -> None:
    """Decline a submitted request."""
    path = f"/management-requests/{request_id}/decline"
    _echo(_api(ctx).call("POST", path, {"reason": reason}))


@registry.group("api-key")
def api_key() -> None:
    """API keys of the admin API."""


@api_key.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["operator", "auditor"]), required=True)
@click.pass_context
def api_key_create(ctx: click.Context, name: str, role: str) -> None:
    """Create an API key; it is printed once."""
    _echo(_api(ctx).call("POST", "/api-keys", {"name": name, "role": role}))


@api_key.command("revoke")
@click.argument("name")
@click.pass_context
def api_key_revoke(ctx: click.Context, name: str) -> None:
    """Revoke the API key called NAME."""
    _echo(_api(ctx).call("DELETE", f"/api-keys/{name}"))


@registry.command()
@click.option("--after", type=int, default=0, help="Show entries after this id.")
@click.option("--limit", type=int, default=100)
@click.pass_context
def audit(ctx: click.Context, after: int, limit: int) -> None:
    """Show the registry's audit log."""
    _echo(_api(ctx).call("GET", f"/audit-log?after={after}&limit={limit}"))
