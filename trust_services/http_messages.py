"""HTTP messages of the trust services: bodies read up to a size limit, and the client's POST.

Rules:

- A body whose declared ``Content-Length`` is over the limit is refused before any of it is
  read; a body without one (chunked) is read until it passes the limit, and no further.
- What a refusal means is the caller's to say: :func:`read_limited` returns None and the
  caller raises its own error (an ``OcspError``, a ``TimestampError``, a download error);
  :func:`read_request_body` answers HTTP 415 or 413 itself, the way aiohttp answers HTTP
  exceptions raised in a handler, with a plain-text line naming what to send.
- :func:`post_query` is a client's whole round trip to an OCSP responder or a TSA: every
  failure (no connection, a timeout, a status other than 200, another content type, an answer
  over the limit) becomes the caller's error class, with a message naming the service and its
  URL; aiohttp and socket errors do not leak out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import aiohttp
from aiohttp import web

__all__ = ["post_query", "read_limited", "read_request_body", "request_too_large"]

_CHUNK_BYTES = 64 * 1024

HttpMessage = web.BaseRequest | aiohttp.ClientResponse


async def read_limited(message: HttpMessage, limit: int) -> bytes | None:
    """The body of a request or response, or None when it is larger than ``limit`` bytes."""
    if message.content_length is not None and message.content_length > limit:
        return None
    body = bytearray()
    async for chunk in message.content.iter_chunked(_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def read_request_body(
    request: web.BaseRequest, *, content_type: str, limit: int, what: str
) -> bytes:
    """The body of a request that must be ``content_type`` and at most ``limit`` bytes.

    ``what`` names the request in the refusal (``"OCSP request"``). Raises
    ``web.HTTPUnsupportedMediaType`` (415) or ``web.HTTPRequestEntityTooLarge`` (413).
    """
    if request.content_type != content_type:
        raise web.HTTPUnsupportedMediaType(
            text=f"send the {what} with Content-Type {content_type}\n"
        )
    body = await read_limited(request, limit)
    if body is None:
        raise request_too_large(request, limit, what)
    return body


def request_too_large(request: web.BaseRequest, limit: int, what: str) -> web.HTTPException:
    """The 413 answer to a request larger than ``limit`` bytes."""
    return web.HTTPRequestEntityTooLarge(
        limit, request.content_length or limit + 1, text=f"the {what} exceeds {limit} bytes\n"
    )


async def post_query(
    session: aiohttp.ClientSession,
    url: str,
    query: bytes,
    *,
    content_type: str,
    answer_types: Sequence[str],
    limit: int,
    request_timeout: dt.timedelta,
    service: str,
    error: Callable[[str], Exception],
) -> bytes:
    """POST ``query`` to the ``service`` at ``url``; return the answer's body.

    The answer must be HTTP 200 with one of ``answer_types`` (the first is the one asked for)
    and at most ``limit`` bytes; anything else raises ``error(message)``.
    """
    try:
        async with session.post(
            url,
            data=query,
            headers={"Content-Type": content_type, "Accept": answer_types[0]},
            timeout=aiohttp.ClientTimeout(total=request_timeout.total_seconds()),
        ) as resp:
            if resp.status != 200:
                raise error(
                    f"the {service} at {url} answered HTTP {resp.status}; check the {service} "
                    "URL and that it is running"
                )
            if resp.content_type not in answer_types:
                raise error(
                    f"the {service} at {url} answered {resp.content_type!r}, not "
                    f"{answer_types[0]}; check the {service} URL"
                )
            answer = await read_limited(resp, limit)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise error(
            f"cannot reach the {service} at {url}: {exc.__class__.__name__} {exc}".rstrip()
        ) from exc
    if answer is None:
        raise error(f"the answer of the {service} at {url} exceeds {limit} bytes")
    return answer
