"""What the transport remembers to save work gives exactly what computing again would."""

from __future__ import annotations

import hashlib

import pytest

from gateway.canonical import canonical_json
from gateway.faults import FaultError
from gateway.identifiers import ServiceId, SubsystemId
from gateway.transport import (
    RequestPart,
    ResponsePart,
    body_digest,
    parse_signed_part,
    request_hash,
)
from tests.pki_factory import NOW

CLIENT = SubsystemId("IQ", "GOV", "HJC", "inheritance")
SERVICE = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen")


def _request(message_id: str = "m-1", body: bytes = b"") -> RequestPart:
    return RequestPart(
        protocol="REST",
        message_id=message_id,
        client=CLIENT,
        service=SERVICE,
        method="POST",
        path="/citizens",
        query="id=7",
        headers=(("Content-Type", "application/json"),),
        body_sha256=body_digest(body),
        created_at=NOW,
    )


def test_encoding_twice_gives_the_canonical_bytes_both_times() -> None:
    part = _request()
    first = part.to_bytes()
    assert part.to_bytes() is first
    assert first == canonical_json(part.to_json())


def test_a_part_made_here_parses_back_equal_to_itself() -> None:
    part = _request("made-here")
    assert parse_signed_part(part.to_bytes()) == part


def test_received_bytes_parse_to_a_part_that_encodes_to_them() -> None:
    data = _request("received").to_bytes()
    copy = bytes(bytearray(data))  # another object with the same bytes
    parsed = parse_signed_part(copy)
    assert parsed.to_bytes() == data
    assert parse_signed_part(copy) == parsed


def test_changed_bytes_are_parsed_and_refused_however_many_parts_were_seen() -> None:
    for i in range(600):  # more than the parts remembered
        parse_signed_part(_request(f"seen-{i}").to_bytes())
    data = _request("changed").to_bytes().replace(b'"method":"POST"', b'"method":"post"')
    with pytest.raises(FaultError) as refused:
        parse_signed_part(data)
    assert refused.value.fault_code == "Server.ServerProxy.InvalidMessage"


def test_a_response_binds_to_the_request_bytes_whether_made_or_received() -> None:
    request = _request("bound")
    received = parse_signed_part(bytes(bytearray(request.to_bytes())))
    assert isinstance(received, RequestPart)
    response = ResponsePart.answering(received, status=200, headers=(), body=b"{}", created_at=NOW)
    assert response.request_hash == request_hash(request.to_bytes())


@pytest.mark.parametrize("size", [0, 100, 64 * 1024, 2 * 1024 * 1024])
def test_body_digest_is_sha256_of_the_bytes_each_time(size: int) -> None:
    bodies = [bytes([i % 256]) * size for i in range(20)]  # more bodies than remembered
    for _ in range(2):
        for body in bodies:
            assert body_digest(body) == hashlib.sha256(body).hexdigest()


def test_body_digest_of_equal_bodies_in_other_objects_is_the_same() -> None:
    body = b"x" * (100 * 1024)
    other = bytes(bytearray(body))
    assert body_digest(body) == body_digest(other) == hashlib.sha256(body).hexdigest()
