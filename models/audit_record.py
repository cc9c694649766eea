"""Plant's signatures on its own audit record: a run's plan, each chunk's checkpoint, the close.

A running run takes UPDATEs (its chunks' checkpoints, its close), so the database's
triggers cannot tell Plant's writes from anyone else's. The worker therefore signs what
it writes, with the ledger's key ring:

- the **plan**, when the run starts: its job, parameters, scope size and every chunk's
  entity type and id range, and the findings its start wrote (count, ids, hash);
- each chunk's **checkpoint**, every time it is written: its range, cursor, counters,
  whether it is done, and the findings its batches wrote so far (count, ids, and a hash
  chain step by step; each finding names its step, migration 0016). A chunk checks its
  checkpoint before it resumes from it, so a cursor moved past entities it never read
  stops the run (:class:`AuditRecordInvalid`);
- the **close**: the run as closed (status, times, summary) and the SHA-256 of every
  finding, in id order.

The plan also names the repair records (``plant entity restore``) the run's report lists:
those of entities in its scope made before it started whose own signature verified then,
each by id and the SHA-256 of its export; the close names them again, as its verified plan
did. Every export of the run lists exactly those (:func:`signed_repairs`), so a record
written later, whatever time it names, changes no report. A run started before plans named
them has none (:func:`signed_repairs` is None for it).

Closing a run checks the plan and every checkpoint first; whatever does not verify
becomes a run-level ``audit-record-invalid`` finding in the run itself, and a chunk whose
checkpoint does not verify is counted as not done, with nothing audited. A finding no
verified plan or checkpoint names (INSERTed through SQL) is left out of every count
(:func:`models.audit_findings_chain.check_findings`; the summary's ``findings_left_out``), and a running run's report
names such findings so far (:func:`checkpoints_so_far`, :meth:`CheckpointsSoFar.names`). An export checks
the close before Plant signs a report (:func:`close_problem`): a run closed through SQL,
or a fabricated one, is refused; a run not finished must have the plan Plant signed
(:func:`open_run_problem`), and is reported as running with no summary. ``audit_findings``
refuses an INSERT for a finished run (migration 0015). Runs already finished when migration 0015 was applied are listed, frozen, in
``audit_runs_unsigned``: the close they never signed is not asked of them. A run still
running then has no signed plan or checkpoints: it ends with ``audit-record-invalid``.

A plan, checkpoint or close signed by a sealed retired key verifies only if its seal lists it,
where the seal lists audit records (``KeySeal.attests_audit_records``; a seal written before
did not, and refuses only one naming a time at or after it): :func:`_after_its_key_s_seal`.

Each checkpoint is signed with its step, and every step is recorded in
``audit_checkpoints``, which refuses UPDATE, DELETE and TRUNCATE: a checkpoint must be its
chunk's latest, so an older one Plant signed cannot be written back.

How the record reads (resources, a run's findings in id order, id spans, their hash) is
:mod:`models.audit_findings`.

Each statement signed is ``RECORD_DOMAIN`` followed by the record's RFC 8785 bytes, so
no other signature Plant makes (a chain link, a digest, a report) can stand in for one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.audit_findings import all_findings, findings_hashed, in_spans, run_resource
from models.audit_findings_chain import FINDINGS_NONE, findings_chained, findings_chained_in_pages, signed_findings_of
from models.audit_tables import AuditCheckpoint, AuditChunk, AuditFinding, AuditRun, AuditRunUnsigned
from models.canonical import canonical_bytes, rfc3339_utc, sha256
from models.errors import CanonicalizationError, Conflict
from models.jws import b64url_decode, b64url_encode, signed_after_its_seal, time_named
from models.key_seals import seal_lists_signature
from models.report_pages import running_finding_pages
from models.signing import KeyRing

RECORD_DOMAIN = b"plant.audit-record.v1\x00"
PLAN, CHECKPOINT, CLOSE = "plant.audit-plan.v1", "plant.audit-checkpoint.v1", "plant.audit-close.v1"
RECORD_INVALID_CODE = "audit-record-invalid"


class AuditRecordInvalid(Conflict):
    """An audit run's plan, checkpoint or close is not what Plant signed."""

    code = RECORD_INVALID_CODE
    title = "The audit run's record is not the one Plant signed"


def _statement(kind: str, body: dict[str, Any]) -> bytes:
    return RECORD_DOMAIN + canonical_bytes({"type": kind, **body})


def _signed(keyring: KeyRing, kind: str, body: dict[str, Any]) -> dict[str, str]:
    kid, signature = keyring.sign(_statement(kind, body))
    return {"kid": kid, "signature": b64url_encode(signature)}


