"""Review of the incremental audit (``{"since": "latest-digest"}``) against the full audit,
and of the restore path, for what an insider with SQL access to the tables can do.

Each case is injected with SQL inside the test's rolled-back transaction, as in
``tests/test_audit.py``: a row deleted past its table's guard (``lift_guard``, as the
tables' owner could), a version INSERTed (what the runtime role may do), a row moved to
another table. What the full audit reports must not come out of the incremental audit as
a clean run, unless README says the incremental audit does not read it (a row edited
without a new version, of an entity unchanged since the digest).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid

import pytest
from sqlalchemy import text

from models.entities import EntityType
from models.ledger_store import store_digest
from models.registry import create_entity, update_entity
from tests.test_audit import lift_guard, run_audit, run_incremental, version_row
from tests.test_seat_rules import as_an_older_release, seat_world, violations

E = EntityType


def _skill(session, ctx, steward, n: int):
    skill = create_entity(session, entity_type=E.SKILL, ctx=ctx, data={
        "name": f"Incremental Skill {n}", "skill_key": f"incremental-skill-{n}", "category": "technical",
        "description": "version one", "governance_agent_id": steward})
    update_entity(session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version two"}, ctx=ctx)
    session.flush()
    return skill


def _counts(summary: dict) -> tuple[int, int, int]:
    return summary["total_entities"], summary["non_compliant"], summary["entities_with_findings"]


def _codes(findings, entity_id) -> set[str]:
    return {f.code for f in findings if f.entity_id == entity_id}


def _delete_row(session, table: str, entity_id) -> None:
    lift_guard(session, f"DELETE FROM {table} WHERE id = :id", table=table, id=entity_id)


# --- rowless chains --------------------------------------------------------------------


def test_a_row_of_an_entity_created_after_the_digest_deleted_past_its_guard_is_found(
        db_session, write_ctx, steward, keyring) -> None:
    """The entity is in no digest (created after it) and its row is gone: the incremental
    audit walks rows and leaves, so its chain was read by neither. The version count
    disagrees, but the search that follows looks only behind leaves and tombstones, and the
    run came out clean while the full audit reports ``entity-row-missing``."""
    store_digest(db_session, keyring=keyring)
    gone = _skill(db_session, write_ctx, steward, 1).id
    _delete_row(db_session, "skills", gone)
    full, full_findings = run_audit(db_session, keyring)
    assert _codes(full_findings, gone) == {"entity-row-missing"} and full["non_compliant"] == 1
    summary, findings = run_incremental(db_session, keyring)
    assert _codes(findings, gone) == {"entity-row-missing"}, [(f.entity_id, f.code) for f in findings]
    assert _counts(summary) == (1, 1, 1)


def test_a_version_inserted_for_an_id_with_no_row_is_found(db_session, write_ctx, steward, keyring) -> None:
    """No guard is lifted: the runtime role may INSERT into entity_versions. A forged version
    of an entity that has no row is a chain the full audit reports (``entity-row-missing``);
    the incremental audit, run after it, reported nothing."""
    _skill(db_session, write_ctx, steward, 1)
    store_digest(db_session, keyring=keyring)
    forged = uuid.uuid4()
    content = b'{"forged":true}'
    db_session.execute(text(
        "INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, link_hash,"
        " kid, signature, actor) VALUES ('skill', :e, 1, :c, :h, :p, :l, :k, :g, 'intruder')"),
        {"e": forged, "c": content, "h": hashlib.sha256(content).digest(), "p": bytes(32), "l": os.urandom(32),
         "k": keyring.active.kid, "g": os.urandom(64)})
    assert _codes(run_audit(db_session, keyring)[1], forged) == {"entity-row-missing"}
    summary, findings = run_incremental(db_session, keyring)
    assert _codes(findings, forged) == {"entity-row-missing"}, [(f.entity_id, f.code) for f in findings]
    assert summary["non_compliant"] == 1


def test_a_row_deleted_past_its_guard_after_the_digest_counts_as_the_full_audit_counts_it(
        db_session, write_ctx, steward, keyring) -> None:
    """The digest holds the entity; its row is then removed past the table's guard. The full
    audit reports ``entity-row-missing``, non-compliant; the incremental audit reported only
    ``entity-deleted``, which no count takes: 0 entities, 0 non-compliant, a clean report page."""
    gone = _skill(db_session, write_ctx, steward, 1).id
    store_digest(db_session, keyring=keyring)
    _delete_row(db_session, "skills", gone)
    full, _ = run_audit(db_session, keyring)
    assert full["non_compliant"] == 1
    summary, findings = run_incremental(db_session, keyring)
    assert "entity-row-missing" in _codes(findings, gone), [(f.entity_id, f.code) for f in findings]
    assert _counts(summary) == (1, 1, 1)


def test_a_row_deleted_by_a_signed_version_before_the_digest_then_removed_is_found(
        db_session, write_ctx, steward, keyring) -> None:
    """An entity deleted (signed) before the digest has a tombstone in it; its row removed
    afterwards past the guard: the tombstone joins no row, so the search behind tombstones
    finds nothing, and nothing was reported."""
    gone = _skill(db_session, write_ctx, steward, 1).id
    update_entity(db_session, entity_type=E.SKILL, entity_id=gone, ctx=write_ctx,
                  changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})
    db_session.flush()
    store_digest(db_session, keyring=keyring)
    _delete_row(db_session, "skills", gone)
    assert "entity-row-missing" in _codes(run_audit(db_session, keyring)[1], gone)
    summary, findings = run_incremental(db_session, keyring)
    assert "entity-row-missing" in _codes(findings, gone), [(f.entity_id, f.code) for f in findings]
    assert summary["non_compliant"] == 1


def _industry_row_moved_to_skills(db_session, write_ctx, steward, *, digest_first=None) -> uuid.UUID:
    """An industry whose row was moved, through SQL, into ``skills`` under the same id (after a
    digest, signed with ``digest_first``, when given)."""
    industry = create_entity(db_session, entity_type=E.INDUSTRY, ctx=write_ctx, data={
        "name": "Moved Industry", "code": "MOVD", "governance_agent_id": steward}).id
    db_session.flush()
    if digest_first is not None:
        store_digest(db_session, keyring=digest_first)
    db_session.execute(text(
        "INSERT INTO skills (id, external_key, status, tags, attributes, name, skill_key, description, category,"
        " version, head_link_hash, created_at, updated_at, governance_agent_id)"
        " SELECT id, external_key, 'draft', tags, attributes, name, 'moved', description, 'technical', version,"
        " head_link_hash, created_at, updated_at, governance_agent_id FROM industries WHERE id = :id"), {"id": industry})
    _delete_row(db_session, "industries", industry)
    return industry


def test_a_row_moved_to_another_table_under_its_id_is_found(db_session, write_ctx, steward, keyring) -> None:
    """An industry's row removed and a skill row written under its id: the leaf (matched by
    id and type) finds no industry, and the skill row is a new entity whose chain is an
    industry's. Both audits report it, non-compliant."""
    industry = _industry_row_moved_to_skills(db_session, write_ctx, steward, digest_first=keyring)
    full, full_findings = run_audit(db_session, keyring)
    assert "row-content-mismatch" in _codes(full_findings, industry) and full["non_compliant"] == 1
    summary, findings = run_incremental(db_session, keyring)
    assert "row-content-mismatch" in _codes(findings, industry), [(f.entity_id, f.code) for f in findings]
    assert summary["non_compliant"] == 1 and summary["entities_with_findings"] <= summary["total_entities"]


