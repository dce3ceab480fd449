"""The load generator: a fixed concurrency of keep-alive requests for a fixed duration.

Rules:

- One :class:`LoadSpec` describes the request (method, URL, headers, body) and how to recognise
  a good answer (status, expected length or a marker in the body); anything else is an error,
  counted and sampled, never retried.
- ``concurrency`` workers share one aiohttp connection pool of exactly ``concurrency``
  keep-alive connections; each worker sends its next request as soon as the last one is
  answered (a closed loop, so latency and throughput are those of the system, not of a
  schedule).
- A warm-up runs first and is not counted; the measured window counts every answer that
  *arrives* inside it. Loops are bounded in time (the window plus one request timeout) and in
  count (``max_requests`` per process).
- The load generator must not be the bottleneck: it reports its own CPU time over the window,
  and :func:`run_load` can split the load over several processes; their latency histograms are
  merged exactly (logarithmic buckets of 1 %).
- ``python -m bench.loadgen --spec FILE ...`` runs one process of it and announces its result
  on standard output (:func:`bench.processes.announce_ready`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import itertools
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.errors import BenchError
from bench.processes import Children, run_event_loop
from jisr.processes import announce_ready, python_argv

#: Histogram resolution: buckets per natural-log unit of microseconds (about 1 % wide).
_BUCKETS_PER_E: Final = 100
#: How many distinct error messages a result keeps.
_ERROR_SAMPLES: Final = 5
#: Pause of a worker after an error, so that a refused connection does not become a busy loop.
_ERROR_PAUSE_S: Final = 0.01
DEFAULT_MAX_REQUESTS: Final = 10_000_000
DEFAULT_REQUEST_TIMEOUT_S: Final = 30.0


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """One scenario's request and its good answer."""

    name: str
    method: str
    url: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    expect_status: int = 200
    expect_length: int | None = None
    expect_marker: bytes | None = None
    #: Bytes in ``body`` replaced by a fresh value on every request (a message id that must
    #: be unique, such as the X-Road SOAP ``id`` header).
    unique_placeholder: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "url": self.url,
            "headers": dict(self.headers),
            "body": base64.b64encode(self.body).decode("ascii"),
            "expect_status": self.expect_status,
            "expect_length": self.expect_length,
            "expect_marker": None
            if self.expect_marker is None
            else base64.b64encode(self.expect_marker).decode("ascii"),
            "unique_placeholder": None
            if self.unique_placeholder is None
            else base64.b64encode(self.unique_placeholder).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoadSpec:
        def optional_bytes(key: str) -> bytes | None:
            value = data.get(key)
            return None if value is None else base64.b64decode(value)

        return cls(
            name=str(data["name"]),
            method=str(data["method"]),
            url=str(data["url"]),
            headers={str(k): str(v) for k, v in dict(data.get("headers", {})).items()},
            body=base64.b64decode(data.get("body", "")),
            expect_status=int(data.get("expect_status", 200)),
            expect_length=None if data.get("expect_length") is None else int(data["expect_length"]),
            expect_marker=optional_bytes("expect_marker"),
            unique_placeholder=optional_bytes("unique_placeholder"),
        )

    def check(self, status: int, body: bytes) -> str | None:
        """Why an answer is not the good one, or None when it is."""
        if status != self.expect_status:
            return f"HTTP {status}: {body[:200]!r}"
        if self.expect_length is not None and len(body) != self.expect_length:
            return f"body of {len(body)} bytes, expected {self.expect_length}"
        if self.expect_marker is not None and self.expect_marker not in body:
            return f"body lacks {self.expect_marker!r}: {body[:200]!r}"
        return None


