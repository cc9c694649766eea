"""A digest attests only heads that verify from the newest digest it can trust (or the genesis).

Every later incremental audit trusts a stored digest's leaves: the versions up to them are
not checked again. A digest that took a forged or rolled-back head as its row names it
would hide it from every incremental audit after it. A head that fails is held back
instead: the digest keeps the entity's trusted leaf (or none), is stored all the same, and
every later incremental audit goes on reporting the entity (``models/digest_check.py``).
"""

import datetime as dt
import os
import re

import pytest

from sqlalchemy import text

from models.chain import GENESIS_LINK
from models.entities import EntityType
from models.ledger_store import store_digest
from models.registry import update_entity
from tests.conftest import EMBEDDER
from tests.test_audit import (
    _insert_junk_version, lift_guard, reset_row_to, run_incremental, tamper_content, tamper_delete_newest, version_row,
)

E = EntityType


def _leaf(session, digest_id, entity_id) -> tuple[int, bytes] | None:
    row = session.execute(text("SELECT version, link_hash FROM ledger_digest_heads WHERE digest_id = :d AND entity_id = :e"),
                          {"d": digest_id, "e": entity_id}).first()
    return (row[0], bytes(row[1])) if row else None


def _held_back(session, keyring, entity, match: str, *, leaf: tuple[int, bytes], tombstone: bool = False):
    """The next digest is stored, holds ``entity`` at ``leaf`` (kept as a leaf, or with
    ``tombstone`` as a tombstone), says why, and the incremental audit against it still
    reports the entity."""
    held: list[str] = []
    digest = store_digest(session, keyring=keyring, held_back=held)
    assert len(held) == 1 and re.search(match, held[0]) and held[0].startswith(f"{entity.entity_type_value.value} {entity.id}"), held
    assert (_leaf(session, digest.id, entity.id), _tombstone(session, digest.id, entity.id)) == ((None, leaf) if tombstone else (leaf, None))
    _, findings = run_incremental(session, keyring)
    assert entity.id in {f.entity_id for f in findings if f.severity == "critical"}, findings
    return digest


def _head(session, entity, version) -> tuple[int, bytes]:
    return version, bytes(version_row(session, entity.id, version).link_hash)


