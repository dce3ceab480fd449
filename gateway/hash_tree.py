"""Merkle hash trees in the style of RFC 6962 / RFC 9162, with SHA-256.

Rules:

- A leaf hash is ``SHA-256(0x00 || leaf bytes)``; an inner node is
  ``SHA-256(0x01 || left || right)``. The two prefixes keep a leaf from ever passing for an
  inner node (second-preimage attacks on the tree).
- The tree over ``n`` leaves splits at ``k``, the largest power of two below ``n``: the left
  subtree holds leaves ``0..k-1``, the right one the rest. A tree of one leaf has the leaf hash
  as its root, so a single message needs no special case.
- An inclusion proof is the leaf's index, the tree size and the sibling hashes from the leaf up
  to the root. It is checked with the RFC 9162 §2.1.3.2 algorithm, which also refuses a path of
  the wrong length for the claimed index and size.
- Trees are capped at :data:`MAX_LEAVES` leaves so a hostile proof cannot claim an absurd size.

This module does no I/O. The node signs batches of messages with it (``gateway.transport``) and
the message log will timestamp batches of records with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

HASH_SIZE: Final = 32
#: Largest tree built or accepted; far above any batch a node signs or timestamps at once.
MAX_LEAVES: Final = 1 << 20

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """The leaf hash of ``data`` (domain-separated from inner nodes)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node over its two children."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


@dataclasses.dataclass(frozen=True, slots=True)
class InclusionProof:
    """Where a leaf sits in a tree and the sibling hashes that lead from it to the root."""

    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.tree_size <= MAX_LEAVES:
            raise ValueError(f"tree size {self.tree_size} is outside 1..{MAX_LEAVES}")
        if not 0 <= self.leaf_index < self.tree_size:
            raise ValueError(
                f"leaf index {self.leaf_index} is outside the tree of {self.tree_size} leaves"
            )
        if len(self.path) != path_length(self.leaf_index, self.tree_size):
            raise ValueError(
                f"a proof for leaf {self.leaf_index} of {self.tree_size} needs "
                f"{path_length(self.leaf_index, self.tree_size)} hashes, got {len(self.path)}"
            )
        if any(len(h) != HASH_SIZE for h in self.path):
            raise ValueError(f"every hash in a proof must be {HASH_SIZE} bytes")


def path_length(leaf_index: int, tree_size: int) -> int:
    """How many sibling hashes the proof of ``leaf_index`` in a tree of ``tree_size`` has."""
    length = 0
    index, size = leaf_index, tree_size
    while size > 1:
        k = _largest_power_of_two_below(size)
        if index < k:
            size = k
        else:
            index, size = index - k, size - k
        length += 1
    return length


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def build(leaf_hashes: Sequence[bytes]) -> tuple[bytes, list[InclusionProof]]:
    """The root over ``leaf_hashes`` (already hashed with :func:`leaf_hash`) and each one's proof.

    Proofs come back in the order of the leaves.
    """
    tree = Tree(leaf_hashes)
    return tree.root, [tree.proof(i) for i in range(tree.size)]


def _built_proof(leaf_index: int, tree_size: int, path: tuple[bytes, ...]) -> InclusionProof:
    """A proof :class:`Tree` made: right by construction, so not checked again.

    A timestamping pass builds one proof per record (thousands at a time); the checks in
    ``InclusionProof.__post_init__`` are for proofs that arrive from elsewhere.
    """
    proof = object.__new__(InclusionProof)
    object.__setattr__(proof, "leaf_index", leaf_index)
    object.__setattr__(proof, "tree_size", tree_size)
    object.__setattr__(proof, "path", path)
    return proof


class Tree:
    """A hash tree kept whole: its root, and any leaf's proof without building them all.

    Built bottom-up: each level pairs neighbours and carries an odd last node up unchanged,
    which gives the same root and proofs as RFC 6962's split at the largest power of two.
    Building costs one hash per inner node; a proof is read off the levels.
    """

    __slots__ = ("_levels", "size")

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        n = len(leaf_hashes)
        if not 1 <= n <= MAX_LEAVES:
            raise ValueError(f"a hash tree needs 1..{MAX_LEAVES} leaves, got {n}")
        if any(len(h) != HASH_SIZE for h in leaf_hashes):
            raise ValueError(f"every leaf hash must be {HASH_SIZE} bytes")
        level = list(leaf_hashes)
        levels = [level]
        while len(level) > 1:
            up = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                up.append(level[-1])
            levels.append(up)
            level = up
        self._levels = levels
        self.size = n

    @property
    def root(self) -> bytes:
        return self._levels[-1][0]

    def proof(self, leaf_index: int) -> InclusionProof:
        """The inclusion proof of leaf ``leaf_index`` (IndexError outside the tree)."""
        if not 0 <= leaf_index < self.size:
            raise IndexError(f"leaf {leaf_index} is outside the tree of {self.size} leaves")
        path = []
        index = leaf_index
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):  # no sibling: the node was carried up unchanged
                path.append(level[sibling])
            index //= 2
        return _built_proof(leaf_index, self.size, tuple(path))


def root_from_proof(leaf: bytes, proof: InclusionProof) -> bytes | None:
    """The root that ``proof`` leads to from ``leaf`` (a leaf hash), or None if it cannot."""
    if len(leaf) != HASH_SIZE:
        return None
    index, last = proof.leaf_index, proof.tree_size - 1
    current = leaf
    for sibling in proof.path:
        if last == 0:
            return None
        if index % 2 == 1 or index == last:
            current = node_hash(sibling, current)
            if index % 2 == 0:
                while index % 2 == 0 and index != 0:
                    index //= 2
                    last //= 2
        else:
            current = node_hash(current, sibling)
        index //= 2
        last //= 2
    if last != 0:
        return None
    return current


def verify_proof(leaf: bytes, proof: InclusionProof, root: bytes) -> bool:
    """True when ``proof`` shows that the leaf hash ``leaf`` is in the tree with ``root``."""
    computed = root_from_proof(leaf, proof)
    return computed is not None and hmac.compare_digest(computed, root)
