"""Job lifecycle operations: create, read, claim, progress, finish, requeue.

Every transition is a single conditional UPDATE, so two processes can never both move
the same job. Writes from a worker carry the attempt number it claimed with; a write
whose attempt no longer matches the row (a stale, superseded attempt) changes nothing
and raises :class:`StaleAttempt`. Functions flush; callers commit. Listing jobs and cancelling
them are :mod:`models.job_control`'s.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from psycopg.rows import namedtuple_row
from sqlalchemy import Integer, Interval, String, Text, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from models.db_statements import DriverStatement, SessionOrConnection, driver_rows, driver_sql
from models.errors import PROBLEM_TYPE_PREFIX, JobCancelled, JobHandedBack, NotFound, StaleAttempt, WorkerLost
from models.jobs import RECORD_COLUMNS, TERMINAL_STATUSES, Job, JobRecord, JobStatus

@dataclass(frozen=True)
class JobClaim:
    """What a worker needs to run one attempt of a job."""

    job_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    attempt: int  # the fencing token: every claim raises it
    handbacks: int = 0  # earlier attempts that handed the job back unfailed

    @property
    def counted_attempts(self) -> int:
        """Attempts that count against ``PLANT_JOB_MAX_ATTEMPTS``, this one included."""
        return self.attempt - self.handbacks


# The statements every job goes through (insert, reads, claim, checkpoints, outcome) are
# Core statements on the table, built once where they can be, with bound parameters.
# Built per call as ORM statements they cost two to four times the CPU (statement
# construction, cache key, ORM bookkeeping for objects nobody changes); reads return
# plain rows (JobRecord). The hottest (insert, read, claim, checkpoints, outcome) are
# compiled once and run by psycopg itself (_job_rows).
_JOBS = Job.__table__.c
_NOW = func.now()
_LEASE_END = _NOW + bindparam("lease", type_=Interval())
_GET = driver_sql(select(*RECORD_COLUMNS).where(_JOBS.id == bindparam("job_id")))
# INSERT ... RETURNING gives the whole row (server defaults, JSONB as stored) in one round
# trip; the published variant stamps enqueued_at in the same statement.
_INSERT = (
    insert(Job.__table__)
    .values(kind=bindparam("kind"), params=bindparam("params"), queue=bindparam("queue"), status=JobStatus.QUEUED.value,
            requested_by=bindparam("requested_by", type_=Text()))
    .returning(*Job.__table__.c)
)
_INSERT_PUBLISHED = _INSERT.values(enqueued_at=_NOW)
_INSERT_SQL, _INSERT_PUBLISHED_SQL = driver_sql(_INSERT), driver_sql(_INSERT_PUBLISHED)
# A job asked to stop never starts another attempt: were its worker to die, the next
# attempt could run to the end without a checkpoint (a certification has none) and the
# cancel would be lost. Such a job is ended `cancelled` instead (models.job_control.request_cancel, and
# models.job_recovery for a worker that died after the request). A claim naming a kind takes
# only a job of that kind: the task that claims runs its own kind's handler, whatever the row says.
_KIND = bindparam("kind", type_=String())


def _claimable(jobs: Any) -> Any:
    return and_(
        jobs.cancel_requested_at.is_(None),
        or_(_KIND.is_(None), jobs.kind == _KIND),
        or_(
            jobs.status == JobStatus.QUEUED.value,
            and_(jobs.status == JobStatus.RUNNING.value, jobs.lease_expires_at < _NOW),
        ),
    )


_CLAIMABLE = _claimable(_JOBS)
# A claim locks a claimable row FOR UPDATE before it changes it: a new attempt waits for a
# bulk batch of the old one still in flight (check_attempt holds the row FOR KEY SHARE,
# which a plain UPDATE would not wait for), so every batch commits while its attempt owns
# the job. The sub-select locks only a claimable row: a redelivered message for a live or
# finished job waits for nobody. The UPDATE checks again, on the row as it is after any wait.
_ROW_FOR_UPDATE = Job.__table__.alias("locked")
_LOCK_FOR_CLAIM = (
    select(_ROW_FOR_UPDATE.c.id)
    .where(_ROW_FOR_UPDATE.c.id == bindparam("job_id"), _claimable(_ROW_FOR_UPDATE.c))
    .with_for_update()
    .scalar_subquery()
)
_CLAIM = (
    update(Job.__table__)
    .where(_JOBS.id == bindparam("job_id"), _JOBS.id == _LOCK_FOR_CLAIM, _CLAIMABLE)
    .values(status=JobStatus.RUNNING.value, attempts=_JOBS.attempts + 1, worker=bindparam("worker"),
            started_at=func.coalesce(_JOBS.started_at, _NOW), lease_expires_at=_LEASE_END, updated_at=_NOW)
    .returning(_JOBS.id, _JOBS.kind, _JOBS.params, _JOBS.attempts, _JOBS.handbacks)
)
_CLAIM_SQL = driver_sql(_CLAIM)
# Owned: the row is running under exactly this attempt (the fencing token).
_OWNED_BY = (_JOBS.id == bindparam("job_id"), _JOBS.status == JobStatus.RUNNING.value, _JOBS.attempts == bindparam("attempt"))
_OWNED = update(Job.__table__).where(*_OWNED_BY)
# The sweep's worker-lost error names the attempt whose lease ran out (models.job_recovery.rescue_expired);
# a checkpoint of that very attempt shows its worker was only stalled, and clears it, restoring the
# error it replaced (its `previous`: say the transient error of the attempt before; none, NULL). One
# naming an earlier attempt stays while this one runs, as any earlier attempt's error does.
_OWN_WORKER_LOST = and_(_JOBS.error["type"].astext == PROBLEM_TYPE_PREFIX + WorkerLost.code,
                        _JOBS.error["attempt"].astext == _JOBS.attempts.cast(Text))
_ERROR_UNLESS_OWN_WORKER_LOST = case((_OWN_WORKER_LOST, _JOBS.error["previous"]), else_=_JOBS.error)
_SET_PROGRESS = driver_sql(_OWNED.values(
    lease_expires_at=_LEASE_END, updated_at=_NOW, error=_ERROR_UNLESS_OWN_WORKER_LOST, progress_done=bindparam("done"),
    progress_total=bindparam("total", type_=Integer()), progress_message=bindparam("message", type_=Text()),
).returning(_JOBS.cancel_requested_at))
_ADD_PROGRESS = driver_sql(_OWNED.values(
    lease_expires_at=_LEASE_END, updated_at=_NOW, error=_ERROR_UNLESS_OWN_WORKER_LOST, progress_done=_JOBS.progress_done + bindparam("done"),
    progress_total=func.coalesce(bindparam("total", type_=Integer()), _JOBS.progress_total),
    progress_message=bindparam("message", type_=Text()),
).returning(_JOBS.cancel_requested_at))


def create_job(
    session: SessionOrConnection, *, kind: str, params: dict[str, Any], queue: str = "default", to_publish: bool = False,
    requested_by: str | None = None,
) -> JobRecord:
    """Insert a queued job and return its row. The caller publishes its message only
    after committing. ``requested_by`` names who asked for it (``api-key:<id>``, say), in
    the same INSERT.

    ``to_publish`` stamps ``enqueued_at`` in the INSERT, for a caller that publishes right
    after the commit and calls :func:`mark_unpublished` if that fails: a successful submit
    then costs no second write. Without it the row starts in the outbox.
    """
    statement = _INSERT_PUBLISHED_SQL if to_publish else _INSERT_SQL
    values = {"kind": kind, "params": params, "queue": queue, "requested_by": requested_by}
    return cast(JobRecord, _job_rows(session, statement, values)[0])


def _job_rows(session: SessionOrConnection, statement: DriverStatement, values: dict[str, Any]) -> list[Any]:
    """The rows of one of the statements every job goes through, run by psycopg itself
    (:func:`models.db_statements.driver_rows`: a job's insert, read, claim and outcome each cost
    SQLAlchemy's execution about 90 µs of CPU more), as named rows (``JobRecord``)."""
    return driver_rows(session, statement, values, row_factory=namedtuple_row)


def get_job(session: SessionOrConnection, job_id: uuid.UUID) -> JobRecord:
    """The job's row as it is now (a plain row: nothing is tracked or cached), read in the
    caller's transaction (a Session flushes what is pending first) or on its connection."""
    rows = _job_rows(session, _GET, {"job_id": job_id})
    if not rows:
        raise NotFound(f"no job with id {job_id}", id=str(job_id))
    return cast(JobRecord, rows[0])


def claim_job(
    session: SessionOrConnection, *, job_id: uuid.UUID, worker: str, lease_seconds: int, retrying: bool = False,
    kind: str | None = None, earlier_workers: Sequence[str] = (),
) -> JobClaim | None:
    """Move a queued job (or a running one whose lease expired) to running.

    Returns ``None`` when the job is terminal, missing, held by a live lease, or asked
    to stop: a redelivered message then does nothing. Increments ``attempts``. With ``kind``
    (the claiming task's), also ``None`` for a job of another kind (its row edited through SQL,
    say): that task's handler must not run it, and the job stays queued for the lost-message
    sweep to publish to its own kind's task.

    ``retrying``: an earlier try with this same ``worker`` token lost its connection, maybe
    after its claim committed. A token names one run of one message, so a running row
    holding it is that claim, returned as such: otherwise the job would sit under a live
    lease with no worker until the lease ran out.

    ``earlier_workers``: tokens of earlier runs of the same message whose claim lost its
    connection twice (each retried the message instead): a running row holding one of them is
    that run's claim, which no handler ran. Either is taken as it stands (the same attempt), its
    worker and lease renewed to this run's, so a redelivery of this message after this run died
    does not take it up again.
    """
    values = {"job_id": job_id, "worker": worker, "lease": dt.timedelta(seconds=lease_seconds), "kind": kind}
    rows = _job_rows(session, _CLAIM_SQL, values)
    row = rows[0] if rows else None
    if row is None and (retrying or earlier_workers):
        owners = [*earlier_workers, *([worker] if retrying else [])]
        row = session.execute(_TAKE_OWN_CLAIM, {"job_id": job_id, "worker": worker, "lease": values["lease"],
                                                "owners": owners}).one_or_none()
    if row is None:
        return None
    return JobClaim(job_id=row.id, kind=row.kind, params=row.params, attempt=row.attempts, handbacks=row.handbacks)


_TAKE_OWN_CLAIM = (
    update(Job.__table__)
    .where(_JOBS.id == bindparam("job_id"), _JOBS.status == JobStatus.RUNNING.value,
           _JOBS.worker.in_(bindparam("owners", expanding=True)))
    .values(worker=bindparam("worker"), lease_expires_at=_LEASE_END, updated_at=_NOW)
    .returning(_JOBS.id, _JOBS.kind, _JOBS.params, _JOBS.attempts, _JOBS.handbacks)
)


_OWNED_ROW = select(_JOBS.id, _JOBS.cancel_requested_at).where(*_OWNED_BY)
_HOLD = _OWNED_ROW.with_for_update(read=True)
_CHECK = (
    select(_JOBS.id, _JOBS.cancel_requested_at, (_JOBS.lease_expires_at > _NOW).label("leased"))
    .where(*_OWNED_BY)
    .with_for_update(read=True, key_share=True)
)


def hold_attempt(session: Session, *, claim: JobClaim) -> None:
    """Fence a job's own domain transaction (a certification, an assignment) with its attempt.

    Locks the job row FOR SHARE while the attempt still owns it, until the transaction
    ends: a job cancelled or failed meanwhile (say, while this worker was stalled and its
    lease ran out) raises :class:`StaleAttempt` here, so its work is rolled back rather
    than committed under a job that says it never happened; and a cancel or sweep that
    comes now waits for this transaction. A job asked to stop since its claim raises
    :class:`JobCancelled`: a job with no checkpoint honours its cancel here.
    """
    _owned(session, _HOLD, claim)


def check_attempt(session: Session, *, claim: JobClaim) -> None:
    """:func:`hold_attempt` with the weakest lock, for a job that writes in many transactions
    while it reports progress (a bulk assignment's batches): each starts only while its
    attempt owns the job under a live lease and no cancel was asked.

    The job row is held FOR KEY SHARE until the transaction ends. While the lease is live,
    the job's own progress writes and cancel requests (plain UPDATEs) never wait for it.
    What takes the job from its attempt does: a new attempt's claim and the cancel of a job
    whose lease expired lock the row FOR UPDATE first, and the sweep skips the row. So a
    batch commits only while its attempt owns the job. Once the lease has expired no new
    batch starts (:class:`JobHandedBack`: the job goes back to the queue), so a claim or
    cancel waits only for the batches already in flight. (Should the stalled attempt wake
    and renew its lease by a progress write while a claim waits, its batches go on and the
    claim, finding the job live once it gets the row, claims nothing: it may wait for the
    rest of the run, or until its statement timeout, and its message is retried.)"""
    row = _owned(session, _CHECK, claim)
    if not row.leased:
        raise JobHandedBack(f"attempt {claim.attempt}'s lease on job {claim.job_id} expired between its batches")


def _owned(session: Session, statement: Any, claim: JobClaim) -> Any:
    row = session.execute(statement, _owner(claim)).first()
    if row is None:
        raise StaleAttempt(f"attempt {claim.attempt} no longer owns job {claim.job_id}")
    if row.cancel_requested_at is not None:
        raise JobCancelled(f"cancelled on request before attempt {claim.attempt} started its work")
    return row


def report_progress(
    session: SessionOrConnection,
    *,
    claim: JobClaim,
    done: int,
    total: int | None,
    message: str | None,
    lease_seconds: int,
) -> bool:
    """Record progress and renew the lease; clear a ``worker-lost`` error the sweep wrote about
    this very attempt (its worker was only stalled), back to the error it replaced, if any.
    Returns True when a cancel was requested."""
    return _checkpoint(session, _SET_PROGRESS, claim, lease_seconds, done=done, total=total, message=message)


def add_progress(session: SessionOrConnection, *, claim: JobClaim, done: int, total: int | None, message: str | None, lease_seconds: int) -> bool:
    """Add ``done`` to the progress (parallel parts of one job) and renew the lease.

    Returns True when a cancel was requested; raises ``StaleAttempt`` for a stale claim.
    """
    return _checkpoint(session, _ADD_PROGRESS, claim, lease_seconds, done=done, total=total, message=message)


def _checkpoint(session: SessionOrConnection, statement: DriverStatement, claim: JobClaim, lease_seconds: int, **values: Any) -> bool:
    rows = _job_rows(session, statement, {**_owner(claim), "lease": dt.timedelta(seconds=lease_seconds), **values})
    if not rows:
        raise StaleAttempt(f"attempt {claim.attempt} no longer owns job {claim.job_id}")
    return rows[0][0] is not None


def _owner(claim: JobClaim) -> dict[str, Any]:
    return {"job_id": claim.job_id, "attempt": claim.attempt}


@dataclass(frozen=True)
class Checkpoint:
    """A progress report: ``done`` of ``total`` (None when unknown), with a message."""

    done: int
    total: int | None
    message: str | None


def finish_job(
    session: SessionOrConnection,
    *,
    claim: JobClaim,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    progress: Checkpoint | None = None,
) -> None:
    """Write a terminal outcome for the attempt that owns the job, with the attempt's
    last progress report when that was not written yet. A success shows as complete."""
    assert status in TERMINAL_STATUSES
    values: dict[str, Any] = {**_owner(claim), "status": status.value, "result": result, "error": error}
    if progress is not None:
        values.update(done=progress.done, total=progress.total, message=progress.message)
    statement = _finish_statement(succeeded=status is JobStatus.SUCCEEDED, with_progress=progress is not None)
    if not _job_rows(session, statement, values):
        raise StaleAttempt(f"attempt {claim.attempt} no longer owns job {claim.job_id}")


@cache
def _finish_statement(*, succeeded: bool, with_progress: bool) -> DriverStatement:
    values: dict[str, Any] = {
        "status": bindparam("status"),
        "result": bindparam("result", type_=JSONB),
        "error": bindparam("error", type_=JSONB),
        "finished_at": _NOW,
        "lease_expires_at": None,
        "updated_at": _NOW,
    }
    done: Any = _JOBS.progress_done
    total: Any = _JOBS.progress_total
    if with_progress:
        done, total = bindparam("done"), bindparam("total", type_=Integer())
        values.update(progress_done=done, progress_total=total, progress_message=bindparam("message", type_=Text()))
    if succeeded:
        values["progress_done"] = func.coalesce(total, done)
    return driver_sql(_OWNED.values(**values).returning(_JOBS.id))


def mark_unpublished(session: SessionOrConnection, *, job_id: uuid.UUID) -> None:
    """Note a failed publish: the job goes (back) to the outbox, for beat to publish."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value).values(enqueued_at=None))
