"""Review of the report reads (helper-225): the findings array made by one piece of code for a
running run and a finished one, and the report page counting by rule and code only where the
run has no summary to take them from."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy.orm import Session

from models import report_pages
from models.audit import FindingRow
from models.audit_chunks import pending_chunks
from models.audit_close import summarize_run
from models.audit_tables import AuditChunk
from models.report_view import report_view
from models.reports import checked_csv, export_report
from tests.report_builders import build_report
from tests.test_audit import lift_guard
from tests.test_audit_record_signed import _started, _steps, written_by_plant

FINDINGS = [FindingRow("industry" if n % 3 else None, uuid.uuid4() if n % 3 else None, 1,
                       ("rule-warning", "rule-violation", "stale-embedding")[n % 3], f"finding {n}",
                       rule_id=f"R-{n % 2}" if n % 3 < 2 else None) for n in range(7)]


def _run(engine: Any, keyring: Any, *, close: bool) -> uuid.UUID:
    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        written_by_plant(session, run, session.get(AuditChunk, pending_chunks(session, run.id)[0]), keyring, FINDINGS)
        if close:
            _steps(session, run, keyring, batch_size=500)
            summarize_run(session, run_id=run.id, keyring=keyring)
        return run.id


@pytest.mark.parametrize("close", [False, True])
def test_canonical_bytes_are_made_only_where_an_export_keeps_or_hashes_them(
        engine, keyring, seeded, monkeypatch, close) -> None:
    """A running run's CSV makes none (nothing of it is signed or checked); its JSON export and
    page, a page's worth each; a finished run's CSV, a page's worth for the hash its close signs."""
    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", 3)
    run_id = _run(engine, keyring, close=close)
    calls: list[int] = []
    made = report_pages.canonical_items
    monkeypatch.setattr(report_pages, "canonical_items", lambda resources, **kw: calls.append(1) or made(resources, **kw))
    with Session(engine) as session:
        pages = -(-len(build_report(session, run_id=run_id, keyring=keyring)["findings"]) // 3)
        calls.clear()
        "".join(checked_csv(session, run_id=run_id, keyring=keyring).parts(session))
        assert len(calls) == (pages if close else 0)
        calls.clear()
        export_report(session, run_id=run_id, keyring=keyring)
        report_view(session, run_id=run_id, keyring=keyring)
        assert len(calls) == 2 * pages
        session.rollback()


def test_the_page_of_a_run_closed_without_a_summary_counts_its_findings_by_rule_and_code(
        client, engine, keyring, seeded) -> None:
    """A run closed before runs had a signed close (listed in ``audit_runs_unsigned``) may have
    no summary: the page counts its findings itself, as it does a running run's, and says the run
    closed without one (it was a 500: a KeyError on the running run's count of entities audited)."""
    from tests.test_report_html import parse

    run_id = _run(engine, keyring, close=True)
    with Session(engine) as session, session.begin():
        lift_guard(session, "UPDATE audit_runs SET summary = NULL, close_signed = NULL, plan_signed = NULL "
                   "WHERE id = :run", table="audit_runs", run=run_id)
        lift_guard(session, "INSERT INTO audit_runs_unsigned (run_id) VALUES (:run)", table="audit_runs_unsigned",
                   run=run_id)
    with Session(engine) as session:
        findings = build_report(session, run_id=run_id, keyring=keyring)["findings"]
        assert len(findings) == len(FINDINGS)  # the export is served
        view = report_view(session, run_id=run_id, keyring=keyring)
        session.rollback()
    assert not view.final and view.run["finished_at"] is not None
    assert view.by_code == dict(sorted(Counter(f["code"] for f in findings).items())) and len(view.by_code) == 3
    assert view.by_rule == dict(sorted(Counter(f["rule_id"] for f in findings if f["rule_id"]).items()))
    assert view.figures["findings"] == len(findings) and view.entities_audited is None
    response = client.get(f"/api/v1/audit/runs/{run_id}/report.html")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert [e.attrs["data-banner"] for e in parse(response.get_data(as_text=True))
            if "data-banner" in e.attrs] == ["no-summary"]


def test_a_closed_run_s_page_shows_its_summary_s_counts_and_each_entity_s_codes(engine, keyring, seeded) -> None:
    run_id = _run(engine, keyring, close=True)
    with Session(engine) as session:
        view = report_view(session, run_id=run_id, keyring=keyring)
        session.rollback()
    summary = view.run["summary"]
    assert view.final and view.by_code == summary["by_code"] and view.by_rule == summary["by_rule"]
    assert view.figures["findings"] == summary["findings"] == len(FINDINGS)
    assert {row.codes for row in view.entity_rows} == {("rule-violation",), ("stale-embedding",)}
