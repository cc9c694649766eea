"""What a seat locks, and what it reads without a lock: a job role's writes are never held off
by seats, a change of its required skills still never lets an agent lacking one be seated,
and a role written while a seat reads it is not taken for tampering.

Committed rows and real concurrent sessions: the point is what PostgreSQL's row locks let
through."""

import threading

import pytest
from sqlalchemy import text

import models.membership as membership
from models import bulk_assignment
from models.assignment import assign_agent
from models.bulk_apply import apply_batch
from models.bulk_assignment import assign_teams_in_bulk
from models.db import make_session_factory, transaction
from models.entities import Agent, EntityType, JobRole
from models.errors import NotEligible
from models.registry import create_entity, update_entity
from tests.conftest import lock_waiters, wait_for
from tests.test_assignment import World

E = EntityType


def _committed_world(engine, write_ctx, steward, *, teams: int, agents: int):
    """``teams`` one-seat teams of the world's role, ``agents`` agents who qualify for each."""
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, steward)
        team_ids = [world.team(f"Lock team {i}", capacity=1).id for i in range(teams)]
        agent_ids = [world.agent(f"Lock agent {i}").id for i in range(agents)]
        return sessions, world.role.id, [s.id for s in world.skills], team_ids, agent_ids


def _describe_role(sessions, role_id, write_ctx, description: str) -> None:
    with transaction(sessions) as session:
        update_entity(session, entity_type=E.JOB_ROLE, entity_id=role_id, changes={"description": description},
                      ctx=write_ctx)


def test_a_role_s_description_patch_is_not_held_off_by_seats_taken_after_it_asked(
        engine, write_ctx, committed_steward) -> None:
    """Every seat locked its agent's job role ``FOR SHARE``, which PostgreSQL grants beside the
    share locks already held even while a writer waits: a role PATCH (``FOR NO KEY UPDATE``)
    waited for the first seat, seats taken after it asked went ahead of it, and with seats
    taken steadily it waited until ``statement_timeout``. A seat takes no lock on its role now."""
    sessions, role_id, _, (t1, t2), (a1, a2) = _committed_world(engine, write_ctx, committed_steward, teams=2, agents=2)
    first = sessions()
    patched = threading.Event()
    patcher = threading.Thread(target=lambda: (_describe_role(sessions, role_id, write_ctx, "edited"), patched.set()))
    try:
        assign_agent(first, agent_id=a1, team_id=t1, ctx=write_ctx)  # its transaction stays open
        patcher.start()
        wait_for(lambda: patched.is_set() or lock_waiters(engine), what="the PATCH to finish or wait on a lock")
        with transaction(sessions) as later:  # a seat in another team of the role, taken after the PATCH asked
            assign_agent(later, agent_id=a2, team_id=t2, ctx=write_ctx)
        jumped, still_waiting = True, not patched.is_set()
        assert not (jumped and still_waiting), "a seat taken after the role's PATCH asked went ahead of it"
        assert patched.is_set()  # and it did not wait for the first seat either
        first.commit()
    finally:
        first.close()
        patcher.join(30)
    assert patched.is_set()


def test_a_role_s_description_patch_during_a_bulk_job_completes_before_the_job_ends(
        engine, write_ctx, committed_steward, monkeypatch) -> None:
    """A bulk job applying two batches at a time held its role ``FOR SHARE`` from its first
    batch to its last (each batch locked it before the one before had committed): a PATCH of
    the role's description issued mid-run finished only after the job. The batches are slowed
    here so that each commits only once the next one has applied its moves, as two in flight
    can; the PATCH must be done before the last batch commits."""
    sessions, role_id, _, _, agent_ids = _committed_world(engine, write_ctx, committed_steward, teams=8, agents=8)
    monkeypatch.setattr(bulk_assignment, "APPLY_BATCH", 1)
    monkeypatch.setattr(bulk_assignment, "APPLY_IN_FLIGHT", 2)
    applied = [threading.Event() for _ in agent_ids]
    patched, calls, done_when_last_applied = threading.Event(), [], []
    patcher = threading.Thread(target=lambda: (_describe_role(sessions, role_id, write_ctx, "edited mid-run"), patched.set()))
    apply, counting = bulk_assignment.apply_batch, threading.Lock()

    def applied_then_held(session, moves, **kwargs):
        refused = apply(session, moves, **kwargs)
        with counting:
            n = len(calls)
            calls.append(n)
        applied[n].set()
        if n == 1:  # mid-run: two batches applied, one of them holding its transaction open
            patcher.start()
            wait_for(lambda: patched.is_set() or lock_waiters(engine), what="the PATCH to finish or wait on a lock")
        if n + 1 < len(applied):
            applied[n + 1].wait(30)  # commit only once the next batch holds what it locks
        else:
            done_when_last_applied.append(patched.is_set())
        return refused

    monkeypatch.setattr(bulk_assignment, "apply_batch", applied_then_held)
    try:
        outcome = assign_teams_in_bulk(sessions, agent_ids=agent_ids, all_unassigned=False, ctx=write_ctx,
                                       progress=lambda *args: None)
    finally:
        if patcher.ident is not None:  # started
            patcher.join(30)
    assert outcome.placed == 8 and len(calls) == 8
    assert done_when_last_applied == [True], "the role's PATCH waited for the whole bulk job"
    assert patched.is_set()


