"""Offline verification of archives: intact evidence passes, every kind of tampering is named."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from audit.archive_format import LINKING_NAME, LinkingFile
from audit.errors import AuditError
from audit.report import Report
from audit.verifier import verify_path
from certs.ocsp import OcspResponder, build_request
from certs.status import CertStatus
from tests.audit.archives import flip_byte, rewrite_container, rewrite_zip, write_test_archive
from tests.audit.evidence import HJC, NDC, Federation, NodeLog
from tests.pki_factory import NOW

START = NOW.replace(minute=0)


def _failures(report: Report) -> list[str]:
    return [f"{where} [{check.name}] {check.detail}" for where, check in report.failures()]


@pytest.fixture(scope="module")
def federation() -> Federation:
    return Federation()


def _log(federation: Federation, exchanges: int = 3) -> NodeLog:
    log = NodeLog(federation)
    batch = log.exchanges(exchanges, START + dt.timedelta(minutes=10))
    log.log_exchanges(batch, START + dt.timedelta(minutes=10, seconds=1))
    log.timestamp_pending(START + dt.timedelta(minutes=11))
    return log


def test_intact_archive_verifies(tmp_path: Path, federation: Federation) -> None:
    log = _log(federation)
    path, linking = write_test_archive(tmp_path, federation, log.records, period_start=START)
    report = verify_path(path)
    assert report.ok, _failures(report)
    assert len(linking.containers) == 3
    # One archive item and two messages per exchange.
    assert len(report.items) == 1 + 6
    names = {c.name for item in report.items for c in item.checks}
    assert {"signature", "certificate path", "OCSP", "timestamp", "record chain"} <= names


def _archive(tmp_path: Path, federation: Federation, exchanges: int = 3) -> tuple[Path, NodeLog]:
    log = _log(federation, exchanges)
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    return path, log


def _checks(report: Report, where_suffix: str, name: str) -> list[str]:
    return [
        check.detail
        for where, check in report.failures()
        if where.endswith(where_suffix) and check.name == name
    ]


FIRST = "containers/000000000001.asice"


def test_changed_body_byte_is_named(tmp_path: Path, federation: Federation) -> None:
    path, _ = _archive(tmp_path, federation)
    # The first exchange's response is record 4 (requests are logged first), in container 1.
    rewrite_container(path, FIRST, lambda n, d: flip_byte(d, 5) if n == "response/body.bin" else d)
    report = verify_path(path)
    assert not report.ok
    body = _checks(report, f"{FIRST}:response", "body")
    assert body == [
        "response/body.bin does not match the signed body_sha256 (the body was changed)"
    ]
    contents = _checks(report, path.name, "archive contents")
    assert contents == [
        f"{FIRST} does not match the SHA-256 the linking file lists for it (changed after "
        "archiving)"
    ]
    assert _checks(report, f"{FIRST}:response", "log record") == [
        "the stored body does not match body_digest (the log record disagrees with the message)"
    ]
    # The signature, certificates, OCSP and timestamp are not blamed.
    assert {c.name for _, c in report.failures()} == {"body", "log record", "archive contents"}


def test_changed_signed_part_byte_breaks_proof_signature_and_record(
    tmp_path: Path, federation: Federation
) -> None:
    path, _ = _archive(tmp_path, federation)

    def change(name: str, data: bytes) -> bytes:
        return (
            data.replace(b"/citizens/1000", b"/citizens/1009")
            if name.endswith("request/signed-part.json")
            else data
        )

    rewrite_container(path, FIRST, change)
    report = verify_path(path)
    where = f"{FIRST}:request"
    assert _checks(report, where, "inclusion proof") == [
        "request/root-content.json is not the root content the signed part and proof lead to "
        "(the signed part, the proof or the root content was changed)"
    ]
    (signature,) = _checks(report, where, "signature")
    assert signature.startswith("META-INF/signature-request.p7s does not verify over the root")
    log_record = _checks(report, where, "log record")
    assert (
        "the signed part (request/signed-part.json) is not the one logged: its SHA-256 differs "
        "from the record's signed_part_sha256" in log_record
    )
    # The response's binding to the request breaks too: its request_hash names the original.
    assert _checks(report, f"{FIRST}:response", "response binding") == [
        "the response's request_hash is not this request's"
    ]


def test_changed_signature_byte_is_named(tmp_path: Path, federation: Federation) -> None:
    path, _ = _archive(tmp_path, federation)
    rewrite_container(
        path,
        FIRST,
        lambda n, d: flip_byte(d, -3) if n == "META-INF/signature-request.p7s" else d,
    )
    report = verify_path(path)
    where = f"{FIRST}:request"
    (signature,) = _checks(report, where, "signature")
    assert "META-INF/signature-request.p7s does not verify over the root content" in signature
    assert (
        "the signature (META-INF/signature-request.p7s) is not the one logged: its SHA-256 "
        "differs from the record's signature_sha256" in _checks(report, where, "log record")
    )


def test_changed_timestamp_token_is_named(tmp_path: Path, federation: Federation) -> None:
    path, _ = _archive(tmp_path, federation)
    rewrite_container(
        path,
        FIRST,
        lambda n, d: flip_byte(d, -5) if n == "META-INF/timestamp-response.tst" else d,
    )
    report = verify_path(path)
    (timestamp,) = _checks(report, f"{FIRST}:response", "timestamp")
    assert timestamp.startswith("META-INF/timestamp-response.tst over the batch root")
    assert "signature does not verify" in timestamp
    assert not _checks(report, f"{FIRST}:request", "timestamp")


def test_changed_inclusion_proof_is_named(tmp_path: Path, federation: Federation) -> None:
    path, _ = _archive(tmp_path, federation)
    # Batches of three: each proof carries sibling hashes after its 9-byte header.
    rewrite_container(path, FIRST, lambda n, d: flip_byte(d, 12) if n == "request/proof.bin" else d)
    report = verify_path(path)
    where = f"{FIRST}:request"
    assert _checks(report, where, "inclusion proof")
    assert _checks(report, where, "signature")
    assert (
        "the inclusion proof (request/proof.bin) is not the one logged: its SHA-256 differs "
        "from the record's proof_sha256" in _checks(report, where, "log record")
    )


def test_changed_timestamp_proof_is_named(tmp_path: Path, federation: Federation) -> None:
    path, _ = _archive(tmp_path, federation)
    rewrite_container(
        path, FIRST, lambda n, d: flip_byte(d, 12) if n == "request/timestamp-proof.bin" else d
    )
    report = verify_path(path)
    (first, *rest) = _checks(report, f"{FIRST}:request", "timestamp")
    assert first.startswith("request/timestamp-root.hex is not the root that the record hash")
    assert rest
    assert "timestamps other data" in rest[0]


def test_changed_linking_file_is_caught(tmp_path: Path, federation: Federation) -> None:
    path, _ = _archive(tmp_path, federation)

    def change(name: str, data: bytes) -> bytes:
        if name != LINKING_NAME:
            return data
        linking = LinkingFile.from_bytes(data)
        listed = linking.containers[1]
        forged = dataclasses.replace(listed, sha256="0" * 64)
        containers = (linking.containers[0], forged, *linking.containers[2:])
        return dataclasses.replace(linking, containers=containers).to_bytes()

    rewrite_zip(path, change)
    report = verify_path(path)
    assert _checks(report, path.name, "archive contents") == [
        "containers/000000000002.asice does not match the SHA-256 the linking file lists for "
        "it (changed after archiving)"
    ]


def test_linking_file_edited_by_hand_is_refused(tmp_path: Path, federation: Federation) -> None:
    path, _ = _archive(tmp_path, federation)
    rewrite_zip(
        path, lambda n, d: d.replace(b'"count":6', b'"count":5') if n == LINKING_NAME else d
    )
    report = verify_path(path)
    assert "record chain" in {c.name for _, c in report.failures()}


def test_deleted_container_is_caught(tmp_path: Path, federation: Federation) -> None:
    path, _ = _archive(tmp_path, federation)
    rewrite_zip(path, lambda n, d: None if n == "containers/000000000002.asice" else d)
    report = verify_path(path)
    contents = _checks(report, path.name, "archive contents")
    assert contents == [
        "containers/000000000002.asice is listed in the linking file but missing from the "
        "archive (deleted)"
    ]
    chain = _checks(report, path.name, "record chain")
    assert any("records 2..2 are missing after record 1" in c for c in chain)


def test_record_deleted_with_its_listing_breaks_the_chain(
    tmp_path: Path, federation: Federation
) -> None:
    """A careful forger removes a container and its line in the linking file."""
    path, _ = _archive(tmp_path, federation)

    def change(name: str, data: bytes) -> bytes | None:
        if name == "containers/000000000002.asice":
            return None
        if name == LINKING_NAME:
            linking = LinkingFile.from_bytes(data)
            kept = tuple(c for c in linking.containers if c.name != "containers/000000000002.asice")
            span = dataclasses.replace(linking.records, count=linking.records.count - 2)
            return dataclasses.replace(linking, containers=kept, records=span).to_bytes()
        return data

    rewrite_zip(path, change)
    report = verify_path(path)
    chain = _checks(report, path.name, "record chain")
    assert chain[0] == (
        "record 3: records 2..2 are missing after record 1 "
        f"({path.name}:containers/000000000003.asice:request)"
    )
    assert any("records 5..5 are missing after record 4" in c for c in chain)


def test_swapped_records_are_caught(tmp_path: Path, federation: Federation) -> None:
    """Two records change places: their content no longer hashes to their chain positions."""
    log = _log(federation)
    records = list(log.records)
    a, b = records[1], records[2]
    records[1] = dataclasses.replace(a, entry=b.entry)
    records[2] = dataclasses.replace(b, entry=a.entry)
    path, _ = write_test_archive(tmp_path, federation, records, period_start=START)
    report = verify_path(path)
    failed = {where.rsplit(":", 2)[-2] for where, c in report.failures() if c.name == "log record"}
    assert failed == {"containers/000000000002.asice", "containers/000000000003.asice"}
    chain = _checks(report, path.name, "record chain")
    assert chain
    assert all("does not hash" in c or "previous hash" in c for c in chain)


def _archives(tmp_path: Path, federation: Federation, count: int = 2) -> list[Path]:
    """``count`` consecutive hourly archives of one node, two exchanges each."""
    log = NodeLog(federation)
    paths: list[Path] = []
    previous: tuple[Path, LinkingFile] | None = None
    for hour in range(count):
        start = START + dt.timedelta(hours=hour)
        first_seq = len(log.records) + 1
        batch = log.exchanges(2, start + dt.timedelta(minutes=5))
        log.log_exchanges(batch, start + dt.timedelta(minutes=5, seconds=1))
        log.timestamp_pending(start + dt.timedelta(minutes=6))
        previous = write_test_archive(
            tmp_path,
            federation,
            log.records[first_seq - 1 :],
            sequence=hour + 1,
            previous=previous,
            period_start=start,
        )
        paths.append(previous[0])
    return paths


def _two_archives(tmp_path: Path, federation: Federation) -> tuple[Path, Path]:
    first, second = _archives(tmp_path, federation, 2)
    return first, second


def test_chain_of_archives_verifies(tmp_path: Path, federation: Federation) -> None:
    _two_archives(tmp_path, federation)
    report = verify_path(tmp_path)
    assert report.ok, _failures(report)
    chain = report.find("archive chain of node IQ/GOV/HJC/ss1")
    assert chain is not None
    assert chain.ok


def test_deleted_archive_is_caught(tmp_path: Path, federation: Federation) -> None:
    _, second, _ = _archives(tmp_path, federation, 3)
    second.unlink()
    report = verify_path(tmp_path)
    problems = _checks(report, "archive chain of node IQ/GOV/HJC/ss1", "archive chain")
    assert problems == [
        "archive(s) 2..2 are missing between archive-00000001-20261101T120000Z.zip (ends at "
        "record 4) and archive-00000003-20261101T140000Z.zip (starts at record 9); deleted?"
    ]
    # Each remaining archive is intact on its own.
    assert all(i.ok for i in report.items if i.where.startswith("archive-"))


def test_first_archives_missing_is_a_note_not_a_failure(
    tmp_path: Path, federation: Federation
) -> None:
    first, _, _ = _archives(tmp_path, federation, 3)
    first.unlink()
    report = verify_path(tmp_path)
    assert report.ok, _failures(report)
    assert any("start at archive 2" in note for note in report.notes)


def test_reordered_archives_are_caught(tmp_path: Path, federation: Federation) -> None:
    """Archives 1 and 2 exchange their sequence numbers: the chain of digests breaks."""
    first, second = _two_archives(tmp_path, federation)

    def renumber(to: int, previous: None) -> Callable[[str, bytes], bytes]:
        def change(name: str, data: bytes) -> bytes:
            if name != LINKING_NAME:
                return data
            return dataclasses.replace(
                LinkingFile.from_bytes(data), sequence=to, previous=previous
            ).to_bytes()

        return change

    rewrite_zip(first, renumber(2, None))
    rewrite_zip(second, renumber(1, None))
    report = verify_path(tmp_path)
    problems = _checks(report, "archive chain of node IQ/GOV/HJC/ss1", "archive chain")
    assert any("names no previous archive" in p for p in problems)
    assert any("first record does not follow" in p for p in problems)


def test_archive_swapped_for_another_is_caught(tmp_path: Path, federation: Federation) -> None:
    """Archive 1 replaced by a rewritten one: archive 2 names the original linking file."""
    first, _ = _two_archives(tmp_path, federation)
    rewrite_zip(
        first,
        lambda n, d: (
            d.replace(b'"created_at":"2026-11-01T13:01', b'"created_at":"2026-11-01T13:02')
            if n == LINKING_NAME
            else d
        ),
    )
    report = verify_path(tmp_path)
    (problem,) = _checks(report, "archive chain of node IQ/GOV/HJC/ss1", "archive chain")
    assert "names a previous linking file with SHA-256" in problem
    assert "(the earlier archive was changed or replaced)" in problem


def test_renamed_archives_are_caught(tmp_path: Path, federation: Federation) -> None:
    first, second = _two_archives(tmp_path, federation)
    swap = tmp_path / "swap"
    first.rename(swap)
    second.rename(first)
    swap.rename(second)
    report = verify_path(tmp_path)
    problems = [c.detail for _, c in report.failures() if c.name == "file name"]
    assert len(problems) == 2
    assert "(archives renamed or swapped)" in problems[0]


def test_certificate_revoked_before_signing_is_caught_from_its_own_ocsp(
    tmp_path: Path,
) -> None:
    federation = Federation()
    revoked_at = START + dt.timedelta(minutes=2)
    federation.revoke(HJC, revoked_at)
    log = NodeLog(federation)
    batch = log.exchanges(1, START + dt.timedelta(minutes=10))
    log.log_exchanges(batch, START + dt.timedelta(minutes=10, seconds=1))
    log.timestamp_pending(START + dt.timedelta(minutes=11))
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    report = verify_path(path)
    assert _checks(report, f"{FIRST}:request", "OCSP") == [
        "the signing certificate 2.5.4.5=IQ/GOV/HJC,CN=IQ/GOV/HJC signing,O=Jisr Test,C=IQ was "
        "revoked at 2026-11-01T12:02:00Z (key_compromise), before the signing time "
        "2026-11-01T12:10:00Z, according to request/ocsp.der"
    ]
    assert not _checks(report, f"{FIRST}:response", "OCSP")


def test_certificate_revoked_before_signing_is_caught_from_other_evidence(
    tmp_path: Path,
) -> None:
    """The message staples a 'good' answer from before the revocation; a later message's
    stapled answer shows the certificate revoked before the first was signed."""
    federation = Federation()
    log = NodeLog(federation)
    signed_at = START + dt.timedelta(minutes=20)
    early = log.exchanges(1, signed_at, ocsp_at=START + dt.timedelta(minutes=1))
    federation.revoke(HJC, START + dt.timedelta(minutes=10))
    late = log.exchanges(1, START + dt.timedelta(minutes=40))
    log.log_exchanges(early, signed_at + dt.timedelta(seconds=1))
    log.log_exchanges(late, START + dt.timedelta(minutes=40, seconds=1))
    log.timestamp_pending(START + dt.timedelta(minutes=41))
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    report = verify_path(path)
    where = f"{FIRST}:request"
    assert not _checks(report, where, "OCSP")  # its own stapled answer was good and fresh
    assert _checks(report, where, "revocation") == [
        "the signing certificate 2.5.4.5=IQ/GOV/HJC,CN=IQ/GOV/HJC signing,O=Jisr Test,C=IQ was "
        "revoked at 2026-11-01T12:10:00Z (key_compromise), before the signing time "
        "2026-11-01T12:20:00Z; evidence: the OCSP response in "
        f"{path.name}:containers/000000000003.asice:request"
    ]
    assert not _checks(report, f"{FIRST}:response", "revocation")


def test_revocation_learnt_later_is_caught_from_supplied_ocsp(tmp_path: Path) -> None:
    federation = Federation()
    log = NodeLog(federation)
    batch = log.exchanges(1, START + dt.timedelta(minutes=20))
    log.log_exchanges(batch, START + dt.timedelta(minutes=20, seconds=1))
    log.timestamp_pending(START + dt.timedelta(minutes=21))
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    assert verify_path(path).ok
    # Days later the CA records a compromise dated back to before the exchange.
    federation.revoke(HJC, START + dt.timedelta(minutes=15))
    later = federation.ocsp(federation.members[HJC].cert, START + dt.timedelta(days=3))
    report = verify_path(path, extra_ocsp=[later])
    (problem,) = _checks(report, f"{FIRST}:request", "revocation")
    assert "revoked at 2026-11-01T12:15:00Z" in problem
    assert "evidence: the OCSP response in OCSP response #1 given to the audit" in problem


def test_request_signed_by_another_member_is_caught(tmp_path: Path, federation: Federation) -> None:
    log = NodeLog(federation)
    batch = log.exchanges(1, START + dt.timedelta(minutes=10), request_signer=NDC)
    log.log_exchanges(batch, START + dt.timedelta(minutes=10, seconds=1))
    log.timestamp_pending(START + dt.timedelta(minutes=11))
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    report = verify_path(path)
    assert _checks(report, f"{FIRST}:request", "signer") == [
        "the request is signed with the certificate of member IQ/GOV/NDC, but its client is "
        "member IQ/GOV/HJC"
    ]


def test_signer_from_a_ca_the_configuration_does_not_approve_is_caught(
    tmp_path: Path, federation: Federation
) -> None:
    rogue = Federation()  # its own root CA, unknown to the archive's configuration
    log = NodeLog(rogue)
    batch = log.exchanges(1, START + dt.timedelta(minutes=10))
    log.log_exchanges(batch, START + dt.timedelta(minutes=10, seconds=1))
    log.timestamp_pending(START + dt.timedelta(minutes=11))
    # The archive carries the honest federation's configuration and anchor.
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    report = verify_path(path)
    (path_problem,) = _checks(report, f"{FIRST}:request", "certificate path")
    assert path_problem.startswith("at the signing time 2026-11-01T12:10:00Z: the certificate")
    assert "does not chain to a trusted CA" in path_problem
    (timestamp,) = _checks(report, f"{FIRST}:request", "timestamp")
    assert "not trusted here" in timestamp


def test_auditors_own_anchor_is_used(tmp_path: Path, federation: Federation) -> None:
    path, _ = _archive(tmp_path, federation, exchanges=1)
    assert verify_path(path, anchor=federation.anchor).ok
    assert not verify_path(path, anchor=federation.anchor).notes
    other = Federation()
    report = verify_path(path, anchor=other.anchor)
    (problem, *_) = _checks(report, path.name, "trust material")
    assert problem.startswith("trust/globalconf-00000001.json does not verify")
    assert _checks(report, f"{FIRST}:request", "configuration")


def test_body_not_logged_still_verifies(tmp_path: Path, federation: Federation) -> None:
    log = NodeLog(federation)
    batch = log.exchanges(2, START + dt.timedelta(minutes=10), log_body=False)
    log.log_exchanges(batch, START + dt.timedelta(minutes=10, seconds=1))
    log.timestamp_pending(START + dt.timedelta(minutes=11))
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    report = verify_path(path)
    assert report.ok, _failures(report)
    item = report.find(f"{path.name}:{FIRST}:response")
    assert item is not None
    body = next(c for c in item.checks if c.name == "body")
    assert body.detail.startswith("not logged (body logging was off)")


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="does not exist"):
        verify_path(tmp_path / "nope")


def test_file_that_is_not_an_archive_is_a_failed_item(tmp_path: Path) -> None:
    path = tmp_path / "notes.zip"
    path.write_bytes(b"just text")
    report = verify_path(tmp_path)
    assert not report.ok
    assert (
        report.failures()[0][1].detail
        == "notes.zip is neither a ZIP archive nor an ASiC-E container"
    )


def test_ocsp_response_older_than_the_freshness_limit_is_caught(
    tmp_path: Path, federation: Federation
) -> None:
    log = NodeLog(federation)
    signed_at = START + dt.timedelta(minutes=50)
    batch = log.exchanges(1, signed_at, ocsp_at=signed_at - dt.timedelta(hours=2))
    log.log_exchanges(batch, signed_at + dt.timedelta(seconds=1))
    log.timestamp_pending(signed_at + dt.timedelta(minutes=1))
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    (problem,) = _checks(verify_path(path), f"{FIRST}:request", "OCSP")
    assert problem.startswith("request/ocsp.der at the signing time 2026-11-01T12:50:00Z:")
    assert "is stale" in problem


def test_ocsp_response_from_a_responder_the_configuration_does_not_list_is_caught(
    tmp_path: Path, federation: Federation
) -> None:
    """The CA delegated to a second responder, but the configuration lists only the first."""
    other = federation.pki.ocsp_responder()
    rogue = OcspResponder(
        federation.pki.root.cert, (other.cert, other.key), lambda serial: CertStatus("good")
    )
    log = NodeLog(federation)
    signed_at = START + dt.timedelta(minutes=10)
    (exchange,) = log.exchanges(1, signed_at)
    cert = federation.members[HJC].cert
    stapled = rogue.respond(
        build_request(cert, federation.pki.root.cert, nonce=False),
        now=signed_at - dt.timedelta(minutes=1),
    )
    request = dataclasses.replace(exchange.request, ocsp=stapled)
    log.append([request, exchange.response], signed_at + dt.timedelta(seconds=1))
    log.timestamp_pending(signed_at + dt.timedelta(minutes=1))
    path, _ = write_test_archive(tmp_path, federation, log.records, period_start=START)
    assert _checks(verify_path(path), f"{FIRST}:request", "OCSP") == [
        "request/ocsp.der: the OCSP response is signed by a responder the configuration does "
        "not list for this CA; only the CA or its approved responders may vouch for its "
        "certificates"
    ]
