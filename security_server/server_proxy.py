"""The provider side of a node: signed requests in from other nodes, signed responses out.

Rules (transport v1 §9 gives the order; each step stops the request with its fault):

1. The TLS peer presents an authentication certificate the global configuration lists for a
   node (``SslAuthenticationFailed``); the configuration is current (``OutdatedGlobalConf``);
   that certificate's OCSP status, asked of its CA's responder and cached per certificate, is
   good and fresh (``CertValidation``, :class:`security_server.peer_trust.PeerAuthStatus`).
2. ``POST /jisr/v1/exchange`` only; the body is read with a size limit (``RequestTooLarge``),
   decoded and its signature verified (``gateway.transport``), with a cache of verified batch
   signatures shared by all requests.
3. The signer is a trusted, unrevoked certificate of the client's member
   (``security_server.peer_trust``).
4. From here on the request is trusted, and every fault is returned as a *signed* response of
   the provider member (status and ``X-Road-Error`` inside the signed part, a JSON or SOAP
   fault as body), so the consumer can prove what the provider's node answered. Before that,
   and when signing itself fails, faults are plain JSON with ``X-Road-Error`` (transport §3).
5. The sending node hosts the client; the message id was not seen before (by any process of
   the node, :mod:`security_server.replay_store`, when the node has a database; else by this
   process); ``target_server``,
   when set, names this node; the service exists, is enabled, and the client has the access
   right (SOAP: also the SOAP header equals the signed part).
6. The service is called at its address, with its timeout and TLS setting, redirects not
   followed. SOAP answers must be SOAP and echo the request's headers; the node appends
   ``requestHash``. REST answers pass as they are, minus hop-by-hop headers.
7. Metaservices addressed to a provider subsystem (``listMethods``, ``allowedMethods``,
   ``getWsdl``, ``getOpenAPI``) are answered from the catalogue (``security_server.metaservices``).

Bodies and secrets are never logged; each request's log lines carry message id, client and
service.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Final

import asyncpg
import structlog
from aiohttp import web
from cryptography import x509

from config.errors import JisrError
from gateway.faults import SERVER_PROXY, FaultError, from_error, server_proxy_fault
from gateway.globalconf import GlobalConf, SecurityServer
from gateway.log_record import LogEntry
from gateway.multipart import parse_content_type, parse_multipart
from gateway.rest import HEADER_ERROR, forwardable_headers, rest_error
from gateway.soap import (
    SoapFaultResponse,
    SoapMessage,
    add_request_hash,
    check_response_consistent,
    compute_request_hash,
    parse_soap_request,
    parse_soap_response,
)
from gateway.soap_fault import SOAP_FAULT_HTTP_STATUS, soap_fault
from gateway.transport import (
    EXCHANGE_PATH,
    ReplayGuard,
    RequestPart,
    ResponsePart,
    TransportMessage,
    VerifiedMessage,
    VerifiedSignatureCache,
    decode_message,
    encode_message,
    max_message_bytes,
    verify_message,
)
from security_server import metaservices
from security_server.peer_trust import (
    PeerAuthStatus,
    PeerTrust,
    certificates_der,
    load_peer_certificate,
)
from security_server.replay_store import PostgresReplayStore
from security_server.runtime import LocalService, MessageLog, NodeRuntime
from security_server.transport_client import MessageSealer, TransportClient

log = structlog.get_logger("jisr.server_proxy")

_SOAP_REQUEST_HEADERS: Final = frozenset({"content-type", "soapaction"})
_CHUNK: Final = 64 * 1024

Answer = tuple[int, tuple[tuple[str, str], ...], bytes]


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


def peer_certificate(request: web.BaseRequest) -> x509.Certificate | None:
    """The certificate the TLS peer presented on this request's connection, if any."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return load_peer_certificate(der) if der else None


async def read_limited(
    request: web.BaseRequest, limit: int, fault: Callable[[], FaultError]
) -> bytes:
    """The request body, refusing more than ``limit`` bytes with the fault ``fault`` makes
    (made only then: a fault draws a random detail id)."""
    if request.content_length is not None and request.content_length > limit:
        raise fault()
    if not request.body_exists:
        return b""
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise fault()
        chunks.append(chunk)
    return b"".join(chunks)


