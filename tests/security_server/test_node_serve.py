"""A registered node running for real: listeners, TLS on each side, status, OCSP stapling."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.globalconf import OutdatedGlobalConf
from gateway.identifiers import parse_client
from security_server.catalogue_store import CatalogueStore
from security_server.node import running_node
from security_server.node_dir import NodeDir, sha256_fingerprint
from security_server.node_keys import NodeKeys
from security_server.registration import register_server
from tests.pki_factory import FixturePki, Issued, new_key
from tests.security_server.test_node_setup import (
    PASSPHRASE,
    SERVER,
    Network,
    network,
    utc_now,
    wait_for_server_in_conf,
)
from tests.security_server.two_nodes import node_database

__all__ = ["network"]  # the fixture, imported to be used here

pytestmark = pytest.mark.postgres


@pytest.fixture
async def node_pool(pg_server_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    """A second fresh database: the registry of the network fixture uses the first."""
    async with node_database(pg_server_url, tmp_path) as db:
        yield db.pool


async def _registered_node(network: Network, session: aiohttp.ClientSession) -> NodeDir:
    directory = network.new_node()
    text = (directory / "node.toml").read_text()
    (directory / "node.toml").write_text(text.replace("admin_port = 4000", "admin_port = 0"))
    network.certify(directory)
    await register_server(NodeDir(directory), PASSPHRASE, session=session)
    await wait_for_server_in_conf(directory, SERVER)
    return NodeDir(directory)


def _client_context(node: NodeDir, *, with_auth_cert: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if with_auth_cert:
        keys = NodeKeys(node)
        tls = keys.tls_files(PASSPHRASE)
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=tls.key_passphrase)
    return ctx


async def _exchange(url: str, ctx: ssl.SSLContext) -> tuple[x509.Certificate, bytes]:
    """The server's certificate and the first bytes of its HTTP answer to a GET."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=ctx, ssl_shutdown_timeout=1), timeout=10
    )
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(12), timeout=10)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der), answer
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout=5)


async def _refused(url: str, ctx: ssl.SSLContext) -> bool:
    """True if the TLS server refuses us (with TLS 1.3 only once it would first answer)."""
    try:
        _, answer = await _exchange(url, ctx)
    except (ssl.SSLError, ConnectionError):
        return True
    return not answer.startswith(b"HTTP/")


async def test_serves_all_listeners_with_status_and_stapled_ocsp(
    network: Network, session: aiohttp.ClientSession, node_pool: asyncpg.Pool
) -> None:
    node = await _registered_node(network, session)
    store = CatalogueStore(node_pool)
    key = await store.create_api_key("test", "ops", "operator")
    async with running_node(node, PASSPHRASE, pool=node_pool) as running:
        endpoints = json.loads(node.endpoints_file.read_text())
        assert endpoints["server_id"] == SERVER
        assert set(running.endpoints) == {"client_http", "client_https", "server", "admin"}
        assert running.endpoints["server"].startswith("https://127.0.0.1:")
        assert endpoints["admin"] == running.endpoints["admin"]

        async with session.get(
            running.endpoints["admin"] + "/api/v1/status",
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            status = await resp.json()
        assert status["server_id"] == SERVER
        assert status["global_configuration"]["in_force"] is True
        assert [c["ocsp"]["state"] for c in status["certificates"]] == ["good", "good"]

        auth = running.runtime.tls.certificate
        assert running.runtime.signers.ocsp_for(auth) is not None
        assert len(list(node.ocsp_dir.iterdir())) == 2

        # Server side: mutual TLS with a certificate from an approved CA.
        peer, answer = await _exchange(
            running.endpoints["server"], _client_context(node, with_auth_cert=True)
        )
        assert (peer, answer[:5]) == (auth, b"HTTP/")
        assert await _refused(
            running.endpoints["server"], _client_context(node, with_auth_cert=False)
        )

        # Client side HTTPS presents the internal certificate whose hash init printed.
        internal, _ = await _exchange(
            running.endpoints["client_https"], _client_context(node, with_auth_cert=False)
        )
        assert sha256_fingerprint(internal) == running.internal_tls_sha256

        async with session.get(running.endpoints["client_http"] + "/r1/nothing") as resp:
            assert resp.status >= 400  # answered by the client proxy, as a fault

        # A change made by another process (a `jisr node` command) reaches the running node.
        await CatalogueStore(node_pool).add_client("cli", "IQ/GOV/HJC/inheritance")
        for _ in range(100):
            if running.catalogue.client(parse_client("IQ/GOV/HJC/inheritance")):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the running node did not see the new client")
    assert not node.endpoints_file.exists()
    port = running.endpoints["admin"].rsplit(":", 1)[1]
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", int(port))


async def test_starts_without_registry_and_refuses_exchange_until_configured(
    network: Network, session: aiohttp.ClientSession, node_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    directory = network.new_node()
    network.certify(directory)
    node = NodeDir(directory)
    (directory / "node.toml").write_text(
        (directory / "node.toml").read_text().replace("admin_port = 4000", "admin_port = 0")
    )
    anchor = json.loads(node.anchor_file.read_text())
    anchor["sources"] = [{"url": "http://127.0.0.1:9/globalconf/current"}]
    node.anchor_file.write_bytes(json.dumps(anchor, sort_keys=True, separators=(",", ":")).encode())
    async with running_node(node, PASSPHRASE, pool=node_pool) as running:
        with pytest.raises(OutdatedGlobalConf):
            running.runtime.conf.current(utc_now())
        assert running.runtime.signers.ocsp_for(running.runtime.tls.certificate) is None
        assert await _refused(
            running.endpoints["server"], _client_context(node, with_auth_cert=True)
        )


def _self_signed(cn: str) -> Issued:
    """An information system's own TLS certificate, as such systems usually have."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    now = utc_now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _context_with(issued: Issued, tmp: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    cert_file, key_file = issued.write(tmp, name)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(100):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the running node did not follow the change")


async def test_listeners_follow_approved_cas_and_client_certificates(
    network: Network,
    session: aiohttp.ClientSession,
    node_pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    node = await _registered_node(network, session)
    other_ca = FixturePki.create(now=utc_now(), cn="Second Approved CA")
    peer = other_ca.authentication("IQ/GOV/NDC/ss9")
    system = _self_signed("population.ndc.gov.iq")
    async with running_node(node, PASSPHRASE, pool=node_pool) as running:
        server_url = running.endpoints["server"]
        peer_ctx = _context_with(peer, tmp_path, "peer")
        assert await _refused(server_url, peer_ctx)

        await network.store.add_ca(
            "test", "Second CA", other_ca.root.cert.public_bytes(Encoding.DER)
        )

        async def peer_accepted() -> bool:
            running.conf.wake()
            return not await _refused(server_url, _context_with(peer, tmp_path, "peer"))

        await _eventually(peer_accepted)
        assert running.endpoints["server"] == server_url  # same port after re-binding

        # Client side: once a client certificate is registered, the HTTPS listener asks for
        # one and accepts only registered certificates.
        https_url = running.endpoints["client_https"]
        first = _self_signed("cases.hjc.gov.iq")
        await CatalogueStore(node_pool).add_client(
            "cli", "IQ/GOV/HJC/inheritance", connection_type="https_cert", tls_certs=[first.cert]
        )

        async def system_refused() -> bool:
            return await _refused(https_url, _context_with(system, tmp_path, "system"))

        await _eventually(system_refused)
        assert not await _refused(https_url, _context_with(first, tmp_path, "first"))
        await CatalogueStore(node_pool).add_client(
            "cli", "IQ/GOV/HJC/cases", connection_type="https_cert", tls_certs=[system.cert]
        )

        async def system_accepted() -> bool:
            return not await _refused(https_url, _context_with(system, tmp_path, "system"))

        await _eventually(system_accepted)
