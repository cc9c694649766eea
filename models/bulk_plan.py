"""Planning a bulk team assignment: what it reads, and the optimal plan it solves.

The inputs are read from plain rows in one transaction (agents, their skills and
embeddings as one snapshot, the live teams and their free seats), and the plan is solved
afterwards, with no transaction held, under the same eligibility rules as a single
assignment (``models.assignment_solver``). ``models.bulk_assignment`` applies it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import LargeBinary, func, select
from sqlalchemy.orm import Session

from models.membership import required_skills_of
from models.assignment_solver import AssignmentProblem, solve_assignment
from models.chain_verification import head_drift
from models.db_statements import uuid_in
from models.embeddings import EMBEDDING_DIM
from models.entities import (
    Agent, AgentStatus, EntityType, LifecycleStatus, Team, agent_skills, governed_content, load_entities,
)
from models.jobs import MAX_BULK_AGENTS
from models.signing import KeyRing


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
    deleted: bool = False  # soft-deleted: no seat is ever its (models.membership.ineligibility)


@dataclass(frozen=True, slots=True)
class PlannedTeam:
    """What planning reads of a team (its JSON columns are not needed either)."""

    id: uuid.UUID
    status: str
    job_role_id: uuid.UUID
    industry_id: uuid.UUID | None
    capacity: int


@dataclass(frozen=True)
class Plan:
    agents: list[PlannedAgent]
    teams: list[PlannedTeam]
    placements: dict[int, int]
    unplaced: dict[int, str]
    total_similarity: float
    method: str
    problem: AssignmentProblem  # kept so a benchmark can compare solvers on the same input


@dataclass(frozen=True)
class PlanInputs:
    """What planning reads from the database; the solve needs nothing more."""

    agents: list[PlannedAgent]
    teams: list[PlannedTeam]
    agent_vectors: np.ndarray
    team_vectors: np.ndarray
    free_seats: list[int]
    required: dict[Any, set[uuid.UUID]]


def read_plan_inputs(
    session: Session, *, agent_ids: list[uuid.UUID] | None, all_unassigned: bool, excluding: Collection[uuid.UUID] = (),
    keyring: KeyRing | None = None,
) -> PlanInputs:
    """What the plan needs, for the agents given or all unassigned ones, but those in ``excluding``.

    With ``keyring``, a team whose row is not its signed head is left out, as automatic
    choice passes over it: every move into it would be refused (``entity-tampered``), and
    the seats the plan counted there were given to no one else."""
    agents, agent_vectors = _agents(session, agent_ids, all_unassigned, excluding)
    live = (Team.status == LifecycleStatus.ACTIVE.value, Team.deleted_at.is_(None))
    team_rows = session.execute(
        select(Team.id, Team.status, Team.job_role_id, Team.industry_id, Team.capacity, _binary(Team.embedding))
        .where(*live).order_by(Team.id)).all()
    if keyring is not None:
        tampered = _tampered_teams(session, select(Team.id).where(*live), keyring)
        team_rows = [row for row in team_rows if row[0] not in tampered]
    teams = [PlannedTeam(*row[:5]) for row in team_rows]
    # Every seat taken is counted, those of the agents being re-planned too: a plan never
    # counts on a seat that another of its moves frees (see solve_plan).
    seats = dict(session.execute(select(Agent.team_id, func.count()).where(Agent.team_id.is_not(None)).group_by(Agent.team_id)).all())
    return PlanInputs(
        agents, teams, agent_vectors, _vectors([row[5] for row in team_rows]),
        free_seats=[max(t.capacity - seats.get(t.id, 0), 0) for t in teams],
        required=required_skills_of(session, [agent.job_role_id for agent in agents]),
    )


def _tampered_teams(session: Session, ids: Any, keyring: KeyRing) -> set[uuid.UUID]:
    """The teams among ``ids`` (a query of ids) whose row is not their signed head. One read
    before a team's write commits and the head after would look like drift: such a team is
    read once more before it counts (as ``models.membership.signed_requirements`` does)."""
    def drifted(query: Any) -> set[uuid.UUID]:
        teams = load_entities(session, EntityType.TEAM, query)
        return set(head_drift(session, [(team, governed_content(team)) for team in teams], keyring))

    suspects = drifted(ids)
    return drifted(select(Team.id).where(uuid_in(Team.id, suspects))) if suspects else suspects


def solve_plan(inputs: PlanInputs) -> Plan:
    """The plan for ``inputs``: pure computation, run after the read transaction ended.

    An agent already seated in a team it may stay in keeps a seat there of its own: a team
    of one seat, for it alone, with its team's embedding (:func:`_with_stays`). So the plan
    either leaves it where it is or moves it to a seat that is free now, and never seats
    anyone in a seat only a move of the same plan would free: the batches apply in any
    order, two at a time, and no planned move waits on another. (Counting on freed seats
    placed agents the batches then refused as ``team-full``, and gave away the seat of an
    agent the plan left out, which kept it.)"""
    eligible = eligible_teams(inputs.agents, inputs.teams, inputs.required)
    team_vectors, free_seats, stays = _with_stays(inputs, eligible)
    problem = AssignmentProblem(agent_vectors=inputs.agent_vectors, team_vectors=team_vectors, free_seats=free_seats,
                                eligible=eligible)
    result = solve_assignment(problem)
    placements = {agent: stays.get(team, team) for agent, team in result.placements.items()}
    return Plan(inputs.agents, inputs.teams, placements, dict(result.unplaced), result.total_similarity, result.method,
                problem)


def _with_stays(inputs: PlanInputs, eligible: list[list[int]]) -> tuple[np.ndarray, list[int], dict[int, int]]:
    """Give each agent seated in a team it is eligible for a seat of its own there.

    Each such seat is one more team (index past the real ones), with one free seat and the
    real team's embedding, that only its agent may take, in place of the real team in its
    eligible list (``eligible`` is changed). Returns the teams' embeddings and free seats
    with those added, and each added index's real team."""
    index = {team.id: i for i, team in enumerate(inputs.teams)}
    stays: dict[int, int] = {}
    for agent_no, agent in enumerate(inputs.agents):
        current = index.get(agent.team_id) if agent.team_id is not None else None
        if current is None or current not in eligible[agent_no]:
            continue
        own = len(inputs.teams) + len(stays)
        stays[own] = current
        eligible[agent_no] = sorted(own if team == current else team for team in eligible[agent_no])
    if not stays:
        return inputs.team_vectors, list(inputs.free_seats), stays
    return (np.vstack([inputs.team_vectors, inputs.team_vectors[list(stays.values())]]),
            [*inputs.free_seats, *(1 for _ in stays)], stays)


