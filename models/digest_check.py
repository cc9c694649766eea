"""What a new ledger digest attests, checked before it is signed.

A stored digest is the base every later incremental audit trusts: the versions up to each
of its leaves are not checked again. So a digest must not take a head as its row names it
unchecked, or a version forged (or a head rolled back) before the hourly digest would be
trusted from then on and seen only by the next full audit.

:func:`check_heads` compares the new digest's leaves with those of the newest stored
digest that still has its leaves and can be trusted (:func:`trusted_base`), in the
transaction that stores the new one, over the leaf rows as written, so nothing committed
meanwhile escapes:

- a leaf that is new or moved: the versions after the trusted leaf (all of them, from the
  genesis, when there is no trusted leaf) re-hash and link on from it up to the new head,
  every one of their signatures verifies (with no trusted digest, the head's, as a full
  audit checks), and none was signed by a sealed retired key after its seal;
- a leaf the trusted digest has and the new one lacks, and a soft-deleted entity created
  after the trusted digest (with none: every soft-deleted entity): its entity must have
  been deleted by a version of its own (the row's head records the deletion), checked the
  same way up to that head.

A head that fails is not attested, and the digest is stored all the same (one damaged
chain must not stop every later digest): the entity is held at its trusted leaf, or, with
none, at a placeholder that names no version (the genesis link, version 0). Either way
every later incremental audit examines and reports it, and every later digest checks it
again (a trusted leaf of version 0 is always checked).
Unchanged leaves cost a join row each; the rest cost what an incremental audit of them
costs. With no trusted digest every chain is checked as a full audit checks it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import and_, delete, desc, insert, select
from sqlalchemy.orm import Session, aliased

from models.audit_tables import LedgerDigest, LedgerDigestHead
from models.chain import GENESIS_LINK, EntityVersion, records_a_deletion, seal_findings, verify_versions, versions_by_entity
from models.db import uuid_in
from models.entities import ENTITY_MODELS
from models.ledger_digest import digest_problem
from models.signing import KeyRing

BATCH = 500
BASES_TRIED = 30  # stored digests looked at, newest first, for one that can be trusted


@dataclass(frozen=True)
class Target:
    """What to verify of one entity: from the trusted leaf (``base``; version 0 for none)
    to the head the new digest attests, or for an entity it does not hold, to the head of
    its deleted row."""

    entity_id: uuid.UUID
    entity_type: str
    base: tuple[int, bytes]
    head: tuple[int, bytes] | None  # None: a deleted entity, whose head is read from its row
    base_type: str | None = None  # the trusted leaf's type, when there is one


@dataclass(frozen=True)
class HeldBack:
    """A head the digest does not attest, why, and the leaf it holds instead."""

    entity_id: uuid.UUID
    entity_type: str
    problem: str
    leaf: tuple[str, int, bytes]

    def __str__(self) -> str:
        return f"{self.entity_type} {self.entity_id}: {self.problem}"


def trusted_base(session: Session, keyring: KeyRing, problem_of: Any) -> LedgerDigest | None:
    """The newest stored digest with leaf rows whose ``problem_of(session, digest,
    keyring)`` is None (:func:`models.ledger.stored_digest_problem`); None when there is
    none. Only digests whose signed document verifies count toward the :data:`BASES_TRIED`
    looked at, so rows made up through SQL cannot push a real one out of reach."""
    with_leaves = select(LedgerDigestHead.digest_id).where(LedgerDigestHead.digest_id == LedgerDigest.id).exists()
    candidates = session.scalars(select(LedgerDigest).where(with_leaves).order_by(desc(LedgerDigest.as_of), desc(LedgerDigest.id))
                                 .execution_options(yield_per=BATCH))
    tried = 0
    try:
        for digest in candidates:
            if digest_problem(digest.document, keyring) is not None:
                continue
            if problem_of(session, digest, keyring) is None:
                return digest
            tried += 1
            if tried == BASES_TRIED:
                break
        return None
    finally:
        candidates.close()


def check_heads(session: Session, *, digest_id: int, trusted: LedgerDigest | None, keyring: KeyRing) -> list[HeldBack]:
    """Check the heads digest ``digest_id`` holds (its leaf rows, not signed yet) against
    the ``trusted`` digest (or the genesis), and hold back those that fail: their leaf
    rows are replaced by :attr:`HeldBack.leaf`. Returns what was held back."""
    held: list[HeldBack] = []
    trusted_id = trusted.id if trusted is not None else None
    gone = _gone(session, digest_id, trusted_id, trusted.as_of if trusted is not None else None)
    for batch in _batches(_moved(session, digest_id, trusted_id), gone):
        held += _batch_held_back(session, batch, keyring, "heads" if trusted_id is None else "all")
    first: dict[uuid.UUID, HeldBack] = {}
    for h in held:  # one per entity: a delete committed during the check can bring one up twice
        first.setdefault(h.entity_id, h)
    held = list(first.values())
    if held:
        session.execute(delete(LedgerDigestHead).where(
            LedgerDigestHead.digest_id == digest_id, uuid_in(LedgerDigestHead.entity_id, (h.entity_id for h in held))))
        session.execute(insert(LedgerDigestHead), [
            {"digest_id": digest_id, "entity_id": h.entity_id, "entity_type": h.leaf[0], "version": h.leaf[1], "link_hash": h.leaf[2]}
            for h in held])
    return held


def _moved(session: Session, digest_id: int, trusted_id: int | None) -> Iterator[Target]:
    new, old = LedgerDigestHead, aliased(LedgerDigestHead)
    query = select(new.entity_id, new.entity_type, new.version, new.link_hash, old.version, old.link_hash, old.entity_type).outerjoin(
        old, and_(old.digest_id == trusted_id, old.entity_id == new.entity_id)
    ).where(new.digest_id == digest_id, old.link_hash.is_distinct_from(new.link_hash) | old.entity_type.is_distinct_from(new.entity_type)
            | (old.version == 0) | (old.link_hash == GENESIS_LINK))  # a leaf naming no version vouches for nothing: checked every time
    for entity_id, kind, version, link, old_version, old_link, old_kind in session.execute(query.execution_options(yield_per=BATCH)):
        base, base_type = _base(old_version, old_link, old_kind)
        yield Target(entity_id, kind, base, (version, bytes(link)), base_type)


def _gone(session: Session, digest_id: int, trusted_id: int | None, trusted_as_of: Any) -> Iterator[Target]:
    """The trusted digest's leaves the new one lacks, and the soft-deleted entities the
    trusted digest does not hold that were created after it; with no trusted digest, every
    soft-deleted entity. Each would otherwise be read by no incremental audit: none holds
    it, and none treats it as created since."""
    if trusted_id is not None:
        new, old = aliased(LedgerDigestHead), LedgerDigestHead
        held = select(new.entity_id).where(new.digest_id == digest_id, new.entity_id == old.entity_id).exists()
        query = select(old.entity_id, old.entity_type, old.version, old.link_hash).where(old.digest_id == trusted_id, ~held)
        for entity_id, kind, version, link in session.execute(query.execution_options(yield_per=BATCH)):
            base, base_type = _base(version, link, kind)
            yield Target(entity_id, kind, base, None, base_type)
    for entity_type, model in ENTITY_MODELS.items():
        now_held = aliased(LedgerDigestHead)  # live when the leaves were written, deleted since: checked there
        query = select(model.id).where(model.deleted_at.is_not(None), ~select(now_held.entity_id).where(
            now_held.digest_id == digest_id, now_held.entity_id == model.id).exists()).order_by(model.id)
        if trusted_id is not None:
            leaf = aliased(LedgerDigestHead)
            first = aliased(EntityVersion)
            query = query.where(
                ~select(leaf.entity_id).where(leaf.digest_id == trusted_id, leaf.entity_id == model.id).exists(),
                select(first.id).where(first.entity_id == model.id, first.version == 1, first.created_at > trusted_as_of).exists())
        for (entity_id,) in session.execute(query.execution_options(yield_per=BATCH)):
            yield Target(entity_id, entity_type.value, (0, GENESIS_LINK), None)


def _base(version: int | None, link: bytes | None, kind: str | None) -> tuple[tuple[int, bytes], str | None]:
    """A trusted leaf as the base to check from, and its type: none, or the placeholder,
    is the genesis. A leaf of version 0 with another link holds a link its chain lost (a
    trusted leaf whose version was deleted since): it stays a base the chain must still
    carry, so the rollback is held again, never read as a new entity."""
    if link is None or bytes(link) == GENESIS_LINK:
        return (0, GENESIS_LINK), None
    return (version or 0, bytes(link)), kind


def _batches(*sources: Iterator[Target]) -> Iterator[list[Target]]:
    batch: list[Target] = []
    for source in sources:
        for target in source:
            batch.append(target)
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _deleted_heads(session: Session, targets: list[Target]) -> dict[uuid.UUID, bytes]:
    """The head link of each target's row, where the row is marked deleted."""
    heads: dict[uuid.UUID, bytes] = {}
    for entity_type, model in ENTITY_MODELS.items():
        ids = [t.entity_id for t in targets if t.entity_type == entity_type.value]
        if ids:
            heads.update((entity_id, bytes(link)) for entity_id, link in session.execute(
                select(model.id, model.head_link_hash).where(uuid_in(model.id, ids), model.deleted_at.is_not(None),
                                                             model.head_link_hash.is_not(None))))
    return heads


