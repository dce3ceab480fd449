"""The node's keys and certificates: generated here, certified by a CA, loaded as signers.

Rules:

- A node holds one **authentication key** (label ``auth``; its certificate's CN is the node id,
  it is the TLS identity between nodes and proves the node in ``register_server``) and one
  **signing key** per member it hosts (label ``sign-<INSTANCE>.<CLASS>.<CODE>``; its
  certificate's subject serialNumber is the member id; it signs messages).
- Keys are made in the software key store, encrypted at rest with the node passphrase, and
  never leave it; what leaves is a CSR (``csr/<label>.csr.pem``).
- An issued certificate is matched to its key by public key (against the CSRs), never by file
  name; a certificate that matches no key, or does not conform to the profile of the key it
  matches (auth / sign), or names another node or member, or is not valid now, is refused.
- :class:`NodeSigners` serves the request handlers: ``signer_for(member)`` and the stapled
  OCSP response of any own certificate, looked up in :mod:`security_server.own_ocsp`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certs.errors import KeyStoreError, WrongProfileError
from certs.keystore import SoftwareKeyStore
from certs.profiles import (
    AUTHENTICATION,
    SIGNING,
    conformance_problem,
    member_id_of,
    server_id_of,
)
from certs.signer import Signer, SoftwareSigner
from config.errors import PkiError
from config.files import write_atomically
from config.settings import NodeSettings
from gateway.anchor import Anchor
from gateway.faults import client_proxy_fault
from gateway.identifiers import MemberId, SecurityServerId
from security_server.node_dir import (
    NodeDir,
    NodeDirError,
    load_pem_certificates,
    make_internal_tls,
    read_small,
    render_node_toml,
    sha256_fingerprint,
)
from security_server.runtime import TlsFiles

AUTH_LABEL = "auth"
SIGNING_PREFIX = "sign-"
_LABEL_SAFE = re.compile(r"[A-Za-z0-9._-]+")


class NodeKeyError(PkiError):
    """A node key or certificate cannot be made, imported or used; the message says why."""

    http_status = 400


def signing_label(member: MemberId) -> str:
    """The key label of a member's signing key: ``sign-IQ.GOV.NDC``."""
    parts = (member.instance, member.member_class, member.member_code)
    if not all(_LABEL_SAFE.fullmatch(p) for p in parts):
        raise NodeKeyError(
            f"member {member} has characters a key label cannot hold; this node supports "
            "member identifiers of letters, digits, '.', '_' and '-' only"
        )
    return SIGNING_PREFIX + ".".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class InstalledCertificate:
    """An imported certificate with the label of its key and its CA chain (no root)."""

    label: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    path: Path

    @property
    def is_auth(self) -> bool:
        return self.label == AUTH_LABEL


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_self_signed(cert: x509.Certificate) -> bool:
    return _issued_by(cert, cert)


