"""What a bulk assignment job reports when something other than its own attempt ends it.

A batch commits its seats with its records (``bulk_assignment_moves``); an attempt that stops
reports them (``tests/test_assignment.py::test_a_bulk_job_stopped_after_a_batch_committed_reports_what_it_did``).
These jobs are ended by a cancel while they wait for a retry, or by the sweep (or a cancel)
after their worker died: each used to end with ``result: null`` although agents were seated.
"""

import datetime as dt
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select, update

from models import bulk_assignment
from models.db import transaction
from models.entities import Agent
from models.errors import StaleAttempt
from models.job_control import request_cancel
from models.job_lifecycle import claim_job, create_job, finish_job, get_job
from models.job_recovery import rescue_expired
from models.jobs import Job, JobStatus
from tasks import registry_jobs, runner, runtime
from tests.conftest import SentTasks
from tests.test_assignment import World

OLD = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


class WorkerDied(BaseException):
    """Stands in for a worker killed mid-run: nothing of the attempt's own runs after it."""


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


def _attempt_dies(sessions: Any, job_id: uuid.UUID) -> Any:
    """Claim the job and run an attempt whose worker dies after the batches ``_batches`` lets commit."""
    with transaction(sessions) as session:
        claim = claim_job(session, job_id=job_id, worker="doomed", lease_seconds=60)
    with pytest.raises(WorkerDied):
        registry_jobs._assign_bulk(claim, lambda *args: None)
    return claim


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
    assert (job.result["requested"], job.result["placed"]) == (4, 1)  # the 3 others: not applied
    assert {u["reason"] for u in job.result["unplaced"]} == {"not-applied"}
    assert job.result["method"] == waiting.result["method"] != ""  # the plan that attempt reported


@pytest.mark.parametrize("ended_by", ["sweep, last attempt", "sweep, cancel asked", "cancel, lease expired"])
def test_a_bulk_job_whose_worker_died_reports_what_it_did_whatever_ends_it(
        worker_sessions, write_ctx, committed_steward, monkeypatch, ended_by) -> None:
    """The worker dies after a batch committed: the sweep fails the job (its last attempt) or
    cancels it (a cancel was asked), or a cancel finds its lease expired and ends it at once.
    Each ended it with ``result: null``. The dead attempt, should it wake, writes nothing."""
    sessions = worker_sessions
    job_id = _bulk_job(sessions, write_ctx, committed_steward, teams=4, agents=4)

    def ask_to_stop() -> None:
        if ended_by == "sweep, cancel asked":
            with transaction(sessions) as session:
                assert request_cancel(session, job_id=job_id).status == "running"  # asked while it runs

    _batches(monkeypatch, None, WorkerDied(), meanwhile=ask_to_stop)
    claim = _attempt_dies(sessions, job_id)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=OLD))
        if ended_by == "cancel, lease expired":
            assert request_cancel(session, job_id=job_id).status == "cancelled"
        else:
            rescue = rescue_expired(session, max_attempts=1, base=0.001, cap=0.001, older_than=dt.timedelta(minutes=1))
            assert (rescue.failed, rescue.cancelled) == ((1, 0) if ended_by == "sweep, last attempt" else (0, 1))
    with pytest.raises(StaleAttempt), transaction(sessions) as session:  # the dead attempt wakes: fenced out
        finish_job(session, claim=claim, status=JobStatus.FAILED, result={"late": True})
    with sessions() as session:
        job = get_job(session, job_id)
        assert _seated(session) == 1
    assert job.status == ("failed" if ended_by == "sweep, last attempt" else "cancelled"), job.error
    assert job.result is not None
    assert (job.result["requested"], job.result["placed"], job.result["not_placed"]) == (4, 1, 3)  # 3 not applied
    assert job.result["total_similarity"] != 0
    assert job.result["method"] == ""  # the dead attempt's plan reported none: not known


def test_a_bulk_job_whose_retry_died_reports_both_attempts_and_not_a_method_it_cannot_know(
        worker_sessions, write_ctx, committed_steward, settings, monkeypatch) -> None:
    """Attempt 1 seats an agent and goes back to the queue with its result (and its plan's
    method); attempt 2 seats another and its worker dies; the sweep fails the job. The result
    counts both; the method of attempt 1's plan is not attempt 2's to claim."""
    sessions = worker_sessions
    job_id = _bulk_job(sessions, write_ctx, committed_steward, teams=4, agents=4)
    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"job_max_attempts": 2}))
    _batches(monkeypatch, {1: [None, ConnectionError("connection lost")], 2: [None, WorkerDied()]})
    runner.run_job(SentTasks(), str(job_id), registry_jobs._assign_bulk)
    with sessions() as session:
        assert get_job(session, job_id).result["method"] != ""
    _attempt_dies(sessions, job_id)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=OLD))
        assert rescue_expired(session, max_attempts=2, base=0.001, cap=0.001, older_than=dt.timedelta(minutes=1)).failed == 1
    with sessions() as session:
        job = get_job(session, job_id)
        assert _seated(session) == 2
    assert job.status == "failed"
    assert (job.result["requested"], job.result["placed"], job.result["method"]) == (4, 2, "")
    assert {u["reason"] for u in job.result["unplaced"]} == {"not-applied"}


def test_a_stopped_bulk_job_that_seated_nobody_reports_its_records_or_nothing(
        worker_sessions, write_ctx, committed_steward, settings, monkeypatch) -> None:
    """Cancelled while it waits for a retry, with no seat taken: the result says so (0 placed,
    and the agent the plan could not seat, and why); a job that recorded nothing reports nothing."""
    sessions = worker_sessions
    job_id = _bulk_job(sessions, write_ctx, committed_steward, teams=1, agents=2)
    with transaction(sessions) as session:
        never_run = create_job(session, kind="agents.assign_teams", params={"all_unassigned": True}).id
    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"job_max_attempts": 3}))
    monkeypatch.setattr(bulk_assignment, "_apply_committed", lambda *args, **kwargs: (_ for _ in ()).throw(
        ConnectionError("connection lost")))
    runner.run_job(SentTasks(), str(job_id), registry_jobs._assign_bulk)
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(result=None))  # as a release leaves it when its read failed
        request_cancel(session, job_id=job_id)
        request_cancel(session, job_id=never_run)
    with sessions() as session:
        job, other = get_job(session, job_id), get_job(session, never_run)
        assert _seated(session) == 0
    assert job.status == "cancelled" and job.result is not None
    assert (job.result["requested"], job.result["placed"], job.result["not_placed"]) == (2, 0, 2)
    assert sorted(u["reason"] for u in job.result["unplaced"]) == ["eligible-teams-full", "not-applied"]
    assert (other.status, other.result) == ("cancelled", None)
