"""Bulk team assignment under retries and ties (stop 42's review of team assignment).

Each test proves a finding on real PostgreSQL.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import bulk_assignment
from models.assignment import assign_agent
from models.assignment_solver import AssignmentProblem, exact_assignment_bruteforce, greedy_assignment, solve_assignment
from models.bulk_assignment import assign_teams_in_bulk
from models.bulk_records import Recorder
from models.chain_verification import verify_entity
from models.db import transaction
from models.entities import Agent
from models.job_lifecycle import create_job
from tests.test_assignment import _raced_world, _while_solving


def test_a_retry_leaves_an_agent_its_first_attempt_found_moved_where_the_other_write_put_it(
        engine, write_ctx, committed_steward, monkeypatch) -> None:
    """Attempt 1 found the listed agent seated by a single assignment while its plan was solved,
    left it there and said so (``seat-changed``); then its worker was lost after the batch
    committed. The retry planned every agent no attempt had seated, that one too, and moved it
    to the team the first plan chose: the single assignment was undone, and the job, now
    succeeded, reported the agent placed. An attempt that ran through had left it alone."""
    sessions, t1, t2, x = _raced_world(engine, write_ctx, committed_steward)
    with transaction(sessions) as session:
        job = create_job(session, kind="agents.assign_teams", params={"agent_ids": [str(x)]}).id

    def single_assignment():
        with transaction(sessions) as session:
            assign_agent(session, agent_id=x, team_id=t1, ctx=write_ctx)  # not the team the plan prefers (t2)

    def worker_lost_after_the_batch(done, total, message):
        if message == "applying":
            raise RuntimeError("worker lost")

    solve = bulk_assignment.solve_plan
    _while_solving(monkeypatch, single_assignment)
    with pytest.raises(RuntimeError):
        assign_teams_in_bulk(sessions, agent_ids=[x], all_unassigned=False, ctx=write_ctx,
                             progress=worker_lost_after_the_batch, record=Recorder(job, 1))
    monkeypatch.setattr(bulk_assignment, "solve_plan", solve)
    outcome = assign_teams_in_bulk(sessions, agent_ids=[x], all_unassigned=False, ctx=write_ctx,
                                   progress=lambda *a: None, record=Recorder(job, 2))
    with sessions() as session:
        agent = session.get(Agent, x)
        assert agent.team_id == t1  # where the single assignment put it
        assert agent.version == 2 and verify_entity(session, entity=agent, keyring=write_ctx.keyring).ok
    assert (outcome.requested, outcome.placed) == (1, 0)
    assert [e["reason"] for e in outcome.unplaced] == ["seat-changed"]


def _planned_then_lost_before_its_batch(sessions, agent, write_ctx):
    """A bulk job for ``agent`` whose first attempt recorded its plan and was lost before its batch ran."""
    with transaction(sessions) as session:
        job = create_job(session, kind="agents.assign_teams", params={"agent_ids": [str(agent)]}).id
    fences = []

    def lost_before_the_batch(session):
        fences.append(session)
        if len(fences) > 1:  # the first fence records the plan, the second starts the batch
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError):
        assign_teams_in_bulk(sessions, agent_ids=[agent], all_unassigned=False, ctx=write_ctx, progress=lambda *a: None,
                             fence=lost_before_the_batch, record=Recorder(job, 1))
    return job


def test_a_retry_leaves_an_agent_moved_since_the_first_attempt_planned_it_where_the_other_write_put_it(
        engine, write_ctx, committed_steward) -> None:
    """Attempt 1 planned the listed agent (unseated) into its best team, recorded it ``not-applied``
    and was lost before the batch ran. Meanwhile a single assignment seated the agent in another
    team. The retry planned it anew from there and moved it: the batch of attempt 1 would have
    left it (``seat-changed``), so the job's outcome depended on where its worker died. The
    retry now judges the agent against where the first plan saw it, which the record keeps."""
    sessions, t1, t2, x = _raced_world(engine, write_ctx, committed_steward)
    job = _planned_then_lost_before_its_batch(sessions, x, write_ctx)
    with transaction(sessions) as session:
        assign_agent(session, agent_id=x, team_id=t1, ctx=write_ctx)  # not the team the plan chose (t2)
    outcome = assign_teams_in_bulk(sessions, agent_ids=[x], all_unassigned=False, ctx=write_ctx,
                                   progress=lambda *a: None, record=Recorder(job, 2))
    with sessions() as session:
        agent = session.get(Agent, x)
        assert agent.team_id == t1 and agent.version == 2
    assert (outcome.requested, outcome.placed) == (1, 0)
    [entry] = outcome.unplaced
    assert entry["reason"] == "seat-changed" and f"now team {t1}" in entry["detail"], entry


def test_a_retry_still_plans_an_agent_the_first_attempt_left_out_and_no_other_write_moved(
        engine, write_ctx, committed_steward) -> None:
    """The other side of the check above: an agent attempt 1 planned but never applied, still
    where that plan saw it, is planned and seated by the retry."""
    sessions, _, t2, x = _raced_world(engine, write_ctx, committed_steward)
    job = _planned_then_lost_before_its_batch(sessions, x, write_ctx)
    outcome = assign_teams_in_bulk(sessions, agent_ids=[x], all_unassigned=False, ctx=write_ctx,
                                   progress=lambda *a: None, record=Recorder(job, 2))
    with sessions() as session:
        assert session.get(Agent, x).team_id == t2
    assert (outcome.requested, outcome.placed, outcome.unplaced) == (1, 1, [])


def test_bulk_jobs_and_their_retries_among_capacity_status_and_seat_writes_leave_every_seat_valid(
        engine, write_ctx, committed_steward, monkeypatch) -> None:
    """Three bulk jobs (given ids and all unassigned), each run twice as a retry would, while
    other writes lower and raise capacities, retire and reactivate teams, suspend agents and
    move them: no team ends over capacity, no seated agent breaks a seat rule (AGENT-04's
    facts), every chain verifies, and no write fails but with a domain refusal."""
    import random
    import threading


    from models.entities import EntityType
    from models.errors import PlantError
    from models.membership import seat_problems
    from models.registry import update_entity
    from tests.test_bulk_plans_and_stops import _world, assert_seats_within_capacity_and_chains_verified, run_together

    monkeypatch.setattr(bulk_assignment, "APPLY_BATCH", 2)
    sessions, teams, agents = _world(engine, write_ctx, committed_steward, teams=6, agents=30, capacity=4)
    with transaction(sessions) as session:
        jobs = [create_job(session, kind="agents.assign_teams", params={}).id for _ in range(3)]
    barrier = threading.Barrier(8)

    def bulk(numbered):
        number, job = numbered
        barrier.wait()
        for attempt in (1, 2):
            assign_teams_in_bulk(sessions, agent_ids=agents if number % 2 else None, all_unassigned=not number % 2,
                                 ctx=write_ctx, progress=lambda *a: None, record=Recorder(job, attempt))

    writes = [
        lambda rng: (EntityType.TEAM, rng.choice(teams), {"capacity": rng.randint(1, 5)}),
        lambda rng: (EntityType.TEAM, rng.choice(teams), {"status": rng.choice(["active", "retired"])}),
        lambda rng: (EntityType.AGENT, rng.choice(agents), {"status": rng.choice(["active", "suspended"])}),
        lambda rng: (EntityType.AGENT, rng.choice(agents), {"team_id": None}),
    ]

    def other_writes(seed):
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(30):
            try:
                with transaction(sessions) as session:
                    if rng.random() < 0.2:
                        assign_agent(session, agent_id=rng.choice(agents), team_id=rng.choice([*teams, None]),
                                     ctx=write_ctx)
                    else:
                        entity_type, entity_id, changes = rng.choice(writes)(rng)
                        update_entity(session, entity_type=entity_type, entity_id=entity_id, changes=changes,
                                      ctx=write_ctx)
            except PlantError:
                pass

    run_together([(bulk, numbered) for numbered in enumerate(jobs)] + [(other_writes, seed) for seed in range(5)],
                 timeout=300)
    with sessions() as session:
        everyone = assert_seats_within_capacity_and_chains_verified(session, write_ctx.keyring)
        assert seat_problems(session, [(a, [s.id for s in a.skills]) for a in everyone], write_ctx.keyring) == {}


def _adversarial(family: str, rng: np.random.Generator) -> AssignmentProblem:
    """Small instances built to tie: every similarity equal, zero vectors, vectors of -1/0/1
    (many equal dot products), and more agents than seats, with eligibility drawn at random."""
    agents, teams, dim = int(rng.integers(1, 7)), int(rng.integers(1, 4)), 3
    vectors = {
        "all-equal": lambda n: np.ones((n, dim)) / np.sqrt(dim),
        "zero-agents": lambda n: np.zeros((n, dim)),
        "ternary": lambda n: rng.integers(-1, 2, size=(n, dim)) / np.sqrt(dim),
        "crowded": lambda n: rng.standard_normal((n, dim)) / np.sqrt(dim) / 2,
    }[family]
    seats = rng.integers(0, 2 if family == "crowded" else 3, size=teams).tolist()
    eligible = [sorted(set(rng.integers(0, teams, size=int(rng.integers(0, teams + 1))).tolist())) for _ in range(agents)]
    team_vectors = vectors(teams) if family != "zero-agents" else rng.standard_normal((teams, dim)) / np.sqrt(dim)
    return AssignmentProblem(vectors(agents), team_vectors, seats, eligible)


@pytest.mark.parametrize("family", ["all-equal", "zero-agents", "ternary", "crowded"])
def test_the_plan_is_exact_and_never_below_greedy_on_tied_and_crowded_instances(family) -> None:
    """Checked, sound: on instances full of ties (all similarities equal, zero vectors, -1/0/1
    vectors) and with more agents than seats, every matcher places as many agents as exhaustive
    search and reaches its total similarity, and never places fewer than greedy or, placing as
    many, a lower total."""
    rng = np.random.default_rng(sorted(["all-equal", "zero-agents", "ternary", "crowded"]).index(family))
    for _ in range(150):
        problem = _adversarial(family, rng)
        exact, greedy = exact_assignment_bruteforce(problem), greedy_assignment(problem)
        for matcher in ("auto", "dense", "sparse"):
            plan = solve_assignment(problem, matcher=matcher)
            assert plan.placed_count == exact.placed_count >= greedy.placed_count
            assert plan.total_similarity >= exact.total_similarity - 1e-9
            if plan.placed_count == greedy.placed_count:
                assert plan.total_similarity >= greedy.total_similarity - 1e-9
            taken = np.bincount(list(plan.placements.values()), minlength=len(problem.free_seats))
            assert np.all(taken <= problem.free_seats)
            assert all(team in problem.eligible[agent] for agent, team in plan.placements.items())
