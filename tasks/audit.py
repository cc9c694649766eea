"""Tasks of the compliance audit, the ledger digest and scheduled work.

``plant.audit.run`` plans the run (idempotently) and fans its chunks out on the audit
queue; each ``plant.audit.chunk`` works batch by batch, committing findings, its
checkpoint and the parent job's progress together, and the chunk that completes the
run merges it and finishes the job. Completion is counted in PostgreSQL, not with a
Celery chord. A chunk whose job attempt was superseded (the job was rescued after a
crash) stops at once; the new attempt republishes the unfinished chunks.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from models.audit_chunks import (
    audit_chunk_step, forget_chunks_published, keep_waiting_audits_leased, pending_chunks, record_chunks_published,
)
from models.audit_close import close_runs_apart, close_runs_of_ended_jobs, summarize_run
from models.audit_runs import start_run
from models.audit_tables import AuditRun, ScheduledFire
from models.db import transaction
from models.errors import InternalJobError, JobCancelled, LedgerBusy, PlantError, RunClosed, SigningKeySealed, StaleAttempt
from models.job_lifecycle import JobClaim, add_progress, create_job, finish_job
from models.jobs import JobStatus
from models.ledger_store import prune_digest_leaves, store_digest
from models.progress import ProgressSink
from tasks import runtime
from tasks.beat_runs import beat_run
from tasks.celery_app import AUDIT_QUEUE
from tasks.dispatch import publish_or_leave_in_outbox, route_for
from tasks.runner import CONTINUES, backoff_seconds, client_safe_detail, hand_back, is_transient, record_outcome, run_job

CHUNK_TASK = "plant.audit.chunk"
log = logging.getLogger(__name__)


def _start_audit(claim: JobClaim, _: ProgressSink) -> None:
    settings = runtime.settings()
    with transaction(runtime.session_factory()) as session:
        run = start_run(session, job_id=claim.job_id, params=claim.params, keyring=runtime.keyring(),
                        embedder=runtime.embedder(), chunk_entities=settings.audit_chunk_entities)
        cancel = add_progress(session, claim=claim, done=0, total=run.entities_total, message="auditing",
                              lease_seconds=settings.job_lease_seconds)
        chunks = pending_chunks(session, run.id)
        run_id = run.id
    if cancel:  # asked while it was planned: no chunk is worth publishing
        _cancel(claim)
        return CONTINUES
    if not chunks:
        _finish(claim, run_id)
        return CONTINUES
    app = audit_run.app
    for chunk_id in chunks:
        app.send_task(CHUNK_TASK, args=[str(claim.job_id), claim.attempt, chunk_id, claim.handbacks], queue=AUDIT_QUEUE)
    _say_chunks_published(claim, run_id)
    return CONTINUES


def _say_chunks_published(claim: JobClaim, run_id: uuid.UUID) -> None:
    """Now, and only now, messages of this attempt wait on the queue: the audits running ahead
    of them keep this job leased meanwhile (a worker killed before this leaves none). The
    messages are out, so a database error here must not fail the attempt: a retry would start
    another, and the chunks just sent would run as stale. A transient one is tried again a few
    times; then the record is left out, with a warning: no other audit keeps the job leased
    while its chunks wait, and should they wait past its lease, the sweep republishes them."""
    retrying = Retrying(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.2, max=2),
                        retry=retry_if_exception(is_transient), reraise=True)
    try:
        for trying in retrying:
            with trying, transaction(runtime.session_factory()) as session:
                record_chunks_published(session, run_id=run_id, attempt=claim.attempt)
    except Exception:  # noqa: BLE001 - logged; the chunks run all the same
        log.warning("audit job %s: its chunks are on the queue, but recording so failed; no other audit keeps it "
                    "leased while they wait", claim.job_id, exc_info=True)


@shared_task(name="plant.audit.run", bind=True)
def audit_run(self: Task, job_id: str) -> dict[str, Any]:
    return run_job(self, job_id, _start_audit)


@shared_task(name=CHUNK_TASK, bind=True)
def audit_chunk(self: Task, job_id: str, attempt: int, chunk_id: int, handbacks: int = 0) -> dict[str, Any]:
    """Audit one chunk from its checkpoint to its end; the chunk that completes the run ends
    the job. A transient error (a database or broker connection lost), or the soft time
    limit, asks Celery to send this message again after a backoff, to resume from the last
    checkpoint (a redelivered chunk that is done still finishes the run if that was cut off);
    any other error fails the job with it, rather than leaving the run to wait for the job's
    lease to lapse. Should the message not come back (the broker down too, or the retries
    spent), the lease lapses and beat's sweep resumes the job."""
    # handbacks: the job's at its claim (messages sent before it was passed carry none)
    claim = JobClaim(uuid.UUID(job_id), "audit.run", {}, attempt, handbacks)
    settings = runtime.settings()
    try:
        return _audit_chunk(claim, chunk_id, settings.audit_batch_size, settings.job_lease_seconds)
    except StaleAttempt:
        # Its job ended under it (a cancel through the API, say), whose close of the run may
        # have skipped it while this batch held it: close it now, waiting for any sibling's.
        close_runs_apart(runtime.session_factory(), keyring=runtime.keyring(), job_id=claim.job_id, wait=True)
        return {"chunk": chunk_id, "skipped": "superseded attempt"}
    except RunClosed as closed:
        return _run_closed(claim, chunk_id, closed, settings.job_lease_seconds)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the row or come back
        if is_transient(exc) or isinstance(exc, SoftTimeLimitExceeded):  # checkpointed: resume where it stopped
            log.warning("audit chunk %s of job %s hit a transient error: %s", chunk_id, job_id, exc)
            if isinstance(exc, SigningKeySealed):  # its message comes back to a worker restarted on the active key
                runtime.restart_worker_on_the_active_key()
            if self.request.retries >= settings.job_max_attempts:  # Celery raises exc: this message is gone
                _no_message_left(claim, chunk_id)
            raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries),
                             max_retries=settings.job_max_attempts) from exc
        log.exception("audit chunk %s of job %s failed", chunk_id, job_id)
        error = exc if isinstance(exc, PlantError) else InternalJobError(f"chunk {chunk_id}: {client_safe_detail(exc, claim.job_id)}")
        outcome = record_outcome(claim, JobStatus.FAILED, None, error.problem())
        close_runs_apart(runtime.session_factory(), keyring=runtime.keyring(), job_id=claim.job_id)  # the run ends with its job
        return {"chunk": chunk_id, **outcome}


