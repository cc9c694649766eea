"""Closing an audit run: merge its chunks' counters and findings into the signed summary.

Every summary keeps ``total_entities = compliant + non_compliant`` and states its
``coverage``: what was read and what was taken on trust, and its
``constitution_versions``: the rule catalogue(s) its chunks checked against (runs closed
before Plant recorded them have none). A run whose job ended some other way (failed, or
cancelled, with no chunk left to close it) is closed by :func:`close_runs_of_ended_jobs`
with the job's status.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from sqlalchemy import and_, false, func, not_, or_, select, text, true
from sqlalchemy.orm import Session, sessionmaker

from models.audit import FAILING_SEVERITIES, ROW_MISSING, FindingRow
from models.audit_certificates import NOT_SIGNED
from models.audit_findings import FindingsHashing, finding_bytes, id_spans
from models.audit_findings_chain import check_findings
from models.audit_record import RECORD_INVALID_CODE, checkpoint_problem, plan_problem, sign_close, signed_repairs
from models.audit_runs import AuditParams, insert_findings
from models.audit_tables import AuditChunk, AuditFinding, AuditRun
from models.canonical import canonical_bytes
from models.db import transaction
from models.db_statements import bigint_in
from models.report_pages import running_finding_pages
from models.db_roles import GUARD_LIFTER_SQL, PLANT_SCHEMA_SQL, lifter_params, lifts_guards_because
from models.entities import EntityType
from models.errors import CanonicalizationError, RunClosed
from models.jobs import Job, JobStatus
from models.key_seals import SEAL_INVALID_CODE
from models.signing import KeyRing

log = logging.getLogger(__name__)


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
    plan = plan_problem(session, run, chunks, keyring)
    forged = {c.id: problem for c in chunks if (problem := checkpoint_problem(session, run, c, keyring)) is not None}
    # Findings no signature covers (INSERTed through SQL) are left out of the counts; a chunk
    # whose findings are not those its checkpoint signed counts as nothing audited.
    # All of them, a page at a time (a run where every entity has a finding must close on a
    # worker with a memory limit): the run is held FOR UPDATE, and no finding comes in.
    with running_finding_pages(session, run_id) as pages:
        written = check_findings(run, pages, [c for c in chunks if c.id not in forged], plan_verifies=plan is None)
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
    hashing = written.hashing  # what the close signs of every finding: those read, then those it writes
    for finding in insert_findings(session, run_id, [FindingRow(None, None, None, RECORD_INVALID_CODE, p) for p in problems]):
        hashing.add(finding.id, finding_bytes(finding))
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
        sign_close(run, hashing.hashed() if hashing.in_order else _hashed_again(session, run_id), keyring,
                   repairs=signed_repairs(run.plan_signed) if plan is None else None)
    session.flush()
    return summary


def _hashed_again(session: Session, run_id: uuid.UUID) -> dict[str, Any]:
    """:func:`models.audit_findings.findings_hashed` of every finding of the run, read again
    a page at a time: for a close whose own findings drew ids below one it read (a finding
    INSERTed with an id of its choosing, ahead of the sequence, past the table's guards),
    which the hash made as it read cannot take."""
    hashing = FindingsHashing()
    with running_finding_pages(session, run_id) as pages:
        for rows in pages:
            for finding in rows:
                hashing.add(finding.id, finding_bytes(finding))
    return hashing.hashed()


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


RUN_LEVEL_CODES = ("digest-invalid", "ledger-root-mismatch", SEAL_INVALID_CODE, RECORD_INVALID_CODE, NOT_SIGNED)  # about the registry as a whole


def _what_was_checked(run: AuditRun, chunks: list[AuditChunk]) -> dict[str, Any]:
    """The summary's ``signatures`` and ``coverage``: what the run did, not what was asked.
    An incremental run checks every signature after the digest's heads, whatever
    ``verify_signatures`` says, and reads only what changed since the digest."""
    incremental = next((c.counters["coverage"] for c in chunks if "coverage" in (c.counters or {})), None)
    if incremental is not None:
        return {"signatures": incremental["signatures"], "coverage": incremental}
    scope = AuditParams.from_json(run.params)
    return {"signatures": scope.signatures, "coverage": scope.coverage()}