class LatencyHistogram:
    """Latencies in logarithmic buckets: exact to merge, percentiles within about 1 %."""

    def __init__(self, buckets: Mapping[int, int] | None = None) -> None:
        self.buckets: dict[int, int] = dict(buckets or {})

    def record(self, seconds: float) -> None:
        micros = max(seconds * 1e6, 1.0)
        index = int(math.log(micros) * _BUCKETS_PER_E)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def merge(self, other: LatencyHistogram) -> None:
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def percentile_ms(self, q: float) -> float | None:
        """The latency below which a fraction ``q`` of the answers came, in milliseconds."""
        total = self.count
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return math.exp((index + 0.5) / _BUCKETS_PER_E) / 1000.0
        raise AssertionError("unreachable: the rank is at most the total")  # pragma: no cover

    def to_json(self) -> dict[str, int]:
        return {str(index): count for index, count in sorted(self.buckets.items())}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        return cls({int(index): int(count) for index, count in data.items()})


@dataclasses.dataclass
class LoadResult:
    """What one scenario's load achieved (merged over the load generator's processes)."""

    name: str
    concurrency: int
    duration_s: float
    requests: int = 0
    errors: int = 0
    #: Good answers including the warm-up and the last in-flight ones: what the measured
    #: processes' CPU time over the load generator's whole life is divided by.
    answered: int = 0
    error_samples: list[str] = dataclasses.field(default_factory=list)
    histogram: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
    loadgen_cpu_s: float = 0.0
    processes: int = 1

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def loadgen_cpu_share(self) -> float:
        """CPU time of the load generator per process and second: 1.0 is one core saturated."""
        if self.duration_s <= 0:
            return 0.0
        return self.loadgen_cpu_s / self.duration_s / self.processes

    def summary(self) -> dict[str, Any]:
        """The numbers a report shows (no histogram)."""
        p50, p99 = self.histogram.percentile_ms(0.50), self.histogram.percentile_ms(0.99)
        return {
            "rps": round(self.rps, 1),
            "p50_ms": None if p50 is None else round(p50, 2),
            "p99_ms": None if p99 is None else round(p99, 2),
            "requests": self.requests,
            "errors": self.errors,
            "error_samples": list(self.error_samples),
            "loadgen_cpu_share": round(self.loadgen_cpu_share, 2),
            "loadgen_processes": self.processes,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 2),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "errors": self.errors,
            "answered": self.answered,
            "error_samples": self.error_samples,
            "histogram": self.histogram.to_json(),
            "loadgen_cpu_s": self.loadgen_cpu_s,
            "processes": self.processes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoadResult:
        return cls(
            name=str(data["name"]),
            concurrency=int(data["concurrency"]),
            duration_s=float(data["duration_s"]),
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            answered=int(data.get("answered", 0)),
            error_samples=[str(s) for s in data.get("error_samples", [])],
            histogram=LatencyHistogram.from_json(data.get("histogram", {})),
            loadgen_cpu_s=float(data.get("loadgen_cpu_s", 0.0)),
            processes=int(data.get("processes", 1)),
        )

    @classmethod
    def merged(cls, parts: list[LoadResult]) -> LoadResult:
        if not parts:
            raise BenchError("no load generator process reported a result")
        total = cls(
            name=parts[0].name,
            concurrency=sum(p.concurrency for p in parts),
            duration_s=max(p.duration_s for p in parts),
            processes=len(parts),
        )
        for part in parts:
            total.requests += part.requests
            total.errors += part.errors
            total.answered += part.answered
            total.loadgen_cpu_s += part.loadgen_cpu_s
            total.histogram.merge(part.histogram)
            for sample in part.error_samples:
                if sample not in total.error_samples and len(total.error_samples) < _ERROR_SAMPLES:
                    total.error_samples.append(sample)
        return total


@dataclasses.dataclass
class _Window:
    """The measured window and the counters the workers share (one event loop, no locks)."""

    start: float
    end: float
    max_requests: int
    result: LoadResult
    issued: int = 0


