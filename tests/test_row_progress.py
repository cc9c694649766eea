"""How a job's progress checkpoints reach its row: throttled, never lost, fenced, cancellable.

Against the real database, with committed rows (the sink writes in its own statements);
the clock is a counter the test moves, so the interval is exact rather than timed.
"""

import threading
import uuid

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from models.db import single_statement, transaction
from models.errors import JobCancelled, JobHandedBack
from models.job_control import request_cancel
from models.job_lifecycle import JobClaim, claim_job, create_job, finish_job, get_job
from models.jobs import JobStatus
from tasks.runner import RowProgress

LEASE = 60
INTERVAL = 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sessions(engine: Engine, clean_db: None) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False)


def _claimed(sessions: sessionmaker) -> JobClaim:
    with transaction(sessions) as session:
        job_id = create_job(session, kind="diagnostics.sleep", params={"seconds": 0, "steps": 3}).id
    with single_statement(sessions) as session:
        claim = claim_job(session, job_id=job_id, worker="w1", lease_seconds=LEASE)
    assert claim is not None
    return claim


def _row(sessions: sessionmaker, job_id: uuid.UUID) -> tuple:
    with sessions() as session:
        job = get_job(session, job_id)
        return job.status, job.progress_done, job.progress_total, job.progress_message


def _sink(sessions: sessionmaker, claim: JobClaim, clock: Clock, **kwargs) -> RowProgress:
    options = {"lease_seconds": LEASE, "min_interval": INTERVAL, "shutdown": threading.Event(), **kwargs}
    return RowProgress(claim, sessions=sessions, clock=clock, **options)


def test_checkpoints_within_the_interval_wait_for_the_next_write(sessions) -> None:
    claim, clock = _claimed(sessions), Clock()
    progress = _sink(sessions, claim, clock)
    progress(0, 3, "starting")
    progress(1, 3, "one")
    assert _row(sessions, claim.job_id) == ("running", 0, None, None)  # the claim is the last write
    clock.now += INTERVAL
    progress(2, 3, "two")
    assert _row(sessions, claim.job_id) == ("running", 2, 3, "two")
    assert progress.pending is None
    clock.now += INTERVAL / 2
    progress(3, 3, "three")
    assert _row(sessions, claim.job_id)[1] == 2
    assert progress.pending is not None and progress.pending.done == 3


def test_the_outcome_carries_the_last_unwritten_checkpoint(sessions) -> None:
    claim, clock = _claimed(sessions), Clock()
    progress = _sink(sessions, claim, clock)
    progress(2, 3, "two of three")
    with single_statement(sessions) as session:
        finish_job(session, claim=claim, status=JobStatus.FAILED, error={"title": "boom"}, progress=progress.pending)
    assert _row(sessions, claim.job_id) == ("failed", 2, 3, "two of three")


def test_a_success_shows_complete_even_when_the_last_checkpoint_said_less(sessions) -> None:
    claim, clock = _claimed(sessions), Clock()
    progress = _sink(sessions, claim, clock)
    progress(1, 3, "one")
    with single_statement(sessions) as session:
        finish_job(session, claim=claim, status=JobStatus.SUCCEEDED, result={}, progress=progress.pending)
    assert _row(sessions, claim.job_id) == ("succeeded", 3, 3, "one")


def test_a_cancel_is_seen_at_the_next_written_checkpoint(sessions) -> None:
    claim, clock = _claimed(sessions), Clock()
    progress = _sink(sessions, claim, clock)
    with transaction(sessions) as session:
        request_cancel(session, job_id=claim.job_id)
    progress(1, 3)  # within the interval: nothing written, nothing read
    clock.now += INTERVAL
    with pytest.raises(JobCancelled):
        progress(2, 3)
    assert _row(sessions, claim.job_id)[1] == 2


def test_a_worker_shutdown_hands_back_at_any_checkpoint_written_or_not(sessions) -> None:
    claim, clock, shutdown = _claimed(sessions), Clock(), threading.Event()
    progress = _sink(sessions, claim, clock, shutdown=shutdown)
    shutdown.set()
    with pytest.raises(JobHandedBack):
        progress(1, 3)


def test_the_interval_is_at_most_a_quarter_of_the_lease(sessions) -> None:
    claim, clock = _claimed(sessions), Clock()
    progress = _sink(sessions, claim, clock, lease_seconds=2, min_interval=30.0)
    clock.now += 0.5
    progress(1, 3)
    assert _row(sessions, claim.job_id)[1] == 1  # written after 0.5 s, not 30 s: the lease stays renewed
