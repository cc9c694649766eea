"""An audit run's chunks, audited batch by batch with checkpoints, and the leases of the audits
queued behind them.

A chunk is processed in batches; each batch's findings, the chunk's cursor and counters
commit in one transaction, so a chunk retried after a crash resumes at its cursor and
the final result equals a clean run's. Completing a chunk increments the run's
``chunks_done`` in the same transaction; whoever brings it to ``chunks_total`` merges
(:func:`models.audit_close.summarize_run`). Each batch keeps the audits waiting behind it on
the audit queue leased (:func:`keep_waiting_audits_leased`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from models.audit import audit_batch, load_entities
from models.audit_record import AuditRecordInvalid, checkpoint_problem, record_step, sign_checkpoint
from models.audit_runs import AuditParams, insert_findings
from models.audit_tables import AuditChunk, AuditRun
from models.constitution import append_only_enforced, constitution_version
from models.embeddings import Embedder
from models.entities import ENTITY_MODELS, EntityType
from models.errors import NotFound, RunClosed
from models.jobs import Job, JobStatus
from models.signing import KeyRing

@dataclass(frozen=True)
class ChunkStep:
    entities: int
    done: bool
    run_complete: bool


# Advisory locks (the two-key space, apart from the one-key locks of migrations and
# digests): (FINDINGS_LOCK, hashtext(run id)) is held shared by each batch writing a run's
# findings and taken alone by a page of them. Runs that share a hash only wait for each other.
FINDINGS_LOCK = int.from_bytes(b"FIND", "big")
_FINDINGS_LOCK_SQL = "SELECT pg_advisory_xact_lock{mode}(:lock, hashtext(:run))"


def writing_findings(session: Session, run_id: uuid.UUID) -> None:
    """Before a batch draws finding ids: held until it commits, so a page of the run's
    findings waits for it (:func:`batches_in_flight_done`)."""
    session.execute(text(_FINDINGS_LOCK_SQL.format(mode="_shared")), {"lock": FINDINGS_LOCK, "run": str(run_id)})


def batches_in_flight_done(session: Session, run_id: uuid.UUID) -> None:
    """Wait for every batch writing the run's findings to commit; until this transaction
    ends none starts. PostgreSQL queues lock requests in order, so a batch asking after
    this one waits behind it: batches overlapping without a pause cannot starve it."""
    session.execute(text(_FINDINGS_LOCK_SQL.format(mode="")), {"lock": FINDINGS_LOCK, "run": str(run_id)})


def audit_chunk_step(session: Session, *, chunk_id: int, keyring: KeyRing, embedder: Embedder, batch_size: int) -> ChunkStep:
    """Audit the next batch of the chunk and checkpoint it, all in the caller's transaction."""
    chunk = session.execute(select(AuditChunk).where(AuditChunk.id == chunk_id).with_for_update()).scalar_one_or_none()
    if chunk is None:
        raise NotFound(f"no audit chunk {chunk_id}")
    # Key-share: a close (which locks the run FOR UPDATE) waits for this batch to commit, and
    # this batch waits for a close in flight, then sees the run finished (RunClosed, not a
    # finding refused by the trigger).
    run = session.execute(select(AuditRun).where(AuditRun.id == chunk.run_id)
                          .with_for_update(read=True, key_share=True)).scalar_one()
    if run.finished_at is not None:
        raise RunClosed(f"audit run {run.id} was closed before this chunk finished")
    writing_findings(session, run.id)
    forged = checkpoint_problem(session, run, chunk, keyring)
    if forged is not None:  # a cursor moved forward, or a chunk marked done, would skip entities: stop
        raise AuditRecordInvalid(forged)
    if chunk.done:  # a redelivery: whoever finishes the run may have been cut off before it did
        return ChunkStep(0, True, run.chunks_done == run.chunks_total)
    scope = AuditParams.from_json(run.params)
    entity_type = EntityType(chunk.entity_type)
    model = ENTITY_MODELS[entity_type]
    ids = select(model.id).where(model.id >= chunk.low_id, model.id <= chunk.high_id)
    if chunk.cursor is not None:
        ids = ids.where(model.id > chunk.cursor)
    ids = scope.ids_filter(model, ids).order_by(model.id).limit(batch_size)
    entities = load_entities(session, entity_type, ids.scalar_subquery())
    result = audit_batch(session, entities, keyring=keyring, embedder=embedder, signatures=scope.signatures,
                         append_only=append_only_enforced(session))
    step = record_step(session, run, chunk)
    written = insert_findings(session, run.id, result.findings, chunk_id=chunk.id, step=step)
    counters = dict(chunk.counters or {})
    # Entities a release before catalogue versions were recorded checked in this chunk: not known.
    earlier = ["unrecorded"] if counters.get("entities") and "constitution_versions" not in counters else []
    counters["entities"] = counters.get("entities", 0) + result.entities
    counters["versions_verified"] = counters.get("versions_verified", 0) + result.versions_verified
    if result.entities:  # the catalogue their rules were checked against, signed with the checkpoint
        counters["constitution_versions"] = sorted(
            {*counters.get("constitution_versions", earlier), constitution_version()})
    chunk.counters = counters
    if entities:
        chunk.cursor = entities[-1].id
    chunk.updated_at = func.now()
    finished = len(entities) < batch_size
    chunk.done = finished
    sign_checkpoint(run, chunk, keyring, step=step, findings=written)
    run_complete = False
    if finished:
        counted = session.execute(
            update(AuditRun).where(AuditRun.id == run.id, AuditRun.finished_at.is_(None))
            .values(chunks_done=AuditRun.chunks_done + 1).returning(AuditRun.chunks_done, AuditRun.chunks_total)
        ).one_or_none()
        if counted is None:  # closed meanwhile: a finished run takes nothing more (the caller tells why)
            raise RunClosed(f"audit run {run.id} was closed before this chunk finished")
        done, total = counted
        run_complete = done == total
    session.flush()
    return ChunkStep(result.entities, finished, run_complete)


