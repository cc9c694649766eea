"""Getting every accepted job to a terminal state: outbox, lost messages, dead workers.

Three sweeps, each run by beat and each stamping ``enqueued_at`` on what it returns so
the caller can republish after commit (``SKIP LOCKED`` lets overlapping sweeps share):

* the outbox: jobs committed but never published (Redis was down at submit time);
* lost messages: jobs published long ago and still queued (the broker lost them, or they
  wait in a backlog: the wait doubles with each republish, up to 15 minutes);
* dead workers: running jobs whose lease expired. They are republished after an
  exponential backoff with full jitter (showing ``worker-lost``, naming the attempt, as their
  last error until an attempt ends them, or that attempt's worker, only stalled, reports again and
  the error it replaced is back),
  and fail with the last error once they used
  ``max_attempts``. One that was asked to stop is ended ``cancelled`` instead: a job
  with a cancel request never starts another attempt (``models.job_lifecycle``). A job
  these end gets the result its recorded work gives (``models.job_results``).

Each reads queued and running jobs through the partial indexes on them, in their order, so a
backlog of jobs published lately costs a sweep no row read.

``release_for_retry`` hands a job back after a transient error (lost connection,
timeout) so that a later attempt can take it, or ends it ``cancelled`` when a cancel was
requested meanwhile.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select, text, union_all, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from models.errors import PROBLEM_TYPE_PREFIX, JobCancelled, StaleAttempt, WorkerLost
from models.job_lifecycle import Checkpoint, JobClaim
from models.job_results import write_results_when_ended
from models.jobs import Job, JobStatus

QUEUED, RUNNING, CANCELLED = JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.CANCELLED.value
CANCEL_REQUESTED = Job.cancel_requested_at.is_not(None)


@dataclass(frozen=True)
class QueuedJobRef:
    job_id: uuid.UUID
    kind: str
    queue: str


def full_jitter_backoff(attempt: int, *, base: float, cap: float) -> float:
    """AWS "full jitter": uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt, 0)))


def _stamp(session: Session, condition: Any, limit: int, order: Any = Job.created_at, **values: Any) -> list[QueuedJobRef]:
    picked = select(Job.id).where(condition).order_by(order).limit(limit).with_for_update(skip_locked=True)
    rows = session.execute(
        update(Job).where(Job.id.in_(picked.scalar_subquery())).values(enqueued_at=func.now(), **values)
        .returning(Job.id, Job.kind, Job.queue)
    ).all()
    return [QueuedJobRef(r.id, r.kind, r.queue) for r in rows]


def claim_unpublished(session: Session, *, min_age: dt.timedelta, limit: int = 500) -> list[QueuedJobRef]:
    """The outbox: committed at least ``min_age`` ago and never published. One asked to stop is
    left to :func:`rescue_expired`, which cancels it."""
    return _stamp(session, and_(Job.status == QUEUED, Job.enqueued_at.is_(None), Job.cancel_requested_at.is_(None),
                                Job.created_at < func.now() - min_age), limit)


# The longest a queued job's message waits before the lost-message sweep publishes it again,
# unless ``older_than`` (PLANT_REQUEUE_AFTER_SECONDS) is longer: then that, never less.
LOST_MESSAGE_WAIT_CAP = dt.timedelta(minutes=15)


def claim_lost_messages(session: Session, *, older_than: dt.timedelta, limit: int = 500) -> list[QueuedJobRef]:
    """Published longer ago than ``older_than``, doubled for each time this sweep published it
    again since it was queued (at most ``LOST_MESSAGE_WAIT_CAP``, or ``older_than`` if that is
    longer: the cap never shortens the wait asked for), and still not picked up.

    A message lost by the broker and one waiting in a backlog look alike from here: a flat
    wait published every job of a backlog draining over T minutes about T more times, each a
    claim that does nothing but takes a worker slot. Doubled, it is about log2(T) more, and a
    lost message still goes out again within ``older_than`` at first."""
    wait = text("interval '1 second' * least(:cap, :first * power(2, least(jobs.republishes, 30)))").bindparams(
        cap=max(LOST_MESSAGE_WAIT_CAP, older_than).total_seconds(), first=older_than.total_seconds())
    # The first bound is the shortest wait, on the column alone, and the jobs are taken in its
    # order: the partial index on queued jobs' enqueued_at reads only the jobs published that long
    # ago (none, with a backlog published since). In created_at's order the planner walked the
    # (status, created_at) index instead, reading every queued job on each sweep. One asked to
    # stop is not published again: rescue_expired cancels it.
    return _stamp(session, and_(Job.status == QUEUED, Job.enqueued_at < func.now() - older_than,
                                Job.enqueued_at < func.now() - wait, Job.cancel_requested_at.is_(None)),
                  limit, order=Job.enqueued_at, republishes=Job.republishes + 1)


