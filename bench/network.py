"""The signed path under test: registry, trust services and two nodes, with their message logs.

Rules:

- The embedded PostgreSQL, the CA with its OCSP responder and TSA, and the central registry are
  started in the benchmark's own process with the demo's functions (:mod:`jisr.demo.network`);
  each node is set up with the ``jisr node`` command, as an operator would, and runs as its
  own process (``jisr node serve``), so that its CPU time and memory are its own.
- A node network that cannot be built (the ``jisr node`` command missing, a step failing) is
  reported as :class:`NodesUnavailable` with the reason; the benchmark then still measures the
  baseline and records why the nodes were skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from bench.errors import BenchError
from bench.processes import Children
from bench.scenarios import Parties


class NodesUnavailable(BenchError):
    """The node network cannot be built on this tree; the message says what is missing."""


@dataclasses.dataclass
class NodeNetwork:
    """The running node network as the benchmark uses it."""

    #: Base URL of the consumer node's client side (plain HTTP).
    consumer_url: str
    parties: Parties
    #: Processes whose CPU time and memory are the nodes' (name → pid).
    node_pids: Mapping[str, int]
    message_log: bool
    batch_timestamping: bool
    #: The embedded PostgreSQL's postmaster, when the nodes' databases live in it.
    postgres_pid: int | None = None

    async def lost_records(self, successful_calls: int) -> dict[str, object] | None:
        """Compare each node's message log with the calls that succeeded; None: no log."""
        return None


def node_command_available() -> bool:
    return importlib.util.find_spec("jisr.commands.node") is not None


@contextlib.asynccontextmanager
async def node_network(
    children: Children, data_dir: Path, service_url: str
) -> AsyncIterator[NodeNetwork]:
    """Start the registry, trust services and both nodes; stop them when the block ends."""
    if not node_command_available():
        raise NodesUnavailable(
            "the `jisr node` command (jisr/commands/node.py) does not exist in this tree yet"
        )
    raise NodesUnavailable("wiring of `jisr node` into the benchmark is not finished")
    yield  # pragma: no cover - makes this an async generator