def keep_waiting_audits_leased(session: Session, *, job_id: uuid.UUID, lease_seconds: int) -> int:
    """Renew the lease of every other running audit job published after ``job_id`` (its last
    message: the one its attempt runs), or at the same time, whose run has chunks still to do,
    when it is past half its term; returns how many. Called by each batch of ``job_id``'s chunks.

    Only a running chunk renews its job's lease, and the audit queue is one worker's (deployed:
    ``--concurrency 1``): the chunks of an audit started while another runs wait behind that
    one's, and their lease lapsed while nothing had died, so the recovery sweep took the job for
    a dead worker's, and after its attempts failed it ``worker-lost``. A batch committing on the
    audit queue shows its workers alive, so the audits queued behind it keep their leases.
    Only live leases are renewed (a lapsed one is the sweep's), and rows locked (a batch of that
    job in flight elsewhere, a claim, the sweep) are skipped: nothing here waits. Live as of this
    statement, not ``now()``: that is when the batch's transaction began, and a lease that ran
    out while the batch audited its entities (the sweep may have republished the job since) is
    not renewed. Nor is a run whose chunks the job's current attempt has not published
    (:func:`record_chunks_published`): its worker died after the plan committed and before
    the chunks were on the queue, so no message of it waits anywhere, and only the sweep
    takes it up. A run with no record at all (NULL) was planned by a release before
    migration 0024 (in flight at the upgrade, or planned by an audit worker a rolling rollout
    had not replaced yet), which published its chunks without saying so: it is renewed as
    those releases renewed it, rather than taken for a dead worker's."""
    lease = dt.timedelta(seconds=lease_seconds)
    now = func.statement_timestamp()
    # Only audits whose job was last published after this one's: their attempt's message came
    # after this one's, and so did the chunks it published (first in, first out). One published
    # before it has had its chunks taken from the queue already, so one still running with chunks
    # to do has none left to wait for (its worker was killed before it published them, its chunks
    # ran out of retries): its lease is left to lapse, and the sweep takes it up, however many
    # audits run after it. Not the run's start: an audit handed back at a worker's shutdown, or
    # republished by the sweep, keeps its run but queues its chunks behind the audits begun since.
    # One stamped at the same time as this one is renewed too: a sweep stamps every job it
    # publishes with one now() and publishes them in an order nothing records, so either may be
    # behind the other.
    published = func.coalesce(Job.enqueued_at, Job.created_at)
    own = aliased(Job)
    mine = select(func.coalesce(own.enqueued_at, own.created_at)).where(own.id == job_id).scalar_subquery()
    waiting = (
        select(Job.id)
        .where(Job.kind == "audit.run", Job.status == JobStatus.RUNNING.value, Job.id != job_id,
               Job.cancel_requested_at.is_(None), Job.lease_expires_at > now,
               Job.lease_expires_at < now + lease / 2, published >= mine,
               select(AuditChunk.id).join(AuditRun, AuditRun.id == AuditChunk.run_id)
               .where(AuditRun.job_id == Job.id, AuditRun.finished_at.is_(None),
                      or_(AuditRun.chunks_published_attempt == Job.attempts,
                          AuditRun.chunks_published_attempt.is_(None)),
                      AuditChunk.done.is_(False)).exists())
        .with_for_update(skip_locked=True)
    )
    renewed = session.execute(update(Job).where(Job.id.in_(waiting.scalar_subquery()))
                              .values(lease_expires_at=now + lease).returning(Job.id)).all()
    return len(renewed)


def record_chunks_published(session: Session, *, run_id: uuid.UUID, attempt: int) -> None:
    """Record that job attempt ``attempt`` has put ``run_id``'s pending chunks on the queue
    (:func:`keep_waiting_audits_leased` renews only such runs). An earlier attempt's late
    record never overwrites a later one's."""
    session.execute(update(AuditRun).where(
        AuditRun.id == run_id, AuditRun.finished_at.is_(None),
        func.coalesce(AuditRun.chunks_published_attempt, 0) < attempt).values(chunks_published_attempt=attempt))


def forget_chunks_published(session: Session, *, job_id: uuid.UUID, attempt: int) -> None:
    """A chunk message of ``attempt`` will not come back (its retries are spent): the run no
    longer counts as waiting on the queue, so no other audit keeps its job leased, and once
    its lease lapses the sweep republishes it (its next attempt publishes what is left)."""
    session.execute(update(AuditRun).where(AuditRun.job_id == job_id, AuditRun.finished_at.is_(None),
                                           AuditRun.chunks_published_attempt == attempt)
                    .values(chunks_published_attempt=0))  # not NULL: that is a run an earlier release planned


def pending_chunks(session: Session, run_id: uuid.UUID) -> list[int]:
    return list(session.scalars(select(AuditChunk.id).where(AuditChunk.run_id == run_id, AuditChunk.done.is_(False)).order_by(AuditChunk.chunk_no)))
