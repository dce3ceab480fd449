from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from certs.signer import SoftwareSigner
from gateway import log_record
from gateway.faults import CLIENT_PROXY, FaultError
from gateway.hash_tree import InclusionProof
from gateway.identifiers import MemberId, SecurityServerId, ServiceId, SubsystemId
from gateway.transport import (
    CONTENT_TYPE,
    MAGIC,
    BatchSigner,
    ReplayGuard,
    RequestPart,
    ResponsePart,
    TransportMessage,
    VerifiedSignatureCache,
    body_digest,
    check_clock_skew,
    check_response,
    decode_message,
    encode_message,
    encode_proof,
    encode_sealed,
    format_time,
    parse_signed_part,
    request_hash,
    root_content,
    sign_one,
    verify_message,
)
from tests.pki_factory import NOW, FixturePki

CLIENT = SubsystemId("IQ", "GOV", "HJC", "inheritance")
SERVICE = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "transport-v1.md"


@dataclasses.dataclass
class Member:
    pki: FixturePki
    signer: SoftwareSigner
    ocsp: bytes


@pytest.fixture(scope="module")
def member() -> Member:
    pki = FixturePki.create()
    issued = pki.signing("IQ/GOV/HJC")
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=issued.cert,
            issuer=pki.root.cert,
            algorithm=hashes.SHA256(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=NOW,
            next_update=NOW + dt.timedelta(hours=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.root.cert)
        .sign(pki.root.key, hashes.SHA256())
    )
    return Member(
        pki,
        SoftwareSigner(issued.key, issued.cert),
        response.public_bytes(serialization.Encoding.DER),
    )


def request(body: bytes = b"", **changes: object) -> RequestPart:
    fields: dict[str, object] = {
        "protocol": "REST",
        "message_id": "6f1c1ad2-3f4b-4a4e-9d43-2b1f1a3c9e10",
        "client": CLIENT,
        "service": SERVICE,
        "method": "GET",
        "path": "/citizens/123",
        "query": "lang=ar",
        "headers": (("Accept", "application/json"),),
        "body_sha256": body_digest(body),
        "created_at": NOW,
        "user_id": "IQ1234567890",
    }
    fields.update(changes)
    return RequestPart(**fields)  # type: ignore[arg-type]


def framed(member: Member, part: RequestPart | ResponsePart, body: bytes = b"") -> bytes:
    sealed = sign_one(part, member.signer, now=NOW)
    content_type, data = encode_message(part, body, sealed.proof, sealed.signature, member.ocsp)
    assert content_type == CONTENT_TYPE
    return data


def sections(data: bytes) -> list[bytes]:
    pos, values = len(MAGIC), []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos + 1 : pos + 5])
        values.append(data[pos + 5 : pos + 5 + length])
        pos += 5 + length
    return values


def reframe(values: list[bytes]) -> bytes:
    return MAGIC + b"".join(
        struct.pack(">BI", tag, len(v)) + v for tag, v in enumerate(values, start=1)
    )


def fault_of(call: Callable[[], object]) -> str:
    with pytest.raises(FaultError) as info:
        call()
    return info.value.fault_code


def verify(data: bytes, cache: VerifiedSignatureCache | None = None) -> object:
    return verify_message(decode_message(CONTENT_TYPE, data), verified_cache=cache, now=NOW)


# --- signed part -------------------------------------------------------------------------------


def test_signed_part_is_canonical_json_with_sorted_members() -> None:
    data = request().to_bytes()
    assert b" " not in data
    value = json.loads(data)
    assert list(value) == sorted(value)
    assert value["client"] == {
        "instance": "IQ",
        "member_class": "GOV",
        "member_code": "HJC",
        "subsystem_code": "inheritance",
    }
    assert value["created_at"] == "2026-11-01T12:00:00.000Z"
    assert value["version"] == 1
    assert value["kind"] == "request"


@pytest.mark.parametrize(
    ("formatter", "digits", "refusal"),
    [
        (format_time, 3, "created_at must be timezone-aware"),  # created_at: milliseconds
        (log_record.format_time, 6, "timezone-aware"),  # message-log records: microseconds
    ],
)
def test_times_match_the_strftime_form_in_every_zone(
    formatter: Callable[[dt.datetime], str], digits: int, refusal: str
) -> None:
    # Both formatters build the string by hand; this is the form they must keep producing.
    rng = random.Random(7)
    for _ in range(5000):
        when = dt.datetime(
            rng.randint(1000, 9998),
            rng.randint(1, 12),
            rng.randint(1, 28),
            rng.randint(0, 23),
            rng.randint(0, 59),
            rng.randint(0, 59),
            rng.randint(0, 999_999),
            tzinfo=dt.timezone(dt.timedelta(minutes=rng.randint(-14 * 60, 14 * 60))),
        )
        full = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        assert formatter(when) == full[: len(full) - 6 + digits] + "Z"
    with pytest.raises(ValueError, match=refusal):
        formatter(dt.datetime(2026, 1, 1))


def test_signed_parts_round_trip() -> None:
    part = request(
        target_server=SecurityServerId("IQ", "GOV", "NDC", "ss1"),
        service=ServiceId("IQ", "GOV", "NDC", None, "getCitizen", "v1"),
        client=MemberId("IQ", "GOV", "HJC"),
        headers=(("X-Trace", "ä"), ("X-Trace", "b")),
        created_at=NOW + dt.timedelta(microseconds=123456),
    )
    assert parse_signed_part(part.to_bytes()) == part
    assert part.created_at.microsecond == 123000
    response = ResponsePart.answering(
        part, status=404, headers=[("Content-Type", "application/json")], body=b"{}", created_at=NOW
    )
    assert parse_signed_part(response.to_bytes()) == response
    assert response.request_hash == request_hash(part.to_bytes())


@pytest.mark.parametrize(
    ("mutate", "fault"),
    [
        (lambda d: d.replace(b'{"body', b'{ "body'), "InvalidMessage"),  # not canonical
        (lambda d: d.replace(b'"version":1', b'"version":2'), "InvalidProtocolVersion"),
        (lambda d: d.replace(b'"version":1', b'"version":1.0'), "InvalidMessage"),
        (lambda d: d.replace(b'"kind":"request"', b'"kind":"other"'), "InvalidMessage"),
        (lambda d: d.replace(b'"issue":null,', b""), "InvalidMessage"),  # missing member
        (lambda d: d.replace(b'"issue":null', b'"issue":null,"extra":1'), "InvalidMessage"),
        (lambda d: d.replace(b'"issue":null', b'"issue":null,"issue":null'), "InvalidMessage"),
        (lambda d: d.replace(b'"member_code":"HJC"', b'"member_code":"H J"'), "InvalidMessage"),
        (lambda d: d.replace(b'"method":"GET"', b'"method":"get"'), "InvalidMessage"),
        (lambda d: d.replace(b"2026-11-01T12:00:00.000Z", b"2026-11-01 12:00"), "InvalidMessage"),
        (lambda d: b"\xff" + d, "InvalidMessage"),
        (lambda d: b"[]", "InvalidMessage"),
    ],
)
def test_refuses_malformed_signed_parts(mutate: Callable[[bytes], bytes], fault: str) -> None:
    data = mutate(request().to_bytes())
    assert fault_of(lambda: parse_signed_part(data)) == f"Server.ServerProxy.{fault}"


@pytest.mark.parametrize(
    "mutate",
    [
        # The repeated member first with a bad value, then the good one (which a parser keeping
        # the last value would accept), and the other way round.
        lambda d: d.replace(b'"issue":null', b'"issue":7,"issue":null'),
        lambda d: d.replace(b'"id":"', b'"id":"other","id":"'),
        lambda d: d.replace(b'"member_code":"HJC"', b'"member_code":"HJC","member_code":"HJC"'),
    ],
)
def test_refuses_a_signed_part_with_a_repeated_member_and_names_it(
    mutate: Callable[[bytes], bytes],
) -> None:
    data = mutate(request().to_bytes())
    with pytest.raises(FaultError, match="appears twice") as caught:
        parse_signed_part(data)
    assert caught.value.fault_code == "Server.ServerProxy.InvalidMessage"


def test_refuses_headers_that_could_split_a_request() -> None:
    with pytest.raises(ValueError, match="CR, LF"):
        request(headers=(("X-A", "a\r\nHost: evil"),))
    with pytest.raises(ValueError, match="token"):
        request(headers=(("X A", "a"),))


# --- framing -----------------------------------------------------------------------------------


def test_message_round_trips(member: Member) -> None:
    body = b'{"name": "\xd8\xb9\xd9\x84\xd9\x8a"}'
    part = request(body, method="POST")
    msg = decode_message(CONTENT_TYPE + "; charset=binary", framed(member, part, body))
    assert msg.signed_part == part
    assert msg.body == body
    assert msg.ocsp == member.ocsp


