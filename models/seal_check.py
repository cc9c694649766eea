"""Versions signed by a sealed retired key after its seal, found against the seal's digest.

A key seal (:mod:`models.key_seals`) names a ledger digest, signed by the retired key's
successor, and the root of its leaves; a version the sealed key signed is valid only if
that digest holds its entity at that version or a later one. The digest's leaf rows are
trusted only as checked against the root the seal file names, once per process.
"""

from __future__ import annotations

import bisect
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.chain import ChainFinding, EntityVersion
from models.db_statements import binary_row, bytes_in, uuid_in
from models.merkle import HASH_SIZE, merkle_root
from models.signing import KeyRing, KeySeal

SEALED_CODE = "signed-after-seal"


def seal_findings(session: Session, chains: Iterable[tuple[Any, Sequence[Any]]], keyring: KeyRing) -> dict[uuid.UUID, ChainFinding]:
    """For each (entity, its version rows) given: the first version signed by a sealed
    retired key after its seal, if any (see :mod:`models.key_seals`).

    Such a version is valid only if the seal's digest holds the entity at that version or
    a later one; the digest was signed by the key's successor after every process had
    switched, so anything the old key signed later was signed by someone holding a key
    Plant retired. The version a leaf holds is the chain's own version of the leaf's
    link, never the number stored beside it. An entity soft-deleted before the seal is in
    no digest: the seal file lists its head link instead. An entity in neither (created
    after the seal) is held to nothing, so all it got from a sealed key is reported. The
    digest's leaves are taken only as checked against the root the seal file names
    (:func:`sealed_leaves`, once per process); leaves that fail it hold nothing. One query
    for all of them once the leaves are checked, and none when no retired key is sealed.
    """
    if not keyring.sealed:
        return {}
    suspects: dict[uuid.UUID, list[tuple[Any, KeySeal]]] = {}
    for entity, rows in chains:
        signed = [(row, seal) for row in rows if (seal := keyring.seal(row.kid)) is not None]
        if signed:
            suspects[entity.id] = signed
    if not suspects:
        return {}
    seals = {seal.kid: seal for signed in suspects.values() for _, seal in signed}
    held, unchecked = _held(session, seals.values(), suspects)
    findings: dict[uuid.UUID, ChainFinding] = {}
    for entity_id, signed in suspects.items():
        for row, seal in signed:
            version = held.get((seal.digest_id, entity_id))
            if version is None or row.version > version:
                holds = ("does not hold this entity's chain" if version is None else f"holds version {version}") + (
                    "; its leaves no longer hash to the root the seal names" if seal.digest_id in unchecked else "")
                findings[entity_id] = ChainFinding(SEALED_CODE, row.version, (
                    f"signed by retired key {row.kid} after its seal (digest {seal.digest_id} of {seal.as_of} {holds})"))
                break
    return findings


LEAF_SIZE = 16 + HASH_SIZE  # a ledger leaf: the entity id's 16 bytes, then its head link (models.merkle.head_leaf)
# One seal digest's leaves as one value, in entity-id order (the digest's leaf order); a
# missing link leaves the whole a length no leaf count gives (links of other lengths are
# caught by the root).
_SEALED_LEAVES_SQL = ("SELECT count(*), string_agg(uuid_send(entity_id) || link_hash, ''::bytea ORDER BY entity_id) "
                      "FROM {table} WHERE digest_id = %s")
SEALED_LEAVES_RECHECK_SECONDS = 60.0  # how long a failed check stands before the rows are read again
# Per (seal digest, root): its checked leaves, kept for the process's life (one entry per
# sealing the process has needed: its keyring's seals, and any found since, which are kept too), or the monotonic
# time until which a failed check stands.
_sealed_leaves: dict[tuple[int, str, str | None], SealedLeaves | float] = {}
_sealed_leaves_lock = threading.Lock()  # one reader at a time: API threads share the process's


@dataclass(frozen=True)
class SealedLeaves:
    """A seal digest's leaves as checked against the root its seal file names."""

    leaves: bytes  # LEAF_SIZE bytes each, in entity-id order
    # The digest's tombstones (soft-deleted entities' heads), for a seal that names their root.
    tombstones: SealedLeaves | None = None

    def __len__(self) -> int:
        return len(self.leaves) // LEAF_SIZE

    def __getitem__(self, index: int) -> bytes:  # the entity id of leaf ``index``, for bisect
        return self.leaves[index * LEAF_SIZE : index * LEAF_SIZE + 16]

    def link(self, entity_id: uuid.UUID) -> bytes | None:
        """The head link the digest held for ``entity_id``, or None when it held none."""
        key = entity_id.bytes
        index = bisect.bisect_left(self, key)
        if index == len(self) or self[index] != key:
            return None
        return self.leaves[index * LEAF_SIZE + 16 : (index + 1) * LEAF_SIZE]

    def held(self, entity_id: uuid.UUID) -> bytes | None:
        """The head link the seal holds for ``entity_id``: its leaf's, or its tombstone's."""
        return self.link(entity_id) or (self.tombstones.link(entity_id) if self.tombstones is not None else None)


