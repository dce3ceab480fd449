"""The demo's national provider services: NDC population, MOHESR certificates, MOH forensic.

Rules:

- Each service is an aiohttp application with a REST face (JSON), a SOAP face (X-Road 4.0,
  ``POST {base}/soap``, built with :mod:`adapters.provider`) and its descriptions
  (``GET {base}/wsdl``, ``GET {base}/openapi.json``). The three mount under ``/ndc``,
  ``/mohesr`` and ``/moh`` of one application.
- REST errors are the provider's own, passed through any node unchanged: JSON
  ``{"error": <code>, "message": <text>}``; 400 for a malformed identifier, 404 for an
  unknown one.
- SOAP: an identifier the WSDL's schema forbids (missing, malformed) is a technical error, a
  SOAP Fault ``Client.InvalidBody``; a well-formed identifier with no record is a *business*
  answer: a normal response holding ``<error><code>NOT_FOUND</code>...</error>`` (or, for
  ``verifyDocument``, the verdict ``not_found``), as X-Road expects business errors to travel.
- Diploma verification never discloses another person's data: a ``mismatch`` verdict carries
  no document details.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any, Final

from aiohttp import web
from lxml import etree

from adapters.provider import Operation, ProviderRequest, SoapProvider, append_text
from adapters.sample_records import (
    CITIZEN_FIELDS,
    DEATH_RECORD_FIELDS,
    DIPLOMA_FIELDS,
    DOCUMENT_NUMBER_RE,
    NATIONAL_ID_RE,
    Record,
    SampleRecords,
    packaged_records,
)
from gateway.faults import client_fault
from gateway.identifiers import SubsystemId

SOAP_PATH: Final = "/soap"
#: Largest request body the sample services accept (they take only short identifiers).
MAX_REQUEST_BYTES: Final = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class SampleService:
    """What a node's catalogue needs to publish one sample service."""

    kind: str
    provider: SubsystemId
    service_code: str
    #: Where :func:`build_all_sample_services` mounts the service.
    mount: str
    #: Namespace of the SOAP body elements (the WSDL's targetNamespace).
    namespace: str
    #: File names in the ``adapters.service_descriptions`` package.
    wsdl_file: str
    openapi_file: str

    def rest_url(self, base_url: str) -> str:
        """The REST service's base URL under a server at ``base_url``."""
        return base_url.rstrip("/") + self.mount

    def soap_url(self, base_url: str) -> str:
        """The SOAP endpoint's URL under a server at ``base_url``."""
        return base_url.rstrip("/") + self.mount + SOAP_PATH

    def wsdl(self) -> bytes:
        return description_bytes(self.wsdl_file)

    def openapi(self) -> bytes:
        return description_bytes(self.openapi_file)


SAMPLE_SERVICES: Final[Mapping[str, SampleService]] = {
    "ndc": SampleService(
        kind="ndc",
        provider=SubsystemId("IQ", "GOV", "NDC", "population"),
        service_code="getCitizen",
        mount="/ndc",
        namespace="urn:jisr:iq:gov:ndc:population",
        wsdl_file="ndc-population.wsdl",
        openapi_file="ndc-population.openapi.json",
    ),
    "mohesr": SampleService(
        kind="mohesr",
        provider=SubsystemId("IQ", "GOV", "MOHESR", "certificates"),
        service_code="verifyDocument",
        mount="/mohesr",
        namespace="urn:jisr:iq:gov:mohesr:certificates",
        wsdl_file="mohesr-certificates.wsdl",
        openapi_file="mohesr-certificates.openapi.json",
    ),
    "moh": SampleService(
        kind="moh",
        provider=SubsystemId("IQ", "GOV", "MOH", "forensic"),
        service_code="getDeathRecord",
        mount="/moh",
        namespace="urn:jisr:iq:gov:moh:forensic",
        wsdl_file="moh-forensic.wsdl",
        openapi_file="moh-forensic.openapi.json",
    ),
}

VERDICTS_AR: Final = {
    "authentic": "صحيح الصدور",
    "not_found": "غير موجود في سجلات الوزارة",
    "mismatch": "لا يطابق بيانات حامل الوثيقة",
}


def description_bytes(filename: str) -> bytes:
    """A packaged WSDL or OpenAPI file, as bytes."""
    return resources.files("adapters.service_descriptions").joinpath(filename).read_bytes()


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _record_element(
    parent: etree._Element, name: str, record: Record, fields: tuple[str, ...]
) -> None:
    namespace = etree.QName(parent).namespace
    element = etree.SubElement(parent, f"{{{namespace}}}{name}" if namespace else name)
    for field in fields:
        append_text(element, field, record[field])


