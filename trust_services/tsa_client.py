"""Asking a timestamping authority for a token over HTTP (RFC 3161 section 3.4).

Rules:

- The request always carries a fresh nonce unless the caller passes one, and the reply must
  echo it and the imprint sent (:func:`certs.tsa.parse_response`); the token's signature is
  checked by the caller with :func:`certs.tsa.verify_token` against the TSA certificates of
  the global configuration, which this module does not know.
- Every failure a caller can meet is a :class:`certs.tsa.TimestampError` naming the URL and
  what went wrong (a refusal by the TSA is its subclass :class:`certs.tsa.TimestampRejected`);
  aiohttp and socket errors do not leak out. Replies are read up to a size limit.
"""

from __future__ import annotations

import datetime as dt

import aiohttp

from certs.tsa import (
    MAX_RESPONSE_BYTES,
    MessageImprint,
    TimestampError,
    TimestampToken,
    build_request,
    new_nonce,
    parse_response,
)
from trust_services.tsa_server import CONTENT_TYPE_REPLY, CONTENT_TYPE_REQUEST

__all__ = ["DEFAULT_TIMEOUT", "request_timestamp", "request_token"]

DEFAULT_TIMEOUT = dt.timedelta(seconds=10)

#: Reply types accepted: RFC 3161's, and the one some older TSAs send.
_REPLY_TYPES = frozenset({CONTENT_TYPE_REPLY, "application/timestamp-response"})


async def request_token(
    session: aiohttp.ClientSession,
    url: str,
    digest: bytes | MessageImprint,
    *,
    hash: str = "sha256",
    nonce: int | None = None,
    cert_req: bool = True,
    policy_oid: str | None = None,
    request_timeout: dt.timedelta = DEFAULT_TIMEOUT,
) -> TimestampToken:
    """Ask the TSA at ``url`` to timestamp ``digest`` (made with ``hash``); return the token
    with the fields a caller stores (genTime, serial), not yet signature-checked."""
    imprint = digest if isinstance(digest, MessageImprint) else MessageImprint(hash, digest)
    request = build_request(
        imprint,
        nonce=new_nonce() if nonce is None else nonce,
        cert_req=cert_req,
        policy_oid=policy_oid,
    )
    try:
        async with session.post(
            url,
            data=request,
            headers={"Content-Type": CONTENT_TYPE_REQUEST, "Accept": CONTENT_TYPE_REPLY},
            timeout=aiohttp.ClientTimeout(total=request_timeout.total_seconds()),
        ) as resp:
            if resp.status != 200:
                raise TimestampError(
                    f"the TSA at {url} answered HTTP {resp.status}; check the TSA URL and that "
                    "the TSA is running"
                )
            if resp.content_type not in _REPLY_TYPES:
                raise TimestampError(
                    f"the TSA at {url} answered {resp.content_type!r}, not {CONTENT_TYPE_REPLY}; "
                    "check the TSA URL"
                )
            reply = await _read_limited(resp, url)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TimestampError(
            f"cannot reach the TSA at {url}: {exc.__class__.__name__} {exc}".rstrip()
        ) from exc
    try:
        return parse_response(reply, request)
    except TimestampError as exc:
        # Name the TSA, keeping the class (a rejection keeps its status and failure bits).
        exc.message = f"TSA {url}: {exc.message}"
        exc.args = (exc.message,)
        raise


async def request_timestamp(
    session: aiohttp.ClientSession,
    url: str,
    digest: bytes | MessageImprint,
    *,
    hash: str = "sha256",
    nonce: int | None = None,
    cert_req: bool = True,
    policy_oid: str | None = None,
    request_timeout: dt.timedelta = DEFAULT_TIMEOUT,
) -> bytes:
    """Like :func:`request_token`, returning only the token's DER (a CMS ContentInfo)."""
    token = await request_token(
        session,
        url,
        digest,
        hash=hash,
        nonce=nonce,
        cert_req=cert_req,
        policy_oid=policy_oid,
        request_timeout=request_timeout,
    )
    return token.der


async def _read_limited(resp: aiohttp.ClientResponse, url: str) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
        raise TimestampError(f"the reply of the TSA at {url} exceeds {MAX_RESPONSE_BYTES} bytes")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise TimestampError(
                f"the reply of the TSA at {url} exceeds {MAX_RESPONSE_BYTES} bytes"
            )
    return bytes(body)
