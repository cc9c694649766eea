"""A digest attests only heads that verify from the last trusted digest (or the genesis).

Every later incremental audit trusts a stored digest's leaves: the versions up to them are
not checked again. A digest that took a forged or rolled-back head as its row names it
would hide it from every incremental audit after it (``models/digest_check.py``).
"""

import datetime as dt

import pytest
from sqlalchemy import func, select, text

from models.audit_tables import LedgerDigest
from models.entities import EntityType
from models.ledger import HeadsUnverified, store_digest
from models.registry import update_entity
from tests.test_audit import _insert_junk_version, lift_guard, reset_row_to, run_incremental, tamper_content

E = EntityType


def _digests(session) -> int:
    return session.scalar(select(func.count()).select_from(LedgerDigest))


def _refused(session, keyring, match: str) -> None:
    stored = _digests(session)
    with pytest.raises(HeadsUnverified, match=match), session.begin_nested():
        store_digest(session, keyring=keyring)
    assert _digests(session) == stored


def test_a_forged_head_after_the_last_digest_is_refused_and_the_incremental_audit_keeps_seeing_it(
        db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    _insert_junk_version(db_session, skill, as_head=True)  # version 4, a signature nobody made, the row pointed at it
    _refused(db_session, keyring, rf"1 entity heads do not verify from the last trusted digest \(\d+\).*skill {skill.id}: "
                                  r"(bad-signature|rehashed-version|link-hash-mismatch) at version 4")
    _, findings = run_incremental(db_session, keyring)  # still against the digest before the forgery
    assert {f.entity_id for f in findings if f.severity == "critical"} == {skill.id}


def test_a_head_rolled_back_after_the_last_digest_is_refused(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    reset_row_to(db_session, skill, 2)
    _refused(db_session, keyring, f"skill {skill.id}: its head went back from version 3 to 2")


def test_a_version_edited_before_the_first_digest_is_refused_from_the_genesis(db_session, skill, keyring) -> None:
    tamper_content(db_session, skill, keyring)  # version 2 of 3
    _refused(db_session, keyring, rf"from the genesis \(no stored digest can be trusted\).*skill {skill.id}: "
                                  r"content-hash-mismatch at version 2")


def test_an_entity_marked_deleted_by_sql_alone_is_refused(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    db_session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    _refused(db_session, keyring, f"skill {skill.id}: its row is marked deleted, and no version records the deletion")


def test_a_leaf_gone_from_its_chain_is_refused(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version four"}, ctx=write_ctx)
    db_session.flush()
    lift_guard(db_session, "UPDATE entity_versions SET link_hash = :l WHERE entity_id = :e AND version = 3",
               l=b"\x05" * 32, e=skill.id)
    _refused(db_session, keyring, f"skill {skill.id}: version 3, which the last digest holds, is gone from its chain")


def test_signed_changes_since_the_last_digest_are_attested(db_session, skill, steward, write_ctx, keyring) -> None:
    first = store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version four"}, ctx=write_ctx)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
                  ctx=write_ctx)  # a soft delete: a version of its own
    db_session.flush()
    second = store_digest(db_session, keyring=keyring)
    assert (second.id > first.id, second.entity_count) == (True, first.entity_count - 1)  # the deleted skill left it
    _, findings = run_incremental(db_session, keyring)
    assert [f for f in findings if f.severity == "critical"] == []


def test_a_version_a_sealed_retired_key_signed_after_its_seal_is_not_attested(db_session) -> None:
    from tests.test_key_seals import Rotated

    rotated = Rotated(db_session)  # the latest digest is the seal's
    rotated.edit(rotated.skill, rotated.leaked, description="Forged with the leaked key")  # version 3, after the seal
    _refused(db_session, rotated.sealed, f"skill {rotated.skill.id}: signed-after-seal at version 3")
