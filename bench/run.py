"""``python -m bench.run`` (``make bench``): the benchmark of the signed exchange.

Rules:

- One run measures three paths for each scenario, in this order: the load generator alone
  against the bare service (``service alone``: what the load generator and the service can
  do at most on this machine), the baseline (two plain TLS reverse proxies,
  :mod:`bench.baseline`) and the nodes (:mod:`bench.network`). Each path is loaded with the same
  concurrency for the same duration after the same warm-up.
- ``ratio`` is the nodes' requests per second divided by the baseline's: the share of a plain
  TLS relay's throughput that the signed, checked and logged exchange keeps.
- CPU seconds per 1,000 requests count the measured processes (the nodes, or the proxies) over
  the load generator's whole life, divided by every good answer it received.
- Every process is stopped at the end, also on Ctrl+C, SIGTERM or an error; the run's logs and
  state stay in the data directory only when ``--data-dir`` names one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.baseline import make_tls_pair
from bench.loadgen import LoadResult, LoadSpec, run_load
from bench.network import NodeNetwork, NodesUnavailable, node_network
from bench.process_stats import PeakRss, cpu_between, cpu_snapshot
from bench.processes import PROJECT_ROOT, Children, run_command
from bench.report import format_table, loadgen_warnings, machine_info, ratio, write_results
from bench.scenarios import SCENARIOS, node_spec, service_spec
from jisr.processes import python_argv

DEFAULT_OUTPUT = PROJECT_ROOT / "bench" / "results" / "latest.json"


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    duration_s: float = 20.0
    warmup_s: float = 2.0
    concurrency: int = 64
    scenarios: tuple[str, ...] = SCENARIOS
    loadgen_processes: int = 1
    #: Where logs and state go; None: a temporary directory removed afterwards.
    data_dir: Path | None = None
    output: Path = DEFAULT_OUTPUT
    nodes: bool = True


@dataclasses.dataclass(frozen=True)
class Route:
    """One path requests can take to the service, and the processes it is measured by."""

    label: str
    spec_for: Callable[[str], LoadSpec]
    #: The processes under test (name → pid): their CPU and memory are the route's cost.
    measured: Mapping[str, int]
    #: Other processes worth watching on this route (PostgreSQL), reported apart.
    beside: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Measurement:
    load: LoadResult
    cpu_s: float | None
    peak_rss_mb: dict[str, float]
    beside_cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)
    #: CPU seconds of each measured process tree (name → seconds); they add up to ``cpu_s``.
    process_cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def cpu_s_per_1k(self) -> float | None:
        if self.cpu_s is None or not self.load.answered:
            return None
        return round(self.cpu_s / self.load.answered * 1000.0, 3)

    def to_json(self) -> dict[str, Any]:
        summary = self.load.summary()
        summary["answered"] = self.load.answered
        summary["cpu_s_per_1k"] = self.cpu_s_per_1k
        summary["rss_mb"] = self.peak_rss_mb
        if self.beside_cpu_s and self.load.answered:
            summary["beside_cpu_s_per_1k"] = {
                name: round(cpu / self.load.answered * 1000.0, 3)
                for name, cpu in self.beside_cpu_s.items()
            }
        return summary


async def measure(
    children: Children, route: Route, scenario: str, options: BenchOptions, work_dir: Path
) -> Measurement:
    """Load ``route`` with ``scenario``; sample its processes' CPU and memory meanwhile."""
    spec = route.spec_for(scenario)
    pids = route.measured
    beside_before = {name: cpu_snapshot([pid]) for name, pid in route.beside.items()}
    async with PeakRss(pids) as rss:
        before = {name: cpu_snapshot([pid]) for name, pid in pids.items()}
        load = await run_load(
            children,
            spec,
            work_dir=work_dir,
            duration_s=options.duration_s,
            concurrency=options.concurrency,
            warmup_s=options.warmup_s,
            processes=options.loadgen_processes,
        )
        process_cpu = {
            name: cpu_between(before[name], cpu_snapshot([pid])) for name, pid in pids.items()
        }
    cpu = sum(process_cpu.values()) if pids else None
    beside = {
        name: cpu_between(beside_before[name], cpu_snapshot([pid]))
        for name, pid in route.beside.items()
    }
    return Measurement(load, cpu, rss.peak_mb(), beside, process_cpu)


@contextlib.contextmanager
def run_data_dir(chosen: Path | None) -> Iterator[Path]:
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        yield chosen.resolve()
        return
    temporary = Path(tempfile.mkdtemp(prefix="jisr-bench-"))
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _scenario_entry(
    node: Measurement | None, baseline: Measurement, alone: Measurement
) -> dict[str, Any]:
    node_json = None if node is None else node.to_json()
    baseline_json = baseline.to_json()
    return {
        "rps": None if node_json is None else node_json["rps"],
        "p50_ms": None if node_json is None else node_json["p50_ms"],
        "p99_ms": None if node_json is None else node_json["p99_ms"],
        "errors": None if node_json is None else node_json["errors"],
        "cpu_s_per_1k": None if node_json is None else node_json["cpu_s_per_1k"],
        "node_rss_mb": None
        if node is None or not node.peak_rss_mb
        else max(node.peak_rss_mb.values()),
        "baseline_rps": baseline_json["rps"],
        "ratio": None if node_json is None else ratio(node_json["rps"], baseline_json["rps"]),
        "service_alone_rps": alone.load.summary()["rps"],
        "node": node_json,
        "baseline": baseline_json,
        "service_alone": alone.to_json(),
    }


