"""Plant signs its own audit record, so a running run edited through SQL is caught.

Migration 0014 keeps a finished run as it was closed, but a running run takes UPDATEs.
Before migration 0015, someone with plain SQL write access could close a running run with
a summary of their own, move a chunk's cursor past entities it never read, or insert a run
that never ran, and Plant signed the report on its first export. Now the plan, every
checkpoint and the close carry Plant's signature (``models.audit_record``).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.audit_chunks import audit_chunk_step, pending_chunks
from models.audit_close import summarize_run
from models.audit_record import AuditRecordInvalid
from models.audit_runs import start_run
from models.audit_tables import AuditChunk, AuditFinding, AuditRun
from models.entities import EntityType
from models.job_lifecycle import create_job
from models.registry import create_entity
from models.reports import export_report, verify_report
from tests.conftest import EMBEDDER
from tests.test_audit import lift_guard, run_audit

LAST_ID = "ffffffff-ffff-ffff-ffff-ffffffffffff"


@pytest.fixture
def skills(db_session: Session, write_ctx: Any, steward: Any) -> list[Any]:
    """Four skills: a chunk of skills then has entities left to skip after its first batch."""
    return [create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
        "name": f"Signed record {n}", "skill_key": f"signed-record-{n}", "category": "technical",
        "description": "For the audit record's signatures", "governance_agent_id": steward,
    }) for n in range(4)]


def _started(session: Session, keyring: Any, params: dict | None = None) -> AuditRun:
    job = create_job(session, kind="audit.run", params=params or {"scope": {"entity_type": "skill"}}, queue="audit")
    return start_run(session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000)


def _steps(session: Session, run: AuditRun, keyring: Any, *, batch_size: int = 1) -> None:
    for chunk_id in pending_chunks(session, run.id):
        while not audit_chunk_step(session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=batch_size).done:
            pass


def _closed_by_plant(session: Session, keyring: Any) -> AuditRun:
    run = _started(session, keyring)
    _steps(session, run, keyring)
    summarize_run(session, run_id=run.id, keyring=keyring)
    return run


def written_by_plant(session: Session, run: AuditRun, chunk: AuditChunk, keyring: Any, findings: list[Any]) -> None:
    """``findings`` (``FindingRow``) written as a batch of ``chunk`` writes them: by its next
    checkpoint step, which names them and is signed."""
    from models.audit_record import record_step, sign_checkpoint
    from models.audit_runs import insert_findings

    step = record_step(session, run, chunk)
    sign_checkpoint(run, chunk, keyring, step=step, findings=insert_findings(session, run.id, findings, chunk_id=chunk.id, step=step))
    session.flush()


def _skill_count(session: Session) -> int:
    return session.scalar(text("SELECT count(*) FROM skills"))


def _codes(session: Session, run_id: uuid.UUID) -> list[str]:
    return [f.code for f in session.query(AuditFinding).filter_by(run_id=run_id)]


def test_a_run_closed_by_plant_exports_with_a_verifying_report(db_session: Session, skills: Any, keyring: Any) -> None:
    run = _started(db_session, keyring)
    _steps(db_session, run, keyring)
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring)
    assert summary["total_entities"] == _skill_count(db_session) and summary["run_level_findings"] == []
    exported = export_report(db_session, run_id=run.id, keyring=keyring)
    assert verify_report(exported, keyring).kid == keyring.active.kid


def test_a_run_closed_through_sql_is_refused_at_export(db_session: Session, skills: Any, keyring: Any) -> None:
    run = _started(db_session, keyring)
    audit_chunk_step(db_session, chunk_id=pending_chunks(db_session, run.id)[0], keyring=keyring, embedder=EMBEDDER, batch_size=1)
    db_session.execute(text(
        "UPDATE audit_runs SET status = 'succeeded', finished_at = now(), "
        "summary = '{\"total_entities\": 4, \"compliant\": 4, \"non_compliant\": 0}' WHERE id = :run"), {"run": run.id})
    db_session.expire_all()
    with pytest.raises(AuditRecordInvalid, match="not closed by Plant"):
        export_report(db_session, run_id=run.id, keyring=keyring)


def test_a_made_up_run_is_refused_at_export(db_session: Session, keyring: Any) -> None:
    job = create_job(db_session, kind="audit.run", params={}, queue="audit")
    run_id = db_session.scalar(text(
        "INSERT INTO audit_runs (job_id, status, summary, finished_at) VALUES "
        "(:job, 'succeeded', '{\"total_entities\": 0}', now()) RETURNING id"), {"job": job.id})
    with pytest.raises(AuditRecordInvalid, match="not closed by Plant"):
        export_report(db_session, run_id=run_id, keyring=keyring)


@pytest.mark.parametrize(("edit", "lifted"), [
    ("UPDATE audit_runs SET summary = jsonb_set(summary, '{non_compliant}', '0') WHERE id = :run", True),
    ("UPDATE audit_runs SET status = 'failed' WHERE id = :run", True),
    ("DELETE FROM audit_findings WHERE run_id = :run", True),
    ("INSERT INTO audit_findings (run_id, code, severity) VALUES (:run, 'rule-warning', 'warning')", True),
])
def test_a_finished_run_changed_after_its_close_is_refused_at_export(
        db_session: Session, skill: Any, keyring: Any, edit: str, lifted: bool) -> None:
    """Whoever owns the tables can lift the guards of migrations 0014 and 0015."""
    db_session.execute(text("UPDATE skills SET description = 'tampered' WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    summary, findings = run_audit(db_session, keyring)
    run_id = findings[0].run_id
    assert summary["non_compliant"] == 1
    export_report(db_session, run_id=run_id, keyring=keyring)  # Plant's own close: signed
    table = "audit_findings" if "audit_findings" in edit else "audit_runs"
    if lifted:
        lift_guard(db_session, edit, table=table, run=run_id)
    else:
        db_session.execute(text(edit), {"run": run_id})
        db_session.expire_all()
    with pytest.raises(AuditRecordInvalid, match="not those Plant signed"):
        export_report(db_session, run_id=run_id, keyring=keyring)


@pytest.mark.parametrize("edit", [
    f"UPDATE audit_chunks SET cursor = '{LAST_ID}' WHERE id = :chunk",  # skips what is left
    "UPDATE audit_chunks SET done = true WHERE id = :chunk",  # skips all of it
    "UPDATE audit_chunks SET high_id = cursor WHERE id = :chunk",  # narrows its range
    "UPDATE audit_chunks SET counters = jsonb_set(counters, '{entities}', '40') WHERE id = :chunk",
    "UPDATE audit_chunks SET counters = '{\"entities\": 9007199254740993}' WHERE id = :chunk",  # no Plant write makes it
    "UPDATE audit_chunks SET checkpoint_signed = checkpoint_signed - 'findings' WHERE id = :chunk",  # as before 0016
    "UPDATE audit_chunks SET checkpoint_signed = jsonb_set(checkpoint_signed, '{findings,count}', '3') WHERE id = :chunk",
])
def test_a_checkpoint_edited_through_sql_stops_its_chunk_and_is_reported_at_the_close(
        db_session: Session, skills: Any, keyring: Any, edit: str) -> None:
    run = _started(db_session, keyring)
    chunk_id = pending_chunks(db_session, run.id)[0]
    assert not audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1).done
    db_session.execute(text(edit), {"chunk": chunk_id})
    db_session.expire_all()
    with pytest.raises(AuditRecordInvalid, match="checkpoint is not one Plant signed"), db_session.begin_nested():
        audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1)
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring, status="failed")
    assert summary["run_level_findings"] == ["audit-record-invalid"]
    report = json.loads(export_report(db_session, run_id=run.id, keyring=keyring))["report"]
    details = [f["detail"] for f in report["findings"] if f["code"] == "audit-record-invalid"]
    assert f"chunk 0 of audit run {run.id}: its checkpoint is not one Plant signed" in details
    assert len(details) == (2 if "high_id" in edit else 1)  # a chunk's range is part of the plan too
    assert summary["total_entities"] == 0  # what a forged checkpoint says it audited is not counted


def test_an_older_checkpoint_written_back_is_caught_and_the_steps_cannot_be_rewritten(
        db_session: Session, skills: Any, keyring: Any) -> None:
    """Written back, an older checkpoint would have its chunk read entities again or, once the
    run has failed, count fewer of them as audited (and leave their findings out of the count)."""
    run = _started(db_session, keyring)
    chunk_id = pending_chunks(db_session, run.id)[0]
    audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1)
    saved = db_session.execute(text("SELECT cursor, counters, done, checkpoint_signed FROM audit_chunks WHERE id = :chunk"),
                               {"chunk": chunk_id}).one()
    audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1)
    for statement in ("UPDATE audit_checkpoints SET step = step + 10 WHERE chunk_id = :chunk",
                      "DELETE FROM audit_checkpoints WHERE chunk_id = :chunk AND step > 2", "TRUNCATE audit_checkpoints CASCADE"):
        with pytest.raises(DBAPIError, match="audit_checkpoints is append-only"), db_session.begin_nested():
            db_session.execute(text(statement), {"chunk": chunk_id})
    db_session.execute(text("UPDATE audit_chunks SET cursor = :cursor, counters = :counters, done = :done, "
                            "checkpoint_signed = :signed WHERE id = :chunk"),
                       {"chunk": chunk_id, "cursor": saved.cursor, "counters": json.dumps(saved.counters), "done": saved.done,
                        "signed": json.dumps(saved.checkpoint_signed)})
    db_session.expire_all()
    with pytest.raises(AuditRecordInvalid, match="is step 2, not the latest Plant signed \\(3\\)"), db_session.begin_nested():
        audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1)
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring, status="failed")
    assert summary["run_level_findings"] == ["audit-record-invalid"] and summary["total_entities"] == 0


@pytest.mark.parametrize("edit", [
    "UPDATE audit_runs SET entities_total = 1 WHERE id = :run",
    "UPDATE audit_runs SET params = '{\"scope\": {\"entity_type\": \"industry\"}}' WHERE id = :run",
    "UPDATE audit_runs SET chunks_total = 0 WHERE id = :run",
    "UPDATE audit_chunks SET chunk_no = chunk_no + 100 WHERE run_id = :run",  # (a chunk with a step recorded cannot go)
    "INSERT INTO audit_chunks (run_id, chunk_no, entity_type, low_id, high_id) "
    "VALUES (:run, 7, 'skill', '00000000-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001')",
])
def test_a_plan_edited_through_sql_is_reported_at_the_close(db_session: Session, skills: Any, keyring: Any, edit: str) -> None:
    run = _started(db_session, keyring)
    db_session.execute(text(edit), {"run": run.id})
    db_session.expire_all()
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring, status="failed")
    assert "audit-record-invalid" in summary["run_level_findings"]
    assert any("its plan" in f.detail for f in db_session.query(AuditFinding).filter_by(run_id=run.id))


def test_a_run_closed_as_succeeded_with_chunks_left_says_so(db_session: Session, skills: Any, keyring: Any) -> None:
    """A chunk count moved on through SQL lets the last chunk to finish close the run early."""
    run = _started(db_session, keyring)
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring)
    assert summary["by_code"] == {"audit-record-invalid": 1} and "coverage" in summary and "stopped" in summary["coverage"]


def test_a_run_finished_before_0015_is_not_asked_for_a_close_it_never_signed(
        db_session: Session, skills: Any, keyring: Any) -> None:
    run = _closed_by_plant(db_session, keyring)
    lift_guard(db_session, "UPDATE audit_runs SET close_signed = NULL, plan_signed = NULL WHERE id = :run",
               table="audit_runs", run=run.id)
    with pytest.raises(AuditRecordInvalid, match="not closed by Plant"):
        export_report(db_session, run_id=run.id, keyring=keyring)
    lift_guard(db_session, "INSERT INTO audit_runs_unsigned (run_id) VALUES (:run)", table="audit_runs_unsigned", run=run.id)
    verify_report(export_report(db_session, run_id=run.id, keyring=keyring), keyring)


def test_a_run_still_running_at_0015_ends_with_audit_record_invalid(db_session: Session, skills: Any, keyring: Any) -> None:
    """It has no signed plan or checkpoints: nothing it counted can be trusted, so it is run again."""
    run = _started(db_session, keyring)
    db_session.execute(text("UPDATE audit_runs SET plan_signed = NULL WHERE id = :run"), {"run": run.id})
    db_session.execute(text("UPDATE audit_chunks SET checkpoint_signed = NULL WHERE run_id = :run"), {"run": run.id})
    db_session.expire_all()
    with pytest.raises(AuditRecordInvalid), db_session.begin_nested():
        _steps(db_session, run, keyring)
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring, status="failed")
    assert summary["by_code"] == {"audit-record-invalid": 2} and summary["total_entities"] == 0


@pytest.mark.parametrize("edit", [
    "UPDATE audit_runs SET status = 'succeeded', chunks_done = chunks_total, "
    "summary = '{\"total_entities\": 4, \"non_compliant\": 0}' WHERE id = :run",
    "UPDATE audit_runs SET status = 'failed' WHERE id = :run",
])
def test_a_run_not_finished_is_reported_running_with_no_summary_whatever_its_row_says(
        db_session: Session, skills: Any, keyring: Any, edit: str) -> None:
    run = _started(db_session, keyring)
    db_session.execute(text(edit), {"run": run.id})
    db_session.expire_all()
    report = json.loads(export_report(db_session, run_id=run.id, keyring=keyring))["report"]
    assert (report["run"]["status"], report["run"]["summary"], report["run"]["finished_at"]) == ("running", None, None)
    assert report["run"]["chunks_done"] == 0  # counted from the checkpoints, not the row


def test_a_running_run_s_progress_is_counted_from_checkpoints_that_verify(
        db_session: Session, skills: Any, keyring: Any) -> None:
    from models.report_view import report_view

    run = _started(db_session, keyring)
    _steps(db_session, run, keyring)  # every chunk done; the run still open
    db_session.execute(text("UPDATE audit_chunks SET counters = jsonb_set(counters, '{entities}', '1000') "
                            "WHERE run_id = :run AND chunk_no = 0"), {"run": run.id})
    db_session.expire_all()
    view = report_view(db_session, run_id=run.id, keyring=keyring)
    assert (view.run["chunks_done"], view.run["chunks_total"]) == (0, 1) and view.entities_audited == 0


def test_a_run_cannot_be_added_to_those_finished_before_0015(db_session: Session, skills: Any, keyring: Any) -> None:
    run = _started(db_session, keyring)
    with pytest.raises(DBAPIError, match="audit_runs_unsigned is append-only") as refused, db_session.begin_nested():
        db_session.execute(text("INSERT INTO audit_runs_unsigned (run_id) VALUES (:run)"), {"run": run.id})
    assert refused.value.orig.sqlstate == "42501"
    assert db_session.get(AuditChunk, pending_chunks(db_session, run.id)[0]).checkpoint_signed is not None


def test_the_api_refuses_to_sign_a_run_closed_through_sql(client: Any, engine: Any, keyring: Any, clean_db: None) -> None:
    with Session(engine) as session, session.begin():
        run_id = _started(session, keyring, {}).id
        session.execute(text("UPDATE audit_runs SET status = 'succeeded', finished_at = now() WHERE id = :run"), {"run": run_id})
    for path, query in (("/api/v1/audit/export", {"run_id": str(run_id), "format": "json"}),
                        ("/api/v1/audit/export", {"run_id": str(run_id), "format": "csv"}),
                        (f"/api/v1/audit/runs/{run_id}/report.html", {})):
        response = client.get(path, query_string=query)
        assert response.status_code == 409 and response.mimetype == "application/problem+json", path
        assert response.get_json()["type"] == "/problems/audit-record-invalid"
        assert response.get_json()["run_id"] == str(run_id)


@pytest.mark.parametrize("edit", [
    "UPDATE audit_runs SET params = jsonb_set(params, '{scope,entity_ids}', to_jsonb(ARRAY[:kept])) WHERE id = :run",
    "UPDATE audit_runs SET params = jsonb_set(params, '{verify_signatures}', '\"all\"') WHERE id = :run",
])
def test_parameters_edited_between_batches_stop_the_chunk_even_if_set_back_before_the_close(
        db_session: Session, skills: Any, keyring: Any, edit: str) -> None:
    """Set back before the close, an edited scope would pass the plan check over a run that
    skipped entities: each checkpoint also signs what the batches read of the parameters."""
    run = _started(db_session, keyring)
    chunk_id = pending_chunks(db_session, run.id)[0]
    audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1)
    db_session.execute(text(edit), {"run": run.id, "kept": str(skills[0].id)})
    db_session.expire_all()
    with pytest.raises(AuditRecordInvalid, match="checkpoint is not one Plant signed"), db_session.begin_nested():
        audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1)


def test_a_made_up_run_that_is_not_finished_is_refused_at_export(db_session: Session, keyring: Any) -> None:
    job = create_job(db_session, kind="audit.run", params={}, queue="audit")
    run_id = db_session.scalar(text("INSERT INTO audit_runs (job_id, entities_total) VALUES (:job, 4) RETURNING id"),
                               {"job": job.id})
    with pytest.raises(AuditRecordInvalid, match="its plan"):
        export_report(db_session, run_id=run_id, keyring=keyring)


@pytest.mark.parametrize("params", ['{"x": 9007199254740993}', "[]", '{"scope": {"entity_ids": ["x"]}}'])
def test_parameters_no_plant_write_makes_are_set_aside_and_the_run_still_closes(
        db_session: Session, skills: Any, keyring: Any, params: str) -> None:
    run = _started(db_session, keyring)
    db_session.execute(text("UPDATE audit_runs SET params = CAST(:params AS jsonb) WHERE id = :run"), {"params": params, "run": run.id})
    db_session.expire_all()
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring, status="failed")
    assert summary["run_level_findings"] == ["audit-record-invalid"]
    report = json.loads(export_report(db_session, run_id=run.id, keyring=keyring))["report"]
    assert report["run"]["params"] == {}
    assert any("were set aside" in f["detail"] for f in report["findings"])
    assert summary["signatures"] == "unknown" and "cannot be told" in summary["coverage"]["unknown"]  # not "every row"


def test_a_step_recorded_ahead_of_plant_stops_the_chunk(db_session: Session, skills: Any, keyring: Any) -> None:
    from models.audit_record import record_step

    run = _started(db_session, keyring)
    chunk = db_session.get(AuditChunk, pending_chunks(db_session, run.id)[0])
    db_session.execute(text("INSERT INTO audit_checkpoints (chunk_id, step) VALUES (:chunk, 2)"), {"chunk": chunk.id})
    with pytest.raises(AuditRecordInvalid, match="is step 1, not the latest Plant signed \\(2\\)"), db_session.begin_nested():
        audit_chunk_step(db_session, chunk_id=chunk.id, keyring=keyring, embedder=EMBEDDER, batch_size=1)
    with pytest.raises(AuditRecordInvalid, match="step 2 was recorded before Plant wrote it"):
        record_step(db_session, run, chunk)  # the same, INSERTed between the check and the write


def test_a_close_signed_by_a_key_the_ring_no_longer_holds_says_so(db_session: Session, skills: Any, keyring: Any) -> None:
    run = _closed_by_plant(db_session, keyring)
    lift_guard(db_session, "UPDATE audit_runs SET close_signed = jsonb_set(close_signed, '{kid}', '\"gone\"') WHERE id = :run",
               table="audit_runs", run=run.id)
    with pytest.raises(AuditRecordInvalid, match="closed with key 'gone', which this key ring does not hold"):
        export_report(db_session, run_id=run.id, keyring=keyring)


def test_the_report_page_counts_a_running_run_s_entities_whatever_a_counter_holds(
        client: Any, engine: Any, keyring: Any, clean_db: None) -> None:
    with Session(engine) as session, session.begin():
        run_id = _started(session, keyring, {}).id
        session.execute(text("UPDATE audit_chunks SET counters = '{\"entities\": \"x\"}' WHERE run_id = :run"), {"run": run_id})
    assert client.get(f"/api/v1/audit/runs/{run_id}/report.html").status_code == 200


def test_a_finding_for_a_finished_run_is_refused_even_for_a_run_closed_before_0015(
        db_session: Session, skills: Any, keyring: Any) -> None:
    """Added after the close, it would change a signed run (its export then refused for good) or
    pass unnoticed in the report of a run closed before 0015, which has no close to check."""
    run = _closed_by_plant(db_session, keyring)
    lift_guard(db_session, "UPDATE audit_runs SET close_signed = NULL WHERE id = :run", table="audit_runs", run=run.id)
    lift_guard(db_session, "INSERT INTO audit_runs_unsigned (run_id) VALUES (:run)", table="audit_runs_unsigned", run=run.id)
    before = export_report(db_session, run_id=run.id, keyring=keyring)
    with pytest.raises(DBAPIError, match="a finding for a finished run refused") as refused, db_session.begin_nested():
        db_session.execute(text("INSERT INTO audit_findings (run_id, code, severity) VALUES (:run, 'rule-warning', 'warning')"),
                           {"run": run.id})
    assert refused.value.orig.sqlstate == "42501"
    assert export_report(db_session, run_id=run.id, keyring=keyring) == before


@pytest.mark.parametrize("params", [
    {"since": "latest-digest", "against_digest": {"type": "plant.ledger-digest.v1"}},
    {"since": "latest-digest", "scope": {"entity_type": "skill"}},
    {"since": "yesterday"},
])
def test_a_job_row_edited_to_an_incremental_run_that_would_never_look_is_refused_at_start(
        db_session: Session, keyring: Any, params: dict) -> None:
    """``jobs.params`` takes any UPDATE: start_run checks what the API checks before it plans."""
    from models.errors import InvalidInput

    job = create_job(db_session, kind="audit.run", params=params, queue="audit")
    with pytest.raises(InvalidInput, match="'since'"):
        start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000)


def test_a_job_row_asking_to_audit_an_empty_list_of_ids_is_refused_at_start(db_session: Session, keyring: Any) -> None:
    """An empty ``entity_ids`` asks for no entity: planned as it read before, it audited every one."""
    from models.errors import InvalidInput

    job = create_job(db_session, kind="audit.run", params={"scope": {"entity_type": "skill", "entity_ids": []}}, queue="audit")
    with pytest.raises(InvalidInput, match="entity_ids"):
        start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER, chunk_entities=50_000)


INSERT_A_FINDING = "INSERT INTO audit_findings (run_id, code, severity, detail) VALUES (:run, 'chain-broken', 'critical', 'by SQL')"


@pytest.mark.parametrize("first", ["the close", "the finding"])
def test_a_finding_racing_the_close_is_either_listed_and_signed_or_refused(
        engine: Any, keyring: Any, clean_db: None, first: str) -> None:
    """Whichever of the two locks the run first, the other waits for it: a finding committed
    just after a close read the findings would block the run's export for good."""
    import threading

    from tests.conftest import lock_waiters, wait_for

    with Session(engine) as session, session.begin():
        run_id = _started(session, keyring, {}).id
    outcome: dict[str, Any] = {}

    def second() -> None:
        try:
            with Session(engine) as session, session.begin():
                if first == "the close":
                    session.execute(text(INSERT_A_FINDING), {"run": run_id})
                else:
                    summarize_run(session, run_id=run_id, keyring=keyring, status="failed")
        except DBAPIError as exc:
            outcome["refused"] = exc

    with Session(engine) as holder, holder.begin():
        if first == "the close":
            summarize_run(holder, run_id=run_id, keyring=keyring, status="failed")
        else:
            holder.execute(text(INSERT_A_FINDING), {"run": run_id})
        waiting = threading.Thread(target=second)
        waiting.start()
        wait_for(lambda: lock_waiters(engine), what=f"the other to wait for {first}")
    waiting.join(timeout=30)
    with Session(engine) as session, session.begin():
        report = json.loads(export_report(session, run_id=run_id, keyring=keyring))["report"]
    by_sql = [f for f in report["findings"] if f["detail"] == "by SQL"]
    if first == "the close":
        assert "a finding for a finished run refused" in str(outcome["refused"]) and by_sql == []
    else:
        # In before the close: listed and signed, but no signature of Plant's covers it, so not counted.
        assert "refused" not in outcome and len(by_sql) == 1 and report["run"]["summary"]["findings_left_out"]["count"] == 1