def test_a_row_deleted_and_written_back_at_an_older_version_is_a_stale_head(db_session, write_ctx, steward,
                                                                           keyring) -> None:
    skill = _skill(db_session, write_ctx, steward, 1)
    store_digest(db_session, keyring=keyring)
    old = version_row(db_session, skill.id, 1)
    db_session.execute(text("CREATE TEMP TABLE kept AS SELECT * FROM skills WHERE id = :id"), {"id": skill.id})
    _delete_row(db_session, "skills", skill.id)
    db_session.execute(text("UPDATE kept SET description = 'version one', version = 1, head_link_hash = :h"),
                       {"h": bytes(old.link_hash)})
    db_session.execute(text("INSERT INTO skills SELECT * FROM kept"))
    db_session.expire_all()
    summary, findings = run_incremental(db_session, keyring)
    assert "stale-head" in _codes(findings, skill.id) and summary["non_compliant"] == 1


# --- seats judged on a team changed since the digest -----------------------------------


TEAM_CHANGES = {
    "team deleted": {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
    "team retired": {"status": "retired"},
}


@pytest.mark.parametrize("change", list(TEAM_CHANGES))
def test_a_member_of_a_team_changed_since_the_digest_is_judged(db_session, write_ctx, steward, keyring, monkeypatch,
                                                              change) -> None:
    """Members seated before the digest; the team then deleted (or retired) by a signed
    version, as a release before the seat guards wrote it. The full audit reports AGENT-04
    on the member; the incremental audit examined the team (changed) but judged no seat of
    its members (unchanged), and came out clean."""
    world = seat_world(db_session, write_ctx, steward)
    store_digest(db_session, keyring=keyring)
    with as_an_older_release(monkeypatch):
        update_entity(db_session, entity_type=E.TEAM, entity_id=world.team.id, changes=TEAM_CHANGES[change], ctx=write_ctx)
    db_session.flush()
    assert violations(run_audit(db_session, keyring)[1]) == [(world.agent.id, "AGENT-04")]
    summary, findings = run_incremental(db_session, keyring)
    assert violations(findings) == [(world.agent.id, "AGENT-04")]
    assert summary["non_compliant"] == 1 and summary["entities_with_findings"] <= summary["total_entities"]


def test_a_member_of_a_role_changed_since_the_digest_is_judged(db_session, write_ctx, steward, keyring,
                                                              monkeypatch) -> None:
    """The role, changed since the digest, requires a skill its seated agent lacks (written by
    a release before the guards): AGENT-04 on the agent, which did not change."""
    world = seat_world(db_session, write_ctx, steward)
    store_digest(db_session, keyring=keyring)
    with as_an_older_release(monkeypatch):
        update_entity(db_session, entity_type=E.JOB_ROLE, entity_id=world.role.id, ctx=write_ctx,
                      changes={"required_skill_ids": [s.id for s in world.skills]})
    db_session.flush()
    assert violations(run_audit(db_session, keyring)[1]) == [(world.agent.id, "AGENT-04")]
    assert violations(run_incremental(db_session, keyring)[1]) == [(world.agent.id, "AGENT-04")]


def test_the_team_of_an_agent_seated_since_the_digest_is_judged(db_session, write_ctx, steward, keyring,
                                                               monkeypatch) -> None:
    """A second agent seated in a full team since the digest (a release before the guards): the
    team is over its capacity (TEAM-03), though only the agent changed."""
    world = seat_world(db_session, write_ctx, steward, capacity=1)
    second = create_entity(db_session, entity_type=E.AGENT, ctx=write_ctx, data={
        "name": "Second Agent", "job_role_id": world.role.id, "industry_id": world.industry.id,
        "skill_ids": [world.skills[0].id], **world.gov})
    db_session.flush()
    store_digest(db_session, keyring=keyring)
    with as_an_older_release(monkeypatch):
        update_entity(db_session, entity_type=E.AGENT, entity_id=second.id, changes={"team_id": world.team.id},
                      ctx=write_ctx)
    db_session.flush()
    assert violations(run_audit(db_session, keyring)[1]) == [(world.team.id, "TEAM-03")]
    summary, findings = run_incremental(db_session, keyring)
    assert violations(findings) == [(world.team.id, "TEAM-03")]
    assert _counts(summary) == (2, 1, 1)


# --- restore ---------------------------------------------------------------------------


def insert_decoy_agent(session, skill_id, *, deleted_at: str) -> None:
    """An agent row INSERTed through SQL under a skill's id, copied from the skill's row, its
    ``deleted_at`` the SQL expression given (the skill's own, or ``now()``)."""
    session.execute(text(
        "INSERT INTO agents (id, name, status, tags, attributes, version, head_link_hash, deleted_at, governance_agent_id)"
        f" SELECT id, 'Decoy', 'active', tags, attributes, version, head_link_hash, {deleted_at}, governance_agent_id"
        " FROM skills WHERE id = :id"), {"id": skill_id})
    session.expire_all()


def _restore(session, ctx, entity_type, entity_id):
    from models.repair import restore_entity

    return restore_entity(session, entity_type=entity_type, entity_id=entity_id, keyring=ctx.keyring,
                          embedder=ctx.embedder, actor="operator:test")


def test_a_restore_does_not_seat_an_agent_in_a_team_deleted_meanwhile(db_session, write_ctx, steward, keyring) -> None:
    """The agent's row is edited out of its team through SQL. The team's signed deletion is still
    refused, since the agent's signed head names the team (dependents are read from heads too).
    With the team's row deleted through SQL as well, restoring the agent must not put it back in
    that team: the restore is refused for the team's tampered row, and nothing is written."""
    from models.errors import EntityReferenced, EntityTampered
    from models.repair import repairs

    world = seat_world(db_session, write_ctx, steward)
    db_session.execute(text("UPDATE agents SET team_id = NULL WHERE id = :id"), {"id": world.agent.id})
    db_session.expire_all()
    with pytest.raises(EntityReferenced):
        with db_session.begin_nested():
            update_entity(db_session, entity_type=E.TEAM, entity_id=world.team.id, ctx=write_ctx,
                          changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})
    db_session.execute(text("UPDATE teams SET deleted_at = now() WHERE id = :id"), {"id": world.team.id})
    db_session.expire_all()
    with pytest.raises(EntityTampered, match=f"team {world.team.id}.*row-content-mismatch"):
        with db_session.begin_nested():
            _restore(db_session, write_ctx, E.AGENT, world.agent.id)
    assert repairs(db_session, entity_id=world.agent.id) == []