def plain_fault_response(fault: FaultError) -> web.Response:
    """Transport §3: an unsigned JSON fault with ``X-Road-Error``."""
    status, headers, body = rest_error(fault)
    return web.Response(status=status, body=body, headers=dict(headers))


class _Trusted(Exception):
    """Internal: a fault found after the request was trusted; answered as a signed response."""

    def __init__(self, part: RequestPart, conf: GlobalConf, fault: FaultError) -> None:
        super().__init__(fault.message)
        self.part = part
        self.conf = conf
        self.fault = fault


class ServerProxy:
    """Handles ``POST /jisr/v1/exchange`` for one node."""

    def __init__(
        self,
        runtime: NodeRuntime,
        transport: TransportClient,
        *,
        sealer: MessageSealer | None = None,
        peer_trust: PeerTrust | None = None,
        replay_guard: ReplayGuard | None = None,
        replay_store: PostgresReplayStore | None = None,
        peer_status: PeerAuthStatus | None = None,
        verified_cache: VerifiedSignatureCache | None = None,
        message_log: MessageLog | None = None,
    ) -> None:
        self._rt = runtime
        self._log = message_log
        self._transport = transport
        self._sealer = sealer or MessageSealer(runtime.signers, runtime.clock)
        self._trust = peer_trust or PeerTrust()
        self._replay = replay_guard or ReplayGuard()
        self._replay_store = replay_store
        self._peer_status = peer_status or transport.peer_status
        self._verified = verified_cache or VerifiedSignatureCache()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except _Trusted as trusted:
            return await self._signed_fault(trusted.part, trusted.conf, trusted.fault)
        except FaultError as exc:
            return self._refused(exc)
        except JisrError as exc:
            return self._refused(from_error(exc, SERVER_PROXY))
        except Exception:
            internal = server_proxy_fault(
                "InternalError", "the provider's node failed; its log has the details"
            )
            log.exception("server proxy failed", detail=internal.detail)
            return plain_fault_response(internal)

    @staticmethod
    def _refused(fault: FaultError) -> web.Response:
        log.warning(
            "request refused", fault=fault.fault_code, detail=fault.detail, reason=fault.message
        )
        return plain_fault_response(fault)

    def _conf(self) -> GlobalConf:
        now = self._rt.clock()
        try:
            return self._rt.conf.current(now)
        except FaultError as exc:
            raise (exc if exc.prefix == SERVER_PROXY else exc.with_prefix(SERVER_PROXY)) from exc

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        now = self._rt.clock()
        conf = self._conf()
        peer_cert = peer_certificate(request)
        peer = self._trust.check_peer_node(peer_cert, conf, now=now, prefix=SERVER_PROXY)
        assert peer_cert is not None  # check_peer_node refuses a peer without one
        await self._peer_status.require_good(peer_cert, conf, node=peer.id, prefix=SERVER_PROXY)
        if request.path != EXCHANGE_PATH:
            fault = server_proxy_fault(
                "InvalidRequest", f"{request.path} is not served here; use POST {EXCHANGE_PATH}"
            )
            fault.http_status = 404
            raise fault
        if request.method != "POST":
            fault = server_proxy_fault(
                "InvalidHttpMethod", f"{EXCHANGE_PATH} takes POST, not {request.method}"
            )
            fault.http_status = 405
            raise fault
        max_body = self._rt.settings.max_body_bytes
        limit = max_message_bytes(max_body)
        data = await read_limited(
            request,
            limit,
            lambda: server_proxy_fault(
                "RequestTooLarge", f"the message exceeds this node's limit of {limit} bytes"
            ),
        )
        message = decode_message(request.headers.get("Content-Type"), data, max_body_bytes=max_body)
        part = message.signed_part
        if not isinstance(part, RequestPart):
            raise server_proxy_fault("InvalidMessage", "the message is a response, not a request")
        with structlog.contextvars.bound_contextvars(
            message_id=part.message_id, client=str(part.client), service=str(part.service)
        ):
            verified = verify_message(message, verified_cache=self._verified, now=now)
            self._trust.check_signer(
                verified, part.client.member, conf, now=now, prefix=SERVER_PROXY
            )
            try:
                await self._log_and_admit(message, verified, peer, conf)
                status, headers, body = await self._serve(part, message.body, conf)
            except FaultError as fault:
                raise _Trusted(part, conf, fault) from fault
            except JisrError as exc:
                raise _Trusted(part, conf, from_error(exc, SERVER_PROXY)) from exc
            response = await self._sealed_response(part, conf, status, headers, body)
            log.debug("request served", status=status, peer=str(peer.id))
            return response

    def _log_body(self, part: RequestPart) -> bool:
        provider = self._rt.catalogue.client(part.service.provider)
        return provider.body_logging if provider is not None else True

    async def _log_and_admit(
        self,
        message: TransportMessage,
        verified: VerifiedMessage,
        peer: SecurityServer,
        conf: GlobalConf,
    ) -> None:
        """Log the verified request and, at the same time, check that it may be served.

        The two wait on different database statements, so they overlap instead of adding
        up. Both finish before anything is forwarded; the log's failure is reported first
        (fail closed), then a refusal. A request refused here stays logged, as before the
        refusal it was.
        """
        part = message.signed_part
        assert isinstance(part, RequestPart)
        logged, admitted = await asyncio.gather(
            self._log_request(message, verified, conf),
            self._admit(part, peer),
            return_exceptions=True,
        )
        for outcome in (logged, admitted):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _log_request(
        self, message: TransportMessage, verified: VerifiedMessage, conf: GlobalConf
    ) -> None:
        if self._log is None:
            return
        part = message.signed_part
        assert isinstance(part, RequestPart)
        self._log.check_accepting(self._rt.clock(), prefix=SERVER_PROXY)
        await self._log.record(
            LogEntry.for_message(
                "request_in",
                part,
                signed_part_bytes=message.signed_part_bytes,
                body=message.body,
                log_body=self._log_body(part),
                signature=message.signature,
                proof=message.proof_bytes,
                certificates=certificates_der(verified.certificates),
                ocsp=message.ocsp,
                conf_version=conf.version,
            )
        )

    async def _sealed_response(
        self,
        part: RequestPart,
        conf: GlobalConf,
        status: int,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
    ) -> web.Response:
        answer = ResponsePart.answering(
            part, status=status, headers=headers, body=body, created_at=self._rt.clock()
        )
        seal = await self._sealer.seal(part.service.member, answer, prefix=SERVER_PROXY)
        content_type, data = encode_message(
            answer, body, seal.sealed.proof, seal.signature, seal.ocsp
        )
        if self._log is not None:
            await self._log.record(
                LogEntry.for_message(
                    "response_out",
                    answer,
                    signed_part_bytes=answer.to_bytes(),
                    body=body,
                    log_body=self._log_body(part),
                    signature=seal.signature,
                    proof=seal.sealed.proof,
                    certificates=seal.certificates_der,
                    ocsp=seal.ocsp,
                    conf_version=conf.version,
                )
            )
        return web.Response(status=200, body=data, headers={"Content-Type": content_type})

    async def _signed_fault(
        self, part: RequestPart, conf: GlobalConf, fault: FaultError
    ) -> web.StreamResponse:
        with structlog.contextvars.bound_contextvars(
            message_id=part.message_id, client=str(part.client), service=str(part.service)
        ):
            log.warning("request refused", fault=fault.fault_code, detail=fault.detail)
            if part.protocol == "SOAP":
                status = SOAP_FAULT_HTTP_STATUS
                headers: tuple[tuple[str, str], ...] = (
                    ("Content-Type", "text/xml; charset=utf-8"),
                    (HEADER_ERROR, fault.fault_code),
                )
                body = soap_fault(fault)
            else:
                status, headers, body = rest_error(fault)
            try:
                return await self._sealed_response(part, conf, status, headers, body)
            except FaultError as signing_failed:
                log.error(
                    "cannot sign or log the fault response",
                    fault=signing_failed.fault_code,
                    detail=signing_failed.detail,
                )
                return plain_fault_response(fault)

    # ---- serving a trusted request

    async def _admit(self, part: RequestPart, peer: SecurityServer) -> None:
        """Refuse a request its peer may not send, a replay, or one meant for another node."""
        now = self._rt.clock()
        self._trust.check_node_hosts(peer, part.client, prefix=SERVER_PROXY)
        if self._replay_store is None:
            self._replay.check_and_remember(part.client, part.message_id, part.created_at, now)
        else:
            # The shared store remembers every pair for the window. A copy in this process
            # too would grow with the request rate (about 0.5 KB a request: hundreds of MB
            # at a sustained few hundred requests per second) and save only the database
            # row of an actual replay.
            self._replay.check_time(part.created_at, now)
            await self._replay_store.check_and_remember(part.client, part.message_id, now)
        if part.target_server is not None and part.target_server != self._rt.server_id:
            raise server_proxy_fault(
                "InvalidSecurityServer",
                f"the request is addressed to node {part.target_server}, but this is node "
                f"{self._rt.server_id}",
            )

    async def _serve(self, part: RequestPart, body: bytes, conf: GlobalConf) -> Answer:
        if part.protocol == "SOAP":
            return await self._serve_soap(part, body, conf)
        return await self._serve_rest(part, body, conf)

    def _service(self, part: RequestPart, conf: GlobalConf, *, method: str | None) -> LocalService:
        catalogue = self._rt.catalogue
        service = catalogue.service(part.service)
        if service is None:
            raise server_proxy_fault(
                "UnknownService", f"service {part.service} is not provided by this node"
            )
        if not service.enabled:
            raise server_proxy_fault(
                "ServiceDisabled",
                service.disabled_notice or f"service {part.service} is disabled by its provider",
            )
        path = part.path or "/"
        if not catalogue.access_rights.allows(
            part.client,
            part.service,
            is_in_group=conf.is_in_group,
            method=method,
            path=path if method is not None else None,
        ):
            what = f"{method} {path} of " if method is not None else ""
            raise server_proxy_fault(
                "AccessDenied",
                f"client {part.client} has no access right to {what}service {part.service}; "
                "ask the provider to grant it",
            )
        return service

    async def _serve_rest(self, part: RequestPart, body: bytes, conf: GlobalConf) -> Answer:
        catalogue = self._rt.catalogue
        if metaservices.is_rest_metaservice(part) and catalogue.service(part.service) is None:
            return metaservices.answer_rest(part, catalogue, conf)
        # The description says how a service was published, not which protocol may reach it:
        # a REST call goes to the address plus its path, whatever the description's kind, so
        # one information system may offer a service code in both forms.
        service = self._service(part, conf, method=part.method)
        url = service.address.rstrip("/") + part.path
        if part.query is not None:
            url += "?" + part.query
        answer = await self._transport.call_service(
            part.method,
            url,
            part.headers,
            body,
            timeout_s=service.timeout_s,
            tls_verify=service.tls_verify,
            max_body_bytes=self._rt.settings.max_body_bytes,
        )
        try:
            headers = forwardable_headers(answer.headers)
        except FaultError as exc:
            raise server_proxy_fault(
                "InvalidResponse", f"the service answered with unusable headers: {exc.message}"
            ) from exc
        return answer.status, headers, answer.body

    async def _serve_soap(self, part: RequestPart, body: bytes, conf: GlobalConf) -> Answer:
        max_bytes = self._rt.settings.max_body_bytes
        content_type = _header(part.headers, "Content-Type") or ""
        request = parse_soap_request(body, content_type, max_bytes=max_bytes)
        _check_soap_matches(request, part)
        catalogue = self._rt.catalogue
        assert request.service is not None
        if (
            metaservices.is_soap_metaservice(request.service)
            and catalogue.service(part.service) is None
        ):
            status, headers, answer_body = metaservices.answer_soap(request, catalogue, conf)
            return status, headers, _with_request_hash(request, answer_body, headers)
        service = self._service(part, conf, method=None)
        forwarded = tuple((n, v) for n, v in part.headers if n.lower() in _SOAP_REQUEST_HEADERS)
        answer = await self._transport.call_service(
            "POST",
            service.address,
            forwarded,
            body,
            timeout_s=service.timeout_s,
            tls_verify=service.tls_verify,
            max_body_bytes=max_bytes,
        )
        answer_type = answer.header("Content-Type") or ""
        response = parse_soap_response(
            answer.body, answer_type, max_bytes=max_bytes, fault_prefix=SERVER_PROXY
        )
        headers = (("Content-Type", answer_type),)
        if isinstance(response, SoapFaultResponse):
            return answer.status, headers, answer.body
        check_response_consistent(request, response, prefix=SERVER_PROXY)
        return answer.status, headers, _with_request_hash(request, answer.body, headers, response)


