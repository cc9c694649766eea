"""What changed since a stored ledger digest, for the incremental audit (:mod:`models.incremental_audit`).

Which entities of a type to examine (their head is not the digest's, or their row's
deletion is not its tombstone), the seat partners whose rules read them, the ledger's
version count against the digest's leaf and tombstone versions, the chains grown behind
rows left at their leaves, how many leaf and tombstone rows the digest has now, and the
leaves whose entity is gone from its type's table. Each reads; nothing is written.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, case, func, null, or_, select, text, union_all
from sqlalchemy.orm import Session, aliased

from models.audit import FindingRow
from models.audit_tables import LedgerDigest, LedgerDigestHead, LedgerDigestTombstone
from models.canonical import strict_json_loads
from models.chain import GENESIS_LINK, EntityVersion
from models.db_statements import uuid_in
from models.digest_check import tombstones_of
from models.entities import ENTITY_MODELS, Agent, EntityType

Changed = list[tuple[uuid.UUID, int, bytes]]  # (entity id, leaf version or 0, leaf link or genesis)


def changed_since(session: Session, entity_type: EntityType, digest: LedgerDigest,
                   among: list[uuid.UUID] | None = None) -> tuple[Changed, int, list[uuid.UUID], list[tuple[uuid.UUID, int]]]:
    """(id, base version, base link) of each entity whose head is not the digest's (or of
    each one ``among`` these ids): live ones, deleted ones the digest held (deleted since,
    by a signed version or not), and deleted ones it has no head of (:func:`_unknown_to`);
    how many of the digest's leaves that accounts for (the live entities with a leaf, and
    the deleted ones with a leaf); the ids of the deleted ones; and (id, tombstone version)
    of the live ones the digest keeps a tombstone for. One statement, so one snapshot. An
    entity deleted before the digest is not in it, and not read."""
    digest_id, tombstones_id = digest.id, tombstones_of(digest)
    model = ENTITY_MODELS[entity_type]
    head, tomb = LedgerDigestHead, LedgerDigestTombstone
    # An entity the digest keeps a tombstone for (and no leaf) is examined from its deletion
    # when its row is live (Plant brings no deleted entity back) or names another head.
    changed = select(model.id, func.coalesce(head.version, tomb.version), func.coalesce(head.link_hash, tomb.link_hash),
                     case((model.deleted_at.is_not(None), 1), else_=0).label("deleted"), head.link_hash.is_not(None)).outerjoin(
        head, and_(head.digest_id == digest_id, head.entity_id == model.id, head.entity_type == entity_type.value)
    ).outerjoin(tomb, and_(tomb.digest_id == tombstones_id, tomb.entity_id == model.id, tomb.entity_type == entity_type.value,
                        head.link_hash.is_(None)))
    if among is None:
        changed = changed.where(or_(model.deleted_at.is_(None), head.link_hash.is_not(None), _tombstone_moved(model, tomb),
                                    _unknown_to(model, entity_type, digest)))  # IS DISTINCT FROM: a head set to NULL differs from its leaf too; a leaf of version 0 vouches for nothing
        # A deleted row with a leaf was live at the digest: examined even at its leaf's head
        # (which records no deletion, as no leaf's does), so a deletion its row alone states
        # is the row-content-mismatch the full audit reports, not a deletion.
        changed = changed.where(or_(head.link_hash.is_(None), head.link_hash.is_distinct_from(model.head_link_hash),
                                    head.version == 0, head.link_hash == GENESIS_LINK, model.deleted_at.is_not(None)))
    else:  # as asked: a deleted entity still at its tombstone whose chain grew behind it included
        changed = changed.where(uuid_in(model.id, among))
    live = select(null(), null(), null(), func.count(), null()).select_from(model).where(model.deleted_at.is_(None))
    rows = session.execute(union_all(changed, live)).all()
    live_count = next(row[3] for row in rows if row[0] is None)
    rows = sorted((row for row in rows if row[0] is not None), key=lambda row: row[0])
    new = sum(1 for row in rows if not row[4] and not row[3])
    deleted = [row[0] for row in rows if row[3]]
    with_leaf = live_count - new + sum(1 for row in rows if row[3] and row[4])
    changed_rows = [(r[0], r[1] or 0, bytes(r[2]) if r[2] is not None else GENESIS_LINK) for r in rows]
    live_again = [(r[0], r[1] or 0) for r in rows if not r[3] and not r[4] and r[2] is not None]
    return changed_rows, with_leaf, deleted, live_again


def seat_partners(session: Session, plan: dict[EntityType, Changed]) -> dict[EntityType, list[uuid.UUID]]:
    """Entities not in ``plan`` whose seat rules read an entity in it: the agents seated in a
    team, or under a job role, changed since the digest (AGENT-04 judges them on it: a team
    deleted or retired by a signed version, a role requiring another skill), and the teams
    the agents changed since sit in, or sat in at the digest (TEAM-03 and TEAM-01 count
    them: a team its last agent left has none). Three queries, none when no team, role or
    agent changed."""
    examined = {entity_type: {entity_id for entity_id, _, _ in changed} for entity_type, changed in plan.items()}
    teams, roles, agents = examined[EntityType.TEAM], examined[EntityType.JOB_ROLE], examined[EntityType.AGENT]
    partners: dict[EntityType, list[uuid.UUID]] = {}
    if teams or roles:
        members = session.scalars(select(Agent.id).where(Agent.team_id.is_not(None), or_(
            uuid_in(Agent.team_id, sorted(teams)), uuid_in(Agent.job_role_id, sorted(roles))))).all()
        partners[EntityType.AGENT] = sorted(set(members) - agents)
    if agents:
        seats = session.scalars(select(Agent.team_id).distinct().where(
            Agent.team_id.is_not(None), uuid_in(Agent.id, sorted(agents)))).all()
        left = _teams_at_leaves(session, [(entity_id, version) for entity_id, version, _ in plan[EntityType.AGENT] if version])
        partners[EntityType.TEAM] = sorted({*seats, *left} - teams)
    return {entity_type: ids for entity_type, ids in partners.items() if ids}


def _teams_at_leaves(session: Session, leaves: list[tuple[uuid.UUID, int]]) -> set[uuid.UUID]:
    """The teams the agents' leaf versions, (id, version), seat them in. A version that is no
    readable JSON, or names no team id, names none (its chain has its own finding)."""
    if not leaves:
        return set()
    found = session.scalars(_LEAF_CONTENTS, {"ids": [i for i, _ in leaves], "versions": [v for _, v in leaves]})
    teams = set()
    for content in found:
        try:
            teams.add(uuid.UUID(strict_json_loads(bytes(content)).get("team_id")))
        except (ValueError, AttributeError, TypeError):
            continue
    return teams


_LEAF_CONTENTS = text(
    "SELECT v.content FROM entity_versions v JOIN unnest(CAST(:ids AS uuid[]), CAST(:versions AS integer[])) AS leaf(id, version) "
    "ON v.entity_id = leaf.id AND v.version = leaf.version WHERE v.entity_type = 'agent'")


def _tombstone_moved(model: Any, tomb: Any) -> Any:
    """The entity's row is no longer at the digest's tombstone ``tomb`` (joined to it), or
    that names no version: its head moved after its deletion, or the tombstone was held."""
    return and_(tomb.link_hash.is_not(None), or_(tomb.link_hash.is_distinct_from(model.head_link_hash), tomb.version == 0))


def _unknown_to(model: Any, entity_type: EntityType, digest: LedgerDigest) -> Any:
    """A deleted entity the digest holds no leaf of has no tombstone in it either (migration
    0018), of its type (a row of another type under a tombstone's id is not its entity):
    deleted since, or created after the digest's leaves were written, whatever its stamp.
    Before 0018 a digest kept no tombstone: its first version was stamped after the
    digest's ``as_of`` (not the row's time; a version stamped before it and committed after
    the leaves were written is then missed)."""
    if tombstones_of(digest) is None:
        first = aliased(EntityVersion)  # the caller may read the versions table itself: no correlation to it
        return select(first.id).where(first.entity_id == model.id, first.version == 1, first.created_at > digest.as_of).exists()
    tomb = aliased(LedgerDigestTombstone)
    return ~select(tomb.entity_id).where(tomb.digest_id == digest.id, tomb.entity_id == model.id,
                                         tomb.entity_type == entity_type.value).exists()


def version_totals(session: Session, digest: LedgerDigest) -> tuple[int, int]:
    """Versions in the ledger (but, against a digest that keeps no tombstones, those of
    entities deleted before it), and the sum of the digest's leaf and tombstone versions
    (one snapshot).

    Version numbers run 1..n without gaps, so an entity whose chain still ends at its leaf
    holds exactly its leaf's version count: the ledger's total equals the leaves' sum
    plus what examined entities added, unless some unexamined chain grew (or lost history).
    An entity deleted before the digest has no leaf and, while its row stays at its
    tombstone, is not examined: it stands on its tombstone's version as a live one on its
    leaf's, so a version forged behind it unbalances the counts too. A digest stored before
    migration 0018 keeps no tombstone: such an entity's versions are then counted apart,
    from its row (one the digest has no head of is examined instead).
    """
    head, tomb, digest_id, tombstones_id = LedgerDigestHead, LedgerDigestTombstone, digest.id, tombstones_of(digest)
    leaves = select(func.coalesce(func.sum(head.version), 0)).where(head.digest_id == digest_id).scalar_subquery()
    ledger = select(func.count()).select_from(EntityVersion).scalar_subquery()
    no_leaf = [~select(head.entity_id).where(head.digest_id == digest_id, head.entity_id == model.id).exists()
               for model in ENTITY_MODELS.values()]
    if tombstones_id is None:
        apart = [select(func.count()).select_from(EntityVersion).join(model, model.id == EntityVersion.entity_id).where(
            model.deleted_at.is_not(None), EntityVersion.entity_type == entity_type.value, unleafed,
            ~_unknown_to(model, entity_type, digest),
        ).scalar_subquery() for (entity_type, model), unleafed in zip(ENTITY_MODELS.items(), no_leaf, strict=True)]
        counted, leaf_sum, *rest = session.execute(select(ledger, leaves, *apart)).one()
        return counted - sum(rest), leaf_sum
    # Every tombstone of an entity with no leaf: those examined from it (see changed_since)
    # and those not, whose rows are still at it.
    from_tombstones = [select(func.coalesce(func.sum(tomb.version), 0)).join(model, model.id == tomb.entity_id).where(
        tomb.digest_id == tombstones_id, tomb.entity_type == entity_type.value, unleafed).scalar_subquery()
        for (entity_type, model), unleafed in zip(ENTITY_MODELS.items(), no_leaf, strict=True)]
    counted, leaf_sum, *rest = session.execute(select(ledger, leaves, *from_tombstones)).one()
    return counted, leaf_sum + sum(rest)


def grown_behind_rows(session: Session, digest: LedgerDigest, examined: set[uuid.UUID]) -> dict[EntityType, Changed]:
    """Entities not yet examined whose chain has a version numbered after their leaf (or,
    deleted before the digest, their tombstone), or below 1: a row reset to the digest's
    head hides later versions from the head comparison, and a version INSERTed past a gap
    (or numbered 0) joins no head at all."""
    version, grown = EntityVersion, []
    for rows, digest_id in ((LedgerDigestHead, digest.id), (LedgerDigestTombstone, tombstones_of(digest))):
        if digest_id is None:
            continue
        beyond = or_(version.version > rows.version, version.version < 1)
        grown += session.execute(select(rows.entity_type, rows.entity_id).distinct().join(
            version, and_(version.entity_id == rows.entity_id, beyond)).where(rows.digest_id == digest_id)).all()
    by_type: dict[EntityType, list[uuid.UUID]] = {}
    for entity_type, entity_id in grown:
        if entity_id not in examined:
            by_type.setdefault(EntityType(entity_type), []).append(entity_id)
    return {entity_type: changed_since(session, entity_type, digest, ids)[0]
            for entity_type, ids in by_type.items()}


def row_counts(session: Session, digest: LedgerDigest) -> tuple[int, int]:
    """How many leaf rows, and tombstone rows (0 for a digest that keeps none), the digest has now (one snapshot)."""
    leaves = select(func.count()).select_from(LedgerDigestHead).where(LedgerDigestHead.digest_id == digest.id)
    tombstones_id = tombstones_of(digest)
    if tombstones_id is None:
        return session.scalar(leaves), 0
    tombstones = select(func.count()).select_from(LedgerDigestTombstone).where(LedgerDigestTombstone.digest_id == tombstones_id)
    leaf_count, tombstone_count = session.execute(select(leaves.scalar_subquery(), tombstones.scalar_subquery())).one()
    return leaf_count, tombstone_count


def vanished(session: Session, digest_id: int, examined: set[tuple[str, uuid.UUID]]) -> Iterator[list[FindingRow]]:
    """Leaves of the digest whose entity's row is not in its type's table (a row of another
    type under its id, say): an anti-join, a type at a time (the findings of each, in turn).
    A row marked deleted with a leaf was ``examined``, signed deletion or not, and a chain
    with no row at all was reported ``entity-row-missing`` (in ``examined`` too)."""
    for entity_type, model in ENTITY_MODELS.items():
        alive = select(model.id).where(model.id == LedgerDigestHead.entity_id, model.deleted_at.is_(None))
        gone = session.execute(
            select(LedgerDigestHead.entity_id, LedgerDigestHead.version).where(
                LedgerDigestHead.digest_id == digest_id, LedgerDigestHead.entity_type == entity_type.value,
                ~alive.exists())
        ).all()
        yield [FindingRow(entity_type.value, entity_id, version, "entity-deleted", "in the digest, gone from the registry")
               for entity_id, version in gone if (entity_type.value, entity_id) not in examined]
