"""Endpoints that start registry work as jobs: certify a skill, assign agents to teams.

Each checks that the named entities exist (404 at once rather than a failed job) and, for a
single certification or assignment, that none is deleted by its row (409 ``entity-deleted``,
asked unless the request replays an ``Idempotency-Key``), then goes through ``accept_job``: row
committed, message published, 202 with the job. A row whose ``deleted_at`` was nulled through
SQL is accepted here, with no read of its signed head on every submission: the job then fails
on it as tampered (``models.entity_locks``), and the audit reports the row.
"""

from __future__ import annotations

import uuid
from functools import partial

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from web.auth import BEARER
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from models.entities import EntityType, GovernedEntity
from models.jobs import MAX_BULK_AGENTS
from models.registry import get_entity, refuse_if_deleted, require_all
from web.jobs_http import accept_job, submits_a_job
from web.registry_schemas import EntityPath
from web.schemas import API_PROBLEMS, JobOut, members_refused, problems
from web.services import db_session

work_api = APIBlueprint("work", __name__, url_prefix="/api/v1", abp_security=BEARER, abp_responses=API_PROBLEMS)
ACCEPTED = {202: JobOut, **problems(404, 409, 422)}
ACCEPTED[409] = {**ACCEPTED[409], "description": (
    "Conflict: a named entity is deleted (`entity-deleted`, naming it; no job is created), or an "
    "Idempotency-Key changed hands")}


class CertifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notes: StrictStr | None = Field(default=None, max_length=5000)


class AssignTeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team_id: uuid.UUID | None = Field(default=None, description="omit to choose the best eligible team automatically")


class AssignTeamsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # 25,000 ids (40 bytes each as JSON) fit PLANT_MAX_REQUEST_BYTES' default (1 MiB); all_unassigned plans as many
    agent_ids: list[uuid.UUID] | None = Field(default=None, max_length=MAX_BULK_AGENTS)
    all_unassigned: StrictBool = False

    @model_validator(mode="after")
    def _one_selector(self) -> AssignTeamsIn:
        if bool(self.agent_ids) == self.all_unassigned:
            raise members_refused("give either a non-empty agent_ids or all_unassigned: true", "agent_ids",
                                  "all_unassigned")
        return self


@work_api.post("/genesis/skills/<entity_id>/certify", tags=[Tag(name="skill")], responses=ACCEPTED)
@submits_a_job
def certify(path: EntityPath, body: CertifyIn) -> Response:
    """Certify a skill (job ``skill.certify``): gates, certificate, one chain version.

    An unknown skill is 404 and a deleted one 409 ``entity-deleted``, and neither creates a job."""
    skill = get_entity(db_session(), entity_type=EntityType.SKILL, entity_id=path.entity_id)
    return accept_job("skill.certify", {"skill_id": str(path.entity_id), "notes": body.notes},
                      refuse=partial(_refuse_deleted, [skill]))


@work_api.post("/agents/<entity_id>/assign-team", tags=[Tag(name="agent")], responses=ACCEPTED)
@submits_a_job
def assign_team(path: EntityPath, body: AssignTeamIn) -> Response:
    """Assign an agent to a team (job ``agent.assign_team``); ``{}`` picks the team.

    An unknown agent or team is 404 and a deleted one 409 ``entity-deleted``, and neither creates a job."""
    session = db_session()
    named = [get_entity(session, entity_type=EntityType.AGENT, entity_id=path.entity_id)]
    if body.team_id is not None:
        named.append(get_entity(session, entity_type=EntityType.TEAM, entity_id=body.team_id))
    params = {"agent_id": str(path.entity_id), "team_id": str(body.team_id) if body.team_id else None}
    return accept_job("agent.assign_team", params, refuse=partial(_refuse_deleted, named))


def _refuse_deleted(entities: list[GovernedEntity]) -> None:
    """409 ``entity-deleted`` for the first entity its row says is deleted."""
    for entity in entities:
        refuse_if_deleted(entity)


@work_api.post("/agents/assign-teams", tags=[Tag(name="agent")], responses=ACCEPTED)
@submits_a_job
def assign_teams(body: AssignTeamsIn) -> Response:
    """Assign many agents at once with an optimal plan (job ``agents.assign_teams``)."""
    if body.agent_ids:
        require_all(db_session(), entity_type=EntityType.AGENT, entity_ids=body.agent_ids)
    params = {"agent_ids": [str(a) for a in body.agent_ids or []], "all_unassigned": body.all_unassigned}
    return accept_job("agents.assign_teams", params)
