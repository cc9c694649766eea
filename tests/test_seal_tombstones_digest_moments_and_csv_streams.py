"""Re-review of three ledger/export changes: key seals naming their digest's tombstone root,
stored digests stamped exactly, and finished runs' exports made page by page."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from models import report_pages
from models.audit import FindingRow
from models.audit_chunks import pending_chunks
from models.audit_close import summarize_run
from models.audit_tables import AuditChunk
from tests.test_audit_record_signed import _started, _steps, written_by_plant
from tests.test_key_seals import tombstoned_world
from tests.test_paged_exports import finished_run

API = "/api/v1"


def _findings(count: int) -> list[FindingRow]:
    return [FindingRow("industry", uuid.uuid4(), 1, "rule-warning", f"finding {n}") for n in range(count)]


def _checked_out(app: Any) -> int:
    from web.services import app_services

    return app_services(app).engine.pool.checkedout()


def test_a_csv_download_closed_mid_stream_gives_its_connection_back(client, app, engine, keyring, seeded, monkeypatch) -> None:
    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", 2)
    run_id = finished_run(engine, keyring, _findings(9))
    before = _checked_out(app)
    response = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"}, buffered=False)
    assert response.status_code == 200
    parts = iter(response.response)
    next(parts), next(parts)
    assert _checked_out(app) == before + 1  # the stream's own
    response.close()  # the client went away
    assert _checked_out(app) == before


@pytest.mark.parametrize("change", ["removed", "added"])
def test_a_seal_s_tombstone_rows_removed_or_added_hold_nothing(db_session, change) -> None:
    import models.seal_check as seal_check
    from models.seal_check import SEALED_CODE
    from tests.test_audit import lift_guard

    world, gone, digest, sealed = tombstoned_world(db_session)
    assert SEALED_CODE not in world.codes(sealed)
    seal_check._sealed_leaves.clear()
    if change == "removed":
        lift_guard(db_session, "DELETE FROM ledger_digest_tombstones WHERE digest_id = :d AND entity_id = :e",
                   table="ledger_digest_tombstones", d=digest.id, e=gone[0].id)
    else:  # a tombstone for an entity the digest does not hold, naming whatever head
        lift_guard(db_session, "INSERT INTO ledger_digest_tombstones (digest_id, entity_id, entity_type, version, link_hash) "
                   "VALUES (:d, :e, 'industry', 7, :link)", table="ledger_digest_tombstones",
                   d=digest.id, e=uuid.uuid4(), link=bytes(gone[0].head_link_hash))
    flagged = {entity for entity, _ in world.codes(sealed).get(SEALED_CODE, [])}
    assert {industry.id for industry in gone} <= flagged
    seal_check._sealed_leaves.clear()


def _two_interleaved_runs(engine: Any, keyring: Any, count: int) -> tuple[uuid.UUID, uuid.UUID]:
    """Two finished runs whose findings were written turn about (ids not contiguous), the
    first with ``count`` of its own, the second with none (its only findings are its close's)."""
    with Session(engine) as session, session.begin():
        runs = [_started(session, keyring, {"scope": {"entity_type": "industry"}}) for _ in range(2)]
        chunks = [session.get(AuditChunk, pending_chunks(session, run.id)[0]) for run in runs]
        for n in range(count):
            written_by_plant(session, runs[0], chunks[0], keyring, [FindingRow(None, None, None, "rule-warning", f"run-level {n}")])
            session.execute(text("SELECT nextval(pg_get_serial_sequence('audit_findings', 'id'))"))  # a gap
        for run in runs:
            _steps(session, run, keyring, batch_size=500)
            summarize_run(session, run_id=run.id, keyring=keyring)
        return runs[0].id, runs[1].id


@pytest.mark.parametrize(("count", "page"), [(0, 2), (4, 2), (4, 5), (5, 1)])
def test_finished_runs_with_gapped_run_level_or_no_findings_export_as_built_whole(
        client, engine, keyring, seeded, monkeypatch, count, page) -> None:
    from models.audit_tables import AuditRun
    from tests.report_builders import findings_csv, finished_report_payload
    from tests.test_paged_exports import _old_csv, _old_payload

    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", page)
    for run_id in _two_interleaved_runs(engine, keyring, count):
        with Session(engine) as session:
            assert finished_report_payload(session, session.get(AuditRun, run_id), keyring) == _old_payload(session, run_id, keyring)
            assert findings_csv(session, run_id=run_id, keyring=keyring) == _old_csv(session, run_id)
        as_csv = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"})
        with Session(engine) as session:
            assert as_csv.status_code == 200 and as_csv.get_data(as_text=True) == _old_csv(session, run_id)


def test_a_running_run_s_csv_holds_no_second_connection_while_it_is_sent(client, app, engine, keyring, seeded) -> None:
    """A running run's CSV is written in the view, a part a page, from one read of its findings
    (its pages are not read again): its stream reads nothing, so it takes no pooled connection (it
    took one for the length of the download, and waited for one, up to the pool's timeout,
    with the 200 already sent)."""
    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        chunk = session.get(AuditChunk, pending_chunks(session, run.id)[0])
        written_by_plant(session, run, chunk, keyring, [FindingRow(None, None, None, "rule-warning", "so far")])
        run_id = run.id
    before = _checked_out(app)
    response = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"}, buffered=False)
    assert response.status_code == 200
    parts = iter(response.response)
    assert "so far" in b"".join(parts).decode()
    assert _checked_out(app) == before
    response.close()


def test_a_csv_cut_short_after_its_200_is_logged_with_its_request_id(client, engine, keyring, seeded, monkeypatch, caplog) -> None:
    """The request's log line says 200 before the rows are sent: a page found changed since the
    check (past the table's triggers) ends the download, and Plant logs why, under the
    request's id, rather than leaving only the server's traceback, which names no request."""
    import logging

    from models.audit_record import AuditRecordInvalid
    from tests.test_audit import lift_guard

    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", 2)
    run_id = finished_run(engine, keyring, _findings(5))
    response = client.get(f"{API}/audit/export", query_string={"run_id": str(run_id), "format": "csv"}, buffered=False)
    assert response.status_code == 200
    parts = iter(response.response)
    next(parts)
    with Session(engine) as other, other.begin():
        lift_guard(other, "UPDATE audit_findings SET detail = 'rewritten' WHERE id = "
                   "(SELECT max(id) FROM audit_findings WHERE run_id = :run)", table="audit_findings", run=run_id)
    with caplog.at_level(logging.ERROR), pytest.raises(AuditRecordInvalid):
        list(parts)
    response.close()
    [record] = [r for r in caplog.records if str(run_id) in r.getMessage()]
    assert record.levelno == logging.ERROR and "audit-record-invalid" in record.getMessage()
    assert getattr(record, "request_id", None) == response.headers["X-Request-ID"]


def test_a_seal_that_finds_the_ledger_busy_seals_nothing_and_can_be_run_again(key_settings, settings, clean_db, engine, monkeypatch) -> None:
    import json
    from pathlib import Path

    from click.testing import CliRunner

    import models.ledger as ledger
    from cli.main import cli

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setattr(ledger, "DIGEST_WAIT_SECONDS", 0.05)

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli, ["signing-keys", *args, "--json"], catch_exceptions=False)

    old_kid = json.loads(invoke("rotate").stdout)["old_kid"]
    seal_file = Path(key_settings.retired_signing_keys_path) / f"{old_kid}.seal.json"
    with engine.connect() as writer:  # a version write in flight throughout
        writer.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": ledger.VERSIONS_LOCK})
        busy = invoke("seal")
        writer.rollback()
    assert busy.exit_code != 0 and "retry the digest shortly" in busy.output, busy.output
    assert not seal_file.exists()
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM ledger_digests")) == 0
    [sealed] = json.loads(invoke("seal").stdout)["sealed"]
    assert sealed["kid"] == old_kid and seal_file.exists()