def _verifies(keyring: KeyRing, kind: str, body: dict[str, Any], signed: Any) -> bool:
    if not isinstance(signed, dict) or not isinstance(signed.get("kid"), str) or not isinstance(signed.get("signature"), str):
        return False
    try:
        signature = b64url_decode(signed["signature"])
        statement = _statement(kind, body)
    except (ValueError, TypeError, CanonicalizationError):  # a value no Plant write makes
        return False
    return keyring.verify(signed["kid"], signature, statement)


def _after_its_key_s_seal(session: Session, keyring: KeyRing, signed: Any, *times: Any) -> str | None:
    """Why a plan, checkpoint or close that verified, naming ``times``, was signed after its
    key's seal, or None. A running run takes UPDATEs, so without this whoever holds a copy of
    a sealed key could close one with a summary of their own, and Plant would sign its report
    with the active key. A time named proves nothing (run rows take any ``created_at`` and
    ``finished_at``), so where the seal lists audit records (``KeySeal.attests_audit_records``)
    the record must be on its list; a seal written before only refuses one naming a time at or
    after it (:func:`models.jws.signed_after_its_seal`), and a checkpoint, naming none, never."""
    kid, seal = signed["kid"], keyring.seal(signed["kid"])
    if seal is not None and seal.attests_audit_records and not seal_lists_signature(
            session, seal, b64url_decode(signed["signature"])):
        return (f"key {kid} was sealed at {seal.as_of}, and its seal does not list this record: it was signed "
                "after the seal, with a copy of a retired private key, whatever time it names")
    named = max((t for t in map(time_named, times) if t is not None), default=None)
    return signed_after_its_seal(keyring, kid, named)


def _with_repairs(body: dict[str, Any], signed: Any) -> dict[str, Any]:
    """``body`` as a plan or close signs it: with the repair records it names, if it names
    them (a record signed before plans named repairs does not)."""
    if isinstance(signed, dict) and "repairs" in signed:
        return {**body, "repairs": signed["repairs"]}
    return body


def signed_repairs(signed: Any) -> list[dict[str, str]] | None:
    """The repair records (``{"id", "sha256"}`` each) a plan or close names, or None if it
    names none (signed before plans named repairs). Only of one that verified."""
    named = signed.get("repairs") if isinstance(signed, dict) else None
    return named if isinstance(named, list) else None


def _plan(run: AuditRun, chunks: list[AuditChunk]) -> dict[str, Any]:
    return {
        "run_id": str(run.id), "job_id": str(run.job_id), "params": run.params, "entities_total": run.entities_total,
        "chunks_total": run.chunks_total, "created_at": rfc3339_utc(run.created_at),
        "chunks": [[c.chunk_no, c.entity_type, str(c.low_id), str(c.high_id)] for c in sorted(chunks, key=lambda c: c.chunk_no)],
    }


def _checkpoint(run: AuditRun, chunk: AuditChunk, step: int) -> dict[str, Any]:
    """A chunk's checkpoint, with what its batches read of the run's parameters (the scope
    and which signatures to check): edited between batches and set back before the close,
    they would make the close's plan check pass over a run that skipped entities."""
    params = run.params if isinstance(run.params, dict) else {}
    reads = {"scope": params.get("scope"), "verify_signatures": params.get("verify_signatures")}
    return {
        "run_id": str(chunk.run_id), "chunk_no": chunk.chunk_no, "step": step,
        "params_read": sha256(canonical_bytes(reads)).hex(), "entity_type": chunk.entity_type,
        "low_id": str(chunk.low_id), "high_id": str(chunk.high_id),
        "cursor": str(chunk.cursor) if chunk.cursor is not None else None, "done": bool(chunk.done),
        "counters": chunk.counters or {},
    }


def _step_of(signed: Any) -> int | None:
    step = signed.get("step") if isinstance(signed, dict) else None
    return step if type(step) is int and step >= 1 else None


def _close(run: AuditRun, hashed: dict[str, Any]) -> dict[str, Any]:
    """What a close signs: the run as closed, and its findings :func:`findings_hashed`."""
    return {"run": run_resource(run), "findings": hashed}


def sign_plan(session: Session, run: AuditRun, chunks: list[AuditChunk], keyring: KeyRing, *,
              repairs: list[dict[str, str]]) -> None:
    """Sign a new run's plan, with the findings its start wrote and the ``repairs`` its
    report lists (``{"id", "sha256"}`` each), and each of its chunks' first checkpoint (the
    caller flushes). The findings are read back a page at a time (a cursor the server holds)
    and hashed as they come, so a start that wrote one per entity holds none of them."""
    session.flush()  # the chunks' ids and the run's created_at
    session.refresh(run, ["created_at"])
    with running_finding_pages(session, run.id) as pages:  # the run's start wrote them all, in this transaction
        written = findings_chained_in_pages(FINDINGS_NONE, pages)
    named = {"findings": written, "repairs": repairs}
    run.plan_signed = {**_signed(keyring, PLAN, {**_plan(run, chunks), **named}), **named}
    for chunk in chunks:
        sign_checkpoint(run, chunk, keyring, step=record_step(session, run, chunk))