def test_refuses_wrong_content_type(member: Member) -> None:
    data = framed(member, request())
    code = fault_of(lambda: decode_message("application/json", data))
    assert code == "Server.ServerProxy.InvalidContentType"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"JISR/T2\n" + d[8:],
        lambda d: d + b"\x00",
        lambda d: d[:-1],
        lambda d: d[:8],
        lambda d: reframe(sections(d)[:4]),
        lambda d: (
            MAGIC
            + b"".join(
                struct.pack(">BI", tag, len(v)) + v
                for tag, v in zip([2, 1, 3, 4, 5], sections(d), strict=True)
            )
        ),
    ],
    ids=["magic", "trailing", "truncated", "no-sections", "missing-section", "reordered"],
)
def test_refuses_broken_framing(member: Member, mutate: Callable[[bytes], bytes]) -> None:
    data = mutate(framed(member, request()))
    assert (
        fault_of(lambda: decode_message(CONTENT_TYPE, data)) == "Server.ServerProxy.InvalidMessage"
    )


def test_refuses_bodies_over_the_limit(member: Member) -> None:
    body = b"x" * 2000
    data = framed(member, request(body, method="POST"), body)
    code = fault_of(lambda: decode_message(CONTENT_TYPE, data, max_body_bytes=1000))
    assert code == "Server.ServerProxy.RequestTooLarge"
    code = fault_of(
        lambda: decode_message(CONTENT_TYPE, data, max_body_bytes=1000, prefix=CLIENT_PROXY)
    )
    assert code == "Server.ClientProxy.InvalidResponse"


# --- signatures --------------------------------------------------------------------------------


def test_single_message_verifies_and_returns_the_evidence(member: Member) -> None:
    verified = verify_message(
        decode_message(CONTENT_TYPE, framed(member, request())), verified_cache=None, now=NOW
    )
    assert verified.signer == member.signer.certificate
    assert verified.ocsp == member.ocsp
    assert verified.signing_time == NOW
    assert not verified.from_cache
    assert json.loads(verified.root_content)["size"] == 1


def _tampered(member: Member, index: int, change: Callable[[bytes], bytes]) -> bytes:
    values = sections(framed(member, request(b"body", method="POST"), b"body"))
    values[index] = change(values[index])
    return reframe(values)


