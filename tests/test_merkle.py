"""RFC 6962 Merkle trees: CT reference vectors, proofs for every leaf, streaming equals recursion."""

import hashlib
import tracemalloc
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.merkle import (
    EMPTY_ROOT,
    MerkleAccumulator,
    head_leaf,
    inclusion_proof,
    merkle_root,
    verify_inclusion,
)

# The leaves of the Certificate Transparency reference tests (merkle_tree_test), and the
# roots of their first n leaves. Every value is also recomputed below by the reference.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# Audit paths (index, tree size, path) of the same tree.
CT_PATHS = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        7,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, written straight from the recursive definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])).digest()


def reference_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n]), recursively."""
    if len(leaves) <= 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if index < k:
        return reference_path(index, leaves[:k]) + [reference_root(leaves[k:])]
    return reference_path(index - k, leaves[k:]) + [reference_root(leaves[:k])]


def sample_leaves(n: int) -> list[bytes]:
    return [f"leaf {i} of {n}".encode() for i in range(n)]


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_ct_reference_roots(size: int) -> None:
    assert reference_root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]  # the vector, independently
    assert merkle_root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


def test_empty_tree_is_the_hash_of_nothing() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert EMPTY_ROOT.hex().startswith("e3b0c442")


@pytest.mark.parametrize(("index", "size", "path"), CT_PATHS)
def test_ct_reference_paths(index: int, size: int, path: list[str]) -> None:
    assert [node.hex() for node in reference_path(index, CT_LEAVES[:size])] == path
    assert [node.hex() for node in inclusion_proof(CT_LEAVES[:size], index)] == path
    proof = [bytes.fromhex(node) for node in path]
    assert verify_inclusion(CT_LEAVES[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


def test_root_commits_to_the_leaf_count() -> None:
    # A Bitcoin-style tree that duplicates the odd leaf would give these the same root.
    assert merkle_root([b"a", b"b", b"c"]) != merkle_root([b"a", b"b", b"c", b"c"])


@pytest.mark.parametrize("size", range(1, 21))
def test_every_inclusion_proof_verifies_and_matches_the_reference(size: int) -> None:
    leaves = sample_leaves(size)
    root = reference_root(leaves)
    for index in range(size):
        proof = inclusion_proof(leaves, index)
        assert proof == reference_path(index, leaves)
        assert verify_inclusion(leaves[index], index, size, proof, root)


@pytest.mark.parametrize("size", range(2, 21))
def test_inclusion_fails_for_wrong_leaf_index_root_or_proof(size: int) -> None:
    leaves = sample_leaves(size)
    root = merkle_root(leaves)
    for index in range(size):
        proof = inclusion_proof(leaves, index)
        other = (index + 1) % size
        assert not verify_inclusion(leaves[other], index, size, proof, root)
        assert not verify_inclusion(leaves[index], other, size, proof, root)
        # (A wrong tree_size is not always detectable from the path alone: leaf 0 of 5 has
        # the same path shape in a tree of 6. The root is what binds the size.)
        assert not verify_inclusion(leaves[index], index, 2 * size, proof, root)
        assert not verify_inclusion(leaves[index], index, size, proof, merkle_root(leaves[:-1]))
        assert not verify_inclusion(leaves[index], index, size, proof[:-1], root)
        assert not verify_inclusion(leaves[index], index, size, [*proof, root], root)
        flipped = bytes([proof[0][0] ^ 1]) + proof[0][1:]
        assert not verify_inclusion(leaves[index], index, size, [flipped, *proof[1:]], root)


def test_verify_inclusion_refuses_impossible_positions_and_odd_nodes() -> None:
    leaves = sample_leaves(4)
    root, proof = merkle_root(leaves), inclusion_proof(leaves, 0)
    assert verify_inclusion(leaves[0], 0, 4, proof, root)
    assert not verify_inclusion(leaves[0], -1, 4, proof, root)
    assert not verify_inclusion(leaves[0], 4, 4, proof, root)
    assert not verify_inclusion(leaves[0], False, 4, proof, root)
    assert not verify_inclusion(leaves[0], 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(leaves[0], 0, 4, [node[:31] for node in proof], root)


def test_inclusion_proof_rejects_an_index_outside_the_tree() -> None:
    with pytest.raises(IndexError):
        inclusion_proof(sample_leaves(3), 3)
    with pytest.raises(IndexError):
        inclusion_proof([], 0)


@given(st.lists(st.binary(max_size=40), max_size=70))
def test_streaming_root_equals_the_recursive_definition(leaves: list[bytes]) -> None:
    assert merkle_root(iter(leaves)) == reference_root(leaves)


@given(st.lists(st.binary(max_size=8), max_size=40))
def test_accumulator_root_is_right_after_every_leaf(leaves: list[bytes]) -> None:
    accumulator = MerkleAccumulator()
    for count, leaf in enumerate(leaves, start=1):
        accumulator.add(leaf)
        assert accumulator.size == count
        assert accumulator.root() == reference_root(leaves[:count])


def test_streaming_memory_does_not_grow_with_the_leaf_count() -> None:
    def peak_bytes(n: int) -> int:
        tracemalloc.start()
        try:
            merkle_root(i.to_bytes(48, "big") for i in range(n))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # tracemalloc counts every thread of the process: a thread another test of this xdist worker
    # left running (a pool's, a server's) once allocated 250 kB during one reading. The least of
    # three readings is the merkle code's own.
    small, large = min(peak_bytes(1_000) for _ in range(3)), min(peak_bytes(100_000) for _ in range(3))
    assert large < small + 16_384, (small, large)  # a list of 100,000 leaves alone is > 5 MB


def test_head_leaf_is_the_id_bytes_then_the_link_hash() -> None:
    entity_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    link_hash = hashlib.sha256(b"link").digest()
    leaf = head_leaf(entity_id, link_hash)
    assert leaf == bytes.fromhex("12345678123456781234567812345678") + link_hash
    assert len(leaf) == 48
    with pytest.raises(ValueError):
        head_leaf(entity_id, link_hash[:31])
    with pytest.raises(ValueError):
        head_leaf(entity_id, link_hash.hex())  # type: ignore[arg-type]
