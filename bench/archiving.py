"""``python -m bench.archiving``: what one archiving pass costs, measured apart from the exchange.

Rules:

- The log is real: a fresh PostgreSQL database (the embedded server, or the server named by
  ``JISR_TEST_DATABASE_URL``) migrated like a node's, filled through
  :class:`~security_server.message_log.PostgresMessageLog` with signed exchanges (batches of
  eight messages per signature, a stapled OCSP response per message, the member's certificate)
  and timestamped by a TSA over HTTP, like a node's log. The federation (CA, OCSP responder,
  TSA, signed global configuration) is the one the archive tests use
  (``tests.audit.evidence``), so the bench needs a source checkout.
- The exchanges are REST: most are a ``GET`` answered by a small JSON document; every
  ``--large-every``-th is a ``POST`` of a 100 KiB JSON document answered by another, both
  logged with their bodies. The bodies are seeded, so every run archives the same data.
- The pass runs in a process of its own (``--pass-only``, started by the bench), exactly as
  ``jisr node archive --now`` would run it: its CPU time (user + system, every thread, from
  ``getrusage``), its wall time and its peak RSS (``ru_maxrss``) are the pass's alone, not the
  filling's. The RSS before the pass (after imports and the database connection) is reported
  too, so the growth of a pass is visible.
- The archives written are verified with ``jisr audit``'s verifier afterwards (not measured)
  unless ``--no-verify``; a pass whose archives do not verify is an error, not a result.
- Results go to ``bench/results/archiving.json`` (``--output``) and are printed as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import asyncpg

from bench import process_stats
from bench.errors import BenchError

DEFAULT_EXCHANGES: Final = 5000
DEFAULT_LARGE_EVERY: Final = 10
LARGE_BODY_BYTES: Final = 100 * 1024
SIGNATURE_BATCH: Final = 8
DEFAULT_OUTPUT: Final = Path(__file__).parent / "results" / "archiving.json"
_LOG_BYTES: Final = (
    "SELECT pg_total_relation_size('message_log') + pg_total_relation_size('timestamp_batches')"
    " + pg_total_relation_size('log_evidence')"
)
_FIRST_NAMES: Final = ("علي", "فاطمة", "حسين", "زينب", "محمد", "مريم", "أحمد", "نور", "سارة")
_CITIES: Final = ("بغداد", "البصرة", "الموصل", "أربيل", "النجف", "كربلاء", "الحلة")


def _now() -> dt.datetime:
    # The federation's certificates and configuration are made for this instant.
    from tests.pki_factory import NOW

    return NOW


def large_body(rng: random.Random, size: int = LARGE_BODY_BYTES) -> bytes:
    """A JSON document of about ``size`` bytes: citizen records, as a register would answer."""
    rows: list[dict[str, Any]] = []
    length = 20
    while length < size:
        row = {
            "national_id": f"IQ{rng.randrange(10**10):010d}",
            "name": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_FIRST_NAMES)}",
            "born": f"{rng.randrange(1940, 2010)}-{rng.randrange(1, 13):02d}-"
            f"{rng.randrange(1, 29):02d}",
            "city": rng.choice(_CITIES),
            "record": rng.randbytes(12).hex(),
            "status": rng.choice(("active", "archived", "pending")),
        }
        rows.append(row)
        length += len(json.dumps(row, ensure_ascii=False).encode()) + 1
    return json.dumps({"citizens": rows}, ensure_ascii=False).encode()


def _entries(
    node_log: Any, count: int, at: dt.datetime, *, large_every: int, rng: random.Random
) -> Iterator[list[Any]]:
    """``count`` exchanges as log entries, a signature batch (requests, then responses) at a
    time."""
    from gateway.transport import RequestPart, body_digest
    from tests.audit.evidence import ANSWER_DELAY, GET_CITIZEN, HJC, INHERITANCE, NDC

    later = at + ANSWER_DELAY
    done = 0
    while done < count:
        n = min(SIGNATURE_BATCH, count - done)
        requests, request_bodies, response_bodies = [], [], []
        for i in range(done, done + n):
            large = large_every > 0 and i % large_every == large_every - 1
            request_body = large_body(rng) if large else b""
            requests.append(
                RequestPart(
                    protocol="REST",
                    message_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    client=INHERITANCE,
                    service=GET_CITIZEN,
                    method="POST" if large else "GET",
                    path="/citizens/search" if large else f"/citizens/{1000 + i}",
                    query=None if large else "lang=ar",
                    headers=(
                        (("Content-Type", "application/json"),)
                        if large
                        else (("Accept", "application/json"),)
                    ),
                    body_sha256=body_digest(request_body),
                    created_at=at,
                    user_id="IQ1234567890",
                    issue=f"case-{i}",
                )
            )
            request_bodies.append(request_body)
            response_bodies.append(
                large_body(rng)
                if large
                else json.dumps(
                    {"citizen": 1000 + i, "name": rng.choice(_FIRST_NAMES)}, ensure_ascii=False
                ).encode()
            )
        sealed_requests, sealed_responses = node_log.sign_exchanges(requests, response_bodies, at)
        batch = [
            node_log.entry("request_out", s, b, HJC, at)
            for s, b in zip(sealed_requests, request_bodies, strict=True)
        ] + [
            node_log.entry("response_in", s, b, NDC, later)
            for s, b in zip(sealed_responses, response_bodies, strict=True)
        ]
        yield batch
        done += n


# --- the database -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _server(work_dir: Path) -> AsyncIterator[str]:
    """The URL of a PostgreSQL server's maintenance database."""
    configured = os.environ.get("JISR_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    from storage.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(work_dir)
    url = await asyncio.to_thread(embedded.start)
    try:
        yield url
    finally:
        await asyncio.to_thread(embedded.stop)


async def fill(
    url: str,
    history_dir: Path,
    tsa_dir: Path,
    *,
    exchanges: int,
    large_every: int,
    seed: int,
) -> dict[str, Any]:
    """Fill the log at ``url`` with ``exchanges`` timestamped exchanges; keep the federation's
    trust material in ``history_dir`` (a node's ``conf-history``)."""
    from tests.audit.evidence import Federation, NodeLog, logging_node
    from tests.clock import Clock

    now = _now()
    clock = Clock(now.replace(minute=10))
    rng = random.Random(seed)  # noqa: S311 (reproducible sample data, not secrets)
    body_bytes = 0
    records = 0
    started = time.perf_counter()
    async with logging_node(url, tsa_dir, clock, Federation(now), history_dir=history_dir) as node:
        at = clock.now - dt.timedelta(seconds=1)
        batches = _entries(
            NodeLog(node.federation), exchanges, at, large_every=large_every, rng=rng
        )
        for batch in batches:
            await asyncio.gather(*(node.log.record(e) for e in batch))
            records += len(batch)
            body_bytes += sum(len(e.body or b"") for e in batch)
        while await node.timestamper.timestamp_pending():
            pass
        log_bytes = await node.pool.fetchval(_LOG_BYTES)
    return {
        "records": records,
        "exchanges": exchanges,
        "large_every": large_every,
        "body_bytes": body_bytes,
        # The log's tables with their TOAST and indexes (message_log, timestamp_batches and
        # the certificates and OCSP responses stored once, log_evidence).
        "log_bytes": int(log_bytes),
        "log_bytes_per_record": round(log_bytes / max(records, 1)),
        "fill_seconds": round(time.perf_counter() - started, 1),
    }


# --- the pass, in its own process ---------------------------------------------------------------


def _rss_bytes() -> int:
    return process_stats.rss_bytes(os.getpid()) or 0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def archive_pass(url: str, history_dir: Path, archive_dir: Path) -> dict[str, Any]:
    """One archiving pass as ``jisr node archive --now`` runs it; its cost, from this process."""
    from security_server.archiver import (
        Archiver,
        ConfHistory,
        DirectoryStore,
        PostgresArchiveRows,
    )
    from security_server.message_log import PostgresMessageLog
    from tests.audit.evidence import HJC_SS1
    from tests.clock import Clock

    clock = Clock(_now() + dt.timedelta(hours=3))
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        log = PostgresMessageLog(pool, HJC_SS1, clock=clock)
        # As the node assembles it (security_server.node.build_archiver), without the lock.
        archiver = Archiver(
            log,
            DirectoryStore(archive_dir),
            ConfHistory(history_dir),
            clock=clock,
            rows=PostgresArchiveRows(pool),
        )
        await log.archived_through()  # connections open before measuring
        rss_before = _rss_bytes()
        cpu_before, wall_before = _cpu(), time.perf_counter()
        written = await archiver.archive_once(close_open_period=True)
        wall = time.perf_counter() - wall_before
        cpu = _cpu() - cpu_before
        through = await log.archived_through()
    finally:
        await pool.close()
    return {
        "archives": written,
        "archived_through": through,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "rss_before_bytes": rss_before,
        # The kernel's high-water mark (ru_maxrss) is brought up to date lazily and can read
        # a few pages below an RSS sampled earlier: the peak is at least every RSS seen.
        "peak_rss_bytes": max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_before, _rss_bytes()
        ),
    }