def _tampered(session: Session, skills: list[Any], count: int) -> set[str]:
    """``count`` skills whose row no longer matches their head version: the audit finds them."""
    ids = sorted(str(s.id) for s in skills)[:count]
    session.execute(text("UPDATE skills SET description = 'changed behind the chain' WHERE id = ANY(CAST(:ids AS uuid[]))"),
                    {"ids": ids})
    session.expire_all()
    return set(ids)


def test_findings_plant_writes_batch_by_batch_are_counted_with_no_record_problem(
        db_session: Session, skills: Any, keyring: Any) -> None:
    tampered = _tampered(db_session, skills, 2)
    run = _started(db_session, keyring)
    _steps(db_session, run, keyring)  # a batch per skill: two steps write findings, the others none
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring)
    assert summary["run_level_findings"] == [] and "findings_left_out" not in summary
    assert summary["non_compliant"] == 2 and summary["total_entities"] == _skill_count(db_session)
    written = db_session.query(AuditFinding).filter_by(run_id=run.id).all()
    assert {str(f.entity_id) for f in written} == tampered and all(f.chunk_id and f.step for f in written)
    assert len({f.step for f in written}) == 2


@pytest.mark.parametrize("by", ["no checkpoint", "a checkpoint Plant recorded"])
def test_a_finding_inserted_into_a_running_run_is_left_out_of_the_counts_and_reported(
        db_session: Session, skills: Any, keyring: Any, by: str) -> None:
    """Before migration 0016 a finding INSERTed through SQL into a running run was counted and
    signed with the close: a healthy skill reported non-compliant in a report Plant signed."""
    tampered = _tampered(db_session, skills, 1)  # a finding Plant writes, in the same chunk: still counted
    run = _started(db_session, keyring)
    chunk_id = pending_chunks(db_session, run.id)[0]
    assert not audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1).done
    healthy = max(str(s.id) for s in skills)
    forged = db_session.scalar(text(
        "INSERT INTO audit_findings (run_id, entity_type, entity_id, code, severity, detail, chunk_id, step) "
        "VALUES (:run, 'skill', :entity, 'chain-broken', 'critical', 'by SQL', :chunk, :step) RETURNING id"
    ), {"run": run.id, "entity": healthy, "chunk": chunk_id if by != "no checkpoint" else None,
        "step": 2 if by != "no checkpoint" else None})
    db_session.expire_all()
    _steps(db_session, run, keyring)
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring)
    assert summary["non_compliant"] == 1 and summary["by_code"] == {"audit-record-invalid": 1, "row-content-mismatch": 1}
    assert summary["findings_left_out"] == {"count": 1, "ids": [[forged, forged]]}
    assert summary["run_level_findings"] == ["audit-record-invalid"]
    assert summary["total_entities"] == _skill_count(db_session)  # left out alone: every chunk still counts
    report = json.loads(export_report(db_session, run_id=run.id, keyring=keyring))["report"]
    details = [f["detail"] for f in report["findings"] if f["code"] == "audit-record-invalid"]
    assert details == [f"audit run {run.id}: 1 findings are not covered by a plan or checkpoint Plant signed (ids {forged}); "
                       "they are left out of the counts"]
    assert [f["detail"] for f in report["findings"] if f["code"] == "chain-broken"] == ["by SQL"]  # listed, not counted
    assert {f["entity_id"] for f in report["findings"] if f["code"] == "row-content-mismatch"} == tampered


