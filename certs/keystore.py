"""Where private keys live: the :class:`KeyStore` protocol and the software key store.

Rules:

* A key is found by its **label** (``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``) and unlocked with a
  passphrase (a PIN for a hardware token). An empty passphrase is refused: a key is never
  written unencrypted.
* Callers get a :class:`~certs.signer.Signer`, not the key, wherever they only need to sign.
  :meth:`SoftwareKeyStore.load_key` exists for the CA and CSR creation on software keys.
* Errors never contain key material or passphrases; decryption failures are reported without
  chaining the underlying exception.

The software store keeps one file per key, ``<label>.key.pem``: an encrypted PKCS#8 PEM
(``BestAvailableEncryption``, i.e. PBES2 with a memory-hard or iterated KDF and AES-256), file
mode 0600 in a directory of mode 0700.

A PKCS#11 store implements :class:`KeyStore` the same way: ``generate`` creates the key pair on
the token under the label (CKA_LABEL), ``signer`` returns a Signer whose ``sign`` calls C_Sign,
``make_csr`` signs the request on the token; no method ever returns a private key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs.errors import KeyStoreError
from certs.keys import KeyKind, SigningKey, generate_key, make_csr
from certs.signer import Signer, SoftwareSigner

__all__ = ["KeyStore", "SoftwareKeyStore", "check_label"]

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUFFIX = ".key.pem"
#: Encrypted PKCS#8 of a 4096-bit RSA key is under 4 KiB; anything far larger is not a key.
_MAX_KEY_FILE = 64 * 1024

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def check_label(label: str) -> str:
    """Return ``label`` if it is a valid key label, else raise KeyStoreError."""
    if not _LABEL.fullmatch(label):
        raise KeyStoreError(
            f"invalid key label {label!r}: use 1-64 characters A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return label


def _check_passphrase(passphrase: str) -> bytes:
    if not passphrase:
        raise KeyStoreError("an empty passphrase is not allowed; keys are always stored encrypted")
    return passphrase.encode("utf-8")


class KeyStore(Protocol):
    """Keys addressed by label; implemented by the software store and by PKCS#11 tokens."""

    def labels(self) -> list[str]:
        """Labels of the keys held, sorted."""
        ...

    def generate(self, label: str, passphrase: str, kind: KeyKind = "ec") -> PublicKey:
        """Create a key pair under a new label; return its public key."""
        ...

    def make_csr(
        self,
        label: str,
        passphrase: str,
        common_name: str,
        *,
        serial_number: str | None = None,
        organization: str | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> bytes:
        """A PEM CSR signed by the key under ``label``."""
        ...

    def signer(
        self,
        label: str,
        passphrase: str,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
    ) -> Signer:
        """A Signer over the key under ``label`` with its certificate and CA chain."""
        ...


class SoftwareKeyStore:
    """Keys as encrypted PKCS#8 files in one directory."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def _path(self, label: str) -> Path:
        return self.directory / (check_label(label) + _SUFFIX)

    def labels(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p.name[: -len(_SUFFIX)]
            for p in self.directory.iterdir()
            if p.name.endswith(_SUFFIX) and _LABEL.fullmatch(p.name[: -len(_SUFFIX)])
        )

    def store(self, label: str, passphrase: str, key: SigningKey) -> None:
        """Write an existing key under a new label (refuses to overwrite)."""
        path = self._path(label)
        secret = _check_passphrase(passphrase)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(secret),
        )
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyStoreError(
                f"a key labelled {label!r} already exists in {self.directory}; choose another "
                "label (keys are never overwritten)"
            ) from None
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())

    def generate(self, label: str, passphrase: str, kind: KeyKind = "ec") -> PublicKey:
        self._path(label)
        _check_passphrase(passphrase)
        key = generate_key(kind)
        self.store(label, passphrase, key)
        return key.public_key()

    def load_key(self, label: str, passphrase: str) -> SigningKey:
        """The private key under ``label``; KeyStoreError if absent or the passphrase is wrong."""
        path = self._path(label)
        secret = _check_passphrase(passphrase)
        try:
            if path.stat().st_size > _MAX_KEY_FILE:
                raise KeyStoreError(f"key file for {label!r} is too large to be a key")
            pem = path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(
                f"no key labelled {label!r} in {self.directory}; known labels: "
                f"{', '.join(self.labels()) or 'none'}"
            ) from None
        try:
            key = serialization.load_pem_private_key(pem, password=secret)
        except (ValueError, TypeError):
            # Not chained: the underlying error adds nothing a user can act on.
            raise KeyStoreError(
                f"cannot unlock key {label!r}: wrong passphrase or damaged key file"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise KeyStoreError(f"key {label!r} is neither an EC nor an RSA key")
        return key

    def make_csr(
        self,
        label: str,
        passphrase: str,
        common_name: str,
        *,
        serial_number: str | None = None,
        organization: str | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> bytes:
        return make_csr(
            self.load_key(label, passphrase),
            common_name,
            serial_number=serial_number,
            organization=organization,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )

    def signer(
        self,
        label: str,
        passphrase: str,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
    ) -> SoftwareSigner:
        return SoftwareSigner(self.load_key(label, passphrase), certificate, chain)
