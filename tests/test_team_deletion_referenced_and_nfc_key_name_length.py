"""Second review of the day's changes (stop 42): refusals that say what the README says they say."""

from __future__ import annotations

import datetime as dt

import pytest

from models.assignment import assign_agent
from models.entities import EntityType as E
from models.errors import EntityReferenced
from models.registry import update_entity
from tests.test_assignment import world  # noqa: F401  (fixture)

DELETED = {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}


def test_deleting_a_team_its_seated_agents_name_is_409_entity_referenced(world, db_session, write_ctx) -> None:  # noqa: F811
    """README: deleting an entity a live entity names in ``team_id`` is 409 ``entity-referenced`` with
    ``dependents``; the seat guard answered a generic 409 ``conflict`` with ``members`` instead."""
    team = world.team("Seated team", capacity=2)
    member = world.agent("Member")
    assign_agent(db_session, agent_id=member.id, team_id=team.id, ctx=write_ctx)
    with pytest.raises(EntityReferenced) as refused, db_session.begin_nested():
        update_entity(db_session, entity_type=E.TEAM, entity_id=team.id, changes=DELETED, ctx=write_ctx)
    problem = refused.value.problem(409)
    assert problem["type"] == "/problems/entity-referenced" and problem["field"] == "deleted_at"
    assert problem["dependent_count"] == 1
    assert problem["dependents"] == [{"entity_type": "agent", "id": str(member.id), "field": "team_id"}]
    assert db_session.get(type(team), team.id).deleted_at is None


def test_a_key_name_nfc_makes_longer_than_the_column_is_422_naming_name(client) -> None:
    """U+0958 is two code points in NFC: 200 of them passed the 200-character check, were stored as
    400 and the database refused them, a 422 that named no field ("a value was refused by the database")."""
    response = client.post("/api/v1/api-keys", json={"name": "\u0958" * 200, "scopes": ["read"]})
    assert response.status_code == 422, response.get_json()
    problem = response.get_json()
    assert [e["field"] for e in problem["errors"]] == ["name"], problem
    assert "NFC" in problem["errors"][0]["message"]
    assert client.post("/api/v1/api-keys", json={"name": "\u0958" * 100, "scopes": ["read"]}).status_code == 201
