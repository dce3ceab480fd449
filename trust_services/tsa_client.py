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
from trust_services.http_messages import post_query
from trust_services.tsa_server import CONTENT_TYPE_REPLY, CONTENT_TYPE_REQUEST

__all__ = ["DEFAULT_TIMEOUT", "request_timestamp", "request_token"]

DEFAULT_TIMEOUT = dt.timedelta(seconds=10)

#: Reply types accepted: RFC 3161's, and the one some older TSAs send.
_REPLY_TYPES = (CONTENT_TYPE_REPLY, "application/timestamp-response")


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
    reply = await post_query(
        session,
        url,
        request,
        content_type=CONTENT_TYPE_REQUEST,
        answer_types=_REPLY_TYPES,
        limit=MAX_RESPONSE_BYTES,
        request_timeout=request_timeout,
        service="TSA",
        error=TimestampError,
    )
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