@pytest.mark.parametrize("seat", ["single", "bulk", "agent write"])
def test_a_seat_waiting_on_a_change_of_its_role_s_skills_is_judged_under_the_new_ones(
        engine, write_ctx, committed_steward, seat) -> None:
    """A seat reads its role's required skills without a lock, but under its team's lock, which
    a change of those skills takes first (the role, then its teams): an agent lacking a skill
    the change adds waits for it and is refused, never seated under the old requirement. (A
    seat that got the team's lock first is seen by the change, which is refused then:
    ``tests/test_assignment.py::test_a_role_change_waits_for_a_seat_being_taken_and_then_refuses``.)"""
    sessions, role_id, skills, (team,), (agent,) = _committed_world(engine, write_ctx, committed_steward, teams=1, agents=1)
    changer, outcome = sessions(), []  # the agent holds skills 0 and 1; the change requires 2 as well

    def take_seat() -> None:
        try:
            with transaction(sessions) as session:
                if seat == "single":
                    assign_agent(session, agent_id=agent, team_id=team, ctx=write_ctx)
                elif seat == "bulk":
                    outcome.extend(reason for _, reason, _ in apply_batch(session, [(agent, team)], ctx=write_ctx))
                else:
                    update_entity(session, entity_type=E.AGENT, entity_id=agent, changes={"team_id": team}, ctx=write_ctx)
            outcome.append("committed")
        except NotEligible:
            outcome.append("not-eligible")

    seater = threading.Thread(target=take_seat)
    try:
        update_entity(changer, entity_type=E.JOB_ROLE, entity_id=role_id, changes={"required_skill_ids": skills},
                      ctx=write_ctx)  # holds the role and its team, not committed
        seater.start()
        wait_for(lambda: lock_waiters(engine), what="the seat to wait on the team's lock")
        changer.commit()
    finally:
        changer.close()
        if seater.ident is not None:
            seater.join(30)
    assert outcome == (["not-eligible", "committed"] if seat == "bulk" else ["not-eligible"])
    with sessions() as session:
        assert session.get(Agent, agent).team_id is None


@pytest.mark.parametrize("seat", ["single", "bulk"])
def test_a_role_described_between_reading_it_and_its_head_is_not_taken_for_tampering(
        engine, write_ctx, committed_steward, monkeypatch, seat) -> None:
    """A seat reads its role's row and skills, then its head version, without a lock: a PATCH of
    the role's description committed in between leaves a row one version behind the head read
    after it. The role is read once more before it counts as tampered: the seat is taken."""
    sessions, role_id, _, (team,), (agent,) = _committed_world(engine, write_ctx, committed_steward, teams=1, agents=1)
    check_heads, described = membership.head_drift, []

    def described_meanwhile(session, entities, keyring):
        if not described and any(isinstance(entity, JobRole) for entity, _ in entities):
            described.append(True)
            with transaction(sessions) as other:
                other.execute(text("SET LOCAL lock_timeout = '5s'"))  # not held up by the seat, which locks no role
                update_entity(other, entity_type=E.JOB_ROLE, entity_id=role_id, changes={"description": "meanwhile"},
                              ctx=write_ctx)
        return check_heads(session, entities, keyring)

    monkeypatch.setattr(membership, "head_drift", described_meanwhile)
    with transaction(sessions) as session:
        if seat == "single":
            assert assign_agent(session, agent_id=agent, team_id=team, ctx=write_ctx).team_id == team
        else:
            assert apply_batch(session, [(agent, team)], ctx=write_ctx) == []
    assert described == [True]
    with sessions() as session:
        assert session.get(Agent, agent).team_id == team
        assert session.get(JobRole, role_id).version == 2  # created, described meanwhile


@pytest.mark.parametrize("team_write", ["created", "given the role"])
def test_a_team_of_the_role_written_during_a_change_of_its_skills_seats_no_agent_lacking_one(
        engine, write_ctx, committed_steward, team_write) -> None:
    """A change of a role's required skills locks the role's teams, but not a team that comes to
    have the role meanwhile (created, or moved to it): a seat in that team, judged under the
    team's lock alone, read the skills the change was replacing, and the agent lacking the new
    one was seated once the change committed. A team write naming a role takes the role
    ``FOR SHARE``: it waits for the change, or the change for it (and then locks the team)."""
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        role_id, industry_id, skills = world.role.id, world.industry.id, [s.id for s in world.skills]
        agent = world.agent("Lacks skill 2").id
        elsewhere = world.team("Of another role", role=world.other_role).id
    changer, outcome = sessions(), []

    def team_then_seat() -> None:
        with transaction(sessions) as session:
            if team_write == "created":
                team = create_entity(session, entity_type=E.TEAM, ctx=write_ctx, data={
                    "name": "Made meanwhile", "capacity": 2, "job_role_id": role_id, "industry_id": industry_id,
                    "governance_agent_id": committed_steward}).id
            else:
                team = update_entity(session, entity_type=E.TEAM, entity_id=elsewhere, changes={"job_role_id": role_id},
                                     ctx=write_ctx).id
        try:
            with transaction(sessions) as session:
                assign_agent(session, agent_id=agent, team_id=team, ctx=write_ctx)
            outcome.append("seated")
        except NotEligible:
            outcome.append("not-eligible")

    writer = threading.Thread(target=team_then_seat)
    try:
        update_entity(changer, entity_type=E.JOB_ROLE, entity_id=role_id, changes={"required_skill_ids": skills},
                      ctx=write_ctx)  # holds the role and the teams it has now, not committed
        writer.start()
        wait_for(lambda: not writer.is_alive() or lock_waiters(engine), what="the team write to finish or wait")
        changer.commit()
    finally:
        changer.close()
        if writer.ident is not None:
            writer.join(30)
    assert outcome == ["not-eligible"]
    with sessions() as session:
        assert session.get(Agent, agent).team_id is None