def _batch_held_back(session: Session, targets: list[Target], keyring: KeyRing, signatures: str) -> list[HeldBack]:
    versions = versions_by_entity(session, [t.entity_id for t in targets])
    deleted = _deleted_heads(session, [t for t in targets if t.head is None])
    held, checked = [], []
    for target in targets:
        rows = versions.get(target.entity_id, [])
        problem, chain = _problem(target, rows, deleted, keyring, signatures)
        if problem is not None:
            held.append(_held(target, problem, rows))
        else:
            checked.append((SimpleNamespace(id=target.entity_id), chain))
    by_id = {t.entity_id: t for t in targets}
    for entity_id, finding in seal_findings(session, checked, keyring).items():
        target = by_id[entity_id]
        held.append(_held(target, f"{finding.code} at version {finding.version}", versions.get(entity_id, [])))
    return held


def _held(target: Target, problem: str, rows: list[Any]) -> HeldBack:
    """The leaf a head that failed is held at: its trusted leaf (at the version of the chain
    that carries its link, or 0 when none does, as in every leaf), or with none a
    placeholder that names no version (the genesis link, version 0), never the head that
    failed. Every later incremental audit examines an entity held at a leaf of version 0
    from its genesis, and every later digest checks it again, live or deleted."""
    if target.base_type is not None:
        kind, link = target.base_type, target.base[1]
        version = next((row.version for row in rows if bytes(row.link_hash) == link and row.entity_type == kind), 0)
        return HeldBack(target.entity_id, target.entity_type, problem, (kind, version, link))
    return HeldBack(target.entity_id, target.entity_type, problem, (target.entity_type, 0, GENESIS_LINK))


