"""What signs: a private key together with its certificate and chain.

Callers hold a :class:`Signer` and never see the key's algorithm: ECDSA P-256 keys sign with
ECDSA-SHA256, RSA keys with PKCS#1 v1.5 SHA-256. A PKCS#11 token implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from config.errors import PkiError

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class Signer(Protocol):
    @property
    def certificate(self) -> x509.Certificate: ...

    @property
    def chain(self) -> Sequence[x509.Certificate]:
        """Intermediate CA certificates, nearest first; the root is not included."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (hashing it with SHA-256); return the DER/raw signature value."""
        ...


class SoftwareSigner:
    """A :class:`Signer` over a key held in memory (loaded from the software key store)."""

    def __init__(
        self,
        key: SigningKey,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
    ) -> None:
        if key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
            raise PkiError(
                "the certificate does not belong to this private key; import the certificate "
                "that was issued for this key's CSR"
            )
        self._key = key
        self._certificate = certificate
        self._chain = tuple(chain)

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def chain(self) -> Sequence[x509.Certificate]:
        return self._chain

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
