"""``python -m bench.profile`` (``make bench-profile``): where a node's CPU goes, per call.

Rules:

- One run starts what ``make bench`` starts for one scenario (the bare service, the two TLS
  reverse proxies of the baseline, the registry, trust services and both nodes), loads the
  baseline and then the nodes with the same load, and samples both node processes with py-spy
  (``record --format raw --nonblocking``) over the nodes' measured window. The proxies' CPU per
  call is measured in the same run, so the node's cost stands beside a plain relay's.
- Each sample is put in one category by its stack, read from the innermost frame outwards: the
  first frame of the HTTP stack (aiohttp, ssl, ...) puts it in ``http``; of the event loop
  (asyncio, uvloop) in ``event_loop``; of logging in ``logging``; of one of Jisr's modules in
  that module's category (:data:`MODULE_CATEGORIES`). Frames of other libraries (json,
  cryptography, asyncpg, lxml, uuid, ...) count for the Jisr code that called them: a
  signature's ECDSA is ``signing``, the database driver under the message log is
  ``message_log``.
- A category's microseconds per call are its share of the node's samples times the node's CPU
  seconds per call, measured over the same window (from ``/proc``, not from the samples).
- The CPU per call of PostgreSQL, the service and the load generator is measured in the same
  run, and :func:`budget` says what the cores leave per call for the nodes and PostgreSQL at a
  ratio of 0.5 and at 2,000 req/s (the performance targets), beside what the nodes' HTTP and
  event loop take.
- The result goes to ``bench/results/profile.json`` (atomically) and a table is printed.
  py-spy must be able to read the nodes' memory: run as root, or as the nodes' user with
  ptrace allowed (``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import os
import shutil
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from bench.errors import BenchError
from bench.network import NodesUnavailable, node_network
from bench.processes import Children, run_command
from bench.report import machine_info, write_results
from bench.run import BenchOptions, Measurement, Route, measure, run_data_dir, start_baseline
from bench.scenarios import SCENARIOS, node_spec
from jisr.processes import python_argv

DEFAULT_OUTPUT: Final = Path(__file__).resolve().parent / "results" / "profile.json"
#: Samples per second and process (py-spy's default is 100).
DEFAULT_RATE: Final = 200
#: How long py-spy may take past its duration to write its file.
PYSPY_GRACE_S: Final = 30.0

#: Category → what it holds, in the order the table shows them.
CATEGORIES: Final[Mapping[str, str]] = {
    "http": "HTTP in and out, TLS (aiohttp, ssl; the node's HTTP client)",
    "event_loop": "the event loop: tasks, callbacks, socket I/O, compiled protocols (asyncpg)",
    "envelope": "transport envelope: framing, signed parts, canonical form",
    "rest_soap": "REST or SOAP handling, identifiers, access checks, proxy logic",
    "message_log": "message log and timestamping (with their database driver)",
    "signing": "signing, verifying, certificate paths and OCSP",
    "replay": "replay check",
    "logging": "structured logging",
    "node": "other node code (settings, runtime, CLI)",
    "other": "no Jisr or HTTP frame in the stack",
}

#: Libraries whose frames are the HTTP stack (file path prefixes).
HTTP_PREFIXES: Final = (
    "aiohttp/",
    "aiohappyeyeballs/",
    "aiosignal/",
    "multidict/",
    "yarl/",
    "propcache/",
    "frozenlist/",
    "ssl.py",
    "socket.py",
)
#: The event loop's: uvloop runs sockets and compiled protocols in C under ``Runner.run``.
EVENT_LOOP_PREFIXES: Final = ("asyncio/", "uvloop/", "selectors.py")
LOGGING_PREFIXES: Final = ("structlog/", "logging/", "config/logging.py")

#: Jisr's modules (file path prefixes; the longest match wins) and their categories.
MODULE_CATEGORIES: Final[Mapping[str, str]] = {
    "gateway/transport.py": "envelope",
    "gateway/canonical.py": "envelope",
    "gateway/multipart.py": "envelope",
    "gateway/hash_tree.py": "signing",
    "gateway/log_record.py": "message_log",
    "gateway/": "rest_soap",
    "certs/": "signing",
    "trust_services/": "signing",
    "security_server/peer_trust.py": "signing",
    "security_server/own_ocsp.py": "signing",
    "security_server/node_keys.py": "signing",
    "security_server/tls.py": "signing",
    "security_server/message_log.py": "message_log",
    "security_server/log_stamps.py": "message_log",
    "security_server/log_evidence.py": "message_log",
    "security_server/timestamper.py": "message_log",
    "storage/": "message_log",
    "security_server/replay_store.py": "replay",
    "security_server/transport_client.py": "http",
    "security_server/client_proxy.py": "rest_soap",
    "security_server/server_proxy.py": "rest_soap",
    "security_server/access_rights.py": "rest_soap",
    "security_server/catalogue.py": "rest_soap",
    "security_server/catalogue_store.py": "rest_soap",
    "security_server/metaservices.py": "rest_soap",
    "security_server/conf_client.py": "rest_soap",
    "security_server/": "node",
    "config/": "node",
    "jisr/": "node",
}


#: Stands for the frames of a sample whose stack py-spy could not read whole.
UNREADABLE_FRAME: Final = "(stack not readable)"


def frame_file(frame: str) -> str:
    """The file of one py-spy raw frame, ``"name (path/file.py:12)"`` → ``"path/file.py"``."""
    start = frame.rfind(" (")
    if start < 0 or not frame.endswith(")"):
        return ""
    location = frame[start + 2 : -1]
    path, colon, line = location.rpartition(":")
    return path if colon and line.isdigit() else location


def frame_category(path: str) -> str | None:
    """The category a frame of ``path`` decides, or None (a library's: look further out)."""
    if path.startswith(HTTP_PREFIXES):
        return "http"
    if path.startswith(EVENT_LOOP_PREFIXES):
        return "event_loop"
    if path.startswith(LOGGING_PREFIXES):
        return "logging"
    best = ""
    for prefix in MODULE_CATEGORIES:
        if path.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return MODULE_CATEGORIES[best] if best else None


def stack_category(frames: Sequence[str]) -> str:
    """The category of one sample: its innermost frame that decides one (see the rules)."""
    for frame in reversed(frames):
        category = frame_category(frame_file(frame))
        if category is not None:
            return category
    return "other"


@dataclasses.dataclass
class Profile:
    """One process's samples, by category and by innermost function."""

    samples: int = 0
    by_category: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    by_function: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    #: Lines of py-spy's output that carried no sample count (see :func:`parse_raw`).
    unreadable_lines: int = 0

    def add(self, frames: Sequence[str], count: int) -> None:
        self.samples += count
        self.by_category[stack_category(frames)] += count
        self.by_function[frames[-1]] += count

    def shares(self) -> dict[str, float]:
        """Every category's share of the samples (0 for an empty profile)."""
        total = self.samples or 1
        return {name: self.by_category[name] / total for name in CATEGORIES}


def parse_raw(lines: Iterable[str]) -> Profile:
    """Read py-spy's ``--format raw`` output: ``frame;frame;...;frame COUNT`` per line.

    py-spy copies frame names from the process's memory as they are; now and then one holds
    a newline, which cuts its line in two. The part without a count is skipped and counted in
    ``unreadable_lines``; the part with the count keeps its samples, under ``other`` when no
    frame is left.
    """
    profile = Profile()
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack, _space, count = line.rpartition(" ")
        if not count.isdigit():
            profile.unreadable_lines += 1
            continue
        frames = [frame for frame in stack.split(";") if frame.strip()]
        profile.add(frames or [UNREADABLE_FRAME], int(count))
    return profile


def summarise(profile: Profile, cpu_s_per_1k: float | None, top: int = 15) -> dict[str, Any]:
    """One node's entry of the result file: shares, microseconds per call, top functions."""
    per_call_us = None if cpu_s_per_1k is None else cpu_s_per_1k * 1000.0
    shares = profile.shares()
    total = profile.samples or 1
    return {
        "samples": profile.samples,
        "unreadable_lines": profile.unreadable_lines,
        "cpu_us_per_call": None if per_call_us is None else round(per_call_us, 1),
        "categories": {
            name: {
                "share": round(share, 4),
                "us_per_call": None if per_call_us is None else round(share * per_call_us, 1),
            }
            for name, share in shares.items()
        },
        "top_functions": [
            {"function": function, "share": round(count / total, 4)}
            for function, count in profile.by_function.most_common(top)
        ],
    }


def pyspy_path() -> str:
    """py-spy beside this Python (the ``dev`` extra installs it there) or on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise BenchError(
            "py-spy is not installed: install the development extra (pip install -e '.[dev]')"
        )
    return found


async def sample(
    pid: int, output: Path, *, duration_s: float, rate: int, pyspy: str, log: Path
) -> Profile:
    """Sample process ``pid`` with py-spy for ``duration_s`` seconds and read what it wrote."""
    seconds = max(1, round(duration_s))
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            pyspy,
            "record",
            "--format",
            "raw",
            "--nonblocking",
            "--rate",
            str(rate),
            "--duration",
            str(seconds),
            "--pid",
            str(pid),
            "--output",
            str(output),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = await asyncio.wait_for(process.wait(), seconds + PYSPY_GRACE_S)
        except TimeoutError as exc:
            raise BenchError(
                f"py-spy did not finish sampling process {pid} within {seconds} s and "
                f"{PYSPY_GRACE_S:.0f} s more; see {log}"
            ) from exc
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
    return _read_samples(pid, code, output, log)


def _read_samples(pid: int, code: int, output: Path, log: Path) -> Profile:
    said = log.read_text("utf-8", errors="replace").strip()
    if code != 0 or not output.is_file():
        hint = (
            " (py-spy needs to read the node's memory: run as root, or allow ptrace with"
            " sysctl kernel.yama.ptrace_scope=0)"
            if "ermission" in said
            else ""
        )
        raise BenchError(
            f"py-spy could not sample process {pid} (exit status {code}){hint}; it said: "
            f"{said[-400:] or 'nothing'}"
        )
    with output.open(encoding="utf-8", errors="replace") as lines:
        return parse_raw(lines)


@dataclasses.dataclass(frozen=True)
class ProfileOptions:
    scenario: str = "rest_small"
    duration_s: float = 10.0
    warmup_s: float = 2.0
    concurrency: int = 64
    rate: int = DEFAULT_RATE
    top: int = 15
    data_dir: Path | None = None
    output: Path = DEFAULT_OUTPUT

    @property
    def load(self) -> BenchOptions:
        """The load as the benchmark's measurement takes it."""
        return BenchOptions(
            duration_s=self.duration_s,
            warmup_s=self.warmup_s,
            concurrency=self.concurrency,
            scenarios=(self.scenario,),
        )


async def _profiled_load(
    children: Children,
    route: Route,
    options: ProfileOptions,
    work_dir: Path,
    pyspy: str,
) -> tuple[Measurement, dict[str, Profile]]:

    async def sampled(name: str, pid: int) -> Profile:
        await asyncio.sleep(options.warmup_s)
        slug = name.replace(" ", "-")
        return await sample(
            pid,
            work_dir / f"{slug}.raw",
            duration_s=options.duration_s,
            rate=options.rate,
            pyspy=pyspy,
            log=children.log_dir / f"py-spy-{slug}.log",
        )

    names = list(route.measured)
    load = asyncio.create_task(measure(children, route, options.scenario, options.load, work_dir))
    samplers = [asyncio.create_task(sampled(name, route.measured[name])) for name in names]
    try:
        profiles = await asyncio.gather(*samplers)
    except BaseException:
        # One sampler failed (or the run was cancelled): stop the load and the other samplers
        # (each kills its py-spy process) before saying why.
        for task in (*samplers, load):
            task.cancel()
        await asyncio.gather(*samplers, load, return_exceptions=True)
        raise
    return await load, dict(zip(names, profiles, strict=True))


async def run_profile(options: ProfileOptions) -> dict[str, Any]:
    """Profile the nodes under one scenario's load; return the result (also written)."""
    pyspy = pyspy_path()
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "machine": machine_info(started),
        "settings": {
            "scenario": options.scenario,
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "concurrency": options.concurrency,
            "sample_rate_hz": options.rate,
        },
        "categories": dict(CATEGORIES),
    }
    with run_data_dir(options.data_dir) as data_dir:
        work_dir = data_dir / "load"
        work_dir.mkdir(parents=True, exist_ok=True)
        async with Children(data_dir / "logs") as children:
            service = await children.start("service", python_argv("bench.service"))
            baseline_route = dataclasses.replace(
                await start_baseline(children, data_dir, service.url, started),
                beside={"service": service.pid},
            )
            _say(f"{options.scenario}: baseline ...")
            baseline = await measure(
                children, baseline_route, options.scenario, options.load, work_dir
            )
            _say("starting the registry, trust services and two nodes ...")
            try:
                async with node_network(data_dir, service.url, children.log_dir) as nodes:
                    node_route = Route(
                        "nodes",
                        lambda s: node_spec(s, nodes.consumer_url, nodes.parties),
                        nodes.node_pids,
                        {"service": service.pid}
                        | ({} if nodes.postgres_pid is None else {"postgres": nodes.postgres_pid}),
                    )
                    _say(f"{options.scenario}: nodes, sampled by py-spy ...")
                    measured, profiles = await _profiled_load(
                        children, node_route, options, work_dir, pyspy
                    )
            except NodesUnavailable as exc:
                raise BenchError(f"the nodes did not start: {exc}") from exc
    results.update(_entries(measured, profiles, baseline, options.top))
    write_results(options.output, results)
    return results


