"""Team membership kept within the assignment rules whichever registry write touches it.

An agent written with a ``team_id``, or changed while in a team, must be eligible for that
team (and, when it joins, find a free seat, counted under the team row's lock as the
assignment jobs do), judged on the team's and its job role's signed values (a row edited
outside Plant is ``EntityTampered``); a team may not shrink below its members, nor change
its job role, industry or status so that a member no longer qualifies, nor be deleted with members (nor a member
be deleted while seated); a job role may not
come to require a skill a seated agent lacks. The rules themselves are
``models.membership``'s.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.entities import Agent, EntityType, GovernedEntity, JobRole, Team
from models.entity_locks import lock_for_write, tampered_error
from models.errors import Conflict, NotEligible, TeamFull
from models.membership import (
    ineligibility, members_count, members_lacking_role_skills, members_not_admitted, signed_requirements, team_is_full,
)
from models.signing import KeyRing

# Governed fields whose change can break a membership, on the agent's and the team's side.
AGENT_MEMBERSHIP_FIELDS = ("team_id", "job_role_id", "industry_id", "skill_ids", "status", "deleted_at")
TEAM_MEMBERSHIP_FIELDS = ("job_role_id", "industry_id", "status", "deleted_at")


def guard_membership(
    session: Session, entity: GovernedEntity, *, before: dict[str, Any] | None, after: dict[str, Any], keyring: KeyRing
) -> tuple[str, ...] | None:
    """Refuse a write that would seat an agent against the assignment rules.

    ``before`` and ``after`` are the entity's snapshots around the write (``before`` is
    None for a new entity). Runs without autoflush: the entity's pending changes must not
    reach the database outside the write's own flush (where constraint violations become
    409s and 422s). Returns ``()`` when it judged an agent's seat and let it be, rule
    AGENT-04's facts for the write's rule subject (no second reading of the team and role);
    None when it judged none.
    """
    changed = {f for f in after if before is None or before.get(f) != after[f]}
    with session.no_autoflush:
        if isinstance(entity, Agent) and entity.team_id is not None and changed & set(AGENT_MEMBERSHIP_FIELDS):
            _guard_agent_seat(session, entity, joining="team_id" in changed, keyring=keyring)
            return ()
        if isinstance(entity, Team):
            if "job_role_id" in changed and entity.job_role_id is not None:
                _hold_role_for_team(session, entity.job_role_id)
            if before is not None:
                _guard_team_members(session, entity, changed, keyring=keyring)
        elif isinstance(entity, JobRole) and before is not None and "required_skill_ids" in changed:
            _guard_role_members(session, entity)
    return None


def lock_seat(session: Session, agent: Agent, team_id: uuid.UUID, keyring: KeyRing) -> tuple[Team, list[str]]:
    """Lock the team a seat is taken in (every way of seating an agent serializes on it),
    then read the skills the agent's job role requires (:func:`signed_required_skills`,
    no lock: a change of them locks the role's teams, so none commits while this one is
    held). Each must be its signed head, or ``EntityTampered``: a seat is never decided on
    values edited outside Plant. Then say which rules the agent breaks there, capacity aside."""
    team = lock_for_write(session, EntityType.TEAM, team_id, keyring)
    assert isinstance(team, Team)
    return team, ineligibility(agent, team, signed_required_skills(session, agent.job_role_id, keyring))


def signed_required_skills(session: Session, job_role_id: uuid.UUID | None, keyring: KeyRing) -> set[uuid.UUID]:
    """The skills the job role requires, as its signed head says, read without a lock
    (:func:`models.membership.signed_requirements`). ``EntityTampered`` (409) when its row
    is not that head."""
    required, drift = signed_requirements(session, [job_role_id], keyring)
    if job_role_id is not None and job_role_id in drift:
        raise tampered_error(EntityType.JOB_ROLE, job_role_id, drift[job_role_id])
    return required.get(job_role_id, set()) if job_role_id is not None else set()


def _guard_agent_seat(session: Session, agent: Agent, *, joining: bool, keyring: KeyRing) -> None:
    assert agent.team_id is not None
    team, reasons = lock_seat(session, agent, agent.team_id, keyring)
    if reasons:
        raise NotEligible(
            f"the agent may not sit in team {team.name}: " + "; ".join(reasons)
            + (" (send team_id null to take it out of the team)" if not joining else ""),
            field="team_id", team_id=str(team.id), reasons=reasons,
        )
    if joining and team_is_full(session, team, agent):
        raise TeamFull(f"team {team.name} is full ({team.capacity} seats)", field="team_id", team_id=str(team.id))


def _guard_team_members(session: Session, team: Team, changed: set[str], *, keyring: KeyRing) -> None:
    """Refuse a change of the (locked) team that its members would not survive: fewer seats
    than members, or a job role, industry or status a member does not qualify under, judged
    on the role's signed required skills (``EntityTampered`` while its row is not its head)."""
    if "deleted_at" in changed and team.deleted_at is not None:
        # A deletion: its members name it in team_id, so models.reference_guards.reference_fence
        # refuses it as every referent's deletion (409 entity-referenced listing them), under its
        # lock, not as a change they would not survive; with no member, nothing here applies.
        return
    if "capacity" in changed:
        members = members_count(session, team.id)
        if members > team.capacity:
            raise Conflict(f"team {team.name} has {members} members; its capacity cannot go below that",
                           field="capacity", member_count=members)
    if changed & set(TEAM_MEMBERSHIP_FIELDS) and members_count(session, team.id):
        refused = members_not_admitted(session, team, signed_required_skills(session, team.job_role_id, keyring))
        if refused:
            raise Conflict(f"{len(refused)} member(s) of team {team.name} would no longer qualify; move them first",
                           field=next(f for f in TEAM_MEMBERSHIP_FIELDS if f in changed), members=refused[:20])


def _hold_role_for_team(session: Session, job_role_id: uuid.UUID) -> None:
    """Lock the job role a team comes to have (created with it, or given it) ``FOR SHARE``
    until the write commits. A change of the role's required skills locks the role, then
    the teams it has (:func:`_guard_role_members`): a team given the role meanwhile would
    escape it, and a seat in that team be judged on the skills being replaced. So such a
    team write waits for the change, or the change for it (and then finds the team among
    the role's). Seats never lock their role: its writes would wait for every one."""
    session.execute(select(JobRole.id).where(JobRole.id == job_role_id).with_for_update(read=True))


def _guard_role_members(session: Session, role: JobRole) -> None:
    """Refuse a change of the role's required skills that a seated agent would not meet.

    The role is locked (the caller's ``lock_for_write``) and then its teams, in id order;
    a seat being taken holds its team's lock while it reads the role's required skills:
    it is either seen here or made under the new requirement.
    """
    teams = list(session.scalars(select(Team).where(Team.job_role_id == role.id).order_by(Team.id)
                                 .with_for_update(key_share=True).execution_options(populate_existing=True)))
    refused = members_lacking_role_skills(session, role, teams)
    if refused:
        raise Conflict(f"{len(refused)} agent(s) seated in teams of job role {role.name} lack a skill it would require; "
                       "move them or give them the skills first", field="required_skill_ids", members=refused[:20])