def _check_soap_matches(request: SoapMessage, part: RequestPart) -> None:
    """Transport §5.4: the SOAP header must say what the signed part says."""
    pairs = (
        ("client", request.client, part.client),
        ("service", request.service, part.service),
        ("id", request.id, part.message_id),
        ("userId", request.user_id, part.user_id),
        ("issue", request.issue, part.issue),
    )
    for name, in_soap, signed in pairs:
        if in_soap != signed:
            raise server_proxy_fault(
                "InconsistentHeaders",
                f"the SOAP header's xrd:{name} differs from the signed request's",
            )


def _with_request_hash(
    request: SoapMessage,
    body: bytes,
    headers: tuple[tuple[str, str], ...],
    parsed: SoapMessage | None = None,
) -> bytes:
    """The response with ``xrd:requestHash`` in its SOAP part; attachments stay as they were.

    ``parsed`` is the response as already parsed, which saves parsing it again."""
    request_hash = compute_request_hash(request.soap_bytes).value
    content_type = _header(headers, "Content-Type") or ""
    if parse_content_type(content_type)[0] != "multipart/related":
        return add_request_hash(body, request_hash, parsed=parsed)
    multipart = parse_multipart(body, content_type, max_bytes=len(body) + 1)
    root = multipart.root.data
    start = body.find(root)
    if start < 0:  # pragma: no cover - the parser cut the root part out of this very body
        raise server_proxy_fault("InternalError", "cannot locate the SOAP part of the response")
    return body[:start] + add_request_hash(root, request_hash) + body[start + len(root) :]


