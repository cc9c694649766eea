"""The incremental audit against a base changed while it reads (leaf rows deleted mid-run) and
against versions forged onto deleted entities (stop 37's review of the incremental audit)."""

import json

import pytest

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.entities import EntityType
from models.ledger_store import store_digest
from models.registry import create_entity, update_entity
from tests.test_audit import run_incremental

E = EntityType


def _codes(findings, entity_id) -> set[str]:
    return {f.code for f in findings if f.entity_id == entity_id}


def _committed_skill(engine, write_ctx, steward, name: str, versions: int):
    with Session(engine) as session, session.begin():
        entity_id = create_entity(session, entity_type=E.SKILL, ctx=write_ctx, data={
            "name": name, "skill_key": name.lower().replace(" ", "-"), "category": "technical",
            "description": "version 1", "governance_agent_id": steward}).id
        for n in range(2, versions + 1):
            update_entity(session, entity_type=E.SKILL, entity_id=entity_id, changes={"description": f"version {n}"},
                          ctx=write_ctx)
    return entity_id


def _reset_row(session, entity_id, version: int) -> None:
    """Point the row back at an older signed version, fields and head (plain UPDATE, no key)."""
    old = session.execute(text("SELECT content, link_hash FROM entity_versions WHERE entity_id = :e AND version = :v"),
                          {"e": entity_id, "v": version}).one()
    session.execute(text("UPDATE skills SET description = :d, version = :v, head_link_hash = :h WHERE id = :id"),
                    {"d": json.loads(bytes(old.content))["description"], "v": version, "h": bytes(old.link_hash),
                     "id": entity_id})


def test_leaf_rows_pruned_while_an_incremental_audit_reads_do_not_hide_a_rolled_back_row(
        engine, committed_steward, write_ctx, keyring, monkeypatch) -> None:
    """The digest is checked once, at the start; its leaf rows are then read by later
    statements (READ COMMITTED). A DELETE of them (what the guard allows anyone with DML, as
    beat's pruning does) committed after the entities were compared with their leaves left
    the version-count search and the vanished-leaf search with no leaves to look through:
    a row reset behind its grown chain went unreported, in a run with no finding."""
    import models.incremental_audit as incremental

    victim = _committed_skill(engine, write_ctx, committed_steward, "Rolled Back", 2)
    with Session(engine) as session, session.begin():
        digest_id = store_digest(session, keyring=keyring).id  # leaf at version 2
    with Session(engine) as session, session.begin():
        update_entity(session, entity_type=E.SKILL, entity_id=victim, changes={"description": "version 3"}, ctx=write_ctx)
    with Session(engine) as session, session.begin():
        _reset_row(session, victim, 2)  # the row replays the leaf although version 3 exists: stale-head
    totals, pruned = incremental.version_totals, []

    def pruned_meanwhile(session, digest):  # noqa: ANN001, ANN202
        if not pruned:
            pruned.append(True)
            with Session(engine) as other, other.begin():  # plain DML: the guard lets an unkept digest's rows go
                other.execute(text("DELETE FROM ledger_digest_tombstones WHERE digest_id = :d"), {"d": digest_id})
                other.execute(text("DELETE FROM ledger_digest_heads WHERE digest_id = :d"), {"d": digest_id})
        return totals(session, digest)

    monkeypatch.setattr(incremental, "version_totals", pruned_meanwhile)
    with Session(engine) as session, session.begin():
        summary, findings = run_incremental(session, keyring)
        codes, victim_codes = {f.code for f in findings}, _codes(findings, victim)
        session.rollback()
    assert pruned
    assert "stale-head" in victim_codes or "digest-invalid" in codes
    assert summary["non_compliant"] or "digest-invalid" in summary["run_level_findings"]


@pytest.mark.parametrize("version", [5, 9, 0])
def test_a_version_forged_onto_an_entity_deleted_before_the_digest_is_examined(
        db_session, skill, write_ctx, keyring, version) -> None:
    """A plain INSERT (what the triggers allow) of a version behind a deleted entity's row:
    its chain grew since the digest, as a live one's can, and the full audit reports it.
    Its versions were counted apart, from its row, so the counts balanced over it."""
    from tests.test_audit import _insert_junk_version, run_audit
    from tests.test_incremental_audit_coverage import _delete_signed

    _delete_signed(db_session, skill, write_ctx)  # version 4 records the deletion
    store_digest(db_session, keyring=keyring)  # a tombstone at version 4
    head = db_session.execute(text("SELECT link_hash FROM entity_versions WHERE entity_id = :e AND version = 4"),
                              {"e": skill.id}).scalar_one()
    _insert_junk_version(db_session, skill, version=version, prev_link=bytes(head))
    _, full = run_audit(db_session, keyring)
    assert _codes(full, skill.id)  # the full audit sees it
    summary, findings = run_incremental(db_session, keyring)
    assert summary["coverage"]["version_count_balanced"] is False
    assert _codes(findings, skill.id) and summary["non_compliant"] == 1