def record_step(session: Session, run: AuditRun, chunk: AuditChunk) -> int:
    """Record ``chunk``'s next checkpoint step (append-only) and return it; the batch's
    findings name it. A step already recorded (INSERTed ahead through SQL) is
    :class:`AuditRecordInvalid`."""
    step = (_step_of(chunk.checkpoint_signed) or 0) + 1
    try:  # the caller's transaction is spoilt either way: it rolls back
        session.execute(insert(AuditCheckpoint).values(chunk_id=chunk.id, step=step))
    except IntegrityError as exc:
        raise AuditRecordInvalid(f"chunk {chunk.chunk_no} of audit run {run.id}: step {step} was recorded "
                                 "before Plant wrote it") from exc
    return step


def sign_checkpoint(run: AuditRun, chunk: AuditChunk, keyring: KeyRing, *, step: int,
                    findings: Sequence[AuditFinding] = ()) -> None:
    """Sign ``chunk``'s checkpoint at ``step`` (:func:`record_step`), its findings' chain
    extended by ``findings``, the ones this step's batch wrote."""
    previous = FINDINGS_NONE if step == 1 else signed_findings_of(chunk.checkpoint_signed)
    if previous is None:  # checked before the batch began: only a write racing it gets here
        raise AuditRecordInvalid(f"chunk {chunk.chunk_no} of audit run {run.id}: its checkpoint is not one Plant signed")
    chained = findings_chained(previous, findings)
    body = {**_checkpoint(run, chunk, step), "findings": chained}
    chunk.checkpoint_signed = {**_signed(keyring, CHECKPOINT, body), "step": step, "findings": chained}


def sign_close(run: AuditRun, hashed: dict[str, Any], keyring: KeyRing, *,
               repairs: list[dict[str, str]] | None) -> None:
    """Sign the run as it is being closed: its status, times and summary set (not yet
    flushed: the close is one UPDATE, the last the database lets a run take), with
    ``hashed``, the :func:`findings_hashed` of every finding it has (the close holds the run
    FOR UPDATE: no other comes in; it makes them as it reads them, page by page), and the
    ``repairs`` its verified plan named (None: it named none, or did not verify)."""
    named = {} if repairs is None else {"repairs": repairs}
    body = _with_repairs(_close(run, hashed), named)
    run.close_signed = {**_signed(keyring, CLOSE, body), **named}


def unsigned_before_0015(session: Session, run_id: uuid.UUID) -> bool:
    return session.get(AuditRunUnsigned, run_id) is not None


def checkpoint_problem(session: Session, run: AuditRun, chunk: AuditChunk, keyring: KeyRing) -> str | None:
    """Why ``chunk``'s checkpoint cannot be resumed from or counted, or None: it must be one
    Plant signed, and the latest (``audit_checkpoints``)."""
    latest = session.scalar(select(func.max(AuditCheckpoint.step)).where(AuditCheckpoint.chunk_id == chunk.id))
    return _checkpoint_problem(session, run, chunk, keyring, latest)


def _checkpoint_problem(session: Session, run: AuditRun, chunk: AuditChunk, keyring: KeyRing,
                        latest: int | None) -> str | None:
    """:func:`checkpoint_problem`, with the chunk's ``latest`` recorded step already read."""
    step = _step_of(chunk.checkpoint_signed)
    try:
        body = {**_checkpoint(run, chunk, step or 0), "findings": signed_findings_of(chunk.checkpoint_signed)}
    except (ValueError, TypeError, CanonicalizationError):  # parameters no Plant write makes
        body = None
    if step is None or body is None or body["findings"] is None or not _verifies(keyring, CHECKPOINT, body, chunk.checkpoint_signed):
        return f"chunk {chunk.chunk_no} of audit run {run.id}: its checkpoint is not one Plant signed"
    if latest != step:
        return f"chunk {chunk.chunk_no} of audit run {run.id}: its checkpoint is step {step}, not the latest Plant signed ({latest})"
    after = _after_its_key_s_seal(session, keyring, chunk.checkpoint_signed)
    return None if after is None else f"chunk {chunk.chunk_no} of audit run {run.id}: its checkpoint was signed by a sealed key: {after}"


