"""Review of the incremental audit that writes its findings as found (helper-243).

:class:`models.incremental_audit.ChainTally` counts a suspect's chain by its second check,
made locked, as the old audit's per-entity dict did (the second check overwrote the first).
The comparison with the old audit (``tests/test_incremental_audit_streams_findings.py``)
runs over still data, where both checks read the same chain: a tally that kept the first
check passed it. Here a version is forged between the two checks, so they disagree. And the
comparison's bounds on what the sink gets a call do not show when it gets it: here each batch's
findings are handed over before the next batch is read.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

import models.incremental_audit as incremental
from models.audit import ROWLESS_PAGE
from models.audit_certificates import READ_PAGE, certificate_finding_pages
from models.audit_runs import start_run
from models.db import transaction
from models.entities import EntityType
from models.job_lifecycle import create_job
from models.ledger_store import store_digest
from models.registry import create_entity, update_entity
from models.settings import Settings
from models.signing import KeyRing
from tests.conftest import EMBEDDER
from tests.test_audit_start_streams_findings import unsigned_certificates
from tests.test_incremental_audit_streams_findings import _every_path


def test_a_suspect_s_chain_is_counted_by_its_second_check(engine, write_ctx, keyring, committed_steward,
                                                         monkeypatch: Any) -> None:
    with Session(engine) as session, session.begin():
        skill_id = create_entity(session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
            "name": "Twice Checked", "skill_key": "twice-checked", "category": "technical",
            "description": "one", "governance_agent_id": committed_steward}).id
    with Session(engine) as session, session.begin():
        store_digest(session, keyring=keyring)  # its leaf: version 1
        update_entity(session, entity_type=EntityType.SKILL, entity_id=skill_id, changes={"description": "two"},
                      ctx=write_ctx)
    real_read, reads = incremental.versions_by_entity, []

    def write_then_read(session: Session, ids: list) -> Any:
        with Session(engine) as writer, writer.begin():
            if not reads:  # version 3 commits after the row was read (at 2): a suspect
                update_entity(writer, entity_type=EntityType.SKILL, entity_id=skill_id,
                              changes={"description": "three"}, ctx=write_ctx)
            else:  # the row is locked (at 3) and a version 4 is forged behind it through SQL
                writer.execute(text(
                    "INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link,"
                    " link_hash, kid, signature, actor) SELECT entity_type, entity_id, 4, content, content_hash,"
                    " link_hash, sha256(link_hash), kid, signature, 'intruder' FROM entity_versions"
                    " WHERE entity_id = :id AND version = 3"), {"id": skill_id})
        reads.append(ids)
        return real_read(session, ids)

    monkeypatch.setattr(incremental, "versions_by_entity", write_then_read)
    found: list = []
    with Session(engine) as auditor, auditor.begin():
        result = incremental.audit_since_latest_digest(auditor, keyring=keyring, embedder=EMBEDDER, sink=found.extend)
    assert len(reads) == 2 and skill_id in reads[1]  # checked, then checked again
    assert skill_id in {f.entity_id for f in found}  # the forged version, found by the second check
    # The second check read 4 versions past a leaf of 1: 3 grown, which balances the ledger's
    # count. Counted by the first (3 versions), 2 grown: unbalanced, and a search run for nothing.
    assert result.chains.grown_total() == 3
    assert result.version_count_balanced
    assert result.versions_rehashed == 1


def test_each_batch_s_findings_are_written_before_the_next_batch_is_read(
        db_session: Session, settings: Settings, keyring: KeyRing, steward, monkeypatch: Any) -> None:
    """Bounded pages alone do not show the findings were handed over as found: an audit that
    kept them all and handed them out a page at a time at its end passed that. Here each
    page of a batch of suspects is handed over before the next batch's rows are read."""
    _every_path(db_session, settings, keyring, steward)
    real_load, loads = incremental.load_entities, []

    def counted_load(session: Session, entity_type: EntityType, ids: Any, **kwargs: Any) -> Any:
        loads.append(entity_type)
        return real_load(session, entity_type, ids, **kwargs)

    monkeypatch.setattr(incremental, "load_entities", counted_load)
    handed: list[tuple[int, str]] = []  # (rows read so far, the page's first code)
    incremental.audit_since_latest_digest(db_session, keyring=keyring, embedder=EMBEDDER,
                                          sink=lambda page: handed.append((len(loads), page[0].code)))
    marked = [reads for reads, code in handed if code == "row-content-mismatch"]
    assert len(marked) >= 3 and marked == sorted(set(marked))  # one page a batch, each before the next is read


def _open_cursors(session: Session) -> list[str]:
    return list(session.scalars(text("SELECT statement FROM pg_cursors")))


def test_no_cursor_is_left_open_by_a_start_or_by_a_page_of_certificate_findings(
        db_session: Session, settings: Settings, keyring: KeyRing, steward) -> None:
    """The held cursors (chains no row holds, both sides of the certificates' cross-check)
    are read to their end, and closed, before the start goes on, and the cross-check's
    before its first page: a caller that stops after a page leaves none open either."""
    _every_path(db_session, settings, keyring, steward)
    unsigned_certificates(db_session, READ_PAGE + 5)
    db_session.flush()
    pages = certificate_finding_pages(db_session)
    assert len(next(pages)) == READ_PAGE
    assert _open_cursors(db_session) == []
    pages.close()
    for params in ({}, {"since": "latest-digest"}):
        job = create_job(db_session, kind="audit.run", params=params, queue="audit")
        run = start_run(db_session, job_id=job.id, params=job.params, keyring=keyring, embedder=EMBEDDER,
                        chunk_entities=50_000)
        assert run.plan_signed["findings"]["count"] > ROWLESS_PAGE
        assert _open_cursors(db_session) == []


def test_a_start_that_fails_after_writing_findings_commits_none_of_them(engine, write_ctx, keyring, committed_steward,
                                                                       monkeypatch: Any) -> None:
    """An incremental start writes its findings as it finds them, in the transaction its task
    opens (:func:`models.db.transaction`, as ``tasks.audit`` does): one that fails after a
    page was written leaves no run, and none of its findings."""
    import models.audit_runs as audit_runs

    with Session(engine) as session, session.begin():
        skill_id = create_entity(session, entity_type=EntityType.SKILL, ctx=write_ctx, data={
            "name": "Edited", "skill_key": "edited", "category": "technical",
            "description": "one", "governance_agent_id": committed_steward}).id
        store_digest(session, keyring=keyring)
        session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill_id})  # through SQL
    real_insert, written = audit_runs.insert_start_findings, []

    def write_then_fail(session: Session, run_id: Any, findings: Any) -> int:
        count = real_insert(session, run_id, findings)
        written.append(count)
        if count:
            raise RuntimeError("the worker died after a page of findings was written")
        return count

    monkeypatch.setattr(audit_runs, "insert_start_findings", write_then_fail)
    with Session(engine) as session, session.begin():
        job_id = create_job(session, kind="audit.run", params={"since": "latest-digest"}, queue="audit").id
    with pytest.raises(RuntimeError, match="after a page"), transaction(sessionmaker(engine)) as session:
        start_run(session, job_id=job_id, params={"since": "latest-digest"}, keyring=keyring, embedder=EMBEDDER,
                  chunk_entities=50_000)
    assert written and written[-1] > 0  # a page was written before it failed
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM audit_runs WHERE job_id = :id"), {"id": job_id}) == 0
        assert session.scalar(text("SELECT count(*) FROM audit_findings")) == 0
