"""What an information system sends to its node in the end-to-end tests, and what it gets back.

Rules:
- SOAP requests are written out by hand as X-Road message protocol 4.0 documents (the text an
  integrator's own tooling would produce), so a test can break exactly one thing in them.
- Calls go over plain aiohttp with the body as bytes; nothing here interprets a fault except
  :class:`Reply`'s accessors, which read the REST ``X-Road-Error`` and the SOAP ``faultcode``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid

import aiohttp
from multidict import CIMultiDict

from gateway.soap_fault import parse_soap_fault
from jisr.demo.exchanges import LIVING_CITIZEN
from jisr.demo.members import INHERITANCE
from tests.e2e.extra_services import ECHO_REST, ECHO_SOAP, EXTRA_NS
from tests.e2e.network import E2eNetwork, RunningNodeInfo

POPULATION_NS = "urn:jisr:iq:gov:ndc:population"
CITIZEN_SERVICE = "/r1/IQ/GOV/NDC/population/getCitizen"
ECHO_SERVICE = f"/r1/IQ/GOV/NDC/population/{ECHO_REST}"

#: Hostile XML: an entity expansion bomb and an external entity, each in a SOAP envelope.
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">
<SOAP-ENV:Body><lolz>&lol4;</lolz></SOAP-ENV:Body></SOAP-ENV:Envelope>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">
<SOAP-ENV:Body><x>&xxe;</x></SOAP-ENV:Body></SOAP-ENV:Envelope>
"""


def soap_envelope(
    *,
    message_id: str | None = None,
    client_subsystem: str = "inheritance",
    client_member: str = "HJC",
    provider_member: str = "NDC",
    provider_subsystem: str = "population",
    service_code: str = "getCitizen",
    body: str | None = None,
    protocol_version: str = "4.0",
    namespace: str = POPULATION_NS,
) -> bytes:
    """An X-Road SOAP 4.0 request, by default HJC's court asking NDC for a living citizen."""
    if body is None:
        body = f"<p:{service_code}><p:nationalId>{LIVING_CITIZEN}</p:nationalId></p:{service_code}>"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:xrd="http://x-road.eu/xsd/xroad.xsd" xmlns:id="http://x-road.eu/xsd/identifiers"
    xmlns:p="{namespace}">
  <SOAP-ENV:Header>
    <xrd:client id:objectType="SUBSYSTEM">
      <id:xRoadInstance>IQ</id:xRoadInstance>
      <id:memberClass>GOV</id:memberClass>
      <id:memberCode>{client_member}</id:memberCode>
      <id:subsystemCode>{client_subsystem}</id:subsystemCode>
    </xrd:client>
    <xrd:service id:objectType="SERVICE">
      <id:xRoadInstance>IQ</id:xRoadInstance>
      <id:memberClass>GOV</id:memberClass>
      <id:memberCode>{provider_member}</id:memberCode>
      <id:subsystemCode>{provider_subsystem}</id:subsystemCode>
      <id:serviceCode>{service_code}</id:serviceCode>
    </xrd:service>
    <xrd:id>{message_id or uuid.uuid4()}</xrd:id>
    <xrd:userId>IQ-judge-0042</xrd:userId>
    <xrd:issue>inheritance-case-2026-117</xrd:issue>
    <xrd:protocolVersion>{protocol_version}</xrd:protocolVersion>
  </SOAP-ENV:Header>
  <SOAP-ENV:Body>
    {body}
  </SOAP-ENV:Body>
</SOAP-ENV:Envelope>
""".encode()


def echo_envelope(**changes: str) -> bytes:
    """A SOAP request to the extra SOAP echo service, so a test can see whether it arrived."""
    return soap_envelope(
        service_code=ECHO_SOAP, namespace=EXTRA_NS, body=f"<p:{ECHO_SOAP}/>", **changes
    )


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def error(self) -> str | None:
        """The fault code of a REST error (``X-Road-Error``)."""
        return self.headers.get("X-Road-Error")

    @property
    def is_xml(self) -> bool:
        media = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        return media in ("text/xml", "application/xml", "multipart/related")

    @property
    def fault_code(self) -> str | None:
        """The ``faultcode`` of a SOAP Fault answer (None for anything else)."""
        fault = parse_soap_fault(self.body) if self.is_xml else None
        return None if fault is None else fault.fault_code

    @property
    def fault_message(self) -> str:
        """What the fault says: the SOAP ``faultstring``, or the JSON ``message`` (REST)."""
        fault = parse_soap_fault(self.body) if self.is_xml else None
        if fault is not None:
            return fault.message
        return str(json.loads(self.body)["message"])

    def json(self) -> object:
        return json.loads(self.body)


async def call(
    url: str,
    method: str = "GET",
    *,
    headers: CIMultiDict[str] | dict[str, str] | None = None,
    data: bytes | None = None,
) -> Reply:
    """One HTTP exchange on a new connection, with the body sent exactly as given."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            url,
            headers=headers,
            data=None if data is None else io.BytesIO(data),
            allow_redirects=False,
        ) as response,
    ):
        return Reply(response.status, CIMultiDict(response.headers), await response.read())


async def rest(
    node: RunningNodeInfo,
    path: str,
    method: str = "GET",
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Reply:
    """A REST call to ``node``'s client side as HJC's court (unless ``headers`` say otherwise)."""
    sent = {"X-Road-Client": str(INHERITANCE), **(headers or {})}
    return await call(node.client_url + path, method, headers=sent, data=data)


async def soap(
    node: RunningNodeInfo, body: bytes, content_type: str = "text/xml; charset=utf-8"
) -> Reply:
    """A SOAP call to ``node``'s client side."""
    return await call(
        node.client_url + "/", "POST", headers={"Content-Type": content_type}, data=body
    )


def _with_logs(network: E2eNetwork, reply: Reply) -> str:
    tails = "\n".join(
        f"--- {node.spec.server_id}:\n{node.log_tail()}"
        for node in (network.consumer, network.provider)
    )
    return f"{reply}\n{tails}"


async def assert_still_serving(network: E2eNetwork) -> None:
    """The consumer node still relays a good REST and a good SOAP call to the provider."""
    reply = await rest(network.consumer, f"{CITIZEN_SERVICE}/citizens/{LIVING_CITIZEN}")
    assert reply.status == 200, _with_logs(network, reply)
    assert json.loads(reply.body)["nationalId"] == LIVING_CITIZEN
    reply = await soap(network.consumer, soap_envelope())
    assert reply.status == 200, _with_logs(network, reply)
    assert LIVING_CITIZEN.encode() in reply.body