def test_a_finding_plant_wrote_changed_behind_the_triggers_makes_its_chunk_count_as_nothing_audited(
        db_session: Session, skills: Any, keyring: Any) -> None:
    _tampered(db_session, skills, 1)
    run = _started(db_session, keyring)
    _steps(db_session, run, keyring)
    lift_guard(db_session, "UPDATE audit_findings SET severity = 'warning' WHERE run_id = :run", table="audit_findings",
               run=run.id)
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring, status="failed")
    assert summary["total_entities"] == 0 and summary["non_compliant"] == 0 and "stopped" in summary["coverage"]
    assert summary["findings_left_out"]["count"] == 1
    report = json.loads(export_report(db_session, run_id=run.id, keyring=keyring))["report"]
    details = [f["detail"] for f in report["findings"] if f["code"] == "audit-record-invalid"]
    assert f"chunk 0 of audit run {run.id}: its findings are not those Plant signed with its checkpoint" in details


def test_the_report_page_and_the_csv_leave_out_a_finding_plant_did_not_write(
        client: Any, engine: Any, keyring: Any, seeded: Any) -> None:
    from tests.test_report_html import metrics, number, parse

    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        healthy = session.scalar(text("SELECT id FROM industries LIMIT 1"))
        session.execute(text("INSERT INTO audit_findings (run_id, entity_type, entity_id, code, severity, detail) "
                             "VALUES (:run, 'industry', :entity, 'chain-broken', 'critical', 'by SQL')"),
                        {"run": run.id, "entity": healthy})
        _steps(session, run, keyring, batch_size=500)
        summarize_run(session, run_id=run.id, keyring=keyring)
        run_id = run.id
    csv_rows = client.get("/api/v1/audit/export", query_string={"run_id": str(run_id), "format": "csv"})
    counted = {row["detail"]: row["counted"] for row in csv.DictReader(io.StringIO(csv_rows.get_data(as_text=True)))}
    assert counted.pop("by SQL") == "no" and set(counted.values()) == {"yes"}
    response = client.get(f"/api/v1/audit/runs/{run_id}/report.html")
    assert response.status_code == 200
    elements = parse(response.get_data(as_text=True))
    assert [e.attrs["data-banner"] for e in elements if e.attrs.get("data-banner") == "left-out"] == ["left-out"]
    shown = metrics(elements)
    assert number(shown["findings_left_out"]) == 1 and number(shown["non_compliant"]) == 0
    assert str(healthy) not in {e.attrs["data-entity-id"] for e in elements if "data-entity-id" in e.attrs}
    assert number(shown["clean_entities"]) == number(shown["total_entities"]) > 0


