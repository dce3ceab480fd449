"""Which timestamp batch covers a message-log record, and the record's inclusion proof.

Rules (``docs/message-log.md``, "Batch timestamping"):

- A batch stored since migration ``0004`` covers the consecutive records ``first_seq`` ..
  ``first_seq + size - 1`` and keeps their record hashes (``leaves``, 32 bytes each, in
  sequence order). A record's inclusion proof is computed from the batch's leaves when the
  record is read, never from the record's own hash: a record whose hash was changed gets a
  proof that does not lead to the token's root, and verification says so.
- A record stamped before ``0004`` carries ``batch_id`` and ``batch_proof`` itself and is read
  as it is.
- A record is timestamped when its ``seq`` is at most the SQL function
  ``message_log_timestamped_through()`` (:data:`TIMESTAMPED_THROUGH`): records are committed in
  sequence order and stamped oldest first, so the stamped ones are always the start of the log.
- Readers select :data:`STAMP_COLUMNS` with :data:`STAMP_JOIN` after ``FROM message_log AS m``,
  then get the rows' stamps with :meth:`BatchTrees.stamps` (one statement for the batches they
  name, each batch built once). Trees are kept for the last few batches read, so reading a
  batch's records page by page builds its tree once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Final

import asyncpg

from gateway.faults import FaultError
from gateway.hash_tree import HASH_SIZE, Tree
from gateway.log_record import LogIntegrityError, RecordTimestamp, TimestampBatch, timestamp_leaf
from gateway.transport import decode_proof

__all__ = [
    "OLDEST_WAITING",
    "STAMP_COLUMNS",
    "STAMP_JOIN",
    "TIMESTAMPED_THROUGH",
    "BatchTrees",
]

#: The last timestamped record's seq (0 when none is), as a scalar SQL expression.
TIMESTAMPED_THROUGH: Final = "(SELECT message_log_timestamped_through())"

#: The log time of the oldest record waiting for a timestamp (no row when none is).
OLDEST_WAITING: Final = (
    f"SELECT logged_at FROM message_log WHERE seq > {TIMESTAMPED_THROUGH} "  # noqa: S608
    "ORDER BY seq LIMIT 1"
)

#: Columns a reader adds to its select list: the record's own (pre-0004) batch and proof, and
#: the batch that may cover it.
STAMP_COLUMNS: Final = (
    "m.seq, m.batch_id AS own_batch, m.batch_proof, coalesce(m.batch_id, r.id) AS stamp_batch"
)

#: The join that finds, for each record without a batch of its own, the last batch starting at
#: or before it (whether it reaches the record is checked against its size).
STAMP_JOIN: Final = """
LEFT JOIN LATERAL (
    SELECT b.id FROM timestamp_batches AS b
    WHERE m.batch_id IS NULL AND b.first_seq IS NOT NULL AND b.first_seq <= m.seq
    ORDER BY b.first_seq DESC LIMIT 1
) AS r ON true
"""

#: The batches named by ``stamp_batch`` (``$1``: their ids).
_BATCHES_QUERY: Final = (
    "SELECT id, root, size, token, tsa_url, gen_time, first_seq, leaves "
    "FROM timestamp_batches WHERE id = ANY($1::bigint[])"
)

#: Trees kept: a reader seldom spans more batches than this at once.
_TREES_KEPT: Final = 4


class _Batch:
    """One batch as read for a set of rows: its value object built once, its tree on demand."""

    __slots__ = ("_found", "_trees", "batch", "first_seq")

    def __init__(self, found: asyncpg.Record, trees: BatchTrees) -> None:
        self._found = found
        self._trees = trees
        self.first_seq: int | None = found["first_seq"]
        self.batch = TimestampBatch(
            batch_id=found["id"],
            root=bytes(found["root"]),
            size=found["size"],
            token=bytes(found["token"]),
            tsa_url=found["tsa_url"],
            gen_time=found["gen_time"],
        )

    def tree(self) -> Tree:
        return self._trees.tree(self.batch.batch_id, bytes(self._found["leaves"]))


class BatchTrees:
    """Reads the timestamps of message-log rows, keeping the last few batches' trees."""

    def __init__(self) -> None:
        #: By batch id: the leaves a tree was built from, and the tree. A tree is used again
        #: only for the same leaves, so what is read is always what the database holds now.
        self._trees: OrderedDict[int, tuple[bytes, Tree]] = OrderedDict()

    async def stamps(
        self, pool: asyncpg.Pool, rows: Sequence[asyncpg.Record]
    ) -> list[RecordTimestamp | None]:
        """The timestamp of each row's record (None: not timestamped yet), reading the
        batches they need in one statement (none when no row names one).

        Raises :class:`LogIntegrityError` when a stored batch or proof is malformed, and what
        asyncpg raises when the database fails.
        """
        ids = sorted({row["stamp_batch"] for row in rows if row["stamp_batch"] is not None})
        if not ids:
            return [None] * len(rows)
        batches = {b["id"]: _Batch(b, self) for b in await pool.fetch(_BATCHES_QUERY, ids)}
        return [_stamp(row, batches) for row in rows]

    def tree(self, batch_id: int, leaves: bytes) -> Tree:
        """The tree over the record hashes ``leaves`` of batch ``batch_id``."""
        kept = self._trees.get(batch_id)
        if kept is not None and kept[0] == leaves:
            self._trees.move_to_end(batch_id)
            return kept[1]
        if len(leaves) % HASH_SIZE or not leaves:
            raise LogIntegrityError(
                f"timestamp batch {batch_id} keeps {len(leaves)} bytes of record hashes, not "
                f"a whole number of {HASH_SIZE}-byte hashes"
            )
        tree = Tree(
            [timestamp_leaf(leaves[i : i + HASH_SIZE]) for i in range(0, len(leaves), HASH_SIZE)]
        )
        self._trees[batch_id] = (leaves, tree)
        self._trees.move_to_end(batch_id)
        while len(self._trees) > _TREES_KEPT:
            self._trees.popitem(last=False)
        return tree


def _stamp(row: asyncpg.Record, batches: Mapping[int, _Batch]) -> RecordTimestamp | None:
    batch_id: int | None = row["stamp_batch"]
    found = batches.get(batch_id) if batch_id is not None else None
    if found is None:
        return None
    seq: int = row["seq"]
    if row["own_batch"] is not None:
        try:
            return RecordTimestamp(found.batch, decode_proof(bytes(row["batch_proof"])))
        except FaultError as exc:
            raise LogIntegrityError(
                f"record {seq} of timestamp batch {batch_id} has a malformed proof: {exc.message}"
            ) from exc
    first = found.first_seq
    if first is None or not first <= seq < first + found.batch.size:
        return None  # the last batch before the record ends before it: not stamped yet
    tree = found.tree()
    if tree.size != found.batch.size:
        raise LogIntegrityError(
            f"timestamp batch {batch_id} keeps {tree.size} record hashes for "
            f"{found.batch.size} records"
        )
    return RecordTimestamp(found.batch, tree.proof(seq - first))
