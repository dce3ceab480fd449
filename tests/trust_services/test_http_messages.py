"""Bodies read up to a limit on both sides, and the client's POST round trip."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from config.errors import ValidationError
from trust_services.http_messages import post_query, read_limited, read_request_body
from trust_services.http_server import serve_app

LIMIT = 1000
_TIMEOUT = dt.timedelta(seconds=30)


async def _chunked(request: web.Request) -> web.StreamResponse:
    """Answers ``size`` bytes without a Content-Length, so only counting can stop the reader."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-test"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    remaining = int(request.query["size"])
    while remaining > 0:
        piece = min(remaining, 300)
        await response.write(b"x" * piece)
        remaining -= piece
    await response.write_eof()
    return response


async def _echo(request: web.Request) -> web.Response:
    body = await read_request_body(
        request, content_type="application/x-test", limit=LIMIT, what="test request"
    )
    return web.Response(body=body, content_type="application/x-test")


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/chunked", _chunked)
    app.router.add_post("/echo", _echo)
    async with serve_app(app) as base:
        yield base


async def test_reads_a_chunked_answer_up_to_the_limit_and_no_further(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/chunked?size={LIMIT}") as resp:
            assert resp.content_length is None
            assert await read_limited(resp, LIMIT) == b"x" * LIMIT
        async with session.get(f"{url}/chunked?size={LIMIT + 1}") as resp:
            assert await read_limited(resp, LIMIT) is None


async def test_server_refuses_a_wrong_type_and_a_large_body_with_a_line_saying_why(
    url: str,
) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Content-Type": "text/plain"}
        async with session.post(f"{url}/echo", data=b"hi", headers=headers) as resp:
            assert resp.status == 415
            assert "Content-Type application/x-test" in await resp.text()
        headers = {"Content-Type": "application/x-test"}
        big = b"x" * (LIMIT + 1)
        async with session.post(f"{url}/echo", data=big, headers=headers) as resp:
            assert resp.status == 413
            assert await resp.text() == f"the test request exceeds {LIMIT} bytes\n"


async def test_post_query_returns_the_answer_of_the_asked_type(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        answer = await post_query(
            session,
            f"{url}/echo",
            b"query",
            content_type="application/x-test",
            answer_types=("application/x-test",),
            limit=LIMIT,
            request_timeout=_TIMEOUT,
            service="test service",
            error=ValidationError,
        )
    assert answer == b"query"


@pytest.mark.parametrize(
    ("path", "answer_types", "limit", "message"),
    [
        ("/nowhere", ("application/x-test",), LIMIT, "answered HTTP 404"),
        ("/echo", ("application/x-other",), LIMIT, "answered 'application/x-test'"),
        ("/echo", ("application/x-test",), 3, "exceeds 3 bytes"),
    ],
)
async def test_post_query_turns_every_failure_into_the_callers_error(
    url: str, path: str, answer_types: tuple[str, ...], limit: int, message: str
) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValidationError, match=message) as caught:
            await post_query(
                session,
                url + path,
                b"query",
                content_type="application/x-test",
                answer_types=answer_types,
                limit=limit,
                request_timeout=_TIMEOUT,
                service="test service",
                error=ValidationError,
            )
    assert f"test service at {url}{path}" in str(caught.value)
