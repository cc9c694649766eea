"""Answers and job results that must not grow without bound: listed jobs, an automatic choice's
excluded teams, an all-unassigned plan (stop 42's review of response sizes)."""

import uuid

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from models.assignment import EXCLUDED_SHOWN, assign_agent
from models.errors import NoEligibleTeam
from models.job_control import LISTED_JSON_BYTES
from models.jobs import Job
from tests.test_assignment import World


@pytest.fixture
def world(db_session, write_ctx, steward) -> World:
    return World(db_session, write_ctx, steward)


@pytest.fixture
def client(quiet_client):
    """These tests look at jobs that stay queued: a worker started by another test must not run them."""
    return quiet_client


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
    from models import bulk_plan

    for i in range(3):
        world.agent(f"Unseated {i}")
    monkeypatch.setattr(bulk_plan, "MAX_BULK_AGENTS", 2)
    unassigned = sorted(db_session.scalars(text(
        "SELECT id FROM agents WHERE team_id IS NULL AND status = 'active' AND deleted_at IS NULL")))
    inputs = bulk_plan.read_plan_inputs(db_session, agent_ids=None, all_unassigned=True)
    assert [agent.id for agent in inputs.agents] == unassigned[:2] and inputs.agent_vectors.shape[0] == 2
    assert len(bulk_plan.read_plan_inputs(db_session, agent_ids=None, all_unassigned=True,
                                          excluding=unassigned[:1]).agents) == 2  # a retry takes the next


def test_the_job_list_leaves_out_params_and_results_too_long_to_list_and_says_so(client, engine) -> None:
    """Every listed job carried its full params and result: 40 bulk jobs of 25,000 agent ids made
    a 39 MB page (page_size=500, about 0.5 GB). A member over 16 KiB as JSON is null in its
    item and named, with its length, in ``abbreviated``; the job's own resource has it all."""
    small = client.post("/api/v1/diagnostics/sleep", json={"seconds": 0}).get_json()
    big = client.post("/api/v1/diagnostics/sleep", json={"seconds": 0}).get_json()
    ids = [str(uuid.UUID(int=i)) for i in range(LISTED_JSON_BYTES // 30)]  # 40 bytes each as JSON text
    with Session(engine) as session, session.begin():
        session.execute(update(Job).where(Job.id == uuid.UUID(big["id"]))
                        .values(params={"agent_ids": ids}, result={"unplaced": ids}, status="succeeded"))
        session.execute(update(Job).where(Job.id == uuid.UUID(small["id"])).values(status="succeeded"))
    response = client.get("/api/v1/jobs", query_string={"kind": "diagnostics.sleep", "page_size": 500})
    assert response.status_code == 200
    items = {item["id"]: item for item in response.get_json()["items"]}
    listed = items[big["id"]]
    assert listed["params"] is None and listed["result"] is None and listed["error"] is None
    assert set(listed["abbreviated"]) == {"params", "result"}
    assert all(size > LISTED_JSON_BYTES for size in listed["abbreviated"].values())
    assert ids[-1].encode() not in response.data  # the long members never reach the page
    assert items[small["id"]]["abbreviated"] == {} and items[small["id"]]["params"] == {"seconds": 0, "steps": 1}
    shown = client.get(f"/api/v1/jobs/{big['id']}").get_json()
    assert shown["params"] == {"agent_ids": ids} and shown["result"] == {"unplaced": ids} and "abbreviated" not in shown
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert "abbreviated" in schema["JobListItem"]["properties"]