def order_chain(
    cert: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """The intermediates above ``cert``, nearest first, taken from ``candidates`` (no roots)."""
    pool = [c for c in candidates if not _is_self_signed(c)]
    chain: list[x509.Certificate] = []
    current = cert
    while True:
        issuer = next((c for c in pool if c not in chain and _issued_by(current, c)), None)
        if issuer is None:
            return tuple(chain)
        chain.append(issuer)
        current = issuer


class NodeKeys:
    """The key store, CSRs and certificates of one node directory."""

    def __init__(self, node: NodeDir) -> None:
        self.node = node
        self.store = SoftwareKeyStore(node.keys_dir)

    # -- keys and CSRs -----------------------------------------------------------------------

    def create_auth_key(
        self,
        server_id: SecurityServerId,
        passphrase: str,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> Path:
        """Generate the authentication key and write its CSR (CN = node id); return the path."""
        self.store.generate(AUTH_LABEL, passphrase)
        csr = self.store.make_csr(
            AUTH_LABEL,
            passphrase,
            str(server_id),
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )
        path = self.node.csr_file(AUTH_LABEL)
        write_atomically(path, csr)
        return path

    def create_signing_key(self, member: MemberId, passphrase: str) -> Path:
        """Generate a member's signing key and CSR (serialNumber = member id); return the path."""
        label = signing_label(member)
        if label in self.store.labels():
            raise NodeKeyError(
                f"this node already has a signing key for {member} (label {label}); import its "
                "certificate with `jisr node import-cert`"
            )
        self.store.generate(label, passphrase)
        csr = self.store.make_csr(label, passphrase, str(member), serial_number=str(member))
        path = self.node.csr_file(label)
        write_atomically(path, csr)
        return path

    def _csr_keys(self) -> dict[bytes, str]:
        """Public key (DER) → label, for every key with a CSR in ``csr/``."""
        found: dict[bytes, str] = {}
        for label in self.store.labels():
            path = self.node.csr_file(label)
            if not path.is_file():
                continue
            try:
                csr = x509.load_pem_x509_csr(read_small(path, "a CSR"))
            except ValueError:
                continue
            found[_public_der(csr.public_key())] = label
        return found

    # -- certificates --------------------------------------------------------------------------

    def import_certificate(
        self,
        data: bytes,
        *,
        chain: bytes | None = None,
        server_id: SecurityServerId,
        now: dt.datetime,
    ) -> InstalledCertificate:
        """Install an issued certificate beside the key it was issued for."""
        certs = load_pem_certificates(data, "the certificate")
        cert = certs[0]
        extra = certs[1:] + (load_pem_certificates(chain, "the chain") if chain else [])
        label = self._csr_keys().get(_public_der(cert.public_key()))
        subject = cert.subject.rfc4514_string()
        if label is None:
            raise NodeKeyError(
                f"certificate {subject} matches no key of this node (compared by public key "
                "with the CSRs in csr/); import the certificate issued for one of this node's "
                "CSRs"
            )
        if label == AUTH_LABEL:
            problem = conformance_problem(cert, AUTHENTICATION)
            if problem is None and server_id_of(cert) != str(server_id):
                problem = f"it names node {server_id_of(cert)}, not this node {server_id}"
            expected = "authentication"
        else:
            problem = conformance_problem(cert, SIGNING)
            if problem is None:
                csr_subject = x509.load_pem_x509_csr(
                    read_small(self.node.csr_file(label), "a CSR")
                ).subject
                wanted = csr_subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
                if not wanted or member_id_of(cert) != wanted[0].value:
                    problem = f"it names member {member_id_of(cert)}, not the key's member"
            expected = "signing"
        if problem is not None:
            raise WrongProfileError(
                f"certificate {subject} was issued for this node's {label} key but is not a "
                f"usable {expected} certificate: {problem}; ask the CA to issue it with the "
                f"{expected} profile"
            )
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise NodeKeyError(
                f"certificate {subject} is not valid now (valid "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
            )
        ordered = order_chain(cert, extra)
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, *ordered))
        path = self.node.cert_file(label)
        write_atomically(path, pem)
        return InstalledCertificate(label, cert, ordered, path)

    def installed(self, label: str) -> InstalledCertificate | None:
        path = self.node.cert_file(label)
        if not path.is_file():
            return None
        certs = load_pem_certificates(read_small(path, "a certificate"), str(path))
        return InstalledCertificate(label, certs[0], tuple(certs[1:]), path)

    def auth_certificate(self) -> InstalledCertificate | None:
        return self.installed(AUTH_LABEL)

    def signing_certificates(self) -> dict[MemberId, InstalledCertificate]:
        """Every member with an imported signing certificate."""
        found: dict[MemberId, InstalledCertificate] = {}
        for label in self.store.labels():
            if not label.startswith(SIGNING_PREFIX):
                continue
            installed = self.installed(label)
            if installed is not None:
                found[MemberId.parse(member_id_of(installed.certificate))] = installed
        return found

    def require_auth(self) -> InstalledCertificate:
        installed = self.auth_certificate()
        if installed is None:
            raise NodeKeyError(
                "the authentication certificate is not imported yet; have the CA sign "
                f"{self.node.csr_file(AUTH_LABEL)} and run `jisr node import-cert FILE`"
            )
        return installed

    def signer(self, installed: InstalledCertificate, passphrase: str) -> SoftwareSigner:
        try:
            return self.store.signer(
                installed.label, passphrase, installed.certificate, installed.chain
            )
        except KeyStoreError as exc:
            raise NodeKeyError(exc.message) from None

    def member_signer(self, member: MemberId, passphrase: str) -> SoftwareSigner:
        installed = self.signing_certificates().get(member)
        if installed is None:
            raise NodeKeyError(
                f"no signing certificate for {member} is imported; run `jisr node "
                f"add-member-key --member {member}` (or init), have the CSR signed and import it"
            )
        return self.signer(installed, passphrase)

    def load_signers(self, passphrase: str) -> dict[MemberId, SoftwareSigner]:
        return {m: self.signer(i, passphrase) for m, i in self.signing_certificates().items()}

    def tls_files(self, passphrase: str) -> TlsFiles:
        """The authentication certificate and key as files, for the mTLS contexts."""
        installed = self.require_auth()
        key_file = self.node.keys_dir / f"{AUTH_LABEL}.key.pem"
        if not key_file.is_file():
            raise NodeDirError(f"the authentication key {key_file} is missing")
        self.signer(installed, passphrase)  # refuses a wrong passphrase with a clear message
        return TlsFiles(
            cert_file=installed.path,
            key_file=key_file,
            key_passphrase=passphrase.encode("utf-8"),
            certificate=installed.certificate,
        )


