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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import ARRAY, Text, any_, func, insert, literal, select, type_coerce
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import Session, attributes, load_only, sessionmaker, undefer

from models.assignment import ineligibility
from models.assignment_solver import AssignmentProblem, solve_assignment
from models.chain import EntityVersion
from models.db import transaction
from models.embeddings import EMBEDDING_DIM
from models.entities import (
    GOVERNED_FIELDS, SKILL_ID_FIELDS, Agent, AgentStatus, EntityType, LifecycleStatus, Skill, Team, agent_skills,
    job_role_skills,
)
from models.progress import ProgressSink
from models.registry import WriteContext, record_version

APPLY_BATCH = 500


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


@dataclass(frozen=True, slots=True)
class PlannedAgent:
    """What planning reads of an agent, from a plain row: building 10,000 ORM agents (with
    skill collections and JSON columns) cost seconds, and the plan needs none of that."""

    id: uuid.UUID
    name: str
    status: str
    job_role_id: uuid.UUID | None
    industry_id: uuid.UUID | None
    team_id: uuid.UUID | None
    skill_ids: frozenset[uuid.UUID]


@dataclass(frozen=True)
class Plan:
    agents: list[PlannedAgent]
    teams: list[Team]
    placements: dict[int, int]
    unplaced: dict[int, str]
    required: dict[Any, set[uuid.UUID]]
    total_similarity: float
    method: str
    problem: AssignmentProblem  # kept so a benchmark can compare solvers on the same input


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
        batch = [(plan.agents[a].id, plan.teams[t].id) for a, t in moves[start : start + APPLY_BATCH]]
        with transaction(sessions) as session:
            refused = apply_batch(session, batch, ctx=ctx, required=plan.required)
        names = {plan.agents[a].id: plan.agents[a] for a, _ in moves[start : start + APPLY_BATCH]}
        unplaced += [_unplaced(names[agent_id], reason, detail=detail) for agent_id, reason, detail in refused]
        progress(min(start + APPLY_BATCH, len(moves)), len(moves), "applying")
    placed = len(plan.agents) - len(unplaced)
    return BulkOutcome(len(plan.agents), placed, unplaced, plan.total_similarity, plan.method)


def apply_batch(
    session: Session, moves: list[tuple[uuid.UUID, uuid.UUID]], *, ctx: WriteContext, required: dict[Any, set[uuid.UUID]]
) -> list[tuple[uuid.UUID, str, str]]:
    """Apply (agent, team) moves under the same rules as a single assignment, in one flush.

    Agents and then teams are locked in id order (a single assignment locks one agent,
    then one team, so the two never wait on each other in a cycle), seats are counted
    once under those locks, and every move is re-checked: a seat taken since the plan
    was made is refused here, never over-filled. Returns the refused moves with reasons.
    """
    agents = _lock_agents(session, [a for a, _ in moves])
    team_ids = sorted({t for _, t in moves})
    teams = {t.id: t for t in session.scalars(
        select(Team).where(Team.id.in_(team_ids)).order_by(Team.id).with_for_update().execution_options(populate_existing=True))}
    taken = dict(session.execute(select(Agent.team_id, func.count()).where(Agent.team_id.in_(team_ids)).group_by(Agent.team_id)).all())
    refused = []
    for agent_id, team_id in moves:
        agent, team = agents[agent_id], teams[team_id]
        reasons = ineligibility(agent, team, required.get(agent.job_role_id, set()))
        if reasons:
            refused.append((agent_id, "not-eligible", "; ".join(reasons)))
        elif agent.team_id == team.id:
            continue
        elif taken.get(team.id, 0) >= team.capacity:
            refused.append((agent_id, "team-full", f"team {team.name} is full"))
        else:
            if agent.team_id is not None:
                taken[agent.team_id] = taken.get(agent.team_id, 1) - 1
            taken[team.id] = taken.get(team.id, 0) + 1
            agent.team_id = team.id
            record_version(session, agent, ctx, text_changed=False, flush=False)
    _insert_versions(session)
    session.flush()
    return refused


