"""The timestamping authority over HTTP (RFC 3161 section 3.4).

Rules:

- ``POST /`` with an ``application/timestamp-query`` body is answered with
  ``application/timestamp-reply`` and HTTP 200, also when the TSA refuses the request: the
  refusal is an RFC 3161 rejection inside the reply, as clients such as ``openssl ts`` expect.
- Another content type gets HTTP 415; a body larger than :data:`MAX_REQUEST_BYTES` gets HTTP
  413 before it is read in full.
- Serial numbers come from a :class:`SerialNumbers` counter kept in a small file in the TSA's
  state directory: they are unique and increase for as long as the directory is kept, across
  restarts. The counter reserves them in blocks, so the file is written once per block and
  not once per token; numbers of a block left unused at shutdown are skipped, never reissued.
- No request crashes the server: a failure of the signing key becomes an RFC 3161
  ``systemFailure`` reply and one log line. Requests are logged without their bytes.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from certs.tsa import MAX_REQUEST_BYTES, TimestampAuthority, TimestampError, rejection
from config.errors import ConfigError
from trust_services.http_messages import read_request_body

__all__ = [
    "CONTENT_TYPE_REPLY",
    "CONTENT_TYPE_REQUEST",
    "SerialNumbers",
    "tsa_app",
]

CONTENT_TYPE_REQUEST = "application/timestamp-query"
CONTENT_TYPE_REPLY = "application/timestamp-reply"

#: Serial numbers reserved per write of the counter file.
SERIAL_BLOCK = 1024

Clock = Callable[[], dt.datetime]

_log = structlog.get_logger(__name__)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SerialNumbers:
    """Unique, increasing token serial numbers backed by a counter file.

    The file holds the first number not yet reserved. Reserving a block takes an exclusive
    lock on the file, so several processes sharing one state directory get disjoint blocks
    (each process's numbers increase; numbers of different processes interleave).
    """

    def __init__(self, path: Path, *, block: int = SERIAL_BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self._path = path
        self._block = block
        self._next = 0
        self._end = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def next(self) -> int:
        """The next serial number; writes the counter file when a block is used up."""
        with self._lock:
            if self._next >= self._end:
                self._next, self._end = self._reserve()
            serial = self._next
            self._next += 1
            return serial

    def _reserve(self) -> tuple[int, int]:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the TSA serial counter {self._path}: {exc.strerror or exc}; "
                "check that the state directory exists and is writable"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            try:
                start = int(text) if text else 1
            except ValueError:
                raise ConfigError(
                    f"the TSA serial counter {self._path} holds {text[:20]!r}, not a number; "
                    "restore it from a backup, or write a number above the last issued serial"
                ) from None
            if start < 1:
                raise ConfigError(f"the TSA serial counter {self._path} holds {start}, not > 0")
            end = start + self._block
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, f"{end}\n".encode("ascii"))
            os.fsync(fd)
        except OSError as exc:
            raise ConfigError(
                f"cannot update the TSA serial counter {self._path}: {exc.strerror or exc}"
            ) from exc
        finally:
            os.close(fd)  # also releases the lock
        return start, end


_AUTHORITY = web.AppKey("tsa_authority", TimestampAuthority)
_SERIALS = web.AppKey("tsa_serials", SerialNumbers)
_CLOCK: web.AppKey[Clock] = web.AppKey("tsa_clock")


def tsa_app(
    authority: TimestampAuthority, serials: SerialNumbers, *, clock: Clock = _utc_now
) -> web.Application:
    """An aiohttp application issuing tokens with ``authority``.

    ``clock`` gives each token's genTime; tests pass a fixed one.
    """
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[_AUTHORITY] = authority
    app[_SERIALS] = serials
    app[_CLOCK] = clock
    app.router.add_post("/", _handle_post)
    return app


async def _handle_post(request: web.Request) -> web.Response:
    body = await read_request_body(
        request,
        content_type=CONTENT_TYPE_REQUEST,
        limit=MAX_REQUEST_BYTES,
        what="timestamp request",
    )
    app = request.app
    try:
        serial = app[_SERIALS].next()
        reply = app[_AUTHORITY].respond(body, now=app[_CLOCK](), serial=serial)
    except (TimestampError, ConfigError) as exc:
        _log.error("tsa_failed", remote=request.remote, error=str(exc))
        reply = rejection("system_failure", "the TSA cannot issue tokens now; try again later")
    else:
        _log.debug("tsa_answered", remote=request.remote, serial=serial, size=len(body))
    return web.Response(body=reply, content_type=CONTENT_TYPE_REPLY)