def _business_error(response: etree._Element, code: str, message: str) -> etree._Element:
    namespace = etree.QName(response).namespace
    error = etree.SubElement(response, f"{{{namespace}}}error")
    append_text(error, "code", code)
    append_text(error, "message", message)
    return response


def _soap_national_id(request: ProviderRequest) -> str:
    national_id = request.require_text("nationalId")
    if not NATIONAL_ID_RE.fullmatch(national_id):
        raise client_fault(
            "InvalidBody", f"nationalId {national_id!r} is not a 12-digit Iraqi national id"
        )
    return national_id


# --- NDC population -------------------------------------------------------------------------


def _population_app(records: SampleRecords) -> web.Application:
    async def get_citizen_rest(request: web.Request) -> web.Response:
        national_id = request.match_info["nationalId"]
        if not NATIONAL_ID_RE.fullmatch(national_id):
            return _json_error(
                400, "invalid_national_id", "a national id is 12 digits, e.g. 198503141027"
            )
        citizen = records.citizens.get(national_id)
        if citizen is None:
            return _json_error(404, "not_found", f"no citizen has national id {national_id}")
        return web.json_response(dict(citizen))

    async def get_citizen_soap(request: ProviderRequest) -> etree._Element:
        national_id = _soap_national_id(request)
        response = request.response_element()
        citizen = records.citizens.get(national_id)
        if citizen is None:
            return _business_error(
                response, "NOT_FOUND", f"no citizen has national id {national_id}"
            )
        _record_element(response, "citizen", citizen, CITIZEN_FIELDS)
        return response

    app = _service_app(SAMPLE_SERVICES["ndc"], {"getCitizen": get_citizen_soap})
    app.router.add_get("/citizens/{nationalId}", get_citizen_rest)
    return app


# --- MOHESR certificates --------------------------------------------------------------------


def _verdict(
    records: SampleRecords, number: str, national_id: str | None
) -> tuple[str, Record | None]:
    diploma = records.diplomas.get(number)
    if diploma is None:
        return "not_found", None
    if national_id is not None and diploma["nationalId"] != national_id:
        return "mismatch", None
    return "authentic", diploma


def _verdict_json(number: str, verdict: str, diploma: Record | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "documentNumber": number,
        "verdict": verdict,
        "verdictAr": VERDICTS_AR[verdict],
    }
    if diploma is not None:
        body["document"] = dict(diploma)
    return body


