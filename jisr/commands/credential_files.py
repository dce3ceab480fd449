"""A trust service's certificates and private key, from the files an operator names.

Rules:

- Files are read up to a size limit: certificates and keys are a few KiB, and a far larger
  file is the wrong one.
- A certificate file is PEM (one or more certificates, the first being the one meant) or DER.
- A private key is ECDSA or RSA in PKCS#8 (PEM or DER) and encrypted: keys on disk are always
  encrypted, and a plain key file is refused with the command that encrypts it. Its passphrase
  comes from the environment variable the operator names (``--key-passphrase-env``), never
  from the command line, and is never logged.
- Errors name the file, what it was meant to be and what to do; they never contain key
  material or the passphrase, and a decryption failure is not chained to its cause.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from certs.signer import SigningKey
from config.errors import ConfigError
from jisr.errors import KeyFileError

__all__ = [
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "passphrase_from_env",
]

#: Certificates and keys are a few KiB; anything far larger is the wrong file.
MAX_FILE_BYTES = 1024 * 1024


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path} is too large to be a {what}")
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def load_certificates(path: Path, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file, or the one in a DER file; ``what`` names the file."""
    data = _read(path, what)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM or DER certificate ({what})") from exc


def load_certificate(path: Path, what: str) -> x509.Certificate:
    """The (first) certificate in a PEM or DER file; ``what`` names it in error messages."""
    return load_certificates(path, f"{what} certificate")[0]


def passphrase_from_env(env_name: str | None, what: str) -> bytes | None:
    """The passphrase of ``what`` from the variable ``env_name`` names; None when none named."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value is None:
        raise ConfigError(
            f"environment variable {env_name} is not set; export the {what}'s passphrase in it"
        )
    return value.encode()


def load_private_key(path: Path, passphrase: bytes | None, what: str) -> SigningKey:
    """The ECDSA or RSA private key in ``path``, decrypted with ``passphrase``.

    A key file that is not encrypted is refused: keys on disk are always encrypted, so that a
    copied file or backup does not give the key away.
    """
    data = _read(path, what)
    if _is_plain_key(data):
        raise KeyFileError(
            f"the {what} {path} is not encrypted, and keys on disk must be: encrypt it with "
            f"`openssl pkcs8 -topk8 -v2 aes-256-cbc -in {path} -out <new file>` (it asks for "
            "a passphrase), delete the plain file and give the new one, or make a new key with "
            "`jisr pki service-cert` (or `jisr pki keygen`); then name the variable holding the "
            "passphrase with --key-passphrase-env"
        )
    if passphrase is None:
        raise KeyFileError(
            f"cannot load the {what} {path}: the key is encrypted: name the environment "
            "variable holding its passphrase with --key-passphrase-env"
        )
    try:
        key = _load_key(data, passphrase)
    except (ValueError, TypeError):
        # Not chained: the underlying error adds nothing a user can act on.
        raise KeyFileError(
            f"cannot load the {what} {path}: not a private key, or the passphrase is wrong"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyFileError(f"the {what} {path} must be an ECDSA or RSA key")
    return key


def _load_key(data: bytes, passphrase: bytes | None) -> PrivateKeyTypes:
    if b"-----BEGIN" in data:
        return serialization.load_pem_private_key(data, passphrase)
    return serialization.load_der_private_key(data, passphrase)


def _is_plain_key(data: bytes) -> bool:
    """Whether ``data`` is a private key that loads without a passphrase.

    Only an attempt tells for every format (PKCS#8 and the older PEM forms, PEM and DER); the
    key it loads is dropped at once. Encrypted keys and files that are no key say False: the
    real load reports those.
    """
    try:
        _load_key(data, None)
    except (TypeError, ValueError):
        return False
    return True
