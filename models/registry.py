"""Registry services: create, update, read, list and search governed entities.

Every write goes through here (the API, the seed and later jobs alike): input strings
are NFC-normalized, references are checked (an unknown id is an ``InvalidInput`` naming
the field), the embedding is recomputed when its text changes, one chain version is
appended, and the constitution gates the result. Updates lock the entity row first, so
appends to one entity are serialized. Functions flush; the caller commits.

Team membership is kept within the assignment rules (``models.membership``) whichever
write touches it: an agent written with a ``team_id``, or changed while in a team, must
be eligible for that team (and, when it joins, find a free seat, counted under the team
row's lock as the assignment jobs do), judged on the team's and its job role's signed
values (a row edited outside Plant is ``EntityTampered``); a team may not shrink below its
members, nor change its job role, industry or status so that a member no longer qualifies.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.canonical import as_jsonb_keeps_it, normalize_text, to_json_tree
from models.chain import SEALED_CODE, ChainFinding, EntityVersion, append_version, head_drift
from models.constitution import L1, MEMBER_RULES, RuleSubject, append_only_enforced, enforce, reevaluated
from models.db import uuid_in
from models.embeddings import Embedder
from models.entities import (
    ENTITY_MODELS, SKILL_ID_FIELDS, Agent, AgentStatus, EntityType, GovernedEntity, JobRole, Skill, SkillStatus, Team,
    governed_content,
)
from models.errors import (
    Conflict,
    EntityTampered,
    ImmutableEntity,
    InvalidInput,
    NotEligible,
    NotFound,
    PlantError,
    PreconditionFailed,
    TeamFull,
)
from models.membership import (
    ineligibility, members_count, members_lacking_role_skills, members_not_admitted, signed_member_counts,
    signed_requirements, team_is_full,
)
from models.membership import seat_problems as seat_problems_of
from models.pagination import Page, keyset_page
from models.signing import KeyRing

# Reference fields and the entity type each must point at.
REFERENCES: dict[str, EntityType] = {
    "industry_id": EntityType.INDUSTRY,
    "job_role_id": EntityType.JOB_ROLE,
    "team_id": EntityType.TEAM,
    "governance_agent_id": EntityType.AGENT,
}
EMBEDDED_TEXT: dict[EntityType, tuple[str, ...]] = {
    EntityType.INDUSTRY: ("name", "code", "description"),
    EntityType.SKILL: ("name", "category", "description"),
    EntityType.JOB_ROLE: ("name", "seniority", "description"),
    EntityType.TEAM: ("name", "description"),
    EntityType.AGENT: ("name", "description"),
}
DEFAULTS: dict[str, Any] = {"tags": [], "attributes": {}, "description": "", "governance_notes": None}
# Governed fields whose change can break a membership, on the agent's and the team's side.
AGENT_MEMBERSHIP_FIELDS = ("team_id", "job_role_id", "industry_id", "skill_ids", "status")
TEAM_MEMBERSHIP_FIELDS = ("job_role_id", "industry_id", "status")


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
    model = ENTITY_MODELS[entity_type]
    data = _normalized({**DEFAULTS, **data}, model)
    data.setdefault("status", next(iter(model.status_enum)).value)
    entity = model(id=entity_id or uuid.uuid4(), version=0)
    apply_fields(session, entity, data, pending=ctx.pending_ids)
    guard_membership(session, entity, before=None, after=snapshot(entity), keyring=ctx.keyring)
    return record_version(session, entity, ctx, text_changed=True, content_before=None)


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
    entity = lock_for_write(session, entity_type, entity_id, ctx.keyring)
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
    apply_fields(session, entity, _normalized(changes, type(entity)), pending=ctx.pending_ids)
    after = snapshot(entity)
    if after == before:
        return entity
    guard_membership(session, entity, before=before, after=after, keyring=ctx.keyring)
    text_changed = any(before[f] != getattr(entity, f) for f in EMBEDDED_TEXT[entity_type])
    return record_version(session, entity, ctx, text_changed=text_changed, content_before=before,
                          stands_down=stands_down(before, after))


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
    # No autoflush before the flush below, where unique violations become 409s naming the field.
    with session.no_autoflush:
        if text_changed:
            entity.embedding = ctx.embedder.embed([embedding_text(entity)])[0]
        content = content if content is not None else governed_content(entity)
        append_version(session, entity=entity, actor=ctx.actor, keyring=ctx.keyring, content=content, pending=pending)
        l0, l1 = enforce(rule_subject(session, entity, keyring=ctx.keyring, content=content, seat_problems=seat_problems),
                         content_before=content_before, stands_down=stands_down)
        entity.constitution_l0, entity.constitution_l1 = l0.as_json(), l1.as_json()
    if not flush:
        session.add(entity)
        return entity
    with integrity_as_domain_errors(session, entity_type):
        session.add(entity)
        session.flush()
    return entity


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
    seat_problems: tuple[str, ...] | None = None, members: int | None = None,
) -> RuleSubject:
    """What the rules look at for ``entity`` as it is in memory, with the seat facts of a team
    or an agent read as an audit reads them (``models.membership``, which checks other
    entities' heads with ``keyring``), so a write and an audit judge alike; or, for a team,
    judged on ``members`` when the caller counted them (what its resource lists)."""
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
        append_only_enforced=_append_only(session),
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
    subject = rule_subject(session, team, keyring=None, members=members)
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
    parts = [str(getattr(entity, f) or "") for f in EMBEDDED_TEXT[entity.entity_type_value]]
    return " ".join(p for p in parts if p)


def snapshot(entity: GovernedEntity) -> dict[str, Any]:
    content = governed_content(entity)
    return {**content, **{f: getattr(entity, f) for f in EMBEDDED_TEXT[entity.entity_type_value]}}


def apply_fields(
    session: Session, entity: GovernedEntity, data: dict[str, Any], *, pending: frozenset[uuid.UUID], signed: bool = False
) -> None:
    """Set fields after checking every reference; all bad fields are reported at once.

    ``data`` holds typed values (ids as UUIDs, skill lists as lists of UUIDs), as the API
    parses them and as :func:`models.repair.restore_entity` reads them back from a version
    (``signed``). A governance agent newly named must be active (:func:`_governor_problem`);
    one named before, or put back by a restore, is not judged again.
    """
    errors: list[dict[str, str]] = []
    for field, value in data.items():
        if field in REFERENCES and value is not None and value not in pending and session.get(ENTITY_MODELS[REFERENCES[field]], value) is None:
            errors.append({"field": field, "message": f"no {REFERENCES[field].value} with id {value}"})
        elif field == "parent_id" and value is not None and value != entity.parent_id and (problem := _parent_problem(session, entity, value)):
            errors.append({"field": field, "message": problem})
        elif field == "governance_agent_id" and not signed and (problem := _governor_problem(session, entity, data, pending)):
            errors.append({"field": field, "message": problem})
    skills = {f: _skills(session, data[f], f, errors) for f in SKILL_ID_FIELDS if f in data}
    if errors:
        raise InvalidInput("bad reference fields", errors=errors)
    for field, value in data.items():
        if field in SKILL_ID_FIELDS:
            setattr(entity, SKILL_ID_FIELDS[field], skills[field])
        else:
            setattr(entity, field, value)


def _governor_problem(session: Session, entity: GovernedEntity, data: dict[str, Any], pending: frozenset[uuid.UUID]) -> str | None:
    """Why the governance agent ``data`` names may not be named, if it is newly named and
    not active (an agent naming itself, as it will be after this write). Judged when it is
    named only: a governor retired or suspended later stays its entities' governor
    (README, "The constitution"), and they take another through a write naming it."""
    agent_id = data["governance_agent_id"]
    if agent_id is None or agent_id in pending or agent_id == entity.governance_agent_id:
        return None
    governor = session.get(Agent, agent_id)
    if governor is None:
        return None  # reported as unknown
    status = data.get("status", governor.status) if governor is entity else governor.status
    if status == AgentStatus.ACTIVE.value:
        return None
    return f"agent {agent_id} is {status}: a governance agent must be active when it is named"


def guard_membership(
    session: Session, entity: GovernedEntity, *, before: dict[str, Any] | None, after: dict[str, Any], keyring: KeyRing
) -> None:
    """Refuse a write that would seat an agent against the assignment rules.

    ``before`` and ``after`` are the entity's snapshots around the write (``before`` is
    None for a new entity). Runs without autoflush: the entity's pending changes must not
    reach the database outside the write's own flush (where constraint violations become
    409s and 422s).
    """
    changed = {f for f in after if before is None or before.get(f) != after[f]}
    with session.no_autoflush:
        if isinstance(entity, Agent) and entity.team_id is not None and changed & set(AGENT_MEMBERSHIP_FIELDS):
            _guard_agent_seat(session, entity, joining="team_id" in changed, keyring=keyring)
        elif isinstance(entity, Team):
            if "job_role_id" in changed and entity.job_role_id is not None:
                _hold_role_for_team(session, entity.job_role_id)
            if before is not None:
                _guard_team_members(session, entity, changed, keyring=keyring)
        elif isinstance(entity, JobRole) and before is not None and "required_skill_ids" in changed:
            _guard_role_members(session, entity)


def lock_seat(session: Session, agent: Agent, team_id: uuid.UUID, keyring: KeyRing) -> tuple[Team, list[str]]:
    """Lock the team a seat is taken in (every way of seating an agent serializes on it),
    then read the skills the agent's job role requires (:func:`signed_required_skills`,
    no lock: a change of them locks the role's teams, so none commits while this one is
    held). Each must be its signed head, or ``EntityTampered``: a seat is never decided on
    values edited outside Plant. Then say which rules the agent breaks there, capacity aside."""
    team = lock_for_write(session, EntityType.TEAM, team_id, keyring)
    assert isinstance(team, Team)
    return team, ineligibility(agent, team, signed_required_skills(session, agent.job_role_id, keyring))


def signed_required_skills(session: Session, job_role_id: uuid.UUID | None, keyring: KeyRing) -> set[uuid.UUID]:
    """The skills the job role requires, as its signed head says, read without a lock
    (:func:`models.membership.signed_requirements`). ``EntityTampered`` (409) when its row
    is not that head."""
    required, drift = signed_requirements(session, [job_role_id], keyring)
    if job_role_id is not None and job_role_id in drift:
        raise tampered_error(EntityType.JOB_ROLE, job_role_id, drift[job_role_id])
    return required.get(job_role_id, set()) if job_role_id is not None else set()


def _guard_agent_seat(session: Session, agent: Agent, *, joining: bool, keyring: KeyRing) -> None:
    assert agent.team_id is not None
    team, reasons = lock_seat(session, agent, agent.team_id, keyring)
    if reasons:
        raise NotEligible(
            f"the agent may not sit in team {team.name}: " + "; ".join(reasons)
            + (" (send team_id null to take it out of the team)" if not joining else ""),
            field="team_id", team_id=str(team.id), reasons=reasons,
        )
    if joining and team_is_full(session, team, agent):
        raise TeamFull(f"team {team.name} is full ({team.capacity} seats)", field="team_id", team_id=str(team.id))


def _guard_team_members(session: Session, team: Team, changed: set[str], *, keyring: KeyRing) -> None:
    """Refuse a change of the (locked) team that its members would not survive: fewer seats
    than members, or a job role, industry or status a member does not qualify under, judged
    on the role's signed required skills (``EntityTampered`` while its row is not its head)."""
    if "capacity" in changed:
        members = members_count(session, team.id)
        if members > team.capacity:
            raise Conflict(f"team {team.name} has {members} members; its capacity cannot go below that",
                           field="capacity", member_count=members)
    if changed & set(TEAM_MEMBERSHIP_FIELDS) and members_count(session, team.id):
        refused = members_not_admitted(session, team, signed_required_skills(session, team.job_role_id, keyring))
        if refused:
            raise Conflict(f"{len(refused)} member(s) of team {team.name} would no longer qualify; move them first",
                           field=next(f for f in TEAM_MEMBERSHIP_FIELDS if f in changed), members=refused[:20])


