"""Who may sit in which team: the eligibility rules and the seat count.

One set of rules for every way an agent comes to sit in a team: the assignment jobs
(``models.assignment``, ``models.bulk_assignment``) and any registry write that sets an
agent's ``team_id`` or changes either side of a membership (``models.registry``), and
the facts of the constitution's rules about seats (TEAM-03, AGENT-04), which writes and
every audit evaluate (:func:`seat_problems`, :func:`signed_member_counts`).
A seat is decided only on a team and a job role whose rows are their signed head
versions (:func:`signed_requirements`; the team's row is checked where it is locked).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.chain import ChainFinding
from models.chain_verification import head_drift
from models.db_statements import uuid_in
from models.entities import (
    GOVERNED_FIELDS, SKILL_ID_FIELDS, Agent, AgentStatus, EntitySnapshot, EntityType, JobRole, LifecycleStatus, Team,
    agent_skills, governed_content, job_role_skills, load_entities,
)
from models.signing import KeyRing


def required_skills_of(session: Session, job_role_ids: Collection[uuid.UUID | None]) -> dict[uuid.UUID, set[uuid.UUID]]:
    """Each role's required skill ids, in one query (a role that requires none maps to an empty set)."""
    ids = sorted({r for r in job_role_ids if r is not None})
    required: dict[uuid.UUID, set[uuid.UUID]] = {r: set() for r in ids}
    if ids:
        for role_id, skill_id in session.execute(select(job_role_skills.c.job_role_id, job_role_skills.c.skill_id)
                                                 .where(uuid_in(job_role_skills.c.job_role_id, ids))):
            required[role_id].add(skill_id)
    return required


def signed_requirements(
    session: Session, job_role_ids: Collection[uuid.UUID | None], keyring: KeyRing
) -> tuple[dict[uuid.UUID, set[uuid.UUID]], dict[uuid.UUID, ChainFinding]]:
    """The skills each job role requires, as its signed head version records them, and the
    roles whose row is not that head (``models.chain_verification.head_drift``: their skills are left
    out, and no seat is decided on them).

    Read without a lock: a share lock taken by every seat held the role's writers off for
    as long as seats kept coming. The caller holds the lock of the team a seat is decided
    in, and a change of a role's required skills locks the role's teams
    (``models.seat_guards._guard_role_members``), so none commits meanwhile. Another write of
    the role (its description) may commit between reading its row and reading its head:
    the row is then not its head, and it is read once more before it counts as drift (a
    refusal is at worst a 409 worth retrying). A read spanning a commit is never taken for
    a signed state: every write appends a version, so the head, read last, is newer than
    the row. Three queries whatever the number of roles: the roles, their skills, their
    heads (three more when one is read again).
    """
    ids = sorted({r for r in job_role_ids if r is not None})
    if not ids:
        return {}, {}
    required, drift = _read_signed_requirements(session, ids, keyring)
    if drift:
        again, drift = _read_signed_requirements(session, sorted(drift), keyring)
        required.update(again)
    return required, drift


def _read_signed_requirements(
    session: Session, ids: list[uuid.UUID], keyring: KeyRing
) -> tuple[dict[uuid.UUID, set[uuid.UUID]], dict[uuid.UUID, ChainFinding]]:
    """The roles' rows, then their skills, then their heads (in that order: see above)."""
    roles = list(session.scalars(select(JobRole).where(uuid_in(JobRole.id, ids)).order_by(JobRole.id)
                                 .execution_options(populate_existing=True)))
    required = required_skills_of(session, ids)
    drift = head_drift(session, [(role, _role_content(role, required[role.id])) for role in roles], keyring)
    return {role.id: required[role.id] for role in roles if role.id not in drift}, drift


