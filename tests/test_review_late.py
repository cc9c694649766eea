"""Review of the fixes that landed after f486955 (lost-message doubling, beat's clock, the
overdue-tick sweep, OpenAPI headers, parent locks)."""

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