def _hold_role_for_team(session: Session, job_role_id: uuid.UUID) -> None:
    """Lock the job role a team comes to have (created with it, or given it) ``FOR SHARE``
    until the write commits. A change of the role's required skills locks the role, then
    the teams it has (:func:`_guard_role_members`): a team given the role meanwhile would
    escape it, and a seat in that team be judged on the skills being replaced. So such a
    team write waits for the change, or the change for it (and then finds the team among
    the role's). Seats never lock their role: its writes would wait for every one."""
    session.execute(select(JobRole.id).where(JobRole.id == job_role_id).with_for_update(read=True))


def _guard_role_members(session: Session, role: JobRole) -> None:
    """Refuse a change of the role's required skills that a seated agent would not meet.

    The role is locked (the caller's ``lock_for_write``) and then its teams, in id order;
    a seat being taken holds its team's lock while it reads the role's required skills:
    it is either seen here or made under the new requirement.
    """
    teams = list(session.scalars(select(Team).where(Team.job_role_id == role.id).order_by(Team.id)
                                 .with_for_update(key_share=True).execution_options(populate_existing=True)))
    refused = members_lacking_role_skills(session, role, teams)
    if refused:
        raise Conflict(f"{len(refused)} agent(s) seated in teams of job role {role.name} lack a skill it would require; "
                       "move them or give them the skills first", field="required_skill_ids", members=refused[:20])


