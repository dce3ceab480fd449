"""A node's data directory: one place for everything a node is, apart from its database.

Rules:

- The layout is fixed; every path is derived from the directory, nothing is configured::

      DIR/node.toml            settings: [node] server_id, host, ports, public_address;
                               [database] url (empty: embedded PostgreSQL in DIR/postgres)
      DIR/anchor.json          the configuration anchor, as installed (canonical JSON)
      DIR/keys/                private keys, encrypted (SoftwareKeyStore): ``auth`` and
                               ``sign-<INSTANCE>.<CLASS>.<CODE>`` per hosted member
      DIR/csr/                 certificate signing requests, ``<label>.csr.pem``
      DIR/certs/               imported certificates, ``<label>.pem`` (certificate, then its
                               intermediate CA certificates)
      DIR/internal-tls/        ``cert.pem`` + ``key.pem`` (encrypted) of the client-side HTTPS
                               listener, self-signed, made at init
      DIR/globalconf/          the last accepted ``conf.json`` and ``conf.json.p7s``
      DIR/ocsp/                the latest OCSP responses for the node's own certificates
      DIR/run/endpoints.json   the URLs the running node bound (written at start)
      DIR/postgres/            the embedded PostgreSQL cluster, when no URL is configured

- Files are written atomically (temporary file in the same directory, fsync, rename), so a
  crash leaves the old or the new content, never half of one. Private keys are mode 0600 in
  directories of mode 0700.
- The key passphrase comes from the environment variable the settings name
  (``JISR_NODE_KEY_PASSPHRASE`` by default); it is never written, printed or logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config.errors import ConfigError

# Re-exported: the node's modules write their files through the node directory's rules.
from config.files import write_atomically as write_atomically
from config.settings import Settings, load_settings
from gateway.anchor import Anchor
from gateway.canonical import der_of, digest_of

CONFIG_FILE = "node.toml"
ANCHOR_FILE = "anchor.json"
#: Shortest key passphrase accepted: keys are only as safe as the passphrase.
MIN_PASSPHRASE_LENGTH = 8
#: Lifetime of the self-signed internal TLS certificate.
INTERNAL_TLS_VALIDITY = dt.timedelta(days=5 * 365)
#: Certificates and CSRs are a few KiB; a larger file is the wrong file.
MAX_SMALL_FILE = 1024 * 1024


class NodeDirError(ConfigError):
    """The node's data directory is missing, incomplete or cannot be written."""


def read_small(path: Path, what: str) -> bytes:
    """A small file's bytes, or a NodeDirError naming ``what`` was expected there."""
    try:
        if path.stat().st_size > MAX_SMALL_FILE:
            raise NodeDirError(f"{path} is too large to be {what}")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise NodeDirError(f"{what} is missing: {path} does not exist") from exc
    except OSError as exc:
        raise NodeDirError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def passphrase_from_env(env_name: str, environ: Mapping[str, str] | None = None) -> str:
    """The key passphrase from ``env_name``; refuse to go on without one."""
    value = (os.environ if environ is None else environ).get(env_name, "")
    if len(value) < MIN_PASSPHRASE_LENGTH:
        raise NodeDirError(
            f"the node key passphrase is missing or shorter than {MIN_PASSPHRASE_LENGTH} "
            f"characters; set the environment variable {env_name} (it is never stored or shown)"
        )
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class NodeDir:
    """Paths of one node's data directory (see the module rules for the layout)."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def anchor_file(self) -> Path:
        return self.root / ANCHOR_FILE

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def csr_dir(self) -> Path:
        return self.root / "csr"

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def internal_tls_dir(self) -> Path:
        return self.root / "internal-tls"

    @property
    def internal_cert_file(self) -> Path:
        return self.internal_tls_dir / "cert.pem"

    @property
    def internal_key_file(self) -> Path:
        return self.internal_tls_dir / "key.pem"

    @property
    def globalconf_dir(self) -> Path:
        return self.root / "globalconf"

    @property
    def ocsp_dir(self) -> Path:
        return self.root / "ocsp"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def endpoints_file(self) -> Path:
        return self.run_dir / "endpoints.json"

    def csr_file(self, label: str) -> Path:
        return self.csr_dir / f"{label}.csr.pem"

    def cert_file(self, label: str) -> Path:
        return self.certs_dir / f"{label}.pem"

    def require(self) -> NodeDir:
        """Refuse a directory that ``jisr node init`` has not set up."""
        if not self.config_file.is_file() or not self.anchor_file.is_file():
            raise NodeDirError(
                f"{self.root} is not a node data directory (no {CONFIG_FILE} or {ANCHOR_FILE}); "
                "create one with `jisr node init --data-dir DIR --server-id ... --anchor FILE`"
            )
        return self

    def load_settings(self, env: Mapping[str, str] | None = None) -> Settings:
        """The node's settings: defaults, then ``node.toml``, then ``JISR_*`` variables."""
        self.require()
        return load_settings(self.config_file, env, data_dir=self.root)

    def load_anchor(self) -> Anchor:
        return Anchor.from_bytes(read_small(self.anchor_file, "the configuration anchor"))

    def make_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for private in (self.keys_dir, self.internal_tls_dir):
            private.mkdir(mode=0o700, exist_ok=True)
        for public in (self.csr_dir, self.certs_dir, self.globalconf_dir, self.ocsp_dir):
            public.mkdir(exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 for c in escaped):
        raise NodeDirError(f"setting value {value!r} contains control characters")
    return f'"{escaped}"'


def render_node_toml(
    *,
    server_id: str,
    host: str,
    public_address: str,
    ports: Mapping[str, int],
    database_url: str,
) -> bytes:
    """The ``node.toml`` written by init; an operator may edit it afterwards."""
    lines = [
        "# Jisr security server node settings. JISR_NODE_* / JISR_DATABASE_* variables override.",
        "[node]",
        f"server_id = {_toml_string(server_id)}",
        f"host = {_toml_string(host)}",
        f"public_address = {_toml_string(public_address)}",
    ]
    lines += [f"{name} = {int(port)}" for name, port in sorted(ports.items())]
    lines += [
        "",
        "[database]",
        "# Empty: an embedded PostgreSQL server runs in this directory's postgres/ folder.",
        f"url = {_toml_string(database_url)}",
        "",
    ]
    return "\n".join(lines).encode("utf-8")


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the DER: how information systems pin the internal certificate."""
    return digest_of(der_of(cert))


def make_internal_tls(
    node: NodeDir, server_id: str, hosts: list[str], passphrase: str, *, now: dt.datetime
) -> x509.Certificate:
    """A self-signed certificate and encrypted key for the client-side HTTPS listener.

    Information systems pin this certificate (by its SHA-256) instead of trusting a CA; it is
    not the node's authentication certificate and is never shown to other nodes.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Jisr node internal TLS"),
            x509.NameAttribute(NameOID.COMMON_NAME, server_id),
        ]
    )
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + INTERNAL_TLS_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode("utf-8")),
    )
    write_atomically(node.internal_key_file, encrypted, 0o600)
    write_atomically(node.internal_cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return cert


def load_pem_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, or the one certificate of a DER file."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise NodeDirError(f"{what} is not a PEM or DER certificate file: {exc}") from exc
    if not certs:
        raise NodeDirError(f"{what} holds no certificate")
    return certs