def _beside_per_1k(measured: Measurement, name: str) -> float | None:
    value = measured.to_json().get("beside_cpu_s_per_1k", {}).get(name)
    return None if value is None else float(value)


def _loadgen_per_1k(measured: Measurement) -> float | None:
    load = measured.load
    return None if not load.requests else round(load.loadgen_cpu_s / load.requests * 1000.0, 3)


def budget(
    *,
    cores: int,
    baseline_rps: float,
    rest_s_per_1k: float,
    http_and_loop_s_per_1k: float,
    postgres_s_per_1k: float,
) -> dict[str, float]:
    """What two CPU-bound cores leave per call for both nodes and PostgreSQL.

    At ``r`` calls a second the machine has ``cores / r`` CPU seconds per call; the load
    generator and the service take ``rest_s_per_1k`` of it (per 1,000 calls), the rest is the
    nodes' and PostgreSQL's. Figures are CPU seconds per 1,000 calls.
    """

    def left_at(rps: float) -> float:
        return round(cores * 1000.0 / rps - rest_s_per_1k, 3)

    return {
        "cores": cores,
        "load_generator_and_service_s_per_1k": round(rest_s_per_1k, 3),
        "left_for_nodes_and_postgres_at_ratio_0_5": left_at(0.5 * baseline_rps),
        "left_for_nodes_and_postgres_at_2000_rps": left_at(2000.0),
        "nodes_http_and_event_loop_s_per_1k": round(http_and_loop_s_per_1k, 3),
        "nodes_http_event_loop_and_postgres_s_per_1k": round(
            http_and_loop_s_per_1k + postgres_s_per_1k, 3
        ),
    }