def test_a_running_run_s_report_names_the_findings_no_checkpoint_covers_so_far(
        client: Any, engine: Any, keyring: Any, seeded: Any) -> None:
    from tests.test_report_html import metrics, number, parse

    with Session(engine) as session, session.begin():
        first = session.scalar(text("SELECT id FROM industries ORDER BY id LIMIT 1"))
        session.execute(text("UPDATE industries SET description = 'changed behind the chain' WHERE id = :id"), {"id": first})
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        chunk_id = pending_chunks(session, run.id)[0]
        audit_chunk_step(session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1)  # finds the changed row
        forged = session.scalar(text(
            "INSERT INTO audit_findings (run_id, entity_type, entity_id, code, severity, detail, chunk_id, step) "
            "VALUES (:run, 'industry', :entity, 'chain-broken', 'critical', 'by SQL', :chunk, 2) RETURNING id"),
            {"run": run.id, "entity": first, "chunk": chunk_id})
        run_id = run.id
    with Session(engine) as session, session.begin():
        report = json.loads(export_report(session, run_id=run_id, keyring=keyring))["report"]
    assert report["run"]["status"] == "running" and report["run"]["findings_left_out"] == {"count": 1, "ids": [[forged, forged]]}
    assert {f["code"] for f in report["findings"]} == {"row-content-mismatch", "chain-broken"}
    elements = parse(client.get(f"/api/v1/audit/runs/{run_id}/report.html").get_data(as_text=True))
    shown = metrics(elements)
    assert number(shown["findings_left_out"]) == 1 and number(shown["findings"]) == 1
    assert [e.attrs["data-banner"] for e in elements if e.attrs.get("data-banner") == "left-out"] == ["left-out"]


