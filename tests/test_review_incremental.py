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
from models.ledger import store_digest
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


def test_a_row_moved_to_another_table_under_its_id_is_found(db_session, write_ctx, steward, keyring) -> None:
    """An industry's row removed and a skill row written under its id: the leaf (matched by
    id and type) finds no industry, and the skill row is a new entity whose chain is an
    industry's. Both audits report it, non-compliant."""
    industry = create_entity(db_session, entity_type=E.INDUSTRY, ctx=write_ctx, data={
        "name": "Moved Industry", "code": "MOVD", "governance_agent_id": steward}).id
    db_session.flush()
    store_digest(db_session, keyring=keyring)
    db_session.execute(text(
        "INSERT INTO skills (id, external_key, status, tags, attributes, name, skill_key, description, category,"
        " version, head_link_hash, created_at, updated_at, governance_agent_id)"
        " SELECT id, external_key, 'draft', tags, attributes, name, 'moved', description, 'technical', version,"
        " head_link_hash, created_at, updated_at, governance_agent_id FROM industries WHERE id = :id"), {"id": industry})
    _delete_row(db_session, "industries", industry)
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
