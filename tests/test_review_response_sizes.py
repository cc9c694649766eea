"""Answers and job results that must not grow without bound, and choices that must not vary
between runs (review: response sizes)."""

import pytest
from sqlalchemy import text

from models.assignment import EXCLUDED_SHOWN, assign_agent
from models.errors import NoEligibleTeam
from tests.test_assignment import World, world  # noqa: F401 - the fixture is used by name


def test_an_automatic_assignment_lists_the_first_20_excluded_teams_and_counts_them_all(
        world: World, db_session, write_ctx) -> None:
    """``excluded`` listed every team of the registry, in the job's result and its error."""
    for i in range(EXCLUDED_SHOWN + 5):
        world.team(f"Other role team {i:02}", role=world.other_role)
    near = world.team("The one team")
    outcome = assign_agent(db_session, agent_id=world.agent("Joiner").id, team_id=None, ctx=write_ctx).as_json()
    assert outcome["team_id"] == str(near.id)
    assert len(outcome["excluded"]) == EXCLUDED_SHOWN and outcome["excluded_count"] == EXCLUDED_SHOWN + 5
    assert [e["name"] for e in outcome["excluded"]] == [f"Other role team {i:02}" for i in range(EXCLUDED_SHOWN)]

    db_session.execute(text("UPDATE teams SET capacity = 50 WHERE id = :t"), {"t": near.id})  # tampered: passed over
    with pytest.raises(NoEligibleTeam) as refused:
        assign_agent(db_session, agent_id=world.agent("Latecomer").id, team_id=None, ctx=write_ctx)
    problem = refused.value.problem()
    assert len(problem["excluded"]) == EXCLUDED_SHOWN and problem["excluded_count"] == EXCLUDED_SHOWN + 6
    assert problem["excluded"][0]["team_id"] == str(near.id)  # the team passed over comes first


def test_an_all_unassigned_plan_reads_at_most_the_cap_of_agents_first_by_id(world: World, db_session,
                                                                             monkeypatch) -> None:
    """``all_unassigned`` loaded every unassigned agent (3 KB of float64 embedding each, and more
    in the solver), with no bound; ``agent_ids`` is capped at 25,000. The cap is lowered here."""
    from models import bulk_assignment

    for i in range(3):
        world.agent(f"Unseated {i}")
    monkeypatch.setattr(bulk_assignment, "MAX_BULK_AGENTS", 2)
    unassigned = sorted(db_session.scalars(text(
        "SELECT id FROM agents WHERE team_id IS NULL AND status = 'active' AND deleted_at IS NULL")))
    inputs = bulk_assignment.read_plan_inputs(db_session, agent_ids=None, all_unassigned=True)
    assert [agent.id for agent in inputs.agents] == unassigned[:2] and inputs.agent_vectors.shape[0] == 2
    assert len(bulk_assignment.read_plan_inputs(db_session, agent_ids=None, all_unassigned=True,
                                                excluding=unassigned[:1]).agents) == 2  # a retry takes the next
