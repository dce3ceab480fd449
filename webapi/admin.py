"""API-key authentication with roles, JSON bodies and JSON errors for an aiohttp admin API.

Rules:

- A protected route needs ``Authorization: Bearer <api key>``. A missing key, or one the
  API's ``authenticate`` does not know, is 401 :class:`AuthenticationRequired`. Role
  ``auditor`` may only read (GET, HEAD): anything else is 403 :class:`Forbidden`; role
  ``operator`` may do everything the API allows (an API may refuse more, per route). The
  caller is kept on the request as :data:`CALLER`; the key itself stays in the frame that
  checked it, out of later tracebacks and logs.
- Every error is answered as JSON ``{"type": <error class>, "message": <what was wrong and what
  to do>}`` with the error's HTTP status: Jisr errors with their own, aiohttp's (404, 405 with
  its ``Allow`` header) as ``HttpError``; an unexpected exception is logged and answered 500
  without details.
- A request body is at most the API's limit, and a JSON body must be one object; a
  certificate in it is PEM text or base64 DER.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509

from config.errors import JisrError, ValidationError

__all__ = [
    "CALLER",
    "Authenticate",
    "AuthenticationRequired",
    "Caller",
    "Forbidden",
    "actor_of",
    "api_key_middleware",
    "certificate_field",
    "error_response",
    "json_errors_middleware",
    "read_body",
    "read_json_object",
]

log = structlog.get_logger(__name__)


#: Roles an API key can have; only an operator may change anything.
OPERATOR = "operator"
_READ_METHODS = frozenset({"GET", "HEAD"})


class AuthenticationRequired(ValidationError):
    """No API key, or one this API does not know."""

    http_status = 401


class Forbidden(ValidationError):
    """The API key's role does not allow this call."""

    http_status = 403


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the API key's name (the audit actor) and its role."""

    name: str
    role: str


CALLER = web.RequestKey("admin_api_caller", Caller)

#: Finds the caller an API key belongs to; None for an unknown or revoked key.
Authenticate = Callable[[web.Request, str], Awaitable[Caller | None]]


def actor_of(request: web.Request) -> str:
    """The audit actor of a change made through the API: ``api:<key name>``."""
    return f"api:{request[CALLER].name}"


def error_response(exc: JisrError) -> web.Response:
    """The JSON answer to a Jisr error, with its HTTP status."""
    return web.json_response(
        {"type": type(exc).__name__, "message": exc.message}, status=exc.http_status
    )


def json_errors_middleware(owner: str) -> Middleware:
    """Turn every error into the JSON error form; ``owner`` ("registry", "node") names whose
    log holds the details of an unexpected one."""

    @web.middleware
    async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except JisrError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.json_response(
                {"type": "HttpError", "message": f"{exc.reason}: {request.method} {request.path}"},
                status=exc.status,
                headers=allow,
            )
        except Exception:
            log.exception(
                "admin API request failed", api=owner, path=request.path, method=request.method
            )
            return web.json_response(
                {"type": "InternalError", "message": f"internal error; see the {owner}'s log"},
                status=500,
            )

    return answer_errors


def api_key_middleware(
    authenticate: Authenticate,
    *,
    protected: Callable[[str], bool],
    how_to_get_a_key: str = "ask an operator for one",
) -> Middleware:
    """Check the API key of every request whose path is ``protected``, and its role."""

    @web.middleware
    async def check_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if protected(request.path):
            caller = await _caller(request, authenticate, how_to_get_a_key)
            if request.method not in _READ_METHODS and caller.role != OPERATOR:
                raise Forbidden(
                    f"API key {caller.name!r} has role {caller.role}, which may only read; "
                    "changes need an operator key"
                )
            request[CALLER] = caller
        return await handler(request)

    return check_api_key


async def _caller(request: web.Request, authenticate: Authenticate, how_to_get: str) -> Caller:
    """The caller; the secret stays in this frame, out of later tracebacks."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationRequired(
            f"this admin API call needs an API key: send 'Authorization: Bearer <key>' "
            f"({how_to_get})"
        )
    caller = await authenticate(request, token.strip())
    if caller is None:
        raise AuthenticationRequired("the API key is unknown or revoked; ask an operator for one")
    return caller


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request body, refused (ValidationError) when it is larger than ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise ValidationError(f"the request body is larger than {limit} bytes")
    # Chunk by chunk: one read() returns only what has arrived so far.
    raw = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        raw += chunk
        if len(raw) > limit:
            raise ValidationError(f"the request body is larger than {limit} bytes")
    return bytes(raw)


async def read_json_object(request: web.BaseRequest, limit: int) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body), at most ``limit`` bytes."""
    raw = await read_body(request, limit)
    try:
        data = json.loads(raw or b"{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValidationError("the request body must be a JSON object")
    return data


def certificate_field(value: object, what: str) -> x509.Certificate:
    """A certificate sent in a JSON body as PEM text or base64 DER; ``what`` names the field."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{what} must be a certificate (base64 DER or PEM)")
    try:
        if "-----BEGIN" in value:
            return x509.load_pem_x509_certificate(value.encode())
        return x509.load_der_x509_certificate(base64.b64decode(value, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ValidationError(f"{what} is not a PEM or base64 DER certificate: {exc}") from exc
