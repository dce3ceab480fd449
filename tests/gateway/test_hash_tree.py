from __future__ import annotations

import hashlib

import pytest

from gateway.hash_tree import (
    InclusionProof,
    Tree,
    build,
    leaf_hash,
    node_hash,
    path_length,
    root_from_proof,
    verify_proof,
)


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, written straight from the definition."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(f"message {i}".encode()) for i in range(n)]


def test_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


def test_tree_of_one_has_the_leaf_as_root_and_an_empty_proof() -> None:
    leaf = leaf_hash(b"only")
    root, proofs = build([leaf])
    assert root == leaf
    assert proofs == [InclusionProof(0, 1, ())]
    assert verify_proof(leaf, proofs[0], root)


@pytest.mark.parametrize("size", range(1, 18))
def test_every_leaf_proves_inclusion_for_sizes_1_to_17(size: int) -> None:
    leaves = _leaves(size)
    root, proofs = build(leaves)
    assert root == _reference_root(leaves)
    for i, (leaf, proof) in enumerate(zip(leaves, proofs, strict=True)):
        assert proof.leaf_index == i
        assert proof.tree_size == size
        assert len(proof.path) == path_length(i, size)
        assert verify_proof(leaf, proof, root)


@pytest.mark.parametrize("size", [2, 3, 5, 8, 13, 17])
def test_refuses_tampered_leaf_path_index_and_root(size: int) -> None:
    leaves = _leaves(size)
    root, proofs = build(leaves)
    for i, proof in enumerate(proofs):
        assert not verify_proof(leaf_hash(b"forged"), proof, root)
        assert not verify_proof(leaves[i], proof, leaf_hash(b"other root"))
        for j in range(len(proof.path)):
            path = list(proof.path)
            path[j] = bytes([path[j][0] ^ 1]) + path[j][1:]
            assert not verify_proof(leaves[i], InclusionProof(i, size, tuple(path)), root)
        other = (i + 1) % size
        if path_length(other, size) == len(proof.path):
            assert not verify_proof(leaves[i], InclusionProof(other, size, proof.path), root)


def test_a_proof_cannot_claim_another_tree_size() -> None:
    leaves = _leaves(6)
    root, proofs = build(leaves)
    proof = proofs[5]
    for size in range(6, 9):
        if size != 6 and path_length(5, size) == len(proof.path):
            assert not verify_proof(leaves[5], InclusionProof(5, size, proof.path), root)


def test_refuses_proofs_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="needs 2 hashes"):
        InclusionProof(0, 3, (b"\x00" * 32,))
    with pytest.raises(ValueError, match="outside the tree"):
        InclusionProof(3, 3, ())
    with pytest.raises(ValueError, match="tree size"):
        InclusionProof(0, 0, ())
    with pytest.raises(ValueError, match="32 bytes"):
        InclusionProof(0, 2, (b"short",))


def test_refuses_a_leaf_hash_of_the_wrong_length() -> None:
    assert root_from_proof(b"short", InclusionProof(0, 1, ())) is None
    with pytest.raises(ValueError, match="needs 1"):
        build([])


def test_a_tree_kept_whole_gives_the_root_and_proofs_of_build() -> None:
    for n in [*range(1, 70), 127, 128, 129, 1000]:
        leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
        root, proofs = build(leaves)
        tree = Tree(leaves)
        assert tree.size == n
        assert tree.root == root
        for i in range(n):
            assert tree.proof(i) == proofs[i]
            assert verify_proof(leaves[i], tree.proof(i), root)


def test_a_tree_kept_whole_refuses_what_build_refuses() -> None:
    with pytest.raises(ValueError, match="leaves"):
        Tree([])
    with pytest.raises(ValueError, match="32 bytes"):
        Tree([b"short"])
    tree = Tree([leaf_hash(b"a"), leaf_hash(b"b")])
    for index in (-1, 2):
        with pytest.raises(IndexError):
            tree.proof(index)