def plan_assignment(session: Session, *, agent_ids: list[uuid.UUID] | None, all_unassigned: bool) -> Plan:
    return solve_plan(read_plan_inputs(session, agent_ids=agent_ids, all_unassigned=all_unassigned))


def eligible_teams(
    agents: list[PlannedAgent] | list[Agent], teams: list[PlannedTeam] | list[Team], required: dict[Any, set[uuid.UUID]]
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
        if agent.status != AgentStatus.ACTIVE.value or _deleted(agent) or not needs <= _held_skills(agent):
            result.append([])
        elif agent.industry_id is None:
            result.append(sorted(by_role.get(agent.job_role_id, [])))
        else:
            same = groups.get((agent.job_role_id, agent.industry_id), [])
            result.append(sorted(same + groups.get((agent.job_role_id, None), [])))
    return result


def _deleted(agent: PlannedAgent | Agent) -> bool:
    """Whether the agent is soft-deleted: a seat planned for one was refused by its batch
    (now ``entity-deleted``) and cost an agent the plan left out for want of it."""
    return agent.deleted if isinstance(agent, PlannedAgent) else agent.deleted_at is not None


def _held_skills(agent: PlannedAgent | Agent) -> frozenset[uuid.UUID]:
    return agent.skill_ids if isinstance(agent, PlannedAgent) else frozenset(s.id for s in agent.skills)


def _agents(
    session: Session, agent_ids: list[uuid.UUID] | None, all_unassigned: bool, excluding: Collection[uuid.UUID] = (),
) -> tuple[list[PlannedAgent], np.ndarray]:
    """The agents to plan, by id, as plain rows, and their embeddings as one matrix: with
    ``all_unassigned``, the first ``MAX_BULK_AGENTS`` unassigned ones by id.

    One statement (skills aggregated per agent), so agents and skills are one snapshot.
    """
    held = (select(func.array_agg(agent_skills.c.skill_id)).where(agent_skills.c.agent_id == Agent.id)
            .scalar_subquery())
    query = select(Agent.id, Agent.name, Agent.status, Agent.job_role_id, Agent.industry_id, Agent.team_id, held,
                   _binary(Agent.embedding), Agent.deleted_at.is_not(None)).order_by(Agent.id)
    if agent_ids:
        query = query.where(uuid_in(Agent.id, agent_ids))
    elif all_unassigned:
        query = query.where(Agent.team_id.is_(None), Agent.status == AgentStatus.ACTIVE.value, Agent.deleted_at.is_(None))
        query = query.limit(MAX_BULK_AGENTS)  # after ``excluding``: a retry takes the next ones
    else:
        return [], _vectors([])
    if excluding:
        query = query.where(~uuid_in(Agent.id, excluding))
    rows = session.execute(query).all()
    agents = [PlannedAgent(*row[:6], frozenset(row[6] or ()), row[8]) for row in rows]
    return agents, _vectors([row[7] for row in rows])


def _binary(embedding: Any) -> Any:
    return func.vector_send(embedding, type_=LargeBinary)


def _vectors(blobs: list[bytes | None]) -> np.ndarray:
    """Embeddings in pgvector's binary form (``vector_send``: u16 dim, u16 unused, then
    big-endian float4s) as one float64 matrix, read by NumPy in one call rather than
    parsed from decimal text. Each row is scaled to unit length, so a similarity is the
    cosine that automatic choice ranks by (``models.assignment.rank_teams``): the embedders
    store unit vectors, but the column is not signed content, and a vector scaled through
    SQL made the solver refuse the whole plan (its norm bound). A missing embedding, or an
    all-zero one, is a zero row, as before."""
    present = [i for i, blob in enumerate(blobs) if blob is not None]
    matrix = np.zeros((len(blobs), EMBEDDING_DIM))
    if present:
        raw = np.frombuffer(b"".join(blobs[i] for i in present), dtype=">f4")  # type: ignore[misc]
        matrix[present] = raw.reshape(len(present), 1 + EMBEDDING_DIM)[:, 1:]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


def similarity(problem: AssignmentProblem, agent: int, team: int) -> float:
    return float(np.dot(np.asarray(problem.agent_vectors[agent], dtype=np.float64),
                        np.asarray(problem.team_vectors[team], dtype=np.float64)))