def test_a_forged_head_after_the_last_digest_is_held_at_its_trusted_leaf(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    trusted = _head(db_session, skill, 3)
    _insert_junk_version(db_session, skill, as_head=True)  # version 4, a signature nobody made, the row pointed at it
    _held_back(db_session, keyring, skill, r"(bad-signature|rehashed-version|link-hash-mismatch) at version 4", leaf=trusted)


def test_a_head_rolled_back_after_the_last_digest_is_held_at_its_trusted_leaf(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    trusted = _head(db_session, skill, 3)
    reset_row_to(db_session, skill, 2)
    _held_back(db_session, keyring, skill, "its head went back from version 3 to 2", leaf=trusted)


def test_a_version_edited_before_the_first_digest_holds_its_entity_at_the_genesis(db_session, skill, keyring) -> None:
    tamper_content(db_session, skill, keyring)  # version 2 of 3
    _held_back(db_session, keyring, skill, "content-hash-mismatch at version 2", leaf=(0, GENESIS_LINK))


def test_a_signature_after_the_trusted_leaf_is_checked_not_only_the_head_s(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    trusted = _head(db_session, skill, 3)
    for description in ("version four", "version five"):
        update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": description}, ctx=write_ctx)
    db_session.flush()
    lift_guard(db_session, "UPDATE entity_versions SET signature = :g WHERE entity_id = :e AND version = 4",
               g=os.urandom(64), e=skill.id)
    _held_back(db_session, keyring, skill, "bad-signature at version 4", leaf=trusted)


def test_an_entity_marked_deleted_by_sql_alone_is_held_at_its_trusted_leaf(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    trusted = _head(db_session, skill, 3)
    db_session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    _held_back(db_session, keyring, skill, "its row is marked deleted but version 3 does not record a deletion", leaf=trusted)


def test_a_leaf_gone_from_its_chain_is_held_as_a_leaf_naming_no_version(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    _, link = _head(db_session, skill, 3)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version four"}, ctx=write_ctx)
    db_session.flush()
    lift_guard(db_session, "UPDATE entity_versions SET link_hash = :l WHERE entity_id = :e AND version = 3",
               l=b"\x05" * 32, e=skill.id)
    _held_back(db_session, keyring, skill, "version 3, which the last trusted digest holds, is gone from its chain",
               leaf=(0, link))


def test_an_untrusted_latest_digest_is_passed_over_for_the_newest_trusted_one(db_session, skill, keyring) -> None:
    """Breaking the latest digest (a leaf row deleted by plain SQL) does not make the next
    one skip the checks against what an older digest held."""
    store_digest(db_session, keyring=keyring)
    trusted = _head(db_session, skill, 3)
    latest = store_digest(db_session, keyring=keyring)
    db_session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    db_session.execute(text("DELETE FROM ledger_digest_heads WHERE digest_id = :d AND entity_id <> :e"),
                       {"d": latest.id, "e": skill.id})
    db_session.expire_all()
    _held_back(db_session, keyring, skill, "version 3 does not record a deletion", leaf=trusted)


def test_with_no_digest_to_trust_every_deleted_entity_is_checked(db_session, skill, keyring) -> None:
    latest = store_digest(db_session, keyring=keyring)
    db_session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    db_session.execute(text("DELETE FROM ledger_digest_heads WHERE digest_id = :d AND entity_id <> :e"),
                       {"d": latest.id, "e": skill.id})  # the only digest, now untrusted
    db_session.expire_all()
    _held_back(db_session, keyring, skill, "does not record a deletion", leaf=(0, GENESIS_LINK))


def test_a_leaf_naming_no_version_from_before_the_check_keeps_its_entity_held(db_session, skill, keyring, monkeypatch) -> None:
    """A digest stored before heads were checked may hold a leaf of version 0 with a link no
    version carries. Its entity is held and reported from then on, and a restore refuses it:
    such a leaf cannot be told from a trusted leaf whose version was deleted since (a
    rollback, which a restore must not vouch for: review-fixes finding 1)."""
    import models.ledger_store
    from models.embeddings import HashingEmbedder
    from models.repair import NotRestorable, restore_entity

    db_session.execute(text("UPDATE skills SET head_link_hash = :h WHERE id = :id"), {"h": b"\x07" * 32, "id": skill.id})
    db_session.expire_all()
    with monkeypatch.context() as patched:
        patched.setattr(models.ledger_store, "check_heads", lambda *_, **__: [])  # as a digest stored before the check
        old = store_digest(db_session, keyring=keyring)
    assert _leaf(db_session, old.id, skill.id) == (0, b"\x07" * 32)
    with pytest.raises(NotRestorable, match="at a link its chain no longer has"):
        restore_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, keyring=keyring, embedder=HashingEmbedder(),
                       actor="operator:test")
    _held_back(db_session, keyring, skill, "the link its last trusted leaf holds is gone from its chain", leaf=(0, b"\x07" * 32))


def test_a_rollback_that_deletes_the_trusted_version_stays_held(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    _, link = _head(db_session, skill, 3)
    tamper_delete_newest(db_session, skill, keyring)  # version 3 deleted, the row reset to version 2
    _held_back(db_session, keyring, skill, "its head went back from version 3 to 2", leaf=(0, link))
    _held_back(db_session, keyring, skill, "the link its last trusted leaf holds is gone from its chain", leaf=(0, link))


def test_a_live_row_whose_head_records_its_deletion_is_held(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    trusted = _head(db_session, skill, 3)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
                  ctx=write_ctx)
    db_session.flush()
    db_session.execute(text("UPDATE skills SET deleted_at = NULL WHERE id = :id"), {"id": skill.id})  # undeleted by SQL alone
    db_session.expire_all()
    _held_back(db_session, keyring, skill, "its row is live but version 4 records its deletion", leaf=trusted)


def test_signed_changes_since_the_last_digest_are_attested(db_session, skill, steward, write_ctx, keyring) -> None:
    first = store_digest(db_session, keyring=keyring)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version four"}, ctx=write_ctx)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
                  ctx=write_ctx)  # a soft delete: a version of its own
    db_session.flush()
    held: list[str] = []
    second = store_digest(db_session, keyring=keyring, held_back=held)
    assert (held, second.entity_count) == ([], first.entity_count - 1)  # the deleted skill left it
    _, findings = run_incremental(db_session, keyring)
    assert [f for f in findings if f.severity == "critical"] == []


def test_a_version_a_sealed_retired_key_signed_after_its_seal_is_not_attested(db_session) -> None:
    from tests.test_key_seals import Rotated

    rotated = Rotated(db_session)  # the latest digest is the seal's, at version 2
    trusted = _head(db_session, rotated.skill, 2)
    rotated.edit(rotated.skill, rotated.leaked, description="Forged with the leaked key")  # version 3, after the seal
    _held_back(db_session, rotated.sealed, rotated.skill, "signed-after-seal at version 3", leaf=trusted)


def test_a_held_back_digest_is_trusted_as_the_next_one_s_base(db_session, skill, keyring) -> None:
    """Its leaves are what the chain says (version 0 for a link none has), so the digest
    after it can start from it."""
    store_digest(db_session, keyring=keyring)
    reset_row_to(db_session, skill, 2)
    held_at = store_digest(db_session, keyring=keyring, held_back=[])
    from models.ledger_trust import stored_digest_problem

    assert stored_digest_problem(db_session, held_at, keyring) is None  # leaves, root and versions as signed


def test_beat_s_digest_task_counts_and_names_what_it_held_back(worker_sessions, engine, write_ctx) -> None:
    from sqlalchemy.orm import Session

    from models.seed import bootstrap_steward
    from tasks import audit

    with Session(engine) as session, session.begin():
        steward = bootstrap_steward(session, write_ctx)
    assert audit.ledger_store_digest()["heads_held_back"] == 0
    with Session(engine) as session, session.begin():
        session.execute(text("UPDATE agents SET deleted_at = now() WHERE id = :id"), {"id": steward})
    result = audit.ledger_store_digest()
    assert result["heads_held_back"] == 1 and result["held_back"][0].startswith(f"agent {steward}: "), result


def test_a_live_entity_held_at_the_genesis_is_checked_again_once_deleted(db_session, skill, keyring) -> None:
    tamper_content(db_session, skill, keyring)
    store_digest(db_session, keyring=keyring, held_back=[])  # holds it at the genesis
    db_session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    _held_back(db_session, keyring, skill, "content-hash-mismatch at version 2", leaf=(0, GENESIS_LINK))


def _committed_after_a_digest(engine, write_ctx, keyring, steward, key: str):
    """A digest committed, then a skill (version 1) committed after it."""
    from sqlalchemy.orm import Session

    from models.registry import create_entity

    with Session(engine) as session, session.begin():
        store_digest(session, keyring=keyring)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        return create_entity(session, entity_type=E.SKILL, ctx=write_ctx, data={
            "name": key.replace("-", " ").title(), "skill_key": key, "category": "technical", "description": "one",
            "governance_agent_id": steward})


def test_an_entity_created_after_the_trusted_digest_and_deleted_by_sql_is_checked(engine, committed_steward, write_ctx, keyring) -> None:
    """Committed transactions: the entity's first version is stamped after the digest's time."""
    from sqlalchemy.orm import Session

    skill = _committed_after_a_digest(engine, write_ctx, keyring, committed_steward, "made-after")
    with Session(engine) as session, session.begin():
        session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    with Session(engine) as session, session.begin():
        _held_back(session, keyring, skill, "its row is marked deleted but version 1 does not record a deletion",
                   leaf=(0, GENESIS_LINK))


def test_digests_made_up_through_sql_do_not_push_the_trusted_one_out_of_reach(db_session, skill, keyring) -> None:
    from models.digest_base import BASES_TRIED, trusted_base
    from models.ledger_trust import stored_digest_problem

    real = store_digest(db_session, keyring=keyring)
    for _ in range(BASES_TRIED + 1):
        made_up = db_session.scalar(text(
            "INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
            "VALUES (now(), 1, :root, 'k', '', '{}') RETURNING id"), {"root": bytes(32)})
        db_session.execute(text("INSERT INTO ledger_digest_heads (digest_id, entity_id, entity_type, version, link_hash) "
                                "VALUES (:d, gen_random_uuid(), 'skill', 0, :link)"), {"d": made_up, "link": bytes(32)})
    assert trusted_base(db_session, keyring, stored_digest_problem).id == real.id


def test_a_key_seal_refuses_to_hold_a_head_back_for_good(engine, settings, clean_db, tmp_path) -> None:
    """A seal's digest decides for good what its key signed before the seal: held at an older
    version, the entity's later versions by that key would all read as forged."""
    import pytest
    from sqlalchemy.orm import Session, sessionmaker

    from models.embeddings import HashingEmbedder
    from models.errors import SigningKeyError
    from models.key_seals import seal_retired_keys
    from models.registry import WriteContext
    from models.seed import bootstrap_steward
    from models.settings import load_settings
    from models.signing import KeyRing
    from models.key_material import generate_ed25519

    old, new = generate_ed25519(), generate_ed25519()
    own = load_settings(database_url=settings.database_url, data_dir=tmp_path / "data")
    own.active_signing_key_path.parent.mkdir(parents=True)
    own.active_signing_key_path.write_bytes(new.private_pem())
    own.active_signing_key_path.chmod(0o600)
    own.retired_signing_keys_path.mkdir(parents=True)
    (own.retired_signing_keys_path / "old.pem").write_bytes(old.verifier().public_pem())
    with Session(engine) as session, session.begin():
        steward = bootstrap_steward(session, WriteContext("test", KeyRing(old), HashingEmbedder()))
        lift_guard(session, "UPDATE entity_versions SET content = content || ' '::bytea WHERE entity_id = :e AND version = 1",
                   e=steward)
    with pytest.raises(SigningKeyError, match=rf"do not verify \(e\.g\. agent {steward}: content-hash-mismatch.*nothing was sealed"):
        seal_retired_keys(own, sessionmaker(engine))
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM ledger_digests")) == 0


def test_a_forged_head_carrying_the_genesis_link_is_never_attested(db_session, skill, keyring) -> None:
    """A placeholder names no version, whatever version an intruder gives the genesis link."""
    _insert_junk_version(db_session, skill, link=GENESIS_LINK, as_head=True)  # version 4, the row pointed at it
    _held_back(db_session, keyring, skill, "its head names no version", leaf=(0, GENESIS_LINK))
    held: list[str] = []
    store_digest(db_session, keyring=keyring, held_back=held)  # the next hour's: checked again, held again
    assert [h for h in held if str(skill.id) in h], held
    _, findings = run_incremental(db_session, keyring)
    assert skill.id in {f.entity_id for f in findings if f.severity == "critical"}


def test_a_placeholder_leaf_is_not_compared_by_the_tampering_check(db_session, skill, keyring) -> None:
    from models.audit import check_entity
    from models.embeddings import HashingEmbedder
    from models.repair import restore_entity

    db_session.execute(text("UPDATE skills SET head_link_hash = :h WHERE id = :id"), {"h": b"\x07" * 32, "id": skill.id})
    db_session.expire_all()
    store_digest(db_session, keyring=keyring, held_back=[])  # held at the placeholder
    restore_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, keyring=keyring, embedder=HashingEmbedder(),
                   actor="operator:test")
    assert not check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER).tampered


def _delete_signed(session, entity, write_ctx) -> None:
    update_entity(session, entity_type=E.SKILL, entity_id=entity.id, changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
                  ctx=write_ctx)
    session.flush()


def _tombstone(session, digest_id, entity_id) -> tuple[int, bytes] | None:
    row = session.execute(text("SELECT version, link_hash FROM ledger_digest_tombstones WHERE digest_id = :d AND entity_id = :e"),
                          {"d": digest_id, "e": entity_id}).first()
    return (row[0], bytes(row[1])) if row else None


def _undelete_at(session, entity, version) -> None:
    session.execute(text("UPDATE skills SET deleted_at = NULL WHERE id = :id"), {"id": entity.id})
    reset_row_to(session, entity, version)


def test_an_entity_brought_back_by_deleting_its_signed_deletion_is_held(db_session, skill, write_ctx, keyring) -> None:
    """helper-82's High: the deletion version deleted with the guard lifted, the row live again
    at its previous head. The digest that checked the deletion keeps its tombstone, so the
    next one sees the entity come back rather than a new one to check from the genesis."""
    store_digest(db_session, keyring=keyring)
    _delete_signed(db_session, skill, write_ctx)  # version 4 records the deletion
    held: list[str] = []
    digest = store_digest(db_session, keyring=keyring, held_back=held)
    deletion = _head(db_session, skill, 4)
    assert held == [] and _leaf(db_session, digest.id, skill.id) is None and _tombstone(db_session, digest.id, skill.id) == deletion
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 4", e=skill.id)
    _undelete_at(db_session, skill, 3)
    _, findings = run_incremental(db_session, keyring)  # before the next digest: examined from the tombstone
    assert {(f.entity_id, f.code) for f in findings if f.severity == "critical"} >= {(skill.id, "head-rolled-back")}, findings
    _held_back(db_session, keyring, skill, "it is live again after its deletion at version 4", leaf=(0, deletion[1]), tombstone=True)
    _held_back(db_session, keyring, skill, "the link its last trusted leaf holds is gone from its chain", leaf=(0, deletion[1]),
               tombstone=True)


def test_an_entity_marked_live_again_by_sql_alone_is_held_at_its_deletion(db_session, skill, write_ctx, keyring) -> None:
    _delete_signed(db_session, skill, write_ctx)
    store_digest(db_session, keyring=keyring)
    deletion = _head(db_session, skill, 4)
    _undelete_at(db_session, skill, 3)  # the deletion version stays in the chain
    _, findings = run_incremental(db_session, keyring)
    assert skill.id in {f.entity_id for f in findings if f.severity == "critical"}, findings
    _held_back(db_session, keyring, skill, "it is live again after its deletion at version 4", leaf=deletion, tombstone=True)
    _held_back(db_session, keyring, skill, "it is live again after its deletion at version 4", leaf=deletion, tombstone=True)


def test_an_entity_marked_live_at_its_deletion_head_stays_held_until_restored(db_session, skill, write_ctx, keyring) -> None:
    """helper-83: held as a leaf at its deletion version, the next digest found the leaf
    unchanged and attested a live head recording its deletion; a tombstone kept instead
    holds it at every digest, until it is restored to its signed deletion."""
    from models.embeddings import HashingEmbedder
    from models.repair import restore_entity

    _delete_signed(db_session, skill, write_ctx)
    store_digest(db_session, keyring=keyring)
    deletion = _head(db_session, skill, 4)
    db_session.execute(text("UPDATE skills SET deleted_at = NULL WHERE id = :id"), {"id": skill.id})  # no guard lifted
    db_session.expire_all()
    for _ in range(2):
        _held_back(db_session, keyring, skill, "it is live again after its deletion at version 4", leaf=deletion, tombstone=True)
    assert restore_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, keyring=keyring, embedder=HashingEmbedder(),
                          actor="operator:test").restored
    held: list[str] = []
    digest = store_digest(db_session, keyring=keyring, held_back=held)
    assert held == [] and _tombstone(db_session, digest.id, skill.id) == deletion


def _as_stored_before_0018(session, digest, keyring) -> None:
    """Give ``digest`` the document a digest stored before migration 0018 has (type v1, no
    tombstones), signed by ``keyring``, and no tombstone rows, as an upgrade leaves one."""
    import json

    from models.ledger_digest import sign_root

    document = sign_root(digest.as_of, digest.entity_count, bytes(digest.heads_root), keyring)
    lift_guard(session, "UPDATE ledger_digests SET document = :doc, signature = :sig WHERE id = :d", table="ledger_digests",
               doc=json.dumps(document), sig=document["signature"], d=digest.id)
    session.execute(text("DELETE FROM ledger_digest_tombstones WHERE digest_id = :d"), {"d": digest.id})
    lift_guard(session, "UPDATE ledger_digests_v2_began SET began_at = :t WHERE began_at < :t", table="ledger_digests_v2_began",
               t=digest.as_of)  # the upgrade came after it
    session.refresh(digest)


def test_a_deleted_entity_s_chain_is_not_checked_again_while_its_tombstone_stands(db_session, skill, write_ctx, keyring) -> None:
    """A tombstone vouches for its chain up to the deletion, as a leaf does: editing a version
    before it is the full audit's to find. A digest stored before migration 0018 keeps no
    tombstone, so the next one checks every deleted entity it does not hold from the genesis."""
    from models.ledger_trust import stored_digest_problem

    _delete_signed(db_session, skill, write_ctx)
    first = store_digest(db_session, keyring=keyring)
    lift_guard(db_session, "UPDATE entity_versions SET signature = :g WHERE entity_id = :e AND version = 2", g=os.urandom(64),
               e=skill.id)
    held: list[str] = []
    legacy = store_digest(db_session, keyring=keyring, held_back=held)
    assert held == []
    for digest in (first, legacy):  # the database's history as an upgrade from 0017 leaves it
        _as_stored_before_0018(db_session, digest, keyring)
    assert stored_digest_problem(db_session, legacy, keyring) is None
    lift_guard(db_session, "INSERT INTO ledger_digest_tombstones SELECT :d, entity_id, entity_type, version, link_hash "
               "FROM ledger_digest_tombstones WHERE digest_id = :d - 1", table="ledger_digest_tombstones", d=legacy.id)  # read by nothing
    digest = store_digest(db_session, keyring=keyring, held_back=held)
    assert len(held) == 1 and "bad-signature at version 2" in held[0], held
    assert _leaf(db_session, digest.id, skill.id) == (0, GENESIS_LINK) and _tombstone(db_session, digest.id, skill.id) is None


def test_tombstones_are_trusted_only_as_signed(db_session, skill, write_ctx, keyring) -> None:
    """helper-83 and helper-84: the tombstones' count and root are members of the digest's
    signed document, so no SQL edit, of rows or columns, makes a digest's tombstones other
    than signed, nor a digest stored since migration 0018 pass as one stored before."""
    from models.digest_base import trusted_base
    from models.ledger_trust import stored_digest_problem

    _delete_signed(db_session, skill, write_ctx)
    older = store_digest(db_session, keyring=keyring)
    latest = store_digest(db_session, keyring=keyring)
    assert latest.document["tombstone_count"] == 1
    db_session.execute(text("DELETE FROM ledger_digest_tombstones WHERE digest_id = :d"), {"d": latest.id})  # as pruning may
    assert stored_digest_problem(db_session, latest, keyring) == "its 0 stored tombstones do not hash to its signed tombstones_root"
    assert trusted_base(db_session, keyring, stored_digest_problem).id == older.id
    lift_guard(db_session, "UPDATE ledger_digests SET document = document - 'tombstone_count' - 'tombstones_root' "
               "|| '{\"type\": \"plant.ledger-digest.v1\"}' WHERE id = :d", table="ledger_digests", d=older.id)
    db_session.refresh(older)
    assert stored_digest_problem(db_session, older, keyring) == ("its signed document cannot be trusted: its signature does not "
                                                                 "match its members")


def test_a_deletion_undone_behind_a_digest_passed_over_is_held_against_an_older_one(db_session, skill, write_ctx, keyring) -> None:
    """The base passed over is named; the older one still keeps the tombstone."""
    _delete_signed(db_session, skill, write_ctx)
    older = store_digest(db_session, keyring=keyring)
    latest = store_digest(db_session, keyring=keyring)
    db_session.execute(text("DELETE FROM ledger_digest_tombstones WHERE digest_id = :d"), {"d": latest.id})
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 4", e=skill.id)
    _undelete_at(db_session, skill, 3)
    passed_over: list[str] = []
    held: list[str] = []
    store_digest(db_session, keyring=keyring, held_back=held, passed_over=passed_over)
    assert passed_over == [f"digest {latest.id} ({latest.as_of.isoformat()}): its 0 stored tombstones do not hash to its "
                           "signed tombstones_root"] and older.id < latest.id
    assert len(held) == 1 and "live again after its deletion at version 4" in held[0], held


def test_a_digest_of_deleted_entities_alone_is_a_base(db_session, skill, write_ctx, keyring, monkeypatch) -> None:
    """helper-83: a digest with tombstones and no leaf (every entity deleted) was never a
    base, so the digest before the deletions was, and an entity brought back passed. (Deleted
    as a release before the reference guards would: the steward and the role it holds name
    each other, so neither is deleted first now.)"""
    from models.digest_base import trusted_base
    from models.ledger_trust import stored_digest_problem
    from tests.test_seat_rules import as_an_older_release

    from models.entities import ENTITY_MODELS

    store_digest(db_session, keyring=keyring)
    with as_an_older_release(monkeypatch):
        for kind in (E.SKILL, E.AGENT, E.TEAM, E.JOB_ROLE, E.INDUSTRY):  # every entity, by signed deletions
            for entity_id in db_session.scalars(text(f"SELECT id FROM {ENTITY_MODELS[kind].__tablename__} WHERE deleted_at IS NULL")):
                update_entity(db_session, entity_type=kind, entity_id=entity_id,
                              changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}, ctx=write_ctx)
    db_session.flush()
    held: list[str] = []
    only_tombstones = store_digest(db_session, keyring=keyring, held_back=held)
    assert held == [] and only_tombstones.entity_count == 0 and only_tombstones.document["tombstone_count"] > 1
    assert trusted_base(db_session, keyring, stored_digest_problem).id == only_tombstones.id