def test_a_finding_whose_id_canonical_json_cannot_hold_is_refused(db_session: Session, skills: Any, keyring: Any) -> None:
    """The id column takes explicit values: one past 2**53 - 1 made the close raise (its
    signed hash holds every finding's id), so the run never closed, nor any swept with it."""
    run = _started(db_session, keyring)
    with pytest.raises(DBAPIError, match="is ahead of it"), db_session.begin_nested():  # and past the CHECK
        db_session.execute(text("INSERT INTO audit_findings (id, run_id, code, severity) "
                                "VALUES (9007199254740993, :run, 'x', 'critical')"), {"run": run.id})
    _steps(db_session, run, keyring)
    assert summarize_run(db_session, run_id=run.id, keyring=keyring)["run_level_findings"] == []


def test_a_run_that_cannot_be_closed_does_not_hold_up_the_sweep(
        db_session: Session, skills: Any, keyring: Any, monkeypatch: Any) -> None:
    from models import audit_close

    runs = [_started(db_session, keyring) for _ in range(2)]
    db_session.execute(text("UPDATE jobs SET status = 'failed', finished_at = now() WHERE id = ANY(:jobs)"),
                       {"jobs": [r.job_id for r in runs]})
    closes = audit_close.summarize_run

    def first_fails(session: Session, *, run_id: uuid.UUID, **kwargs: Any) -> dict:
        if run_id == runs[0].id:
            raise RuntimeError("this run cannot be closed")
        return closes(session, run_id=run_id, **kwargs)

    monkeypatch.setattr(audit_close, "summarize_run", first_fails)
    assert audit_close.close_runs_of_ended_jobs(db_session, keyring=keyring) == 1
    db_session.expire_all()
    assert [db_session.get(AuditRun, r.id).status for r in runs] == ["running", "failed"]


