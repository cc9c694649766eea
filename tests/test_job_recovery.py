"""Outbox, lost messages, dead workers and transient-error hand-back (rolled back)."""

import datetime as dt

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from models.errors import StaleAttempt
from models.job_control import request_cancel
from models.job_lifecycle import claim_job, create_job, finish_job, get_job, hold_attempt, mark_unpublished
from models.job_recovery import (
    Rescue,
    claim_lost_messages,
    claim_unpublished,
    full_jitter_backoff,
    release_for_retry,
    rescue_expired,
)
from models.jobs import Job, JobStatus

OLD = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def _job(session: Session, *, to_publish: bool = False) -> Job:
    return create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 1}, to_publish=to_publish)


def _age(session: Session, job: Job, **values) -> None:
    session.execute(update(Job).where(Job.id == job.id).values(**values))


def test_the_outbox_holds_unpublished_jobs_until_picked(db_session) -> None:
    unpublished, published = _job(db_session), _job(db_session, to_publish=True)
    _age(db_session, unpublished, created_at=OLD)
    _age(db_session, published, created_at=OLD)
    assert [r.job_id for r in claim_unpublished(db_session, min_age=MINUTE)] == [unpublished.id]
    assert claim_unpublished(db_session, min_age=MINUTE) == []  # stamped as published


def test_a_failed_publish_puts_the_job_back_in_the_outbox(db_session) -> None:
    job = _job(db_session, to_publish=True)
    mark_unpublished(db_session, job_id=job.id)
    _age(db_session, job, created_at=OLD)
    assert [r.job_id for r in claim_unpublished(db_session, min_age=MINUTE)] == [job.id]


def test_a_job_stamped_but_never_published_is_a_lost_message(db_session) -> None:
    # The API died between its commit and its publish: the stamp is there, no message is.
    job = _job(db_session, to_publish=True)
    assert claim_lost_messages(db_session, older_than=MINUTE) == []
    _age(db_session, job, enqueued_at=OLD)
    assert [r.job_id for r in claim_lost_messages(db_session, older_than=MINUTE)] == [job.id]


def test_a_fresh_unpublished_job_is_left_to_the_api(db_session) -> None:
    _job(db_session)
    assert claim_unpublished(db_session, min_age=MINUTE) == []


def test_lost_messages_are_republished_once_per_threshold(db_session) -> None:
    lost, _fresh = _job(db_session), _job(db_session, to_publish=True)  # fresh: published just now
    _age(db_session, lost, enqueued_at=OLD)
    assert [r.job_id for r in claim_lost_messages(db_session, older_than=MINUTE)] == [lost.id]
    assert claim_lost_messages(db_session, older_than=MINUTE) == []


def test_a_dead_workers_job_is_rescued_then_failed_after_max_attempts(db_session) -> None:
    job = _job(db_session)
    for attempt in (1, 2):
        assert claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60).attempt == attempt
        _age(db_session, job, lease_expires_at=OLD, enqueued_at=OLD)
        rescue = rescue_expired(db_session, max_attempts=2, base=0.001, cap=0.001, older_than=MINUTE)
        if attempt == 1:
            assert [r.job_id for r in rescue.republish] == [job.id] and rescue.failed == 0
    assert rescue == Rescue(republish=[], failed=1, cancelled=0)
    failed_job = get_job(db_session, job.id)
    assert failed_job.status == "failed" and failed_job.error["type"] == "/problems/worker-lost"
    assert failed_job.attempts == 2


def test_a_live_lease_is_not_rescued(db_session) -> None:
    job = _job(db_session)
    claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60)
    assert rescue_expired(db_session, max_attempts=5, base=0.001, cap=0.001, older_than=MINUTE) == Rescue([], 0, 0)


def test_release_for_retry_hands_the_job_back_with_its_last_error(db_session) -> None:
    job = _job(db_session)
    claim = claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60)
    status = release_for_retry(db_session, claim=claim, error={"type": "/problems/transient-error", "title": "t"})
    released = get_job(db_session, job.id)
    assert status is JobStatus.QUEUED
    assert (released.status, released.attempts, released.error["type"]) == ("queued", 1, "/problems/transient-error")
    assert claim_job(db_session, job_id=job.id, worker="w2", lease_seconds=60).attempt == 2


def test_full_jitter_stays_within_the_capped_exponential() -> None:
    samples = [full_jitter_backoff(10, base=1.0, cap=30.0) for _ in range(500)]
    assert 0 <= min(samples) and max(samples) <= 30.0
    assert max(full_jitter_backoff(1, base=1.0, cap=30.0) for _ in range(200)) <= 2.0


# A cancel must survive the death of the worker it was meant for: the next attempt of a
# job without checkpoints (a certification) would otherwise run to the end.


def test_a_job_asked_to_stop_is_cancelled_not_rerun_when_its_worker_dies(db_session) -> None:
    job = _job(db_session)
    claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60)
    assert request_cancel(db_session, job_id=job.id).status == "running"  # a live attempt: asked to stop
    _age(db_session, job, lease_expires_at=OLD, enqueued_at=OLD)  # ... then its worker died
    assert claim_job(db_session, job_id=job.id, worker="w2", lease_seconds=60) is None
    # max_attempts=1: out of attempts too, but the user's cancel is what ended it.
    rescue = rescue_expired(db_session, max_attempts=1, base=0.001, cap=0.001, older_than=MINUTE)
    assert rescue == Rescue(republish=[], failed=0, cancelled=1)
    ended = get_job(db_session, job.id)
    assert (ended.status, ended.error["type"], ended.attempts) == ("cancelled", "/problems/job-cancelled", 1)
    assert ended.error["detail"] == "cancelled on request; its worker stopped before it reached a checkpoint"
    assert ended.finished_at is not None


