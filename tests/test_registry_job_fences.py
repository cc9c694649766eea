"""A registry job's attempt fences its own writes: a worker that stalled while its job was
re-claimed by another attempt commits nothing, in certification, single and bulk assignment.

The task functions run in this process against the test database (the process-wide
session factory, keyring and embedder point at it); the job rows are real.
"""

import uuid

import pytest
from sqlalchemy import text, update

from models.db import make_session_factory, transaction
from models.entities import Agent, EntityType, Skill
from models.errors import StaleAttempt
from models.job_lifecycle import JobClaim, claim_job, create_job
from models.jobs import Job
from tasks import registry_jobs, runtime
from tests.test_assignment import World
from tests.test_certification import GOOD


@pytest.fixture
def sessions(engine, keyring, write_ctx, clean_db, monkeypatch):
    factory = make_session_factory(engine)
    monkeypatch.setattr(runtime, "session_factory", lambda: factory)
    monkeypatch.setattr(runtime, "keyring", lambda: keyring)
    monkeypatch.setattr(runtime, "embedder", lambda: write_ctx.embedder)
    return factory


def _stale_claim(sessions, kind: str, params: dict) -> JobClaim:
    """Attempt 1's claim, after its lease ran out and attempt 2 claimed the job."""
    with transaction(sessions) as session:
        job = create_job(session, kind=kind, params=params)
        stalled = claim_job(session, job_id=job.id, worker="stalled", lease_seconds=60)
        session.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=text("now() - interval '1 hour'")))
        assert claim_job(session, job_id=job.id, worker="rescuer", lease_seconds=60).attempt == 2
    return stalled


@pytest.fixture
def world(sessions, write_ctx, committed_steward):
    with transaction(sessions) as session:
        world = World(session, write_ctx, committed_steward)
        world.teams = [world.team(f"Fenced team {i}", capacity=2).id for i in range(2)]
        world.agents = [world.agent(f"Fenced agent {i}").id for i in range(3)]
        world.draft = world.make(EntityType.SKILL, name="Fenced Skill", skill_key="fenced-skill", category="technical",
                                 description=GOOD).id
    return world


def test_a_stale_certification_attempt_certifies_nothing(sessions, world) -> None:
    claim = _stale_claim(sessions, "skill.certify", {"skill_id": str(world.draft)})
    with pytest.raises(StaleAttempt):
        registry_jobs._certify(claim, lambda *_: None)
    with sessions() as session:
        skill = session.get(Skill, world.draft)
        assert (skill.status, skill.version) == ("draft", 1)


def test_a_stale_assignment_attempt_seats_nobody(sessions, world) -> None:
    claim = _stale_claim(sessions, "agent.assign_team", {"agent_id": str(world.agents[0]), "team_id": str(world.teams[0])})
    with pytest.raises(StaleAttempt):
        registry_jobs._assign(claim, lambda *_: None)
    with sessions() as session:
        assert session.get(Agent, world.agents[0]).team_id is None


def test_a_stale_bulk_assignment_attempt_seats_nobody(sessions, world) -> None:
    claim = _stale_claim(sessions, "agents.assign_teams", {"agent_ids": [str(a) for a in world.agents]})
    with pytest.raises(StaleAttempt):
        registry_jobs._assign_bulk(claim, lambda *_: None)
    with sessions() as session:
        assert all(session.get(Agent, agent_id).team_id is None for agent_id in world.agents)


def test_the_live_attempt_does_the_work(sessions, world) -> None:
    with transaction(sessions) as session:
        job = create_job(session, kind="agents.assign_teams", params={"agent_ids": [str(a) for a in world.agents]})
        claim = claim_job(session, job_id=job.id, worker="live", lease_seconds=60)
    outcome = registry_jobs._assign_bulk(claim, lambda *_: None)
    assert outcome["placed"] == 3
    with sessions() as session:
        assert all(isinstance(session.get(Agent, agent_id).team_id, uuid.UUID) for agent_id in world.agents)
