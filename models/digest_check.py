"""What a new ledger digest attests, checked before it is signed.

A stored digest is the base every later incremental audit trusts: the versions up to each
of its leaves are not checked again. So a digest must not take a head as its row names it
unchecked, or a version forged (or a head rolled back) before the hourly digest would be
trusted from then on and seen only by the next full audit.

A digest holds each live entity's head as a leaf and each soft-deleted one's as a tombstone
(migration 0018). :func:`check_heads` compares both with those of the newest stored digest
that still has its leaves and can be trusted (:func:`models.digest_base.trusted_base`), in the transaction
that stores the new one, over the rows as written, so nothing committed meanwhile escapes:

- a leaf or tombstone that is new or moved: the versions after the trusted leaf or
  tombstone (all of them, from the genesis, when there is neither) re-hash and link on from
  it up to the new head, every one of their signatures verifies (with no trusted digest,
  the head's, as a full audit checks), and none was signed by a sealed retired key after
  its seal, and the entity's row holds the head version's governed fields
  (:func:`_rows_off_their_heads`). A tombstone's head must record the deletion, a leaf's must not; and an entity
  the trusted digest keeps a tombstone for is never live again (Plant has no undelete: an
  entity brought back by deleting its deletion version is held back);
- a trusted leaf or tombstone the new digest has neither of, and a row with no head that
  the trusted digest does not hold: held back.

A head that fails is not attested, and the digest is stored all the same (one damaged
chain must not stop every later digest): the entity is held at its trusted leaf or
tombstone (:func:`_held`), or, with none, at a placeholder that names no version (the
genesis link, version 0). Either way every later incremental audit examines and reports it,
and every later digest checks it again (a trusted leaf of version 0 is always checked).
Unchanged heads cost a join row each; the rest cost what an incremental audit of them
costs. With no trusted digest every chain is checked as a full audit checks it; a trusted
digest stored before migration 0018 keeps no tombstone, so every deleted entity it does
not hold is checked once from the genesis.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, text
from sqlalchemy.orm import Session, aliased

from models.audit_tables import LedgerDigest, LedgerDigestHead, LedgerDigestsV2Began, LedgerDigestTombstone
from models.chain import GENESIS_LINK, ChainFinding, records_a_deletion, versions_by_entity
from models.chain_verification import HEAD_MISMATCH, ROW_CONTENT_MISMATCH, head_drift, verify_versions
from models.seal_check import seal_findings
from models.db_statements import uuid_in
from models.entities import ENTITY_MODELS, EntityType, governed_content, load_entities
from models.ledger_digest import STORED_DIGEST_TYPE, keeps_tombstones
from models.signing import KeyRing

BATCH = 500


@dataclass(frozen=True)
class Target:
    """What to verify of one entity: from the trusted leaf or tombstone (``base``; version 0
    for none) to the head the new digest holds as a leaf or (``deleted``) a tombstone."""

    entity_id: uuid.UUID
    entity_type: str
    base: tuple[int, bytes]
    head: tuple[int, bytes] | None  # None: the new digest holds no head of it
    base_type: str | None = None  # the trusted leaf's or tombstone's type, when there is one
    deleted: bool = False  # the head is the new digest's tombstone: it must record the deletion
    base_deleted: bool = False  # the base is the trusted digest's tombstone


@dataclass(frozen=True)
class HeldBack:
    """A head the digest does not attest, why, and the leaf it holds instead."""

    entity_id: uuid.UUID
    entity_type: str
    problem: str
    leaf: tuple[str, int, bytes]
    tombstone: bool = False  # kept as a tombstone (its base was one, or its row is deleted with no head), else as a leaf

    def __str__(self) -> str:
        return f"{self.entity_type} {self.entity_id}: {self.problem}"


def planted() -> Any:
    """Whether a stored digest (a row of ``ledger_digests``) is a published digest planted as a
    stored one: ``GET /ledger/digest`` signs a v1 document over the heads as the rows name
    them, unchecked, and since migration 0018 (``ledger_digests_v2_began``, one guarded row)
    Plant stores v2 digests only, so a v1 one dated after that is never a base. With the row
    gone, no v1 digest is one."""
    began = select(LedgerDigestsV2Began.began_at).scalar_subquery()
    return and_(LedgerDigest.document["type"].astext.is_distinct_from(STORED_DIGEST_TYPE),
                or_(began.is_(None), LedgerDigest.as_of > began))


def tombstones_of(digest: LedgerDigest) -> int | None:
    """The digest id whose tombstone rows are ``digest``'s: its own, or None for a digest
    stored before migration 0018, which keeps none (rows written for it count for nothing)."""
    return digest.id if keeps_tombstones(digest.document) else None


def check_heads(session: Session, *, digest_id: int, trusted: LedgerDigest | None, keyring: KeyRing) -> list[HeldBack]:
    """Check the heads digest ``digest_id`` holds (its leaf and tombstone rows, not signed
    yet) against the ``trusted`` digest (or the genesis), and hold back those that fail:
    their rows are replaced by one at :attr:`HeldBack.leaf`. Returns what was held back."""
    held: list[HeldBack] = []
    trusted_id = trusted.id if trusted is not None else None
    tombstones_id = tombstones_of(trusted) if trusted is not None else None
    targets = (_moved(session, table, digest_id, trusted_id, tombstones_id) for table in (LedgerDigestHead, LedgerDigestTombstone))
    for batch in _batches(*targets, _gone(session, digest_id, trusted_id, tombstones_id)):
        held += _batch_held_back(session, batch, keyring, "heads" if trusted_id is None else "all")
    first: dict[uuid.UUID, HeldBack] = {}
    for h in held:  # one per entity
        first.setdefault(h.entity_id, h)
    held = list(first.values())
    if held:
        for table in (LedgerDigestHead, LedgerDigestTombstone):
            session.execute(delete(table).where(table.digest_id == digest_id, uuid_in(table.entity_id, (h.entity_id for h in held))))
        for table, tombstones in ((LedgerDigestHead, False), (LedgerDigestTombstone, True)):
            rows = [{"digest_id": digest_id, "entity_id": h.entity_id, "entity_type": h.leaf[0], "version": h.leaf[1],
                     "link_hash": h.leaf[2]} for h in held if h.tombstone is tombstones]
            if rows:
                session.execute(insert(table), rows)
    return held


def _moved(session: Session, table: type[LedgerDigestHead | LedgerDigestTombstone], digest_id: int,
           trusted_id: int | None, tombstones_id: int | None) -> Iterator[Target]:
    """The new digest's rows of ``table`` (its leaves, or its tombstones) that the trusted
    digest does not hold as they are, in the same table; each is checked from the trusted
    digest's leaf or tombstone of the entity, or from the genesis."""
    new, leaf, tomb = aliased(table), aliased(LedgerDigestHead), aliased(LedgerDigestTombstone)
    same = leaf if table is LedgerDigestHead else tomb
    query = select(new.entity_id, new.entity_type, new.version, new.link_hash, leaf.version, leaf.link_hash, leaf.entity_type,
                   tomb.version, tomb.link_hash, tomb.entity_type).outerjoin(
        leaf, and_(leaf.digest_id == trusted_id, leaf.entity_id == new.entity_id)).outerjoin(
        tomb, and_(tomb.digest_id == tombstones_id, tomb.entity_id == new.entity_id)
    )
    deleted = table is LedgerDigestTombstone
    differs = [same.link_hash.is_distinct_from(new.link_hash), same.entity_type.is_distinct_from(new.entity_type),
               same.version.is_distinct_from(new.version),  # a head renumbered (a version slipped in under it)
               same.version == 0, same.link_hash == GENESIS_LINK]  # a leaf naming no version vouches for nothing: checked every time
    if not deleted:
        differs.append(tomb.link_hash.is_not(None))  # a deleted entity live again: always
    query = query.where(new.digest_id == digest_id, or_(*differs))
    for entity_id, kind, version, link, *old in _joined(session, query):
        base_deleted = old[4] is not None  # the trusted tombstone, where the trusted digest keeps one
        old_version, old_link, old_kind = old[3:] if base_deleted else old[:3]
        base, base_type = _base(old_version, old_link, old_kind)
        yield Target(entity_id, kind, base, (version, bytes(link)), base_type, deleted, base_deleted)


