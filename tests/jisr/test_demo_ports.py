"""The port a node registers before it starts is drawn below the system's ephemeral range,
so that no outgoing connection or port-0 listener can take it before the node listens."""

from __future__ import annotations

import contextlib
import socket

import pytest

from jisr.demo import nodes
from jisr.demo.nodes import free_port


def _listener(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_the_port_is_below_the_ephemeral_range_and_free() -> None:
    start = nodes._ephemeral_start()
    for _ in range(20):
        port = free_port()
        assert 10_000 <= port < start
        with _listener(port):  # free: a server can listen on it
            pass


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = None
    for candidate in range(20_000, 20_100):  # a port below the range, taken by a listener
        with contextlib.suppress(OSError):
            busy = _listener(candidate)
            break
    assert busy is not None
    with busy:
        busy_port = busy.getsockname()[1]
        real = nodes.secrets.randbelow
        draws = iter([busy_port - 10_000] * 3)
        # The first three draws hit the busy port; later ones are random again.
        monkeypatch.setattr(nodes.secrets, "randbelow", lambda n: next(draws, None) or real(n))
        port = free_port()
        assert port != busy_port
        assert 10_000 <= port < nodes._ephemeral_start()
        with _listener(port):
            pass


def test_without_room_below_the_range_the_system_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "_ephemeral_start", lambda: 10_010)
    port = free_port()
    assert port >= 1024
    with _listener(port):
        pass
