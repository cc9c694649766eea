"""Audit runs: plan chunks, audit them batch by batch with checkpoints, merge the result.

A run's scope is split per entity type into id ranges sized for one worker each. A
chunk is processed in batches; each batch's findings, the chunk's cursor and counters
commit in one transaction, so a chunk retried after a crash resumes at its cursor and
the final result equals a clean run's. Completing a chunk increments the run's
``chunks_done`` in the same transaction; whoever brings it to ``chunks_total`` merges.
Run-level digest findings (``against_digest``) are written when the run is planned, only
for entities in the run's scope. Every summary keeps ``total_entities = compliant +
non_compliant`` and states its ``coverage``: what was read and what was taken on trust,
and its ``constitution_versions``: the rule catalogue(s) its chunks checked against (runs
closed before Plant recorded them have none). A run whose job ended some other way (failed, or cancelled, with no chunk left to close it)
is closed by :func:`close_runs_of_ended_jobs` with the job's status.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, false, func, insert, not_, or_, select, text, true, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from models.audit import (
    FAILING_SEVERITIES, ROW_MISSING, FindingRow, audit_batch, finding_from_chain, load_entities, rowless_chains,
)
from models.audit_findings import all_findings, id_spans
from models.audit_record import (
    RECORD_INVALID_CODE, AuditRecordInvalid, check_findings, checkpoint_problem, plan_problem, record_step,
    sign_checkpoint, sign_close, sign_plan, signed_repairs,
)
from models.audit_tables import AuditChunk, AuditFinding, AuditRun
from models.canonical import canonical_bytes
from models.chain import EntityVersion
from models.constitution import append_only_enforced, constitution_version
from models.db import bigint_in, transaction, uuid_in
from models.db_roles import GUARD_LIFTER_SQL, PLANT_SCHEMA_SQL, lifter_params, lifts_guards_because
from models.embeddings import Embedder
from models.entities import ENTITY_MODELS, EntityType
from models.errors import CanonicalizationError, InvalidInput, NotFound, RunClosed
from models.incremental_audit import audit_since_latest_digest
from models.jobs import Job, JobStatus
from models.key_seals import SEAL_INVALID_CODE, seal_problems
from models.ledger import compare_heads, root_as_of, signed_after_seal
from models.ledger_digest import digest_problem
from models.repair import record_sha256, settle_repairs, verified_repairs
from models.signing import KeyRing

MAX_UUID = (1 << 128) - 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditParams:
    entity_type: str | None = None
    entity_ids: tuple[str, ...] | None = None
    signatures: str = "heads"
    against_digest: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, params: dict[str, Any]) -> AuditParams:
        """The parameters as stored. No ids, absent or an empty list, means every entity of
        the scope's type: runs stored with ``[]`` before :func:`validate_params` refused it
        audited every one, and their records (plan, repairs listed in every export) say so."""
        params = params if isinstance(params, dict) else {}  # a run's row edited through SQL: its plan check says so
        scope = params.get("scope") or {}
        ids = scope.get("entity_ids")
        return cls(scope.get("entity_type"), tuple(ids) if ids else None,
                   params.get("verify_signatures") or "heads", params.get("against_digest"))

    def types(self) -> list[EntityType]:
        return [EntityType(self.entity_type)] if self.entity_type else list(EntityType)

    def ids_filter(self, model: Any, query: Any) -> Any:
        # One array parameter: IN would send one per id, and PostgreSQL takes at most 65,535.
        return query.where(uuid_in(model.id, [uuid.UUID(i) for i in self.entity_ids])) if self.entity_ids else query

    def scoped(self, session: Session, findings: list[FindingRow]) -> list[FindingRow]:
        """``findings`` about entities in scope, and run-level ones (no entity).

        A digest's leaves cover the whole registry; a scoped run must neither report nor
        count the entities it was not asked about. A deleted entity's type is not in the
        digest: it is read from its versions, and kept when unknown.
        """
        if self.entity_type is None and not self.entity_ids:
            return findings
        ids = {uuid.UUID(i) for i in self.entity_ids} if self.entity_ids else None
        untyped = [f.entity_id for f in findings if f.entity_id is not None and f.entity_type is None]
        types = dict(session.execute(select(EntityVersion.entity_id, EntityVersion.entity_type).where(
            uuid_in(EntityVersion.entity_id, untyped)).distinct()).all()) if untyped and self.entity_type else {}

        def in_scope(f: FindingRow) -> bool:
            if f.entity_id is None:
                return True
            if ids is not None and f.entity_id not in ids:
                return False
            kind = f.entity_type or types.get(f.entity_id)
            return self.entity_type is None or kind in (None, self.entity_type)

        return [f for f in findings if in_scope(f)]

    def coverage(self) -> dict[str, Any]:
        """A full (possibly scoped) run reads every row and every version in its scope."""
        return {
            "mode": "full",
            "scope": {"entity_type": self.entity_type, "entity_ids": len(self.entity_ids) if self.entity_ids else None},
            "rows": "every row in scope compared with its head version; a chain in scope whose row is gone reported",
            "versions": "every version of every row in scope re-hashed and re-linked",
            "signatures": "every version's" if self.signatures == "all" else "each head version's",
            "certifications": "each certified skill in scope put through the duplicate gate again, from the signed "
                              "texts, and its stored embedding compared with its text's",
        }


def start_run(session: Session, *, job_id: uuid.UUID, params: dict[str, Any], keyring: KeyRing, embedder: Embedder,
              chunk_entities: int) -> AuditRun:
    """Create the run, its chunks and its digest findings once; a retry gets the same run."""
    existing = session.scalar(select(AuditRun).where(AuditRun.job_id == job_id))
    if existing is not None:
        return existing
    validate_params(params)
    scope = AuditParams.from_json(params)
    settle_repairs(session)  # a restore in flight commits first: the plan names the repairs the run lists
    run = AuditRun(job_id=job_id, params=params, chunks_published_attempt=0)  # no chunk published yet
    session.add(run)
    session.flush()
    _insert(session, run.id, [FindingRow(None, None, None, SEAL_INVALID_CODE, problem) for problem in seal_problems(session, keyring)])
    repairs = plan_repairs(session, run, keyring)
    if params.get("since") == "latest-digest":
        return _incremental(session, run, keyring, embedder, repairs)
    chunks: list[AuditChunk] = []
    for entity_type in scope.types():
        model = ENTITY_MODELS[entity_type]
        count = session.scalar(scope.ids_filter(model, select(func.count()).select_from(model))) or 0
        run.entities_total += count
        parts = max(1, math.ceil(count / chunk_entities))
        for low, high in id_ranges(parts):
            chunks.append(AuditChunk(run_id=run.id, chunk_no=len(chunks), entity_type=entity_type.value, low_id=low, high_id=high))
    session.add_all(chunks)
    run.chunks_total = len(chunks)
    if scope.against_digest is not None:
        _insert(session, run.id, scope.scoped(session, digest_findings(session, scope.against_digest, keyring)))
    _insert(session, run.id, scope.scoped(session, rowless_chains(session)))
    sign_plan(session, run, chunks, keyring, repairs=repairs)
    session.flush()
    return run


def plan_repairs(session: Session, run: AuditRun, keyring: KeyRing) -> list[dict[str, str]]:
    """The repair records a new run's report lists, as its plan names them (id and
    :func:`models.repair.record_sha256`): :func:`scope_repairs`."""
    session.refresh(run, ["created_at"])
    return [{"id": record["id"], "sha256": record_sha256(record)} for record in scope_repairs(session, run, keyring)]


def scope_repairs(session: Session, run: AuditRun, keyring: KeyRing) -> list[dict[str, Any]]:
    """The repair records of entities in ``run``'s scope, made before it started, whose own
    signature verifies (:func:`models.repair.verified_repairs`)."""
    scope = AuditParams.from_json(run.params or {})
    ids = [uuid.UUID(i) for i in scope.entity_ids] if scope.entity_ids else None
    return verified_repairs(session, entity_type=scope.entity_type, entity_ids=ids, before=run.created_at, keyring=keyring)


def _incremental(session: Session, run: AuditRun, keyring: KeyRing, embedder: Embedder,
                 repairs: list[dict[str, str]]) -> AuditRun:
    """Run the incremental audit inline and record it as one finished chunk."""
    result = audit_since_latest_digest(session, keyring=keyring, embedder=embedder)
    _insert(session, run.id, result.findings)
    chunk = AuditChunk(
        run_id=run.id, chunk_no=0, entity_type="incremental", low_id=uuid.UUID(int=0), high_id=uuid.UUID(int=MAX_UUID),
        done=True, counters={"entities": result.entities, "versions_verified": result.versions_verified,
                             "since_digest": result.digest_id, "coverage": result.coverage(),
                             "constitution_versions": [constitution_version()] if result.entities else []},
    )
    session.add(chunk)
    run.entities_total = result.entities
    run.chunks_total = run.chunks_done = 1
    sign_plan(session, run, [chunk], keyring, repairs=repairs)
    session.flush()
    return run


def id_ranges(parts: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """``parts`` contiguous inclusive ranges covering the whole UUID space."""
    step = (MAX_UUID + 1) // parts
    bounds = [i * step for i in range(parts)] + [MAX_UUID + 1]
    return [(uuid.UUID(int=bounds[i]), uuid.UUID(int=bounds[i + 1] - 1)) for i in range(parts)]


def digest_findings(session: Session, digest: dict[str, Any], keyring: KeyRing) -> list[FindingRow]:
    """Compare the registry with a digest kept outside Plant (leaves optional)."""
    problem = digest_problem(digest, keyring)
    if problem is not None:
        return [FindingRow(None, None, None, "digest-invalid", f"against_digest cannot be trusted: {problem}")]
    as_of = dt.datetime.fromisoformat(digest["as_of"].replace("Z", "+00:00"))
    after_seal = signed_after_seal(keyring, digest["kid"], as_of)
    if after_seal is not None:
        return [FindingRow(None, None, None, "digest-invalid", f"against_digest cannot be trusted: {after_seal}")]
    if "leaves" in digest:
        leaves = [(uuid.UUID(leaf["entity_id"]), leaf.get("version"), bytes.fromhex(leaf["head"])) for leaf in digest["leaves"]]
        return [finding_from_chain(h.entity_type, h.entity_id, h.finding) for h in compare_heads(session, leaves)]
    count, root = root_as_of(session, as_of)
    if root.hex() == digest["heads_root"] and count == digest["entity_count"]:
        return []
    return [FindingRow(None, None, None, "ledger-root-mismatch",
                       f"heads as of {digest['as_of']} hash to {root.hex()}, the digest says {digest['heads_root']}")]


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
    written = _insert(session, run.id, result.findings, chunk_id=chunk.id, step=step)
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


def _insert(session: Session, run_id: uuid.UUID, findings: list[FindingRow], *, chunk_id: int | None = None,
            step: int | None = None) -> list[AuditFinding]:
    """Write ``findings`` (by a chunk's checkpoint ``step``, or by the run's start or close)
    and return them as stored, for the signature that covers them."""
    if not findings:
        return []
    return list(session.scalars(insert(AuditFinding).returning(AuditFinding, sort_by_parameter_order=True), [
        {"run_id": run_id, "entity_type": f.entity_type, "entity_id": f.entity_id, "version": f.version, "code": f.code,
         "severity": f.severity, "rule_id": f.rule_id, "detail": f.detail, "chunk_id": chunk_id, "step": step}
        for f in findings
    ]))


def pending_chunks(session: Session, run_id: uuid.UUID) -> list[int]:
    return list(session.scalars(select(AuditChunk.id).where(AuditChunk.run_id == run_id, AuditChunk.done.is_(False)).order_by(AuditChunk.chunk_no)))


def summarize_run(session: Session, *, run_id: uuid.UUID, keyring: KeyRing, status: str = "succeeded",
                  finished_at: dt.datetime | None = None) -> dict[str, Any]:
    """Merge chunk counters and findings into the run summary and close the run (at
    ``finished_at``, by default now), signed (:mod:`models.audit_record`). A run closes
    once: one already finished raises :class:`RunClosed` (the database refuses to change
    it). A plan or checkpoint that is not what Plant signed becomes a run-level
    ``audit-record-invalid`` finding first, so the summary counts it."""
    # FOR UPDATE: a batch or a finding INSERT in flight (each key-shares the run) commits
    # first and is counted; one that comes later waits, then finds the run closed.
    run = session.execute(select(AuditRun).where(AuditRun.id == run_id).with_for_update()
                          .execution_options(populate_existing=True)).scalar_one()
    if run.finished_at is not None:
        raise RunClosed(f"audit run {run_id} was already closed")
    # Read once: everything below is counted from these rows as checked, never read again.
    chunks = list(session.scalars(select(AuditChunk).where(AuditChunk.run_id == run_id)))
    plan = plan_problem(run, chunks, keyring)
    forged = {c.id: problem for c in chunks if (problem := checkpoint_problem(session, run, c, keyring)) is not None}
    # Findings no signature covers (INSERTed through SQL) are left out of the counts; a chunk
    # whose findings are not those its checkpoint signed counts as nothing audited.
    findings = all_findings(session, run_id)  # all of them: the run is held FOR UPDATE, and no finding comes in
    written = check_findings(run, findings, [c for c in chunks if c.id not in forged], plan_verifies=plan is None)
    forged.update(written.chunks)
    counted = [c for c in chunks if c.id not in forged]  # a forged checkpoint counts as nothing audited
    stopped_early = len(counted) < len(chunks) or any(not c.done for c in counted)
    problems = [*([plan] if plan else []), *forged.values(), *written.problems]
    set_aside = plan is not None and not _signable(run.params)
    if set_aside:  # kept, they would stop the close (and every export) for good
        problems.append(f"audit run {run_id}: its parameters hold values Plant never writes; they were set aside")
        run.params = {}
    if status == "succeeded" and stopped_early:  # its chunk count was moved on, outside Plant
        problems.append(f"audit run {run_id} was closed as succeeded with chunks not done")
    findings += _insert(session, run_id, [FindingRow(None, None, None, RECORD_INVALID_CODE, problem) for problem in problems])
    total = sum((c.counters or {}).get("entities", 0) for c in counted)
    counts = AuditFinding.run_id == run_id
    if written.left_out:
        counts = and_(counts, not_(bigint_in(AuditFinding.id, written.left_out)))
    failing = (
        select(func.count(func.distinct(AuditFinding.entity_id)))
        .where(counts, AuditFinding.severity.in_(FAILING_SEVERITIES),
               AuditFinding.entity_id.is_not(None), AuditFinding.code != "entity-deleted")
    )
    # Chains whose row is gone (found at the start) are entities of the scope too: none is in a chunk's count.
    rowless = select(func.count(func.distinct(AuditFinding.entity_id))).where(counts, AuditFinding.code == ROW_MISSING)
    # Audited entities with any finding (warnings too): the report page's "clean" is total less these.
    flagged = select(func.count(func.distinct(AuditFinding.entity_id))).where(
        counts, AuditFinding.entity_id.is_not(None), AuditFinding.code != "entity-deleted")
    in_scope = run.entities_total  # the plan counted rows: a stopped run's text adds the rowless chains found
    if stopped_early:  # count only what it audited: the digest's findings cover entities it never reached
        in_scope += session.scalar(rowless) or 0
        failing, rowless, flagged = (query.where(_audited_by(counted)) for query in (failing, rowless, flagged))
    total += session.scalar(rowless) or 0
    non_compliant = session.scalar(failing) or 0
    by_code = dict(session.execute(select(AuditFinding.code, func.count()).where(counts).group_by(AuditFinding.code)).all())
    by_rule = dict(session.execute(select(AuditFinding.rule_id, func.count()).where(counts, AuditFinding.rule_id.is_not(None)).group_by(AuditFinding.rule_id)).all())
    finished_at = finished_at or session.scalar(select(func.now()))
    summary = {
        "run_id": str(run_id),
        "total_entities": total,
        "compliant": total - non_compliant,
        "non_compliant": non_compliant,
        "entities_with_findings": session.scalar(flagged) or 0,
        "versions_verified": sum((c.counters or {}).get("versions_verified", 0) for c in counted),
        "findings": sum(by_code.values()),
        "by_code": dict(sorted(by_code.items())),
        "by_rule": dict(sorted(by_rule.items())),
        "constitution_versions": _rules_checked(counted),
        "run_level_findings": [c for c in by_code if c in RUN_LEVEL_CODES],
        "duration_seconds": round((finished_at - run.created_at).total_seconds(), 3),
        **_what_was_checked(run, counted),
        "database_role": database_role(session),
    }
    if written.left_out:  # listed in the report, counted nowhere
        summary["findings_left_out"] = {"count": len(written.left_out), "ids": id_spans(written.left_out)}
    if set_aside:  # what the run read is known only from parameters that are gone
        summary["signatures"] = "unknown"
        summary["coverage"] = {"unknown": "the run's parameters were not those Plant signed, and were set aside: "
                                          "what it read cannot be told"}
    if stopped_early:
        summary["coverage"] = {**summary["coverage"], "stopped": (
            f"the run ended {status} after auditing {total} of the {in_scope} entities in its scope; "
            "what coverage says was read, it read for those alone, and the counts cover those alone")}
    run.summary, run.status, run.finished_at = summary, status, finished_at
    with session.no_autoflush:  # the close is one UPDATE, signature included (0014 refuses a second)
        sign_close(run, findings, keyring, repairs=signed_repairs(run.plan_signed) if plan is None else None)
    session.flush()
    return summary


def database_role(session: Session) -> dict[str, Any]:
    """The role the run's close connected as, and whether it could lift or get around the
    append-only guards (README, "The database roles"; ``models/db_roles.py``): signed into
    every run's summary, so a report says whether the deployment it came from ran as a role
    that cannot. The login (``session_user``) is what is judged, and the role it acts as
    (``current_user``) too where they differ: a login may ``SET ROLE`` back to itself."""
    login, acting = session.execute(text("SELECT session_user, current_user")).one()
    schema = session.scalar(text(PLANT_SCHEMA_SQL))
    why = next(filter(None, (
        lifts_guards_because(session.connection().exec_driver_sql(GUARD_LIFTER_SQL, lifter_params(role, schema)).one(), schema)
        for role in dict.fromkeys((login, acting)))), None)
    return {"name": login, **({"acting_as": acting} if acting != login else {}),
            "can_lift_guards": why is not None, **({"why": why} if why else {})}


def _signable(params: Any) -> bool:
    """Whether ``params`` can be reported and signed: an object, canonical JSON, its scope's
    ids all UUIDs (what Plant's own writes hold)."""
    if not isinstance(params, dict):
        return False
    try:
        canonical_bytes(params)
        scope = AuditParams.from_json(params)
        for entity_id in scope.entity_ids or ():
            uuid.UUID(entity_id)
        if scope.entity_type is not None:
            EntityType(scope.entity_type)
    except (ValueError, TypeError, AttributeError, CanonicalizationError):
        return False
    return True


def _audited_by(chunks: list[AuditChunk]) -> Any:
    """The finding's entity lies in one of ``chunks`` that is done, or at or before that
    chunk's checkpoint: what their ``entities`` counters count. Built from the rows as
    checked, so a checkpoint changed after the check cannot change the count."""
    return or_(false(), *(
        and_(AuditFinding.entity_type == c.entity_type, AuditFinding.entity_id.between(c.low_id, c.high_id),
             true() if c.done else AuditFinding.entity_id <= c.cursor if c.cursor is not None else false())
        for c in chunks
    ))


ENDED_WITHOUT_ITS_RUN = (JobStatus.FAILED.value, JobStatus.CANCELLED.value)


def close_runs_of_ended_jobs(session: Session, *, keyring: KeyRing, job_id: uuid.UUID | None = None, limit: int = 20,
                             wait: bool = False) -> int:
    """Close every run still ``running`` whose job has ended failed or cancelled (of one job,
    with ``job_id``): it takes the job's status and end time, and a summary of what was
    audited before it stopped. The audit closes its own run when it succeeds or stops for a
    cancel; this covers every other end: a chunk's error, the sweep failing a job whose
    worker died on its last attempt, a cancel that found the lease lapsed, a cancel while
    queued between attempts. A run another transaction holds is left for the next call,
    unless ``wait`` (only for a caller that holds no job row: the holder may be waiting for
    one). A chunk's batch in flight holds it (the batch key-shares the run, and a close locks
    it FOR UPDATE, so that no finding comes in behind the close): it is left for the next
    call, or with ``wait`` waited for; a chunk whose job has ended commits none. A run that
    cannot be closed (its close raises) is logged and left, each close in a savepoint of its
    own. Returns how many runs it closed."""
    ended = (
        # The job's end, but never before the run began nor after now: the jobs table takes any UPDATE.
        select(AuditRun.id, Job.status,
               func.least(func.greatest(func.coalesce(Job.finished_at, func.now()), AuditRun.created_at), func.now()))
        .join(Job, Job.id == AuditRun.job_id)
        .where(AuditRun.status == "running", AuditRun.finished_at.is_(None), Job.status.in_(ENDED_WITHOUT_ITS_RUN))
        .order_by(AuditRun.created_at).limit(limit).with_for_update(of=AuditRun, skip_locked=not wait)
    )
    if job_id is not None:
        ended = ended.where(AuditRun.job_id == job_id)
    closed = 0
    for run_id, status, finished_at in session.execute(ended).all():
        try:  # one run that cannot be closed must not hold up the others, nor what ended its job
            with session.begin_nested():
                summarize_run(session, run_id=run_id, keyring=keyring, status=status, finished_at=finished_at)
            closed += 1
        except Exception:  # noqa: BLE001 - logged; the next recovery pass tries it again
            log.warning("could not close audit run %s of an ended job; the next recovery pass will try again", run_id,
                        exc_info=True)
    return closed


def close_runs_apart(sessions: sessionmaker[Session], *, keyring: KeyRing, job_id: uuid.UUID | None = None,
                     wait: bool = False) -> int:
    """:func:`close_runs_of_ended_jobs` in a transaction of its own, once what ended the job
    has committed: closing a big run takes a while and may fail (a statement timeout, say),
    and neither may hold up or undo a cancel or a recovery pass. A failure is logged; beat's
    next recovery pass tries again."""
    try:
        with transaction(sessions) as session:
            return close_runs_of_ended_jobs(session, keyring=keyring, job_id=job_id, wait=wait)
    except Exception:  # noqa: BLE001 - the job's end is committed; the next pass closes the run
        log.warning("could not close the audit runs of ended jobs (job %s); the next recovery pass will",
                    job_id or "any", exc_info=True)
        return 0


def _rules_checked(chunks: list[AuditChunk]) -> list[str]:
    """The versions of the rule catalogue (:func:`models.constitution.constitution_version`)
    that ``chunks`` checked their entities against, as their signed checkpoints name them:
    one, unless workers of two releases shared the run. ``unrecorded`` for a chunk that
    audited entities before Plant recorded them (a run that spanned the upgrade)."""
    versions: set[str] = set()
    for chunk in chunks:
        counters = chunk.counters or {}
        if counters.get("entities"):
            named = counters.get("constitution_versions")
            versions.update(named if isinstance(named, list) else ["unrecorded"])
    return sorted(versions)


RUN_LEVEL_CODES = ("digest-invalid", "ledger-root-mismatch", SEAL_INVALID_CODE, RECORD_INVALID_CODE)  # about the registry as a whole


def _what_was_checked(run: AuditRun, chunks: list[AuditChunk]) -> dict[str, Any]:
    """The summary's ``signatures`` and ``coverage``: what the run did, not what was asked.
    An incremental run checks every signature after the digest's heads, whatever
    ``verify_signatures`` says, and reads only what changed since the digest."""
    incremental = next((c.counters["coverage"] for c in chunks if "coverage" in (c.counters or {})), None)
    if incremental is not None:
        return {"signatures": incremental["signatures"], "coverage": incremental}
    scope = AuditParams.from_json(run.params)
    return {"signatures": scope.signatures, "coverage": scope.coverage()}


def validate_params(params: dict[str, Any]) -> None:
    """What :func:`start_run` accepts, whoever wrote the job's row (the API checks the same
    and more before it accepts a job; ``jobs.params`` takes any UPDATE): an incremental run
    reads neither a scope nor a digest, so accepting them would sign a report of a run that
    never looked; and a scope listing no entity ids (``[]``) asks for no audit at all, which
    must not become one of every entity."""
    if not isinstance(params, dict):
        raise InvalidInput("audit parameters must be an object", field="params")
    digest = params.get("against_digest")
    if digest is not None and not isinstance(digest, dict):
        raise InvalidInput("against_digest must be an object", field="against_digest")
    since = params.get("since")
    if since is not None and (since != "latest-digest" or digest is not None or params.get("scope")):
        raise InvalidInput("'since' must be 'latest-digest', and it cannot be combined with 'scope' or 'against_digest'",
                           field="since")
    scope = params.get("scope")
    if isinstance(scope, dict) and scope.get("entity_ids") is not None and not scope["entity_ids"]:
        raise InvalidInput("scope.entity_ids names no entity: list at least one, or leave it out to audit every entity "
                           "of the scope's type", field="scope.entity_ids")
