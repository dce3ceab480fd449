"""The archiver: closed message-log periods become archive files in a directory or an S3 bucket.

Rules (``docs/archives-and-audit.md`` is the operator's and auditor's description):

- Records are archived in sequence order, one archive per closed period (an hour by default,
  or a day), cut into several archives when a period holds more than ``max_records``. A period
  is closed once its end plus ``grace`` has passed and every record of it is timestamped; a
  record still waiting for its timestamp holds back its period and every later one, so an
  archive never has a gap.
- The archive format is :mod:`audit.archive_format`'s: the writer and the auditor's reader are
  one module. Each archive names the previous one (sequence, file name, SHA-256 of its linking
  file), read back from the store, so the chain survives restarts.
- An archive is written to a temporary file, flushed and ``fsync``-ed, then handed to the
  store, which makes it durable under its final name (directory: ``rename`` then ``fsync`` of
  the directory; S3: the upload is confirmed by the bucket with its MD5 and size). Only then are
  its records marked archived in the message log, and only marked records are ever deleted (by
  the log's retention job). A crash between the two leaves an archive whose records are not
  marked: the next pass finds it in the store and marks them instead of archiving them again.
- Trust material: the configuration anchor and the global-configuration versions the records
  name come from :class:`ConfHistory`, which keeps on disk every version whose trust content
  (approved CAs, OCSP responders, TSAs, OCSP freshness) differs from the one before it; an
  archive carries, for each version a record names, that version or the nearest earlier kept
  one (equal in everything the auditor checks).
- Blocking work (ZIP writing, fsync, uploads) runs in a worker thread; the node's event loop is
  never blocked by archiving.
- A pass streams: records are read a page at a time (500 by default) and fed to the archive
  being written; only exchanges still waiting for their other half and one small entry per
  container (for the linking file) stay in memory, whatever the size of the archive. With
  :class:`PostgresArchiveRows` the records are read as their stored columns and copied into the
  archive (the canonical record checked against its record hash), not parsed and rebuilt; when
  the first record waiting for a timestamp is known in advance, a period it holds back is not
  begun.
- ``archive_interval_s = 0`` runs no archiver in the node; ``jisr node archive --every`` runs
  passes as a process of its own, under the same lock.
- A read of the log that fails on a lost database connection (PostgreSQL restarted, a
  failover, ``pg_terminate_backend``) makes the pool replace all its connections
  (:func:`storage.errors.expire_if_lost`), since the others have usually died with it. The
  pass stops there: the archive it was writing is discarded and its records stay unmarked (the
  archives it finished before are stored and marked), and the next pass runs on new
  connections instead of meeting the other dead ones one pass at a time. A failed background
  pass is logged as a warning (``archive_pass_failed``: the error and how many passes in a row
  have failed) and the next one tries again.
- One archiver at a time per log: every pass runs under the ``lock`` given (the node passes a
  PostgreSQL advisory lock, so worker processes and ``jisr node archive`` take turns). A
  background pass that finds the lock taken skips its turn; an explicit pass waits for it.
- ``archive_once(close_open_period=True)`` (``jisr node archive --now``) treats the current
  period as closed: everything timestamped is archived at once, and records logged later in the
  same period go to the next archive, which then has the same period start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib
import io
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import IO, Any, Final, Literal, Protocol, TypeVar

import asyncpg
import structlog

from audit.archive_format import (
    ARCHIVE_SUFFIX,
    ArchiveBuilder,
    ArchiveReader,
    ArchiveRecord,
    LinkingFile,
    PreviousArchive,
    read_linking,
    sequence_of_archive_name,
    sha256_hex,
    trust_material,
)
from audit.errors import ArchiveFormatError
from config.errors import ConfigError, JisrError, StorageError
from gateway.globalconf import GlobalConf
from gateway.log_record import LogIntegrityError, LogRecord
from gateway.transport import encode_proof
from security_server.conf_client import DOCUMENT_FILE, SIGNATURE_FILE
from security_server.log_evidence import EVIDENCE_COLUMNS, resolve
from security_server.log_stamps import (
    STAMP_COLUMNS,
    STAMP_JOIN,
    TIMESTAMPED_THROUGH,
    BatchTrees,
)
from security_server.runtime import Clock, utc_now
from storage.errors import DATABASE_ERRORS, expire_if_lost

__all__ = [
    "ArchiveLock",
    "ArchiveRows",
    "ArchiveSource",
    "ArchiveStore",
    "Archiver",
    "ConfHistory",
    "DirectoryStore",
    "PostgresArchiveRows",
    "S3Client",
    "S3Store",
    "StoredArchive",
    "Waiting",
    "s3_store",
]

_log = structlog.get_logger(__name__)

Period = Literal["hour", "day"]
_T = TypeVar("_T")

#: Records per archive unless configured otherwise.
DEFAULT_MAX_RECORDS: Final = 10_000
#: How long after a period ends its archive is written (late records from other workers).
DEFAULT_GRACE: Final = dt.timedelta(minutes=2)
DEFAULT_INTERVAL_S: Final = 60.0
#: Records read from the log per query (and held in memory at once by a pass).
DEFAULT_PAGE: Final = 500
_MAX_PAGE: Final = 1000
_PERIODS: Final[dict[str, dt.timedelta]] = {
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(days=1),
}
_CONF_FILE_RE: Final = re.compile(r"globalconf-(\d{8,})\.json")


class ArchiverError(StorageError):
    """An archive could not be written or stored; its records stay unarchived and are retried."""


#: ``lock(wait)`` holds the log's archiving turn while its block runs and yields whether it
#: was obtained; with ``wait=False`` it yields False at once when another archiver holds it.
ArchiveLock = Callable[[bool], AbstractAsyncContextManager[bool]]


@contextlib.asynccontextmanager
async def _no_lock(wait: bool) -> AsyncIterator[bool]:
    yield True


# --- what the archiver reads from ----------------------------------------------------------------


class ArchiveSource(Protocol):
    """The message log, as the archiver uses it (``PostgresMessageLog`` satisfies it)."""

    async def archived_through(self) -> int:
        """The last record marked archived (0 when none is)."""
        ...

    async def read_records(
        self, *, after_seq: int = 0, limit: int = DEFAULT_PAGE
    ) -> list[LogRecord]:
        """Records after ``after_seq`` in sequence order, with their timestamps (if any)."""
        ...

    async def mark_archived(
        self, up_to_seq: int, archive_name: str, *, now: dt.datetime | None = None
    ) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Waiting:
    """A record still waiting for its timestamp: it and every record after it wait."""

    seq: int
    logged_at: dt.datetime


class ArchiveRows(Protocol):
    """Reading the log in the form archives need, without rebuilding records
    (:class:`PostgresArchiveRows`); an archiver without it reads :class:`ArchiveSource`'s
    parsed records."""

    async def first_waiting(self, after_seq: int) -> Waiting | None:
        """The first record after ``after_seq`` without a timestamp, if any."""
        ...

    async def read_for_archive(
        self, *, after_seq: int, limit: int
    ) -> list[ArchiveRecord | Waiting]:
        """Up to ``limit`` records after ``after_seq`` in sequence order, ending early with
        the first record that waits for its timestamp."""
        ...


_ROWS_QUERY: Final = f"""
SELECT m.logged_at, m.record, m.signed_part, m.body, m.signature, m.proof,
       {EVIDENCE_COLUMNS}, m.prev_hash, m.record_hash, {STAMP_COLUMNS}
