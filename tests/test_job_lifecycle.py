"""Job lifecycle rules, against the real database (each test rolled back)."""

import datetime as dt
import uuid

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from models.errors import InvalidInput, JobNotCancellable, NotFound, StaleAttempt
from models.job_control import list_jobs, request_cancel
from models.job_lifecycle import claim_job, create_job, finish_job, get_job, report_progress
from models.jobs import Job, JobStatus

LEASE = 60


def _new(session: Session, kind: str = "diagnostics.sleep") -> Job:
    return create_job(session, kind=kind, params={"seconds": 0, "steps": 1})


def _claim(session: Session, job: Job):
    claim = claim_job(session, job_id=job.id, worker="w1", lease_seconds=LEASE)
    assert claim is not None
    return claim


def _stored(session: Session, job_id: uuid.UUID) -> Job:
    """The whole row, internals (worker, lease) included, as stored now."""
    return session.get(Job, job_id, populate_existing=True)


def test_create_is_queued_with_params(db_session: Session) -> None:
    job = _new(db_session)
    assert job.status == "queued"
    assert job.params == {"seconds": 0, "steps": 1}
    assert job.attempts == 0
    assert job.created_at.tzinfo is not None


def test_claim_moves_to_running_and_counts_attempts(db_session: Session) -> None:
    job = _new(db_session)
    claim = _claim(db_session, job)
    assert claim.attempt == 1
    row = _stored(db_session, job.id)
    assert (row.status, row.attempts, row.worker) == ("running", 1, "w1")
    assert row.started_at is not None and row.lease_expires_at is not None


def test_a_live_or_terminal_job_is_not_claimed_again(db_session: Session) -> None:
    job = _new(db_session)
    claim = _claim(db_session, job)
    assert claim_job(db_session, job_id=job.id, worker="w2", lease_seconds=LEASE) is None
    finish_job(db_session, claim=claim, status=JobStatus.SUCCEEDED, result={"ok": True})
    assert claim_job(db_session, job_id=job.id, worker="w2", lease_seconds=LEASE) is None
    assert get_job(db_session, job.id).attempts == 1


def test_an_expired_lease_can_be_reclaimed_and_fences_the_old_attempt(db_session: Session) -> None:
    job = _new(db_session)
    first = _claim(db_session, job)
    db_session.execute(
        update(Job).where(Job.id == job.id).values(lease_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    )
    second = claim_job(db_session, job_id=job.id, worker="w2", lease_seconds=LEASE)
    assert second is not None and second.attempt == 2
    with pytest.raises(StaleAttempt):
        report_progress(db_session, claim=first, done=1, total=2, message=None, lease_seconds=LEASE)
    with pytest.raises(StaleAttempt):
        finish_job(db_session, claim=first, status=JobStatus.SUCCEEDED, result={})
    finish_job(db_session, claim=second, status=JobStatus.SUCCEEDED, result={"by": 2})
    assert get_job(db_session, job.id).result == {"by": 2}


def test_progress_and_success(db_session: Session) -> None:
    job = _new(db_session)
    claim = _claim(db_session, job)
    assert report_progress(db_session, claim=claim, done=1, total=4, message="one", lease_seconds=LEASE) is False
    row = get_job(db_session, job.id)
    assert (row.progress_done, row.progress_total, row.progress_message) == (1, 4, "one")
    finish_job(db_session, claim=claim, status=JobStatus.SUCCEEDED, result={"slept": 0})
    row = _stored(db_session, job.id)
    assert row.status == "succeeded" and row.finished_at is not None and row.lease_expires_at is None
    assert row.progress_done == 4


def test_cancel_queued_is_immediate(db_session: Session) -> None:
    job = _new(db_session)
    cancelled = request_cancel(db_session, job_id=job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert cancelled.error["type"] == "/problems/job-cancelled"
    assert claim_job(db_session, job_id=job.id, worker="w", lease_seconds=LEASE) is None
    assert request_cancel(db_session, job_id=job.id).status == "cancelled"  # idempotent


def test_cancel_running_is_seen_at_the_next_checkpoint(db_session: Session) -> None:
    job = _new(db_session)
    claim = _claim(db_session, job)
    assert request_cancel(db_session, job_id=job.id).status == "running"
    assert report_progress(db_session, claim=claim, done=0, total=1, message=None, lease_seconds=LEASE) is True


def test_cancel_finished_job_conflicts(db_session: Session) -> None:
    job = _new(db_session)
    finish_job(db_session, claim=_claim(db_session, job), status=JobStatus.FAILED, error={"title": "x"})
    with pytest.raises(JobNotCancellable):
        request_cancel(db_session, job_id=job.id)


def test_unknown_job_is_not_found(db_session: Session) -> None:
    with pytest.raises(NotFound):
        get_job(db_session, uuid.uuid4())
    with pytest.raises(NotFound):
        request_cancel(db_session, job_id=uuid.uuid4())


def test_list_pages_through_everything_once_newest_first(db_session: Session) -> None:
    made = [_new(db_session, kind="k.page") for _ in range(7)]
    seen, token = [], None
    while True:
        page = list_jobs(db_session, kind="k.page", page_size=3, page_token=token)
        seen += [j.id for j in page.items]
        token = page.next_page_token
        if token is None:
            break
    assert sorted(seen) == sorted(j.id for j in made)
    assert len(seen) == len(set(seen)) == 7
    created = [get_job(db_session, i).created_at for i in seen]
    assert created == sorted(created, reverse=True)


def test_list_filters_by_status_and_kind(db_session: Session) -> None:
    a, b = _new(db_session, kind="k.a"), _new(db_session, kind="k.b")
    _claim(db_session, b)
    assert [j.id for j in list_jobs(db_session, kind="k.a").items] == [a.id]
    assert b.id in [j.id for j in list_jobs(db_session, status="running").items]
    assert a.id not in [j.id for j in list_jobs(db_session, status="running").items]


@pytest.mark.parametrize("token", ["garbage!", "bm90IGpzb24", "WyJ4IiwieSJd"])
def test_a_malformed_page_token_is_invalid_input(db_session: Session, token: str) -> None:
    with pytest.raises(InvalidInput):
        list_jobs(db_session, page_token=token)