def _run_pass_process(url: str, history_dir: Path, archive_dir: Path) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.archiving",
        "--pass-only",
        "--database-url",
        url,
        "--history-dir",
        str(history_dir),
        "--archive-dir",
        str(archive_dir),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"the archiving pass failed ({done.returncode}): {done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"the archiving pass printed no result: {done.stdout[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _verify(archive_dir: Path) -> tuple[bool, int]:
    from audit.verifier import verify_path

    report = verify_path(archive_dir)
    failures = report.failures()
    return report.ok, len(failures)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from storage.embedded import database_url
    from tests.databases import temporary_database

    work = Path(tempfile.mkdtemp(prefix="jisr-bench-archiving-"))
    try:
        async with (
            _server(work) as server_url,
            temporary_database(server_url, "bench_archiving_") as name,
        ):
            url = database_url(server_url, name)
            filled = await fill(
                url,
                work / "conf-history",
                work,
                exchanges=args.exchanges,
                large_every=args.large_every,
                seed=args.seed,
            )
            archive_dir = work / "archives"
            archive_dir.mkdir()
            result = await asyncio.to_thread(
                _run_pass_process, url, work / "conf-history", archive_dir
            )
            if result["archived_through"] != filled["records"]:
                raise BenchError(
                    f"the pass archived through record {result['archived_through']}, not "
                    f"{filled['records']}"
                )
            sizes = sum(p.stat().st_size for p in archive_dir.glob("archive-*.zip"))
            verified: bool | None = None
            if args.verify:
                verified, failures = await asyncio.to_thread(_verify, archive_dir)
                if not verified:
                    raise BenchError(f"the archives written do not verify: {failures} failure(s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    records = filled["records"]
    return {
        "benchmark": "archiving",
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "label": args.label,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "log": filled,
        "pass": {
            "archives": len(result["archives"]),
            "archive_bytes": sizes,
            "cpu_seconds": round(result["cpu_seconds"], 3),
            "cpu_seconds_per_1000_records": round(result["cpu_seconds"] * 1000 / records, 3),
            "wall_seconds": round(result["wall_seconds"], 3),
            "rss_before_mb": round(result["rss_before_bytes"] / 2**20, 1),
            "peak_rss_mb": round(result["peak_rss_bytes"] / 2**20, 1),
            "rss_growth_mb": round(
                (result["peak_rss_bytes"] - result["rss_before_bytes"]) / 2**20, 1
            ),
            "verified": verified,
        },
    }


def _table(result: dict[str, Any]) -> str:
    log, p = result["log"], result["pass"]
    rows = [
        ("records", f"{log['records']} ({log['exchanges']} exchanges, "
         + (f"1 in {log['large_every']} with 100 KiB bodies)" if log["large_every"]
            else "small bodies only)")),
        ("log in PostgreSQL", f"{log['log_bytes'] / 2**20:.1f} MiB, "
         f"{log['log_bytes_per_record']:,} bytes per record"),
        ("archives written", f"{p['archives']} ({p['archive_bytes'] / 2**20:.1f} MiB)"),
        ("CPU", f"{p['cpu_seconds']:.2f} s, {p['cpu_seconds_per_1000_records']:.3f} s per 1,000 "
         "records"),
        ("wall time", f"{p['wall_seconds']:.2f} s"),
        ("RSS", f"{p['rss_before_mb']:.0f} MB before, peak {p['peak_rss_mb']:.0f} MB "
         f"(+{p['rss_growth_mb']:.0f} MB)"),
        ("verified", str(p["verified"])),
    ]  # fmt: skip
    return "\n".join(f"{k:>18}  {v}" for k, v in rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.archiving", description=__doc__)
    parser.add_argument(
        "--exchanges",
        type=int,
        default=DEFAULT_EXCHANGES,
        help="exchanges logged (two records each); default 5000",
    )
    parser.add_argument(
        "--large-every",
        type=int,
        default=DEFAULT_LARGE_EVERY,
        help="every Nth exchange carries 100 KiB bodies (0: none); default 10",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--label", default="", help="a note stored with the result")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="do not verify the archives written",
    )
    parser.add_argument("--pass-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--history-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--archive-dir", type=Path, help=argparse.SUPPRESS)
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.pass_only:
        if not (args.database_url and args.history_dir and args.archive_dir):
            raise SystemExit("--pass-only needs --database-url, --history-dir and --archive-dir")
        result = asyncio.run(archive_pass(args.database_url, args.history_dir, args.archive_dir))
        print(json.dumps(result))
        return 0
    if args.exchanges < 1 or args.large_every < 0:
        raise SystemExit("--exchanges must be at least 1 and --large-every 0 or more")
    try:
        result = asyncio.run(measure(args))
    except BenchError as exc:
        print(f"bench.archiving: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    existing: list[Any] = []
    if args.output.exists():
        with contextlib.suppress(ValueError, OSError):
            loaded = json.loads(args.output.read_text())
            existing = loaded.get("runs", []) if isinstance(loaded, dict) else []
    runs = [*existing, result]
    args.output.write_text(json.dumps({"runs": runs}, indent=2, ensure_ascii=False) + "\n")
    print(_table(result))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["archive_pass", "fill", "large_body", "main", "measure"]
