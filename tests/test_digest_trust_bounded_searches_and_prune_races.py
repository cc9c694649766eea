"""helper-214: stored digests as the tampering check, the digest's base search and the
pruning read them, against a ``ledger_digests`` table written to through SQL.

- The tampering check (``GET /audit/tampering/{id}``) took the latest digest row as it came:
  one unsigned row INSERTed dated now (or a digest signed by a key the checking process's
  ring does not hold yet) hid every entity's digest evidence behind a run-level
  ``digest-invalid`` until beat's next digest: a rollback was not named, and an entity
  whose row was removed past its guard was 404. It now compares with the digest the
  incremental audit trusts (``newest_trusted_digest``), and reports each newer row.
- The search for a new digest's base (``trusted_base``) and the pruning's search for the
  newest signed digests read every row, however many forged ones stood before the real
  ones; both are now bounded in rows and time, and say what they left unread.
- The prune deleted the leaves of a digest committed between its read and its delete, and
  of digests newer than those it kept that its ring could not verify: the newest real ones.
"""

import uuid

import pytest
from sqlalchemy import text

import models.ledger_store
from models.audit import check_entity
from models.errors import NotFound
from models.ledger_store import LATEST_DIGESTS_READ, store_digest
from tests.conftest import EMBEDDER
from tests.test_audit import lift_guard, tamper_delete_newest
from tests.test_digest_check import insert_copies_of_a_signed_digest
from tests.test_incremental_audit_trusts_the_newest_signed_digest import counting_signed_row_checks

UNSIGNED = ("INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
            "SELECT now(), 0, '\\x00', '', '', '{}' FROM generate_series(1, :n) RETURNING id")


def _unsigned_rows(session, n: int = 1) -> list[int]:
    """``n`` digest rows dated now, as anyone with INSERT on the table (no key) can add."""
    forged = list(session.scalars(text(UNSIGNED), {"n": n}))
    session.expire_all()
    return forged


def _check(session, keyring, entity_id: uuid.UUID):
    return check_entity(session, entity_id=entity_id, keyring=keyring, embedder=EMBEDDER)


def test_the_tampering_check_still_names_a_rollback_behind_an_unsigned_newest_row(db_session, skill, keyring) -> None:
    digest = store_digest(db_session, keyring=keyring)
    tamper_delete_newest(db_session, skill, keyring)  # version 3 gone, the row reset to version 2: consistent but for the digest
    [forged] = _unsigned_rows(db_session)
    check = _check(db_session, keyring, skill.id)
    assert "head-rolled-back" in {f.code for f in check.findings if f.entity_id == skill.id}, check.findings
    [invalid] = [f for f in check.findings if f.code == "digest-invalid"]  # the row stays reported
    assert invalid.entity_id is None and f"stored ledger digest {forged} " in invalid.detail
    assert f"passed over for digest {digest.id}" in invalid.detail


def test_the_tampering_check_still_finds_a_removed_row_behind_an_unsigned_newest_row(db_session, skill, keyring) -> None:
    skill_id = skill.id
    store_digest(db_session, keyring=keyring)
    lift_guard(db_session, "DELETE FROM skills WHERE id = :id", table="skills", id=skill_id)
    _unsigned_rows(db_session)
    check = _check(db_session, keyring, skill_id)  # was NotFound: 404 for an entity the digest holds
    assert check.entity_type == "skill" and check.tampered
    assert [f.code for f in check.findings if f.entity_id == skill_id] == ["entity-deleted"]


def test_an_untouched_entity_is_not_found_where_the_digest_does_not_hold_it(db_session, skill, keyring) -> None:
    """The other side: an id no row and no trusted leaf names is still 404, forged rows or not."""
    store_digest(db_session, keyring=keyring)
    _unsigned_rows(db_session)
    with pytest.raises(NotFound):
        _check(db_session, keyring, uuid.uuid4())


def test_the_tampering_check_reads_a_bounded_number_of_digest_rows(db_session, skill, keyring, monkeypatch) -> None:
    store_digest(db_session, keyring=keyring)
    _unsigned_rows(db_session, LATEST_DIGESTS_READ * 4)
    checked = counting_signed_row_checks(monkeypatch)
    check = _check(db_session, keyring, skill.id)
    assert len(checked) == LATEST_DIGESTS_READ
    invalid = [f.detail for f in check.findings if f.code == "digest-invalid"]
    assert len(invalid) == LATEST_DIGESTS_READ + 1 and f"none of the {LATEST_DIGESTS_READ} newest" in invalid[-1]


