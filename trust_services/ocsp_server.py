"""The OCSP responder over HTTP (RFC 6960 appendix A).

Rules:

- ``POST /`` with an ``application/ocsp-request`` body, and ``GET /{base64 of the DER
  request, URL-encoded}``, are answered with ``application/ocsp-response``.
- Bodies larger than :data:`MAX_REQUEST_BYTES` are refused with HTTP 413 before they are read
  in full; a request that is not OCSP gets an OCSP ``malformedRequest`` answer, as RFC 6960
  asks, with HTTP 200.
- No request crashes the server: anything unexpected becomes an OCSP ``internalError`` answer
  and one log line. Requests are logged without their bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable

import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from certs.ocsp import MAX_REQUEST_BYTES, OcspResponder
from trust_services.http_messages import read_request_body, request_too_large

__all__ = ["CONTENT_TYPE_REQUEST", "CONTENT_TYPE_RESPONSE", "ocsp_app"]

CONTENT_TYPE_REQUEST = "application/ocsp-request"
CONTENT_TYPE_RESPONSE = "application/ocsp-response"

Clock = Callable[[], dt.datetime]

_WHAT = "OCSP request"
_RESPONDER = web.AppKey("ocsp_responder", OcspResponder)
_CLOCK: web.AppKey[Clock] = web.AppKey("ocsp_clock")

_log = structlog.get_logger(__name__)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ocsp_app(responder: OcspResponder, *, clock: Clock = _utc_now) -> web.Application:
    """An aiohttp application answering OCSP requests with ``responder``.

    ``clock`` gives the time put into responses; tests pass a fixed one.
    """
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[_RESPONDER] = responder
    app[_CLOCK] = clock
    app.router.add_post("/", _handle_post)
    app.router.add_get("/{encoded:.+}", _handle_get)
    return app


async def _handle_post(request: web.Request) -> web.Response:
    body = await read_request_body(
        request, content_type=CONTENT_TYPE_REQUEST, limit=MAX_REQUEST_BYTES, what=_WHAT
    )
    return _answer(request, body, "POST")


async def _handle_get(request: web.Request) -> web.Response:
    encoded = request.match_info["encoded"]
    if len(encoded) > MAX_REQUEST_BYTES * 2:
        raise request_too_large(request, MAX_REQUEST_BYTES, _WHAT)
    try:
        der = _decode_get_path(encoded)
    except (ValueError, binascii.Error):
        der = b""  # not base64: the responder answers malformedRequest
    return _answer(request, der, "GET")


def _decode_get_path(encoded: str) -> bytes:
    """The DER request from a GET path; accepts standard and URL-safe base64, padded or not."""
    text = encoded.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


def _answer(request: web.Request, der: bytes, method: str) -> web.Response:
    responder = request.app[_RESPONDER]
    try:
        answer = responder.respond(der, now=request.app[_CLOCK]())
    except Exception:  # the server must keep answering whatever a single request does
        _log.exception("ocsp_request_failed", method=method, peer=request.remote)
        answer = ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.INTERNAL_ERROR
        ).public_bytes(serialization.Encoding.DER)
    _log.debug("ocsp_request_answered", method=method, peer=request.remote, size=len(der))
    return web.Response(
        body=answer,
        content_type=CONTENT_TYPE_RESPONSE,
        headers={"Cache-Control": "no-store"} if method == "POST" else None,
    )
