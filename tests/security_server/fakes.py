"""In-memory runtimes and a two-node network in one process, for exchange tests.

The nodes are real: their client proxy, server proxy and a tiny provider information system
listen on 127.0.0.1 with OS-chosen ports, nodes talk mutual TLS with certificates from
``FixturePki``, the global configuration is a real ``GlobalConf`` and OCSP responses are made by
a real ``certs.ocsp.OcspResponder``, also served over HTTP for the nodes' checks of each other's
authentication certificates. Only the node assembly's sources of configuration, keys
and catalogue are replaced by the small classes below.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from lxml import etree

from certs.ocsp import OcspResponder, build_request
from certs.profiles import cert_sha256
from certs.signer import SoftwareSigner
from certs.status import CertStatus
from config.settings import NodeSettings
from gateway.faults import FaultError, client_proxy_fault
from gateway.globalconf import (
    ApprovedCa,
    GlobalConf,
    GlobalGroup,
    GlobalSettings,
    Member,
    MemberClass,
    OutdatedGlobalConf,
    SecurityServer,
    SigningKey,
    build_globalconf,
)
from gateway.globalconf import OcspResponder as ConfOcspResponder
from gateway.identifiers import ClientId, MemberId, SecurityServerId, ServiceId, SubsystemId
from gateway.log_record import LogEntry
from gateway.multipart import Part, build_multipart, parse_multipart
from gateway.soap import build_request as build_soap_request
from gateway.soap import build_response, parse_soap_request
from gateway.soap_fault import parse_soap_fault
from gateway.transport import (
    CONTENT_TYPE,
    EXCHANGE_PATH,
    RequestPart,
    body_digest,
    encode_message,
    sign_one,
)
from security_server.access_rights import AccessRight, AccessRights
from security_server.client_proxy import client_proxy_app
from security_server.runtime import LocalClient, LocalService, NodeRuntime, TlsFiles
from security_server.server_proxy import server_proxy_app
from security_server.tls import pinned_client_context, server_context
from security_server.transport_client import TransportClient
from tests.clock import Clock
from tests.pki_factory import FixturePki, Issued
from trust_services.http_server import serve_app
from trust_services.ocsp_server import ocsp_app

#: The tests' "now": real time (TLS handshakes check certificates against the real clock),
#: pinned for everything Jisr validates itself.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
PASSPHRASE = b"node key passphrase"

HJC = MemberId("IQ", "GOV", "HJC")
NDC = MemberId("IQ", "GOV", "NDC")
CONSUMER = SubsystemId("IQ", "GOV", "HJC", "inheritance")
HTTPS_ONLY = SubsystemId("IQ", "GOV", "HJC", "courts")
CERT_ONLY = SubsystemId("IQ", "GOV", "HJC", "archive")
PROVIDER = SubsystemId("IQ", "GOV", "NDC", "population")
CONSUMER_NODE = SecurityServerId("IQ", "GOV", "HJC", "ss1")
PROVIDER_NODE = SecurityServerId("IQ", "GOV", "NDC", "ss1")
SPARE_PROVIDER_NODE = SecurityServerId("IQ", "GOV", "NDC", "ss2")

PROVIDER_NS = "http://ndc.gov.iq/population"
CITIZEN_PATH = "/r1/IQ/GOV/NDC/population/getCitizen"

WSDL = f"""<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" targetNamespace="{PROVIDER_NS}">
  <wsdl:binding name="b"><wsdl:operation name="getPerson"/></wsdl:binding>
  <wsdl:service name="s"><wsdl:port name="p" binding="b">
    <soap:address location="http://10.0.0.7:8080/internal/soap"/>
  </wsdl:port></wsdl:service>
