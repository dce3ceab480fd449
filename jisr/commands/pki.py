"""``jisr pki``: run a certificate authority and manage software keys from the command line.

Rules: passphrases never appear on the command line as values (they would land in shell
history and ``ps``); they come from the environment variable named by ``--passphrase-env`` or
from a hidden prompt. Serial numbers are shown and accepted in hexadecimal. The clock is read
here, at the edge, and passed down.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization

from certs.ca import REASONS, CaIndex, CertificateAuthority
from certs.keystore import SoftwareKeyStore
from certs.profiles import PROFILES, cert_sha256
from config.errors import JisrError

_FROM_ENV_HELP = (
    "Name of an environment variable holding the passphrase (default: prompt). "
    "The passphrase itself is never accepted on the command line."
)


@contextmanager
def _reported() -> Iterator[None]:
    """Jisr errors become one clear line and exit status 1."""
    try:
        yield
    except JisrError as exc:
        raise click.ClickException(exc.message) from exc


def _passphrase(env_name: str | None, prompt: str, *, confirm: bool = False) -> str:
    if env_name:
        value = os.environ.get(env_name)
        if not value:
            raise click.ClickException(f"environment variable {env_name} is not set or empty")
        return value
    value = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    if not isinstance(value, str) or not value:
        raise click.ClickException("an empty passphrase is not allowed")
    return value


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_pem(path: Path | None, pem: bytes) -> None:
    if path is None:
        click.echo(pem.decode("ascii"), nl=False)
    else:
        path.write_bytes(pem)
        click.echo(f"wrote {path}", err=True)


def _serial(value: str) -> int:
    try:
        return int(value.removeprefix("0x"), 16)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a hexadecimal serial number") from None


_dir_option = click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="CA directory.",
)
_store_option = click.option(
    "--store",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Software key store directory.",
)
_passphrase_env_option = click.option(
    "--passphrase-env", metavar="VAR", default=None, help=_FROM_ENV_HELP
)


@click.group()
def pki() -> None:
    """Certificate authority and key management."""


@pki.command("init-ca")
@_dir_option
@click.option("--name", required=True, help="CA name, e.g. 'Jisr Demo'.")
@click.option("--intermediate", is_flag=True, help="Also create an issuing CA under the root.")
@click.option("--rsa", "use_rsa", is_flag=True, help="RSA 2048 CA keys instead of EC P-256.")
@_passphrase_env_option
def init_ca(
    directory: Path, name: str, intermediate: bool, use_rsa: bool, passphrase_env: str | None
) -> None:
    """Create a new CA (root, and optionally an issuing CA) in an empty directory."""
    passphrase = _passphrase(passphrase_env, "CA passphrase", confirm=True)
    with _reported():
        ca = CertificateAuthority.init(
            directory,
            name=name,
            passphrase=passphrase,
            intermediate=intermediate,
            now=_now(),
            kind="rsa" if use_rsa else "ec",
        )
    click.echo(f"root CA:    {ca.root_certificate.subject.rfc4514_string()}")
    click.echo(f"            {cert_sha256(ca.root_certificate)}")
    if intermediate:
        click.echo(f"issuing CA: {ca.issuer_certificate.subject.rfc4514_string()}")
    click.echo(f"trust anchor: {directory / 'root.pem'}")


@pki.command("issue")
@_dir_option
@click.option("--csr", "csr_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", required=True, type=click.Choice(sorted(PROFILES)))
@click.option("--member-id", help="Member id INSTANCE/CLASS/CODE (sign profile).")
@click.option("--server-id", help="Node id INSTANCE/CLASS/MEMBER/SERVERCODE (auth profile).")
@click.option("--cn", "common_name", help="Common name (overrides the CSR's).")
@click.option("--dns", "dns_names", multiple=True, help="DNS name for the auth SAN (repeatable).")
@click.option("--ip", "ip_addresses", multiple=True, help="IP address for the auth SAN.")
@click.option("--days", type=int, default=None, help="Validity in days (profile default).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--chain", "with_chain", is_flag=True, help="Append the CA chain to the output.")
@_passphrase_env_option
def issue(
    directory: Path,
    csr_path: Path,
    profile: str,
    member_id: str | None,
    server_id: str | None,
    common_name: str | None,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    days: int | None,
    out: Path | None,
    with_chain: bool,
    passphrase_env: str | None,
) -> None:
    """Issue a certificate of PROFILE for a CSR."""
    passphrase = _passphrase(passphrase_env, "CA passphrase")
    with _reported():
        ca = CertificateAuthority.open(directory, passphrase)
        names_given = bool(dns_names or ip_addresses)
        cert = ca.issue(
            csr_path.read_bytes(),
            PROFILES[profile],
            now=_now(),
            days=days,
            member_id=member_id,
            server_id=server_id,
            common_name=common_name,
            dns_names=dns_names if names_given else None,
            ip_addresses=ip_addresses if names_given else None,
        )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if with_chain:
        pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ca.intermediates)
    _write_pem(out, pem)
    click.echo(f"issued serial {cert.serial_number:x} to {cert.subject.rfc4514_string()}", err=True)


@pki.command("revoke")
@_dir_option
@click.argument("serial")
@click.option("--reason", type=click.Choice(REASONS), default="unspecified", show_default=True)
@_passphrase_env_option
def revoke(directory: Path, serial: str, reason: str, passphrase_env: str | None) -> None:
    """Revoke the certificate with hexadecimal SERIAL."""
    number = _serial(serial)
    passphrase = _passphrase(passphrase_env, "CA passphrase")
    with _reported():
        ca = CertificateAuthority.open(directory, passphrase)
        record = ca.revoke(number, reason=reason, at=_now())
    click.echo(f"revoked {record.serial:x} ({record.subject}) at {record.revoked_at}: {reason}")


@pki.command("list")
@_dir_option
def list_issued(directory: Path) -> None:
    """List issued certificates and their status (needs no passphrase)."""
    with _reported():
        records = CaIndex.load(directory).records()
    for r in records:
        status = r.status if r.revoked_at is None else f"revoked {r.revoked_at:%Y-%m-%d} {r.reason}"
        click.echo(f"{r.serial:x}\t{r.profile}\t{r.not_after:%Y-%m-%d}\t{status}\t{r.subject}")


@pki.command("keygen")
@_store_option
@click.option("--label", required=True)
@click.option("--rsa", "use_rsa", is_flag=True, help="RSA 2048 instead of EC P-256.")
@_passphrase_env_option
def keygen(store: Path, label: str, use_rsa: bool, passphrase_env: str | None) -> None:
    """Generate a key pair in a software key store."""
    passphrase = _passphrase(passphrase_env, "key passphrase", confirm=True)
    with _reported():
        SoftwareKeyStore(store).generate(label, passphrase, "rsa" if use_rsa else "ec")
    click.echo(f"generated {'RSA' if use_rsa else 'EC P-256'} key {label!r} in {store}")


@pki.command("csr")
@_store_option
@click.option("--label", required=True)
@click.option("--cn", "common_name", required=True, help="Common name (node id for auth keys).")
@click.option("--member-id", help="Member id for a signing key (subject serialNumber).")
@click.option("--org", "organization", help="Organization name.")
@click.option("--dns", "dns_names", multiple=True, help="Requested DNS name (repeatable).")
@click.option("--ip", "ip_addresses", multiple=True, help="Requested IP address (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@_passphrase_env_option
def csr(
    store: Path,
    label: str,
    common_name: str,
    member_id: str | None,
    organization: str | None,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    out: Path | None,
    passphrase_env: str | None,
) -> None:
    """Make a CSR for a key in a software key store."""
    passphrase = _passphrase(passphrase_env, "key passphrase")
    with _reported():
        pem = SoftwareKeyStore(store).make_csr(
            label,
            passphrase,
            common_name,
            serial_number=member_id,
            organization=organization,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )
    _write_pem(out, pem)


@pki.command("service-cert")
@_dir_option
@_store_option
@click.option("--label", required=True, help="Label of the new key.")
@click.option("--profile", required=True, type=click.Choice(["ocsp", "tsa"]))
@click.option("--cn", "common_name", required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@_passphrase_env_option
@click.option("--key-passphrase-env", metavar="VAR", default=None, help=_FROM_ENV_HELP)
def service_cert(
    directory: Path,
    store: Path,
    label: str,
    profile: str,
    common_name: str,
    out: Path,
    passphrase_env: str | None,
    key_passphrase_env: str | None,
) -> None:
    """Generate a key for the CA's OCSP responder or TSA and issue its certificate."""
    passphrase = _passphrase(passphrase_env, "CA passphrase")
    key_passphrase = _passphrase(key_passphrase_env, "new key passphrase", confirm=True)
    with _reported():
        ca = CertificateAuthority.open(directory, passphrase)
        issued = ca.issue_for_new_key(
            PROFILES[profile],
            common_name,
            keystore=SoftwareKeyStore(store),
            label=label,
            key_passphrase=key_passphrase,
            now=_now(),
        )
    pem = issued.certificate.public_bytes(serialization.Encoding.PEM)
    pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in issued.chain)
    _write_pem(out, pem)