@pytest.mark.parametrize("members", [{"tombstones_root": 5}, {"tombstones_root": None, "deleted": None},
                                     {"tombstones_root": "ab" * 32, "deleted": [{"entity_id": "x", "head": "y"}]}])
def test_a_seal_file_with_a_malformed_tombstones_root_is_refused_at_load(tmp_path, members) -> None:
    import json

    from models.errors import SigningKeyError
    from models.keys import load_seal

    path = tmp_path / "k1.seal.json"
    path.write_text(json.dumps({"kid": "k1", "digest_id": 1, "heads_root": "00" * 32, "as_of": "2026-01-01T00:00:00Z", **members}))
    with pytest.raises(SigningKeyError):
        load_seal(path)


def test_a_seal_naming_another_tombstones_root_holds_nothing_and_is_reported(db_session) -> None:
    from dataclasses import replace

    import models.seal_check as seal_check
    from models.key_seals import seal_problems
    from models.seal_check import SEALED_CODE
    from models.signing import KeyRing

    world, gone, _, sealed = tombstoned_world(db_session)
    [seal] = sealed.seals
    wrong = KeyRing(sealed.active, sealed.retired, (replace(seal, tombstones_root=seal.tombstones_root.upper()),))
    seal_check._sealed_leaves.clear()
    assert {industry.id for industry in gone} <= {entity for entity, _ in world.codes(wrong)[SEALED_CODE]}
    assert "root differs" in seal_problems(db_session, wrong)[0]
    seal_check._sealed_leaves.clear()


def test_a_run_finished_before_0015_exports_as_built_whole(db_session, keyring, monkeypatch) -> None:
    """No close to check: the pages are not hashed for one, and the report lists the repairs of
    its scope (its record names none); the bytes are still those the whole report made."""
    from models.audit_tables import AuditRun
    from tests.report_builders import findings_csv, finished_report_payload
    from tests.test_audit import lift_guard
    from tests.test_paged_exports import _old_csv, _old_payload

    monkeypatch.setattr(report_pages, "PAGE_FINDINGS", 2)
    run = _started(db_session, keyring, {"scope": {"entity_type": "industry"}})
    chunk = db_session.get(AuditChunk, pending_chunks(db_session, run.id)[0])
    written_by_plant(db_session, run, chunk, keyring, [FindingRow(None, None, None, "rule-warning", f"old {n}") for n in range(5)])
    _steps(db_session, run, keyring, batch_size=500)
    summarize_run(db_session, run_id=run.id, keyring=keyring)
    lift_guard(db_session, "UPDATE audit_runs SET close_signed = NULL, plan_signed = NULL WHERE id = :run",
               table="audit_runs", run=run.id)
    lift_guard(db_session, "INSERT INTO audit_runs_unsigned (run_id) VALUES (:run)", table="audit_runs_unsigned", run=run.id)
    assert finished_report_payload(db_session, db_session.get(AuditRun, run.id), keyring) == _old_payload(db_session, run.id, keyring)
    assert findings_csv(db_session, run_id=run.id, keyring=keyring) == _old_csv(db_session, run.id)
