"""Attacks on the trust an incremental audit puts in the latest stored digest.

The incremental audit examines only what changed since the digest and takes the rest on the
digest's word; each test here makes a change a full audit reports and checks that the
incremental audit does not report the registry clean, or hide the change behind another.
"""

import hashlib
import os

import pytest
from sqlalchemy import text

from models.entities import EntityType
from models.ledger_store import store_digest
from models.registry import create_entity, update_entity
from tests.test_audit import run_audit, run_incremental, tamper_row, version_row
from tests.test_incremental_audit_rowless_and_seats import insert_decoy_agent

E = EntityType


def _codes(findings, entity_id) -> set[str]:
    return {f.code for f in findings if f.entity_id == entity_id}


@pytest.mark.parametrize("lifted", [
    "ALTER TABLE entity_versions DISABLE TRIGGER entity_versions_no_update_delete",
    "ALTER TABLE ledger_digest_heads ENABLE TRIGGER ledger_digest_heads_no_update",  # not ALWAYS: a replica skips it
])
def test_an_incremental_audit_with_the_guards_lifted_is_not_clean(db_session, skill, keyring, lifted) -> None:
    """With a guard lifted (rule L0-03 broken) the digest vouches for nothing: a version behind
    it, or the digest's own rows, could have been rewritten in place and set back unseen. A
    full audit reports every entity non-compliant under L0-03; an incremental one with nothing
    changed since the digest examined nothing and reported the registry clean."""
    store_digest(db_session, keyring=keyring)
    db_session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))  # ALTER TABLE refuses a table with deferred checks pending
    db_session.execute(text(lifted))
    db_session.execute(text("SET CONSTRAINTS ALL DEFERRED"))
    full, _ = run_audit(db_session, keyring)
    assert full["non_compliant"] == full["total_entities"] > 0
    summary, findings = run_incremental(db_session, keyring)
    run_level = [f for f in findings if f.entity_id is None]
    assert [f.code for f in run_level] == ["digest-invalid"] and "L0-03" in run_level[0].detail
    assert summary["coverage"]["signatures"] == "none" and "NOT trusted" in summary["coverage"]["digest"]


def test_a_decoy_row_reading_another_entity_s_chain_does_not_balance_a_forged_version_away(
        db_session, skill, steward, write_ctx, keyring) -> None:
    """No guard lifted, INSERTs only. A version forged behind a row left at its leaf makes the
    ledger's version count exceed what the leaves and the examined chains account for, and the
    search that follows finds it. A decoy, a deleted agent row under the id of an unchanged
    one-version skill, was examined (the digest holds no agent of that id) and counted the
    skill's chain as its own growth: one version more on the examined side, the counts
    balanced, and the forgery went unreported (only the decoy was), where a full audit
    reports both."""
    other = create_entity(db_session, entity_type=E.SKILL, ctx=write_ctx, data={
        "name": "Other Skill", "skill_key": "other-skill", "category": "technical", "description": "one",
        "governance_agent_id": steward})
    db_session.flush()
    store_digest(db_session, keyring=keyring)
    head = version_row(db_session, skill.id, 3)
    content = bytes(head.content)
    db_session.execute(text(
        "INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, link_hash,"
        " kid, signature, actor) VALUES ('skill', :e, 4, :c, :h, :p, :l, :k, :g, 'intruder')"),
        {"e": skill.id, "c": content, "h": hashlib.sha256(content).digest(), "p": bytes(head.link_hash),
         "l": os.urandom(32), "k": head.kid, "g": os.urandom(64)})  # the skill's row stays at its leaf
    insert_decoy_agent(db_session, other.id, deleted_at="now()")
    _, full_findings = run_audit(db_session, keyring)
    assert "stale-head" in _codes(full_findings, skill.id)
    summary, findings = run_incremental(db_session, keyring)
    assert "row-content-mismatch" in _codes(findings, other.id)  # the decoy
    assert "stale-head" in _codes(findings, skill.id), [(f.entity_id, f.code) for f in findings]
    assert summary["coverage"]["version_count_balanced"] is False


@pytest.mark.parametrize("version_column_too", [False, True])
def test_a_row_edited_after_a_signed_change_is_not_laundered_by_the_next_digest(db_session, skill, write_ctx, keyring,
                                                                                version_column_too) -> None:
    """A row edited through SQL (no new version) after a signed change since the digest is
    seen by an incremental audit: its head moved, so it is examined. The next digest checked
    the head's chain but not the row against it, and attested the head: from then on the
    entity was unchanged since the latest digest, never examined, and every incremental audit
    reported clean while a full audit reports row-content-mismatch. The digest holds it back."""
    store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "four"}, ctx=write_ctx)
    db_session.flush()
    tamper_row(db_session, skill, keyring)
    if version_column_too:  # no governed field, and not what the digest judges the row by
        db_session.execute(text("UPDATE skills SET version = version + 5 WHERE id = :id"), {"id": skill.id})
    _, before = run_incremental(db_session, keyring)
    assert _codes(before, skill.id)
    held: list[str] = []
    store_digest(db_session, keyring=keyring, held_back=held)
    assert [str(skill.id) in h and "row-content-mismatch" in h for h in held] == [True]
    _, after = run_incremental(db_session, keyring)
    _, full = run_audit(db_session, keyring)
    assert _codes(after, skill.id) == _codes(full, skill.id) == _codes(before, skill.id)


def test_a_row_version_column_edited_after_a_signed_change_is_not_laundered_by_the_next_digest(
        db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "four"}, ctx=write_ctx)
    db_session.flush()
    db_session.execute(text("UPDATE skills SET version = version + 5 WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    _, before = run_incremental(db_session, keyring)
    assert _codes(before, skill.id) == {"head-mismatch"}
    store_digest(db_session, keyring=keyring)
    _, after = run_incremental(db_session, keyring)
    _, full = run_audit(db_session, keyring)
    assert _codes(after, skill.id) == _codes(full, skill.id) == {"head-mismatch"}
