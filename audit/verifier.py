"""Offline verification of archives, directories of archives and exchange containers.

Rules:

- Nothing here uses the network or a node: every check runs on the files given, with trust
  taken from the configuration anchor and the global-configuration versions (:mod:`audit.trust`).
- Every message is checked as the receiving node checked it, but at the time it was signed
  (the CMS signingTime), not today: body digest, inclusion proof and root content, CMS
  signature, the signer's member against the client (requests) or the service provider
  (responses), certificate path to a CA approved by the configuration version the record names,
  the stapled OCSP response fresh at signing time, good, and from the CA or an approved
  responder; then the log record (its canonical bytes, the digests of every part, its hash) and
  its batch timestamp (inclusion proof to the root, token from an approved TSA over that root,
  and not earlier than the signature claims to be).
- A certificate revoked before the signing time is caught from any OCSP evidence seen in the
  verification (another message's stapled response, or responses the auditor supplies), not
  only from the message's own response.
- Archives: every entry is listed in the linking file with the right SHA-256, nothing more or
  less; the records form one unbroken hash chain from the linking file's first previous hash to
  its last hash; archives of one node form a chain by sequence number, linking-file digest and
  record hash. Deleting, adding, changing or reordering a record, a container or an archive
  breaks at least one of these.
- Failures never stop the verification: each is reported where it happened (archive, entry,
  role) and the rest is still checked. Input that cannot be read at all raises
  :class:`~audit.errors.AuditError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import itertools
import json
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from audit.archive_format import (
    CA_BUNDLE_NAME,
    CONTAINER_SUFFIX,
    CONTAINERS_DIR,
    LINKING_NAME,
    OCSP_BUNDLE_NAME,
    TSA_BUNDLE_NAME,
    ArchivedMessage,
    ArchiveReader,
    ExchangeEvidence,
    LinkingFile,
    ListedContainer,
    chain_ders,
    read_exchange_container,
    sha256_hex,
)
from audit.errors import ArchiveFormatError, AuditError
from audit.report import ItemVerdict, Report
from audit.trust import Trust, approved_ca, bundle_problems, load_trust, ocsp_signer_problem
from certs.cms import CmsVerified, verify_detached
from certs.errors import CertValidityError, PathValidationError, WrongProfileError
from certs.ocsp import OcspError, verify_response
from certs.profiles import member_id_of
from certs.tsa import TimestampError, TimestampInfo, verify_token
from config.errors import JisrError
from gateway import hash_tree
from gateway.anchor import Anchor
from gateway.asic import MAX_CONTAINER_BYTES
from gateway.faults import FaultError
from gateway.globalconf import CLOCK_SKEW, GlobalConf
from gateway.log_record import (
    GENESIS_HASH,
    LogIntegrityError,
    LogRecord,
    chain_hash,
    chain_problems,
    check_entry,
    parse_record,
    timestamp_leaf,
)
from gateway.transport import (
    RequestPart,
    SignedPart,
    body_digest,
    check_response,
    decode_proof,
    parse_signed_part,
    root_content,
)

#: How far a signature's claimed time may lie after the timestamp of its record.
TIME_TOLERANCE = dt.timedelta(seconds=60)

_PART_FILES = (
    ("signed_part_sha256", "signed part", "signed_part"),
    ("signature_sha256", "signature", "signature"),
    ("proof_sha256", "inclusion proof", "proof"),
    ("ocsp_sha256", "OCSP response", "ocsp"),
)


def _t(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


@dataclasses.dataclass(slots=True)
class _Signed:
    """A verified signature, kept to compare with revocations seen later in the audit."""

    item: ItemVerdict
    signer: x509.Certificate
    issuer: x509.Certificate
    signing_time: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class _Revocation:
    revoked_at: dt.datetime
    reason: str | None
    where: str


@dataclasses.dataclass(frozen=True, slots=True)
class _ArchiveSeen:
    label: str
    file_name: str
    linking: LinkingFile
    linking_sha256: str


class _Audit:
    def __init__(self, anchor: Anchor | None, extra_ocsp: Sequence[bytes]) -> None:
        self.anchor = anchor
        self.extra_ocsp = list(extra_ocsp)
        self.report = Report()
        self.signed: list[_Signed] = []
        self.revocations: dict[bytes, _Revocation] = {}
        self.responders: dict[bytes, x509.Certificate] = {}
        self.archives: list[_ArchiveSeen] = []
        self._signatures: dict[bytes, CmsVerified] = {}
        self._tokens: dict[bytes, TimestampInfo] = {}

    # --- archives ------------------------------------------------------------------------

    def archive(self, path: Path, label: str) -> None:
        item = self.report.item(label, "archive")
        try:
            reader = ArchiveReader(str(path), label=label)
        except ArchiveFormatError as exc:
            item.failed("archive file", exc.message)
            return
        with reader:
            linking: LinkingFile | None = None
            try:
                linking_bytes = reader.linking_bytes()
                linking = LinkingFile.from_bytes(linking_bytes)
            except ArchiveFormatError as exc:
                item.failed(
                    "linking file",
                    f"{exc.message}; the containers are still checked one by one, but what "
                    "the archive should hold cannot be",
                )
            if linking is not None:
                item.label = (
                    f"archive {linking.sequence} of node {linking.node}, period "
                    f"{_t(linking.period_start)}..{_t(linking.period_end)}, "
                    f"{len(linking.containers)} exchange containers, records "
                    f"{linking.records.first_sequence}..{linking.records.last_sequence}"
                )
                item.passed("linking file", f"SHA-256 {sha256_hex(linking_bytes)}")
                if path.name != linking.name:
                    item.failed(
                        "file name",
                        f"the file is named {path.name} but its linking file names it "
                        f"{linking.name} (archives renamed or swapped)",
                    )
                self._contents(reader, linking, item)
                self.archives.append(
                    _ArchiveSeen(label, path.name, linking, sha256_hex(linking_bytes))
                )
            trust = self._trust(dict(reader.trust_entries()), item)
            listed = {c.name: c for c in linking.containers} if linking else {}
            names = list(listed) + sorted(
                n
                for n in reader.names
                if n.startswith(CONTAINERS_DIR) and n.endswith(CONTAINER_SUFFIX) and n not in listed
            )
            records: dict[int, tuple[LogRecord, str]] = {}
            for name in names:
                if name not in reader.names:
                    continue  # reported by the contents check
                where = f"{label}:{name}"
                try:
                    data = reader.read_container(name)
                except ArchiveFormatError as exc:
                    self.report.item(where, "exchange container").failed("container", exc.message)
                    continue
                for record, role_where in self._exchange(data, where, trust, listed.get(name)):
                    if record.seq in records:
                        item.failed(
                            "record chain",
                            f"record {record.seq} appears twice: in "
                            f"{records[record.seq][1]} and {role_where}",
                        )
                    records[record.seq] = (record, role_where)
            if linking is not None:
                self._record_chain(linking, records, item)

    def _contents(self, reader: ArchiveReader, linking: LinkingFile, item: ItemVerdict) -> None:
        expected = {c.name: (c.sha256, c.size) for c in linking.containers}
        expected.update({t.name: (t.sha256, t.size) for t in linking.trust})
        present = set(reader.names)
        problems = [
            f"{name} is in the archive but not in its linking file (added after archiving)"
            for name in reader.names
            if name != LINKING_NAME and name not in expected
        ]
        for name, (digest, size) in expected.items():
            if name not in present:
                problems.append(
                    f"{name} is listed in the linking file but missing from the archive (deleted)"
                )
                continue
            try:
                data = reader.read(name, max(size, 1) * 2 + 1024)
            except ArchiveFormatError as exc:
                problems.append(exc.message)
                continue
            if len(data) != size or not hmac.compare_digest(sha256_hex(data), digest):
                problems.append(
                    f"{name} does not match the SHA-256 the linking file lists for it "
                    "(changed after archiving)"
                )
        if problems:
            for problem in problems:
                item.failed("archive contents", problem)
        else:
            item.passed(
                "archive contents",
                f"{len(expected)} entries, each with the SHA-256 its linking file lists",
            )

    def _trust(self, entries: dict[str, bytes], item: ItemVerdict) -> Trust:
        trust, problems, notes = load_trust(entries, anchor=self.anchor)
        for note in notes:
            if note not in self.report.notes:
                self.report.notes.append(note)
        for problem in problems:
            item.failed("trust material", problem)
        if trust.confs:
            versions = ", ".join(str(v) for v in trust.confs)
            item.passed(
                "trust material",
                f"global configuration version(s) {versions} verified against the anchor "
                f"{trust.anchor.digest if trust.anchor else ''}".rstrip(),
            )
        bundles = []
        for name in (CA_BUNDLE_NAME, TSA_BUNDLE_NAME, OCSP_BUNDLE_NAME):
            if name in entries:
                try:
                    bundles.append((name, x509.load_pem_x509_certificates(entries[name])))
                except ValueError as exc:
                    item.failed("trust material", f"{name} is not a PEM bundle: {exc}")
        for problem in bundle_problems(trust, bundles) if trust.confs else []:
            item.failed("trust material", problem)
        for conf in trust.confs.values():
            for ca in conf.approved_cas:
                for responder in ca.ocsp:
                    self.responders[_fingerprint(responder.certificate)] = responder.certificate
        return trust

    def _record_chain(
        self,
        linking: LinkingFile,
        records: dict[int, tuple[LogRecord, str]],
        item: ItemVerdict,
    ) -> None:
        span = linking.records
        ordered = [records[s] for s in sorted(records)]
        where_of = {seq: where for seq, (_, where) in records.items()}
        problems = []
        if span.first_sequence == 1 and span.first_prev_hash != GENESIS_HASH.hex():
            problems.append("the first record of the log (1) does not follow the genesis hash")
        for broken in chain_problems(
            [r for r, _ in ordered],
            previous_hash=bytes.fromhex(span.first_prev_hash),
            previous_seq=span.first_sequence - 1,
            check_entries=False,
        ):
            where = where_of.get(broken.seq)
            problems.append(f"{broken}" + (f" ({where})" if where else ""))
        if ordered:
            last_record, _ = ordered[-1]
            if last_record.seq != span.last_sequence:
                problems.append(
                    f"the archive's records end at {last_record.seq}, but its linking file says "
                    f"{span.last_sequence} (records removed from the end)"
                )
            elif last_record.record_hash.hex() != span.last_hash:
                problems.append(
                    f"record {last_record.seq}'s hash is not the last hash in the linking file"
                )
        if len(ordered) != span.count:
            problems.append(
                f"the archive holds {len(ordered)} readable records; its linking file says "
                f"{span.count}"
            )
        if problems:
            for problem in problems:
                item.failed("record chain", problem)
        else:
            item.passed(
                "record chain",
                f"records {span.first_sequence}..{span.last_sequence} form one unbroken hash "
                f"chain ending in {span.last_hash}",
            )

    # --- containers ----------------------------------------------------------------------

    def container_file(self, path: Path, label: str) -> None:
        if path.stat().st_size > MAX_CONTAINER_BYTES:
            self.report.item(label, "exchange container").failed(
                "container",
                f"{label} is {path.stat().st_size} bytes, over the limit of "
                f"{MAX_CONTAINER_BYTES} bytes for one container",
            )
            return
        data = path.read_bytes()
        try:
            evidence = read_exchange_container(data, label=label)
        except ArchiveFormatError as exc:
            self.report.item(label, "exchange container").failed("container", exc.message)
            return
        holder = ItemVerdict(label)
        trust = self._trust(dict(evidence.trust), holder) if evidence.trust else Trust({}, None)
        if not evidence.trust:
            holder.failed(
                "trust material",
                "the container carries no trust material; verify it inside its archive, or "
                "export it with `jisr audit export`, which adds the configuration it needs",
            )
        if holder.failures:
            verdict = self.report.item(label, "trust material of the exported container")
            verdict.checks.extend(holder.checks)
        if self._exchange_evidence(evidence, label, trust, None):
            self.report.notes.append(
                f"{label}: a single container proves its own records and timestamps; the "
                "chain to the records before and after them is checked only within archives"
            )

    def _exchange(
        self, data: bytes, where: str, trust: Trust, listed: ListedContainer | None
    ) -> list[tuple[LogRecord, str]]:
        try:
            evidence = read_exchange_container(data, label=where)
        except ArchiveFormatError as exc:
            self.report.item(where, "exchange container").failed("container", exc.message)
            return []
        return self._exchange_evidence(evidence, where, trust, listed)

    def _exchange_evidence(
        self,
        evidence: ExchangeEvidence,
        where: str,
        trust: Trust,
        listed: ListedContainer | None,
    ) -> list[tuple[LogRecord, str]]:
        found: list[tuple[LogRecord, str]] = []
        parts: dict[str, SignedPart] = {}
        items: dict[str, ItemVerdict] = {}
        for message in evidence.messages:
            item_where = f"{where}:{message.role}"
            item = self.report.item(
                item_where,
                f"{message.role} {evidence.message_id!r} from {evidence.client} to "
                f"{evidence.service}",
            )
            items[message.role] = item
            if listed is not None:
                self._check_listing(listed, evidence, message, item)
            record, part = self._message(message, evidence, trust, item)
            if record is not None:
                found.append((record, item_where))
            if part is not None:
                parts[message.role] = part
        request, response = parts.get("request"), parts.get("response")
        if isinstance(request, RequestPart) and response is not None:
            try:
                check_response(request, response)
            except FaultError as exc:
                items["response"].failed("response binding", exc.message)
            else:
                items["response"].passed(
                    "response binding", "answers this request (ids equal, request_hash matches)"
                )
        return found

    def _check_listing(
        self,
        listed: ListedContainer,
        evidence: ExchangeEvidence,
        message: ArchivedMessage,
        item: ItemVerdict,
    ) -> None:
        listed_seq = dict(zip(listed.roles, listed.record_sequences, strict=True))
        problems = []
        if (listed.message_id, listed.client, listed.service) != (
            evidence.message_id,
            evidence.client,
            evidence.service,
        ):
            problems.append("the linking file lists other ids for this container")
        if listed_seq.get(message.role) != message.seq:
            problems.append(
                f"the linking file lists record {listed_seq.get(message.role)} for the "
                f"{message.role}, the container holds record {message.seq}"
            )
        if set(listed.roles) != {m.role for m in evidence.messages}:
            problems.append("the linking file lists other roles for this container")
        for problem in problems:
            item.failed("archive listing", problem)

    # --- one message ---------------------------------------------------------------------

    def _message(
        self,
        message: ArchivedMessage,
        evidence: ExchangeEvidence,
        trust: Trust,
        item: ItemVerdict,
    ) -> tuple[LogRecord | None, SignedPart | None]:
        record = self._log_record(message, evidence, item)
        part = self._signed_part(message, evidence, item)
        self._body(message, part, item)
        content = self._proof(message, item)
        verified = self._signature(message, content, item) if content is not None else None
        if verified is None:
            self._timestamp(message, record, trust, None, item)
            return record, part
        signing_time = verified.signing_time or (part.created_at if part else None)
        if signing_time is None:
            item.failed("signature", "the signature has no signingTime and the signed part no time")
            return record, part
        self._signer_member(message, part, verified, item)
        conf = self._conf(record, signing_time, trust, item)
        if conf is not None:
            issuer = self._path(verified, conf, trust, signing_time, item)
            if issuer is not None:
                self._ocsp(message, verified.signer, issuer, conf, signing_time, item)
        self._timestamp(message, record, trust, signing_time, item)
        return record, part

    def _log_record(
        self, message: ArchivedMessage, evidence: ExchangeEvidence, item: ItemVerdict
    ) -> LogRecord | None:
        files = message.files
        try:
            certificates = chain_ders(message.chain_pem)
        except ArchiveFormatError as exc:
            item.failed("log record", f"{files.chain}: {exc.message}")
            return None
        try:
            record = parse_record(
                message.record,
                signed_part=message.signed_part,
                body=message.body,
                signature=message.signature,
                proof=message.proof,
                certificates=certificates,
                ocsp=message.ocsp,
                prev_hash=message.prev_hash,
                record_hash=message.record_hash,
            )
        except LogIntegrityError as exc:
            item.failed("log record", f"{files.record}: {exc.message}")
            return None
        problems = []
        stored = json.loads(message.record)
        for key, what, attr in _PART_FILES:
            data: bytes = getattr(message, attr)
            if stored.get(key) != hashlib.sha256(data).hexdigest():
                name = getattr(files, attr)
                problems.append(
                    f"the {what} ({name}) is not the one logged: its SHA-256 differs from the "
                    f"record's {key}"
                )
        if stored.get("certificates_sha256") != [
            hashlib.sha256(c).hexdigest() for c in certificates
        ]:
            problems.append(
                f"the signer chain ({files.chain}) is not the one logged: the certificates' "
                "SHA-256 differ from the record's certificates_sha256"
            )
        if record.seq != message.seq:
            problems.append(f"the record is number {record.seq}, evidence.json says {message.seq}")
        if str(record.node) != evidence.node:
            problems.append(
                f"the record is from node {record.node}, evidence.json says {evidence.node}"
            )
        if record.entry.is_request != (message.role == "request"):
            problems.append(f"a {record.entry.direction} record is filed as the {message.role}")
        if not hmac.compare_digest(
            chain_hash(record.prev_hash, record.canonical_bytes()), record.record_hash
        ):
            problems.append(
                f"the record does not hash to its record hash {message.record_hash.hex()} "
                "(SHA-256 of previous hash and canonical bytes)"
            )
        problems.extend(
            f"{p} (the log record disagrees with the message)" for p in check_entry(record.entry)
        )
        if problems:
            for problem in problems:
                item.failed("log record", problem)
        else:
            item.passed(
                "log record",
                f"record {record.seq} ({record.entry.direction}, logged "
                f"{_t(record.logged_at)}) hashes to {record.record_hash.hex()}",
            )
        return dataclasses.replace(record, entry=record.entry.without_body())

    def _signed_part(
        self, message: ArchivedMessage, evidence: ExchangeEvidence, item: ItemVerdict
    ) -> SignedPart | None:
        try:
            part = parse_signed_part(message.signed_part)
        except FaultError as exc:
            item.failed("signed part", f"{message.files.signed_part}: {exc.message}")
            return None
        problems = []
        if part.kind != message.role:
            problems.append(
                f"{message.files.signed_part} holds a {part.kind}, not a {message.role}"
            )
        if (part.message_id, str(part.client), str(part.service)) != (
            evidence.message_id,
            evidence.client,
            evidence.service,
        ):
            problems.append(
                "the signed message id, client or service differ from the container's index "
                "(evidence.json)"
            )
        for problem in problems:
            item.failed("signed part", problem)
        if not problems:
            item.passed("signed part", f"{part.kind} created {_t(part.created_at)}")
        return part

    def _body(self, message: ArchivedMessage, part: SignedPart | None, item: ItemVerdict) -> None:
        if message.body is None:
            item.passed(
                "body",
                "not logged (body logging was off); the signed part keeps its SHA-256",
            )
            return
        if part is None:
            return
        if body_digest(message.body) != part.body_sha256:
            item.failed(
                "body",
                f"{message.files.body} does not match the signed body_sha256 (the body was "
                "changed)",
            )
        else:
            item.passed("body", f"{len(message.body)} bytes, SHA-256 as signed")

    def _proof(self, message: ArchivedMessage, item: ItemVerdict) -> bytes | None:
        files = message.files
        try:
            proof = decode_proof(message.proof)
        except FaultError as exc:
            item.failed("inclusion proof", f"{files.proof}: {exc.message}")
            return None
        root = hash_tree.root_from_proof(hash_tree.leaf_hash(message.signed_part), proof)
        if root is None:
            item.failed("inclusion proof", f"{files.proof} leads to no root")
            return None
        content = root_content(root, proof.tree_size)
        if content != message.root_content:
            item.failed(
                "inclusion proof",
                f"{files.root_content} is not the root content the signed part and proof lead "
                "to (the signed part, the proof or the root content was changed)",
            )
        else:
            item.passed(
                "inclusion proof",
                f"leaf {proof.leaf_index} of a batch of {proof.tree_size}, root {root.hex()}",
            )
        return content

    def _signature(
        self, message: ArchivedMessage, content: bytes, item: ItemVerdict
    ) -> CmsVerified | None:
        key = hashlib.sha256(message.signature).digest() + hashlib.sha256(content).digest()
        try:
            # One batch signature covers many messages: verify each (signature, content) once.
            verified = self._signatures.get(key) or verify_detached(message.signature, content)
            self._signatures[key] = verified
        except JisrError as exc:
            item.failed(
                "signature",
                f"{message.files.signature} does not verify over the root content: {exc.message}",
            )
            return None
        when = f", signingTime {_t(verified.signing_time)}" if verified.signing_time else ""
        item.passed("signature", f"CMS signature by {_subject(verified.signer)}{when}")
        return verified

    def _signer_member(
        self,
        message: ArchivedMessage,
        part: SignedPart | None,
        verified: CmsVerified,
        item: ItemVerdict,
    ) -> None:
        if part is None:
            return
        expected = part.client.member if isinstance(part, RequestPart) else part.service.member
        whose = "client" if isinstance(part, RequestPart) else "service provider"
        try:
            signer_member = member_id_of(verified.signer)
        except JisrError as exc:
            item.failed("signer", exc.message)
            return
        if signer_member != str(expected):
            item.failed(
                "signer",
                f"the {message.role} is signed with the certificate of member {signer_member}, "
                f"but its {whose} is member {expected}",
            )
        else:
            item.passed("signer", f"signed by member {signer_member}, the {whose}")

    def _conf(
        self,
        record: LogRecord | None,
        signing_time: dt.datetime,
        trust: Trust,
        item: ItemVerdict,
    ) -> GlobalConf | None:
        if record is None:
            item.failed(
                "configuration",
                "the log record cannot be read, so the configuration in force is unknown",
            )
            return None
        named = record.entry.conf_version
        choice = trust.conf_for(named)
        if choice is None:
            item.failed(
                "configuration",
                f"the record names configuration version {named}, and no verified version up "
                "to it is in the trust material",
            )
            return None
        if choice.conf.generated_at > signing_time + CLOCK_SKEW:
            item.failed(
                "configuration",
                f"{choice.describe(named)} was generated at {_t(choice.conf.generated_at)}, "
                f"after the message was signed at {_t(signing_time)}",
            )
            return None
        item.passed("configuration", choice.describe(named))
        return choice.conf

    def _path(
        self,
        verified: CmsVerified,
        conf: GlobalConf,
        trust: Trust,
        signing_time: dt.datetime,
        item: ItemVerdict,
    ) -> x509.Certificate | None:
        validator = trust.validator(conf)
        if validator is None:
            item.failed(
                "certificate path",
                f"configuration version {conf.version} approves no certification authority",
            )
            return None
        try:
            chain = validator.validate(
                verified.signer,
                at=signing_time,
                profile="sign",
                intermediates=verified.certificates[1:],
            )
        except (WrongProfileError, CertValidityError, PathValidationError) as exc:
            item.failed(
                "certificate path",
                f"at the signing time {_t(signing_time)}: {exc.message}",
            )
            return None
        issuer = chain[1] if len(chain) > 1 else chain[0]
        item.passed(
            "certificate path",
            f"valid at {_t(signing_time)}, issued by {_subject(issuer)}, approved in "
            f"configuration version {conf.version}",
        )
        return issuer

    def _ocsp(
        self,
        message: ArchivedMessage,
        signer: x509.Certificate,
        issuer: x509.Certificate,
        conf: GlobalConf,
        signing_time: dt.datetime,
        item: ItemVerdict,
    ) -> None:
        ca = approved_ca(conf, issuer)
        responders = [o.certificate for o in ca.ocsp] if ca is not None else []
        max_age = dt.timedelta(seconds=conf.settings.ocsp_freshness_s)
        try:
            verdict = verify_response(
                message.ocsp,
                signer,
                issuer,
                trusted_responders=responders,
                now=signing_time,
                max_age=max_age,
            )
        except OcspError as exc:
            item.failed(
                "OCSP",
                f"{message.files.ocsp} at the signing time {_t(signing_time)}: {exc.message}",
            )
            return
        problem = ocsp_signer_problem(message.ocsp, issuer, ca)
        if problem is not None:
            item.failed("OCSP", f"{message.files.ocsp}: {problem}")
            return
        status = verdict.status
        if status.state == "revoked" and status.revoked_at is not None:
            self._note_revocation(signer, status.revoked_at, status.reason, item.where)
            item.failed(
                "OCSP",
                f"the signing certificate {_subject(signer)} was revoked at "
                f"{_t(status.revoked_at)}"
                + (f" ({status.reason})" if status.reason else "")
                + f", before the signing time {_t(signing_time)}, according to "
                f"{message.files.ocsp}",
            )
            return
        if status.state != "good":
            item.failed(
                "OCSP",
                f"the responder does not know the signing certificate {_subject(signer)} "
                f"(status {status.state}) in {message.files.ocsp}",
            )
            return
        age = int((signing_time - verdict.this_update).total_seconds())
        item.passed(
            "OCSP",
            f"good, thisUpdate {_t(verdict.this_update)} ({max(age, 0)} s before signing; "
            f"limit {conf.settings.ocsp_freshness_s} s), from the CA or an approved responder",
        )
        self.signed.append(_Signed(item, signer, issuer, signing_time))

    def _timestamp(
        self,
        message: ArchivedMessage,
        record: LogRecord | None,
        trust: Trust,
        signing_time: dt.datetime | None,
        item: ItemVerdict,
    ) -> None:
        files = message.files
        try:
            proof = decode_proof(message.timestamp_proof)
        except FaultError as exc:
            item.failed("timestamp", f"{files.timestamp_proof}: {exc.message}")
            return
        root = hash_tree.root_from_proof(timestamp_leaf(message.record_hash), proof)
        if root is None:
            item.failed("timestamp", f"{files.timestamp_proof} leads to no root")
            return
        if message.timestamp_root.strip() != root.hex().encode("ascii"):
            item.failed(
                "timestamp",
                f"{files.timestamp_root} is not the root that the record hash and "
                f"{files.timestamp_proof} lead to (the proof, the record or the root was "
                "changed)",
            )
        if record is None:
            return
        choice = trust.conf_for(record.entry.conf_version)
        if choice is None:
            item.failed("timestamp", "no verified configuration lists the TSAs to trust")
            return
        tsa_certs = [t.certificate for t in choice.conf.approved_tsas]
        key = (
            hashlib.sha256(message.timestamp_token).digest()
            + root
            + b"".join(_fingerprint(c) for c in tsa_certs)
        )
        try:
            # One token covers a whole timestamp batch: check each (token, root, TSAs) once.
            info = self._tokens.get(key) or verify_token(
                message.timestamp_token, digest=root, tsa_certs=tsa_certs
            )
            self._tokens[key] = info
            if info.message_imprint.hash != "sha256":
                raise TimestampError("a batch token must timestamp the root with SHA-256")
        except TimestampError as exc:
            item.failed(
                "timestamp",
                f"{files.timestamp} over the batch root {root.hex()}: {exc.message}",
            )
            return
        slack = (info.accuracy or dt.timedelta(0)) + TIME_TOLERANCE
        if signing_time is not None and signing_time > info.gen_time + slack:
            item.failed(
                "timestamp",
                f"the signature claims {_t(signing_time)}, after the record was timestamped at "
                f"{_t(info.gen_time)}",
            )
            return
        if record.logged_at > info.gen_time + slack:
            item.failed(
                "timestamp",
                f"the record claims it was logged at {_t(record.logged_at)}, after it was "
                f"timestamped at {_t(info.gen_time)}",
            )
            return
        delay = int((info.gen_time - record.logged_at).total_seconds())
        item.passed(
            "timestamp",
            f"genTime {_t(info.gen_time)} ({max(delay, 0)} s after logging) by "
            f"{_subject(info.tsa_cert)}, leaf {proof.leaf_index} of batch {message.batch_id} "
            f"({proof.tree_size} records)",
        )

    # --- evidence across items -----------------------------------------------------------

    def _note_revocation(
        self, cert: x509.Certificate, revoked_at: dt.datetime, reason: str | None, where: str
    ) -> None:
        key = _fingerprint(cert)
        known = self.revocations.get(key)
        if known is None or revoked_at < known.revoked_at:
            self.revocations[key] = _Revocation(revoked_at, reason, where)

    def _given_ocsp(self) -> None:
        """Revocations from OCSP responses the auditor supplied, checked against the CAs."""
        by_serial: dict[int, list[_Signed]] = {}
        for signed in self.signed:
            by_serial.setdefault(signed.signer.serial_number, []).append(signed)
        for index, der in enumerate(self.extra_ocsp, start=1):
            where = f"OCSP response #{index} given to the audit"
            try:
                response = ocsp.load_der_ocsp_response(der)
                serials = [s.serial_number for s in response.responses]
                this_update = next(iter(response.responses)).this_update_utc
            except (ValueError, StopIteration) as exc:
                self.report.item(where, "supplied OCSP evidence").failed(
                    "OCSP", f"cannot be read: {exc}"
                )
                continue
            matched = False
            for serial in serials:
                for signed in by_serial.get(serial, []):
                    try:
                        verdict = verify_response(
                            der,
                            signed.signer,
                            signed.issuer,
                            trusted_responders=list(self.responders.values()),
                            now=this_update,
                            max_age=dt.timedelta(days=36500),
                        )
                    except OcspError:
                        continue
                    matched = True
                    status = verdict.status
                    if status.state == "revoked" and status.revoked_at is not None:
                        self._note_revocation(
                            signed.signer, status.revoked_at, status.reason, where
                        )
            if not matched:
                self.report.notes.append(
                    f"{where} answers for no signing certificate of the verified messages, or "
                    "is not signed by their CA or an approved responder; it was not used"
                )

    def finish(self) -> Report:
        self._given_ocsp()
        for signed in self.signed:
            revocation = self.revocations.get(_fingerprint(signed.signer))
            if revocation is not None and revocation.revoked_at <= signed.signing_time:
                signed.item.failed(
                    "revocation",
                    f"the signing certificate {_subject(signed.signer)} was revoked at "
                    f"{_t(revocation.revoked_at)}"
                    + (f" ({revocation.reason})" if revocation.reason else "")
                    + f", before the signing time {_t(signed.signing_time)}; evidence: the OCSP "
                    f"response in {revocation.where}",
                )
            else:
                signed.item.passed(
                    "revocation",
                    "no OCSP evidence in this audit shows the certificate revoked before signing",
                )
        self._archive_chains()
        return self.report

    def _archive_chains(self) -> None:
        by_node: dict[str, list[_ArchiveSeen]] = {}
        for seen in self.archives:
            by_node.setdefault(seen.linking.node, []).append(seen)
        for node, archives in sorted(by_node.items()):
            archives.sort(key=lambda a: a.linking.sequence)
            first = archives[0].linking
            if first.previous is not None:
                self.report.notes.append(
                    f"the archives of node {node} start at archive {first.sequence}; the link "
                    f"to archive {first.previous.sequence} ({first.previous.name}) was not "
                    "checked because that archive was not given"
                )
            elif first.records.first_sequence != 1:
                self.report.notes.append(
                    f"archive {first.sequence} of node {node} names no previous archive but "
                    f"starts at record {first.records.first_sequence}"
                )
            if len(archives) < 2:
                continue
            item = self.report.item(
                f"archive chain of node {node}",
                f"archives {first.sequence}..{archives[-1].linking.sequence}",
            )
            problems = []
            for before, after in itertools.pairwise(archives):
                problems.extend(self._link_problems(before, after))
            if problems:
                for problem in problems:
                    item.failed("archive chain", problem)
            else:
                item.passed(
                    "archive chain",
                    f"{len(archives)} archives in order, each naming the previous one's linking "
                    "file digest, records continuous across them",
                )

    def _link_problems(self, before: _ArchiveSeen, after: _ArchiveSeen) -> list[str]:
        b, a = before.linking, after.linking
        if a.sequence == b.sequence:
            return [f"{before.label} and {after.label} both claim to be archive {a.sequence}"]
        problems = []
        if a.sequence != b.sequence + 1:
            problems.append(
                f"archive(s) {b.sequence + 1}..{a.sequence - 1} are missing between "
                f"{before.label} (ends at record {b.records.last_sequence}) and {after.label} "
                f"(starts at record {a.records.first_sequence}); deleted?"
            )
        previous = a.previous
        if previous is None:
            problems.append(f"{after.label} names no previous archive, but follows {before.label}")
        elif a.sequence == b.sequence + 1:
            if previous.sequence != b.sequence or previous.name != before.file_name:
                problems.append(
                    f"{after.label} names archive {previous.sequence} ({previous.name}) as its "
                    f"previous one, not {before.label}"
                )
            if previous.linking_sha256 != before.linking_sha256:
                problems.append(
                    f"{after.label} names a previous linking file with SHA-256 "
                    f"{previous.linking_sha256}, but {before.label}'s is {before.linking_sha256} "
                    "(the earlier archive was changed or replaced)"
                )
        if a.sequence == b.sequence + 1:
            if a.records.first_sequence != b.records.last_sequence + 1:
                problems.append(
                    f"{before.label} ends at record {b.records.last_sequence}, {after.label} "
                    f"starts at record {a.records.first_sequence}"
                )
            if a.records.first_prev_hash != b.records.last_hash:
                problems.append(
                    f"{after.label}'s first record does not follow {before.label}'s last record "
                    "hash"
                )
        return problems


def _is_container(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(38)
    except OSError as exc:
        raise AuditError(f"cannot read {path}: {exc}") from exc
    return head[30:38] == b"mimetype"


def _files(path: Path) -> Iterable[Path]:
    for candidate in sorted(path.rglob("*")):
        if candidate.is_file() and candidate.suffix in (".zip", CONTAINER_SUFFIX):
            yield candidate


def verify_path(
    path: Path | str,
    *,
    anchor: Anchor | None = None,
    extra_ocsp: Sequence[bytes] = (),
) -> Report:
    """Verify an archive, a directory of archives (and exported containers), or one container.

    ``anchor`` is the auditor's configuration anchor; without it the archive's own is used and
    the report says so. ``extra_ocsp`` are DER OCSP responses the auditor obtained elsewhere
    (for example a later response showing a certificate revoked): any message signed with a
    certificate they show revoked before its signing time fails.
    """
    root = Path(path)
    if not root.exists():
        raise AuditError(f"{root} does not exist; give an archive, a directory or a container")
    audit = _Audit(anchor, extra_ocsp)
    targets = list(_files(root)) if root.is_dir() else [root]
    if root.is_dir() and not targets:
        raise AuditError(f"{root} holds no archive (*.zip) or container (*.asice)")
    for target in targets:
        label = str(target.relative_to(root)) if root.is_dir() else target.name
        if _is_container(target):
            audit.container_file(target, label)
        elif zipfile.is_zipfile(target):
            audit.archive(target, label)
        else:
            audit.report.item(label, "file").failed(
                "archive file", f"{label} is neither a ZIP archive nor an ASiC-E container"
            )
    return audit.finish()
