"""OCSP responders on 127.0.0.1 for failover tests: a real responder that counts the requests it
gets and can be told to fail the ways listed responders fail in practice, and the URL of a port
nothing listens on."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from certs.ocsp import OcspResponder
from trust_services.http_server import serve_app
from trust_services.ocsp_server import CONTENT_TYPE_RESPONSE, ocsp_app

#: How a :class:`ListedResponder` answers: ``answer`` is the real responder's answer; the
#: others are HTTP 500, 200 with bytes that are no OCSP response, and the OCSP status
#: ``tryLater`` / ``internalError`` (RFC 6960 unsuccessful responses).
Mode = Literal["answer", "http500", "garbage", "try_later", "internal_error"]

_UNSUCCESSFUL = {
    "try_later": ocsp.OCSPResponseStatus.TRY_LATER,
    "internal_error": ocsp.OCSPResponseStatus.INTERNAL_ERROR,
}


@dataclasses.dataclass
class ListedResponder:
    """One responder of a CA's list, as seen from the test: its URL and what it was asked."""

    url: str
    mode: Mode = "answer"
    requests: int = 0


@contextlib.asynccontextmanager
async def listed_responder(
    responder: OcspResponder, clock: Callable[[], dt.datetime], mode: Mode = "answer"
) -> AsyncIterator[ListedResponder]:
    """Serve ``responder`` over HTTP; the yielded object's ``mode`` may be changed at any time."""
    state = ListedResponder("", mode)

    @web.middleware
    async def behave(request: web.Request, handler: Handler) -> web.StreamResponse:
        state.requests += 1
        if state.mode == "http500":
            return web.Response(status=500, text="responder broken\n")
        if state.mode == "garbage":
            return web.Response(body=b"<html>not OCSP</html>", content_type=CONTENT_TYPE_RESPONSE)
        if state.mode in _UNSUCCESSFUL:
            body = ocsp.OCSPResponseBuilder.build_unsuccessful(
                _UNSUCCESSFUL[state.mode]
            ).public_bytes(serialization.Encoding.DER)
            return web.Response(body=body, content_type=CONTENT_TYPE_RESPONSE)
        return await handler(request)

    app = ocsp_app(responder, clock=clock)
    app.middlewares.append(behave)
    async with serve_app(app) as url:
        state.url = url + "/"
        yield state


async def closed_url() -> str:
    """The URL of a server that has just stopped, so nothing listens on its port."""
    async with serve_app(web.Application()) as url:
        pass
    return url + "/"