def uncount_republishes(session: Session, *, job_ids: list[uuid.UUID]) -> int:
    """Take back what :func:`claim_lost_messages` counted for jobs whose message the broker then
    refused: no message went, so the wait before the next try is not doubled (each stays stamped,
    and is tried again after the wait it had). A job no longer queued (a worker took an earlier
    message meanwhile) is left as it is. How many were taken back."""
    return session.execute(
        update(Job).where(Job.id.in_(job_ids), Job.status == QUEUED, Job.republishes > 0)
        .values(republishes=Job.republishes - 1)
    ).rowcount or 0


@dataclass(frozen=True)
class Rescue:
    """What one sweep over dead workers' jobs did: jobs to republish (already stamped),
    and how many it failed (out of attempts) or cancelled (a cancel was requested)."""

    republish: list[QueuedJobRef]
    failed: int
    cancelled: int


def _problem(error: JobCancelled) -> Any:
    return literal(error.problem(), JSONB)


def _left_queued(older_than: dt.timedelta, limit: int) -> Any:
    """Queued jobs a cancel request may sit on, which nothing would ever claim: only rows left
    by releases made before cancel requests ended them (release_for_retry), or written through
    SQL. The outbox and the lost-message sweep leave such a job where it is, so it comes to the
    front of one of these two windows, each of at most ``limit`` rows read through a partial
    index: the longest overdue messages, and the oldest never published. (Looking for a cancel
    request on every queued job read every job of a backlog on each sweep.)"""
    overdue = (select(Job.id).where(Job.status == QUEUED, Job.enqueued_at < func.now() - older_than)
               .order_by(Job.enqueued_at).limit(limit))
    unpublished = (select(Job.id).where(Job.status == QUEUED, Job.enqueued_at.is_(None))
                   .order_by(Job.created_at).limit(limit))
    return union_all(overdue.subquery().select(), unpublished.subquery().select())


def rescue_expired(
    session: Session, *, max_attempts: int, base: float, cap: float, older_than: dt.timedelta, limit: int = 500
) -> Rescue:
    """Republish running jobs whose lease expired (after backoff); fail those out of
    attempts; cancel those asked to stop, which no attempt will take again."""
    expired = and_(Job.status == RUNNING, Job.lease_expires_at < func.now())
    candidates = union_all(select(Job.id).where(expired), _left_queued(older_than, limit))
    asked_to_stop = select(Job.id).where(CANCEL_REQUESTED, Job.id.in_(candidates)).limit(limit)
    cancelled = session.execute(
        update(Job).where(Job.id.in_(asked_to_stop.with_for_update(skip_locked=True).scalar_subquery())).values(
            status=CANCELLED, finished_at=func.now(), lease_expires_at=None, updated_at=func.now(),
            error=case((Job.status == QUEUED, _problem(JobCancelled("cancelled on request; it was waiting in the queue"))),
                       else_=_problem(JobCancelled("cancelled on request; its worker stopped before it reached a checkpoint"))),
        ).returning(Job.id, Job.kind, Job.result)
    ).all()
    # One skipped above (its row locked, say by its attempt's own transaction) waits for
    # the next sweep: it is neither failed nor republished meanwhile. Failing skips locked
    # rows too: a live attempt holding its job is never waited for, nor failed under it.
    expired = and_(expired, Job.cancel_requested_at.is_(None))
    counted = Job.attempts - Job.handbacks  # a hand-back is not a failure
    out_of_attempts = select(Job.id).where(expired, counted >= max_attempts).limit(limit)
    failed = session.execute(
        update(Job).where(Job.id.in_(out_of_attempts.with_for_update(skip_locked=True).scalar_subquery())).values(
            status=JobStatus.FAILED.value, finished_at=func.now(), lease_expires_at=None, updated_at=func.now(),
            error=WorkerLost(f"no heartbeat from its worker on the last of {max_attempts} allowed attempts").problem(),
        ).returning(Job.id, Job.kind, Job.result)
    ).all()
    # Their results, in statements of their own, so read now that the rows are held: they
    # see every batch their attempts committed (one still in flight held its row, which was
    # skipped above), and no batch can commit after (check_attempt waits, then finds them ended).
    write_results_when_ended(session, [*cancelled, *failed])
    backoff = text("interval '1 second' * random() * least(:cap, :base * power(2, jobs.attempts - jobs.handbacks))"
                   ).bindparams(cap=cap, base=base)
    due = and_(
        expired,
        counted < max_attempts,
        Job.lease_expires_at + backoff < func.now(),
        or_(Job.enqueued_at.is_(None), Job.enqueued_at < Job.lease_expires_at, Job.enqueued_at < func.now() - older_than),
    )
    # The attempt ended with no word from its worker: the job says so while it waits for, and
    # runs, its next attempt (as one retried after a transient error shows that error).
    # It names that attempt: should its worker have been only stalled and report again, its
    # checkpoint clears it (models.job_lifecycle.report_progress).
    # The error it replaces (the previous attempt's, say a transient one) goes inside it, as
    # `previous`, which that checkpoint restores.
    lost = literal(WorkerLost("an attempt's worker stopped reporting before its lease ran out; the job is retried")
                   .problem(), JSONB).op("||")(func.jsonb_build_object("attempt", Job.attempts)).op("||")(_kept_as_previous())
    return Rescue(republish=_stamp(session, due, limit, republishes=0, error=lost), failed=len(failed),
                  cancelled=len(cancelled))