def _role_content(role: JobRole, skill_ids: Collection[uuid.UUID]) -> dict[str, object]:
    """The role's governed content with the skill ids read above, not its ``required_skills``
    (a collection this session may have loaded earlier)."""
    row = {f: getattr(role, f) for f in GOVERNED_FIELDS[EntityType.JOB_ROLE] if f not in SKILL_ID_FIELDS}
    return governed_content(EntitySnapshot(EntityType.JOB_ROLE, row, required_skill_ids=list(skill_ids)))


def ineligibility(
    agent: Agent | EntitySnapshot, team: Team | EntitySnapshot, required: set[uuid.UUID], *,
    held: Collection[uuid.UUID] | None = None,
) -> list[str]:
    """Every rule the pair breaks, capacity aside (empty list = eligible).

    ``held`` is the agent's skill ids when the caller read them itself; by default they
    come from the agent's ``skills`` (a mapped agent's; an audit's snapshot passes them).
    """
    reasons = []
    if agent.status != AgentStatus.ACTIVE.value:
        reasons.append(f"agent is {agent.status}")
    if getattr(agent, "deleted_at", None) is not None:
        reasons.append("agent is deleted")
    if team.status != LifecycleStatus.ACTIVE.value:
        reasons.append(f"team is {team.status}")
    if getattr(team, "deleted_at", None) is not None:
        reasons.append("team is deleted")
    if agent.job_role_id != team.job_role_id:
        reasons.append("team's job role is not the agent's")
    if agent.industry_id and team.industry_id and agent.industry_id != team.industry_id:
        reasons.append("industries differ")
    reasons += lacks_skills(required, held if held is not None else [s.id for s in agent.skills])
    return reasons


def seat_problems(
    session: Session, agents: Sequence[tuple[Any, Collection[uuid.UUID]]], keyring: KeyRing
) -> dict[uuid.UUID, tuple[str, ...]]:
    """Why each seated agent among ``agents`` (each with the skill ids it holds) may not sit
    in its team, by the rules every seat is taken under (:func:`ineligibility`), judged on
    the team's and the agent's job role's signed head versions. Rule AGENT-04's facts, for
    the audit and for writes alike.

    Agents that qualify, or sit in no team, are left out. So is one whose team's or job
    role's row is not its signed head (:func:`models.chain_verification.head_drift`): nothing signed says
    what its seat's rules are, and that row has its own finding; once it is restored, the
    seat is judged. The agents' own fields are as the caller holds them (the audit checks
    each agent's row against its own head).

    Two queries whatever the number of agents (the teams, the roles' required skills);
    only agents those rows find wanting are judged again on the teams and roles checked
    against their heads (three more: the roles, their skills, the heads).
    """
    seated = [(agent, held) for agent, held in agents if agent.team_id is not None]
    if not seated:
        return {}
    teams = {team.id: team for team in load_entities(session, EntityType.TEAM, sorted({a.team_id for a, _ in seated}))}
    required = required_skills_of(session, [agent.job_role_id for agent, _ in seated])
    wanting = [(agent, held) for agent, held in seated
               if ineligibility(agent, teams[agent.team_id], required.get(agent.job_role_id, set()), held=held)]
    if not wanting:
        return {}
    roles = {role.id: role for role in load_entities(
        session, EntityType.JOB_ROLE, sorted({a.job_role_id for a, _ in wanting if a.job_role_id is not None}))}
    partners = [*{teams[agent.team_id].id: teams[agent.team_id] for agent, _ in wanting}.values(), *roles.values()]
    drift = head_drift(session, [(entity, governed_content(entity)) for entity in partners], keyring)
    problems = {}
    for agent, held in wanting:
        team, role = teams[agent.team_id], roles.get(agent.job_role_id)
        if team.id in drift or (role is not None and role.id in drift):
            continue  # not judged on a row edited outside Plant
        signed = set(role.required_skill_ids) if role is not None else set()
        if reasons := ineligibility(agent, team, signed, held=held):
            problems[agent.id] = tuple(reasons)
    return problems