</wsdl:definitions>
""".encode()

PROVIDER_FAULT = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault>'
    b"<faultcode>e:Server</faultcode><faultstring>\xd8\xae\xd8\xb7\xd8\xa3 database down"
    b"</faultstring></e:Fault></e:Body></e:Envelope>"
)

OPENAPI = b'{"openapi":"3.0.0","info":{"title":"citizens","version":"1"},"paths":{}}'


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class FakeConf:
    """A ConfSource serving one configuration, or none (outdated) when told so."""

    def __init__(self, conf: GlobalConf | None = None) -> None:
        self.conf = conf
        self.outdated = False

    def current(self, now: dt.datetime) -> GlobalConf:
        if self.conf is None or self.outdated or self.conf.is_expired(now):
            raise OutdatedGlobalConf(
                "the global configuration has expired; the node refuses to exchange until it "
                "downloads a current one"
            )
        return self.conf


class FakeSigners:
    """MemberSigners over in-memory keys and OCSP responses."""

    def __init__(self) -> None:
        self.signers: dict[MemberId, SoftwareSigner] = {}
        self.ocsp: dict[bytes, bytes] = {}

    def signer_for(self, member: MemberId) -> SoftwareSigner:
        signer = self.signers.get(member)
        if signer is None:
            raise client_proxy_fault(
                "CannotCreateSignature", f"this node has no signing key for member {member}"
            )
        return signer

    def ocsp_for(self, cert: x509.Certificate) -> bytes | None:
        return self.ocsp.get(cert.public_bytes(serialization.Encoding.DER))


class FakeMessageLog:
    """A MessageLog keeping entries in a list; ``failing`` makes it refuse like a dead database."""

    def __init__(self, prefix: str) -> None:
        self.entries: list[LogEntry] = []
        self.failing = False
        self.prefix = prefix

    async def record(self, entry: LogEntry) -> None:
        if self.failing:
            raise FaultError(f"{self.prefix}.LoggingFailed", "the message log cannot be written")
        self.entries.append(entry)

    def check_accepting(self, now: dt.datetime, *, prefix: str = "Server.ClientProxy") -> None:
        return None


class FakeCatalogue:
    """LocalCatalogue over lists."""

    def __init__(
        self,
        clients: Sequence[LocalClient] = (),
        services: Sequence[LocalService] = (),
        rights: Sequence[tuple[ClientId, AccessRight]] = (),
    ) -> None:
        self.clients = {c.client_id: c for c in clients}
        self.services = list(services)
        self.rights = AccessRights(rights)

    def client(self, client_id: ClientId) -> LocalClient | None:
        return self.clients.get(client_id)

    def service(self, service_id: ServiceId) -> LocalService | None:
        for s in self.services:
            sid = s.service_id
            if sid.provider == service_id.provider and sid.service_code == service_id.service_code:
                if service_id.service_version not in (None, sid.service_version):
                    return None
                return s
        return None

    def services_of(self, provider: ClientId) -> Sequence[LocalService]:
        return [s for s in self.services if s.service_id.provider == provider]

    @property
    def access_rights(self) -> AccessRights:
        return self.rights


# ---- the provider's information system ------------------------------------------------------


@dataclasses.dataclass
class SeenRequest:
    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes


def provider_is_app(seen: list[SeenRequest]) -> web.Application:
    """A tiny provider: REST echo, SOAP echo (attachments returned as received), slow, garbage."""

    async def record(request: web.Request) -> bytes:
        body = await request.read()
        seen.append(
            SeenRequest(request.method, request.raw_path, list(request.headers.items()), body)
        )
        return body

    async def rest(request: web.Request) -> web.Response:
        body = await record(request)
        return web.json_response(
            {"path": request.raw_path, "method": request.method, "body": body.decode()},
            headers={"X-Provider": "ndc", "Connection": "keep-alive"},
            status=201 if request.method == "POST" else 200,
        )

    async def soap(request: web.Request) -> web.Response:
        body = await record(request)
        content_type = request.headers["Content-Type"]
        message = parse_soap_request(body, content_type, max_bytes=10_000_000)
        element = etree.Element(f"{{{PROVIDER_NS}}}{message.body_qname.localname}Response")
        etree.SubElement(element, "name").text = "Ali"
        answer = build_response(message, element)
        if not message.attachments:
            return web.Response(body=answer, content_type="text/xml", charset="utf-8")
        multipart = parse_multipart(body, content_type, max_bytes=10_000_000)
        out, out_type = build_multipart(
            Part((("Content-Type", "text/xml; charset=UTF-8"),), answer), multipart.attachments
        )
        return web.Response(body=out, headers={"Content-Type": out_type})

    async def soap_fault_answer(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=500, body=PROVIDER_FAULT, content_type="text/xml")

    async def soap_wrong_id(request: web.Request) -> web.Response:
        body = await record(request)
        message = parse_soap_request(body, request.headers["Content-Type"], max_bytes=10_000_000)
        element = etree.Element(f"{{{PROVIDER_NS}}}{message.body_qname.localname}Response")
        answer = build_response(message, element).replace(
            f"<xrd:id>{message.id}</xrd:id>".encode(), b"<xrd:id>someone-else</xrd:id>"
        )
        return web.Response(body=answer, content_type="text/xml")

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(1.5)  # three times the service timeout of 0.5 s
        return web.Response(text="too late")

    async def garbage(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=b"<not-soap", content_type="text/xml")

    app = web.Application()
    app.router.add_route("*", "/rest", rest)
    app.router.add_route("*", "/rest/{tail:.*}", rest)
    app.router.add_post("/soap", soap)
    app.router.add_route("*", "/slow/{tail:.*}", slow)
    app.router.add_route("*", "/slow", slow)
    app.router.add_post("/garbage", garbage)
    app.router.add_post("/soap-fault", soap_fault_answer)
    app.router.add_post("/soap-wrong-id", soap_wrong_id)
    return app


# ---- the network ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def write_tls(directory: Path, issued: Issued, name: str) -> TlsFiles:
    cert_file = directory / f"{name}.pem"
    key_file = directory / f"{name}.key"
    cert_file.write_bytes(issued.pem)
    key_file.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE),
        )
    )
    return TlsFiles(cert_file, key_file, PASSPHRASE, issued.cert)


@dataclasses.dataclass
class Network:
    pki: FixturePki
    responder: OcspResponder
    statuses: dict[int, CertStatus]
    clock: Clock
    consumer_conf: FakeConf
    provider_conf: FakeConf
    consumer_signers: FakeSigners
    provider_signers: FakeSigners
    consumer_catalogue: FakeCatalogue
    provider_catalogue: FakeCatalogue
    consumer_runtime: NodeRuntime
    provider_runtime: NodeRuntime
    consumer_auth: Issued
    provider_auth: Issued
    consumer_tls: TlsFiles
    consumer_log: FakeMessageLog = dataclasses.field(
        default_factory=lambda: FakeMessageLog("Server.ClientProxy")
    )
    provider_log: FakeMessageLog = dataclasses.field(
        default_factory=lambda: FakeMessageLog("Server.ServerProxy")
    )
    client_url: str = ""
    client_https_url: str = ""
    is_cert: Issued | None = None
    provider_node_url: str = ""
    provider_is_url: str = ""
    seen: list[SeenRequest] = dataclasses.field(default_factory=list)
    #: The responder's URL as the global configuration lists it.
    ocsp_url: str = ""
    #: OCSP requests the responder got over HTTP (the nodes asking about each other).
    ocsp_requests: int = 0
    #: While set, the responder answers 503, as one behind a failed proxy does.
    ocsp_down: bool = False

    def ocsp_response(self, cert: x509.Certificate) -> bytes:
        """A fresh OCSP response from the test CA's responder (a nonce defeats its cache)."""
        return self.responder.respond(
            build_request(cert, self.pki.root.cert, nonce=True), now=self.clock.now
        )

    def install_signer(self, signers: FakeSigners, member: MemberId, issued: Issued) -> None:
        signers.signers[member] = SoftwareSigner(issued.key, issued.cert)
        der = issued.cert.public_bytes(serialization.Encoding.DER)
        signers.ocsp[der] = self.ocsp_response(issued.cert)

    def is_https_context(self, tmp: Path, *, with_cert: bool) -> ssl.SSLContext:
        """A context for an information system calling the node's HTTPS port."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=self.pki.root.pem.decode())
        if with_cert:
            assert self.is_cert is not None
            cert_file, key_file = self.is_cert.write(tmp, "is-client")
            ctx.load_cert_chain(cert_file, key_file)
        return ctx

    def node_client_context(
        self, auth: Issued | None = None, tmp: Path | None = None
    ) -> ssl.SSLContext:
        """A context to talk to the provider node directly, as the consumer node (or another)."""
        tls = self.consumer_tls
        if auth is not None:
            assert tmp is not None
            tls = write_tls(tmp, auth, "other-auth")
        return pinned_client_context(
            tls.cert_file, tls.key_file, [self.provider_auth.cert], password=PASSPHRASE
        )


def _served_responder(net: Network) -> web.Application:
    """The test CA's responder over HTTP, counting requests and able to fail on demand."""

    @web.middleware
    async def outage(request: web.Request, handler: Handler) -> web.StreamResponse:
        net.ocsp_requests += 1
        if net.ocsp_down:
            return web.Response(status=503, text="responder down\n")
        return await handler(request)

    app = ocsp_app(net.responder, clock=net.clock)
    app.middlewares.append(outage)
    return app


