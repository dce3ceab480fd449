"""Key pairs and certificate signing requests.

Rules:

* Jisr makes ECDSA P-256 keys by default and RSA keys of 2048 bits or more when asked; it
  refuses smaller RSA keys and other curves everywhere a key enters (generation, CSR, issuing),
  so a weak key never reaches a certificate.
* A CSR names only what the requester wants; the CA decides the final subject and extensions
  from the certificate profile (:mod:`certs.profiles`), so nothing here is trusted by the CA
  beyond the public key and proof of its possession (the CSR signature).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs.errors import CsrError, WeakKeyError
from certs.signer import SigningKey

__all__ = [
    "MIN_RSA_BITS",
    "KeyKind",
    "SigningKey",
    "check_public_key",
    "generate_key",
    "make_csr",
]

KeyKind = Literal["ec", "rsa"]

#: Smallest RSA modulus Jisr accepts (NIST SP 800-57: 2048 bits until 2030).
MIN_RSA_BITS = 2048

#: Curves accepted in certificates; P-256 is what Jisr generates.
_ACCEPTED_CURVES = ("secp256r1", "secp384r1")


def generate_key(kind: KeyKind = "ec", *, rsa_bits: int = MIN_RSA_BITS) -> SigningKey:
    """A new private key: ECDSA P-256 (``"ec"``) or RSA of ``rsa_bits`` (``"rsa"``)."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        if rsa_bits < MIN_RSA_BITS:
            raise WeakKeyError(
                f"RSA keys of {rsa_bits} bits are too small; use at least {MIN_RSA_BITS} bits "
                "or an EC P-256 key"
            )
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise WeakKeyError(f"unknown key kind {kind!r}; use 'ec' (P-256) or 'rsa'")


def check_public_key(key: object) -> None:
    """Refuse a public key Jisr does not accept in certificates (WeakKeyError)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _ACCEPTED_CURVES:
            raise WeakKeyError(
                f"EC curve {key.curve.name} is not accepted; use P-256 (secp256r1) or P-384"
            )
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakKeyError(
                f"RSA key of {key.key_size} bits is too small; generate a key of at least "
                f"{MIN_RSA_BITS} bits (or an EC P-256 key) and make a new CSR"
            )
        return
    raise WeakKeyError(
        f"{type(key).__name__} keys are not accepted; use an EC P-256 or RSA (2048+) key"
    )


def make_csr(
    key: SigningKey,
    common_name: str,
    *,
    serial_number: str | None = None,
    organization: str | None = None,
    country: str = "IQ",
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> bytes:
    """A PEM CSR for ``key``: ``serial_number`` carries a member id for signing certificates,
    ``dns_names``/``ip_addresses`` a node's TLS names for authentication certificates."""
    check_public_key(key.public_key())
    try:
        attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, country)]
        if organization:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        if serial_number:
            attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
        subject = x509.Name(attrs)
    except ValueError as exc:
        raise CsrError(f"cannot make a CSR with this subject: {exc}") from exc
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    for ip in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CsrError(f"{ip!r} is not an IPv4 or IPv6 address") from None
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)
