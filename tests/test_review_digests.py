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
    checked: list[int] = []
    real = models.ledger_store.signed_row_problem

    def counted(session, stored, ring):
        checked.append(stored.id)
        return real(session, stored, ring)

    monkeypatch.setattr(models.ledger_store, "signed_row_problem", counted)
    check = _check(db_session, keyring, skill.id)
    assert len(checked) == LATEST_DIGESTS_READ
    invalid = [f.detail for f in check.findings if f.code == "digest-invalid"]
    assert len(invalid) == LATEST_DIGESTS_READ + 1 and f"none of the {LATEST_DIGESTS_READ} newest" in invalid[-1]