def _service(code: str, kind: str, address: str, **kw: object) -> LocalService:
    return LocalService(ServiceId.for_client(PROVIDER, code), kind, address, **kw)  # type: ignore[arg-type]


def _conf(
    pki: FixturePki,
    responder_cert: Issued,
    consumer_auth: Issued,
    provider_auth: Issued,
    provider_port: int,
    spare: Issued | None = None,
    ocsp_url: str = "http://127.0.0.1:1/ocsp",
) -> GlobalConf:
    spare_nodes = []
    if spare is not None:
        spare_nodes.append(
            SecurityServer(
                SPARE_PROVIDER_NODE, f"127.0.0.1:{_free_port()}", (spare.cert,), (PROVIDER,)
            )
        )

    return build_globalconf(
        "IQ",
        1,
        NOW - dt.timedelta(seconds=10),
        dt.timedelta(days=30),
        None,
        GlobalSettings(),
        [MemberClass("GOV", "government")],
        [
            Member(HJC, "Higher Judicial Council", (CONSUMER, HTTPS_ONLY, CERT_ONLY)),
            Member(NDC, "National Data Centre", (PROVIDER,)),
        ],
        [
            SecurityServer(
                CONSUMER_NODE,
                "127.0.0.1:1",
                (consumer_auth.cert,),
                (CONSUMER, HTTPS_ONLY, CERT_ONLY),
            ),
            *spare_nodes,
            SecurityServer(
                PROVIDER_NODE, f"127.0.0.1:{provider_port}", (provider_auth.cert,), (PROVIDER,)
            ),
        ],
        [
            ApprovedCa(
                "Jisr Test CA",
                pki.root.cert,
                (),
                (ConfOcspResponder(ocsp_url, responder_cert.cert),),
            )
        ],
        [],
        [GlobalGroup("justice", "courts and archives", (HTTPS_ONLY, CERT_ONLY))],
        [SigningKey(pki.issue("conf signer").cert)],
    )


