"""The minimal provider service behind both the nodes and the baseline proxies.

Rules:

- Three answers, one per scenario: ``GET /small`` a small JSON document, ``POST /echo`` the
  request body echoed with its content type (up to :data:`MAX_BODY_BYTES`), ``POST /soap`` an
  X-Road SOAP 4.0 response to the request (headers repeated in order, as PR-MESS requires, so
  that a node accepts it).
- The service does as little as it can, so that the benchmark measures the path to it, not the
  service: no logging, no storage; the SOAP request is still parsed by :mod:`gateway.soap`,
  which any real provider does too, and which bounds its size and refuses DOCTYPEs.
- Run it as ``python -m bench.service``: it binds 127.0.0.1 on a port the operating system
  chooses, announces its URL (:func:`bench.processes.announce_ready`) and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Final

from aiohttp import web
from lxml import etree

from bench.processes import run_event_loop, wait_for_stop_signal
from gateway.faults import FaultError
from gateway.soap import build_response, parse_soap_request
from gateway.soap_fault import SOAP_FAULT_HTTP_STATUS, soap_fault
from jisr.processes import announce_ready
from trust_services.http_server import serve_app

#: Largest request body the service reads: the 100 KB scenario with room to spare.
MAX_BODY_BYTES: Final = 1024 * 1024
SMALL_DOCUMENT: Final = json.dumps(
    {"status": "ok", "service": "bench", "message": "a small JSON answer"}, separators=(",", ":")
).encode()
#: Namespace of the SOAP service's body elements.
SOAP_NAMESPACE: Final = "http://jisr.example/bench"
SOAP_ANSWER: Final = "bench answer"


async def small(_request: web.Request) -> web.Response:
    return web.Response(body=SMALL_DOCUMENT, content_type="application/json")


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, content_type=request.content_type or "application/octet-stream")


async def soap(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        message = parse_soap_request(
            body, request.headers.get("Content-Type", ""), max_bytes=MAX_BODY_BYTES
        )
    except FaultError as fault:
        return web.Response(
            body=soap_fault(fault),
            status=SOAP_FAULT_HTTP_STATUS,
            content_type="text/xml",
            charset="utf-8",
        )
    assert message.service is not None  # parse_soap_request requires it
    answer = etree.Element(f"{{{SOAP_NAMESPACE}}}{message.service.service_code}Response")
    etree.SubElement(answer, f"{{{SOAP_NAMESPACE}}}answer").text = SOAP_ANSWER
    return web.Response(
        body=build_response(message, answer), content_type="text/xml", charset="utf-8"
    )


def service_app() -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/small", small)
    app.router.add_post("/echo", echo)
    app.router.add_post("/soap", soap)
    return app


async def serve() -> None:
    async with serve_app(service_app(), shutdown_timeout=1.0) as url:
        announce_ready(url=url, pid=os.getpid())
        await wait_for_stop_signal()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.parse_args(argv)
    run_event_loop(serve())


if __name__ == "__main__":
    main()