def test_cancelling_a_job_whose_lease_expired_cancels_it_at_once_and_fences_the_attempt(db_session) -> None:
    job = _job(db_session)
    claim = claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60)
    _age(db_session, job, lease_expires_at=OLD)  # its worker stopped reporting
    assert request_cancel(db_session, job_id=job.id).status == "cancelled"
    with pytest.raises(StaleAttempt):  # the stalled attempt wakes up: its outcome is refused
        finish_job(db_session, claim=claim, status=JobStatus.SUCCEEDED, result={"late": True})
    ended = get_job(db_session, job.id)
    assert (ended.status, ended.result, ended.error["type"]) == ("cancelled", None, "/problems/job-cancelled")


def test_a_release_after_a_cancel_request_ends_the_job_cancelled(db_session) -> None:
    job = _job(db_session)
    claim = claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60)
    request_cancel(db_session, job_id=job.id)
    status = release_for_retry(db_session, claim=claim, error={"type": "/problems/transient-error", "title": "t"})
    ended = get_job(db_session, job.id)
    assert status is JobStatus.CANCELLED
    assert (ended.status, ended.error["type"]) == ("cancelled", "/problems/job-cancelled")
    assert claim_job(db_session, job_id=job.id, worker="w2", lease_seconds=60) is None


def test_a_queued_job_left_with_a_cancel_request_is_ended_by_the_sweep(db_session) -> None:
    # What a release made before this fix left behind: queued, asked to stop, never claimable
    # (its message, published long ago, was skipped).
    job = _job(db_session, to_publish=True)
    _age(db_session, job, cancel_requested_at=OLD, enqueued_at=OLD)
    assert claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60) is None
    assert rescue_expired(db_session, max_attempts=5, base=0.001, cap=0.001, older_than=MINUTE).cancelled == 1
    ended = get_job(db_session, job.id)
    # No worker ran it: its error does not say one stopped before a checkpoint.
    assert (ended.status, ended.error["detail"]) == ("cancelled", "cancelled on request; it was waiting in the queue")


def test_a_stalled_attempt_cannot_commit_work_for_a_job_cancelled_meanwhile(db_session) -> None:
    # The lease ran out while the worker was stalled (not dead); the user cancelled; the
    # worker wakes up: its certification's transaction starts by holding its attempt.
    job = _job(db_session)
    claim = claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60)
    hold_attempt(db_session, claim=claim)  # while it owns the job, the fence holds
    _age(db_session, job, lease_expires_at=OLD)
    request_cancel(db_session, job_id=job.id)
    with pytest.raises(StaleAttempt):
        hold_attempt(db_session, claim=claim)


def test_a_job_asked_to_stop_is_never_failed_or_republished_by_the_sweep(engine, clean_db) -> None:
    # Its row is locked while the sweep runs (the cancel statement skips locked rows):
    # the failing and republishing statements must leave it to the next sweep too.
    with Session(engine) as session, session.begin():
        job = _job(session)
        claim_job(session, job_id=job.id, worker="w", lease_seconds=60)
        request_cancel(session, job_id=job.id)
        _age(session, job, lease_expires_at=OLD, enqueued_at=OLD)
    with engine.connect() as holder, Session(engine) as sweeper:
        holder.execute(select(Job.id).where(Job.id == job.id).with_for_update(read=True))
        assert rescue_expired(sweeper, max_attempts=1, base=0.001, cap=0.001, older_than=MINUTE) == Rescue([], 0, 0)
        sweeper.rollback()
        holder.rollback()
    with Session(engine) as session, session.begin():
        assert rescue_expired(session, max_attempts=1, base=0.001, cap=0.001, older_than=MINUTE).cancelled == 1
        assert get_job(session, job.id).status == "cancelled"


def test_the_sweep_never_waits_for_nor_fails_a_job_its_live_attempt_holds(engine, clean_db) -> None:
    # Out of attempts, lease run out, but its attempt's own transaction holds the row: the
    # sweep must neither block on it (its other work would wait too) nor fail it under it.
    with Session(engine) as session, session.begin():
        job = _job(session)
        claim = claim_job(session, job_id=job.id, worker="w", lease_seconds=60)
        _age(session, job, lease_expires_at=OLD)
    with Session(engine) as holder, Session(engine) as sweeper:
        hold_attempt(holder, claim=claim)
        sweeper.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait would fail the test, not hang it
        assert rescue_expired(sweeper, max_attempts=1, base=0.001, cap=0.001, older_than=MINUTE).failed == 0
        sweeper.rollback()
        holder.rollback()
    with Session(engine) as session, session.begin():
        assert rescue_expired(session, max_attempts=1, base=0.001, cap=0.001, older_than=MINUTE).failed == 1


def test_a_job_neither_published_nor_put_back_in_the_outbox_is_still_accepted(settings, caplog) -> None:
    """Broker down, then the database gone too: raising answered 503 for a job already
    committed (stamped as sent), and a client retrying without an Idempotency-Key started a
    second one. The lost-message sweep publishes it (test above); this only says so."""
    import uuid

    from models.db import make_engine, make_session_factory
    from tasks.celery_app import create_celery
    from tasks.dispatch import publish_or_leave_in_outbox

    gone = settings.model_copy(update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none",
                                       "redis_url": "redis://127.0.0.1:1/0"})
    engine = make_engine(gone)
    try:
        job_id = uuid.uuid4()
        assert publish_or_leave_in_outbox(create_celery(gone), make_session_factory(engine), job_id=job_id,
                                          kind="diagnostics.sleep") is False
    finally:
        engine.dispose()
    assert f"job {job_id} could not be put back in the outbox either" in caplog.text
