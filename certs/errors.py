"""Errors of the PKI layer, all under :class:`config.errors.PkiError`.

Fault codes here are bare X-Road fault names; :func:`gateway.faults.from_error` puts the prefix
(``Server.ClientProxy`` or ``Server.ServerProxy``) in front, because only the caller knows which
side of the exchange found the problem::

    PkiError                          fault_code
    ├── SignatureError                InvalidSignatureValue   forged, tampered, wrong digest
    ├── MalformedSignatureError       MalformedSignature      not a CMS structure we accept
    ├── PathValidationError           InvalidCertPath         no chain to a trusted root
    │   └── CertValidityError         CertValidityTime        expired or not yet valid
    ├── WrongProfileError             IncorrectCertificate    e.g. a TLS cert used to sign
    ├── CsrError                      InvalidRequest          malformed or unacceptable CSR
    ├── WeakKeyError                  IncorrectCertificate    RSA < 2048 bits, other curves
    ├── KeyStoreError                 CannotCreateSignature   missing key, wrong passphrase
    └── CaError                       InternalError           CA directory missing or damaged

Messages say what was wrong and what to do; they never contain key material or passphrases.
"""

from __future__ import annotations

from config.errors import PkiError

__all__ = [
    "CaError",
    "CertValidityError",
    "CsrError",
    "KeyStoreError",
    "MalformedSignatureError",
    "PathValidationError",
    "PkiError",
    "SignatureError",
    "WeakKeyError",
    "WrongProfileError",
]


class SignatureError(PkiError):
    """A signature does not verify: the data or the signature was changed, or it is forged."""

    fault_code = "InvalidSignatureValue"


class MalformedSignatureError(PkiError):
    """The signature bytes are not a CMS SignedData of the form Jisr makes and accepts."""

    fault_code = "MalformedSignature"


class PathValidationError(PkiError):
    """A certificate does not chain to a trusted root under the rules of its profile."""

    fault_code = "InvalidCertPath"


class CertValidityError(PathValidationError):
    """A certificate in the path is expired or not yet valid at the validation time."""

    fault_code = "CertValidityTime"


class WrongProfileError(PkiError):
    """A certificate is valid but issued for another purpose (e.g. TLS instead of signing)."""

    fault_code = "IncorrectCertificate"


class CsrError(PkiError):
    """A certificate signing request cannot be parsed or is not acceptable to the CA."""

    fault_code = "InvalidRequest"
    http_status = 400


class WeakKeyError(PkiError):
    """A key is of a type or size Jisr refuses (RSA below 2048 bits, curves other than P-256)."""

    fault_code = "IncorrectCertificate"
    http_status = 400


class KeyStoreError(PkiError):
    """A key cannot be created, found or unlocked (missing label, wrong passphrase)."""

    fault_code = "CannotCreateSignature"


class CaError(PkiError):
    """The CA directory is missing, damaged or locked with another passphrase."""

    fault_code = "InternalError"