def _certificates_app(records: SampleRecords) -> web.Application:
    async def get_document(request: web.Request) -> web.Response:
        number = request.match_info["documentNumber"]
        if not DOCUMENT_NUMBER_RE.fullmatch(number):
            return _json_error(
                400,
                "invalid_document_number",
                "a document number is a university code, year and serial, e.g. UOB-2007-031245",
            )
        verdict, diploma = _verdict(records, number, None)
        status = 404 if verdict == "not_found" else 200
        return web.json_response(_verdict_json(number, verdict, diploma), status=status)

    async def verify_document(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json_error(
                400, "invalid_request", "send a JSON object {documentNumber, nationalId}"
            )
        if not isinstance(body, dict):
            return _json_error(
                400, "invalid_request", "send a JSON object {documentNumber, nationalId}"
            )
        number = body.get("documentNumber")
        national_id = body.get("nationalId")
        if not isinstance(number, str) or not DOCUMENT_NUMBER_RE.fullmatch(number):
            return _json_error(
                400, "invalid_document_number", "documentNumber must look like UOB-2007-031245"
            )
        if national_id is not None and (
            not isinstance(national_id, str) or not NATIONAL_ID_RE.fullmatch(national_id)
        ):
            return _json_error(400, "invalid_national_id", "nationalId must be 12 digits")
        verdict, diploma = _verdict(records, number, national_id)
        return web.json_response(_verdict_json(number, verdict, diploma))

    async def verify_document_soap(request: ProviderRequest) -> etree._Element:
        number = request.require_text("documentNumber")
        if not DOCUMENT_NUMBER_RE.fullmatch(number):
            raise client_fault(
                "InvalidBody", f"documentNumber {number!r} does not look like UOB-2007-031245"
            )
        national_id = request.text("nationalId") or None
        if national_id is not None and not NATIONAL_ID_RE.fullmatch(national_id):
            raise client_fault("InvalidBody", f"nationalId {national_id!r} is not 12 digits")
        verdict, diploma = _verdict(records, number, national_id)
        response = request.response_element()
        append_text(response, "documentNumber", number)
        append_text(response, "verdict", verdict)
        append_text(response, "verdictAr", VERDICTS_AR[verdict])
        if diploma is not None:
            _record_element(response, "document", diploma, DIPLOMA_FIELDS)
        return response

    app = _service_app(SAMPLE_SERVICES["mohesr"], {"verifyDocument": verify_document_soap})
    app.router.add_post("/documents/verify", verify_document)
    app.router.add_get("/documents/{documentNumber}", get_document)
    return app


# --- MOH forensic ---------------------------------------------------------------------------


def _forensic_app(records: SampleRecords) -> web.Application:
    async def get_death_record_rest(request: web.Request) -> web.Response:
        national_id = request.match_info["nationalId"]
        if not NATIONAL_ID_RE.fullmatch(national_id):
            return _json_error(
                400, "invalid_national_id", "a national id is 12 digits, e.g. 194902170054"
            )
        record = records.death_records.get(national_id)
        if record is None:
            return _json_error(
                404, "not_found", f"no death record is registered for national id {national_id}"
            )
        return web.json_response(dict(record))

    async def get_death_record_soap(request: ProviderRequest) -> etree._Element:
        national_id = _soap_national_id(request)
        response = request.response_element()
        record = records.death_records.get(national_id)
        if record is None:
            return _business_error(
                response,
                "NOT_FOUND",
                f"no death record is registered for national id {national_id}",
            )
        _record_element(response, "deathRecord", record, DEATH_RECORD_FIELDS)
        return response

    app = _service_app(SAMPLE_SERVICES["moh"], {"getDeathRecord": get_death_record_soap})
    app.router.add_get("/death-records/{nationalId}", get_death_record_rest)
    return app


# --- assembly -------------------------------------------------------------------------------


def _service_app(service: SampleService, operations: Mapping[str, Operation]) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    soap = SoapProvider(service.namespace, operations, max_request_bytes=MAX_REQUEST_BYTES)
    wsdl = service.wsdl()
    openapi = service.openapi()

    async def get_wsdl(_: web.Request) -> web.Response:
        return web.Response(body=wsdl, content_type="text/xml", charset="utf-8")

    async def get_openapi(_: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/json", charset="utf-8")

    app.router.add_post(SOAP_PATH, soap.handle)
    # The service's base URL takes SOAP too, so that one address serves the REST and the SOAP
    # form of the same service code (the demo registers each service once, at its base URL).
    app.router.add_post("/", soap.handle)
    app.router.add_get("/wsdl", get_wsdl)
    app.router.add_get("/openapi.json", get_openapi)
    return app


_BUILDERS: Final = {
    "ndc": _population_app,
    "mohesr": _certificates_app,
    "moh": _forensic_app,
}


def build_sample_app(kind: str, records: SampleRecords | None = None) -> web.Application:
    """One sample service (``ndc``, ``mohesr`` or ``moh``) as an aiohttp application."""
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise ValueError(f"unknown sample service {kind!r}; choose one of {', '.join(_BUILDERS)}")
    return builder(records if records is not None else packaged_records())


def build_all_sample_services(records: SampleRecords | None = None) -> web.Application:
    """All three services in one application, under ``/ndc``, ``/mohesr`` and ``/moh``."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    for kind, service in SAMPLE_SERVICES.items():
        app.add_subapp(service.mount, build_sample_app(kind, records))
    return app


@dataclasses.dataclass(slots=True)
class RunningSampleServices:
    """The sample services listening on a socket; :meth:`close` stops them."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url(self, kind: str) -> str:
        """The REST base URL of one service (its SOAP endpoint is this plus ``/soap``)."""
        return SAMPLE_SERVICES[kind].rest_url(self.base_url)

    async def close(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> RunningSampleServices:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def run_sample_services(host: str = "127.0.0.1", port: int = 0) -> RunningSampleServices:
    """Serve all three services on ``host:port`` (port 0: the OS picks a free port)."""
    runner = web.AppRunner(build_all_sample_services(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
    except BaseException:
        await runner.cleanup()
        raise
    return RunningSampleServices(runner=runner, host=host, port=int(bound[1]))


async def _serve_forever(host: str, port: int) -> None:
    running = await run_sample_services(host, port)
    try:
        for service in SAMPLE_SERVICES.values():
            print(f"{service.provider}/{service.service_code}: {running.url(service.kind)}")
        await asyncio.Event().wait()
    finally:
        await running.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m adapters.sample_services``: run the sample services until interrupted."""
    parser = argparse.ArgumentParser(description="Run the Jisr demo's sample national services.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
