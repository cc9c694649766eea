"""Team assignment rules, automatic choice, bulk planning and concurrency on real Postgres."""

import json
import struct
import threading
import uuid

import numpy as np
import pytest
from sqlalchemy import func, select, text, update

from models import bulk_assignment, bulk_plan

from models.assignment import assign_agent, rank_teams
from models.errors import Conflict, EntityTampered, JobCancelled, NoEligibleTeam, NotEligible, TeamFull
from models.bulk_apply import apply_batch
from models.bulk_assignment import assign_teams_in_bulk
from models.bulk_plan import plan_assignment
from models.chain import history
from models.chain_verification import verify_entity
from models.db import make_session_factory, transaction
from models.embeddings import EMBEDDING_DIM
from models.entities import Agent, EntityType, JobRole, Team
from models.jobs import BulkAssignmentMove
from models.membership import required_skills_of
from models.registry import create_entity, update_entity
from models.repair import restore_entity
from tests.conftest import busy_sessions, lock_waiters, recorded_statements, wait_for

E = EntityType


class World:
    """An industry, two job roles with skills, and helpers to add teams and agents."""

    def __init__(self, session, ctx, steward) -> None:
        self.session, self.ctx, self.gov = session, ctx, {"governance_agent_id": steward}
        self.industry = self.make(E.INDUSTRY, name="Assign Industry", code="ASG")
        self.other_industry = self.make(E.INDUSTRY, name="Other Industry", code="OTH")
        self.skills = [self.make(E.SKILL, name=f"Assign skill {i}", skill_key=f"assign-skill-{i}", category="technical",
                                 description=f"Assignment skill number {i}") for i in range(3)]
        self.role = self.make(E.JOB_ROLE, name="Assigner", seniority="mid", required_skill_ids=[s.id for s in self.skills[:2]])
        self.other_role = self.make(E.JOB_ROLE, name="Other role", seniority="mid", required_skill_ids=[self.skills[2].id])

    def make(self, entity_type, **data):
        return create_entity(self.session, entity_type=entity_type, data={**self.gov, **data}, ctx=self.ctx)

    def team(self, name, capacity=3, role=None, industry=None, description=""):
        return self.make(E.TEAM, name=name, capacity=capacity, job_role_id=(role or self.role).id,
                         industry_id=(industry or self.industry).id, description=description)

    def agent(self, name, skills=None, role=None, industry=None, description=""):
        skills = self.skills[:2] if skills is None else skills
        return self.make(E.AGENT, name=name, job_role_id=(role or self.role).id, industry_id=(industry or self.industry).id,
                         skill_ids=[s.id for s in skills], description=description)


@pytest.fixture
def world(db_session, write_ctx, steward) -> World:
    return World(db_session, write_ctx, steward)


def test_assign_appends_an_agent_version_and_moving_frees_the_seat(world, db_session, write_ctx) -> None:
    a, b = world.team("Team A", capacity=1), world.team("Team B", capacity=1)
    agent = world.agent("Mover")
    assert assign_agent(db_session, agent_id=agent.id, team_id=a.id, ctx=write_ctx).team_id == a.id
    moved = assign_agent(db_session, agent_id=agent.id, team_id=b.id, ctx=write_ctx)
    assert moved.previous_team_id == a.id and agent.team_id == b.id
    assert [v.version for v in history(db_session, entity_id=agent.id)] == [1, 2, 3]
    # The seat in A is free again: another agent fits.
    assert assign_agent(db_session, agent_id=world.agent("Next").id, team_id=a.id, ctx=write_ctx).team_id == a.id


@pytest.mark.parametrize("breaks", ["role", "industry", "skills", "suspended"])
def test_each_eligibility_rule_is_enforced(world, db_session, write_ctx, breaks) -> None:
    team = world.team("Strict team")
    agent = {
        "role": lambda: world.agent("Wrong role", skills=[world.skills[2]], role=world.other_role),
        "industry": lambda: world.agent("Wrong industry", industry=world.other_industry),
        "skills": lambda: world.agent("Unskilled", skills=[world.skills[0], world.skills[2]]),
        "suspended": lambda: world.agent("Sleepy"),
    }[breaks]()
    if breaks == "suspended":
        update_entity(db_session, entity_type=E.AGENT, entity_id=agent.id, changes={"status": "suspended"}, ctx=write_ctx)
    with pytest.raises(NotEligible):
        assign_agent(db_session, agent_id=agent.id, team_id=team.id, ctx=write_ctx)
    assert db_session.get(Agent, agent.id).team_id is None


def test_a_full_team_refuses(world, db_session, write_ctx) -> None:
    team = world.team("Tiny", capacity=1)
    assign_agent(db_session, agent_id=world.agent("First").id, team_id=team.id, ctx=write_ctx)
    with pytest.raises(TeamFull):
        assign_agent(db_session, agent_id=world.agent("Second").id, team_id=team.id, ctx=write_ctx)


def test_auto_picks_the_most_similar_eligible_team_and_explains(world, db_session, write_ctx) -> None:
    world.team("Ocean Freight Team", description="container shipping ocean freight vessels ports")
    near = world.team("Data Science Team", description="machine learning models statistics data science")
    world.team("Wrong Role Team", role=world.other_role)
    agent = world.agent("Data Scientist", description="machine learning statistics data science models")
    outcome = assign_agent(db_session, agent_id=agent.id, team_id=None, ctx=write_ctx)
    assert outcome.team_id == near.id
    assert outcome.candidates[0]["team_id"] == str(near.id)
    assert outcome.candidates[0]["score"] >= outcome.candidates[1]["score"]
    excluded = {e["name"]: e["reasons"] for e in outcome.excluded}
    assert "team's job role is not the agent's" in excluded["Wrong Role Team"]


def test_auto_passes_over_a_team_that_became_ineligible_after_it_was_ranked(world, db_session, write_ctx,
                                                                             monkeypatch) -> None:
    """The best team retired between the ranking and its lock: the next best takes the agent
    (the assignment failed, although another eligible team had free seats; helper-65)."""
    from models import assignment

    world.team("Ocean Freight Team", description="container shipping ocean freight vessels ports")
    world.team("Data Science Team", description="machine learning models statistics data science")
    agent = world.agent("Data Scientist", description="machine learning statistics data science models")
    ranked = assignment.rank_teams
    retired: list[str] = []

    def ranked_then_best_retired(session, agent, required):  # noqa: ANN001, ANN202 - rank_teams' signature
        eligible, excluded = ranked(session, agent, required)
        retired.append(eligible[0]["team_id"])
        update_entity(session, entity_type=E.TEAM, entity_id=uuid.UUID(retired[0]), changes={"status": "retired"},
                      ctx=write_ctx)
        return eligible, excluded

    monkeypatch.setattr(assignment, "rank_teams", ranked_then_best_retired)
    outcome = assign_agent(db_session, agent_id=agent.id, team_id=None, ctx=write_ctx)
    assert outcome.team_id is not None and str(outcome.team_id) != retired[0]
    assert any(e["team_id"] == retired[0] and "retired" in e["reasons"][0] for e in outcome.excluded)
    assert retired[0] not in [c["team_id"] for c in outcome.candidates]
    assert outcome.candidates[0]["team_id"] == str(outcome.team_id)


def test_auto_with_no_eligible_team_fails_clearly(world, db_session, write_ctx) -> None:
    world.team("Full", capacity=1)
    assign_agent(db_session, agent_id=world.agent("Occupant").id, team_id=None, ctx=write_ctx)
    with pytest.raises(NoEligibleTeam):
        assign_agent(db_session, agent_id=world.agent("Latecomer").id, team_id=None, ctx=write_ctx)


def test_rank_lists_full_teams_as_excluded(world, db_session, write_ctx) -> None:
    full = world.team("Packed", capacity=1)
    assign_agent(db_session, agent_id=world.agent("Sitter").id, team_id=full.id, ctx=write_ctx)
    eligible, excluded = rank_teams(db_session, world.agent("Looker"), required_skills_of(db_session, [world.role.id])[world.role.id])
    assert {"team_id": str(full.id), "name": "Packed", "reasons": ["team is full"]} in excluded
    assert eligible == []


def test_bulk_plan_places_everyone_it_can_and_says_why_not(world, db_session, write_ctx) -> None:
    world.team("Bulk One", capacity=2)
    world.team("Bulk Two", capacity=1)
    agents = [world.agent(f"Bulk agent {i}") for i in range(4)]
    loner = world.agent("No team for me", skills=[world.skills[2]], role=world.other_role)
    plan = plan_assignment(db_session, agent_ids=[a.id for a in agents] + [loner.id], all_unassigned=False)
    assert len(plan.placements) == 3
    reasons = {plan.agents[i].name: r for i, r in plan.unplaced.items()}
    assert reasons["No team for me"] == "no-eligible-team"
    assert list(reasons.values()).count("eligible-teams-full") == 1
    # The plan reads the stored embeddings (binary float4) and the skill ids as plain rows.
    by_id = {a.id: a for a in [*agents, loner]}
    assert [a.id for a in plan.agents] == sorted(by_id)
    for i, planned in enumerate(plan.agents):
        assert np.allclose(plan.problem.agent_vectors[i], by_id[planned.id].embedding, rtol=0, atol=1e-7)
        assert planned.skill_ids == {s.id for s in by_id[planned.id].skills}
    for t, team in enumerate(plan.teams):
        assert np.allclose(plan.problem.team_vectors[t], db_session.get(Team, team.id).embedding, rtol=0, atol=1e-7)


def test_twenty_parallel_assignments_to_five_seats(engine, write_ctx, committed_steward) -> None:
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        team_id = world.team("Five seats", capacity=5).id
        agent_ids = [world.agent(f"Racer {i:02d}").id for i in range(20)]
    barrier, outcomes = threading.Barrier(20), []

    def assign(agent_id: uuid.UUID) -> None:
        barrier.wait()
        try:
            with transaction(sessions) as session:
                assign_agent(session, agent_id=agent_id, team_id=team_id, ctx=write_ctx)
            outcomes.append("ok")
        except TeamFull:
            outcomes.append("team-full")

    threads = [threading.Thread(target=assign, args=(a,)) for a in agent_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 5 + ["team-full"] * 15
    with sessions() as session:
        assert session.query(Agent).filter(Agent.team_id == team_id).count() == 5
        assert session.get(Team, team_id).capacity == 5


def _seated_world(engine, write_ctx, committed_steward, *, second_team: bool):
    """Team X (no industry, one seat) holding agent A; agent B, who may join only X; with
    ``second_team``, team Y (A's industry, one seat, empty), after X in id order."""
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        x = create_entity(session, entity_type=E.TEAM, ctx=write_ctx, entity_id=uuid.UUID(int=1),
                          data={**world.gov, "name": "X first", "capacity": 1, "job_role_id": world.role.id})
        y = create_entity(session, entity_type=E.TEAM, ctx=write_ctx, entity_id=uuid.UUID(int=2**128 - 1), data={
            **world.gov, "name": "Y last", "capacity": 1, "job_role_id": world.role.id,
            "industry_id": world.other_industry.id}) if second_team else None
        a, b = world.agent("Seated A", industry=world.other_industry), world.agent("Newcomer B")
        assign_agent(session, agent_id=a.id, team_id=x.id, ctx=write_ctx)
        return sessions, x.id, (y.id if y else None), a.id, b.id


@pytest.mark.parametrize("second_team", [True, False])
def test_a_bulk_plan_never_counts_on_a_seat_another_of_its_moves_frees(engine, write_ctx, committed_steward,
                                                                       second_team) -> None:
    """Re-planning a seated agent counted its seat as free: the plan moved A from X to Y and
    gave X to B, and the batch refused B (``team-full``) because it ran first; or the plan left
    A out, A kept its seat, and B was refused (helper-65). A seated agent now keeps a seat of
    its own in the plan: every move the plan makes is applied, in whatever order."""
    sessions, x, y, a, b = _seated_world(engine, write_ctx, committed_steward, second_team=second_team)
    with transaction(sessions) as session:  # B as like X as can be, A its opposite (embeddings are not signed)
        vector = session.scalar(select(Team.embedding).where(Team.id == x))
        session.execute(update(Agent).where(Agent.id == b).values(embedding=list(vector)))
        session.execute(update(Agent).where(Agent.id == a).values(embedding=[-v for v in vector]))
    outcome = assign_teams_in_bulk(sessions, agent_ids=[a, b], all_unassigned=False, ctx=write_ctx,
                                   progress=lambda *args: None)
    assert outcome.placed == 1 and [(u["agent_id"], u["reason"]) for u in outcome.unplaced] == [
        (str(b), "eligible-teams-full")]
    with sessions() as session:
        assert session.get(Agent, b).team_id is None and session.get(Agent, a).team_id in {x, y}
        for team in filter(None, (x, y)):
            assert session.scalar(select(func.count()).where(Agent.team_id == team)) <= 1


def test_a_recorded_bulk_job_counts_an_agent_that_stays_as_seated_and_a_retry_leaves_it(
        engine, write_ctx, committed_steward) -> None:
    """A stay is a planned placement with nothing to write: the job's records say the agent
    is seated (in its team), and a retry of the job does not plan it again."""
    from models.bulk_records import Recorder
    from models.job_lifecycle import create_job

    sessions, x, _, a, b = _seated_world(engine, write_ctx, committed_steward, second_team=False)
    with transaction(sessions) as session:
        job_id = create_job(session, kind="agents.assign_teams", params={"agent_ids": [str(a), str(b)]}).id
    for attempt in (1, 2):
        outcome = assign_teams_in_bulk(sessions, agent_ids=[a, b], all_unassigned=False, ctx=write_ctx,
                                       progress=lambda *args: None, record=Recorder(job_id, attempt))
        assert (outcome.requested, outcome.placed) == (2, 1)
        assert [(u["agent_id"], u["reason"]) for u in outcome.unplaced] == [(str(b), "eligible-teams-full")]
    with sessions() as session:
        moves = {m.agent_id: m for m in session.scalars(select(BulkAssignmentMove).where(BulkAssignmentMove.job_id == job_id))}
        assert (moves[a].placed, moves[a].team_id, moves[a].attempt) == (True, x, 1)  # not planned again by attempt 2
        assert (moves[b].placed, moves[b].attempt) == (False, 2)
        assert session.get(Agent, a).team_id == x and len(history(session, entity_id=a)) == 2  # created, seated: no more


def test_bulk_assignment_applies_in_batches_with_progress(engine, write_ctx, keyring, committed_steward, monkeypatch) -> None:
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        for i in range(3):
            world.team(f"Bulk team {i}", capacity=2)
        for i in range(7):
            world.agent(f"Bulk member {i}")
    reports = []
    monkeypatch.setattr(bulk_assignment, "APPLY_BATCH", 2)  # three batches, two in flight at a time
    outcome = assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx,
                                   progress=lambda d, t, m=None: reports.append((d, t)))
    # The steward (another role, no team of its role) is unassigned too.
    assert outcome.placed == 6
    assert {u["reason"] for u in outcome.unplaced} == {"eligible-teams-full", "no-eligible-team"}
    assert reports[0] == (0, 6) and reports[-1] == (6, 6) and len(reports) == 4
    with sessions() as session:
        placed = session.scalars(select(Agent).where(Agent.team_id.is_not(None))).all()
        assert len(placed) == 6
        for agent in placed:  # each move appended one signed, linked version holding the new team
            assert verify_entity(session, entity=agent, keyring=keyring).ok
            head = history(session, entity_id=agent.id)[-1]
            assert head.version == 2 and json.loads(head.content)["team_id"] == str(agent.team_id)
            assert json.loads(head.content)["skill_ids"] == sorted(str(s.id) for s in agent.skills)


def test_a_bulk_plan_is_solved_after_its_read_transaction_ended(engine, write_ctx, committed_steward, monkeypatch) -> None:
    """A solve takes seconds at scale. Inside the read transaction it would hold a snapshot and
    a pooled connection, and the server would end a session idle that long in a transaction."""
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        world.team("Solve team", capacity=2)
        world.agent("Solve member")
    in_a_transaction_during_the_solve = []
    solve = bulk_plan.solve_assignment

    def watched(problem):
        in_a_transaction_during_the_solve.append(busy_sessions(engine))
        return solve(problem)

    monkeypatch.setattr(bulk_plan, "solve_assignment", watched)
    outcome = assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx,
                                   progress=lambda d, t, m=None: None)
    assert in_a_transaction_during_the_solve == [0] and outcome.placed == 1


def test_a_cancelled_bulk_assignment_stops_at_a_batch_boundary(engine, write_ctx, committed_steward, monkeypatch) -> None:
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        teams = [world.team(f"Solo team {i}", capacity=1).id for i in range(8)]
        for i in range(8):
            world.agent(f"Solo member {i}")
    monkeypatch.setattr(bulk_assignment, "APPLY_BATCH", 1)  # eight batches

    def cancel_after_the_first_batch(done, total, message=None):
        if done:
            raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx,
                             progress=cancel_after_the_first_batch)
    with sessions() as session:  # batches in flight completed; those not started did not run
        seated = session.scalars(select(Agent).where(Agent.team_id.is_not(None))).all()
        assert 1 <= len(seated) < 8 and {a.team_id for a in seated} <= set(teams)
        assert len({a.team_id for a in seated}) == len(seated)



def _retry_world(engine, write_ctx, committed_steward, monkeypatch, agents: int):
    """``agents`` agents and as many one-seat teams (one more agent than seats, "Late"), a
    bulk job, batches of one applied one at a time; returns the session factory, the job id,
    the world and a fence that loses its connection from its ``n``-th call on."""
    from models.errors import TransientJobError
    from models.job_lifecycle import create_job

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        for i in range(agents):
            world.team(f"Retry team {i}", capacity=1)
        world.ids = {name: world.agent(name).id for name in [*(f"Retry member {i}" for i in range(agents)), "Retry member Late"]}
        job_id = create_job(session, kind="agents.assign_teams", params={"all_unassigned": True}).id
    monkeypatch.setattr(bulk_assignment, "APPLY_BATCH", 1)
    monkeypatch.setattr(bulk_assignment, "APPLY_IN_FLIGHT", 1)  # one batch at a time: the cut falls between two
    calls = []

    def lost_at(n: int):
        def fence(session) -> None:
            calls.append(1)
            if len(calls) >= n:  # and stays lost: a batch already queued behind the cut fails too
                raise TransientJobError("connection lost")
        return fence

    return sessions, job_id, world, lost_at


def test_a_retried_bulk_job_reports_what_every_attempt_did(engine, write_ctx, committed_steward, monkeypatch) -> None:
    """Batches commit one by one; a retry plans only the agents left. Its result used to cover
    only them (9 agents seated in all, the result said `requested: 5, placed: 4`)."""
    from models.bulk_records import Recorder
    from models.errors import TransientJobError
    from models.jobs import BulkAssignmentMove

    sessions, job_id, world, lost_at = _retry_world(engine, write_ctx, committed_steward, monkeypatch, agents=8)
    with pytest.raises(TransientJobError):  # fence 1 records the plan's left-out agents, 2-4 are batches
        assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx, progress=lambda *a: None,
                             fence=lost_at(5), record=Recorder(job_id, 1))
    with sessions() as session:
        first = {r.agent_name: r for r in session.scalars(select(BulkAssignmentMove))}
    assert sum(r.placed for r in first.values()) == 3 and first["Retry member Late"].reason == "eligible-teams-full"
    with transaction(sessions) as session:  # a seat opens before the retry: Late gets it
        world.session = session
        world.team("Retry team late", capacity=1)
    retried = assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx,
                                   progress=lambda *a: None, record=Recorder(job_id, 2))
    with sessions() as session:
        seated = session.scalars(select(Agent).where(Agent.team_id.is_not(None))).all()
        rows = list(session.scalars(select(BulkAssignmentMove)))
    assert len(seated) == 9
    # The steward (another role, no team of its role) is unplaced in both attempts.
    assert (retried.requested, retried.placed, [u["reason"] for u in retried.unplaced]) == (10, 9, ["no-eligible-team"])
    assert {r.agent_name: r.placed for r in rows}["Retry member Late"] is True  # its refusal overwritten
    assert {r.attempt for r in rows if r.placed} == {1, 2}
    assert retried.total_similarity == pytest.approx(sum(r.similarity for r in rows if r.placed))


def test_a_retried_bulk_job_over_given_agents_does_not_plan_those_it_seated_again(
        engine, write_ctx, committed_steward, monkeypatch) -> None:
    """Given by id, an agent an earlier attempt seated would be planned again from scratch (its
    seat freed for the plan): moved a second time, or reported unplaced while it sits."""
    from models.bulk_records import Recorder
    from models.errors import TransientJobError

    sessions, job_id, world, lost_at = _retry_world(engine, write_ctx, committed_steward, monkeypatch, agents=3)
    given = [world.ids[f"Retry member {i}"] for i in range(3)]
    with pytest.raises(TransientJobError):
        assign_teams_in_bulk(sessions, agent_ids=given, all_unassigned=False, ctx=write_ctx, progress=lambda *a: None,
                             fence=lost_at(3), record=Recorder(job_id, 1))  # planning, one batch, then cut
    planned = []
    read = bulk_assignment.read_plan_inputs
    monkeypatch.setattr(bulk_assignment, "read_plan_inputs",
                        lambda session, **kw: planned.append(sorted(kw["agent_ids"])) or read(session, **kw))
    retried = assign_teams_in_bulk(sessions, agent_ids=given, all_unassigned=False, ctx=write_ctx,
                                   progress=lambda *a: None, record=Recorder(job_id, 2))
    assert len(planned[0]) == 2 and set(planned[0]) < set(given)
    assert (retried.requested, retried.placed, retried.unplaced) == (3, 3, [])


def test_a_retried_bulk_job_over_all_unassigned_does_not_plan_those_it_seated_again(
        engine, write_ctx, committed_steward, monkeypatch) -> None:
    """Only a retry over given agents left out those an earlier attempt seated: over all
    unassigned, an agent that attempt seated and an operator unseated since was seated again."""
    from models.bulk_records import Recorder
    from models.errors import TransientJobError

    sessions, job_id, world, lost_at = _retry_world(engine, write_ctx, committed_steward, monkeypatch, agents=3)
    with pytest.raises(TransientJobError):
        assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx, progress=lambda *a: None,
                             fence=lost_at(3), record=Recorder(job_id, 1))  # planning, one batch, then cut
    with transaction(sessions) as session:
        [first] = session.scalars(select(BulkAssignmentMove.agent_id).where(BulkAssignmentMove.placed)).all()
        update_entity(session, entity_type=E.AGENT, entity_id=first, changes={"team_id": None}, ctx=write_ctx)
    retried = assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx,
                                   progress=lambda *a: None, record=Recorder(job_id, 2))
    with sessions() as session:
        assert session.get(Agent, first).team_id is None and len(history(session, entity_id=first)) == 3
        attempts = {m.agent_id: m.attempt for m in session.scalars(select(BulkAssignmentMove).where(BulkAssignmentMove.placed))}
    assert attempts[first] == 1 and sorted(attempts.values()) == [1, 2, 2, 2]  # the others (Late too) by the retry
    assert retried.placed == 4


@pytest.mark.parametrize("ending", ["cancelled", "refused", "timed out", "last transient failure",
                                    "transient failure after a cancel"])
