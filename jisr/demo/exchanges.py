"""The demo's exchanges, made through the HJC/NPA node's client side as an integrator would.

Each exchange uses the integrator kit (``adapters``): aiohttp for REST, zeep for SOAP. Each
returns a line for the report; an exchange that does not give the expected result is a failed
check, and the demo then exits non-zero with ``--once``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources

import aiohttp

from adapters.rest_client import XRoadRestClient
from adapters.soap_client import XRoadSoapClient
from gateway.faults import FaultError
from gateway.identifiers import XROAD_NS, ServiceId, SubsystemId
from gateway.identifiers_xml import service_from_xml
from gateway.soap import SoapFaultResponse, build_request, parse_soap_response
from jisr.demo.members import CERTIFICATES, FORENSIC, INHERITANCE, PENSIONS, POPULATION

#: Sample national ids (adapters/sample_data): a living citizen, and one who has died.
LIVING_CITIZEN = "198503141027"
DECEASED_CITIZEN = "194902170054"
DIPLOMA_NUMBER = "UOB-2007-031245"

GET_CITIZEN = ServiceId.for_client(POPULATION, "getCitizen")
GET_DEATH_RECORD = ServiceId.for_client(FORENSIC, "getDeathRecord")
VERIFY_DOCUMENT = ServiceId.for_client(CERTIFICATES, "verifyDocument")


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    ok: bool
    detail: str


Exchange = Callable[[str, aiohttp.ClientSession], Awaitable[Outcome]]


async def rest_get_citizen(node_url: str, session: aiohttp.ClientSession) -> Outcome:
    name = "REST (aiohttp): HJC inheritance court reads a citizen record from the NDC"
    client = XRoadRestClient(node_url, INHERITANCE, session=session)
    result = await client.call(
        "GET", GET_CITIZEN, f"/citizens/{DECEASED_CITIZEN}", user_id="IQ-judge-0042"
    )
    record = result.json()
    ok = result.status == 200 and record.get("nationalId") == DECEASED_CITIZEN
    detail = (
        f"GET {node_url}/r1/{GET_CITIZEN}/citizens/{DECEASED_CITIZEN} → HTTP {result.status}\n"
        f"{record.get('fullNameAr')} ({record.get('fullNameLatin')}), born "
        f"{record.get('birthDate')}, {record.get('lifeStatus')}\n"
        f"X-Road-Id {result.x_road.id}, request hash {str(result.x_road.request_hash)[:24]}…"
    )
    return Outcome(name, ok, detail)


def _wsdl_path(filename: str) -> str:
    return str(resources.files("adapters.service_descriptions").joinpath(filename))


async def soap_get_citizen(node_url: str, session: aiohttp.ClientSession) -> Outcome:
    name = "SOAP (zeep): the same court asks for a citizen with X-Road message protocol 4.0"
    client = XRoadSoapClient(
        _wsdl_path("ndc-population.wsdl"), node_url + "/", INHERITANCE, GET_CITIZEN
    )
    result = await client.acall(nationalId=LIVING_CITIZEN, issue="inheritance-case-2026-117")
    body = result.body if isinstance(result.body, dict) else {}
    citizen = body.get("citizen") if isinstance(body.get("citizen"), dict) else body
    text = str(result.body)
    ok = LIVING_CITIZEN in text and result.headers.request_hash is not None
    detail = (
        f"POST {node_url}/ getCitizen(nationalId={LIVING_CITIZEN}) → "
        f"{citizen.get('fullNameAr', '?') if isinstance(citizen, dict) else '?'}\n"
        f"response echoes id {result.headers.id} and carries requestHash"
    )
    return Outcome(name, ok, detail)


async def rest_death_record(node_url: str, session: aiohttp.ClientSession) -> Outcome:
    name = "REST: the National Pension Authority checks a death record at forensic medicine"
    client = XRoadRestClient(node_url, PENSIONS, session=session)
    result = await client.call("GET", GET_DEATH_RECORD, f"/death-records/{DECEASED_CITIZEN}")
    record = result.json()
    ok = result.status == 200 and record.get("nationalId") == DECEASED_CITIZEN
    detail = (
        f"{record.get('deceasedNameAr')} died {record.get('dateOfDeath')}; certificate "
        f"{record.get('deathCertificateNumber')} registered by {record.get('registeringCourt')}"
    )
    return Outcome(name, ok, detail)


async def rest_verify_document(node_url: str, session: aiohttp.ClientSession) -> Outcome:
    name = "REST: document authenticity (صحة الصدور) of a diploma, open to all government"
    client = XRoadRestClient(node_url, PENSIONS, session=session)
    result = await client.call("GET", VERIFY_DOCUMENT, f"/documents/{DIPLOMA_NUMBER}")
    verdict = result.json()
    ok = result.status == 200 and "authentic" in str(verdict).lower()
    detail = f"diploma {DIPLOMA_NUMBER}: {verdict.get('verdict', verdict)}"
    return Outcome(name, ok, detail)


async def metaservices(node_url: str, session: aiohttp.ClientSession) -> Outcome:
    name = "Metaservices: listClients (REST) and allowedMethods (SOAP)"
    client = XRoadRestClient(node_url, PENSIONS, session=session)
    clients = await client.list_clients()
    codes = {
        str(provider): await _soap_allowed_methods(node_url, session, provider)
        for provider in (POPULATION, FORENSIC, CERTIFICATES)
    }
    ok = len(clients) >= 10 and codes == {
        str(POPULATION): [],
        str(FORENSIC): ["getDeathRecord"],
        str(CERTIFICATES): ["verifyDocument"],
    }
    lines = [f"listClients: {len(clients)} members and subsystems"]
    lines += [f"allowedMethods for NPA pensions at {p}: {c}" for p, c in codes.items()]
    return Outcome(name, ok, "\n".join(lines))


async def _soap_allowed_methods(
    node_url: str, session: aiohttp.ClientSession, provider: SubsystemId
) -> list[str]:
    """The SOAP ``allowedMethods`` metaservice, as an X-Road SOAP client sends it."""
    request = build_request(
        PENSIONS,
        ServiceId.for_client(provider, "allowedMethods"),
        id=str(uuid.uuid4()),
        body_element_xml=f'<xrd:allowedMethods xmlns:xrd="{XROAD_NS}"/>',
    )
    async with session.post(
        node_url + "/", data=request, headers={"Content-Type": "text/xml; charset=utf-8"}
    ) as resp:
        answer = await resp.read()
    parsed = parse_soap_response(answer, resp.headers.get("Content-Type", ""), max_bytes=1 << 20)
    if isinstance(parsed, SoapFaultResponse):
        raise parsed.fault
    return sorted(
        service_from_xml(element).service_code
        for element in parsed.body
        if isinstance(element.tag, str)
    )


async def refused_by_access_rights(node_url: str, session: aiohttp.ClientSession) -> Outcome:
    name = "Refused: the pension authority may not read citizen records"
    client = XRoadRestClient(node_url, PENSIONS, session=session)
    try:
        result = await client.call("GET", GET_CITIZEN, f"/citizens/{LIVING_CITIZEN}")
    except FaultError as fault:
        ok = fault.fault_code == "Server.ServerProxy.AccessDenied"
        return Outcome(name, ok, f"{fault.fault_code}: {fault.message}")
    return Outcome(name, False, f"expected a refusal, got HTTP {result.status}")


EXCHANGES: tuple[Exchange, ...] = (
    rest_get_citizen,
    soap_get_citizen,
    rest_death_record,
    rest_verify_document,
    metaservices,
    refused_by_access_rights,
)
