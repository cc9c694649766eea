"""Incremental audit: verify only what changed since the latest stored ledger digest.

The digest's leaves (kept in ``ledger_digest_heads``) are trusted heads. An entity whose
head is unchanged needs no work. For each changed or new entity, the versions after its
digest head are verified to continue from that head (hashes, links, every signature),
the row against its new head, and the rules on its current state. Leaves whose head is
no longer in the chain (rolled back, rewritten) or whose entity is gone are reported.
The verification is proportional to what changed. Finding what changed compares every live
head with its leaf (one join per entity type); the leaves whose entity is gone are looked
for only when the live entities with a leaf fall short of the digest's leaves.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, null, or_, select, union_all
from sqlalchemy.orm import Session

from models.audit import BatchResult, FindingRow, load_entities, rule_findings, suspects_rechecked, versions_by_entity
from models.audit_tables import LedgerDigestHead
from models.chain import GENESIS_LINK, ChainFinding, verify_versions
from models.constitution import append_only_enforced
from models.entities import ENTITY_MODELS, EntityType, governed_content
from models.canonical import matches_canonical
from models.errors import NotFound
from models.ledger import compare_heads, latest_digest
from models.signing import KeyRing

BATCH = 500


@dataclass
class IncrementalResult:
    digest_id: int
    findings: list[FindingRow] = field(default_factory=list)
    entities: int = 0
    versions_verified: int = 0


def audit_since_latest_digest(session: Session, *, keyring: KeyRing) -> IncrementalResult:
    digest = latest_digest(session)
    if digest is None:
        raise NotFound("no ledger digest is stored yet; an incremental audit needs one")
    result = IncrementalResult(digest.id)
    append_only = append_only_enforced(session)
    live_with_leaf = 0
    for entity_type in EntityType:
        changed, with_leaf = _changed_since(session, entity_type, digest.id)
        live_with_leaf += with_leaf
        for start in range(0, len(changed), BATCH):
            _audit_changed(session, entity_type, changed[start : start + BATCH], keyring, append_only, result)
    # A live entity has at most one leaf, so when every leaf has one, none vanished: the
    # anti-join that names vanished leaves (a scan of every leaf) runs only when one did.
    if _leaf_count(session, digest.id) != live_with_leaf:
        result.findings += _vanished(session, digest.id)
    return result


def _changed_since(session: Session, entity_type: EntityType, digest_id: int) -> tuple[list[tuple[uuid.UUID, int, bytes]], int]:
    """(id, base version, base link) of each live entity whose head differs from the
    digest's, and how many live entities have a leaf; one statement, so one snapshot."""
    model = ENTITY_MODELS[entity_type]
    head = LedgerDigestHead
    changed = (
        select(model.id, head.version, head.link_hash, null().label("live"))
        .outerjoin(head, and_(head.digest_id == digest_id, head.entity_id == model.id))
        .where(model.deleted_at.is_(None), or_(head.link_hash.is_(None), head.link_hash != model.head_link_hash))
    )
    live = select(null(), null(), null(), func.count()).select_from(model).where(model.deleted_at.is_(None))
    rows = session.execute(union_all(changed, live)).all()
    live_count = next(row[3] for row in rows if row[0] is None)
    rows = sorted((row for row in rows if row[0] is not None), key=lambda row: row[0])
    new = sum(1 for row in rows if row[2] is None)
    return [(r[0], r[1] or 0, bytes(r[2]) if r[2] is not None else GENESIS_LINK) for r in rows], live_count - new


def _leaf_count(session: Session, digest_id: int) -> int:
    return session.scalar(select(func.count()).select_from(LedgerDigestHead).where(LedgerDigestHead.digest_id == digest_id))


def _audit_changed(session: Session, entity_type: EntityType, changed: list, keyring: KeyRing, append_only: bool,
                   result: IncrementalResult) -> None:
    base = {entity_id: (version, link) for entity_id, version, link in changed}
    rolled: list[tuple[uuid.UUID, int | None, bytes]] = []

    def check(entities: list) -> BatchResult:  # suspects had findings, so none of them is in rolled yet
        return _check_changed(session, entities, base, keyring, append_only, rolled)

    entities = load_entities(session, entity_type, list(base))
    # Rows and versions are read by two statements: suspects are checked again, locked.
    batch = suspects_rechecked(session, check(entities), entities, check) if entities else BatchResult()
    result.findings += batch.findings
    result.entities += batch.entities
    result.versions_verified += batch.versions_verified
    result.findings += [FindingRow(h.entity_type, h.entity_id, h.finding.version, h.finding.code, h.finding.detail)
                        for h in compare_heads(session, rolled)]


def _check_changed(session: Session, entities: list, base: dict, keyring: KeyRing, append_only: bool,
                   rolled: list) -> BatchResult:
    """Each entity's versions after its digest head; an entity whose digest head is gone
    from its chain goes to ``rolled`` instead."""
    batch = BatchResult()
    versions = versions_by_entity(session, [entity.id for entity in entities])
    kind = entities[0].entity_type_value.value if entities else ""
    for entity in entities:
        after = base[entity.id]
        all_rows = versions.get(entity.id, [])
        rows = [r for r in all_rows if r.version > after[0]]
        if after[0] and not any(bytes(r.link_hash) == after[1] for r in all_rows):
            rolled.append((entity.id, after[0], after[1]))  # the trusted head is gone
            continue
        content = governed_content(entity)
        _, findings = verify_versions(rows, keyring=keyring, head_link=_bytes(entity.head_link_hash), after=after)
        findings += _head_check(entity, rows, content)
        batch.findings += [FindingRow(kind, entity.id, f.version, f.code, f.detail) for f in findings]
        batch.findings += rule_findings(entity, content, all_rows, append_only, None)
        batch.entities += 1
        batch.versions_verified += len(rows)
    return batch


def _head_check(entity: Any, rows: list, content: dict) -> list[ChainFinding]:
    if not rows:
        return [ChainFinding("head-mismatch", entity.version, "the head changed but no version follows the digest's")]
    last = rows[-1]
    if _bytes(entity.head_link_hash) != bytes(last.link_hash) or entity.version != last.version:
        return [ChainFinding("head-mismatch", last.version, "entity head does not point at its last version")]
    if not matches_canonical(content, bytes(last.content)):
        return [ChainFinding("row-content-mismatch", last.version, "entity row differs from its head version")]
    return []


def _vanished(session: Session, digest_id: int) -> list[FindingRow]:
    """Leaves of the digest whose entity no longer exists (or was soft-deleted): an anti-join."""
    findings = []
    for entity_type, model in ENTITY_MODELS.items():
        alive = select(model.id).where(model.id == LedgerDigestHead.entity_id, model.deleted_at.is_(None))
        gone = session.execute(
            select(LedgerDigestHead.entity_id, LedgerDigestHead.version).where(
                LedgerDigestHead.digest_id == digest_id, LedgerDigestHead.entity_type == entity_type.value,
                ~alive.exists())
        ).all()
        findings += [FindingRow(entity_type.value, entity_id, version, "entity-deleted", "in the digest, gone from the registry")
                     for entity_id, version in gone]
    return findings


def _bytes(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None
