"""Outgoing traffic of a node: sealing transport messages, calling provider nodes and services.

Rules:

- One pooled keep-alive ``aiohttp.ClientSession`` reaches other nodes. Each request pins the
  provider node: the TLS context trusts exactly those authentication certificates the global
  configuration lists for that node that have a good, fresh OCSP status
  (``security_server.tls.pinned_client_context``,
  :class:`security_server.peer_trust.PeerAuthStatus`, which this client owns for its node
  process). A node none of whose certificates is good is not connected to
  (``Server.ClientProxy.CertValidation`` when no node is left). Contexts are cached per pinned
  set, so connections to a node are reused.
- A second session calls this node's own information systems (the provider side), with the
  service's timeout and TLS-verification setting. Neither session follows redirects or
  decompresses bodies: bytes travel exactly as the other side sent them.
- Answers are read with a size limit; nothing is buffered without bound.
- When several nodes serve a provider, they are tried fastest first (by the last observed
  answer time); a node that cannot be connected to is skipped and tried last for a while.
  Only connection failures move on to the next node: once a request was sent it is never sent
  twice.
- :class:`MessageSealer` signs transport messages per member in batches: messages queued in the
  same event-loop turn share one signature (transport v1 §6); an idle node signs at once.
- Errors are :class:`~gateway.faults.FaultError`: ``Server.ClientProxy.*`` towards provider
  nodes, ``Server.ServerProxy.ServiceFailed.*`` towards services.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ssl
import time
from collections.abc import Iterable, Sequence

import aiohttp
import structlog
from cryptography import x509
from multidict import CIMultiDict
from yarl import URL

from certs.signer import Signer
from config.errors import JisrError
from gateway.faults import CLIENT_PROXY, SERVER_PROXY, FaultError, from_error
from gateway.globalconf import GlobalConf, SecurityServer
from gateway.identifiers import MemberId
from gateway.transport import (
    CONTENT_TYPE,
    EXCHANGE_PATH,
    BatchSigner,
    Sealed,
    SignedPart,
    max_message_bytes,
)
from security_server.peer_trust import PeerAuthStatus, certificate_der, certificates_der
from security_server.runtime import Clock, MemberSigners, NodeRuntime
from security_server.tls import pinned_client_context

log = structlog.get_logger("jisr.transport_client")

#: How long a node that could not be connected to is tried after the others.
_FAILED_NODE_PENALTY_S = 60.0
_CHUNK = 64 * 1024
_READ_METHODS_WITHOUT_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def _fault(prefix: str, name: str, message: str) -> FaultError:
    return FaultError(f"{prefix}.{name}", message)


@dataclasses.dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP answer read completely: status, headers in order, body bytes."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


class AnswerTooLarge(Exception):
    """Internal: an answer exceeded the caller's limit (turned into a fault by the caller)."""


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise AnswerTooLarge(f"the answer announces {response.content_length} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise AnswerTooLarge(f"the answer is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class TransportClient:
    """The node's outgoing HTTP: to provider nodes (pinned mTLS) and to its own services."""

    def __init__(
        self,
        runtime: NodeRuntime,
        *,
        max_connections: int = 200,
        max_connections_per_node: int = 50,
        peer_status: PeerAuthStatus | None = None,
    ) -> None:
        self._runtime = runtime
        #: OCSP verdicts about other nodes' authentication certificates, for both node sides.
        self.peer_status = peer_status or PeerAuthStatus(
            clock=runtime.clock, preference=runtime.ocsp_preference
        )
        self._max_connections = max_connections
        self._max_per_host = max_connections_per_node
        self._nodes: aiohttp.ClientSession | None = None
        self._services: aiohttp.ClientSession | None = None
        self._pinned: dict[frozenset[bytes], ssl.SSLContext] = {}
        self._service_tls: dict[bool, ssl.SSLContext] = {}
        self._answer_time: dict[str, float] = {}
        self._failed_until: dict[str, float] = {}

    # ---- sessions

    def _node_session(self) -> aiohttp.ClientSession:
        if self._nodes is None or self._nodes.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=self._max_per_host,
                keepalive_timeout=30,
            )
            self._nodes = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._nodes

    def _service_session(self) -> aiohttp.ClientSession:
        if self._services is None or self._services.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=self._max_per_host
            )
            self._services = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._services

    async def close(self) -> None:
        await self.peer_status.close()
        for session in (self._nodes, self._services):
            if session is not None and not session.closed:
                await session.close()
        self._nodes = self._services = None

    # ---- TLS contexts

    def _pinned_context(self, pinned: Sequence[x509.Certificate]) -> ssl.SSLContext:
        key = frozenset(certificate_der(c) for c in pinned)
        ctx = self._pinned.get(key)
        if ctx is None:
            tls = self._runtime.tls
            ctx = pinned_client_context(
                tls.cert_file, tls.key_file, pinned, password=tls.key_passphrase
            )
            if len(self._pinned) > 1024:
                self._pinned.clear()
            self._pinned[key] = ctx
        return ctx

    def _service_context(self, verify: bool) -> ssl.SSLContext:
        ctx = self._service_tls.get(verify)
        if ctx is None:
            if verify:
                ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._service_tls[verify] = ctx
        return ctx

    # ---- provider nodes

    def order_nodes(self, servers: Sequence[SecurityServer]) -> list[SecurityServer]:
        """Fastest first; nodes that failed recently go last, untried ones are tried early."""
        now = time.monotonic()

        def rank(server: SecurityServer) -> tuple[int, float]:
            key = str(server.id)
            failed = self._failed_until.get(key, 0.0) > now
            return (1 if failed else 0, self._answer_time.get(key, 0.0))

        return sorted(servers, key=rank)

    async def exchange(
        self,
        servers: Sequence[SecurityServer],
        data: bytes,
        *,
        conf: GlobalConf,
        timeout_s: float,
        max_body_bytes: int,
    ) -> tuple[SecurityServer, HttpAnswer]:
        """POST a sealed request to the first node that accepts a connection; its answer.

        Only authentication certificates of the node with a good, fresh OCSP status under
        ``conf`` are accepted from it; a node with none is skipped before anything is sent.
        """
        settings = self._runtime.settings
        errors: list[str] = []
        tls_failures = 0
        status_refusals = 0
        for server in self.order_nodes(servers):
            url = f"https://{server.address}{EXCHANGE_PATH}"
            if not server.auth_certs:
                errors.append(f"{server.id} has no registered authentication certificate")
                tls_failures += 1
                continue
            good, refused = await self.peer_status.good_certificates(
                server, conf, prefix=CLIENT_PROXY
            )
            if not good:
                if all(f.fault_code.endswith(".CertValidation") for f in refused):
                    status_refusals += 1
                else:
                    tls_failures += 1
                errors.append(f"{server.id}: " + "; ".join(f.message for f in refused))
                continue
            started = time.monotonic()
            timeout = aiohttp.ClientTimeout(
                total=timeout_s, sock_connect=settings.connect_timeout_s
            )
            try:
                ctx = self._pinned_context(good)
                async with self._node_session().post(
                    url,
                    # A file-like body: aiohttp warns about (and blocks on) large raw bytes.
                    data=io.BytesIO(data),
                    headers={"Content-Type": CONTENT_TYPE},
                    ssl=ctx,
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    body = await _read_limited(response, max_message_bytes(max_body_bytes))
                    headers = tuple((k, v) for k, v in response.headers.items())
                    answer = HttpAnswer(response.status, headers, body)
            except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
                self._failed(server)
                tls_failures += 1
                not_pinned = "".join(f"; not accepted: {f.message}" for f in refused)
                errors.append(f"{server.id}: TLS authentication failed ({exc}){not_pinned}")
                continue
            except aiohttp.ClientConnectorError as exc:
                self._failed(server)
                errors.append(f"{server.id}: cannot connect ({exc.strerror or exc})")
                continue
            except AnswerTooLarge as exc:
                raise _fault(
                    CLIENT_PROXY, "InvalidResponse", f"node {server.id} answered too much: {exc}"
                ) from exc
            except TimeoutError as exc:
                raise _fault(
                    CLIENT_PROXY,
                    "NetworkError",
                    f"node {server.id} did not answer within {timeout_s:g} s",
                ) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise _fault(
                    CLIENT_PROXY,
                    "NetworkError",
                    f"the exchange with node {server.id} failed: {exc}",
                ) from exc
            self._answer_time[str(server.id)] = time.monotonic() - started
            self._failed_until.pop(str(server.id), None)
            return server, answer
        if errors and status_refusals == len(errors):
            name, summary = "CertValidation", "no node serving the provider can be trusted now"
        elif tls_failures + status_refusals == len(errors):
            name, summary = (
                "SslAuthenticationFailed",
                "no node serving the provider could be reached",
            )
        else:
            name, summary = "NetworkError", "no node serving the provider could be reached"
        raise _fault(CLIENT_PROXY, name, f"{summary}: " + "; ".join(errors))

    def _failed(self, server: SecurityServer) -> None:
        self._failed_until[str(server.id)] = time.monotonic() + _FAILED_NODE_PENALTY_S

    # ---- services (provider side)

    async def call_service(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        timeout_s: float,
        tls_verify: bool,
        max_body_bytes: int,
    ) -> HttpAnswer:
        """Call an information system of this node; failures are ``ServiceFailed.*``."""
        settings = self._runtime.settings
        timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(timeout_s, settings.connect_timeout_s)
        )
        data: io.BytesIO | None = io.BytesIO(body)
        if not body and method in _READ_METHODS_WITHOUT_BODY:
            data = None
        ssl_arg: ssl.SSLContext | bool = (
            self._service_context(tls_verify) if url.startswith("https:") else True
        )
        try:
            async with self._service_session().request(
                method,
                # encoded=True: the path and query reach the service byte for byte as the client
                # sent them (no re-quoting, no normalising of percent-escapes).
                URL(url, encoded=True),
                headers=CIMultiDict(headers),
                data=data,
                timeout=timeout,
                allow_redirects=False,
                ssl=ssl_arg,
            ) as response:
                answer_body = await _read_limited(response, max_body_bytes)
                answer_headers = tuple((k, v) for k, v in response.headers.items())
                return HttpAnswer(response.status, answer_headers, answer_body)
        except AnswerTooLarge as exc:
            raise _fault(
                SERVER_PROXY,
                "ServiceFailed.InvalidResponse",
                f"the service's answer is larger than this node's limit: {exc}",
            ) from exc
        except TimeoutError as exc:
            raise _fault(
                SERVER_PROXY,
                "ServiceFailed.IOError",
                f"the service did not answer within {timeout_s:g} s",
            ) from exc
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
            raise _fault(
                SERVER_PROXY,
                "ServiceFailed.NetworkError",
                f"cannot connect to the service: {exc}",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _fault(
                SERVER_PROXY, "ServiceFailed.IOError", f"the service call failed: {exc}"
            ) from exc


# ---- sealing --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Seal:
    """What travels with one message: its share of a batch signature, the signer's chain and
    the stapled OCSP response."""

    sealed: Sealed
    ocsp: bytes
    #: The signing certificate and its chain (signer first).
    certificates: tuple[x509.Certificate, ...]
    #: The same in DER, as the message log keeps them.
    certificates_der: tuple[bytes, ...]

    @property
    def signature(self) -> bytes:
        return self.sealed.signature


@dataclasses.dataclass(slots=True)
class _Waiting:
    part: SignedPart
    future: asyncio.Future[Seal]


class MessageSealer:
    """Signs outgoing signed parts per member, batching those queued in one loop turn."""

    def __init__(self, signers: MemberSigners, clock: Clock, *, max_batch: int = 1024) -> None:
        self._signers = signers
        self._clock = clock
        self._max_batch = max_batch
        self._pending: dict[tuple[MemberId, str], list[_Waiting]] = {}
        self._scheduled = False

    async def seal(self, member: MemberId, part: SignedPart, *, prefix: str) -> Seal:
        """The message's proof and batch signature, and the OCSP response to staple."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(part, loop.create_future())
        key = (member, prefix)
        queue = self._pending.setdefault(key, [])
        queue.append(waiting)
        if len(queue) >= self._max_batch:
            self._sign(key, self._pending.pop(key))
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await waiting.future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for key, queue in pending.items():
            self._sign(key, queue)

    def _sign(self, key: tuple[MemberId, str], queue: list[_Waiting]) -> None:
        member, prefix = key
        try:
            signer = self._signer(member, prefix)
            ocsp = self._signers.ocsp_for(signer.certificate)
            if not ocsp:
                raise _fault(
                    prefix,
                    "CannotCreateSignature",
                    f"there is no current OCSP response for member {member}'s signing "
                    "certificate; the node fetches one from the CA's OCSP responder, check that "
                    "it is reachable",
                )
            batch = BatchSigner(signer, max_batch=max(1, len(queue)))
            for waiting in queue:
                batch.add(waiting.part)
            sealed = batch.sign(now=self._clock(), prefix=prefix)
        except FaultError as exc:
            self._fail(queue, exc)
            return
        except Exception:
            # Runs as a loop callback: an escaping exception would leave every waiter hanging.
            fault = _fault(prefix, "CannotCreateSignature", "signing failed; see the node's log")
            log.exception("signing failed", member=str(member), detail=fault.detail)
            self._fail(queue, fault)
            return
        certificates = (signer.certificate, *signer.chain)
        ders = certificates_der(certificates)
        for waiting, one in zip(queue, sealed, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(Seal(one, ocsp, certificates, ders))
        if len(queue) > 1:
            log.debug("batch signed", member=str(member), size=len(queue))

    @staticmethod
    def _fail(queue: list[_Waiting], fault: FaultError) -> None:
        for waiting in queue:
            if not waiting.future.done():
                waiting.future.set_exception(fault)

    def _signer(self, member: MemberId, prefix: str) -> Signer:
        try:
            return self._signers.signer_for(member)
        except FaultError as exc:
            if exc.prefix == prefix:
                raise
            raise exc.with_prefix(prefix) from exc
        except JisrError as exc:
            raise from_error(exc, prefix) from exc
