"""The message-log record without I/O: canonical form, hash chain, consistency checks, parsing
stored records and batch-timestamp proofs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509

from certs.signer import SoftwareSigner
from certs.tsa import MessageImprint, TimestampAuthority, TimestampError, build_request
from certs.tsa import parse_response as parse_tsa_response
from gateway.identifiers import MemberId, SecurityServerId, ServiceId, SubsystemId
from gateway.log_record import (
    FORMAT,
    GENESIS_HASH,
    LogEntry,
    LogIntegrityError,
    LogRecord,
    RecordTimestamp,
    TimestampBatch,
    batch_tree,
    canonical_bytes,
    chain_hash,
    chain_problems,
    check_entry,
    parse_record,
    verify_chain,
    verify_record_timestamp,
)
from gateway.transport import (
    RequestPart,
    ResponsePart,
    body_digest,
    encode_proof,
    sign_one,
)
from tests.pki_factory import NOW, FixturePki

NODE = SecurityServerId("IQ", "GOV", "NDC", "ss1")
CLIENT = SubsystemId("IQ", "GOV", "HJC", "inheritance")
SERVICE = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen", "v1")
BODY = b'{"nationalId":"199012345678"}'

REQUEST = RequestPart(
    protocol="REST",
    message_id="0b6f4f5e-6a43-4c38-9a51-3f3b0f7f2a10",
    client=CLIENT,
    service=SERVICE,
    method="POST",
    path="/citizens/search",
    query=None,
    headers=(("Content-Type", "application/json"),),
    body_sha256=body_digest(BODY),
    created_at=NOW,
    user_id="officer-7",
    issue=None,
)


def fixed_entry(**changes: object) -> LogEntry:
    """An entry with fixed stand-in bytes for signature, proof, certificate and OCSP, so its
    canonical form and hash are the same on every run (the worked example of the docs)."""
    entry = LogEntry(
        direction="request_in",
        message_id=REQUEST.message_id,
        client=CLIENT,
        service=SERVICE,
        user_id="officer-7",
        issue=None,
        protocol="REST",
        created_at=NOW,
        signed_part=REQUEST.to_bytes(),
        body=BODY,
        body_digest=body_digest(BODY),
        signature=b"signature",
        proof=encode_proof(batch_tree([bytes(32)])[1][0]),
        certificates=(b"certificate",),
        ocsp=b"ocsp",
        request_hash=None,
        conf_version=42,
    )
    return dataclasses.replace(entry, **changes)  # type: ignore[arg-type]


LOGGED_AT = dt.datetime(2026, 11, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)


def chain(count: int) -> list[LogRecord]:
    records: list[LogRecord] = []
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        entry = fixed_entry(body=BODY if seq % 2 else None)
        record = LogRecord.append(NODE, seq, LOGGED_AT, entry, prev)
        records.append(record)
        prev = record.record_hash
    return records


# --- canonical form -----------------------------------------------------------------------------


def test_canonical_form_is_sorted_compact_json_of_ids_and_digests() -> None:
    entry = fixed_entry()
    data = canonical_bytes(NODE, 1, LOGGED_AT, entry)
    value = json.loads(data)
    assert data == json.dumps(
        value, ensure_ascii=False, sort_keys=True, separators=(",", ":")
    ).encode("utf-8")
    assert value["format"] == FORMAT
    assert value["seq"] == 1
    assert value["logged_at"] == "2026-11-01T12:00:00.250000Z"
    assert value["created_at"] == "2026-11-01T12:00:00.000000Z"
    assert value["node"] == {
        "instance": "IQ",
        "member_class": "GOV",
        "member_code": "NDC",
        "server_code": "ss1",
    }
    assert value["client"]["subsystem_code"] == "inheritance"
    assert value["service"]["service_version"] == "v1"
    assert value["signed_part_sha256"] == hashlib.sha256(REQUEST.to_bytes()).hexdigest()
    assert value["body_sha256"] == hashlib.sha256(BODY).hexdigest()
    assert value["signature_sha256"] == hashlib.sha256(b"signature").hexdigest()
    assert value["certificates_sha256"] == [hashlib.sha256(b"certificate").hexdigest()]
    assert value["ocsp_sha256"] == hashlib.sha256(b"ocsp").hexdigest()
    assert value["request_hash"] is None
    assert value["conf_version"] == 42


def test_record_hash_is_sha256_of_previous_hash_and_canonical_bytes() -> None:
    record = LogRecord.append(NODE, 1, LOGGED_AT, fixed_entry(), GENESIS_HASH)
    expected = hashlib.sha256(bytes(32) + record.canonical_bytes()).digest()
    assert record.record_hash == expected == chain_hash(GENESIS_HASH, record.canonical_bytes())


def test_worked_example_of_the_docs() -> None:
    """docs/message-log.md shows this record's canonical bytes and hash, so that an auditor
    can test an independent implementation against them."""
    record = LogRecord.append(NODE, 1, LOGGED_AT, fixed_entry(), GENESIS_HASH)
    assert record.record_hash.hex() == (
        "8585757a6edf58032d34071c374a364c29a76e0ce9159047914f1afaaefc150b"
    )
    docs = (Path(__file__).parents[2] / "docs" / "message-log.md").read_text(encoding="utf-8")
    assert record.canonical_bytes().decode() in docs
    assert record.record_hash.hex() in docs
    assert REQUEST.to_bytes().decode() in docs


def test_a_record_without_its_body_hashes_the_same() -> None:
    with_body = LogRecord.append(NODE, 1, LOGGED_AT, fixed_entry(), GENESIS_HASH)
    without = LogRecord.append(NODE, 1, LOGGED_AT, fixed_entry().without_body(), GENESIS_HASH)
    assert with_body.record_hash == without.record_hash


def test_member_and_subsystem_clients_have_distinct_forms() -> None:
    member = MemberId("IQ", "GOV", "HJC")
    a = canonical_bytes(NODE, 1, LOGGED_AT, fixed_entry(client=member))
    b = canonical_bytes(NODE, 1, LOGGED_AT, fixed_entry())
    assert json.loads(a)["client"]["subsystem_code"] is None
    assert a != b


# --- entries ------------------------------------------------------------------------------------


def _signed() -> tuple[FixturePki, SoftwareSigner]:
    pki = FixturePki.create()
    issued = pki.signing("IQ/GOV/NDC")
    return pki, SoftwareSigner(issued.key, issued.cert, [])


def test_entry_for_a_response_takes_ids_and_request_hash_from_the_signed_part() -> None:
    _, signer = _signed()
    response = ResponsePart.answering(REQUEST, status=200, headers=(), body=b"{}", created_at=NOW)
    sealed = sign_one(response, signer, now=NOW)
    entry = LogEntry.for_message(
        "response_out",
        response,
        signed_part_bytes=response.to_bytes(),
        body=b"{}",
        log_body=False,
        signature=sealed.signature,
        proof=sealed.proof,
        certificates=[signer.certificate],
        ocsp=b"ocsp",
        conf_version=3,
    )
    assert entry.request_hash == response.request_hash
    assert entry.body is None
    assert entry.body_digest == body_digest(b"{}")
    assert entry.message_id == REQUEST.message_id
    assert check_entry(entry) == []


def test_entry_keeps_milliseconds_of_created_at_like_the_signed_part() -> None:
    entry = fixed_entry(created_at=NOW + dt.timedelta(microseconds=1_234))
    assert entry.created_at == NOW + dt.timedelta(milliseconds=1)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"body": b"other body"}, "body"),
        ({"message_id": "another-id"}, "message_id"),
        ({"client": MemberId("IQ", "GOV", "HJC")}, "client"),
        ({"user_id": None}, "user_id"),
        ({"created_at": NOW + dt.timedelta(seconds=1)}, "created_at"),
        ({"signed_part": b"{}"}, "does not parse"),
        ({"direction": "response_in", "request_hash": "x"}, "signed part of a request"),
        ({"proof": b"\x00"}, "proof"),
    ],
)
def test_check_entry_names_what_contradicts_the_signed_part(
    changes: dict[str, object], problem: str
) -> None:
    problems = check_entry(fixed_entry(**changes))
    assert any(problem in p for p in problems), problems


def test_entry_refuses_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="direction"):
        fixed_entry(direction="sideways")
    with pytest.raises(ValueError, match="request_hash"):
        fixed_entry(request_hash="abc")
    with pytest.raises(ValueError, match="body_digest"):
        fixed_entry(body_digest="ABC")
    with pytest.raises(ValueError, match="timezone"):
        fixed_entry(created_at=dt.datetime(2026, 11, 1))


# --- chain --------------------------------------------------------------------------------------


def test_an_intact_chain_verifies() -> None:
    records = chain(5)
    summary = verify_chain(records)
    assert (summary.count, summary.first_seq, summary.last_seq) == (5, 1, 5)
    assert summary.head_hash == records[-1].record_hash
    assert verify_chain([]).count == 0


def test_a_changed_field_breaks_the_hash() -> None:
    records = chain(3)
    forged = dataclasses.replace(
        records[1], entry=dataclasses.replace(records[1].entry, conf_version=43)
    )
    with pytest.raises(LogIntegrityError, match="record 2: its content") as caught:
        verify_chain([records[0], forged, records[2]])
    assert caught.value.seq == 2


def test_a_recomputed_forgery_breaks_the_link_to_the_next_record() -> None:
    records = chain(3)
    entry = dataclasses.replace(records[1].entry, conf_version=43)
    forged = LogRecord.append(NODE, 2, LOGGED_AT, entry, records[0].record_hash)
    problems = chain_problems([records[0], forged, records[2]])
    assert [p.seq for p in problems] == [3]
    assert "previous hash" in problems[0].reason


def test_a_removed_record_is_reported_as_missing() -> None:
    records = chain(4)
    problems = chain_problems([records[0], records[1], records[3]])
    assert any(p.seq == 4 and "records 3..3 are missing" in p.reason for p in problems)


def test_reordered_records_are_reported() -> None:
    records = chain(4)
    problems = chain_problems([records[0], records[2], records[1], records[3]])
    assert any("reordered" in p.reason for p in problems)


def test_the_first_record_must_follow_the_genesis_hash() -> None:
    entry = fixed_entry()
    record = LogRecord.append(NODE, 1, LOGGED_AT, entry, b"\x01" * 32)
    with pytest.raises(LogIntegrityError, match="previous hash"):
        verify_chain([record])


def test_a_run_continues_from_a_known_previous_record() -> None:
    records = chain(5)
    verify_chain(records[2:], previous_hash=records[1].record_hash, previous_seq=2)
    with pytest.raises(LogIntegrityError):
        verify_chain(records[3:], previous_hash=records[1].record_hash, previous_seq=2)


def test_records_of_another_node_do_not_continue_the_chain() -> None:
    records = chain(1)
    other = LogRecord.append(
        SecurityServerId("IQ", "GOV", "MOH", "ss1"),
        2,
        LOGGED_AT,
        fixed_entry(),
        records[0].record_hash,
    )
    with pytest.raises(LogIntegrityError, match="belongs to node"):
        verify_chain([records[0], other])


def test_a_changed_body_is_found_by_its_digest() -> None:
    records = chain(1)
    forged = dataclasses.replace(
        records[0], entry=dataclasses.replace(records[0].entry, body=b"changed")
    )
    with pytest.raises(LogIntegrityError, match="body"):
        verify_chain([forged])


# --- parsing stored records ---------------------------------------------------------------------


def _parts(record: LogRecord) -> dict[str, object]:
    e = record.entry
    return {
        "signed_part": e.signed_part,
        "body": e.body,
        "signature": e.signature,
        "proof": e.proof,
        "certificates": e.certificates,
        "ocsp": e.ocsp,
        "prev_hash": record.prev_hash,
        "record_hash": record.record_hash,
    }


def test_a_stored_record_parses_back_to_the_same_record() -> None:
    for record in chain(2):
        assert parse_record(record.canonical_bytes(), **_parts(record)) == record  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda b: b.replace(b'{"body', b'{ "body'), "canonical"),
        (lambda b: b.replace(FORMAT.encode(), b"jisr-log/9"), "format"),
        (lambda b: b.replace(b'"seq":1', b'"seq":"1"'), "seq"),
        (lambda b: b.replace(b'"conf_version":42,', b""), "lacks"),
        (lambda b: b[:-1], "malformed"),
        (lambda b: b.replace(b'"server_code":"ss1"', b'"server_code":"s s"'), "server code"),
    ],
)
def test_a_malformed_stored_record_is_refused(mangle: object, reason: str) -> None:
    record = chain(1)[0]
    data = mangle(record.canonical_bytes())  # type: ignore[operator]
    with pytest.raises(LogIntegrityError, match=reason):
        parse_record(data, **_parts(record))  # type: ignore[arg-type]


def test_a_changed_stored_part_parses_but_does_not_verify() -> None:
    record = chain(1)[0]
    parts = _parts(record) | {"signature": b"other signature"}
    parsed = parse_record(record.canonical_bytes(), **parts)  # type: ignore[arg-type]
    with pytest.raises(LogIntegrityError, match="does not hash"):
        verify_chain([parsed])


# --- batch timestamps ---------------------------------------------------------------------------


def _stamped_batch(
    hashes: list[bytes], *, hash_name: str = "sha256"
) -> tuple[x509.Certificate, list[RecordTimestamp]]:
    """A real token (sans-IO authority) over the batch root, and each record's share."""
    pki = FixturePki.create()
    tsa = pki.tsa()
    authority = TimestampAuthority(tsa.cert, tsa.key, policy_oid="2.25.1")
    root, proofs = batch_tree(hashes)
    imprint = (
        MessageImprint("sha256", root)
        if hash_name == "sha256"
        else MessageImprint.of(root, hash_name)
    )
    request = build_request(imprint)
    token = parse_tsa_response(authority.respond(request, now=NOW, serial=7), request)
    batch = TimestampBatch(1, root, len(hashes), token.der, "http://tsa.example/", NOW)
    return tsa.cert, [RecordTimestamp(batch, p) for p in proofs]


