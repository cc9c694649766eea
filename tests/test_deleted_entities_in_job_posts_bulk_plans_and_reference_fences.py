"""Deleted entities in job posts, bulk plans and reference fences: a certification or a team assignment of a deleted
entity was accepted (202) and its job then failed, where a single assignment's write says
``entity-deleted``; a bulk assignment called a deleted agent ``no-eligible-team`` (planned) or
``not-eligible`` (deleted after the plan). The POSTs now answer 409 ``entity-deleted`` and create
no job, and a bulk run reports ``entity-deleted`` for the agent, as a single assignment does."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models.bulk_apply import apply_batch
from models.bulk_assignment import assign_teams_in_bulk
from models.db import make_session_factory, transaction
from models.deletion import delete_entities
from models.entities import Agent, EntityType, JobRole
from models.errors import EntityReferenced, InvalidInput
from models.reference_guards import reference_fence
from models.jobs import Job
from models.registry import create_entity, update_entity
from tests.conftest import outcome_once_committed, recorded_statements
from tests.test_assignment import World
from tests.test_assignment import world  # noqa: F401  (fixture)
from tests.test_registry_api import API, gov  # noqa: F401  (fixture)

E = EntityType
DELETED = {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}


def _delete(session, entity_type, entity_id, ctx):
    return update_entity(session, entity_type=entity_type, entity_id=entity_id, changes=DELETED, ctx=ctx)


def _post(client, path, body, status=201, **headers):
    response = client.post(API + path, json=body, headers=headers)
    assert response.status_code == status, response.get_json()
    return response.get_json()


@pytest.fixture
def posted(quiet_client, gov) -> dict:  # noqa: F811
    """A skill, a team and an agent (in no team) that nothing names, so each can be deleted."""
    industry = _post(quiet_client, "/genesis/industries", {**gov, "name": "Deletion Trade", "code": "DELT"})
    skill = _post(quiet_client, "/genesis/skills", {**gov, "name": "Deletable skill", "category": "technical",
                                                    "industry_id": industry["id"], "description": "d"})
    held = _post(quiet_client, "/genesis/skills", {**gov, "name": "Held skill", "category": "technical",
                                                   "industry_id": industry["id"], "description": "d"})
    role = _post(quiet_client, "/genesis/job-roles", {**gov, "name": "Deletable role", "seniority": "mid",
                                                      "required_skill_ids": [held["id"]]})
    team = _post(quiet_client, "/teams", {**gov, "name": "Deletable team", "job_role_id": role["id"], "capacity": 2})
    agent = _post(quiet_client, "/agents", {**gov, "name": "Deletable agent", "job_role_id": role["id"],
                                            "industry_id": industry["id"], "skill_ids": [held["id"]]})
    return {"skill": skill, "team": team, "agent": agent, "role": role}


def _jobs(engine, kind: str) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.kind == kind))


def _delete_committed(engine, ctx, entity_type, entity_id: str) -> None:
    with Session(engine) as session, session.begin():
        _delete(session, entity_type, uuid.UUID(entity_id), ctx)


def _assert_deleted_409(response, entity_id: str, entity_type: str) -> None:
    assert response.status_code == 409 and response.mimetype == "application/problem+json", response.get_json()
    problem = response.get_json()
    assert problem["type"] == "/problems/entity-deleted", problem
    assert (problem["id"], problem["entity_type"]) == (entity_id, entity_type), problem


@pytest.mark.parametrize("deleted", ["skill", "agent", "team"])
def test_a_job_post_naming_a_deleted_entity_is_409_and_creates_no_job(quiet_client, engine, write_ctx, posted,
                                                                      deleted) -> None:
    entity = posted[deleted]
    _delete_committed(engine, write_ctx, E(entity["entity_type"]), entity["id"])
    kind, path, body = {
        "skill": ("skill.certify", f"/genesis/skills/{entity['id']}/certify", {}),
        "agent": ("agent.assign_team", f"/agents/{entity['id']}/assign-team", {}),
        "team": ("agent.assign_team", f"/agents/{posted['agent']['id']}/assign-team", {"team_id": entity["id"]}),
    }[deleted]
    before = _jobs(engine, kind)
    for headers in ({}, {"Idempotency-Key": f"deleted-{deleted}"}):
        _assert_deleted_409(quiet_client.post(API + path, json=body, headers=headers), entity["id"], entity["entity_type"])
    assert _jobs(engine, kind) == before
    unknown = path.replace(entity["id"], str(uuid.uuid4())) if deleted != "team" else path
    missing = quiet_client.post(API + unknown, json={"team_id": str(uuid.uuid4())} if deleted == "team" else body)
    assert missing.status_code == 404, missing.get_json()  # an unknown entity keeps its answer


def test_a_replayed_idempotency_key_still_answers_its_job_after_the_deletion(quiet_client, engine, write_ctx,
                                                                             posted) -> None:
    skill = posted["skill"]
    key = {"Idempotency-Key": "certify-then-delete"}
    first = _post(quiet_client, f"/genesis/skills/{skill['id']}/certify", {}, status=202, **key)
    _delete_committed(engine, write_ctx, E.SKILL, skill["id"])
    replayed = quiet_client.post(f"{API}/genesis/skills/{skill['id']}/certify", json={}, headers=key)
    assert replayed.status_code == 202 and replayed.get_json()["id"] == first["id"], replayed.get_json()
    assert replayed.headers.get("Idempotent-Replayed") == "true"


def test_the_job_posts_document_the_409(client) -> None:
    spec = client.get("/openapi.json").get_json()
    for path in ("/api/v1/genesis/skills/{entity_id}/certify", "/api/v1/agents/{entity_id}/assign-team"):
        assert "entity-deleted" in spec["paths"][path]["post"]["responses"]["409"]["description"], path


def test_a_bulk_plan_reports_a_deleted_agent_as_entity_deleted(engine, write_ctx, committed_steward) -> None:
    """The plan left a deleted agent out as ``no-eligible-team``; a single assignment says ``entity-deleted``."""
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        w = World(session, write_ctx, committed_steward)
        w.team("Bulk deletion team")
        gone, kept = w.agent("Deleted in bulk"), w.agent("Kept in bulk")
        _delete(session, E.AGENT, gone.id, write_ctx)
        gone_id, kept_id = gone.id, kept.id
    outcome = assign_teams_in_bulk(sessions, agent_ids=[gone_id, kept_id], all_unassigned=False, ctx=write_ctx,
                                   progress=lambda *args: None)
    assert outcome.placed == 1, outcome
    assert [(u["agent_id"], u["reason"]) for u in outcome.unplaced] == [(str(gone_id), "entity-deleted")], outcome


def test_a_bulk_batch_refuses_an_agent_deleted_since_the_plan_as_entity_deleted(world, db_session,  # noqa: F811
                                                                                 write_ctx) -> None:
    """The batch called it ``not-eligible`` (its reasons: ``agent is deleted``)."""
    team = world.team("Batch deletion team")
    agent = world.agent("Deleted before its batch")
    _delete(db_session, E.AGENT, agent.id, write_ctx)
    refused = apply_batch(db_session, [(agent.id, team.id)], ctx=write_ctx, seated={agent.id: None})
    assert [(a, reason) for a, reason, _ in refused] == [(agent.id, "entity-deleted")], refused


def _refused(session, call) -> dict:
    with pytest.raises(EntityReferenced) as refused, session.begin_nested():
        call()
    return refused.value.problem(409)


@pytest.mark.parametrize("edit", ["reference-nulled", "row-marked-deleted", "skill-link-removed"])
def test_a_dependent_whose_row_was_edited_through_sql_still_holds_the_deletion_back(world, db_session,  # noqa: F811
                                                                                   write_ctx, edit) -> None:
    """Its signed head names the entity, and a restore puts that back: the deletion is refused."""
    skill = world.make(E.SKILL, name="Held skill", category="technical", description="d")
    agent = world.agent("Editing agent", skills=[*world.skills[:2], skill])
    db_session.flush()
    db_session.execute(text({
        "reference-nulled": "UPDATE agents SET industry_id = NULL WHERE id = :id",
        "row-marked-deleted": "UPDATE agents SET deleted_at = now() WHERE id = :id",
        "skill-link-removed": "DELETE FROM agent_skills WHERE agent_id = :id AND skill_id = :skill",
    }[edit]), {"id": agent.id, "skill": skill.id})
    db_session.expire_all()
    kind, referent, field = ((E.SKILL, skill.id, "skill_ids") if edit == "skill-link-removed"
                             else (E.INDUSTRY, world.industry.id, "industry_id"))
    problem = _refused(db_session, lambda: _delete(db_session, kind, referent, write_ctx))
    assert {("agent", str(agent.id), field)} <= {(d["entity_type"], d["id"], d["field"]) for d in problem["dependents"]}


def test_entities_deleted_together_are_refused_together_by_a_dependent_outside_them(world, db_session,  # noqa: F811
                                                                                    write_ctx) -> None:
    governor = world.agent("Pair governor")
    role = world.make(E.JOB_ROLE, name="Pair role", seniority="mid", required_skill_ids=[world.skills[0].id],
                      governance_agent_id=governor.id)
    update_entity(db_session, entity_type=E.AGENT, entity_id=governor.id, changes={"job_role_id": role.id}, ctx=write_ctx)
    outsider = world.agent("Outside holder", role=role)
    problem = _refused(db_session, lambda: delete_entities(
        db_session, [(E.AGENT, governor.id), (E.JOB_ROLE, role.id)], ctx=write_ctx))
    assert problem["dependents"] == [{"entity_type": "agent", "id": str(outsider.id), "field": "job_role_id"}], problem
    db_session.expire_all()
    assert db_session.get(Agent, governor.id).deleted_at is None  # the one deleted first was rolled back
    assert db_session.get(JobRole, role.id).deleted_at is None
    alone = _refused(db_session, lambda: _delete(db_session, E.JOB_ROLE, role.id, write_ctx))
    assert {d["id"] for d in alone["dependents"]} == {str(governor.id), str(outsider.id)}  # the set was the call's
    delete_entities(db_session, [(E.AGENT, governor.id), (E.JOB_ROLE, role.id), (E.AGENT, outsider.id)], ctx=write_ctx)
    db_session.expire_all()
    assert db_session.get(JobRole, role.id).deleted_at is not None


def test_a_create_naming_many_entities_fences_them_in_two_statements(world, db_session, write_ctx,  # noqa: F811
                                                                     engine) -> None:
    """``reference_fence`` took each named entity's lock, and read its row, one statement each:
    26 round trips for an agent naming 10 skills, its role, industry and governor. Now one takes
    every lock, in the same order, and one reads every row after them."""
    extra = [world.make(E.SKILL, name=f"Fenced skill {i}", category="technical", description="d") for i in range(10)]
    gone = world.make(E.SKILL, name="Fenced gone skill", category="technical", description="d")
    _delete(db_session, E.SKILL, gone.id, write_ctx)
    with recorded_statements(db_session.get_bind()) as seen:
        world.agent("Fenced agent", skills=[*world.skills[:2], *extra])
    assert sum("unnest" in sql and "pg_advisory_xact_lock_shared" in sql for _, sql in seen) == 1, seen
    assert sum("hashtext(:entity)" in sql or "%(entity)s" in sql for _, sql in seen) == 0, seen  # no lock one at a time
    with recorded_statements(db_session.get_bind()) as seen:
        # the row read each lock's wait is for, with its deleted referent named (apply_fields' earlier read bypassed)
        with pytest.raises(InvalidInput) as refused, db_session.begin_nested():
            agent = Agent(id=uuid.uuid4(), version=0, name="Late namer", job_role_id=world.role.id,
                          industry_id=world.industry.id, governance_agent_id=world.gov["governance_agent_id"])
            reference_fence(db_session, agent, content_before=None, pending=frozenset(), keyring=write_ctx.keyring,
                            content={"industry_id": str(world.industry.id), "skill_ids": [str(gone.id), str(extra[0].id)]})
    assert [e["field"] for e in refused.value.extensions["errors"]] == ["skill_ids"], refused.value.extensions
    assert gone.id.hex[:8] in refused.value.extensions["errors"][0]["message"]
    assert len([sql for _, sql in seen if "pg_advisory" in sql or "deleted_at IS NOT NULL" in sql]) == 2, seen


def test_a_create_naming_several_entities_waits_for_a_later_ones_deletion(engine, write_ctx, committed_steward) -> None:
    """The one locking statement takes the locks in order: one further down its list, held by a
    deletion committing, holds it back until the deletion commits, and the row read after it
    then refuses the field (422), as separate statements did."""
    governed = {"governance_agent_id": committed_steward}
    with Session(engine) as session, session.begin():
        industry = create_entity(session, entity_type=E.INDUSTRY, ctx=write_ctx, data={**governed, "name": "Fenced Trade",
                                                                                      "code": "FNCD"}).id
        parent = create_entity(session, entity_type=E.SKILL, ctx=write_ctx, data={
            **governed, "name": "Fenced parent", "category": "technical", "description": "d"}).id
    deleting = Session(engine)
    deleting.begin()
    _delete(deleting, E.SKILL, parent, write_ctx)

    def create_child() -> uuid.UUID:
        with Session(engine) as session, session.begin():
            return create_entity(session, entity_type=E.SKILL, ctx=write_ctx, data={
                **governed, "name": "Fenced child", "category": "technical", "description": "d", "industry_id": industry,
                "parent_id": parent}).id

    outcome = outcome_once_committed(engine, deleting, create_child, "the child's create")
    assert len(outcome) == 1 and isinstance(outcome[0], InvalidInput), outcome
    assert [e["field"] for e in outcome[0].extensions["errors"]] == ["parent_id"], outcome[0].extensions


@pytest.mark.parametrize("attributes", [{}, {"deleted_at": None}], ids=["plain", "nested-deleted-at-null"])
def test_a_write_does_not_newly_name_an_entity_undeleted_through_sql(world, db_session, write_ctx,  # noqa: F811
                                                                     attributes) -> None:
    """A deleted industry whose row had ``deleted_at`` nulled through SQL was named by a new skill
    (the rows alone were read): a restore of the industry then put its signed deletion back, under a
    live skill naming it. Its signed head records the deletion: 422 naming the field. Canonical
    content sorts ``attributes`` (holding ``"deleted_at":null``) before the top-level ``deleted_at``:
    a byte search of the head took such an industry for live (the heads are parsed now)."""
    industry = world.make(E.INDUSTRY, name="Undeleted by SQL", code="UNDS", attributes=attributes)
    _delete(db_session, E.INDUSTRY, industry.id, write_ctx)
    db_session.flush()
    db_session.execute(text("UPDATE industries SET deleted_at = NULL WHERE id = :id"), {"id": industry.id})
    db_session.expire_all()
    with pytest.raises(InvalidInput) as refused, db_session.begin_nested():
        world.make(E.SKILL, name="Naming the undeleted", category="technical", description="d", industry_id=industry.id)
    assert [e["field"] for e in refused.value.extensions["errors"]] == ["industry_id"], refused.value.extensions
    assert "is deleted" in refused.value.extensions["errors"][0]["message"]