def _flip_last(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


@pytest.mark.parametrize(
    ("index", "change", "fault"),
    [
        (1, lambda b: b + b"!", "InvalidSignatureValue"),  # body
        (0, lambda b: b.replace(b"/citizens/123", b"/citizens/124"), "InvalidSignatureValue"),
        (2, lambda b: struct.pack(">IIB", 0, 2, 1) + b"\x00" * 32, "InvalidSignatureValue"),
        (2, lambda b: b + b"\x00", "MalformedSignature"),  # proof of the wrong length
        (2, lambda b: struct.pack(">IIB", 0, 3, 1) + b"\x00" * 32, "MalformedSignature"),
        (3, _flip_last, "InvalidSignatureValue"),  # signature value
        (3, lambda b: b"not a signature", "MalformedSignature"),
        (3, lambda b: b"", "MissingSignature"),
        (4, lambda b: b"", "CertValidation"),  # no OCSP response
    ],
    ids=[
        "body",
        "signed-part",
        "proof-other-tree",
        "proof-length",
        "proof-shape",
        "signature-value",
        "signature-garbage",
        "signature-missing",
        "ocsp-missing",
    ],
)
def test_refuses_tampered_messages(
    member: Member, index: int, change: Callable[[bytes], bytes], fault: str
) -> None:
    data = _tampered(member, index, change)
    assert fault_of(lambda: verify(data)) == f"Server.ServerProxy.{fault}"


def test_a_batch_is_signed_once_and_every_message_verifies(member: Member) -> None:
    batch = BatchSigner(member.signer)
    parts = [request(message_id=f"id-{i}") for i in range(7)]
    for i, part in enumerate(parts):
        assert batch.add(part) == i
    sealed = batch.sign(now=NOW)
    assert batch.pending == 0
    assert len({s.signature for s in sealed}) == 1
    cache = VerifiedSignatureCache()
    results = []
    for s in sealed:
        _, data = encode_message(s.signed_part, b"", s.proof, s.signature, member.ocsp)
        results.append(
            verify_message(decode_message(CONTENT_TYPE, data), verified_cache=cache, now=NOW)
        )
    assert [r.from_cache for r in results] == [False] + [True] * 6
    assert [r.signed_part for r in results] == parts
    assert len(cache) == 1


def test_a_cached_signature_does_not_cover_a_forged_signed_part(member: Member) -> None:
    batch = BatchSigner(member.signer)
    for i in range(3):
        batch.add(request(message_id=f"id-{i}"))
    first, second, _ = batch.sign(now=NOW)
    cache = VerifiedSignatureCache()
    _, data = encode_message(first.signed_part, b"", first.proof, first.signature, member.ocsp)
    verify(data, cache)
    forged = request(message_id="id-1", path="/citizens/999")
    _, data = encode_message(forged, b"", second.proof, second.signature, member.ocsp)
    assert fault_of(lambda: verify(data, cache)) == "Server.ServerProxy.InvalidSignatureValue"


def test_cache_entries_expire(member: Member) -> None:
    cache = VerifiedSignatureCache(max_age=dt.timedelta(seconds=10))
    msg = decode_message(CONTENT_TYPE, framed(member, request()))
    verify_message(msg, verified_cache=cache, now=NOW)
    later = NOW + dt.timedelta(seconds=11)
    assert not verify_message(msg, verified_cache=cache, now=later).from_cache


def test_response_is_bound_to_its_request(member: Member) -> None:
    req = request()
    resp = ResponsePart.answering(req, status=200, headers=[], body=b"{}", created_at=NOW)
    data = framed(member, resp, b"{}")
    received = decode_message(CONTENT_TYPE, data, prefix=CLIENT_PROXY).signed_part
    assert check_response(req, received) == resp
    other = request(path="/citizens/124")
    assert fault_of(lambda: check_response(other, received)) == (
        "Server.ClientProxy.InconsistentResponse"
    )
    wrong_id = dataclasses.replace(resp, message_id="other")
    assert fault_of(lambda: check_response(req, wrong_id)) == (
        "Server.ClientProxy.InconsistentResponse"
    )
    assert fault_of(lambda: check_response(req, req)) == "Server.ClientProxy.InconsistentResponse"


# --- replay ------------------------------------------------------------------------------------


def test_refuses_a_replayed_message_id() -> None:
    guard = ReplayGuard()
    guard.check_and_remember(CLIENT, "id-1", NOW, NOW)
    guard.check_and_remember(MemberId("IQ", "GOV", "NPA"), "id-1", NOW, NOW)
    code = fault_of(
        lambda: guard.check_and_remember(CLIENT, "id-1", NOW, NOW + dt.timedelta(seconds=1))
    )
    assert code == "Server.ServerProxy.DuplicateMessageId"


def test_refuses_messages_outside_the_clock_skew() -> None:
    guard = ReplayGuard()
    late = NOW + dt.timedelta(seconds=301)
    assert fault_of(lambda: guard.check_and_remember(CLIENT, "x", NOW, late)) == (
        "Server.ServerProxy.InvalidMessage"
    )
    assert fault_of(lambda: check_clock_skew(late, NOW, prefix=CLIENT_PROXY)) == (
        "Server.ClientProxy.InvalidMessage"
    )
    assert len(guard) == 0


def test_forgets_ids_after_the_window() -> None:
    guard = ReplayGuard(dt.timedelta(seconds=600), max_skew=dt.timedelta(seconds=300))
    guard.check_and_remember(CLIENT, "a", NOW, NOW)
    later = NOW + dt.timedelta(seconds=601)
    guard.check_and_remember(CLIENT, "b", later, later)
    assert len(guard) == 1


def test_replay_window_must_cover_twice_the_skew() -> None:
    with pytest.raises(ValueError, match="twice"):
        ReplayGuard(dt.timedelta(seconds=100), max_skew=dt.timedelta(seconds=300))


# --- interoperability --------------------------------------------------------------------------


def test_the_documented_example_signed_part_is_canonical() -> None:
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("### 5.5") :]
    example = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert example is not None
    documented = re.sub(r"\s+", "", example.group(1)).encode()
    assert parse_signed_part(documented) == request()
    assert documented == request().to_bytes()


def test_root_content_is_the_documented_ascii_json() -> None:
    content = root_content(b"\xab" * 32, 5)
    assert content == (
        b'{"alg":"sha256","root":"' + b"ab" * 32 + b'","size":5,"type":"jisr-batch/1"}'
    )
    assert json.loads(content)["size"] == 5


def test_proof_bytes_follow_the_documented_layout() -> None:
    proof = InclusionProof(2, 3, (b"\x11" * 32,))
    assert encode_proof(proof) == b"\x00\x00\x00\x02\x00\x00\x00\x03\x01" + b"\x11" * 32