def _no_message_left(claim: JobClaim, chunk_id: int) -> None:
    """Say so in the run (:func:`forget_chunks_published`), if the database answers: the
    error that spent the retries may be its own, and then the lease lapses all the same once
    nothing commits on the audit queue."""
    try:
        with transaction(runtime.session_factory()) as session:
            forget_chunks_published(session, job_id=claim.job_id, attempt=claim.attempt)
    except Exception:  # noqa: BLE001 - logged; the chunk's own error is the one raised
        log.warning("audit chunk %s of job %s: could not record that its message is gone", chunk_id, claim.job_id,
                    exc_info=True)


def _run_closed(claim: JobClaim, chunk_id: int, closed: RunClosed, lease_seconds: int) -> dict[str, Any]:
    """The chunk found its run finished. When its job ended meanwhile (a cancel, a failure,
    a sibling's close), the run ended with it: this attempt is stale and lets go quietly.
    When the job is still this attempt's, someone closed the run outside it: the job fails,
    saying so, rather than finishing on a summary Plant did not write."""
    try:
        with transaction(runtime.session_factory()) as session:
            add_progress(session, claim=claim, done=0, total=None, message="auditing", lease_seconds=lease_seconds)
    except StaleAttempt:
        return {"chunk": chunk_id, "skipped": "superseded attempt"}
    log.error("audit chunk %s of job %s: %s", chunk_id, claim.job_id, closed)
    return {"chunk": chunk_id, **record_outcome(claim, JobStatus.FAILED, None, closed.problem())}


def _audit_chunk(claim: JobClaim, chunk_id: int, batch_size: int, lease_seconds: int) -> dict[str, Any]:
    while True:
        with transaction(runtime.session_factory()) as session:
            step = audit_chunk_step(session, chunk_id=chunk_id, keyring=runtime.keyring(), embedder=runtime.embedder(),
                                    batch_size=batch_size)
            cancel = add_progress(session, claim=claim, done=step.entities, total=None, message="auditing",
                                  lease_seconds=lease_seconds)
            keep_waiting_audits_leased(session, job_id=claim.job_id, lease_seconds=lease_seconds)
        if cancel:
            _cancel(claim)
            return {"chunk": chunk_id, "cancelled": True}
        if step.done:
            break
        if runtime.shutdown_requested.is_set():
            # Checkpointed: the job goes back to the queue (a hand-back, not a failure), and
            # its next attempt republishes the unfinished chunks, which resume here. The other
            # chunks of this attempt then find it superseded.
            handed = hand_back(audit_run, claim, f"attempt {claim.attempt} stopped at a chunk checkpoint for a worker shutdown")
            return {"chunk": chunk_id, "stopped": "worker shutdown", **handed}
    if step.run_complete:
        with transaction(runtime.session_factory()) as session:
            run_id = session.scalar(_run_id_of(claim.job_id))
        _finish(claim, run_id)
    return {"chunk": chunk_id, "done": True}