def test_a_bulk_job_stopped_after_a_batch_committed_reports_what_it_did(
        worker_sessions, write_ctx, committed_steward, settings, monkeypatch, ending) -> None:
    """A cancel, the soft time limit, a domain error or a transient one on the last allowed
    attempt (or after a cancel) ended the job with ``result: null``, although a batch had
    seated an agent: the result now reports what every attempt did, whatever the job's end."""
    from celery.exceptions import SoftTimeLimitExceeded

    from models.job_control import request_cancel
    from models.job_lifecycle import create_job, get_job
    from tasks import registry_jobs, runner, runtime
    from tests.conftest import SentTasks

    sessions = worker_sessions
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        for i in range(4):
            world.team(f"Stopped team {i}", capacity=1)
        agents = [world.agent(f"Stopped member {i}").id for i in range(4)]
        job_id = create_job(session, kind="agents.assign_teams", params={"agent_ids": [str(a) for a in agents]}).id
    last = ending != "transient failure after a cancel"
    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"job_max_attempts": 1 if last else 3}))
    cancels = ending in ("cancelled", "transient failure after a cancel")
    monkeypatch.setattr(bulk_assignment, "APPLY_BATCH", 1)
    monkeypatch.setattr(bulk_assignment, "APPLY_IN_FLIGHT", 1)
    apply, calls = bulk_assignment._apply_committed, []

    def apply_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1 or ending == "cancelled":  # the first batch commits; later ones' fences find the cancel
            entries = apply(*args, **kwargs)
            if cancels:
                with transaction(sessions) as session:
                    request_cancel(session, job_id=job_id)
            return entries
        raise {"refused": Conflict("refused midway"), "timed out": SoftTimeLimitExceeded()}.get(
            ending, ConnectionError("connection lost"))

    monkeypatch.setattr(bulk_assignment, "_apply_committed", apply_then_stop)
    runner.run_job(SentTasks(), str(job_id), registry_jobs._assign_bulk)
    with sessions() as session:
        seated = session.scalar(select(func.count()).select_from(Agent).where(Agent.team_id.is_not(None)))
        job = get_job(session, job_id)
    assert seated == 1
    assert job.status == ("cancelled" if cancels else "failed"), job.error
    assert job.result is not None and job.result["placed"] == 1
    assert job.result["requested"] == 4 and job.result["method"]  # every agent it was given; this attempt's plan
    assert {u["reason"] for u in job.result["unplaced"]} == {"not-applied"}  # the 3 whose batch never ran


def test_batches_are_cut_between_teams(monkeypatch) -> None:
    monkeypatch.setattr(bulk_assignment, "APPLY_BATCH", 4)
    placements = {agent: agent % 5 for agent in range(23)}  # teams of 4 or 5 moves
    batches = bulk_assignment._batches(placements)
    assert sorted(move for batch in batches for move in batch) == sorted(placements.items())
    teams = [{team for _, team in batch} for batch in batches]
    assert all(a.isdisjoint(b) for i, a in enumerate(teams) for b in teams[i + 1:])
    assert len(batches) == 5 and all(len(batch) <= 4 + 5 for batch in batches)


def test_a_seat_taken_after_planning_is_refused_not_overfilled(world, db_session, write_ctx) -> None:
    from models.bulk_apply import apply_batch

    team = world.team("Last seat", capacity=1)
    planned, sneaky = world.agent("Planned"), world.agent("Sneaky")
    plan = plan_assignment(db_session, agent_ids=[planned.id], all_unassigned=False)
    assign_agent(db_session, agent_id=sneaky.id, team_id=team.id, ctx=write_ctx)  # after the plan
    moves = [(plan.agents[a].id, plan.teams[t].id) for a, t in plan.placements.items()]
    refused = apply_batch(db_session, moves, ctx=write_ctx)
    assert [(agent_id, reason) for agent_id, reason, _ in refused] == [(planned.id, "team-full")]
    assert db_session.get(Agent, planned.id).team_id is None
    assert [v.version for v in history(db_session, entity_id=planned.id)] == [1]


def test_a_skill_required_after_planning_is_checked_when_the_batch_applies(world, db_session, write_ctx) -> None:
    from models.bulk_apply import apply_batch

    world.team("Strict later", capacity=2)
    agent = world.agent("Planned early")  # holds skills 0 and 1, which the role requires now
    plan = plan_assignment(db_session, agent_ids=[agent.id], all_unassigned=False)
    assert len(plan.placements) == 1
    update_entity(db_session, entity_type=E.JOB_ROLE, entity_id=world.role.id,
                  changes={"required_skill_ids": [s.id for s in world.skills]}, ctx=write_ctx)
    moves = [(plan.agents[a].id, plan.teams[t].id) for a, t in plan.placements.items()]
    refused = apply_batch(db_session, moves, ctx=write_ctx)
    assert [(agent_id, reason) for agent_id, reason, _ in refused] == [(agent.id, "not-eligible")]
    assert db_session.get(Agent, agent.id).team_id is None


def test_a_role_change_waits_for_a_seat_being_taken_and_then_refuses(engine, write_ctx, committed_steward) -> None:
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        team_id, agent_id = world.team("Contested", capacity=2).id, world.agent("Joining").id
        role_id, wanted = world.role.id, [s.id for s in world.skills]  # the agent lacks skill 2
    seating = sessions()
    assign_agent(seating, agent_id=agent_id, team_id=team_id, ctx=write_ctx)  # holds the team's lock, not committed
    outcome: list[object] = []

    def require_more() -> None:
        try:
            with transaction(sessions) as session:
                update_entity(session, entity_type=E.JOB_ROLE, entity_id=role_id,
                              changes={"required_skill_ids": wanted}, ctx=write_ctx)
            outcome.append("changed")
        except Conflict as exc:
            outcome.append(exc)

    changer = threading.Thread(target=require_more)
    changer.start()
    try:
        # the role change locks the role, then waits on the team's lock, which the seat holds
        wait_for(lambda: lock_waiters(engine), what="the role change to wait on the team lock")
        seating.commit()
    finally:
        seating.close()
        changer.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    assert outcome[0].extensions["members"][0]["agent_id"] == str(agent_id)
    with sessions() as session:
        assert {s.id for s in session.get(JobRole, role_id).required_skills} == set(wanted[:2])


