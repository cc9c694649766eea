"""What the incremental audit examines, what it states it did not, and which digest it trusts.

Each tampering is injected with SQL after a stored digest, as in ``tests/test_audit.py``.
An entity changed since the digest gets the full audit's checks over its whole chain; an
unchanged one is not re-read, and the run's summary says so. A stored digest whose
leaves or document were edited is reported (``digest-invalid``), never trusted.
"""

import datetime as dt
import os

import pytest
from sqlalchemy import text

from models.audit import check_entity
from models.entities import EntityType
import models.ledger
import models.ledger_compare
import models.ledger_store
import models.ledger_trust
from models.ledger import HeadRecord, current_heads
from models.ledger_digest import build_digest
from models.ledger_store import store_digest
from models.ledger_trust import root_of_leaf_hashes
from models.merkle import leaf_hash, merkle_root
from models.registry import create_entity, update_entity
from tests.conftest import EMBEDDER, recorded_statements
from tests.test_audit import (
    _insert_junk_version, lift_guard, reset_row_to, run_audit, run_incremental, tamper_content, tamper_delete_newest,
    tamper_row,
)

E = EntityType


def _fourth_version(session, skill, write_ctx) -> None:
    update_entity(session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version four"}, ctx=write_ctx)
    session.flush()


def _codes(findings, entity_id) -> set[str]:
    return {f.code for f in findings if f.entity_id == entity_id}


def test_a_head_set_to_null_is_examined(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    db_session.execute(text("UPDATE skills SET head_link_hash = NULL WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    summary, findings = run_incremental(db_session, keyring)
    assert "head-mismatch" in _codes(findings, skill.id)
    assert summary["total_entities"] == 1 and summary["non_compliant"] == 1


def test_a_row_reset_to_the_digest_head_after_later_versions_is_a_stale_head(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    _fourth_version(db_session, skill, write_ctx)
    reset_row_to(db_session, skill, 3)  # the row replays the leaf although version 4 exists
    summary, findings = run_incremental(db_session, keyring)
    assert "stale-head" in _codes(findings, skill.id)
    assert summary["coverage"]["version_count_balanced"] is False  # how it was found: the counts disagreed


def test_a_chain_that_grew_behind_its_row_is_looked_for_only_when_the_counts_disagree(
        db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    _fourth_version(db_session, skill, write_ctx)
    with recorded_statements(db_session.get_bind()) as statements:
        summary, findings = run_incremental(db_session, keyring)
    per_leaf_joins = [s for _, s in statements if "ledger_digest_heads.version +" in s]
    assert findings == [] and summary["coverage"]["version_count_balanced"] is True
    assert per_leaf_joins == []


def test_a_version_before_the_digest_head_of_a_changed_entity_is_re_hashed(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    _fourth_version(db_session, skill, write_ctx)
    tamper_content(db_session, skill, keyring)  # version 2's content, behind the leaf at version 3
    summary, findings = run_incremental(db_session, keyring)
    assert [(f.code, f.version) for f in findings] == [("content-hash-mismatch", 2)]
    assert summary["coverage"]["versions_rehashed_only"] == 3 and summary["versions_verified"] == 1


def test_the_link_into_the_digest_head_is_checked(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    _fourth_version(db_session, skill, write_ctx)
    lift_guard(db_session, "UPDATE entity_versions SET prev_link = :p WHERE entity_id = :e AND version = 3",
               p=os.urandom(32), e=skill.id)
    _, findings = run_incremental(db_session, keyring)
    assert {"broken-link", "link-hash-mismatch"} <= {(f.code) for f in findings if f.version == 3}


def test_a_changed_entity_s_row_is_compared_with_its_head(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    _fourth_version(db_session, skill, write_ctx)
    tamper_row(db_session, skill, keyring)
    _, findings = run_incremental(db_session, keyring)
    assert _codes(findings, skill.id) == {"row-content-mismatch"}


def test_the_summary_states_what_an_incremental_run_did_not_read(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    tamper_row(db_session, skill, keyring)  # no new version: the row is not re-read, by design
    summary, findings = run_incremental(db_session, keyring)
    assert findings == []
    coverage = summary["coverage"]
    assert coverage["mode"] == "incremental" and coverage["entities_examined"] == 0
    assert "unchanged since the digest" in coverage["not_reread"] and "full audit" in coverage["not_reread"]
    assert "signed heads_root" in coverage["trusted"]
    assert summary["signatures"] == "all-after-digest"
    full, full_findings = run_audit(db_session, keyring)
    assert full["coverage"]["mode"] == "full" and "row-content-mismatch" in _codes(full_findings, skill.id)


def test_an_edited_stored_leaf_is_not_trusted(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    tamper_delete_newest(db_session, skill, keyring)  # a consistent rollback to version 2...
    with db_session.begin_nested():  # ...hidden by another transaction (here a subtransaction: its own xid)
        lift_guard(db_session, "UPDATE ledger_digest_heads h SET link_hash = s.head_link_hash, version = s.version "
                   "FROM skills s WHERE s.id = h.entity_id AND s.id = :id", table="ledger_digest_heads", id=skill.id)
    check = check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER)
    assert check.tampered and [f.code for f in check.findings] == ["digest-invalid"]
    summary, findings = run_incremental(db_session, keyring)
    assert [f.code for f in findings] == ["digest-invalid"] and "do not hash" in findings[0].detail
    assert summary["run_level_findings"] == ["digest-invalid"] and summary["total_entities"] == 0
    assert "NOT trusted" in summary["coverage"]["digest"] and summary["signatures"] == "none"


@pytest.mark.parametrize("edit", [
    "UPDATE ledger_digests SET document = jsonb_set(document, '{entity_count}', '1') WHERE id = :id",
    "UPDATE ledger_digests SET document = jsonb_set(document, '{heads_root}', to_jsonb(repeat('0', 64))) WHERE id = :id",
    "DELETE FROM ledger_digest_heads WHERE digest_id = :id AND entity_id = (SELECT entity_id FROM ledger_digest_heads WHERE digest_id = :id ORDER BY entity_id LIMIT 1)",
    "UPDATE ledger_digests SET as_of = as_of + interval '1 day' WHERE id = :id",  # to be taken for the latest
])
def test_an_edited_stored_digest_is_reported_not_trusted(db_session, skill, keyring, edit) -> None:
    digest = store_digest(db_session, keyring=keyring)
    lift_guard(db_session, edit, table="ledger_digests", id=digest.id)  # as the table's owner could
    assert [f.code for f in check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER).findings] == ["digest-invalid"]
    assert [f.code for f in run_incremental(db_session, keyring)[1]] == ["digest-invalid"]


def test_an_intact_stored_digest_is_trusted(db_session, skill, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    assert check_entity(db_session, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER).findings == []
    summary, findings = run_incremental(db_session, keyring)
    assert findings == [] and summary["coverage"]["digest"].endswith("verified")


def test_a_stored_digest_signs_the_root_of_every_live_head_and_keeps_each_as_a_leaf(
        db_session, skill, steward, write_ctx, keyring) -> None:
    """PostgreSQL copies the heads into the leaf rows and hashes them; the signed document
    must be the one built in Python from the same heads, and the rows must be those heads."""
    create_entity(db_session, entity_type=E.INDUSTRY, ctx=write_ctx, data={"name": "Digested", "code": "DIG", "governance_agent_id": steward})
    doomed = create_entity(db_session, entity_type=E.INDUSTRY, ctx=write_ctx, data={"name": "Doomed", "code": "DOOM", "governance_agent_id": steward})
    update_entity(db_session, entity_type=E.INDUSTRY, entity_id=doomed.id, ctx=write_ctx,
                  changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})
    heads = list(current_heads(db_session, chain_versions=True))
    assert {h.entity_type for h in heads} >= {"skill", "industry", "agent"} and doomed.id not in {h.entity_id for h in heads}
    digest = store_digest(db_session, keyring=keyring)
    tombstones = list(current_heads(db_session, deleted=True))
    assert [t.entity_id for t in tombstones] == [doomed.id]
    assert digest.document == _stored_document(digest.as_of, heads, tombstones, keyring)
    assert (digest.entity_count, digest.heads_root.hex()) == (len(heads), digest.document["heads_root"])
    assert digest.kid == digest.document["kid"] and digest.signature == digest.document["signature"]
    rows = db_session.execute(text("SELECT entity_id, entity_type, version, link_hash FROM ledger_digest_heads "
                                   "WHERE digest_id = :d ORDER BY entity_id"), {"d": digest.id}).all()
    assert [HeadRecord(r[0], r[1], r[2], bytes(r[3])) for r in rows] == heads
    assert next(h.version for h in heads if h.entity_id == skill.id) == 3
    assert models.ledger_trust.stored_digest_problem(db_session, digest, keyring) is None


def _stored_document(as_of, heads, tombstones, keyring) -> dict:
    """The v2 document a stored digest of ``heads`` and ``tombstones`` must carry, built in Python."""
    from models.ledger_digest import sign_root
    from models.merkle import head_leaf, merkle_root

    published = build_digest(as_of, ((h.entity_id, h.link_hash) for h in heads), keyring)
    return sign_root(as_of, published["entity_count"], bytes.fromhex(published["heads_root"]), keyring,
                     tombstones=(len(tombstones), merkle_root(head_leaf(t.entity_id, t.link_hash) for t in tombstones)))


def test_an_empty_registry_s_digest_is_the_root_of_no_leaves(db_session, keyring) -> None:
    digest = store_digest(db_session, keyring=keyring)
    assert digest.entity_count == 0 and digest.document == _stored_document(digest.as_of, [], [], keyring)


def test_a_head_link_of_the_wrong_length_stops_the_digest_rather_than_being_signed(db_session, skill, keyring) -> None:
    db_session.execute(text("UPDATE skills SET head_link_hash = '\\x00ff'::bytea WHERE id = :id"), {"id": skill.id})
    with pytest.raises(models.ledger.HeadNotAHash, match="1 head links are not 32 bytes"):  # 409 ledger-head-invalid
        store_digest(db_session, keyring=keyring)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 1000])
def test_the_root_of_stored_leaf_hashes_is_the_rfc_6962_root(n: int) -> None:
    leaves = [os.urandom(48) for _ in range(n)]
    assert root_of_leaf_hashes(b"".join(leaf_hash(leaf) for leaf in leaves)) == merkle_root(leaves)


def test_untouched_attested_leaves_are_trusted_without_rehashing(db_session, skill, keyring, monkeypatch) -> None:
    import models.ledger_trust

    digest = store_digest(db_session, keyring=keyring)
    assert digest.leaves_xmin is not None and digest.leaves_attestation is not None

    def no_rehash(hashes: bytes) -> bytes:
        raise AssertionError("the leaves were re-hashed although their attestation holds")

    monkeypatch.setattr(models.ledger_trust, "root_of_leaf_hashes", no_rehash)
    assert models.ledger_trust.stored_digest_problem(db_session, digest, keyring) is None


def test_a_leaf_attestation_names_the_full_64_bit_transaction_id(db_session, skill, keyring) -> None:
    import models.ledger_trust

    digest = store_digest(db_session, keyring=keyring)
    xmin = int(db_session.scalar(text("SELECT xmin::text FROM ledger_digest_heads WHERE digest_id = :d LIMIT 1"),
                                 {"d": digest.id}))
    writer = int(digest.leaves_xmin)
    assert writer % models.ledger_trust.XID_SPAN == xmin and abs(models.ledger_trust.xid_clock(db_session)[0] - writer) < 1000


def test_leaves_attested_2_to_the_32_transactions_ago_are_rehashed_not_trusted(db_session, skill, keyring, monkeypatch) -> None:
    """After that many transactions another one can carry the attested 32 bits in its xmin."""
    import models.ledger_trust

    digest = store_digest(db_session, keyring=keyring)
    rehashed = []
    root_of = models.ledger_trust.root_of_leaf_hashes
    monkeypatch.setattr(models.ledger_trust, "root_of_leaf_hashes", lambda hashes: rehashed.append(1) or root_of(hashes))
    writer = int(digest.leaves_xmin)  # the 64-bit id of the transaction that wrote the leaves
    cluster = models.ledger_trust.xid_clock(db_session)[1]
    monkeypatch.setattr(models.ledger_trust, "xid_clock", lambda session: (writer + models.ledger_trust.XID_SPAN - 1, cluster))
    assert models.ledger_trust.stored_digest_problem(db_session, digest, keyring) is None and rehashed == []
    monkeypatch.setattr(models.ledger_trust, "xid_clock", lambda session: (writer + models.ledger_trust.XID_SPAN, cluster))
    assert models.ledger_trust.stored_digest_problem(db_session, digest, keyring) is None and rehashed == [1, 1]  # its leaves, then its tombstones


def test_leaves_attested_in_another_cluster_are_rehashed_not_trusted(db_session, skill, keyring, monkeypatch) -> None:
    """After a dump and restore into another cluster, ids start again: the attested one is near."""
    import models.ledger_trust

    digest = store_digest(db_session, keyring=keyring)
    rehashed = []
    root_of = models.ledger_trust.root_of_leaf_hashes
    monkeypatch.setattr(models.ledger_trust, "root_of_leaf_hashes", lambda hashes: rehashed.append(1) or root_of(hashes))
    next_id, cluster = models.ledger_trust.xid_clock(db_session)
    monkeypatch.setattr(models.ledger_trust, "xid_clock", lambda session: (next_id, str(int(cluster) + 1)))
    assert models.ledger_trust.stored_digest_problem(db_session, digest, keyring) is None and rehashed == [1, 1]  # its leaves, then its tombstones


def test_where_the_cluster_identifier_cannot_be_read_leaves_are_not_attested_and_always_rehashed(
        db_session, skill, keyring, monkeypatch) -> None:
    import models.ledger_trust

    next_id, _ = models.ledger_trust.xid_clock(db_session)
    monkeypatch.setattr(models.ledger_trust, "xid_clock", lambda session: (next_id, None))
    digest = store_digest(db_session, keyring=keyring)
    assert digest.leaves_xmin is None and digest.leaves_attestation is None
    assert models.ledger_trust.stored_digest_problem(db_session, digest, keyring) is None


@pytest.mark.parametrize(("xmin", "near", "full"), [
    (5, 10, 5), (12, 10, 12), (2**32 - 1, 2**32 + 3, 2**32 - 1), (3, 2**32 - 2, 2**32 + 3), (7, 3 * 2**32 + 9, 3 * 2**32 + 7),
])
def test_a_32_bit_xmin_is_placed_in_the_epoch_of_a_nearby_64_bit_id(xmin, near, full) -> None:
    from models.ledger_trust import full_xid

    assert full_xid(xmin, near) == full


@pytest.mark.parametrize("forge", ["attestation", "xmin"])
def test_a_forged_leaf_attestation_falls_back_to_rehashing(db_session, skill, keyring, forge) -> None:
    import models.ledger_trust

    digest = store_digest(db_session, keyring=keyring)
    with db_session.begin_nested():  # rewrite one leaf in another transaction, then vouch for it
        lift_guard(db_session, "UPDATE ledger_digest_heads SET link_hash = :link WHERE digest_id = :id AND entity_id = :e",
                   table="ledger_digest_heads", link=b"\x01" * 32, id=digest.id, e=skill.id)
    # Past the digests' guard, as their owner could (plain SQL may not touch a stored attestation).
    if forge == "xmin":  # claim the new transaction id; the old signature no longer covers it
        xmin = db_session.scalar(text("SELECT xmin::text FROM ledger_digest_heads WHERE entity_id = :e"), {"e": skill.id})
        lift_guard(db_session, "UPDATE ledger_digests SET leaves_xmin = :x WHERE id = :id", table="ledger_digests",
                   x=xmin, id=digest.id)
    else:
        lift_guard(db_session, "UPDATE ledger_digests SET leaves_attestation = :a WHERE id = :id", table="ledger_digests",
                   a=b"\x00" * 64, id=digest.id)
    problem = models.ledger_trust.stored_digest_problem(db_session, digest, keyring)
    assert problem is not None and "do not hash" in problem


def test_an_edited_leaf_version_does_not_hide_a_reset_row(db_session, skill, write_ctx, keyring) -> None:
    # The root covers ids and links only: a leaf's version, raised to cover the versions
    # written after the digest, must not make a row reset to the digest head look unchanged.
    store_digest(db_session, keyring=keyring)
    head = (skill.version, bytes(skill.head_link_hash))
    for text_ in ("version four", "version five"):
        update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": text_}, ctx=write_ctx)
    with db_session.begin_nested():  # another transaction: reset the row, raise the leaf's version
        db_session.execute(text("UPDATE skills SET version = :v, head_link_hash = :l, description = 'version three' "
                                "WHERE id = :id"), {"v": head[0], "l": head[1], "id": skill.id})
        lift_guard(db_session, "UPDATE ledger_digest_heads SET version = 5 WHERE entity_id = :id", table="ledger_digest_heads",
                   id=skill.id)
    db_session.expire_all()
    summary, findings = run_incremental(db_session, keyring)
    assert [f.code for f in findings] == ["digest-invalid"] and "versions or types" in findings[0].detail


@pytest.mark.parametrize("leaf_edited", [False, True])
def test_a_head_naming_no_version_stays_seen_when_its_leaf_version_is_edited(
        db_session, skill, keyring, leaf_edited, monkeypatch) -> None:
    """A digest now holds such a head back (tests/test_digest_check.py); one stored before it
    checked its heads holds it as version 0 (no chain version has its link), which unbalances
    the totals; edited to balance them, the leaf differs from what the chain says and the
    digest is refused."""
    with db_session.begin_nested():
        db_session.execute(text("UPDATE skills SET head_link_hash = :h WHERE id = :id"), {"h": b"\x07" * 32, "id": skill.id})
    db_session.expire_all()
    monkeypatch.setattr(models.ledger_store, "check_heads", lambda *_, **__: [])  # as a digest stored before the check
    digest = store_digest(db_session, keyring=keyring)
    leaf = {"d": digest.id, "e": skill.id}
    assert db_session.scalar(text("SELECT version FROM ledger_digest_heads WHERE digest_id = :d AND entity_id = :e"), leaf) == 0
    if leaf_edited:
        with db_session.begin_nested():
            lift_guard(db_session, "UPDATE ledger_digest_heads SET version = 3 WHERE digest_id = :d AND entity_id = :e",
                       table="ledger_digest_heads", **leaf)
    _, findings = run_incremental(db_session, keyring)
    assert findings and ("digest-invalid" if leaf_edited else "head-mismatch") in {f.code for f in findings}


def test_every_signature_after_the_leaf_is_checked_not_only_the_heads(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    _fourth_version(db_session, skill, write_ctx)
    update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": "version five"}, ctx=write_ctx)
    db_session.flush()
    lift_guard(db_session, "UPDATE entity_versions SET signature = :g WHERE entity_id = :e AND version = 4",
               g=os.urandom(64), e=skill.id)  # version 4 is after the leaf and not the head
    _, findings = run_incremental(db_session, keyring)
    assert "bad-signature" in _codes(findings, skill.id)


@pytest.mark.parametrize("against", ["the latest stored digest", "an outside digest with leaves"])
def test_a_deleted_entity_is_seen_through_a_row_of_another_type_given_its_id_and_head(
        db_session, skill, keyring, against) -> None:
    """A leaf names an entity by id; what answers for it must be of the type whose chain holds its head."""
    from tests.test_audit import digest_of

    skill_id, head = skill.id, bytes(skill.head_link_hash)
    outside = digest_of(db_session, keyring, with_leaves=True)
    store_digest(db_session, keyring=keyring)
    lift_guard(db_session, "DELETE FROM skills WHERE id = :id", table="skills", id=skill_id)  # as the owner could
    db_session.execute(text("INSERT INTO agents (id, name, version, head_link_hash) VALUES (:id, 'decoy', 3, :head)"),
                       {"id": skill_id, "head": head})
    db_session.expire_all()
    if against == "the latest stored digest":
        _, findings = run_incremental(db_session, keyring)
    else:
        _, findings = run_audit(db_session, keyring, {"against_digest": outside})
    assert ("skill", "entity-deleted") in {(f.entity_type, f.code) for f in findings if f.entity_id == skill_id}


def test_a_row_version_inflated_while_a_digest_was_stored_does_not_hide_a_later_rollback(
        db_session, skill, write_ctx, keyring, steward) -> None:
    """A stored leaf's version comes from the chain. Read from the row's column, an inflated
    one balanced the version totals and so hid another chain grown behind its reset row.
    (Since helper-208 a head whose row's version column is not its chain's is not attested at
    all: held at a placeholder naming no version, never at the row's 5.)"""
    from models.registry import create_entity

    other = create_entity(db_session, entity_type=E.SKILL, ctx=write_ctx, data={
        "name": "Other Skill", "skill_key": "other-skill", "category": "technical",
        "description": "other one", "governance_agent_id": steward})
    db_session.flush()
    db_session.execute(text("UPDATE skills SET version = version + 2 WHERE id = :id"), {"id": skill.id})
    held: list[str] = []
    digest = store_digest(db_session, keyring=keyring, held_back=held)
    db_session.execute(text("UPDATE skills SET version = version - 2 WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    assert [str(skill.id) in h and "head-mismatch" in h for h in held] == [True]
    assert db_session.scalar(text("SELECT version FROM ledger_digest_heads WHERE digest_id = :d AND entity_id = :e"),
                             {"d": digest.id, "e": skill.id}) == 0
    for description in ("other two", "other three"):
        update_entity(db_session, entity_type=E.SKILL, entity_id=other.id, changes={"description": description},
                      ctx=write_ctx)
    db_session.flush()
    reset_row_to(db_session, other, 1)
    _, findings = run_incremental(db_session, keyring)
    assert "stale-head" in _codes(findings, other.id)


def test_beat_s_digest_task_keeps_the_leaves_of_the_newest_digests_and_of_a_seal_s_only(
        worker_sessions, engine, write_ctx, settings, monkeypatch) -> None:
    """Hourly digests would otherwise keep one row per entity each, for ever."""
    from sqlalchemy.orm import Session

    from models.seed import bootstrap_steward
    from tasks import audit, runtime

    monkeypatch.setattr(runtime, "settings", lambda: settings.model_copy(update={"digest_leaves_kept": 2}))
    with Session(engine) as session, session.begin():
        bootstrap_steward(session, write_ctx)
    sealed = None
    for n in range(5):
        digest_id = audit.ledger_store_digest()["digest_id"]
        if n == 1:  # as plant signing-keys seal marks its digest (there, before the digest commits)
            sealed = digest_id
            with Session(engine) as session, session.begin():
                lift_guard(session, "UPDATE ledger_digests SET keep_leaves = true WHERE id = :id", table="ledger_digests",
                           id=digest_id)
    with Session(engine) as session:
        ids = list(session.scalars(text("SELECT id FROM ledger_digests ORDER BY as_of, id")))
        with_leaves = set(session.scalars(text("SELECT DISTINCT digest_id FROM ledger_digest_heads")))
        assert len(ids) == 5 and with_leaves == {sealed, ids[-2], ids[-1]}
        latest = models.ledger_compare.latest_digest(session)
        assert models.ledger_trust.stored_digest_problem(session, latest, write_ctx.keyring) is None
        lift_guard(session, "DELETE FROM ledger_digests WHERE id IN (:a, :b)", table="ledger_digests", a=ids[-1], b=ids[-2])
        pruned = models.ledger_compare.latest_digest(session)  # an older digest, its leaves gone, made the latest by SQL
        assert pruned.id == ids[2] and "do not hash" in models.ledger_trust.stored_digest_problem(session, pruned, write_ctx.keyring)
        session.rollback()


def test_a_seal_keeps_its_digest_s_leaves(key_settings, settings, engine, clean_db, monkeypatch) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    for step in ("rotate", "seal"):
        assert CliRunner().invoke(cli, ["signing-keys", step]).exit_code == 0
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT keep_leaves FROM ledger_digests ORDER BY id DESC LIMIT 1")) is True


@pytest.mark.parametrize("version", [5, 9, 0, -1])
def test_a_version_forged_past_a_gap_or_below_one_is_examined(db_session, skill, keyring, version) -> None:
    """A plain INSERT (what the triggers allow) of a version that does not follow the leaf:
    the counts disagree, and the chain it joined is examined like one grown by one."""
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    _insert_junk_version(db_session, skill, version=version)
    summary, findings = run_incremental(db_session, keyring)
    assert summary["coverage"]["version_count_balanced"] is False
    assert summary["total_entities"] == 1 and summary["non_compliant"] == 1
    assert {"version-gap", "link-hash-mismatch", "rehashed-version"} & _codes(findings, skill.id)


@pytest.mark.parametrize("against", ["the latest stored digest", "an outside digest with leaves"])
def test_a_live_entity_whose_leaf_is_gone_and_head_is_null_is_non_compliant_not_deleted(
        db_session, skill, keyring, against) -> None:
    """Named where digests' leaves are classified (``compare_heads``), for every audit that
    compares with one."""
    from tests.test_audit import digest_of

    outside = digest_of(db_session, keyring, with_leaves=True)
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 3", e=skill.id)
    db_session.execute(text("UPDATE skills SET head_link_hash = NULL WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    if against == "the latest stored digest":
        summary, findings = run_incremental(db_session, keyring)
    else:
        summary, findings = run_audit(db_session, keyring, {"against_digest": outside})
    codes = _codes(findings, skill.id)
    assert "entity-deleted" not in codes
    assert "chain-rewritten" in codes and "head-mismatch" in codes
    assert summary["non_compliant"] == 1 and summary["compliant"] == summary["total_entities"] - 1
    assert all(f.entity_type == "skill" for f in findings if f.entity_id == skill.id)


def test_a_suspect_whose_leaf_is_gone_is_reported_rewritten_once(db_session, skill, write_ctx, keyring) -> None:
    """A suspect (here a version gap) is checked twice, the second time locked; its leaf's
    loss is named once, from the second check, and counted once."""
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    _fourth_version(db_session, skill, write_ctx)
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 3", e=skill.id)
    summary, findings = run_incremental(db_session, keyring)
    assert sorted((f.code, f.version) for f in findings) == [("chain-rewritten", 4), ("version-gap", 4)]
    assert summary["by_code"] == {"chain-rewritten": 1, "version-gap": 1} and summary["findings"] == 2
    assert summary["total_entities"] == 1 and summary["non_compliant"] == 1 and summary["versions_verified"] == 3


def _delete_signed(session, skill, write_ctx) -> None:
    update_entity(session, entity_type=E.SKILL, entity_id=skill.id, ctx=write_ctx,
                  changes={"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)})
    session.flush()


def test_an_entity_deleted_by_a_signed_version_since_the_digest_is_examined_not_reported(
        db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    _delete_signed(db_session, skill, write_ctx)
    summary, findings = run_incremental(db_session, keyring)
    assert findings == []
    assert summary["total_entities"] == 1 and summary["versions_verified"] == 1
    assert summary["coverage"]["version_count_balanced"] is True


def test_a_forged_deletion_since_the_digest_is_still_reported(db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)
    _delete_signed(db_session, skill, write_ctx)
    lift_guard(db_session, "UPDATE entity_versions SET signature = :s WHERE entity_id = :e AND version = 4",
               s=os.urandom(64), e=skill.id)
    summary, findings = run_incremental(db_session, keyring)
    assert "bad-signature" in _codes(findings, skill.id) and summary["non_compliant"] == 1


def test_entities_deleted_before_the_digest_leave_the_version_count_balanced(
        db_session, skill, write_ctx, keyring) -> None:
    """Their versions are in the ledger and their rows hold no leaf: counted apart, so the
    per-leaf search for chains grown behind their rows runs only when something did grow."""
    _delete_signed(db_session, skill, write_ctx)
    store_digest(db_session, keyring=keyring)
    with recorded_statements(db_session.get_bind()) as sent:
        summary, findings = run_incremental(db_session, keyring)
    assert findings == [] and summary["coverage"]["version_count_balanced"] is True
    assert not any("version > ledger_digest_heads.version" in statement for _, statement in sent)


def test_a_deleted_entity_whose_leaf_left_its_chain_is_not_called_rewritten_but_its_chain_is_checked(
        db_session, skill, write_ctx, keyring) -> None:
    store_digest(db_session, keyring=keyring)  # leaf at version 3
    _delete_signed(db_session, skill, write_ctx)  # version 4
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 3", e=skill.id)
    summary, findings = run_incremental(db_session, keyring)
    codes = _codes(findings, skill.id)
    assert "chain-rewritten" not in codes and "entity-deleted" in codes
    assert "version-gap" in codes and summary["non_compliant"] == 1


@pytest.mark.parametrize("signed", [True, False])
def test_an_entity_created_and_deleted_since_the_digest_is_examined(
        db_session, skill, write_ctx, keyring, steward, signed) -> None:
    store_digest(db_session, keyring=keyring)
    late = create_entity(db_session, entity_type=E.SKILL, ctx=write_ctx, data={
        "name": "Late Skill", "skill_key": "late-skill", "category": "technical", "description": "late",
        "governance_agent_id": steward})
    db_session.flush()
    if signed:
        _delete_signed(db_session, late, write_ctx)
    else:  # the row alone says deleted: its chain does not
        db_session.execute(text("UPDATE skills SET deleted_at = now() WHERE id = :id"), {"id": late.id})
        db_session.expire_all()
    summary, findings = run_incremental(db_session, keyring)
    assert summary["coverage"]["version_count_balanced"] is True
    assert _codes(findings, late.id) == (set() if signed else {"row-content-mismatch"})
    assert summary["total_entities"] == 1 and summary["non_compliant"] == (0 if signed else 1)


def test_a_write_committed_while_an_incremental_audit_reads_does_not_hide_a_forged_version(
        engine, committed_steward, write_ctx, keyring, monkeypatch) -> None:
    """The ledger's versions were counted before the chains were read: a registry write
    committed in between (any client's) added a version to the chains' side alone, and hid a
    version forged behind a row left as it was (helper-68). They are counted after."""
    import hashlib

    from sqlalchemy.orm import Session

    import models.incremental_audit as incremental

    def new_skill(session, name: str):
        return create_entity(session, entity_type=E.SKILL, ctx=write_ctx, data={
            "name": name, "skill_key": name.lower().replace(" ", "-"), "category": "technical",
            "description": "version one", "governance_agent_id": committed_steward}).id

    with Session(engine) as session, session.begin():
        forged, busy = new_skill(session, "Forged Behind"), new_skill(session, "Busy Elsewhere")
    with Session(engine) as session, session.begin():
        store_digest(session, keyring=keyring)
    with Session(engine) as session, session.begin():  # version 2 behind a row still at version 1
        head = session.execute(text("SELECT content, link_hash, kid FROM entity_versions WHERE entity_id = :e"),
                               {"e": forged}).one()
        session.execute(text(
            "INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, link_hash,"
            " kid, signature, actor) VALUES ('skill', :e, 2, :c, :h, :p, :l, :k, :g, 'intruder')"),
            {"e": forged, "c": bytes(head.content), "h": hashlib.sha256(bytes(head.content)).digest(),
             "p": bytes(head.link_hash), "l": os.urandom(32), "k": head.kid, "g": os.urandom(64)})
    changed_since, written = incremental.changed_since, []

    def a_write_commits_first(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not written:
            written.append(True)
            with Session(engine) as other, other.begin():
                update_entity(other, entity_type=E.SKILL, entity_id=busy, changes={"description": "two"}, ctx=write_ctx)
        return changed_since(*args, **kwargs)

    monkeypatch.setattr(incremental, "changed_since", a_write_commits_first)
    with Session(engine) as session, session.begin():
        summary, findings = run_incremental(session, keyring)
        codes = {entity: _codes(findings, entity) for entity in (forged, busy)}
        session.rollback()
    assert written and codes[forged] and not codes[busy]
    assert summary["coverage"]["version_count_balanced"] is False


def test_a_version_whose_link_is_not_a_hash_is_a_root_mismatch_against_a_digest_not_a_crash(
        db_session, skill, keyring) -> None:
    """A version INSERTed with a 2-byte link made the root-only comparison with a digest raise,
    so the run failed instead of reporting it (helper-68)."""
    from tests.test_audit import digest_of

    _insert_junk_version(db_session, skill, link=b"\x00\xff")  # the chain's last version as of the digest
    digest = digest_of(db_session, keyring)
    summary, findings = run_audit(db_session, keyring, {"against_digest": digest})
    assert "ledger-root-mismatch" in {f.code for f in findings}
    assert _codes(findings, skill.id)


def test_a_head_link_that_is_not_a_hash_is_a_409_for_a_digest_not_a_500(client, engine, committed_steward) -> None:
    created = client.post("/api/v1/genesis/skills", json={
        "name": "Short Head", "category": "technical", "description": "one", "governance_agent_id": str(committed_steward)})
    assert created.status_code == 201
    with engine.begin() as connection:
        connection.execute(text("UPDATE skills SET head_link_hash = '\\x00ff'::bytea WHERE id = :id"),
                           {"id": created.get_json()["id"]})
    response = client.get("/api/v1/ledger/digest")
    assert response.status_code == 409 and response.mimetype == "application/problem+json"
    assert response.get_json()["type"] == "/problems/ledger-head-invalid"
    assert response.get_json()["entity_id"] == created.get_json()["id"]
