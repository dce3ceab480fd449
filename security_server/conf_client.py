"""The global-configuration client: download, verify, keep, and hand out the configuration.

Rules:

- At start the last accepted copy is read from ``DIR/globalconf/`` and verified against the
  anchor as if it had just been downloaded (an expired copy is still kept as the *previous*
  version, so that keys it announced stay trusted, but it is not in force).
- :meth:`ConfClient.poll_once` reads the ``current`` pointer of each anchor source in turn,
  and, when it names a version other than the one held, downloads the document and its
  signature and accepts them only through :func:`gateway.globalconf.verify_globalconf` with
  the held version as ``previous``. An accepted version is written to disk atomically
  (signature first, then document; a crash between the two leaves a pair that fails
  verification at the next start, and the node downloads again) and then swapped in.
- Failures are logged and retried with bounded exponential backoff; the held version stays in
  force until it expires. An HTTP error names the status and, when the source explains itself
  (a plain-text or JSON body, such as the registry's 404 for a pruned version), its
  explanation: at most :data:`MAX_EXPLANATION_BYTES` of the body are read, a JSON error's
  ``message`` is taken, control characters are removed, and a body that is not UTF-8 text is
  not shown. :meth:`current` then raises ``Server.ClientProxy.OutdatedGlobalConf``
  (as does a node with no configuration at all); the node recovers by itself once a download
  succeeds.
- The polling interval is the configuration's ``settings.conf_refresh_s`` once one is held,
  ``conf_poll_s`` from the node settings before that.
- ``on_change`` callbacks run after every swap (TLS roots, peer caches); a failing callback
  is logged and does not undo the swap.
- Time comes from an injected clock; tests call :meth:`poll_once` themselves.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import datetime as dt
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path

import aiohttp
import structlog

from config.errors import JisrError
from config.files import write_atomically
from gateway.anchor import Anchor
from gateway.globalconf import (
    MAX_DOCUMENT_BYTES,
    GlobalConf,
    GlobalConfPointer,
    OutdatedGlobalConf,
    format_time,
    verify_globalconf,
)
from trust_services.http_messages import read_limited

log = structlog.get_logger(__name__)

Clock = Callable[[], dt.datetime]
DOCUMENT_FILE = "conf.json"
SIGNATURE_FILE = "conf.json.p7s"
MAX_POINTER_BYTES = 64 * 1024
MAX_SIGNATURE_BYTES = 256 * 1024
DEFAULT_TIMEOUT_S = 10.0
#: The most of an error answer's body read for its explanation; the rest is not read.
MAX_EXPLANATION_BYTES = 512
_TEXT_TYPES = frozenset({"text/plain", "application/json", "application/problem+json"})


class ConfDownloadError(JisrError):
    """A configuration source could not be read (network, HTTP status, size)."""

    fault_code = "Server.ClientProxy.OutdatedGlobalConf"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class ConfStatus:
    """What the admin API shows about the configuration."""

    version: int | None
    generated_at: dt.datetime | None
    expires_at: dt.datetime | None
    in_force: bool
    last_success_at: dt.datetime | None
    last_error: str | None
    failures: int

    def to_json(self) -> dict[str, object]:
        def t(v: dt.datetime | None) -> str | None:
            return format_time(v) if v else None

        return {
            "version": self.version,
            "generated_at": t(self.generated_at),
            "expires_at": t(self.expires_at),
            "in_force": self.in_force,
            "last_success_at": t(self.last_success_at),
            "last_error": self.last_error,
            "failures": self.failures,
        }


async def _explanation(resp: aiohttp.ClientResponse) -> str:
    """What an error answer says about itself, made safe to show; empty when it says nothing.

    Only a ``text/plain`` or JSON body is read, and only its first
    :data:`MAX_EXPLANATION_BYTES` (a longer one is cut, marked ``...``). Of a JSON object the
    string ``message`` is taken (the registry's errors are ``{"type", "message"}``); other JSON
    is shown as text. A body that is not UTF-8 is ignored. Control and format characters
    (line breaks, escapes, bidirectional overrides) become spaces, so the explanation stays on
    the log line it is written to.
    """
    if resp.content_type not in _TEXT_TYPES:
        return ""
    head = bytearray()
    try:
        while len(head) <= MAX_EXPLANATION_BYTES:
            chunk = await resp.content.read(MAX_EXPLANATION_BYTES + 1 - len(head))
            if not chunk:
                break
            head += chunk
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status is the error; what was read so far may still explain it
    cut = len(head) > MAX_EXPLANATION_BYTES
    del head[MAX_EXPLANATION_BYTES:]
    try:
        # A cut may fall inside a character: an incomplete end is dropped, not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(bytes(head), final=not cut)
    except UnicodeDecodeError:
        return ""
    if resp.content_type != "text/plain" and not cut:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            text = data["message"]
    shown = " ".join(
        "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text).split()
    )
    return f"{shown} ..." if shown and cut else shown


class ConfClient:
    """:class:`security_server.runtime.ConfSource` backed by the registry and a disk copy."""

    def __init__(
        self,
        directory: Path,
        anchor: Anchor,
        *,
        session: aiohttp.ClientSession | None = None,
        poll_s: float = 60.0,
        clock: Clock = _utc_now,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if poll_s <= 0 or min_backoff_s <= 0:
            raise ValueError("poll and backoff intervals must be positive")
        self.directory = directory
        self.anchor = anchor
        self._session = session
        self._own_session = False
        self.poll_s = poll_s
        self.clock = clock
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max(max_backoff_s, min_backoff_s)
        self.timeout_s = timeout_s
        self._conf: GlobalConf | None = None
        self.on_change: list[Callable[[GlobalConf], None]] = []
        self.failures = 0
        self.last_error: str | None = None
        self.last_success_at: dt.datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- the ConfSource interface -------------------------------------------------------------

    def current(self, now: dt.datetime) -> GlobalConf:
        conf = self._conf
        if conf is None:
            raise OutdatedGlobalConf(
                "this node has no global configuration yet; it downloads one from the "
                f"registry ({self.anchor.sources[0].url}) every {int(self.poll_s)} s: check "
                "that the registry is reachable"
                + (f" (last error: {self.last_error})" if self.last_error else "")
            )
        if conf.is_expired(now):
            raise OutdatedGlobalConf(
                f"the global configuration version {conf.version} expired at "
                f"{format_time(conf.expires_at)}; this node cannot download a newer one"
                + (f" (last error: {self.last_error})" if self.last_error else "")
            )
        return conf

    @property
    def latest(self) -> GlobalConf | None:
        """The newest accepted version, whether or not it is still in force."""
        return self._conf

    def status(self) -> ConfStatus:
        conf = self._conf
        now = self.clock()
        return ConfStatus(
            version=conf.version if conf else None,
            generated_at=conf.generated_at if conf else None,
            expires_at=conf.expires_at if conf else None,
            in_force=conf is not None and not conf.is_expired(now),
            last_success_at=self.last_success_at,
            last_error=self.last_error,
            failures=self.failures,
        )

    # -- disk copy ---------------------------------------------------------------------------

    def load_cached(self) -> GlobalConf | None:
        """Read and verify the disk copy; keep it (even if expired) as the previous version."""
        doc_path = self.directory / DOCUMENT_FILE
        sig_path = self.directory / SIGNATURE_FILE
        if not doc_path.is_file() or not sig_path.is_file():
            return None
        try:
            document = doc_path.read_bytes()
            signature = sig_path.read_bytes()
            now = self.clock()
            try:
                conf = verify_globalconf(
                    document, signature, anchor=self.anchor, previous=None, now=now
                )
            except OutdatedGlobalConf:
                # Verified up to expiry: check everything else at a time it was valid.
                parsed = GlobalConf.from_document(document)
                conf = verify_globalconf(
                    document,
                    signature,
                    anchor=self.anchor,
                    previous=None,
                    now=min(now, parsed.expires_at - dt.timedelta(seconds=1)),
                )
        except (OSError, JisrError) as exc:
            log.warning("cached global configuration refused", error=str(exc))
            return None
        self._swap(conf)
        return conf

    def _write(self, document: bytes, signature: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.directory / SIGNATURE_FILE, signature)
        write_atomically(self.directory / DOCUMENT_FILE, document)

    def _swap(self, conf: GlobalConf) -> None:
        previous = self._conf
        self._conf = conf
        if previous is not None and previous.to_document() == conf.to_document():
            return
        for callback in list(self.on_change):
            try:
                callback(conf)
            except Exception:  # one broken listener must not stop the others
                log.exception("global configuration change listener failed")

    # -- downloading -------------------------------------------------------------------------

    async def _get(self, url: str, limit: int, what: str) -> bytes:
        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession()
            self._own_session = True
        try:
            async with session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"Cache-Control": "no-cache"},
            ) as resp:
                if resp.status != 200:
                    explanation = await _explanation(resp)
                    raise ConfDownloadError(
                        f"the configuration source answered HTTP {resp.status} for {what} ({url})"
                        + (f": {explanation}" if explanation else "")
                    )
                body = await read_limited(resp, limit)
                if body is None:
                    raise ConfDownloadError(f"{what} at {url} is larger than {limit} bytes")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConfDownloadError(
                f"cannot download {what} from {url}: {exc.__class__.__name__} {exc}".rstrip()
            ) from exc

    async def _poll_source(self, pointer_url: str) -> bool:
        pointer = GlobalConfPointer.from_bytes(
            await self._get(pointer_url, MAX_POINTER_BYTES, "the configuration pointer")
        )
        held = self._conf
        if held is not None and pointer.version == held.version:
            return False
        doc_url, sig_url = pointer.urls(pointer_url)
        document = await self._get(doc_url, MAX_DOCUMENT_BYTES, "the configuration document")
        signature = await self._get(sig_url, MAX_SIGNATURE_BYTES, "the configuration signature")
        conf = verify_globalconf(
            document, signature, anchor=self.anchor, previous=held, now=self.clock()
        )
        self._write(document, signature)
        self._swap(conf)
        log.info(
            "global configuration accepted",
            version=conf.version,
            expires_at=format_time(conf.expires_at),
        )
        return True

    async def poll_once(self) -> bool:
        """Try each source until one answers; True if a new version was accepted.

        Never raises for a download or verification failure: it is recorded (``last_error``,
        ``failures``) and logged, and the held version stays.
        """
        errors: list[str] = []
        for source in self.anchor.sources:
            try:
                changed = await self._poll_source(source.url)
            except JisrError as exc:
                errors.append(f"{source.url}: {exc.message}")
                continue
            self.failures = 0
            self.last_error = None
            self.last_success_at = self.clock()
            return changed
        self.failures += 1
        self.last_error = "; ".join(errors)
        log.warning(
            "global configuration download failed", failures=self.failures, error=self.last_error
        )
        return False

    async def download(self) -> GlobalConf:
        """Poll now and return the configuration in force, or raise why there is none."""
        await self.poll_once()
        return self.current(self.clock())

    def next_delay(self) -> float:
        """Seconds until the next poll: the refresh interval, or the backoff after failures."""
        interval = float(self._conf.settings.conf_refresh_s) if self._conf else self.poll_s
        if self.failures:
            backoff: float = self.min_backoff_s * 2.0 ** min(self.failures - 1, 30)
            return min(backoff, self.max_backoff_s, interval)
        return interval

    async def run(self) -> None:
        """Poll forever; returns only when cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.poll_once()
            except Exception:  # a defect must not end the node's configuration updates
                log.exception("global configuration poll failed unexpectedly")
                self.failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.next_delay())

    def wake(self) -> None:
        """Poll now (an operator asked, or a peer showed a newer version)."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="globalconf-client")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
