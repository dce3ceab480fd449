"""``jisr ocsp``: run the OCSP responder of a Jisr CA.

Rules: the responder key file must be encrypted (a plain one is refused); its passphrase is
read from the environment variable the operator names (``--key-passphrase-env``), never from
the command line, and never logged. Certificate status comes from the CA directory's index
(:class:`certs.ca.CaIndex`), which re-reads the index when the CA revokes a certificate, so a
running responder answers revocations without a restart. The bound URL is printed on one line
when the server is ready, so scripts can start it with ``--port 0`` and read where it listens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import click
import structlog
from cryptography import x509

from certs.ocsp import DEFAULT_VALIDITY, OcspResponder, StatusLookup
from certs.signer import SoftwareSigner
from jisr.commands.credential_files import load_certificate, load_private_key, passphrase_from_env
from jisr.commands.serve_options import key_file_options, listen_options
from jisr.processes import stop_on_signals
from trust_services.http_server import serve_until
from trust_services.ocsp_server import ocsp_app

__all__ = ["load_certificate", "load_responder", "ocsp", "run_responder"]

_log = structlog.get_logger(__name__)


def load_responder(
    *,
    cert_path: Path,
    key_path: Path,
    issuer: x509.Certificate,
    lookup: StatusLookup,
    passphrase: bytes | None = None,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> OcspResponder:
    """An :class:`OcspResponder` from files, checking that key and certificates belong together."""
    cert = load_certificate(cert_path, "OCSP responder")
    key = load_private_key(key_path, passphrase, "responder key")
    return OcspResponder(
        issuer,
        SoftwareSigner(key, cert),
        lookup,
        validity=validity,
        on_lookup_error=_log_lookup_error,
    )


def _log_lookup_error(serial: int, exc: Exception) -> None:
    _log.error("ocsp_status_lookup_failed", serial=f"{serial:x}", error=str(exc))


async def run_responder(
    responder: OcspResponder,
    host: str,
    port: int,
    *,
    stop: asyncio.Event,
    ready: Callable[[str], None],
) -> None:
    """Serve ``responder`` until ``stop`` is set; ``ready`` receives the bound URL."""
    await serve_until(ocsp_app(responder), host, port, stop=stop, ready=ready)


def _ca_index(ca_dir: Path) -> tuple[StatusLookup, x509.Certificate]:
    """The status lookup and issuing certificate of the CA in ``ca_dir``."""
    from certs.ca import CaIndex  # imported here so the CLI starts without reading CA code

    index = CaIndex.load(ca_dir)
    return index.status, index.issuer_certificate


@click.group()
def ocsp() -> None:
    """OCSP (RFC 6960) responder for a Jisr CA."""


@ocsp.command("serve")
@click.option(
    "--ca-dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="CA directory whose index gives certificate status.",
)
@click.option(
    "--cert",
    "cert_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="OCSP responder certificate (PEM), issued by the CA with EKU OCSPSigning.",
)
@key_file_options("responder certificate's")
@click.option(
    "--issuer",
    "issuer_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Issuing CA certificate (PEM); default: the issuing certificate in --ca-dir.",
)
@listen_options
@click.option(
    "--validity",
    "validity_s",
    default=int(DEFAULT_VALIDITY.total_seconds()),
    show_default=True,
    type=click.IntRange(60, 7 * 24 * 3600),
    help="Seconds from thisUpdate to nextUpdate in each response.",
)
def serve(
    ca_dir: Path,
    cert_path: Path,
    key_path: Path,
    key_passphrase_env: str | None,
    issuer_path: Path | None,
    host: str,
    port: int,
    validity_s: int,
) -> None:
    """Answer OCSP requests (POST / and GET /<base64>) until interrupted."""
    passphrase = passphrase_from_env(key_passphrase_env, "responder key")
    lookup, index_issuer = _ca_index(ca_dir)
    responder = load_responder(
        cert_path=cert_path,
        key_path=key_path,
        issuer=load_certificate(issuer_path, "issuing CA") if issuer_path else index_issuer,
        lookup=lookup,
        passphrase=passphrase,
        validity=dt.timedelta(seconds=validity_s),
    )
    asyncio.run(_serve_until_signalled(responder, host, port))


async def _serve_until_signalled(responder: OcspResponder, host: str, port: int) -> None:
    def ready(url: str) -> None:
        click.echo(f"OCSP responder listening on {url}", nl=True)
        _log.info("ocsp_responder_started", url=url)

    with stop_on_signals() as stop:
        await run_responder(responder, host, port, stop=stop, ready=ready)
    _log.info("ocsp_responder_stopped")