def test_grouped_eligibility_equals_the_pairwise_rules(world, db_session, write_ctx) -> None:
    from models.membership import ineligibility
    from models.bulk_plan import eligible_teams

    teams = [world.team("Same industry"), world.team("Other industry", industry=world.other_industry),
             world.team("Other role", role=world.other_role), world.make(E.TEAM, name="No industry", capacity=2,
                                                                          job_role_id=world.role.id)]
    update_entity(db_session, entity_type=E.TEAM, entity_id=teams[1].id, changes={"status": "retired"}, ctx=write_ctx)
    agents = [world.agent("Fits"), world.agent("No skills", skills=[world.skills[0]]),
              world.agent("Elsewhere", industry=world.other_industry)]
    required = required_skills_of(db_session, [world.role.id, world.other_role.id])
    expected = [[t for t, team in enumerate(teams) if not ineligibility(a, team, required.get(a.job_role_id, set()))]
                for a in agents]
    assert eligible_teams(agents, teams, required) == expected


def test_plan_vectors_are_read_from_pgvector_binary_with_zeros_for_missing() -> None:
    blob = struct.pack(">HH", EMBEDDING_DIM, 0) + np.arange(EMBEDDING_DIM, dtype=">f4").tobytes()
    vectors = bulk_plan._vectors([None, blob])
    assert vectors.shape == (2, EMBEDDING_DIM) and not vectors[0].any()
    expected = np.arange(EMBEDDING_DIM, dtype=np.float64)
    assert np.allclose(vectors[1], expected / np.linalg.norm(expected), rtol=0, atol=1e-15)  # read exactly, then unit length


def test_ranking_teams_reads_their_embeddings_in_the_same_query(world, db_session) -> None:
    for n in range(5):
        world.team(f"Ranked {n}", capacity=3)
    agent = world.agent("Ranker")
    agent.embedding  # noqa: B018 - loaded before counting: only the teams' reads are counted
    required = required_skills_of(db_session, [world.role.id])[world.role.id]
    with recorded_statements(db_session.get_bind()) as statements:
        eligible, _ = rank_teams(db_session, agent, required)
    assert len(eligible) >= 5
    assert len(statements) <= 2, statements  # seats, teams: not one per team


def test_an_agent_whose_row_was_edited_through_sql_is_not_assigned(world, db_session, write_ctx) -> None:
    from sqlalchemy import text

    from models.bulk_apply import apply_batch
    from models.errors import EntityTampered

    team = world.team("Guarded", capacity=5)
    single, bulk = world.agent("Tampered One"), world.agent("Tampered Two")
    db_session.execute(text("UPDATE agents SET description = 'edited by hand' WHERE id IN (:a, :b)"),
                       {"a": single.id, "b": bulk.id})
    db_session.expire_all()
    with pytest.raises(EntityTampered):
        assign_agent(db_session, agent_id=single.id, team_id=team.id, ctx=write_ctx)
    refused = apply_batch(db_session, [(bulk.id, team.id)], ctx=write_ctx)
    assert [(agent_id, reason) for agent_id, reason, _ in refused] == [(bulk.id, "entity-tampered")]
    assert [v.version for v in history(db_session, entity_id=bulk.id)] == [1]
    assert db_session.get(Agent, bulk.id).team_id is None


def _sql(session, statement: str, **params) -> None:
    session.execute(text(statement), params)
    session.expire_all()


def _members(session, team_id) -> int:
    return session.scalar(select(func.count()).select_from(Agent).where(Agent.team_id == team_id))


def test_a_team_whose_capacity_was_raised_through_sql_takes_no_agent_past_its_signed_capacity(
        world, db_session, write_ctx) -> None:
    """Seats were counted against the team row without checking it against its signed head: a
    team signed with two seats, its capacity raised through SQL, took four members (each seat
    signed into an agent's chain), and restoring the team then failed (409, fewer seats than
    members). Single and bulk assignment now refuse the team as tampered until it is restored."""
    team = world.team("Signed two seats", capacity=2)
    agents = [world.agent(f"Over {i}") for i in range(4)]
    _sql(db_session, "UPDATE teams SET capacity = 100 WHERE id = :t", t=team.id)
    for agent in agents[:3]:
        with pytest.raises(EntityTampered) as refused:
            assign_agent(db_session, agent_id=agent.id, team_id=team.id, ctx=write_ctx)
        assert refused.value.extensions["id"] == str(team.id)
    refused_moves = apply_batch(db_session, [(agents[3].id, team.id)], ctx=write_ctx)
    assert [(agent_id, reason) for agent_id, reason, _ in refused_moves] == [(agents[3].id, "entity-tampered")]
    assert _members(db_session, team.id) == 0
    assert all(len(history(db_session, entity_id=a.id)) == 1 for a in agents)  # nothing signed on top
    assert restore_entity(db_session, entity_type=E.TEAM, entity_id=team.id, keyring=write_ctx.keyring,
                          embedder=write_ctx.embedder, actor="operator:test").restored
    for agent in agents[:2]:
        assign_agent(db_session, agent_id=agent.id, team_id=team.id, ctx=write_ctx)
    with pytest.raises(TeamFull):
        assign_agent(db_session, agent_id=agents[2].id, team_id=team.id, ctx=write_ctx)
    assert _members(db_session, team.id) == 2