def _gone(session: Session, digest_id: int, trusted_id: int | None, tombstones_id: int | None) -> Iterator[Target]:
    """What the new digest holds no head of: the trusted digest's leaves and tombstones whose
    entity it neither holds nor keeps a tombstone for, and the rows with no head that the
    trusted digest does not hold either (with none, every such row). No incremental audit
    would read them otherwise."""
    def kept_by(table: Any, digest: int | None, entity_id: Any) -> Any:
        row = aliased(table)
        return select(row.entity_id).where(row.digest_id == digest, row.entity_id == entity_id).exists()

    for table, trusted_rows in ((LedgerDigestHead, trusted_id), (LedgerDigestTombstone, tombstones_id)):
        if trusted_rows is None:
            continue
        old = aliased(table)
        query = select(old.entity_id, old.entity_type, old.version, old.link_hash).where(
            old.digest_id == trusted_rows, ~kept_by(LedgerDigestHead, digest_id, old.entity_id),
            ~kept_by(LedgerDigestTombstone, digest_id, old.entity_id))
        for entity_id, kind, version, link in _joined(session, query):
            base, base_type = _base(version, link, kind)
            yield Target(entity_id, kind, base, None, base_type, base_deleted=table is LedgerDigestTombstone)
    for entity_type, model in ENTITY_MODELS.items():
        query = select(model.id, model.deleted_at.is_not(None)).where(
            model.head_link_hash.is_(None), ~kept_by(LedgerDigestHead, trusted_id, model.id),
            ~kept_by(LedgerDigestTombstone, tombstones_id, model.id)).order_by(model.id)
        for entity_id, deleted in session.execute(query.execution_options(yield_per=BATCH)):
            yield Target(entity_id, entity_type.value, (0, GENESIS_LINK), None, deleted=deleted)


