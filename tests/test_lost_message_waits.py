"""The lost-message sweep's doubling wait: never shorter than PLANT_REQUEUE_AFTER_SECONDS, and
restarted whenever a job is queued again (stop 37's review of its late fixes)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update

from models.job_lifecycle import create_job
from models.job_recovery import claim_lost_messages
from models.jobs import Job


def test_a_requeue_wait_above_the_cap_is_not_shortened_to_the_cap(db_session) -> None:
    """Review finding 1. PLANT_REQUEUE_AFTER_SECONDS has no upper bound, and an operator whose
    backlogs last long raises it (say to 30 minutes) so that waiting jobs are not published
    again. The doubling's 15-minute cap is applied to the first wait too: least(900, 1800)
    is 900, so a job published 20 minutes ago is republished although the operator asked for
    30, and every 15 minutes after: more republishes than before the fix, not fewer."""
    older_than = dt.timedelta(minutes=30)
    job = create_job(db_session, kind="diagnostics.sleep", params={"seconds": 0}, to_publish=True)
    db_session.execute(update(Job).where(Job.id == job.id).values(
        enqueued_at=func.now() - dt.timedelta(minutes=20)))
    assert claim_lost_messages(db_session, older_than=older_than) == [], \
        "republished after 20 minutes with PLANT_REQUEUE_AFTER_SECONDS at 30 minutes"
    db_session.execute(update(Job).where(Job.id == job.id).values(
        enqueued_at=func.now() - dt.timedelta(minutes=31)))
    assert [r.job_id for r in claim_lost_messages(db_session, older_than=older_than)] == [job.id]
    assert db_session.scalar(select(Job.republishes).where(Job.id == job.id)) == 1


def test_a_job_queued_again_starts_its_republish_count_afresh(db_session) -> None:
    """Checked sound: a retry (release_for_retry) and a rescue both restart the doubling."""
    from models.job_lifecycle import claim_job
    from models.job_recovery import release_for_retry, rescue_expired

    job = create_job(db_session, kind="diagnostics.sleep", params={"seconds": 0}, to_publish=True)
    count = select(Job.republishes).where(Job.id == job.id)
    db_session.execute(update(Job).where(Job.id == job.id).values(republishes=7))
    claim = claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60)
    release_for_retry(db_session, claim=claim, error={"type": "/problems/transient-error", "title": "t"})
    assert db_session.scalar(count) == 0
    db_session.execute(update(Job).where(Job.id == job.id).values(republishes=7))
    claim_job(db_session, job_id=job.id, worker="w", lease_seconds=60)
    old = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    db_session.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=old, enqueued_at=old))
    rescued = rescue_expired(db_session, max_attempts=5, base=0.001, cap=0.001, older_than=dt.timedelta(minutes=1))
    assert [r.job_id for r in rescued.republish] == [job.id]
    assert db_session.scalar(count) == 0