def test_a_batch_committed_while_a_running_run_s_report_reads_is_not_taken_for_a_forgery(
        engine: Any, keyring: Any, seeded: Any) -> None:
    """The report reads the findings, then the checkpoints again as they are now: a batch that
    commits in between, after this session has read its chunk, names every finding it wrote."""
    from sqlalchemy import select

    from models.audit_findings import all_findings
    from models.audit_record import checkpoints_so_far, open_run_problem

    with Session(engine) as session, session.begin():
        session.execute(text("UPDATE industries SET description = 'changed behind the chain'"))
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        run_id, chunk_id = run.id, pending_chunks(session, run.id)[0]
    with Session(engine) as reader, reader.begin():
        run = reader.get(AuditRun, run_id)
        held = list(reader.scalars(select(AuditChunk).where(AuditChunk.run_id == run_id)))  # read before the batch, kept
        assert open_run_problem(reader, run, keyring) is None and held
        with Session(engine) as worker, worker.begin():
            audit_chunk_step(worker, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=500)
        findings = all_findings(reader, run_id)
        so_far = checkpoints_so_far(reader, run, keyring)
    assert findings and [f.id for f in findings if not so_far.names(f)] == [] and so_far.entities_audited > 0


@pytest.mark.parametrize("edit", [
    "INSERT INTO audit_findings (run_id, code, severity, created_at) VALUES (:run, 'x', 'warning', 'infinity')",
    "UPDATE audit_chunks SET updated_at = '10000-01-01' WHERE run_id = :run",
    "UPDATE audit_runs SET created_at = '-infinity' WHERE id = :run",
    "UPDATE audit_runs SET finished_at = 'infinity', status = 'succeeded' WHERE id = :run",
    "UPDATE skills SET deleted_at = 'infinity'",  # a governed field the audit reads
    "UPDATE jobs SET finished_at = '10000-01-01' WHERE id = (SELECT job_id FROM audit_runs WHERE id = :run)",
])
def test_a_time_python_cannot_load_is_refused_in_a_running_run(db_session: Session, skills: Any, keyring: Any,
                                                               edit: str) -> None:
    """psycopg cannot load 'infinity' or a year past 9999: such a time stopped the run's close
    and made every export of it a 500."""
    run = _started(db_session, keyring)
    with pytest.raises(DBAPIError, match="_loadable"), db_session.begin_nested():
        db_session.execute(text(edit), {"run": run.id})