def test_an_entity_committed_after_a_digest_it_was_stamped_before_is_examined_once_deleted(
        engine, committed_steward, write_ctx, keyring) -> None:
    """Stops 22-24's as_of gap: a version stamped before a digest's as_of but committed after
    its leaves were written is in neither the digest nor "created since" it, so a deletion by
    SQL alone went unread by every incremental audit. The digest keeps no tombstone of it:
    the incremental audit examines it, and the next digest holds it back."""
    from sqlalchemy.orm import Session

    from models.registry import create_entity

    with Session(engine, expire_on_commit=False) as early:
        with early.begin():
            skill = create_entity(early, entity_type=E.SKILL, ctx=write_ctx, data={
                "name": "Stamped Early", "skill_key": "stamped-early", "category": "technical",
                "description": "committed after the digest", "governance_agent_id": committed_steward})
            early.flush()  # its first version is stamped now
            with Session(engine) as session, session.begin():
                # Begun before the digest, its transaction stamps it at its start, as every stored
                # digest was before it waited for a quiet moment (a fresh one would wait for
                # ``early`` here, and hold it): such digests are still stored, and kept.
                session.execute(text("SELECT 1"))
                digest = store_digest(session, keyring=keyring)
                assert _leaf(session, digest.id, skill.id) is None
                as_of = digest.as_of
    with Session(engine) as session, session.begin():
        stamped = session.scalar(text("SELECT created_at FROM entity_versions WHERE entity_id = :e"), {"e": skill.id})
        assert stamped < as_of
        session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": skill.id})
    with Session(engine) as session, session.begin():
        _, findings = run_incremental(session, keyring)
        assert skill.id in {f.entity_id for f in findings if f.severity == "critical"}, findings
        _held_back(session, keyring, skill, "its row is marked deleted but version 1 does not record a deletion",
                   leaf=(0, GENESIS_LINK))


