"""``jisr tsa``: run an RFC 3161 timestamping authority.

Rules: the TSA key file must be encrypted (a plain one is refused); its passphrase is read
from the environment variable the operator names (``--key-passphrase-env``), never from the
command line, and never logged. Token serial numbers come from a counter file in the state
directory (``--state-dir``, default ``<data_dir>/tsa``), so they keep increasing across
restarts. The bound URL is printed on one line when the server is ready, so scripts can start
it with ``--port 0`` and read where it listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import click
import structlog

from certs.tsa import DEFAULT_POLICY_OID, TimestampAuthority
from jisr.commands.credential_files import load_certificates, load_private_key, passphrase_from_env
from jisr.commands.serve_options import key_file_options, listen_options
from jisr.processes import stop_on_signals
from trust_services.http_server import serve_until
from trust_services.tsa_server import SerialNumbers, tsa_app

__all__ = ["load_authority", "run_tsa", "tsa"]

_log = structlog.get_logger(__name__)

SERIAL_FILE_NAME = "serial"


def load_authority(
    *,
    cert_path: Path,
    key_path: Path,
    passphrase: bytes | None,
    policy_oid: str = DEFAULT_POLICY_OID,
    chain_path: Path | None = None,
    accuracy_s: int = 1,
) -> TimestampAuthority:
    """A :class:`TimestampAuthority` from files; the certificate file may carry the chain
    after the TSA certificate, or ``chain_path`` may hold it."""
    certs = load_certificates(cert_path, "TSA certificate")
    chain = certs[1:] + (load_certificates(chain_path, "CA chain") if chain_path else [])
    key = load_private_key(key_path, passphrase, "TSA key")
    return TimestampAuthority(
        certs[0], key, policy_oid=policy_oid, chain=chain, accuracy_s=accuracy_s
    )


async def run_tsa(
    authority: TimestampAuthority,
    serials: SerialNumbers,
    host: str,
    port: int,
    *,
    stop: asyncio.Event,
    ready: Callable[[str], None],
) -> None:
    """Serve ``authority`` until ``stop`` is set; ``ready`` receives the bound URL."""
    await serve_until(tsa_app(authority, serials), host, port, stop=stop, ready=ready)


@click.group()
def tsa() -> None:
    """RFC 3161 timestamping authority."""


@tsa.command("serve")
@click.option(
    "--cert",
    "cert_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="TSA certificate (PEM or DER) with the critical extended key usage timeStamping; "
    "CA certificates may follow it in a PEM file.",
)
@key_file_options("TSA certificate's")
@click.option(
    "--chain",
    "chain_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="PEM file of intermediate CA certificates, sent in tokens that ask for certificates.",
)
@listen_options
@click.option(
    "--policy",
    "policy_oid",
    default=DEFAULT_POLICY_OID,
    show_default=True,
    help="TSA policy object identifier put in every token.",
)
@click.option(
    "--accuracy",
    "accuracy_s",
    default=1,
    show_default=True,
    type=click.IntRange(0, 3600),
    help="Accuracy of the clock in seconds, stated in tokens (0: not stated).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the serial-number counter (default: <data_dir>/tsa).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    cert_path: Path,
    key_path: Path,
    key_passphrase_env: str | None,
    chain_path: Path | None,
    host: str,
    port: int,
    policy_oid: str,
    accuracy_s: int,
    state_dir: Path | None,
) -> None:
    """Answer timestamp requests (POST / with application/timestamp-query) until interrupted."""
    passphrase = passphrase_from_env(key_passphrase_env, "TSA key")
    authority = load_authority(
        cert_path=cert_path,
        key_path=key_path,
        passphrase=passphrase,
        policy_oid=policy_oid,
        chain_path=chain_path,
        accuracy_s=accuracy_s,
    )
    if state_dir is None:
        from jisr.cli import settings_of  # here: jisr.cli imports this module while loading

        state_dir = settings_of(ctx).data_dir / "tsa"
    serials = SerialNumbers(state_dir / SERIAL_FILE_NAME)
    asyncio.run(_serve_until_signalled(authority, serials, host, port))


async def _serve_until_signalled(
    authority: TimestampAuthority, serials: SerialNumbers, host: str, port: int
) -> None:
    def ready(url: str) -> None:
        click.echo(f"TSA listening on {url}", nl=True)
        _log.info(
            "tsa_started", url=url, policy=authority.policy_oid, serial_file=str(serials.path)
        )

    with stop_on_signals() as stop:
        await run_tsa(authority, serials, host, port, stop=stop, ready=ready)
    _log.info("tsa_stopped")
