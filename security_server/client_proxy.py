"""The client side of a node: X-Road SOAP and REST calls from the member's own systems.

Rules:

- Routing: ``GET /listClients`` is answered here from the global configuration;
  ``/r{n}/...`` is X-Road REST (PR-REST, ``gateway.rest``); any other ``POST`` is an X-Road
  SOAP message (PR-MESS, ``gateway.soap``). Request bodies are read with the node's size limit.
- Before anything leaves the node: the global configuration is current
  (``Server.ClientProxy.OutdatedGlobalConf``); the client is registered on this node, in the
  node's catalogue and in the configuration (``Server.ClientProxy.UnknownMember``); the client's
  connection type holds — an ``https`` client must use the HTTPS port, an ``https_cert`` client
  must also present a TLS certificate whose SHA-256 is registered for it
  (``Server.ClientProxy.SslAuthenticationFailed``); some node hosts the provider
  (``Server.ClientProxy.UnknownMember``), the one named by ``X-Road-Security-Server`` /
  ``xrd:securityServer`` when given (``Client.InvalidSecurityServer``).
- The request is signed with the client member's key (batched per member, transport v1 §6),
  its OCSP response stapled, and posted over pinned mutual TLS to the provider's node; only
  those of the node's listed authentication certificates whose OCSP status is good and fresh
  are pinned (``Server.ClientProxy.CertValidation`` when none is).
- The response is trusted only after: signature, signer certificate path to an approved CA at
  the current time, stapled OCSP good and fresh, signer is the provider's member, bound to our
  request's hash, created within the clock skew. SOAP responses must also echo the request's
  headers and carry its ``requestHash``.
- The provider's answer reaches the client unchanged: REST status, headers (minus hop-by-hop)
  and body plus the ``X-Road-*`` response headers; SOAP bytes exactly as the provider's node
  sent them. Faults from the provider's node keep their code and detail id.
- Errors are X-Road faults: SOAP Faults for SOAP, JSON ``{"type","message","detail"}`` with
  ``X-Road-Error`` for REST. Bodies and secrets are never logged.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Final

import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from config.errors import JisrError
from gateway.faults import (
    CLIENT_PROXY,
    FaultError,
    client_fault,
    client_proxy_fault,
    from_error,
)
from gateway.globalconf import GlobalConf, SecurityServer
from gateway.identifiers import ClientId, SecurityServerId
from gateway.log_record import LogEntry
from gateway.rest import (
    HEADER_ERROR,
    ListClientsRequest,
    parse_rest_request,
    response_headers,
    rest_error,
)
from gateway.soap import (
    SoapMessage,
    check_response_consistent,
    parse_soap_request,
    parse_soap_response,
    verify_request_hash,
)
from gateway.soap_fault import SOAP_FAULT_HTTP_STATUS, soap_fault
from gateway.transport import (
    CONTENT_TYPE,
    RequestPart,
    ResponsePart,
    TransportMessage,
    VerifiedMessage,
    VerifiedSignatureCache,
    body_digest,
    check_clock_skew,
    check_response,
    decode_message,
    encode_message,
    verify_message,
)
from security_server import metaservices
from security_server.peer_trust import PeerTrust, certificates_der
from security_server.runtime import LocalClient, MessageLog, NodeRuntime
from security_server.server_proxy import peer_certificate, read_limited
from security_server.transport_client import HttpAnswer, MessageSealer, TransportClient

log = structlog.get_logger("jisr.client_proxy")

_REST_PREFIX_RE: Final = re.compile(r"/r\d+/")
_SOAP_REQUEST_HEADERS: Final = frozenset({"content-type", "soapaction"})
#: Time a provider's node gets on top of the service timeout to verify, log and sign.
_EXCHANGE_MARGIN_S: Final = 10.0


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


def fault_from_json(status: int, body: bytes) -> FaultError | None:
    """A provider node's JSON fault (transport §3), keeping its code and detail id."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    code, message, detail = value.get("type"), value.get("message"), value.get("detail")
    if not isinstance(code, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.]{0,199}", code):
        return None
    fault = FaultError(code, message if isinstance(message, str) else "", http_status=status)
    if isinstance(detail, str) and detail:
        fault.detail = detail[:200]
    return fault


