"""Getting every accepted job to a terminal state: outbox, lost messages, dead workers.

Three sweeps, each run by beat and each stamping ``enqueued_at`` on what it returns so
the caller can republish after commit (``SKIP LOCKED`` lets overlapping sweeps share):

* the outbox: jobs committed but never published (Redis was down at submit time);
* lost messages: jobs published long ago and still queued (the broker lost them);
* dead workers: running jobs whose lease expired. They are republished after an
  exponential backoff with full jitter, and fail with the last error once they used
  ``max_attempts``.

``release_for_retry`` hands a job back after a transient error (lost connection,
timeout) so that a later attempt can take it.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from models.errors import PlantError, StaleAttempt, WorkerLost
from models.job_lifecycle import JobClaim
from models.jobs import Job, JobStatus

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value


@dataclass(frozen=True)
class QueuedJobRef:
    job_id: uuid.UUID
    kind: str
    queue: str


def full_jitter_backoff(attempt: int, *, base: float, cap: float) -> float:
    """AWS "full jitter": uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt, 0)))


def _stamp(session: Session, condition: Any, limit: int) -> list[QueuedJobRef]:
    picked = select(Job.id).where(condition).order_by(Job.created_at).limit(limit).with_for_update(skip_locked=True)
    rows = session.execute(
        update(Job).where(Job.id.in_(picked.scalar_subquery())).values(enqueued_at=func.now())
        .returning(Job.id, Job.kind, Job.queue)
    ).all()
    return [QueuedJobRef(r.id, r.kind, r.queue) for r in rows]


def claim_unpublished(session: Session, *, min_age: dt.timedelta, limit: int = 500) -> list[QueuedJobRef]:
    """The outbox: committed at least ``min_age`` ago and never published."""
    return _stamp(session, and_(Job.status == QUEUED, Job.enqueued_at.is_(None), Job.created_at < func.now() - min_age), limit)


def claim_lost_messages(session: Session, *, older_than: dt.timedelta, limit: int = 500) -> list[QueuedJobRef]:
    """Published longer than ``older_than`` ago and still not picked up."""
    return _stamp(session, and_(Job.status == QUEUED, Job.enqueued_at < func.now() - older_than), limit)


def rescue_expired(
    session: Session, *, max_attempts: int, base: float, cap: float, older_than: dt.timedelta, limit: int = 500
) -> tuple[list[QueuedJobRef], int]:
    """Republish running jobs whose lease expired (after backoff); fail those out of attempts."""
    expired = and_(Job.status == RUNNING, Job.lease_expires_at < func.now())
    failed = session.execute(
        update(Job).where(expired, Job.attempts >= max_attempts).values(
            status=JobStatus.FAILED.value, finished_at=func.now(), lease_expires_at=None, updated_at=func.now(),
            error=WorkerLost(f"no heartbeat after attempt {max_attempts} of {max_attempts}").problem(),
        ).returning(Job.id)
    ).all()
    backoff = text("interval '1 second' * random() * least(:cap, :base * power(2, jobs.attempts))").bindparams(cap=cap, base=base)
    due = and_(
        expired,
        Job.attempts < max_attempts,
        Job.lease_expires_at + backoff < func.now(),
        or_(Job.enqueued_at.is_(None), Job.enqueued_at < Job.lease_expires_at, Job.enqueued_at < func.now() - older_than),
    )
    return _stamp(session, due, limit), len(failed)


def release_for_retry(session: Session, *, claim: JobClaim, error: dict[str, Any]) -> None:
    """Hand the job back to the queue after a transient error; the caller republishes it."""
    released = session.execute(
        update(Job).where(Job.id == claim.job_id, Job.status == RUNNING, Job.attempts == claim.attempt)
        .values(status=QUEUED, lease_expires_at=None, worker=None, error=error, enqueued_at=func.now(), updated_at=func.now())
        .returning(Job.id)
    ).first()
    if released is None:
        raise StaleAttempt(f"attempt {claim.attempt} no longer owns job {claim.job_id}")