# Columns the re-check and the chain version read: the governed fields and the head.
# Not the constitution results (rewritten by the version), timestamps or the embedding.
_LOCKED_AGENT_COLUMNS = [getattr(Agent, f) for f in GOVERNED_FIELDS[EntityType.AGENT] if f not in SKILL_ID_FIELDS] + [
    Agent.version, Agent.head_link_hash]


def _lock_agents(session: Session, agent_ids: list[uuid.UUID]) -> dict[uuid.UUID, Agent]:
    """Lock the agents in id order and load them fresh, with their skills.

    The skills collection is filled from one plain query on ``agent_skills`` rather than
    a relationship loader (per-parent loader work was a large share of a bulk run); it is
    read after the agent rows are locked, and every change to an agent's skills locks
    the agent row first, so it is current.
    """
    agents = {a.id: a for a in session.scalars(
        select(Agent).where(_one_of(Agent.id, agent_ids)).order_by(Agent.id).with_for_update()
        .options(load_only(*_LOCKED_AGENT_COLUMNS)).execution_options(populate_existing=True))}
    held: dict[uuid.UUID, list[uuid.UUID]] = {agent_id: [] for agent_id in agents}
    for agent_id, skill_id in session.execute(
            select(agent_skills.c.agent_id, agent_skills.c.skill_id).where(_one_of(agent_skills.c.agent_id, agents))
            .order_by(agent_skills.c.agent_id, agent_skills.c.skill_id)):
        held[agent_id].append(skill_id)
    skills = {s.id: s for s in session.scalars(
        select(Skill).where(Skill.id.in_({i for ids in held.values() for i in ids})).options(load_only(Skill.id)))}
    for agent_id, agent in agents.items():
        attributes.set_committed_value(agent, "skills", [skills[i] for i in held[agent_id]])
    return agents


def _one_of(column: Any, ids: Iterable[uuid.UUID]) -> Any:
    """``column = ANY(:ids)``: one array parameter; ``IN`` with hundreds of parameters
    makes a statement too long for the driver's cache, re-parsed on every execution."""
    return column == any_(literal(list(ids), ARRAY(PG_UUID(as_uuid=True))))


def _insert_versions(session: Session) -> None:
    """Write the batch's pending chain versions in one executemany, not through the flush.

    The unit of work would INSERT ... RETURNING each row's generated id (nobody reads it
    here) as one statement of thousands of parameters, and parsing that statement in the
    driver cost more than the inserts. The rows are exactly what ``append_version`` built.
    """
    rows = [obj for obj in session.new if isinstance(obj, EntityVersion)]
    if not rows:
        return
    columns = [c.key for c in EntityVersion.__table__.columns if c.key not in ("id", "created_at")]
    for row in rows:
        session.expunge(row)
    session.execute(insert(EntityVersion.__table__), [{c: getattr(row, c) for c in columns} for row in rows])


def _unplaced(agent: PlannedAgent, reason: str, detail: str | None = None) -> dict[str, Any]:
    return {"agent_id": str(agent.id), "name": agent.name, "reason": reason, **({"detail": detail} if detail else {})}


def plan_assignment(session: Session, *, agent_ids: list[uuid.UUID] | None, all_unassigned: bool) -> Plan:
    agents, agent_vectors = _agents(session, agent_ids, all_unassigned)
    teams = list(session.scalars(
        select(Team).options(undefer(Team.embedding))
        .where(Team.status == LifecycleStatus.ACTIVE.value, Team.deleted_at.is_(None)).order_by(Team.id)))
    seats = dict(session.execute(select(Agent.team_id, func.count()).where(Agent.team_id.is_not(None)).group_by(Agent.team_id)).all())
    for agent in agents:  # an agent being re-planned does not hold on to its current seat
        if agent.team_id is not None:
            seats[agent.team_id] -= 1
    required: dict[uuid.UUID, set[uuid.UUID]] = {}
    for role_id, skill_id in session.execute(select(job_role_skills.c.job_role_id, job_role_skills.c.skill_id)):
        required.setdefault(role_id, set()).add(skill_id)
    eligible = eligible_teams(agents, teams, required)
    problem = AssignmentProblem(
        agent_vectors=agent_vectors,
        team_vectors=_matrix(t.embedding for t in teams),
        free_seats=[max(t.capacity - seats.get(t.id, 0), 0) for t in teams],
        eligible=eligible,
    )
    result = solve_assignment(problem)
    return Plan(agents, teams, dict(result.placements), dict(result.unplaced), required, result.total_similarity,
                result.method, problem)


