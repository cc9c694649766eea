"""Applying one batch of bulk moves (:func:`apply_batch`) and the refusals it gives.

A batch locks its agents, then its teams, in id order, checks each against its signed
head, and re-checks every move under those locks as a single assignment would: a seat
taken, a skill newly required, a row edited outside Plant or an agent another write
moved since the plan saw it is refused with its reason, never over-filled or let through.
It takes (agent id, team id) pairs and needs nothing of the plan.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, load_only

from models.membership import ineligibility, signed_requirements
from models.chain import ChainFinding, EntityVersion, insert_versions
from models.chain_verification import head_drift
from models.db_statements import uuid_in
from models.entities import (
    GOVERNED_FIELDS, SKILL_ID_FIELDS, Agent, EntitySnapshot, EntityType, Team, agent_skills, governed_content,
)
from models.entity_locks import tampered_error
from models.errors import EntityDeleted
from models.registry import WriteContext, record_version

SEAT_CHANGED = "seat-changed"
# A deleted agent's reason, as a single assignment's 409 names it (models.registry.refuse_if_deleted).
ENTITY_DELETED = EntityDeleted.code
DELETED_DETAIL = "agent is deleted: a deleted entity takes no change, its seat none"


def apply_batch(
    session: Session, moves: list[tuple[uuid.UUID, uuid.UUID]], *, ctx: WriteContext,
    seated: Mapping[uuid.UUID, uuid.UUID | None] | None = None,
) -> list[tuple[uuid.UUID, str, str]]:
    """Apply (agent, team) moves under the same rules as a single assignment, in one flush.

    Agents, then teams are locked in id order (a single assignment locks one agent, then
    one team, so the two never wait on each other in a cycle), seats are counted and the
    agents' job roles' required skills read once under those locks (the roles themselves
    unlocked: a change of a role's required skills locks its teams first, see
    :func:`models.membership.signed_requirements`), and every move is re-checked: a seat
    taken, or a skill newly required, since the plan was made is refused here, never
    over-filled or let through.
    Agents, roles and teams are each checked once against their signed heads: a move
    whose agent, role or team row was edited outside Plant is refused
    (``entity-tampered``). ``seated`` is where the plan saw each
    agent (its team, or None): an agent seated, moved or unseated since then by another
    write (a single assignment, another bulk run) is refused (``seat-changed``), so a plan
    never undoes a move it did not see. Returns the refused moves with reasons.
    """
    agents, held = _lock_agents(session, [a for a, _ in moves])
    tampered = head_drift(session, [(agent, _agent_content(agent, held[agent_id])) for agent_id, agent in agents.items()], ctx.keyring)
    team_ids = sorted({t for _, t in moves})
    teams = {t.id: t for t in session.scalars(
        select(Team).where(Team.id.in_(team_ids)).order_by(Team.id).with_for_update(key_share=True)
        .execution_options(populate_existing=True))}
    teams_tampered = head_drift(session, [(team, governed_content(team)) for team in teams.values()], ctx.keyring)
    required, roles_tampered = signed_requirements(session, [agent.job_role_id for agent in agents.values()], ctx.keyring)
    taken = dict(session.execute(select(Agent.team_id, func.count()).where(Agent.team_id.in_(team_ids)).group_by(Agent.team_id)).all())
    refused: list[tuple[uuid.UUID, str, str]] = []
    versions: list[EntityVersion] = []
    for agent_id, team_id in moves:
        agent, team = agents[agent_id], teams[team_id]
        reasons = ineligibility(agent, team, required.get(agent.job_role_id, set()), held=held[agent_id])
        if agent_id in tampered:  # its row drifted from its signed head: never sign on top of that
            refused.append((agent_id, "entity-tampered", tampered[agent_id].detail))
        elif agent.deleted_at is not None:  # not merely ineligible, as a single assignment says
            refused.append((agent_id, ENTITY_DELETED, DELETED_DETAIL))
        elif seated is not None and agent.team_id not in (seated.get(agent_id), team.id):
            refused.append((agent_id, SEAT_CHANGED, seat_changed_detail(
                seated.get(agent_id), agent.team_id, "while the plan was made")))
        elif basis := _tampered_basis(agent, team, roles_tampered, teams_tampered):  # the seat's rules are not signed ones
            refused.append((agent_id, "entity-tampered", basis))
        elif reasons:
            refused.append((agent_id, "not-eligible", "; ".join(reasons)))
        elif agent.team_id == team.id:  # where the plan puts it (a stay, or another write got there first)
            continue
        elif taken.get(team.id, 0) >= team.capacity:
            refused.append((agent_id, "team-full", f"team {team.name} is full"))
        else:
            if agent.team_id is not None:
                taken[agent.team_id] = taken.get(agent.team_id, 1) - 1
            taken[team.id] = taken.get(team.id, 0) + 1
            previous, agent.team_id = agent.team_id, team.id
            content = _agent_content(agent, held[agent_id])
            record_version(session, agent, ctx, text_changed=False, flush=False, content=content, pending=versions,
                           content_before={**content, "team_id": str(previous) if previous is not None else None},
                           seat_problems=())  # its seat judged above: no problem
    insert_versions(session, versions)
    session.flush()
    return refused


def _tampered_basis(agent: Agent, team: Team, roles: Mapping[uuid.UUID, ChainFinding],
                    teams: Mapping[uuid.UUID, ChainFinding]) -> str | None:
    """Why the move cannot be judged, if the team's or the agent's job role's row is not its signed head."""
    for kind, entity_id, drift in ((EntityType.TEAM, team.id, teams.get(team.id)),
                                   (EntityType.JOB_ROLE, agent.job_role_id, roles.get(agent.job_role_id))):
        if drift is not None:
            return tampered_error(kind, entity_id, drift).detail  # as a single assignment says it
    return None