class NodeSigners:
    """:class:`security_server.runtime.MemberSigners` over the loaded signing keys."""

    def __init__(
        self,
        signers: Mapping[MemberId, Signer],
        ocsp_lookup: Callable[[x509.Certificate], bytes | None],
    ) -> None:
        self._signers = dict(signers)
        self._ocsp_lookup = ocsp_lookup

    def signer_for(self, member: MemberId) -> Signer:
        signer = self._signers.get(member)
        if signer is None:
            raise client_proxy_fault(
                "CannotCreateSignature",
                f"this node has no signing key and certificate for member {member}; the "
                "node operator must add one (jisr node add-member-key, import-cert)",
            )
        return signer

    def ocsp_for(self, cert: x509.Certificate) -> bytes | None:
        return self._ocsp_lookup(cert)

    @property
    def members(self) -> tuple[MemberId, ...]:
        return tuple(sorted(self._signers))


# -- setting a node up (what `jisr node init / add-member-key / import-cert` and the demo call)

PORT_SETTINGS = ("client_http_port", "client_https_port", "server_port", "admin_port")


@dataclasses.dataclass(frozen=True, slots=True)
class InitResult:
    """What ``jisr node init`` reports: where the CSRs are and what to compare out of band."""

    node: NodeDir
    server_id: SecurityServerId
    anchor_digest: str
    auth_csr: Path
    signing_csr: Path
    internal_tls_sha256: str


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise NodeDirError(
            f"address {address!r} is not HOST:PORT (port 1-65535), e.g. ss1.hjc.gov.iq:5500"
        )
    return host.strip("[]"), int(port)


def initialise_node(
    data_dir: Path,
    *,
    server_id: str,
    anchor: bytes,
    passphrase: str,
    now: dt.datetime,
    public_address: str = "",
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    database_url: str = "",
) -> InitResult:
    """Create a node directory: settings, anchor, internal TLS, auth and owner signing keys."""
    node = NodeDir(data_dir)
    if node.config_file.exists() or node.keys_dir.exists():
        raise NodeDirError(
            f"{data_dir} already holds a node ({node.config_file.name} or keys/ exists); a node "
            "directory is initialised once: choose an empty directory"
        )
    sid = SecurityServerId.parse(server_id)
    installed_anchor = Anchor.from_bytes(anchor)
    if installed_anchor.instance != sid.instance:
        raise NodeDirError(
            f"the anchor is for instance {installed_anchor.instance}, but node {sid} is in "
            f"instance {sid.instance}; use the anchor of your instance's registry"
        )
    defaults = NodeSettings()
    chosen = {name: int(getattr(defaults, name)) for name in PORT_SETTINGS}
    for name, port in (ports or {}).items():
        if name not in PORT_SETTINGS:
            raise NodeDirError(f"unknown port setting {name!r}; use {', '.join(PORT_SETTINGS)}")
        if not 0 <= int(port) < 65536:
            raise NodeDirError(f"{name} {port} is not a port number (0 lets the OS choose)")
        chosen[name] = int(port)
    if not public_address:
        public_address = f"{host}:{chosen['server_port'] or 5500}"
    public_host, _ = _split_address(public_address)
    signing_label(sid.owner)  # refuse an owner id that cannot be a key label, before writing

    node.make_dirs()
    write_atomically(
        node.config_file,
        render_node_toml(
            server_id=str(sid),
            host=host,
            public_address=public_address,
            ports=chosen,
            database_url=database_url,
        ),
        0o600,
    )
    write_atomically(node.anchor_file, installed_anchor.to_bytes())
    keys = NodeKeys(node)
    try:
        ipaddress.ip_address(public_host)
        names: dict[str, list[str]] = {"ip_addresses": [public_host], "dns_names": []}
    except ValueError:
        names = {"ip_addresses": [], "dns_names": [public_host]}
    auth_csr = keys.create_auth_key(
        sid, passphrase, dns_names=names["dns_names"], ip_addresses=names["ip_addresses"]
    )
    signing_csr = keys.create_signing_key(sid.owner, passphrase)
    internal = make_internal_tls(node, str(sid), [host, public_host], passphrase, now=now)
    return InitResult(
        node=node,
        server_id=sid,
        anchor_digest=installed_anchor.digest,
        auth_csr=auth_csr,
        signing_csr=signing_csr,
        internal_tls_sha256=sha256_fingerprint(internal),
    )


def add_member_key(data_dir: Path, member: str, passphrase: str) -> Path:
    """A signing key and CSR for another member hosted on this node; return the CSR path."""
    node = NodeDir(data_dir).require()
    settings = node.load_settings()
    member_id = MemberId.parse(member)
    if member_id.instance != SecurityServerId.parse(settings.node.server_id).instance:
        raise NodeKeyError(
            f"member {member_id} is not in this node's instance "
            f"{SecurityServerId.parse(settings.node.server_id).instance}"
        )
    return NodeKeys(node).create_signing_key(member_id, passphrase)


def import_certificate(
    data_dir: Path, certificate: bytes, *, chain: bytes | None = None, now: dt.datetime
) -> InstalledCertificate:
    """Install an issued certificate (``jisr node import-cert``)."""
    node = NodeDir(data_dir).require()
    settings = node.load_settings()
    return NodeKeys(node).import_certificate(
        certificate,
        chain=chain,
        server_id=SecurityServerId.parse(settings.node.server_id),
        now=now,
    )
