"""Where a node's CPU goes: py-spy's samples read, put in categories and summed per call."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.profile import (
    CATEGORIES,
    UNREADABLE_FRAME,
    ProfileOptions,
    budget,
    format_profile,
    frame_category,
    frame_file,
    parse_options,
    parse_raw,
    pyspy_path,
    run_profile,
    sample,
    stack_category,
    summarise,
)

ROOT = "_run_module_as_main (<frozen runpy>:198);serve (jisr/commands/node.py:684)"
LOOP = ROOT + ";run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118)"


def test_a_frame_names_its_file_without_the_line() -> None:
    assert frame_file("Runner.run (asyncio/runners.py:118)") == "asyncio/runners.py"
    assert frame_file("<module> (jisr/__main__.py:5)") == "jisr/__main__.py"
    assert frame_file("f (<frozen runpy>:88)") == "<frozen runpy>"
    assert frame_file("a (b) (gateway/rest.py:9)") == "gateway/rest.py"
    assert frame_file("no location") == ""


def test_the_longest_module_prefix_decides_and_libraries_decide_nothing() -> None:
    assert frame_category("gateway/transport.py") == "envelope"
    assert frame_category("gateway/rest.py") == "rest_soap"
    assert frame_category("gateway/log_record.py") == "message_log"
    assert frame_category("security_server/replay_store.py") == "replay"
    assert frame_category("security_server/runtime.py") == "node"
    assert frame_category("aiohttp/web_protocol.py") == "http"
    assert frame_category("ssl.py") == "http"
    assert frame_category("asyncio/tasks.py") == "event_loop"
    assert frame_category("uvloop/__init__.py") == "event_loop"
    assert frame_category("structlog/_native.py") == "logging"
    assert frame_category("json/encoder.py") is None
    assert frame_category("asyncpg/connection.py") is None
    assert frame_category("cryptography/x509/base.py") is None


def test_a_library_frame_counts_for_the_jisr_code_that_called_it() -> None:
    log_write = (
        LOOP + ";PostgresMessageLog._write (security_server/message_log.py:334)"
        ";Connection.copy_records_to_table (asyncpg/connection.py:1150)"
    )
    assert stack_category(log_write.split(";")) == "message_log"
    signing = (
        LOOP + ";ClientProxy.handle (security_server/client_proxy.py:10)"
        ";seal (gateway/transport.py:300);SoftwareSigner.sign (certs/signer.py:63)"
        ";sign (cryptography/hazmat/primitives/asymmetric/ec.py:5)"
    )
    assert stack_category(signing.split(";")) == "signing"
    # The HTTP client under Jisr's code is HTTP, not the code that called it.
    client = (
        LOOP + ";TransportClient.exchange (security_server/transport_client.py:245)"
        ";ClientSession._request (aiohttp/client.py:737);SSLObject.write (ssl.py:930)"
    )
    assert stack_category(client.split(";")) == "http"
    assert stack_category(LOOP.split(";")) == "event_loop"
    assert stack_category(["f (<frozen runpy>:1)", "g (json/encoder.py:2)"]) == "other"


def test_raw_output_is_read_and_a_cut_line_does_not_stop_it() -> None:
    lines = [
        LOOP + ";canonical_json (gateway/canonical.py:43) 30\n",
        LOOP + " 50\n",
        "\n",
        # A frame name with a newline in it cuts its line in two.
        LOOP + ";weird (gateway/re\n",
        "st.py:1) 20\n",
        " 5\n",
    ]
    profile = parse_raw(lines)
    assert profile.samples == 105
    assert profile.unreadable_lines == 1
    assert profile.by_category["envelope"] == 30
    assert profile.by_category["event_loop"] == 50
    assert profile.by_category["other"] == 25
    assert profile.by_function[UNREADABLE_FRAME] == 5
    shares = profile.shares()
    assert list(shares) == list(CATEGORIES)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_shares_become_microseconds_per_call() -> None:
    profile = parse_raw([LOOP + " 75\n", LOOP + ";f (gateway/canonical.py:1) 25\n"])
    entry = summarise(profile, cpu_s_per_1k=0.8, top=1)
    assert entry["cpu_us_per_call"] == 800.0
    assert entry["categories"]["event_loop"] == {"share": 0.75, "us_per_call": 600.0}
    assert entry["categories"]["envelope"] == {"share": 0.25, "us_per_call": 200.0}
    assert entry["categories"]["replay"] == {"share": 0.0, "us_per_call": 0.0}
    assert entry["top_functions"] == [
        {"function": "Runner.run (asyncio/runners.py:118)", "share": 0.75}
    ]
    unmeasured = summarise(profile, cpu_s_per_1k=None)
    assert unmeasured["categories"]["event_loop"]["us_per_call"] is None
    assert "-" in format_profile({"nodes": {"n": unmeasured}, "load": {}})


def test_the_budget_is_what_two_busy_cores_leave_per_call() -> None:
    plan = budget(
        cores=2,
        baseline_rps=2500.0,
        rest_s_per_1k=0.3,
        http_and_loop_s_per_1k=1.0,
        postgres_s_per_1k=0.4,
    )
    # 0.5 x 2,500 = 1,250 calls/s: 2 s / 1,250 = 1.6 ms per call, 0.3 of it taken already.
    assert plan["left_for_nodes_and_postgres_at_ratio_0_5"] == pytest.approx(1.3)
    assert plan["left_for_nodes_and_postgres_at_2000_rps"] == pytest.approx(0.7)
    assert plan["nodes_http_event_loop_and_postgres_s_per_1k"] == pytest.approx(1.4)
    assert "left for both nodes and PostgreSQL at a ratio of 0.5 1.3" in format_profile(
        {"nodes": {}, "load": {}, "budget": plan}
    )


def test_options_are_checked() -> None:
    options = parse_options(["--scenario", "soap_small", "--duration", "3"])
    assert (options.scenario, options.duration_s, options.rate) == ("soap_small", 3.0, 200)
    assert options.load.scenarios == ("soap_small",)
    for wrong in (["--duration", "0"], ["--rate", "0"], ["--scenario", "nope"], ["--top", "0"]):
        with pytest.raises(SystemExit):
            parse_options(wrong)


def test_missing_py_spy_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BenchError, match=r"py-spy is not installed.*\[dev\]"):
        pyspy_path()


async def test_a_process_py_spy_cannot_sample_is_named(tmp_path: Path) -> None:
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()  # its pid now names no process
    with pytest.raises(BenchError, match=rf"py-spy could not sample process {gone.pid} \(exit"):
        await sample(
            gone.pid,
            tmp_path / "gone.raw",
            duration_s=1,
            rate=10,
            pyspy=pyspy_path(),
            log=tmp_path / "py-spy.log",
        )


@pytest.mark.e2e
async def test_a_short_profile_of_the_running_nodes(tmp_path: Path) -> None:
    """The node network under load, sampled by the real py-spy (needs ptrace: CI runs as root)."""
    output = tmp_path / "profile.json"
    options = ProfileOptions(
        duration_s=2.0,
        warmup_s=0.5,
        concurrency=4,
        rate=100,
        data_dir=tmp_path / "run",
        output=output,
    )
    try:
        results = await run_profile(options)
    except BenchError as exc:
        if "ptrace" in str(exc):
            pytest.skip(f"this user may not sample other processes: {exc}")
        raise
    written = json.loads(output.read_text("utf-8"))
    assert written == json.loads(json.dumps(results))
    assert written["load"]["errors"] == 0
    assert written["load"]["rps"] > 0
    assert written["load"]["baseline_cpu_s_per_1k"] > 0
    assert written["load"]["postgres_cpu_s_per_1k"] > 0
    assert written["load"]["service_cpu_s_per_1k"] > 0
    assert written["load"]["loadgen_cpu_s_per_1k"] > 0
    plan = written["budget"]
    assert plan["cores"] >= 1
    assert plan["nodes_http_and_event_loop_s_per_1k"] > 0
    assert plan["load_generator_and_service_s_per_1k"] == pytest.approx(
        written["load"]["service_cpu_s_per_1k"] + written["load"]["loadgen_cpu_s_per_1k"],
        abs=0.002,
    )
    assert set(written["nodes"]) == {"consumer node", "provider node"}
    for name, node in written["nodes"].items():
        assert node["samples"] > 0, name
        assert node["cpu_us_per_call"] > 0, name
        categories = node["categories"]
        assert set(categories) == set(CATEGORIES)
        assert sum(c["share"] for c in categories.values()) == pytest.approx(1.0, abs=0.01)
        # A node under load spends time in HTTP and in its message log, whatever the machine.
        assert categories["http"]["share"] > 0, name
        assert categories["event_loop"]["share"] > 0, name
        assert categories["message_log"]["share"] > 0, name
        assert node["top_functions"], name
    # Only the provider checks replays.
    assert written["nodes"]["consumer node"]["categories"]["replay"]["share"] == 0
    table = format_profile(written)
    for category in CATEGORIES:
        assert category in table
