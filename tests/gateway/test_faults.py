from __future__ import annotations

import pytest

from config.errors import IdentifierError, StorageError
from gateway.faults import (
    CLIENT_PROXY,
    SERVER_PROXY,
    client_fault,
    from_error,
    server_proxy_fault,
)


def test_client_faults_are_400_and_server_faults_500() -> None:
    assert client_fault("MissingHeader", "no header").http_status == 400
    fault = server_proxy_fault("ServiceFailed", "timed out", detail="Timeout")
    assert fault.fault_code == "Server.ServerProxy.ServiceFailed.Timeout"
    assert fault.http_status == 500
    assert fault.prefix == SERVER_PROXY


def test_refuses_unknown_fault_names() -> None:
    with pytest.raises(ValueError, match="unknown X-Road fault name"):
        client_fault("Oops", "x")


def test_each_fault_has_a_unique_log_detail() -> None:
    assert client_fault("BadRequest", "a").detail != client_fault("BadRequest", "a").detail


def test_translates_other_jisr_errors() -> None:
    assert from_error(IdentifierError("bad")).fault_code == "Client.InvalidClientIdentifier"
    assert from_error(StorageError("down")).fault_code == "Server.ClientProxy.DatabaseError"
    moved = from_error(StorageError("down"), SERVER_PROXY).with_prefix(CLIENT_PROXY)
    assert moved.fault_code == "Server.ClientProxy.DatabaseError"
