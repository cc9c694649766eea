"""Attacks on the trust an incremental audit puts in the latest stored digest (helper-198's review).

The incremental audit examines only what changed since the digest and takes the rest on the
digest's word; each test here makes a change a full audit reports and checks that the
incremental audit does not report the registry clean, or hide the change behind another.
"""


import pytest
from sqlalchemy import text

from models.entities import EntityType
from models.ledger_store import store_digest
from tests.test_audit import run_audit, run_incremental

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

