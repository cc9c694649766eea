"""Reading stored ledger digests, and comparing a digest with the chains.

``latest_digest`` and ``stored_leaves`` read what ``store_digest`` kept. ``compare_heads``
names each digest leaf whose entity's head rolled back, vanished or was rewritten since,
for any digest's leaves; a digest that brings only its root is checked by recomputing the
root of the heads as of its time (``root_as_of``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass

from sqlalchemy import desc, literal, select, text, union_all
from sqlalchemy.orm import Session

from models.audit_tables import LedgerDigest, LedgerDigestHead
from models.chain import ChainFinding, EntityVersion, records_a_deletion
from models.db_statements import bytes_in, uuid_in
from models.entities import ENTITY_MODELS
from models.ledger import HEAD_BATCH, HeadRecord, current_heads
from models.merkle import HASH_SIZE, MerkleAccumulator, head_leaf


def latest_digest(session: Session) -> LedgerDigest | None:
    return session.scalars(select(LedgerDigest).order_by(desc(LedgerDigest.as_of), desc(LedgerDigest.id)).limit(1)).first()


def stored_leaves(session: Session, digest_id: int, entity_ids: list[uuid.UUID] | None = None) -> list[tuple[uuid.UUID, int | None, bytes]]:
    query = select(LedgerDigestHead.entity_id, LedgerDigestHead.version, LedgerDigestHead.link_hash).where(
        LedgerDigestHead.digest_id == digest_id
    )
    if entity_ids is not None:
        query = query.where(uuid_in(LedgerDigestHead.entity_id, entity_ids))
    return [(r[0], r[1], bytes(r[2])) for r in session.execute(query.order_by(LedgerDigestHead.entity_id))]


@dataclass(frozen=True)
class HeadFinding:
    entity_id: uuid.UUID
    entity_type: str | None
    finding: ChainFinding


def compare_heads(session: Session, leaves: list[tuple[uuid.UUID, int | None, bytes]]) -> list[HeadFinding]:
    """Each digest leaf whose head is no longer in its entity's chain, classified.

    A leaf names its entity by id only; the version row holding its head also names the
    entity's type, and only a live row of that type answers for the leaf (ids are unique
    per table, so a row of another type given the id and head of a deleted one does not).
    A live row whose head was set to NULL has no head to compare, yet is not deleted: its
    chain was rewritten."""
    findings: list[HeadFinding] = []
    for start in range(0, len(leaves), HEAD_BATCH):
        batch = leaves[start : start + HEAD_BATCH]
        ids = [entity_id for entity_id, _, _ in batch]
        now: dict[uuid.UUID, list[HeadRecord]] = {}
        for head in current_heads(session, ids):
            now.setdefault(head.entity_id, []).append(head)
        found = session.execute(
            select(EntityVersion.entity_id, EntityVersion.link_hash, EntityVersion.entity_type)
            .where(bytes_in(EntityVersion.link_hash, [l for _, _, l in batch]))
        )
        kind_of = {(entity_id, bytes(link)): kind for entity_id, link, kind in found}
        headless = _live_without_head(session, [i for i in ids if i not in now])
        for entity_id, version, link in batch:
            kind = kind_of.get((entity_id, link))
            heads = [h for h in now.get(entity_id, []) if kind is None or h.entity_type == kind]
            nulled = [t for t in headless.get(entity_id, ()) if kind is None or t == kind]
            finding = _classify(entity_id, version, kind, heads[0] if heads else None, nulled[0] if nulled else None)
            if finding is not None:
                findings.append(finding)
    return findings


def _live_without_head(session: Session, entity_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """The types of the live rows among ``entity_ids`` whose head is NULL (no statement when none is asked)."""
    if not entity_ids:
        return {}
    parts = [select(model.id, literal(entity_type.value)).where(
        uuid_in(model.id, entity_ids), model.deleted_at.is_(None), model.head_link_hash.is_(None))
        for entity_type, model in ENTITY_MODELS.items()]
    types: dict[uuid.UUID, list[str]] = {}
    for entity_id, entity_type in session.execute(union_all(*parts)):
        types.setdefault(entity_id, []).append(entity_type)
    return types


def _classify(entity_id: uuid.UUID, version: int | None, kind: str | None, head: HeadRecord | None,
              nulled: str | None = None) -> HeadFinding | None:
    """``kind`` is the type of the chain that still holds the leaf's head, None when none
    does; ``nulled`` the type of a live row of the entity whose head is NULL."""
    if head is None and nulled is not None:
        return HeadFinding(entity_id, nulled, ChainFinding(
            "chain-rewritten", version, "the digest's head is no longer in the chain, and the row's head is NULL"))
    if head is None:
        return HeadFinding(entity_id, kind, ChainFinding("entity-deleted", version, "in the digest, gone from the registry"))
    if kind is not None:
        return None  # the digest's head is still in the chain (later versions may follow)
    if version is not None and head.version < version:
        return HeadFinding(entity_id, head.entity_type, ChainFinding(
            "head-rolled-back", head.version, f"head is version {head.version}; the digest saw version {version}"))
    return HeadFinding(entity_id, head.entity_type, ChainFinding(
        "chain-rewritten", head.version, "the digest's head is no longer in the chain: history was rewritten"))


def root_as_of(session: Session, as_of: dt.datetime) -> tuple[int, bytes]:
    """Entity count and Merkle root of each chain's last version created at or before ``as_of``,
    leaving out the chains whose last version then was a deletion: a digest holds live
    entities only. Only contents that mention a ``"deleted_at":"`` string are parsed, in
    Python, so a tampered content that is not JSON cannot stop the audit (it reports that
    content under its own code)."""
    accumulator = MerkleAccumulator()
    for entity_id, link, maybe_deleted in session.execute(_HEADS_AS_OF.execution_options(yield_per=HEAD_BATCH), {"as_of": as_of}):
        if maybe_deleted is not None and records_a_deletion(bytes(maybe_deleted)):
            continue
        accumulator.add(_leaf_of_any(entity_id, bytes(link)))
    return accumulator.size, accumulator.root()


def _leaf_of_any(entity_id: uuid.UUID, link: bytes) -> bytes:
    """:func:`head_leaf`, or for a link that is not a hash (a row written outside Plant) a leaf
    no genuine root holds: the id, then the SHA-256 of the link (finding the link that gives
    a genuine head's hash would take a preimage). The root then differs, as it should, where
    refusing the link stopped the whole comparison."""
    if len(link) == HASH_SIZE:
        return head_leaf(entity_id, link)
    return entity_id.bytes + hashlib.sha256(b"plant.not-a-link\x00" + link).digest()


_HEADS_AS_OF = text("""
    SELECT entity_id, link_hash,
           CASE WHEN position('"deleted_at":"'::bytea IN content) > 0 THEN content END AS maybe_deleted
    FROM (SELECT DISTINCT ON (entity_id) entity_id, link_hash, content FROM entity_versions
          WHERE created_at <= :as_of ORDER BY entity_id, version DESC) AS last
    ORDER BY entity_id
""")
