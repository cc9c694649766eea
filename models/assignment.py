"""Team assignment: concurrency-safe seats and automatic team choice, under the
eligibility rules of ``models.membership``.

An agent may join a team when: the team exists and is active and the agent is active;
the team's job role is the agent's; their industries match when both are set; the
agent holds every skill its job role requires; and the team has a free seat. Seats
are counted under the team row's lock, so concurrent assignments to one team are
serialized and capacity is never exceeded. The team and the agent's job role are judged
as their signed heads say: a row edited outside Plant is ``EntityTampered`` (409). Moving an
agent frees its old seat (the seat is the agent's ``team_id``). Each change appends a
version to the agent's chain.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, undefer

from models.embeddings import cosine
from models.entities import Agent, EntityType, Team, governed_content
from models.errors import EntityTampered, NoEligibleTeam, NotEligible, TeamFull
from models.membership import ineligibility, team_is_full
from models.entity_locks import lock_for_write
from models.registry import WriteContext, get_entity, record_version, refuse_if_deleted
from models.seat_guards import lock_seat, signed_required_skills

AUTO_CANDIDATES_SHOWN = 5
# A result or error lists at most this many excluded teams, with the count of all of them
# (``excluded_count``), as other lists in Plant show their first 20: the registry's every team
# made each one grow with the registry.
EXCLUDED_SHOWN = 20


@dataclass(frozen=True)
class AssignmentOutcome:
    agent_id: uuid.UUID
    team_id: uuid.UUID
    previous_team_id: uuid.UUID | None
    version: int
    candidates: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "agent_id": str(self.agent_id),
            "team_id": str(self.team_id),
            "previous_team_id": str(self.previous_team_id) if self.previous_team_id else None,
            "version": self.version,
            "candidates": self.candidates,
            **excluded_json(self.excluded),
        }


def excluded_json(excluded: list[dict[str, Any]]) -> dict[str, Any]:
    """The first ``EXCLUDED_SHOWN`` excluded teams and how many there are in all."""
    return {"excluded": excluded[:EXCLUDED_SHOWN], "excluded_count": len(excluded)}


def assign_agent(session: Session, *, agent_id: uuid.UUID, team_id: uuid.UUID | None, ctx: WriteContext) -> AssignmentOutcome:
    """Put the agent in ``team_id``, or in the best eligible team when ``team_id`` is None."""
    agent = lock_for_write(session, EntityType.AGENT, agent_id, ctx.keyring)
    assert isinstance(agent, Agent)
    refuse_if_deleted(agent)  # not merely ineligible: a deleted agent takes no change, its seat none
    if team_id is None:
        return _assign_automatically(session, agent, ctx)
    return _assign_to(session, agent, team_id, ctx)


def _assign_to(session: Session, agent: Agent, team_id: uuid.UUID, ctx: WriteContext, **report: Any) -> AssignmentOutcome:
    get_entity(session, entity_type=EntityType.TEAM, entity_id=team_id)  # 404 before locking
    team, reasons = lock_seat(session, agent, team_id, ctx.keyring)
    if reasons:
        # field: as the same refusal of a PATCH names it (models.seat_guards), also in a job's error
        raise NotEligible("; ".join(reasons), field="team_id", team_id=str(team_id), reasons=reasons)
    previous = agent.team_id
    if previous == team.id:
        return AssignmentOutcome(agent.id, team.id, previous, agent.version, **report)
    if team_is_full(session, team, agent):
        raise TeamFull(f"team {team.name} is full ({team.capacity} seats)", field="team_id", team_id=str(team.id))
    content_before = governed_content(agent)
    agent.team_id = team.id
    record_version(session, agent, ctx, text_changed=False, content_before=content_before,
                   seat_problems=())  # judged above, under the seat's locks
    return AssignmentOutcome(agent.id, team.id, previous, agent.version, **report)


def rank_teams(session: Session, agent: Agent, required: set[uuid.UUID]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Eligible teams with a free seat, best first, and every excluded team with why;
    ``required`` is the skills the agent's job role requires. Ties in score go by name,
    which is unique (``uq_teams_name``), so a choice between equals is the same on every run."""
    seats = dict(session.execute(select(Agent.team_id, func.count()).where(Agent.team_id.is_not(None)).group_by(Agent.team_id)).all())
    eligible, excluded = [], []
    # Embeddings are deferred on the models; every eligible team's is needed, so load them
    # with the teams rather than one lazy SELECT per team.
    teams = session.scalars(select(Team).options(undefer(Team.embedding)).where(Team.deleted_at.is_(None)).order_by(Team.name))
    for team in teams:
        reasons = ineligibility(agent, team, required)
        taken = seats.get(team.id, 0) - (1 if agent.team_id == team.id else 0)
        if not reasons and taken >= team.capacity:
            reasons.append("team is full")
        if reasons:
            excluded.append({"team_id": str(team.id), "name": team.name, "reasons": reasons})
            continue
        score = cosine(list(agent.embedding), list(team.embedding)) if agent.embedding is not None and team.embedding is not None else 0.0
        eligible.append({"team_id": str(team.id), "name": team.name, "score": round(score, 6), "free_seats": team.capacity - taken})
    eligible.sort(key=lambda c: (-c["score"], c["name"]))
    return eligible, excluded


def _assign_automatically(session: Session, agent: Agent, ctx: WriteContext) -> AssignmentOutcome:
    # The role first, checked against its signed head, so the ranking reads its signed
    # skills, and a tampered role is the 409 it is rather than every team refused. No lock:
    # the seat is decided again under its team's lock (lock_seat), on the skills read then.
    required = signed_required_skills(session, agent.job_role_id, ctx.keyring)
    candidates, excluded = rank_teams(session, agent, required)
    passed_over: list[dict[str, Any]] = []  # listed first: they were the best, and the first 20 are shown
    for tried, candidate in enumerate(candidates):
        shown = candidates[tried:tried + AUTO_CANDIDATES_SHOWN]  # not those passed over: they are among the excluded
        try:
            with session.begin_nested():
                return _assign_to(session, agent, uuid.UUID(candidate["team_id"]), ctx, candidates=shown,
                                  excluded=passed_over + excluded)
        # Filled up or changed since we ranked, or its row is not its signed head: try the next best.
        except (TeamFull, NotEligible, EntityTampered) as refused:
            passed_over.append({"team_id": candidate["team_id"], "name": candidate["name"], "reasons": [refused.detail]})
            continue
    raise NoEligibleTeam(f"no eligible team has a free seat for agent {agent.name}",
                         **excluded_json(passed_over + excluded))


