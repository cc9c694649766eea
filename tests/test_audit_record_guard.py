"""The audit record a signed report is built from, and the entity rows, resist plain SQL.

A report is signed on its first export over what ``audit_runs`` and ``audit_findings``
hold then: before migration 0014, someone with SQL write access could delete a finished
run's findings and rewrite its summary, and Plant signed a clean report. An entity row
deleted through SQL left its chain unread by a full audit with no digest to compare
against. Triggers enabled ALWAYS now refuse those changes; whoever owns the tables can
still lift them, and then rule L0-03 fails.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.constitution import append_only_enforced
from models.entities import EntityType
from models.errors import ConstitutionViolation
from models.registry import create_entity
from models.reports import export_report, verify_report
from tests.test_audit import run_audit
from tests.conftest import EMBEDDER

EDITS_OF_A_FINISHED_RUN = [
    "DELETE FROM audit_findings WHERE run_id = :run",
    "UPDATE audit_findings SET code = 'nothing', severity = 'info' WHERE run_id = :run",
    "UPDATE audit_runs SET summary = jsonb_set(summary, '{non_compliant}', '0') WHERE id = :run",
    "UPDATE audit_runs SET finished_at = NULL WHERE id = :run",
    "DELETE FROM audit_runs WHERE id = :run",
    "DELETE FROM jobs WHERE id = (SELECT job_id FROM audit_runs WHERE id = :run)",  # cascades to the run
    "UPDATE signed_exports SET signature_sha256 = '\\x00'",
    "DELETE FROM signed_exports",
]


def _refused(session: Session, statement: str, **params: Any) -> DBAPIError:
    with pytest.raises(DBAPIError, match="append-only") as refused, session.begin_nested():
        session.execute(text(statement), params)
    assert refused.value.orig.sqlstate == "42501"
    return refused.value


def _tampered_run(session: Session, skill: Any, keyring: Any) -> tuple[Any, bytes]:
    session.execute(text("UPDATE skills SET description = 'tampered' WHERE id = :id"), {"id": skill.id})
    session.expire_all()
    summary, findings = run_audit(session, keyring)
    assert summary["non_compliant"] == 1 and findings
    return findings[0].run_id, export_report(session, run_id=findings[0].run_id, keyring=keyring)


@pytest.mark.parametrize("statement", EDITS_OF_A_FINISHED_RUN)
def test_a_finished_run_s_findings_summary_and_signatures_cannot_be_changed_through_sql(
        db_session: Session, skill: Any, keyring: Any, statement: str) -> None:
    run_id, exported = _tampered_run(db_session, skill, keyring)
    _refused(db_session, statement, run=run_id)
    again = export_report(db_session, run_id=run_id, keyring=keyring)
    assert again == exported  # the same findings, summary and signature as before the attempt
    report = json.loads(again)["report"]
    assert [f["code"] for f in report["findings"]] == ["row-content-mismatch"]
    assert verify_report(again, keyring).kid == keyring.active.kid


def test_a_running_run_still_takes_its_counts_and_its_close(db_session: Session, skill: Any, keyring: Any) -> None:
    summary, _ = run_audit(db_session, keyring)  # chunk counts, then the close, all through UPDATEs of the run
    assert summary["total_entities"] >= 1


def test_an_entity_row_cannot_be_deleted_through_sql(db_session: Session, skill: Any, steward: Any) -> None:
    """(TRUNCATE of every entity table is refused too: ``tests/test_migrations.py``.)"""
    _refused(db_session, "DELETE FROM skills WHERE id = :id", id=skill.id)
    _refused(db_session, "DELETE FROM agents WHERE id = :id", id=steward)
    assert db_session.scalar(text("SELECT count(*) FROM skills WHERE id = :id"), {"id": skill.id}) == 1


def test_a_digest_s_leaf_rows_cannot_be_changed_and_a_kept_digest_s_cannot_be_deleted(
        db_session: Session, skill: Any, keyring: Any) -> None:
    """A key seal's digest decides what a retired key signed before its seal: one leaf row
    edited, or added, through SQL, with no key at all, made everything the sealed key signed
    suspect (helper-74, helper-76). Leaf rows now refuse UPDATE and TRUNCATE, a signed digest
    takes no new one, and a kept digest's refuse DELETE; pruning still deletes the other
    digests' rows (migration 0017)."""
    from models.ledger_store import store_digest

    digest = store_digest(db_session, keyring=keyring)
    _refused(db_session, "UPDATE ledger_digest_heads SET version = version WHERE digest_id = :d", d=digest.id)
    _refused(db_session, "TRUNCATE ledger_digest_heads")
    pruned = db_session.begin_nested()
    deleted = db_session.execute(text("DELETE FROM ledger_digest_heads WHERE digest_id = :d"), {"d": digest.id}).rowcount
    assert deleted == digest.entity_count >= 1
    pruned.rollback()
    db_session.execute(text("UPDATE ledger_digests SET keep_leaves = true WHERE id = :d"), {"d": digest.id})  # a seal's mark
    _refused(db_session, "DELETE FROM ledger_digest_heads WHERE digest_id = :d", d=digest.id)
    _refused(db_session, "INSERT INTO ledger_digest_heads (digest_id, entity_id, entity_type, version, link_hash) "
                         "VALUES (:d, gen_random_uuid(), 'skill', 1, sha256('x'::bytea))", d=digest.id)  # helper-76
    later = store_digest(db_session, keyring=keyring)  # one statement taking a kept row among others is refused whole
    _refused(db_session, "DELETE FROM ledger_digest_heads WHERE digest_id IN (:d, :l)", d=digest.id, l=later.id)
    assert db_session.scalar(text("SELECT count(*) FROM ledger_digest_heads WHERE digest_id = :d"), {"d": digest.id}) == deleted
    assert db_session.scalar(text("SELECT count(*) FROM ledger_digest_heads WHERE digest_id = :l"), {"l": later.id}) == deleted