def sealed_leaves(session: Session, seal: KeySeal) -> SealedLeaves | None:
    """The leaves of ``seal``'s digest (and its tombstones, where the seal file names their
    root), or None when its leaf rows (or tombstone rows) do not hash to the root the seal
    file names (a row edited, added or removed through SQL): then they hold nothing.

    The seal file, kept beside the retired key, is the anchor; the leaf rows sit in a table
    that refuses UPDATE, and INSERT and DELETE of a seal's rows (migration 0017), but whose owner could
    lift that, say to name a version a leaked copy of the key signed after the seal. So they
    are read whole and checked against the seal's root once per process (O(leaves): 48 bytes
    a leaf are kept, per sealing the process needs), and never read again: an edit made later
    cannot reach a process that checked them before it, and a row rewritten unchanged
    (pg_repack, a dump and restore) changes nothing. Threads needing the same leaves wait for
    one read. A failed check stands for ``SEALED_LEAVES_RECHECK_SECONDS``, then the rows are
    read again, in case they were put back from a backup.
    """
    key = (seal.digest_id, seal.heads_root, seal.tombstones_root)
    if isinstance(kept := _sealed_leaves.get(key), SealedLeaves):
        return kept
    with _sealed_leaves_lock:
        kept = _sealed_leaves.get(key)
        if isinstance(kept, SealedLeaves):
            return kept
        if kept is not None and time.monotonic() < kept:
            return None
        leaves = _checked_rows(session, "ledger_digest_heads", seal.digest_id, seal.heads_root)
        tombstones = b"" if seal.tombstones_root is None else _checked_rows(
            session, "ledger_digest_tombstones", seal.digest_id, seal.tombstones_root)
        if leaves is not None and tombstones is not None:
            _sealed_leaves[key] = SealedLeaves(leaves, SealedLeaves(tombstones))
            return _sealed_leaves[key]
        _sealed_leaves[key] = time.monotonic() + SEALED_LEAVES_RECHECK_SECONDS
        return None


def _checked_rows(session: Session, table: str, digest_id: int, root: str) -> bytes | None:
    """A digest's leaf (or tombstone) rows in ``table``, LEAF_SIZE bytes each in entity-id
    order, if they hash to ``root``; else None."""
    count, leaves = binary_row(session, _SEALED_LEAVES_SQL.replace("{table}", table), [digest_id])
    leaves = bytes(leaves or b"")
    if len(leaves) == count * LEAF_SIZE and merkle_root(
            leaves[start : start + LEAF_SIZE] for start in range(0, len(leaves), LEAF_SIZE)).hex() == root:
        return leaves
    return None


def _held(session: Session, seals: Iterable[KeySeal], entity_ids: Iterable[uuid.UUID]) -> tuple[dict[tuple[int, uuid.UUID], int], set[int]]:
    """((seal digest, entity) -> the chain version of the head link the seal holds for the
    entity, the seal digests whose leaves failed their check). A seal holds an entity by its
    digest's leaf (:func:`sealed_leaves`), or, for one soft-deleted before the seal, by the
    digest's tombstone, whose root the seal file names (a seal written before it did lists
    their head links itself, parsed once per process: ``KeySeal.deleted_heads``). The version is the chain's own version of that link, never
    the number stored beside a leaf. One query, and none when no seal holds one of ``entity_ids``."""
    entity_ids = list(entity_ids)
    listed: list[tuple[int, uuid.UUID, bytes]] = []
    unchecked: set[int] = set()
    for seal in seals:
        leaves = sealed_leaves(session, seal)
        if leaves is None:
            unchecked.add(seal.digest_id)
        for entity_id in entity_ids:
            link = seal.deleted_heads.get(entity_id) or (leaves.held(entity_id) if leaves is not None else None)
            if link is not None:
                listed.append((seal.digest_id, entity_id, link))
    if not listed:
        return {}, unchecked
    versions = {(row.entity_id, bytes(row.link_hash)): row.version for row in session.execute(
        select(EntityVersion.entity_id, EntityVersion.link_hash, EntityVersion.version).where(
            uuid_in(EntityVersion.entity_id, {entity_id for _, entity_id, _ in listed}),
            bytes_in(EntityVersion.link_hash, {link for _, _, link in listed})))}
    return {(digest_id, entity_id): versions[entity_id, link]
            for digest_id, entity_id, link in listed if (entity_id, link) in versions}, unchecked
