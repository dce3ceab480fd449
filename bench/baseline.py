"""The baseline: the same path as the nodes' through two plain TLS reverse proxies.

``client → front proxy (HTTP in) → mutual TLS → back proxy → service``: what any relay of
requests between two organisations costs at least, with no signing, no verification, no access
checks and no logging. The benchmark's ratio compares the nodes against it.

Rules:

- Each proxy is its own process (``python -m bench.baseline front|back``), like each node.
- The TLS between the proxies is set up as between nodes (:mod:`security_server.tls`): TLS 1.2+,
  both ends present a certificate, the front proxy pins the back proxy's certificate and the
  back proxy requires the front's. The certificates are throw-away, self-signed P-256 ones made
  by :func:`make_tls_pair` for one run.
- Both proxies buffer whole bodies (as a node must, to sign and log them), pass headers as a node
  does (:func:`gateway.rest.forwardable_headers`) and keep a pool of keep-alive connections
  upstream; request bodies are limited to :data:`MAX_BODY_BYTES`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from bench.processes import run_event_loop, wait_for_stop_signal
from gateway.faults import FaultError
from gateway.rest import forwardable_headers
from jisr.processes import announce_ready
from security_server.tls import pinned_client_context, server_context
from trust_services.http_server import serve_app

MAX_BODY_BYTES: Final = 10 * 1024 * 1024
#: Keep-alive connections a proxy keeps to its upstream at most.
UPSTREAM_POOL: Final = 512
UPSTREAM_TIMEOUT_S: Final = 30.0
_CERT_VALIDITY = dt.timedelta(days=2)
_SESSION: Final = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM: Final = web.AppKey("upstream", str)


@dataclasses.dataclass(frozen=True)
class TlsPair:
    """The two proxies' certificate and key files (PEM, keys unencrypted, mode 0600)."""

    dir: Path
    front_cert: Path
    front_key: Path
    back_cert: Path
    back_key: Path


def _self_signed(
    name: str, now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make_tls_pair(directory: Path, *, now: dt.datetime) -> TlsPair:
    """Create throw-away certificates for the two proxies in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for role in ("front", "back"):
        key, cert = _self_signed(f"Jisr bench baseline {role} proxy", now)
        cert_path, key_path = directory / f"{role}.pem", directory / f"{role}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    return tls_pair_in(directory)


def tls_pair_in(directory: Path) -> TlsPair:
    """The files :func:`make_tls_pair` wrote to ``directory``."""
    names = ("front.pem", "front.key", "back.pem", "back.key")
    return TlsPair(directory, *(directory / name for name in names))


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def front_client_context(pair: TlsPair) -> ssl.SSLContext:
    """The front proxy's outgoing context: presents its certificate, accepts only the back's."""
    return pinned_client_context(pair.front_cert, pair.front_key, [_certificate(pair.back_cert)])


def back_server_context(pair: TlsPair) -> ssl.SSLContext:
    """The back proxy's listening context: requires the front proxy's certificate."""
    return server_context(
        pair.back_cert,
        pair.back_key,
        client_roots=[_certificate(pair.front_cert)],
        require_client_cert=True,
    )


async def _forward(request: web.Request) -> web.Response:
    session = request.app[_SESSION]
    upstream = request.app[_UPSTREAM]
    body = await request.read()
    try:
        headers = forwardable_headers(request.headers)
    except FaultError as fault:
        return web.json_response({"error": fault.fault_code, "message": fault.message}, status=400)
    try:
        async with session.request(
            request.method,
            URL(upstream + request.raw_path, encoded=True),
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as answer:
            payload = await answer.read()
            status = answer.status
            answer_headers = forwardable_headers(answer.headers)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return web.json_response(
            {"error": "upstream", "message": f"{type(exc).__name__}: {exc}"}, status=502
        )
    except FaultError as fault:
        return web.json_response({"error": fault.fault_code, "message": fault.message}, status=502)
    return web.Response(status=status, headers=answer_headers, body=payload)


def proxy_app(upstream: str, client_ssl: ssl.SSLContext | None = None) -> web.Application:
    """A reverse proxy to ``upstream`` (base URL); ``client_ssl`` for an HTTPS upstream."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[_UPSTREAM] = upstream.rstrip("/")

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(
            limit=UPSTREAM_POOL, limit_per_host=UPSTREAM_POOL, ssl=client_ssl or True
        )
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
            auto_decompress=False,
        ) as session:
            app[_SESSION] = session
            yield

    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


@contextlib.asynccontextmanager
async def running_proxy(
    upstream: str,
    *,
    client_ssl: ssl.SSLContext | None = None,
    server_ssl: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """Serve one proxy on 127.0.0.1 while the block runs; yields its URL."""
    async with serve_app(
        proxy_app(upstream, client_ssl), ssl_context=server_ssl, shutdown_timeout=1.0
    ) as url:
        yield url


async def _serve(role: str, upstream: str, pair: TlsPair) -> None:
    if role == "front":
        proxy = running_proxy(upstream, client_ssl=front_client_context(pair))
    else:
        proxy = running_proxy(upstream, server_ssl=back_server_context(pair))
    async with proxy as url:
        announce_ready(url=url, pid=os.getpid())
        await wait_for_stop_signal()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.baseline", description="One reverse proxy of the baseline."
    )
    parser.add_argument("role", choices=["front", "back"])
    parser.add_argument("--upstream", required=True, help="base URL requests are relayed to")
    parser.add_argument("--tls-dir", type=Path, required=True, help="made by make_tls_pair")
    args = parser.parse_args(argv)
    pair = tls_pair_in(args.tls_dir)
    run_event_loop(_serve(args.role, args.upstream, pair))


if __name__ == "__main__":
    main()
