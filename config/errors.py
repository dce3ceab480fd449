"""The root of Jisr's one exception tree.

Every error Jisr raises on purpose derives from :class:`JisrError`. Each class carries the
X-Road fault code it maps to (``Client.*``, ``Server.ClientProxy.*``, ``Server.ServerProxy.*``)
and the HTTP status a REST or admin response should use, so that a handler at the edge can
turn any of them into a SOAP Fault, an ``X-Road-Error`` JSON body or an admin API error
without a lookup table of its own::

    JisrError                         fault_code          http_status
    ├── ConfigError                   Server.InternalError      500   settings, anchors, files
    ├── ValidationError               Client.BadRequest         400   bad input at a boundary
    │   └── IdentifierError           Client.InvalidClientIdentifier
    ├── PkiError                      Server.CertValidation     500   keys, certificates, OCSP, TSA
    │   (subclasses in certs.errors)
    ├── FaultError                    (code given per fault)          X-Road message faults
    │   (subclasses in gateway.faults)
    ├── StorageError                  Server.DatabaseError      500   database, migrations
    └── RegistryError                 Server.InternalError      500   registry operations
        (subclasses in registry.errors)

Foreign exceptions (lxml, asyncpg, ssl, cryptography) are translated once, where they enter,
with ``raise SomeJisrError(...) from exc``.
"""

from __future__ import annotations


class JisrError(Exception):
    """Base class of every error Jisr raises on purpose.

    ``message`` names what was wrong and, where a user can act, what to do.
    """

    fault_code: str = "Server.InternalError"
    http_status: int = 500

    def __init__(self, message: str, *, fault_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if fault_code is not None:
            self.fault_code = fault_code

    def __str__(self) -> str:
        return self.message


class ConfigError(JisrError):
    """Settings, configuration anchors or data directories are missing or invalid."""


class ValidationError(JisrError):
    """Input received at a boundary does not have the required form."""

    fault_code = "Client.BadRequest"
    http_status = 400


class IdentifierError(ValidationError):
    """An X-Road identifier is malformed or uses characters outside the allowed set."""

    fault_code = "Client.InvalidClientIdentifier"


class PkiError(JisrError):
    """A key, certificate, OCSP response or timestamp cannot be made or does not verify."""

    fault_code = "Server.CertValidation"


class StorageError(JisrError):
    """The database cannot be reached, started or migrated."""

    fault_code = "Server.DatabaseError"


class RegistryError(JisrError):
    """A registry operation was refused."""

    http_status = 400
    fault_code = "Client.BadRequest"
