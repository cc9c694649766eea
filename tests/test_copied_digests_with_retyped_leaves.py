"""A copied stored ledger digest whose leaf rows name no entity type, or one their entity never had, is not trusted
(stop 42's review of the incremental audit).

An attacker with plain DML (no trigger lifted) can store a *copy* of the latest signed
digest: ``ledger_digests`` takes an INSERT dated no later than now() (the latest digest's
own ``as_of`` will do), its leaf and tombstone rows take INSERTs while the row is the
unsigned placeholder, and the placeholder takes any UPDATE that keeps its ``as_of``. The
copy, at the same ``as_of`` with a higher id, is then the latest digest, and its rows are
the attacker's: their ids and links must hash to the signed roots, but the type and
version stored beside each are not covered by them.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from models.ledger_store import store_digest
from tests.test_audit import run_incremental


def _copy_of_latest_digest(session, digest_id: int, *, entity_id, entity_type: str, version: int) -> int:
    """A copy of stored digest ``digest_id`` made with plain DML, one leaf's type and version rewritten."""
    copy = session.execute(text(
        "INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
        "SELECT as_of, 0, heads_root, '', '', '{}'::jsonb FROM ledger_digests WHERE id = :d RETURNING id"),
        {"d": digest_id}).scalar_one()
    for table in ("ledger_digest_heads", "ledger_digest_tombstones"):
        session.execute(text(
            f"INSERT INTO {table} (digest_id, entity_id, entity_type, version, link_hash) "
            "SELECT :c, entity_id, CASE WHEN entity_id = :e THEN :t ELSE entity_type END, "
            "CASE WHEN entity_id = :e THEN :v ELSE version END, link_hash FROM {table} WHERE digest_id = :d".replace(
                "{table}", table)), {"c": copy, "d": digest_id, "e": entity_id, "t": entity_type, "v": version})
    session.execute(text(
        "UPDATE ledger_digests c SET entity_count = o.entity_count, kid = o.kid, signature = o.signature, "
        "document = o.document FROM ledger_digests o WHERE o.id = :d AND c.id = :c"), {"d": digest_id, "c": copy})
    session.expire_all()
    return copy


@pytest.mark.parametrize("retyped", ["bogus", "agent"], ids=["no-entity-type", "another-entity-type"])
def test_a_copied_digest_whose_leaf_is_retyped_at_version_0_is_not_trusted(db_session, skill, keyring, retyped) -> None:
    """A leaf row's type is not covered by the signed root, and a row of version 0 (one that
    names no version) had its type checked against nothing: a copy of the latest digest whose
    skill leaf was typed ``bogus``, or ``agent``, was trusted. The incremental audit then
    reported a clean run (or a false ``entity-deleted``) against a digest Plant never stored,
    and every later digest, taking it as its base, held the skill back at that row for good.
    An honest version-0 row takes its entity row's type or its chain's."""
    digest = store_digest(db_session, keyring=keyring)
    copy = _copy_of_latest_digest(db_session, digest.id, entity_id=skill.id, entity_type=retyped, version=0)
    summary, findings = run_incremental(db_session, keyring)
    # Since helper-208 the copy is passed over (and reported) for the genuine rows of the same signed document.
    assert summary["coverage"]["since_digest"] == digest.id and summary["coverage"]["digests_passed_over"] == 1
    assert [f.code for f in findings] == ["digest-invalid"], [(f.code, f.entity_type, f.detail) for f in findings]
    assert "entity type" in findings[0].detail and f"stored ledger digest {copy} " in findings[0].detail
    held: list[str] = []
    store_digest(db_session, keyring=keyring, held_back=held)  # the copy is no base: checked from the genuine one
    assert held == []
