"""Bulk team assignment: one optimal plan for many agents, applied in committed batches.

The plan maximizes, first, how many agents get a seat and then their total similarity
(agent embedding · team embedding) under the eligibility rules and the teams' free
seats (``models.assignment_solver``). It is then applied through the same single-agent
assignment path, under the same locks, so a seat taken meanwhile by someone else shows
up as an unplaced agent with its reason instead of an over-full team. Because it
commits per batch, it takes a session factory rather than one session.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from models.assignment import assign_agent, ineligibility
from models.assignment_solver import AssignmentProblem, solve_assignment
from models.db import transaction
from models.embeddings import EMBEDDING_DIM
from models.entities import Agent, AgentStatus, LifecycleStatus, Team, job_role_skills
from models.errors import PlantError
from models.progress import ProgressSink
from models.registry import WriteContext

APPLY_BATCH = 200


@dataclass(frozen=True)
class BulkOutcome:
    requested: int
    placed: int
    unplaced: list[dict[str, Any]] = field(default_factory=list)
    total_similarity: float = 0.0
    method: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "placed": self.placed,
            "not_placed": len(self.unplaced),
            "unplaced": self.unplaced,
            "total_similarity": round(self.total_similarity, 6),
            "method": self.method,
        }


@dataclass(frozen=True)
class Plan:
    agents: list[Agent]
    teams: list[Team]
    placements: dict[int, int]
    unplaced: dict[int, str]
    total_similarity: float
    method: str


def assign_teams_in_bulk(
    sessions: sessionmaker[Session],
    *,
    agent_ids: list[uuid.UUID] | None,
    all_unassigned: bool,
    ctx: WriteContext,
    progress: ProgressSink,
) -> BulkOutcome:
    with sessions() as session:
        plan = plan_assignment(session, agent_ids=agent_ids, all_unassigned=all_unassigned)
    unplaced = [_unplaced(plan.agents[i], reason) for i, reason in sorted(plan.unplaced.items())]
    moves = sorted(plan.placements.items())
    progress(0, len(moves), "plan computed")
    for start in range(0, len(moves), APPLY_BATCH):
        with transaction(sessions) as session:
            for agent_index, team_index in moves[start : start + APPLY_BATCH]:
                agent, team = plan.agents[agent_index], plan.teams[team_index]
                try:
                    with session.begin_nested():
                        assign_agent(session, agent_id=agent.id, team_id=team.id, ctx=ctx)
                except PlantError as exc:
                    unplaced.append(_unplaced(agent, exc.code, detail=exc.detail))
        progress(min(start + APPLY_BATCH, len(moves)), len(moves), "applying")
    placed = len(plan.agents) - len(unplaced)
    return BulkOutcome(len(plan.agents), placed, unplaced, plan.total_similarity, plan.method)


def _unplaced(agent: Agent, reason: str, detail: str | None = None) -> dict[str, Any]:
    return {"agent_id": str(agent.id), "name": agent.name, "reason": reason, **({"detail": detail} if detail else {})}


def plan_assignment(session: Session, *, agent_ids: list[uuid.UUID] | None, all_unassigned: bool) -> Plan:
    agents = _agents(session, agent_ids, all_unassigned)
    teams = list(session.scalars(select(Team).where(Team.status == LifecycleStatus.ACTIVE.value, Team.deleted_at.is_(None)).order_by(Team.id)))
    seats = dict(session.execute(select(Agent.team_id, func.count()).where(Agent.team_id.is_not(None)).group_by(Agent.team_id)).all())
    for agent in agents:  # an agent being re-planned does not hold on to its current seat
        if agent.team_id is not None:
            seats[agent.team_id] -= 1
    required: dict[uuid.UUID, set[uuid.UUID]] = {}
    for role_id, skill_id in session.execute(select(job_role_skills.c.job_role_id, job_role_skills.c.skill_id)):
        required.setdefault(role_id, set()).add(skill_id)
    teams_by_role: dict[uuid.UUID | None, list[int]] = {}
    for index, team in enumerate(teams):
        teams_by_role.setdefault(team.job_role_id, []).append(index)
    eligible = [
        [t for t in teams_by_role.get(a.job_role_id, []) if not ineligibility(a, teams[t], required.get(a.job_role_id, set()))]
        for a in agents
    ]
    problem = AssignmentProblem(
        agent_vectors=_matrix(a.embedding for a in agents),
        team_vectors=_matrix(t.embedding for t in teams),
        free_seats=[max(t.capacity - seats.get(t.id, 0), 0) for t in teams],
        eligible=eligible,
    )
    result = solve_assignment(problem)
    return Plan(agents, teams, dict(result.placements), dict(result.unplaced), result.total_similarity, result.method)


def _agents(session: Session, agent_ids: list[uuid.UUID] | None, all_unassigned: bool) -> list[Agent]:
    query = select(Agent).options(selectinload(Agent.skills)).order_by(Agent.id)
    if agent_ids:
        query = query.where(Agent.id.in_(agent_ids))
    elif all_unassigned:
        query = query.where(Agent.team_id.is_(None), Agent.status == AgentStatus.ACTIVE.value, Agent.deleted_at.is_(None))
    else:
        return []
    return list(session.scalars(query))


def _matrix(vectors: Any) -> np.ndarray:
    rows = [np.zeros(EMBEDDING_DIM) if v is None else np.asarray(v, dtype=np.float64) for v in vectors]
    return np.vstack(rows) if rows else np.zeros((0, EMBEDDING_DIM))
