"""TLS for a node: contexts for the client side, the server side and outgoing node connections.

Rules:
- TLS 1.2 and 1.3 only, on every side.
- Between nodes, both ends present their authentication certificates. The server side requires
  a client certificate that chains to an approved CA; which node it belongs to is checked per
  request against the global configuration (``SslAuthenticationFailed`` otherwise).
- Outgoing connections pin the provider node: the context trusts exactly the authentication
  certificate(s) the global configuration lists for that node (partial-chain verification), so
  a peer presenting any other certificate fails the handshake. Host names are not checked: the
  pin is stronger than a name.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    # Built by hand, not with create_default_context(): that one loads the system's public
    # CAs, which must never be trusted between nodes.
    protocol = (
        ssl.PROTOCOL_TLS_SERVER if purpose == ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def _pem(certs: Iterable[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def server_context(
    cert_file: Path,
    key_file: Path,
    *,
    password: bytes | None = None,
    client_roots: Iterable[x509.Certificate] = (),
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server context; with ``require_client_cert`` peers must chain to ``client_roots``."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert_file), str(key_file), password=password)
    roots = _pem(client_roots)
    if roots:
        ctx.load_verify_locations(cadata=roots)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    if not roots:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pinned_client_context(
    cert_file: Path,
    key_file: Path,
    pinned: Iterable[x509.Certificate],
    *,
    password: bytes | None = None,
) -> ssl.SSLContext:
    """A client context presenting our certificate and accepting only ``pinned`` peers."""
    ctx = _base(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=_pem(pinned))
    ctx.load_cert_chain(str(cert_file), str(key_file), password=password)
    return ctx
