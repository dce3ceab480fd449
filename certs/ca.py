"""The Jisr certificate authority: a root, an optional issuing CA, and what they issued.

Rules:

* A CA lives in one directory::

      ca.json            name, layout version, whether an issuing CA exists
      root.pem           self-signed root certificate (10 years)
      issuing.pem        issuing (intermediate) CA certificate, when created with one
      keys/              CA keys, encrypted with the CA passphrase (certs.keystore layout)
      issued/<hex>.pem   every certificate issued, named by serial number in hex
      index.json         one record per issued certificate: serial, subject, profile,
                         not_after, status good|revoked, revoked_at, reason

  ``index.json`` is always replaced atomically (temporary file, fsync, rename) so that a
  reader (the OCSP responder, through :class:`CaIndex`) never sees half a file.
* End-entity certificates are signed by the issuing CA when there is one, else by the root.
* From a CSR the CA takes only the public key (after checking the CSR's signature and the
  key's type and size) and, for authentication certificates, the requested DNS names and IP
  addresses. The subject layout and every extension come from the profile.
* Time is an argument (``now``, ``at``); nothing here reads the clock.
* One process writes a CA directory at a time; readers may be many.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certs.errors import CaError, CsrError, KeyStoreError
from certs.keys import KeyKind, SigningKey, check_public_key, generate_key
from certs.keystore import SoftwareKeyStore
from certs.profiles import (
    Profile,
    ProfileName,
    cert_sha256,
    check_member_id,
    check_server_id,
    profile_named,
)
from certs.status import CertStatus
from config.files import write_atomically

__all__ = [
    "MAX_CSR_BYTES",
    "REASONS",
    "CaIndex",
    "CertificateAuthority",
    "IssuedKey",
    "IssuedRecord",
    "load_csr",
]

#: A CSR is a key and a few names; anything larger is refused before parsing.
MAX_CSR_BYTES = 64 * 1024

_LAYOUT_VERSION = 1
_ROOT_DAYS = 3650
_ISSUING_DAYS = 3650 // 2
#: Certificates start a little before "now" so that a peer whose clock is slightly behind
#: does not see them as not yet valid.
_BACKDATE = dt.timedelta(minutes=5)
_ROOT_LABEL = "root"
_ISSUING_LABEL = "issuing"

#: Revocation reasons accepted (RFC 5280 CRLReason, as cryptography's ReasonFlags names).
REASONS = tuple(r.name for r in x509.ReasonFlags if r.name not in ("remove_from_crl",))


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedRecord:
    """One line of the CA's index."""

    serial: int
    subject: str
    profile: str
    not_after: dt.datetime
    status: str  # "good" | "revoked"
    sha256: str
    revoked_at: dt.datetime | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": format(self.serial, "x"),
            "subject": self.subject,
            "profile": self.profile,
            "not_after": self.not_after.isoformat(),
            "status": self.status,
            "sha256": self.sha256,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IssuedRecord:
        revoked_at = obj.get("revoked_at")
        return cls(
            serial=int(obj["serial"], 16),
            subject=str(obj["subject"]),
            profile=str(obj["profile"]),
            not_after=dt.datetime.fromisoformat(obj["not_after"]),
            status=str(obj["status"]),
            sha256=str(obj["sha256"]),
            revoked_at=dt.datetime.fromisoformat(revoked_at) if revoked_at else None,
            reason=obj.get("reason"),
        )


def _read_index(path: Path) -> dict[int, IssuedRecord]:
    try:
        doc = json.loads(path.read_text("utf-8"))
        records = [IssuedRecord.from_json(r) for r in doc["certificates"]]
    except FileNotFoundError:
        raise CaError(f"{path} is missing; is {path.parent} a CA directory?") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CaError(f"the CA index {path} is damaged ({exc}); restore it from backup") from exc
    return {r.serial: r for r in records}