def test_a_required_skill_removed_through_sql_lets_no_agent_lacking_it_be_seated(world, db_session, write_ctx) -> None:
    """The role's required skills were read from ``job_role_skills`` as they stood: a row deleted
    there through SQL let an agent lacking the skill be seated, by a single or a bulk assignment.
    They come only from a role whose row is its signed head now."""
    team = world.team("Strict role team", capacity=3)
    single, bulk = world.agent("Lacks skill 1", skills=world.skills[:1]), world.agent("Lacks it too", skills=world.skills[:1])
    _sql(db_session, "DELETE FROM job_role_skills WHERE job_role_id = :r AND skill_id = :s",
         r=world.role.id, s=world.skills[1].id)
    with pytest.raises(EntityTampered) as refused:
        assign_agent(db_session, agent_id=single.id, team_id=team.id, ctx=write_ctx)
    assert refused.value.extensions["id"] == str(world.role.id)
    with pytest.raises(EntityTampered):
        assign_agent(db_session, agent_id=single.id, team_id=None, ctx=write_ctx)  # automatic choice: no ranking on it
    refused_moves = apply_batch(db_session, [(bulk.id, team.id)], ctx=write_ctx)
    assert [(agent_id, reason) for agent_id, reason, _ in refused_moves] == [(bulk.id, "entity-tampered")]
    assert str(world.role.id) in refused_moves[0][2]
    assert _members(db_session, team.id) == 0


@pytest.mark.parametrize("tampered", ["team", "role"])
@pytest.mark.parametrize("write", ["create", "patch"])
def test_an_agent_written_into_a_team_is_refused_while_the_team_or_its_role_is_tampered(
        world, db_session, write_ctx, tampered, write) -> None:
    """POST/PATCH /agents with a team_id take a seat too (``guard_membership``): it judged the
    team's capacity and the role's skills from rows edited through SQL. 409 entity-tampered now."""
    team = world.team("One signed seat", capacity=1)
    assign_agent(db_session, agent_id=world.agent("Occupant").id, team_id=team.id, ctx=write_ctx)
    if tampered == "team":  # room for more, through SQL only
        _sql(db_session, "UPDATE teams SET capacity = 5 WHERE id = :t", t=team.id)
        skills, tampered_id = world.skills[:2], team.id
    else:  # a second seat signed; a requirement dropped through SQL that the newcomer lacks
        update_entity(db_session, entity_type=E.TEAM, entity_id=team.id, changes={"capacity": 2}, ctx=write_ctx)
        _sql(db_session, "DELETE FROM job_role_skills WHERE job_role_id = :r AND skill_id = :s",
             r=world.role.id, s=world.skills[1].id)
        skills, tampered_id = world.skills[:1], world.role.id
    with pytest.raises(EntityTampered) as refused:
        if write == "create":
            world.make(E.AGENT, name="Newcomer", job_role_id=world.role.id, industry_id=world.industry.id,
                       skill_ids=[s.id for s in skills], team_id=team.id)
        else:
            newcomer = world.agent("Newcomer", skills=skills)
            update_entity(db_session, entity_type=E.AGENT, entity_id=newcomer.id, changes={"team_id": team.id},
                          ctx=write_ctx)
    assert refused.value.extensions["id"] == str(tampered_id)
    db_session.expire_all()  # the refused write's changes go with its transaction
    assert _members(db_session, team.id) == 1


def test_a_team_write_judges_its_members_on_its_role_s_signed_skills(world, db_session, write_ctx) -> None:
    """A team PATCH judged its members on the role's ``job_role_skills`` rows as they stood: a
    skill required through SQL made an honest change of the team a 409 saying its members would
    no longer qualify, not naming the tampered role. A team with no members is not judged on it."""
    team, empty = world.team("Judged on its role"), world.team("Nobody to judge")
    assign_agent(db_session, agent_id=world.agent("Member").id, team_id=team.id, ctx=write_ctx)
    _sql(db_session, "INSERT INTO job_role_skills (job_role_id, skill_id) VALUES (:r, :s)",
         r=world.role.id, s=world.skills[2].id)
    update_entity(db_session, entity_type=E.TEAM, entity_id=empty.id, changes={"industry_id": None}, ctx=write_ctx)
    with pytest.raises(EntityTampered) as refused:
        update_entity(db_session, entity_type=E.TEAM, entity_id=team.id, changes={"industry_id": None}, ctx=write_ctx)
    assert refused.value.extensions["id"] == str(world.role.id)


def test_a_restore_does_not_seat_an_agent_in_a_tampered_team(world, db_session, write_ctx) -> None:
    """A restore puts the agent back in its signed team through the same guard: it judged the
    seat on a capacity raised through SQL and over-filled the team's one signed seat."""
    team = world.team("One seat to restore into", capacity=1)
    left, taker = world.agent("Left through SQL"), world.agent("Taker")
    assign_agent(db_session, agent_id=left.id, team_id=team.id, ctx=write_ctx)
    _sql(db_session, "UPDATE agents SET team_id = NULL WHERE id = :a", a=left.id)
    assign_agent(db_session, agent_id=taker.id, team_id=team.id, ctx=write_ctx)
    _sql(db_session, "UPDATE teams SET capacity = 2 WHERE id = :t", t=team.id)
    with pytest.raises(EntityTampered) as refused:
        restore_entity(db_session, entity_type=E.AGENT, entity_id=left.id, keyring=write_ctx.keyring,
                       embedder=write_ctx.embedder, actor="operator:test")
    assert refused.value.extensions["id"] == str(team.id)
    db_session.expire_all()  # the refused restore's changes go with its transaction
    assert _members(db_session, team.id) == 1


def test_automatic_choice_passes_over_a_tampered_team(world, db_session, write_ctx) -> None:
    """The most similar team's row was edited through SQL: it is excluded, saying why, and the
    next best takes the agent (the tampered team is not signed into the agent's chain)."""
    tampered = world.team("Data Science Team", description="machine learning models statistics data science")
    other = world.team("Ocean Freight Team", description="container shipping ocean freight vessels ports")
    agent = world.agent("Data Scientist", description="machine learning statistics data science models")
    _sql(db_session, "UPDATE teams SET capacity = 50 WHERE id = :t", t=tampered.id)
    outcome = assign_agent(db_session, agent_id=agent.id, team_id=None, ctx=write_ctx)
    assert outcome.team_id == other.id
    [reasons] = [e["reasons"] for e in outcome.excluded if e["team_id"] == str(tampered.id)]
    assert "row-content-mismatch" in reasons[0]