MOVES = {  # a deleted entity's head moved off its tombstone, each way: what the digest says
    "back": "its head went back from version 4 to 3",
    "null": "neither live nor deleted with a head",
    "forged": "(bad-signature|link-hash-mismatch) at version 5",
}


@pytest.mark.parametrize("move", MOVES)
def test_a_deleted_entity_held_at_its_tombstone_is_never_attested_live_at_its_deletion(
        db_session, skill, write_ctx, keyring, move) -> None:
    """helper-84: a trusted tombstone held back was kept as a leaf at the deletion version,
    so once the row was marked live at that version the leaf was unchanged and attested.
    It stays a tombstone; while the row names another head, the incremental audit examines
    it from the tombstone, and the version count stays balanced."""
    _delete_signed(db_session, skill, write_ctx)
    store_digest(db_session, keyring=keyring)
    deletion = _head(db_session, skill, 4)
    if move == "back":
        reset_row_to(db_session, skill, 3)  # still marked deleted
    elif move == "null":
        db_session.execute(text("UPDATE skills SET head_link_hash = NULL WHERE id = :id"), {"id": skill.id})
    else:
        _insert_junk_version(db_session, skill, version=5, prev_link=deletion[1], as_head=True)
    db_session.expire_all()
    if move == "null":  # no head: no row for the audit to examine from the tombstone, the digest holds it
        held: list[str] = []
        digest = store_digest(db_session, keyring=keyring, held_back=held)
        assert len(held) == 1 and MOVES[move] in held[0] and _tombstone(db_session, digest.id, skill.id) == deletion
    else:
        _held_back(db_session, keyring, skill, MOVES[move], leaf=deletion, tombstone=True)
    db_session.execute(text("UPDATE skills SET deleted_at = NULL WHERE id = :id"), {"id": skill.id})
    reset_row_to(db_session, skill, 4)  # live, at its deletion version
    _held_back(db_session, keyring, skill, "it is live again after its deletion at version 4", leaf=deletion, tombstone=True)
    summary, _ = run_incremental(db_session, keyring)
    assert summary["coverage"]["version_count_balanced"] is True