@contextlib.asynccontextmanager
async def two_nodes(
    tmp_path: Path, *, max_body_bytes: int = 1024 * 1024, spare_node: bool = False
) -> AsyncIterator[Network]:
    """A consumer node (HJC) and a provider node (NDC) with a provider IS, all listening.

    With ``spare_node`` the configuration lists, before the real one, a second provider node
    that is down (nothing listens on its port).
    """
    pki = FixturePki.create(now=NOW)
    responder_cert = pki.ocsp_responder()
    statuses: dict[int, CertStatus] = {}
    responder = OcspResponder(
        pki.root.cert,
        (responder_cert.cert, responder_cert.key),
        lambda serial: statuses.get(serial, CertStatus("good")),
    )
    clock = Clock(NOW)
    consumer_auth = pki.authentication(str(CONSUMER_NODE))
    provider_auth = pki.authentication(str(PROVIDER_NODE))
    consumer_tls = write_tls(tmp_path, consumer_auth, "consumer-auth")
    provider_tls = write_tls(tmp_path, provider_auth, "provider-auth")
    consumer_conf, provider_conf = FakeConf(), FakeConf()
    consumer_signers, provider_signers = FakeSigners(), FakeSigners()
    seen: list[SeenRequest] = []

    async with serve_app(provider_is_app(seen)) as is_url:
        refused = f"http://127.0.0.1:{_free_port()}"
        services = [
            _service("getCitizen", "rest", f"{is_url}/rest", description=OPENAPI),
            _service(
                "getOpenCitizen",
                "openapi",
                f"{is_url}/rest",
                description=OPENAPI,
                endpoints=(("GET", "/citizens/*"),),
            ),
            _service("getPerson", "wsdl", f"{is_url}/soap", description=WSDL),
            _service("slowService", "rest", f"{is_url}/slow", timeout_s=0.5),
            _service("garbageSoap", "wsdl", f"{is_url}/garbage"),
            _service("faultySoap", "wsdl", f"{is_url}/soap-fault"),
            _service("confusedSoap", "wsdl", f"{is_url}/soap-wrong-id"),
            _service("secretSoap", "wsdl", f"{is_url}/soap", description=WSDL),
            _service("refusedService", "rest", refused),
            _service("secretService", "rest", f"{is_url}/rest"),
            _service(
                "closedService",
                "rest",
                f"{is_url}/rest",
                enabled=False,
                disabled_notice="closed for maintenance until Sunday",
            ),
        ]
        rights = [
            (PROVIDER, AccessRight(code, str(CONSUMER)))
            for code in (
                "getCitizen",
                "getPerson",
                "slowService",
                "garbageSoap",
                "faultySoap",
                "confusedSoap",
                "refusedService",
                "closedService",
            )
        ]
        rights.append(
            (PROVIDER, AccessRight("getOpenCitizen", str(CONSUMER), "GET", "/citizens/*"))
        )
        rights.append((PROVIDER, AccessRight("getCitizen", "group:justice")))
        is_cert = pki.issue("HJC archive system", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
        consumer_catalogue = FakeCatalogue(
            [
                LocalClient(CONSUMER),
                LocalClient(HTTPS_ONLY, connection_type="https"),
                LocalClient(
                    CERT_ONLY,
                    connection_type="https_cert",
                    tls_cert_hashes=frozenset({cert_sha256(is_cert.cert)}),
                ),
            ]
        )
        provider_catalogue = FakeCatalogue([LocalClient(PROVIDER)], services, rights)
        consumer_runtime = NodeRuntime(
            NodeSettings(server_id=str(CONSUMER_NODE), max_body_bytes=max_body_bytes),
            CONSUMER_NODE,
            consumer_conf,
            consumer_signers,
            consumer_catalogue,
            consumer_tls,
            clock,
        )
        provider_runtime = NodeRuntime(
            NodeSettings(server_id=str(PROVIDER_NODE), max_body_bytes=max_body_bytes),
            PROVIDER_NODE,
            provider_conf,
            provider_signers,
            provider_catalogue,
            provider_tls,
            clock,
        )
        net = Network(
            pki,
            responder,
            statuses,
            clock,
            consumer_conf,
            provider_conf,
            consumer_signers,
            provider_signers,
            consumer_catalogue,
            provider_catalogue,
            consumer_runtime,
            provider_runtime,
            consumer_auth,
            provider_auth,
            consumer_tls,
            seen=seen,
        )
        net.provider_is_url = is_url
        net.is_cert = is_cert
        net.install_signer(consumer_signers, HJC, pki.signing(str(HJC)))
        net.install_signer(provider_signers, NDC, pki.signing(str(NDC)))
        consumer_transport = TransportClient(consumer_runtime)
        provider_transport = TransportClient(provider_runtime)
        sctx = server_context(
            provider_tls.cert_file,
            provider_tls.key_file,
            password=PASSPHRASE,
            client_roots=[pki.root.cert],
            require_client_cert=True,
        )
        client_side_ctx = server_context(
            consumer_tls.cert_file,
            consumer_tls.key_file,
            password=PASSPHRASE,
            client_roots=[pki.root.cert],
        )
        client_app = client_proxy_app(
            consumer_runtime, transport=consumer_transport, message_log=net.consumer_log
        )
        try:
            async with (
                serve_app(
                    server_proxy_app(
                        provider_runtime, transport=provider_transport, message_log=net.provider_log
                    ),
                    ssl_context=sctx,
                ) as node_url,
                serve_app(client_app) as url,
                serve_app(client_app, ssl_context=client_side_ctx) as https_url,
                serve_app(_served_responder(net)) as ocsp_url,
            ):
                net.ocsp_url = f"{ocsp_url}/"
                net.client_url = url
                net.client_https_url = https_url
                net.provider_node_url = node_url
                spare = pki.authentication(str(SPARE_PROVIDER_NODE)) if spare_node else None
                conf = _conf(
                    pki,
                    responder_cert,
                    consumer_auth,
                    provider_auth,
                    _port(node_url),
                    spare,
                    net.ocsp_url,
                )
                consumer_conf.conf = provider_conf.conf = conf
                yield net
        finally:
            await consumer_transport.close()
            await provider_transport.close()


# ---- calling the consumer node --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> str | None:
        """The fault code of a REST error (``X-Road-Error``)."""
        return self.headers.get("X-Road-Error")

    @property
    def fault_code(self) -> str | None:
        """The ``faultcode`` of a SOAP Fault answer."""
        fault = parse_soap_fault(self.body)
        return None if fault is None else fault.fault_code


def signed_envelope(
    net: Network,
    *,
    client: ClientId = CONSUMER,
    code: str = "getCitizen",
    message_id: str | None = None,
    signer: SoftwareSigner | None = None,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (("Accept", "application/json"),),
) -> tuple[RequestPart, bytes]:
    """A REST request to the provider, signed and framed as the consumer node would send it."""
    part = RequestPart(
        protocol="REST",
        message_id=message_id or str(uuid.uuid4()),
        client=client,
        service=ServiceId.for_client(PROVIDER, code),
        method="GET",
        path="/citizens/1",
        query=None,
        headers=headers,
        body_sha256=body_digest(body),
        created_at=net.clock.now,
    )
    signer = signer or net.consumer_signers.signers[HJC]
    sealed = sign_one(part, signer, now=net.clock.now)
    ocsp = net.ocsp_response(signer.certificate)
    return part, encode_message(part, body, sealed.proof, sealed.signature, ocsp)[1]


async def post_exchange(
    net: Network,
    data: bytes,
    *,
    node_url: str | None = None,
    ctx: ssl.SSLContext | None = None,
    content_type: str = CONTENT_TYPE,
    method: str = "POST",
    path: str = EXCHANGE_PATH,
) -> Reply:
    """``data`` sent straight to a node's server side (the provider node's by default) over
    the consumer node's mutual TLS."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            (node_url or net.provider_node_url) + path,
            data=io.BytesIO(data),
            headers={"Content-Type": content_type},
            ssl=ctx or net.node_client_context(),
        ) as response,
    ):
        return Reply(response.status, dict(response.headers), await response.read())


async def call(
    url: str,
    method: str = "GET",
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Reply:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            url,
            headers=headers,
            data=None if data is None else io.BytesIO(data),
            ssl=ssl_context if ssl_context is not None else True,
        ) as response,
    ):
        body = await response.read()
        return Reply(response.status, dict(response.headers), body)


async def rest(
    net: Network,
    path: str,
    method: str = "GET",
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Reply:
    """A REST call to the consumer node as ``CONSUMER`` (unless ``headers`` say otherwise)."""
    sent = {"X-Road-Client": str(CONSUMER), **(headers or {})}
    return await call(net.client_url + path, method, headers=sent, data=data)


async def soap(net: Network, body: bytes, content_type: str = "text/xml; charset=utf-8") -> Reply:
    return await call(
        net.client_url + "/", "POST", headers={"Content-Type": content_type}, data=body
    )


def soap_request(
    code: str = "getPerson", message_id: str = "soap-1", *, client: ClientId = CONSUMER
) -> bytes:
    return build_soap_request(
        client,
        ServiceId.for_client(PROVIDER, code),
        id=message_id,
        user_id="IQ1234",
        body_element_xml=f'<p:{code} xmlns:p="{PROVIDER_NS}"><id>7</id></p:{code}>',
    )


async def assert_still_serving(net: Network) -> None:
    """The node answers a good REST and a good SOAP call after whatever the test did."""
    reply = await rest(net, "/r1/IQ/GOV/NDC/population/getCitizen/citizens/1")
    assert reply.status == 200, reply
    reply = await soap(net, soap_request(message_id=str(uuid.uuid4())))
    assert reply.status == 200, reply