# pg_advisory_xact_lock(PARENTS_LOCK, hashtext(table)) serializes re-parenting within one entity
# type, so two writes that would each close half of a cycle cannot both see none.
PARENTS_LOCK = int.from_bytes(b"prnt", "big")
_ANCESTOR_IS = """
    WITH RECURSIVE up(id, parent_id) AS (
        SELECT id, parent_id FROM {table} WHERE id = :parent
        UNION SELECT t.id, t.parent_id FROM {table} t JOIN up ON t.id = up.parent_id)
    SELECT EXISTS (SELECT 1 FROM up WHERE id = :entity)"""


def _parent_problem(session: Session, entity: GovernedEntity, parent_id: uuid.UUID) -> str | None:
    """Why ``entity`` may not take ``parent_id`` as its parent: none such, or a cycle (the
    parent is the entity or one of its descendants). A parent newly named is judged under a
    lock per entity type, held to commit; ``UNION`` ends the walk on a cycle already stored."""
    kind = entity.entity_type_value.value
    if session.get(type(entity), parent_id) is None:
        return f"no {kind} with id {parent_id}"
    if parent_id == entity.id:
        return f"a {kind} cannot be its own parent"
    table = type(entity).__tablename__
    session.execute(text("SELECT pg_advisory_xact_lock(:lock, hashtext(:table))"), {"lock": PARENTS_LOCK, "table": table})
    if entity.id is not None and session.scalar(text(_ANCESTOR_IS.format(table=table)), {"parent": parent_id, "entity": entity.id}):
        return f"{kind} {parent_id} is below this {kind}: naming it as parent would make a cycle"
    return None


