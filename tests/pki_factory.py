"""A small test PKI built directly with ``cryptography``, independent of ``certs.ca``.

Tests of OCSP, TSA, CMS and the registry use it so that they do not depend on the CA code they
may be testing. Keys are ECDSA P-256 unless a test asks for RSA. Times are fixed by the caller.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


@dataclasses.dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``name.pem`` (certificate) and ``name.key`` (unencrypted PKCS#8, tests only)."""
        cert_path = directory / f"{name}.pem"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(self.pem)
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def _name(cn: str, serial_number: str | None = None, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "IQ")]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if serial_number:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: object, not_before: dt.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before - dt.timedelta(days=1))
        .not_valid_after(not_before + dt.timedelta(days=days))
    )


@dataclasses.dataclass
class FixturePki:
    """Root CA plus helpers to issue end-entity certificates under it."""

    root: Issued
    now: dt.datetime = NOW

    @classmethod
    def create(cls, now: dt.datetime = NOW, cn: str = "Jisr Test Root CA") -> FixturePki:
        key = new_key()
        name = _name(cn, org="Jisr Test")
        cert = (
            _builder(name, name, key.public_key(), now, 3650)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(Issued(cert, key), now)

    def issue(
        self,
        cn: str,
        *,
        eku: list[x509.ObjectIdentifier] | None = None,
        serial_number: str | None = None,
        key: PrivateKey | None = None,
        days: int = 365,
        not_before: dt.datetime | None = None,
        digital_signature: bool = True,
        content_commitment: bool = False,
        san_ip: bool = False,
    ) -> Issued:
        key = key or new_key()
        b = (
            _builder(
                _name(cn, serial_number, org="Jisr Test"),
                self.root.cert.subject,
                key.public_key(),
                not_before or self.now,
                days,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=digital_signature,
                    content_commitment=content_commitment,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root.key.public_key()),
                False,
            )
        )
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        if san_ip:
            import ipaddress

            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return Issued(b.sign(self.root.key, hashes.SHA256()), key)

    def ocsp_responder(self) -> Issued:
        return self.issue("Jisr Test OCSP Responder", eku=[ExtendedKeyUsageOID.OCSP_SIGNING])

    def tsa(self) -> Issued:
        # RFC 3161 requires the timeStamping EKU to be the only one, and critical.
        key = new_key()
        b = (
            _builder(
                _name("Jisr Test TSA", org="Jisr Test"),
                self.root.cert.subject,
                key.public_key(),
                self.now,
                365,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
            )
        )
        return Issued(b.sign(self.root.key, hashes.SHA256()), key)

    def signing(self, member_id: str = "IQ/GOV/NDC") -> Issued:
        return self.issue(f"{member_id} signing", serial_number=member_id, content_commitment=True)

    def authentication(self, server: str = "IQ/GOV/NDC/ss1") -> Issued:
        return self.issue(
            server,
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
            san_ip=True,
        )
