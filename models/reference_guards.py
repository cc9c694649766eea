"""Referential integrity under deletion: no live entity names a deleted one.

Every reference between governed entities (a skill's, role's, team's or agent's
``industry_id``, a team's or agent's ``job_role_id``, an agent's ``team_id``, any entity's
``governance_agent_id`` and ``parent_id``, a role's required skills and an agent's skills)
points at an entity that is not deleted, for every entity that is not deleted itself.
:func:`models.entity_input.apply_fields` refuses a write newly naming a deleted entity
(422 naming the field); :func:`reference_fence` closes the two remaining gaps, just
before a registry write's flush: a deletion while live entities still name the entity (by
their row, or by their signed head version: a row edited through SQL hides none) is 409
``entity-referenced`` listing them (but those deleted together with it,
:func:`models.deletion.delete_entities`), and a deletion committing while another write
newly names the entity is ordered against that write by a per-entity advisory lock
(exclusive for the deletion, shared for the naming write, which then reads the entity's
row again): whichever commits second sees the first, and is refused.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

from sqlalchemy import and_, func, literal, select, text, union_all
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session

from models.entities import ENTITY_MODELS, SKILL_ID_FIELDS, EntityType, GovernedEntity, agent_skills, job_role_skills
from models.canonical import strict_json_loads
from models.chain import ChainFinding, EntityVersion, recorded_deletion
from models.chain_verification import unsigned_heads
from models.db_statements import bigint_in, uuid_in
from models.errors import EntityReferenced, EntityTampered, InvalidInput
from models.signing import KeyRing

# Reference fields and the entity type each must point at (``parent_id`` points at the
# entity's own type; the skill lists at skills).
REFERENCES: dict[str, EntityType] = {
    "industry_id": EntityType.INDUSTRY,
    "job_role_id": EntityType.JOB_ROLE,
    "team_id": EntityType.TEAM,
    "governance_agent_id": EntityType.AGENT,
}
# Fields whose newly named referent this module does not lock: a seat (``team_id``) locks its
# team's row and refuses a deleted team (``models.seat_guards``), and a team's deletion locks
# that row too, so the two are ordered already (and a bulk batch seating hundreds of agents
# takes no lock per agent more).
ORDERED_ELSEWHERE = frozenset({"team_id"})
# How many dependents a refusal lists (their count is given whole).
LISTED_DEPENDENTS = 20

# session.info key: the ids a models.deletion.delete_entities call is deleting together, which
# are no dependents of one another (each is deleted by the call, or none is).
DELETED_TOGETHER = "plant.deleted_together"

# pg_advisory_xact_lock(REFERENCE_LOCK, hashtext('<type>:<id>')) orders a deletion of the
# entity (exclusive) against the writes newly naming it (shared).
REFERENCE_LOCK = int.from_bytes(b"refs", "big")


def referent_type(entity: GovernedEntity, field: str) -> EntityType:
    """The entity type ``field`` of ``entity`` points at."""
    return entity.entity_type_value if field == "parent_id" else REFERENCES[field]


def reference_fence(session: Session, entity: GovernedEntity, *, content_before: dict[str, Any] | None,
                    content: dict[str, Any], pending: frozenset[uuid.UUID], keyring: KeyRing) -> None:
    """Refuse a write that would leave a live entity naming a deleted one.

    A write deleting ``entity`` takes its lock exclusive and refuses (``EntityReferenced``,
    409) while any other live entity names it. A write leaving ``entity`` live takes the lock
    shared for every entity it newly names (one it did not name before, or every one when it
    creates ``entity``; an undelete names every one too, though none reaches here: a deleted
    entity takes no change, :func:`models.registry.refuse_if_deleted`), in a fixed order and in one statement
    however many it names, and reads their rows again in one more: a deletion
    committed meanwhile is a 422 naming the field, as :func:`apply_fields` gives. Each takes
    its locks after every row lock it takes and waits for no lock after them (its flush only
    key-shares the entities it names, which a row lock ``FOR NO KEY UPDATE`` admits), as
    :func:`models.entity_input.governor_fence` does, whose locks it takes after that one's.
    """
    deleted_before = content_before is not None and content_before.get("deleted_at") is not None
    if content.get("deleted_at") is not None:
        if content_before is not None and not deleted_before:
            _lock(session, entity.entity_type_value, entity.id, "pg_advisory_xact_lock")
            refuse_if_referenced(session, entity.entity_type_value, entity.id, keyring)
        return
    before = content_before if content_before is not None and not deleted_before else {}
    named = sorted(newly_named(entity, before, content, pending), key=lambda n: (n[1].value, str(n[2])))
    referents = list(dict.fromkeys((k, i) for _f, k, i in named))
    if not referents:
        return
    _lock_shared_in_order(session, referents)
    now = referents_now(session, referents, keyring)  # statements after the locks': their snapshots see what they waited for
    if now.unsigned:
        field, kind, referent_id = next(n for n in named if n[2] in now.unsigned)
        raise _tampered_referent(entity, field, kind, referent_id, now.unsigned[referent_id])
    errors = [{"field": field, "message": deleted_referent(kind, referent_id)}
              for field, kind, referent_id in named if (kind, referent_id) in now.deleted]
    if errors:
        raise InvalidInput("bad reference fields", errors=errors)


def deleted_referent(entity_type: EntityType, entity_id: uuid.UUID) -> str:
    """The message of a 422 naming a field whose newly named entity is deleted (here, and in
    :func:`models.entity_input.apply_fields`, which reads it before the lock)."""
    return f"{entity_type.value} {entity_id} is deleted: a write does not newly name a deleted entity"


def newly_named(entity: GovernedEntity, before: dict[str, Any], content: dict[str, Any],
                pending: frozenset[uuid.UUID]) -> list[tuple[str, EntityType, uuid.UUID]]:
    """The (field, type, id) of every entity ``content`` names and ``before`` did not (the
    entity itself, ids the write may name before they exist, and seats left out)."""
    named = []
    for field in (*REFERENCES, "parent_id"):
        value = content.get(field)
        if field in content and field not in ORDERED_ELSEWHERE and value is not None and value != before.get(field):
            named.append((field, referent_type(entity, field), uuid.UUID(value)))
    for field in SKILL_ID_FIELDS:
        held = set(before.get(field) or ())
        named.extend((field, EntityType.SKILL, uuid.UUID(i)) for i in content.get(field) or () if i not in held)
    return [(f, kind, i) for f, kind, i in named if i != entity.id and i not in pending]


def refuse_if_referenced(session: Session, entity_type: EntityType, entity_id: uuid.UUID, keyring: KeyRing) -> None:
    """Raise ``EntityReferenced`` (409) naming the live entities that name this one, but those
    deleted together with it (:func:`models.deletion.delete_entities`); ``EntityTampered``
    (409) when a head read to tell is not what Plant signed (:func:`_heads_naming`)."""
    together = session.info.get(DELETED_TOGETHER, frozenset())
    found, count = dependents(session, entity_type, entity_id, keyring=keyring, excluding=together)
    if not count:
        return
    kind = entity_type.value.replace("_", " ")
    raise EntityReferenced(
        f"{kind} {entity_id} is named by {count} live entit{'y' if count == 1 else 'ies'}; re-point or delete "
        f"{'it' if count == 1 else 'them'} first (a deleted entity is named by none that is not)",
        field="deleted_at", id=str(entity_id), dependent_count=count, dependents=found)


def dependents(session: Session, entity_type: EntityType, entity_id: uuid.UUID, *, keyring: KeyRing,
               excluding: frozenset[uuid.UUID] = frozenset()) -> tuple[list[dict[str, str]], int]:
    """The first :data:`LISTED_DEPENDENTS` live entities naming the entity, with the field each
    names it in, by type, field and id, and how many (type, id, field) there are in all; the
    entities ``excluding`` left out.

    One names it if its row does, or its signed head version does (:func:`_heads_naming`): a
    row whose reference was nulled through SQL does not hide it, and a restore of that row,
    which puts the head back, never leaves a live entity naming a deleted one. The rows are
    counted and listed in SQL (bounded however many name it); the heads read are those only
    whose row does not name the entity in every field it could (a row edited through SQL)."""
    rows = _dependents_query(entity_type, entity_id, excluding).subquery()
    count = session.scalar(select(func.count()).select_from(rows)) or 0
    listed = session.execute(select(rows).order_by(rows.c.entity_type.collate("C"), rows.c.field.collate("C"), rows.c.id)
                             .limit(LISTED_DEPENDENTS))
    hidden = _heads_naming(session, entity_type, entity_id, excluding, keyring)
    named = sorted({*((kind, i, field) for kind, i, field in listed), *hidden}, key=lambda n: (n[0], n[2], str(n[1])))
    return ([{"entity_type": kind, "id": str(i), "field": field} for kind, i, field in named[:LISTED_DEPENDENTS]],
            count + len(hidden))


def _referencing_fields(kind: EntityType, entity_type: EntityType) -> list[str]:
    """The fields in which an entity of ``kind`` names one of ``entity_type``."""
    fields = [f for f, target in REFERENCES.items() if target is entity_type and f in ENTITY_MODELS[kind].__table__.c]
    fields += ["parent_id"] if kind is entity_type else []
    if entity_type is EntityType.SKILL:
        fields += {EntityType.JOB_ROLE: ["required_skill_ids"], EntityType.AGENT: ["skill_ids"]}.get(kind, [])
    return fields


# The link table of each skill list, and its column naming the entity holding the list.
SKILL_LINKS = {"required_skill_ids": (job_role_skills, "job_role_id"), "skill_ids": (agent_skills, "agent_id")}


def _dependents_query(entity_type: EntityType, entity_id: uuid.UUID, excluding: frozenset[uuid.UUID]) -> Any:
    selects = []
    for kind, model in ENTITY_MODELS.items():
        for field in _referencing_fields(kind, entity_type):
            kept = (model.deleted_at.is_(None), model.id != entity_id, model.id.not_in(list(excluding)))
            query = select(literal(kind.value).label("entity_type"), model.id.label("id"), literal(field).label("field"))
            if field in SKILL_LINKS:
                link, owner = SKILL_LINKS[field]
                query = query.join(link, and_(link.c[owner] == model.id, link.c.skill_id == entity_id))
            else:
                query = query.where(getattr(model, field) == entity_id)
            selects.append(query.where(*kept))
    return union_all(*selects)


def _heads_naming(session: Session, entity_type: EntityType, entity_id: uuid.UUID,
                  excluding: frozenset[uuid.UUID], keyring: KeyRing) -> set[tuple[str, uuid.UUID, str]]:
    """The (type, id, field) of each entity (but ``excluding``) whose signed head is live and
    names the entity in a reference field its live row does not name it in (a row edited, or
    deleted, through SQL). Content that does not parse, or names no type, names nothing here
    (the audit reports it).

    Each head read must be what Plant signed (:func:`models.chain_verification.unsigned_heads`:
    content and link hash, a trusted key's signature, not after its key's seal), or the
    deletion is refused (:func:`_tampered_dependent`, 409 ``entity-tampered``): a head edited
    through SQL to read as deleted, or a version forged on top, would otherwise let the deletion
    leave a live entity naming a deleted one once that entity is restored. Only heads whose
    content holds the id are read (a byte search of heads alone): one edited so as not to hold
    it, or a chain cut back to a version that never named it, is not seen here; the audit
    reports both."""
    needle = str(entity_id)
    candidates: list[tuple[EntityType, int, list[str], list[str]]] = []  # (kind, head version id, fields, named by the row)
    for kind in ENTITY_MODELS:
        fields = _referencing_fields(kind, entity_type)
        if fields:
            found = session.execute(_heads_holding(kind, fields), {
                "kind": kind.value, "needle": needle.encode(), "id": entity_id, "excluding": list(excluding)})
            candidates += [(kind, head_id, fields, in_row) for head_id, in_row in found]
    if not candidates:
        return set()
    heads = {head.id: head for head in session.scalars(
        select(EntityVersion).where(bigint_in(EntityVersion.id, [head_id for _, head_id, _, _ in candidates])))}
    unsigned = unsigned_heads(session, list(heads.values()), keyring)
    if unsigned:
        kind, head = min(((kind, heads[head_id]) for kind, head_id, _, _ in candidates if heads[head_id].entity_id in unsigned),
                         key=lambda found: (found[0].value, str(found[1].entity_id)))
        raise _tampered_dependent(entity_type, entity_id, kind, head.entity_id, unsigned[head.entity_id])
    named = set()
    for kind, head_id, fields, in_row in candidates:
        try:
            document = strict_json_loads(bytes(heads[head_id].content))
        except ValueError:
            continue
        if not isinstance(document, dict) or document.get("deleted_at") is not None:
            continue
        for field in (f for f in fields if f not in in_row):
            value = document.get(field)
            if value == needle or isinstance(value, list) and needle in value:
                named.add((kind.value, heads[head_id].entity_id, field))
    return named


def _tampered_dependent(entity_type: EntityType, entity_id: uuid.UUID, kind: EntityType, dependent: uuid.UUID,
                        finding: ChainFinding) -> EntityTampered:
    return EntityTampered(
        f"{kind.value} {dependent} named {entity_type.value} {entity_id}, and its newest version is not what Plant "
        f"signed: {finding.detail} ({finding.code}); whether it still names {entity_type.value} {entity_id} cannot be "
        "told, so the deletion is refused until that entity is restored (the audit reports it)",
        field="deleted_at", id=str(dependent), entity_type=kind.value, finding=finding.code)


def _heads_holding(kind: EntityType, fields: list[str]) -> Any:
    """The id of the head version (newest) of each entity of ``kind`` other than :id and
    :excluding whose content holds :needle (the id's text, as canonical content spells every
    id), with the fields of ``fields`` its live row names :id in; only those whose row does
    not name it in every one. OFFSET 0 keeps the byte search out of the subquery: it reads heads alone."""
    table = ENTITY_MODELS[kind].__tablename__
    in_row = [f"CASE WHEN {_row_names(field)} THEN '{field}' END" for field in fields]
    return text(
        "SELECT head.id, array_remove(ARRAY[" + ", ".join(in_row) + "], NULL) AS in_row FROM "
        "(SELECT v.id, v.entity_id, v.content FROM entity_versions v WHERE v.entity_type = :kind AND v.entity_id <> :id "
        "AND v.entity_id <> ALL(CAST(:excluding AS uuid[])) AND NOT EXISTS (SELECT 1 FROM entity_versions later "
        "WHERE later.entity_id = v.entity_id AND later.version > v.version) OFFSET 0) head "
        f"LEFT JOIN {table} t ON t.id = head.entity_id AND t.deleted_at IS NULL "
        "WHERE position(CAST(:needle AS bytea) IN head.content) > 0 AND NOT ("
        + " AND ".join(f"coalesce({_row_names(field)}, false)" for field in fields) + ")")


def _row_names(field: str) -> str:
    """SQL: the live row ``t`` (of the head ``head``) names :id in ``field``."""
    if field in SKILL_LINKS:
        link, owner = SKILL_LINKS[field]
        return f"(t.id IS NOT NULL AND EXISTS (SELECT 1 FROM {link.name} WHERE {owner} = t.id AND skill_id = :id))"
    return f"t.{field} = :id"


class ReferentsNow(NamedTuple):
    """What :func:`referents_now` read of the entities a write newly names."""

    deleted: dict[tuple[EntityType, uuid.UUID], Any]  # the deleted ones, with their deleted_at
    unsigned: dict[uuid.UUID, ChainFinding]  # those whose head is not what Plant signed, and why


def referents_now(session: Session, referents: list[tuple[EntityType, uuid.UUID]], keyring: KeyRing) -> ReferentsNow:
    """Which of the entities are deleted, by their row, read afresh (not from the session's
    identity map), or by their signed head (a row whose ``deleted_at`` was nulled through SQL is
    deleted still: a restore puts the deletion back); and whose head is not what Plant signed
    (:func:`models.chain_verification.unsigned_heads`): a deleted entity's head edited through
    SQL to read as live, its row too, let a write name it, and sign a version naming it. Each
    head is parsed (:func:`models.chain.recorded_deletion`), not byte-searched: a write names a
    handful of entities. Two statements, three with a key's seal to check."""
    by_type: dict[EntityType, list[uuid.UUID]] = {}
    for kind, referent_id in referents:
        by_type.setdefault(kind, []).append(referent_id)
    rows = " UNION ALL ".join(
        f"SELECT '{kind.value}', id, deleted_at FROM {ENTITY_MODELS[kind].__tablename__} "
        f"WHERE id = ANY(CAST(:{kind.value} AS uuid[])) AND deleted_at IS NOT NULL" for kind in by_type)
    deleted: dict[tuple[EntityType, uuid.UUID], Any] = {
        (EntityType(kind), referent_id): when for kind, referent_id, when in session.execute(
            text(rows), {kind.value: ids for kind, ids in by_type.items()})}
    heads = list(session.scalars(
        select(EntityVersion).where(uuid_in(EntityVersion.entity_id, (i for _, i in referents)))
        .ext(distinct_on(EntityVersion.entity_id)).order_by(EntityVersion.entity_id, EntityVersion.version.desc())
        .execution_options(populate_existing=True)))  # as stored now, not as this session loaded it before
    for head in heads:
        key = (EntityType(head.entity_type), head.entity_id)
        if key in referents and key not in deleted and (when := recorded_deletion(bytes(head.content))) is not None:
            deleted[key] = when  # the row's own time, where it has one
    return ReferentsNow(deleted, unsigned_heads(session, heads, keyring))


