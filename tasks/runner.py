"""The job wrapper every job task uses: claim, run, record the outcome.

Claiming (queued -> running, attempts + 1) happens in its own committed transaction
before any work, and the outcome is written by the same attempt afterwards. The claim,
each written checkpoint and the outcome are one conditional UPDATE each, so they run as
single autocommitted statements (no BEGIN/COMMIT round trips); checkpoints closer together
than ``PLANT_PROGRESS_MIN_INTERVAL_SECONDS`` ride along with a later write. A row that
is already terminal, or held by another live attempt, makes the task a no-op, so a
redelivered message is harmless. Progress goes through a sink that commits each
checkpoint, renews the lease and turns a requested cancel into ``JobCancelled``.

Transient errors (lost database or Redis connections, timeouts, and a ``TransientJobError``
a job's own code raises) are retried with exponential backoff and full jitter, up to
``PLANT_JOB_MAX_ATTEMPTS`` attempts; the job shows each attempt and the last error meanwhile. An attempt refused because this
process's signing key was sealed after it started (``signing-key-sealed``) is handed back
instead (no attempt counted), and the worker stops taking jobs and exits 0, for its
supervisor to restart it on the active key. Other domain errors are never retried. A job's
error names an exception that is not Plant's own by its type only (the worker logs it whole).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from psycopg.errors import ReadOnlySqlTransaction
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.db import retry_if_disconnected, single_statement, transaction
from models.errors import InternalJobError, JobCancelled, JobHandedBack, JobTimedOut, PlantError, SigningKeySealed, StaleAttempt, TransientJobError
from models.job_lifecycle import Checkpoint, JobClaim, claim_job, finish_job, get_job, report_progress
from models.job_recovery import fail_unless_cancelled, full_jitter_backoff, release_for_retry
from models.jobs import JobStatus
from models.progress import ProgressSink
from models.registry import WriteContext
from tasks import runtime
from tasks.dispatch import KIND_BY_TASK, route_for

log = logging.getLogger(__name__)

JobHandler = Callable[[JobClaim, ProgressSink], "dict[str, Any] | Finished | None"]

# A handler returns ``CONTINUES`` when it handed the work to other tasks (an audit's
# chunks), which finish the job themselves.
CONTINUES = None


class Finished:
    """What a handler returns when it recorded the job's success itself (:func:`finish_in`)."""


FINISHED = Finished()


def finish_in(session: Session, claim: JobClaim, result: dict[str, Any]) -> Finished:
    """Record the job's success in ``session``'s transaction, the one that did its work.

    The work and the outcome then commit together: a cancel or sweep that waited on the
    attempt's hold (:func:`models.job_lifecycle.hold_attempt`) finds the job finished,
    and can never end it ``cancelled`` after its work committed.
    """
    finish_job(session, claim=claim, status=JobStatus.SUCCEEDED, result=result)
    return FINISHED


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError, InterfaceError, DisconnectionError, redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError, BrokerError, ConnectionError, TimeoutError,
    SigningKeySealed,  # an audit chunk's: passes once a worker restarted on the active key takes it (a job's is a hand-back)
    TransientJobError,  # job code's own word that a dependency was unavailable: retried as the errors above are
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, ReadOnlySqlTransaction):
        return True  # a standby or a database set read-only: an outage of the writes (the API's 503 too)
    if isinstance(exc, DBAPIError) and not isinstance(exc, (OperationalError, InterfaceError)):
        return bool(exc.connection_invalidated)
    return isinstance(exc, TRANSIENT_ERRORS)