def _plant_as_stored(session, document) -> int:
    """Store ``document`` as a digest through plain SQL, no guard lifted, with leaf rows of the
    heads as the rows name them: an unsigned row, its leaves, then its signed columns."""
    import json

    from models.ledger import current_heads

    digest_id = session.scalar(text(
        "INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
        "VALUES (:a, 0, :r, '', '', '{}') RETURNING id"), {"a": dt.datetime.fromisoformat(document["as_of"]), "r": bytes(32)})
    for head in current_heads(session, chain_versions=True):
        session.execute(text("INSERT INTO ledger_digest_heads VALUES (:d, :e, :t, :v, :l)"),
                        {"d": digest_id, "e": head.entity_id, "t": head.entity_type, "v": head.version, "l": head.link_hash})
    session.execute(text("UPDATE ledger_digests SET entity_count = :c, heads_root = :r, kid = :k, signature = :s, document = :doc "
                         "WHERE id = :d"), {"c": document["entity_count"], "r": bytes.fromhex(document["heads_root"]),
                                            "k": document["kid"], "s": document["signature"], "doc": json.dumps(document), "d": digest_id})
    session.expire_all()
    return digest_id


def test_a_published_digest_planted_as_a_stored_one_is_no_base(db_session, skill, keyring) -> None:
    """helper-85: GET /ledger/digest signs a v1 digest of the heads as the rows name them,
    unchecked; stored through SQL it was the newest trusted digest, and laundered a forged
    head. Plant stores v2 digests only, so a v1 one dated after a v2 one is no base."""
    from models.ledger import current_heads, signed_digest

    store_digest(db_session, keyring=keyring)
    trusted = _head(db_session, skill, 3)
    _insert_junk_version(db_session, skill, as_head=True)  # version 4, a signature nobody made
    published = signed_digest(current_heads(db_session), db_session.scalar(text("SELECT now()")), keyring)
    planted = _plant_as_stored(db_session, published)
    _, findings = run_incremental(db_session, keyring)
    [invalid] = [f for f in findings if f.code == "digest-invalid"]
    assert f"stored ledger digest {planted} " in invalid.detail and "published digest" in invalid.detail
    # Passed over since helper-208: the forged version is examined from the digest Plant stored.
    assert {f.code for f in findings if f.entity_id == skill.id} >= {"bad-signature", "link-hash-mismatch"}
    _held_back(db_session, keyring, skill, "(bad-signature|link-hash-mismatch) at version 4", leaf=trusted)


