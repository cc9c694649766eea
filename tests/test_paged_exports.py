"""A finished run's exports made page by page (``models/report_pages.py``): byte for byte what
building the whole report in memory made, with a page of findings in memory at a time.

Each test compares the new output with the old algorithm, written out here as it stood: every
finding read at once (``all_findings``), the close checked over them, the report's dict
canonicalized whole, the CSV written from the same list.
"""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from models import report_pages
from models.audit import FindingRow
from models.audit_findings import all_findings, finding_resource, in_spans, left_out_spans, run_resource
from models.audit_record import AuditRecordInvalid, close_problem
from models.audit_chunks import pending_chunks
from models.audit_close import summarize_run
from models.audit_tables import AuditChunk, AuditRun
from models.canonical import canonical_bytes
from models.report_reads import REPORT_TYPE, run_repairs
from models.reports import CSV_COLUMNS, checked_csv, export_report, spreadsheet_safe, verify_report
from tests.report_builders import findings_csv, finished_report_payload
from tests.test_audit import lift_guard
from tests.test_audit_record_signed import _started, _steps, written_by_plant

API = "/api/v1"
# Text canonical JSON escapes or normalizes: quotes, backslashes, control characters, a
# decomposed "é" (NFC composes it), a composition exclusion (U+FB33 becomes two code points),
# characters beyond U+FFFF, line and paragraph separators, a lone CR, a formula start.
AWKWARD = ["quote \" and backslash \\ and /", "controls \x01\x07\x1f\t\n end", "e\u0301 cafe\u0301 \ufb33",
           "日本語 🜁 𝄞 emoji 😀", "seps \u2028 \u2029 \x7f \u200b", "=1+2 \r bare CR", "", "plain ascii"]


def _old_payload(session: Session, run_id: uuid.UUID, keyring: Any) -> bytes:
    """``report_payload(build_report(...))`` as it was for a finished run: all in memory."""
    run = session.get(AuditRun, run_id)
    findings = all_findings(session, run_id)
    assert close_problem(session, run, keyring, findings) is None
    report = {"type": REPORT_TYPE, "run": run_resource(run), "findings": [finding_resource(f) for f in findings],
              "repairs": run_repairs(session, run, keyring)}
    return canonical_bytes(report, enclosed=1)


def _old_csv(session: Session, run_id: uuid.UUID) -> str:
    """``findings_csv`` as it was for a finished run."""
    run = session.get(AuditRun, run_id)
    left_out = in_spans(left_out_spans(run.summary))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    quoted = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writeheader()
    for finding in all_findings(session, run_id):
        cells = {name: spreadsheet_safe(value) for name, value in finding_resource(finding).items()}
        row = {**cells, "counted": "no" if left_out(finding.id) else "yes"}
        (quoted if any(isinstance(v, str) and "\r" in v for v in row.values()) else writer).writerow(row)
    return out.getvalue()


def _awkward_run(engine: Any, keyring: Any, write_ctx: Any) -> uuid.UUID:
    """A finished run over the industries with: a repair it lists (made before it started),
    findings Plant wrote with awkward text, about entities and about none (run-level), and
    findings INSERTed through SQL while it ran (left out of its counts)."""
    from models.entities import EntityType
    from models.repair import restore_entity

    with Session(engine) as session, session.begin():
        industry = session.scalar(text("SELECT id FROM industries ORDER BY id LIMIT 1"))
        session.execute(text("UPDATE industries SET description = 'changed behind the chain' WHERE id = :id"),
                        {"id": industry})
    with Session(engine) as session, session.begin():
        assert restore_entity(session, entity_type=EntityType.INDUSTRY, entity_id=industry, keyring=write_ctx.keyring,
                              embedder=write_ctx.embedder, actor="operator:pages \u00e9").restored
    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        chunk = session.get(AuditChunk, pending_chunks(session, run.id)[0])
        written_by_plant(session, run, chunk, keyring, [
            FindingRow("industry" if n % 2 else None, uuid.uuid4() if n % 2 else None, n or None, "rule-warning",
                       detail, rule_id="R-\u00e9" if n % 3 else None)
            for n, detail in enumerate(AWKWARD)])
        for n, detail in enumerate(AWKWARD[:4]):
            session.execute(text(
                "INSERT INTO audit_findings (run_id, entity_type, entity_id, version, code, severity, rule_id, detail) "
                "VALUES (:run, :type, :entity, :version, :code, 'critical', NULL, :detail)"),
                {"run": run.id, "type": "e\u0301" if n else None, "entity": uuid.uuid4() if n else None,
                 "version": -n, "code": f"forged-\u00e9-{n}", "detail": detail})
        _steps(session, run, keyring, batch_size=500)
        summarize_run(session, run_id=run.id, keyring=keyring)
        return run.id