def eligible_teams(
    agents: list[PlannedAgent] | list[Agent], teams: list[Team], required: dict[Any, set[uuid.UUID]]
) -> list[list[int]]:
    """For each agent, the indices of the teams it may join (capacity aside).

    The same rules as :func:`models.assignment.ineligibility`, grouped so that the work is
    per agent and per team, not per pair: the agent-side rules (active, holds the role's
    skills) are checked once per agent, the team side (active) once per team, and the
    pair rules (same job role, industries match when both set) select a precomputed group.
    """
    groups: dict[tuple[Any, Any], list[int]] = {}
    for index, team in enumerate(teams):
        if team.status == LifecycleStatus.ACTIVE.value:
            groups.setdefault((team.job_role_id, team.industry_id), []).append(index)
    by_role: dict[Any, list[int]] = {}
    for (role, _), indices in groups.items():
        by_role.setdefault(role, []).extend(indices)
    result = []
    for agent in agents:
        needs = required.get(agent.job_role_id, set())
        if agent.status != AgentStatus.ACTIVE.value or not needs <= _held_skills(agent):
            result.append([])
        elif agent.industry_id is None:
            result.append(sorted(by_role.get(agent.job_role_id, [])))
        else:
            same = groups.get((agent.job_role_id, agent.industry_id), [])
            result.append(sorted(same + groups.get((agent.job_role_id, None), [])))
    return result


def _held_skills(agent: PlannedAgent | Agent) -> frozenset[uuid.UUID]:
    return agent.skill_ids if isinstance(agent, PlannedAgent) else frozenset(s.id for s in agent.skills)


def _agents(
    session: Session, agent_ids: list[uuid.UUID] | None, all_unassigned: bool
) -> tuple[list[PlannedAgent], np.ndarray]:
    """The agents to plan, by id, as plain rows, and their embeddings as one matrix.

    One statement (skills aggregated per agent), so agents and skills are one snapshot.
    """
    held = (select(func.array_agg(agent_skills.c.skill_id)).where(agent_skills.c.agent_id == Agent.id)
            .scalar_subquery())
    query = select(Agent.id, Agent.name, Agent.status, Agent.job_role_id, Agent.industry_id, Agent.team_id, held,
                   type_coerce(Agent.embedding, Text)).order_by(Agent.id)
    if agent_ids:
        query = query.where(_one_of(Agent.id, agent_ids))
    elif all_unassigned:
        query = query.where(Agent.team_id.is_(None), Agent.status == AgentStatus.ACTIVE.value, Agent.deleted_at.is_(None))
    else:
        return [], _matrix([])
    rows = session.execute(query).all()
    agents = [PlannedAgent(*row[:6], frozenset(row[6] or ())) for row in rows]
    return agents, _parse_vectors([row[7] for row in rows])


def _parse_vectors(texts: list[str | None]) -> np.ndarray:
    """pgvector's text form (``[0.1,0.2,...]``) of many vectors, parsed in one NumPy call.

    The same decimal strings the ORM type parses one float at a time, so the same values;
    a missing embedding is a zero row, as before.
    """
    present = [i for i, t in enumerate(texts) if t is not None]
    matrix = np.zeros((len(texts), EMBEDDING_DIM))
    if present:
        flat = np.fromstring(",".join(texts[i][1:-1] for i in present), dtype=np.float64, sep=",")
        matrix[present] = flat.reshape(len(present), EMBEDDING_DIM)
    return matrix


def _matrix(vectors: Any) -> np.ndarray:
    rows = [np.zeros(EMBEDDING_DIM) if v is None else np.asarray(v, dtype=np.float64) for v in vectors]
    return np.vstack(rows) if rows else np.zeros((0, EMBEDDING_DIM))