# A stored digest's document with its signature replaced: each such row costs a signature check.
FORGED_WITH_LEAF = """
WITH forged AS (
    INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document)
    SELECT now(), 1, heads_root, kid, '', jsonb_set(document, '{signature}', to_jsonb(repeat('A', 86)))
    FROM ledger_digests, generate_series(1, :n) WHERE id = :d RETURNING id)
INSERT INTO ledger_digest_heads (digest_id, entity_id, entity_type, version, link_hash)
SELECT id, gen_random_uuid(), 'skill', 0, :link FROM forged RETURNING digest_id"""


def _forged_with_leaves(session, digest_id: int, n: int) -> list[int]:
    """``n`` rows dated now, each with a leaf row (a candidate base), as INSERT alone allows."""
    forged = list(session.scalars(text(FORGED_WITH_LEAF), {"n": n, "d": digest_id, "link": bytes(32)}))
    session.expire_all()
    return forged


def _signature_checks(monkeypatch, module) -> list[int]:
    checked: list[int] = []
    real = module.digest_problem

    def counted(document, keys):
        checked.append(1)
        return real(document, keys)

    monkeypatch.setattr(module, "digest_problem", counted)
    return checked


def test_the_search_for_a_base_reads_a_bounded_number_of_rows_and_says_it_stopped(
        db_session, skill, keyring, monkeypatch) -> None:
    import models.digest_base
    from models.digest_base import BASE_ROWS_READ, trusted_base
    from models.ledger_trust import base_problem

    real = store_digest(db_session, keyring=keyring)
    _forged_with_leaves(db_session, real.id, BASE_ROWS_READ + 5)
    checked = _signature_checks(monkeypatch, models.digest_base)
    passed_over: list[str] = []
    assert trusted_base(db_session, keyring, base_problem, passed_over) is None  # was: every row read, the real one found
    assert len(checked) == BASE_ROWS_READ
    assert f"stopped after {BASE_ROWS_READ} row(s)" in passed_over[0]
    assert passed_over[1].startswith(f"{BASE_ROWS_READ} stored digest row(s) with leaf or tombstone rows whose document")


def test_a_digest_whose_base_search_stopped_short_is_checked_from_the_genesis_and_says_so(
        db_session, skill, keyring, monkeypatch) -> None:
    import models.digest_base

    real = store_digest(db_session, keyring=keyring)
    _forged_with_leaves(db_session, real.id, 3)
    monkeypatch.setattr(models.digest_base, "BASE_ROWS_READ", 3)
    passed_over: list[str] = []
    held: list[str] = []
    digest = store_digest(db_session, keyring=keyring, held_back=held, passed_over=passed_over)
    assert held == [] and digest.entity_count == real.entity_count  # every head verified from the genesis
    assert "stopped after 3 row(s)" in passed_over[0]


def test_the_search_for_a_base_stops_after_its_time(db_session, skill, keyring, monkeypatch) -> None:
    """Each signed one that fails may cost a re-hash of all its leaves: time bounds them too."""

    import models.digest_base
    from models.digest_base import trusted_base
    from models.ledger_trust import base_problem

    real = store_digest(db_session, keyring=keyring)
    insert_copies_of_a_signed_digest(db_session, real, 2)  # newer by id, whose leaf rows are not its leaves
    db_session.expire_all()
    monkeypatch.setattr(models.digest_base, "BASE_SEARCH_SECONDS", 0.0)
    passed_over: list[str] = []
    assert trusted_base(db_session, keyring, base_problem, passed_over) is None
    assert "stopped after 1 row(s) with leaf or tombstone rows, 1 of them signed" in passed_over[0] and len(passed_over) == 2


def test_a_restore_whose_base_search_stopped_short_refuses_a_chain_it_cannot_hold_to_a_digest(
        db_session, skill, keyring) -> None:
    """Checked from nothing, a chain whose newest version was deleted past its guard looked
    whole, and the restore vouched for the rollback (a signed repair record)."""
    from models.digest_base import BASE_ROWS_READ
    from models.entities import EntityType
    from models.repair import NotRestorable, restore_entity

    real = store_digest(db_session, keyring=keyring)
    lift_guard(db_session, "DELETE FROM entity_versions WHERE entity_id = :e AND version = 3", e=skill.id)
    _forged_with_leaves(db_session, real.id, BASE_ROWS_READ)
    with pytest.raises(NotRestorable, match="no stored digest could be trusted to hold it to: the search"):
        restore_entity(db_session, entity_type=EntityType.SKILL, entity_id=skill.id, keyring=keyring, embedder=EMBEDDER,
                       actor="operator:test")


