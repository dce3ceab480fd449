"""A trust service's certificates and private key, from the files an operator names.

Rules:

- Files are read up to a size limit: certificates and keys are a few KiB, and a far larger
  file is the wrong one.
- A certificate file is PEM (one or more certificates, the first being the one meant) or DER.
- A private key is ECDSA or RSA in PKCS#8 (PEM or DER). Its passphrase comes from the
  environment variable the operator names (``--key-passphrase-env``), never from the command
  line, and is never logged.
- Errors name the file, what it was meant to be and what to do; they never contain key
  material or the passphrase, and a decryption failure is not chained to its cause.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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

_log = structlog.get_logger(__name__)


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
    """The ECDSA or RSA private key in ``path``, decrypted with ``passphrase``."""
    data = _read(path, what)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, passphrase)
        else:
            key = serialization.load_der_private_key(data, passphrase)
    except TypeError:
        hint = (
            "the key is encrypted: name the environment variable holding its passphrase with "
            "--key-passphrase-env"
            if passphrase is None
            else "the key is not encrypted: drop --key-passphrase-env"
        )
        raise KeyFileError(f"cannot load the {what} {path}: {hint}") from None
    except ValueError:
        raise KeyFileError(
            f"cannot load the {what} {path}: not a private key, or the passphrase is wrong"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyFileError(f"the {what} {path} must be an ECDSA or RSA key")
    if passphrase is None:
        _log.warning("key_not_encrypted", key=str(path))
    return key
