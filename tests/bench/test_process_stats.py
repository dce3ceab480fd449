"""CPU and memory readings of live processes."""

from __future__ import annotations

import os

import pytest

from bench import process_stats

pytestmark = pytest.mark.skipif(not process_stats.available(), reason="needs Linux /proc")


def test_reads_this_process() -> None:
    me = os.getpid()
    assert me in process_stats.process_tree(me)
    assert (process_stats.cpu_seconds(me) or 0.0) > 0.0
    assert (process_stats.rss_bytes(me) or 0) > 1024 * 1024


def test_a_gone_process_reads_as_none() -> None:
    assert process_stats.cpu_seconds(2**22 + 12345) is None
    assert process_stats.rss_bytes(2**22 + 12345) is None


def test_cpu_between_snapshots_counts_new_processes_from_zero() -> None:
    assert process_stats.cpu_between({1: 1.0}, {1: 1.5, 2: 0.25}) == pytest.approx(0.75)
