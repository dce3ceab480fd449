"""A whole (tiny) benchmark run without nodes: processes started and stopped, file written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report import SCENARIO_KEYS, TOP_KEYS, format_table, loadgen_warnings
from bench.run import BenchOptions, parse_options, run_bench
from bench.scenarios import SCENARIOS


@pytest.mark.e2e
async def test_run_without_nodes_writes_the_result_file(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    options = BenchOptions(
        duration_s=0.5,
        warmup_s=0.1,
        concurrency=2,
        data_dir=tmp_path / "run",
        output=output,
        nodes=False,
    )
    results = await run_bench(options)
    written = json.loads(output.read_text("utf-8"))
    assert written == json.loads(json.dumps(results))
    for key in TOP_KEYS:
        assert key in written
    assert written["machine"]["cores"] >= 1
    assert written["lost_records"] is None
    assert written["loadgen_alone_rps"] > 0
    assert written["nodes"].startswith("skipped")
    assert set(written["scenarios"]) == set(SCENARIOS)
    for name, entry in written["scenarios"].items():
        for key in SCENARIO_KEYS:
            assert key in entry, (name, key)
        assert entry["rps"] is None
        assert entry["ratio"] is None
        assert entry["baseline_rps"] > 0, name
        assert entry["baseline"]["errors"] == 0, entry["baseline"]["error_samples"]
        assert entry["baseline"]["cpu_s_per_1k"] is not None
        assert entry["service_alone"]["errors"] == 0
    table = format_table(written)
    for name in SCENARIOS:
        assert name in table
    for log in (tmp_path / "run" / "logs").glob("*.log"):
        assert "Traceback" not in log.read_text("utf-8"), log


def test_refuses_an_unknown_scenario() -> None:
    with pytest.raises(SystemExit):
        parse_options(["--scenarios", "rest_small,nonsense"])


def test_defaults_follow_the_issue() -> None:
    options = parse_options([])
    assert (options.duration_s, options.concurrency) == (20.0, 64)
    assert options.scenarios == SCENARIOS


def test_warns_about_a_busy_load_generator_except_when_measuring_its_limit() -> None:
    busy = {"loadgen_cpu_share": 0.97, "errors": 0}
    assert "bottleneck" in loadgen_warnings("rest_small nodes", busy)[0]
    assert loadgen_warnings("rest_small service alone", busy, limit_expected=True) == []
    failing = {"loadgen_cpu_share": 0.1, "errors": 3, "error_samples": ["HTTP 500: b''"]}
    assert loadgen_warnings("soap_small nodes", failing) == [
        "soap_small nodes: 3 errors, e.g. HTTP 500: b''"
    ]