def _skills(session: Session, ids: list[uuid.UUID], field: str, errors: list[dict[str, str]]) -> list[Skill]:
    unique = list(dict.fromkeys(ids))
    found = {s.id: s for s in session.scalars(select(Skill).where(Skill.id.in_(unique)))}
    errors.extend({"field": field, "message": f"no skill with id {i}"} for i in unique if i not in found)
    return [found[i] for i in unique if i in found]


def _normalized(data: dict[str, Any], model: type[GovernedEntity]) -> dict[str, Any]:
    """Input as the row stores it and the chain signs it: strings NFC, tags sorted and
    unique, and ``attributes`` in its canonical JSON form all the way down (the signed
    version holds that form; a row holding anything else would not match its head).

    NFC can lengthen a string (U+0958 becomes two code points), so a string checked
    against its column's length before normalizing is checked again after."""
    out = {}
    for key, value in data.items():
        if key != "attributes" and holds_nul(value):  # attributes: once their nesting is checked, below
            raise _nul_refused(key)
        if isinstance(value, str):
            value = normalize_text(value)
            limit = getattr(getattr(model.__table__.c.get(key), "type", None), "length", None)
            if limit is not None and len(value) > limit:
                raise InvalidInput(f"{key} is {len(value)} characters long once NFC-normalized; at most {limit} fit",
                                   errors=[{"field": key, "message": f"at most {limit} characters after NFC normalization"}])
        elif key == "tags" and value is not None:
            value = sorted({normalize_text(t) for t in value})
        elif key == "attributes" and value is not None:
            value = as_jsonb_keeps_it(to_json_tree(value, "$.attributes"), "$.attributes")
            if holds_nul(value):
                raise _nul_refused(key)
        out[key] = value
    return out