def signed_member_counts(
    session: Session, teams: Sequence[Any], members: Mapping[uuid.UUID, int], keyring: KeyRing
) -> dict[uuid.UUID, int]:
    """Each team's members for its capacity (rule TEAM-03's facts): ``members``, counted
    from the agents' rows, except that a team whose rows number more than its capacity
    counts only the agents whose rows are their signed heads: an agent's row edited into a
    team is that agent's finding, not its team's. Nothing more is read unless a team's
    rows exceed its capacity (then its members, their skills and heads)."""
    over = [team.id for team in teams if members.get(team.id, 0) > team.capacity]
    counts = {team.id: members.get(team.id, 0) for team in teams}
    if over:
        in_over = select(Agent.id).where(uuid_in(Agent.team_id, over)).scalar_subquery()
        agents = load_entities(session, EntityType.AGENT, in_over)
        drift = head_drift(session, [(agent, governed_content(agent)) for agent in agents], keyring)
        signed = Counter(agent.team_id for agent in agents if agent.id not in drift)
        counts.update((team_id, signed.get(team_id, 0)) for team_id in over)
    return counts


def members_count(session: Session, team_id: uuid.UUID, *, excluding: uuid.UUID | None = None) -> int:
    query = select(func.count()).select_from(Agent).where(Agent.team_id == team_id)
    if excluding is not None:
        query = query.where(Agent.id != excluding)
    return session.scalar(query) or 0


def team_is_full(session: Session, team: Team, agent: Agent) -> bool:
    """Whether every seat of ``team`` is taken by someone other than ``agent``."""
    return members_count(session, team.id, excluding=agent.id) >= team.capacity


def members_not_admitted(session: Session, team: Team, required: set[uuid.UUID]) -> list[dict[str, object]]:
    """The team's members that ``team``, as it is in memory now, would not admit, ``required``
    being the skills its job role requires (as its signed head says: the caller read them).

    Two queries whatever the team's size: the members, the skills they hold.
    """
    return _refused_members(session, [team], lambda agent, member_of, held: ineligibility(agent, member_of, required, held=held))


def members_lacking_role_skills(session: Session, role: JobRole, teams: Sequence[Team]) -> list[dict[str, object]]:
    """The members of ``teams`` (the role's teams, locked by the caller) that lack a skill
    the role, as it is in memory now, requires. Only that rule: a change of the role's
    skills is not the place to object to anything else about a seat."""
    required = {s.id for s in role.required_skills}
    return _refused_members(session, teams, lambda agent, team, held: lacks_skills(required, held))


def lacks_skills(required: set[uuid.UUID], held: Collection[uuid.UUID]) -> list[str]:
    """The skill rule's reason, if ``held`` misses any of ``required``."""
    missing = required - set(held)
    return [f"agent lacks {len(missing)} required skill(s)"] if missing else []


def _refused_members(
    session: Session, teams: Sequence[Team], rule: Callable[[Agent, Team, list[uuid.UUID]], list[str]]
) -> list[dict[str, object]]:
    """Every member of ``teams`` that ``rule`` (agent, its team, the skill ids it holds)
    finds reasons against, with them. Two queries: the members, the skills they hold."""
    if not teams:
        return []
    by_id = {team.id: team for team in teams}
    in_teams = uuid_in(Agent.team_id, list(by_id))
    members = list(session.scalars(select(Agent).where(in_teams).order_by(Agent.name, Agent.id)))
    held: dict[uuid.UUID, list[uuid.UUID]] = {agent.id: [] for agent in members}
    for agent_id, skill_id in session.execute(select(agent_skills.c.agent_id, agent_skills.c.skill_id).join(
            Agent, Agent.id == agent_skills.c.agent_id).where(in_teams)):
        held.setdefault(agent_id, []).append(skill_id)
    refused = []
    for agent in members:
        team = by_id[agent.team_id]
        if reasons := rule(agent, team, held[agent.id]):
            refused.append({"agent_id": str(agent.id), "team_id": str(team.id), "reasons": reasons})
    return refused