def _run_id_of(job_id: uuid.UUID) -> Any:
    return select(AuditRun.id).where(AuditRun.job_id == job_id)


def _finish(claim: JobClaim, run_id: uuid.UUID) -> None:
    with transaction(runtime.session_factory()) as session:
        summary = summarize_run(session, run_id=run_id, keyring=runtime.keyring())
        finish_job(session, claim=claim, status=JobStatus.SUCCEEDED, result=summary)


def _cancel(claim: JobClaim) -> None:
    try:
        with transaction(runtime.session_factory()) as session:
            # The job first: its row lock waits for a sibling chunk's batch that already passed
            # its checkpoint, so the summary counts that batch's findings too. Then the run, as
            # any ended job's is closed: not waiting for one a sibling holds while finishing its
            # chunk (it waits for the job row: that would deadlock).
            finish_job(session, claim=claim, status=JobStatus.CANCELLED, error=JobCancelled("cancelled on request").problem())
            closed = close_runs_of_ended_jobs(session, keyring=runtime.keyring(), job_id=claim.job_id)
    except StaleAttempt:
        return  # another chunk recorded the cancellation first
    if not closed:  # the job row is free now: that sibling finds its job ended, and lets go
        with transaction(runtime.session_factory()) as session:
            close_runs_of_ended_jobs(session, keyring=runtime.keyring(), job_id=claim.job_id, wait=True)


DIGEST_ENTRY = "ledger-digest"  # beat's schedule entry (worker.schedule)


@shared_task(name="plant.ledger.store_digest", bind=True)
def ledger_store_digest(self: Task, scheduled: bool = False) -> dict[str, Any]:
    """Beat's hourly digest; then the leaf rows of digests no check reads any more go. Its
    result counts the heads it held back (they do not verify) and names the first ten, and
    names the signed digests it passed over for an older base (their rows changed since), and
    says why it pruned nothing when it could not read which digests to keep (``prune_skipped``).
    A digest that finds no moment without a version write in flight (``LedgerBusy``, after
    ``DIGEST_WAIT_SECONDS``) is tried again later, with backoff, up to ``job_max_attempts``
    times. A ``scheduled`` copy (beat's, or its retry) that finds another digest run started or
    completed within a tenth of an interval returns at once: copies pile up behind busy workers,
    and beat's carry no expiry (:func:`tasks.beat_runs.beat_run`); one sent otherwise always runs."""
    with beat_run(DIGEST_ENTRY, runtime.settings().digest_interval_seconds, scheduled=scheduled) as due:
        if not due:
            return {"skipped": "a digest ran within a tenth of an interval"}
        return _store_digest(self)


def _store_digest(task: Task) -> dict[str, Any]:
    held_back: list[str] = []
    passed_over: list[str] = []
    try:
        with transaction(runtime.session_factory()) as session:
            digest = store_digest(session, keyring=runtime.keyring(), held_back=held_back, passed_over=passed_over)
            stored = {"digest_id": digest.id, "entity_count": digest.entity_count, "heads_held_back": len(held_back),
                      "held_back": held_back[:10], "bases_passed_over": passed_over[:10]}
    except LedgerBusy as busy:
        log.warning("the ledger digest is put off: %s", busy.detail)
        raise task.retry(exc=busy, countdown=backoff_seconds(task.request.retries),
                         max_retries=runtime.settings().job_max_attempts) from busy
    unpruned: list[str] = []
    with transaction(runtime.session_factory()) as session:
        pruned = prune_digest_leaves(session, keyring=runtime.keyring(), keep_latest=runtime.settings().digest_leaves_kept,
                                     unpruned=unpruned)
    return {**stored, "leaf_rows_pruned": pruned, **({"prune_skipped": unpruned[0]} if unpruned else {})}


@dataclass(frozen=True)
class ScheduledJob:
    """A job beat starts on the interval's boundaries (``worker.schedule.on_boundaries``)."""

    schedule: str
    kind: str
    params: dict[str, Any]


FULL_AUDIT = ScheduledJob("full-audit", "audit.run", {"verify_signatures": "heads"})