def _joined(session: Session, query: Any) -> Any:
    """The rows of ``query``, which joins one digest's rows to another's, planned without
    nested loops. PostgreSQL takes a digest id newer than its statistics for one of a few
    rows, and a nested loop over two digests' leaves then compares every leaf of one with
    every leaf of the other: 1 s for 4,500 leaves, hours for 200,000. A server-side cursor
    is planned when it is declared, so the setting is put back, as it was, before the rows
    are read (the versions read between batches keep their index plans)."""
    previous = session.scalar(text("SELECT current_setting('enable_nestloop')"))
    session.execute(text("SET LOCAL enable_nestloop = off"))
    rows = session.execute(query.execution_options(yield_per=BATCH))  # if it fails, the transaction is over anyway
    session.execute(text("SELECT set_config('enable_nestloop', :previous, true)"), {"previous": previous})
    return rows


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


def _batch_held_back(session: Session, targets: list[Target], keyring: KeyRing, signatures: str) -> list[HeldBack]:
    versions = versions_by_entity(session, [t.entity_id for t in targets])
    targets = [_resolved(t, versions.get(t.entity_id, []), keyring) for t in targets]
    held, checked = [], []
    for target in targets:
        rows = versions.get(target.entity_id, [])
        problem, chain = _problem(target, rows, keyring, signatures)
        if problem is not None:
            held.append(_held(target, problem, rows))
        else:
            checked.append((SimpleNamespace(id=target.entity_id), chain))
    by_id = {t.entity_id: t for t in targets}
    for entity_id, finding in seal_findings(session, checked, keyring).items():
        target = by_id[entity_id]
        held.append(_held(target, f"{finding.code} at version {finding.version}", versions.get(entity_id, [])))
    for target, finding in _rows_off_their_heads(session, [by_id[entity.id] for entity, _ in checked], keyring):
        held.append(_held(target, f"its row is not its head version: {finding.code} at version {finding.version}",
                          versions.get(target.entity_id, [])))
    return held


def _rows_off_their_heads(session: Session, targets: list[Target], keyring: KeyRing) -> list[tuple[Target, Any]]:
    """Each target whose entity row's governed fields are not its head version's
    (``row-content-mismatch`` of :func:`models.chain_verification.head_drift`: edited through
    SQL without a new version), with that finding. An incremental audit does not examine an
    entity whose row names the digest's head, so a row edited after a signed change was seen
    by incremental audits only until the next digest attested that head. Its ``version``
    column is judged too (``head-mismatch``, as a full audit says): the leaf takes its
    chain's number, whatever the row says, so a row whose column alone was edited after a
    signed change was attested, and no incremental audit examined it again. A chain grown
    behind the row, a row gone or one of another type are the incremental audit's to find."""
    by_type: dict[str, dict[uuid.UUID, Target]] = {}
    for target in targets:
        if target.head is not None and target.entity_type in _TYPES:
            by_type.setdefault(target.entity_type, {})[target.entity_id] = target
    found = []
    for kind, of_kind in by_type.items():
        entities = load_entities(session, EntityType(kind), list(of_kind))
        numbered = {entity.id: entity.version for entity in entities}
        for entity in entities:  # the content is judged against the head version, whatever the column says
            entity.version = of_kind[entity.id].head[0]
        drift = head_drift(session, [(entity, governed_content(entity)) for entity in entities], keyring)
        found += [(of_kind[entity_id], finding) for entity_id, finding in drift.items() if finding.code == ROW_CONTENT_MISMATCH]
        found += [(of_kind[entity_id], ChainFinding(HEAD_MISMATCH, of_kind[entity_id].head[0],
                                                    f"its row's version column says {version}"))
                  for entity_id, version in numbered.items()
                  if version != of_kind[entity_id].head[0] and getattr(drift.get(entity_id), "code", None) != ROW_CONTENT_MISMATCH]
    return found


_TYPES = frozenset(entity_type.value for entity_type in EntityType)