class ClientProxy:
    """Handles the calls of this node's information systems (ports 8080 / 8443)."""

    def __init__(
        self,
        runtime: NodeRuntime,
        transport: TransportClient,
        *,
        sealer: MessageSealer | None = None,
        peer_trust: PeerTrust | None = None,
        verified_cache: VerifiedSignatureCache | None = None,
        message_log: MessageLog | None = None,
    ) -> None:
        self._rt = runtime
        self._log = message_log
        self._transport = transport
        self._sealer = sealer or MessageSealer(runtime.signers, runtime.clock)
        self._trust = peer_trust or PeerTrust()
        self._verified = verified_cache or VerifiedSignatureCache()

    # ---- entry

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        soap = (
            request.method == "POST" and not _REST_PREFIX_RE.match(path) and path != "/listClients"
        )
        try:
            if soap:
                return await self._soap(request)
            return await self._rest(request)
        except FaultError as exc:
            return self._error(request, exc, soap=soap)
        except JisrError as exc:
            return self._error(request, from_error(exc, CLIENT_PROXY), soap=soap)
        except Exception:
            internal = client_proxy_fault(
                "InternalError", "the consumer's node failed; its log has the details"
            )
            log.exception("client proxy failed", detail=internal.detail)
            return self._error(request, internal, soap=soap)

    def _error(self, request: web.Request, fault: FaultError, *, soap: bool) -> web.Response:
        log.warning(
            "request refused", fault=fault.fault_code, detail=fault.detail, reason=fault.message
        )
        if soap:
            return web.Response(
                status=SOAP_FAULT_HTTP_STATUS,
                body=soap_fault(fault),
                content_type="text/xml",
                charset="utf-8",
            )
        status, headers, body = rest_error(fault, accept=request.headers.get("Accept"))
        return web.Response(status=status, body=body, headers=CIMultiDict(headers))

    async def _body(self, request: web.Request) -> bytes:
        limit = self._rt.settings.max_body_bytes
        return await read_limited(
            request,
            limit,
            lambda: FaultError(
                "Client.RequestTooLarge",
                f"the request body is over this node's limit of {limit} bytes; send less or ask "
                "the node operator to raise the limit",
                http_status=413,
            ),
        )

    # ---- checks before sending

    def _conf(self) -> GlobalConf:
        return self._rt.conf.current(self._rt.clock())

    def _local_client(
        self, request: web.Request, client: ClientId, conf: GlobalConf
    ) -> LocalClient:
        local = self._rt.catalogue.client(client)
        if local is None:
            raise client_proxy_fault(
                "UnknownMember",
                f"client {client} is not registered on this node; register the subsystem on "
                "the node (and have the registry approve it) before calling services",
            )
        if not any(s.id == self._rt.server_id for s in conf.servers_for_client(client)):
            raise client_proxy_fault(
                "UnknownMember",
                f"the global configuration does not list client {client} on node "
                f"{self._rt.server_id}; wait for the registry to approve the registration",
            )
        self._check_connection(request, local)
        return local

    def _check_connection(self, request: web.Request, local: LocalClient) -> None:
        if local.connection_type == "http":
            return
        transport = request.transport
        secure = transport is not None and transport.get_extra_info("ssl_object") is not None
        if not secure:
            raise client_proxy_fault(
                "SslAuthenticationFailed",
                f"client {local.client_id} must connect over HTTPS (the node's HTTPS port); "
                "plain HTTP is refused for it",
            )
        if local.connection_type != "https_cert":
            return
        cert = peer_certificate(request)
        if cert is None:
            raise client_proxy_fault(
                "SslAuthenticationFailed",
                f"client {local.client_id} must present its registered TLS client certificate",
            )
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        known = {h.lower().removeprefix("sha256:").replace(":", "") for h in local.tls_cert_hashes}
        if digest not in known:
            raise client_proxy_fault(
                "SslAuthenticationFailed",
                f"the TLS certificate presented (sha256 {digest}) is not registered for client "
                f"{local.client_id}",
            )

    def _provider_nodes(
        self, conf: GlobalConf, provider: ClientId, target: SecurityServerId | None
    ) -> list[SecurityServer]:
        servers = conf.servers_for_client(provider)
        if not servers:
            raise client_proxy_fault(
                "UnknownMember",
                f"no node in the global configuration serves provider {provider}; check the "
                "service identifier",
            )
        if target is not None:
            servers = [s for s in servers if s.id == target]
            if not servers:
                raise client_fault(
                    "InvalidSecurityServer",
                    f"node {target} does not serve provider {provider} according to the global "
                    "configuration",
                )
        return servers

    # ---- the exchange

    async def _exchange(
        self,
        conf: GlobalConf,
        local: LocalClient,
        part: RequestPart,
        body: bytes,
        servers: list[SecurityServer],
    ) -> tuple[ResponsePart, bytes]:
        settings = self._rt.settings
        if self._log is not None:
            self._log.check_accepting(self._rt.clock(), prefix=CLIENT_PROXY)
        seal = await self._sealer.seal(part.client.member, part, prefix=CLIENT_PROXY)
        _, data = encode_message(part, body, seal.sealed.proof, seal.signature, seal.ocsp)
        if self._log is not None:
            await self._log.record(
                LogEntry.for_message(
                    "request_out",
                    part,
                    signed_part_bytes=part.to_bytes(),
                    body=body,
                    log_body=local.body_logging,
                    signature=seal.signature,
                    proof=seal.sealed.proof,
                    certificates=seal.certificates_der,
                    ocsp=seal.ocsp,
                    conf_version=conf.version,
                )
            )
        server, answer = await self._transport.exchange(
            servers,
            data,
            conf=conf,
            timeout_s=settings.service_timeout_s + _EXCHANGE_MARGIN_S,
            max_body_bytes=settings.max_body_bytes,
        )
        response, message, verified = self._check_answer(conf, part, server, answer)
        if self._log is not None:
            await self._log.record(
                LogEntry.for_message(
                    "response_in",
                    response,
                    signed_part_bytes=message.signed_part_bytes,
                    body=message.body,
                    log_body=local.body_logging,
                    signature=message.signature,
                    proof=message.proof_bytes,
                    certificates=certificates_der(verified.certificates),
                    ocsp=message.ocsp,
                    conf_version=conf.version,
                )
            )
        return response, message.body

    def _check_answer(
        self, conf: GlobalConf, part: RequestPart, server: SecurityServer, answer: HttpAnswer
    ) -> tuple[ResponsePart, TransportMessage, VerifiedMessage]:
        content_type = answer.header("Content-Type") or ""
        if answer.status != 200 or not content_type.lower().startswith(CONTENT_TYPE):
            fault = None
            if answer.header(HEADER_ERROR) is not None:
                fault = fault_from_json(answer.status, answer.body)
            if fault is None:
                raise client_proxy_fault(
                    "InvalidResponse",
                    f"node {server.id} answered HTTP {answer.status} ({content_type or 'no type'}) "
                    "that is neither a transport message nor a fault",
                )
            raise fault
        now = self._rt.clock()
        message = decode_message(
            content_type,
            answer.body,
            max_body_bytes=self._rt.settings.max_body_bytes,
            prefix=CLIENT_PROXY,
        )
        verified = verify_message(
            message, verified_cache=self._verified, now=now, prefix=CLIENT_PROXY
        )
        self._trust.check_signer(verified, part.service.member, conf, now=now, prefix=CLIENT_PROXY)
        response = check_response(part, message.signed_part, prefix=CLIENT_PROXY)
        check_clock_skew(response.created_at, now, prefix=CLIENT_PROXY)
        return response, message, verified

    # ---- REST

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        now = self._rt.clock()
        parsed = parse_rest_request(request.method, request.raw_path, request.headers.items())
        if isinstance(parsed, ListClientsRequest):
            status, headers, body = metaservices.list_clients(self._conf(), parsed)
            return web.Response(status=status, body=body, headers=CIMultiDict(headers))
        body = await self._body(request)
        conf = self._conf()
        with structlog.contextvars.bound_contextvars(
            message_id=parsed.message_id, client=str(parsed.client), service=str(parsed.service)
        ):
            local = self._local_client(request, parsed.client, conf)
            servers = self._provider_nodes(conf, parsed.service.provider, parsed.security_server)
            try:
                part = RequestPart(
                    protocol="REST",
                    message_id=parsed.message_id,
                    client=parsed.client,
                    service=parsed.service,
                    method=parsed.method,
                    path=parsed.path,
                    query=parsed.query,
                    headers=parsed.headers,
                    body_sha256=body_digest(body),
                    created_at=now,
                    user_id=parsed.user_id,
                    issue=parsed.issue,
                    represented_party=parsed.represented_party,
                    target_server=parsed.security_server,
                )
            except ValueError as exc:
                raise client_fault("BadRequest", f"the request cannot be carried: {exc}") from exc
            response, response_body = await self._exchange(conf, local, part, body, servers)
            headers = response_headers(
                response.headers,
                client=part.client,
                service=part.service,
                message_id=part.message_id,
                request_id=str(uuid.uuid4()),
                request_hash=response.request_hash,
            )
            error = _header(response.headers, HEADER_ERROR)
            if error is not None:
                headers += ((HEADER_ERROR, error),)
            log.debug("exchange done", status=response.status)
            return web.Response(
                status=response.status, body=response_body, headers=CIMultiDict(headers)
            )

    # ---- SOAP

    async def _soap(self, request: web.Request) -> web.StreamResponse:
        now = self._rt.clock()
        body = await self._body(request)
        content_type = request.headers.get("Content-Type", "")
        max_bytes = self._rt.settings.max_body_bytes
        message = parse_soap_request(body, content_type, max_bytes=max_bytes)
        assert message.service is not None
        conf = self._conf()
        with structlog.contextvars.bound_contextvars(
            message_id=message.id, client=str(message.client), service=str(message.service)
        ):
            local = self._local_client(request, message.client, conf)
            servers = self._provider_nodes(conf, message.service.provider, message.security_server)
            forwarded = tuple(
                (name, value)
                for name, value in request.headers.items()
                if name.lower() in _SOAP_REQUEST_HEADERS
            )
            try:
                part = RequestPart(
                    protocol="SOAP",
                    message_id=message.id,
                    client=message.client,
                    service=message.service,
                    method="POST",
                    path="",
                    query=None,
                    headers=forwarded,
                    body_sha256=body_digest(body),
                    created_at=now,
                    user_id=message.user_id,
                    issue=message.issue,
                    target_server=message.security_server,
                )
            except ValueError as exc:
                raise client_fault("BadRequest", f"the message cannot be carried: {exc}") from exc
            response, response_body = await self._exchange(conf, local, part, body, servers)
            response_type = _header(response.headers, "Content-Type") or ""
            self._check_soap_response(message, response_body, response_type)
            log.debug("exchange done", status=response.status)
            return web.Response(
                status=response.status,
                body=response_body,
                headers=CIMultiDict({"Content-Type": response_type}),
            )

    def _check_soap_response(self, request: SoapMessage, body: bytes, content_type: str) -> None:
        parsed = parse_soap_response(
            body,
            content_type,
            max_bytes=self._rt.settings.max_body_bytes,
            fault_prefix=CLIENT_PROXY,
        )
        if isinstance(parsed, SoapMessage):
            check_response_consistent(request, parsed, prefix=CLIENT_PROXY)
            verify_request_hash(request, parsed, prefix=CLIENT_PROXY)


CLIENT_PROXY_KEY: Final = web.AppKey("jisr_client_proxy", ClientProxy)


def client_proxy_app(
    runtime: NodeRuntime, *, transport: TransportClient, message_log: MessageLog | None = None
) -> web.Application:
    """The aiohttp application for the client-side listeners (HTTP 8080, HTTPS 8443).

    For connection type ``https_cert`` the HTTPS listener must ask for client certificates
    (``CERT_OPTIONAL``) that its context can verify; the certificate is then matched here by
    SHA-256 against the client's registered hashes. With ``message_log`` every request sent
    and response received is logged before the exchange continues (fail closed); without one
    nothing is logged (tests, tools).
    """
    proxy = ClientProxy(runtime, transport, message_log=message_log)
    # Bodies are carried as received: a gzip body stays gzip for the provider.
    app = web.Application(
        client_max_size=runtime.settings.max_body_bytes,
        handler_args={"auto_decompress": False},
    )
    app[CLIENT_PROXY_KEY] = proxy
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app