def test_a_digest_whose_type_is_not_a_string_is_refused_not_a_crash(db_session, skill, keyring) -> None:
    """helper-85: a type that cannot be hashed raised, and one such row stopped every digest."""
    import json

    from models.ledger_digest import digest_problem

    good = store_digest(db_session, keyring=keyring).document
    for kind in (["plant.ledger-digest.v2"], {}):
        assert digest_problem({**good, "type": kind}, keyring) == "its members are not a ledger digest's"
        bad = db_session.scalar(text("INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
                                     "VALUES (now(), 0, :r, '', '', :doc) RETURNING id"),
                                {"r": bytes(32), "doc": json.dumps({"type": kind})})
        db_session.execute(text("INSERT INTO ledger_digest_heads VALUES (:d, :e, 'skill', 0, :l)"),
                           {"d": bad, "e": skill.id, "l": bytes(32)})
        assert store_digest(db_session, keyring=keyring, held_back=[]).id > bad


def test_a_version_slipped_in_under_a_renumbered_head_is_not_attested(db_session, skill, keyring) -> None:
    """helper-85: the head renumbered from 3 to 4 (its link unchanged) and a forged version 3
    put beneath it; the leaf's link was unchanged, so the new version was never checked."""
    trusted = store_digest(db_session, keyring=keyring)
    two = version_row(db_session, skill.id, 2)
    lift_guard(db_session, "UPDATE entity_versions SET version = 4 WHERE entity_id = :e AND version = 3;"
               "INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, link_hash, kid, "
               "signature, actor) VALUES ('skill', :e, 3, :c, :h, :p, :l, :k, :g, 'intruder')", e=skill.id,
               c=bytes(two.content), h=os.urandom(32), p=os.urandom(32), l=os.urandom(32), k=two.kid, g=os.urandom(64))
    db_session.execute(text("UPDATE skills SET version = 4 WHERE id = :e"), {"e": skill.id})
    db_session.expire_all()
    version, link = _leaf(db_session, trusted.id, skill.id)
    assert version == 3
    _held_back(db_session, keyring, skill, "version 3, which the last trusted digest holds, is gone from its chain",
               leaf=(0, link))
    _held_back(db_session, keyring, skill, "the link its last trusted leaf holds is gone from its chain", leaf=(0, link))