def test_a_prune_reads_a_bounded_number_of_rows_and_prunes_nothing_past_them(db_session, skill, keyring, monkeypatch) -> None:
    from models.ledger_store import PRUNE_ROWS_READ, prune_digest_leaves

    real = store_digest(db_session, keyring=keyring)
    forged = _forged_with_leaves(db_session, real.id, PRUNE_ROWS_READ + 5)
    checked: list[int] = []
    signed_row = models.ledger_store.signed_row_problem
    monkeypatch.setattr(models.ledger_store, "signed_row_problem",
                        lambda session, digest, ring: checked.append(digest.id) or signed_row(session, digest, ring))
    unpruned: list[str] = []
    assert prune_digest_leaves(db_session, keyring=keyring, keep_latest=2, unpruned=unpruned) == 0
    assert len(checked) == PRUNE_ROWS_READ and real.id not in checked
    assert unpruned == [f"the {PRUNE_ROWS_READ} newest stored digest rows read (the most a prune reads) hold 0 of the 2 "
                        "newest documents Plant signed; the rest are unsigned, forged or signed by a key the ring does not hold"]
    left = db_session.scalar(text("SELECT count(DISTINCT digest_id) FROM ledger_digest_heads"))
    assert left == len(forged) + 1  # nothing deleted: what lies past the rows read is not known


def test_a_prune_stops_after_its_time_and_prunes_nothing(db_session, skill, keyring, monkeypatch) -> None:
    from models.ledger_store import prune_digest_leaves

    real = store_digest(db_session, keyring=keyring)
    _forged_with_leaves(db_session, real.id, 1)
    monkeypatch.setattr(models.ledger_store, "PRUNE_SECONDS", 0.0)
    unpruned: list[str] = []
    assert prune_digest_leaves(db_session, keyring=keyring, keep_latest=2, unpruned=unpruned) == 0
    assert len(unpruned) == 1 and "read in 0 s hold 0 of the 2" in unpruned[0]
    assert db_session.scalar(text("SELECT count(DISTINCT digest_id) FROM ledger_digest_heads")) == 2


def test_a_digest_committed_while_a_prune_runs_keeps_its_leaves(engine, committed_steward, keyring, monkeypatch) -> None:
    """The prune read which digests to keep, then deleted the others' leaf rows in a later
    statement: a digest committed in between (a second digest task, a retry) was not among
    those kept, and lost its leaves, though it was the newest: every incremental audit then
    examined nothing until the next digest. The prune now holds new digests off while it runs."""
    import threading

    from sqlalchemy.orm import Session

    from models.ledger_store import prune_digest_leaves
    from tests.conftest import wait_for

    for _ in range(2):
        with Session(engine) as session, session.begin():
            store_digest(session, keyring=keyring)
    stored: list[int] = []
    thread = threading.Thread(target=lambda: stored.append(_commit_a_digest(engine, keyring)))
    newest_signed = models.ledger_store._newest_signed

    def read_then_let_a_digest_in(session, ring, count):
        found = newest_signed(session, ring, count)
        thread.start()
        wait_for(lambda: stored or _lock_waiters(engine), what="the concurrent digest to commit or wait")
        return found

    monkeypatch.setattr(models.ledger_store, "_newest_signed", read_then_let_a_digest_in)
    with Session(engine) as session, session.begin():
        prune_digest_leaves(session, keyring=keyring, keep_latest=2)
    thread.join(timeout=60)
    with Session(engine) as session:
        [newest] = stored
        leaves = session.scalar(text("SELECT count(*) FROM ledger_digest_heads WHERE digest_id = :d"), {"d": newest})
        assert leaves == session.scalar(text("SELECT entity_count FROM ledger_digests WHERE id = :d"), {"d": newest}) > 0


def _commit_a_digest(engine, keyring) -> int:
    from sqlalchemy.orm import Session

    with Session(engine) as session, session.begin():
        return store_digest(session, keyring=keyring).id


def _lock_waiters(engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))


def test_a_prune_by_a_ring_that_lacks_the_newest_digests_key_keeps_their_leaves(engine, committed_steward, keyring) -> None:
    """A worker whose ring does not hold the key newer digests were signed with (one that was
    not given it as upcoming before another began signing with it) took them for forged rows,
    and deleted the newest real digests' leaves: every incremental audit then examined
    nothing. Nothing newer than the newest digest it keeps is pruned now; rows forged dated
    now keep theirs only until the next digest's prune."""
    from sqlalchemy.orm import Session

    from models.key_material import generate_ed25519
    from models.ledger_store import prune_digest_leaves
    from models.signing import KeyRing

    for _ in range(2):
        _commit_a_digest(engine, keyring)
    rotated = KeyRing(generate_ed25519(), retired=(keyring.active,))
    newest = _commit_a_digest(engine, rotated)
    with Session(engine) as session, session.begin():
        prune_digest_leaves(session, keyring=keyring, keep_latest=2)  # the lagging ring
    with Session(engine) as session:
        leaves = session.scalar(text("SELECT count(*) FROM ledger_digest_heads WHERE digest_id = :d"), {"d": newest})
        assert leaves == session.scalar(text("SELECT entity_count FROM ledger_digests WHERE id = :d"), {"d": newest}) > 0
