"""Realistic message-log evidence for archive and audit tests.

A small federation (test root CA with an OCSP responder and a TSA, two members with signing
certificates, a signed global configuration and its anchor) and a node's log built the way a
node builds it: messages signed in batches with ``gateway.transport``, OCSP responses from
``certs.ocsp.OcspResponder``, records chained with ``gateway.log_record`` and timestamped in
batches by ``certs.tsa.TimestampAuthority``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from certs.ocsp import OcspResponder, build_request
from certs.signer import SoftwareSigner
from certs.status import CertStatus
from certs.tsa import (
    DEFAULT_POLICY_OID,
    MessageImprint,
    TimestampAuthority,
    token_of_response,
)
from certs.tsa import build_request as build_tsa_request
from gateway.anchor import Anchor, make_anchor
from gateway.globalconf import (
    ApprovedCa,
    ApprovedTsa,
    GlobalConf,
    GlobalSettings,
    Member,
    MemberClass,
    SecurityServer,
    SigningKey,
    build_globalconf,
    sign_globalconf,
)
from gateway.globalconf import (
    OcspResponder as ConfOcspResponder,
)
from gateway.identifiers import MemberId, SecurityServerId, ServiceId, SubsystemId
from gateway.log_record import (
    Direction,
    LogEntry,
    LogRecord,
    RecordTimestamp,
    TimestampBatch,
    batch_tree,
)
from gateway.transport import BatchSigner, RequestPart, ResponsePart, Sealed, body_digest
from security_server.archiver import ConfHistory
from security_server.message_log import PostgresMessageLog
from security_server.timestamper import Timestamper
from storage.migrations import apply_migrations
from tests.clock import Clock
from tests.pki_factory import NOW, FixturePki, Issued, new_key
from trust_services.http_server import serve_app
from trust_services.tsa_server import SerialNumbers, tsa_app

NDC = MemberId("IQ", "GOV", "NDC")
HJC = MemberId("IQ", "GOV", "HJC")
POPULATION = SubsystemId("IQ", "GOV", "NDC", "population")
INHERITANCE = SubsystemId("IQ", "GOV", "HJC", "inheritance")
GET_CITIZEN = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen", None)
NDC_SS1 = SecurityServerId("IQ", "GOV", "NDC", "ss1")
HJC_SS1 = SecurityServerId("IQ", "GOV", "HJC", "ss1")
TSA_URL = "http://127.0.0.1:4490/"
#: How long after its request an answer is created (and signed).
ANSWER_DELAY = dt.timedelta(milliseconds=200)


def _conf_signing_key(now: dt.datetime) -> Issued:
    key = new_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Jisr configuration key")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


class Federation:
    """The trust services and members of a test instance, and its signed configuration."""

    def __init__(self, now: dt.datetime = NOW, *, tsa_url: str = TSA_URL) -> None:
        self.now = now
        self.tsa_url = tsa_url
        self.pki = FixturePki.create(now)
        self.ocsp_issued = self.pki.ocsp_responder()
        self.tsa_issued = self.pki.tsa()
        self.members = {HJC: self.pki.signing(str(HJC)), NDC: self.pki.signing(str(NDC))}
        self.conf_key = _conf_signing_key(now)
        self.statuses: dict[int, CertStatus] = {}
        self.responder = OcspResponder(
            self.pki.root.cert,
            (self.ocsp_issued.cert, self.ocsp_issued.key),
            lambda serial: self.statuses.get(serial, CertStatus("good")),
        )
        self.tsa = TimestampAuthority(
            self.tsa_issued.cert, self.tsa_issued.key, policy_oid=DEFAULT_POLICY_OID
        )
        self._tsa_serial = itertools.count(1)
        self.anchor = make_anchor(
            "IQ",
            ["http://127.0.0.1:4400/globalconf/current"],
            [self.conf_key.cert],
            generated_at=now,
        )
        self.versions: list[tuple[bytes, bytes]] = []
        self.publish(1, now - dt.timedelta(hours=1))

    def conf(self, version: int, generated_at: dt.datetime) -> GlobalConf:
        return build_globalconf(
            "IQ",
            version,
            generated_at,
            None,
            None,
            GlobalSettings(),
            [MemberClass("GOV", "Government bodies")],
            [
                Member(NDC, "National Data Centre", (POPULATION,)),
                Member(HJC, "Higher Judicial Council", (INHERITANCE,)),
            ],
            [
                SecurityServer(NDC_SS1, "127.0.0.1:5500", (), (POPULATION,)),
                SecurityServer(HJC_SS1, "127.0.0.1:5501", (), (INHERITANCE,)),
            ],
            [
                ApprovedCa(
                    "Jisr Test CA",
                    self.pki.root.cert,
                    (),
                    (ConfOcspResponder("http://127.0.0.1:4410/", self.ocsp_issued.cert),),
                )
            ],
            [ApprovedTsa("Jisr Test TSA", self.tsa_url, self.tsa_issued.cert)],
            [],
            [SigningKey(self.conf_key.cert)],
        )

    def publish(self, version: int, generated_at: dt.datetime) -> tuple[bytes, bytes]:
        signer = SoftwareSigner(self.conf_key.key, self.conf_key.cert)
        pair = sign_globalconf(self.conf(version, generated_at), signer, now=generated_at)
        self.versions.append(pair)
        return pair

    def current(self, now: dt.datetime) -> GlobalConf:
        """The newest version (what a node's configuration client hands out)."""
        return GlobalConf.from_document(self.versions[-1][0])

    def anchor_bytes(self) -> bytes:
        return self.anchor.to_bytes()

    def signer(self, member: MemberId) -> SoftwareSigner:
        issued = self.members[member]
        return SoftwareSigner(issued.key, issued.cert)

    def ocsp(self, cert: x509.Certificate, at: dt.datetime) -> bytes:
        return self.responder.respond(build_request(cert, self.pki.root.cert, nonce=False), now=at)

    def revoke(self, member: MemberId, at: dt.datetime) -> None:
        cert = self.members[member].cert
        self.statuses[cert.serial_number] = CertStatus(
            "revoked", revoked_at=at, reason="key_compromise"
        )

    def timestamp(self, root: bytes, at: dt.datetime) -> bytes:
        request = build_tsa_request(MessageImprint("sha256", root), cert_req=True)
        return token_of_response(self.tsa.respond(request, now=at, serial=next(self._tsa_serial)))


@dataclasses.dataclass(frozen=True)
class Exchange:
    request: LogEntry
    response: LogEntry


class NodeLog:
    """A node's log, appended and timestamped the way the message log does it."""

    def __init__(self, federation: Federation, node: SecurityServerId = HJC_SS1) -> None:
        self.federation = federation
        self.node = node
        self.records: list[LogRecord] = []
        self._batch_ids = itertools.count(1)

    def sign(
        self, parts: Sequence[RequestPart | ResponsePart], member: MemberId, at: dt.datetime
    ) -> list[Sealed]:
        batch = BatchSigner(self.federation.signer(member))
        for part in parts:
            batch.add(part)
        return batch.sign(now=at)

    def sign_exchanges(
        self,
        requests: Sequence[RequestPart],
        bodies: Sequence[bytes],
        at: dt.datetime,
        *,
        request_signer: MemberId = HJC,
    ) -> tuple[list[Sealed], list[Sealed]]:
        """``requests`` signed at ``at`` in one batch and their answers (200, JSON, one of
        ``bodies`` each) signed by NDC :data:`ANSWER_DELAY` later in another."""
        later = at + ANSWER_DELAY
        responses = [
            ResponsePart.answering(
                r,
                status=200,
                headers=(("Content-Type", "application/json"),),
                body=b,
                created_at=later,
            )
            for r, b in zip(requests, bodies, strict=True)
        ]
        return self.sign(requests, request_signer, at), self.sign(responses, NDC, later)

    def entry(
        self,
        direction: Direction,
        sealed: Sealed,
        body: bytes,
        member: MemberId,
        at: dt.datetime,
        *,
        log_body: bool = True,
        conf_version: int = 1,
        ocsp_at: dt.datetime | None = None,
    ) -> LogEntry:
        """The entry as logged; the stapled OCSP response is fetched at ``ocsp_at`` (default
        five minutes before signing, as a node refreshes it ahead of time)."""
        cert = self.federation.members[member].cert
        return LogEntry.for_message(
            direction,
            sealed.signed_part,
            signed_part_bytes=sealed.signed_part.to_bytes(),
            body=body,
            log_body=log_body,
            signature=sealed.signature,
            proof=sealed.proof,
            certificates=[cert.public_bytes(Encoding.DER)],
            ocsp=self.federation.ocsp(cert, ocsp_at or at - dt.timedelta(minutes=5)),
            conf_version=conf_version,
        )

    def exchanges(
        self,
        count: int,
        at: dt.datetime,
        *,
        log_body: bool = True,
        conf_version: int = 1,
        request_signer: MemberId = HJC,
        ocsp_at: dt.datetime | None = None,
    ) -> list[Exchange]:
        """``count`` REST exchanges HJC → NDC, requests and responses each signed in one batch."""
        requests = [
            RequestPart(
                protocol="REST",
                message_id=str(uuid.uuid4()),
                client=INHERITANCE,
                service=GET_CITIZEN,
                method="GET",
                path=f"/citizens/{1000 + i}",
                query="lang=ar",
                headers=(("Accept", "application/json"),),
                body_sha256=body_digest(b""),
                created_at=at,
                user_id="IQ1234567890",
                issue=f"case-{i}",
            )
            for i in range(count)
        ]
        bodies = [f'{{"citizen":{1000 + i},"name":"علي"}}'.encode() for i in range(count)]
        later = at + ANSWER_DELAY
        sealed_requests, sealed_responses = self.sign_exchanges(
            requests, bodies, at, request_signer=request_signer
        )
        result = []
        for sreq, sresp, body in zip(sealed_requests, sealed_responses, bodies, strict=True):
            request = self.entry(
                "request_out",
                sreq,
                b"",
                request_signer,
                at,
                log_body=log_body,
                conf_version=conf_version,
                ocsp_at=ocsp_at,
            )
            response = self.entry(
                "response_in",
                sresp,
                body,
                NDC,
                later,
                log_body=log_body,
                conf_version=conf_version,
                ocsp_at=ocsp_at,
            )
            result.append(Exchange(request, response))
        return result

    def append(self, entries: Sequence[LogEntry], at: dt.datetime) -> list[LogRecord]:
        appended = []
        for entry in entries:
            prev = self.records[-1].record_hash if self.records else bytes(32)
            record = LogRecord.append(self.node, len(self.records) + 1, at, entry, prev)
            self.records.append(record)
            appended.append(record)
        return appended

    def log_exchanges(self, exchanges: Sequence[Exchange], at: dt.datetime) -> list[LogRecord]:
        """Log requests and responses interleaved as a busy node would: all requests first."""
        entries = [e.request for e in exchanges] + [e.response for e in exchanges]
        return self.append(entries, at)

    def timestamp_pending(self, at: dt.datetime) -> TimestampBatch | None:
        pending = [i for i, r in enumerate(self.records) if r.timestamp is None]
        if not pending:
            return None
        root, proofs = batch_tree([self.records[i].record_hash for i in pending])
        batch = TimestampBatch(
            next(self._batch_ids),
            root,
            len(pending),
            self.federation.timestamp(root, at),
            TSA_URL,
            at,
        )
        for i, proof in zip(pending, proofs, strict=True):
            self.records[i] = dataclasses.replace(
                self.records[i], timestamp=RecordTimestamp(batch, proof)
            )
        return batch


def anchor_of(federation: Federation) -> Anchor:
    return federation.anchor


@dataclasses.dataclass
class LoggingNode:
    """A node's message log on a real database, timestamped in batches by a TSA over HTTP."""

    federation: Federation
    pool: asyncpg.Pool
    log: PostgresMessageLog
    timestamper: Timestamper
    #: The federation's trust material as a node keeps it (its ``conf-history``).
    history: ConfHistory
    clock: Clock


@contextlib.asynccontextmanager
async def logging_node(
    database_url: str,
    work_dir: Path,
    clock: Clock,
    federation: Federation,
    *,
    history_dir: Path | None = None,
) -> AsyncIterator[LoggingNode]:
    """Node ``IQ/GOV/HJC/ss1``'s message log in the (empty) database at ``database_url``.

    ``federation``'s TSA answers over HTTP on 127.0.0.1 (its serial numbers in ``work_dir``)
    and configuration version 1, published an hour before ``clock.now``, names it; the
    configuration history goes to ``history_dir`` (default ``work_dir/conf-history``). The log's
    migrations are applied; everything is stopped when the block ends.
    """
    app = tsa_app(federation.tsa, SerialNumbers(work_dir / "tsa-serial"), clock=clock)
    async with serve_app(app) as bound:
        federation.tsa_url = bound + "/"
        federation.versions.clear()
        federation.publish(1, clock.now - dt.timedelta(hours=1))
        history = ConfHistory(
            history_dir or work_dir / "conf-history", anchor=federation.anchor_bytes()
        )
        for document, signature in federation.versions:
            history.remember(document, signature)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn, "security_server.log_migrations")
            async with aiohttp.ClientSession() as session:
                timestamper = Timestamper(pool, federation, session, clock=clock)
                async with PostgresMessageLog(
                    pool, HJC_SS1, clock=clock, timestamper=timestamper
                ) as log:
                    yield LoggingNode(federation, pool, log, timestamper, history, clock)
        finally:
            await pool.close()
