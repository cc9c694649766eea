"""Adversarial review of the audit report exports (helper-216): what a spreadsheet runs, what
the running run's exports and the report page hold in memory, and what the signatures cover."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from models import report_pages
from models.audit import FindingRow
from models.audit_chunks import pending_chunks
from models.audit_close import summarize_run
from models.audit_tables import AuditChunk, AuditRun
from models.report_view import report_view
from models.reports import build_report, checked_csv, export_report, findings_csv, report_payload
from tests.test_audit_record_signed import _started, _steps, written_by_plant


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