def test_every_time_plant_stores_must_be_one_python_can_load(db_session: Session) -> None:
    columns = db_session.execute(text(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c JOIN information_schema.tables t "
        "USING (table_schema, table_name) WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' "
        "AND c.data_type = 'timestamp with time zone'")).all()
    checks = set(db_session.scalars(text("SELECT conname FROM pg_constraint WHERE conname LIKE 'ck\\_%\\_loadable'")))
    assert len(columns) > 20 and {f"ck_{table}_{column}_loadable" for table, column in columns} == checks


@pytest.mark.parametrize("unreadable", ["[" * 3000 + "]" * 3000, "1e5000", "1" + "0" * 400 + ".5"])
def test_a_json_value_python_cannot_read_does_not_stop_the_close_or_the_export(
        db_session: Session, skills: Any, keyring: Any, unreadable: str) -> None:
    """PostgreSQL takes JSON nested far deeper than Python reads, numbers of more digits than
    Python 3.11 turns into an int, and fractions too large for a float: a read of the row
    raised (or, for the last, read as infinity), so the run never closed and its exports
    failed. It now reads as a value no Plant write makes, and fails the checks."""
    from models.db_json import UNREADABLE_JSON

    run = _started(db_session, keyring)
    db_session.execute(text("UPDATE audit_chunks SET counters = jsonb_build_object('x', CAST(:deep AS jsonb)) "
                            "WHERE run_id = :run"), {"deep": unreadable, "run": run.id})
    db_session.expire_all()
    assert db_session.get(AuditChunk, pending_chunks(db_session, run.id)[0]).counters == UNREADABLE_JSON
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring, status="failed")
    assert summary["run_level_findings"] == ["audit-record-invalid"] and summary["total_entities"] == 0
    assert verify_report(export_report(db_session, run_id=run.id, keyring=keyring), keyring).kid == keyring.active.kid


