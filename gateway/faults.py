"""X-Road message faults.

A :class:`FaultError` carries a full X-Road 7.x fault code (``Client.MissingHeader``,
``Server.ServerProxy.AccessDenied``, ...), the message shown to the client, and the HTTP status
a REST response uses. Build one with the prefix helpers::

    raise client_fault("MissingHeader", "the SOAP message has no Header element")
    raise server_proxy_fault("AccessDenied", f"{client} may not call {service}")

The prefix says whose fault it is: ``Client`` (the request is wrong), ``Server.ClientProxy``
(the consumer's node failed), ``Server.ServerProxy`` (the provider's node failed). A fault that
travels back through a consumer node keeps its code; the consumer node never re-labels it.
"""

from __future__ import annotations

import uuid
from typing import Final

from config.errors import JisrError

#: Fault names X-Road's message processors use (XROAD-NOTES); a code outside the set is a bug.
KNOWN_NAMES: Final = frozenset(
    {
        "IOError",
        "NetworkError",
        "InternalError",
        "BadRequest",
        "HttpError",
        "DatabaseError",
        "InvalidRequest",
        "InvalidResponse",
        "CertValidation",
        "CertValidityTime",
        "IncorrectCertificate",
        "InvalidSignatureValue",
        "MalformedSignature",
        "InvalidXml",
        "InvalidCertPath",
        "SslAuthenticationFailed",
        "LoggingFailed",
        "TimestampingFailed",
        "InvalidContentType",
        "InvalidSoapAction",
        "InvalidHttpMethod",
        "InvalidMessage",
        "InvalidSecurityServer",
        "MimeParsingFailed",
        "MissingHeader",
        "MissingHeaderField",
        "DuplicateHeaderField",
        "MissingBody",
        "InvalidBody",
        "InconsistentHeaders",
        "InconsistentResponse",
        "MissingSoap",
        "InvalidSoap",
        "MissingRest",
        "InvalidRest",
        "AccessDenied",
        "ServiceDisabled",
        "ServiceFailed",
        "MissingSignature",
        "UnknownService",
        "UnknownMember",
        "InvalidProtocolVersion",
        "InvalidClientIdentifier",
        "OutdatedGlobalConf",
        "ServiceMissingUrl",
        "ServiceMalformedUrl",
        "MaintenanceMode",
        "CannotCreateSignature",
        "RequestTooLarge",
        "DuplicateMessageId",
    }
)

CLIENT: Final = "Client"
CLIENT_PROXY: Final = "Server.ClientProxy"
SERVER_PROXY: Final = "Server.ServerProxy"
SERVER: Final = "Server"


class FaultError(JisrError):
    """An X-Road fault: a code, a message for the client, an HTTP status and a log id."""

    def __init__(self, fault_code: str, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message, fault_code=fault_code)
        if http_status is not None:
            self.http_status = http_status
        else:
            # PR-REST: protocol violations by the client are 400, everything else 500.
            self.http_status = 400 if fault_code.startswith(CLIENT + ".") else 500
        #: Unique id to find the error in the node's log (SOAP ``faultDetail``, REST ``detail``).
        self.detail = str(uuid.uuid4())

    @property
    def prefix(self) -> str:
        for prefix in (CLIENT_PROXY, SERVER_PROXY, CLIENT, SERVER):
            if self.fault_code == prefix or self.fault_code.startswith(prefix + "."):
                return prefix
        return SERVER

    def with_prefix(self, prefix: str) -> FaultError:
        """The same fault reported under another prefix (used when a fault crosses a node)."""
        rest = self.fault_code[len(self.prefix) + 1 :]
        fault = FaultError(f"{prefix}.{rest}", self.message, http_status=self.http_status)
        fault.detail = self.detail
        return fault


def _fault(prefix: str, name: str, message: str, detail: str | None) -> FaultError:
    if name.split(".")[0] not in KNOWN_NAMES:
        raise ValueError(f"unknown X-Road fault name {name!r}")
    code = f"{prefix}.{name}" + (f".{detail}" if detail else "")
    return FaultError(code, message)


def client_fault(name: str, message: str, detail: str | None = None) -> FaultError:
    """The client's request is wrong (``Client.<name>``), HTTP 400."""
    return _fault(CLIENT, name, message, detail)


def client_proxy_fault(name: str, message: str, detail: str | None = None) -> FaultError:
    """The consumer's node failed (``Server.ClientProxy.<name>``), HTTP 500."""
    return _fault(CLIENT_PROXY, name, message, detail)


def server_proxy_fault(name: str, message: str, detail: str | None = None) -> FaultError:
    """The provider's node failed (``Server.ServerProxy.<name>``), HTTP 500."""
    return _fault(SERVER_PROXY, name, message, detail)


def from_error(exc: JisrError, prefix: str = CLIENT_PROXY) -> FaultError:
    """Turn any Jisr error into a fault; non-fault errors get ``prefix`` before their name."""
    if isinstance(exc, FaultError):
        return exc
    code = exc.fault_code
    if not code.startswith((CLIENT + ".", SERVER + ".")):
        code = f"{prefix}.{code}"
    elif code.startswith(SERVER + ".") and not code.startswith((CLIENT_PROXY, SERVER_PROXY)):
        code = f"{prefix}.{code[len(SERVER) + 1 :]}"
    return FaultError(code, exc.message, http_status=exc.http_status)
