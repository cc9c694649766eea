"""Registry services: create, update, read, list and search governed entities.

Every write goes through here (the API, the seed and later jobs alike): its input is
normalized and its references checked (``models.entity_input``), updates lock the entity
row first and refuse a row edited outside Plant (``models.entity_locks``), so appends to
one entity are serialized, team membership is kept within the assignment rules
(``models.seat_guards``), the embedding is recomputed when its text changes, one chain
version is appended, and the constitution gates the result. Functions flush; the caller
commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.canonical import normalize_text
from models.chain import EntityVersion, append_version
from models.constitution import L1, MEMBER_RULES, RuleSubject, append_only_enforced, enforce, reevaluated
from models.db_statements import uuid_in
from models.embeddings import Embedder
from models.entity_input import apply_fields, governor_fence, lock_parents, normalized_input
from models.entity_locks import lock_for_write
from models.lookalikes import skeleton
from models.reference_guards import reference_fence
from models.entities import (
    ENTITY_MODELS, Agent, AgentStatus, EntityType, GovernedEntity, Skill, SkillStatus, Team,
    governed_content,
)
from models.errors import (
    Conflict,
    EntityDeleted,
    ImmutableEntity,
    InvalidInput,
    NotFound,
    PlantError,
    PreconditionFailed,
)
from models.membership import members_count, signed_member_counts
from models.membership import seat_problems as seat_problems_of
from models.pagination import Page, keyset_page
from models.seat_guards import guard_membership
from models.signing import KeyRing
from models.skill_keys import derived_skill_key

K = TypeVar("K")
EMBEDDED_TEXT: dict[EntityType, tuple[str, ...]] = {
    EntityType.INDUSTRY: ("name", "code", "description"),
    EntityType.SKILL: ("name", "category", "description"),
    EntityType.JOB_ROLE: ("name", "seniority", "description"),
    EntityType.TEAM: ("name", "description"),
    EntityType.AGENT: ("name", "description"),
}
DEFAULTS: dict[str, Any] = {"tags": [], "attributes": {}, "description": "", "governance_notes": None}
@dataclass(frozen=True)
class WriteContext:
    """Who writes, and the keys and embedder the write uses."""

    actor: str
    keyring: KeyRing
    embedder: Embedder
    # Ids that may be referenced before they exist (the seed's self-governing steward);
    # the deferred foreign key still checks them at commit.
    pending_ids: frozenset[uuid.UUID] = frozenset()


def create_entity(
    session: Session,
    *,
    entity_type: EntityType,
    data: dict[str, Any],
    ctx: WriteContext,
    entity_id: uuid.UUID | None = None,
) -> GovernedEntity:
    """Create an entity and its chain's first version. A skill sent without a ``skill_key`` gets
    one derived from its name (``models.skill_keys``)."""
    name = data.get("name")
    if entity_type is not EntityType.SKILL or data.get("skill_key") or not isinstance(name, str):
        return _create(session, entity_type, data, ctx, entity_id)
    try:
        with session.begin_nested():
            return _create(session, entity_type, {**data, "skill_key": derived_skill_key(session, name)}, ctx, entity_id)
    except Conflict as exc:
        if exc.extensions.get("field") != "skill_key":
            raise
    # A skill created meanwhile took the key derived for this one (it was free when looked up; the
    # unique index made this INSERT wait for that commit): derive again, now seeing it taken, rather
    # than a 409 on a key the client never sent.
    return _create(session, entity_type, {**data, "skill_key": derived_skill_key(session, name)}, ctx, entity_id)


def _create(session: Session, entity_type: EntityType, data: dict[str, Any], ctx: WriteContext,
            entity_id: uuid.UUID | None) -> GovernedEntity:
    model = ENTITY_MODELS[entity_type]
    data = normalized_input({**DEFAULTS, **data}, model)
    data.setdefault("status", next(iter(model.status_enum)).value)
    entity = model(id=entity_id or uuid.uuid4(), version=0)
    apply_fields(session, entity, data, pending=ctx.pending_ids)
    seat = guard_membership(session, entity, before=None, after=snapshot(entity), keyring=ctx.keyring)
    return record_version(session, entity, ctx, text_changed=True, content_before=None, seat_problems=seat)


# The one change a certified skill takes: retired, its certificate is withdrawn (the version that
# recorded it stays in the chain), and it takes no change after. How an operator answers a
# certified-near-duplicate finding.
WITHDRAW_CERTIFICATE = {"status": SkillStatus.RETIRED.value}


def update_entity(
    session: Session,
    *,
    entity_type: EntityType,
    entity_id: uuid.UUID,
    changes: dict[str, Any],
    ctx: WriteContext,
    expected_versions: frozenset[int] | None = None,
) -> GovernedEntity:
    """Apply ``changes`` under the entity's row lock; a no-op change appends nothing.
    With ``expected_versions`` (an ``If-Match``), the entity must be at one of them."""
    if changes.get("parent_id") is not None:
        lock_parents(session, ENTITY_MODELS[entity_type])  # before the row lock: see lock_parents
    entity = lock_for_write(session, entity_type, entity_id, ctx.keyring)
    refuse_if_deleted(entity)
    if isinstance(entity, Skill) and entity.certificate is not None and changes != WITHDRAW_CERTIFICATE:
        if entity.status == SkillStatus.CERTIFIED.value:
            raise ImmutableEntity(f"skill {entity_id} is certified and immutable; only retiring it "
                                  '({"status": "retired"}) withdraws its certificate', id=str(entity_id))
        raise ImmutableEntity(f"skill {entity_id} is {entity.status} and its certificate withdrawn: it is never "
                              "changed or certified again", id=str(entity_id))  # retiring it again changes nothing
    if expected_versions is not None and entity.version not in expected_versions:
        named = ", ".join(str(v) for v in sorted(expected_versions)) or "no version an entity can have"
        raise PreconditionFailed(f"If-Match names {named}; the entity is at version {entity.version}",
                                 current_version=entity.version)
    before = snapshot(entity)
    apply_fields(session, entity, normalized_input(changes, type(entity), stored=entity), pending=ctx.pending_ids)
    after = snapshot(entity)
    if after == before:
        return entity
    seat = guard_membership(session, entity, before=before, after=after, keyring=ctx.keyring)
    text_changed = any(before[f] != getattr(entity, f) for f in EMBEDDED_TEXT[entity_type])
    return record_version(session, entity, ctx, text_changed=text_changed, content_before=before,
                          stands_down=stands_down(before, after), seat_problems=seat)


def record_version(
    session: Session,
    entity: GovernedEntity,
    ctx: WriteContext,
    *,
    text_changed: bool,
    content_before: dict[str, Any] | None,
    stands_down: bool = False,
    flush: bool = True,
    content: dict[str, Any] | None = None,
    pending: list[EntityVersion] | None = None,
    seat_problems: tuple[str, ...] | None = None,
) -> GovernedEntity:
    """Append the entity's changed state as a chain version, gate it, and flush.

    Raises ``ConstitutionViolation`` (nothing is written) when an error rule breaks that
    the write may not leave broken (:func:`models.constitution.enforce`): any, for a new
    entity (``content_before`` None); for a change, one its governed content before the
    write (``content_before``) did not break, or none if the change ``stands_down`` the
    entity (:func:`stands_down`).
    With ``flush=False`` a bulk caller flushes many writes at once (and gives up the
    per-write mapping of unique violations to 409s: it must not change unique fields).
    ``content`` is the entity's governed content when the caller already built it (a
    bulk caller that read the skill ids itself rather than loading the relationship);
    ``pending`` collects the version row instead of adding it to the session (see
    :func:`models.chain.append_version`). ``seat_problems`` is rule AGENT-04's facts when
    the caller has just judged the agent's seat under its locks (the assignments), else
    they are read (:func:`rule_subject`).
    """
    entity_type = entity.entity_type_value
    if content_before is not None and content_before.get("deleted_at") is not None:
        refuse_if_deleted(entity, deleted_at=content_before["deleted_at"])  # whatever path the write came by
    # No autoflush before the flush below, where unique violations become 409s naming the field.
    with session.no_autoflush:
        if text_changed:
            embed_text_of(entity, ctx.embedder)
        content = content if content is not None else governed_content(entity)
        append_version(session, entity=entity, actor=ctx.actor, keyring=ctx.keyring, content=content, pending=pending)
        l0, l1 = enforce(rule_subject(session, entity, keyring=ctx.keyring, content=content, seat_problems=seat_problems),
                         content_before=content_before, stands_down=stands_down)
        entity.constitution_l0, entity.constitution_l1 = l0.as_json(), l1.as_json()
        governor_fence(session, entity, content_before=content_before, content=content, pending=ctx.pending_ids,
                       keyring=ctx.keyring)
        reference_fence(session, entity, content_before=content_before, content=content, pending=ctx.pending_ids,
                        keyring=ctx.keyring)
    if not flush:
        session.add(entity)
        return entity
    with integrity_as_domain_errors(session, entity_type):
        session.add(entity)
        session.flush()
    return entity


def refuse_if_deleted(entity: GovernedEntity, *, deleted_at: Any = None) -> None:
    """Raise ``EntityDeleted`` (409) when the entity (as its locked row, or ``deleted_at`` its
    content before the write, says) is soft-deleted: a deleted entity takes no change at all,
    its deletion time and ``deleted_at`` itself included. Its chain ends at the signed
    deletion, Plant has no undelete (a digest's tombstone holds the entity deleted for good:
    a version bringing it back is the audit's ``entity-undeleted``), and it still serves its
    resource and history. A restore (``models.repair``) is no change: it puts back the
    signed head, deleted or not."""
    deleted_at = deleted_at if deleted_at is not None else entity.deleted_at
    if deleted_at is None:
        return
    shown = deleted_at.isoformat() if hasattr(deleted_at, "isoformat") else str(deleted_at)
    kind = entity.entity_type_value.value.replace("_", " ")
    raise EntityDeleted(f"{kind} {entity.id} was deleted at {shown}: a deleted entity takes no change, and Plant "
                        "has no undelete", id=str(entity.id), entity_type=entity.entity_type_value.value,
                        deleted_at=shown)


# Where each field of a change that stands an entity down may go: the statuses that retire or
# suspend it, and no team (an agent unseated).
STANDING_DOWN: dict[str, frozenset[Any]] = {
    "status": frozenset({SkillStatus.RETIRED.value, AgentStatus.SUSPENDED.value, AgentStatus.RETIRED.value}),
    "team_id": frozenset({None}),
}


def stands_down(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a change (the entity's snapshots around it) only stands the entity down: it
    retires or suspends it, or takes an agent out of its team, and changes nothing else.
    Such a change is never refused for a rule the entity breaks (not even one it starts to
    break): retiring is how a finding is answered, and must stay possible whatever a later
    release's rules say."""
    changed = {f for f in after if before.get(f) != after[f]}
    return bool(changed) and all(f in STANDING_DOWN and after[f] in STANDING_DOWN[f] for f in changed)


def rule_subject(
    session: Session, entity: GovernedEntity, *, keyring: KeyRing | None, content: dict[str, Any] | None = None,
    seat_problems: tuple[str, ...] | None = None, members: int | None = None, read_guards: bool = True,
) -> RuleSubject:
    """What the rules look at for ``entity`` as it is in memory, with the seat facts of a team
    or an agent read as an audit reads them (``models.membership``, which checks other
    entities' heads with ``keyring``), so a write and an audit judge alike; or, for a team,
    judged on ``members`` when the caller counted them (what its resource lists). Without
    ``read_guards`` the database's guards are not asked about (L0-03 cannot be judged then)."""
    seated = members
    if (isinstance(entity, Team) and members is None or isinstance(entity, Agent) and seat_problems is None) \
            and keyring is None:
        raise TypeError(f"the rules of a {entity.entity_type_value.value} need the key ring")
    if isinstance(entity, Team) and members is None:
        members = members_count(session, entity.id)
        seated = signed_member_counts(session, [entity], {entity.id: members}, keyring)[entity.id]
    elif isinstance(entity, Agent) and seat_problems is None:
        held = [skill.id for skill in entity.skills]
        seat_problems = seat_problems_of(session, [(entity, held)], keyring).get(entity.id, ())
    return RuleSubject(
        entity_type=entity.entity_type_value,
        content=content if content is not None else governed_content(entity),
        versions=entity.version,
        head_link_hash=entity.head_link_hash,
        genesis_linked=entity.version >= 1,
        append_only_enforced=_append_only(session) if read_guards else None,
        members=members,
        seated=seated,
        seat_problems=seat_problems if isinstance(entity, Agent) else None,
    )


def served_team_l1(session: Session, team: Team, members: int) -> dict[str, Any]:
    """The team's L1 results as its resource serves them: as its last write stored them,
    but for the rules that read its members (:data:`models.constitution.MEMBER_RULES`),
    evaluated now on ``members``, those the resource lists. An agent taking or leaving a
    seat adds no version to the team, so the stored ones go stale (a team with members
    still showing TEAM-01's warning). Judged on the listed members, as ``free_seats`` is:
    the audit differs only where a member's row is not its signed head (reported on it)."""
    # Only L1's member rules are evaluated, and none reads the guards: a served team (every GET
    # of one, every page of teams) asks the catalog nothing.
    subject = rule_subject(session, team, keyring=None, members=members, read_guards=False)
    return reevaluated(team.constitution_l1, subject, L1, MEMBER_RULES).as_json()


def _append_only(session: Session) -> bool:
    """Whether the history guard is on, asked once per session (a catalog query per write
    would dominate bulk writes); sessions are per request, task or batch. The guards'
    fingerprint is read at most once a second per process (``WRITE_FINGERPRINT_MAX_AGE``)."""
    if "append_only_enforced" not in session.info:
        session.info["append_only_enforced"] = append_only_enforced(
            session, fingerprint_max_age=WRITE_FINGERPRINT_MAX_AGE)
    return session.info["append_only_enforced"]


# How long a registry write trusts this process's last reading of the guards' fingerprint: a
# guard changed behind its name refuses the writes of every session begun a second later
# (a session keeps its answer for its life: a long batch's too); audits read it every time.
WRITE_FINGERPRINT_MAX_AGE = 1.0


def embedding_text(entity: GovernedEntity) -> str:
    return embedding_text_of(entity.entity_type_value, entity)


def embedding_text_of(entity_type: EntityType, fields: Any) -> str:
    """The text an entity of ``entity_type`` is embedded from, read off ``fields`` (an entity,
    or a row of its columns)."""
    parts = [str(getattr(fields, f) or "") for f in EMBEDDED_TEXT[entity_type]]
    return " ".join(p for p in parts if p)


def embed_text_of(entity: GovernedEntity, embedder: Embedder) -> None:
    """Set ``entity``'s vectors from its text: ``embedding``, and for a skill
    ``reading_embedding`` (:func:`skill_vectors`)."""
    if isinstance(entity, Skill):
        entity.embedding, entity.reading_embedding = skill_vectors(embedding_text(entity), embedder)
    else:
        entity.embedding = embedder.embed([embedding_text(entity)])[0]


def skill_vectors(written: str, embedder: Embedder) -> tuple[list[float], list[float] | None]:
    """The vector of a skill's text ``written``, and that of what it reads as
    (:func:`models.lookalikes.skeleton`) when that is not the text, else None; one call of the
    embedder. A text the skeleton leaves as it is (every ASCII one) costs nothing more."""
    reading = skeleton(written)
    if reading == written:
        return embedder.embed([written])[0], None
    vector, read = embedder.embed([written, reading])
    return vector, read


# A skill's text holds a character beyond ASCII: only such a text can read otherwise.
_NOT_ASCII = func.concat(Skill.name, Skill.category, Skill.description).op("~")("[^\\x01-\\x7f]")


def readings(texts: Mapping[K, str]) -> dict[K, str]:
    """The skeleton (:func:`models.lookalikes.skeleton`) of each of ``texts`` that reads otherwise:
    the texts a reading vector is made of."""
    return {key: reading for key, written in texts.items() if (reading := skeleton(written)) != written}


def fill_reading_vectors(session: Session, embedder: Callable[[], Embedder], *, batch: int = 200) -> int:
    """Store the reading vector of each skill whose text reads otherwise and has none: every one
    written before migration 0026, or by a release before it during a rollout (``plant db
    upgrade`` runs this after the migrations; one whose text an older release changed keeps
    the vector of its old text, which the audit shows as ``embedding-mismatch`` until ``plant
    entity restore``). Derived from the row's text, as :func:`embed_text_of` does at every write;
    the audit compares it with the signed text's. Only texts with a character beyond ASCII are
    read, ``batch`` at a time, each batch its own transaction; a row whose text changed meanwhile
    is left for its own write. ``embedder`` is called only once a row needs a vector (a learned
    model loads then). Returns how many were filled."""
    filled, after = 0, None
    while True:
        with session.begin():
            rows = session.execute(
                select(Skill.id, Skill.name, Skill.category, Skill.description)
                .where(Skill.reading_embedding.is_(None), _NOT_ASCII, *([Skill.id > after] if after else []))
                .order_by(Skill.id).limit(batch)).all()
            if not rows:
                return filled
            after = rows[-1].id
            by_id = {row.id: row for row in rows}
            texts = readings({row.id: embedding_text_of(EntityType.SKILL, row) for row in rows})
            vectors = embedder().embed(list(texts.values())) if texts else []
            for row, vector in zip((by_id[skill_id] for skill_id in texts), vectors, strict=True):
                filled += session.execute(
                    update(Skill).where(Skill.id == row.id, Skill.reading_embedding.is_(None), Skill.name == row.name,
                                        Skill.category == row.category, Skill.description == row.description)
                    .values(reading_embedding=vector)).rowcount


def snapshot(entity: GovernedEntity) -> dict[str, Any]:
    content = governed_content(entity)
    return {**content, **{f: getattr(entity, f) for f in EMBEDDED_TEXT[entity.entity_type_value]}}


@contextmanager
def integrity_as_domain_errors(session: Session, entity_type: EntityType) -> Iterator[None]:
    """Turn unique and foreign-key violations, raised by the block or by the flush that
    ends it, into 409 / 422 naming the field. The transaction is lost then, as for any
    error: the caller's rollback ends it (no caller goes on after a refused write)."""
    try:
        yield
        session.flush()
    except IntegrityError as exc:
        raise _domain_error(exc, entity_type) from exc


def _domain_error(exc: IntegrityError, entity_type: EntityType) -> PlantError:
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", "") or ""
    table = ENTITY_MODELS[entity_type].__tablename__
    if constraint.startswith(f"uq_{table}_"):
        field = constraint.removeprefix(f"uq_{table}_")
        kind = entity_type.value.replace("_", " ")
        return Conflict(f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} with this {field} already exists", field=field)
    return InvalidInput(f"the write violates {constraint or 'a database constraint'}")


def get_entity(session: Session, *, entity_type: EntityType, entity_id: uuid.UUID) -> GovernedEntity:
    entity = session.get(ENTITY_MODELS[entity_type], entity_id)
    if entity is None:
        raise NotFound(f"no {entity_type.value} with id {entity_id}", id=str(entity_id))
    return entity


def require_all(session: Session, *, entity_type: EntityType, entity_ids: list[uuid.UUID]) -> None:
    """Raise ``NotFound`` naming the unknown ids (the first 20) unless every id exists."""
    model = ENTITY_MODELS[entity_type]
    found = set(session.scalars(select(model.id).where(uuid_in(model.id, entity_ids))))
    missing = [str(i) for i in dict.fromkeys(entity_ids) if i not in found]
    if missing:
        raise NotFound(f"{len(missing)} unknown {entity_type.value} id(s)", ids=missing[:20])


def list_entities(
    session: Session,
    *,
    entity_type: EntityType,
    filters: dict[str, Any],
    page_size: int,
    page_token: str | None,
) -> Page[GovernedEntity]:
    model = ENTITY_MODELS[entity_type]
    query = select(model).where(model.deleted_at.is_(None))
    for field, value in filters.items():
        if value is not None:
            query = query.where(getattr(model, field) == value)
    return keyset_page(session, query, model, page_size=page_size, page_token=page_token)


@dataclass(frozen=True)
class ScoredSkill:
    skill: Skill
    score: float


def search_skills(session: Session, *, query: str, k: int, embedder: Embedder) -> list[ScoredSkill]:
    """The ``k`` skills nearest the query by cosine similarity, exactly (ties by id).

    Ordered by distance over the table itself, the planner serves the ``LIMIT`` from the
    approximate HNSW index once the table is large (about 10,000 skills); a scan of it yields
    at most ``hnsw.ef_search`` (40) rows and can miss a near one however large that is: a
    ``k`` of 41 to 100 got 40. A materialized CTE is read whole, as the certification gate
    reads it (``models.certification_gates.nearest_certified_duplicate``): one distance a skill.
    A stored zero vector (a row edited through SQL) has no direction, and pgvector's cosine
    distance to it is NaN, which is no JSON number: such a skill is near no query."""
    vector = embedder.embed([normalize_text(query)])[0]
    ranked = (
        select(Skill.id, Skill.embedding.cosine_distance(vector).label("distance"))
        .where(Skill.embedding.is_not(None), Skill.deleted_at.is_(None))
        .cte("ranked").prefix_with("MATERIALIZED")
    )
    nearest = select(ranked).where(ranked.c.distance != float("nan")).order_by(ranked.c.distance, ranked.c.id).limit(k).subquery()
    rows = session.execute(
        select(Skill, nearest.c.distance).join(nearest, nearest.c.id == Skill.id).order_by(nearest.c.distance, Skill.id)
    ).all()
    return [ScoredSkill(skill, round(1.0 - float(d), 6)) for skill, d in rows]


def team_members(session: Session, *, team_id: uuid.UUID) -> list[uuid.UUID]:
    return list(session.scalars(select(Agent.id).where(Agent.team_id == team_id).order_by(Agent.name)))