def _after_statement(session: Session, marker: str, action: Any) -> None:
    """Run ``action`` once, right after ``session`` executes its first statement reading ``marker``."""
    from sqlalchemy import event

    done: list[bool] = []

    def once(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if marker in statement and not done:
            done.append(True)
            action()
    event.listen(session.connection(), "after_cursor_execute", once)


def test_a_batch_committed_between_reading_a_chunk_and_its_steps_does_not_make_its_findings_forgeries(
        engine: Any, keyring: Any, seeded: Any) -> None:
    """Read apart, a chunk's checkpoint and its latest recorded step could straddle a batch's
    commit: the checkpoint then looked outdated, and the report called Plant's own findings
    left out. They are read in one statement."""
    from models.audit_findings import all_findings
    from models.audit_record import checkpoints_so_far

    with Session(engine) as session, session.begin():
        session.execute(text("UPDATE industries SET description = 'changed behind the chain'"))
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        run_id, chunk_id = run.id, pending_chunks(session, run.id)[0]
        audit_chunk_step(session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1)

    def next_batch() -> None:
        with Session(engine) as worker, worker.begin():
            audit_chunk_step(worker, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=1)

    with Session(engine) as reader, reader.begin():
        run = reader.get(AuditRun, run_id)
        findings = all_findings(reader, run_id)
        _after_statement(reader, "FROM audit_chunks", next_batch)
        so_far = checkpoints_so_far(reader, run, keyring)
    assert len(findings) == 1 and [f.id for f in findings if not so_far.names(f)] == [] and so_far.entities_audited >= 1


@pytest.mark.parametrize("export", ["report", "csv"])
def test_a_run_closed_while_its_report_or_csv_is_built_is_reported_closed(
        engine: Any, keyring: Any, seeded: Any, export: str) -> None:
    """The close commits after the export read the run as running and before it read the
    findings: the close's own findings were then reported as left out of a running run."""
    from tests.report_builders import build_report, findings_csv

    with Session(engine) as session, session.begin():
        run_id = _started(session, keyring, {"scope": {"entity_type": "industry"}}).id

    def close() -> None:
        with Session(engine) as closer, closer.begin():
            summarize_run(closer, run_id=run_id, keyring=keyring)  # "succeeded" with chunks not done: a finding

    with Session(engine) as reader, reader.begin():
        _after_statement(reader, "FROM audit_runs", close)
        if export == "report":
            run = build_report(reader, run_id=run_id, keyring=keyring)["run"]
            assert run["status"] == "succeeded" and "findings_left_out" not in run
            assert run["summary"]["run_level_findings"] == ["audit-record-invalid"]
        else:
            rows = csv.DictReader(io.StringIO(findings_csv(reader, run_id=run_id, keyring=keyring)))
            assert [(r["code"], r["counted"]) for r in rows] == [("audit-record-invalid", "yes")]


def test_a_finding_id_chosen_ahead_of_its_sequence_is_refused(db_session: Session, skills: Any, keyring: Any) -> None:
    """Chosen through SQL, an id ahead of the sequence made Plant's own INSERT collide with it
    when the sequence got there: batch after batch failed. An id the sequence has passed
    (a gap) cannot collide with Plant's, and is left out of the counts like any other."""
    tampered = _tampered(db_session, skills, 1)
    run = _started(db_session, keyring)
    ahead = db_session.scalar(text("SELECT last_value + 1 FROM audit_findings_id_seq"))
    with pytest.raises(DBAPIError, match=f"{ahead} is ahead of it"), db_session.begin_nested():
        db_session.execute(text("INSERT INTO audit_findings (id, run_id, code, severity) VALUES (:id, :run, 'x', 'critical')"),
                           {"id": ahead, "run": run.id})
    gap = db_session.scalar(text("SELECT nextval('audit_findings_id_seq')"))  # issued, never used
    db_session.execute(text("INSERT INTO audit_findings (id, run_id, code, severity) VALUES (:id, :run, 'x', 'critical')"),
                       {"id": gap, "run": run.id})
    _steps(db_session, run, keyring)
    summary = summarize_run(db_session, run_id=run.id, keyring=keyring)
    assert summary["non_compliant"] == len(tampered) and summary["findings_left_out"] == {"count": 1, "ids": [[gap, gap]]}


def test_what_an_unreadable_json_value_reads_as_can_never_be_stored(db_session: Session, skills: Any) -> None:
    """So it never equals a value stored and signed (an entity's head version, say)."""
    from models.db_json import UNREADABLE_JSON

    with pytest.raises(DBAPIError, match="unsupported Unicode escape sequence"), db_session.begin_nested():
        db_session.execute(text("UPDATE skills SET attributes = CAST(:marker AS jsonb)"), {"marker": json.dumps(UNREADABLE_JSON)})


def test_a_running_run_s_plan_changed_while_its_report_is_built_is_not_used_unchecked(
        engine: Any, keyring: Any, seeded: Any) -> None:
    """The report checks the plan, then reads the findings, then the checkpoints: a plan whose
    ids were widened in between made a forged finding look covered."""
    from tests.report_builders import build_report

    with Session(engine) as session, session.begin():
        run_id = _started(session, keyring, {"scope": {"entity_type": "industry"}}).id
        forged = session.scalar(text("INSERT INTO audit_findings (run_id, code, severity, detail) "
                                     "VALUES (:run, 'chain-broken', 'critical', 'by SQL') RETURNING id"), {"run": run_id})

    def widen() -> None:
        with Session(engine) as writer, writer.begin():
            writer.execute(text("UPDATE audit_runs SET plan_signed = jsonb_set(plan_signed, '{findings,ids}', "
                                "'[[1, 9007199254740991]]') WHERE id = :run"), {"run": run_id})

    with Session(engine) as reader, reader.begin():
        _after_statement(reader, "FROM audit_findings", widen)
        report = build_report(reader, run_id=run_id, keyring=keyring)
    assert report["run"]["findings_left_out"] == {"count": 1, "ids": [[forged, forged]]}
