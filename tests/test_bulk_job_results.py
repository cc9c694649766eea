"""What a bulk assignment job reports when something other than its own attempt ends it.

A batch commits its seats with its records (``bulk_assignment_moves``); an attempt that stops
reports them (``tests/test_assignment.py::test_a_bulk_job_stopped_after_a_batch_committed_reports_what_it_did``).
A job that goes back to the queue for a retry, and is cancelled there, used to end with
``result: null`` although agents were seated.
"""

from collections import Counter

from sqlalchemy import func, select

from models import bulk_assignment
from models.db import transaction
from models.entities import Agent
from models.job_lifecycle import create_job, get_job, request_cancel
from tasks import registry_jobs, runner, runtime
from tests.conftest import SentTasks
from tests.test_assignment import World


def _bulk_job(sessions, write_ctx, steward, *, teams: int, agents: int):
    """A bulk job over ``agents`` agents and ``teams`` teams of one seat, one agent a batch."""
    with transaction(sessions) as session:
        world = World(session, write_ctx, steward)
        for i in range(teams):
            world.team(f"Result team {i}", capacity=1)
        ids = [world.agent(f"Result member {i}").id for i in range(agents)]
        return create_job(session, kind="agents.assign_teams", params={"agent_ids": [str(a) for a in ids]}).id


def _batches(monkeypatch, *outcomes, meanwhile=lambda: None) -> None:
    """One agent a batch, an attempt's batches in turn as ``outcomes`` says (the attempt's
    own list, by attempt number, when given a dict): None commits the batch; an exception
    is raised in its place, after ``meanwhile`` ran, as it is for every batch after it."""
    monkeypatch.setattr(bulk_assignment, "APPLY_BATCH", 1)
    monkeypatch.setattr(bulk_assignment, "APPLY_IN_FLIGHT", 1)
    apply, started = bulk_assignment._apply_committed, Counter()
    scripts = outcomes[0] if isinstance(outcomes[0], dict) else {1: list(outcomes)}

    def scripted(*args):
        attempt = args[-1].attempt  # the batch's Recorder
        started[attempt] += 1
        script = scripts[attempt]
        outcome = script[min(started[attempt], len(script)) - 1]
        if outcome is None:
            return apply(*args)
        meanwhile()
        raise outcome

    monkeypatch.setattr(bulk_assignment, "_apply_committed", scripted)


def _seated(session) -> int:
    return session.scalar(select(func.count()).select_from(Agent).where(Agent.team_id.is_not(None)))


def test_a_bulk_job_cancelled_while_it_waits_for_its_retry_reports_what_it_did(
        worker_sessions, write_ctx, committed_steward, settings, monkeypatch) -> None:
    """A transient error sends the job back to the queue for its backoff; a cancel then ends it
    there, with no attempt running: it ended ``cancelled`` with ``result: null``, one agent seated."""
    sessions = worker_sessions
    job_id = _bulk_job(sessions, write_ctx, committed_steward, teams=4, agents=4)
    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"job_max_attempts": 3}))
    _batches(monkeypatch, None, ConnectionError("connection lost"))
    runner.run_job(SentTasks(), str(job_id), registry_jobs._assign_bulk)
    with sessions() as session:
        waiting = get_job(session, job_id)
    assert waiting.status == "queued"
    assert waiting.result is not None and waiting.result["placed"] == 1  # what was done so far, while it waits
    with transaction(sessions) as session:
        assert request_cancel(session, job_id=job_id).result == waiting.result  # the cancel's answer says it too
    with sessions() as session:
        job = get_job(session, job_id)
        assert _seated(session) == 1
    assert job.status == "cancelled"
    assert job.result is not None
    assert (job.result["requested"], job.result["placed"]) == (1, 1)
    assert job.result["method"] == waiting.result["method"] != ""  # the plan that attempt reported
