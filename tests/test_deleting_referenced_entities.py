"""Referential integrity of the registry under deletion (``models.reference_guards``): no live
entity names a deleted one. Deleting an entity that live entities name is 409
``entity-referenced`` listing them, for every reference between the entity types; a write does
not newly name a deleted entity (parents included), nor undelete one (no deleted entity takes a change); a
deletion racing a write that newly names the entity is ordered against it; a dependent whose row was edited
through SQL still counts (by its signed head); and entities naming each other are deleted together."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.entities import EntityType, Industry, Skill
from models.errors import EntityDeleted, EntityReferenced, InvalidInput
from models.deletion import delete_entities
from models.registry import create_entity, update_entity
from tests.conftest import outcome_once_committed
from tests.test_assignment import world  # noqa: F401  (fixture)
from tests.test_registry_api import gov  # noqa: F401  (fixture)
from tests.test_registry_api import world as api_world


@pytest.fixture
def world_api(client, gov) -> dict:  # noqa: F811
    return api_world.__wrapped__(client, gov)

E = EntityType
DELETED = {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}


def _delete(session, entity_type, entity_id, ctx):
    return update_entity(session, entity_type=entity_type, entity_id=entity_id, changes=DELETED, ctx=ctx)


def _refused_deletion(session, entity_type, entity_id, ctx) -> dict:
    with pytest.raises(EntityReferenced) as refused, session.begin_nested():
        _delete(session, entity_type, entity_id, ctx)
    return refused.value.problem(409)


def _named_by(problem: dict) -> set[tuple[str, str, str]]:
    return {(d["entity_type"], d["id"], d["field"]) for d in problem["dependents"]}


# Each reference: the referent, and how to make a live entity of another type name it.
CASES = ["skill-industry", "role-industry", "team-industry", "agent-industry", "team-role", "agent-role",
         "role-skill", "agent-skill", "industry-governor", "industry-parent", "skill-parent"]


@pytest.mark.parametrize("case", CASES)
def test_deleting_an_entity_live_entities_name_is_409_naming_them(world, db_session, write_ctx, case) -> None:  # noqa: F811
    """Nothing stopped deleting an industry live skills named (nor any other referent): the skill
    stayed live naming an industry no listing shows, and certifying it failed for good."""
    w = world
    industry = w.make(E.INDUSTRY, name="Referenced Industry", code="REFD")
    skill = w.make(E.SKILL, name="Referenced skill", category="technical", description="A skill others name")
    role = w.make(E.JOB_ROLE, name="Referenced role", seniority="mid", required_skill_ids=[w.skills[0].id])
    governor = w.make(E.AGENT, name="Referenced governor", job_role_id=w.role.id, industry_id=w.industry.id,
                      skill_ids=[s.id for s in w.skills[:2]])
    referent, dependent, field = {
        "skill-industry": lambda: (industry, w.make(E.SKILL, name="Dep", category="technical", description="d",
                                                    industry_id=industry.id), "industry_id"),
        "role-industry": lambda: (industry, w.make(E.JOB_ROLE, name="Dep", seniority="mid",
                                                   required_skill_ids=[w.skills[0].id], industry_id=industry.id), "industry_id"),
        "team-industry": lambda: (industry, w.make(E.TEAM, name="Dep", capacity=1, job_role_id=w.role.id,
                                                   industry_id=industry.id), "industry_id"),
        "agent-industry": lambda: (industry, w.agent("Dep", industry=industry), "industry_id"),
        "team-role": lambda: (role, w.make(E.TEAM, name="Dep", capacity=1, job_role_id=role.id), "job_role_id"),
        "agent-role": lambda: (role, w.agent("Dep", role=role), "job_role_id"),
        "role-skill": lambda: (skill, w.make(E.JOB_ROLE, name="Dep", seniority="mid", required_skill_ids=[skill.id]),
                               "required_skill_ids"),
        "agent-skill": lambda: (skill, w.agent("Dep", skills=[*w.skills[:2], skill]), "skill_ids"),
        "industry-governor": lambda: (governor, w.make(E.INDUSTRY, name="Dep", code="DEPG",
                                                       governance_agent_id=governor.id), "governance_agent_id"),
        "industry-parent": lambda: (industry, w.make(E.INDUSTRY, name="Dep", code="DEPP", parent_id=industry.id),
                                    "parent_id"),
        "skill-parent": lambda: (skill, w.make(E.SKILL, name="Dep", category="technical", description="d",
                                               parent_id=skill.id), "parent_id"),
    }[case]()
    kind = referent.entity_type_value
    problem = _refused_deletion(db_session, kind, referent.id, write_ctx)
    assert problem["type"] == "/problems/entity-referenced" and problem["status"] == 409, problem
    assert (problem["id"], problem["field"], problem["dependent_count"]) == (str(referent.id), "deleted_at", 1), problem
    assert _named_by(problem) == {(dependent.entity_type_value.value, str(dependent.id), field)}, problem
    db_session.expire_all()
    assert db_session.get(type(referent), referent.id).deleted_at is None
    # Once the dependent is deleted too, the referent goes.
    _delete(db_session, dependent.entity_type_value, dependent.id, write_ctx)
    assert _delete(db_session, kind, referent.id, write_ctx).deleted_at is not None


def test_a_self_governing_agent_is_deleted_and_deleted_dependents_do_not_count(world, db_session, write_ctx) -> None:  # noqa: F811
    """An entity naming itself (the steward governs itself) is no dependent, nor is a deleted one."""
    w = world
    agent = w.agent("Self governed")
    update_entity(db_session, entity_type=E.AGENT, entity_id=agent.id, changes={"governance_agent_id": agent.id}, ctx=write_ctx)
    assert _delete(db_session, E.AGENT, agent.id, write_ctx).deleted_at is not None


def test_the_refusal_lists_twenty_dependents_and_counts_them_all(world, db_session, write_ctx) -> None:  # noqa: F811
    industry = world.make(E.INDUSTRY, name="Busy Industry", code="BUSY")
    for i in range(23):
        world.make(E.SKILL, name=f"Busy skill {i}", category="technical", description="d", industry_id=industry.id)
    problem = _refused_deletion(db_session, E.INDUSTRY, industry.id, write_ctx)
    assert problem["dependent_count"] == 23 and len(problem["dependents"]) == 20, problem
    assert "named by 23 live entities" in problem["detail"]


def test_a_write_does_not_newly_name_a_deleted_parent(world, db_session, write_ctx) -> None:  # noqa: F811
    """``parent_id`` was checked for existence and cycles only: a new industry took a deleted one as parent."""
    gone = world.make(E.INDUSTRY, name="Gone Parent", code="GONE")
    _delete(db_session, E.INDUSTRY, gone.id, write_ctx)
    child = world.make(E.INDUSTRY, name="Orphan Child", code="ORPH")
    for attempt in (lambda: world.make(E.INDUSTRY, name="New Child", code="NEWC", parent_id=gone.id),
                    lambda: update_entity(db_session, entity_type=E.INDUSTRY, entity_id=child.id,
                                          changes={"parent_id": gone.id}, ctx=write_ctx)):
        with pytest.raises(InvalidInput) as refused, db_session.begin_nested():
            attempt()
        assert [e["field"] for e in refused.value.extensions["errors"]] == ["parent_id"], refused.value.extensions
        assert "is deleted" in refused.value.extensions["errors"][0]["message"]


def test_undeleting_an_entity_that_names_a_deleted_one_is_refused(world, db_session, write_ctx) -> None:  # noqa: F811
    """An undelete (``deleted_at`` set back to null) would make every reference of the entity
    live again, one naming an industry deleted meanwhile too: Plant has no undelete, and a
    deleted entity takes no change (409 ``entity-deleted``), so it stays deleted."""
    industry = world.make(E.INDUSTRY, name="Short Lived", code="SHRT")
    skill = world.make(E.SKILL, name="Undeleted skill", category="technical", description="d", industry_id=industry.id)
    _delete(db_session, E.SKILL, skill.id, write_ctx)
    _delete(db_session, E.INDUSTRY, industry.id, write_ctx)
    with pytest.raises(EntityDeleted) as refused, db_session.begin_nested():
        update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"deleted_at": None}, ctx=write_ctx)
    assert refused.value.extensions["id"] == str(skill.id), refused.value.extensions
    assert db_session.get(Skill, skill.id).deleted_at is not None


@pytest.mark.parametrize("field", ["industry_id", "job_role_id", "governance_agent_id", "parent_id", "skill_ids"])
def test_a_patch_naming_a_wrong_type_or_unknown_id_is_422_naming_the_field(client, world_api, field) -> None:
    """A reference to an entity of another type is no reference: 422 naming the field, never a 500."""
    agent = world_api["agent"]
    other = world_api["team"]["id"]  # a team's id names no industry, role, agent or skill
    for value in (other, str(uuid.UUID(int=7))):
        body = {field: [value] if field == "skill_ids" else value}
        response = client.patch(f"/api/v1/agents/{agent['id']}", json=body)
        assert response.status_code == 422, response.get_json()
        assert response.content_type == "application/problem+json"
        assert [e["field"] for e in response.get_json()["errors"]] == [field], response.get_json()


def _committed_industry(engine, ctx, steward, code: str) -> uuid.UUID:
    with Session(engine) as session, session.begin():
        return create_entity(session, entity_type=E.INDUSTRY, ctx=ctx, data={
            "name": f"Raced {code}", "code": code, "governance_agent_id": steward}).id


def _new_skill(engine, ctx, steward, industry: uuid.UUID) -> uuid.UUID:
    with Session(engine) as session, session.begin():
        return create_entity(session, entity_type=E.SKILL, ctx=ctx, data={
            "name": "Raced skill", "category": "technical", "description": "d", "industry_id": industry,
            "governance_agent_id": steward}).id


def test_a_skill_naming_an_industry_whose_deletion_is_committing_is_refused(engine, write_ctx, committed_steward) -> None:
    """The deletion flushed first: the skill's create read the industry live (the deletion not
    committed) and committed naming it once the deletion had, a live skill of a deleted industry.
    It now waits for the deletion and is refused as it would have been after it: 422 naming the field."""
    industry = _committed_industry(engine, write_ctx, committed_steward, "RACEA")
    deleting = Session(engine)
    deleting.begin()
    _delete(deleting, E.INDUSTRY, industry, write_ctx)
    outcome = outcome_once_committed(engine, deleting, lambda: _new_skill(engine, write_ctx, committed_steward, industry),
                                     "the skill's create")
    assert len(outcome) == 1 and isinstance(outcome[0], InvalidInput), outcome
    assert [e["field"] for e in outcome[0].extensions["errors"]] == ["industry_id"], outcome[0].extensions
    with Session(engine) as session:
        assert session.scalar(select(Skill.id).where(Skill.industry_id == industry)) is None


def test_an_industry_whose_new_skill_is_committing_is_not_deleted(engine, write_ctx, committed_steward) -> None:
    """The other order: the skill flushed first; the deletion found no dependent (the skill not
    committed) and committed too. It now waits for the skill and is refused, 409 naming it."""
    industry = _committed_industry(engine, write_ctx, committed_steward, "RACEB")
    naming = Session(engine)
    naming.begin()
    skill = create_entity(naming, entity_type=E.SKILL, ctx=write_ctx, data={
        "name": "Raced skill", "category": "technical", "description": "d", "industry_id": industry,
        "governance_agent_id": committed_steward}).id
    naming.flush()

    def delete() -> None:
        with Session(engine) as session, session.begin():
            _delete(session, E.INDUSTRY, industry, write_ctx)

    outcome = outcome_once_committed(engine, naming, delete, "the deletion")
    assert len(outcome) == 1 and isinstance(outcome[0], EntityReferenced), outcome
    assert outcome[0].extensions["dependents"] == [{"entity_type": "skill", "id": str(skill), "field": "industry_id"}]
    with Session(engine) as session:
        assert session.get(Industry, industry).deleted_at is None


def test_a_deletion_is_not_hidden_from_a_dependent_whose_row_was_edited(world, db_session, write_ctx, keyring) -> None:  # noqa: F811
    """The deletion's dependents were read from rows alone: a skill whose row had its industry_id
    nulled through SQL let its industry's deletion through, and ``plant entity restore`` of the skill
    then put back its signed industry_id, a live skill naming a deleted industry. A live entity's
    signed head naming the entity now refuses the deletion too."""
    from sqlalchemy import text

    from models.repair import restore_entity
    from tests.conftest import EMBEDDER

    industry = world.make(E.INDUSTRY, name="Hidden Referent", code="HIDN")
    skill = world.make(E.SKILL, name="Hiding skill", category="technical", description="d", industry_id=industry.id)
    db_session.flush()
    db_session.execute(text("UPDATE skills SET industry_id = NULL WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    problem = _refused_deletion(db_session, E.INDUSTRY, industry.id, write_ctx)
    assert _named_by(problem) == {("skill", str(skill.id), "industry_id")}, problem
    restore_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER, actor="test")
    db_session.expire_all()
    restored = db_session.get(Skill, skill.id)
    assert restored.industry_id == industry.id
    assert db_session.get(Industry, industry.id).deleted_at is None, "a live skill names a deleted industry"


def test_two_entities_naming_each_other_are_deleted_together(world, db_session, write_ctx) -> None:  # noqa: F811
    """The dependents were checked at each deletion, one entity at a time: two live entities naming
    each other (an agent holding a job role that it governs) could never be deleted. Deleted one at
    a time they still cannot (each is judged against the entities live when it is written), but
    ``delete_entities`` deletes them together: one of the set is no dependent of another."""
    governor = world.agent("Cyclic governor")
    role = world.make(E.JOB_ROLE, name="Cyclic role", seniority="mid", required_skill_ids=[world.skills[0].id],
                      governance_agent_id=governor.id)
    update_entity(db_session, entity_type=E.AGENT, entity_id=governor.id, changes={"job_role_id": role.id}, ctx=write_ctx)
    for first, other in (((E.JOB_ROLE, role), governor), ((E.AGENT, governor), role)):
        problem = _refused_deletion(db_session, first[0], first[1].id, write_ctx)
        assert _named_by(problem) == {(other.entity_type_value.value, str(other.id),
                                       "job_role_id" if other is governor else "governance_agent_id")}, problem
    deleted = delete_entities(db_session, [(E.JOB_ROLE, role.id), (E.AGENT, governor.id)], ctx=write_ctx)
    assert [e.id for e in deleted] == [role.id, governor.id] and all(e.deleted_at is not None for e in deleted)