def test_a_deleted_row_without_a_head_is_held_as_a_tombstone(engine, committed_steward, write_ctx, keyring) -> None:
    """helper-85: a deletion between two digests hidden behind a NULL head was held as a
    placeholder leaf, and once the deletion version was deleted and the row marked live at
    version 1, checked from the genesis and attested."""
    from sqlalchemy.orm import Session

    skill = _committed_after_a_digest(engine, write_ctx, keyring, committed_steward, "hidden-deletion")
    with Session(engine) as session, session.begin():
        _delete_signed(session, skill, write_ctx)
        session.execute(text("UPDATE skills SET head_link_hash = NULL WHERE id = :id"), {"id": skill.id})
    with Session(engine) as session, session.begin():
        held: list[str] = []
        digest = store_digest(session, keyring=keyring, held_back=held)
        assert len(held) == 1 and _tombstone(session, digest.id, skill.id) == (0, GENESIS_LINK)
        lift_guard(session, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 2", e=skill.id)
        _undelete_at(session, skill, 1)
        _held_back(session, keyring, skill, "it is live again after its deletion at version 0", leaf=(0, GENESIS_LINK),
                   tombstone=True)


def test_published_digests_planted_as_stored_ones_do_not_push_the_trusted_one_out_of_reach(db_session, skill, keyring) -> None:
    from models.digest_base import BASES_TRIED, trusted_base
    from models.ledger import current_heads, signed_digest
    from models.ledger_trust import stored_digest_problem

    real = store_digest(db_session, keyring=keyring)
    published = signed_digest(current_heads(db_session), db_session.scalar(text("SELECT now()")), keyring)
    for _ in range(BASES_TRIED + 1):
        _plant_as_stored(db_session, published)
    passed_over: list[str] = []
    assert trusted_base(db_session, keyring, stored_digest_problem, passed_over).id == real.id and passed_over == []


def test_a_published_digest_planted_before_any_stored_one_is_no_base(db_session, skill, keyring) -> None:
    """helper-86: before the first v2 digest (a new install, or the hour after the upgrade),
    a planted published digest was the only candidate, and trusted. Plant stores no v1
    digest after the upgrade time (one guarded row), so it is no base whenever it comes."""
    from models.ledger import current_heads, signed_digest

    _insert_junk_version(db_session, skill, as_head=True)
    _plant_as_stored(db_session, signed_digest(current_heads(db_session), db_session.scalar(text("SELECT now()")), keyring))
    _held_back(db_session, keyring, skill, "(bad-signature|link-hash-mismatch) at version 4", leaf=(0, GENESIS_LINK))


def test_a_v1_digest_is_judged_by_the_upgrade_time_alone(db_session, skill, keyring) -> None:
    """helper-86: a junk row claiming v2, dated long ago, made every v1 digest look planted; now
    only the guarded upgrade time counts, and with its row gone no v1 digest is trusted."""
    from models.ledger_trust import stored_digest_problem

    legacy = store_digest(db_session, keyring=keyring)
    _as_stored_before_0018(db_session, legacy, keyring)
    db_session.execute(text("INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
                            "VALUES ('2000-01-01', 0, :r, '', '', '{\"type\": \"plant.ledger-digest.v2\"}')"), {"r": bytes(32)})
    assert stored_digest_problem(db_session, legacy, keyring) is None
    lift_guard(db_session, "DELETE FROM ledger_digests_v2_began", table="ledger_digests_v2_began")
    assert "published digest" in stored_digest_problem(db_session, legacy, keyring)


def test_a_rollback_held_at_a_lost_link_stays_held_when_the_version_comes_and_goes(db_session, skill, keyring) -> None:
    """helper-86: once held at a trusted link its chain had lost, putting the genuine version
    back moved the entity to the placeholder, and deleting it again was then attested.
    helper-87: held at that link for good, a genuine repair was never attested, and key seals
    stayed refused. The link is taken back at the version carrying it only when the versions
    up to it re-hash and re-link to it from the genesis."""
    from models.embeddings import HashingEmbedder
    from models.repair import restore_entity

    store_digest(db_session, keyring=keyring)  # leaf at version 3
    _, link = _head(db_session, skill, 3)
    saved = db_session.execute(text("SELECT * FROM entity_versions WHERE entity_id = :e AND version = 3"), {"e": skill.id}).one()
    tamper_delete_newest(db_session, skill, keyring)  # version 3 deleted, the row reset to version 2
    _held_back(db_session, keyring, skill, "its head went back from version 3 to 2", leaf=(0, link))
    put_back = text(f"INSERT INTO entity_versions ({', '.join(saved._fields)}) VALUES ({', '.join(':' + c for c in saved._fields)})")
    db_session.execute(put_back, saved._asdict())  # the genuine version (INSERT is what the guard allows)
    db_session.expire_all()
    _held_back(db_session, keyring, skill, "its head went back from version 3 to 2", leaf=(3, link))
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 3", e=skill.id)
    _held_back(db_session, keyring, skill, "its head went back from version 3 to 2", leaf=(0, link))
    db_session.execute(put_back, saved._asdict())
    db_session.expire_all()
    assert restore_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, keyring=keyring, embedder=HashingEmbedder(),
                          actor="operator:test").restored
    held: list[str] = []
    digest = store_digest(db_session, keyring=keyring, held_back=held)
    assert held == [] and _leaf(db_session, digest.id, skill.id) == (3, link)


