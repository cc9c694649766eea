"""Repair records whose content is nested too deep do not stop the reports that list them.

A release before ``CONTENT_IN_REPORT_DOCUMENT`` signed a row's content as deep as canonical
JSON takes it alone (64 levels); five levels down in a signed audit report's document it
does not fit. Such a record verifies, so every later run covering the entity listed it,
and its JSON export and report page failed (``CanonicalizationError``: a 422 for a GET).
A record nested deeper than Python's json reads (inserted through SQL) reads as
``UNREADABLE_JSON`` and verifies not, so it is left out, as any record written outside Plant.
"""

import datetime as dt
import json
import os
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from models.repair import EntityRepair, record_sha256, repair_statement, repairs, verify_repair
from models.report_view import report_view
from models.reports import export_report, parse_signed_report, repairs_not_verified, verify_report
from models.signing import KeyRing
from tests.test_assignment import World
from tests.test_audit import run_audit


@pytest.fixture
def agent_id(db_session: Session, write_ctx: Any, steward: Any) -> uuid.UUID:
    return World(db_session, write_ctx, steward).agent("Deep Row").id


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


def _signed_as_an_older_release(session: Session, keyring: KeyRing, entity_id: uuid.UUID, content: Any) -> str:
    """A repair record signed over ``content`` as it is: as a release that checked it alone did."""
    record = EntityRepair(id=uuid.uuid4(), entity_type="agent", entity_id=entity_id, version=1, head_link_hash=os.urandom(32),
                          finding="row-content-mismatch", row_before={"version": 1, "content": content}, actor="operator:old",
                          repaired_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1), kid=keyring.active.kid)
    _, record.signature = keyring.sign(repair_statement(record))
    session.add(record)
    session.flush()
    session.expire_all()
    return str(record.id)


def _new_run(session: Session, keyring: KeyRing) -> uuid.UUID:
    before = set(session.scalars(text("SELECT id FROM audit_runs")))
    run_audit(session, keyring)
    [run_id] = set(session.scalars(text("SELECT id FROM audit_runs"))) - before
    return run_id


def test_a_signed_record_too_deep_for_the_report_document_is_marked_and_the_export_completes(
        db_session: Session, keyring: KeyRing, agent_id: uuid.UUID) -> None:
    record_id = _signed_as_an_older_release(db_session, keyring, agent_id, _nested(60))
    [stored] = repairs(db_session, entity_id=agent_id)
    exported = stored.as_json()
    assert verify_repair(exported, keyring)  # Plant signed it: the run's plan names it
    run_id = _new_run(db_session, keyring)

    document = export_report(db_session, run_id=run_id, keyring=keyring)
    assert verify_report(document, keyring)
    report, _ = parse_signed_report(document)
    [listed] = report["repairs"]
    assert listed["id"] == record_id and listed["actor"] == "operator:old"
    assert "nested more than 64 deep" in listed["row_before"]["not_exported"]
    assert listed["row_before"]["record_sha256"] == record_sha256(exported)  # the record the plan and close name
    assert repairs_not_verified(report, keyring) == (1, [record_id])  # marked: it does not read as signed
    [shown] = report_view(db_session, run_id=run_id, keyring=keyring).repairs
    assert shown["id"] == record_id and shown["verified"] is False


def test_a_record_python_cannot_read_is_left_out_and_the_export_completes(
        db_session: Session, keyring: KeyRing, agent_id: uuid.UUID) -> None:
    deep = "[" * 5000 + "]" * 5000
    db_session.execute(text(
        "INSERT INTO entity_repairs (id, entity_type, entity_id, version, head_link_hash, finding, row_before, actor, "
        "repaired_at, kid, signature) VALUES (:i, 'agent', :e, 1, :h, 'row-content-mismatch', CAST(:r AS jsonb), "
        "'intruder', now() - interval '1 minute', :k, :s)"),
        {"i": uuid.uuid4(), "e": agent_id, "h": os.urandom(32), "r": json.dumps({"version": 1})[:-1] + f', "content": {deep}}}',
         "k": keyring.active.kid, "s": os.urandom(64)})
    [stored] = repairs(db_session, entity_id=agent_id)
    exported = stored.as_json()
    assert "plant.unreadable" in exported["row_before"] and not verify_repair(exported, keyring)
    run_id = _new_run(db_session, keyring)
    report, _ = parse_signed_report(export_report(db_session, run_id=run_id, keyring=keyring))
    assert report["repairs"] == []
    assert report_view(db_session, run_id=run_id, keyring=keyring).repairs == ()