async def _worker(
    session: aiohttp.ClientSession, spec: LoadSpec, window: _Window, ids: itertools.count[int]
) -> None:
    prefix = f"{os.getpid()}-"
    result = window.result
    while True:
        started = time.perf_counter()
        if started >= window.end or window.issued >= window.max_requests:
            return
        window.issued += 1
        body = spec.body
        if spec.unique_placeholder is not None:
            body = body.replace(spec.unique_placeholder, f"{prefix}{next(ids)}".encode())
        problem: str | None
        try:
            async with session.request(
                spec.method, spec.url, data=body or None, headers=spec.headers
            ) as response:
                answer = await response.read()
                problem = spec.check(response.status, answer)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        finished = time.perf_counter()
        if problem is None:
            result.answered += 1
        if window.start <= finished <= window.end:
            if problem is None:
                result.requests += 1
                result.histogram.record(finished - started)
            else:
                result.errors += 1
                if (
                    problem not in result.error_samples
                    and len(result.error_samples) < _ERROR_SAMPLES
                ):
                    result.error_samples.append(problem)
        if problem is not None:
            await asyncio.sleep(_ERROR_PAUSE_S)


async def generate_load(
    spec: LoadSpec,
    *,
    duration_s: float,
    concurrency: int,
    warmup_s: float = 0.0,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> LoadResult:
    """Load ``spec.url`` from this process for ``warmup_s`` + ``duration_s`` and measure."""
    if duration_s <= 0 or concurrency < 1:
        raise BenchError("the load needs a positive duration and a concurrency of at least 1")
    result = LoadResult(spec.name, concurrency, duration_s)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        begin = time.perf_counter()
        window = _Window(begin + warmup_s, begin + warmup_s + duration_s, max_requests, result)
        ids = itertools.count()
        workers = [
            asyncio.create_task(_worker(session, spec, window, ids)) for _ in range(concurrency)
        ]
        every_worker = asyncio.gather(*workers)
        try:
            # A load bounded by max_requests may end before the window does.
            await asyncio.wait({every_worker}, timeout=max(0.0, window.start - time.perf_counter()))
            cpu_before = time.process_time()
            await asyncio.wait({every_worker}, timeout=max(0.0, window.end - time.perf_counter()))
            result.loadgen_cpu_s = time.process_time() - cpu_before
            result.duration_s = max(1e-6, min(time.perf_counter(), window.end) - window.start)
            await every_worker
        finally:
            every_worker.cancel()
            await asyncio.gather(every_worker, return_exceptions=True)
    return result


def _write_spec(spec: LoadSpec, work_dir: Path) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_file = work_dir / f"{spec.name}.spec.json"
    spec_file.write_text(json.dumps(spec.to_json()), "utf-8")
    return spec_file


async def run_load(
    children: Children,
    spec: LoadSpec,
    *,
    work_dir: Path,
    duration_s: float,
    concurrency: int,
    warmup_s: float = 0.0,
    processes: int = 1,
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> LoadResult:
    """Run the load in ``processes`` separate processes (concurrency split between them)."""
    processes = max(1, min(processes, concurrency))
    spec_file = _write_spec(spec, work_dir)
    shares = [
        concurrency // processes + (1 if i < concurrency % processes else 0)
        for i in range(processes)
    ]
    limit = warmup_s + duration_s + DEFAULT_REQUEST_TIMEOUT_S + 60.0
    runs = [
        children.run(
            f"loadgen-{spec.name}-{i}",
            python_argv(
                "bench.loadgen",
                "--spec",
                str(spec_file),
                "--duration",
                str(duration_s),
                "--warmup",
                str(warmup_s),
                "--concurrency",
                str(share),
                "--max-requests",
                str(max(1, max_requests // processes)),
            ),
            timeout_s=limit,
        )
        for i, share in enumerate(shares)
    ]
    reported = await asyncio.gather(*runs)
    return LoadResult.merged([LoadResult.from_json(r["result"]) for r in reported])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen", description="One process of the benchmark's load."
    )
    parser.add_argument("--spec", type=Path, required=True, help="LoadSpec as JSON")
    parser.add_argument("--duration", type=float, required=True, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS)
    args = parser.parse_args(argv)
    spec = LoadSpec.from_json(json.loads(args.spec.read_text("utf-8")))
    result = run_event_loop(
        generate_load(
            spec,
            duration_s=args.duration,
            concurrency=args.concurrency,
            warmup_s=args.warmup,
            max_requests=args.max_requests,
        )
    )
    announce_ready(result=result.to_json())


if __name__ == "__main__":
    main()