def _kept_as_previous() -> Any:
    """``{"previous": <the job's error>}``, or ``{}`` with none, for the worker-lost error that
    replaces it. A worker-lost error kept so drops its own ``previous``: only a checkpoint of the
    attempt it names restores it, and that attempt no longer owns the job, so one level is all
    that is ever restored."""
    error = Job.error
    kept = case((error["type"].astext == PROBLEM_TYPE_PREFIX + WorkerLost.code, error.op("-")("previous")), else_=error)
    return case((func.coalesce(func.jsonb_typeof(error), "null") == "null", literal({}, JSONB)),
                else_=func.jsonb_build_object("previous", kept))


def release_for_retry(session: Session, *, claim: JobClaim, error: dict[str, Any], handed_back: bool = False,
                      progress: Checkpoint | None = None, result: dict[str, Any] | None = None) -> JobStatus:
    """Hand the job back to the queue after a transient error, or unfailed (``handed_back``:
    its worker shuts down, its lease lapsed between batches; not counted against the
    attempts allowed); the caller republishes it when this returns ``queued``. A job whose
    cancel was requested is ended ``cancelled`` instead, in the same statement, so a cancel
    racing the release is never lost. ``progress``: the attempt's last report, not written yet;
    ``result``: what the job's attempts did so far, which it shows while it waits (the next
    attempt's outcome replaces it; a cancel meanwhile ends it with it, ``models.job_results``)."""
    return _end_attempt(session, claim, otherwise=QUEUED, error=error, handed_back=handed_back, progress=progress,
                        result=result)


def fail_unless_cancelled(session: Session, *, claim: JobClaim, error: dict[str, Any],
                          progress: Checkpoint | None = None, result: dict[str, Any] | None = None) -> JobStatus:
    """End the job ``failed`` with ``error`` (its last allowed attempt failed), or
    ``cancelled`` when a cancel was requested meanwhile: a job asked to stop ends cancelled.
    ``result``, if given, is what the attempt did before it failed."""
    return _end_attempt(session, claim, otherwise=JobStatus.FAILED.value, error=error, progress=progress, result=result)


def _end_attempt(session: Session, claim: JobClaim, *, otherwise: str, error: dict[str, Any],
                 handed_back: bool = False, progress: Checkpoint | None = None,
                 result: dict[str, Any] | None = None) -> JobStatus:
    """One conditional UPDATE of the row this attempt owns: ``cancelled`` when a cancel was
    asked, else ``otherwise`` (queued again, or failed), with ``progress`` and ``result``
    written if given. A stale attempt (the row is no longer its own) writes nothing."""
    cancelling = CANCEL_REQUESTED
    stopped = JobCancelled(f"cancelled on request; attempt {claim.attempt} stopped before it reached a checkpoint")
    values: dict[str, Any] = {
        "status": case((cancelling, CANCELLED), else_=otherwise),
        "error": case((cancelling, literal(stopped.problem(), JSONB)), else_=literal(error, JSONB)),
        "finished_at": func.now(), "lease_expires_at": None, "updated_at": func.now(),
    }
    if otherwise == QUEUED:  # back in the queue, unless cancelled: not finished, published again, no worker
        values.update(finished_at=case((cancelling, func.now()), else_=None),
                      enqueued_at=case((cancelling, Job.enqueued_at), else_=func.now()),
                      queued_at=case((cancelling, Job.queued_at), else_=func.now()),
                      republishes=case((cancelling, Job.republishes), else_=0),
                      worker=case((cancelling, Job.worker), else_=None))
        if handed_back:
            values["handbacks"] = case((cancelling, Job.handbacks), else_=Job.handbacks + 1)
    if progress is not None:
        values.update(progress_done=progress.done, progress_total=progress.total, progress_message=progress.message)
    if result is not None:
        values["result"] = literal(result, JSONB)
    released = session.execute(
        update(Job).where(Job.id == claim.job_id, Job.status == RUNNING, Job.attempts == claim.attempt)
        .values(**values).returning(Job.status)
    ).first()
    if released is None:
        raise StaleAttempt(f"attempt {claim.attempt} no longer owns job {claim.job_id}")
    return JobStatus(released.status)
