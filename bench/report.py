"""The result file ``bench/results/latest.json`` and the table printed after a run.

Rules:

- The file's top level is fixed by the performance issue: ``machine``, ``scenarios`` (per
  scenario ``rps``, ``p50_ms``, ``p99_ms``, ``errors``, ``cpu_s_per_1k``, ``node_rss_mb``,
  ``baseline_rps``, ``ratio``), ``lost_records`` and ``loadgen_alone_rps``; more keys add
  detail (the baseline's and the bare service's own numbers, settings, warnings).
- A number that was not measured is ``null``, never 0: a skipped node run shows as ``null``
  throughput with the reason in ``nodes``.
- The file is written atomically (a ``.tmp`` file renamed over it).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from config.files import write_atomically

#: Keys every scenario entry has (the issue's list).
SCENARIO_KEYS: Final = (
    "rps",
    "p50_ms",
    "p99_ms",
    "errors",
    "cpu_s_per_1k",
    "node_rss_mb",
    "baseline_rps",
    "ratio",
)
TOP_KEYS: Final = ("machine", "scenarios", "lost_records", "loadgen_alone_rps")
#: A load generator using more of a core than this may be what limits the rate.
LOADGEN_BUSY_SHARE: Final = 0.9


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text("utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text("ascii", errors="replace").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info(now: dt.datetime) -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        loop = f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a POSIX dependency
        loop = "asyncio"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "event_loop": loop,
        "date": now.isoformat(timespec="seconds"),
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return round(value / baseline, 3)


def write_results(path: Path, results: Mapping[str, Any]) -> Path:
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    write_atomically(path, text.encode("utf-8"))
    return path


def _cell(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(results: Mapping[str, Any]) -> str:
    """The run as a readable table, with the notes a reader needs to trust it."""
    columns: Sequence[tuple[str, str, int]] = (
        ("rps", "req/s", 1),
        ("p50_ms", "p50 ms", 1),
        ("p99_ms", "p99 ms", 1),
        ("errors", "errors", 0),
        ("cpu_s_per_1k", "CPU s/1k", 2),
        ("node_rss_mb", "node RSS MB", 1),
        ("baseline_rps", "baseline req/s", 1),
        ("ratio", "ratio", 3),
        ("service_alone_rps", "service alone req/s", 1),
    )
    rows = [["scenario", *(title for _key, title, _digits in columns)]]
    for name, entry in results.get("scenarios", {}).items():
        rows.append([name, *(_cell(entry.get(key), digits) for key, _title, digits in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"nodes: {results.get('nodes', '-')}")
    lines.append(
        f"message log: {_cell(results.get('message_log'))}, "
        f"lost records: {_cell(results.get('lost_records'))}"
    )
    lines.append(f"load generator alone: {_cell(results.get('loadgen_alone_rps'))} req/s")
    lines.extend(f"warning: {w}" for w in results.get("warnings", []))
    return "\n".join(lines)


def loadgen_warnings(
    label: str, summary: Mapping[str, Any], *, limit_expected: bool = False
) -> list[str]:
    """Warnings about one load run that make its numbers doubtful.

    ``limit_expected``: the run measures the load generator's own limit (against the bare
    service), where a busy load generator is the point, not a doubt.
    """
    found = []
    share = summary.get("loadgen_cpu_share")
    if not limit_expected and isinstance(share, float) and share >= LOADGEN_BUSY_SHARE:
        found.append(
            f"{label}: the load generator used {share:.0%} of a core; it may be the "
            "bottleneck (try --loadgen-processes 2)"
        )
    errors = summary.get("errors")
    if isinstance(errors, int) and errors:
        samples = "; ".join(summary.get("error_samples", []))
        found.append(f"{label}: {errors} errors, e.g. {samples}")
    return found