FROM message_log AS m {STAMP_JOIN}
WHERE m.seq > $1 ORDER BY m.seq LIMIT $2
"""  # noqa: S608 (constant SQL text)
_FIRST_WAITING_QUERY: Final = (
    "SELECT seq, logged_at FROM message_log "  # noqa: S608 (constant SQL text)
    f"WHERE seq > greatest($1, {TIMESTAMPED_THROUGH}) ORDER BY seq LIMIT 1"
)


async def _read_failed(pool: asyncpg.Pool, exc: BaseException) -> ArchiverError:
    """The error of a read of the log that failed with ``exc``. A lost connection makes
    ``pool`` replace all its connections, and the message says so."""
    if await expire_if_lost(pool, exc):
        return ArchiverError(
            f"cannot read the message log: the database connection was lost ({exc}); the pool "
            "opens new connections for the next pass"
        )
    return ArchiverError(f"cannot read the message log: {exc}")


class PostgresArchiveRows:
    """:class:`ArchiveRows` over a node's message log in PostgreSQL (the tables of
    ``security_server.log_migrations``).

    The columns are read as they are and the canonical record is only looked into for the
    values an archive lists; each timestamp batch (its token) is read once per page, not once
    per record, and so is each certificate and OCSP response stored by digest
    (:mod:`security_server.log_evidence`, checked against its digest). Every record must
    hash, after its previous-record hash, to its record hash (:meth:`ArchiveRecord.from_stored`),
    and the archive builder checks that the records chain.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._trees = BatchTrees()

    async def first_waiting(self, after_seq: int) -> Waiting | None:
        try:
            row = await self._pool.fetchrow(_FIRST_WAITING_QUERY, after_seq)
        except DATABASE_ERRORS as exc:
            raise await _read_failed(self._pool, exc) from exc
        return None if row is None else Waiting(int(row["seq"]), row["logged_at"])

    async def read_for_archive(
        self, *, after_seq: int, limit: int
    ) -> list[ArchiveRecord | Waiting]:
        try:
            rows = await self._pool.fetch(_ROWS_QUERY, after_seq, limit)
            stamps = await self._trees.stamps(self._pool, rows)
            evidence = await resolve(self._pool, rows)
        except DATABASE_ERRORS as exc:
            raise await _read_failed(self._pool, exc) from exc
        except LogIntegrityError as exc:
            raise ArchiverError(f"the message log cannot be archived: {exc}") from exc
        items: list[ArchiveRecord | Waiting] = []
        for row, stamp, (certificates, ocsp) in zip(rows, stamps, evidence, strict=True):
            if stamp is None:
                items.append(Waiting(int(row["seq"]), row["logged_at"]))
                break
            try:
                item = ArchiveRecord.from_stored(
                    row["record"],
                    signed_part=row["signed_part"],
                    body=row["body"],
                    signature=row["signature"],
                    proof=row["proof"],
                    certificates=certificates,
                    ocsp=ocsp,
                    prev_hash=row["prev_hash"],
                    record_hash=row["record_hash"],
                    batch_id=stamp.batch.batch_id,
                    tsa_url=stamp.batch.tsa_url,
                    token=stamp.batch.token,
                    batch_root=stamp.batch.root,
                    batch_proof=encode_proof(stamp.proof),
                )
            except ArchiveFormatError as exc:
                raise ArchiverError(
                    f"record {row['seq']} of the message log cannot be archived: {exc.message}"
                ) from exc
            if item.seq != row["seq"]:
                raise ArchiverError(
                    f"record {row['seq']} of the message log says it is record {item.seq}"
                )
            items.append(item)
        return items


