"""Tasks for the registry's jobs: skill certification and team assignment (single, bulk)."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task, shared_task

from models.assignment import assign_agent
from models.bulk_assignment import assign_teams_in_bulk
from models.bulk_records import Recorder
from models.certification import certify_skill
from models.db import retry_if_disconnected, transaction
from models.job_lifecycle import JobClaim, check_attempt, hold_attempt
from models.progress import ProgressSink
from tasks import runtime
from tasks.runner import Finished, finish_in, keep_result, run_job, write_context


# Certification and single assignment are one transaction each: it holds the attempt
# first and records the job's success last, so the work and the outcome commit together.


def _certify(claim: JobClaim, _: ProgressSink) -> Finished:
    with transaction(runtime.session_factory()) as session:
        hold_attempt(session, claim=claim)
        outcome = certify_skill(
            session, skill_id=uuid.UUID(claim.params["skill_id"]), notes=claim.params.get("notes"), ctx=write_context(claim)
        )
        return finish_in(session, claim, outcome.as_json())


def _assign(claim: JobClaim, _: ProgressSink) -> Finished:
    team_id = claim.params.get("team_id")
    with transaction(runtime.session_factory()) as session:
        hold_attempt(session, claim=claim)
        outcome = assign_agent(
            session,
            agent_id=uuid.UUID(claim.params["agent_id"]),
            team_id=uuid.UUID(team_id) if team_id else None,
            ctx=write_context(claim),
        )
        return finish_in(session, claim, outcome.as_json())


def _assign_bulk(claim: JobClaim, progress: ProgressSink) -> dict[str, Any]:
    agent_ids = [uuid.UUID(a) for a in claim.params.get("agent_ids") or []]
    record = Recorder(claim.job_id, claim.attempt)
    try:
        return assign_teams_in_bulk(
            runtime.session_factory(),
            agent_ids=agent_ids or None,
            all_unassigned=bool(claim.params.get("all_unassigned")),
            ctx=write_context(claim),
            progress=progress,
            fence=lambda session: check_attempt(session, claim=claim),
            record=record,
        ).as_json()
    except Exception as exc:  # cancelled, timed out, refused or cut off, maybe after batches committed
        keep_result(exc, lambda: _recorded_outcome(record))
        raise


def _recorded_outcome(record: Recorder) -> dict[str, Any]:
    """The job's result as its records stand, on a session of its own (the attempt's may be gone)."""
    def read() -> dict[str, Any]:
        with runtime.session_factory()() as session:
            return record.outcome(session).as_json()

    return retry_if_disconnected(read)


@shared_task(name="plant.skill.certify", bind=True)
def skill_certify(self: Task, job_id: str) -> dict[str, Any]:
    return run_job(self, job_id, _certify)


@shared_task(name="plant.agent.assign_team", bind=True)
def agent_assign_team(self: Task, job_id: str) -> dict[str, Any]:
    return run_job(self, job_id, _assign)


@shared_task(name="plant.agents.assign_teams", bind=True)
def agents_assign_teams(self: Task, job_id: str) -> dict[str, Any]:
    return run_job(self, job_id, _assign_bulk)
