"""Closing a run streams its findings: memory stays bounded however many it has, and the
close signs exactly what it signed when it held them all.

Before, :func:`models.audit_close.summarize_run` read every finding of the run at once, as
rows, and kept them, their resources and their canonical bytes (about 1.6 KB a finding:
some 330 MB of a worker's RSS at 200,000 findings, a deployment where every entity has one).
It now reads them a page at a time through a cursor the server holds, checking each
chunk's chain and hashing what the close signs as it goes. The old close is kept here
(:func:`old_summarize_run`, verbatim but for its names) to prove the new one writes the
same summary and signs the same bytes over the same data, tampered with or not.
"""

from __future__ import annotations

import datetime as dt
import tracemalloc
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import and_, func, not_, select, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from models import audit_close, audit_findings_chain, report_pages
from models.audit import FAILING_SEVERITIES, ROW_MISSING, FindingRow
from models.audit_close import summarize_run
from models.audit_findings import all_findings, findings_hashed, id_spans, in_spans
from models.audit_findings_chain import FINDINGS_NONE, FindingsCheck, findings_chained, signed_findings_of
from models.audit_record import (
    CLOSE, RECORD_INVALID_CODE, _close, _signed, _with_repairs, checkpoint_problem, close_problem, plan_problem,
    signed_repairs,
)
from models.audit_runs import insert_findings, start_run
from models.audit_tables import AuditChunk, AuditFinding, AuditRun
from models.db_statements import bigint_in
from models.errors import RunClosed
from models.job_lifecycle import create_job
from models.signing import KeyRing
from tests.conftest import EMBEDDER, outcome_once_committed
from tests.test_audit import lift_guard
from tests.test_audit_record_signed import written_by_plant

FINISHED_AT = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
# Details as a canonicalization may change them (NFC, escapes): each finding's bytes made
# alone must be those it has inside the array.
DETAILS = ("plain", "caf\u00e9", "cafe\u0301", "line\nbreak\u2028", 'quote " and \\ backslash', "\x01 control",
           "emoji \U0001f600", "\u05d3\u05bc \ufb33")


# ---- the close as it was (commit ebe6a68), every finding held at once --------------------------------------------

def old_sign_close(run: AuditRun, findings: Sequence[AuditFinding], keyring: KeyRing, *,
                   repairs: list[dict[str, str]] | None) -> None:
    named = {} if repairs is None else {"repairs": repairs}
    body = _with_repairs(_close(run, findings_hashed(sorted(findings, key=lambda f: f.id))), named)
    run.close_signed = {**_signed(keyring, CLOSE, body), **named}


def old_check_findings(run: AuditRun, findings: Sequence[AuditFinding], chunks: Sequence[AuditChunk], *,
                       plan_verifies: bool) -> FindingsCheck:
    """Match a run's ``findings`` with those Plant signed it had written: the ids and hash
    of its start's with the plan (if ``plan_verifies``), each chunk's, step by step, with its
    checkpoint (``chunks``: those whose checkpoint verifies). A finding no signature names
    is ``left_out`` of the counts, alone. Findings named but not as signed (only with the
    table's triggers lifted: they refuse UPDATE and DELETE) leave their whole group out, and
    such a chunk is reported in ``chunks``, to be counted as nothing audited."""
    check = FindingsCheck()
    groups: dict[int | None, list[AuditFinding]] = defaultdict(list)
    for f in findings:
        groups[f.chunk_id].append(f)
    signers: list[tuple[int | None, Any]] = [(None, run.plan_signed if plan_verifies else None),
                                             *((c.id, c.checkpoint_signed) for c in chunks)]
    covered: set[int] = set()
    for group, signed in signers:
        named = signed_findings_of(signed)
        if named is None:
            continue
        in_named = in_spans(named["ids"])
        ours = [f for f in groups.get(group, ()) if in_named(f.id)]
        if group is None:  # the run's start wrote them in one go
            chained = findings_chained(FINDINGS_NONE, ours)
        else:
            by_step: dict[int, list[AuditFinding]] = defaultdict(list)
            for f in ours:
                by_step[f.step or 0].append(f)  # 0: no step Plant signs
            chained = FINDINGS_NONE
            for step in sorted(by_step):
                chained = findings_chained(chained, by_step[step])
        if chained == named:
            covered.update(f.id for f in ours)
            continue
        if group is None:
            check.problems.append(f"audit run {run.id}: the findings of its start are not those Plant signed with its plan")
        else:
            check.chunks[group] = (f"chunk {next(c.chunk_no for c in chunks if c.id == group)} of audit run {run.id}: "
                                   "its findings are not those Plant signed with its checkpoint")
    check.left_out = [f.id for f in findings if f.id not in covered]
    if check.left_out:
        shown = ", ".join(str(i) for i in check.left_out[:20])
        check.problems.append(f"audit run {run.id}: {len(check.left_out)} findings are not covered by a plan or "
                              f"checkpoint Plant signed (ids {shown}{', …' if len(check.left_out) > 20 else ''}); "
                              "they are left out of the counts")
    return check