# --- where archives go ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StoredArchive:
    """An archive already in the store: its name and its linking file."""

    name: str
    linking_bytes: bytes

    @property
    def linking(self) -> LinkingFile:
        return LinkingFile.from_bytes(self.linking_bytes)

    def as_previous(self) -> PreviousArchive:
        linking = self.linking
        return PreviousArchive(linking.sequence, self.name, sha256_hex(self.linking_bytes))


class ArchiveStore(Protocol):
    """Durable storage for archive files."""

    #: A directory on the node's disk where archives are written before :meth:`put`.
    staging: Path

    def latest(self) -> StoredArchive | None:
        """The archive with the highest sequence number, or None for an empty store."""
        ...

    def put(self, name: str, path: Path, linking_bytes: bytes) -> str:
        """Store the finished, fsync-ed file ``path`` as ``name`` durably; return where it is.

        Returns only once the archive would survive a crash; ``path`` is consumed.
        """
        ...


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryStore:
    """Archives as files in one directory (the default)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.staging = directory

    def _archives(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob(f"archive-*{ARCHIVE_SUFFIX}"):
            sequence = sequence_of_archive_name(path.name)
            if sequence is not None:
                found.append((sequence, path))
        return sorted(found)

    def latest(self) -> StoredArchive | None:
        archives = self._archives()
        if not archives:
            return None
        _, path = archives[-1]
        try:
            with ArchiveReader(str(path), label=path.name) as reader:
                return StoredArchive(path.name, reader.linking_bytes())
        except ArchiveFormatError as exc:
            raise ArchiverError(
                f"the newest archive {path} cannot be read ({exc.message}); the next archive "
                "must name it, so repair or move it aside and restart the archiver"
            ) from exc

    def put(self, name: str, path: Path, linking_bytes: bytes) -> str:
        target = self.directory / name
        if target.exists():
            raise ArchiverError(f"{target} already exists; archives are never overwritten")
        os.replace(path, target)
        _fsync_directory(self.directory)
        return str(target)


class S3Client(Protocol):
    """The calls of an S3 client the store uses (a ``boto3`` S3 client has them)."""

    def put_object(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def head_object(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def get_object(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def list_objects_v2(self, **kwargs: Any) -> Mapping[str, Any]: ...


class S3Store:
    """Archives as objects in an S3-compatible bucket, under ``prefix``.

    Each archive is one object; a copy of its linking file is stored beside it as
    ``<name>.linking.json`` so the newest archive is found without downloading archives. The
    upload carries ``Content-MD5``, so the bucket refuses a corrupted transfer, and is then
    confirmed with a HEAD request (size). Archives larger than 5 GiB (one PUT) are refused.
    """

    MAX_OBJECT_BYTES: Final = 5 * 1024**3

    def __init__(self, client: S3Client, bucket: str, prefix: str = "", *, staging: Path) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.staging = staging

    def _keys(self) -> Iterator[str]:
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + "archive-"}
            if token:
                args["ContinuationToken"] = token
            page = self.client.list_objects_v2(**args)
            for item in page.get("Contents", []):
                yield str(item["Key"])
            if not page.get("IsTruncated"):
                return
            token = str(page["NextContinuationToken"])

    def latest(self) -> StoredArchive | None:
        best: tuple[int, str] | None = None
        for key in self._keys():
            name = key[len(self.prefix) :]
            if not name.endswith(".linking.json"):
                continue
            sequence = sequence_of_archive_name(name.removesuffix(".linking.json"))
            if sequence is not None and (best is None or sequence > best[0]):
                best = (sequence, name.removesuffix(".linking.json"))
        if best is None:
            return None
        body = self.client.get_object(
            Bucket=self.bucket, Key=self.prefix + best[1] + ".linking.json"
        )
        data = body["Body"].read()
        return StoredArchive(best[1], bytes(data))

    def _put(self, key: str, data: IO[bytes], size: int, md5: bytes, content_type: str) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentLength=size,
                ContentMD5=base64.b64encode(md5).decode("ascii"),
                ContentType=content_type,
            )
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # the client library's own errors, translated once here
            raise ArchiverError(
                f"uploading s3://{self.bucket}/{key} failed: {exc}; the archive is kept for "
                "the next attempt"
            ) from exc
        if int(head.get("ContentLength", -1)) != size:
            raise ArchiverError(
                f"the bucket holds {head.get('ContentLength')} bytes for {key}, not the {size} "
                "uploaded; the archive is not considered stored"
            )

    def put(self, name: str, path: Path, linking_bytes: bytes) -> str:
        size = path.stat().st_size
        if size > self.MAX_OBJECT_BYTES:
            raise ArchiverError(
                f"archive {name} is {size} bytes, over the 5 GiB of one S3 PUT; lower "
                "max_records or archive per hour"
            )
        md5 = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                md5.update(chunk)
        key = self.prefix + name
        with path.open("rb") as f:
            self._put(key, f, size, md5.digest(), "application/zip")
        self._put(
            key + ".linking.json",
            io.BytesIO(linking_bytes),
            len(linking_bytes),
            hashlib.md5(linking_bytes, usedforsecurity=False).digest(),
            "application/json",
        )
        path.unlink()
        return f"s3://{self.bucket}/{key}"


def s3_store(
    url: str,
    *,
    staging: Path,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> S3Store:
    """An :class:`S3Store` for ``s3://bucket/prefix`` with a ``boto3`` client.

    ``boto3`` is an optional dependency (``pip install jisr[s3]``); credentials come from
    boto3's usual sources (environment, shared files, instance roles), never from Jisr's
    settings. ``endpoint_url`` points at an S3-compatible server other than AWS.
    """
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?", url)
    if match is None:
        raise ConfigError(f"{url!r} is not an s3://bucket/prefix URL")
    try:
        boto3 = importlib.import_module("boto3")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "archiving to S3 needs boto3; install it with `pip install jisr[s3]` or archive to "
            "a directory"
        ) from exc
    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
    return S3Store(client, match.group(1), match.group(2) or "", staging=staging)


# --- trust material ------------------------------------------------------------------------------


def _trust_content(conf: GlobalConf) -> bytes:
    obj = conf.to_obj()
    return json.dumps(
        {
            "instance": obj["instance"],
            "approved_cas": obj["approved_cas"],
            "approved_tsas": obj["approved_tsas"],
            "ocsp_freshness_s": conf.settings.ocsp_freshness_s,
        },
        sort_keys=True,
    ).encode()


class ConfHistory:
    """Global-configuration versions kept for archives, in ``directory``.

    :meth:`remember` is called with every version the node accepts (for example from the
    configuration client's ``on_change``); a version is written only when its trust content
    differs from the newest one kept. Files: ``globalconf-<version>.json`` and ``.json.p7s``,
    and ``anchor.json``.
    """

    def __init__(self, directory: Path, *, anchor: bytes | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        if anchor is not None:
            self._write(directory / "anchor.json", anchor)

    def _write(self, path: Path, data: bytes) -> None:
        if path.exists() and path.read_bytes() == data:
            return
        with tempfile.NamedTemporaryFile(dir=self.directory, delete=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, path)
        _fsync_directory(self.directory)

    def versions(self) -> list[int]:
        found = []
        for path in self.directory.glob("globalconf-*.json"):
            match = _CONF_FILE_RE.fullmatch(path.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def _pair(self, version: int) -> tuple[bytes, bytes]:
        document = self.directory / f"globalconf-{version:08d}.json"
        return document.read_bytes(), Path(f"{document}.p7s").read_bytes()

    def remember(self, document: bytes, signature: bytes) -> bool:
        """Keep this version if its trust content is new; returns whether it was kept."""
        conf = GlobalConf.from_document(document)
        kept = self.versions()
        if conf.version in kept:
            return False
        earlier = [v for v in kept if v < conf.version]
        if earlier:
            previous = GlobalConf.from_document(self._pair(max(earlier))[0])
            if _trust_content(previous) == _trust_content(conf):
                return False
        name = f"globalconf-{conf.version:08d}.json"
        self._write(self.directory / f"{name}.p7s", signature)
        self._write(self.directory / name, document)
        return True

    def remember_from(self, conf_directory: Path) -> bool:
        """Keep the version the configuration client holds in ``conf_directory``."""
        try:
            document = (conf_directory / DOCUMENT_FILE).read_bytes()
            signature = (conf_directory / SIGNATURE_FILE).read_bytes()
        except OSError as exc:
            raise ArchiverError(
                f"cannot read the configuration in {conf_directory}: {exc}"
            ) from exc
        return self.remember(document, signature)

    def anchor(self) -> bytes | None:
        path = self.directory / "anchor.json"
        return path.read_bytes() if path.exists() else None

    def versions_for(self, named: Collection[int]) -> list[tuple[bytes, bytes]]:
        """For each version named, that version or the nearest earlier one kept."""
        kept = self.versions()
        chosen: set[int] = set()
        for version in named:
            earlier = [v for v in kept if v <= version]
            if earlier:
                chosen.add(max(earlier))
            else:
                _log.warning(
                    "archive_conf_version_missing",
                    version=version,
                    kept=kept[:5],
                )
        return [self._pair(v) for v in sorted(chosen)]


# --- the archiver --------------------------------------------------------------------------------


async def _in_thread(function: Callable[..., _T], *args: Any) -> _T:
    """``function(*args)`` in a worker thread. When the caller is cancelled (the node stops),
    the thread is waited for before the cancellation goes on: the pass's clean-up (deleting a
    half-written archive) must not run while the thread still writes it."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


