"""Adversarial review of team assignment, single and bulk (review-bulk).

Each test proves a finding on real PostgreSQL; one still open is marked xfail(strict).
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import func, select, update

from models import bulk_assignment
from models.assignment import assign_agent
from models.bulk_assignment import assign_teams_in_bulk
from models.db import make_session_factory, transaction
from models.embeddings import EMBEDDING_DIM
from models.entities import Agent
from tests.test_assignment import World


def _world(engine, write_ctx, steward, *, teams: int, agents: int, capacity: int = 1):
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        world = World(session, write_ctx, steward)
        team_ids = [world.team(f"Review team {i}", capacity=capacity).id for i in range(teams)]
        agent_ids = [world.agent(f"Review member {i}").id for i in range(agents)]
    return sessions, team_ids, agent_ids


def test_one_agent_s_stored_embedding_edited_through_sql_does_not_fail_every_bulk_assignment(
        engine, write_ctx, committed_steward) -> None:
    """An agent's embedding is derived data, outside its signed content, and no audit checks it:
    a row whose vector was scaled up through SQL (still a valid pgvector) made the plan refuse
    the whole problem ("vectors too long", invalid-input), so no agent was placed, while
    automatic single assignment, which compares by cosine, placed that agent as before."""
    sessions, teams, agents = _world(engine, write_ctx, committed_steward, teams=3, agents=3)
    with transaction(sessions) as session:
        vector = np.asarray(session.scalar(select(Agent.embedding).where(Agent.id == agents[0])), dtype=np.float64)
        session.execute(update(Agent).where(Agent.id == agents[0]).values(embedding=(vector * 5_000).tolist()))
    outcome = assign_teams_in_bulk(sessions, agent_ids=agents, all_unassigned=False, ctx=write_ctx,
                                   progress=lambda *a: None)
    assert (outcome.requested, outcome.placed) == (3, 3), outcome.unplaced
    assert abs(outcome.total_similarity) <= 3 + 1e-6  # cosines, as automatic choice ranks teams
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Agent).where(Agent.team_id.in_(teams))) == 3