@pytest.mark.parametrize("lifted", [
    "ALTER TABLE ledger_digests DISABLE TRIGGER ledger_digests_no_update_delete",
    "ALTER TABLE ledger_digests ENABLE TRIGGER ledger_digests_no_update_delete",  # not ALWAYS: a replica skips it
    "DROP TRIGGER ledger_digests_no_truncate ON ledger_digests",
    "ALTER TABLE audit_findings DISABLE TRIGGER audit_findings_no_update_delete",
    "ALTER TABLE audit_runs ENABLE TRIGGER audit_runs_no_update_delete",  # not ALWAYS: a replica skips it
    "DROP TRIGGER skills_no_delete ON skills",
    "DROP TRIGGER signed_exports_no_truncate ON signed_exports",
    "ALTER TABLE entity_repairs DISABLE TRIGGER entity_repairs_no_update_delete",
    "ALTER TABLE ledger_digest_heads DISABLE TRIGGER ledger_digest_heads_kept_no_delete",
])
def test_a_lifted_guard_of_the_digests_or_the_audit_record_fails_l0_03_like_the_chain_s(
        db_session: Session, write_ctx: Any, steward: Any, lifted: str) -> None:
    assert append_only_enforced(db_session)
    db_session.execute(text(lifted))
    assert not append_only_enforced(db_session)
    db_session.info.pop("append_only_enforced", None)  # the registry reads it once per session
    with pytest.raises(ConstitutionViolation, match="L0-03"):
        create_entity(db_session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
            "name": "Unguarded", "skill_key": "unguarded", "category": "technical",
            "description": "Written while a guard is lifted", "governance_agent_id": steward,
        })


def test_a_chunk_finishing_after_its_run_was_closed_says_so_and_a_run_closes_once(
        db_session: Session, skill: Any, keyring: Any) -> None:
    """A chunk's last batch after its run was closed: RunClosed, not a refused UPDATE (the
    task then tells a cancel race, dropped quietly, from a close outside the job, which fails
    it: ``tests/test_job_attempt_budget.py``)."""
    from models.audit_chunks import audit_chunk_step, pending_chunks
    from models.audit_close import summarize_run
    from models.audit_runs import start_run
    from models.errors import RunClosed
    from models.job_lifecycle import create_job

    job = create_job(db_session, kind="audit.run", params={}, queue="audit")
    run = start_run(db_session, job_id=job.id, params={}, keyring=keyring, embedder=EMBEDDER, chunk_entities=3)
    closed = summarize_run(db_session, keyring=keyring, run_id=run.id, status="cancelled")
    with pytest.raises(RunClosed, match="closed before this chunk finished"):
        for chunk_id in pending_chunks(db_session, run.id):
            while not audit_chunk_step(db_session, chunk_id=chunk_id, keyring=keyring, embedder=EMBEDDER, batch_size=100).done:
                pass
    with pytest.raises(RunClosed, match="already closed"):
        summarize_run(db_session, keyring=keyring, run_id=run.id)
    db_session.expire_all()
    assert db_session.get(type(run), run.id).summary == closed