@pytest.mark.openssl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_verifies_a_batch_signature_over_the_root(member: Member, tmp_path: Path) -> None:
    """The documented worked example: the spec's script rebuilds root.bin, openssl verifies it."""
    batch = BatchSigner(member.signer)
    for i in range(5):
        batch.add(request(message_id=f"id-{i}"))
    sealed = batch.sign(now=NOW)[3]
    _, data = encode_message(sealed.signed_part, b"", sealed.proof, sealed.signature, member.ocsp)
    (tmp_path / "message.bin").write_bytes(data)
    (tmp_path / "root.pem").write_bytes(member.pki.root.pem)
    script = re.search(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert script is not None
    run = subprocess.run(
        [sys.executable, "-c", script.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == "request id-3 leaf 3 of 5"
    msg = decode_message(CONTENT_TYPE, data)
    assert (tmp_path / "root.bin").read_bytes() == verify_message(
        msg, verified_cache=None, now=NOW
    ).root_content
    result = subprocess.run(
        [
            "openssl", "cms", "-verify", "-binary", "-inform", "DER",
            "-in", "signature.der", "-content", "root.bin",
            "-CAfile", "root.pem", "-purpose", "any", "-out", "/dev/null",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Verification successful" in result.stderr
    certs = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", "signature.der", "-print_certs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "IQ/GOV/HJC signing" in certs.stdout
    ocsp_text = subprocess.run(
        ["openssl", "ocsp", "-respin", "ocsp.der", "-resp_text", "-noverify"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Cert Status: good" in ocsp_text.stdout
    (tmp_path / "root.bin").write_bytes(root_content(b"\x00" * 32, 5))
    result = subprocess.run(
        [
            "openssl", "cms", "-verify", "-binary", "-inform", "DER",
            "-in", "signature.der", "-content", "root.bin",
            "-CAfile", "root.pem", "-purpose", "any", "-out", "/dev/null",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0


def test_transport_message_keeps_bytes_as_received(member: Member) -> None:
    data = framed(member, request())
    msg = decode_message(CONTENT_TYPE, data)
    assert isinstance(msg, TransportMessage)
    assert msg.signed_part_bytes == sections(data)[0]


def test_a_whole_exchange_between_two_members(member: Member) -> None:
    """Consumer signs a request, provider verifies and answers, consumer checks the answer."""
    provider_pki = member.pki
    provider = provider_pki.signing("IQ/GOV/NDC")
    provider_signer = SoftwareSigner(provider.key, provider.cert)
    guard = ReplayGuard()
    provider_cache = VerifiedSignatureCache()
    consumer_cache = VerifiedSignatureCache()

    body = b'{"national_id": "123"}'
    req = request(body, method="POST")
    _, wire = encode_sealed(sign_one(req, member.signer, now=NOW), body, member.ocsp)

    received = decode_message(CONTENT_TYPE, wire)
    verified = verify_message(received, verified_cache=provider_cache, now=NOW)
    assert verified.signer == member.signer.certificate
    incoming = verified.signed_part
    assert isinstance(incoming, RequestPart)
    guard.check_and_remember(incoming.client, incoming.message_id, incoming.created_at, NOW)

    answer = b'{"name": "Ali"}'
    resp = ResponsePart.answering(
        incoming,
        status=200,
        headers=[("Content-Type", "application/json")],
        body=answer,
        created_at=NOW,
    )
    _, reply = encode_sealed(sign_one(resp, provider_signer, now=NOW), answer, b"ocsp")

    got = decode_message(CONTENT_TYPE, reply, prefix=CLIENT_PROXY)
    checked = verify_message(got, verified_cache=consumer_cache, now=NOW, prefix=CLIENT_PROXY)
    assert checked.signer == provider.cert
    assert check_response(req, checked.signed_part).status == 200
    assert got.body == answer

    replay = decode_message(CONTENT_TYPE, wire)
    assert verify_message(replay, verified_cache=provider_cache, now=NOW).from_cache
    later = NOW + dt.timedelta(seconds=5)
    assert (
        fault_of(lambda: guard.check_and_remember(CLIENT, req.message_id, req.created_at, later))
        == "Server.ServerProxy.DuplicateMessageId"
    )


def test_refuses_a_message_of_the_other_kind(member: Member) -> None:
    resp = ResponsePart.answering(request(), status=200, headers=[], body=b"", created_at=NOW)
    data = framed(member, resp)
    assert fault_of(lambda: decode_message(CONTENT_TYPE, data, kind="request")) == (
        "Server.ServerProxy.InvalidMessage"
    )
    assert decode_message(CONTENT_TYPE, data, kind="response").signed_part == resp
