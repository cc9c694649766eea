"""RFC 6962 Merkle tree hashes: the root over Plant's ledger heads and proofs of membership.

A leaf is hashed as SHA-256(0x00 || leaf) and an inner node as SHA-256(0x01 || left ||
right), so no leaf can pose as a node (RFC 6962 §2.1, second-preimage resistance). The
tree over n leaves splits at the largest power of two below n, which makes the root
commit to the leaf count; the empty tree's root is SHA-256 of nothing. Roots are computed
in one pass with a stack of at most log2(n) perfect subtrees, so a caller may stream
leaves from a database cursor in bounded memory. Inclusion proofs and their verification
follow RFC 9162 §2.1.3 (the RFC 6962 audit path, deepest sibling first). The ledger's
leaf for an entity is :func:`head_leaf`: the entity id's 16 bytes followed by the
32-byte hash of its head link, and the leaves are ordered by entity id.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 inner node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class MerkleAccumulator:
    """Builds an RFC 6962 root one leaf at a time, holding only O(log n) hashes.

    ``_peaks`` holds the roots of the perfect subtrees that make up the tree so far,
    largest first; their sizes are the set bits of ``size``, so adding a leaf merges
    one peak per trailing one bit of the old size, like a binary counter.
    """

    def __init__(self) -> None:
        self._peaks: list[bytes] = []
        self.size = 0

    def add(self, leaf: bytes) -> None:
        self.extend((leaf,))

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append ``leaves`` in order (the hot loop of :func:`merkle_root`)."""
        sha256 = hashlib.sha256
        self.extend_hashed(sha256(LEAF_PREFIX + leaf).digest() for leaf in leaves)

    def extend_hashed(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append leaves given as their leaf hashes (``SHA-256(0x00 || leaf)``), in order."""
        peaks, size, sha256 = self._peaks, self.size, hashlib.sha256
        for node in leaf_hashes:
            carry = size
            while carry & 1:
                node = sha256(NODE_PREFIX + peaks.pop() + node).digest()
                carry >>= 1
            peaks.append(node)
            size += 1
        self.size = size

    def root(self) -> bytes:
        """MTH of the leaves so far; the accumulator stays usable afterwards."""
        if not self._peaks:
            return EMPTY_ROOT
        # Folding from the right reproduces the split at the largest power of two below n.
        root = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            root = node_hash(peak, root)
        return root


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """MTH(D[n]) of RFC 6962 §2.1 over ``leaves`` (any iterable, consumed once)."""
    accumulator = MerkleAccumulator()
    accumulator.extend(leaves)
    return accumulator.root()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 6962 §2.1.1: sibling subtree roots, deepest first.

    Hashes every leaf once. Raises ``IndexError`` for an index outside the tree.
    """
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} is not in a tree of {len(leaves)} leaves")
    path: list[bytes] = []
    low, high = 0, len(leaves)
    while high - low > 1:
        split = low + _largest_power_of_two_below(high - low)
        if index < split:
            path.append(merkle_root(leaves[split:high]))
            high = split
        else:
            path.append(merkle_root(leaves[low:split]))
            low = split
    path.reverse()
    return path


def verify_inclusion(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``proof`` shows ``leaf`` at ``index`` of the tree of ``tree_size`` with ``root``.

    The RFC 9162 §2.1.3.2 algorithm; any malformed argument is simply False. Within one
    ``tree_size`` a proof verifies at its own index alone, but the same proof and root can
    verify at another index of another size (index 2 of 3 leaves is index 1 of 2, its left
    sibling an inner node): take ``tree_size`` from the signed document, as a ledger digest
    signs ``entity_count`` beside ``heads_root``, never from whoever hands in the proof.
    """
    if not _is_position(index, tree_size) or not all(_is_hash(node) for node in proof):
        return False
    computed = _root_from_path(leaf_hash(leaf), index, tree_size - 1, proof)
    return computed is not None and computed == root


def head_leaf(entity_id: uuid.UUID, link_hash: bytes) -> bytes:
    """The ledger leaf of one entity: its id's 16 bytes, then its head link's 32-byte hash."""
    if not _is_hash(link_hash):
        raise ValueError(f"a link hash is {HASH_SIZE} bytes, got {link_hash!r}")
    return entity_id.bytes + bytes(link_hash)


def _root_from_path(node: bytes, index: int, last: int, proof: Sequence[bytes]) -> bytes | None:
    """Climb from leaf hash ``node``; None when the proof is too long or too short."""
    for sibling in proof:
        if last == 0:
            return None
        if index & 1 or index == last:
            node = node_hash(sibling, node)
            # A right edge with no sibling at this level: skip the levels it spans.
            while not index & 1 and index != 0:
                index >>= 1
                last >>= 1
        else:
            node = node_hash(node, sibling)
        index >>= 1
        last >>= 1
    return node if last == 0 else None


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 6962 §2.1: the largest power of two strictly less than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_position(index: object, tree_size: object) -> bool:
    return (
        type(index) is int and type(tree_size) is int and 0 <= index < tree_size  # noqa: E721 - bool is no index
    )


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE
