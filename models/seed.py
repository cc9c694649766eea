"""Demo and bootstrap data, written through the same registry services as the API.

``seed_registry`` is idempotent: every seeded entity has an ``external_key`` and is
skipped when it already exists (found by its key, or, should an API write have changed that,
by its unique name, the one it created under that key; never an entity the API created). It first bootstraps a self-governing steward agent
(with the industry, skill and job role it needs) in one transaction, relying on the
deferred governance foreign key; everything else is governed by that steward.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.canonical import strict_json_loads
from models.chain import EntityVersion
from models.entities import ENTITY_MODELS, EntityType
from models.errors import Conflict, PlantError
from models.registry import WriteContext, create_entity
from models.seed_data import AGENT_FIRST_NAMES, INDUSTRIES, JOB_ROLES, SKILLS, TEAMS

T = EntityType
STEWARD_KEY = "steward"
STEWARD_NAME = "Genesis Steward"
API_ACTOR_PREFIX = "api-key:"  # the actor of a version written through the API (web.auth.current_actor)


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

    def ensure(self, entity_type: EntityType, key: str, data: dict[str, Any], entity_id: uuid.UUID | None = None) -> uuid.UUID:
        existing = _seeded(self.session, entity_type, key, data["name"])
        if existing is not None:
            return existing
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


def _seeded(session: Session, entity_type: EntityType, key: str, name: str) -> uuid.UUID | None:
    """The seed's entity for ``key``: the one holding the key, or, when none does, the seed's own
    entity of that (unique) name, whose key an API write changed (every later seed otherwise tried
    to create it again and failed on its name). An entity the API created is never the seed's."""
    existing = _find(session, entity_type, key)
    if existing is not None:
        _refuse_if_written_through_the_api(session, entity_type, key, existing)
        return existing
    model = ENTITY_MODELS[entity_type]
    named = session.scalar(select(model.id).where(model.name == name))
    # Only the entity the seed created under this very key: another seeded entity an API write
    # renamed to this name (one a later release's seed adds) is not it.
    if named is None or _creator(session, named).startswith(API_ACTOR_PREFIX) or _first_key(session, named) != key:
        return None  # creating it then says why it cannot be
    return named


def _first_key(session: Session, entity_id: uuid.UUID) -> Any:
    """The external_key the entity's first version was written with (None when it has none)."""
    content = session.scalar(select(EntityVersion.content).where(EntityVersion.entity_id == entity_id,
                                                                  EntityVersion.version == 1))
    try:
        first = strict_json_loads(bytes(content)) if content is not None else None
    except ValueError:
        return None
    return first.get("external_key") if isinstance(first, dict) else None


def _creator(session: Session, entity_id: uuid.UUID) -> str:
    """Who wrote the entity's first version ("" when it has none)."""
    return session.scalar(select(EntityVersion.actor).where(EntityVersion.entity_id == entity_id,
                                                             EntityVersion.version == 1)) or ""


def _refuse_if_written_through_the_api(session: Session, entity_type: EntityType, key: str, entity_id: uuid.UUID) -> None:
    """The seed finds its entities by ``external_key``; one an API client created under a key
    the seed had not written yet (a key a later release's seed adds) would have the seed build
    its skills, roles and agents on it, unseen. Its first version names who created it."""
    creator = _creator(session, entity_id)
    if creator.startswith(API_ACTOR_PREFIX):
        raise Conflict(f"seed: the {entity_type.value} with external_key {key!r} ({entity_id}) was created through "
                       f"the API ({creator}), not by the seed, which will not build on it: give it another "
                       "external_key, then seed again", id=str(entity_id))


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
    """Load the demo data set (3+ industries, 18 skills, 10 job roles, 6 teams, 50 agents)."""
    before = _counts(session)
    steward = bootstrap_steward(session, ctx)
    seeder = _Seeder(session, ctx)
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