def _entries(
    measured: Measurement, profiles: Mapping[str, Profile], baseline: Measurement, top: int
) -> dict[str, Any]:
    answered = measured.load.answered
    per_node_cpu = {
        name: None if not answered else cpu / answered * 1000.0
        for name, cpu in measured.process_cpu_s.items()
    }
    nodes = {
        name: summarise(profile, per_node_cpu.get(name), top) for name, profile in profiles.items()
    }
    load = measured.load.summary()
    baseline_rps = baseline.load.summary()["rps"]
    entry: dict[str, Any] = {
        "load": {
            "rps": load["rps"],
            "p99_ms": load["p99_ms"],
            "errors": load["errors"],
            "cpu_s_per_1k": measured.cpu_s_per_1k,
            "postgres_cpu_s_per_1k": _beside_per_1k(measured, "postgres"),
            "service_cpu_s_per_1k": _beside_per_1k(measured, "service"),
            "loadgen_cpu_s_per_1k": _loadgen_per_1k(measured),
            "baseline_rps": baseline_rps,
            "baseline_cpu_s_per_1k": baseline.cpu_s_per_1k,
            "baseline_service_cpu_s_per_1k": _beside_per_1k(baseline, "service"),
            "baseline_loadgen_cpu_s_per_1k": _loadgen_per_1k(baseline),
        },
        "nodes": nodes,
    }
    rest = [entry["load"][k] for k in ("loadgen_cpu_s_per_1k", "service_cpu_s_per_1k")]
    per_call = [node["categories"] for node in nodes.values()]
    loop_us = [c[k]["us_per_call"] for c in per_call for k in ("http", "event_loop")]
    postgres = entry["load"]["postgres_cpu_s_per_1k"]
    if baseline_rps and None not in rest and None not in loop_us and postgres is not None:
        entry["budget"] = budget(
            cores=os.cpu_count() or 1,
            baseline_rps=baseline_rps,
            rest_s_per_1k=sum(rest),
            http_and_loop_s_per_1k=sum(loop_us) / 1000.0,
            postgres_s_per_1k=postgres,
        )
    return entry