SERVER_PROXY_KEY: Final = web.AppKey("jisr_server_proxy", ServerProxy)


def server_proxy_app(
    runtime: NodeRuntime,
    *,
    transport: TransportClient,
    message_log: MessageLog | None = None,
    database: asyncpg.Pool | None = None,
) -> web.Application:
    """The aiohttp application for the node-to-node listener (port 5500, mutual TLS).

    The listener's SSL context must require client certificates chaining to the approved CAs
    (``security_server.tls.server_context(..., require_client_cert=True)``); which node the
    peer is, whether its authentication certificate's OCSP status is good (through
    ``transport.peer_status``), and whether it may speak for the request's client, is checked
    here per request. With ``message_log`` every trusted request and every signed response is
    logged before the exchange continues (fail closed). With ``database`` (the node database,
    its migrations applied) message ids are also checked against the replay store every
    process of the node shares, whose expired rows the application purges while it runs.
    """
    store = PostgresReplayStore(database) if database is not None else None
    proxy = ServerProxy(runtime, transport, message_log=message_log, replay_store=store)
    app = web.Application(
        client_max_size=max_message_bytes(runtime.settings.max_body_bytes),
        handler_args={"auto_decompress": False},
    )
    if store is not None:
        replay_store = store

        async def purge_while_running(_app: web.Application) -> AsyncIterator[None]:
            async with replay_store.purging(runtime.clock):
                yield

        app.cleanup_ctx.append(purge_while_running)
    app[SERVER_PROXY_KEY] = proxy
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app