def test_copies_of_a_signed_digest_made_through_sql_count_once(db_session, skill, keyring) -> None:
    """helper-86: thirty copies of the newest document, each with a junk leaf row, pushed the
    real digest out of the bases looked at."""

    from models.digest_base import BASES_TRIED, trusted_base
    from models.ledger_trust import stored_digest_problem

    real = store_digest(db_session, keyring=keyring)
    insert_copies_of_a_signed_digest(db_session, real, BASES_TRIED + 1)
    passed_over: list[str] = []
    assert trusted_base(db_session, keyring, stored_digest_problem, passed_over).id == real.id
    assert len(passed_over) == BASES_TRIED + 1


def test_a_published_digest_fetched_before_the_upgrade_is_no_base(db_session, skill, keyring) -> None:
    """helper-87: dated before the upgrade, a planted published digest passed the upgrade-time
    rule, and once every newer digest's rows were deleted (plain SQL, as pruning does) it was
    the base, and a forged head it named was attested. A v1 base must carry a leaf
    attestation that verifies, which only store_digest makes."""
    from models.ledger import current_heads, signed_digest

    now = db_session.scalar(text("SELECT now()"))
    lift_guard(db_session, "UPDATE ledger_digests_v2_began SET began_at = :t", table="ledger_digests_v2_began",
               t=now - dt.timedelta(hours=1))
    older = store_digest(db_session, keyring=keyring)
    _insert_junk_version(db_session, skill, as_head=True)  # version 4, a signature nobody made
    published = signed_digest(current_heads(db_session), now - dt.timedelta(hours=2), keyring)  # fetched before the upgrade
    newer = store_digest(db_session, keyring=keyring, held_back=[])
    for table in ("ledger_digest_heads", "ledger_digest_tombstones"):
        db_session.execute(text(f"DELETE FROM {table} WHERE digest_id IN (:a, :b)"), {"a": older.id, "b": newer.id})
    _plant_as_stored(db_session, published)
    _held_back(db_session, keyring, skill, "(bad-signature|link-hash-mismatch) at version 4", leaf=(0, GENESIS_LINK))


def test_a_digest_whose_tables_cannot_be_analyzed_now_is_stored_all_the_same(db_session, engine, skill, keyring, caplog) -> None:
    """helper-87: the ANALYZE's lock, held to the end of the digest's transaction, is one a
    digest still committing or a VACUUM holds; it gives up after a second, and says so."""
    with engine.connect() as other:
        other.execute(text("LOCK TABLE ledger_digest_tombstones IN SHARE UPDATE EXCLUSIVE MODE"))
        held: list[str] = []
        digest = store_digest(db_session, keyring=keyring, held_back=held)
        other.rollback()
    assert held == [] and digest.signature and "did not analyze" in caplog.text
    assert db_session.scalar(text("SELECT current_setting('lock_timeout')")) == "0"


def test_a_rollback_is_held_where_leaves_are_rehashed_not_attested(db_session, skill, keyring, monkeypatch) -> None:
    """helper-88: where leaves are re-hashed (restored into another cluster, the identifier
    unreadable, 2**32 transactions on), a leaf whose version was deleted made the whole base
    untrusted, and the next digest, checked from an older one, attested the rollback."""
    import models.ledger_trust

    real = models.ledger_trust.xid_clock
    monkeypatch.setattr(models.ledger_trust, "xid_clock", lambda session: (real(session)[0], None))  # no attestation used
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    _, link = _head(db_session, skill, 3)
    tamper_delete_newest(db_session, skill, keyring)  # version 3 deleted, the row reset to version 2
    passed_over: list[str] = []
    store_digest(db_session, keyring=keyring, held_back=[], passed_over=passed_over)
    assert passed_over == []
    _held_back(db_session, keyring, skill, "the link its last trusted leaf holds is gone from its chain", leaf=(0, link))


def insert_copies_of_a_signed_digest(session, real, copies: int) -> None:
    """``copies`` rows made through SQL holding ``real``'s signed document, newer by id, each with
    a leaf row that is not one of its leaves."""
    import json

    for _ in range(copies):
        copy = session.scalar(text(
            "INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
            "VALUES (:a, 0, :r, '', '', '{}') RETURNING id"), {"a": real.as_of, "r": bytes(32)})
        session.execute(text("INSERT INTO ledger_digest_heads VALUES (:d, gen_random_uuid(), 'skill', 0, :l)"),
                        {"d": copy, "l": bytes(32)})
        session.execute(text("UPDATE ledger_digests SET entity_count = :c, heads_root = :r, kid = :k, signature = :s, "
                             "document = :doc WHERE id = :d"),
                        {"c": real.entity_count, "r": real.heads_root, "k": real.kid, "s": real.signature,
                         "doc": json.dumps(real.document), "d": copy})
