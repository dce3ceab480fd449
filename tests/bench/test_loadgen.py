"""The load generator: answers counted, wrong answers counted as errors, results merged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.loadgen import LatencyHistogram, LoadResult, LoadSpec, generate_load, run_load
from bench.processes import Children
from bench.scenarios import SCENARIOS, service_spec
from bench.service import service_app
from trust_services.http_server import serve_app


@pytest.fixture
async def service_url() -> AsyncIterator[str]:
    async with serve_app(service_app(), shutdown_timeout=0.5) as url:
        yield url


def test_histogram_percentiles_fall_in_the_recorded_bucket() -> None:
    histogram = LatencyHistogram()
    for _ in range(99):
        histogram.record(0.010)
    histogram.record(0.500)
    p50, p99, p100 = (histogram.percentile_ms(q) for q in (0.5, 0.99, 1.0))
    assert p50 == pytest.approx(10.0, rel=0.02)
    assert p99 == pytest.approx(10.0, rel=0.02)
    assert p100 == pytest.approx(500.0, rel=0.02)


def test_empty_histogram_has_no_percentile() -> None:
    assert LatencyHistogram().percentile_ms(0.5) is None


def test_merged_results_add_counts_and_histograms() -> None:
    parts = []
    for latency in (0.001, 0.004):
        part = LoadResult("rest_small", concurrency=2, duration_s=1.0, requests=3, answered=4)
        for _ in range(3):
            part.histogram.record(latency)
        part.errors = 1
        part.error_samples = ["HTTP 500: b''"]
        parts.append(part)
    total = LoadResult.merged(parts)
    assert (total.requests, total.errors, total.answered) == (6, 2, 8)
    assert total.concurrency == 4
    assert total.processes == 2
    assert total.histogram.count == 6
    assert total.error_samples == ["HTTP 500: b''"]
    assert LoadResult.from_json(total.to_json()).histogram.buckets == total.histogram.buckets


def test_spec_survives_its_json_form() -> None:
    spec = service_spec("soap_small", "http://127.0.0.1:1")
    assert LoadSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_gets_good_answers_from_the_service(service_url: str, scenario: str) -> None:
    result = await generate_load(
        service_spec(scenario, service_url), duration_s=0.5, concurrency=2, max_requests=200
    )
    assert result.errors == 0, result.error_samples
    assert result.requests > 0
    assert result.answered >= result.requests
    summary = result.summary()
    assert summary["p50_ms"] is not None
    assert summary["p99_ms"] is not None


async def test_counts_wrong_answers_as_errors(service_url: str) -> None:
    spec = LoadSpec("rest_small", "GET", service_url + "/small", expect_length=1)
    result = await generate_load(spec, duration_s=0.3, concurrency=2, max_requests=50)
    assert result.requests == 0
    assert result.errors > 0
    assert "expected 1" in result.error_samples[0]


async def test_stops_after_max_requests(service_url: str) -> None:
    spec = service_spec("rest_small", service_url)
    result = await generate_load(spec, duration_s=30.0, concurrency=2, max_requests=10)
    assert result.answered == 10


async def test_counts_a_refused_connection_as_an_error() -> None:
    async with serve_app(service_app()) as url:
        pass  # the port is free again: nothing listens there now
    result = await generate_load(
        service_spec("rest_small", url), duration_s=0.3, concurrency=1, max_requests=20
    )
    assert result.requests == 0
    assert result.errors > 0


@pytest.mark.e2e
async def test_load_split_over_processes_is_merged(service_url: str, tmp_path: Path) -> None:
    async with Children(tmp_path / "logs") as children:
        result = await run_load(
            children,
            service_spec("rest_small", service_url),
            work_dir=tmp_path,
            duration_s=0.5,
            concurrency=2,
            processes=2,
            max_requests=400,
        )
        assert children.started == []
    assert result.processes == 2
    assert result.errors == 0, result.error_samples
    assert result.requests > 0