def format_profile(results: Mapping[str, Any]) -> str:
    """The profile as a table: per category, each node's share and microseconds per call."""
    nodes: Mapping[str, Any] = results.get("nodes", {})
    names = list(nodes)
    rows = [["category", *(f"{name} %" for name in names), *(f"{name} µs" for name in names)]]
    for category in CATEGORIES:
        cells = [category]
        for name in names:
            cells.append(f"{nodes[name]['categories'][category]['share'] * 100:.1f}")
        for name in names:
            value = nodes[name]["categories"][category]["us_per_call"]
            cells.append("-" if value is None else f"{value:.0f}")
        rows.append(cells)
    rows.append(
        [
            "total",
            *("100.0" for _ in names),
            *(
                "-" if nodes[n]["cpu_us_per_call"] is None else f"{nodes[n]['cpu_us_per_call']:.0f}"
                for n in names
            ),
        ]
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        lines.append(
            "  ".join(
                [row[0].ljust(widths[0])]
                + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            )
        )
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    load = results.get("load", {})
    lines.append("")
    lines.append(
        f"nodes: {load.get('rps')} req/s, {load.get('errors')} errors, "
        f"{load.get('cpu_s_per_1k')} CPU s per 1,000 calls (both nodes; PostgreSQL "
        f"{load.get('postgres_cpu_s_per_1k')}); "
        f"baseline: {load.get('baseline_rps')} req/s, "
        f"{load.get('baseline_cpu_s_per_1k')} CPU s per 1,000 calls (both proxies)"
    )
    plan = results.get("budget")
    if plan:
        lines.append(
            f"budget on {plan['cores']} cores, CPU ms per call: load generator and service "
            f"{plan['load_generator_and_service_s_per_1k']}; left for both nodes and PostgreSQL "
            f"at a ratio of 0.5 {plan['left_for_nodes_and_postgres_at_ratio_0_5']}, at 2,000 "
            f"req/s {plan['left_for_nodes_and_postgres_at_2000_rps']}; the nodes' HTTP and "
            f"event loop {plan['nodes_http_and_event_loop_s_per_1k']}, with PostgreSQL "
            f"{plan['nodes_http_event_loop_and_postgres_s_per_1k']}"
        )
    for name in names:
        lines.append(f"\n{name}: top functions (innermost frame, share of samples)")
        for entry in nodes[name]["top_functions"][:10]:
            lines.append(f"  {entry['share'] * 100:5.1f}%  {entry['function']}")
    return "\n".join(lines)


def _say(text: str) -> None:
    print(f"bench.profile: {text}", file=sys.stderr, flush=True)


def parse_options(argv: Sequence[str] | None = None) -> ProfileOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description="Sample both nodes with py-spy under load: where a call's CPU goes.",
    )
    parser.add_argument("--scenario", default="rest_small", choices=SCENARIOS)
    parser.add_argument("--duration", type=float, default=10.0, help="sampled seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unsampled seconds first")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE, help="samples per second")
    parser.add_argument("--top", type=int, default=15, help="functions listed per node")
    parser.add_argument(
        "--data-dir", type=Path, help="keep logs, state and raw samples here (default: temporary)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="result file")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--duration must be at least 1, --warmup not negative, --concurrency >= 1")
    if not 1 <= args.rate <= 1000 or args.top < 1:
        parser.error("--rate must be between 1 and 1000, --top at least 1")
    return ProfileOptions(
        scenario=args.scenario,
        duration_s=args.duration,
        warmup_s=args.warmup,
        concurrency=args.concurrency,
        rate=args.rate,
        top=args.top,
        data_dir=args.data_dir,
        output=args.output,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    results = run_command("bench.profile", run_profile(options))
    print(format_profile(results))
    print(f"\nresults written to {options.output}")


if __name__ == "__main__":
    main()