@pytest.mark.parametrize("page", [1, 3, 7, 2_000])
def test_a_finished_run_s_exports_are_byte_for_byte_those_built_whole(
        client, engine, keyring, write_ctx, seeded, monkeypatch, page) -> None:
    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", page)
    run_id = _awkward_run(engine, keyring, write_ctx)
    with Session(engine) as session:
        old_payload, old_csv = _old_payload(session, run_id, keyring), _old_csv(session, run_id)
        assert finished_report_payload(session, session.get(AuditRun, run_id), keyring) == old_payload
        assert findings_csv(session, run_id=run_id, keyring=keyring) == old_csv
    report = json.loads(old_payload)
    findings = report["findings"]
    assert len(findings) > len(AWKWARD) + 4  # and the close's own, naming those left out
    assert report["run"]["summary"]["findings_left_out"]["count"] == 4 and len(report["repairs"]) == 1
    assert any(f["entity_id"] is None for f in findings) and "e\u0301" not in old_payload.decode()  # NFC'd
    assert "\\u0001" in old_payload.decode() and "\U0001d11e" in old_payload.decode()
    exported = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id)})
    assert exported.status_code == 200, exported.get_data(as_text=True)
    document = exported.get_data()
    jws = json.loads(document)["signature"]
    assert document == b'{"report":' + old_payload + b',"signature":' + canonical_bytes(jws) + b"}"
    assert verify_report(document, keyring).kid == keyring.active.kid
    with Session(engine) as session:
        assert export_report(session, run_id=run_id, keyring=keyring) == document  # the recorded signature again
    as_csv = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"})
    assert as_csv.status_code == 200 and as_csv.get_data(as_text=True) == old_csv
    assert as_csv.headers["Content-Type"].startswith("text/csv")


def test_a_finished_run_changed_behind_its_triggers_is_still_refused_before_any_byte(
        client, engine, keyring, write_ctx, seeded) -> None:
    """The close is checked over the pages read before a CSV byte is sent: a 409 problem."""
    run_id = _awkward_run(engine, keyring, write_ctx)
    with Session(engine) as session, session.begin():
        lift_guard(session, "UPDATE audit_findings SET detail = 'rewritten' WHERE id = "
                   "(SELECT max(id) FROM audit_findings WHERE run_id = :run)", table="audit_findings", run=run_id)
    for fmt in ("csv", "json"):
        refused = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": fmt})
        assert refused.status_code == 409 and refused.get_json()["type"] == "/problems/audit-record-invalid", fmt


def test_a_page_changed_between_the_csv_s_check_and_its_rows_is_never_written(
        engine, keyring, write_ctx, seeded, monkeypatch) -> None:
    """The CSV reads its pages twice: once for the close, once to write them. A row changed in
    between (only with the triggers lifted) stops it before that page's rows, as one read did."""
    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", 3)
    run_id = _awkward_run(engine, keyring, write_ctx)
    with Session(engine) as session:
        parts = checked_csv(session, run_id=run_id, keyring=keyring).parts(session)
        written = [next(parts), next(parts)]  # the header, the first page
        with Session(engine) as other, other.begin():
            lift_guard(other, "UPDATE audit_findings SET detail = 'rewritten' WHERE id = "
                       "(SELECT max(id) FROM audit_findings WHERE run_id = :run)", table="audit_findings", run=run_id)
        with pytest.raises(AuditRecordInvalid, match="changed while its CSV was written"):
            written.extend(parts)
    assert "rewritten" not in "".join(written) and len(written) > 2


def _peak(work: Any) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def finished_run(engine: Any, keyring: Any, findings: list[FindingRow]) -> uuid.UUID:
    """A run over the industries holding ``findings``, written and signed by a batch as Plant
    writes them, then closed by Plant; committed."""
    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        chunk = session.get(AuditChunk, pending_chunks(session, run.id)[0])
        written_by_plant(session, run, chunk, keyring, findings)
        _steps(session, run, keyring, batch_size=500)
        summarize_run(session, run_id=run.id, keyring=keyring)
        return run.id


def test_a_finished_run_s_exports_hold_a_page_of_findings_not_all_of_them(engine, keyring, seeded, monkeypatch) -> None:
    """Peak Python memory (tracemalloc) of the new exports against the old algorithm's, in the
    same test: a ratio, not a threshold of bytes or time. 5,000 findings in pages of 250 stand
    for many more in pages of 1,000 (20,000: docs/benchmarks.md)."""
    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", 250)
    run_id = finished_run(engine, keyring, [
        FindingRow("industry", uuid.uuid4(), 1, "rule-warning", f"finding {n} of many, caf\u00e9") for n in range(5_000)])
    with Session(engine) as session:
        run = session.get(AuditRun, run_id)
        old_json = _peak(lambda: _old_payload(session, run_id, keyring))
        new_json = _peak(lambda: finished_report_payload(session, run, keyring))
        old_csv = _peak(lambda: _old_csv(session, run_id))
        new_csv = _peak(lambda: sum(map(len, checked_csv(session, run_id=run_id, keyring=keyring).parts(session))))
    assert new_json * 2 < old_json, (new_json, old_json)  # the JSON holds its bytes (about 2x), and a page
    assert new_csv * 4 < old_csv, (new_csv, old_csv)  # a page