def test_a_row_moved_under_another_type_is_not_restored_from_the_other_type_s_chain(
        db_session, write_ctx, steward, keyring) -> None:
    """A skill row written under an industry's id: its chain (an industry's) verifies, but a
    restore must not make a skill row out of an industry's head: refused, nothing written."""
    from models.repair import NotRestorable, repairs

    industry = _industry_row_moved_to_skills(db_session, write_ctx, steward)
    with pytest.raises(NotRestorable):
        with db_session.begin_nested():
            _restore(db_session, write_ctx, E.SKILL, industry)
    assert repairs(db_session, entity_id=industry) == []


def test_a_patch_waiting_on_a_restore_loses_neither(engine, write_ctx, committed_steward, keyring) -> None:
    """A restore holds the row; a PATCH of another field waits for it, then applies on the
    restored row: the signed chain ends with the PATCH, on top of the restored content."""
    import json
    import threading

    from models.chain import history
    from models.chain_verification import verify_entity
    from models.db import make_session_factory, transaction
    from models.entities import Skill
    from models.repair import repairs
    from tests.conftest import lock_waiters, wait_for

    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        skill = _skill(session, write_ctx, committed_steward, 7).id
    with transaction(sessions) as session:
        session.execute(text("UPDATE skills SET description = 'edited by hand' WHERE id = :id"), {"id": skill})
    restoring = sessions()
    outcome: dict = {}

    def patch() -> None:
        try:
            with transaction(sessions) as session:
                update_entity(session, entity_type=E.SKILL, entity_id=skill, changes={"tags": ["patched"]}, ctx=write_ctx)
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    with restoring:
        restoring.begin()
        assert _restore(restoring, write_ctx, E.SKILL, skill).restored
        thread = threading.Thread(target=patch)
        thread.start()
        wait_for(lambda: lock_waiters(engine) >= 1, timeout=20, what="the PATCH to wait for the restore")
        restoring.commit()
        thread.join(timeout=60)
    assert outcome == {"ok": True}, outcome
    with transaction(sessions) as session:
        row = session.get(Skill, skill)
        chain = history(session, entity_id=skill)
        head = json.loads(chain[-1].content)
        assert (row.description, row.tags, row.version) == ("version two", ["patched"], 3)
        assert (head["description"], head["tags"]) == ("version two", ["patched"])
        assert verify_entity(session, entity=row, keyring=keyring).ok
        assert len(repairs(session, entity_id=skill)) == 1