def _raised_during(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` was raised while handling (or from) an exception of ``kind``."""
    seen: set[int] = set()
    chain: list[BaseException | None] = [exc]
    while chain:
        cause = chain.pop()
        if cause is None or id(cause) in seen:
            continue
        if isinstance(cause, kind):
            return True
        seen.add(id(cause))
        chain += [cause.__cause__, cause.__context__]
    return False


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def write_context(claim: JobClaim) -> WriteContext:
    """Registry writes made by a job are attributed to it (``job:<id>``) in the chain."""
    return WriteContext(actor=f"job:{claim.job_id}", keyring=runtime.keyring(), embedder=runtime.embedder())


class RowProgress:
    """A ``ProgressSink`` that writes checkpoints to the job row, each in its own statement.

    A checkpoint less than ``PLANT_PROGRESS_MIN_INTERVAL_SECONDS`` after the last write
    (the claim counts as one) is kept as ``pending`` instead, and goes to the row with the
    next checkpoint that is written, or with the outcome: a job that reports thousands of
    steps a second costs a few writes a second, and a short job none at all beyond its
    claim and outcome. Every write renews the lease and looks for a requested cancel, so
    both happen at least once per interval while a job reports; the interval is capped at
    a quarter of the lease.
    """

    def __init__(
        self,
        claim: JobClaim,
        *,
        sessions: sessionmaker[Session],
        lease_seconds: int,
        min_interval: float,
        shutdown: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.claim = claim
        self.pending: Checkpoint | None = None
        self._sessions, self._lease_seconds, self._shutdown, self._clock = sessions, lease_seconds, shutdown, clock
        self._interval = min(min_interval, lease_seconds / 4)
        self._written_at = clock()

    @classmethod
    def for_worker(cls, claim: JobClaim) -> RowProgress:
        settings = runtime.settings()
        return cls(claim, sessions=runtime.session_factory(), lease_seconds=settings.job_lease_seconds,
                   min_interval=settings.progress_min_interval_seconds, shutdown=runtime.shutdown_requested)

    def __call__(self, done: int, total: int | None, message: str | None = None) -> None:
        self.pending = Checkpoint(done, total, message)
        if self._clock() - self._written_at >= self._interval and self.flush():
            raise JobCancelled("cancelled on request")
        if self._shutdown.is_set():
            raise JobHandedBack(f"attempt {self.claim.attempt} stopped at {done}/{total} for a worker shutdown")

    def flush(self) -> bool:
        """Write the pending checkpoint, if any; True when a cancel was requested."""
        if self.pending is None:
            return False
        checkpoint = self.pending

        def write() -> bool:
            with single_statement(self._sessions) as connection:
                return report_progress(connection, claim=self.claim, done=checkpoint.done, total=checkpoint.total,
                                       message=checkpoint.message, lease_seconds=self._lease_seconds)

        cancel_requested = retry_if_disconnected(write)
        self.pending, self._written_at = None, self._clock()
        return cancel_requested


def backoff_seconds(attempt: int) -> float:
    settings = runtime.settings()
    return full_jitter_backoff(attempt, base=settings.retry_backoff_base_seconds, cap=settings.retry_backoff_cap_seconds)


# The message header in which a run whose claim failed for a lost connection hands its worker
# token (and those handed to it) to the retried message: its claim may have committed unseen.
EARLIER_CLAIMS_HEADER = "plant_earlier_claims"


def run_job(task: Task, job_id: str, handler: JobHandler) -> dict[str, Any]:
    """Run one attempt of the job; returns a small JSON summary for Celery's logs. A job task
    claims only a job of the kind it runs (``KIND_BY_TASK``, by its name): a row edited to name
    another kind is left queued for the sweep to publish to that kind's task.

    A claim whose connection died, retried once on a fresh one (:func:`models.db.retry_if_disconnected`)
    and lost again, may have committed: the message is retried after a backoff, naming this
    run's token (``EARLIER_CLAIMS_HEADER``), and the retried run takes the job as its own if its
    row is still running under one of those tokens, rather than leaving it under a live lease
    with no worker until the lease ran out."""
    kind = KIND_BY_TASK.get(getattr(task, "name", None) or "")
    token = f"{worker_identity()}/{uuid.uuid4().hex[:12]}"  # this run of this message, in the job's worker column
    earlier = list(getattr(getattr(task, "request", None), EARLIER_CLAIMS_HEADER, None) or [])
    retrying = False

    def claim_it() -> JobClaim | None:
        with single_statement(runtime.session_factory()) as connection:
            return claim_job(connection, job_id=uuid.UUID(job_id), worker=token,
                             lease_seconds=runtime.settings().job_lease_seconds, retrying=retrying, kind=kind,
                             earlier_workers=earlier)

    def before_retry() -> None:
        nonlocal retrying
        retrying = True

    try:
        claim = retry_if_disconnected(claim_it, before_retry=before_retry)
    except TRANSIENT_ERRORS as exc:
        # The same message comes back after a backoff; a claim that committed unseen is its own then.
        retries = task.request.retries
        raise task.retry(exc=exc, countdown=backoff_seconds(retries), max_retries=runtime.settings().job_max_attempts,
                         headers={EARLIER_CLAIMS_HEADER: [*earlier, token]}) from exc
    if claim is None:
        return {"job_id": job_id, "skipped": "not claimable"}
    progress = RowProgress.for_worker(claim)
    attempt = _execute(claim, handler, progress)
    if attempt.recorded:
        return {"job_id": job_id, "status": attempt.status.value}
    if attempt.status is JobStatus.RUNNING:
        progress.flush()  # the job goes on in other tasks: its last report must not wait for an outcome
        return {"job_id": job_id, "status": "running", "continues": True}
    if attempt.retry_after is not None:
        return _retry_later(task, claim, attempt, progress.pending)
    return record_outcome(claim, attempt.status, attempt.result, attempt.error, progress.pending)


def record_outcome(claim: JobClaim, status: JobStatus, result: dict | None, error: dict | None,
            progress: Checkpoint | None = None) -> dict[str, Any]:
    def finish() -> JobStatus:
        with single_statement(runtime.session_factory()) as connection:
            finish_job(connection, claim=claim, status=status, result=result, error=error, progress=progress)
        return status

    if _last_write(claim, finish, error) is not status:
        log.warning("job %s attempt %s was superseded; outcome dropped", claim.job_id, claim.attempt)
        return {"job_id": str(claim.job_id), "skipped": "superseded"}
    return {"job_id": str(claim.job_id), "status": status.value}


def _last_write(claim: JobClaim, write: Callable[[], JobStatus], error: dict[str, Any] | None) -> JobStatus | None:
    """Run ``write``, the attempt's last write to its job (an outcome, a release), once more on a
    fresh connection if its connection died (:func:`models.db.retry_if_disconnected`). Should the
    first try have committed before it died, the second finds the job no longer held
    (``StaleAttempt``): the row says so. The job's status as written; None when the attempt was
    superseded (a sweep, a cancel or a later attempt took the job)."""
    reconnected = False

    def note_reconnect() -> None:
        nonlocal reconnected
        reconnected = True

    try:
        return retry_if_disconnected(write, before_retry=note_reconnect)
    except StaleAttempt:
        return _written_before_the_connection_died(claim, error) if reconnected else None


def _written_before_the_connection_died(claim: JobClaim, error: dict[str, Any] | None) -> JobStatus | None:
    """After a write whose connection died, and whose retry on a fresh one found the job no
    longer held: the job's status when its row holds what this attempt wrote (no later attempt,
    no longer running, this attempt's error), so the first try committed before it died; None
    when another write took the job (a sweep, a cancel, a later attempt) or the row cannot be read."""
    try:
        with runtime.session_factory()() as session:
            job = get_job(session, claim.job_id)
    except SQLAlchemyError as exc:
        log.warning("job %s attempt %s: could not read whether its write committed: %s", claim.job_id, claim.attempt,
                    type(exc).__name__)
        return None
    if job.attempts != claim.attempt or job.status == JobStatus.RUNNING.value or job.error != error:
        return None
    log.info("job %s attempt %s: its write committed before its connection died", claim.job_id, claim.attempt)
    return JobStatus(job.status)


def _retry_later(task: Task, claim: JobClaim, attempt: Attempt, progress: Checkpoint | None = None) -> dict[str, Any]:
    """Hand the job back and republish it after ``retry_after``. A transient failure on the
    last allowed attempt ends the job instead: ``failed``, or ``cancelled`` when a cancel
    was asked meanwhile. The attempt's result, if it has one, goes with either. A hand-back
    never counts against the attempts allowed. The attempt's last progress report
    (``progress``), if not written yet, goes with it."""
    settings = runtime.settings()
    # A job that keeps being handed back (its lease always lapsing mid-run, say) would loop
    # for ever: past PLANT_JOB_MAX_HANDBACKS, its hand-backs count as attempts.
    free = attempt.handed_back and claim.handbacks < settings.job_max_handbacks

    def release_or_end() -> JobStatus:
        with transaction(runtime.session_factory()) as session:
            if free or claim.counted_attempts < settings.job_max_attempts:
                return release_for_retry(session, claim=claim, error=attempt.error or {}, handed_back=free, progress=progress,
                                         result=attempt.result)
            return fail_unless_cancelled(session, claim=claim, error=attempt.error or {}, progress=progress,
                                         result=attempt.result)

    status = _last_write(claim, release_or_end, attempt.error or {})
    if status is None:
        return {"job_id": str(claim.job_id), "skipped": "superseded"}
    if status is not JobStatus.QUEUED:  # failed on its last attempt, or a cancel was requested
        return {"job_id": str(claim.job_id), "status": status.value}
    route = route_for(claim.kind)
    task.app.send_task(route.task_name, args=[str(claim.job_id)], queue=route.queue, countdown=attempt.retry_after)
    return {"job_id": str(claim.job_id), "status": "queued", "retry": claim.attempt + 1}


def hand_back(task: Task, claim: JobClaim, detail: str) -> dict[str, Any]:
    """Give the job back to the queue unfailed (not counted against its attempts) and
    republish it through ``task``'s app: its attempt stops for a worker shutdown."""
    return _retry_later(task, claim, Attempt(JobStatus.QUEUED, error=JobHandedBack(detail).problem(), retry_after=0.0,
                                             handed_back=True))


# Where keep_result leaves a stopped attempt's result on the exception that stopped it.
_KEPT_RESULT = "plant_job_result"


def keep_result(exc: BaseException, read: Callable[[], dict[str, Any]]) -> None:
    """Have the attempt that ``exc`` ends report what it did all the same: ``read`` (a unit
    of work of its own, run now) gives the job's result, recorded with whatever outcome
    ``exc`` gives the attempt (cancelled, failed, or back in the queue, where the job shows
    it until its next attempt reports). A read that fails leaves the result out; ``exc``
    stays the error."""
    try:
        setattr(exc, _KEPT_RESULT, read())
    except Exception:  # noqa: BLE001 - the attempt's own error is the one to report
        log.warning("the result of the attempt %s ended was not read", type(exc).__name__, exc_info=True)


def _kept_result(exc: BaseException) -> dict[str, Any] | None:
    return getattr(exc, _KEPT_RESULT, None)


@dataclass(frozen=True)
class Attempt:
    """How one attempt ended. ``retry_after`` (seconds) is set when the job goes back to
    the queue: 0 for a hand-back at shutdown, a backoff after a transient error. ``result``
    is a stopped attempt's too, when its handler kept one (:func:`keep_result`)."""

    status: JobStatus
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    retry_after: float | None = None
    recorded: bool = False  # the handler wrote the outcome with its work
    handed_back: bool = False  # back to the queue unfailed: not counted against the attempts allowed


def _execute(claim: JobClaim, handler: JobHandler, progress: RowProgress) -> Attempt:
    try:
        result = handler(claim, progress)
        if isinstance(result, Finished):
            return Attempt(JobStatus.SUCCEEDED, recorded=True)
        return Attempt(JobStatus.RUNNING) if result is CONTINUES else Attempt(JobStatus.SUCCEEDED, result)
    except JobCancelled as exc:
        return Attempt(JobStatus.CANCELLED, result=_kept_result(exc), error=exc.problem())
    except JobHandedBack as exc:
        return Attempt(JobStatus.QUEUED, result=_kept_result(exc), error=exc.problem(), retry_after=0.0,
                       handed_back=True)
    except SoftTimeLimitExceeded as exc:
        return Attempt(JobStatus.FAILED, result=_kept_result(exc),
                       error=JobTimedOut(f"attempt {claim.attempt} hit the soft time limit").problem())
    except SigningKeySealed as exc:  # this worker must restart: a worker restarted on the active key takes the job
        log.error("job %s attempt %s: %s; this worker stops to be restarted", claim.job_id, claim.attempt, exc.detail)
        runtime.restart_worker_on_the_active_key()  # before the job is republished: this worker takes no more
        return Attempt(JobStatus.QUEUED, result=_kept_result(exc), error=exc.problem(),
                       retry_after=backoff_seconds(claim.counted_attempts), handed_back=True)
    except TransientJobError as exc:  # a PlantError written for clients, but one that passes: retried, not failed
        log.warning("job %s attempt %s hit a transient error: %s", claim.job_id, claim.attempt, exc.detail)
        error = TransientJobError(f"attempt {claim.attempt}: {exc.detail}").problem()
        return Attempt(JobStatus.QUEUED, result=_kept_result(exc), error=error,
                       retry_after=backoff_seconds(claim.counted_attempts))
    except PlantError as exc:
        return Attempt(JobStatus.FAILED, result=_kept_result(exc), error=exc.problem())
    except Exception as exc:  # noqa: BLE001 - every failure must land in the row
        if _raised_during(exc, SoftTimeLimitExceeded):
            # The limit fired inside a query that the connection could not end (a lost or interrupted
            # cancel: models.db_cancel.CancellingConnection): the rollback of the busy connection failed,
            # and that error replaced the limit's.
            return Attempt(JobStatus.FAILED, result=_kept_result(exc), error=JobTimedOut(
                f"attempt {claim.attempt} hit the soft time limit ({type(exc).__name__} on the way out)").problem())
        if is_transient(exc):
            log.warning("job %s attempt %s hit a transient error: %s", claim.job_id, claim.attempt, exc)
            error = TransientJobError(f"attempt {claim.attempt}: {client_safe_detail(exc, claim.job_id)}").problem()
            return Attempt(JobStatus.QUEUED, result=_kept_result(exc), error=error,
                           retry_after=backoff_seconds(claim.counted_attempts))
        log.exception("job %s failed unexpectedly", claim.job_id)
        return Attempt(JobStatus.FAILED, result=_kept_result(exc),
                       error=InternalJobError(client_safe_detail(exc, claim.job_id)).problem())


def client_safe_detail(exc: BaseException, job_id: uuid.UUID) -> str:
    """How a job's error names an exception that is not Plant's own: by its type alone.

    Any read key sees a job's error, and a driver's or SQLAlchemy's message holds the
    database's host and port, or a failed statement with its parameters (a Redis or broker
    error, its address). The caller logs the exception whole; the job id finds it there.
    Plant's own errors (``PlantError``) are written for clients and keep their message."""
    return f"{type(exc).__name__} (details in the worker log, job_id={job_id})"