async def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run every scenario on every path and return the results (also written to the file)."""
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "machine": machine_info(started),
        "settings": {
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "concurrency": options.concurrency,
            "loadgen_processes": options.loadgen_processes,
            "scenarios": list(options.scenarios),
        },
        "nodes": "not run",
        "message_log": False,
        "batch_timestamping": False,
        "scenarios": {},
        "lost_records": None,
        "loadgen_alone_rps": None,
        "warnings": [],
    }
    with run_data_dir(options.data_dir) as data_dir:
        async with Children(data_dir / "logs") as children:
            await _run_paths(children, data_dir, options, results, started)
    write_results(options.output, results)
    return results


async def start_baseline(
    children: Children, data_dir: Path, service_url: str, now: dt.datetime
) -> Route:
    """Start the two TLS reverse proxies in front of ``service_url``; their route."""
    tls = make_tls_pair(data_dir / "baseline-tls", now=now)
    back = await children.start(
        "baseline-back",
        python_argv("bench.baseline", "back", "--upstream", service_url, "--tls-dir", str(tls.dir)),
    )
    front = await children.start(
        "baseline-front",
        python_argv("bench.baseline", "front", "--upstream", back.url, "--tls-dir", str(tls.dir)),
    )
    return Route(
        "baseline",
        lambda s: service_spec(s, front.url),
        {"front proxy": front.pid, "back proxy": back.pid},
    )


async def _run_paths(
    children: Children,
    data_dir: Path,
    options: BenchOptions,
    results: dict[str, Any],
    started: dt.datetime,
) -> None:
    work_dir = data_dir / "load"
    _say(f"data directory {data_dir}")
    service = await children.start("service", python_argv("bench.service"))
    alone_route = Route("service alone", lambda s: service_spec(s, service.url), {})
    baseline_route = await start_baseline(children, data_dir, service.url, started)
    async with contextlib.AsyncExitStack() as node_stack:
        nodes: NodeNetwork | None = None
        if options.nodes:
            _say("starting the registry, trust services and two nodes ...")
            try:
                nodes = await node_stack.enter_async_context(
                    node_network(data_dir, service.url, children.log_dir)
                )
                results["nodes"] = "ran"
                results["message_log"] = nodes.message_log
            except NodesUnavailable as exc:
                results["nodes"] = f"skipped: {exc}"
                _say(f"nodes skipped: {exc}")
        else:
            results["nodes"] = "skipped: --no-nodes"
        node_route = (
            None
            if nodes is None
            else Route(
                "nodes",
                lambda s: node_spec(s, nodes.consumer_url, nodes.parties),
                nodes.node_pids,
                {} if nodes.postgres_pid is None else {"postgres": nodes.postgres_pid},
            )
        )
        answered_through_nodes = 0
        for scenario in options.scenarios:
            measured: dict[str, Measurement] = {}
            for route in (alone_route, baseline_route, node_route):
                if route is None:
                    continue
                _say(f"{scenario}: {route.label} ...")
                result = await measure(children, route, scenario, options, work_dir)
                measured[route.label] = result
                results["warnings"] += loadgen_warnings(
                    f"{scenario} {route.label}",
                    result.load.summary(),
                    limit_expected=route is alone_route,
                )
            alone, baseline = measured["service alone"], measured["baseline"]
            node = measured.get("nodes")
            if node is not None:
                answered_through_nodes += node.load.answered
            results["scenarios"][scenario] = _scenario_entry(node, baseline, alone)
        if nodes is not None and nodes.message_log:
            _say("checking the message logs ...")
            check = await nodes.lost_records(answered_through_nodes)
            if check is not None:
                results["lost_records"] = check.get("lost_records")
                results["message_log_check"] = check
            results["batch_timestamping"] = nodes.batch_timestamping
    alone_rates = [entry["service_alone_rps"] for entry in results["scenarios"].values()]
    results["loadgen_alone_rps"] = max(alone_rates) if alone_rates else None
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def parse_options(argv: Sequence[str] | None = None) -> BenchOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark the signed exchange through two nodes against a TLS baseline.",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--loadgen-processes", type=int, default=1, help="split the load over N processes"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="keep logs and state here (default: a temporary directory)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="result file")
    parser.add_argument("--no-nodes", action="store_true", help="measure only the baseline")
    args = parser.parse_args(argv)
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--duration must be positive, --warmup not negative, --concurrency >= 1")
    if args.loadgen_processes < 1:
        parser.error("--loadgen-processes must be at least 1")
    return BenchOptions(
        duration_s=args.duration,
        warmup_s=args.warmup,
        concurrency=args.concurrency,
        scenarios=scenarios,
        loadgen_processes=args.loadgen_processes,
        data_dir=args.data_dir,
        output=args.output,
        nodes=not args.no_nodes,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    results = run_command("bench", run_bench(options))
    print(format_table(results))
    print(f"\nresults written to {options.output}")


if __name__ == "__main__":
    main()
