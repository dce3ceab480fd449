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
  then read the batches named in ``stamp_batch`` with :data:`BATCHES_QUERY` and turn each row
  into a stamp with :meth:`BatchTrees.stamp`. Trees are kept for the last few batches read, so
  reading a batch's records page by page builds its tree once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

import asyncpg

from gateway.faults import FaultError
from gateway.hash_tree import HASH_SIZE, Tree
from gateway.log_record import LogIntegrityError, RecordTimestamp, TimestampBatch, timestamp_leaf
from gateway.transport import decode_proof

__all__ = [
    "BATCHES_QUERY",
    "STAMP_COLUMNS",
    "STAMP_JOIN",
    "TIMESTAMPED_THROUGH",
    "BatchTrees",
]

#: The last timestamped record's seq (0 when none is), as a scalar SQL expression.
TIMESTAMPED_THROUGH: Final = "(SELECT message_log_timestamped_through())"

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
BATCHES_QUERY: Final = (
    "SELECT id, root, size, token, tsa_url, gen_time, first_seq, leaves "
    "FROM timestamp_batches WHERE id = ANY($1::bigint[])"
)

#: Trees kept: a reader seldom spans more batches than this at once.
_TREES_KEPT: Final = 4


class BatchTrees:
    """Turns rows into :class:`RecordTimestamp` values, keeping the last few batches' trees."""

    def __init__(self) -> None:
        #: By batch id: the leaves a tree was built from, and the tree. A tree is used again
        #: only for the same leaves, so what is read is always what the database holds now.
        self._trees: OrderedDict[int, tuple[bytes, Tree]] = OrderedDict()

    @staticmethod
    def batch_ids(rows: list[asyncpg.Record]) -> list[int]:
        """The batches the rows need (for :data:`BATCHES_QUERY`)."""
        return sorted({row["stamp_batch"] for row in rows if row["stamp_batch"] is not None})

    def stamp(
        self, row: asyncpg.Record, batches: Mapping[int, asyncpg.Record]
    ) -> RecordTimestamp | None:
        """The timestamp of the record in ``row`` (None: not timestamped yet).

        Raises :class:`LogIntegrityError` when the stored batch or proof is malformed.
        """
        batch_id: int | None = row["stamp_batch"]
        if batch_id is None:
            return None
        found = batches.get(batch_id)
        if found is None:
            return None
        seq: int = row["seq"]
        batch = TimestampBatch(
            batch_id=batch_id,
            root=bytes(found["root"]),
            size=found["size"],
            token=bytes(found["token"]),
            tsa_url=found["tsa_url"],
            gen_time=found["gen_time"],
        )
        if row["own_batch"] is not None:
            try:
                return RecordTimestamp(batch, decode_proof(bytes(row["batch_proof"])))
            except FaultError as exc:
                raise LogIntegrityError(
                    f"record {seq} of timestamp batch {batch_id} has a malformed proof: "
                    f"{exc.message}"
                ) from exc
        first_seq = found["first_seq"]
        if first_seq is None or not first_seq <= seq < first_seq + batch.size:
            return None  # the last batch before the record ends before it: not stamped yet
        return RecordTimestamp(batch, self._tree(batch_id, found).proof(seq - first_seq))

    def _tree(self, batch_id: int, found: asyncpg.Record) -> Tree:
        leaves = bytes(found["leaves"])
        kept = self._trees.get(batch_id)
        if kept is not None and kept[0] == leaves:
            self._trees.move_to_end(batch_id)
            return kept[1]
        size = found["size"]
        if len(leaves) != HASH_SIZE * size:
            raise LogIntegrityError(
                f"timestamp batch {batch_id} keeps {len(leaves)} bytes of record hashes for "
                f"{size} records"
            )
        tree = Tree(
            [timestamp_leaf(leaves[i : i + HASH_SIZE]) for i in range(0, len(leaves), HASH_SIZE)]
        )
        self._trees[batch_id] = (leaves, tree)
        self._trees.move_to_end(batch_id)
        while len(self._trees) > _TREES_KEPT:
            self._trees.popitem(last=False)
        return tree
