"""The signer's certificates and OCSP responses of message-log records, stored once by digest.

Rules (``docs/message-log.md``, "Shared evidence"; the schema is migration ``0005``):

- A value (a certificate or an OCSP response, DER) is stored once in ``log_evidence`` under
  its SHA-256; a record written since ``0005`` names its values by digest
  (``certificate_digests``, ``ocsp_digest``). A record written before keeps them inline
  (``certificates``, ``ocsp``) and is read as it is.
- The writer stores a value before it copies the first record naming it, and remembers the
  digests it has stored (:class:`StoredEvidence`, bounded): while a value is remembered, the
  records naming it cost no statement. A digest is remembered only after the statement that
  stored it has answered, and everything is forgotten after a failed write.
- Each stored value keeps ``last_seq``, at or after every record naming it: the writer sets it
  :data:`EVIDENCE_MARGIN` records past the batch that stores a value or names it again after
  its margin ran out; the retention job deletes values whose ``last_seq`` is below the oldest
  record left.
- Readers select :data:`EVIDENCE_COLUMNS` (with ``m`` the ``message_log`` alias), then get every
  row's values with :func:`resolve`: one statement for the values a page of rows names (none
  when no row names one). Each value read must hash to its digest and every digest named must
  be found, or :class:`LogIntegrityError` names the record.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Final

import asyncpg

from gateway.log_record import LogEntry, LogIntegrityError

__all__ = [
    "EVIDENCE_COLUMNS",
    "EVIDENCE_KEPT",
    "EVIDENCE_MARGIN",
    "PRUNE_EVIDENCE",
    "STORE_EVIDENCE",
    "Evidence",
    "StoredEvidence",
    "resolve",
]

#: Columns a reader adds to its select list (``m`` is ``message_log``).
EVIDENCE_COLUMNS: Final = "m.certificates, m.ocsp, m.certificate_digests, m.ocsp_digest"

#: Digests the writer remembers as stored (a node uses a handful at a time).
EVIDENCE_KEPT: Final = 1024
#: How many records past a batch a stored value's ``last_seq`` is set: a value named again
#: within that many records costs no statement.
EVIDENCE_MARGIN: Final = 100_000

#: Stores values (``$1`` digests, ``$2`` values, ``$3`` last_seq of each); a value already
#: stored only has its ``last_seq`` moved forward, never back.
STORE_EVIDENCE: Final = """
INSERT INTO log_evidence AS e (digest, value, last_seq)
SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[])
ON CONFLICT (digest) DO UPDATE SET last_seq = excluded.last_seq
WHERE e.last_seq < excluded.last_seq
"""

#: Deletes the values no record left names (after records were deleted, same transaction).
PRUNE_EVIDENCE: Final = (
    "DELETE FROM log_evidence WHERE last_seq < (SELECT min(seq) FROM message_log)"
)

_VALUES_QUERY: Final = "SELECT digest, value FROM log_evidence WHERE digest = ANY($1::bytea[])"

#: A record's certificates (signer first) and OCSP response.
Evidence = tuple[list[bytes], bytes]


def sha256(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class StoredEvidence:
    """The digests this writer knows are stored, each with the last seq its ``last_seq``
    covers; at most :data:`EVIDENCE_KEPT`, the least recently used forgotten first."""

    def __init__(self, kept: int = EVIDENCE_KEPT, margin: int = EVIDENCE_MARGIN) -> None:
        if kept < 1 or margin < 0:
            raise ValueError("kept must be positive and margin not negative")
        self._kept = kept
        self._margin = margin
        self._covered: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._covered)

    def __contains__(self, digest: object) -> bool:
        return digest in self._covered

    def to_store(
        self, batch: Iterable[tuple[int, Sequence[bytes], Sequence[bytes]]]
    ) -> tuple[list[bytes], list[bytes], list[int]]:
        """What must be stored before ``batch`` (``(seq, digests, values)`` per record) is
        copied: each digest not known to cover its last record in the batch, with its value
        and the ``last_seq`` to give it (as :data:`STORE_EVIDENCE`'s arguments)."""
        needed: dict[bytes, tuple[bytes, int]] = {}
        covered = self._covered
        for seq, digests, values in batch:
            for digest, value in zip(digests, values, strict=True):
                through = covered.get(digest)
                if through is not None and seq <= through:
                    covered.move_to_end(digest)
                    continue
                needed[digest] = (value, seq + self._margin)
        digests = list(needed)
        return digests, [needed[d][0] for d in digests], [needed[d][1] for d in digests]

    def stored(self, digests: Sequence[bytes], last_seqs: Sequence[int]) -> None:
        """Remember that ``digests`` are stored with (at least) ``last_seqs``: call only once
        the statement storing them has answered."""
        for digest, last_seq in zip(digests, last_seqs, strict=True):
            self._covered[digest] = last_seq
            self._covered.move_to_end(digest)
        while len(self._covered) > self._kept:
            self._covered.popitem(last=False)

    def forget(self) -> None:
        """Forget every digest: after a failure, nothing is assumed stored."""
        self._covered.clear()


#: Digests of the values written lately, by value: a node sends the same few values with
#: thousands of records (looking one up costs far less than hashing it again).
_DIGESTS: dict[bytes, bytes] = {}
_DIGESTS_KEPT: Final = 256


def _digest(value: bytes) -> bytes:
    digest = _DIGESTS.get(value)
    if digest is None:
        if len(_DIGESTS) >= _DIGESTS_KEPT:
            _DIGESTS.clear()
        digest = _DIGESTS[value] = sha256(value)
    return digest


def entry_digests(entry: LogEntry) -> tuple[list[bytes], bytes]:
    """The digests of ``entry``'s certificates (in chain order) and OCSP response."""
    return [_digest(c) for c in entry.certificates], _digest(entry.ocsp)


async def resolve(pool: asyncpg.Pool, rows: Sequence[asyncpg.Record]) -> list[Evidence]:
    """Each row's certificates and OCSP response: inline ones as they are, the others read in
    one statement for all the rows (none when no row names a digest).

    Raises :class:`LogIntegrityError` when a value named is missing or does not hash to its
    digest, and what asyncpg raises when the database fails.
    """
    wanted: set[bytes] = set()
    for row in rows:
        if row["certificates"] is None:
            wanted.update(row["certificate_digests"] or ())
            if row["ocsp_digest"] is not None:
                wanted.add(row["ocsp_digest"])
    values: dict[bytes, bytes] = {}
    if wanted:
        for found in await pool.fetch(_VALUES_QUERY, list(wanted)):
            digest, value = bytes(found["digest"]), bytes(found["value"])
            values[digest] = value
    checked: set[bytes] = set()
    return [_evidence(row, values, checked) for row in rows]


def _evidence(row: asyncpg.Record, values: dict[bytes, bytes], checked: set[bytes]) -> Evidence:
    seq: int = row["seq"]
    if row["certificates"] is not None:
        if row["ocsp"] is None:
            raise LogIntegrityError(
                f"record {seq} has its certificates but no OCSP response", seq=seq
            )
        return [bytes(c) for c in row["certificates"]], bytes(row["ocsp"])
    digests = row["certificate_digests"]
    ocsp_digest = row["ocsp_digest"]
    if digests is None or ocsp_digest is None:
        raise LogIntegrityError(
            f"record {seq} has neither its certificates and OCSP response nor their digests",
            seq=seq,
        )
    certificates = [_value(seq, bytes(d), values, checked) for d in digests]
    return certificates, _value(seq, bytes(ocsp_digest), values, checked)


def _value(seq: int, digest: bytes, values: dict[bytes, bytes], checked: set[bytes]) -> bytes:
    value = values.get(digest)
    if value is None:
        raise LogIntegrityError(
            f"record {seq} names a certificate or OCSP response (SHA-256 {digest.hex()}) the "
            "log does not hold; the log was changed",
            seq=seq,
        )
    if digest not in checked:
        if sha256(value) != digest:
            raise LogIntegrityError(
                f"the certificate or OCSP response record {seq} names as SHA-256 "
                f"{digest.hex()} hashes to {sha256(value).hex()}; the log was changed",
                seq=seq,
            )
        checked.add(digest)
    return value
