"""Soft-deleted entities take no change (review: deleted entities). ``update_entity`` and
``record_version`` never looked at ``deleted_at``: a deleted industry was renamed by a PATCH,
its chain growing past its deletion, and ``deleted_at`` set back to null undeleted it, though
Plant has no undelete (the incremental audit reports a live entity a digest keeps a tombstone
for as ``entity-undeleted``). Every write to a deleted entity is now 409 ``entity-deleted``
naming it; it is still served with its ``deleted_at`` and its history, and a restore of its row
(edited through SQL) still puts its signed, deleted head back."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from models.assignment import assign_agent
from models.chain import history
from models.chain_verification import verify_entity
from models.entities import ENTITY_MODELS, EntityType, governed_content
from models.errors import EntityDeleted, EntityTampered
from models.registry import record_version, update_entity
from models.repair import restore_entity
from tests.test_assignment import world  # noqa: F401  (fixture)
from tests.test_registry_api import API, gov  # noqa: F401  (fixture)
from tests.test_registry_api import world as api_world

E = EntityType
DELETED_AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DELETED = {"deleted_at": DELETED_AT}


@pytest.fixture
def world_api(client, gov) -> dict:  # noqa: F811
    return api_world.__wrapped__(client, gov)


def _entity(world, entity_type):  # noqa: F811
    """A live entity of the type that nothing else names, so it can be deleted."""
    if entity_type is E.INDUSTRY:
        return world.make(E.INDUSTRY, name="Retired Trade", code="RTRD")
    if entity_type is E.SKILL:
        return world.make(E.SKILL, name="Retired skill", category="technical", description="A skill nobody needs")
    if entity_type is E.JOB_ROLE:
        return world.make(E.JOB_ROLE, name="Retired role", seniority="mid", required_skill_ids=[world.skills[0].id])
    if entity_type is E.TEAM:
        return world.team("Retired team")
    return world.agent("Retired agent")


@pytest.fixture
def deleting(db_session, write_ctx):
    def delete(entity):
        return update_entity(db_session, entity_type=entity.entity_type_value, entity_id=entity.id, changes=DELETED,
                             ctx=write_ctx)
    return delete


CHANGES = {"rename": {"name": "Renamed after deletion"}, "describe": {"description": "changed after deletion"},
           "no-op": {}, "undelete": {"deleted_at": None},
           "delete-again": {"deleted_at": dt.datetime(2027, 1, 1, tzinfo=dt.UTC)},
           "tags": {"tags": ["after"]}}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("entity_type", list(E), ids=[t.value for t in E])
def test_a_deleted_entity_takes_no_change_and_is_not_undeleted(world, db_session, write_ctx, deleting,  # noqa: F811
                                                                entity_type, change) -> None:
    """The rename appended a version after the deletion; the undelete made the entity live again."""
    entity = _entity(world, entity_type)
    deleting(entity)
    versions = [v.version for v in history(db_session, entity_id=entity.id)]
    with pytest.raises(EntityDeleted) as refused, db_session.begin_nested():
        update_entity(db_session, entity_type=entity_type, entity_id=entity.id, changes=CHANGES[change], ctx=write_ctx)
    problem = refused.value.problem(409)
    assert problem["type"] == "/problems/entity-deleted", problem
    assert (problem["id"], problem["entity_type"]) == (str(entity.id), entity_type.value), problem
    assert problem["deleted_at"].startswith("2026-01-01") and str(entity.id) in problem["detail"], problem
    db_session.expire_all()
    stored = db_session.get(ENTITY_MODELS[entity_type], entity.id)
    assert stored.deleted_at == DELETED_AT and stored.name != "Renamed after deletion"
    assert [v.version for v in history(db_session, entity_id=entity.id)] == versions
    assert verify_entity(db_session, entity=stored, keyring=write_ctx.keyring).ok


def test_a_write_by_any_path_signs_nothing_on_top_of_a_deletion(world, db_session, write_ctx, deleting) -> None:  # noqa: F811
    """``record_version`` is what every write (create, PATCH, certification, single and bulk
    assignment) appends through: given content before that is deleted, it refuses."""
    industry = _entity(world, E.INDUSTRY)
    deleting(industry)
    before = governed_content(industry)
    industry.description = "changed by a later release's write path"
    with pytest.raises(EntityDeleted), db_session.begin_nested():
        record_version(db_session, industry, write_ctx, text_changed=True, content_before=before)
    db_session.expire_all()
    assert [v.version for v in history(db_session, entity_id=industry.id)] == [1, 2]


@pytest.mark.parametrize("choice", ["named-team", "automatic"])
def test_a_deleted_agent_is_not_assigned(world, db_session, write_ctx, deleting, choice) -> None:  # noqa: F811
    """Assigning a deleted agent said ``not-eligible`` (or ``no-eligible-team``, every team
    excluded): it is the agent that takes no change."""
    team = world.team("Open team")
    agent = world.agent("Deleted agent")
    deleting(agent)
    with pytest.raises(EntityDeleted) as refused, db_session.begin_nested():
        assign_agent(db_session, agent_id=agent.id, team_id=team.id if choice == "named-team" else None, ctx=write_ctx)
    assert refused.value.extensions["id"] == str(agent.id)


def test_a_patch_of_a_deleted_industry_is_409_and_it_is_still_served(client, gov, world_api, engine,  # noqa: F811
                                                                     write_ctx) -> None:
    """``PATCH /genesis/industries/{id}`` renamed a deleted industry (the reviewer's case)."""
    industry = client.post(f"{API}/genesis/industries", json={**gov, "name": "Gone Trade", "code": "GONE"}).get_json()
    with Session(engine) as session, session.begin():
        update_entity(session, entity_type=E.INDUSTRY, entity_id=uuid.UUID(industry["id"]), changes=DELETED, ctx=write_ctx)
    response = client.patch(f"{API}/genesis/industries/{industry['id']}", json={"name": "Back Again"})
    assert response.status_code == 409 and response.mimetype == "application/problem+json", response.get_json()
    problem = response.get_json()
    assert problem["type"] == "/problems/entity-deleted" and problem["id"] == industry["id"], problem
    assert problem["entity_type"] == "industry" and problem["status"] == 409, problem
    shown = client.get(f"{API}/genesis/industries/{industry['id']}")
    assert shown.status_code == 200 and shown.get_json()["deleted_at"] is not None
    assert shown.get_json()["name"] == "Gone Trade" and shown.get_json()["version"] == 2
    versions = client.get(f"{API}/genesis/industries/{industry['id']}/history").get_json()["items"]
    assert [v["version"] for v in versions] == [1, 2]
    unseated = client.patch(f"{API}/agents/{world_api['agent']['id']}", json={"team_id": None})
    assert unseated.status_code == 200, unseated.get_json()  # a live entity's writes go on
    with Session(engine) as session, session.begin():
        update_entity(session, entity_type=E.AGENT, entity_id=uuid.UUID(world_api["agent"]["id"]), changes=DELETED,
                      ctx=write_ctx)
    seated = client.patch(f"{API}/agents/{world_api['agent']['id']}", json={"team_id": world_api["team"]["id"]})
    assert seated.status_code == 409 and seated.get_json()["type"] == "/problems/entity-deleted", seated.get_json()


def test_the_patch_operations_document_the_409(client) -> None:
    spec = client.get("/openapi.json").get_json()
    for path in ("/api/v1/genesis/industries/{entity_id}", "/api/v1/agents/{entity_id}"):
        assert "409" in spec["paths"][path]["patch"]["responses"], path


@pytest.mark.parametrize("edit", ["name", "undeleted-by-sql"])
def test_a_deleted_entitys_edited_row_is_still_restored_to_its_deleted_head(world, db_session, write_ctx, deleting,  # noqa: F811
                                                                             edit) -> None:
    """A restore is no change: it puts back the signed head, the deletion included."""
    industry = _entity(world, E.INDUSTRY)
    deleting(industry)
    statement = {"name": "UPDATE industries SET name = 'edited by hand' WHERE id = :i",
                 "undeleted-by-sql": "UPDATE industries SET deleted_at = NULL WHERE id = :i"}[edit]
    db_session.execute(text(statement), {"i": industry.id})
    db_session.expire_all()
    with pytest.raises(EntityTampered), db_session.begin_nested():  # tampered first: the row is not its head
        update_entity(db_session, entity_type=E.INDUSTRY, entity_id=industry.id, changes={"name": "x"}, ctx=write_ctx)
    outcome = restore_entity(db_session, entity_type=E.INDUSTRY, entity_id=industry.id, keyring=write_ctx.keyring,
                             embedder=write_ctx.embedder, actor="operator:test")
    assert outcome.restored and outcome.version == 2, outcome
    restored = db_session.get(ENTITY_MODELS[E.INDUSTRY], industry.id)
    assert restored.name == "Retired Trade" and restored.deleted_at == DELETED_AT
    assert verify_entity(db_session, entity=restored, keyring=write_ctx.keyring).ok
    with pytest.raises(EntityDeleted), db_session.begin_nested():  # restored, it is the deleted entity it was
        update_entity(db_session, entity_type=E.INDUSTRY, entity_id=industry.id, changes={"name": "x"}, ctx=write_ctx)
