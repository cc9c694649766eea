"""Second review of the day's changes (stop 42): refusals that say what the README says they say."""

from __future__ import annotations

import datetime as dt
from typing import Any

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
