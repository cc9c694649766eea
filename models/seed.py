"""Demo and bootstrap data, written through the same registry services as the API.

``seed_registry`` is idempotent: every seeded entity has an ``external_key`` and is
skipped when it already exists (found by its key, or, should an API write have changed that,
by its unique name; only an entity whose first version the seed wrote under that key). A seeded
entity since soft-deleted stays deleted, and the seed refuses to create anything that would name it.
It first bootstraps a self-governing steward agent
(with the industry, skill and job role it needs) in one transaction, relying on the
deferred governance foreign key; everything else is governed by that steward.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.api_keys import ACTOR_PREFIX
from models.canonical import strict_json_loads
from models.chain import EntityVersion
from models.entities import ENTITY_MODELS, EntityType
from models.errors import Conflict, PlantError
from models.registry import WriteContext, create_entity
from models.seed_data import AGENT_FIRST_NAMES, INDUSTRIES, JOB_ROLES, SKILLS, TEAMS

T = EntityType
STEWARD_KEY = "steward"
STEWARD_NAME = "Genesis Steward"
# The transaction-level advisory lock a seed holds: two seeds at once (`plant seed` twice, a
# deploy's and an operator's) found the same entities missing, and the second failed on the
# first's codes and names, saying another entity held them.
SEED_LOCK_ID = 0x504C414E5453  # "PLANTS"


@dataclass(frozen=True)
class SeedResult:
    created: dict[str, int]
    steward_id: uuid.UUID


def _find(session: Session, entity_type: EntityType, external_key: str) -> uuid.UUID | None:
    model = ENTITY_MODELS[entity_type]
    return session.scalar(select(model.id).where(model.external_key == external_key))


class _Seeder:
    def __init__(self, session: Session, ctx: WriteContext) -> None:
        self.session, self.ctx = session, ctx
        self.deleted: dict[uuid.UUID, str] = {}  # the seed's entities found soft-deleted: id -> "type 'key'"

    def adopt(self, entity_type: EntityType, key: str, entity_id: uuid.UUID) -> uuid.UUID:
        """``entity_id``, the seed's entity for ``key``, remembered if it is soft-deleted: it is left
        so (the seed undoes no deletion), and nothing new is built on it (:meth:`_refuse_deleted`)."""
        if self.session.scalar(select(ENTITY_MODELS[entity_type].deleted_at).where(
                ENTITY_MODELS[entity_type].id == entity_id)) is not None:
            self.deleted[entity_id] = f"{entity_type.value} {key!r}"
        return entity_id

    def ensure(self, entity_type: EntityType, key: str, data: dict[str, Any], entity_id: uuid.UUID | None = None) -> uuid.UUID:
        existing = _seeded(self.session, entity_type, key, data["name"])
        if existing is not None:
            return self.adopt(entity_type, key, existing)
        self._refuse_deleted(entity_type, key, data)
        try:
            entity = create_entity(
                self.session, entity_type=entity_type, data={**data, "external_key": key}, ctx=self.ctx, entity_id=entity_id
            )
        except PlantError as refused:  # say which seed entity, and why the seed tried to create it at all
            raise type(refused)(
                f"seed: no {entity_type.value} has external_key {key!r}, and creating it was refused: {refused.detail} "
                "(the seed finds its entities by external_key, or by name where an API write changed the key: one "
                "whose key and name were both changed, or another entity holding its name or code, stops every seed "
                "until that key is given back or the name or code freed)",
                **refused.extensions) from refused
        return entity.id

    def _refuse_deleted(self, entity_type: EntityType, key: str, data: dict[str, Any]) -> None:
        """A new entity naming one of the seed's that was deleted: refused, naming the deleted one (the
        write would be refused all the same, but as if the seed's keys or names were at fault)."""
        named = [v for value in data.values() for v in (value if isinstance(value, list) else [value])]
        gone = next((v for v in named if isinstance(v, uuid.UUID) and v in self.deleted), None)
        if gone is not None:
            raise Conflict(f"seed: {entity_type.value} {key!r} is missing, and it would name the seed's "
                           f"{self.deleted[gone]} ({gone}), which is deleted: a write does not newly name a deleted "
                           "entity, and the seed neither undoes a deletion nor makes another under its key; nothing "
                           "was seeded", id=str(gone))


def _seeded(session: Session, entity_type: EntityType, key: str, name: str) -> uuid.UUID | None:
    """The seed's entity for ``key``: the one holding the key, or, when none does, the seed's own
    entity of that (unique) name, whose key an API write changed (every later seed otherwise tried
    to create it again and failed on its name). Only an entity whose first version the seed wrote
    under ``key`` is the seed's: not one an API client created, nor another seeded entity an API
    write gave this key or this name (one a later release's seed adds), which would have the seed
    build that entity's skills, roles and agents on it, unseen."""
    existing = _find(session, entity_type, key)
    if existing is not None:
        why = _not_made_by_the_seed(session, existing, key)
        if why is not None:
            raise Conflict(f"seed: the {entity_type.value} with external_key {key!r} ({existing}) was {why}, not by "
                           "the seed under that key, which will not build on it: give it another external_key, then "
                           "seed again", id=str(existing))
        return existing
    model = ENTITY_MODELS[entity_type]
    named = session.scalar(select(model.id).where(model.name == name))
    if named is None or _not_made_by_the_seed(session, named, key) is not None:
        return None  # creating it then says why it cannot be
    return named