def _nul_refused(key: str) -> InvalidInput:
    return InvalidInput(f"{key} holds a NUL character (U+0000), which PostgreSQL cannot store",
                        errors=[{"field": key, "message": "must not contain a NUL character (U+0000)"}])


def holds_nul(value: Any) -> bool:
    """Whether ``value`` (a string, or a list or object of them at any depth, keys included)
    holds U+0000, which neither text nor jsonb can hold."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(key) or holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(holds_nul(item) for item in value)
    return False


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
        return Conflict(f"a {entity_type.value} with this {field} already exists", field=field)
    return InvalidInput(f"the write violates {constraint or 'a database constraint'}")


def lock_entity(session: Session, entity_type: EntityType, entity_id: uuid.UUID) -> GovernedEntity:
    """The entity, locked ``FOR NO KEY UPDATE``: writers of it wait, but a row that only
    references it (a foreign-key check's ``FOR KEY SHARE``) does not, so lock orders that
    differ only by such a check (a role change locking the role then its teams, an agent
    written into a team of that role) cannot deadlock."""
    model = ENTITY_MODELS[entity_type]
    entity = session.execute(
        select(model).where(model.id == entity_id).with_for_update(key_share=True).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if entity is None:
        raise NotFound(f"no {entity_type.value} with id {entity_id}", id=str(entity_id))
    return entity


def lock_for_write(session: Session, entity_type: EntityType, entity_id: uuid.UUID, keyring: KeyRing) -> GovernedEntity:
    """Lock the entity to append a version, refusing one whose row drifted from its head
    (``models.chain.head_drift``): ``EntityTampered``, 409, until the row is restored."""
    entity = lock_entity(session, entity_type, entity_id)
    refuse_if_tampered(session, entity, keyring)
    return entity


def refuse_if_tampered(session: Session, entity: GovernedEntity, keyring: KeyRing) -> None:
    drift = head_drift(session, [(entity, governed_content(entity))], keyring).get(entity.id)
    if drift is not None:
        raise tampered_error(entity.entity_type_value, entity.id, drift)


def tampered_error(entity_type: EntityType, entity_id: uuid.UUID, drift: ChainFinding) -> EntityTampered:
    until = ("ever: its head was signed by a sealed key, and no restore can vouch for it" if drift.code == SEALED_CODE
             else "until the row is restored to its head version")
    return EntityTampered(
        f"{entity_type.value} {entity_id}: {drift.detail} ({drift.code}); no version is signed on top of it, "
        f"nor a seat decided on it, {until}",
        id=str(entity_id), finding=drift.code,
    )


def skill_key_taken(session: Session, key: str) -> bool:
    """Whether a skill, deleted or not, holds ``key`` (its column is unique over all rows)."""
    return session.scalar(select(select(Skill.id).where(Skill.skill_key == key).exists())) is True


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
    """Skills ranked by cosine similarity of their embedding to the query's."""
    vector = embedder.embed([normalize_text(query)])[0]
    distance = Skill.embedding.cosine_distance(vector)
    rows = session.execute(
        select(Skill, distance).where(Skill.embedding.is_not(None), Skill.deleted_at.is_(None)).order_by(distance).limit(k)
    ).all()
    return [ScoredSkill(skill, round(1.0 - float(d), 6)) for skill, d in rows]


def team_members(session: Session, *, team_id: uuid.UUID) -> list[uuid.UUID]:
    return list(session.scalars(select(Agent.id).where(Agent.team_id == team_id).order_by(Agent.name)))