def plan_problem(session: Session, run: AuditRun, chunks: list[AuditChunk], keyring: KeyRing) -> str | None:
    """Why a run's plan (checked when it closes) is not the one Plant signed, or None. A run
    still running when migration 0015 was applied has none, and is reported so."""
    written = signed_findings_of(run.plan_signed)
    plan = _plan(run, chunks)
    if written is not None and _verifies(keyring, PLAN, _with_repairs({**plan, "findings": written}, run.plan_signed),
                                         run.plan_signed):
        after = _after_its_key_s_seal(session, keyring, run.plan_signed, plan["created_at"])
        return None if after is None else f"audit run {run.id}: its plan was signed by a sealed key: {after}"
    return f"audit run {run.id}: its plan (scope, chunks and their ranges) is not the one Plant signed"


def open_run_problem(session: Session, run: AuditRun, keyring: KeyRing) -> str | None:
    """Why a run not finished cannot be reported as one Plant started, or None: its plan must
    verify over the run and its chunks as stored."""
    return plan_problem(session, run, list(session.scalars(select(AuditChunk).where(AuditChunk.run_id == run.id))), keyring)


@dataclass(frozen=True)
class CheckpointsSoFar:
    """What a running run's checkpoints that verify say so far, and :meth:`names`, whether
    its verified plan or one of them names a finding."""

    chunks_done: int
    entities_audited: int
    named: dict[int | None, Callable[[int], bool]]  # by chunk id (None: the plan), whether it names a finding id

    def names(self, finding: Any) -> bool:
        """Whether ``finding`` (its ``id`` and ``chunk_id``) is named by what wrote it."""
        named = self.named.get(finding.chunk_id)
        return named is not None and named(finding.id)


def checkpoints_so_far(session: Session, run: AuditRun, keyring: KeyRing) -> CheckpointsSoFar:
    """A running run's checkpoints as they are now, those that verify. The findings they are
    to judge must be read before (by a statement that ran before this one): a finding Plant
    wrote commits with its checkpoint, whose ids only grow, so each is named by the checkpoint
    read after it; a finding that is not was written outside Plant. (The close checks their
    hashes too: :func:`models.audit_findings_chain.check_findings`.) The run's plan is taken
    as verified (:func:`open_run_problem`)."""
    # One statement, one snapshot: a chunk's row and its latest recorded step, as they are now
    # (populate_existing: not as an earlier read in this session left them). Read apart, a
    # batch committed between the two made its chunk's checkpoint look outdated.
    latest = select(func.max(AuditCheckpoint.step)).where(AuditCheckpoint.chunk_id == AuditChunk.id).scalar_subquery()
    rows = session.execute(select(AuditChunk, latest).where(AuditChunk.run_id == run.id)
                           .execution_options(populate_existing=True)).all()
    verified = [c for c, last in rows if _checkpoint_problem(session, run, c, keyring, last) is None]
    named: dict[int | None, Callable[[int], bool]] = {
        c.id: in_spans(signed_findings_of(c.checkpoint_signed)["ids"]) for c in verified}  # type: ignore[index]
    named[None] = in_spans((signed_findings_of(run.plan_signed) or FINDINGS_NONE)["ids"])  # type: ignore[index]
    return CheckpointsSoFar(sum(1 for c in verified if c.done),
                            sum((c.counters or {}).get("entities", 0) for c in verified), named)


def close_problem(session: Session, run: AuditRun, keyring: KeyRing, findings: Sequence[AuditFinding] | None = None, *,
                  hashed: Callable[[], dict[str, Any]] | None = None) -> str | None:
    """Why a finished run's record cannot be reported as Plant's, or None: its close must
    verify over the run and its ``findings`` as stored (read here if not given; a run
    already finished when migration 0015 was applied carries no close signature).
    ``hashed``: instead of ``findings``, what makes their :func:`findings_hashed` (called
    only if the close is checked), for a caller that reads them page by page."""
    if run.close_signed is None and unsigned_before_0015(session, run.id):
        return None
    kid = run.close_signed.get("kid") if isinstance(run.close_signed, dict) else None
    if isinstance(kid, str) and keyring.verifier(kid) is None:
        return f"audit run {run.id} was closed with key {kid!r}, which this key ring does not hold"
    try:
        hashes = hashed() if hashed is not None else findings_hashed(
            all_findings(session, run.id) if findings is None else findings)
        closed = _with_repairs(_close(run, hashes), run.close_signed)
    except (ValueError, TypeError, CanonicalizationError):
        return f"audit run {run.id}: its record holds values Plant never writes"
    if _verifies(keyring, CLOSE, closed, run.close_signed):
        after = _after_its_key_s_seal(session, keyring, run.close_signed, closed["run"]["created_at"],
                                      closed["run"]["finished_at"])
        return None if after is None else f"audit run {run.id}: its close was signed by a sealed key: {after}"
    if run.close_signed is None:
        return f"audit run {run.id} was not closed by Plant: it carries no close signature"
    return f"audit run {run.id}: its summary or findings are not those Plant signed when it closed the run"