def test_a_deleted_row_of_another_type_under_a_tombstoned_id_is_examined(db_session, write_ctx, steward,
                                                                        keyring) -> None:
    """No guard lifted: the runtime role INSERTs an agent row, marked deleted, under the id of
    a skill deleted before the digest, its head the skill's tombstone. A leaf is matched to a
    row by id and type, but the tombstone was matched by id alone: the agent row was taken for
    the skill at its tombstone and never examined, while the full audit reports it."""
    gone = _skill(db_session, write_ctx, steward, 1)
    update_entity(db_session, entity_type=E.SKILL, entity_id=gone.id, ctx=write_ctx,
                  changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})
    db_session.flush()
    store_digest(db_session, keyring=keyring)
    insert_decoy_agent(db_session, gone.id, deleted_at="deleted_at")
    full, full_findings = run_audit(db_session, keyring)
    assert ("agent", "row-content-mismatch") in {(f.entity_type, f.code) for f in full_findings if f.entity_id == gone.id}
    summary, findings = run_incremental(db_session, keyring)
    assert ("agent", "row-content-mismatch") in {(f.entity_type, f.code) for f in findings if f.entity_id == gone.id}, [
        (f.entity_type, f.code) for f in findings]
    assert summary["non_compliant"] == 1


def test_an_incremental_run_s_report_page_counts_its_clean_entities(db_session, write_ctx, steward, keyring) -> None:
    """Two entities changed since the digest (one clean, one with a row edited), a third's row
    removed: the page says three audited, two with findings, one clean."""
    from models.report_view import report_view

    clean, edited, gone = (_skill(db_session, write_ctx, steward, n) for n in (1, 2, 3))
    gone_id = gone.id
    store_digest(db_session, keyring=keyring)
    for skill in (clean, edited):
        update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "three"}, ctx=write_ctx)
    db_session.flush()
    db_session.execute(text("UPDATE skills SET description = 'by hand' WHERE id = :id"), {"id": edited.id})
    _delete_row(db_session, "skills", gone_id)
    summary, _ = run_incremental(db_session, keyring)
    assert _counts(summary) == (3, 2, 2)
    view = report_view(db_session, run_id=uuid.UUID(summary["run_id"]), keyring=keyring)
    assert (view.entities_audited, view.entities_with_findings, view.clean_entities) == (3, 2, 1)