def _resolved(target: Target, rows: list[Any], keyring: KeyRing) -> Target:
    """``target`` with a trusted base of version 0 and a real link (a link its chain had lost
    at its trusted version) put back at the version that carries that link now, when the
    versions up to it re-hash and re-link from the genesis to exactly that link: each link
    binds its version's number, content and predecessor, so only the genuine versions do
    (a renumbered or slipped-in one does not). A repaired chain is then checked from there,
    not held for good; anything else stays a base that names no version."""
    kind, (version, link) = target.base_type, target.base
    if kind is None or version:
        return target
    carrier = _carrying(rows, kind, link)
    prefix = [row for row in rows if row.version <= carrier]
    if not carrier or len(prefix) != carrier or verify_versions(prefix, keyring=keyring, head_link=link, signatures="heads")[1]:
        return target
    return replace(target, base=(carrier, link))


def _carrying(rows: list[Any], kind: str, link: bytes) -> int:
    """The number of the version of type ``kind`` that carries ``link``; 0 when none does."""
    return next((row.version for row in rows if bytes(row.link_hash) == link and row.entity_type == kind), 0)


def _held(target: Target, problem: str, rows: list[Any]) -> HeldBack:
    """The row a head that failed is held at: its trusted leaf or tombstone (at its trusted
    version, or at 0 where its chain no longer carries its link at that version: gone, or
    renumbered), or with none a placeholder that names no version (the genesis link,
    version 0), never the head that failed. A leaf is examined by every later incremental
    audit, live or deleted (one of version 0 from its genesis), and checked again by every
    later digest. A trusted tombstone stays a tombstone: as a leaf, a deletion head would
    pass for a live one once the row named it live again (an unchanged leaf is not
    checked); every later digest checks the entity against it again, and every incremental
    audit examines the entity from it while its row is live or its head is not the
    tombstone's. A row marked deleted with no head is held as a placeholder tombstone."""
    if target.base_type is not None:
        kind, link = target.base_type, target.base[1]
        version = _carrying(rows, kind, link)
        if version != target.base[0]:  # the link gone, or renumbered (a version slipped in beneath it): it names no version
            version = 0
        return HeldBack(target.entity_id, target.entity_type, problem, (kind, version, link), tombstone=target.base_deleted)
    # A row marked deleted with no head is held as a placeholder tombstone: were it made live later, it is live again.
    tombstone = target.base_deleted or (target.deleted and target.head is None)
    return HeldBack(target.entity_id, target.entity_type, problem, (target.entity_type, 0, GENESIS_LINK), tombstone=tombstone)


def _problem(target: Target, rows: list[Any], keyring: KeyRing, signatures: str) -> tuple[str | None, list[Any]]:
    """Why the head cannot be attested, or None with the versions it covers. ``signatures``:
    every one after the trusted leaf ("all"), as the incremental audit checks them, or with
    no trusted digest the head's alone ("heads"), which signs the whole chain link by link,
    as the full audit checks it."""
    if target.base_type is not None and target.base_type != target.entity_type:
        return f"its type changed from {target.base_type}", []
    if target.base_type is not None and not target.base[0]:
        return "the link its last trusted leaf holds is gone from its chain", []
    if target.head is None:
        return "neither live nor deleted with a head", []
    base_version, base_link = target.base
    if target.base_deleted and not target.deleted:  # Plant never brings a deleted entity back
        return f"it is live again after its deletion at version {base_version}, which the last trusted digest holds", []
    version, link = target.head
    if not version or link == GENESIS_LINK:  # no real link is the genesis link: a version carrying it is forged
        return "its head names no version of its chain", []
    if version < base_version or (version == base_version and link != base_link):
        return f"its head went back from version {base_version} to {version}", []
    chain = [row for row in rows if row.version <= version]
    if len(chain) < base_version or (base_version and bytes(chain[base_version - 1].link_hash) != base_link):
        return f"version {base_version}, which the last trusted digest holds, is gone from its chain", []
    tail = chain[base_version:]
    if version != base_version:  # else its head is the trusted one (kept as the other kind of row)
        if not tail or bytes(tail[-1].link_hash) != link:
            return f"version {version} is not the one its head names", []
        _, findings = verify_versions(tail, keyring=keyring, head_link=link, signatures=signatures,
                                      after=(base_version, base_link))
        if findings:
            return f"{findings[0].code} at version {findings[0].version}", []
    deletion = records_a_deletion(bytes(chain[version - 1].content))
    if target.deleted and not deletion:
        return f"its row is marked deleted but version {version} does not record a deletion", []
    if not target.deleted and deletion:
        return f"its row is live but version {version} records its deletion", []
    return None, tail