def test_a_role_change_and_an_agent_written_into_its_team_do_not_deadlock(engine, write_ctx, committed_steward) -> None:
    # The role change locks the role, then the role's teams; the agent's write locks the
    # team, then its insert checks the role's key. Row locks that leave keys alone let
    # the key check pass: the two serialize on the team instead of waiting on each other.
    from models.entity_locks import lock_entity
    from models.registry import create_entity

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        role_id, team_id, industry_id = world.role.id, world.team("Keyed", capacity=3).id, world.industry.id
        skills = [s.id for s in world.skills]  # all three: the role may come to require the third
    changer, outcome = sessions(), {}

    def write_agent() -> None:
        try:
            with transaction(sessions) as session:
                create_entity(session, entity_type=E.AGENT, ctx=write_ctx, data={
                    "name": "Keyed agent", "job_role_id": role_id, "industry_id": industry_id, "skill_ids": skills,
                    "team_id": team_id, "governance_agent_id": committed_steward})
            outcome["agent"] = "ok"
        except Exception as exc:  # noqa: BLE001 - the outcome is the assertion
            outcome["agent"] = repr(exc)

    try:
        lock_entity(changer, E.JOB_ROLE, role_id)  # the role change has begun
        writer = threading.Thread(target=write_agent)
        writer.start()
        # the agent's write either got through or waits on a lock
        wait_for(lambda: not writer.is_alive() or lock_waiters(engine), what="the agent's write to finish or wait")
        update_entity(changer, entity_type=E.JOB_ROLE, entity_id=role_id, changes={"required_skill_ids": skills}, ctx=write_ctx)
        changer.commit()
        outcome["role"] = "ok"
    except Exception as exc:  # noqa: BLE001
        outcome["role"] = repr(exc)
    finally:
        changer.close()
        writer.join(30)
    assert outcome == {"agent": "ok", "role": "ok"}


def _raced_world(engine, write_ctx, steward):
    """Two one-seat teams and an agent whose embedding is the second team's: a plan puts it there."""
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, steward)
        t1, t2, x = world.team("Race T1", capacity=1).id, world.team("Race T2", capacity=1).id, world.agent("Race X").id
    with transaction(sessions) as session:
        session.execute(update(Agent).where(Agent.id == x).values(
            embedding=list(session.scalar(select(Team.embedding).where(Team.id == t2)))))
    return sessions, t1, t2, x


def _while_solving(monkeypatch, meanwhile) -> None:
    solve = bulk_assignment.solve_plan

    def solve_after(inputs):
        meanwhile()
        return solve(inputs)

    monkeypatch.setattr(bulk_assignment, "solve_plan", solve_after)


@pytest.mark.parametrize("listed", [False, True], ids=["all_unassigned", "a planned stay"])
def test_a_seat_changed_while_the_bulk_plan_solves_is_left_as_the_other_write_made_it(
        engine, write_ctx, committed_steward, monkeypatch, listed) -> None:
    """A batch re-checked eligibility and seats but not where the plan saw the agent: a single
    assignment committed while the plan was solved was undone, and the bulk job said it placed
    the agent (helper-71). An unseated agent seated meanwhile, or a seated one the plan meant to
    keep moved meanwhile, is refused as ``seat-changed`` and left where the other write put it."""
    sessions, t1, t2, x = _raced_world(engine, write_ctx, committed_steward)
    if listed:
        with transaction(sessions) as session:
            assign_agent(session, agent_id=x, team_id=t2, ctx=write_ctx)  # its best team: the plan keeps it there

    def single_assignment():
        with transaction(sessions) as session:
            assert assign_agent(session, agent_id=x, team_id=t1, ctx=write_ctx).team_id == t1

    _while_solving(monkeypatch, single_assignment)
    outcome = assign_teams_in_bulk(sessions, agent_ids=[x] if listed else None, all_unassigned=not listed, ctx=write_ctx,
                                   progress=lambda *a: None)
    with sessions() as session:
        assert session.get(Agent, x).team_id == t1
        assert verify_entity(session, entity=session.get(Agent, x), keyring=write_ctx.keyring).ok
    assert outcome.placed == 0 and {e["agent_id"]: e["reason"] for e in outcome.unplaced}[str(x)] == "seat-changed"


def test_an_agent_seated_meanwhile_where_the_plan_puts_it_counts_as_placed(engine, write_ctx, committed_steward,
                                                                          monkeypatch) -> None:
    sessions, _, t2, x = _raced_world(engine, write_ctx, committed_steward)

    def single_assignment():
        with transaction(sessions) as session:
            assign_agent(session, agent_id=x, team_id=t2, ctx=write_ctx)  # the team the plan chose

    _while_solving(monkeypatch, single_assignment)
    outcome = assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx, progress=lambda *a: None)
    with sessions() as session:
        assert session.get(Agent, x).team_id == t2
    assert str(x) not in {e["agent_id"] for e in outcome.unplaced} and outcome.placed == 1


def test_an_agent_moved_meanwhile_is_seat_changed_even_when_its_planned_team_became_ineligible(
        engine, write_ctx, committed_steward, monkeypatch) -> None:
    """With eligibility checked first, it was reported not-eligible, and the advice to plan it
    anew was lost (helper-76)."""
    sessions, t1, t2, x = _raced_world(engine, write_ctx, committed_steward)

    def another_write():
        with transaction(sessions) as session:
            assign_agent(session, agent_id=x, team_id=t1, ctx=write_ctx)
            update_entity(session, entity_type=EntityType.TEAM, entity_id=t2, changes={"status": "retired"}, ctx=write_ctx)

    _while_solving(monkeypatch, another_write)
    outcome = assign_teams_in_bulk(sessions, agent_ids=None, all_unassigned=True, ctx=write_ctx, progress=lambda *a: None)
    with sessions() as session:
        assert session.get(Agent, x).team_id == t1
    assert {e["agent_id"]: e["reason"] for e in outcome.unplaced}[str(x)] == "seat-changed"
