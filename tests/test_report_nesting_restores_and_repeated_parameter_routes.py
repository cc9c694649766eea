"""Re-review of the exports read in autocommit, findings read as rows, and a report document
put around its report's canonical bytes (``models/reports.py::signed_document``).

An exported document must be exactly the canonical bytes of ``{"report", "signature"}``, or
no verifier takes it. What a report holds is partly chosen by whoever edits a row through
SQL: a restore records what the row held (``row_before``), and every later run covering the
entity lists that record in its report.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, text

from models.canonical import MAX_NESTING_DEPTH, canonical_bytes
from models.entities import EntityType
from models.errors import CanonicalizationError
from models.repair import verify_repair
from models.reports import verify_report
from models.signing import KeyRing
from models.key_material import generate_ed25519
from tests.report_builders import signed_report
from tests.test_assignment import World

REPORT_TYPE = "plant.audit-report.v1"


def _nested(levels: int) -> Any:
    """A value of ``levels`` arrays, one inside another."""
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def _report(repairs: Any) -> dict[str, Any]:
    return {"type": REPORT_TYPE, "findings": [], "repairs": repairs,
            "run": {"id": "r", "created_at": "2026-05-01T00:00:00Z"}}


@pytest.mark.parametrize("levels", [MAX_NESTING_DEPTH - 3, MAX_NESTING_DEPTH - 2, MAX_NESTING_DEPTH - 1])
def test_a_signed_report_is_the_canonical_document_or_refused_as_canonicalizing_it_is(levels) -> None:
    """``_document`` writes the report's own canonical bytes inside the document's, one level
    deeper: a report nested 64 deep canonicalized alone, and its document (65 deep) was handed
    out signed, though no verifier (nor Plant's ``parse_canonical_json``) reads it."""
    ring = KeyRing(generate_ed25519())
    report = _report(_nested(levels))  # the report object itself is one more level, its "repairs" another
    try:
        canonical_bytes({"report": report, "signature": "s"})
    except CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            signed_report(report, ring)
        return
    document = signed_report(report, ring)
    assert document == canonical_bytes({"report": report, "signature": json.loads(document)["signature"]})
    assert verify_report(document, ring).kid == ring.active.kid


def _restored_with_attributes(sessions: Any, write_ctx: Any, steward: Any, attributes: Any) -> str:
    from models.db import transaction
    from models.repair import restore_entity

    with transaction(sessions) as session:
        agent_id = World(session, write_ctx, steward).agent("Nested by hand").id
    with transaction(sessions) as session:
        session.execute(text("UPDATE agents SET attributes = CAST(:a AS jsonb) WHERE id = :i"),
                        {"a": json.dumps(attributes), "i": agent_id})
        session.expire_all()
        outcome = restore_entity(session, entity_type=EntityType.AGENT, entity_id=agent_id, keyring=write_ctx.keyring,
                                 embedder=write_ctx.embedder, actor="operator:test")
        assert outcome.restored
        return str(outcome.repair.id)


@pytest.mark.parametrize("levels", [57, 58, 59, 60])
def test_a_row_edited_to_nest_deep_then_restored_leaves_every_later_report_exportable_and_verifiable(
        engine, write_ctx, keyring, committed_steward, levels) -> None:
    """The restore checked that what the row held canonicalizes alone, but a report holds it
    four levels deeper (report, repairs, record, row_before) and its document five: a row
    edited through SQL to nest 59 to 62 levels deep (in the restore's content), once restored as
    an operator is told to, made every later run's report refuse to canonicalize (its export
    a 422 for good) or, at 59, exported a signed document no verifier reads."""
    from models.audit_tables import AuditRun
    from models.db import make_session_factory, transaction
    from models.reports import export_report
    from tests.test_audit import run_audit

    sessions = make_session_factory(engine)
    repair_id = _restored_with_attributes(sessions, write_ctx, committed_steward, {"a": _nested(levels)})
    with transaction(sessions) as session:
        earlier = set(session.scalars(select(AuditRun.id)))
        run_audit(session, keyring, {"scope": {"entity_type": "agent"}})
        [run_id] = [r for r in session.scalars(select(AuditRun.id)) if r not in earlier]
    with transaction(sessions) as session:
        document = export_report(session, run_id=run_id, keyring=keyring)
    assert verify_report(document, keyring).kid == keyring.active.kid
    [repair] = json.loads(document)["report"]["repairs"]
    assert repair["id"] == repair_id and verify_repair(repair, keyring)
    content = repair["row_before"]["content"]
    if levels <= 57:  # fits where a report document holds it: recorded as the row held it
        assert content["attributes"] == {"a": _nested(levels)}
    else:  # recorded as text, as anything else canonical JSON refuses there
        assert "nested more than" in content["unsignable"] and json.loads(content["json"])["attributes"] == {"a": _nested(levels)}


@pytest.mark.parametrize(("method", "url", "status"), [
    ("GET", "/api/v1/no-such-route?page_size=1&page_size=2", 404),
    ("DELETE", "/api/v1/jobs?status=queued&status=running", 405),
])
def test_a_repeated_query_parameter_does_not_hide_a_route_that_is_not_there(client, method, url, status) -> None:
    """The repeated-parameter refusal ran before routing: a path no route has, or a method its
    route does not take, answered 422 about its query instead of the 404 or 405 it is."""
    response = client.open(url, method=method)
    assert response.status_code == status, response.get_data(as_text=True)