@shared_task(name="plant.schedule.fire", bind=True)
def schedule_fire(self, schedule: str, kind: str, params: dict[str, Any], interval_seconds: float,  # noqa: ANN001
                  sent_at: float | None = None) -> dict[str, Any]:
    """Start one job per (schedule, tick slot), however many beats sent this tick. The slot is
    the tick beat sent it for (``sent_at``, beat's clock as it sent: ``worker.schedule``),
    however long the fire waited behind other work; a message from a beat of an earlier
    release, which sends no time, is placed by this worker's clock."""
    if sent_at is not None:
        slot = fire_slot(sent_at, interval_seconds, skew_seconds=0.0)
    else:
        slot = fire_slot(dt.datetime.now(dt.UTC).timestamp(), interval_seconds)
    return fire(self.app, runtime.session_factory(), ScheduledJob(schedule, kind, params), slot)


def fire(app: Any, sessions: sessionmaker[Session], job: ScheduledJob, slot: dt.datetime) -> dict[str, Any]:
    """Claim ``slot`` for ``job``'s schedule in ``scheduled_fires`` and start the job, in one
    transaction, then publish it; a slot claimed already starts nothing."""
    with transaction(sessions) as session:
        inserted = session.execute(
            pg_insert(ScheduledFire).values(schedule=job.schedule, fire_at=slot).on_conflict_do_nothing()
            .returning(ScheduledFire.schedule)
        ).first()
        if inserted is None:
            return {"schedule": job.schedule, "fire_at": slot.isoformat(), "skipped": "already fired"}
        created = create_job(session, kind=job.kind, params=job.params, queue=_queue_of(job.kind), to_publish=True,
                             requested_by=f"beat:{job.schedule}")
        session.execute(update(ScheduledFire).where(
            ScheduledFire.schedule == job.schedule, ScheduledFire.fire_at == slot).values(job_id=created.id))
        job_id = created.id
    publish_or_leave_in_outbox(app, sessions, job_id=job_id, kind=job.kind)
    return {"schedule": job.schedule, "fire_at": slot.isoformat(), "job_id": str(job_id)}


# How long after its tick a slot may stay unclaimed before the recovery sweep fires it.
OVERDUE_TICK_SECONDS = 600.0


def fire_overdue_tick(app: Any, sessions: sessionmaker[Session], job: ScheduledJob, interval_seconds: float) -> bool:
    """Fire ``job``'s current tick if beat's fire never claimed it: beat advances an entry
    before it sends it, so a tick whose message could not be published (Redis down at that
    moment) or was lost is never sent again, and a fire run on a clock lagging beat's by more
    than a minute claims the slot before. The tick counts as overdue ``OVERDUE_TICK_SECONDS``
    (at most half an interval) after it, by the database's clock; it is fired only if the
    tick before it was (a schedule never fired, a fresh deployment say, or one beat had
    stopped firing, is left to beat, which sends a missed tick itself when it is back).
    Returns whether it started the job."""
    with transaction(sessions) as session:
        now = session.scalar(select(func.now())).timestamp()
        slot = fire_slot(now, interval_seconds, skew_seconds=0.0)
        if now - slot.timestamp() < min(OVERDUE_TICK_SECONDS, interval_seconds / 2):
            return False
        latest = session.scalar(select(func.max(ScheduledFire.fire_at)).where(
            ScheduledFire.schedule == job.schedule, ScheduledFire.fire_at >= slot - dt.timedelta(seconds=interval_seconds)))
    if latest is None or latest >= slot:
        return False
    log.warning("beat's %s tick at %s was never fired; the recovery sweep fires it", job.schedule, slot.isoformat())
    return "job_id" in fire(app, sessions, job, slot)


# How far behind beat's clock a worker's may run and still name the right tick.
FIRE_CLOCK_SKEW_SECONDS = 60.0


def fire_slot(moment: float, interval_seconds: float, *, skew_seconds: float = FIRE_CLOCK_SKEW_SECONDS) -> dt.datetime:
    """The tick a fire at ``moment`` (epoch seconds) belongs to. Beat ticks on the interval's
    multiples (``worker.schedule.on_boundaries``), so it is the last multiple at or before
    ``moment``, give or take a clock up to ``skew_seconds`` (at most half an interval) behind
    beat's: none for beat's own time of sending; a minute for a worker's clock, where a fire
    that beat sent late after a restart still names its own tick. A fire placed by a worker's
    clock that waited most of an interval behind busy workers names the next one (beat's
    messages carry their time of sending for that reason)."""
    margin = min(skew_seconds, interval_seconds / 2)
    return dt.datetime.fromtimestamp(math.floor((moment + margin) / interval_seconds) * interval_seconds, dt.UTC)


def _queue_of(kind: str) -> str:
    return route_for(kind).queue