def _not_made_by_the_seed(session: Session, entity_id: uuid.UUID, key: str) -> str | None:
    """Why the entity's first version is not the seed's under ``key``, or None when it is."""
    first = session.execute(select(EntityVersion.actor, EntityVersion.content).where(
        EntityVersion.entity_id == entity_id, EntityVersion.version == 1)).first()
    if first is None:
        return "written with no first version (outside Plant)"
    if first.actor.startswith(ACTOR_PREFIX):
        return f"created through the API ({first.actor})"
    try:
        content = strict_json_loads(bytes(first.content))
    except ValueError:
        content = None
    first_key = content.get("external_key") if isinstance(content, dict) else None
    return None if first_key == key else f"created under external_key {first_key!r}"


def bootstrap_steward(session: Session, ctx: WriteContext) -> uuid.UUID:
    """Create (once) the steward agent that governs itself and the seeded registry."""
    existing = _seeded(session, T.AGENT, STEWARD_KEY, STEWARD_NAME)
    if existing is not None:
        return existing
    steward = uuid.uuid4()
    seeder = _Seeder(session, WriteContext(ctx.actor, ctx.keyring, ctx.embedder, pending_ids=frozenset({steward})))
    gov = {"governance_agent_id": steward}
    industry = seeder.ensure(T.INDUSTRY, "industry-gov", {**gov, "name": "Governance", "code": "GOV",
                                                          "description": "Registry governance and compliance"})
    skill = seeder.ensure(T.SKILL, "skill-registry-stewardship", {
        **gov, "name": "Registry Stewardship", "skill_key": "registry-stewardship", "category": "certification",
        "industry_id": industry,
        "description": "Reviews, approves and audits changes to governed registry entities and their signed history.",
    })
    role = seeder.ensure(T.JOB_ROLE, "role-registry-steward", {
        **gov, "name": "Registry Steward", "seniority": "senior", "industry_id": industry,
        "required_skill_ids": [skill], "description": "Accountable for the integrity of the governed registry.",
    })
    seeder.ensure(T.AGENT, STEWARD_KEY, {
        **gov, "name": STEWARD_NAME, "job_role_id": role, "industry_id": industry, "skill_ids": [skill],
        "description": "The self-governing agent that governs the seeded registry.",
    }, entity_id=steward)
    return steward


def seed_registry(session: Session, ctx: WriteContext) -> SeedResult:
    """Load the demo data set (3+ industries, 18 skills, 10 job roles, 6 teams, 50 agents).

    Holds :data:`SEED_LOCK_ID` until the transaction ends: a second seed waits, then finds
    what the first created (READ COMMITTED: each statement sees what committed before it)."""
    session.execute(select(func.pg_advisory_xact_lock(SEED_LOCK_ID)))
    before = _counts(session)
    seeder = _Seeder(session, ctx)
    steward = seeder.adopt(T.AGENT, STEWARD_KEY, bootstrap_steward(session, ctx))
    gov = {"governance_agent_id": steward}
    industries = {code: seeder.ensure(T.INDUSTRY, f"industry-{code.lower()}", {**gov, "code": code, **data})
                  for code, data in INDUSTRIES.items()}
    skills = {key: seeder.ensure(T.SKILL, f"skill-{key}", {
        **gov, "skill_key": key, "name": name, "category": category, "industry_id": industries[code],
        "description": description}) for key, (name, category, code, description) in SKILLS.items()}
    roles = {key: seeder.ensure(T.JOB_ROLE, f"role-{key}", {
        **gov, "name": name, "seniority": seniority, "industry_id": industries[code],
        "required_skill_ids": [skills[s] for s in required], "description": description})
        for key, (name, seniority, code, required, description) in JOB_ROLES.items()}
    for key, (name, role, code, capacity, description) in TEAMS.items():
        seeder.ensure(T.TEAM, f"team-{key}", {**gov, "name": name, "job_role_id": roles[role],
                                               "industry_id": industries[code], "capacity": capacity,
                                               "description": description})
    role_keys = list(JOB_ROLES)
    for number, first_name in enumerate(AGENT_FIRST_NAMES, start=1):
        role_key = role_keys[(number - 1) % len(role_keys)]
        name, _, code, required, _ = JOB_ROLES[role_key]
        seeder.ensure(T.AGENT, f"agent-{number:03d}", {
            **gov, "name": f"{first_name} ({name} {number:03d})", "job_role_id": roles[role_key],
            "industry_id": industries[code], "skill_ids": [skills[s] for s in required],
            "description": f"{name} agent specialised in {', '.join(SKILLS[s][0] for s in required)}.",
        })
    after = _counts(session)
    return SeedResult({t: after[t] - before[t] for t in after}, steward)


def _counts(session: Session) -> dict[str, int]:
    session.flush()
    return {t.value: session.scalar(select(func.count()).select_from(m)) or 0 for t, m in ENTITY_MODELS.items()}