def _write_index(path: Path, records: dict[int, IssuedRecord]) -> None:
    doc = {
        "version": _LAYOUT_VERSION,
        "certificates": [records[s].to_json() for s in sorted(records)],
    }
    write_atomically(path, json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8"))


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CaError(f"{path} is missing; is {path.parent} a CA directory?") from None
    except ValueError as exc:
        raise CaError(f"{path} is not a PEM certificate: {exc}") from exc


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR and check its self-signature (proof of key possession)."""
    if len(data) > MAX_CSR_BYTES:
        raise CsrError(f"malformed CSR: {len(data)} bytes exceeds the limit of {MAX_CSR_BYTES}")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        valid = csr.is_signature_valid
    except (ValueError, TypeError) as exc:
        raise CsrError(
            f"malformed CSR: {exc}; provide a PKCS#10 request in PEM or DER "
            "(e.g. from `jisr pki csr`)"
        ) from exc
    if not valid:
        raise CsrError(
            "the CSR's signature does not verify: it was altered or not signed by the key it "
            "contains; make a new CSR with the key"
        )
    check_public_key(csr.public_key())
    return csr


def _ca_name(name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "IQ"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {role}"),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _sign(builder: x509.CertificateBuilder, key: SigningKey) -> x509.Certificate:
    return builder.sign(key, hashes.SHA256())


def _subject_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


class CaIndex:
    """Read-only, passphrase-free view of what a CA issued, for the OCSP responder.

    The index file is re-read whenever it changes on disk (checked on every query by its
    modification time, size and inode), so revocations by ``jisr pki revoke`` are seen at once.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path = directory / "index.json"
        self._stamp: tuple[int, int, int] | None = None
        self._records: dict[int, IssuedRecord] = {}
        self.root_certificate = _load_cert(directory / "root.pem")
        issuing = directory / "issuing.pem"
        #: The certificate that signs end-entity certificates (and whose OCSP we answer).
        self.issuer_certificate = _load_cert(issuing) if issuing.exists() else self.root_certificate
        self._refresh()

    @classmethod
    def load(cls, directory: Path | str) -> CaIndex:
        return cls(Path(directory))

    def _refresh(self) -> None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            raise CaError(f"{self._path} is missing; is {self.directory} a CA directory?") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._records = _read_index(self._path)
            self._stamp = stamp

    def records(self) -> list[IssuedRecord]:
        self._refresh()
        return [self._records[s] for s in sorted(self._records)]

    def status(self, serial: int) -> CertStatus:
        """good / revoked (with time and reason) / unknown for serials this CA did not issue."""
        self._refresh()
        record = self._records.get(serial)
        if record is None:
            return CertStatus("unknown")
        if record.status == "revoked":
            return CertStatus("revoked", record.revoked_at, record.reason)
        return CertStatus("good")


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key the CA generated into a key store, and the certificate issued for it."""

    label: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


class CertificateAuthority:
    """A CA directory opened with its passphrase: issues and revokes certificates."""

    def __init__(
        self,
        directory: Path,
        *,
        root: x509.Certificate,
        issuer: x509.Certificate,
        issuer_key: SigningKey,
    ) -> None:
        self.directory = directory
        self.root_certificate = root
        self.issuer_certificate = issuer
        self._issuer_key = issuer_key
        self._index_path = directory / "index.json"

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """CA certificates an end-entity presents after its own: issuing CA then root."""
        if self.issuer_certificate == self.root_certificate:
            return (self.root_certificate,)
        return (self.issuer_certificate, self.root_certificate)

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """CA certificates below the root (what a Signer's ``chain`` holds)."""
        return self.chain[:-1]

    # -- creation and opening ------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: Path | str,
        *,
        name: str,
        passphrase: str,
        intermediate: bool = False,
        now: dt.datetime,
        kind: KeyKind = "ec",
    ) -> CertificateAuthority:
        """Create a new CA in ``directory`` (which must be absent or empty)."""
        directory = Path(directory)
        if not name.strip():
            raise CaError("the CA needs a name, e.g. 'Jisr Demo'")
        if directory.exists() and any(directory.iterdir()):
            raise CaError(
                f"{directory} is not empty; choose a new directory for the CA "
                "(an existing CA is opened, never re-created)"
            )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / "issued").mkdir(mode=0o755)
        keys = SoftwareKeyStore(directory / "keys")

        root_key = generate_key(kind)
        keys.store(_ROOT_LABEL, passphrase, root_key)
        root_name = _ca_name(name, "Root CA")
        start = now - _BACKDATE
        root = _sign(
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(now + dt.timedelta(days=_ROOT_DAYS))
            .add_extension(
                x509.BasicConstraints(ca=True, path_length=1 if intermediate else 0), True
            )
            .add_extension(_ca_key_usage(), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), False),
            root_key,
        )
        (directory / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))

        issuer, issuer_key = root, root_key
        if intermediate:
            issuer_key = generate_key(kind)
            keys.store(_ISSUING_LABEL, passphrase, issuer_key)
            issuer = _sign(
                x509.CertificateBuilder()
                .subject_name(_ca_name(name, "Issuing CA"))
                .issuer_name(root_name)
                .public_key(issuer_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(now + dt.timedelta(days=_ISSUING_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
                .add_extension(_ca_key_usage(), True)
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(issuer_key.public_key()), False
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                    False,
                ),
                root_key,
            )
            (directory / "issuing.pem").write_bytes(issuer.public_bytes(serialization.Encoding.PEM))

        _write_index(directory / "index.json", {})
        meta = {"version": _LAYOUT_VERSION, "name": name, "intermediate": intermediate}
        write_atomically(directory / "ca.json", json.dumps(meta, indent=1).encode("utf-8"))
        return cls(directory, root=root, issuer=issuer, issuer_key=issuer_key)

    @classmethod
    def open(cls, directory: Path | str, passphrase: str) -> CertificateAuthority:
        """Open an existing CA; CaError if it is not one or the passphrase is wrong."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "ca.json").read_text("utf-8"))
            intermediate = bool(meta["intermediate"])
        except FileNotFoundError:
            raise CaError(
                f"{directory} is not a CA directory (no ca.json); create one with "
                "`jisr pki init-ca`"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CaError(f"{directory}/ca.json is damaged: {exc}") from exc
        root = _load_cert(directory / "root.pem")
        issuer = _load_cert(directory / "issuing.pem") if intermediate else root
        label = _ISSUING_LABEL if intermediate else _ROOT_LABEL
        try:
            key = SoftwareKeyStore(directory / "keys").load_key(label, passphrase)
        except KeyStoreError as exc:
            raise CaError(f"cannot open the CA in {directory}: {exc.message}") from None
        return cls(directory, root=root, issuer=issuer, issuer_key=key)

    # -- issuing -------------------------------------------------------------------------------

    def _subject(
        self,
        csr: x509.CertificateSigningRequest,
        profile: Profile,
        *,
        member_id: str | None,
        server_id: str | None,
        common_name: str | None,
    ) -> x509.Name:
        requested_cn = _subject_attribute(csr.subject, NameOID.COMMON_NAME)
        country = _subject_attribute(csr.subject, NameOID.COUNTRY_NAME) or "IQ"
        if len(country) != 2:
            raise CsrError(f"country {country!r} in the CSR is not a two-letter code")
        organization = _subject_attribute(csr.subject, NameOID.ORGANIZATION_NAME)
        serial_number: str | None = None
        if profile.name == "auth":
            cn = check_server_id(server_id or requested_cn or "")
        elif profile.name == "sign":
            serial_number = check_member_id(
                member_id or _subject_attribute(csr.subject, NameOID.SERIAL_NUMBER) or ""
            )
            cn = common_name or requested_cn or serial_number
        else:
            cn = common_name or requested_cn or ""
            if not cn:
                raise CsrError(f"a {profile.title} certificate needs a common name")
        try:
            attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, country)]
            if organization:
                attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
            if serial_number:
                attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
            return x509.Name(attrs)
        except ValueError as exc:
            raise CsrError(f"cannot use the requested subject: {exc}") from exc

    def issue(
        self,
        csr_pem: bytes,
        profile: Profile | ProfileName,
        *,
        now: dt.datetime,
        days: int | None = None,
        member_id: str | None = None,
        server_id: str | None = None,
        common_name: str | None = None,
        dns_names: Sequence[str] | None = None,
        ip_addresses: Sequence[str] | None = None,
    ) -> x509.Certificate:
        """Issue a certificate of ``profile`` for the key in ``csr_pem``.

        ``member_id`` (sign), ``server_id`` (auth) and ``common_name`` override what the CSR
        asks for; ``dns_names``/``ip_addresses`` replace the CSR's requested SAN (auth only).
        The validity is cut at the issuing CA's own expiry.
        """
        if isinstance(profile, str):
            profile = profile_named(profile)
        csr = load_csr(csr_pem)
        subject = self._subject(
            csr, profile, member_id=member_id, server_id=server_id, common_name=common_name
        )
        if dns_names is None and ip_addresses is None:
            dns_names, ip_addresses = self._requested_names(csr)
        days = profile.default_days if days is None else days
        if days <= 0:
            raise CsrError(f"validity of {days} days is not positive")
        not_after = min(now + dt.timedelta(days=days), self.issuer_certificate.not_valid_after_utc)
        if not_after <= now:
            raise CaError("the issuing CA has expired; create a new CA")

        records = _read_index(self._index_path)
        serial = x509.random_serial_number()
        while serial in records:
            serial = x509.random_serial_number()
        public_key = csr.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuer_certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(self._authority_key_identifier(), False)
        )
        for extension, critical in profile.extensions(
            dns_names=dns_names or (), ip_addresses=ip_addresses or ()
        ):
            builder = builder.add_extension(extension, critical)
        cert = _sign(builder, self._issuer_key)

        write_atomically(
            self.directory / "issued" / f"{serial:x}.pem",
            cert.public_bytes(serialization.Encoding.PEM),
        )
        records[serial] = IssuedRecord(
            serial=serial,
            subject=subject.rfc4514_string(),
            profile=profile.name,
            not_after=not_after,
            status="good",
            sha256=cert_sha256(cert),
        )
        _write_index(self._index_path, records)
        return cert

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self.issuer_certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value
        except x509.ExtensionNotFound:
            raise CaError("the issuing CA certificate has no subject key identifier") from None
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    @staticmethod
    def _requested_names(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str]]:
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return [], []
        except ValueError as exc:
            raise CsrError(f"malformed CSR: requested extensions: {exc}") from exc
        return (
            list(san.get_values_for_type(x509.DNSName)),
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
        )

    def issue_for_new_key(
        self,
        profile: Profile | ProfileName,
        common_name: str,
        *,
        keystore: SoftwareKeyStore,
        label: str,
        key_passphrase: str,
        now: dt.datetime,
        days: int | None = None,
        kind: KeyKind = "ec",
        member_id: str | None = None,
        server_id: str | None = None,
        dns_names: Sequence[str] | None = None,
        ip_addresses: Sequence[str] | None = None,
    ) -> IssuedKey:
        """Generate a key under ``label`` in ``keystore`` and issue a certificate for it.

        This is how the demo and an operator set up the CA's own services (OCSP responder,
        TSA) in one step; the key never leaves the key store unencrypted.
        """
        if isinstance(profile, str):
            profile = profile_named(profile)
        requested_cn = server_id if profile.name == "auth" and server_id else common_name
        if not requested_cn:
            raise CsrError("give a common name (or a node id for an authentication key)")
        keystore.generate(label, key_passphrase, kind)
        csr = keystore.make_csr(label, key_passphrase, requested_cn, serial_number=member_id)
        cert = self.issue(
            csr,
            profile,
            now=now,
            days=days,
            member_id=member_id,
            server_id=server_id,
            common_name=None if profile.name == "auth" else common_name,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )
        return IssuedKey(label, cert, self.intermediates)

    # -- revocation and listing ----------------------------------------------------------------

    def revoke(self, serial: int, *, reason: str = "unspecified", at: dt.datetime) -> IssuedRecord:
        """Mark ``serial`` revoked from ``at`` with an RFC 5280 reason name."""
        if reason not in REASONS:
            raise CaError(f"unknown revocation reason {reason!r}; use one of {', '.join(REASONS)}")
        records = _read_index(self._index_path)
        record = records.get(serial)
        if record is None:
            raise CaError(f"this CA did not issue a certificate with serial {serial:x}")
        if record.status == "revoked":
            raise CaError(f"certificate {serial:x} is already revoked (since {record.revoked_at})")
        revoked = dataclasses.replace(
            record, status="revoked", revoked_at=at.astimezone(dt.UTC), reason=reason
        )
        records[serial] = revoked
        _write_index(self._index_path, records)
        return revoked

    def list(self) -> list[IssuedRecord]:
        records = _read_index(self._index_path)
        return [records[s] for s in sorted(records)]

    def certificate(self, serial: int) -> x509.Certificate:
        """An issued certificate by serial number."""
        return _load_cert(self.directory / "issued" / f"{serial:x}.pem")
