"""Real TLS handshakes on 127.0.0.1 between node contexts."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from security_server.tls import pinned_client_context, server_context
from tests.pki_factory import FixturePki, Issued


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes | None:
    """Connect once; return the client certificate the server saw (DER) or raise."""
    seen: list[bytes | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        seen.append(obj.getpeercert(binary_form=True) if obj else None)
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        try:
            if await reader.read() != b"ok":
                # With TLS 1.3 the server checks the client's certificate after the client
                # considers the handshake done; a refusal then shows as a closed stream.
                raise ConnectionResetError("the server closed the connection")
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return seen[0]


def _files(tmp_path: Path, issued: Issued, name: str) -> tuple[Path, Path]:
    return issued.write(tmp_path, name)


@pytest.fixture
def pki() -> FixturePki:
    return FixturePki.create()


async def test_mutual_tls_with_pinned_peer(pki: FixturePki, tmp_path: Path) -> None:
    provider = pki.authentication("IQ/GOV/NDC/ss1")
    consumer = pki.authentication("IQ/GOV/HJC/ss1")
    s_cert, s_key = _files(tmp_path, provider, "provider")
    c_cert, c_key = _files(tmp_path, consumer, "consumer")
    sctx = server_context(s_cert, s_key, client_roots=[pki.root.cert], require_client_cert=True)
    cctx = pinned_client_context(c_cert, c_key, [provider.cert])
    seen = await _handshake(sctx, cctx)
    assert seen == consumer.cert.public_bytes(serialization.Encoding.DER)


async def test_refuses_a_provider_that_is_not_the_pinned_one(
    pki: FixturePki, tmp_path: Path
) -> None:
    impostor = pki.authentication("IQ/GOV/NDC/ss1")
    registered = pki.authentication("IQ/GOV/NDC/ss1")
    s_cert, s_key = _files(tmp_path, impostor, "impostor")
    c_cert, c_key = _files(tmp_path, pki.authentication("IQ/GOV/HJC/ss1"), "consumer")
    sctx = server_context(s_cert, s_key, client_roots=[pki.root.cert], require_client_cert=True)
    cctx = pinned_client_context(c_cert, c_key, [registered.cert])
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(sctx, cctx)


async def test_server_refuses_client_without_certificate_from_an_approved_ca(
    pki: FixturePki, tmp_path: Path
) -> None:
    provider = pki.authentication("IQ/GOV/NDC/ss1")
    stranger = FixturePki.create(cn="Unapproved CA").authentication("IQ/GOV/X/ss1")
    s_cert, s_key = _files(tmp_path, provider, "provider")
    c_cert, c_key = _files(tmp_path, stranger, "stranger")
    sctx = server_context(s_cert, s_key, client_roots=[pki.root.cert], require_client_cert=True)
    cctx = pinned_client_context(c_cert, c_key, [provider.cert])
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await _handshake(sctx, cctx)


async def test_tls_below_1_2_is_refused(pki: FixturePki, tmp_path: Path) -> None:
    provider = pki.authentication("IQ/GOV/NDC/ss1")
    s_cert, s_key = _files(tmp_path, provider, "provider")
    sctx = server_context(s_cert, s_key)
    assert sctx.minimum_version == ssl.TLSVersion.TLSv1_2
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
        cctx.minimum_version = ssl.TLSVersion.TLSv1
        cctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await _handshake(sctx, cctx)