def seat_changed_detail(seen: uuid.UUID | None, now: uuid.UUID | None, when: str) -> str:
    return (f"its seat changed {when} (planned from {_team_name(seen)}, now {_team_name(now)}); "
            "left where it is: run the assignment again to plan it anew")


def _team_name(team_id: uuid.UUID | None) -> str:
    return "no team" if team_id is None else f"team {team_id}"


# The locked agent's columns that are governed content (all of it but the skill ids),
# plus its chain head. Not the constitution results (the version rewrites them),
# timestamps or the embedding.
_AGENT_CONTENT_COLUMNS = [f for f in GOVERNED_FIELDS[EntityType.AGENT] if f not in SKILL_ID_FIELDS]
_LOCKED_AGENT_COLUMNS = [getattr(Agent, f) for f in _AGENT_CONTENT_COLUMNS] + [Agent.version, Agent.head_link_hash]


def _lock_agents(
    session: Session, agent_ids: list[uuid.UUID]
) -> tuple[dict[uuid.UUID, Agent], dict[uuid.UUID, list[uuid.UUID]]]:
    """Lock the agents in id order and load them fresh; also the skill ids each holds.

    The skill ids come from one plain query on ``agent_skills``, not the ``skills``
    relationship: a loaded collection costs the flush a many-to-many history check per
    agent, a large share of a bulk run. They are read after the agent rows are locked,
    and every change to an agent's skills locks the agent row first, so they are current.
    """
    agents = {a.id: a for a in session.scalars(
        select(Agent).where(uuid_in(Agent.id, agent_ids)).order_by(Agent.id).with_for_update(key_share=True)
        .options(load_only(*_LOCKED_AGENT_COLUMNS)).execution_options(populate_existing=True))}
    held: dict[uuid.UUID, list[uuid.UUID]] = {agent_id: [] for agent_id in agents}
    for agent_id, skill_id in session.execute(
            select(agent_skills.c.agent_id, agent_skills.c.skill_id).where(uuid_in(agent_skills.c.agent_id, agents))):
        held[agent_id].append(skill_id)
    return agents, held


def _agent_content(agent: Agent, skill_ids: list[uuid.UUID]) -> dict[str, Any]:
    """The agent's governed content, built as ``governed_content(agent)`` would be but
    with the skill ids read under the lock instead of through the relationship."""
    row = {f: getattr(agent, f) for f in _AGENT_CONTENT_COLUMNS}
    return governed_content(EntitySnapshot(EntityType.AGENT, row, skill_ids=skill_ids))