def period_start(when: dt.datetime, period: dt.timedelta) -> dt.datetime:
    """The start of the period ``when`` falls in (UTC hours or days)."""
    utc = when.astimezone(dt.UTC)
    if period == _PERIODS["day"]:
        return utc.replace(hour=0, minute=0, second=0, microsecond=0)
    return utc.replace(minute=0, second=0, microsecond=0)


@dataclasses.dataclass(slots=True)
class _Draft:
    """An archive being written to a temporary file in the store's staging directory."""

    start: dt.datetime
    sequence: int
    previous: PreviousArchive | None
    path: Path
    file: IO[bytes]
    builder: ArchiveBuilder


@dataclasses.dataclass(slots=True)
class _Finished:
    name: str
    path: Path
    linking_bytes: bytes
    first_seq: int
    last_seq: int


@dataclasses.dataclass(slots=True)
class _Pass:
    """What one pass knows while it reads the log page by page."""

    #: Periods starting at or before ``now - period - grace`` are closed.
    now: dt.datetime
    #: The period of the first record waiting for a timestamp, when known in advance: it and
    #: every later period are held back, so no archive of them is started.
    held_back: dt.datetime | None
    previous: StoredArchive | None
    draft: _Draft | None = None
    done: bool = False


class Archiver:
    """Turns the message log's timestamped records into archives, period by period.

    A pass streams: records are read a page at a time and fed to the archive being written,
    whose builder keeps only the exchanges still waiting for their other half and one small
    entry per container for the linking file. The building runs in a worker thread.
    """

    def __init__(
        self,
        source: ArchiveSource,
        store: ArchiveStore,
        history: ConfHistory,
        *,
        period: Period = "hour",
        max_records: int = DEFAULT_MAX_RECORDS,
        grace: dt.timedelta = DEFAULT_GRACE,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Clock = utc_now,
        lock: ArchiveLock | None = None,
        rows: ArchiveRows | None = None,
        page: int = DEFAULT_PAGE,
    ) -> None:
        if period not in _PERIODS:
            raise ConfigError(f"archive period {period!r} is not one of {', '.join(_PERIODS)}")
        if max_records < 1:
            raise ConfigError("max_records must be at least 1")
        if not 1 <= page <= _MAX_PAGE:
            raise ConfigError(f"the archiver's page must be 1..{_MAX_PAGE} records")
        self.source = source
        self.store = store
        self.history = history
        self.period = _PERIODS[period]
        self.max_records = max_records
        self.grace = grace
        self.interval_s = interval_s
        self.clock = clock
        self.rows = rows
        self.page = page
        self._lock = lock or _no_lock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: Archives written by this process, newest last (name, location).
        self.written: list[tuple[str, str]] = []

    # -- one pass -------------------------------------------------------------------------

    async def archive_once(
        self, *, close_open_period: bool = False, wait: bool = True
    ) -> list[str]:
        """Archive every closed period; return the names of the archives written.

        ``close_open_period`` archives the current period too, up to its last timestamped
        record (before maintenance, or to hand evidence over now). ``wait=False`` returns
        ``[]`` at once when another archiver of the same log is in a pass.
        """
        async with self._lock(wait) as held:
            if not held:
                _log.debug("archive_pass_skipped", reason="another archiver holds the log")
                return []
            return await self._archive_pass(close_open_period)

    async def _archive_pass(self, close_open_period: bool) -> list[str]:
        latest = await asyncio.to_thread(self.store.latest)
        through = await self.source.archived_through()
        if latest is not None:
            last_in_store = latest.linking.records.last_sequence
            if last_in_store > through:
                # Stored before a crash, never marked: mark it now instead of archiving again.
                _log.warning(
                    "archive_marked_after_restart", archive=latest.name, up_to_seq=last_in_store
                )
                await self.source.mark_archived(last_in_store, latest.name, now=self.clock())
                through = last_in_store
            elif last_in_store < through:
                _log.warning(
                    "archive_store_behind_log",
                    newest_archive=latest.name,
                    archive_ends_at=last_in_store,
                    log_archived_through=through,
                )
        # Closing the open period: every period counts as closed, however recent.
        now = dt.datetime.max.replace(tzinfo=dt.UTC) if close_open_period else self.clock()
        held_back = None
        if self.rows is not None:
            waiting = await self.rows.first_waiting(through)
            held_back = None if waiting is None else self._key(waiting.logged_at)
        state = _Pass(now=now, held_back=held_back, previous=latest)
        written: list[str] = []
        cursor = through
        try:
            while not state.done:
                page = await self._read(cursor)
                index = 0
                while index < len(page) and not state.done:
                    index, finished = await _in_thread(self._consume, state, page, index)
                    if finished is not None:
                        written.append(await self._store(finished, state))
                if state.done:
                    break
                if page:
                    cursor = page[-1].seq
                if len(page) < self.page or isinstance(page[-1], Waiting):
                    # The end of the log: what is being written is complete (its period is
                    # closed, or it would not have been started).
                    if state.draft is not None:
                        finished = await _in_thread(self._finish, state)
                        written.append(await self._store(finished, state))
                    break
        finally:
            if state.draft is not None:
                await asyncio.to_thread(self._abort, state)
        return written

    async def _read(self, after_seq: int) -> Sequence[ArchiveRecord | Waiting]:
        """The next page of records after ``after_seq``; a record waiting for its timestamp
        ends the page (nothing after it is archived in this pass)."""
        if self.rows is not None:
            return await self.rows.read_for_archive(after_seq=after_seq, limit=self.page)
        records = await self.source.read_records(after_seq=after_seq, limit=self.page)
        items: list[ArchiveRecord | Waiting] = []
        for record in records:
            if record.timestamp is None:
                items.append(Waiting(record.seq, record.logged_at))
                break
            items.append(ArchiveRecord.of(record))
        return items

    def _closed(self, start: dt.datetime, now: dt.datetime) -> bool:
        return start + self.period + self.grace <= now

    def _key(self, logged_at: dt.datetime) -> dt.datetime:
        return period_start(logged_at, self.period)

    def _consume(
        self, state: _Pass, items: Sequence[ArchiveRecord | Waiting], index: int
    ) -> tuple[int, _Finished | None]:
        """Feed ``items[index:]`` to the archive being written (worker thread), until an
        archive is finished (returned with the index of the first item not consumed), the
        pass is done, or the page is consumed."""
        while index < len(items):
            item = items[index]
            key = self._key(item.logged_at)
            draft = state.draft
            if isinstance(item, Waiting):
                # Everything from here waits for its timestamp, and so does the period being
                # written unless this record already belongs to a later one.
                state.done = True
                if draft is not None and key > draft.start:
                    return index, self._finish(state)
                self._abort(state)
                return index, None
            if draft is not None and key > draft.start:
                return index, self._finish(state)
            if draft is None:
                if not self._closed(key, state.now) or (
                    state.held_back is not None and state.held_back <= key
                ):
                    state.done = True
                    return index, None
                draft = state.draft = self._open(key, state.previous)
            draft.builder.add(item)
            index += 1
            if draft.builder.count >= self.max_records:
                return index, self._finish(state)
        return index, None

    def _open(self, start: dt.datetime, previous: StoredArchive | None) -> _Draft:
        sequence = previous.linking.sequence + 1 if previous is not None else 1
        try:
            self.store.staging.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(
                prefix=".archive-", suffix=".partial", dir=self.store.staging
            )
        except OSError as exc:
            raise ArchiverError(
                f"cannot write archive {sequence} in {self.store.staging}: {exc}; the records "
                "stay in the log and are archived on the next pass"
            ) from exc
        path = Path(temp)
        try:
            file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            path.unlink()
            raise
        return _Draft(
            start=start,
            sequence=sequence,
            previous=previous.as_previous() if previous is not None else None,
            path=path,
            file=file,
            builder=ArchiveBuilder(file, created_at=self.clock()),
        )

    def _abort(self, state: _Pass) -> None:
        draft, state.draft = state.draft, None
        if draft is not None:
            draft.builder.discard()
            with contextlib.suppress(OSError):
                draft.file.close()
            with contextlib.suppress(OSError):
                draft.path.unlink()

    def _finish(self, state: _Pass) -> _Finished:
        """Complete the archive being written: trust material, linking file, ``fsync``, and a
        read-back of what was written (worker thread)."""
        draft = state.draft
        assert draft is not None
        builder = draft.builder
        try:
            trust = trust_material(
                self.history.anchor(), self.history.versions_for(builder.conf_versions)
            )
            linking, linking_bytes = builder.finish(
                sequence=draft.sequence,
                previous=draft.previous,
                period_start=draft.start,
                period_end=draft.start + self.period,
                trust=trust,
            )
            draft.file.flush()
            os.fsync(draft.file.fileno())
            draft.file.close()
            # Read back what was written: a store must never receive a damaged archive. The
            # comparison is with the linking bytes, not the object: the file keeps times to the
            # millisecond, while the clock and the messages' times carry microseconds.
            with ArchiveReader(str(draft.path), label=linking.name) as reader:
                if reader.linking_bytes() != linking_bytes or read_linking(reader).name != (
                    linking.name
                ):
                    raise ArchiverError(f"archive {linking.name} did not read back as written")
        except (OSError, JisrError) as exc:
            self._abort(state)
            raise ArchiverError(
                f"cannot write archive {draft.sequence} (records {builder.first_seq}.."
                f"{builder.last_seq}): {exc}; the records stay in the log and are archived on "
                "the next pass"
            ) from exc
        except BaseException:
            self._abort(state)
            raise
        state.draft = None
        span = linking.records
        return _Finished(
            linking.name, draft.path, linking_bytes, span.first_sequence, span.last_sequence
        )

    async def _store(self, finished: _Finished, state: _Pass) -> str:
        """Hand a finished archive to the store, then mark its records archived."""
        try:
            location = await asyncio.to_thread(
                self.store.put, finished.name, finished.path, finished.linking_bytes
            )
        except (OSError, JisrError) as exc:
            with contextlib.suppress(OSError):
                finished.path.unlink()
            raise ArchiverError(
                f"cannot store archive {finished.name} (records {finished.first_seq}.."
                f"{finished.last_seq}): {exc}; the records stay in the log and are archived on "
                "the next pass"
            ) from exc
        await self.source.mark_archived(finished.last_seq, finished.name, now=self.clock())
        self.written.append((finished.name, location))
        state.previous = StoredArchive(finished.name, finished.linking_bytes)
        _log.info(
            "archive_written",
            archive=finished.name,
            location=location,
            first_seq=finished.first_seq,
            last_seq=finished.last_seq,
        )
        return finished.name

    # -- background task ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether passes run in the background (:meth:`start` was called, not :meth:`close`)."""
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Archive every ``interval_s`` until cancelled; a failed pass is logged and retried."""
        failures = 0
        while True:
            try:
                await self.archive_once(wait=False)
            except asyncio.CancelledError:
                raise
            except StorageError as exc:  # the database, the store, an archive: records unmarked
                failures += 1
                _log.warning("archive_pass_failed", error=exc.message, tries=failures)
            except Exception:  # a pass must never end the task; the next one retries
                failures += 1
                _log.exception("archive_pass_crashed", tries=failures)
            else:
                failures = 0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="jisr-archiver")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def on_conf_change(history: ConfHistory, conf_directory: Path) -> Callable[[GlobalConf], None]:
    """A configuration-client ``on_change`` callback keeping each accepted version's trust."""

    def remember(conf: GlobalConf) -> None:
        history.remember_from(conf_directory)

    return remember