def old_summarize_run(session: Session, *, run_id: uuid.UUID, keyring: KeyRing, status: str = "succeeded",
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
    findings = all_findings(session, run_id)  # all of them: the run is held FOR UPDATE, and no finding comes in
    written = old_check_findings(run, findings, [c for c in chunks if c.id not in forged], plan_verifies=plan is None)
    forged.update(written.chunks)
    counted = [c for c in chunks if c.id not in forged]  # a forged checkpoint counts as nothing audited
    stopped_early = len(counted) < len(chunks) or any(not c.done for c in counted)
    problems = [*([plan] if plan else []), *forged.values(), *written.problems]
    set_aside = plan is not None and not audit_close._signable(run.params)
    if set_aside:  # kept, they would stop the close (and every export) for good
        problems.append(f"audit run {run_id}: its parameters hold values Plant never writes; they were set aside")
        run.params = {}
    if status == "succeeded" and stopped_early:  # its chunk count was moved on, outside Plant
        problems.append(f"audit run {run_id} was closed as succeeded with chunks not done")
    findings += insert_findings(session, run_id, [FindingRow(None, None, None, RECORD_INVALID_CODE, problem) for problem in problems])
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
        failing, rowless, flagged = (query.where(audit_close._audited_by(counted)) for query in (failing, rowless, flagged))
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
        "constitution_versions": audit_close._rules_checked(counted),
        "run_level_findings": [c for c in by_code if c in audit_close.RUN_LEVEL_CODES],
        "duration_seconds": round((finished_at - run.created_at).total_seconds(), 3),
        **audit_close._what_was_checked(run, counted),
        "database_role": audit_close.database_role(session),
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
        old_sign_close(run, findings, keyring, repairs=signed_repairs(run.plan_signed) if plan is None else None)
    session.flush()
    return summary




# ---- the same data, closed by each --------------------------------------------------------------------------------

class Recording:
    """``keyring``, recording every statement it signs."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring, self.signed = keyring, []

    def sign(self, statement: bytes) -> Any:
        self.signed.append(bytes(statement))
        return self.keyring.sign(statement)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.keyring, name)


def _run(session: Session, keyring: KeyRing, *, steps: int = 9, per_step: int = 40) -> AuditRun:
    """A running run as Plant writes one: a finding of its start (the digest it was given is
    no digest: the plan names it), and ``steps`` batches of findings, the chunks taking turns
    so that their ids interleave, every chunk done at its last step."""
    job = create_job(session, kind="audit.run", params={"against_digest": {}}, queue="audit")
    run = start_run(session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000)
    chunks = sorted(session.scalars(select(AuditChunk).where(AuditChunk.run_id == run.id)), key=lambda c: c.chunk_no)
    assert len(chunks) > 1 and session.scalar(select(func.count()).where(AuditFinding.run_id == run.id, AuditFinding.chunk_id.is_(None)))
    for n in range(steps):
        chunk = chunks[n % len(chunks)]
        chunk.counters = {**(chunk.counters or {}), "entities": (chunk.counters or {}).get("entities", 0) + per_step}
        written_by_plant(session, run, chunk, keyring, [
            FindingRow(chunk.entity_type, uuid.uuid4(), 2, "chain-broken" if i % 3 else "rule-warning",
                       f"{DETAILS[(n + i) % len(DETAILS)]} {n}.{i}", None if i % 3 else "R-1") for i in range(per_step)])
    for chunk in chunks:
        chunk.done = True
        written_by_plant(session, run, chunk, keyring, [])
    return run


def _finding_ids(session: Session, run: AuditRun, chunk_id: Any) -> list[int]:
    where = AuditFinding.chunk_id.is_(None) if chunk_id is None else AuditFinding.chunk_id == chunk_id
    return list(session.scalars(select(AuditFinding.id).where(AuditFinding.run_id == run.id, where).order_by(AuditFinding.id)))


def _some_chunk(session: Session, run: AuditRun) -> AuditChunk:
    return session.scalars(select(AuditChunk).where(AuditChunk.run_id == run.id, AuditChunk.counters["entities"].is_not(None))
                           .order_by(AuditChunk.chunk_no)).first()


def _tamper(session: Session, run: AuditRun, how: str) -> None:
    if how == "as_written":
        return
    chunk = _some_chunk(session, run)
    if how == "inserted":  # through SQL: one into a chunk's step, one as if by the start; no signature names them
        session.execute(text("INSERT INTO audit_findings (run_id, entity_type, entity_id, code, severity, detail, chunk_id, step) "
                             "VALUES (:run, 'skill', gen_random_uuid(), 'chain-broken', 'error', 'planted', :chunk, 1), "
                             "(:run, NULL, NULL, 'rule-warning', 'warning', 'planted too', NULL, NULL)"),
                        {"run": run.id, "chunk": chunk.id})
    elif how == "inserted_high":  # an id of its choosing (past a guard), above every one the close's own findings draw
        lift_guard(session, "INSERT INTO audit_findings (id, run_id, code, severity, detail) "
                   "VALUES (9007199254740000, :run, 'rule-warning', 'warning', 'planted high')", table="audit_findings", run=run.id)
    elif how == "inserted_low":  # an id below every one the sequence draws (its CHECK dropped too, as the table's owner can)
        lift_guard(session, "ALTER TABLE audit_findings DROP CONSTRAINT ck_audit_findings_id_signable; "
                   "INSERT INTO audit_findings (id, run_id, code, severity, detail) "
                   "VALUES (0, :run, 'rule-warning', 'warning', 'planted low')", table="audit_findings", run=run.id)
    elif how == "changed":  # a finding a chunk's checkpoint names, changed past the guards
        lift_guard(session, "UPDATE audit_findings SET detail = 'changed' WHERE id = :id", table="audit_findings",
                   id=_finding_ids(session, run, chunk.id)[3])
    elif how == "start_changed":
        lift_guard(session, "UPDATE audit_findings SET detail = 'changed' WHERE id = :id", table="audit_findings",
                   id=_finding_ids(session, run, None)[0])
    elif how == "deleted":
        lift_guard(session, "DELETE FROM audit_findings WHERE id = :id", table="audit_findings",
                   id=_finding_ids(session, run, chunk.id)[-1])
    elif how == "checkpoint_forged":  # counts moved on outside Plant: the chunk counts as nothing audited
        session.execute(text("UPDATE audit_chunks SET counters = jsonb_set(counters, '{entities}', '9999') WHERE id = :id"),
                        {"id": chunk.id})
    else:
        raise AssertionError(how)
    session.expire_all()


def _closed_by(session: Session, run_id: uuid.UUID, keyring: KeyRing, close: Callable[..., dict[str, Any]],
               status: str) -> tuple[dict[str, Any], list[bytes], Any, list[tuple[int, str, str]]]:
    """What ``close`` writes and signs for the run, rolled back after, the findings' ids
    drawn again from where they were (so that a second close draws the same)."""
    sequence = session.scalar(text("SELECT pg_get_serial_sequence('audit_findings', 'id')"))
    last, called = session.execute(text(f"SELECT last_value, is_called FROM {sequence}")).one()
    recording = Recording(keyring)
    savepoint = session.begin_nested()
    summary = close(session, run_id=run_id, keyring=recording, status=status, finished_at=FINISHED_AT)
    session.flush()
    run = session.get(AuditRun, run_id)
    written = [(f.id, f.code, f.detail) for f in all_findings(session, run_id) if f.code == RECORD_INVALID_CODE]
    assert close_problem(session, run, keyring) is None  # the close verifies over every finding, read whole
    closed = (summary, recording.signed, run.close_signed.get("repairs"), written)
    savepoint.rollback()
    session.execute(text("SELECT setval(:sequence, :last, :called)"), {"sequence": sequence, "last": last, "called": called})
    session.expire_all()
    return closed


@pytest.mark.parametrize("how", ["as_written", "inserted", "inserted_high", "inserted_low", "changed", "start_changed", "deleted",
                                 "checkpoint_forged"])
@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_the_streamed_close_signs_what_the_close_that_held_every_finding_signed(
        db_session: Session, keyring: KeyRing, how: str, status: str) -> None:
    run = _run(db_session, keyring)
    _tamper(db_session, run, how)
    before = _closed_by(db_session, run.id, keyring, old_summarize_run, status)
    after = _closed_by(db_session, run.id, keyring, summarize_run, status)
    assert len(before[1]) == 1 and after[1] == before[1]  # the close's statement, byte for byte
    assert after == before
    summary, _, _, written = after
    assert summary["findings"] > 200
    if how == "as_written":
        assert written == [] and "findings_left_out" not in summary
    else:
        assert written  # what the check found is in the run, and signed


def test_a_close_holds_a_page_of_findings_not_all_of_them(db_session: Session, keyring: KeyRing) -> None:
    """Python's own allocations while a run of 4,000 findings closes: the old close held
    every finding, its resource and its bytes (12.4 MB here, linear in the findings); the
    close now holds a page (1,000) and a hash per step (1.6 MB)."""
    run = _run(db_session, keyring, steps=20, per_step=200)
    db_session.expire_all()
    tracemalloc.start()
    try:
        summary = summarize_run(db_session, run_id=run.id, keyring=keyring, finished_at=FINISHED_AT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary["findings"] == 4_001 and "findings_left_out" not in summary
    assert peak < 4_000_000, f"the close took {peak / 1e6:.1f} MB"
    assert close_problem(db_session, db_session.get(AuditRun, run.id), keyring) is None


# ---- pages: their boundaries fall anywhere, within a step, between chunks ------------------------------------------

@pytest.mark.parametrize("how", ["as_written", "inserted", "inserted_high", "changed", "start_changed", "deleted"])
@pytest.mark.parametrize("page", [1, 7])
def test_a_close_read_in_small_pages_signs_what_the_close_that_held_every_finding_signed(
        db_session: Session, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch, how: str, page: int) -> None:
    """Pages of 1 and 7 findings: a page ends inside a step, between the interleaved chunks'
    findings, and between a step and the next, on every finding in turn."""
    run = _run(db_session, keyring, steps=7, per_step=9)
    _tamper(db_session, run, how)
    before = _closed_by(db_session, run.id, keyring, old_summarize_run, "succeeded")
    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", page)
    after = _closed_by(db_session, run.id, keyring, summarize_run, "succeeded")
    assert len(before[1]) == 1 and after[1] == before[1]
    assert after == before


@pytest.mark.parametrize(("steps", "per_step"), [(2, 499), (3, 333), (4, 250), (2, 1_000)])
def test_a_close_of_a_page_of_findings_and_one_either_side_signs_what_the_old_close_signed(
        db_session: Session, keyring: KeyRing, steps: int, per_step: int) -> None:
    """999, 1,000, 1,001 and 2,001 findings (the start's one with the batches'), pages of 1,000."""
    assert report_pages.PAGE_FINDINGS == 1_000
    run = _run(db_session, keyring, steps=steps, per_step=per_step)
    before = _closed_by(db_session, run.id, keyring, old_summarize_run, "succeeded")
    after = _closed_by(db_session, run.id, keyring, summarize_run, "succeeded")
    assert after[1] == before[1] and after == before
    assert after[0]["findings"] == 1 + steps * per_step and "findings_left_out" not in after[0]


def test_a_close_of_a_run_with_no_findings_signs_what_the_old_close_signed(db_session: Session, keyring: KeyRing) -> None:
    job = create_job(db_session, kind="audit.run", params={}, queue="audit")
    run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000)
    assert all_findings(db_session, run.id) == []
    for status in ("succeeded", "failed"):
        before = _closed_by(db_session, run.id, keyring, old_summarize_run, status)
        after = _closed_by(db_session, run.id, keyring, summarize_run, status)
        assert after[1] == before[1] and after == before


# ---- the held cursor: closed however the close ends -----------------------------------------------------------------

def _open_cursors(session: Session) -> list[str]:
    return list(session.scalars(text("SELECT name FROM pg_cursors")))


@pytest.mark.parametrize("error", ["python", "database"])
def test_a_close_that_fails_between_pages_leaves_no_cursor_and_a_usable_transaction(
        db_session: Session, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch, error: str) -> None:
    """A close that raises while it reads (on its second page), in a savepoint as
    ``close_runs_of_ended_jobs`` runs each: the error is the one raised (the cursor's close
    masks none), no cursor is left on the connection, and the transaction goes on."""
    run = _run(db_session, keyring, steps=3, per_step=20)
    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", 10)
    read, real = [], audit_findings_chain.finding_bytes

    def failing(finding: Any) -> bytes:
        read.append(finding.id)
        if len(read) == 15:
            if error == "python":
                raise RuntimeError("failed while reading")
            db_session.execute(text("SELECT 1 / 0"))
        return real(finding)

    monkeypatch.setattr(audit_findings_chain, "finding_bytes", failing)
    with pytest.raises(RuntimeError if error == "python" else DataError):
        with db_session.begin_nested():
            summarize_run(db_session, run_id=run.id, keyring=keyring, finished_at=FINISHED_AT)
    assert len(read) == 15 and _open_cursors(db_session) == []
    monkeypatch.setattr(audit_findings_chain, "finding_bytes", real)
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring, finished_at=FINISHED_AT)
    assert summary["findings"] == 61 and _open_cursors(db_session) == []
    assert close_problem(db_session, db_session.get(AuditRun, run.id), keyring) is None


def test_a_close_that_hashes_again_leaves_no_cursor(db_session: Session, keyring: KeyRing) -> None:
    run = _run(db_session, keyring, steps=2, per_step=5)
    _tamper(db_session, run, "inserted_high")  # the close's own findings draw ids below it: it reads them all again
    summarize_run(db_session, run_id=run.id, keyring=keyring, finished_at=FINISHED_AT)
    assert _open_cursors(db_session) == []
    assert close_problem(db_session, db_session.get(AuditRun, run.id), keyring) is None


# ---- a finding INSERTed while the run closes: hashed and counted alike, or refused ----------------------------------

_PLANTED = ("INSERT INTO audit_findings (run_id, entity_type, entity_id, code, severity, detail) "
            "VALUES (:run, 'skill', gen_random_uuid(), 'chain-broken', 'error', 'planted in flight')")


def test_a_finding_inserted_while_the_close_reads_waits_and_is_refused(
        engine: Any, keyring: KeyRing, clean_db: None) -> None:
    """The close's cursor reads in the transaction that holds the run FOR UPDATE: a finding
    INSERTed meanwhile (its foreign key key-shares the run) waits for the close, then finds
    the run closed. What the close hashed is what it counted."""
    with Session(engine) as setup:
        run_id = _run(setup, keyring, steps=3, per_step=5).id
        setup.commit()
    closing = Session(engine)
    closing.begin()
    summary = summarize_run(closing, run_id=run_id, keyring=keyring, finished_at=FINISHED_AT)

    def plant() -> None:
        with Session(engine) as other, other.begin():
            other.execute(text(_PLANTED), {"run": run_id})

    outcome = outcome_once_committed(engine, closing, plant, "a finding INSERTed during the close")
    assert isinstance(outcome[0], Exception) and "a finding for a finished run refused" in str(outcome[0]), outcome
    with Session(engine) as after:
        run = after.get(AuditRun, run_id)
        assert summary["findings"] == 16 and "findings_left_out" not in summary
        assert close_problem(after, run, keyring) is None


def test_a_finding_inserted_before_the_close_commits_first_and_is_hashed_and_left_out(
        engine: Any, keyring: KeyRing, clean_db: None) -> None:
    """A finding INSERTed in a transaction still open when the close starts: the close's
    FOR UPDATE waits for it, and its cursor (a statement after the lock) reads it; it is
    hashed, and left out of the counts, alone."""
    with Session(engine) as setup:
        run_id = _run(setup, keyring, steps=3, per_step=5).id
        setup.commit()
    planting = Session(engine)
    planting.begin()
    planting.execute(text(_PLANTED), {"run": run_id})

    def close() -> dict[str, Any]:
        with Session(engine) as closing, closing.begin():
            return summarize_run(closing, run_id=run_id, keyring=keyring, finished_at=FINISHED_AT)

    outcome = outcome_once_committed(engine, planting, close, "the close")
    summary = outcome[0]
    assert isinstance(summary, dict), outcome
    assert summary["findings_left_out"]["count"] == 1 and summary["findings"] == 17  # 16, and the close's own one
    with Session(engine) as after:
        assert close_problem(after, after.get(AuditRun, run_id), keyring) is None