def _tampered_referent(entity: GovernedEntity, field: str, kind: EntityType, referent_id: uuid.UUID,
                       finding: ChainFinding) -> EntityTampered:
    return EntityTampered(
        f"{field} names {kind.value} {referent_id}, whose newest version is not what Plant signed: {finding.detail} "
        f"({finding.code}); whether it is live cannot be told, so {entity.entity_type_value.value} {entity.id} may not "
        f"newly name it until that entity is restored (the audit reports it)",
        field=field, id=str(referent_id), entity_type=kind.value, finding=finding.code)


def _lock_shared_in_order(session: Session, referents: list[tuple[EntityType, uuid.UUID]]) -> None:
    """Take the shared lock of each entity, in the order given, in one statement: a function
    scan of the array yields its elements in order, and the aggregate takes each row's lock as
    it comes (a wait for one holds the later ones back, as separate statements did)."""
    session.execute(text("SELECT count(pg_advisory_xact_lock_shared(:lock, hashtext(key))) "
                         "FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS referent(key, n)"),
                    {"lock": REFERENCE_LOCK, "keys": [f"{kind.value}:{referent_id}" for kind, referent_id in referents]})


def _lock(session: Session, entity_type: EntityType, entity_id: uuid.UUID, function: str) -> None:
    session.execute(text(f"SELECT {function}(:lock, hashtext(:entity))"),
                    {"lock": REFERENCE_LOCK, "entity": f"{entity_type.value}:{entity_id}"})