def _problem(target: Target, rows: list[Any], deleted: dict[uuid.UUID, bytes], keyring: KeyRing,
             signatures: str) -> tuple[str | None, list[Any]]:
    """Why the head cannot be attested, or None with the versions it covers. ``signatures``:
    every one after the trusted leaf ("all"), as the incremental audit checks them, or with
    no trusted digest the head's alone ("heads"), which signs the whole chain link by link,
    as the full audit checks it."""
    if target.base_type is not None and target.base_type != target.entity_type:
        return f"its type changed from {target.base_type}", []
    if target.base_type is not None and not target.base[0]:
        return "the link its last trusted leaf holds is gone from its chain", []
    if target.head is None:  # not held: it must have been deleted by a version of its own
        link = deleted.get(target.entity_id)
        if link is None:
            return "neither live nor deleted with a head", []
        version = next((row.version for row in rows if bytes(row.link_hash) == link), 0)
    else:
        version, link = target.head
    base_version, base_link = target.base
    if not version or link == GENESIS_LINK:  # no real link is the genesis link: a version carrying it is forged
        return "its head names no version of its chain", []
    if target.head is None and (version, link) == target.base:
        return "its row is marked deleted, and no version records the deletion", []
    if version < base_version or (version == base_version and link != base_link):
        return f"its head went back from version {base_version} to {version}", []
    chain = [row for row in rows if row.version <= version]
    if len(chain) < base_version or (base_version and bytes(chain[base_version - 1].link_hash) != base_link):
        return f"version {base_version}, which the last trusted digest holds, is gone from its chain", []
    tail = chain[base_version:]
    if not tail or bytes(tail[-1].link_hash) != link:
        return f"version {version} is not the one its head names", []
    _, findings = verify_versions(tail, keyring=keyring, head_link=link, signatures=signatures,
                                  after=(base_version, base_link))
    if findings:
        return f"{findings[0].code} at version {findings[0].version}", []
    if target.head is None and not records_a_deletion(bytes(tail[-1].content)):
        return f"its row is marked deleted but version {version} does not record a deletion", []
    if target.head is not None and records_a_deletion(bytes(tail[-1].content)):
        return f"its row is live but version {version} records its deletion", []
    return None, tail

