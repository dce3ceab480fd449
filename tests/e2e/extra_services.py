"""Provider information systems the end-to-end tests publish beside the demo's sample services.

Rules:
- One aiohttp application, served on a port the OS chooses, holds every extra service: a REST
  echo, a SOAP echo that returns the request's attachments, a SOAP service answering garbage
  and a REST service slower than its service timeout. An address where nothing listens stands
  for a provider that is down.
- They are published on the NDC node for ``IQ/GOV/NDC/population`` through the node's own
  catalogue functions (``service add`` / ``service update`` / ``access grant``), exactly as an
  operator publishes a service, before the node process starts.
- Every request a service received is kept, bytes as received, so tests can compare what left
  the client with what reached the provider.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib

from aiohttp import web
from lxml import etree

from gateway.identifiers import SubsystemId
from gateway.multipart import Part, build_multipart, parse_multipart
from gateway.soap import build_response, parse_soap_request
from security_server.catalogue_store import CatalogueStore

#: Target namespace of the extra SOAP services (their WSDL and body elements).
EXTRA_NS = "urn:jisr:e2e:extras"
ECHO_REST = "echoRest"
SLOW_REST = "slowRest"
UNREACHABLE_REST = "unreachableRest"
ECHO_SOAP = "echoDocument"
GARBAGE_SOAP = "garbageAnswer"
#: The slow service's node-side timeout (the catalogue counts whole seconds) and how long it
#: really takes: three times as long, so the node always gives up first.
SLOW_TIMEOUT_S = 1
SLOW_ANSWER_S = 3.0
#: What the garbage service answers with a ``text/xml`` content type.
GARBAGE = b"<html><body>502 upstream confused</body>"
_MAX_BYTES = 4 * 1024 * 1024
_ACTOR = "e2e"

WSDL = f"""<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions name="extras" targetNamespace="{EXTRA_NS}"
    xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/">
  <wsdl:binding name="extrasBinding">
    <wsdl:operation name="{ECHO_SOAP}"/>
    <wsdl:operation name="{GARBAGE_SOAP}"/>
  </wsdl:binding>
  <wsdl:service name="extras"><wsdl:port name="extrasPort" binding="extrasBinding">
    <soap:address location="http://example.org/replaced-by-the-node"/>
  </wsdl:port></wsdl:service>
</wsdl:definitions>
""".encode()


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """One request as a provider service saw it."""

    method: str
    path_qs: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


class ExtraServices:
    """The extra provider services and what they received."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        self.received.append(
            Received(request.method, request.raw_path, tuple(request.headers.items()), body)
        )
        return body

    def last(self, path_prefix: str) -> Received:
        """The newest request whose path starts with ``path_prefix``."""
        for seen in reversed(self.received):
            if seen.path_qs.startswith(path_prefix):
                return seen
        raise AssertionError(f"no provider service received a request for {path_prefix}")

    async def echo_rest(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "query": request.query_string,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_sha256": hashlib.sha256(body).hexdigest(),
                # with ?quiet the answer stays small whatever the request's size
                "body_base64": ""
                if "quiet" in request.query
                else base64.b64encode(body).decode("ascii"),
            },
            status=201 if request.method == "POST" else 200,
            headers={"X-Echo-Service": "jisr-e2e", "Cache-Control": "no-store"},
        )

    async def echo_soap(self, request: web.Request) -> web.Response:
        """Answer ``{code}Response`` repeating the header; return the attachments as received."""
        body = await self._record(request)
        content_type = request.headers.get("Content-Type", "")
        message = parse_soap_request(body, content_type, max_bytes=_MAX_BYTES)
        code = message.body_qname.localname
        answer_element = etree.Element(f"{{{EXTRA_NS}}}{code}Response", nsmap={"e": EXTRA_NS})
        etree.SubElement(answer_element, f"{{{EXTRA_NS}}}attachments").text = str(
            len(message.attachments)
        )
        answer = build_response(message, answer_element)
        if not message.is_multipart:
            return web.Response(body=answer, content_type="text/xml", charset="utf-8")
        received = parse_multipart(body, content_type, max_bytes=_MAX_BYTES)
        out, out_type = build_multipart(
            Part((("Content-Type", "text/xml; charset=UTF-8"),), answer), received.attachments
        )
        return web.Response(body=out, headers={"Content-Type": out_type})

    async def garbage(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(body=GARBAGE, headers={"Content-Type": "text/xml"})

    async def slow(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(SLOW_ANSWER_S)
        return web.json_response({"late": True})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BYTES)
        app.router.add_route("*", "/echo", self.echo_rest)
        app.router.add_route("*", "/echo/{tail:.*}", self.echo_rest)
        app.router.add_post("/soap-echo", self.echo_soap)
        app.router.add_post("/garbage", self.garbage)
        app.router.add_route("*", "/slow", self.slow)
        app.router.add_route("*", "/slow/{tail:.*}", self.slow)
        return app


async def publish_extras(
    store: CatalogueStore,
    provider: SubsystemId,
    *,
    base_url: str,
    unreachable_url: str,
    allowed: str,
) -> None:
    """Publish every extra service for ``provider`` and let ``allowed`` call each of them."""
    provider_id = str(provider)
    await store.add_rest(_ACTOR, provider_id, ECHO_REST, base_url + "/echo")
    await store.add_rest(_ACTOR, provider_id, SLOW_REST, base_url + "/slow")
    await store.add_rest(_ACTOR, provider_id, UNREACHABLE_REST, unreachable_url)
    await store.add_wsdl(_ACTOR, provider_id, document=WSDL, address=base_url + "/soap-echo")
    await store.update_service(_ACTOR, provider_id, GARBAGE_SOAP, address=base_url + "/garbage")
    await store.update_service(_ACTOR, provider_id, SLOW_REST, timeout_s=SLOW_TIMEOUT_S)
    for code in (ECHO_REST, SLOW_REST, UNREACHABLE_REST, ECHO_SOAP, GARBAGE_SOAP):
        await store.grant(_ACTOR, provider_id, code, allowed)