def test_every_record_of_a_batch_verifies_against_one_token() -> None:
    hashes = [hashlib.sha256(bytes([i])).digest() for i in range(11)]
    tsa_cert, stamps = _stamped_batch(hashes)
    for record_hash, stamp in zip(hashes, stamps, strict=True):
        info = verify_record_timestamp(
            record_hash,
            stamp,
            tsa_certs=[tsa_cert],
            at=NOW,
        )
        assert info.gen_time == NOW
        assert info.message_imprint.digest == stamp.batch.root


def test_a_record_outside_the_batch_does_not_verify() -> None:
    hashes = [hashlib.sha256(bytes([i])).digest() for i in range(4)]
    tsa_cert, stamps = _stamped_batch(hashes)
    with pytest.raises(TimestampError, match="does not lead"):
        verify_record_timestamp(
            bytes(32),
            stamps[0],
            tsa_certs=[tsa_cert],
        )


def test_a_proof_for_another_tree_size_does_not_verify() -> None:
    hashes = [hashlib.sha256(bytes([i])).digest() for i in range(4)]
    tsa_cert, stamps = _stamped_batch(hashes)
    bigger = dataclasses.replace(stamps[0].batch, size=5)
    with pytest.raises(TimestampError, match="tree of 4"):
        verify_record_timestamp(
            hashes[0],
            RecordTimestamp(bigger, stamps[0].proof),
            tsa_certs=[tsa_cert],
        )


def test_a_token_over_another_digest_of_the_root_is_refused() -> None:
    hashes = [hashlib.sha256(b"only").digest()]
    tsa_cert, stamps = _stamped_batch(hashes, hash_name="sha512")
    with pytest.raises(TimestampError):
        verify_record_timestamp(
            hashes[0],
            stamps[0],
            tsa_certs=[tsa_cert],
        )
